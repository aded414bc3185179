"""model.py: etmoe's model in PyTorch (doc/et-method.md section 3, src/model/model.h's contract):
a nanochat-style decoder with RMSNorm without weights, RoPE on the halves of each head, QK-norm
after RoPE, causal grouped-query attention, ReLU^2 MLPs, no biases, soft-capped logits, and MoE
layers (routers.py) after the first `dense_layers`.

Parameters are a dict name -> tensor with the checkpoint's names and shapes (weights (out, in),
applied as x W^T). The forward is plain autograd: the backward pass is PyTorch's, which is the
point of a second implementation. Any piece can be swapped for your own kernel through `hooks`
(doc/validate-your-kernel.md): hooks["experts"] computes the routed experts' combined output,
hooks["route"] the routing decision.
"""
import math

import torch
import torch.nn.functional as F

from . import routers
from .config import is_moe_layer


def rms_norm(x, eps):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps)


def rope_tables(hp, T, dtype, device="cpu"):
    hd = hp["d_model"] // hp["n_head"]
    half = hd // 2
    i = torch.arange(half, dtype=torch.float64)
    inv_freq = hp["rope_base"] ** (-2.0 * i / hd)
    angle = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq[None, :]
    # etmoe keeps fp32 tables; the twin uses them at its own precision
    return torch.cos(angle).to(device, dtype), torch.sin(angle).to(device, dtype)


