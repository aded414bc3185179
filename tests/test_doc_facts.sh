#!/bin/sh
# test_doc_facts.sh: the facts doc/ quotes that the program or the shipped files can state, checked
# against them, so the docs cannot drift again:
#  1. doc/config.md's key tables list exactly the keys `etmoe train --help-keys` prints, each with
#     the default it prints;
#  2. each row of doc/config.md's preset table states sizes ("d_model 96", "4 layers", "sequences
#     of 256", ...) equal to the preset's effective values: data/configs/NAME.conf over the
#     defaults; every row must state at least 10 of them;
#  3. doc/training.md's description of the demo preset quotes `key` values equal to demo's.
# Run from the build directory by make check (ETM_TEST_DIR is the source tree's tests/).
set -eu
: "${ETM_TEST_DIR:?run by make check}"
top=$(dirname "$ETM_TEST_DIR")
etmoe=./etmoe
tmp=$(mktemp -d "${TMPDIR:-/tmp}/etmoe-docs-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fail=0

# key <TAB> default, from the program
$etmoe train --help-keys | awk '
  /^  [a-z_0-9]+ / {
    key = $1; d = $0
    sub(/.*; default /, "", d); sub(/\]$/, "", d)
    print key "\t" d
  }' | sort > "$tmp/program"
[ -s "$tmp/program" ] || { echo "test_doc_facts: etmoe train --help-keys printed no keys" >&2; exit 1; }

# 1. the key tables under "## Keys": | `key` | meaning | default | allowed |
awk -F'|' '
  /^## / { keys = ($0 == "## Keys") }
  keys && /^\| `[a-z_0-9]+` \|/ {
    if (NF != 6) { print "doc/config.md:" NR ": a key row needs 4 columns (a | inside a cell?)" > "/dev/stderr"; exit 1 }
    key = $2; gsub(/[` ]/, "", key)
    d = $4; sub(/^ +/, "", d); sub(/ +$/, "", d)
    print key "\t" d
  }' "$top/doc/config.md" | sort > "$tmp/doc"
if ! cmp -s "$tmp/program" "$tmp/doc"; then
  echo "test_doc_facts: doc/config.md's key tables differ from etmoe train --help-keys" >&2
  echo "(< the program, > doc/config.md; key, default):" >&2
  diff "$tmp/program" "$tmp/doc" >&2 || true
  fail=1
fi

# The effective value of every key of a preset: its .conf file over the defaults.
effective() {
  awk -F'\t' -v conf="$top/data/configs/$1.conf" '
    FILENAME != conf { v[$1] = $2; next }
    { line = $0; sub(/#.*/, "", line) }
    line ~ /=/ {
      k = line; sub(/=.*/, "", k); gsub(/[ \t]/, "", k)
      x = line; sub(/^[^=]*=[ \t]*/, "", x); sub(/[ \t]+$/, "", x)
      v[k] = x
    }
    END { for (k in v) print k "\t" v[k] }' "$tmp/program" "$top/data/configs/$1.conf" | sort
}

# 2. the preset table: | `name` | what it is |, whose sizes are phrases with a number in them.
#    FACTS: phrase (# is the number) <TAB> key ("tokens" = batch_size * seq_len * grad_accum).
cat > "$tmp/facts" <<'FACTS'
d_model #	d_model
# layers	n_layer
# heads	n_head
# key/value head	n_kv_head
sequences of #	seq_len
vocabulary #	vocab_size
# routed	n_routed
# shared	n_shared
experts of width #	expert_hidden
dense MLP of width #	ffn_hidden
# steps	max_steps
batches of # sequences	batch_size
# micro-batch	grad_accum
# tokens per step	tokens
FACTS
check_row() { # preset, text of its row
  effective "$1" > "$tmp/eff"
  printf '%s\n' "$2" | awk -F'\t' -v preset="$1" -v effile="$tmp/eff" '
    BEGIN { while ((getline l < effile) > 0) { split(l, f, "\t"); v[f[1]] = f[2] } }
    FILENAME != "-" { phrase[NR] = $1; key[NR] = $2; n = NR; next }
    {
      v["tokens"] = v["batch_size"] * v["seq_len"] * v["grad_accum"]
      row = $0; found = 0; bad = 0
      for (i = 1; i <= n; i++) {
        re = phrase[i]; gsub(/\//, "\\/", re); sub(/#/, "[0-9][0-9,]*", re)
        s = row
        while (match(s, re)) {
          m = substr(s, RSTART, RLENGTH); s = substr(s, RSTART + RLENGTH)
          num = m; gsub(/[^0-9]/, "", num)
          found++
          if (num + 0 != v[key[i]] + 0) {
            printf "doc/config.md, preset %s: \"%s\" but %s is %s (data/configs/%s.conf over the defaults)\n", preset, m, key[i], v[key[i]], preset > "/dev/stderr"
            bad = 1
          }
        }
      }
      if (found < 10) { printf "doc/config.md, preset %s: only %d checkable sizes in its row (at least 10)\n", preset, found > "/dev/stderr"; bad = 1 }
      exit bad
    }' "$tmp/facts" - || fail=1
}
for conf in "$top"/data/configs/*.conf; do
  name=$(basename "$conf" .conf)
  row=$(grep "^| \`$name\` |" "$top/doc/config.md" || true)
  if [ -z "$row" ]; then echo "test_doc_facts: doc/config.md has no preset row for $name" >&2; fail=1; continue; fi
  check_row "$name" "$row"
done

# 3. doc/training.md: the paragraph that begins "The `demo` preset" quotes `key` value pairs.
effective demo > "$tmp/eff"
awk -v effile="$tmp/eff" '
  BEGIN { while ((getline l < effile) > 0) { split(l, f, "\t"); v[f[1]] = f[2] } }
  /The `demo` preset/ { on = 1 }
  on && /^$/ { exit }
  on { text = text " " $0 }
  END {
    n = 0; bad = 0; s = text
    while (match(s, /`[a-z_0-9]+` [0-9][0-9.,]*/)) {
      m = substr(s, RSTART, RLENGTH); s = substr(s, RSTART + RLENGTH)
      k = m; sub(/^`/, "", k); sub(/`.*/, "", k)
      x = m; sub(/^`[a-z_0-9]+` /, "", x); gsub(/,/, "", x); sub(/\.$/, "", x)
      if (!(k in v)) continue
      n++
      if (x + 0 != v[k] + 0) { printf "doc/training.md: the demo preset has %s = %s, the text says %s\n", k, v[k], x > "/dev/stderr"; bad = 1 }
    }
    if (n < 10) { printf "doc/training.md: only %d `key` values in the demo paragraph (at least 10)\n", n > "/dev/stderr"; bad = 1 }
    exit bad
  }' "$top/doc/training.md" || fail=1

[ $fail = 0 ] && echo "test_doc_facts: doc/config.md and doc/training.md agree with the program and data/configs"
exit $fail
