#!/bin/sh
# test_bad_input.sh: hostile inputs to the etmoe program, one or more cases per class of
# issue 12 (hangs, unbounded reads, the checkpoint verbs' error policy, impossible sizes, silent
# acceptance, the small ones). Every case asserts the exit status, a fragment of the message, that
# it ends within a time limit (a hang fails, it does not block make check) and that the protected
# files (a good run directory and its data) are byte-for-byte unchanged afterwards.
set -u
etmoe=${ETMOE:-$(pwd)/etmoe}
[ -x "$etmoe" ] || { echo "no etmoe program at $etmoe"; exit 99; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/etmoe-bad-input-XXXXXX") || exit 99
trap 'rm -rf "$tmp"' EXIT
cd "$tmp" || exit 99
failures=0
cases=0
fail() {
    echo "FAIL: $*"
    failures=$((failures + 1))
}
# `timeout` bounds every case: a hang becomes status 124 and a failure, not a stuck make check.
if command -v timeout >/dev/null 2>&1; then limit="timeout 60"; else limit=; fi

# ---- the fixtures: a little data, a tiny run, its checkpoint -----------------------------------
head -c 120000 "${ETM_DATA_DIR:?}/austen/emma.txt" >text.txt
"$etmoe" prepare --tokenizer austen --out data text.txt >/dev/null 2>&1 || { echo "prepare failed"; exit 99; }
tiny="train_data=data/train_*.bin val_data=data/val_*.bin seq_len=32 batch_size=2 n_layer=2 d_model=32 n_head=2 \
ffn_hidden=64 expert_hidden=32 eval_every=0 et_warmup_steps=0"
# shellcheck disable=SC2086
"$etmoe" train demo $tiny out_dir=run max_steps=3 --quiet >/dev/null 2>&1 || { echo "training the fixture failed"; exit 99; }
ckpt=run/latest.safetensors
[ -s "$ckpt" ] || { echo "no fixture checkpoint"; exit 99; }
mkfifo fifo || exit 99
mkdir adir || exit 99
printf 'this is a README, not a checkpoint, and it is long enough to have 8 bytes\n' >readme.md
protected="$ckpt run/config.conf run/metrics.jsonl data/train_000000.bin data/val_000000.bin"
sums() { cksum $protected 2>&1; }
before=$(sums)

# expect STATUS 'message fragment' COMMAND...: runs COMMAND (stdin from /dev/null), checks its exit
# status, that stderr+stdout hold the fragment, and that no protected file changed.
expect() {
    want=$1 frag=$2
    shift 2
    cases=$((cases + 1))
    $limit "$@" </dev/null >out.txt 2>&1
    got=$?
    if [ "$got" != "$want" ]; then
        fail "$* -> exit $got, expected $want: $(head -c 400 out.txt)"
    elif [ -n "$frag" ] && ! grep -F -q -- "$frag" out.txt; then
        fail "$* -> message '$(head -c 400 out.txt)' lacks '$frag'"
    fi
    if grep -q 'Aborted\|runtime error\|AddressSanitizer' out.txt; then fail "$* -> $(head -c 400 out.txt)"; fi
    now=$(sums)
    [ "$now" = "$before" ] || fail "$* changed a protected file"
}
# no_dir DIR: a refused run created nothing.
no_dir() { [ ! -e "$1" ] || fail "a refused run left $1 behind"; }

# ---- hangs: a FIFO is refused before it is opened for blocking reads ----------------------------
fifo_msg="not a regular file (a FIFO, device or socket)"
expect 2 "$fifo_msg" "$etmoe" train ./fifo
expect 2 "$fifo_msg" "$etmoe" eval ./fifo
expect 2 "$fifo_msg" "$etmoe" tokenize --tokenizer ./fifo
expect 2 "$fifo_msg" "$etmoe" prepare --tokenizer austen --out p1 ./fifo
no_dir p1
# shellcheck disable=SC2086
expect 1 "$fifo_msg" "$etmoe" train demo $tiny train_data=fifo out_dir=r1 --quiet
expect 2 "$fifo_msg" "$etmoe" compare ./fifo "$ckpt"

# ---- unbounded reads: devices, and files over the cap ------------------------------------------
expect 2 "/dev/zero: not a regular file" "$etmoe" train /dev/zero
truncate -s 2M big.conf 2>/dev/null || dd if=/dev/zero of=big.conf bs=1024 count=2048 2>/dev/null
expect 2 "over the limit of 1048576 bytes for a config file" "$etmoe" train ./big.conf

# ---- one skeleton, one wording, exit 2 for the user's mistakes (every checkpoint verb) ----------
for verb in eval generate inspect dump routing-profile; do
    case $verb in
    generate) extra="--prompt x" ;;
    dump) extra="--data data/val_*.bin --out d.safetensors" ;;
    routing-profile) extra="--out prof" ;;
    *) extra= ;;
    esac
    # shellcheck disable=SC2086
    {
        expect 2 "etmoe $verb: ./missing.safetensors: no such file" "$etmoe" $verb ./missing.safetensors $extra
        expect 2 "etmoe $verb: ./adir: is a directory, not a checkpoint file" "$etmoe" $verb ./adir $extra
        expect 2 "etmoe $verb: ./fifo: $fifo_msg, so not a checkpoint file" "$etmoe" $verb ./fifo $extra
        expect 2 "etmoe $verb: ./readme.md: not a safetensors file" "$etmoe" $verb ./readme.md $extra
        expect 2 "unknown backend 'nope'" "$etmoe" $verb "$ckpt" --backend nope $extra
        # the verbs' option tables (cli_parse_options): one wording for every verb
        expect 2 "etmoe $verb: unknown option '--bogus'" "$etmoe" $verb "$ckpt" --bogus $extra
        expect 2 "etmoe $verb: one checkpoint only ('$ckpt' and 'b.safetensors')" \
            "$etmoe" $verb "$ckpt" b.safetensors $extra
        expect 2 "etmoe $verb: option '--backend' needs a value" "$etmoe" $verb "$ckpt" $extra --backend
        expect 0 "usage: etmoe $verb" "$etmoe" $verb --help
    }
    no_dir prof
    no_dir d.safetensors
