"""bench_torch.py: the PyTorch twin's training-step speed on the model of an etmoe config, for
`make bench` to print beside `etmoe bench` (same preset and overrides, random tokens, batch_size
sequences of seq_len tokens). Times forward + backward (tokens/s, as etmoe bench reports them)
and the optimizer step apart, after untimed warm-up steps; fp32, torch's CPU threads set to
OMP_NUM_THREADS (or --device cuda). ET layers update their thresholds after every step, so with
et_warmup_steps=1 the timed steps route by threshold, as in etmoe bench.

    python3 bench_torch.py CONFIG [key=value...] [--steps N] [--warmup N] [--device D]
CONFIG: a preset name (data/configs/NAME.conf) or a config file; demo.conf gives the defaults.
"""
import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from etmoe_torch import config, model, optim, routers  # noqa: E402


def load_config(name, overrides):
    cdir = os.environ.get("ETM_DATA_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data"))
    cdir = os.path.join(cdir, "configs")
    with open(os.path.join(cdir, "demo.conf")) as f:
        hp = config.parse(f.read())
    path = name if os.path.exists(name) else os.path.join(cdir, name + ".conf")
    with open(path) as f:
        hp.update(config.parse(f.read()))
    return config.override(hp, overrides)


def init_params(hp, device, gen):
    """Shapes of src/model/model.h; values N(0, s), s = min(1, sqrt(fan_out/fan_in)) / sqrt(fan_in)
    (the speed does not depend on them; output projections are random too, so no gradient is
    trivially zero)."""
    D, H, Hkv = hp["d_model"], hp["n_head"], hp["n_kv_head"]
    hd, E, Hx, S = D // H, hp["n_routed"], hp["expert_hidden"], hp["n_shared"]
    shapes = {"wte": (hp["vocab_size"], D), "lm_head": (hp["vocab_size"], D)}
    for l in range(hp["n_layer"]):
        shapes.update({f"layers.{l}.attn.wq": (H * hd, D), f"layers.{l}.attn.wk": (Hkv * hd, D),
                       f"layers.{l}.attn.wv": (Hkv * hd, D), f"layers.{l}.attn.wo": (D, H * hd)})
        if config.is_moe_layer(hp, l):
            shapes.update({f"layers.{l}.moe.router": (E, D), f"layers.{l}.moe.up": (E, Hx, D),
                           f"layers.{l}.moe.down": (E, D, Hx), f"layers.{l}.moe.shared_up": (S, Hx, D),
                           f"layers.{l}.moe.shared_down": (S, D, Hx)})
        else:
            shapes.update({f"layers.{l}.mlp.up": (hp["ffn_hidden"], D), f"layers.{l}.mlp.down": (D, hp["ffn_hidden"])})
    p = {}
    for n in model.param_names(hp):
        out_f, in_f = shapes[n][-2:]
        s = min(1.0, math.sqrt(out_f / in_f)) / math.sqrt(in_f)
        p[n] = (torch.randn(shapes[n], generator=gen) * s).to(device).requires_grad_(True)
    return p


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    hp = load_config(a.config, a.overrides)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    gen = torch.Generator().manual_seed(hp["seed"])
    p = init_params(hp, a.device, gen)
    E = hp["n_routed"]
    state = {l: {"threshold": torch.zeros(E), "ema": torch.zeros(E), "bias": torch.zeros(E),
                 "counters": torch.zeros(2, dtype=torch.int64)}
             for l in range(hp["n_layer"]) if config.is_moe_layer(hp, l)}
    names = model.param_names(hp)
    groups = {n: model.param_group(n) for n in names}
    opt_state = {}
    for n in names:
        keys = ("momentum",) if groups[n] == "matrix" and hp["matrix_optimizer"] == "muon" else ("m", "v")
        for k in keys:
            opt_state[f"opt.{n}.{k}"] = torch.zeros_like(p[n], requires_grad=False)
    B, T, V = hp["batch_size"], hp["seq_len"], hp["vocab_size"]
    fb = op = 0.0
    pairs = 0
    for i in range(a.warmup + a.steps):
        tok = torch.randint(0, V, (B, T + 1), generator=gen).to(a.device)
        for t in p.values():
            t.grad = None
        t0 = time.perf_counter()
        out = model.forward(p, state, hp, tok[:, :-1], tok[:, 1:], train=True)
        out["loss"].backward()
        if a.device != "cpu":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        with torch.no_grad():
            optim.step({n: p[n].data for n in names}, {n: p[n].grad for n in names}, groups, opt_state, hp, i)
        if a.device != "cpu":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        for l, rec in out["routing"].items():
            state[l] = routers.step_end(state[l], {"cut": rec.get("cut"), "counts": rec.get("counts")}, hp)
        if i >= a.warmup:
            fb += t1 - t0
            op += t2 - t1
            pairs += sum(int(r["mask"].sum()) for r in out["routing"].values())
    n_moe = max(len(state), 1)
    ex = pairs / (a.steps * B * T * n_moe) if state else 0.0
    print(f"torch twin ({torch.__version__}, {a.device}, fp32, {torch.get_num_threads()} threads): "
          f"{hp['router']} model, {a.steps} steps of {B} x {T} tokens: "
          f"{a.steps * B * T / fb:.0f} tokens/s forward+backward, optimizer {1000 * op / a.steps:.0f} ms/step"
          + (f", {ex:.2f} routed experts/token" if state else ""))


if __name__ == "__main__":
    main()
