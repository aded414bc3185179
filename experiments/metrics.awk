# metrics.awk: one run's metrics.jsonl (doc/training.md) -> tables in the run directory, for
# aggregate.awk and the plots. Use with json.awk:
#   awk -v out=RUN -v tokens_per_step=N -v n_routed=E -v beta=B -f json.awk -f metrics.awk RUN/metrics.jsonl
# Writes
#   out/curve.tsv       step, tokens, loss, val_loss (NaN where not computed), aux_loss, elapsed,
#                       val_bpb (bits per byte, NaN where not computed)
#   out/routing.tsv     step, layer, mean_experts, no_expert_frac, max_over_mean_load,
#                       min_over_mean_load, dropped, padded   (one row per MoE layer and step)
#   out/thresholds.tsv  step, layer, expert, threshold, cutoff: cutoff is the step's own batch
#                       cut-off (the k_target-th largest logit) recovered from the EMA:
#                       m_s = c_s (1 - beta^s), cut_s = (m_s - beta m_{s-1}) / (1 - beta); NaN
#                       where the previous step's thresholds are not in the file
#   out/routing_authors.tsv  step, layer, tokens_0, tokens_1, tokens_2plus, gate_mean, gate_std,
#                       logit_mean, logit_std, capacity_overflow, capacity_underflow,
#                       cutoff_gap_abs (mean over experts of |cut-off - threshold in force|, the
#                       authors' cutoff_abs_deviation): the ET authors' routing metrics
#                       (src/router/routing_metrics.h), then gate_down (mean routed gate x RMS
#                       of the routed down projections) and gate_down_ratio (that over the
#                       shared experts' RMS; issue 15), NaN where a run does not define them
# Exits 1 with a message naming the line on malformed input or a missing key.

function fail(msg) {
    printf "metrics.awk: %s:%d: %s\n", FILENAME, FNR, msg > "/dev/stderr"
    failed = 1
    exit 1
}

function num(key) {
    if (!(key in F)) fail("no \"" key "\"")
    return F[key] + 0
}

BEGIN {
    if (out == "" || tokens_per_step <= 0 || n_routed <= 0 || beta == "") {
        print "metrics.awk: set out, tokens_per_step, n_routed and beta" > "/dev/stderr"
        failed = 1
        exit 1
    }
    curve = out "/curve.tsv"
    routing = out "/routing.tsv"
    thr = out "/thresholds.tsv"
    authors = out "/routing_authors.tsv"
    print "# step\tlayer\ttokens_0\ttokens_1\ttokens_2plus\tgate_mean\tgate_std\tlogit_mean\tlogit_std\tcapacity_overflow\tcapacity_underflow\tcutoff_gap_abs\tgate_down\tgate_down_ratio" > authors
    print "# step\ttokens\tloss\tval_loss\taux_loss\telapsed\tval_bpb" > curve
    print "# step\tlayer\tmean_experts\tno_expert_frac\tmax_over_mean_load\tmin_over_mean_load\tdropped\tpadded" > routing
    print "# step\tlayer\texpert\tthreshold\tcutoff" > thr
    prev_step = -1
}

{
    if (json_flatten($0, F) < 0) fail("not a JSON object")
    step = num("step")
    val = ("val_loss" in F) ? F["val_loss"] : "NaN"
    bpb = ("val_bpb" in F) ? F["val_bpb"] : "NaN"
    printf "%d\t%.0f\t%s\t%s\t%s\t%s\t%s\n", step, step * tokens_per_step, F["loss"], val, F["aux_loss"], F["elapsed"], bpb > curve

    for (i = 0; ("routing." i ".layer") in F; i++) {
        p = "routing." i "."
        sum = 0; mx = -1; mn = -1
        for (e = 0; e < n_routed; e++) {
            x = num(p "load." e)
            sum += x
            if (mx < 0 || x > mx) mx = x
            if (mn < 0 || x < mn) mn = x
        }
        if ((p "load." n_routed) in F) fail("more than n_routed = " n_routed " loads")
        mean = sum / n_routed
        hi = "NaN"; lo = "NaN"
        if (mean > 0) { hi = sprintf("%.6g", mx / mean); lo = sprintf("%.6g", mn / mean) }
        printf "%d\t%d\t%s\t%.6g\t%s\t%s\t%s\t%s\n", step, num(p "layer"), F[p "mean_experts"],
               num(p "no_expert") / tokens_per_step, hi, lo, num(p "dropped"), num(p "padded") > routing
        line = step "\t" num(p "layer")
        n_keys = split("tokens_0 tokens_1 tokens_2plus gate_mean gate_std logit_mean logit_std capacity_overflow capacity_underflow", keys, " ")
        for (k = 1; k <= n_keys; k++) line = line "\t" (((p keys[k]) in F) ? F[p keys[k]] : "NaN")
        gap = "NaN"
        if ((p "cutoff_gap.0") in F) {
            g = 0
            for (e = 0; e < n_routed; e++) { x = num(p "cutoff_gap." e); g += x < 0 ? -x : x }
            gap = sprintf("%.6g", g / n_routed)
        }
        print line "\t" gap "\t" (((p "gate_down") in F) ? F[p "gate_down"] : "NaN") "\t" (((p "gate_down_ratio") in F) ? F[p "gate_down_ratio"] : "NaN") > authors
    }

    have = 0
    for (i = 0; ("thresholds." i ".layer") in F; i++) {
        p = "thresholds." i "."
        layer = num(p "layer")
        for (e = 0; e < n_routed; e++) {
            c = num(p "threshold." e)
            m = c * (1 - beta ^ step)
            cut = "NaN"
            if (step == 1) cut = sprintf("%.6g", m / (1 - beta))
            else if (prev_step == step - 1 && ((layer, e) in prev_m))
                cut = sprintf("%.6g", (m - beta * prev_m[layer, e]) / (1 - beta))
            printf "%d\t%d\t%d\t%s\t%s\n", step, layer, e, F[p "threshold." e], cut > thr
            cur_m[layer, e] = m
        }
        have = 1
    }
    if (have) {
        split("", prev_m)
        for (k in cur_m) prev_m[k] = cur_m[k]
        split("", cur_m)
        prev_step = step
    }
}

END {
    if (failed) exit 1
    if (NR == 0) {
        print "metrics.awk: " FILENAME ": no metrics" > "/dev/stderr"
        exit 1
    }
}
