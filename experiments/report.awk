# report.awk: writes doc/results.md (markdown, to stdout) from the experiment's tables.
#   awk -v tables=DIR -v figures=1 -f report.awk DIR/runs.tsv > results.md
# Reads DIR/run_info.tsv, corpus_*.tsv, routers.tsv, seeds.tsv, significance.tsv, kind.tsv,
# tokens_*.tsv and the first run's config.conf (all written by run.sh, aggregate.awk and
# figdata.awk). Every number on the page comes from those files, except the paper's, which are
# copied below with their source. The verdicts on the paper's claims are rules over the seeds'
# 95% intervals (section "The paper's claims"), not typed in.

function fail(msg) {
    print "report.awk: " msg > "/dev/stderr"
    failed = 1
    exit 1
}

function f4(x) { return isnum(x) ? sprintf("%.4f", x) : "-" }
function f3(x) { return isnum(x) ? sprintf("%.3f", x) : "-" }
function f2(x) { return isnum(x) ? sprintf("%.2f", x) : "-" }
function signed(x) { return isnum(x) ? sprintf("%+.4f", x) : "-" }
function signed3(x) { return isnum(x) ? sprintf("%+.3f", x) : "-" }
function pct(x) { return isnum(x) ? sprintf("%.1f%%", 100 * x) : "-" }
function tokens(x) {
    if (!isnum(x)) return "not reached"
    if (x >= 1e6) return sprintf("%.2fM", x / 1e6)
    if (x >= 1e3) return sprintf("%.0fk", x / 1e3)
    return sprintf("%.0f", x)
}

