"""Shared by bench/clip_cpu.py and bench/clip_gpu.py: inputs, the model-only ceiling, the scorer end to end.

Both measure pairs/s, a pair being one image and two texts (caption, recaption):
  model-only  images already preprocessed and texts already tokenized (77 tokens) on the device: only
              encode_image + 2 x encode_text at the best batch size; the ceiling for a pair;
  scorer      clip.Scorer.score_batches from 256 px JPEG thumbnails and caption strings: JPEG decode,
              preprocessing and tokenizing on CPU threads overlapping the model, as score_clip runs it.
Throughput does not depend on the weights, so random weights are used (no hub, no checkpoint here).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))

from s1mmalign.config import IngestConf  # noqa: E402
from s1mmalign.ingest import images, sample  # noqa: E402
from s1mmalign.score import clip  # noqa: E402

WORDS = ("signal rate field model phase energy network sample flux layer spectrum noise temperature "
         "pressure gradient lattice accuracy ablation distribution epoch").split()


def thumbnails(n: int, distinct: int = 64) -> list[bytes]:
    """n thumbnails, as ingest makes them (256 px JPEG), of generated figures (distinct of them, repeated)."""
    policy = IngestConf()
    out = [images.analyze(sample.render(k, 1, "PNG"), policy).thumbnail for k in range(distinct)]
    return [out[i % distinct] for i in range(n)]


def texts(i: int) -> tuple[str, str]:
    cap = "Figure %d: " % i + " ".join(WORDS[(i + j) % len(WORDS)] for j in range(25))
    recap = "The figure shows " + " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(120))
    return cap, recap


def pairs(n: int) -> list[clip.Pair]:
    thumbs = thumbnails(n)
    return [clip.Pair(t, *texts(i)) for i, t in enumerate(thumbs)]


def batches(items: list, size: int) -> list[list]:
    """items in consecutive batches of `size`."""
    return [items[i:i + size] for i in range(0, len(items), size)]


def model_only(scorer: clip.Scorer, batch: int, seconds: float) -> float:
    """Pairs/s of the model alone at one batch size (inputs resident on the device)."""
    torch = scorer.torch
    size = scorer.model.visual.image_size
    size = size if isinstance(size, (tuple, list)) else (size, size)
    img = torch.randn(batch, 3, *size, device=scorer.device, dtype=scorer.dtype)
    tok = scorer.tokenizer([texts(i)[0] for i in range(batch)] + [texts(i)[1] for i in range(batch)]).to(scorer.device)
    sync = torch.cuda.synchronize if scorer.device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        for _ in range(2):   # warm up
            scorer.model.encode_image(img, normalize=True)
            scorer.model.encode_text(tok, normalize=True)
        sync()
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            scorer.model.encode_image(img, normalize=True)
            scorer.model.encode_text(tok, normalize=True)
            sync()
            done += batch
    return done / (time.perf_counter() - start)


def end_to_end(scorer: clip.Scorer, items: list[clip.Pair], batch: int) -> float:
    """Pairs/s of the scorer over items (after one warm-up batch)."""
    groups = batches(items, batch)
    scorer.score(groups[0])
    start = time.perf_counter()
    n = sum(len(s) for s in scorer.score_batches(groups))
    return n / (time.perf_counter() - start)


def prepare_only(scorer: clip.Scorer, items: list[clip.Pair], batch: int) -> float:
    """Pairs/s of the CPU side alone (image decode + preprocessing, tokenizing), no model: what the
    end-to-end rate cannot exceed however fast the model is."""
    groups = batches(items, batch)
    scorer.prepare(groups[0])
    start = time.perf_counter()
    n = 0
    for g in groups:
        scorer.prepare(g)
        n += len(g)
    if scorer.device.type == "cuda":
        scorer.torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def agreement(a: list[clip.Score], b: list[clip.Score]) -> float:
    """Largest absolute difference between two score lists of the same pairs (statuses must match)."""
    if [s.status for s in a] != [s.status for s in b]:
        raise AssertionError("statuses differ between the two scorers")
    diffs = [abs(x - y) for s, t in zip(a, b, strict=True)
             for x, y in ((s.score_caption, t.score_caption), (s.score_recaption, t.score_recaption))
             if x is not None and y is not None]
    return max(diffs)
