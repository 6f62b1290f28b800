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


def cut_passes(lengths: Sequence[int], counts: Sequence[int], batch_tokens: int) -> list[tuple[int, int, int]]:
    """(first copy, end copy, width) of each forward pass over copies in ascending length order, given as
    runs (counts[k] copies of length lengths[k]): a copy joins the pass while (its copies + 1) x its length
    fits batch_tokens, the first of a pass always. Walked run by run, not copy by copy."""
    out: list[tuple[int, int, int]] = []
    first = done = have = width = 0
    for length, left in zip(lengths, counts, strict=True):
        cap = batch_tokens // length            # copies a pass of this width may hold (at least one)
        while left:
            if have and have >= cap:
                out.append((first, done, width))
                first, have = done, 0
            take = min(left, max(cap, 1) - have)
            have, done, left, width = have + take, done + take, left - take, length
    if have:
        out.append((first, done, width))
    return out


@dataclass(frozen=True)
class Plan:
    """Scorer.plan's output: what Scorer.run needs, as arrays (copies in length order)."""

    status: list          # per text: None (scored) or why not
    tokens: list          # per text: its token count (0 when not scored)
    lengths: object       # per window row of grid: its length with [CLS]/[SEP]
    grid: object          # windows with [CLS]/[SEP], padded (rows in length order)
    copy_window: object   # per masked copy: its window's row in grid
    copy_pos: object      # per copy: the masked position in its window
    copy_truth: object    # per copy: the true token id there
    copy_text: object     # per copy: its text's index
    passes: list          # (first copy, end copy, width) per forward pass

    @property
    def copies(self) -> int:
        return len(self.copy_pos)


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

    def plan(self, texts: Sequence[str | None]) -> Plan:
        """Everything before the model, in numpy: each text's token ids and windows, its masked copies (as
        indices into the windows, not as copies), sorted by length and cut into passes of at most
        batch_tokens padded tokens. A copy costs no Python object: the launching thread stays free."""
        import numpy as np

        tok = self.tokenizer
        status: list[str | None] = [None] * len(texts)
        good, good_texts = [], []
        for index, text in enumerate(texts):
            if text is None or not text.strip():
                status[index] = "empty"
            elif len(text) > self.spec.max_chars:
                status[index] = "too_long"
            else:
                good.append(index)
                good_texts.append(text)
        encoded = tok(good_texts, add_special_tokens=False, truncation=False)["input_ids"] if good_texts else []
        tokens = [0] * len(texts)
        windows_, owner, pos, truth = [], [], [], []      # per window; per window: owner, copy positions/ids
        for index, ids in zip(good, encoded, strict=True):
            if not ids:
                status[index] = "no_tokens"
                continue
            if len(ids) > self.spec.max_tokens:
                status[index] = "too_long"
                continue
            tokens[index] = len(ids)
            arr = np.asarray(ids, dtype=np.int64)
            for start, end, lo, hi in windows(len(ids), self.body):
                windows_.append(arr[start:end])
                owner.append(index)
                pos.append(np.arange(lo - start + 1, hi - start + 1))
                truth.append(arr[lo:hi])
        n = len(windows_)
        lengths = np.fromiter((len(w) + 2 for w in windows_), dtype=np.int64, count=n)
        order = np.argsort(lengths, kind="stable")
        width = int(lengths.max()) if n else 0
        grid = np.full((n, width), self.pad, dtype=np.int64)     # windows with [CLS]/[SEP], in length order
        counts = np.zeros(n, dtype=np.int64)
        for row, w in enumerate(order):
            body = windows_[w]
            grid[row, 0] = tok.cls_token_id
            grid[row, 1:len(body) + 1] = body
            grid[row, len(body) + 1] = tok.sep_token_id
            counts[row] = len(pos[w])
        copy_window = np.repeat(np.arange(n), counts)
        copy_pos = np.concatenate([pos[w] for w in order]) if n else np.zeros(0, dtype=np.int64)
        copy_truth = np.concatenate([truth[w] for w in order]) if n else np.zeros(0, dtype=np.int64)
        copy_text = np.repeat(np.asarray(owner, dtype=np.int64)[order], counts) if n else copy_window
        passes = cut_passes([int(x) for x in lengths[order]], counts.tolist(), self.spec.batch_tokens)
        return Plan(status, tokens, lengths[order], grid, copy_window, copy_pos, copy_truth, copy_text, passes)

    def run(self, plan: Plan) -> list[float]:
        """The model over a plan's passes: each pass gathers its windows on the device, masks one position
        per row, and adds the true token's log p to its text's total (summed on the device)."""
        torch = self.torch
        dev = self.device
        grid = torch.from_numpy(plan.grid).to(dev)
        lengths = torch.from_numpy(plan.lengths).to(dev)
        rows_all = torch.from_numpy(plan.copy_window).to(dev)
        pos_all = torch.from_numpy(plan.copy_pos).to(dev)
        truth_all = torch.from_numpy(plan.copy_truth).to(dev)
        text_all = torch.from_numpy(plan.copy_text).to(dev)
        totals = torch.zeros(len(plan.status), dtype=torch.float64, device=dev)
        with torch.inference_mode():
            for first, last, width in plan.passes:
                rows, pos = rows_all[first:last], pos_all[first:last]
                at = torch.arange(last - first, device=dev)
                ids = grid[rows, :width]           # a copy (advanced indexing): grid stays as it is
                ids[at, pos] = self.tokenizer.mask_token_id
                mask = (torch.arange(width, device=dev)[None, :] < lengths[rows][:, None]).long()
                if self.head is not None:
                    hidden = self.base(input_ids=ids, attention_mask=mask).last_hidden_state[at, pos]
                    logits = self.head(hidden.unsqueeze(1)).squeeze(1)
                else:
                    logits = self.model(input_ids=ids, attention_mask=mask).logits[at, pos]
                logp = torch.log_softmax(logits.float(), dim=-1)[at, truth_all[first:last]]
                totals.index_add_(0, text_all[first:last], logp.double())
        return totals.cpu().tolist()

    def score_texts(self, texts: Sequence[str | None]) -> list[TextScore]:
        """PLL, token count and pseudo-perplexity of each text, all masked copies batched together."""
        plan = self.plan(texts)
        totals = self.run(plan)
        out = []
        for status, n, pll in zip(plan.status, plan.tokens, totals, strict=True):
            if status is not None:
                out.append(TextScore(None, None, None, status))
                continue
            ppl = math.exp(-pll / n) if -pll / n < 700 else math.inf
            out.append(TextScore(pll, n, ppl, None))
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
