"""Masked-LM fluency throughput on this machine's CPU: the scorer end to end against the model-only loop.

    .venv/bin/python bench/fluency_cpu.py [--pairs 60] [--layers 4] [--width 256] [--threads 2]

Texts: the captions and recaptions of ../shared/data/scifig300 (their real lengths), tokenized by a
WordPiece vocabulary trained on them (no hub here: SciBERT's own vocabulary cannot be had), model random
weights in that vocabulary (BERT, --layers x --width; SciBERT is 12 x 768, too slow for two CPU cores).

- model only: every masked copy of every text built beforehand as tensors, in the scorer's own batches
  (sorted by length, at most --batch-tokens padded tokens), then timed: the encoder and the LM head at the
  masked position, log-softmax, the true token's log p. The ceiling of any scorer on this model.
- end to end: fluency.Scorer.score on the same (caption, recaption) pairs: tokenizing, windows, masked
  copies, batching, the model, the sums.

Both warmed once untimed, then timed alternately --rounds times; ratio = end to end / model only (tokens
scored per second). The PLLs of the two agree (checked). bench/README.md has the figures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from _fluencybench import SCIFIG, checkpoint, model_only_batches, run_model_only, texts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=60)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-tokens", type=int, default=16384)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if not SCIFIG.is_dir():
        print(f"fluency_cpu: {SCIFIG} is not here (the shared data set beside the checkout)", file=sys.stderr)
        return 2
    import torch

    from s1mmalign import config
    from s1mmalign.score import fluency

    torch.set_num_threads(args.threads)
    pairs = texts(args.pairs)
    flat = [t for p in pairs for t in p]
    with tempfile.TemporaryDirectory() as tmp:
        folder = checkpoint(Path(tmp), args.layers, args.width, [t for p in texts(300) for t in p])
        spec = fluency.FluencySpec.of(config.load(), checkpoint=str(folder), device="cpu",
                                      batch_tokens=args.batch_tokens)
        scorer = fluency.Scorer(spec)
        batches, tokens = model_only_batches(scorer, flat)
        run_model_only(scorer, batches[:2])                 # warm both sides, untimed
        scorer.score(pairs[:4])
        ceiling, e2e = [], []
        for _ in range(args.rounds):
            t = time.perf_counter()
            want = run_model_only(scorer, batches)
            ceiling.append(tokens / (time.perf_counter() - t))
            t = time.perf_counter()
            got = scorer.score(pairs)
            e2e.append(tokens / (time.perf_counter() - t))
        total = sum(s.pll for p in got for s in (p.caption, p.recaption) if s.pll is not None)
        assert abs(total - want) < 1e-3 * abs(want), (total, want)
    best_c, best_e = max(ceiling), max(e2e)
    print(f"device: cpu, {args.threads} torch threads, BERT {args.layers}x{args.width} fp32 random weights, "
          f"vocab {scorer.tokenizer.vocab_size}, {len(flat)} scifig300 texts, {tokens} tokens, batch "
          f"{args.batch_tokens} tokens")
    print(f"model only (masked copies prebuilt): {', '.join(f'{r:,.0f}' for r in ceiling)} tokens/s")
    print(f"scorer end to end: {', '.join(f'{r:,.0f}' for r in e2e)} tokens/s (PLL sums agree: {total:.3f})")
    print(f"fluency cpu BERT {args.layers}x{args.width}: {best_e:,.0f} tokens/s end to end vs {best_c:,.0f} "
          f"model only ... ratio={best_e / best_c:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
