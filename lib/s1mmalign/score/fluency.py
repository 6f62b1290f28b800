"""Masked-LM fluency: pseudo-log-likelihood (Salazar et al. 2020) of a text under a BERT-family model, with
transformers and plain PyTorch, no Spark.

PLL(text) = sum over its tokens t of log p(t | the text with t masked); pseudo-perplexity =
exp(-PLL / tokens). Every masked copy of every text in a batch goes through the model together, sorted by
length so that a forward pass pads little, in passes of at most `batch_tokens` padded tokens; the LM head
runs only at the masked position (BERT's `cls`, RoBERTa's `lm_head`; other heads: the full logits). fp16
on CUDA, fp32 on CPU, chosen at run time.

A text longer than the model's window (its positions, less [CLS] and [SEP]) is read in windows of that
length, each starting half a window after the previous one (the last ends at the text's end); each
token is scored once, in the window where it sits in the middle half (the first window also scores the
text's first quarter, the last its last), so every token but those at the text's ends sees at least a
quarter window of context on each side.

Weights come from a Hugging Face folder (config.json, vocab.txt or tokenizer.json, *.safetensors) on
local disk or under s3:// (downloaded once to the cache), never from a hub and never from a pickle.
An empty, unreadable or overlong text gives a null score and a status, never a failed batch.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from s1mmalign.config import Config, FluencyConf, S3Conf, spec_values
from s1mmalign.errors import JobError

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json")


class FluencyError(JobError, ValueError):
    """A checkpoint that cannot be used, said in one line."""


@dataclass(frozen=True)
class FluencySpec(FluencyConf):
    """The fluency conf section (config.FluencyConf) with where an s3:// checkpoint is read from."""

    s3: S3Conf = S3Conf()

    @classmethod
    def of(cls, cfg: Config, **flags) -> FluencySpec:
        """cfg's fluency section and S3 settings, with the job's flags (those given: not None) over them."""
        return cls(**spec_values(cfg, "fluency", **flags))


@dataclass(frozen=True)
class TextScore:
    pll: float | None
    tokens: int | None
    ppl: float | None
    status: str | None            # None when scored; else why not (empty, no_tokens, too_long)


@dataclass(frozen=True)
class PairScore:
    caption: TextScore
    recaption: TextScore

    @property
    def status(self) -> str:
        bad = [f"{name}_{s.status}" for name, s in (("caption", self.caption), ("recaption", self.recaption))
               if s.status]
        return ",".join(bad) or "ok"


