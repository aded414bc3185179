#!/bin/sh
# test_same_results.sh: byte-identical checkpoints from short training runs of the demo model
# (ET, TC, dense, Muon's stacked expert layout, AdamW for the matrices; 4 steps each, ET's
# warm-up cut to 2 so that threshold routing runs too):
#  - always: OMP_NUM_THREADS=1 against 2, whole checkpoint files compared with cmp;
#  - with ETM_BASELINE_ETMOE=/path/to/another/etmoe (for example a build of main): that program
#    against this one, same runs, same out_dir, cmp. A speed-up that must not change results
#    (issue 14) is checked this way:
#        make check TESTS=tests/test_same_results.sh ETM_BASELINE_ETMOE=/tmp/main-build/etmoe
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

runs=0
for case in "et" "tc router=tc" "dense router=dense" "stacked muon_expert_layout=stacked" \
    "adamw matrix_optimizer=adamw"; do
    set -- $case
    name=$1
    shift
    train "$name-t1" "$etmoe" 1 "$@"
    train "$name-t2" "$etmoe" 2 "$@"
    cmp "$tmp/$name-t1.safetensors" "$tmp/$name-t2.safetensors" ||
        fail "$name: 1 and 2 threads give different checkpoints"
    if [ -n "$base" ]; then
        train "$name-base" "$base" 2 "$@"
        cmp "$tmp/$name-base.safetensors" "$tmp/$name-t2.safetensors" ||
            fail "$name: $base and $etmoe give different checkpoints"
    fi
    runs=$((runs + 1))
done
echo "$runs configurations: 1 and 2 threads give byte-identical checkpoints"
[ -z "$base" ] && echo "(ETM_BASELINE_ETMOE not set: no comparison with another build)"
[ -n "$base" ] && echo "and $base gives the same bytes as $etmoe"
exit 0
