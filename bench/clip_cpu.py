"""CLIP scoring throughput on this machine's CPU (ViT-B-32, fp32, from 256 px JPEG thumbnails).

    .venv/bin/python bench/clip_cpu.py [--pairs 256] [--batch 32] [--threads 2]

Prints the model-only ceiling and the scorer end to end (see bench/_clipbench.py), same model, same
threads, in the same run; ratio = scorer / model-only.
"""

from __future__ import annotations

import argparse
import os

import _clipbench as cb


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--model", default="ViT-B-32")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    scorer = cb.clip.Scorer(cb.clip.ScorerSpec(model=args.model, random_weights=True, device="cpu",
                                               batch_size=args.batch, decode_threads=args.threads))
    items = cb.pairs(args.pairs)
    ceiling = cb.model_only(scorer, args.batch, seconds=20)
    rate = cb.end_to_end(scorer, items, args.batch)
    print(f"device: cpu, {args.threads} torch threads, {args.model} fp32, random weights, batch {args.batch}")
    print(f"model only (preprocessed images, tokenized texts): {ceiling:.2f} pairs/s")
    print(f"scorer end to end ({args.pairs} JPEG thumbnails + 2 captions each): {rate:.2f} pairs/s")
    print(f"clip cpu {args.model} fp32: {rate:.2f} pairs/s end to end vs {ceiling:.2f} model only ... "
          f"ratio={rate / ceiling:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