def _s3_folder(spec: FluencySpec) -> Path:
    """An s3:// checkpoint folder downloaded once into the cache (keyed by its objects' keys and ETags)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from s1mmalign.lake.storage import Store

    bucket, _, prefix = spec.checkpoint.split("://", 1)[1].partition("/")
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    client = Store.from_uri(f"s3://{bucket}", spec.s3).client
    try:
        objects = [o for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
                   for o in page.get("Contents", []) if "/" not in o["Key"][len(prefix):]]
        if not objects:
            raise FluencyError(f"checkpoint {spec.checkpoint} holds no files")
        digest = hashlib.sha256("\n".join(f"{o['Key']}@{o['ETag']}" for o in sorted(
            objects, key=lambda o: o["Key"])).encode()).hexdigest()[:24]
        dest = Path(spec.cache_dir).expanduser() / digest
        if not (dest / ".complete").is_file():
            part = dest.with_name(dest.name + f".part{os.getpid()}")
            part.mkdir(parents=True, exist_ok=True)
            for o in objects:
                client.download_file(bucket, o["Key"], str(part / o["Key"][len(prefix):]))
            (part / ".complete").touch()
            try:
                part.rename(dest)
            except OSError:          # another worker finished first: use its copy
                pass
    except (BotoCoreError, ClientError) as exc:
        raise FluencyError(f"checkpoint {spec.checkpoint} cannot be read: {exc}") from None
    return dest


def checkpoint_dir(spec: FluencySpec) -> Path:
    """The checkpoint folder on local disk, checked: a config, a tokenizer and safetensors weights."""
    if not spec.checkpoint:
        raise FluencyError("no fluency checkpoint: pass --checkpoint FOLDER_OR_S3_URI (a Hugging Face folder with "
                           "config.json, vocab.txt or tokenizer.json and *.safetensors; models are never fetched "
                           "from a hub)")
    if spec.checkpoint.startswith(("s3://", "s3a://")):
        folder = _s3_folder(spec)
    else:
        folder = Path(spec.checkpoint).expanduser()
        if not folder.is_dir():
            raise FluencyError(f"checkpoint {spec.checkpoint} is not a folder (a Hugging Face model folder)")
    missing = [what for what, ok in (
        ("config.json", (folder / "config.json").is_file()),
        ("a tokenizer (" + " or ".join(TOKENIZER_FILES) + ")", any((folder / f).is_file() for f in TOKENIZER_FILES)),
        ("*.safetensors weights", any(folder.glob("*.safetensors")))) if not ok]
    if missing:
        pickled = any(folder.glob("*.bin"))
        extra = " (pickled *.bin weights are not read: convert them to safetensors)" if pickled else ""
        raise FluencyError(f"checkpoint {spec.checkpoint} lacks {', '.join(missing)}{extra}")
    return folder


def folder_digest(folder: Path) -> str:
    """sha256 over the folder's files (names and contents), streamed."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def model_id(spec: FluencySpec) -> str:
    """What identifies the scores: the model's name and its checkpoint's digest."""
    return f"{spec.model}@sha256:{folder_digest(checkpoint_dir(spec))[:16]}"


