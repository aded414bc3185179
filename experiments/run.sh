#!/bin/sh
# run.sh: the router comparison of the ET paper at small scale (the design of issue 15). Trains
# dense, token choice (aux loss), expert choice (whole-batch pool) and expert threshold models of
# matched active compute, and ET variants (finer sparser experts, no shared expert with top-2, the
# authors' softmax_e gate functions, an expert learning-rate scale, matrix weight decay), five
# paired seeds each, on the English documentation of the Linux kernel (prepared here from Debian's
# linux-source-6.1, not shipped) and, for dense/TC/EC/ET, on the bundled Austen novels; evaluates
# them (loss, bits per byte), profiles their routing, draws the figures with gnuplot and writes
# the results page, whose verdicts on the paper's claims are computed from the tables.
# `make experiment` runs it in full (about two hours on two quiet cores); `make experiment-quick`
# and tests/test_experiment_quick.sh run the quick mode.
#
# usage: experiments/run.sh [--quick] [--out DIR] [--doc DIR] [--etmoe PATH] [--jobs N]
#                           [--seeds "1 2 3 4 5"] [--steps N] [--corpora "linux austen"]
#                           [--no-figures]
#
# Runs that finished with the same command are reused; a run stopped with Ctrl-C resumes from
# its checkpoint. Everything else is recomputed from the runs' files.
set -u

usage() {
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
    cat <<EOF

  --quick        tiny models and steps on the bundled Austen data only (about two minutes):
                 checks the pipeline, not the science
  --out DIR      working directory: corpus, data, runs, tables, figures (default runs/experiment,
                 or runs/experiment-quick with --quick)
  --doc DIR      where results.md and figures/ go (default: OUT/doc; make experiment: doc/)
  --etmoe PATH   the etmoe program (default ./etmoe, else etmoe on the PATH)
  --jobs N       runs trained at once (default 2), each with OMP_NUM_THREADS threads
                 (default 1); results do not depend on either
  --seeds LIST   seeds (default "1 2 3 4 5"; quick mode "1 2")
  --steps N      optimizer steps per run instead of each corpus's own (linux 400, austen 250;
                 ET's warm-up becomes N/11 steps): a shorter or longer experiment
  --corpora LIST corpora, the first is the main one with every arm (default "linux austen";
                 quick mode "austen"); linux needs Debian's linux-source-6.1 package
  --no-figures   skip gnuplot (the tables and results.md are still written)
EOF
}

die() {
    echo "run.sh: $*" >&2
    exit 1
}

quick=0 out= doc= etmoe= jobs=2 seeds= figures=1 steps= corpora=
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
    --corpora) [ $# -ge 2 ] || die "--corpora needs a value"; corpora=$2; shift ;;
    --corpora=*) corpora=${1#*=} ;;
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
austen_dir=$top/data/austen
[ -d "$austen_dir" ] || die "no corpus at $austen_dir"
if [ -z "$etmoe" ]; then
    if [ -x ./etmoe ]; then etmoe=$(pwd)/etmoe; else etmoe=$(command -v etmoe) || die "no etmoe program (build it, or give --etmoe)"; fi
fi
case $etmoe in /*) ;; *) etmoe=$(pwd)/$etmoe ;; esac
[ -x "$etmoe" ] || die "$etmoe is not executable"
if [ $quick = 1 ]; then
    : "${out:=runs/experiment-quick}"
    : "${seeds:=1 2}"
    : "${corpora:=austen}"
else
    : "${out:=runs/experiment}"
    : "${seeds:=1 2 3 4 5}"
    : "${corpora:=linux austen}"
fi
main_corpus=
for c in $corpora; do
    case $c in linux | austen) ;; *) die "unknown corpus '$c' (linux, austen)" ;; esac
    : "${main_corpus:=$c}"
done
[ -n "$main_corpus" ] || die "--corpora is empty"
# the Linux documentation is prepared from Debian's package, which is not installed by bootstrap
# (a 139 MB download): say what to install before anything runs
linux_tar=${LINUX_SOURCE_TAR:-/usr/src/linux-source-6.1.tar.xz}
case " $corpora " in *" linux "*)
    [ -f "$linux_tar" ] || die "no $linux_tar: the Linux documentation corpus is prepared from Debian's
  linux-source-6.1 package (139 MB download, 136 MB installed); install it with
      apt-get install linux-source-6.1
  (or set LINUX_SOURCE_TAR to that tarball, or run without it: --corpora austen)"
    command -v sha256sum >/dev/null 2>&1 || die "sha256sum not found (coreutils)"
    command -v xz >/dev/null 2>&1 || die "xz not found (Debian: apt-get install xz-utils)" ;;
esac
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
eval_every=4 eval_batches=2 warmup_steps=1 muon_warmup_steps=2 log_every=4"
    d_model=32
    final_batches=20
    passage=200
else
    sizes=
    d_model=$("$AWK" '{ sub(/#.*/, "") } $1 == "d_model" && $2 == "=" { print $3; exit }' "$conf")
    final_batches=100000
    passage=400
