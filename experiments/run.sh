#!/bin/sh
# run.sh: the router comparison of the ET paper at small scale, on the bundled Austen corpus.
# Trains dense, token choice (no balancing, aux loss, loss-free), expert choice (one-sequence and
# whole-batch pools) and expert threshold (with and without warm-up) models of matched active
# compute, several seeds each, evaluates them, profiles their routing, draws the figures with
# gnuplot and writes the results page. `make experiment` runs it in full (about an hour on two
# cores); `make experiment-quick` and tests/test_experiment_quick.sh run the quick mode.
#
# usage: experiments/run.sh [--quick] [--out DIR] [--doc DIR] [--etmoe PATH] [--jobs N]
#                           [--seeds "1 2 3"] [--steps N] [--no-figures]
#
# Runs that finished with the same command are reused; a run stopped with Ctrl-C resumes from
# its checkpoint. Everything else is recomputed from the runs' files.
set -u

usage() {
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    cat <<EOF

  --quick        tiny models and steps (about a minute): checks the pipeline, not the science
  --out DIR      working directory: data, runs, tables, figures (default runs/experiment,
                 or runs/experiment-quick with --quick)
  --doc DIR      where results.md and figures/ go (default: OUT/doc; make experiment: doc/)
  --etmoe PATH   the etmoe program (default ./etmoe, else etmoe on the PATH)
  --jobs N       runs trained at once (default 2), each with OMP_NUM_THREADS threads
                 (default 1); results do not depend on either
  --seeds LIST   seeds (default "1 2 3"; quick mode "1 2")
  --steps N      optimizer steps per run instead of the config's max_steps (ET's warm-up
                 becomes N/11 steps, as 45 of 500): a shorter or longer experiment
  --no-figures   skip gnuplot (the tables and results.md are still written)
EOF
}

die() {
    echo "run.sh: $*" >&2
    exit 1
}

quick=0 out= doc= etmoe= jobs=2 seeds= figures=1 steps=
while [ $# -gt 0 ]; do
    case $1 in
    --quick) quick=1 ;;
    --out) [ $# -ge 2 ] || die "--out needs a value"; out=$2; shift ;;
    --out=*) out=${1#*=} ;;
    --doc) [ $# -ge 2 ] || die "--doc needs a value"; doc=$2; shift ;;
    --doc=*) doc=${1#*=} ;;
    --etmoe) [ $# -ge 2 ] || die "--etmoe needs a value"; etmoe=$2; shift ;;
    --etmoe=*) etmoe=${1#*=} ;;
    --jobs) [ $# -ge 2 ] || die "--jobs needs a value"; jobs=$2; shift ;;
    --jobs=*) jobs=${1#*=} ;;
    --seeds) [ $# -ge 2 ] || die "--seeds needs a value"; seeds=$2; shift ;;
    --seeds=*) seeds=${1#*=} ;;
    --steps) [ $# -ge 2 ] || die "--steps needs a value"; steps=$2; shift ;;
    --steps=*) steps=${1#*=} ;;
    --no-figures) figures=0 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
    esac
    shift
done
case $jobs in '' | *[!0-9]* | 0) die "--jobs must be a positive integer, not '$jobs'" ;; esac
case $steps in '') ;; *[!0-9]* | 0 | 1 | 2 | 3 | 4 | 5) die "--steps must be an integer of at least 6, not '$steps'" ;; esac

here=$(cd "$(dirname "$0")" && pwd) || die "cannot find the script's directory"
top=$(dirname "$here")
corpus=$top/data/austen
[ -d "$corpus" ] || die "no corpus at $corpus"
if [ -z "$etmoe" ]; then
    if [ -x ./etmoe ]; then etmoe=$(pwd)/etmoe; else etmoe=$(command -v etmoe) || die "no etmoe program (build it, or give --etmoe)"; fi
