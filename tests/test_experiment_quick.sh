#!/bin/sh
# test_experiment_quick.sh: runs the router-comparison experiment (experiments/run.sh) in quick
# mode into a temporary directory and checks that every stage left its outputs and that they
# parse: each run's metrics tables, evaluation and routing profile, the aggregated tables (one
# row per router, finite losses, experts per token near top_k where routing guarantees it, bits
# per byte, the ET authors' routing metrics), the paired intervals (recomputed here from seeds.tsv),
# the figures (PNG files), and results.md with its tables, figure links and the claims section
# (whose verdicts must follow their intervals). Quick mode trains tiny models for a few steps on
# the bundled Austen data (it never needs the Linux corpus), so nothing here judges the routers.
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

routers="dense tc-aux ec-batch et et-fine et-noshared et-softmax-e et-softmax-e-so"
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
        *) for f in routing.tsv routing_authors.tsv thresholds.tsv profile/summary.tsv profile/position.tsv profile/kind.tsv \
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
awk -F'\t' '!/^#/ && $8 != "n/a" && !($6 <= $4 && $4 <= $7 && $10 <= $9 && $9 <= $11) { print "CI does not hold the mean: " $0; bad = 1 } END { exit bad }' \
    "$t/significance.tsv" || fail "significance.tsv"
# bits per byte for every run, and the paired interval of et - dense recomputed from seeds.tsv
# (two seeds: t = 12.706)
awk -F'\t' 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; if (!("eval_bpb" in c)) { print "no eval_bpb"; exit 1 } }
    !/^#/ && !($c["eval_bpb"] > 0 && $c["eval_bpb"] < 20) { print "bad bits per byte: " $0; exit 1 }' "$t/seeds.tsv" ||
    fail "seeds.tsv bits per byte"
want=$(awk -F'\t' '$1 == "et" { e[$2] = $3 } $1 == "dense" { d[$2] = $3 }
    END { for (s in e) { x = e[s] - d[s]; n++; s1 += x; s2 += x * x }
          m = s1 / n; sd = sqrt((s2 - s1 * s1 / n) / (n - 1)); h = 12.706 * sd / sqrt(n)
          printf "%.4f %.4f %.4f", m, m - h, m + h }' "$t/seeds.tsv")
got=$(awk -F'\t' '$1 == "et" && $2 == "dense" { printf "%.4f %.4f %.4f", $4, $6, $7 }' "$t/significance.tsv")
[ -n "$want" ] && [ "$want" = "$got" ] || fail "paired interval et - dense: significance.tsv has '$got', seeds.tsv gives '$want'"
# the ET authors' metrics, second-half means: shares of 0, 1, 2+ experts sum to 1; gates in (0, 1]
awk -F'\t' 'NR == 1 { sub(/^# */, ""); for (i = 1; i <= NF; i++) c[$i] = i; next }
    $3 != "dense" { s = $c["tokens_0"] + $c["tokens_1"] + $c["tokens_2plus"]
        if (s < 0.999 || s > 1.001 || !($c["gate_mean"] > 0 && $c["gate_mean"] <= 1) || !($c["bpb_mean"] > 0)) {
            print "authors metrics of " $1 ": shares sum " s ", gate " $c["gate_mean"] ", bpb " $c["bpb_mean"]; bad = 1 } }
    $1 == "et" && !($c["cutoff_gap_abs"] >= 0 && $c["gate_down_ratio"] > 0) { print "et: no cut-off gap or gate x down ratio"; bad = 1 }
    END { exit bad }' "$t/routers.tsv" || fail "routers.tsv authors metrics"
[ -s "$t/corpus_austen.tsv" ] || fail "no corpus_austen.tsv"
for f in curve_et.tsv position_et.tsv position_ec-batch_batch.tsv kind.tsv thr_et.tsv thr_ec-batch.tsv usage.tsv passage.tsv; do
    [ -s "$t/$f" ] || fail "$t/$f missing"
done
# the cut-offs recovered from the moving average: finite numbers at every step of the ET run
awk -F'\t' '!/^#/ { for (i = 2; i <= NF; i++) if ($i !~ /^-?[0-9.]+(e[-+]?[0-9]+)?$/) { print "not a number: " $i; exit 1 } }' \
    "$t/thr_et.tsv" || fail "$t/thr_et.tsv"

md=$tmp/doc/results.md
[ -s "$md" ] || fail "no results.md"
grep -q '^# Router comparison' "$md" || fail "results.md has no title"
grep -q 'Quick mode' "$md" || fail "results.md does not say it is a quick run"
for r in $routers; do grep -q "^| $r | 2 | [0-9.]* ± [0-9.]* | [0-9.]* - [0-9.]* | [-+0-9.]* | [0-9.]* ± [0-9.]* | " "$md" ||
    fail "results.md has no result row with bits per byte for $r"; done
grep -q "^| et | [0-9.]*% | [0-9.]*% | [0-9.]*% | 0\.[0-9]* | " "$md" || fail "results.md lacks the authors' metrics of et"
# the claims: every row's verdict follows its interval (a sign claim whose interval holds zero is
# not resolved; one that excludes zero is held or did not hold)
grep -q "^## The paper's claims" "$md" || fail "results.md has no claims section"
awk -F' \\| ' '/^\| (TC|EC|ET)/ && /95% CI/ {
        n++
        split($3, a, /[( ]+/); lo = a[4] + 0; hi = a[6] + 0
        v = $4; sub(/ \|$/, "", v)
        if ($1 ~ /[<>] 0/ && $1 !~ /about/) {
            if (lo < 0 && hi > 0 && v != "not resolved") { print "verdict " v " for an interval holding 0: " $0; bad = 1 }
            if ((lo > 0 || hi < 0) && v == "not resolved") { print "unresolved verdict for an interval excluding 0: " $0; bad = 1 }
        }
    }
    END { if (n < 10) { print n " claims, expected 10"; bad = 1 } exit bad }' "$md" || fail "results.md claims"
grep -q '^[0-9]* claim(s) tested: [0-9]* held, [0-9]* did not hold, [0-9]* not resolved\.$' "$md" || fail "results.md has no claims tally"
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