done
# another program's safetensors file (a dump file is one: no checkpoint format)
"$etmoe" dump "$ckpt" --data 'data/val_*.bin' --out other.safetensors --batch 1 >/dev/null 2>&1 ||
    fail "dump of the fixture failed"
expect 2 "other.safetensors: not an etmoe checkpoint" "$etmoe" eval other.safetensors
expect 2 "other.safetensors: not an etmoe checkpoint" "$etmoe" generate other.safetensors --prompt x
if [ "$(id -u)" != 0 ]; then # root reads anything
    cp "$ckpt" unreadable.safetensors && chmod 000 unreadable.safetensors
    expect 2 "unreadable.safetensors: cannot open the checkpoint: Permission denied" "$etmoe" eval unreadable.safetensors
fi
# shellcheck disable=SC2086
expect 2 "unknown backend 'nope'" "$etmoe" train demo $tiny out_dir=r2 --backend nope
no_dir r2
expect 2 "--help-keys lists the keys" "$etmoe" bench demo foo=1
expect 1 "ec_pool_scope = step is not measured" "$etmoe" bench demo router=ec ec_pool_scope=step --steps 1 --warmup 0
expect 2 "--help-keys lists the keys" "$etmoe" train demo foo=1 out_dir=r3
no_dir r3

# ---- impossible sizes: refused with the estimate, exit 2, nothing created -----------------------
expect 2 "the model needs" "$etmoe" train demo vocab_size=2000000000 batch_size=4 seq_len=32 out_dir=r4
no_dir r4
for kv in d_model=1048576 ffn_hidden=2000000000 expert_hidden=2000000000 n_shared=100000 n_layer=1000000; do
    expect 2 "the model needs" "$etmoe" train demo "$kv" n_head=1 n_kv_head=1 out_dir=r5
    no_dir r5
