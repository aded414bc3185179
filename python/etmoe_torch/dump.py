"""dump.py: the twin's side of doc/dump-format.md. `compute` runs one training forward and
backward of a checkpoint's model on a dump's inputs and targets (no optimizer step, no router
update) and returns the dump's tensors; `write` writes them so that `etmoe compare` reads them.

`follow` (optional) makes every layer compute with another dump's routing masks, so that a
flip in one layer (rounding at a boundary) does not spread to the inputs of the next and
everything downstream of routing can be compared with tight tolerances. The twin's own decision
(on its own logits) is still what it writes as the mask, and `flips` checks that each
disagreement with the other dump lies within rounding of its decision boundary.
"""
import torch

from . import model, routers, safetensors
from .config import parse

DTYPES = {"fp32": torch.float32, "fp64": torch.float64}
VERSION = "etmoe_torch 1"


def load(ckpt_path):
    tensors, meta = safetensors.read(ckpt_path)
    if meta.get("format") != "etmoe-checkpoint-1":
        raise safetensors.FormatError(f"{ckpt_path}: format '{meta.get('format')}' is not etmoe-checkpoint-1")
    return tensors, meta, parse(meta["config"])


def compute(ckpt_path, inputs, targets, dtype="fp64", follow=None, hooks=None, device="cpu"):
    tensors, meta, hp = load(ckpt_path)
    p = model.load_params(tensors, hp, DTYPES[dtype])
    if device != "cpu":
        p = {n: t.detach().to(device).requires_grad_(True) for n, t in p.items()}
    state = model.load_router_state(tensors, hp)
    if follow is not None:
        follow = {l: m.to(device) for l, m in follow.items()}
    out = model.forward(p, state, hp, inputs, targets, train=True, hooks=hooks, follow=follow)
    out["loss"].backward()
    B, T = inputs.shape
    res = {"inputs": inputs.int().cpu(), "targets": targets.int().cpu(),
           "logits": out["logits"].detach().float().cpu(),
           "losses": out["losses"].detach().float().cpu(),
           "loss": out["loss"].detach().double().cpu().reshape(())}
    for n in model.param_names(hp):
        res[f"grad.{n}"] = p[n].grad.float().cpu()
    rules, margins = {}, {}
    for l, rec in out["routing"].items():
        own = rec.get("own_mask", rec["mask"])
        res[f"routing.{l}.mask"] = own.to(torch.uint8).cpu()
        rec["margin"] = rec["margin"].cpu()
        res[f"routing.{l}.logits"] = rec["logits"].detach().float().cpu()
        res[f"routing.{l}.gates"] = rec["scores"].detach().float().cpu()
        st = state[l]
        thr = st["threshold"] if hp["router"] != "tc" else torch.zeros_like(st["threshold"])
        res[f"routing.{l}.threshold"] = thr.float()
        res[f"routing.{l}.bias"] = st["bias"].float()
        rules[l] = rec["rule"]
        margins[l] = rec["margin"].cpu()
    meta_out = {"format": "etmoe-dump-1", "config": meta["config"], "source": ckpt_path,
                "backend": f"torch-{dtype}", "batch": str(B), "loss": "%.17g" % res["loss"].item(),
                "etmoe_version": VERSION}
    for l, rule in rules.items():
        meta_out[f"routing.{l}.rule"] = rule
    return res, meta_out, margins


def write(path, res, meta):
    safetensors.write(path, res, meta)


def flips(ref, mine, margins, slack=4.0, floor=1e-6):
    """Routing disagreements between a reference dump's tensors and ours, layer by layer.
    A disagreement is accepted when its pair's distance to the decision boundary (our margin)
    is within `slack` times the largest router-logit difference of that layer (plus `floor`):
    rounding can move a logit that far, nothing else can explain a flip.
    Returns (accepted, rejected): lists of (layer, token, expert, margin, tolerance)."""
    accepted, rejected = [], []
    for l, margin in margins.items():
        a, b = ref[f"routing.{l}.mask"].bool(), mine[f"routing.{l}.mask"].bool()
        dr = (ref[f"routing.{l}.logits"].double() - mine[f"routing.{l}.logits"].double()).abs().max().item()
        tol = slack * dr + floor
        for t, e in (a != b).nonzero().tolist():
            item = (l, t, e, float(margin[t, e]), tol)
            (accepted if margin[t, e] <= tol else rejected).append(item)
    return accepted, rejected


def masks_of(res):
    return {int(k.split(".")[1]): v.bool() for k, v in res.items()
            if k.startswith("routing.") and k.endswith(".mask")}
