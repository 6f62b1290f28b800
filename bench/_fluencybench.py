"""Shared by bench/fluency_cpu.py and bench/fluency_gpu.py: scifig300's texts, a BERT of random weights in
a WordPiece vocabulary trained on them (no hub here), and the model-only ceiling.

Both measure tokens scored per second (one masked copy per token). The ceiling: every masked copy built
beforehand as tensors on the model's device, in the scorer's own passes (Scorer.plan: sorted by length, at
most batch_tokens padded tokens), then only the encoder, the LM head at the masked position, log-softmax
and the true token's log p are timed.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))
SCIFIG = REPO.parent / "shared" / "data" / "scifig300"


def texts(pairs: int) -> list[tuple[str, str]]:
    """scifig300's (caption, recaption) pairs, the first `pairs` of them."""
    rows = [json.loads(line) for f in sorted((SCIFIG / "arxiv" / "jsonl").glob("*.jsonl"))
            for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(r["caption"], r["recaption"]) for r in rows[:pairs]]


def long_tail(pool: list[str], n: int, lo_words: int = 100, hi_words: int = 400, seed: int = 0) -> list[str]:
    """n texts of log-uniform length between lo_words and hi_words words (about 130 to 510 word pieces),
    cut from scifig300's texts run together: the long captions the real release has beside short ones."""
    rng = random.Random(seed)
    words = " ".join(pool).split()
    out = []
    for _ in range(n):
        k = int(lo_words * (hi_words / lo_words) ** rng.random())
        start = rng.randrange(0, max(1, len(words) - k))
        out.append(" ".join(words[start:start + k]))
    return out


def checkpoint(folder: Path, layers: int, width: int, corpus: list[str], vocab: int = 0) -> Path:
    """A BERT for masked LM, random weights (seed 0), `layers` x `width`, saved as SciBERT's folder layout;
    its WordPiece vocabulary trained on corpus; the embedding and LM head sized `vocab` when given (e.g.
    SciBERT's 31,090, so that the head costs what SciBERT's does), else the trained vocabulary's size."""
    import torch
    import transformers
    from tokenizers import BertWordPieceTokenizer

    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(corpus, vocab_size=8000, min_frequency=1)
    wp.save_model(str(folder))
    torch.manual_seed(0)
    conf = transformers.BertConfig(vocab_size=max(vocab, wp.get_vocab_size()), hidden_size=width,
                                   num_hidden_layers=layers, num_attention_heads=max(1, width // 64),
                                   intermediate_size=4 * width, max_position_embeddings=512)
    transformers.BertForMaskedLM(conf).eval().save_pretrained(folder)
    return folder


def model_only_batches(scorer, items: list[str]):
    """The scorer's forward passes over items, built beforehand on its device: (ids, mask, positions, truth)."""
    import numpy as np
    import torch

    plan = scorer.plan(items)
    dev = scorer.device
    batches = []
    for first, last, width in plan.passes:
        rows = plan.copy_window[first:last]
        ids = plan.grid[rows, :width].copy()
        pos = plan.copy_pos[first:last]
        ids[np.arange(len(rows)), pos] = scorer.tokenizer.mask_token_id
        mask = (np.arange(width)[None, :] < plan.lengths[rows][:, None]).astype(np.int64)
        batches.append(tuple(torch.from_numpy(np.ascontiguousarray(a)).to(dev)
                             for a in (ids, mask, pos, plan.copy_truth[first:last])))
    return batches, plan.copies


def run_model_only(scorer, batches) -> float:
    """The model over prebuilt batches; the sum of the true tokens' log p (synchronized at the end)."""
    import torch

    total = torch.zeros((), dtype=torch.float64, device=scorer.device)
    with torch.inference_mode():
        for ids, mask, pos, truth in batches:
            at = torch.arange(len(pos), device=scorer.device)
            hidden = scorer.base(input_ids=ids, attention_mask=mask).last_hidden_state[at, pos]
            logits = scorer.head(hidden.unsqueeze(1)).squeeze(1)
            total += torch.log_softmax(logits.float(), dim=-1)[at, truth].double().sum()
    return float(total)
