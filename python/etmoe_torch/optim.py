"""optim.py: etmoe's optimizer step (the contract at the top of src/optim/optim.h; doc/config.md
[optim]): global-norm clipping, AdamW for the embedding, head and routers (and the matrices with
matrix_optimizer = adamw), Muon with Nesterov momentum and Newton-Schulz orthogonalisation per
matrix (per expert for stacked (E, rows, cols) tensors), the learning-rate schedule and the Muon
momentum warm-up; lr_expert_scale on the routed experts' matrices and matrix_weight_decay on the
matrices (issue 15)."""
import math

import torch

NS_COEFFS = (3.4445, -4.7750, 2.0315)


def lr_multiplier(hp, step):
    mult = 1.0
    if hp["warmup_steps"] > 0:
        mult = min(mult, (step + 1) / hp["warmup_steps"])
    W = math.floor(hp["decay_fraction"] * hp["max_steps"] + 0.5)  # C's round(): halves away from 0
    if W > 0 and step > hp["max_steps"] - W:
        p = (hp["max_steps"] - step) / W
        mult = min(mult, p + (1 - p) * hp["final_lr_frac"])
    return mult


def muon_momentum(hp, step):
    a, b, w = hp["muon_momentum_start"], hp["muon_momentum_end"], hp["muon_warmup_steps"]
    return b if w <= 0 else a + min(step / w, 1.0) * (b - a)


def newton_schulz(G, steps):
    """About U V^T for G = U S V^T (one matrix), the quintic iteration."""
    a, b, c = NS_COEFFS
    X = G / (torch.linalg.norm(G) + 1e-7)
    tall = X.shape[0] > X.shape[1]
    if tall:
        X = X.T
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if tall else X


GROUP_LR = {"embed": "lr_embed", "head": "lr_head", "router": "lr_router", "matrix": "lr_matrix"}


def routed_expert(name):
    """The routed experts' up and down projections, layers.<l>.moe.up / .down (param.h's
    routed_expert): lr_expert_scale applies to them, not to shared_up / shared_down."""
    parts = name.split(".")
    return len(parts) == 4 and parts[0] == "layers" and parts[2] == "moe" and parts[3] in ("up", "down")


def decay(hp, group):
    """matrix_weight_decay for the matrices ("inherit", or a checkpoint without the key: weight_decay);
    weight_decay for embedding, head and router."""
    mwd = hp.get("matrix_weight_decay", "inherit")
    return hp["weight_decay"] if group != "matrix" or mwd == "inherit" else mwd


def step(params, grads, groups, opt_state, hp, step_index):
    """One step in place on params (dict of tensors); grads are clipped in place. opt_state:
    dict "opt.<name>.m|v|momentum" -> tensor, updated in place. Returns stats."""
    names = list(params)
    norm = torch.sqrt(sum((grads[n].double() ** 2).sum() for n in names)).item()
    scale = 1.0
    if hp["grad_clip"] > 0 and norm > hp["grad_clip"]:
        scale = hp["grad_clip"] / norm
        for n in names:
            grads[n].mul_(scale)
    mult = lr_multiplier(hp, step_index)
    mu = muon_momentum(hp, step_index)
    t = step_index + 1
    for n in names:
        p, g, grp = params[n], grads[n], groups[n]
        wd = decay(hp, grp)
        lr = hp[GROUP_LR[grp]] * (hp.get("lr_expert_scale", 1.0) if grp == "matrix" and routed_expert(n) else 1.0)
        lr *= mult
        if grp == "matrix" and hp["matrix_optimizer"] == "muon":
            m = opt_state[f"opt.{n}.momentum"]
            m.mul_(mu).add_((1 - mu) * g)
            u = (1 - mu) * g + mu * m
            if u.dim() == 3 and hp.get("muon_expert_layout", "per_expert") == "stacked":
                mats = u.reshape(1, -1, u.shape[-1])  # the experts as one (E rows, cols) matrix
            else:
                mats = u.reshape(-1, *u.shape[-2:])  # one matrix per expert
            rows, cols = mats.shape[-2:]
            upd = torch.stack([newton_schulz(M, hp["ns_steps"]) for M in mats]).reshape(u.shape)
            p.mul_(1 - lr * wd).sub_(lr * max(1.0, rows / cols) ** 0.5 * upd)
        else:
            b1, b2, eps = hp["adam_beta1"], hp["adam_beta2"], hp["adam_eps"]
            m, v = opt_state[f"opt.{n}.m"], opt_state[f"opt.{n}.v"]
            m.mul_(b1).add_((1 - b1) * g)
            v.mul_(b2).add_((1 - b2) * g * g)
            upd = (m / (1 - b1 ** t)) / (torch.sqrt(v / (1 - b2 ** t)) + eps) + wd * p
            p.sub_(lr * upd)
    return {"grad_norm": norm, "clip_scale": scale, "lr_mult": mult, "muon_momentum": mu}
