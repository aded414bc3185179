"""check_torch.py: etmoe against its PyTorch twin (make check-torch; doc/validate-your-kernel.md).

For every router and option (CASES) it trains a tiny model for a few steps with etmoe, dumps one
training forward+backward (`etmoe dump`), computes the same step with the twin in fp64
(`python3 -m etmoe_torch dump --follow`) and compares the two (`etmoe compare`):
  - routing: every mask disagreement must lie within rounding of its decision boundary (the
    twin's --follow check: distance <= 4 x the layer's largest router-logit difference + 1e-6);
    the twin then adopts etmoe's masks, and compare allows exactly those disagreements;
  - every float tensor: |a - b| <= ATOL + RTOL max(|a|, |b|) element by element, and the norm
    error ||a - b|| / max(||a||, ||b||) <= NORM_TOL;
  - the routing rule of every layer (dump metadata) is the same.
Then one optimizer step (STEP_CASES) on data of one sequence (so the trainer's batch is known):
etmoe's checkpoint after step n and after step n+1 (--stop-at, --resume), the twin's step from
the first with etmoe's gradients of that batch (`etmoe dump`; the twin's own gradients are
checked above, and AdamW would amplify their rounding where a gradient is 1e-10 and nearly all
cancellation); each parameter's update, the optimizer state and the router state (ET cut-off
EMA and thresholds from the twin's own forward, loss-free biases, counters) compared.

Usage: python3 check_torch.py ETMOE [--keep DIR] [--only NAME]. Exit 0 pass, 1 fail.
"""
import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

from etmoe_torch import safetensors, shard  # noqa: E402
from etmoe_torch.__main__ import main as twin_main  # noqa: E402

RTOL, ATOL, NORM_TOL = 1e-3, 1e-6, 1e-4       # dump: fp32 C vs fp64 twin
DTYPE = os.environ.get("ETM_TWIN_DTYPE", "fp64")  # the twin's precision for the dumps
STEP_NORM_TOL = 1e-4                           # one step (etmoe's gradients): updates, optimizer state
STATE_ATOL = 1e-5                              # thresholds and EMAs (logit units)

TINY = ["vocab_size=256", "seq_len=32", "n_layer=3", "d_model=32", "n_head=4", "n_kv_head=2",
        "ffn_hidden=64", "n_routed=4", "expert_hidden=32", "batch_size=4", "warmup_steps=0",
        "val_data=", "train_data=%(data)s", "log_every=1", "seed=%(seed)s"]

# name: (configuration overrides, training steps before the dump[, what to do to the checkpoint])
CASES = {
    "dense": (["router=dense"], 2),
    "tc-sigmoid-aux": (["router=tc", "tc_balance=aux", "aux_alpha=0.01"], 2),
    "tc-sigmoid-switch-top2": (["router=tc", "tc_balance=switch", "aux_alpha=0.01", "top_k=2"], 2),
    "tc-softmax-aux-top2": (["router=tc", "tc_score=softmax", "tc_balance=aux", "aux_alpha=0.01", "top_k=2"], 2),
    "tc-softmax-switch": (["router=tc", "tc_score=softmax", "tc_balance=switch", "aux_alpha=0.01"], 2),
    "tc-sigmoid-aux-error-top2": (["router=tc", "tc_balance=aux_error", "aux_alpha=0.05", "top_k=2"], 2),
    "tc-none-zloss": (["router=tc", "tc_balance=none", "z_loss=0.01"], 2),
    "tc-lossfree-capacity": (["router=tc", "tc_balance=lossfree", "lossfree_rate=0.2", "capacity_factor=1"], 3),
    "tc-aux-capacity-noshared": (["router=tc", "tc_balance=aux", "capacity_factor=1.25", "n_shared=0"], 2),
    "tc-softmax-lossfree-zloss-capacity-top2": (["router=tc", "tc_score=softmax", "tc_balance=lossfree",
                                                 "lossfree_rate=0.2", "z_loss=0.01", "capacity_factor=1.1",
                                                 "top_k=2"], 3),
    "ec-batch": (["router=ec"], 2),
    "ec-pools-zloss": (["router=ec", "pool_seqs=1", "z_loss=0.01"], 2),
    "et-warmup": (["router=et", "et_warmup_steps=100"], 2),
    "et-threshold": (["router=et", "et_warmup_steps=1", "et_beta=0.5"], 3),
    "et-clamp-pools": (["router=et", "et_warmup_steps=1", "et_beta=0.5", "et_capacity=0.25", "pool_seqs=2"], 3),
    "et-top2-allmoe": (["router=et", "et_warmup_steps=1", "top_k=2", "dense_layers=0", "n_shared=0"], 3),
    # a router state that was never updated (s = 0): ec and et route by expert choice whatever
    # the warm-up, since there is no threshold estimate yet
    "et-no-estimate": (["router=et", "et_warmup_steps=1"], 3, "reset_router"),
    # thresholds of the first MoE layer set exactly to one token's fp32 logit per expert: those
    # pairs sit on the boundary, where fp32 and fp64 may decide differently; the check must
    # accept exactly such disagreements (at least one happens with this seed)
    # et_capacity_mode = always with et_capacity 0: exactly k_target tokens per expert and pool
    "et-capacity-always": (["router=et", "et_warmup_steps=1", "et_beta=0.5", "et_capacity=0",
                            "et_capacity_mode=always", "pool_seqs=2"], 3),
    # gate functions (router_activation, the authors' router_utils.py)
    "ec-relu": (["router=ec", "router_activation=relu"], 2),
    "tc-relu-aux": (["router=tc", "tc_balance=aux", "aux_alpha=0.01", "router_activation=relu"], 2),
    "et-softmax-e": (["router=et", "et_warmup_steps=1", "et_beta=0.5", "router_activation=softmax_e"], 3),
    "ec-softmax-e-shared-out": (["router=ec", "router_activation=softmax_e_shared_out", "z_loss=0.01"], 2),
    "et-softmax-k-pools": (["router=et", "et_warmup_steps=1", "et_beta=0.5", "router_activation=softmax_k",
                            "pool_seqs=2"], 3),
    "et-on-the-boundary": (["router=et", "et_warmup_steps=1", "n_routed=8"], 3, "threshold_at_logit"),
}


