# aggregate.awk: the experiment's runs -> per-router tables (experiments/run.sh calls it).
#   awk -v tables=DIR -f aggregate.awk DIR/runs.tsv
# runs.tsv has one line per run: name, label, router kind, seed, run directory and corpus (a '#'
# header; without the corpus column every run is on one corpus). Each run directory holds
# curve.tsv, routing.tsv and routing_authors.tsv (metrics.awk), config.conf, final.tsv (key,
# value: eval_loss, eval_batch_loss for ec/et, eval_bpb, seconds) and, for MoE models, profile/
# (the routing-profile of the final checkpoint: summary, layers, position, kind). Writes into DIR:
#   curve_NAME.tsv     step, tokens, mean, min, max, sd of the validation loss over seeds, seeds
#   routers.tsv        one row per router (columns named in its header)
#   seeds.tsv          one row per run: name, seed, eval_loss, tokens_to_target, seconds, then the
#                      per-run figures the claims are judged on (named in its header)
#   significance.tsv   paired by seed: name, reference, n, mean difference (name - reference), sd,
#                      95% CI low, high (Student t), significant (yes / no / n/a), then the same
#                      difference and interval in bits per byte
# Routers are compared only with routers of the same corpus: against its dense model and its ET
# model (the router named "et", or "CORPUS-et"). The target loss of "tokens to target" is the
# corpus's dense model's final validation loss (during training, the same eval_batches for every
# run), averaged over its seeds: a router's tokens to target is where its seed-averaged validation
# curve first reaches it (linear between evaluations), NaN when it never does. Training-time
# routing figures, the ET authors' metrics among them, are means over the MoE layers and the steps
# of the second half of training (after any ET warm-up). Exits 1 naming a missing or malformed
# file.

function fail(msg) {
    print "aggregate.awk: " msg > "/dev/stderr"
    failed = 1
    exit 1
}

function fmt(x) { return isnum(x) ? sprintf("%.6g", x) : "NaN" }

# First crossing of target by the curve X[1..n] -> Y[1..n] (Y decreasing overall).
function crossing(n, X, Y, target,    i) {
    for (i = 1; i <= n; i++) {
        if (!isnum(Y[i])) continue
        if (Y[i] + 0 <= target) {
            if (i == 1 || !isnum(Y[i - 1])) return X[i]
            return X[i - 1] + (X[i] - X[i - 1]) * (Y[i - 1] - target) / (Y[i - 1] - Y[i])
        }
    }
    return "NaN"
}

