"""CLIP scoring on a GPU: the model-only ceiling for a pair against the scorer end to end, per model.

    python bench/clip_gpu.py [--models ViT-B-32,ViT-L-14] [--pairs 16384] [--seconds 15]

Runs without Spark or Java (the device machine has neither): the scorer module itself, fp16 on CUDA.
For each model: (a) the model-only ceiling (one image + two 77-token texts per pair, inputs resident on
the GPU) at the best of several batch sizes, (b) the scorer end to end from 256 px JPEG thumbnails and
caption strings at that batch size, for each --decode path (cpu: torchvision decode and uint8 resize on
CPU threads, normalized on the GPU, the default on CUDA; torch: nvJPEG and resize on the GPU; pil:
Pillow threads), (c) the CPU side alone (decode + tokenize, no model), what (b) cannot exceed;
ratio = the best path's (b) / (a), target >= 0.6. First, with --check N, N pairs are scored on the
GPU (each decode path, one batch and pipelined) and on the CPU in fp32 with the same weights: the
largest score difference is printed, and over --tolerance the run fails. Needs torch, torchvision,
open_clip_torch and Pillow (carry the wheels that the machine lacks: see bench/README.md, CLIP).
"""

from __future__ import annotations

import argparse

import _clipbench as cb


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="ViT-B-32,ViT-L-14")
    ap.add_argument("--pairs", type=int, default=16384)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--batches", default="128,256,512,1024")
    ap.add_argument("--decode", default="cpu,torch", help="decode paths to time, comma-separated (cpu, torch, pil)")
    ap.add_argument("--threads", type=int, default=0, help="image threads (0: the scorer's auto)")
    ap.add_argument("--text-workers", type=int, default=-1, help="tokenizer processes (-1: the scorer's auto)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a dry run of this script")
    ap.add_argument("--model-config", default=None, help="an open_clip JSON config (models not built in)")
    ap.add_argument("--check", type=int, default=128, help="pairs scored on GPU and CPU to compare (0: skip)")
    ap.add_argument("--tolerance", type=float, default=0.005,
                    help="largest GPU fp16 vs CPU fp32 score difference allowed")
    args = ap.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("clip_gpu: no CUDA device here; run it on the GPU machine (or --device cpu for a dry run)")
        return 2
    card = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    items = cb.pairs(args.pairs)
    ratios = []
    if args.check:
        # the first model, same random weights (seeded) in fp32 on the CPU and fp16 on the GPU
        name = args.models.split(",")[0]
        base = dict(model=name, random_weights=True, decode_threads=args.threads, model_config=args.model_config)
        few = items[:args.check] + [cb.clip.Pair(items[0].image[:200], items[0].caption, None)]  # a broken JPEG
        base["text_workers"] = 0      # the reference: in-process tokenizer, Pillow, fp32
        ref = cb.clip.Scorer(cb.clip.ScorerSpec(device="cpu", image_decode="pil", **base))
        cpu = ref.score(few)
        ref.close()
        worst = {}
        for decode in ("cpu", "torch", "pil"):
            base["text_workers"] = args.text_workers
            other = cb.clip.Scorer(cb.clip.ScorerSpec(device=args.device, image_decode=decode, **base))
            worst[decode] = cb.agreement(cpu, other.score(few))
            # the pipelined path (next batch prepared on a thread while the model runs) as well
            piped = [x for b in other.score_batches(cb.batches(few, 16)) for x in b]
            worst[decode + " pipelined"] = cb.agreement(cpu, piped)
            other.close()
        print(f"check {name}: {len(few)} pairs, {args.device} vs CPU fp32 largest score difference: "
              + ", ".join(f"decode {d} {w:.5f}" for d, w in worst.items())
              + f"; caption scores span {min(s.score_caption for s in cpu[:-1]):.4f}.."
              + f"{max(s.score_caption for s in cpu[:-1]):.4f}")
        if max(worst.values()) > args.tolerance:
            print(f"clip_gpu: GPU scores differ from CPU scores by more than {args.tolerance}")
            return 1
    for name in args.models.split(","):
        rates = {}
        for k, decode in enumerate(args.decode.split(",")):
            spec = cb.clip.ScorerSpec(model=name, random_weights=True, device=args.device, image_decode=decode,
                                      decode_threads=args.threads, text_workers=args.text_workers,
                                      model_config=args.model_config)
            scorer = cb.clip.Scorer(spec)
            if k == 0:
                ceilings = {b: cb.model_only(scorer, b, args.seconds) for b in map(int, args.batches.split(","))}
                best = max(ceilings, key=ceilings.get)
            rate = cb.end_to_end(scorer, items, best)
            cpu_side = cb.prepare_only(scorer, items[:best * 8], best)
            rates[decode] = rate
            print(f"{name} {str(scorer.dtype).replace('torch.', '')} on {card}: model only "
                  + ", ".join(f"b{b} {r:,.0f}" for b, r in ceilings.items())
                  + f" pairs/s; best b{best} {ceilings[best]:,.0f}; scorer end to end (decode {decode} on "
                  + f"{scorer.decode_threads} threads, tokenizer processes {scorer.text_workers}) {rate:,.0f} "
                  + f"pairs/s; CPU side alone {cpu_side:,.0f} pairs/s; ratio {rate / ceilings[best]:.2f}")
            scorer.close()
            del scorer
            if args.device == "cuda":
                torch.cuda.empty_cache()
        ratios.append(max(rates.values()) / ceilings[best])
    print(f"clip gpu end to end / model only, worst of {args.models} on {card}: ... ratio={min(ratios):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
