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
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))
SCIFIG = REPO.parent / "shared" / "data" / "scifig300"


def texts(pairs: int) -> list[tuple[str, str]]:
    rows = [json.loads(line) for f in sorted((SCIFIG / "arxiv" / "jsonl").glob("*.jsonl"))
            for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(r["caption"], r["recaption"]) for r in rows[:pairs]]


def checkpoint(folder: Path, layers: int, width: int, corpus: list[str]) -> Path:
    import torch
    import transformers
    from tokenizers import BertWordPieceTokenizer

    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(corpus, vocab_size=8000, min_frequency=1)
    wp.save_model(str(folder))
    torch.manual_seed(0)
    conf = transformers.BertConfig(vocab_size=wp.get_vocab_size(), hidden_size=width, num_hidden_layers=layers,
                                   num_attention_heads=max(1, width // 64), intermediate_size=4 * width,
                                   max_position_embeddings=512)
    transformers.BertForMaskedLM(conf).eval().save_pretrained(folder)     # config.json + vocab.txt: SciBERT's layout
    return folder


def model_only_batches(scorer, items: list[str]):
    """The scorer's forward batches, built beforehand: (ids, mask, positions, truth) tensors."""
    import torch

    from s1mmalign.score import fluency

    tok = scorer.tokenizer
    copies = []
    for text in items:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        for s, e, lo, hi in fluency.windows(len(ids), scorer.body):
            window = [tok.cls_token_id] + ids[s:e] + [tok.sep_token_id]
            copies += [(len(window), window, t - s + 1, ids[t]) for t in range(lo, hi)]
    copies.sort(key=lambda c: c[0])
    batches, batch = [], []

    def close():
        width = max(c[0] for c in batch)
        ids = torch.full((len(batch), width), scorer.pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for k, (n, window, _, _) in enumerate(batch):
            ids[k, :n] = torch.tensor(window)
            mask[k, :n] = 1
        pos = torch.tensor([c[2] for c in batch])
        ids[torch.arange(len(batch)), pos] = tok.mask_token_id
        batches.append((ids, mask, pos, torch.tensor([c[3] for c in batch])))

    for c in copies:
        if batch and (len(batch) + 1) * c[0] > scorer.spec.batch_tokens:
            close()
            batch = []
        batch.append(c)
    if batch:
        close()
    return batches, len(copies)


def run_model_only(scorer, batches) -> float:
    import torch

    total = 0.0
    with torch.inference_mode():
        for ids, mask, pos, truth in batches:
            at = torch.arange(len(pos))
            hidden = scorer.base(input_ids=ids, attention_mask=mask).last_hidden_state[at, pos]
            logits = scorer.head(hidden.unsqueeze(1)).squeeze(1)
            total += torch.log_softmax(logits.float(), dim=-1)[at, truth].double().sum().item()
    return total


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