BEGIN {
    if (tables == "") fail("set tables")
    manifest = ARGV[1]
    ARGV[1] = ""
    nr = 0
    while ((getline line < manifest) > 0) {
        if (line ~ /^#/ || line == "") continue
        split(line, f, "\t")
        r = ++nr
        rname[r] = f[1]; rlabel[r] = f[2]; rkind[r] = f[3]; rseed[r] = f[4]; rdir[r] = f[5]
        rcorpus[r] = (6 in f && f[6] != "") ? f[6] : "-"
        if (!(f[1] in router_index)) {
            router_index[f[1]] = ++nrouters
            router_name[nrouters] = f[1]
            router_label[nrouters] = f[2]
            router_kind[nrouters] = f[3]
            router_corpus[nrouters] = rcorpus[r]
        }
    }
    close(manifest)
    if (nr == 0) fail(manifest ": no runs")

    # ---- per run: curves, final values, training routing, profile ----
    for (r = 1; r <= nr; r++) {
        path = rdir[r] "/curve.tsv"
        n = 0
        while ((getline line < path) > 0) {
            if (line ~ /^#/) continue
            split(line, f, "\t")
            last_step = f[1] + 0
            if (f[4] != "NaN") {
                n++
                cs[r, n] = f[1]; ct[r, n] = f[2]; cv[r, n] = f[4]
            }
        }
        close(path)
        if (n == 0) fail(path ": no validation losses")
        cn[r] = n
        steps[r] = last_step
        metrics_final[r] = cv[r, n]

        if (!read_kv(rdir[r] "/final.tsv", KV)) fail(rdir[r] "/final.tsv: missing")
        if (!isnum(KV["eval_loss"])) fail(rdir[r] "/final.tsv: no eval_loss")
        eval_loss[r] = KV["eval_loss"]
        eval_batch_loss[r] = ("eval_batch_loss" in KV) ? KV["eval_batch_loss"] : "NaN"
        seconds[r] = ("seconds" in KV) ? KV["seconds"] : "NaN"
        eval_bpb[r] = ("eval_bpb" in KV && isnum(KV["eval_bpb"])) ? KV["eval_bpb"] : "NaN"
        if (!read_kv_conf(rdir[r] "/config.conf", CF) || !isnum(CF["top_k"])) fail(rdir[r] "/config.conf: no top_k")
        top_k[r] = CF["top_k"]
        seq_len[r] = CF["seq_len"]
        # per-run figures that only MoE runs have
        n_authors = split("tokens_0 tokens_1 tokens_2plus gate_mean gate_std logit_mean logit_std capacity_overflow capacity_underflow cutoff_gap_abs gate_down gate_down_ratio", AUK, " ")
        for (q = 1; q <= n_authors; q++) au[r, AUK[q]] = "NaN"
        early_late[r] = "NaN"; punct_word[r] = "NaN"; number_word[r] = "NaN"
        tr_experts[r] = "NaN"; pr_experts[r] = "NaN"

        # training-time routing, second half
        tr_n[r] = 0
        if (rkind[r] != "dense") {
            path = rdir[r] "/routing.tsv"
            s1 = 0; s2 = 0; k = 0; mo = 0; nz = 0; dr = 0
            while ((getline line < path) > 0) {
                if (line ~ /^#/) continue
                split(line, f, "\t")
                if (f[1] + 0 <= last_step / 2) continue
                k++
                s1 += f[3]; s2 += f[3] * f[3]; mo += f[5]; nz += f[4]; dr += f[7] + f[8]
            }
            close(path)
            if (k == 0) fail(path ": no routing rows in the second half")
            tr_n[r] = k
            tr_experts[r] = s1 / k
            tr_experts_sd[r] = k > 1 ? sqrt((s2 - s1 * s1 / k) / (k - 1) > 0 ? (s2 - s1 * s1 / k) / (k - 1) : 0) : 0
            tr_maxload[r] = mo / k
            tr_zero[r] = nz / k
            tr_dropped[r] = dr / k
            # the ET authors' metrics (routing_authors.tsv: step, layer, then AUK's columns), second half
            path = rdir[r] "/routing_authors.tsv"
            split("", AS); split("", AN)
            while ((getline line < path) > 0) {
                if (line ~ /^#/) continue
                split(line, f, "\t")
                if (f[1] + 0 <= last_step / 2) continue
                for (q = 1; q <= n_authors; q++)
                    if (isnum(f[q + 2])) { AS[q] += f[q + 2]; AN[q]++ }
            }
            close(path)
            for (q = 1; q <= n_authors; q++) if (AN[q] > 0) au[r, AUK[q]] = AS[q] / AN[q]
            if (!read_kv(rdir[r] "/profile/summary.tsv", KV)) fail(rdir[r] "/profile/summary.tsv: missing")
            pr_experts[r] = KV["mean_experts"]
            pr_zero[r] = KV["frac_zero"]
            pr_maxload[r] = KV["max_over_mean_load"]
            pr_loss[r] = KV["loss"]
            pr_gate[r] = KV["mean_gate"]
            # the distribution of routed experts per token, mean over MoE layers
            path = rdir[r] "/profile/layers.tsv"
            k = 0; h1 = 0; h2 = 0; h3 = 0
            while ((getline line < path) > 0) {
                if (line ~ /^#/) continue
                split(line, f, "\t")
                k++; h1 += f[5]; h2 += f[6]; h3 += f[7]
            }
            close(path)
            if (k == 0) fail(path ": missing or empty")
            pr_one[r] = h1 / k; pr_two[r] = h2 / k; pr_three[r] = h3 / k
            # dynamic compute by position: experts per token on the first 8 positions minus on the
            # second half of the sequence (token-weighted means of profile/position.tsv)
            path = rdir[r] "/profile/position.tsv"
            e1 = 0; n1 = 0; e2 = 0; n2 = 0
            while ((getline line < path) > 0) {
                if (line ~ /^#/) continue
                split(line, f, "\t")
                if (f[1] + 0 < 8) { e1 += f[2] * f[3]; n1 += f[2] }
                else if (f[1] + 0 >= seq_len[r] / 2) { e2 += f[2] * f[3]; n2 += f[2] }
            }
            close(path)
            if (n1 > 0 && n2 > 0) early_late[r] = e1 / n1 - e2 / n2
            # and by token kind: punctuation and numbers against words (profile/kind.tsv)
            path = rdir[r] "/profile/kind.tsv"
            split("", KE)
            while ((getline line < path) > 0) {
                if (line ~ /^#/) continue
                split(line, f, "\t")
                KE[f[1]] = f[4]
            }
            close(path)
            if (isnum(KE["word"]) && isnum(KE["punctuation"])) punct_word[r] = KE["punctuation"] - KE["word"]
            if (isnum(KE["word"]) && isnum(KE["number"])) number_word[r] = KE["number"] - KE["word"]
        }
    }

    # ---- target: each corpus's dense final validation loss (training-time evaluations), mean over seeds ----
    split("", TS); split("", TK)
    for (r = 1; r <= nr; r++)
        if (rkind[r] == "dense") { TS[rcorpus[r]] += metrics_final[r]; TK[rcorpus[r]]++ }
    for (c in TK) target_of[c] = TS[c] / TK[c]

    # ---- per router: mean curve over seeds, statistics ----
    rt = tables "/routers.tsv"
    printf "# name\tlabel\tkind\tseeds\tloss_mean\tloss_sd\tloss_min\tloss_max\tdelta_vs_dense\t" \
           "tokens_to_target\ttokens_to_target_sd\ttokens_ratio_vs_dense\ttrain_experts\ttrain_experts_sd\t" \
           "train_max_over_mean_load\ttrain_no_expert_frac\ttrain_dropped_padded\teval_experts\teval_no_expert_frac\t" \
           "eval_max_over_mean_load\tbatch_loss_mean\tprofile_loss_mean\tseconds_mean\tsteps\ttarget_loss\t" \
           "eval_frac_one\teval_frac_two\teval_frac_three_plus\teval_mean_gate\tcorpus\ttop_k\t" \
           "bpb_mean\tbpb_sd\tbpb_delta_vs_dense\ttokens_0\ttokens_1\ttokens_2plus\tgate_mean\tgate_std\t" \
           "logit_mean\tlogit_std\tcapacity_overflow\tcapacity_underflow\tcutoff_gap_abs\tgate_down\tgate_down_ratio\n" > rt
    sd_path = tables "/seeds.tsv"
    printf "# name\tseed\teval_loss\ttokens_to_target\tseconds\teval_bpb\tcorpus\ttop_k\ttrain_experts\t" \
           "eval_experts\tearly_minus_late\tpunct_minus_word\tnumber_minus_word\tgate_mean\tcutoff_gap_abs\n" > sd_path
    for (i = 1; i <= nrouters; i++)
        if (router_kind[i] == "dense") {
            s = 0; k = 0; b = 0; bk = 0
            for (r = 1; r <= nr; r++) if (rname[r] == router_name[i]) {
                s += eval_loss[r]; k++
                if (isnum(eval_bpb[r])) { b += eval_bpb[r]; bk++ }
            }
            dense_loss_of[router_corpus[i]] = s / k
            dense_bpb_of[router_corpus[i]] = bk == k ? b / k : "NaN"
        }
    for (i = 1; i <= nrouters; i++) {
        name = router_name[i]
        corpus = router_corpus[i]
        target = (corpus in target_of) ? target_of[corpus] : "NaN"
        dense_loss = (corpus in dense_loss_of) ? dense_loss_of[corpus] : "NaN"
        # seeds of this router
        k = 0
        for (r = 1; r <= nr; r++) if (rname[r] == name) idx[++k] = r
        ns = k
        # mean curve: evaluation points shared by every seed (same eval_every, same steps)
        cp = tables "/curve_" name ".tsv"
        printf "# step\ttokens\tmean\tmin\tmax\tsd\tseeds\n" > cp
        m = cn[idx[1]]
        for (j = 2; j <= ns; j++) if (cn[idx[j]] < m) m = cn[idx[j]]
        for (p = 1; p <= m; p++) {
            s1 = 0; s2 = 0; lo = ""; hi = ""
            for (j = 1; j <= ns; j++) {
                v = cv[idx[j], p] + 0
                if (cs[idx[j], p] != cs[idx[1], p]) fail(name ": seeds evaluated at different steps")
                s1 += v; s2 += v * v
                if (lo == "" || v < lo) lo = v
                if (hi == "" || v > hi) hi = v
            }
            mean = s1 / ns
            var = ns > 1 ? (s2 - s1 * s1 / ns) / (ns - 1) : 0
            if (var < 0) var = 0
            MX[p] = ct[idx[1], p]; MY[p] = mean
            printf "%d\t%s\t%.6f\t%.6f\t%.6f\t%.6f\t%d\n", cs[idx[1], p], ct[idx[1], p], mean, lo, hi, sqrt(var), ns > cp
        }
        close(cp)
        ttt = isnum(target) ? crossing(m, MX, MY, target) : "NaN"
        # per seed: tokens to target on its own curve
        t1 = 0; t2 = 0; tk = 0
        for (j = 1; j <= ns; j++) {
            r = idx[j]
            split("", SX); split("", SY)
            for (p = 1; p <= cn[r]; p++) { SX[p] = ct[r, p]; SY[p] = cv[r, p] }
            st = isnum(target) ? crossing(cn[r], SX, SY, target) : "NaN"
            if (isnum(st)) { t1 += st; t2 += st * st; tk++ }
            printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", name, rseed[r], eval_loss[r], fmt(st),
                   seconds[r], fmt(eval_bpb[r]), rcorpus[r], top_k[r], fmt(tr_experts[r]), fmt(pr_experts[r]),
                   fmt(early_late[r]), fmt(punct_word[r]), fmt(number_word[r]), fmt(au[r, "gate_mean"]),
                   fmt(au[r, "cutoff_gap_abs"]) > sd_path
        }
        tsd = tk > 1 ? sqrt((t2 - t1 * t1 / tk) / (tk - 1) > 0 ? (t2 - t1 * t1 / tk) / (tk - 1) : 0) : "NaN"
        if (tk < ns) tsd = "NaN"
        if (router_kind[i] == "dense") dense_tokens_of[corpus] = ttt
        router_ttt[i] = ttt
        router_tsd[i] = tsd

        # final loss over seeds
        s1 = 0; s2 = 0; lo = ""; hi = ""
        for (j = 1; j <= ns; j++) {
            v = eval_loss[idx[j]] + 0
            s1 += v; s2 += v * v
            if (lo == "" || v < lo) lo = v
            if (hi == "" || v > hi) hi = v
        }
        lmean[i] = s1 / ns
        var = ns > 1 ? (s2 - s1 * s1 / ns) / (ns - 1) : 0
        lsd[i] = ns > 1 ? sqrt(var > 0 ? var : 0) : "NaN"
        lmin[i] = lo; lmax[i] = hi
        nseeds[i] = ns
        # bits per byte over seeds (NaN when a run has none)
        s1 = 0; s2 = 0; k = 0
        for (j = 1; j <= ns; j++) if (isnum(eval_bpb[idx[j]])) { v = eval_bpb[idx[j]] + 0; s1 += v; s2 += v * v; k++ }
        bmean = k == ns ? s1 / ns : "NaN"
        var = k == ns && ns > 1 ? (s2 - s1 * s1 / ns) / (ns - 1) : "NaN"
        bsd = isnum(var) ? sqrt(var > 0 ? var : 0) : "NaN"
        bdense = (corpus in dense_bpb_of) ? dense_bpb_of[corpus] : "NaN"
        extra[i] = sprintf("%s\t%s\t%s\t%s\t%s", corpus, top_k[idx[1]], fmt(bmean), fmt(bsd),
                           isnum(bmean) && isnum(bdense) ? sprintf("%.6f", bmean - bdense) : "NaN")
        for (q = 1; q <= n_authors; q++) {
            s1 = 0; k = 0
            for (j = 1; j <= ns; j++) if (isnum(au[idx[j], AUK[q]])) { s1 += au[idx[j], AUK[q]]; k++ }
            extra[i] = extra[i] "\t" (k > 0 ? fmt(s1 / k) : "NaN")
        }
        # averages over seeds of the per-run figures
        split("", A)
        for (j = 1; j <= ns; j++) {
            r = idx[j]
            A["sec"] += seconds[r] / ns
            if (router_kind[i] != "dense") {
                A["tre"] += tr_experts[r] / ns; A["tres"] += tr_experts_sd[r] / ns
                A["trm"] += tr_maxload[r] / ns; A["trz"] += tr_zero[r] / ns; A["trd"] += tr_dropped[r] / ns
                A["pre"] += pr_experts[r] / ns; A["prz"] += pr_zero[r] / ns; A["prm"] += pr_maxload[r] / ns
                A["prl"] += pr_loss[r] / ns
                A["p1"] += pr_one[r] / ns; A["p2"] += pr_two[r] / ns; A["p3"] += pr_three[r] / ns
                if (isnum(pr_gate[r])) { A["g"] += pr_gate[r]; A["gn"]++ }
                if (isnum(eval_batch_loss[r])) { A["bl"] += eval_batch_loss[r]; A["bln"]++ }
            }
        }
        moe = router_kind[i] != "dense"
        row[i] = sprintf("%s\t%s\t%s\t%d\t%.6f\t%s\t%.6f\t%.6f\t%s", name, router_label[i], router_kind[i], ns,
                         lmean[i], fmt(lsd[i]), lmin[i], lmax[i], isnum(dense_loss) ? sprintf("%.6f", lmean[i] - dense_loss) : "NaN")
        rest[i] = sprintf("%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s",
                          moe ? fmt(A["tre"]) : "NaN", moe ? fmt(A["tres"]) : "NaN", moe ? fmt(A["trm"]) : "NaN",
                          moe ? fmt(A["trz"]) : "NaN", moe ? fmt(A["trd"]) : "NaN", moe ? fmt(A["pre"]) : "NaN",
                          moe ? fmt(A["prz"]) : "NaN", moe ? fmt(A["prm"]) : "NaN",
                          A["bln"] > 0 ? sprintf("%.6f", A["bl"] / A["bln"]) : "NaN",
                          moe ? sprintf("%.6f", A["prl"]) : "NaN", fmt(A["sec"]), steps[idx[1]], fmt(target))
        rest[i] = rest[i] sprintf("\t%s\t%s\t%s\t%s", moe ? fmt(A["p1"]) : "NaN", moe ? fmt(A["p2"]) : "NaN",
                                  moe ? fmt(A["p3"]) : "NaN", A["gn"] > 0 ? fmt(A["g"] / A["gn"]) : "NaN")
    }
    for (i = 1; i <= nrouters; i++) {
        dense_tokens = (router_corpus[i] in dense_tokens_of) ? dense_tokens_of[router_corpus[i]] : "NaN"
        ratio = (isnum(router_ttt[i]) && isnum(dense_tokens) && dense_tokens > 0) ? sprintf("%.4f", router_ttt[i] / dense_tokens) : "NaN"
        printf "%s\t%s\t%s\t%s\t%s\t%s\n", row[i], fmt(router_ttt[i]), fmt(router_tsd[i]), ratio, rest[i], extra[i] > rt
    }
    close(rt)
    close(sd_path)

    # ---- paired comparisons by seed, within a corpus: against dense and against ET with warm-up ----
    sg = tables "/significance.tsv"
    printf "# name\treference\tn\tmean_diff\tsd_diff\tci_low\tci_high\tsignificant\tbpb_mean_diff\tbpb_ci_low\tbpb_ci_high\n" > sg
    nref = 0
    for (i = 1; i <= nrouters; i++)
        if (router_kind[i] == "dense" || router_name[i] == "et" || router_name[i] == router_corpus[i] "-et") ref[++nref] = i
    for (q = 1; q <= nref; q++) {
        b = ref[q]
        for (i = 1; i <= nrouters; i++) {
            if (i == b || router_corpus[i] != router_corpus[b]) continue
            n = 0; s1 = 0; s2 = 0; nb = 0; b1 = 0; b2 = 0
            for (r = 1; r <= nr; r++) {
                if (rname[r] != router_name[i]) continue
                for (r2 = 1; r2 <= nr; r2++)
                    if (rname[r2] == router_name[b] && rseed[r2] == rseed[r]) {
                        d = eval_loss[r] - eval_loss[r2]
                        n++; s1 += d; s2 += d * d
                        if (isnum(eval_bpb[r]) && isnum(eval_bpb[r2])) { d = eval_bpb[r] - eval_bpb[r2]; nb++; b1 += d; b2 += d * d }
                    }
            }
            if (n == 0) continue
            mean = s1 / n
            bl = "NaN"; bh = "NaN"; bm = nb == n ? sprintf("%.6f", b1 / n) : "NaN"
            if (n > 1) {
                var = (s2 - s1 * s1 / n) / (n - 1)
                sdv = sqrt(var > 0 ? var : 0)
                half = tcrit(n - 1) * sdv / sqrt(n)
                sig = (mean - half > 0 || mean + half < 0) ? "yes" : "no"
                if (nb == n) {
                    var = (b2 - b1 * b1 / n) / (n - 1)
                    bhalf = tcrit(n - 1) * sqrt(var > 0 ? var : 0) / sqrt(n)
                    bl = sprintf("%.6f", b1 / n - bhalf); bh = sprintf("%.6f", b1 / n + bhalf)
                }
                printf "%s\t%s\t%d\t%.6f\t%.6f\t%.6f\t%.6f\t%s\t%s\t%s\t%s\n", router_name[i], router_name[b], n, mean, sdv,
                       mean - half, mean + half, sig, bm, bl, bh > sg
            } else
                printf "%s\t%s\t%d\t%.6f\tNaN\tNaN\tNaN\tn/a\t%s\tNaN\tNaN\n", router_name[i], router_name[b], n, mean, bm > sg
        }
    }
    close(sg)
}