def windows(n: int, body: int) -> list[tuple[int, int, int, int]]:
    """(start, end, own_lo, own_hi) of the windows over n tokens, at most body tokens each: tokens
    own_lo..own_hi-1 are scored in the window start..end-1 (see the module's docstring)."""
    if n <= body:
        return [(0, n, 0, n)]
    step = max(1, body // 2)
    margin = (body - step) // 2
    starts = list(range(0, n - body, step)) + [n - body]
    out, lo = [], 0
    for k, s in enumerate(starts):
        hi = n if k == len(starts) - 1 else s + body - margin
        out.append((s, s + body, lo, hi))
        lo = hi
    return out


class Scorer:
    """One masked-LM, reused across batches."""

    def __init__(self, spec: FluencySpec):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")      # nothing is fetched from a hub
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        import transformers

        transformers.logging.set_verbosity_error()        # "sequence longer than the model": windows handle it
        transformers.logging.disable_progress_bar()
        folder = checkpoint_dir(spec)
        self.spec, self.torch = spec, torch
        cuda = spec.device in ("auto", "cuda") and torch.cuda.is_available()
        if spec.device == "cuda" and not cuda:
            raise FluencyError("fluency.device cuda asked, but torch sees no CUDA device")
        self.device = torch.device("cuda" if cuda else "cpu")
        self.dtype = torch.float16 if cuda else torch.float32
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            model = transformers.AutoModelForMaskedLM.from_pretrained(
                str(folder), local_files_only=True, use_safetensors=True, dtype=self.dtype)
        except Exception as exc:  # noqa: BLE001  wrong architecture, broken files: one line
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise FluencyError(f"checkpoint {spec.checkpoint} is not a masked language model: {first}") from None
        tok = self.tokenizer
        if tok.mask_token_id is None or tok.cls_token_id is None or tok.sep_token_id is None:
            raise FluencyError(f"checkpoint {spec.checkpoint}: its tokenizer has no [MASK], [CLS] or [SEP] token")
        self.model = model.to(self.device).eval()
        positions = int(getattr(model.config, "max_position_embeddings", 512) or 512)
        if getattr(model.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
            positions -= 2                                 # RoBERTa's positions start after the padding index
        self.window = min(spec.window, positions)
        self.body = self.window - 2
        self.base = model.base_model
        self.head = getattr(model, "cls", None) or getattr(model, "lm_head", None)
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        self.model_id = f"{spec.model}@sha256:{folder_digest(folder)[:16]}"
        log.info("fluency %s on %s (%s), window %d", self.model_id, self.device, self.dtype, self.window)

    def _ids(self, text: str | None) -> tuple[list[int] | None, str | None]:
        if text is None or not text.strip():
            return None, "empty"
        if len(text) > self.spec.max_chars:
            return None, "too_long"
        ids = self.tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"]
        if not ids:
            return None, "no_tokens"
        if len(ids) > self.spec.max_tokens:
            return None, "too_long"
        return ids, None

    def _forward(self, rows: list[tuple[int, list[int], int, int]], totals: list[float]) -> None:
        """rows: (text index, window ids with [CLS]/[SEP], masked position, true id); adds log p to totals."""
        torch = self.torch
        width = max(len(r[1]) for r in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for k, (_, window, _, _) in enumerate(rows):
            ids[k, :len(window)] = torch.tensor(window)
            mask[k, :len(window)] = 1
        positions = torch.tensor([r[2] for r in rows])
        truth = torch.tensor([r[3] for r in rows])
        ids[torch.arange(len(rows)), positions] = self.tokenizer.mask_token_id
        ids, mask = ids.to(self.device, non_blocking=True), mask.to(self.device, non_blocking=True)
        at = torch.arange(len(rows), device=self.device)
        positions, truth = positions.to(self.device), truth.to(self.device)
        with torch.inference_mode():
            if self.head is not None:
                hidden = self.base(input_ids=ids, attention_mask=mask).last_hidden_state[at, positions]
                logits = self.head(hidden.unsqueeze(1)).squeeze(1)
            else:
                logits = self.model(input_ids=ids, attention_mask=mask).logits[at, positions]
            logp = torch.log_softmax(logits.float(), dim=-1)[at, truth].double().cpu().tolist()
        for (index, _, _, _), lp in zip(rows, logp, strict=True):
            totals[index] += lp

    def score_texts(self, texts: Sequence[str | None]) -> list[TextScore]:
        """PLL, token count and pseudo-perplexity of each text, all masked copies batched together."""
        tok = self.tokenizer
        prepared = [self._ids(t) for t in texts]
        copies = []         # (length, text index, window ids, position in window, true id)
        for index, (ids, _) in enumerate(prepared):
            if ids is None:
                continue
            for start, end, lo, hi in windows(len(ids), self.body):
                window = [tok.cls_token_id] + ids[start:end] + [tok.sep_token_id]
                for t in range(lo, hi):
                    copies.append((len(window), index, window, t - start + 1, ids[t]))
        copies.sort(key=lambda c: c[0])
        totals = [0.0] * len(texts)
        batch: list = []
        for length, index, window, pos, true_id in copies:
            if batch and (len(batch) + 1) * length > self.spec.batch_tokens:
                self._forward(batch, totals)
                batch = []
            batch.append((index, window, pos, true_id))
        if batch:
            self._forward(batch, totals)
        out = []
        for index, (ids, status) in enumerate(prepared):
            if ids is None:
                out.append(TextScore(None, None, None, status))
                continue
            pll = totals[index]
            ppl = math.exp(-pll / len(ids)) if -pll / len(ids) < 700 else math.inf
            out.append(TextScore(pll, len(ids), ppl, None))
        return out

    def score(self, pairs: Sequence[tuple[str | None, str | None]]) -> list[PairScore]:
        """Scores of (caption, recaption) pairs: both texts of every pair batched together."""
        flat = self.score_texts([t for pair in pairs for t in pair])
        return [PairScore(flat[2 * i], flat[2 * i + 1]) for i in range(len(pairs))]


_CACHE: dict[FluencySpec, Scorer] = {}
_LOCK = threading.Lock()


def scorer_for(spec: FluencySpec) -> Scorer:
    """The Scorer of this process for spec (one model per Python worker, reused across tasks)."""
    with _LOCK:
        if spec not in _CACHE:
            _CACHE[spec] = Scorer(spec)
        return _CACHE[spec]
