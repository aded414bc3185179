#!/bin/sh
# test_mpi.sh: data-parallel training over MPI (doc/distributed.md), the contract of issue 11:
# `mpirun -np N` with grad_accum = A writes the same checkpoint, byte for byte, as one process
# with grad_accum = N x A, for every router kind (ec with ec_pool_scope = step too), Muon and AdamW, clipping and capacity; np 3 for
# an uneven split; the metrics, validation (split over the ranks) included, equal; every rank's parameters, optimizer and router state identical to rank 0's after
# every step (--check-replicas: distributed Muon, router records); resume 2 -> 1 and 1 -> 2 ranks; mismatched configurations refused at start; a
# rank killed mid-run leaves a loadable latest checkpoint. Skips (77) without MPI or mpirun.
set -u
etmoe=${ETMOE:-$(pwd)/etmoe}
[ -x "$etmoe" ] || { echo "no etmoe program at $etmoe"; exit 99; }
"$etmoe" --version | grep -q '^MPI: built' || { echo "SKIP: etmoe is built without MPI (configure --with-mpi)"; exit 77; }
mpirun=${MPIRUN:-mpirun}
command -v "$mpirun" >/dev/null 2>&1 || { echo "SKIP: no mpirun"; exit 77; }
root=
[ "$(id -u)" = 0 ] && root=--allow-run-as-root
mpi() { np=$1; shift; timeout 120 "$mpirun" $root --oversubscribe -np "$np" "$@"; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/etmoe-mpi-XXXXXX") || exit 99
trap 'rm -rf "$tmp"' EXIT
cd "$tmp" || exit 99
export OMP_NUM_THREADS=1
# Under AddressSanitizer (.ci/run's sanitizer stage) Open MPI's plugins, loaded with dlopen and
# unloaded at MPI_Finalize, leave allocations that LeakSanitizer reports without a usable stack
# (so tests/lsan.supp cannot name them). Keep ASan's and UBSan's other checks, drop leak checking
# for this test's processes only; every other test keeps it.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

head -c 60000 "${ETM_DATA_DIR:?}/austen/emma.txt" >text.txt
"$etmoe" prepare --tokenizer austen --out data text.txt >/dev/null 2>&1 || { echo "prepare failed"; exit 99; }
D=$tmp/data
tiny="train_data=$D/train_*.bin val_data=$D/val_*.bin seq_len=16 batch_size=2 n_layer=2 d_model=32 n_head=2 \
ffn_hidden=64 expert_hidden=32 eval_every=2 eval_batches=2 max_steps=4"

# same NAME NP A "overrides": trains one process with grad_accum = NP x A in one/NAME/run and NP
# ranks with grad_accum = A in NAME/run (the same out_dir text, so the checkpoints' configs agree)
# and compares the checkpoints byte for byte.
same() {
    name=$1 np=$2 a=$3 over=$4
    mkdir -p "one/$name" "$name"
    # shellcheck disable=SC2086
    (cd "one/$name" && "$etmoe" train demo $tiny $over grad_accum=$((np * a)) out_dir=run --quiet) ||
        { fail "$name: one process failed"; return; }
    # shellcheck disable=SC2086
    (cd "$name" && mpi "$np" "$etmoe" train demo $tiny $over grad_accum=$a out_dir=run --quiet --check-replicas) ||
        { fail "$name: $np ranks failed"; return; }
    cmp -s "one/$name/run/latest.safetensors" "$name/run/latest.safetensors" ||
        fail "$name: np $np x grad_accum $a differs from one process x grad_accum $((np * a))"
    # the metrics agree too, apart from the timings
    strip() { sed 's/"tokens_per_sec":[^,]*,"elapsed":[^,]*,//' "$1"; }
    [ "$(strip "one/$name/run/metrics.jsonl")" = "$(strip "$name/run/metrics.jsonl")" ] ||
        fail "$name: the metrics differ"
}

same dense 2 1 "router=dense"
same tc-aux 2 1 "router=tc top_k=2 tc_balance=aux"
same tc-switch-cap 2 1 "router=tc tc_balance=switch capacity_factor=1.0"
same tc-lossfree 2 1 "router=tc tc_balance=lossfree"
same ec 2 1 "router=ec"
same et-warmup 2 1 "router=et et_warmup_steps=2"
same et-capacity 2 1 "router=et et_warmup_steps=1 et_capacity=0.5"
same et-adamw-clip 2 1 "router=et et_warmup_steps=1 matrix_optimizer=adamw grad_clip=0.01"
same et-uneven 3 1 "router=et et_warmup_steps=1"
# the step's cut-off over all ranks' tokens (the logits gathered), through threshold routing
same et-step 2 1 "router=et et_warmup_steps=1 et_cutoff_scope=step"
same et-step-2x2 2 2 "router=et et_warmup_steps=1 et_cutoff_scope=step"
same tc-none-2x2 2 2 "router=tc tc_balance=none"
# expert choice over the whole step's tokens (ec_pool_scope = step): the routing pass gathers
# every rank's logits per layer
same ec-step 2 1 "router=ec ec_pool_scope=step"
same ec-step-2x2 2 2 "router=ec ec_pool_scope=step"
# et's EC warm-up over the whole step (steps 1-2), then thresholds (steps 3-4)
same et-ec-step 2 1 "router=et et_warmup_steps=2 ec_pool_scope=step"
same tc-none-4x1 4 1 "router=tc tc_balance=none"

# resume across rank counts: 2 ranks for 2 steps then 1 process (grad_accum 2) for 2 more, and
# the reverse, equal the uninterrupted one-process run of et-warmup
for dir in r21 r12; do mkdir -p "$dir"; done
over="router=et et_warmup_steps=2"
# shellcheck disable=SC2086
(cd r21 && mpi 2 "$etmoe" train demo $tiny $over grad_accum=1 out_dir=run --stop-at 2 --quiet &&
    "$etmoe" train demo $tiny $over grad_accum=2 out_dir=run --resume --quiet) || fail "resume 2 -> 1 failed"
cmp -s one/et-warmup/run/latest.safetensors r21/run/latest.safetensors || fail "resume 2 -> 1 differs"
# shellcheck disable=SC2086
(cd r12 && "$etmoe" train demo $tiny $over grad_accum=2 out_dir=run --stop-at 2 --quiet &&
    mpi 2 "$etmoe" train demo $tiny $over grad_accum=1 out_dir=run --resume --quiet) || fail "resume 1 -> 2 failed"
cmp -s one/et-warmup/run/latest.safetensors r12/run/latest.safetensors || fail "resume 1 -> 2 differs"

# different configurations on the ranks are refused before anything is written
mkdir -p mismatch
# shellcheck disable=SC2086
(cd mismatch && mpi 1 "$etmoe" train demo $tiny out_dir=run --quiet : -np 1 "$etmoe" train demo $tiny \
    out_dir=run lr_matrix=0.5 --quiet) >mismatch.log 2>&1 && fail "mismatched configurations were accepted"
grep -q "differs from rank 0" mismatch.log || fail "no message naming the mismatch: $(cat mismatch.log)"
[ -e mismatch/run/latest.safetensors ] && fail "a refused run wrote a checkpoint"

# a rank killed mid-run: the job stops, the last checkpoint (every step) still loads. Rank 1 is
# killed once rank 0 has written a checkpoint and a few more steps have begun (no fixed delay:
# how long start-up takes does not matter).
mkdir -p killed
# shellcheck disable=SC2086
(cd killed && mpi 2 sh -c '
    if [ "$OMPI_COMM_WORLD_RANK" = 1 ]; then
        (while [ ! -s run/latest.safetensors ]; do sleep 0.2; done; sleep 1; kill -9 $$) &
    fi
    exec "$0" train demo "$@"' "$etmoe" $tiny max_steps=100000 ckpt_every=1 out_dir=run --quiet) >killed.log 2>&1 &&
    fail "a job with a killed rank succeeded"
[ -s killed/run/latest.safetensors ] || fail "no checkpoint after a rank was killed"
"$etmoe" inspect killed/run/latest.safetensors >/dev/null 2>&1 || fail "the checkpoint left after the kill does not load"

[ "$failures" = 0 ] || { echo "test_mpi: $failures failures"; exit 1; }
echo "test_mpi: all cases passed"
