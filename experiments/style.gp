# style.gp: colours and names shared by the experiment's plots (loaded by plot_*.gp).
# One colour per router, fixed so that every figure uses the same one.
set encoding utf8
set termoption noenhanced
set datafile separator "\t"
set datafile missing "NaN"
set style line 1 lc rgb "#000000" lw 2   # dense
set style line 2 lc rgb "#8c8c8c" lw 2   # tc-none
set style line 3 lc rgb "#1f77b4" lw 2   # tc-aux
set style line 4 lc rgb "#17becf" lw 2   # tc-lossfree
set style line 5 lc rgb "#ff7f0e" lw 2   # ec-seq
set style line 6 lc rgb "#d62728" lw 2   # ec-batch
set style line 7 lc rgb "#2ca02c" lw 2   # et
set style line 8 lc rgb "#9467bd" lw 2   # et-nowarm
all_routers = "dense tc-none tc-aux tc-lossfree ec-seq ec-batch et et-nowarm"
router_style(name) = (name eq "dense") ? 1 : (name eq "tc-none") ? 2 : (name eq "tc-aux") ? 3 : \
    (name eq "tc-lossfree") ? 4 : (name eq "ec-seq") ? 5 : (name eq "ec-batch") ? 6 : (name eq "et") ? 7 : 8
router_color(name) = word("#000000 #8c8c8c #1f77b4 #17becf #ff7f0e #d62728 #2ca02c #9467bd", router_style(name))
file_ok(f) = system("test -s '".f."' && echo 1 || echo 0") + 0
# the routers of this experiment, in the order of routers.tsv
routers = system("awk -F'\t' '!/^#/ { printf \"%s \", $1 }' '".tables."/routers.tsv'")