done
expect 2 "the model needs" "$etmoe" train demo batch_size=2000000 seq_len=4096 out_dir=r6
no_dir r6
expect 0 "memory estimate for training" "$etmoe" train demo --dry-run out_dir=r7
no_dir r7
expect 2 "--batch must be an integer in 1..1048576" "$etmoe" dump "$ckpt" --data 'data/val_*.bin' --out x --batch 2000000000
expect 2 "the model needs" "$etmoe" inspect "$ckpt" --batch 1000000

# ---- silent acceptance --------------------------------------------------------------------------
printf '[model]\nd_model = 64\n\000n_layer = 1000\n' >nul.conf
expect 2 "nul.conf:3: a NUL byte" "$etmoe" train ./nul.conf
printf '1 2\0003\n' >ids.txt
cases=$((cases + 1))
$limit "$etmoe" tokenize --tokenizer austen --decode <ids.txt >out.txt 2>&1
[ $? = 1 ] && grep -q "a NUL byte at byte 3" out.txt || fail "tokenize --decode at a NUL: $(cat out.txt)"

# Patches the first bytes of tensor NAME's data in a copy of the checkpoint with printf-escaped BYTES.
patch_tensor() { # SRC DST NAME BYTES
    cp "$1" "$2"
    hlen=$(od -An -tu4 -N4 "$2" | tr -d ' ')
    begin=$(head -c $((8 + hlen)) "$2" | tail -c "$hlen" | grep -o "\"$3\":{[^}]*}" |
        sed 's/.*"data_offsets":\[\([0-9]*\),.*/\1/')
    [ -n "$begin" ] || { fail "no tensor $3 in the fixture"; return; }
    printf "$4" | dd of="$2" bs=1 seek=$((8 + hlen + begin)) conv=notrunc 2>/dev/null
}
nan='\000\000\300\177'
inf='\000\000\200\177'
patch_tensor "$ckpt" nan.safetensors wte "$nan"
expect 1 "tensor 'wte' holds NaN at element 0" "$etmoe" eval nan.safetensors
expect 1 "tensor 'wte' holds NaN at element 0" "$etmoe" generate nan.safetensors --prompt x
patch_tensor "$ckpt" inf.safetensors layers.1.attn.wq "$inf"
expect 1 "holds an infinity" "$etmoe" eval inf.safetensors
patch_tensor "$ckpt" thr.safetensors router.1.threshold "$nan"
expect 1 "tensor 'router.1.threshold' holds NaN" "$etmoe" eval thr.safetensors
patch_tensor "$ckpt" cnt.safetensors router.1.counters '\373\377\377\377\377\377\377\377'
expect 1 "negative count (-5" "$etmoe" inspect cnt.safetensors
cp -r run run2
patch_tensor "$ckpt" run2/latest.safetensors loader.pos '\371\377\377\377\377\377\377\377'
# shellcheck disable=SC2086
expect 1 "the epoch is negative (-7)" "$etmoe" train demo $tiny out_dir=run2 max_steps=4 --resume --quiet

# ---- the small ones ------------------------------------------------------------------------------
expect 2 "./adir: is a directory, not a config file" "$etmoe" train ./adir
# a checkpoint write killed midway leaves NAME.tmp.PID; the next save removes those of dead processes
cp -r run run3
sh -c 'exit 0' &
dead=$!
wait "$dead"
: >"run3/latest.safetensors.tmp.$dead"
: >"run3/latest.safetensors.tmp.$$" # this shell is alive: its file stays
# shellcheck disable=SC2086
expect 0 "" "$etmoe" train demo $tiny out_dir=run3 max_steps=4 --resume --quiet
[ ! -e "run3/latest.safetensors.tmp.$dead" ] || fail "the stale run3/latest.safetensors.tmp.$dead was not removed"
[ -e "run3/latest.safetensors.tmp.$$" ] || fail "a live process's temporary file was removed"

echo "$cases cases, $failures failures"
[ "$failures" = 0 ]
