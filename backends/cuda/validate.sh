#!/bin/sh
# backends/cuda/validate.sh: the CUDA backend's whole validation on a GPU machine, written as one
# Markdown file (doc/cuda-validation.md by default; doc/cuda.md, "On a GPU machine", says what it
# must hold). Run from a configured and built tree (`make cuda-validation` does):
#
#   1. the machine: date, GPU and driver, toolkit, etmoe version, commit;
#   2. tests/check_cuda (every op against the CPU backend, TF32/bf16 GEMMs) with its whole log;
#   3. etmoe check-backend on the tiny built-in models, then at the demo model's sizes;
#   4. etmoe bench --backend for each preset (bench and d12 by default), dense and ET.
#
# Every command's complete output and exit status go into the file; nothing is summarised by
# hand. The file is written beside its destination and renamed at the end, so an interrupted
# run leaves the previous one in place. Exits 0 when every check passed, 1 otherwise.
#
#   backends/cuda/validate.sh [OUT.md]
#   environment: ETMOE (./etmoe), ETM_VALIDATE_BACKEND (cuda), ETM_VALIDATE_PRESETS ("bench d12"),
#                ETM_VALIDATE_QUICK=1 (the tiny check-backend only, no demo sizes; for a dry run)
set -u

etmoe=${ETMOE:-./etmoe}
backend=${ETM_VALIDATE_BACKEND:-cuda}
presets=${ETM_VALIDATE_PRESETS:-bench d12}
quick=${ETM_VALIDATE_QUICK:-0}
out=${1:-doc/cuda-validation.md}
tmp=$out.tmp.$$
failed=0

[ -x "$etmoe" ] || { echo "validate.sh: $etmoe is not built (run make first)" >&2; exit 2; }
: >"$tmp" || { echo "validate.sh: cannot write $tmp" >&2; exit 2; }
trap 'rm -f "$tmp" "$tmp.cmd"' EXIT INT TERM

say() { printf '%s\n' "$*" >>"$tmp"; }

# run TITLE COMMAND...: the command, its exit status and its whole output (stdout and stderr) as
# a fenced block; also echoed to the terminal so a long run shows progress.
run() {
    title=$1
    shift
    echo "validate.sh: $title: $*" >&2
    "$@" >"$tmp.cmd" 2>&1
    status=$?
    [ $status -eq 0 ] || failed=1
    say "### $title"
    say ""
    say "    \$ $*"
    say ""
    say "exit status $status"
    say ""
    say '```'
    cat "$tmp.cmd" >>"$tmp"
    say '```'
    say ""
    tail -3 "$tmp.cmd" >&2
}

# info COMMAND...: one line of machine facts, or what failed.
info() { "$@" 2>&1 | tr '\n' ' ' | sed 's/ *$//'; }

say "# Validation of the $backend backend against the CPU reference"
say ""
say "<!-- Written by backends/cuda/validate.sh (make cuda-validation); rerun it rather than edit. -->"
say ""
say "| | |"
say "|---|---|"
say "| date | $(date -u '+%Y-%m-%d %H:%M UTC') |"
if command -v nvidia-smi >/dev/null 2>&1; then
    say "| GPU | $(info nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader) |"
else
    say "| GPU | (no nvidia-smi on this machine) |"
fi
nvcc_bin=$(sed -n 's/^NVCC = //p' Makefile 2>/dev/null)
say "| toolkit | $(info "${nvcc_bin:-nvcc}" --version | sed 's/.*\(release [^,]*\).*/\1/') |"
say "| etmoe | $(info "$etmoe" --version) |"
say "| commit | $(git describe --always --dirty 2>/dev/null || echo unknown) |"
say "| CPU | $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null) x $(getconf _NPROCESSORS_ONLN 2>/dev/null) |"
say ""

say "## 1. Every operation (tests/check_cuda)"
say ""
if [ -x tests/check_cuda ]; then
    run "tests/check_cuda" env CK_DEFAULT_TIMEOUT=600 ./tests/check_cuda
else
    say "tests/check_cuda is not built in this tree (\`make cuda-validation\` builds it; configure must"
    say "have built the CUDA backend)."
    say ""
    failed=1
fi

say "## 2. etmoe check-backend: operations, one training step, training curves"
say ""
run "tiny built-in models" "$etmoe" check-backend "$backend"
if [ "$quick" != 1 ]; then
    run "the demo model's sizes, 50 steps" "$etmoe" check-backend "$backend" demo --steps 50 batch_size=4
fi

say "## 3. Speed: etmoe bench --backend $backend"
say ""
say "Model FLOP utilisation is the ratio of the step's GFLOP/s to the GEMM ceiling measured on"
say "the same backend just before and after (doc/performance.md). ET is timed after one warm-up"
say "step (et_warmup_steps=1), so its steps route by thresholds."
say ""
for p in $presets; do
    run "$p, dense" "$etmoe" bench "$p" router=dense --backend "$backend"
    run "$p, ET" "$etmoe" bench "$p" et_warmup_steps=1 --backend "$backend"
done

say "## Result"
say ""
if [ $failed = 0 ]; then say "Every command above exited with status 0."; else say "**At least one command above failed** (see its exit status)."; fi

trap - EXIT INT TERM
mv "$tmp" "$out" && rm -f "$tmp.cmd" || { echo "validate.sh: cannot write $out" >&2; exit 2; }
echo "validate.sh: wrote $out ($( [ $failed = 0 ] && echo 'all passed' || echo 'FAILURES' ))" >&2
exit $failed
