"""step.py: one optimizer step of etmoe's trainer (src/train/trainer.h's order: forward and backward
of grad_accum micro-batches, the optimizer step, then once per step the routers' state update:
ET/EC cut-off EMA, loss-free biases, step counters), from a full checkpoint to the checkpoint
the trainer would write next.

The batch is given (B sequences of T+1 tokens); the trainer's shuffled loader is not
reproduced, so a test gives the trainer data of exactly one batch (the order of sequences inside
it then changes only rounding when the routing pool is the whole batch; with one sequence, not
even that)."""
import torch

from . import model, optim, routers
from .dump import DTYPES, load
from . import safetensors


def train_step(ckpt_path, windows, dtype="fp64", overrides=None, grads_from=None):
    """windows: int tensor (B, T+1). grads_from: optional dict "grad.<name>" -> tensor (a dump's)
    used instead of the twin's own gradients, to check the optimizer alone. Returns (tensors,
    metadata, stats) of the next checkpoint."""
    from .config import override
    tensors, meta, hp = load(ckpt_path)
    if overrides:
        hp = override(hp, overrides)
    if hp["grad_accum"] != 1:
        raise ValueError("train_step: grad_accum must be 1")
    dt = DTYPES[dtype]
    p = model.load_params(tensors, hp, dt)
    state = model.load_router_state(tensors, hp)
    inputs, targets = windows[:, :-1], windows[:, 1:]
    out = model.forward(p, state, hp, inputs, targets, train=True)
    out["loss"].backward()
    names = model.param_names(hp)
    params = {n: p[n].detach().clone() for n in names}
    if grads_from is not None:
        grads = {n: grads_from[f"grad.{n}"].to(dt).clone() for n in names}
    else:
        grads = {n: p[n].grad.detach().clone() for n in names}
    groups = {n: model.param_group(n) for n in names}
    opt_state = {k: v.to(dt).clone() for k, v in tensors.items() if k.startswith("opt.")}
    step_index = int(tensors["step"])
    stats = optim.step(params, grads, groups, opt_state, hp, step_index)
    new = dict(tensors)
    for n in names:
        new[n] = params[n].float()
    for k, v in opt_state.items():
        new[k] = v.float()
    for l, rec in out["routing"].items():
        st = routers.step_end(state[l], {"cut": rec.get("cut"), "counts": rec.get("counts")}, hp)
        for k in ("threshold", "ema", "bias", "counters"):
            new[f"router.{l}.{k}"] = st[k]
    new["step"] = torch.tensor(step_index + 1, dtype=torch.int64)
    meta = dict(meta, step=str(step_index + 1))
    stats["loss"] = out["loss"].item()
    return new, meta, stats
