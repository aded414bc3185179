"""config.py: etmoe's configuration text (the `config` metadata of a checkpoint or dump,
written by etm_hparams_to_string; doc/config.md) as a dict of typed values.

Only the syntax etmoe prints is needed here: `[section]` lines, `key = value`, values either
quoted strings or bare words, `#` comments.
"""

INT_KEYS = {
    "vocab_size", "seq_len", "n_layer", "d_model", "n_head", "n_kv_head", "ffn_hidden",
    "dense_layers", "n_routed", "n_shared", "expert_hidden", "top_k", "pool_seqs",
    "et_warmup_steps", "seed", "batch_size", "grad_accum", "max_steps", "muon_warmup_steps",
    "ns_steps", "warmup_steps", "eval_every", "eval_batches", "ckpt_every", "log_every",
    "thresholds_every", "ema_start_steps",
}


def _value(text):
    text = text.strip()
    if text.startswith('"'):
        out, i = [], 1
        while i < len(text) and text[i] != '"':
            if text[i] == "\\" and i + 1 < len(text):
                i += 1
            out.append(text[i])
            i += 1
        return "".join(out)
    for i, ch in enumerate(text):  # a comment starts at '#' after whitespace
        if ch == "#" and (i == 0 or text[i - 1] in " \t"):
            return text[:i].strip()
    return text


def parse(text):
    """Returns {key: value}: ints for whole-number keys, floats for numbers, else strings."""
    hp = {}
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#") or s.startswith("["):
            continue
        key, _, val = s.partition("=")
        key, val = key.strip(), _value(val)
        if key in INT_KEYS:
            hp[key] = int(val)
        else:
            try:
                hp[key] = float(val)
            except ValueError:
                hp[key] = val
    return hp


def override(hp, assignments):
    """A copy of hp with `key=value` strings applied (types as parse gives them)."""
    out = dict(hp)
    for a in assignments:
        key, _, val = a.partition("=")
        out.update(parse(f"{key} = {val}"))
    return out


def is_moe_layer(hp, layer):
    return hp["router"] != "dense" and layer >= hp["dense_layers"]
