# figdata.awk: the data files the gnuplot scripts read, from the runs' tables (run.sh calls it).
#   awk -v tables=DIR -v first_seed=S -f figdata.awk DIR/runs.tsv
# Writes into DIR:
#   position_NAME.tsv        position, mean experts per token (seed mean), min, max over seeds;
#                            for every MoE router, from the thresholds / top-k profile
#   position_NAME_batch.tsv  the same for ec/et routers routed by expert choice over the batch
#   kind.tsv                 kind, share of tokens, then one column per series: experts per token
#                            (seed mean); header names the series
#   thr_NAME.tsv             seed S, first MoE layer: step, E thresholds, E recovered batch cut-offs
#                            (for the et, et-nowarm, ec-seq and ec-batch runs)
#   usage.tsv                seed S: step, then per MoE router the routed experts per token of the
#                            step's batch (mean over MoE layers); header names the routers
#   passage.tsv              seed S's et profile passage (et-nowarm, else the first ec/et router)
#   passage_batch.tsv        seed S's ec-seq profile passage under batch routing, when it exists
#   tokens_NAME.tsv          seed S's tokens.tsv of every ec/et router (threshold routing)

function fail(msg) {
    print "figdata.awk: " msg > "/dev/stderr"
    failed = 1
    exit 1
}

function copy(src, dst,    line) {
    if ((getline line < src) <= 0) fail(src ": missing or empty")
    print line > dst
    while ((getline line < src) > 0) print line > dst
    close(src)
    close(dst)
}