fi
# steps of a run on each corpus: the Linux documentation's 400 steps of 4,096 tokens use 1.6M of
# its 8.0M training tokens (0.21 epochs); Austen's 250 use 1.02M of its 0.96M (1.06 epochs)
corpus_steps() { # CORPUS
    if [ -n "$steps" ]; then echo "$steps"
    elif [ $quick = 1 ]; then echo 8
    else case $1 in linux) echo 400 ;; austen) echo 250 ;; esac
    fi
}
# the values of the two Muon arms (issue 15: routed experts see top_k / n_routed of the tokens
# but take Muon steps as large as the shared expert's, and nothing but the gate brakes them)
lr_expert_scale=0.35    # about sqrt(top_k / n_routed) = sqrt(1/8)
matrix_weight_decay=0.05
# arm|label|kind|overrides|scope: kind is dense, tc, ec or et; scope: all (every corpus), main
# (the first corpus only) or main-full (the first corpus, not in quick mode: keys another branch
# adds, exp15a). Finer experts: 32 routed of width d and 2 shared of width d, top-2: the dense
# MLP's 4 d units per token at half the routed share (2/32), as the paper's 16 routed + 1 shared.
arms="dense|dense|dense|router=dense|all
tc-aux|TC + aux loss|tc|router=tc tc_balance=aux|all
ec-batch|EC, whole-batch pool|ec|router=ec pool_seqs=0|all
et|ET + warm-up|et|router=et pool_seqs=0|all
et-fine|ET, 32 finer experts, top-2|et|router=et pool_seqs=0 n_routed=32 expert_hidden=$d_model n_shared=2 top_k=2|main
et-noshared|ET, no shared expert, top-2|et|router=et pool_seqs=0 n_shared=0 top_k=2|main
et-softmax-e|ET, softmax_e gates|et|router=et pool_seqs=0 router_activation=softmax_e|main
et-softmax-e-so|ET, softmax_e_shared_out gates|et|router=et pool_seqs=0 router_activation=softmax_e_shared_out|main
et-lr-expert|ET, lr_expert_scale $lr_expert_scale|et|router=et pool_seqs=0 lr_expert_scale=$lr_expert_scale|main-full
et-wd|ET, matrix_weight_decay $matrix_weight_decay|et|router=et pool_seqs=0 matrix_weight_decay=$matrix_weight_decay|main-full"

conf_get() { # KEY FILE: a value of an etmoe config file (quotes removed)
    "$AWK" -v k="$1" '{ sub(/#.*/, "") } $1 == k && $2 == "=" { v = $3; gsub(/"/, "", v); print v; exit }' "$2"
}
# the keys this etmoe knows: an arm whose key it lacks is skipped and the page says so
"$etmoe" train --help-keys >"$out/keys.txt" 2>&1 || die "etmoe train --help-keys failed"
has_key() { "$AWK" -v k="$1" '$1 == k { found = 1 } END { exit !found }' "$out/keys.txt"; }

# ---- data -------------------------------------------------------------------------------------
started=$(date +%s)
# Runs finished after this stamp were trained by this invocation; older ones were reused.
mkdir -p "$out" && : >"$out/started.stamp" || die "cannot write in $out"
load_start=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)
echo "run.sh: $( [ $quick = 1 ] && echo quick mode || echo full experiment ) in $out; corpora $corpora; $jobs job(s) x $threads thread(s); seeds $seeds"
mkdir -p "$out/tables" || die "cannot create $out/tables"

