# plot_position.gp: routed experts per token (mean over MoE layers and seeds) by position in the
# sequence, over the validation set: ET and EC models routed by their thresholds (as at
# inference), and EC models routed by expert choice over their training pools.
#   gnuplot -e "tables='DIR'; figures='DIR'; here='experiments'" plot_position.gp
load here."/style.gp"
set terminal pngcairo size 1100,700 font "DejaVu Sans,11" noenhanced
set output figures."/position.png"
pos(n) = tables."/position_".n.".tsv"
set logscale x
set xlabel "position in the sequence (1 = first token; log scale)"
set ylabel "routed experts per token"
set grid
set key below maxrows 4
set bmargin 11
set title "Experts per token by position (validation set, mean over seeds)"
set style fill transparent solid 0.15 noborder
# token choice routes every token to exactly top_k experts: one TC line stands for all of them
series = ""
have_tc = 0
do for [i=1:words(routers)] {
    n = word(routers, i)
    if (file_ok(pos(n)) && (n[1:2] ne "tc" || !have_tc)) { series = series." ".n }
    if (n[1:2] eq "tc") { have_tc = 1 }
}
stats pos(word(series, 1)) using 1 nooutput
set xrange [1:STATS_max + 1]
batch_series = ""
do for [i=1:words(routers)] {
    n = word(routers, i)
    if (file_ok(pos(n."_batch")) && n[1:2] eq "ec") { batch_series = batch_series." ".n }
}
plot for [i=1:words(series)] pos(word(series, i)) using ($1 + 1):3:4 with filledcurves \
        lc rgb router_color(word(series, i)) notitle, \
     for [i=1:words(series)] pos(word(series, i)) using ($1 + 1):2 with lines ls router_style(word(series, i)) \
        title word(series, i).(word(series, i)[1:2] eq "tc" ? " (every TC router: top-k)" : " (thresholds)"), \
     for [i=1:words(batch_series)] pos(word(batch_series, i)."_batch") using ($1 + 1):2 with lines \
        ls router_style(word(batch_series, i)) dt 2 title word(batch_series, i)." (expert choice over its pool)", \
     1 with lines dt 3 lc rgb "#000000" title "target (top_k)"
