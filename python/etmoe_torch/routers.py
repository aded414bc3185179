"""routers.py: the routing rules of an MoE layer, as tables (the method: doc/et-method.md and
the contracts of src/router/router.h; doc/config.md for the options).

A router option is one entry in one of these tables:

  SCORES     gate function: logits r (N,E) -> the gate of every (token, expert) pair
  BALANCE    balance loss of token choice: (ctx) -> scalar loss, from the router's own top-k
             counts (before capacity dropping), held constant in the gradient
  SELECT_BIAS  selection bias of token choice: name -> whether the loss-free bias b_i is added to
             r for selection only
  RULES      selection rule: (ctx) -> (mask (N,E) bool, margin (N,E)); margin is each pair's
             distance to its decision boundary, which lets a comparison accept a disagreement
             with another implementation only where rounding can explain it
  STEP_UPDATES  once per optimizer step: (state, record, hp) -> new state

`rule_name` says which rule a layer uses now (router.h: tc top-k; ec and et expert choice before
their first threshold update, et during warm-up; et thresholds after).
Ties are broken towards the lower token / expert index, like etmoe.
"""
import math

import torch

INF = float("inf")

# ---- gate functions ----------------------------------------------------------------------------
def _anchored(r):
    """Per row, softmax over [0, r_1..r_E]: a zero-logit anchor standing for the shared experts
    (the authors' router_utils.py). Returns (routed shares (N,E), anchor share (N,))."""
    w = torch.softmax(torch.cat([torch.zeros_like(r[:, :1]), r], dim=1), dim=1)
    return w[:, 1:], w[:, 0]


# router_activation (src/router/router.h, doc/config.md); tc_score's sigmoid / softmax for tc
SCORES = {
    "sigmoid": torch.sigmoid,
    "softmax": lambda r: torch.softmax(r, dim=-1),
    "relu": torch.relu,
    "softmax_e": lambda r: _anchored(r)[0],
    "softmax_e_shared_out": lambda r: _anchored(r)[0],
    "softmax_k": lambda r: torch.softmax(r, dim=0),  # over the forward's tokens, per expert
}

# the shared experts' gate: (r, hp) -> (N,) per token or a number; absent: 1
SHARED_GATES = {
    "softmax_e": lambda r, hp: _anchored(r)[1],
    "softmax_e_shared_out": lambda r, hp: hp["expert_hidden"] / hp["ffn_hidden"],  # 1 / G
}


def gate_name(hp):
    return hp.get("router_activation", "sigmoid")  # configs older than the key: sigmoid


def score_kind(hp):
    if hp["router"] == "tc" and gate_name(hp) == "sigmoid":
        return hp["tc_score"]
    return gate_name(hp)


def shared_gate(r, hp):
    """The shared experts' gate, or None for 1."""
    f = SHARED_GATES.get(gate_name(hp))
    return None if f is None else f(r, hp)


# ---- balance losses (tc) --------------------------------------------------------------------
def _f(ctx):
    """f_i = count_i / (N k): the router's own top-k share of expert i (sums to 1)."""
    return ctx["counts"].to(ctx["r"].dtype) / (ctx["N"] * ctx["k"])


BALANCE = {
    "none": None,
    "lossfree": None,
    # the paper: alpha sum_i f_i P_i, f_i = count_i E / (N k), P_i the mean gate score
    "aux": lambda c: c["alpha"] * (c["E"] * _f(c) * c["scores"].mean(0)).sum(),
    # Switch Transformer: alpha E sum_i f_i P_i, f_i = count_i / (N k), P_i = mean softmax(r)_i
    "switch": lambda c: c["alpha"] * c["E"] * (_f(c) * torch.softmax(c["r"], -1).mean(0)).sum(),
    # the authors' aux_error: alpha sum_i (f_i - 1) P_i, aux's f_i and P_i
    "aux_error": lambda c: c["alpha"] * ((c["E"] * _f(c) - 1.0) * c["scores"].mean(0)).sum(),
}

SELECT_BIAS = {"none": False, "aux": False, "switch": False, "lossfree": True, "aux_error": False}


def z_loss(r, coef):
    """ST-MoE router z-loss: coef * mean_t logsumexp_i(r[t,i])^2."""
    return coef * (torch.logsumexp(r, dim=-1) ** 2).mean()


# ---- selection helpers ----------------------------------------------------------------------
def _sorted_desc(v, dim):
    """Stable descending sort (ties: lower index first)."""
    return torch.sort(v, dim=dim, descending=True, stable=True)


def topk_rows(sel, k):
    """Each row's k largest. margin: distance to the midpoint of the k-th and (k+1)-th."""
    N, E = sel.shape
    vals, idx = _sorted_desc(sel, 1)
    mask = torch.zeros(N, E, dtype=torch.bool, device=sel.device)
    mask.scatter_(1, idx[:, :k], True)
    if k >= E:
        return mask, torch.full_like(sel, INF)
    boundary = 0.5 * (vals[:, k - 1] + vals[:, k])
    return mask, (sel - boundary[:, None]).abs()


