"""grouped_gemm.py: the worked example of doc/validate-your-kernel.md. A "new kernel" (here a
grouped expert GEMM written with torch.bmm: the routed (token, expert) pairs sorted by expert,
padded to the largest group, every expert's up and down projection in one batched matmul each)
replaces the twin's expert loop; the twin then computes etmoe's training step with it and writes
a dump for `etmoe compare`.

    python3 grouped_gemm.py CHECKPOINT REFERENCE_DUMP OUT_DUMP [--device cuda] [--dtype fp32]

REFERENCE_DUMP is `etmoe dump CHECKPOINT --data ... --out REFERENCE_DUMP`; its inputs and
targets are reused. Then: etmoe compare REFERENCE_DUMP OUT_DUMP.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from etmoe_torch import dump, safetensors  # noqa: E402


BUG = False


def grouped_experts(x, up, down, mask, gates):
    """Same contract as etmoe_torch.model.experts_loop: (N,D), (E,Hx,D), (E,D,Hx), (N,E) bool,
    (N,E) -> (N,D) = sum_e mask[t,e] gates[t,e] down_e relu(up_e x_t)^2."""
    E = up.shape[0]
    tok, exp = mask.nonzero(as_tuple=True)        # pairs, expert-major after the sort below
    order = torch.argsort(exp * x.shape[0] + tok)
    tok, exp = tok[order], exp[order]
    counts = torch.bincount(exp, minlength=E)
    cap = int(counts.max()) if tok.numel() else 0
    if cap == 0:
        return torch.zeros_like(x)
    start = torch.cumsum(counts, 0) - counts
    slot = torch.arange(tok.numel(), device=x.device) - start[exp]
    xg = x.new_zeros(E, cap, x.shape[1])
    xg = xg.index_put((exp, slot), x[tok])       # (E, cap, D), zero padding
    h = F.relu(torch.bmm(xg, up.transpose(1, 2))).square()   # (E, cap, Hx)
    yg = torch.bmm(h, down.transpose(1, 2))                   # (E, cap, D)
    out = yg[exp, slot] * gates[tok, exp].unsqueeze(1)
    if BUG:  # a deliberate bug for the guide: the last expert's pairs are dropped
        out = out * (exp != E - 1).unsqueeze(1)
    return torch.zeros_like(x).index_add(0, tok, out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("reference")
    ap.add_argument("out")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=sorted(dump.DTYPES), default="fp32")
    ap.add_argument("--bug", action="store_true", help="drop the last expert's pairs (to see a failing report)")
    a = ap.parse_args()
    global BUG
    BUG = a.bug
    ref, _ = safetensors.read(a.reference)
    # the reference's masks: routing is not the piece under test here, so take etmoe's decisions
    # and compare everything the kernel feeds (see the guide on flips otherwise)
    res, meta, _ = dump.compute(a.checkpoint, ref["inputs"], ref["targets"], a.dtype,
                                follow=dump.masks_of(ref), hooks={"experts": grouped_experts},
                                device=a.device)
    meta["backend"] = f"torch-{a.dtype}-{a.device}+grouped_gemm"
    dump.write(a.out, res, meta)
    print(f"wrote {a.out}: loss {res['loss'].item():.9g} on {a.device}, {a.dtype}")


if __name__ == "__main__":
    main()
