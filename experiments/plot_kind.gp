# plot_kind.gp: routed experts per token by token kind (word, number, punctuation, whitespace,
# other) for the ET and EC models (thresholds; EC also by expert choice over its pool).
#   gnuplot -e "tables='DIR'; figures='DIR'; here='experiments'" plot_kind.gp
load here."/style.gp"
set terminal pngcairo size 1100,550 font "DejaVu Sans,11" noenhanced
set output figures."/kind.png"
f = tables."/kind.tsv"
cols = system("awk -F'\t' 'NR == 1 { for (i = 3; i <= NF; i++) printf \"%s \", $i; exit }' '".f."'")
base(s) = (strstrt(s, "(") > 0) ? s[1:strstrt(s, "(") - 1] : s
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set ylabel "routed experts per token"
set grid ytics
set key outside right top
set yrange [0:*]
# two-line tick labels (kind, share of tokens) need room below the axis
set bmargin 4
set title "Experts per token by token kind (validation set, mean over seeds)"
plot for [i=1:words(cols)] f using (column(i + 2)):xticlabels(sprintf("%s\n%.1f%% of tokens", strcol(1), 100 * column(2))) \
        lc rgb router_color(base(word(cols, i))) fs solid (strstrt(word(cols, i), "(") > 0 ? 0.35 : 0.9) border -1 \
        title word(cols, i), \
     1 with lines dt 2 lc rgb "#000000" title "target"
