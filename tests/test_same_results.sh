#!/bin/sh
# test_same_results.sh: byte-identical checkpoints from short training runs of the demo model
# (ET, TC, dense, Muon's stacked expert layout, AdamW for the matrices, issue 15's expert rate
# scale and matrix-only decay under both matrix optimizers, Newton-Schulz's symmetric products
# (muon_ns_gram = symmetric: its own bits, which must differ from et's), EC over two
# micro-batches with ec_pool_scope = microbatch and step (the routing pass), and ET's EC warm-up
# with ec_pool_scope = step; 4 steps each, ET's warm-up cut to 2 so that threshold routing runs
# too):
#  - always: OMP_NUM_THREADS=1 against 2, whole checkpoint files compared with cmp;
#  - with ETM_BASELINE_ETMOE=/path/to/another/etmoe (for example a build of main): that program
#    against this one, same runs, same out_dir, cmp. A speed-up that must not change results
#    (issue 14) is checked this way:
#        make check TESTS=tests/test_same_results.sh ETM_BASELINE_ETMOE=/tmp/main-build/etmoe
#    When the files differ, their tensor data (everything after the safetensors header) must
#    still be the same bytes: a build with new keys records them in the header's config, and
#    the baseline skips the cases that set keys it does not know. A checkpoint the baseline wrote
#    half-way is also resumed by this build (old checkpoints keep their behaviour).
# Run from the build directory by make check (ETM_TEST_DIR is the source tree's tests/).
set -u
: "${ETM_TEST_DIR:?run by make check}"
top=$(dirname "$ETM_TEST_DIR")
etmoe=${ETMOE:-$(pwd)/etmoe}
[ -x "$etmoe" ] || { echo "no etmoe program at $etmoe"; exit 99; }
base=${ETM_BASELINE_ETMOE:-}
[ -z "$base" ] || [ -x "$base" ] || { echo "ETM_BASELINE_ETMOE=$base is not a program"; exit 99; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/etmoe-same-XXXXXX") || exit 99
trap 'rm -rf "$tmp"' EXIT
fail() {
    echo "FAIL: $*"
    exit 1
}

"$etmoe" prepare --tokenizer austen --out "$tmp/data" --force "$top/data/austen/persuasion.txt" \
    >"$tmp/prepare.log" 2>&1 || { cat "$tmp/prepare.log"; fail "etmoe prepare failed"; }

# train NAME PROGRAM THREADS KEY=VALUE...: 4 steps of the demo model into $tmp/run (the same
# out_dir every time: it is recorded in the checkpoint), checkpoint kept as $tmp/NAME.safetensors
train() {
    out=$1 prog=$2 threads=$3
    shift 3
    rm -rf "$tmp/run"
    OMP_NUM_THREADS=$threads "$prog" train "$top/data/configs/demo.conf" \
        train_data="$tmp/data/train_*.bin" val_data="$tmp/data/val_*.bin" out_dir="$tmp/run" \
        max_steps=4 batch_size=4 eval_every=0 eval_batches=1 log_every=4 et_warmup_steps=2 "$@" \
        >"$tmp/$out.log" 2>&1 || { cat "$tmp/$out.log"; fail "$out: $prog train $* failed"; }
    mv "$tmp/run/latest.safetensors" "$tmp/$out.safetensors" || fail "$out: no checkpoint"
}

# The bytes after a safetensors file's header (the 8-byte length, then the JSON header).
data_of() {
    n=$(od -An -t u8 -N 8 "$1" | tr -d ' ')
    tail -c +$((n + 9)) "$1"
}

# knows_keys PROGRAM KEY=VALUE...: PROGRAM's --help-keys lists every KEY
knows_keys() {
    prog=$1
    shift
    for kv in "$@"; do
        "$prog" train --help-keys | grep -q "^  ${kv%%=*} " || return 1
    done
    return 0
}

runs=0
for case in "et" "tc router=tc" "dense router=dense" "stacked muon_expert_layout=stacked" \
    "adamw matrix_optimizer=adamw" \
    "experts lr_expert_scale=0.5 weight_decay=0.01 matrix_weight_decay=0.1 muon_expert_layout=stacked" \
    "experts-adamw lr_expert_scale=2 matrix_weight_decay=0.05 matrix_optimizer=adamw" \
    "symmetric muon_ns_gram=symmetric" \
    "ec router=ec grad_accum=2" "ec-step router=ec ec_pool_scope=step grad_accum=2" \
    "et-ec-step ec_pool_scope=step grad_accum=2"; do
    set -- $case
    name=$1
    shift
    train "$name-t1" "$etmoe" 1 "$@"
    train "$name-t2" "$etmoe" 2 "$@"
    cmp "$tmp/$name-t1.safetensors" "$tmp/$name-t2.safetensors" ||
        fail "$name: 1 and 2 threads give different checkpoints"
    if [ "$name" = symmetric ]; then # the option changes the arithmetic: not et's tensors
        data_of "$tmp/et-t2.safetensors" >"$tmp/et.data"
        data_of "$tmp/$name-t2.safetensors" >"$tmp/this.data"
        [ -s "$tmp/this.data" ] || fail "$name: no tensor data read from the checkpoint"
        ! cmp -s "$tmp/et.data" "$tmp/this.data" || fail "$name: the same tensors as et: the key did nothing"
    fi
    if [ -n "$base" ] && knows_keys "$base" "$@"; then
        train "$name-base" "$base" 2 "$@"
        if ! cmp -s "$tmp/$name-base.safetensors" "$tmp/$name-t2.safetensors"; then
            data_of "$tmp/$name-base.safetensors" >"$tmp/base.data"
            data_of "$tmp/$name-t2.safetensors" >"$tmp/this.data"
            [ -s "$tmp/this.data" ] || fail "$name: no tensor data read from the checkpoint"
            cmp "$tmp/base.data" "$tmp/this.data" ||
                fail "$name: $base and $etmoe give different checkpoint tensors"
            echo "$name: the tensors are the same bytes; the headers differ (new keys in the config)"
        fi
    fi
    runs=$((runs + 1))
done
echo "$runs configurations: 1 and 2 threads give byte-identical checkpoints"

# With a baseline: a checkpoint the baseline wrote at step 2 (its config may lack keys this build
# added), resumed by this build to step 4, holds the tensors of the baseline's own 4 steps. With
# weight_decay on, so that a missing matrix_weight_decay must read as inherit.
if [ -n "$base" ]; then
    train resume-base "$base" 2 weight_decay=0.01
    rm -rf "$tmp/run"
    OMP_NUM_THREADS=2 "$base" train "$top/data/configs/demo.conf" train_data="$tmp/data/train_*.bin" \
        val_data="$tmp/data/val_*.bin" out_dir="$tmp/run" max_steps=4 batch_size=4 eval_every=0 \
        eval_batches=1 log_every=4 et_warmup_steps=2 weight_decay=0.01 --stop-at 2 >"$tmp/resume.log" 2>&1 ||
        { cat "$tmp/resume.log"; fail "$base train --stop-at 2 failed"; }
    OMP_NUM_THREADS=2 "$etmoe" train "$top/data/configs/demo.conf" train_data="$tmp/data/train_*.bin" \
        val_data="$tmp/data/val_*.bin" out_dir="$tmp/run" max_steps=4 batch_size=4 eval_every=0 \
        eval_batches=1 log_every=4 et_warmup_steps=2 weight_decay=0.01 --resume >>"$tmp/resume.log" 2>&1 ||
        { cat "$tmp/resume.log"; fail "$etmoe could not resume $base's checkpoint"; }
    data_of "$tmp/run/latest.safetensors" >"$tmp/this.data"
    data_of "$tmp/resume-base.safetensors" >"$tmp/base.data"
    [ -s "$tmp/this.data" ] || fail "resume: no tensor data read from the checkpoint"
    cmp "$tmp/base.data" "$tmp/this.data" ||
        fail "resume: $etmoe resuming $base's step-2 checkpoint gives other tensors than $base's run"
    echo "resume: $etmoe continues $base's step-2 checkpoint to the tensors of $base's own run"
fi
[ -z "$base" ] && echo "(ETM_BASELINE_ETMOE not set: no comparison with another build)"
[ -n "$base" ] && echo "and $base gives the same bytes as $etmoe"
exit 0