fi
case $etmoe in /*) ;; *) etmoe=$(pwd)/$etmoe ;; esac
[ -x "$etmoe" ] || die "$etmoe is not executable"
if [ $quick = 1 ]; then
    : "${out:=runs/experiment-quick}"
    : "${seeds:=1 2}"
else
    : "${out:=runs/experiment}"
    : "${seeds:=1 2 3}"
fi
mkdir -p "$out" || die "cannot create $out"
out=$(cd "$out" && pwd)
: "${doc:=$out/doc}"
mkdir -p "$doc/figures" || die "cannot create $doc/figures"
doc=$(cd "$doc" && pwd)
if [ $figures = 1 ] && ! command -v gnuplot >/dev/null 2>&1; then
    die "gnuplot not found (Debian: apt-get install gnuplot-nox; or pass --no-figures)"
fi
threads=${OMP_NUM_THREADS:-1}
export OMP_NUM_THREADS=$threads
# a waiting OpenMP thread sleeps instead of spinning: spinning steals the core from the other job
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
AWK=${AWK:-awk}

# ---- settings ---------------------------------------------------------------------------------
conf=$here/experiment.conf
if [ $quick = 1 ]; then
    # a tiny model: every stage runs, nothing is learnt
    sizes="seq_len=32 n_layer=3 d_model=32 n_head=2 n_kv_head=1 ffn_hidden=128 expert_hidden=64 batch_size=4 \
max_steps=8 eval_every=4 eval_batches=2 warmup_steps=1 muon_warmup_steps=2 log_every=4"
    warmup=3
    final_batches=20
    passage=200
else
    sizes=
    warmup=45
    final_batches=100000
    passage=400
fi
if [ -n "$steps" ]; then
    sizes="$sizes max_steps=$steps"
    warmup=$((steps / 11))
fi
# name|label|kind|overrides: kind is dense, tc, ec or et
routers="dense|dense|dense|router=dense
tc-none|TC, no balancing|tc|router=tc tc_balance=none
tc-aux|TC + aux loss|tc|router=tc tc_balance=aux
tc-lossfree|TC loss-free|tc|router=tc tc_balance=lossfree
ec-seq|EC, 1-sequence pool|ec|router=ec pool_seqs=1
ec-batch|EC, whole-batch pool|ec|router=ec pool_seqs=0
et|ET + warm-up|et|router=et pool_seqs=0 et_warmup_steps=$warmup
et-nowarm|ET, no warm-up|et|router=et pool_seqs=0 et_warmup_steps=0"

conf_get() { # KEY FILE: a value of an etmoe config file (quotes removed)
    "$AWK" -v k="$1" '{ sub(/#.*/, "") } $1 == k && $2 == "=" { v = $3; gsub(/"/, "", v); print v; exit }' "$2"
}

# ---- data -------------------------------------------------------------------------------------
started=$(date +%s)
# Runs finished after this stamp were trained by this invocation; older ones were reused.
mkdir -p "$out" && : >"$out/started.stamp" || die "cannot write in $out"
load_start=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)
echo "run.sh: $( [ $quick = 1 ] && echo quick mode || echo full experiment ) in $out; $jobs job(s) x $threads thread(s); seeds $seeds"
data=$out/data
"$etmoe" prepare --tokenizer austen --out "$data" --force "$corpus"/*.txt >"$out/prepare.log" 2>&1 ||
    die "etmoe prepare failed (see $out/prepare.log)"

# ---- one run: train, evaluate, profile ---------------------------------------------------------
# run_one NAME KIND SEED OVERRIDES: prints one summary line; returns non-zero on failure.
run_one() {
    name=$1 kind=$2 seed=$3 overrides=$4
    dir=$out/runs/$name-s$seed
    mkdir -p "$dir" || return 1
    cmd="'$etmoe' train '$conf' $overrides seed=$seed $sizes train_data='$data/train_*.bin' val_data='$data/val_*.bin' out_dir='$dir' --quiet"
    log=$dir/log.txt
    if [ -f "$dir/done" ] && [ "$(cat "$dir/command" 2>/dev/null)" = "$cmd" ]; then
        echo "  $name seed $seed: done before, reused"
        return 0
    fi
    rm -f "$dir/done"
    if [ -f "$dir/latest.safetensors" ] && [ "$(cat "$dir/command" 2>/dev/null)" = "$cmd" ]; then
        how=--resume
    else
        how=--force
    fi
    printf '%s\n' "$cmd" >"$dir/command"
    t0=$(date +%s)
    eval "$cmd $how" >"$log" 2>&1 || { echo "  $name seed $seed: training failed (see $log)"; return 1; }
    t1=$(date +%s)
    git -C "$top" describe --always --dirty >"$dir/commit" 2>/dev/null || echo unknown >"$dir/commit"
    ckpt=$dir/latest.safetensors
    "$etmoe" eval "$ckpt" --batches $final_batches >"$dir/eval.txt" 2>>"$log" ||
        { echo "  $name seed $seed: eval failed (see $log)"; return 1; }
    loss=$("$AWK" '$1 == "loss" { print $2 }' "$dir/eval.txt")
    [ -n "$loss" ] || { echo "  $name seed $seed: no loss in $dir/eval.txt"; return 1; }
    # bits per byte (NaN when etmoe eval had no tokenizer): the field after "bits/byte"
    bpb=$("$AWK" '$1 == "loss" { for (i = 2; i < NF; i++) if ($i == "bits/byte") v = $(i + 1) } END { print (v == "" ? "NaN" : v) }' "$dir/eval.txt")
    bloss=NaN
    if [ "$kind" = ec ] || [ "$kind" = et ]; then
        "$etmoe" eval "$ckpt" --batches $final_batches --mode batch >"$dir/eval-batch.txt" 2>>"$log" ||
            { echo "  $name seed $seed: batch-mode eval failed (see $log)"; return 1; }
        bloss=$("$AWK" '$1 == "loss" { print $2 }' "$dir/eval-batch.txt")
    fi
    if [ "$kind" != dense ]; then
        "$etmoe" routing-profile "$ckpt" --out "$dir/profile" --batches $final_batches --passage $passage \
            --width 72 >>"$log" 2>&1 || { echo "  $name seed $seed: routing-profile failed (see $log)"; return 1; }
        if [ "$kind" = ec ] || [ "$kind" = et ]; then
            "$etmoe" routing-profile "$ckpt" --out "$dir/profile-batch" --mode batch --batches $final_batches \
                --passage $passage --width 72 >>"$log" 2>&1 ||
                { echo "  $name seed $seed: routing-profile --mode batch failed (see $log)"; return 1; }
        fi
    fi
    cfg=$dir/config.conf
    tps=$(( $(conf_get batch_size "$cfg") * $(conf_get seq_len "$cfg") * $(conf_get grad_accum "$cfg") ))
    "$AWK" -v out="$dir" -v tokens_per_step=$tps -v n_routed="$(conf_get n_routed "$cfg")" \
        -v beta="$(conf_get et_beta "$cfg")" -f "$here/json.awk" -f "$here/metrics.awk" "$dir/metrics.jsonl" ||
        { echo "  $name seed $seed: bad metrics"; return 1; }
    printf '# key\tvalue\neval_loss\t%s\neval_batch_loss\t%s\neval_bpb\t%s\nseconds\t%s\n' "$loss" "$bloss" "$bpb" $((t1 - t0)) >"$dir/final.tsv"
    : >"$dir/done"
    echo "  $name seed $seed: validation loss $loss$( [ "$bloss" != NaN ] && echo " (batch routing $bloss)"), $((t1 - t0)) s"
}

# ---- all runs, in $jobs lanes ------------------------------------------------------------------
mkdir -p "$out/runs" "$out/tables" "$out/figures"
list=$out/runs/list.txt
: >"$list"
for seed in $seeds; do
    printf '%s\n' "$routers" | while IFS='|' read -r name label kind overrides; do
        printf '%s|%s|%s|%s|%s\n' "$name" "$label" "$kind" "$seed" "$overrides"
    done >>"$list"
done
n_runs=$(wc -l <"$list")
echo "run.sh: $n_runs runs"
rm -f "$out"/runs/failed.*
lane=0
while [ $lane -lt "$jobs" ]; do
    (
        i=0
        while IFS='|' read -r name label kind seed overrides; do
            if [ $((i % jobs)) -eq $lane ]; then
                run_one "$name" "$kind" "$seed" "$overrides" || { : >"$out/runs/failed.$lane"; exit 1; }
            fi
            i=$((i + 1))
        done <"$list"
    ) &
    lane=$((lane + 1))
done
wait
if ls "$out"/runs/failed.* >/dev/null 2>&1; then die "some runs failed (their logs are named above)"; fi
trained=$(date +%s)

# ---- tables ------------------------------------------------------------------------------------
tables=$out/tables
{
    printf '# name\tlabel\tkind\tseed\tdir\n'
    while IFS='|' read -r name label kind seed overrides; do
        printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$label" "$kind" "$seed" "$out/runs/$name-s$seed"
    done <"$list"
} >"$tables/runs.tsv"
"$AWK" -v tables="$tables" -f "$here/tables.awk" -f "$here/aggregate.awk" "$tables/runs.tsv" || die "aggregate.awk failed"
first_seed=$(echo $seeds | cut -d' ' -f1)
"$AWK" -v tables="$tables" -v first_seed="$first_seed" -f "$here/figdata.awk" "$tables/runs.tsv" || die "figdata.awk failed"

# ---- what made it (figures and results page read it) ------------------------------------------
finished=$(date +%s)
load_end=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)
{
    printf '# key\tvalue\n'
    printf 'mode\t%s\n' "$( [ $quick = 1 ] && echo quick || echo full)"
    printf 'command\t%s\n' "${EXPERIMENT_COMMAND:-experiments/run.sh$( [ $quick = 1 ] && echo ' --quick')}"
    printf 'seeds\t%s\n' "$seeds"
    printf 'jobs\t%s\n' "$jobs"
    printf 'threads\t%s\n' "$threads"
    printf 'train_minutes\t%s\n' "$(( (trained - started + 30) / 60 ))"
    printf 'runs_total\t%s\n' "$(find "$out/runs" -name done | wc -l | tr -d ' ')"
    printf 'runs_trained\t%s\n' "$(find "$out/runs" -name done -newer "$out/started.stamp" | wc -l | tr -d ' ')"
    # every run's own training time (final.tsv), whichever invocation trained it
    printf 'run_minutes\t%s\n' "$(cat "$out"/runs/*/final.tsv | "$AWK" -F'\t' '$1 == "seconds" { s += $2 } END { printf "%d", (s + 30) / 60 }')"
    printf 'total_minutes\t%s\n' "$(( (finished - started + 30) / 60 ))"
    printf 'total_seconds\t%s\n' "$((finished - started))"
    printf 'load_start\t%s\n' "$load_start"
    printf 'load_end\t%s\n' "$load_end"
    printf 'cpu\t%s\n' "$("$AWK" -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null) x $(getconf _NPROCESSORS_ONLN 2>/dev/null || echo '?')"
    printf 'version\t%s\n' "$("$etmoe" --version | head -1)"
    printf 'commit\t%s\n' "$(git -C "$top" describe --always --dirty 2>/dev/null || echo unknown)"
    # the commits that trained the runs (reused runs keep theirs): "abc1234 x 23, def5678 x 1"
    printf 'run_commits\t%s\n' "$(for d in "$out"/runs/*/; do [ -f "$d/done" ] || continue
        cat "$d/commit" 2>/dev/null || echo unrecorded; done | sort | uniq -c |
        "$AWK" '{ printf "%s%s x %d", (NR > 1 ? ", " : ""), $2, $1 }')"
    printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
    printf 'config\t%s\n' "experiments/experiment.conf"
    printf 'sizes\t%s\n' "${sizes:-(none: experiments/experiment.conf as is)}"
    printf 'warmup\t%s\n' "$warmup"
    # "train 964,015 tokens in 1 shard: ..." and "val ..." from etmoe prepare
    "$AWK" '($1 == "train" || $1 == "val") && $3 == "tokens" { n = $2; gsub(/,/, "", n); printf "%s_tokens\t%s\n", $1, n }' \
        "$out/prepare.log"
} >"$tables/run_info.tsv"

# ---- figures -----------------------------------------------------------------------------------
if [ $figures = 1 ]; then
    for gp in loss thresholds position kind passage; do
        gnuplot -e "tables='$tables'; figures='$out/figures'; here='$here'" "$here/plot_$gp.gp" >"$out/figures/$gp.log" 2>&1 ||
            die "gnuplot $gp failed (see $out/figures/$gp.log)"
    done
    cp "$out"/figures/*.png "$doc/figures/" || die "cannot copy the figures to $doc/figures"
fi

# ---- results page ------------------------------------------------------------------------------
"$AWK" -v tables="$tables" -v figures=$figures -f "$here/tables.awk" -f "$here/report.awk" "$tables/runs.tsv" >"$doc/results.md.tmp" &&
    mv "$doc/results.md.tmp" "$doc/results.md" || die "report.awk failed"
echo "run.sh: done in $((finished - started)) s: $doc/results.md"
