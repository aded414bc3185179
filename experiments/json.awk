# json.awk: a small JSON reader for POSIX awk (mawk, gawk, busybox). json_flatten(text, F) reads
# one JSON value (a metrics.jsonl line) and fills F with one entry per scalar, keyed by its path:
# object keys and array indices (from 0) joined by ".", e.g. F["routing.0.load.3"] = "512".
# Strings are stored without their quotes and with \" \\ \/ \n \t unescaped (other \u escapes are
# kept as written); true, false and null are stored as written. Returns the number of entries, or
# -1 on malformed input (the caller names the file and line).

function json_flatten(text, F,    n, tok, depth, kind, key, expect, path, d, v) {
    split("", F)
    n = 0
    depth = 0
    expect = "value"            # what the next token must be: value, key, colon, comma
    while (1) {
        sub(/^[ \t\r\n]+/, "", text)
        if (text == "") break
        if (match(text, /^"([^"\\]|\\.)*"/)) {
            tok = substr(text, 1, RLENGTH)
        } else if (match(text, /^-?[0-9][0-9]*(\.[0-9]+)?([eE][-+]?[0-9]+)?/) ||
                   match(text, /^(true|false|null|NaN|-?Infinity)/) || match(text, /^[][{}:,]/)) {
            tok = substr(text, 1, RLENGTH)
        } else
            return -1
        text = substr(text, RLENGTH + 1)

        if (tok == "{" || tok == "[") {
            if (expect != "value" && expect != "value_or_end") return -1
            depth++
            kind[depth] = tok
            key[depth] = (tok == "[") ? 0 : ""
            expect = (tok == "[") ? "value_or_end" : "key"
            continue
        }
        if (tok == "}" || tok == "]") {
            if (depth == 0) return -1
            if ((tok == "}") != (kind[depth] == "{")) return -1
            if (expect == "value") return -1                          # "[1,]"
            if (expect == "key" || expect == "colon") {
                if (!(expect == "key" && key[depth] == "")) return -1 # "{}" is fine, "{"a"}" is not
            }
            depth--
            expect = depth == 0 ? "end" : "comma"
            continue
        }
        if (tok == ":") {
            if (expect != "colon") return -1
            expect = "value"
            continue
        }
        if (tok == ",") {
            if (expect != "comma") return -1
            if (kind[depth] == "[") {
                key[depth]++
                expect = "value"
            } else
                expect = "key"
            continue
        }
        # a string or a literal
        if (expect == "key") {
            if (substr(tok, 1, 1) != "\"") return -1
            key[depth] = json_unquote(tok)
            expect = "colon"
            continue
        }
        if (expect != "value" && expect != "value_or_end") return -1
        path = ""
        for (d = 1; d <= depth; d++) path = (d == 1) ? key[d] : path "." key[d]
        v = (substr(tok, 1, 1) == "\"") ? json_unquote(tok) : tok
        F[path] = v
        n++
        expect = depth == 0 ? "end" : "comma"
    }
    if (depth != 0) return -1
    return n
}

function json_unquote(s,    out, i, c) {
    s = substr(s, 2, length(s) - 2)
    if (index(s, "\\") == 0) return s
    out = ""
    for (i = 1; i <= length(s); i++) {
        c = substr(s, i, 1)
        if (c == "\\" && i < length(s)) {
            i++
            c = substr(s, i, 1)
            if (c == "n") c = "\n"
            else if (c == "t") c = "\t"
            else if (c == "u") c = "\\u"
        }
        out = out c
    }
    return out
}