# prepare_austen: the bundled novels with the shipped tokenizer (10% of each book for validation)
prepare_austen() {
    data=$out/data/austen
    "$etmoe" prepare --tokenizer austen --out "$data" --force "$austen_dir"/*.txt >"$out/prepare-austen.log" 2>&1 ||
        die "etmoe prepare failed (see $out/prepare-austen.log)"
    {
        printf '# key\tvalue\n'
        printf 'source\tdata/austen (Project Gutenberg, public domain)\n'
        printf 'files\t%s\n' "$(ls "$austen_dir"/*.txt | wc -l | tr -d ' ')"
        printf 'bytes\t%s\n' "$(cat "$austen_dir"/*.txt | wc -c | tr -d ' ')"
        printf 'sha256\t%s\n' "$(cat "$austen_dir"/*.txt | sha256sum | cut -d' ' -f1)"
        printf 'tokenizer\tausten (data/tokenizers/austen.bpe, vocabulary 4096)\n'
        printf 'val_fraction\t0.1\n'
        "$AWK" '($1 == "train" || $1 == "val") && $3 == "tokens" { n = $2; gsub(/,/, "", n); printf "%s_tokens\t%s\n", $1, n }' \
            "$out/prepare-austen.log"
    } >"$out/tables/corpus_austen.tsv"
}

# prepare_linux: the English documentation of Linux 6.1 (GPL-2.0) from Debian's linux-source-6.1:
# every Documentation/ *.rst and *.txt file outside translations/, in C-locale path order, each
# one document (its last 2% of tokens for validation); a byte-level BPE of 4096 tokens learnt on
# the first 98% of each file's bytes, so the tokenizer never sees the validation text.
# Reused when done before from the same tarball.
prepare_linux() {
    c=$out/corpus/linux
    data=$out/data/linux
    tar_id="$(ls -l "$linux_tar" | "$AWK" '{ print $5 }') $linux_tar"
    if [ -f "$c/prepared" ] && [ "$(cat "$c/prepared")" = "$tar_id" ] && [ -f "$out/tables/corpus_linux.tsv" ]; then
        echo "run.sh: the Linux documentation corpus was prepared before, reused ($c)"
        return 0
    fi
    echo "run.sh: preparing the Linux documentation corpus from $linux_tar (about a minute)"
    rm -rf "$c" && mkdir -p "$c/src" || die "cannot create $c"
    tar -xJf "$linux_tar" -C "$c/src" --wildcards 'linux-source-6.1/Documentation/*' 'linux-source-6.1/COPYING' \
        'linux-source-6.1/LICENSES/preferred/GPL-2.0' || die "cannot extract the documentation from $linux_tar"
    k=$c/src/linux-source-6.1
    (cd "$k" && find Documentation -type f \( -name '*.rst' -o -name '*.txt' \) ! -path 'Documentation/translations/*' |
        LC_ALL=C sort) >"$c/files.txt" || die "cannot list the documentation"
    [ -s "$c/files.txt" ] || die "no documentation files in $linux_tar"
    (cd "$k" && xargs cat <"$c/files.txt") >"$c/corpus.txt" || die "cannot write $c/corpus.txt"
    # one awk process for the thousands of files: C locale, so length() counts bytes
    (cd "$k" && xargs env LC_ALL=C "$AWK" 'BEGIN { RS = "\001"; ORS = "" } { print substr($0, 1, int(length($0) * 98 / 100)) }' \
        <"$c/files.txt") >"$c/tokenizer-text.txt" || die "cannot write $c/tokenizer-text.txt"
    "$etmoe" tokenizer train --vocab-size 4096 --out "$c/linuxdoc.bpe" "$c/tokenizer-text.txt" >"$c/tokenizer.log" 2>&1 ||
        die "etmoe tokenizer train failed (see $c/tokenizer.log)"
    # one etmoe prepare for all files (xargs could split them): the names hold no blanks or globs
    ! grep -q '[[:space:]*?[]' "$c/files.txt" || die "$c/files.txt: a file name with blanks or glob characters"
    (cd "$k" && set -f && set -- $(cat "$c/files.txt") &&
        "$etmoe" prepare --tokenizer "$c/linuxdoc.bpe" --val-fraction 0.02 --out "$data" --force "$@") \
        >"$out/prepare-linux.log" 2>&1 || die "etmoe prepare failed (see $out/prepare-linux.log)"
    {
        printf '# key\tvalue\n'
        printf 'source\t%s (%s bytes, sha256 %s)\n' "$linux_tar" "$(wc -c <"$linux_tar" | tr -d ' ')" "$(sha256sum "$linux_tar" | cut -d' ' -f1)"
        printf 'package\t%s\n' "$(dpkg-query -W -f '${Package} ${Version}' linux-source-6.1 2>/dev/null || echo 'linux-source-6.1 (version unknown)')"
        printf 'licence\t%s\n' "$(sed -n 's/.*SPDX-License-Identifier: //p' "$k/COPYING" | head -1)"
        # the files' own SPDX tags (most have none: the kernel's COPYING applies), most frequent first
        (cd "$k" && xargs grep -h -m1 -o 'SPDX-License-Identifier: .*' <"$c/files.txt") |
            sed 's/^SPDX-License-Identifier: //; s/ *\(-->\|\*\/\)$//' | sort | uniq -c | sort -k1,1nr -k2 |
            "$AWK" -v files="$(wc -l <"$c/files.txt")" '{ n = $1; $1 = ""; t += n; s = s (s == "" ? "" : "; ") substr($0, 2) " x " n }
                END { printf "spdx\t%s; no tag x %d\n", s, files - t }'
        printf 'files\t%s\n' "$(wc -l <"$c/files.txt" | tr -d ' ')"
        printf 'bytes\t%s\n' "$(wc -c <"$c/corpus.txt" | tr -d ' ')"
        printf 'sha256\t%s\n' "$(sha256sum "$c/corpus.txt" | cut -d' ' -f1)"
        printf 'tokenizer_bytes\t%s\n' "$(wc -c <"$c/tokenizer-text.txt" | tr -d ' ')"
        printf 'tokenizer_sha256\t%s\n' "$(sha256sum "$c/linuxdoc.bpe" | cut -d' ' -f1)"
        printf 'tokenizer\t%s\n' "a byte-level BPE of vocabulary 4096 learnt by etmoe tokenizer train on the first 98% of each file"
        printf 'val_fraction\t0.02\n'
        "$AWK" '($1 == "train" || $1 == "val") && $3 == "tokens" { n = $2; gsub(/,/, "", n); printf "%s_tokens\t%s\n", $1, n }' \
            "$out/prepare-linux.log"
    } >"$out/tables/corpus_linux.tsv.tmp" && mv "$out/tables/corpus_linux.tsv.tmp" "$out/tables/corpus_linux.tsv" ||
        die "cannot write $out/tables/corpus_linux.tsv"
    rm -f "$c/tokenizer-text.txt"
    printf '%s\n' "$tar_id" >"$c/prepared"
}

for c in $corpora; do prepare_$c; done
corpus_data() { echo "$out/data/$1"; }
corpus_tokenizer() { case $1 in linux) echo "$out/corpus/linux/linuxdoc.bpe" ;; austen) echo austen ;; esac; }

# ---- one run: train, evaluate, profile ---------------------------------------------------------
# run_one NAME KIND SEED CORPUS OVERRIDES: prints one summary line; returns non-zero on failure.
run_one() {
    name=$1 kind=$2 seed=$3 corpus=$4 overrides=$5
    dir=$out/runs/$name-s$seed
    mkdir -p "$dir" || return 1
    data=$(corpus_data "$corpus")
    cmd="'$etmoe' train '$conf' $overrides seed=$seed $sizes max_steps=$(corpus_steps "$corpus") tokenizer='$(corpus_tokenizer "$corpus")' train_data='$data/train_*.bin' val_data='$data/val_*.bin' out_dir='$dir' --quiet"
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
    echo "  $name seed $seed: validation loss $loss, $bpb bits/byte$( [ "$bloss" != NaN ] && echo " (batch routing $bloss)"), $((t1 - t0)) s"
}

# ---- all runs, in $jobs lanes ------------------------------------------------------------------
# An arm on a second corpus is named CORPUS-ARM (austen-et); on the main corpus, ARM.
mkdir -p "$out/runs" "$out/tables" "$out/figures"
list=$out/runs/list.txt
skipped=
: >"$list"
for seed in $seeds; do
    for c in $corpora; do
        printf '%s\n' "$arms" | while IFS='|' read -r arm label kind overrides scope; do
            [ "$scope" = all ] || [ "$c" = "$main_corpus" ] || continue
            [ "$scope" = main-full ] && [ $quick = 1 ] && continue
            name=$arm
            [ "$c" = "$main_corpus" ] || name=$c-$arm
            w=" et_warmup_steps=$(( $(corpus_steps "$c") / 11 ))"
            [ "$kind" = et ] || w=
            printf '%s|%s|%s|%s|%s|%s%s\n' "$name" "$label" "$kind" "$seed" "$c" "$overrides" "$w"
        done
    done
done >"$list.all"
# arms whose keys this etmoe lacks (an older build): skipped, named on the page
while IFS='|' read -r name label kind seed c overrides; do
    ok=1
    for kv in $overrides; do has_key "${kv%%=*}" || { ok=0; miss=${kv%%=*}; }; done
    if [ $ok = 1 ]; then
        printf '%s|%s|%s|%s|%s|%s\n' "$name" "$label" "$kind" "$seed" "$c" "$overrides" >>"$list"
    else
        case " $skipped " in *" $name "*) ;; *)
            echo "run.sh: skipping $name: this etmoe has no key '$miss' (build a branch that has it)" >&2
            skipped="$skipped $name" ;;
        esac
    fi
done <"$list.all"
n_runs=$(wc -l <"$list")
echo "run.sh: $n_runs runs"
rm -f "$out"/runs/failed.*
lane=0
while [ $lane -lt "$jobs" ]; do
    (
        i=0
        while IFS='|' read -r name label kind seed c overrides; do
            if [ $((i % jobs)) -eq $lane ]; then
                run_one "$name" "$kind" "$seed" "$c" "$overrides" || { : >"$out/runs/failed.$lane"; exit 1; }
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
    printf '# name\tlabel\tkind\tseed\tdir\tcorpus\n'
    while IFS='|' read -r name label kind seed c overrides; do
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$label" "$kind" "$seed" "$out/runs/$name-s$seed" "$c"
    done <"$list"
} >"$tables/runs.tsv"
"$AWK" -v tables="$tables" -f "$here/tables.awk" -f "$here/aggregate.awk" "$tables/runs.tsv" || die "aggregate.awk failed"
first_seed=$(echo $seeds | cut -d' ' -f1)
# the figures show the main corpus
"$AWK" -F'\t' -v c="$main_corpus" '/^#/ || $6 == c' "$tables/runs.tsv" >"$tables/runs_main.tsv"
"$AWK" -v tables="$tables" -v first_seed="$first_seed" -f "$here/figdata.awk" "$tables/runs_main.tsv" || die "figdata.awk failed"

# ---- what made it (figures and results page read it) ------------------------------------------
finished=$(date +%s)
load_end=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)
{
    printf '# key\tvalue\n'
    printf 'mode\t%s\n' "$( [ $quick = 1 ] && echo quick || echo full)"
    printf 'command\t%s\n' "${EXPERIMENT_COMMAND:-experiments/run.sh$( [ $quick = 1 ] && echo ' --quick')}"
    printf 'seeds\t%s\n' "$seeds"
    printf 'corpora\t%s\n' "$corpora"
    printf 'main_corpus\t%s\n' "$main_corpus"
    printf 'skipped\t%s\n' "${skipped# }"
    printf 'lr_expert_scale\t%s\n' "$lr_expert_scale"
    printf 'matrix_weight_decay\t%s\n' "$matrix_weight_decay"
    printf 'warmup\t%s\n' $(( $(corpus_steps "$main_corpus") / 11 ))
    for c in $corpora; do printf 'steps_%s\t%s\nwarmup_%s\t%s\n' "$c" "$(corpus_steps "$c")" "$c" $(( $(corpus_steps "$c") / 11 )); done
    printf 'jobs\t%s\n' "$jobs"
    printf 'threads\t%s\n' "$threads"
    printf 'train_minutes\t%s\n' "$(( (trained - started + 30) / 60 ))"
    printf 'runs_total\t%s\n' "$n_runs"
    printf 'runs_trained\t%s\n' "$(find "$out/runs" -name done -newer "$out/started.stamp" | wc -l | tr -d ' ')"
    # every run's own training time (final.tsv), whichever invocation trained it
    printf 'run_minutes\t%s\n' "$("$AWK" -F'\t' '{ print $5 "/final.tsv" }' "$tables/runs.tsv" | tail -n +2 | xargs cat |
        "$AWK" -F'\t' '$1 == "seconds" { s += $2 } END { printf "%d", (s + 30) / 60 }')"
    printf 'total_minutes\t%s\n' "$(( (finished - started + 30) / 60 ))"
    printf 'total_seconds\t%s\n' "$((finished - started))"
    printf 'load_start\t%s\n' "$load_start"
    printf 'load_end\t%s\n' "$load_end"
    printf 'cpu\t%s\n' "$("$AWK" -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null) x $(getconf _NPROCESSORS_ONLN 2>/dev/null || echo '?')"
    printf 'version\t%s\n' "$("$etmoe" --version | head -1)"
    printf 'commit\t%s\n' "$(git -C "$top" describe --always --dirty 2>/dev/null || echo unknown)"
    # the commits that trained the runs (reused runs keep theirs): "abc1234 x 23, def5678 x 1"
    printf 'run_commits\t%s\n' "$("$AWK" -F'\t' '!/^#/ { print $5 }' "$tables/runs.tsv" | while read -r d; do
        cat "$d/commit" 2>/dev/null || echo unrecorded; done | sort | uniq -c |
        "$AWK" '{ printf "%s%s x %d", (NR > 1 ? ", " : ""), $2, $1 }')"
    printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
    printf 'config\t%s\n' "experiments/experiment.conf"
    printf 'sizes\t%s\n' "${sizes:-(none: experiments/experiment.conf as is)}"
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
