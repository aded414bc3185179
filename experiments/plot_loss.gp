# plot_loss.gp: validation loss against training tokens, one line per router (the mean over
# seeds) in a band from the lowest to the highest seed; left all of training, right its last 40%.
#   gnuplot -e "tables='DIR'; figures='DIR'; here='experiments'" plot_loss.gp  ->  figures/loss.png
load here."/style.gp"
set terminal pngcairo size 1500,600 font "DejaVu Sans,11" noenhanced
set output figures."/loss.png"
curve(n) = tables."/curve_".n.".tsv"
stats curve("dense") using 2 nooutput
max_tokens = STATS_max
set multiplot layout 1,2 title "Validation loss (training-time evaluations; line: mean over seeds, band: min to max)"
set xlabel "training tokens (millions)"
set ylabel "validation loss (nats)"
set grid
set key top right
set style fill transparent solid 0.15 noborder
set title "whole run"
plot for [i=1:words(routers)] curve(word(routers, i)) using ($2/1e6):4:5 with filledcurves \
        lc rgb router_color(word(routers, i)) notitle, \
     for [i=1:words(routers)] curve(word(routers, i)) using ($2/1e6):3 with lines \
        ls router_style(word(routers, i)) title word(routers, i)
set title "last 40% of training"
cut = 0.6 * max_tokens
late(x) = ($2 >= cut) ? x : NaN
# the y range of the zoomed part
lo = 1e9
hi = -1e9
do for [i=1:words(routers)] {
    stats curve(word(routers, i)) using (late($4)) nooutput
    lo = (STATS_min < lo) ? STATS_min : lo
    stats curve(word(routers, i)) using (late($5)) nooutput
    hi = (STATS_max > hi) ? STATS_max : hi
}
set yrange [lo - 0.02 * (hi - lo):hi + 0.02 * (hi - lo)]
set xrange [cut / 1e6:max_tokens / 1e6]
plot for [i=1:words(routers)] curve(word(routers, i)) using (late($2/1e6)):4:5 with filledcurves \
        lc rgb router_color(word(routers, i)) notitle, \
     for [i=1:words(routers)] curve(word(routers, i)) using (late($2/1e6)):3 with linespoints \
        ls router_style(word(routers, i)) pt 7 ps 0.5 title word(routers, i)
unset multiplot
