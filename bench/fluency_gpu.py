"""Masked-LM fluency on a GPU: the scorer end to end against the model-only ceiling, tokens scored per second.

    python bench/fluency_gpu.py [--layers 12] [--width 768] [--vocab 31090] [--tail 60] [--rounds 2]

Runs without Spark or Java (the device machine has neither): the scorer module itself, fp16 on CUDA.
Texts: scifig300's 600 captions and recaptions (their real lengths) and --tail longer ones, log-uniform
from ~130 to ~510 word pieces (the long captions of the real release), tokenized by a WordPiece
vocabulary trained on scifig300; a BERT of random weights, SciBERT's shape by default (12 x 768, a
31,090-word embedding and LM head). No hub: SciBERT's own weights cannot be had, and throughput does not
depend on them.

- model only: every masked copy built beforehand as tensors on the GPU, in the scorer's own passes;
  timed: encoder, LM head at the masked position, log-softmax, the true token's log p (bench/_fluencybench.py).
- end to end: fluency.Scorer.score_texts on the same texts (tokenizing, windows, the plan of copies, the
  gathers on the GPU, the model, the sums).
- CPU side alone: Scorer.plan (what the launching process does before the model), which end to end
  cannot exceed.

First, with --check N, N texts are scored on the GPU (fp16) and on the CPU (fp32) with the same weights:
the largest difference of mean log p per token is printed, and over --tolerance the run fails. Both sides
are warmed, then timed alternately --rounds times; ratio = best end to end / best model only, target >= 0.6.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from _fluencybench import SCIFIG, checkpoint, long_tail, model_only_batches, run_model_only, texts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=31090)
    ap.add_argument("--tail", type=int, default=60, help="long texts added to scifig300's 600")
    ap.add_argument("--batch-tokens", type=int, default=0, help="padded tokens per pass (0: fluency.batch_tokens)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a dry run of this script")
    ap.add_argument("--check", type=int, default=24, help="texts scored on GPU and CPU to compare (0: skip)")
    ap.add_argument("--tolerance", type=float, default=0.02,
                    help="largest GPU fp16 vs CPU fp32 difference of mean log p per token (nats)")
    ap.add_argument("--limit", type=int, default=0, help="score only the first N texts (a quick dry run)")
    args = ap.parse_args()
    if not SCIFIG.is_dir():
        print(f"fluency_gpu: {SCIFIG} is not here (the shared data set beside the checkout)", file=sys.stderr)
        return 2
    import torch

    from s1mmalign import config
    from s1mmalign.score import fluency

    if args.device == "cuda" and not torch.cuda.is_available():
        print("fluency_gpu: no CUDA device here; run it on the GPU machine (or --device cpu for a dry run)")
        return 2
    card = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    pool = [t for p in texts(300) for t in p]
    items = pool + long_tail(pool, args.tail)
    items = items[:args.limit] if args.limit else items
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    with tempfile.TemporaryDirectory() as tmp:
        folder = checkpoint(Path(tmp), args.layers, args.width, pool, vocab=args.vocab)
        base = config.load()

        def scorer(device: str):
            return fluency.Scorer(fluency.FluencySpec.of(base, checkpoint=str(folder), device=device,
                                                         batch_tokens=args.batch_tokens or None))

        gpu = scorer(args.device)
        if args.check:
            few = items[:args.check - 4] + items[-4:]            # short ones and long ones
            ref = scorer("cpu").score_texts(few)
            got = gpu.score_texts(few)
            worst = max(abs(a.pll / a.tokens - b.pll / b.tokens) for a, b in zip(ref, got, strict=True))
            print(f"check: {len(few)} texts, {args.device} {gpu.dtype} vs CPU fp32, largest difference of mean "
                  f"log p per token {worst:.5f} nats (mean log p per token {ref[0].pll / ref[0].tokens:.3f})")
            if worst > args.tolerance:
                print(f"fluency_gpu: GPU scores differ from CPU scores by more than {args.tolerance}")
                return 1
        batches, tokens = model_only_batches(gpu, items)
        run_model_only(gpu, batches[:2])                       # warm both sides, untimed
        gpu.score_texts(items[:64])
        ceiling, e2e, side = [], [], []
        for _ in range(args.rounds):
            t = time.perf_counter()
            want = run_model_only(gpu, batches)
            sync()
            ceiling.append(tokens / (time.perf_counter() - t))
            t = time.perf_counter()
            got = gpu.score_texts(items)
            sync()
            e2e.append(tokens / (time.perf_counter() - t))
            t = time.perf_counter()
            gpu.plan(items)
            side.append(tokens / (time.perf_counter() - t))
        total = sum(s.pll for s in got if s.pll is not None)
        assert abs(total - want) < 1e-3 * abs(want), (total, want)
    lengths = sorted(s.tokens for s in got if s.tokens)
    best_c, best_e = max(ceiling), max(e2e)
    print(f"device: {card}, BERT {args.layers}x{args.width} {gpu.dtype} random weights, vocab {args.vocab}, "
          f"{len(items)} texts ({lengths[len(lengths) // 2]} word pieces median, {lengths[-1]} longest), "
          f"{tokens:,} tokens, passes of {gpu.spec.batch_tokens} tokens")
    print(f"model only (masked copies prebuilt on the device): {', '.join(f'{r:,.0f}' for r in ceiling)} tokens/s")
    print(f"scorer end to end: {', '.join(f'{r:,.0f}' for r in e2e)} tokens/s (PLL sums agree: {total:.1f})")
    print(f"CPU side alone (Scorer.plan): {', '.join(f'{r:,.0f}' for r in side)} tokens/s")
    print(f"fluency gpu BERT {args.layers}x{args.width} on {card}: {best_e:,.0f} tokens/s end to end vs "
          f"{best_c:,.0f} model only ... ratio={best_e / best_c:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
