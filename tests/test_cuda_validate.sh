#!/bin/sh
# test_cuda_validate.sh: a dry run of backends/cuda/validate.sh (the GPU validation report) with
# the cpu backend standing in for cuda, so the script cannot rot on machines without a GPU: it
# must write every section with each command's exit status and output, keep going past a
# failing command, report the failure in its exit status, and replace its output only at the end.
set -u
srcdir=${srcdir:-.}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/etm_validate.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
fail() {
    echo "FAIL: $*"
    [ -f "$tmp/v.md" ] && cat "$tmp/v.md"
    exit 1
}
[ -x ./etmoe ] || fail "./etmoe not built"

# a failing command: an unknown backend makes check-backend exit non-zero
echo "previous report" >"$tmp/v.md"
ETM_VALIDATE_BACKEND=no_such_backend ETM_VALIDATE_PRESETS=demo ETM_VALIDATE_QUICK=1 \
    sh "$srcdir/backends/cuda/validate.sh" "$tmp/v.md" 2>"$tmp/err1"
[ $? = 1 ] || fail "a failing check-backend did not make validate.sh exit 1"
grep -q '^\*\*At least one command above failed\*\*' "$tmp/v.md" || fail "the failure is not reported"
ls "$tmp" | grep -q tmp && fail "validate.sh left its temporary file"

# the cpu backend against itself: every check-backend and bench command passes
ETM_VALIDATE_BACKEND=cpu ETM_VALIDATE_PRESETS=demo ETM_VALIDATE_QUICK=1 \
    sh "$srcdir/backends/cuda/validate.sh" "$tmp/v.md" 2>"$tmp/err2"
status=$?
[ $status = 0 ] || [ $status = 1 ] || fail "validate.sh exited $status"
for h in '# Validation of the cpu backend' '| date | ' '| commit | ' '## 1. Every operation' \
    '## 2. etmoe check-backend' '### tiny built-in models' '## 3. Speed' '### demo, dense' '### demo, ET' '## Result'; do
    grep -qF "$h" "$tmp/v.md" || fail "no '$h' in the report"
done
[ "$(grep -c '^exit status 0$' "$tmp/v.md")" -ge 3 ] || fail "check-backend and the two benches did not all pass"
grep -q '^PASS$' "$tmp/v.md" || fail "check-backend's verdict is missing"
[ "$(grep -c 'tokens/s' "$tmp/v.md")" -ge 2 ] || fail "the bench output is missing"
# tests/check_cuda: run (skipping or passing) when built, otherwise said to be missing
grep -q -e 'exit status 77' -e 'exit status 0' -e 'is not built in this tree' "$tmp/v.md" ||
    fail "the check_cuda section says nothing"
echo "PASS: validate.sh dry run ($(wc -l <"$tmp/v.md") lines)"
