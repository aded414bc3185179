"""python3 -m etmoe_torch: the twin's command line.

  dump CKPT --like REF --out OUT [--dtype fp64|fp32] [--follow] [--device cpu|cuda]
      one training forward+backward of CKPT on the inputs and targets of dump REF, written as a
      dump etmoe compare reads. --follow: every layer computes from REF's routing masks, so that
      rounding in one layer's routing cannot spread to the next; the twin's own decision on its
      own logits is still what it writes as the mask, and every disagreement with REF must lie
      within rounding of its decision boundary. Prints the disagreements; exit 1 when one is
      not explained by rounding.
  step CKPT --shard FILE --out CKPT2 [--dtype fp64|fp32] [--grads DUMP]
      one optimizer step (forward, backward, clipping, AdamW/Muon, router state update) on the
      shard's windows as one batch; writes the parameters, optimizer and router state and step.
      --grads: the optimizer uses DUMP's gradients (etmoe's, of the same batch) instead of the
      twin's, so that the optimizer is checked alone.
  strip IN OUT      copies a checkpoint without its rng and loader.pos (the twin's step does not
                    reproduce the trainer's data order), for etmoe compare.
  shard OUT --tokens N --vocab V [--seed S]   a token shard of uniform random tokens.
"""
import argparse
import sys

import torch

from . import dump, safetensors, shard, step


def cmd_dump(a):
    ref, _ = safetensors.read(a.like)
    inputs, targets = ref["inputs"], ref["targets"]
    follow = dump.masks_of(ref) if a.follow else None
    res, meta, margins = dump.compute(a.ckpt, inputs, targets, a.dtype, follow=follow, device=a.device)
    if a.follow:
        ok, bad = dump.flips(ref, res, margins)
        for l, t, e, m, tol in ok:
            print(f"layer {l} token {t} expert {e}: disagreement at distance {m:.3g} from the boundary"
                  f" (rounding allows {tol:.3g}): accepted")
        for l, t, e, m, tol in bad:
            print(f"layer {l} token {t} expert {e}: disagreement at distance {m:.3g} from the boundary,"
                  f" beyond rounding ({tol:.3g})")
        print(f"routing: {len(ok)} disagreements within rounding, {len(bad)} beyond")
        meta["flips_accepted"] = str(len(ok))
        if bad:
            dump.write(a.out, res, meta)
            return 1
    dump.write(a.out, res, meta)
    print(f"wrote {a.out}: loss {res['loss'].item():.9g} ({a.dtype})")
    return 0


def cmd_step(a):
    tensors, _, hp = dump.load(a.ckpt)
    w = shard.windows(shard.read(a.shard), hp["seq_len"])
    grads = safetensors.read(a.grads)[0] if a.grads else None
    new, meta, stats = step.train_step(a.ckpt, w, a.dtype, grads_from=grads)
    for k in ("rng", "loader.pos"):
        new.pop(k, None)
    safetensors.write(a.out, new, meta)
    print(f"wrote {a.out}: step {meta['step']}, loss {stats['loss']:.9g}, grad norm {stats['grad_norm']:.6g}"
          f" (clipped by {stats['clip_scale']:.4g}), lr multiplier {stats['lr_mult']:.4g},"
          f" Muon momentum {stats['muon_momentum']:.4g}")
    return 0


def cmd_strip(a):
    t, meta = safetensors.read(a.src)
    for k in ("rng", "loader.pos"):
        t.pop(k, None)
    safetensors.write(a.dst, t, meta)
    return 0


def cmd_shard(a):
    shard.random_shard(a.out, a.tokens, a.vocab, a.seed)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m etmoe_torch", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump")
    d.add_argument("ckpt")
    d.add_argument("--like", required=True)
    d.add_argument("--out", required=True)
    d.add_argument("--dtype", choices=sorted(dump.DTYPES), default="fp64")
    d.add_argument("--follow", action="store_true")
    d.add_argument("--device", default="cpu")
    s = sub.add_parser("step")
    s.add_argument("ckpt")
    s.add_argument("--shard", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--dtype", choices=sorted(dump.DTYPES), default="fp64")
    s.add_argument("--grads", help="a dump whose gradients the optimizer uses instead of the twin's")
    st = sub.add_parser("strip")
    st.add_argument("src")
    st.add_argument("dst")
    sh = sub.add_parser("shard")
    sh.add_argument("out")
    sh.add_argument("--tokens", type=int, required=True)
    sh.add_argument("--vocab", type=int, required=True)
    sh.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    try:
        return {"dump": cmd_dump, "step": cmd_step, "strip": cmd_strip, "shard": cmd_shard}[a.cmd](a)
    except (OSError, safetensors.FormatError, ValueError, KeyError) as e:
        print(f"etmoe_torch {a.cmd}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
