"""CLIP scoring on a GPU: the model-only ceiling for a pair against the scorer end to end, per model.

    python bench/clip_gpu.py [--models ViT-B-32,ViT-L-14] [--pairs 16384] [--seconds 15]

Runs without Spark or Java (the device machine has neither): the scorer module itself, fp16 on CUDA.
For each model: (a) the model-only ceiling (one image + two 77-token texts per pair, inputs resident on
the GPU) at the best of several batch sizes, (b) the scorer end to end from 256 px JPEG thumbnails and
caption strings (decode on the GPU with nvJPEG, or Pillow threads with --decode pil) at that batch size;
ratio = (b) / (a), target >= 0.6. Needs torch, torchvision, open_clip_torch and Pillow (carry the wheels
that the machine lacks: see the README's performance section).
"""

from __future__ import annotations

import argparse
import os

import _clipbench as cb


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="ViT-B-32,ViT-L-14")
    ap.add_argument("--pairs", type=int, default=16384)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--batches", default="128,256,512,1024")
    ap.add_argument("--decode", default="auto", choices=["auto", "pil", "torch"])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 4)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a dry run of this script")
    ap.add_argument("--model-config", default=None, help="an open_clip JSON config (models not built in)")
    args = ap.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("clip_gpu: no CUDA device here; run it on the GPU machine (or --device cpu for a dry run)")
        return 2
    card = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    items = cb.pairs(args.pairs)
    ratios = []
    for name in args.models.split(","):
        spec = cb.clip.ScorerSpec(model=name, random_weights=True, device=args.device, image_decode=args.decode,
                                  decode_threads=args.threads, model_config=args.model_config)
        scorer = cb.clip.Scorer(spec)
        ceilings = {b: cb.model_only(scorer, b, args.seconds) for b in map(int, args.batches.split(","))}
        best = max(ceilings, key=ceilings.get)
        rate = cb.end_to_end(scorer, items, best)
        ratios.append(rate / ceilings[best])
        print(f"{name} {str(scorer.dtype).replace('torch.', '')} on {card}: model only "
              + ", ".join(f"b{b} {r:,.0f}" for b, r in ceilings.items())
              + f" pairs/s; best b{best} {ceilings[best]:,.0f}; scorer end to end (decode "
              + f"{'torch on ' + scorer.device.type if scorer.decode_on_device else 'pillow x' + str(args.threads)}) {rate:,.0f} pairs/s; "
              + f"ratio {rate / ceilings[best]:.2f}")
        del scorer
        if args.device == "cuda":
            torch.cuda.empty_cache()
    print(f"clip gpu end to end / model only, worst of {args.models} on {card}: ... ratio={min(ratios):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