def reset_router(path):
    """Sets every router's thresholds, EMAs and EMA-update count to zero (steps seen stay)."""
    t, meta = safetensors.read(path)
    for k in t:
        if k.startswith("router.") and k.endswith((".threshold", ".ema")):
            t[k] = torch.zeros_like(t[k])
        elif k.startswith("router.") and k.endswith(".counters"):
            t[k][0] = 0
    safetensors.write(path, t, meta)


def threshold_at_logit(path, etmoe, log):
    """Thresholds of the first MoE layer := the logit etmoe computes for one token per expert
    (tokens 7, 7+13, ...: any tokens would do)."""
    ref = path + ".before.dump"
    rc, out = run([etmoe, "dump", path, "--data", os.path.join(os.path.dirname(os.path.dirname(path)),
                   "data_000.bin"), "--out", ref], log)
    if rc:
        raise Failure(f"etmoe dump failed:\n{out}")
    t, meta = safetensors.read(path)
    d, _ = safetensors.read(ref)
    l = min(int(k.split(".")[1]) for k in d if k.startswith("routing.") and k.endswith(".logits"))
    r = d[f"routing.{l}.logits"]
    for e in range(r.shape[1]):
        t[f"router.{l}.threshold"][e] = r[(7 + 13 * e) % r.shape[0], e]
    safetensors.write(path, t, meta)
    return 1


EDITS = {"reset_router": lambda path, etmoe, log: reset_router(path), "threshold_at_logit": threshold_at_logit}

# name: (configuration overrides, steps before the compared step[, sequences]). The data is exactly
# one batch of `sequences` (default 1) sequences (the twin does not reproduce the trainer's
# shuffle; with pools of one sequence the order changes no routing or cut-off).
STEP_CASES = {
    # the step in the linear decay (max_steps 3, last 2 steps), Muon with weight decay, clipping
    "step-et-muon": (["router=et", "et_warmup_steps=1", "et_beta=0.5", "matrix_optimizer=muon",
                      "max_steps=3", "decay_fraction=0.5", "weight_decay=0.01", "muon_warmup_steps=4",
                      "grad_clip=0.2"], 2),
    # a step before the cut-off EMA starts (ema_start_steps): its cut-offs are dropped, s stays 0;
    # Muon over each expert tensor as one stacked matrix
    "step-et-ema-start-stacked": (["router=et", "et_warmup_steps=1", "ema_start_steps=2",
                                   "muon_expert_layout=stacked", "max_steps=10"], 1),
    # the first step after it: the EMA's first update
    "step-ec-ema-started": (["router=ec", "ema_start_steps=1", "et_beta=0.5", "max_steps=10"], 1),
    # et_cutoff_scope = microbatch over two pools of one sequence (data of two sequences): the
    # EMA takes the micro-batch's cut-off, not the mean of the pools'
    "step-ec-cutoff-microbatch": (["router=ec", "pool_seqs=1", "et_cutoff_scope=microbatch", "et_beta=0.5",
                                   "max_steps=10"], 1, 2),
    # the same for et thresholds with scope step (one micro-batch per step: the step's tokens)
    "step-et-cutoff-step": (["router=et", "et_warmup_steps=1", "pool_seqs=1", "et_cutoff_scope=step",
                             "et_beta=0.5", "max_steps=10"], 2, 2),
    # issue 15: the routed experts' rate scaled, the matrices decayed on their own (the embedding,
    # head and router at weight_decay), under Muon and under AdamW matrices
    "step-et-expert-scale-matrix-decay": (["router=et", "et_warmup_steps=1", "lr_expert_scale=0.25",
                                           "weight_decay=0.02", "matrix_weight_decay=0.1", "max_steps=10"], 2),
    "step-tc-expert-scale-adamw": (["router=tc", "matrix_optimizer=adamw", "lr_matrix=0.003",
                                    "lr_expert_scale=3", "matrix_weight_decay=0.2", "max_steps=10"], 2),
    # the step in the learning-rate warm-up, AdamW for the matrices too
    "step-tc-lossfree-adamw": (["router=tc", "tc_balance=lossfree", "lossfree_rate=0.01",
                                "matrix_optimizer=adamw", "lr_matrix=0.003", "max_steps=10", "warmup_steps=5"], 2),
}


