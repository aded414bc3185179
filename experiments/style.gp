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
set style line 8 lc rgb "#9467bd" lw 2   # et-nowarm, and any other name
set style line 9 lc rgb "#8c564b" lw 2   # et-fine
set style line 10 lc rgb "#e377c2" lw 2  # et-noshared
set style line 11 lc rgb "#bcbd22" lw 2  # et-softmax-e
set style line 12 lc rgb "#7f7f00" lw 2  # et-softmax-e-so
set style line 13 lc rgb "#393b79" lw 2  # et-lr-expert
set style line 14 lc rgb "#637939" lw 2  # et-wd
style_names = "dense tc-none tc-aux tc-lossfree ec-seq ec-batch et et-nowarm et-fine et-noshared et-softmax-e et-softmax-e-so et-lr-expert et-wd"
router_style(name) = (strstrt(" ".style_names." ", " ".name." ") > 0) ? \
    words(substr(style_names, 1, strstrt(" ".style_names." ", " ".name." ") - 1 + strlen(name))) : 8
router_color(name) = word("#000000 #8c8c8c #1f77b4 #17becf #ff7f0e #d62728 #2ca02c #9467bd #8c564b #e377c2 #bcbd22 #7f7f00 #393b79 #637939", router_style(name))
file_ok(f) = system("test -s '".f."' && echo 1 || echo 0") + 0
# the routers of the main corpus (run.sh's runs_main.tsv; else routers.tsv), in their order
routers = system("f='".tables."/runs_main.tsv'; [ -s \"$f\" ] || f='".tables."/routers.tsv'; awk -F'\t' '!/^#/ && !s[$1]++ { printf \"%s \", $1 }' \"$f\"")
