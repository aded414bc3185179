#!/bin/sh
# test_doc_generated.sh: doc/ blocks that a command of the program prints, re-run and compared, so
# that what the program can state is generated, never retyped. A block is a line
#     <!-- generated: etmoe ARGS -->
# followed by the command's exact output, ended by a blank line (doc/distributed.md's tables of
# `etmoe bench CONFIG --comm-model`). Run from the build directory by make check.
set -eu
: "${ETM_TEST_DIR:?run by make check}"
top=$(dirname "$ETM_TEST_DIR")
etmoe=$(pwd)/etmoe
tmp=$(mktemp -d "${TMPDIR:-/tmp}/etmoe-docgen-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fail=0 blocks=0
for doc in "$top"/doc/*.md; do
    grep -n '^<!-- generated: etmoe .* -->$' "$doc" >"$tmp/marks" || continue
    while IFS= read -r mark; do
        line=${mark%%:*}
        args=${mark#*<!-- generated: etmoe }
        args=${args% -->}
        # the block: the lines after the marker up to the first blank one
        awk -v from="$line" 'NR > from { if ($0 == "") exit; print }' "$doc" >"$tmp/doc"
        # shellcheck disable=SC2086
        (cd "$top" && "$etmoe" $args) >"$tmp/program" 2>&1 || { echo "$doc:$line: etmoe $args failed: $(cat "$tmp/program")"; fail=1; continue; }
        blocks=$((blocks + 1))
        if ! cmp -s "$tmp/program" "$tmp/doc"; then
            echo "$doc:$line: the block differs from what 'etmoe $args' prints now (< program, > doc):"
            diff "$tmp/program" "$tmp/doc" || true
            fail=1
        fi
    done <"$tmp/marks"
done
[ "$blocks" -gt 0 ] || { echo "test_doc_generated: no generated blocks found in doc/"; exit 1; }
[ "$fail" = 0 ] && echo "test_doc_generated: $blocks blocks agree with the program"
exit $fail