def rope(x, cos, sin):
    """x (B, T, heads, hd): y1 = x1 cos + x2 sin, y2 = -x1 sin + x2 cos on the two halves."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.cat([x1 * c + x2 * s, x2 * c - x1 * s], dim=-1)


def attention(x, p, l, hp, cos, sin):
    B, T, D = x.shape
    H, Hkv = hp["n_head"], hp["n_kv_head"]
    hd = D // H
    eps = hp["norm_eps"]
    q = (x @ p[f"layers.{l}.attn.wq"].T).view(B, T, H, hd)
    k = (x @ p[f"layers.{l}.attn.wk"].T).view(B, T, Hkv, hd)
    v = (x @ p[f"layers.{l}.attn.wv"].T).view(B, T, Hkv, hd)
    q = rms_norm(rope(q, cos, sin), eps)
    k = rms_norm(rope(k, cos, sin), eps)
    group = H // Hkv  # query head h reads key/value head h // group
    k = k.repeat_interleave(group, dim=2)
    v = v.repeat_interleave(group, dim=2)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
    att = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
    causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
    att = att.masked_fill(~causal, float("-inf")).softmax(-1)
    y = (att @ v).transpose(1, 2).reshape(B, T, H * hd)
    return y @ p[f"layers.{l}.attn.wo"].T


def relu2_mlp(x, up, down):
    return F.relu(x @ up.T).square() @ down.T


def experts_loop(x, up, down, mask, gates):
    """The reference combination: sum_e mask[t,e] gates[t,e] expert_e(x_t), one expert at a time
    over the tokens routed to it. Hook signature: (x (N,D), up (E,Hx,D), down (E,D,Hx),
    mask (N,E) bool, gates (N,E)) -> (N,D)."""
    y = torch.zeros_like(x)
    for e in range(up.shape[0]):
        idx = mask[:, e].nonzero().squeeze(1)
        if idx.numel():
            out = relu2_mlp(x[idx], up[e], down[e]) * gates[idx, e:e + 1]
            y = y.index_add(0, idx, out)
    return y


DEFAULT_HOOKS = {"experts": experts_loop, "route": routers.route}


def moe(x, p, l, hp, state, train, hooks, follow=None):
    """x (N, D) normalised. Returns (y, added loss, routing record)."""
    r = x @ p[f"layers.{l}.moe.router"].T
    scores = routers.SCORES[routers.score_kind(hp)](r)
    rec = hooks["route"](r.detach(), state, hp, train)
    if follow is not None:  # adopt another implementation's mask (see dump.py)
        rec = dict(rec, own_mask=rec["mask"], mask=follow)
        if hp["router"] == "tc" and not (hp["capacity_factor"] > 0 and train):
            rec["counts"] = follow.sum(0)
    y = hooks["experts"](x, p[f"layers.{l}.moe.up"], p[f"layers.{l}.moe.down"], rec["mask"], scores)
    sg = routers.shared_gate(r, hp) if hp["n_shared"] > 0 else None
    for s in range(hp["n_shared"]):
        ys = relu2_mlp(x, p[f"layers.{l}.moe.shared_up"][s], p[f"layers.{l}.moe.shared_down"][s])
        if sg is not None:  # softmax_e: the anchor's share per token; softmax_e_shared_out: 1 / G
            ys = ys * (sg[:, None] if torch.is_tensor(sg) else sg)
        y = y + ys
    rec.update(logits=r, scores=scores)
    return y, routers.added_loss(r, scores, rec, hp), rec


def forward(p, router_state, hp, inputs, targets, train=True, hooks=None, follow=None):
    """One forward of B sequences (inputs, targets (B, T) int). Returns a dict with loss (scalar:
    mean CE over targets >= 0 plus the MoE losses), logits (B,T,V soft-capped), losses (B,T)
    and routing {layer: record}."""
    hooks = dict(DEFAULT_HOOKS, **(hooks or {}))
    B, T = inputs.shape
    dtype = p["wte"].dtype
    eps = hp["norm_eps"]
    dev = p["wte"].device
    inputs, targets = inputs.to(dev), targets.to(dev)
    cos, sin = rope_tables(hp, T, dtype, dev)
    x = rms_norm(p["wte"][inputs.long()], eps)
    routing, added = {}, 0
    for l in range(hp["n_layer"]):
        x = x + attention(rms_norm(x, eps), p, l, hp, cos, sin)
        h = rms_norm(x, eps)
        if is_moe_layer(hp, l):
            y, extra, rec = moe(h.reshape(B * T, -1), p, l, hp, router_state[l], train, hooks,
                                None if follow is None else follow.get(l))
            x = x + y.reshape(B, T, -1)
            added = added + extra
            routing[l] = rec
        else:
            x = x + relu2_mlp(h, p[f"layers.{l}.mlp.up"], p[f"layers.{l}.mlp.down"])
    z = rms_norm(x, eps) @ p["lm_head"].T
    cap = hp["logit_cap"]
    logits = cap * torch.tanh(z / cap)
    tg = targets.long()
    valid = tg >= 0
    losses = F.cross_entropy(logits.reshape(B * T, -1), tg.clamp(min=0).reshape(-1),
                             reduction="none").reshape(B, T) * valid
    loss = losses.sum() / max(int(valid.sum()), 1) + added
    return {"loss": loss, "logits": logits, "losses": losses, "routing": routing}


# ---- parameters and router state from a checkpoint ------------------------------------------
def param_names(hp):
    """The model's parameter names in table order (src/model/model.h)."""
    names = ["wte"]
    for l in range(hp["n_layer"]):
        names += [f"layers.{l}.attn.{w}" for w in ("wq", "wk", "wv", "wo")]
        if is_moe_layer(hp, l):
            names += [f"layers.{l}.moe.router", f"layers.{l}.moe.up", f"layers.{l}.moe.down"]
            if hp["n_shared"] > 0:
                names += [f"layers.{l}.moe.shared_up", f"layers.{l}.moe.shared_down"]
        else:
            names += [f"layers.{l}.mlp.up", f"layers.{l}.mlp.down"]
    return names + ["lm_head"]


def param_group(name):
    if name == "wte":
        return "embed"
    if name == "lm_head":
        return "head"
    if name.endswith(".moe.router"):
        return "router"
    return "matrix"


def load_params(tensors, hp, dtype):
    """Leaf tensors requiring grad, in dtype, from a checkpoint's tensors."""
    return {n: tensors[n].to(dtype).clone().requires_grad_(True) for n in param_names(hp)}


def load_router_state(tensors, hp):
    state = {}
    for l in range(hp["n_layer"]):
        if is_moe_layer(hp, l):
            state[l] = {k: tensors[f"router.{l}.{k}"].clone() for k in ("threshold", "ema", "bias", "counters")}
    return state
