# tables.awk: helpers shared by aggregate.awk and report.awk, loaded before them with -f: the
# number test, the key/value TSV reader and Student t quantiles.

function isnum(x) { return x ~ /^-?[0-9.]+([eE][-+]?[0-9]+)?$/ }

# Reads a key/value TSV into KV (cleared first); 0 when the file is missing or empty.
function read_kv(path, KV,    line, n, f) {
    split("", KV)
    n = 0
    while ((getline line < path) > 0) {
        if (line ~ /^#/ || line == "") continue
        split(line, f, "\t")
        KV[f[1]] = f[2]
        n++
    }
    close(path)
    return n
}

# Student t quantile 0.975 for df degrees of freedom (two-sided 95%), to 3 decimals; the normal
# quantile beyond 30.
function tcrit(df,    T) {
    split("12.706 4.303 3.182 2.776 2.571 2.447 2.365 2.306 2.262 2.228 2.201 2.179 2.160 2.145 " \
          "2.131 2.120 2.110 2.101 2.093 2.086 2.080 2.074 2.069 2.064 2.060 2.056 2.052 2.048 " \
          "2.045 2.042", T, " ")
    return df >= 1 && df <= 30 ? T[df] + 0 : 1.960
}

# Reads an etmoe config file (KEY = VALUE lines, sections and comments ignored) into CF (cleared
# first); 0 when the file is missing or holds no key.
function read_kv_conf(path, CF,    line, n, f) {
    split("", CF)
    n = 0
    while ((getline line < path) > 0) {
        sub(/#.*/, "", line)
        if (split(line, f, " = ") != 2) continue
        gsub(/^[ \t]+|[ \t]+$/, "", f[1]); gsub(/^[ \t]+|[ \t]+$|"/, "", f[2])
        CF[f[1]] = f[2]
        n++
    }
    close(path)
    return n
}
