# plot_thresholds.gp: the paper's Figure 3 at our scale, for the first seed and the first MoE
# layer: (a) ET's thresholds c_i (lines) and each batch's own cut-off, the k_target-th largest
# logit (dots), over training; (b) the same for EC with the whole-batch pool, which routes by the
# dots; (c) routed experts per token of each training batch (mean over MoE layers).
#   gnuplot -e "tables='DIR'; figures='DIR'; here='experiments'" plot_thresholds.gp
load here."/style.gp"
set terminal pngcairo size 1200,1100 font "DejaVu Sans,11" noenhanced
set output figures."/thresholds.png"
warmup = real(system("awk -F'\t' '$1 == \"warmup\" { print $2 }' '".tables."/run_info.tsv'"))
thr(n) = tables."/thr_".n.".tsv"
E = int(system("awk -F'\t' '!/^#/ { print (NF - 1) / 2; exit }' '".thr("et")."'"))
set palette defined (0 "#1b9e77", 1 "#d95f02", 2 "#7570b3", 3 "#e7298a", 4 "#66a61e", 5 "#e6ab02", 6 "#a6761d", 7 "#666666")
ecol(e) = word("#1b9e77 #d95f02 #7570b3 #e7298a #66a61e #e6ab02 #a6761d #666666", e % 8 + 1)
set multiplot layout 3,1
set grid
set xlabel "optimizer step"
set key outside right top
set ylabel "router logit"
set arrow 1 from warmup, graph 0 to warmup, graph 1 nohead dt 2 lc rgb "#444444"
set label 1 "end of EC warm-up" at warmup, graph 0.95 offset 0.5,0 font ",9"
set title "ET + warm-up: thresholds c_i (lines) and each batch's cut-off (dots)"
plot for [e=0:E-1] thr("et") using 1:(column(E + 2 + e)) with points pt 7 ps 0.25 lc rgb ecol(e) notitle, \
     for [e=0:E-1] thr("et") using 1:(column(2 + e)) with lines lw 1.5 lc rgb ecol(e) title sprintf("expert %d", e)
unset arrow 1
unset label 1
set title "EC, whole-batch pool: the cut-off it routes by (dots) and its moving average (lines)"
if (file_ok(thr("ec-batch"))) {
    plot for [e=0:E-1] thr("ec-batch") using 1:(column(E + 2 + e)) with points pt 7 ps 0.25 lc rgb ecol(e) notitle, \
         for [e=0:E-1] thr("ec-batch") using 1:(column(2 + e)) with lines lw 1.5 lc rgb ecol(e) title sprintf("expert %d", e)
} else { plot NaN notitle }
set title "routed experts per token in each training batch (target: top_k, 1; 2 for et-fine and et-noshared)"
set ylabel "experts per token"
set arrow 1 from warmup, graph 0 to warmup, graph 1 nohead dt 2 lc rgb "#444444"
usage_cols = system("awk -F'\t' 'NR == 1 { for (i = 2; i <= NF; i++) printf \"%s \", $i; exit }' '".tables."/usage.tsv'")
plot for [i=1:words(usage_cols)] tables."/usage.tsv" using 1:(column(i + 1)) with lines \
        ls router_style(word(usage_cols, i)) lw 1 title word(usage_cols, i), \
     1 with lines dt 2 lc rgb "#000000" notitle
unset multiplot