def select_columns(score, pool, lo, hi, eligible=None, threshold=None):
    """Per pool of `pool` consecutive rows and per column: candidates (eligible, or all rows);
    n_above = candidates with score >= threshold (0 without one); the column takes its top
    min(max(n_above, lo), hi) candidates (never more than there are). margin: distance to the
    threshold and, where lo or hi decided the count, to the midpoint of the last taken and the
    first left candidate."""
    N, E = score.shape
    P = N // pool
    s = score.reshape(P, pool, E)
    cand = torch.ones_like(s, dtype=torch.bool) if eligible is None else eligible.reshape(P, pool, E)
    keyed = torch.where(cand, s, torch.full_like(s, -INF))
    vals, idx = _sorted_desc(keyed, 1)
    n_cand = cand.sum(1)
    if threshold is None:
        n_above = torch.zeros(P, E, dtype=torch.long, device=score.device)
    else:
        n_above = (cand & (s >= threshold.reshape(1, 1, E))).sum(1)
    take = torch.minimum(torch.clamp(n_above, min=lo, max=hi), n_cand)
    rank = torch.empty_like(idx)
    rank.scatter_(1, idx, torch.arange(pool, device=score.device).reshape(1, pool, 1).expand(P, pool, E).contiguous())
    mask = cand & (rank < take.unsqueeze(1))
    margin = torch.full_like(s, INF)
    if threshold is not None:
        margin = (s - threshold.reshape(1, 1, E)).abs()
    clamped = take != n_above  # the count came from lo, hi or the candidates
    if threshold is None:
        clamped = torch.ones_like(clamped)
    last = vals.gather(1, (take - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    first_left = vals.gather(1, take.clamp(max=pool - 1).unsqueeze(1)).squeeze(1)
    boundary = torch.where(take < n_cand, 0.5 * (last + first_left), torch.full_like(last, -INF))
    dist = (s - boundary.unsqueeze(1)).abs()
    margin = torch.where(clamped.unsqueeze(1), torch.minimum(margin, dist), margin)
    margin = torch.where(cand, margin, torch.full_like(margin, INF))
    return mask.reshape(N, E), margin.reshape(N, E)


def kth_largest_columns(r, pool, k):
    """(N/pool, E): the k-th largest of each column within each pool."""
    N, E = r.shape
    vals, _ = _sorted_desc(r.reshape(N // pool, pool, E), 1)
    return vals[:, k - 1, :]


# ---- sizes (router.h) ---------------------------------------------------------------------------
def pool_rows(hp, N):
    if hp["router"] == "tc" or hp["pool_seqs"] <= 0:
        return N
    p = hp["pool_seqs"] * hp["seq_len"]
    return N if p >= N or N % p else p


def k_target(hp, pool):
    return min(max(pool * hp["top_k"] // hp["n_routed"], 1), pool)


def tc_capacity(hp, N):
    x = hp["capacity_factor"] * N * hp["top_k"] / hp["n_routed"]
    # the float option read back exactly: 1.1 is 1.10000002 as a float, so round with slack
    return min(max(math.ceil(x - 1e-6 * x), 1), N)


# ---- the rules ----------------------------------------------------------------------------------
def _rule_topk(c):
    hp = c["hp"]
    sel = c["r"] + c["bias"] if SELECT_BIAS[hp["tc_balance"]] else c["r"]
    mask, margin = topk_rows(sel, hp["top_k"])
    c["counts"] = mask.sum(0)  # the router's own choice feeds the balance losses
    if hp["capacity_factor"] > 0 and c["train"]:
        cap = tc_capacity(hp, c["N"])
        # the overflow goes by gate score: a row's softmax ignores a shift of all its logits, so
        # only the gates order softmax candidates across tokens; sigmoid gates are ordered like
        # the selection logits (plus the loss-free bias)
        rank = SCORES["softmax"](c["r"]) if hp["tc_score"] == "softmax" else sel
        mask, m2 = select_columns(rank, c["N"], cap, cap, eligible=mask)
        margin = torch.minimum(margin, m2)
    return mask, margin


def _rule_ec(c):
    kt = k_target(c["hp"], c["pool"])
    return select_columns(c["r"], c["pool"], kt, kt)


def _rule_threshold(c):
    hp, N = c["hp"], c["N"]
    C = hp["et_capacity"] if hp["router"] == "et" else 0.0
    # et_capacity_mode = always clamps at every C (0: exactly k_target), positive only at C > 0
    clamps = hp["router"] == "et" and (C > 0 or hp.get("et_capacity_mode", "positive") == "always")
    if clamps and c["train"]:
        kt = k_target(hp, c["pool"])
        lo = max(math.floor((1.0 - C) * kt), 0)
        hi = min(math.floor((1.0 + C) * kt), c["pool"])
        return select_columns(c["r"], c["pool"], lo, hi, threshold=c["threshold"])
    return select_columns(c["r"], N, 0, N, threshold=c["threshold"])


RULES = {"topk": _rule_topk, "ec": _rule_ec, "threshold": _rule_threshold}


def rule_name(hp, state, train=True):
    """The rule a forward uses now (router.h)."""
    if hp["router"] == "tc":
        return "topk"
    s, steps = int(state["counters"][0]), int(state["counters"][1])
    if s == 0:
        return "ec"  # no threshold estimate yet
    if not train:
        return "threshold"
    if hp["router"] == "ec":
        return "ec"
    return "ec" if steps < hp["et_warmup_steps"] else "threshold"


# ---- once per optimizer step ----------------------------------------------------------------
def _update_ema(state, rec, hp):
    """m = beta m + (1-beta) cut (cut: mean over pools and micro-batches), s += 1,
    c = m / (1 - beta^s)."""
    if rec.get("cut") is None:
        return state
    if int(state["counters"][1]) < hp.get("ema_start_steps", 0):
        return state  # the EMA starts after ema_start_steps optimizer steps: this step's cut-off is dropped
    beta = hp["et_beta"]
    ema = (beta * state["ema"].double() + (1 - beta) * rec["cut"].double().cpu()).float()
    s = int(state["counters"][0]) + 1
    bc = 1.0 - beta ** s
    thr = (ema.double() / bc).float() if bc > 0 else ema.clone()
    counters = state["counters"].clone()
    counters[0] = s
    return dict(state, ema=ema, threshold=thr, counters=counters)


def _update_lossfree(state, rec, hp):
    """b_i += u sign(mean count - count_i), counts of the router's own top-k choice."""
    if rec.get("counts") is None or not SELECT_BIAS.get(hp.get("tc_balance"), False):
        return state
    counts = rec["counts"].long()
    diff = counts.sum() - counts * hp["n_routed"]
    bias = (state["bias"] + hp["lossfree_rate"] * torch.sign(diff).float().cpu()).float()
    return dict(state, bias=bias)


STEP_UPDATES = [_update_ema, _update_lossfree]


def step_end(state, rec, hp):
    for fn in STEP_UPDATES:
        state = fn(state, rec, hp)
    counters = state["counters"].clone()
    counters[1] += 1
    return dict(state, counters=counters)


# ---- the cut-off of one micro-batch (router.h, et_cutoff_scope) ---------------------------------
def cutoff(r, pool, hp):
    """pool: mean over the pools of each column's k_target-th largest; microbatch: the
    floor(N k / E)-th largest of all N rows. step: all the step's rows; the twin's step holds one
    micro-batch (step.py: grad_accum 1), where step and microbatch are the same."""
    scope = hp.get("et_cutoff_scope", "pool")
    if scope == "pool":
        return kth_largest_columns(r, pool, k_target(hp, pool)).mean(0)
    N = r.shape[0]
    return kth_largest_columns(r, N, k_target(hp, N)).mean(0)


# ---- one layer's routing ------------------------------------------------------------------------
def route(r, state, hp, train=True):
    """Routes logits r (N,E) (no gradient needed) with the layer's state.
    Returns dict: mask (N,E) bool, margin (N,E), rule, counts (tc: own top-k counts),
    cut (ec/et in training: mean over pools of each column's k_target-th largest)."""
    N = r.shape[0]
    rule = rule_name(hp, state, train)
    c = {"hp": hp, "r": r, "N": N, "train": train, "pool": pool_rows(hp, N),
         "threshold": state["threshold"].to(r.device, r.dtype), "bias": state["bias"].to(r.device, r.dtype)}
    mask, margin = RULES[rule](c)
    out = {"mask": mask, "margin": margin, "rule": rule, "counts": c.get("counts")}
    if train and hp["router"] != "tc":
        out["cut"] = cutoff(r, c["pool"], hp)
    return out


def added_loss(r, scores, routing, hp):
    """The layer's balance and z losses (already scaled)."""
    loss = r.new_zeros(())
    if hp["router"] == "tc":
        fn = BALANCE[hp["tc_balance"]]
        if fn is not None:
            ctx = {"r": r, "scores": scores, "counts": routing["counts"], "N": r.shape[0],
                   "E": hp["n_routed"], "k": hp["top_k"], "alpha": hp["aux_alpha"]}
            loss = loss + fn(ctx)
    if hp["z_loss"] > 0:
        loss = loss + z_loss(r, hp["z_loss"])
    return loss