class Failure(Exception):
    pass


def run(cmd, log):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log.append("$ " + " ".join(cmd) + "\n" + p.stdout)
    return p.returncode, p.stdout


def twin(args, log):
    """python3 -m etmoe_torch ARGS, in this process (one torch start for the whole check)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        rc = twin_main(args)
    log.append("$ python3 -m etmoe_torch " + " ".join(args) + "\n" + buf.getvalue())
    return rc, buf.getvalue()


def check_norm_errors(table, limit):
    """Rows of `etmoe compare`'s table: the norm error column of every float tensor."""
    worst = (0.0, "")
    for line in table.splitlines():
        m = re.match(r"^(\S+)\s+(ok|BAD|bad|FAIL)\s+(\S+)\s+(\S+)\s+(\S+)\s", line)
        if m:
            err = float(m.group(5))
            if err > worst[0]:
                worst = (err, m.group(1))
            if err > limit:
                raise Failure(f"{m.group(1)}: norm error {err:g} > {limit:g}")
    return worst


def train(etmoe, d, data, overrides, steps, log, extra=()):
    cfg = [s % {"data": data, "seed": 7} for s in TINY] + list(overrides)
    if not any(o.startswith("max_steps=") for o in overrides):
        cfg.append(f"max_steps={steps}")
    rc, out = run([etmoe, "train", "demo"] + cfg + [f"out_dir={d}", "--quiet"] + list(extra), log)
    if rc:
        raise Failure(f"etmoe train failed:\n{out}")


def dump_case(etmoe, tmp, name, overrides, steps, data, log, edit=None):
    d = os.path.join(tmp, name)
    train(etmoe, d, data, overrides, steps, log)
    need_flip = 0
    if edit:
        need_flip = EDITS[edit](os.path.join(d, "latest.safetensors"), etmoe, log)
    ref, mine = os.path.join(d, "etmoe.dump"), os.path.join(d, "twin.dump")
    rc, out = run([etmoe, "dump", os.path.join(d, "latest.safetensors"), "--data", data, "--out", ref], log)
    if rc:
        raise Failure(f"etmoe dump failed:\n{out}")
    rc, out = twin(["dump", os.path.join(d, "latest.safetensors"), "--like", ref, "--out", mine, "--follow",
                    "--dtype", DTYPE], log)
    if rc:
        raise Failure(f"twin dump failed (a routing disagreement beyond rounding?):\n{out}")
    flips = int(re.search(r"routing: (\d+) disagreements within rounding", out).group(1))
    if need_flip and flips < need_flip:
        raise Failure(f"{flips} routing disagreements at the boundary, expected at least {need_flip}:"
                      " the acceptance of flips went untested")
    rc, table = run([etmoe, "compare", ref, mine, "--rtol", str(RTOL), "--atol", str(ATOL),
                     "--max-flips", str(flips)], log)
    if rc:
        raise Failure(f"etmoe compare failed:\n{table}")
    worst = check_norm_errors(table, NORM_TOL)
    _, ma = safetensors.read(ref)
    _, mb = safetensors.read(mine)
    rules = {k: v for k, v in ma.items() if k.startswith("routing.")}
    for k, v in rules.items():
        if mb.get(k) != v:
            raise Failure(f"{k}: etmoe routed by '{v}', the twin by '{mb.get(k)}'")
    desc = ", ".join(f"{k.split('.')[1]}:{v}" for k, v in sorted(rules.items())) or "no MoE layer"
    return f"flips {flips} (within rounding), worst norm err {worst[0]:.2g} ({worst[1]}), rules {desc}"


def rel_norm(a, b):
    n = max(a.norm().item(), b.norm().item())
    return (a - b).norm().item() / n if n > 0 else 0.0


