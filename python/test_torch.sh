#!/bin/sh
# test_torch.sh: make check's entry to the PyTorch twin. Skips (77) without an interpreter that
# imports torch (configure's TORCH_PYTHON). Otherwise: check_torch.py (every router and option,
# one optimizer step), then the worked example of doc/validate-your-kernel.md exactly as the
# guide runs it, on the CPU (and on CUDA when this torch has it).
set -u
srcdir=${srcdir:-.}
py=${TORCH_PYTHON:-}
if [ -z "$py" ]; then
    echo "SKIP: no python3 with torch found by configure (Debian: apt-get install python3-torch, then ./configure)"
    exit 77
fi
etmoe=$(pwd)/etmoe
[ -x "$etmoe" ] || { echo "no etmoe program at $etmoe"; exit 99; }
export PYTHONDONTWRITEBYTECODE=1 # a read-only source tree (distcheck) stays clean
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} "$py" "$srcdir/python/check_torch.py" "$etmoe" || exit 1
tmp=$(mktemp -d "${TMPDIR:-/tmp}/etmoe-kernel-XXXXXX") || exit 99
trap 'rm -rf "$tmp"' EXIT
sh "$srcdir/python/examples/validate_kernel.sh" "$etmoe" "$py" "$tmp" || exit 1
# make bench's twin line, on a tiny model (speed is not judged here, only that it runs)
ETM_DATA_DIR=$srcdir/data "$py" "$srcdir/python/bench_torch.py" demo n_layer=2 seq_len=32 batch_size=2 \
    d_model=64 n_head=4 ffn_hidden=128 expert_hidden=64 et_warmup_steps=1 --steps 1 | grep 'tokens/s' || exit 1