# Averages column col of position.tsv-like files over the router's seeds into dst.
function average_positions(name, sub_dir, dst,    r, path, line, f, n, p, k, v) {
    split("", S); split("", LO); split("", HI)
    k = 0; n = 0
    for (r = 1; r <= nr; r++) {
        if (rname[r] != name) continue
        k++
        path = rdir[r] "/" sub_dir "/position.tsv"
        p = 0
        while ((getline line < path) > 0) {
            if (line ~ /^#/) continue
            split(line, f, "\t")
            v = f[3] + 0
            S[f[1]] += v
            if (k == 1 || v < LO[f[1]]) LO[f[1]] = v
            if (k == 1 || v > HI[f[1]]) HI[f[1]] = v
            p++
        }
        close(path)
        if (p == 0) fail(path ": missing or empty")
        n = p
    }
    print "# position\tmean_experts\tmin\tmax" > dst
    for (p = 0; p < n; p++) printf "%d\t%.6g\t%.6g\t%.6g\n", p, S[p] / k, LO[p], HI[p] > dst
    close(dst)
}

BEGIN {
    if (tables == "" || first_seed == "") fail("set tables and first_seed")
    manifest = ARGV[1]
    ARGV[1] = ""
    while ((getline line < manifest) > 0) {
        if (line ~ /^#/ || line == "") continue
        split(line, f, "\t")
        nr++
        rname[nr] = f[1]; rkind[nr] = f[3]; rseed[nr] = f[4]; rdir[nr] = f[5]
        if (!(f[1] in seen)) { seen[f[1]] = 1; order[++nn] = f[1]; kind_of[f[1]] = f[3] }
        if (f[4] == first_seed) first_dir[f[1]] = f[5]
    }
    close(manifest)

    # ---- experts per token by position ----
    for (i = 1; i <= nn; i++) {
        name = order[i]
        if (kind_of[name] == "dense") continue
        average_positions(name, "profile", tables "/position_" name ".tsv")
        if (kind_of[name] == "ec" || kind_of[name] == "et")
            average_positions(name, "profile-batch", tables "/position_" name "_batch.tsv")
    }

    # ---- experts per token by kind: one column per series ----
    ns = 0
    for (i = 1; i <= nn; i++) {
        name = order[i]
        if (kind_of[name] == "dense" || kind_of[name] == "tc") continue
        series[++ns] = name; series_dir[ns] = "profile"
        if (kind_of[name] == "ec") { series[++ns] = name "(batch)"; series_dir[ns] = "profile-batch" }
    }
    nk = 0
    for (j = 1; j <= ns; j++) {
        name = series[j]; sub(/\(batch\)$/, "", name)
        k = 0
        for (r = 1; r <= nr; r++) {
            if (rname[r] != name) continue
            k++
            path = rdir[r] "/" series_dir[j] "/kind.tsv"
            while ((getline line < path) > 0) {
                if (line ~ /^#/) continue
                split(line, f, "\t")
                if (!(f[1] in kind_row)) { kind_row[f[1]] = ++nk; kind_name[nk] = f[1] }
                KS[f[1], j] += f[4]
                share[f[1]] = f[3]
            }
            close(path)
        }
        seeds_of[j] = k
    }
    dst = tables "/kind.tsv"
    printf "# kind\tshare" > dst
    for (j = 1; j <= ns; j++) printf "\t%s", series[j] > dst
    printf "\n" > dst
    for (q = 1; q <= nk; q++) {
        kd = kind_name[q]
        printf "%s\t%.4g", kd, share[kd] > dst
        for (j = 1; j <= ns; j++) printf "\t%.6g", seeds_of[j] ? KS[kd, j] / seeds_of[j] : 0 > dst
        printf "\n" > dst
    }
    close(dst)

    # ---- thresholds and recovered cut-offs of the first MoE layer ----
    for (i = 1; i <= nn; i++) {
        name = order[i]
        if (kind_of[name] != "ec" && kind_of[name] != "et") continue
        if (!(name in first_dir)) continue
        path = first_dir[name] "/thresholds.tsv"
        layer = -1; E = 0
        split("", TH); split("", CU); split("", ST)
        nst = 0
        while ((getline line < path) > 0) {
            if (line ~ /^#/) continue
            split(line, f, "\t")
            if (layer < 0) layer = f[2]
            if (f[2] != layer) continue
            if (!(f[1] in ST)) { ST[f[1]] = ++nst; step_at[nst] = f[1] }
            TH[f[1], f[3]] = f[4]; CU[f[1], f[3]] = f[5]
            if (f[3] + 1 > E) E = f[3] + 1
        }
        close(path)
        dst = tables "/thr_" name ".tsv"
        printf "# layer %d: step, threshold 0..%d, batch cut-off 0..%d\n", layer, E - 1, E - 1 > dst
        for (q = 1; q <= nst; q++) {
            s = step_at[q]
            printf "%s", s > dst
            for (e = 0; e < E; e++) printf "\t%s", TH[s, e] > dst
            for (e = 0; e < E; e++) printf "\t%s", CU[s, e] > dst
            printf "\n" > dst
        }
        close(dst)
    }

    # ---- per-step routed experts per token (batch usage), mean over MoE layers ----
    nu = 0
    for (i = 1; i <= nn; i++) {
        name = order[i]
        if (kind_of[name] == "dense" || !(name in first_dir)) continue
        nu++
        uname[nu] = name
        path = first_dir[name] "/routing.tsv"
        while ((getline line < path) > 0) {
            if (line ~ /^#/) continue
            split(line, f, "\t")
            US[f[1], nu] += f[3]; UC[f[1], nu]++
            if (f[1] + 0 > max_step) max_step = f[1] + 0
        }
        close(path)
    }
    dst = tables "/usage.tsv"
    printf "# step" > dst
    for (j = 1; j <= nu; j++) printf "\t%s", uname[j] > dst
    printf "\n" > dst
    for (s = 1; s <= max_step; s++) {
        printf "%d", s > dst
        for (j = 1; j <= nu; j++) printf "\t%s", UC[s, j] ? sprintf("%.6g", US[s, j] / UC[s, j]) : "NaN" > dst
        printf "\n" > dst
    }
    close(dst)

    # ---- passages and token lists ----
    pick = ""
    if ("et" in first_dir) pick = "et"
    else if ("et-nowarm" in first_dir) pick = "et-nowarm"
    else for (i = 1; i <= nn; i++) if (pick == "" && (kind_of[order[i]] == "ec" || kind_of[order[i]] == "et") && (order[i] in first_dir)) pick = order[i]
    if (pick != "") {
        copy(first_dir[pick] "/profile/passage.tsv", tables "/passage.tsv")
        print pick > (tables "/passage_router.txt")
        close(tables "/passage_router.txt")
    }
    if ("ec-seq" in first_dir) copy(first_dir["ec-seq"] "/profile-batch/passage.tsv", tables "/passage_batch.tsv")
    for (i = 1; i <= nn; i++) {
        name = order[i]
        if ((kind_of[name] == "ec" || kind_of[name] == "et") && (name in first_dir))
            copy(first_dir[name] "/profile/tokens.tsv", tables "/tokens_" name ".tsv")
    }
}

END { if (failed) exit 1 }