def step_case(etmoe, tmp, name, overrides, steps, log, seqs=1):
    d = os.path.join(tmp, name)
    os.makedirs(d)
    data = os.path.join(d, "one_batch.bin")
    shard.random_shard(data, 32 * seqs + 1, 256, 11)  # exactly `seqs` windows of 33 tokens
    overrides = [f"batch_size={seqs}"] + list(overrides)
    train(etmoe, d, data, overrides, steps, log, ["--stop-at", str(steps)])
    before = os.path.join(d, "before.safetensors")
    shutil.copy(os.path.join(d, "latest.safetensors"), before)
    train(etmoe, d, data, overrides, steps, log, ["--resume", "--stop-at", str(steps + 1)])
    grads = os.path.join(d, "etmoe.dump")
    rc, out = run([etmoe, "dump", before, "--data", data, "--out", grads], log)
    if rc:
        raise Failure(f"etmoe dump failed:\n{out}")
    rc, out = twin(["step", before, "--shard", data, "--out", os.path.join(d, "twin.safetensors"),
                    "--grads", grads], log)
    if rc:
        raise Failure(f"twin step failed:\n{out}")
    prev, _ = safetensors.read(before)
    c, _ = safetensors.read(os.path.join(d, "latest.safetensors"))
    t, _ = safetensors.read(os.path.join(d, "twin.safetensors"))
    worst = (0.0, "")
    for k in sorted(t):
        if k.startswith("router.") or k == "step":
            continue
        if k.startswith("opt."):
            err = rel_norm(c[k].double(), t[k].double())
        else:  # a parameter: compare the update, not the parameter it is added to
            err = rel_norm(c[k].double() - prev[k].double(), t[k].double() - prev[k].double())
        worst = max(worst, (err, k))
        if err > STEP_NORM_TOL:
            raise Failure(f"{k}: norm error {err:g} of the step > {STEP_NORM_TOL:g}")
    if int(c["step"]) != int(t["step"]):
        raise Failure(f"step {int(c['step'])} vs {int(t['step'])}")
    moved = []
    for k in sorted(t):
        if not k.startswith("router."):
            continue
        if k.endswith(".counters") or k.endswith(".bias"):
            if not torch.equal(c[k], t[k]):
                raise Failure(f"{k}: etmoe {c[k].tolist()}, twin {t[k].tolist()}")
        else:
            diff = (c[k] - t[k]).abs().max().item()
            if diff > STATE_ATOL:
                raise Failure(f"{k}: etmoe {c[k].tolist()}, twin {t[k].tolist()} (max diff {diff:g})")
        if not torch.equal(c[k], prev[k]):
            moved.append(k.split(".")[-1])
    if not moved:
        raise Failure("the router state did not change in this step: nothing was tested")
    how = re.search(r"grad norm .*", out).group(0)
    return (f"worst norm err {worst[0]:.2g} ({worst[1]}); router state updated and equal: "
            f"{', '.join(sorted(set(moved)))}; {how}")


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    etmoe = os.path.abspath(argv[1])
    keep = argv[argv.index("--keep") + 1] if "--keep" in argv else None
    only = argv[argv.index("--only") + 1] if "--only" in argv else None
    tmp = keep or tempfile.mkdtemp(prefix="etmoe-torch-")
    os.makedirs(tmp, exist_ok=True)
    data = os.path.join(tmp, "data_000.bin")
    shard.random_shard(data, 12 * 32 + 1, 256, 5)
    print(f"etmoe {etmoe} against the PyTorch twin (torch {torch.__version__}); dump tolerances: "
          f"|a-b| <= {ATOL:g} + {RTOL:g} max(|a|,|b|), norm error <= {NORM_TOL:g}; "
          f"step: norm error of updates and optimizer state <= {STEP_NORM_TOL:g}, "
          f"thresholds/EMAs within {STATE_ATOL:g}, biases and counters equal")
    failed = 0
    jobs = [(n, lambda n=n, c=c: dump_case(etmoe, tmp, n, c[0], c[1], data, log, *c[2:])) for n, c in CASES.items()]
    jobs += [(n, lambda n=n, c=c: step_case(etmoe, tmp, n, c[0], c[1], log, *c[2:])) for n, c in STEP_CASES.items()]
    for name, job in jobs:
        if only and only != name:
            continue
        log = []
        try:
            print(f"PASS {name}: {job()}", flush=True)
        except Failure as e:
            failed += 1
            print(f"FAIL {name}: {e}\n--- log ---\n" + "\n".join(log), flush=True)
    if not keep:
        shutil.rmtree(tmp, ignore_errors=True)
    print("check-torch: " + ("PASS" if not failed else f"{failed} FAILED"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
