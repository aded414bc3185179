# plot_passage.gp: a validation passage with each token coloured by its routed experts per token
# (mean over MoE layers): the ET model routed by its thresholds, and (when run) the EC model with
# a one-sequence pool routed by expert choice as in training. Line breaks show as return signs.
#   gnuplot -e "tables='DIR'; figures='DIR'; here='experiments'" plot_passage.gp
load here."/style.gp"
cw = 8          # pixels per character of DejaVu Sans Mono at 10 pt (pngcairo)
lh = 17         # pixels per line
cols = 72
p1 = tables."/passage.tsv"
p2 = tables."/passage_batch.tsv"
two = file_ok(p2)
stats p1 using 2 nooutput
lines1 = STATS_max + 1
lines2 = 0
if (two) { stats p2 using 2 nooutput; lines2 = STATS_max + 1 }
stats p1 using 5 nooutput
top = STATS_max
if (two) { stats p2 using 5 nooutput; top = (STATS_max > top) ? STATS_max : top }
top = (top < 2) ? 2 : top
left = 20
right = 130
head = 40
W = left + cols * cw + right
H1 = head + lines1 * lh + 10
H2 = two ? head + lines2 * lh + 10 : 0
set terminal pngcairo size W, H1 + H2 font "DejaVu Sans Mono,10" noenhanced
set output figures."/passage.png"
router = system("cat '".tables."/passage_router.txt' 2>/dev/null")
unset xtics
unset ytics
unset border
unset key
set cbrange [0:top]
set cblabel "routed experts per token" font "DejaVu Sans,10"
set palette defined (0 "#ffffff", 0.5 "#deebf7", 1 "#fff7bc", 2 "#fd8d3c", 3 "#d7301f", 4 "#7f0000")
set style fill solid 1.0 noborder
set multiplot
set xrange [0:cols]
set lmargin at screen left * 1.0 / W
set rmargin at screen (left + cols * cw) * 1.0 / W
set colorbox user origin screen (left + cols * cw + 15) * 1.0 / W, screen (H2 + 10.0) / (H1 + H2) \
    size screen 12.0 / W, screen (H1 - head - 20.0) / (H1 + H2)
set tmargin at screen 1.0 - head * 1.0 / (H1 + H2)
set bmargin at screen (H2 + 10.0) / (H1 + H2)
set yrange [-lines1 + 0.5:0.5]
set title router." model, routed by its thresholds (as at inference)" font "DejaVu Sans,11"
plot p1 using ($3 + $4 / 2.0):(-$2):($4 / 2.0):(0.45):5 with boxxyerror fc palette, \
     p1 using ($3 + $4):(-$2):6 with labels right font "DejaVu Sans Mono,10"
if (two) {
    set tmargin at screen (H2 - head) * 1.0 / (H1 + H2)
    set bmargin at screen 10.0 / (H1 + H2)
    set yrange [-lines2 + 0.5:0.5]
    unset colorbox
    set title "ec-seq model (one-sequence pool), routed by expert choice as in training" font "DejaVu Sans,11"
    plot p2 using ($3 + $4 / 2.0):(-$2):($4 / 2.0):(0.45):5 with boxxyerror fc palette, \
         p2 using ($3 + $4):(-$2):6 with labels right font "DejaVu Sans Mono,10"
}
unset multiplot