# Reads a TSV with a '#' header into T[row, column name] (rows from 1); returns the row count.
function read_table(path, T, COLS, optional,    line, f, h, n, i, nh) {
    split("", T)
    n = 0
    nh = 0
    while ((getline line < path) > 0) {
        if (line ~ /^#/) {
            sub(/^# */, "", line)
            nh = split(line, h, "\t")
            for (i = 1; i <= nh; i++) COLS[i] = h[i]
            continue
        }
        if (line == "") continue
        n++
        split(line, f, "\t")
        for (i = 1; i <= nh; i++) T[n, h[i]] = f[i]
    }
    close(path)
    if (nh == 0) {
        if (optional) return 0
        fail(path ": missing or without a header")
    }
    return n
}

# Paired difference (a - b) of seeds.tsv column col (default eval_loss) over the seeds both
# routers ran: sets D_n, D_mean, D_lo, D_hi (95%, Student t), D_sig.
function paired(a, b, col,    i, j, d, s1, s2, var, half) {
    if (col == "") col = "eval_loss"
    D_n = 0; s1 = 0; s2 = 0
    for (i = 1; i <= nseed; i++) {
        if (S[i, "name"] != a || !isnum(S[i, col])) continue
        for (j = 1; j <= nseed; j++)
            if (S[j, "name"] == b && S[j, "seed"] == S[i, "seed"] && isnum(S[j, col])) {
                d = S[i, col] - S[j, col]
                D_n++; s1 += d; s2 += d * d
            }
    }
    D_mean = D_n ? s1 / D_n : "NaN"
    D_lo = "NaN"; D_hi = "NaN"; D_sig = "n/a"
    if (D_n > 1) {
        var = (s2 - s1 * s1 / D_n) / (D_n - 1)
        half = tcrit(D_n - 1) * sqrt(var > 0 ? var : 0) / sqrt(D_n)
        D_lo = D_mean - half; D_hi = D_mean + half
        D_sig = (D_lo > 0 || D_hi < 0) ? "yes" : "no"
    }
}

# One router's seeds.tsv column col over its seeds: sets D_n, D_mean, D_lo, D_hi (95%), D_sig
# (the interval excludes zero), as paired() does for a difference.
function oneseed(a, col,    i, v, s1, s2, var, half) {
    D_n = 0; s1 = 0; s2 = 0
    for (i = 1; i <= nseed; i++)
        if (S[i, "name"] == a && isnum(S[i, col])) { v = S[i, col] + 0; D_n++; s1 += v; s2 += v * v }
    D_mean = D_n ? s1 / D_n : "NaN"
    D_lo = "NaN"; D_hi = "NaN"; D_sig = "n/a"
    if (D_n > 1) {
        var = (s2 - s1 * s1 / D_n) / (D_n - 1)
        half = tcrit(D_n - 1) * sqrt(var > 0 ? var : 0) / sqrt(D_n)
        D_lo = D_mean - half; D_hi = D_mean + half
        D_sig = (D_lo > 0 || D_hi < 0) ? "yes" : "no"
    }
}

# The rules behind every verdict, over the interval D_lo..D_hi that paired() or oneseed() set:
#   sign: the paper says the quantity is below zero (want < 0) or above (want > 0): held when the
#         interval lies on that side, did not hold when it lies on the other, else not resolved;
#   near: the paper says it is about zero: held when the interval lies inside (-m, m), did not
#         hold when it lies outside it entirely, else not resolved;
#   band: the paper says it is about t: held inside (lo, hi), did not hold entirely outside.
function verdict_sign(want) {
    if (D_n < 2) return "not testable (one seed)"
    if ((want < 0 && D_hi < 0) || (want > 0 && D_lo > 0)) return "**held**"
    if ((want < 0 && D_lo > 0) || (want > 0 && D_hi < 0)) return "**did not hold**"
    return "not resolved"
}
function verdict_band(lo, hi) {
    if (D_n < 2) return "not testable (one seed)"
    if (D_lo > lo && D_hi < hi) return "**held**"
    if (D_hi < lo || D_lo > hi) return "**did not hold**"
    return "not resolved"
}
function ci(fmtx) { return isnum(D_lo) ? sprintf(fmtx " (95%% CI " fmtx " to " fmtx ", %d seeds)", D_mean, D_lo, D_hi, D_n) : (isnum(D_mean) ? sprintf(fmtx " (one seed)", D_mean) : "-") }

# A claim row: claim, corpus, measured, verdict.
function claim(text, corpus, measured, v) {
    printf "| %s | %s | %s | %s |\n", text, corpus, measured, v
    n_claims++
    if (v ~ /^\*\*held/) n_held++
    else if (v ~ /did not hold/) n_failed++
}

function has(name) { return name in R_index }
function rv(name, col) { return R[R_index[name], col] }

BEGIN {
    if (tables == "") fail("set tables")
    read_kv(tables "/run_info.tsv", INFO)
    nr = read_table(tables "/routers.tsv", R, RC)
    for (i = 1; i <= nr; i++) R_index[R[i, "name"]] = i
    nseed = read_table(tables "/seeds.tsv", S, SC)
    nsig = read_table(tables "/significance.tsv", G, GC)
    nkind = read_table(tables "/kind.tsv", K, KC)
    nkc = 0
    for (i = 3; (i in KC); i++) kind_cols[++nkc] = KC[i]

    # the model, from the first run's configuration
    manifest = ARGV[1]
    ARGV[1] = ""
    while ((getline line < manifest) > 0) {
        if (line ~ /^#/ || line == "") continue
        split(line, f, "\t")
        if (first_dir == "") first_dir = f[5]
        label[f[1]] = f[2]
    }
    close(manifest)
    cfg = first_dir "/config.conf"
    while ((getline line < cfg) > 0) {
        sub(/#.*/, "", line)
        if (split(line, f, " = ") == 2) { gsub(/"/, "", f[2]); C[f[1]] = f[2] }
    }
    close(cfg)
    if (!("d_model" in C)) fail(cfg ": no configuration")
    quick = INFO["mode"] == "quick"
    main_corpus = ("main_corpus" in INFO) ? INFO["main_corpus"] : "-"
    ncorp = split(("corpora" in INFO) ? INFO["corpora"] : main_corpus, CORP, " ")
    for (q = 1; q <= ncorp; q++) {
        split("", CK)
        read_kv(tables "/corpus_" CORP[q] ".tsv", CK)
        for (k in CK) CORPUS[CORP[q], k] = CK[k]
    }
    d = C["d_model"]; tps = C["batch_size"] * C["seq_len"] * C["grad_accum"]
    steps = C["max_steps"]

    # ---- header ----
    print "# Router comparison at small scale: dense, token choice, expert choice, expert threshold"
    print ""
    print "<!-- Generated by experiments/run.sh (experiments/report.awk); do not edit: rerun `make experiment`. -->"
    print ""
    if (quick) {
        print "> **Quick mode.** Tiny models trained for a few steps to check that the pipeline runs end to end."
        print "> The numbers below measure nothing about the routers. `make experiment` produces the real page."
        print ""
    }
    print "This page reproduces, at a scale that trains on two CPU cores in about two hours, the router"
    print "comparison of H. Sun, Y. Liu, Y. Wu, L. Sun, *Expert Threshold Routing for Autoregressive Language"
    print "Modeling with Dynamic Computation Allocation and Load Balancing*, arXiv 2603.11535 (2026); the"
    print "paper's numbers that we compare with are copied below, with where they come from."
    print "Every figure and number on it was produced by one command from a clean checkout:"
    print ""
    print "    " INFO["command"]
    print ""
    printf "run %s on %s (commit %s, %s); %s job(s) of %s thread(s) at once; the %s runs' own\n",
           INFO["date"], INFO["cpu"], INFO["commit"], INFO["version"], INFO["jobs"], INFO["threads"],
           INFO["runs_total"]
    if (INFO["runs_trained"] == INFO["runs_total"])
        printf "training times add up to %s min; this invocation took %s min in all;\n",
               INFO["run_minutes"], INFO["total_minutes"]
    else
        printf "training times add up to %s min; this invocation trained %s of them and reused the\nrest from an earlier one (same commands), taking %s min in all; runs trained at commit %s;\n",
               INFO["run_minutes"], INFO["runs_trained"], INFO["total_minutes"], INFO["run_commits"]
    printf "load average (1, 5, 15 min) %s at the start and %s at the end (the machine is shared, so\n",
           INFO["load_start"], INFO["load_end"]
    print "times vary with what else runs; the results do not: runs are bit-exact whatever the threads)."
    print ""

    # ---- setup ----
    print "## Setup"
    print ""
    for (q = 1; q <= ncorp; q++) {
        c = CORP[q]
        cs = INFO["steps_" c]
        if (c == "linux") {
            printf "- **Data%s: the Linux kernel's English documentation** (the kernel's `COPYING`: %s), prepared by\n",
                   q == 1 ? " (main corpus, every arm)" : "", CORPUS[c, "licence"]
            printf "  `run.sh` from Debian's `%s` (`apt-get install linux-source-6.1`; source %s), not shipped:\n",
                   CORPUS[c, "package"], CORPUS[c, "source"]
            print "  `tar -xJf /usr/src/linux-source-6.1.tar.xz --wildcards 'linux-source-6.1/Documentation/*'`, then every"
            print "  `Documentation/` file named `*.rst` or `*.txt` outside `Documentation/translations/`, in C-locale path"
            printf "  order (`find ... | LC_ALL=C sort`): %s files, %s bytes, no byte budget (all of it). The files' own\n", CORPUS[c, "files"], CORPUS[c, "bytes"]
            printf "  SPDX tags: %s (untagged files fall under the kernel's `COPYING`). The files\n", CORPUS[c, "spdx"]
            printf "  concatenated in that order have sha256 `%s`. Tokenizer: %s\n", CORPUS[c, "sha256"], CORPUS[c, "tokenizer"]
            printf "  (`etmoe tokenizer train --vocab-size 4096`, %s bytes; merges file sha256 `%s`), so it never saw\n",
                   CORPUS[c, "tokenizer_bytes"], CORPUS[c, "tokenizer_sha256"]
            printf "  the validation text. `etmoe prepare --val-fraction %s`, each file one document: %s training tokens,\n",
                   CORPUS[c, "val_fraction"], tokens(CORPUS[c, "train_tokens"])
            printf "  the last %s%% of every file's tokens validation (%s tokens). A run trains %d steps: %.2f epochs.\n",
                   100 * CORPUS[c, "val_fraction"], tokens(CORPUS[c, "val_tokens"]), cs,
                   isnum(CORPUS[c, "train_tokens"]) ? cs * tps / CORPUS[c, "train_tokens"] : 0
        } else {
            printf "- **Data%s: the bundled Jane Austen novels** (`data/austen`, public domain; %s bytes, sha256\n",
                   q == 1 ? " (main corpus, every arm)" : " (second corpus: dense, TC, EC, ET)", CORPUS[c, "bytes"]
            printf "  `%s`), tokenized with the shipped 4096-token BPE (`etmoe prepare`): %s training tokens;\n",
                   CORPUS[c, "sha256"], tokens(CORPUS[c, "train_tokens"])
            printf "  the last 10%% of every book is validation (%s tokens). A run trains %d steps: %.2f epochs.\n",
                   tokens(CORPUS[c, "val_tokens"]), cs, isnum(CORPUS[c, "train_tokens"]) ? cs * tps / CORPUS[c, "train_tokens"] : 0
        }
    }
    if (q > 2)
        print "  Second-corpus runs are named `CORPUS-ARM` below (`austen-et`) and compared only with their own corpus's runs."
    printf "- **Model** (`%s`%s): %d layers, d_model %d, %d query and %d key/value heads, sequences of %d\n",
           INFO["config"], quick ? ", shrunk by quick mode" : "", C["n_layer"], d, C["n_head"], C["n_kv_head"], C["seq_len"]
    printf "  tokens, vocabulary %d, nanochat-style (RoPE, QK-norm, ReLU², soft-capped logits).\n", C["vocab_size"]
    printf "- **Matched compute**: the dense model's MLP is %d wide (4 d); every MoE model keeps layer 0 dense\n", C["ffn_hidden"]
    printf "  and has, in each of the other %d layers, %d routed experts and %d shared expert of width %d (2 d),\n",
           C["n_layer"] - C["dense_layers"], C["n_routed"], C["n_shared"], C["expert_hidden"]
    printf "  with top_k = %d routed expert per token on average: %d + %d x %d = %d MLP units per token, the dense\n",
           C["top_k"], C["n_shared"] * C["expert_hidden"], C["top_k"], C["expert_hidden"],
           C["n_shared"] * C["expert_hidden"] + C["top_k"] * C["expert_hidden"]
    printf "  width (TC exactly; EC and ET on average, which the experts-per-token columns below measure).\n"
    printf "- **Training**: %d steps (main corpus) of %d sequences (%s tokens per step, %s tokens), Muon + AdamW,\n",
           steps, C["batch_size"] * C["grad_accum"], tokens(tps), tokens(steps * tps)
    printf "  linear warm-up %d steps and decay over the last %d%%. Seeds %s: a seed fixes the initialisation\n",
           C["warmup_steps"], 100 * C["decay_fraction"], INFO["seeds"]
    printf "  and the data order, so every router sees the same batches in the same order for a given seed.\n"
    printf "- **Validation loss**: token cross-entropy over the whole validation split after training\n"
    printf "  (`etmoe eval`, routing as at inference: ET and EC by their thresholds, TC by top-k), and its\n"
    printf "  **bits per byte** (nats / ln 2 / UTF-8 bytes of the evaluated targets, leaving out targets with\n"
    printf "  no bytes, the <|endoftext|> tokens, as nanochat's evaluate_bpb: comparable across tokenizers, so\n"
    printf "  across the two corpora's; within a corpus it follows the loss closely but not exactly); the curves\n"
    printf "  use the training-time evaluations (the first %d validation batches every %d steps).\n", C["eval_batches"], C["eval_every"]
    print ""
    print "| name | router | settings |"
    print "|---|---|---|"
    for (i = 1; i <= nr; i++) {
        n = R[i, "name"]
        if (R[i, "corpus"] != main_corpus && R[i, "corpus"] != "") sub("^" R[i, "corpus"] "-", "", n)
        s = "-"
        if (n == "dense") s = "ffn_hidden = " C["ffn_hidden"]
        else if (n == "tc-none") s = "top-1 of sigmoid scores, no balancing"
        else if (n == "tc-aux") s = "aux loss, alpha = " C["aux_alpha"] " (the paper's)"
        else if (n == "tc-lossfree") s = "selection bias, u = " C["lossfree_rate"] " (the paper's text)"
        else if (n == "ec-seq") s = "expert choice within each sequence (" C["seq_len"] " tokens, k_target " int(C["seq_len"] * C["top_k"] / C["n_routed"]) ")"
        else if (n == "ec-batch") s = "expert choice within the micro-batch (" tokens(tps) " tokens, k_target " int(tps * C["top_k"] / C["n_routed"]) ")"
        else if (n == "et") s = "thresholds = EMA (beta " C["et_beta"] ") of the micro-batch cut-offs; EC for the first " INFO["warmup"] " steps"
        else if (n == "et-nowarm") s = "the same without warm-up (EC only at step 1, before any threshold exists)"
        else if (n == "et-fine") s = "ET with 32 routed experts and 2 shared, each of width d, top_k 2: 4 d MLP units per token, 2 of 32 routed experts (the paper's sparsity)"
        else if (n == "et-noshared") s = "ET without a shared expert, top_k 2 (the authors' code uses k = 2 then)"
        else if (n == "et-softmax-e") s = "ET with the authors' `router_activation = softmax_e` gates"
        else if (n == "et-softmax-e-so") s = "ET with `router_activation = softmax_e_shared_out`"
        else if (n == "et-lr-expert") s = "ET with routed experts' Muon rate scaled by `lr_expert_scale = " INFO["lr_expert_scale"] "`"
        else if (n == "et-wd") s = "ET with decoupled weight decay on the matrices, `matrix_weight_decay = " INFO["matrix_weight_decay"] "`"
        printf "| %s | %s | %s |\n", R[i, "name"], R[i, "label"], s
    }
    print ""
    if (INFO["skipped"] != "") {
        printf "**Not run**: %s: the etmoe that ran this lacks their keys (see `run.sh`'s log); the grid is incomplete.\n", INFO["skipped"]
        print ""
    }

    # ---- main results ----
    print "## Results"
    print ""
    printf "Final validation loss (nats; mean ± standard deviation over seeds, and the range), the change from\n"
    printf "the dense model, and the training tokens each router needs to reach the dense model's final\n"
    printf "validation loss (%s nats at step %d, on the training-time evaluation batches; read off the\n", f4(R[1, "target_loss"]), steps
    printf "seed-averaged curve, linear between evaluations).\n"
    print ""
    print "| router | seeds | validation loss | range | vs dense | bits per byte | vs dense (bpb) | tokens to dense's loss | x dense's tokens |"
    print "|---|---|---|---|---|---|---|---|---|"
    for (i = 1; i <= nr; i++)
        printf "| %s | %d | %s ± %s | %s - %s | %s | %s ± %s | %s | %s | %s |\n", R[i, "name"], R[i, "seeds"], f4(R[i, "loss_mean"]),
               f4(R[i, "loss_sd"]), f4(R[i, "loss_min"]), f4(R[i, "loss_max"]), signed(R[i, "delta_vs_dense"]),
               f4(R[i, "bpb_mean"]), f4(R[i, "bpb_sd"]), signed(R[i, "bpb_delta_vs_dense"]),
               tokens(R[i, "tokens_to_target"]), f2(R[i, "tokens_ratio_vs_dense"])
    print ""
    print "Load balance and experts per token. *Training* columns: means over the second half of training"
    print "of each step's figures (max/mean: the busiest expert's load over the mean load, per MoE layer;"
    print "no expert: share of tokens that got no routed expert in a layer; experts/token: mean ± standard"
    print "deviation across steps). *Inference* columns: the final checkpoint over the validation split,"
    print "routed as at inference (`etmoe routing-profile`). *Batch-routed loss*: EC and ET models"
    print "evaluated with expert choice over each batch (their training rule; not causal) instead of thresholds."
    print ""
    print "| router | train max/mean load | train no expert | train experts/token | inference experts/token | inference no expert | inference max/mean load | batch-routed loss |"
    print "|---|---|---|---|---|---|---|---|"
    for (i = 1; i <= nr; i++) {
        if (R[i, "kind"] == "dense") continue
        printf "| %s | %s | %s | %s ± %s | %s | %s | %s | %s |\n", R[i, "name"], f2(R[i, "train_max_over_mean_load"]),
               pct(R[i, "train_no_expert_frac"]), f3(R[i, "train_experts"]), f3(R[i, "train_experts_sd"]),
               f3(R[i, "eval_experts"]), pct(R[i, "eval_no_expert_frac"]), f2(R[i, "eval_max_over_mean_load"]),
               f4(R[i, "batch_loss_mean"])
    }
    print ""

    print "How many routed experts a token gets at inference (share of (token, MoE layer) pairs; mean over"
    print "layers and seeds). TC gives every token exactly top_k; EC and ET give some none and some several."
    print "*Mean gate*: the mean sigmoid(logit) of the routed pairs, the weight a routed expert's output"
    print "gets (sigmoid gates are not renormalised): near 0, the routed experts contribute little however"
    print "many are chosen."
    print ""
    print "| router | 0 experts | 1 | 2 | 3 or more | mean | mean gate |"
    print "|---|---|---|---|---|---|---|"
    for (i = 1; i <= nr; i++) {
        if (R[i, "kind"] == "dense") continue
        printf "| %s | %s | %s | %s | %s | %s | %s |\n", R[i, "name"], pct(R[i, "eval_no_expert_frac"]), pct(R[i, "eval_frac_one"]),
               pct(R[i, "eval_frac_two"]), pct(R[i, "eval_frac_three_plus"]), f3(R[i, "eval_experts"]), f3(R[i, "eval_mean_gate"])
    }
    print ""

    print "**The ET authors' routing metrics** (their `src/utils/routing_metrics.py`, logged by etmoe in"
    print "`metrics.jsonl` every step: doc/training.md), means over the MoE layers and the steps of the second"
    print "half of training, then over seeds: the share of tokens routed to 0, 1 and 2 or more experts; mean and"
    print "standard deviation of the routed gates and of the router logits; capacity overflow and underflow"
    print "(only with a capacity: `-` here); *cut-off gap*: the mean over experts of |batch cut-off - threshold"
    print "in force| (their `cutoff_abs_deviation`), how far the thresholds trail the batches (ET and EC)."
    print "And etmoe's measure of the routed experts' weight (issue 15): *gate x down* is the mean routed gate"
    print "times the load-weighted RMS of the routed down projections; *vs shared*, that over the shared"
    print "experts' down-projection RMS (1: a routed expert's output as large as the shared one's)."
    print ""
    print "| router | tokens 0 | 1 | 2+ | gate mean | gate sd | logit mean | logit sd | overflow | underflow | cut-off gap | gate x down | vs shared |"
    print "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    for (i = 1; i <= nr; i++) {
        if (R[i, "kind"] == "dense") continue
        printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", R[i, "name"], pct(R[i, "tokens_0"]), pct(R[i, "tokens_1"]),
               pct(R[i, "tokens_2plus"]), f3(R[i, "gate_mean"]), f3(R[i, "gate_std"]), f3(R[i, "logit_mean"]), f3(R[i, "logit_std"]),
               pct(R[i, "capacity_overflow"]), pct(R[i, "capacity_underflow"]), f3(R[i, "cutoff_gap_abs"]),
               f4(R[i, "gate_down"]), f3(R[i, "gate_down_ratio"])
    }
    print ""

    # ---- observations the numbers support, stated only when they hold ----
    print "### Observations (generated from the tables above)"
    print ""
    nobs = 0
    best = ""; second = ""
    for (i = 1; i <= nr; i++) {
        if (R[i, "corpus"] != main_corpus) continue
        if (best == "" || R[i, "loss_mean"] < rv(best, "loss_mean")) { second = best; best = R[i, "name"] }
        else if (second == "" || R[i, "loss_mean"] < rv(second, "loss_mean")) second = R[i, "name"]
    }
    if (best != "" && second != "") {
        paired(second, best)
        printf "- Lowest mean validation loss: %s (%s), then %s (%s); the paired difference %s is %s at 95%%.\n",
               best, f4(rv(best, "loss_mean")), second, f4(rv(second, "loss_mean")), signed(D_mean),
               D_sig == "yes" ? "resolved" : (D_sig == "no" ? "not resolved" : "not testable with one seed")
        nobs++
    }
    if (has("dense")) {
        better = 0; resolved = 0; worse = 0
        for (i = 1; i <= nr; i++) {
            if (R[i, "kind"] == "dense" || R[i, "corpus"] != main_corpus) continue
            paired(R[i, "name"], "dense")
            if (isnum(D_mean) && D_mean < 0) better++
            if (isnum(D_mean) && D_mean > 0) worse++
            if (D_sig == "yes" && D_mean < 0) resolved++
        }
        printf "- Against the dense model of the same active compute: %d MoE router(s) lower the loss on average,\n", better
        printf "  %d raise it; %d improvement(s) are resolved at 95%%.\n", worse, resolved
        nobs++
    }
    for (i = 1; i <= nr; i++) {
        if (R[i, "kind"] != "et" || !isnum(R[i, "train_experts"])) continue
        te = R[i, "train_experts"]; k = isnum(R[i, "top_k"]) ? R[i, "top_k"] : C["top_k"]
        if (te < 0.3 * k) {
            printf "- **%s starved its experts**: in the second half of training its thresholds routed %s experts per\n", R[i, "name"], f3(te)
            printf "  token (target %d), with %s of (token, layer) pairs getting none; at inference %s. The\n", k, pct(R[i, "train_no_expert_frac"]), f3(R[i, "eval_experts"])
            print "  thresholds are a moving average of past cut-offs: when the router's logits drift (see the"
            print "  threshold figure) they lag behind, and a lagging threshold above the current logits routes"
            print "  almost nothing."
            nobs++
        } else if (te < 0.9 * k || te > 1.1 * k) {
            printf "- %s routed %s ± %s experts per token in the second half of training (target %d; mean ± spread\n", R[i, "name"], f3(te), f3(R[i, "train_experts_sd"]), k
            printf "  over steps), so it spent %s the matched compute there: its thresholds, a moving average of past\n", te < k ? "less than" : "more than"
            printf "  cut-offs, lag the drifting logits (see the threshold figure). At inference it routes %s.\n", f3(R[i, "eval_experts"])
            nobs++
        }
    }
    low = 0; moe = 0; gl = ""
    for (i = 1; i <= nr; i++) {
        if (R[i, "kind"] == "dense" || !isnum(R[i, "eval_mean_gate"])) continue
        moe++
        if (R[i, "eval_mean_gate"] < 0.2) low++
        gl = gl (gl == "" ? "" : ", ") R[i, "name"] " " f3(R[i, "eval_mean_gate"])
    }
    if (moe > 0 && low == moe) {
        print "- **The routed experts are gated nearly off in every MoE model**: the mean sigmoid gate of the"
        printf "  routed pairs at inference is %s. The routers learnt to push their logits down, so\n", gl
        print "  whichever rule picks the experts, their outputs reach the residual stream scaled by these"
        print "  gates: at this scale the comparison is between shared-expert models more than between routers."
        nobs++
    }
    if (nobs == 0) print "- (none)"
    print ""

    # ---- the paper's claims, judged by rules over the intervals ----
    print "## The paper's claims: which held here"
    print ""
    print "Each verdict below is computed from the seeds, not written by hand (`experiments/report.awk`,"
    print "`verdict_*`): **held** when the 95% interval (Student t over the paired seeds) lies on the"
    print "paper's side, **did not hold** when it lies entirely on the other side, *not resolved* when it"
    margin = 0.01
    printf "holds both. \"About equal\" means within +/- %s nats; \"near target\" means within 10%% of top_k.\n", margin
    print ""
    print "| claim (the paper's) | corpus | measured here | verdict |"
    print "|---|---|---|---|"
    n_claims = 0; n_held = 0; n_failed = 0
    for (q = 1; q <= ncorp; q++) {
        c = CORP[q]
        pre = (c == main_corpus) ? "" : c "-"
        dn = pre "dense"; tc = pre "tc-aux"; ec = pre "ec-batch"; et = pre "et"
        if (has(tc) && has(dn)) { paired(tc, dn); claim("TC (+ aux loss) beats dense: TC - dense < 0", c, ci("%+.4f"), verdict_sign(-1)) }
        if (has(ec) && has(tc)) { paired(ec, tc); claim("EC beats TC: EC - TC < 0", c, ci("%+.4f"), verdict_sign(-1)) }
        if (has(et) && has(tc)) { paired(et, tc); claim("ET beats TC: ET - TC < 0 (d20: -0.067)", c, ci("%+.4f"), verdict_sign(-1)) }
        if (has(et) && has(ec)) { paired(et, ec); claim("ET about equals EC: \\|ET - EC\\| < " margin, c, ci("%+.4f"), verdict_band(-margin, margin)) }
        if (has(et) && has(dn)) { paired(et, dn); claim("ET beats dense: ET - dense < 0", c, ci("%+.4f"), verdict_sign(-1)) }
        if (!has(et)) continue
        k = rv(et, "top_k")
        oneseed(et, "early_minus_late")
        claim("ET gives the first tokens more experts: experts/token on positions 1-8 minus on the second half > 0", c, ci("%+.3f"), verdict_sign(1))
        oneseed(et, "punct_minus_word")
        claim("ET gives punctuation more experts than words: difference > 0", c, ci("%+.3f"), verdict_sign(1))
        oneseed(et, "number_minus_word")
        claim("ET gives numbers more experts than words: difference > 0", c, ci("%+.3f"), verdict_sign(1))
        oneseed(et, "train_experts")
        claim("ET's per-batch usage hovers near target in training (second half): experts/token near " k, c, ci("%.3f"), verdict_band(0.9 * k, 1.1 * k))
        oneseed(et, "eval_experts")
        claim("ET's thresholds, frozen, route near target at inference: experts/token near " k, c, ci("%.3f"), verdict_band(0.9 * k, 1.1 * k))
    }
    print ""
    printf "%d claim(s) tested: %d held, %d did not hold, %d not resolved.\n", n_claims, n_held, n_failed, n_claims - n_held - n_failed
    print ""
    # why, where the tables say it: generated only when the condition holds
    print "Why, where the tables show it:"
    print ""
    nwhy = 0
    et = "et"
    if (has(et) && isnum(rv(et, "gate_mean")) && rv(et, "gate_mean") < 0.2) {
        printf "- ET's routed gates are nearly closed (mean gate %s in the second half of training): the routed\n", f3(rv(et, "gate_mean"))
        print "  experts reach the residual stream scaled down, so the comparison is mostly between shared-expert"
        print "  models and the loss differences between routers are small (issue 15: the gate collapse under Muon)."
        nwhy++
    }
    if (has(et) && isnum(rv(et, "tokens_0")) && rv(et, "tokens_0") > 0.3) {
        printf "- ET leaves %s of the (token, layer) pairs without a routed expert in training: the dynamic compute\n", pct(rv(et, "tokens_0"))
        print "  the paper describes is there, but in those pairs the token gets only the shared expert."
        nwhy++
    }
    if (has(et) && isnum(rv(et, "cutoff_gap_abs")) && isnum(rv(et, "logit_std")) && rv(et, "logit_std") > 0 &&
        rv(et, "cutoff_gap_abs") > 0.25 * rv(et, "logit_std")) {
        printf "- ET's thresholds trail the batch cut-offs by %s on average, more than a quarter of the logits'\n", f3(rv(et, "cutoff_gap_abs"))
        printf "  spread (%s): the moving average lags a drifting router, so per-batch usage strays from target.\n", f3(rv(et, "logit_std"))
        nwhy++
    }
    if (R[1, "seeds"] < 3) {
        print "- Fewer than 3 seeds: the intervals are too wide to resolve differences of the size the paper reports."
        nwhy++
    }
    if (nwhy == 0) print "- (no condition of the rules above applies)"
    print ""
    print "Not tested here: the paper's \"routing is stable across checkpoints\" (the runs keep only their final"
    print "checkpoint) and its downstream CORE scores (no downstream tasks at this scale)."
    print ""

    # ---- significance ----
    print "## What is significant"
    print ""
    nseeds = R[1, "seeds"]
    printf "Each router ran %d seed%s. Below, every router against the dense model and against ET with\n", nseeds, nseeds == 1 ? "" : "s"
    printf "warm-up of its own corpus: the mean over seeds of the paired difference in final validation loss (this router minus\n"
    printf "the reference, same seed, so the same data order) with its 95%% confidence interval (Student t,\n"
    printf "%d degree%s of freedom: t = %s). *Resolved* means the interval excludes zero. With so few seeds\n",
           nseeds - 1, nseeds == 2 ? "" : "s", (nseeds > 1) ? tcrit(nseeds - 1) : "-"
    printf "the interval is wide; a difference that is not resolved is not evidence of no difference.\n"
    print ""
    print "| router | reference | paired difference | 95% CI | resolved | in bits per byte | 95% CI (bpb) |"
    print "|---|---|---|---|---|---|---|"
    n_yes = 0; n_cmp = 0
    for (i = 1; i <= nsig; i++) {
        printf "| %s | %s | %s | %s | %s | %s | %s |\n", G[i, "name"], G[i, "reference"], signed(G[i, "mean_diff"]),
               isnum(G[i, "ci_low"]) ? sprintf("%+.4f to %+.4f", G[i, "ci_low"], G[i, "ci_high"]) : "-", G[i, "significant"],
               signed(G[i, "bpb_mean_diff"]), isnum(G[i, "bpb_ci_low"]) ? sprintf("%+.4f to %+.4f", G[i, "bpb_ci_low"], G[i, "bpb_ci_high"]) : "-"
        n_cmp++
        if (G[i, "significant"] == "yes") n_yes++
    }
    print ""
    printf "%d of these %d comparisons are resolved at 95%%. Seed-to-seed spread of a router's final loss is\n", n_yes, n_cmp
    s1 = 0; k = 0
    for (i = 1; i <= nr; i++) if (isnum(R[i, "loss_sd"])) { s1 += R[i, "loss_sd"]; k++ }
    printf "%s nats on average (standard deviation), which sets the scale of differences this experiment can see.\n", k ? f4(s1 / k) : "-"
    print ""

    # ---- against the paper ----
    print "## Next to the paper"
    print ""
    print "The paper's d12 results (validation cross-entropy after 10B tokens of FineWeb-Edu; CORE"
    print "downstream score, higher is better), copied from Sun et al. 2026, arXiv 2603.11535, the d12"
    print "results):"
    print ""
    print "| method | routing pool | CE | CORE |"
    print "|---|---|---|---|"
    print "| dense | - | 3.002 | 15.74 |"
    print "| TC (no balancing) | - | 2.893 | 17.98 |"
    print "| TC + aux loss | 64k | 2.892 | 15.89 |"
    print "| TC loss-free | 512k | 2.898 | 18.03 |"
    print "| EC | 2k | 2.910 | 17.91 |"
    print "| EC | 8k | 2.845 | 18.83 |"
    print "| EC | 64k | 2.841 | 18.75 |"
    print "| EC | 512k | 2.843 | 19.94 |"
    print "| ET + warm-up | 0.5M -> 500M | 2.844 | 19.88 |"
    print ""
    print "At d20 (11.2B tokens): dense 2.751, TC + aux 2.687, EC 256k 2.621, ET 2.620. The paper reports"
    print "that removing the warm-up leaves the CE unchanged but lowers CORE (19.9 to 16.9); each number is"
    print "a single run (no error bars)."
    print ""
    print "The same contrasts here (difference in final validation loss, paired by seed, with its 95% CI) and"
    print "in the paper's d12 table (our pools are far smaller: the paper's smallest EC pool, 2k tokens, is"
    if (has("ec-seq"))
        printf "one of its sequences, like our ec-seq pool of %d tokens; its largest, 512k, is its whole batch, like\n", C["seq_len"]
    else
        print "one of its sequences; its largest, 512k, is its whole batch, like"
    printf "our ec-batch pool of %s):\n", tokens(tps)
    print ""
    print "| contrast | paper (d12) | here | 95% CI | same sign | resolved |"
    print "|---|---|---|---|---|---|"
    np = split("tc-aux/dense/-0.110 et/tc-aux/-0.048 et/ec-batch/0.001 ec-seq/ec-batch/0.067 tc-none/tc-aux/0.001 tc-lossfree/tc-aux/0.006 et/dense/-0.158 et-nowarm/et/0", P, " ")
    for (i = 1; i <= np; i++) {
        split(P[i], pq, "/")
        if (!has(pq[1]) || !has(pq[2])) continue
        paired(pq[1], pq[2])
        paper = pq[3] + 0
        same = (!isnum(D_mean)) ? "-" : (paper == 0) ? "-" : ((paper < 0) == (D_mean < 0)) ? "yes" : "no"
        printf "| %s - %s | %s | %s | %s | %s | %s |\n", pq[1], pq[2], (pq[1] == "et-nowarm") ? "\"unchanged\"" : signed3(paper),
               signed(D_mean), isnum(D_lo) ? sprintf("%+.4f to %+.4f", D_lo, D_hi) : "-", same, D_sig
    }
    print ""
    print "Read the comparison with the scale in mind: the paper's gaps are between models trained on 10B"
    printf "tokens; ours are trained on %s tokens of one small corpus, so only the direction of an effect,\n", tokens(steps * tps)
    print "not its size, can be compared, and only where our interval resolves it."
    print ""

    # ---- figures ----
    if (figures) {
        print "## Figures"
        print ""
        print "**Validation loss during training** (line: mean over seeds; band: lowest to highest seed)."
        print ""
        print "![validation loss curves](figures/loss.png)"
        print ""
        print "**Thresholds and cut-offs** (the paper's Figure 3 at our scale; first seed, first MoE layer). Top:"
        print "ET's thresholds (lines) and each training batch's own cut-off, the k_target-th largest router"
        print "logit of the batch (dots, recovered exactly from the logged moving average). Middle: the same for"
        print "EC with the whole-batch pool, which routes by the dots. Bottom: routed experts per token in each"
        print "training batch (EC: exactly 1 by construction; TC: exactly top_k; ET: whatever its thresholds give)."
        print ""
        print "![thresholds and cut-offs](figures/thresholds.png)"
        print ""
        print "**Experts per token by position** over the validation split (mean over MoE layers and seeds)."
        print ""
        print "![experts per token by position](figures/position.png)"
        print ""
        print "**Experts per token by token kind** (word, number, punctuation, whitespace, other; lighter bars:"
        print "EC routed by expert choice over its pool)."
        print ""
        print "![experts per token by token kind](figures/kind.png)"
        print ""
        print "**A validation passage** coloured by experts per token (mean over MoE layers; first seed)."
        print ""
        print "![passage coloured by experts per token](figures/passage.png)"
        print ""
    }

    # ---- experts per token by kind, and the tokens that get the most ----
    print "## Experts per token by token kind"
    print ""
    printf "| kind | share of tokens |"
    for (j = 1; j <= nkc; j++) printf " %s |", kind_cols[j]
    printf "\n|---|---|"
    for (j = 1; j <= nkc; j++) printf "---|"
    printf "\n"
    for (i = 1; i <= nkind; i++) {
        printf "| %s | %s |", K[i, "kind"], pct(K[i, "share"])
        for (j = 1; j <= nkc; j++) printf " %s |", f2(K[i, kind_cols[j]])
        printf "\n"
    }
    print ""
    print "(\"name(batch)\": EC models routed by expert choice over their pool, as they train; the other"
    print "columns route by thresholds, as at inference.)"
    print ""
    tk = tables "/tokens_et.tsv"
    n = read_table(tk, TK, TKC, 1)
    if (n > 0) {
        print "Tokens the ET model (first seed, thresholds) gives the most and the fewest routed experts"
        print "(tokens seen at least 20 times in the validation split):"
        print ""
        print "| most: token | kind | count | experts/token | fewest: token | kind | count | experts/token |"
        print "|---|---|---|---|---|---|---|---|"
        m = n < 12 ? n : 12
        for (i = 1; i <= m; i++) {
            j = n - i + 1
            a = TK[i, "text"]; b = TK[j, "text"]
            gsub(/\|/, "\\|", a); gsub(/\|/, "\\|", b)
            gsub(/`/, "'", a); gsub(/`/, "'", b)
            printf "| `%s` | %s | %s | %s | `%s` | %s | %s | %s |\n", a, TK[i, "kind"], TK[i, "count"],
                   f2(TK[i, "mean_experts"]), b, TK[j, "kind"], TK[j, "count"], f2(TK[j, "mean_experts"])
        }
        print ""
    }

    # ---- caveats ----
    print "## Caveats"
    print ""
    printf "- Scale: models of d_model %d with %d layers, %s training tokens per run (main corpus),\n", d, C["n_layer"], tokens(steps * tps)
    print "  against the paper's 10B tokens of web text. Router effects that need long training (ET's"
    print "  threshold estimates settling, experts specialising) have little room to show."
    printf "- ET's moving average uses beta = %s (a window of about %d steps) instead of the paper's 0.999,\n", C["et_beta"], 1 / (1 - C["et_beta"]) + 0.5
    printf "  and every router learns at lr_router = %s, below the LM head's %s: at this scale the router\n", C["lr_router"], C["lr_head"]
    print "  logits drift faster than a slow average follows and lagging thresholds starve the experts"
    printf "  (doc/training.md). ET's EC warm-up is %d steps, %.0f%% of training (the paper's: 4k steps, about 21%%).\n", INFO["warmup"], 100 * INFO["warmup"] / steps
    print "- EC and ET are evaluated with thresholds (the paper's protocol); their batch-routed loss is shown"
    print "  beside it. During training EC leaves some tokens with no routed expert by design; at"
    print "  inference, tokens without a routed expert (the *no expert* columns) still get the shared expert."
    print "- The validation split is the end of each document (each novel; each documentation file): text the"
    print "  model never trained on, from the same documents; losses are not comparable with the paper's."
    printf "- %d seed%s per router; see the significance table before reading a difference as real.\n", nseeds, nseeds == 1 ? "" : "s"
    print ""
    print "## Reproducing"
    print ""
    print "    ./bootstrap && ./configure && make -j2 && make experiment"
    print ""
    print "writes this page (`doc/results.md`) and its figures (`doc/figures/`); the runs, logs and every"
    print "table behind them stay in `runs/experiment/`. `make experiment-quick` runs the same pipeline on"
    print "tiny models in about two minutes (into `runs/experiment-quick/`), and the test suite runs it too"
    print "(`tests/test_experiment_quick.sh`). Interrupted runs resume from their checkpoints; finished ones"
    print "are reused when their command is unchanged. `experiments/run.sh --help` lists the options."
}

END { if (failed) exit 1 }
