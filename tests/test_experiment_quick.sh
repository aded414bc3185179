#!/bin/sh
# test_experiment_quick.sh: runs the router-comparison experiment (experiments/run.sh) in quick
# mode into a temporary directory and checks that every stage left its outputs and that they
# parse: each run's metrics tables, evaluation and routing profile, the aggregated tables (one
# row per router, finite losses, experts per token near top_k where routing guarantees it), the
# figures (PNG files), and results.md with its tables and figure links. Quick mode trains tiny
# models for a few steps, so nothing here judges the routers.
set -u
srcdir=${ETM_TEST_DIR:+$ETM_TEST_DIR/..}
: "${srcdir:=$(dirname "$0")/..}"
etmoe=${ETMOE:-$(pwd)/etmoe}
[ -x "$etmoe" ] || { echo "no etmoe program at $etmoe"; exit 99; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/etmoe-experiment-XXXXXX") || exit 99
trap 'rm -rf "$tmp"' EXIT
fail() {
    echo "FAIL: $*"
    exit 1
}

figures=
command -v gnuplot >/dev/null 2>&1 || { figures=--no-figures; echo "gnuplot not found: figures not checked"; }
OMP_NUM_THREADS=1 sh "$srcdir/experiments/run.sh" --quick --out "$tmp/out" --doc "$tmp/doc" --etmoe "$etmoe" \
    --jobs 2 $figures >"$tmp/run.log" 2>&1 || { cat "$tmp/run.log"; fail "run.sh --quick failed"; }

routers="dense tc-none tc-aux tc-lossfree ec-seq ec-batch et et-nowarm"
for r in $routers; do
    for s in 1 2; do
        d=$tmp/out/runs/$r-s$s
        for f in done metrics.jsonl latest.safetensors curve.tsv final.tsv eval.txt; do
            [ -s "$d/$f" ] || [ "$f" = done ] && [ -e "$d/$f" ] || fail "$d/$f missing"
        done
        # 8 steps, every one in the metrics and the curve
        [ "$(grep -vc '^#' "$d/curve.tsv")" = 8 ] || fail "$d/curve.tsv does not have 8 steps"
        case $r in
        dense) ;;
        *) for f in routing.tsv thresholds.tsv profile/summary.tsv profile/position.tsv profile/kind.tsv \
            profile/layers.tsv profile/tokens.tsv profile/batches.tsv profile/passage.tsv; do
            [ -s "$d/$f" ] || fail "$d/$f missing"
        done ;;
        esac
        case $r in ec-* | et*) [ -s "$d/profile-batch/summary.tsv" ] || fail "$d/profile-batch missing" ;; esac
    done
done

t=$tmp/out/tables
awk -F'\t' -v routers="$routers" '
    !/^#/ { n++; name[n] = $1; loss[$1] = $5; kind[$1] = $3; ex[$1] = $13; bex[$1] = $18 }
    END {
        k = split(routers, want, " ")
        if (n != k) { print "routers.tsv has " n " routers, not " k; exit 1 }
        for (i = 1; i <= k; i++) {
            r = want[i]
            if (name[i] != r) { print "routers.tsv row " i " is " name[i] ", not " r; exit 1 }
            if (!(loss[r] > 0 && loss[r] < 20)) { print r ": loss " loss[r] " is not a plausible loss"; exit 1 }
            # TC routes exactly top_k = 1 per token; EC exactly k_target per expert: 1 on average
            if ((kind[r] == "tc" || kind[r] == "ec") && (ex[r] < 0.999 || ex[r] > 1.001)) {
                print r ": training experts per token " ex[r] ", expected 1"; exit 1
            }
            if (kind[r] != "dense" && !(bex[r] >= 0 && bex[r] <= 8)) { print r ": inference experts " bex[r]; exit 1 }
        }
    }' "$t/routers.tsv" || fail "$t/routers.tsv is wrong"
[ "$(grep -vc '^#' "$t/seeds.tsv")" = 16 ] || fail "$t/seeds.tsv does not have 16 runs"
[ "$(grep -vc '^#' "$t/significance.tsv")" = 14 ] || fail "$t/significance.tsv does not have 14 comparisons"
awk -F'\t' '!/^#/ && $7 != "n/a" && !($6 <= $4 && $4 <= $7) { print "CI does not hold the mean: " $0; bad = 1 } END { exit bad }' \
    "$t/significance.tsv" || fail "significance.tsv"
for f in curve_et.tsv position_et.tsv position_ec-seq_batch.tsv kind.tsv thr_et.tsv thr_ec-batch.tsv usage.tsv passage.tsv; do
    [ -s "$t/$f" ] || fail "$t/$f missing"
done
# the cut-offs recovered from the moving average: finite numbers at every step of the ET run
awk -F'\t' '!/^#/ { for (i = 2; i <= NF; i++) if ($i !~ /^-?[0-9.]+(e[-+]?[0-9]+)?$/) { print "not a number: " $i; exit 1 } }' \
    "$t/thr_et.tsv" || fail "$t/thr_et.tsv"

md=$tmp/doc/results.md
[ -s "$md" ] || fail "no results.md"
grep -q '^# Router comparison' "$md" || fail "results.md has no title"
grep -q 'Quick mode' "$md" || fail "results.md does not say it is a quick run"
for r in $routers; do grep -q "^| $r | 2 | [0-9]" "$md" || fail "results.md has no result row for $r"; done
grep -q '^| ET + warm-up | 0.5M -> 500M | 2.844 | 19.88 |' "$md" || fail "results.md lacks the paper's table"
grep -q "the 16 runs' own" "$md" && grep -q '^training times add up to [0-9]* min; this invocation took' "$md" ||
    fail "results.md does not say how long the 16 runs took"
if [ -z "$figures" ]; then
    for f in loss thresholds position kind passage; do
        png=$tmp/doc/figures/$f.png
        [ -s "$png" ] || fail "$png missing"
        [ "$(head -c 8 "$png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] || fail "$png is not a PNG file"
        grep -q "(figures/$f.png)" "$md" || fail "results.md does not show $f.png"
    done
fi

# a second run reuses every finished run and gives the same tables
cp "$t/routers.tsv" "$tmp/routers.before"
OMP_NUM_THREADS=1 sh "$srcdir/experiments/run.sh" --quick --out "$tmp/out" --doc "$tmp/doc" --etmoe "$etmoe" \
    $figures >"$tmp/run2.log" 2>&1 || { cat "$tmp/run2.log"; fail "second run.sh --quick failed"; }
[ "$(grep -c 'done before, reused' "$tmp/run2.log")" = 16 ] || fail "the second run did not reuse the 16 runs"
# seconds differ between runs (the reused runs keep theirs): compare everything else
cut -f1-22,24- "$t/routers.tsv" >"$tmp/a"; cut -f1-22,24- "$tmp/routers.before" >"$tmp/b"
cmp -s "$tmp/a" "$tmp/b" || fail "the second run changed routers.tsv"
grep -q 'this invocation trained 0 of them and reused the' "$md" || fail "results.md does not say the runs were reused"
grep -q 'runs trained at commit [^ ]* x 16;' "$md" || fail "results.md does not say which commit trained the runs"
echo "PASS: quick experiment ($(grep -c . "$md") lines of results.md)"
