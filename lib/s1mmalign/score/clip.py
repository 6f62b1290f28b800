"""CLIP image/caption alignment with open_clip: plain PyTorch, no Spark.

A Scorer holds one model (fp16 on CUDA, fp32 on CPU, chosen at run time) and scores batches of
(image bytes, caption, recaption): the cosine similarity of the image embedding with each text's.
Images are decoded and preprocessed on CPU threads while the model works on the previous batch, in
one of three ways (`image_decode`): `pil`, open_clip's own Pillow transform (the reference, and the
default on a CPU); `cpu`, JPEGs decoded by torchvision (libjpeg-turbo) and resized as uint8 on CPU
threads that run without the GIL, normalized once per batch on the model's device (the default on
CUDA: the process that launches the kernels only stacks and copies); `torch`, JPEGs decoded with
nvJPEG and resized on the GPU.
Weights come from a local file or s3:// (safetensors, or a torch file read with weights_only=True: no
pickled code runs), never from a model hub. Captions over CLIP's 77 tokens are either truncated (CLIP's
standard) or embedded as the mean of consecutive 77-token windows (`chunk_mean`).
A bad image or an empty text gives a null score and a status for that pair, never a failed batch.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from s1mmalign.config import ClipConf, Config, S3Conf, spec_values
from s1mmalign.errors import JobError

log = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)    # CLIP's image normalisation, for configs without one
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

RANDOM_WEIGHTS = "RANDOM-WEIGHTS-NOT-REAL-SCORES"
STRATEGIES = ("truncate", "chunk_mean")
DECODERS = ("auto", "pil", "cpu", "torch")
FAST_PIXELS = 4096 * 4096          # the `cpu` path decodes JPEGs up to this size; larger ones go through Pillow
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class ClipError(JobError, ValueError):
    """A model or checkpoint that cannot be used, said in one line."""


@dataclass(frozen=True)
class ScorerSpec(ClipConf):
    """The clip conf section (its defaults live there, config.ClipConf) with what one run adds to it."""

    random_weights: bool = False         # testing only: the model id then says so
    s3: S3Conf = S3Conf()                # where an s3:// checkpoint is read from (the s3 conf section)

    @classmethod
    def of(cls, cfg: Config, **flags) -> ScorerSpec:
        """cfg's clip section and S3 settings, with the job's flags (those given: not None) over them."""
        return cls(**spec_values(cfg, "clip", **flags))


@dataclass(frozen=True)
class Pair:
    image: bytes | None
    caption: str | None
    recaption: str | None


@dataclass(frozen=True)
class Score:
    score_caption: float | None
    score_recaption: float | None
    status: str                          # ok, or what made a score null (comma-separated)


def local_checkpoint(spec: ScorerSpec) -> Path:
    """The checkpoint as a local file: the path itself, or an s3:// object downloaded once to the cache."""
    if not spec.checkpoint:
        raise ClipError("no checkpoint: pass --checkpoint PATH_OR_S3_URI (models are never fetched from a hub; "
                        "random weights only with --random-weights-for-testing)")
    if not spec.checkpoint.startswith(("s3://", "s3a://")):
        path = Path(spec.checkpoint).expanduser()
        if not path.is_file():
            raise ClipError(f"checkpoint {spec.checkpoint} is not a file")
        return path
    from botocore.exceptions import BotoCoreError, ClientError

    from s1mmalign.lake.storage import Store

    bucket, _, key = spec.checkpoint.split("://", 1)[1].partition("/")
    client = Store.from_uri(f"s3://{bucket}", spec.s3).client
    try:
        etag = client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
        digest = hashlib.sha256(f"{bucket}/{key}@{etag}".encode()).hexdigest()[:24]
        dest = Path(spec.cache_dir).expanduser() / digest / Path(key).name
        if not dest.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            part = dest.with_name(dest.name + f".part{os.getpid()}")
            client.download_file(bucket, key, str(part))
            part.replace(dest)
    except (BotoCoreError, ClientError) as exc:
        raise ClipError(f"checkpoint {spec.checkpoint} cannot be read: {exc}") from None
    return dest


def file_digest(path: Path) -> str:
    """sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_path(spec: ScorerSpec) -> Path | None:
    """The local checkpoint file; None for random weights (refused unless spec.random_weights)."""
    if spec.random_weights and not spec.checkpoint:
        return None
    return local_checkpoint(spec)


def _model_id(spec: ScorerSpec, path: Path | None) -> str:
    return f"{spec.model}@{RANDOM_WEIGHTS}" if path is None else f"{spec.model}@sha256:{file_digest(path)[:16]}"


def model_id(spec: ScorerSpec) -> str:
    """What identifies the scores of this model: name + checkpoint digest (or the random-weights mark)."""
    return _model_id(spec, checkpoint_path(spec))


class WordCache:
    """open_clip's SimpleTokenizer.encode with the ids of each word kept: the same ids, several times
    faster on captions (the tokenizer itself keeps each word's BPE merge but redoes its byte mapping and
    id lookups every time). Tokenizers of another kind (HF, SentencePiece) are called as they are."""

    LIMIT = 200_000     # words kept (~200 bytes each); past it, new words are encoded but not kept

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.words: dict[str, list[int]] = {}
        self.fast = all(hasattr(tokenizer, a) for a in ("pat", "clean_fn", "byte_encoder", "encoder", "bpe"))

    def encode(self, text: str) -> list[int]:
        tok = self.tok
        if not self.fast:
            return tok.encode(text)
        out: list[int] = []
        words = self.words
        for word in tok.pat.findall(tok.clean_fn(text)):
            ids = words.get(word)
            if ids is None:
                mapped = "".join(tok.byte_encoder[b] for b in word.encode("utf-8"))
                ids = [tok.encoder[t] for t in tok.bpe(mapped).split(" ")]
                if len(words) < self.LIMIT:
                    words[word] = ids
            out.extend(ids)
        return out


class TextWindows:
    """Token windows (sot + up to context-2 ids + eot) of texts, per the text strategy."""

    def __init__(self, tokenizer, strategy: str):
        self.tok = tokenizer
        self.words = WordCache(tokenizer)
        self.context = int(getattr(tokenizer, "context_length", 77) or 77)
        self.strategy = strategy

    def __call__(self, text: str) -> list[list[int]]:
        tok = self.tok
        ids = self.words.encode(text)
        body = self.context - 2
        if self.strategy == "truncate" or len(ids) <= body:
            return [[tok.sot_token_id] + ids[:body] + [tok.eot_token_id]]
        return [[tok.sot_token_id] + ids[i:i + body] + [tok.eot_token_id] for i in range(0, len(ids), body)]


_WORKER: dict[str, TextWindows] = {}


def _text_worker_init(model: str, model_config: str | None, strategy: str) -> None:
    """In a tokenizer process: the model's tokenizer, once."""
    import open_clip

    if model_config:
        open_clip.add_model_config(model_config)
    _WORKER["windows"] = TextWindows(open_clip.get_tokenizer(model), strategy)


def _text_worker_windows(texts: list[str]) -> list[list[list[int]]]:
    return [_WORKER["windows"](t) for t in texts]


def text_workers(spec: ScorerSpec, cuda: bool) -> int:
    """Tokenizer processes: spec.text_workers, or with 'auto' (-1) on CUDA a quarter of the cores, 1 to 8
    (one tokenizes ~7,900 pairs/s here: the GPU outruns one Python tokenizer), on CPU none (the model is
    the bottleneck there)."""
    if spec.text_workers >= 0:
        return spec.text_workers
    return max(1, min(8, (os.cpu_count() or 2) // 4)) if cuda else 0


def decode_threads(spec: ScorerSpec, cuda: bool, texts: int) -> int:
    """Image threads: spec.decode_threads, or with 'auto' (0) on CUDA the cores the tokenizer processes and
    the launching thread leave (the `cpu` path decodes ~2,300 thumbnails/s a core), on CPU up to 4."""
    if spec.decode_threads > 0:
        return spec.decode_threads
    cores = os.cpu_count() or 2
    return max(1, cores - texts - 1) if cuda else min(4, cores)


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG's frame header, read without decoding; None when data does not start
    like a JPEG or its segments end before a frame header (the caller then lets Pillow judge it)."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:                                # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:      # markers without a length
            i += 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in _SOF:
            if i + 9 > n or length < 8:
                return None
            return int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9], "big")
        if length < 2:
            return None
        i += 2 + length
    return None


class Scorer:
    """One open_clip model, reused across batches."""

    def __init__(self, spec: ScorerSpec):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")   # belt and braces: nothing is fetched from a hub
        import open_clip
        import torch

        if spec.text_strategy not in STRATEGIES:
            raise ClipError(f"text strategy {spec.text_strategy!r} is not one of {STRATEGIES}")
        if spec.image_decode not in DECODERS:
            raise ClipError(f"image decode {spec.image_decode!r} is not one of {DECODERS}")
        if spec.model_config:
            open_clip.add_model_config(spec.model_config)
        if spec.model not in open_clip.list_models():
            raise ClipError(f"unknown open_clip model {spec.model!r}")
        path = checkpoint_path(spec)   # no checkpoint and no random weights: the one-line refusal
        self.spec = spec
        self.torch = torch
        cuda = spec.device in ("auto", "cuda") and torch.cuda.is_available()
        if spec.device == "cuda" and not cuda:
            raise ClipError("--device cuda asked, but torch sees no CUDA device")
        self.device = torch.device("cuda" if cuda else "cpu")
        self.dtype = torch.float16 if cuda else torch.float32
        if path is None:
            torch.manual_seed(0)
        model, _, preprocess = open_clip.create_model_and_transforms(spec.model, pretrained=None)
        if path is not None:
            try:
                open_clip.load_checkpoint(model, str(path), weights_only=True)
            except Exception as exc:  # noqa: BLE001  pickled code, wrong keys or shapes, not a checkpoint
                first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
                raise ClipError(f"checkpoint {spec.checkpoint} is not a plain {spec.model} state dict: "
                                f"{first}") from None
        self.model = model.to(self.device, self.dtype).eval()
        self.preprocess = preprocess
        self.decode = spec.image_decode if spec.image_decode != "auto" else ("cpu" if cuda else "pil")
        self.decode_on_device = self.decode == "torch"
        pcfg = getattr(model.visual, "preprocess_cfg", {}) or {}
        size = pcfg.get("size", model.visual.image_size)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        mean, std = pcfg.get("mean", OPENAI_MEAN), pcfg.get("std", OPENAI_STD)
        self.mean = torch.tensor(mean, device=self.device).view(3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(3, 1, 1)
        self.tokenizer = open_clip.get_tokenizer(spec.model)
        self.windows = TextWindows(self.tokenizer, spec.text_strategy)
        self.model_id = _model_id(spec, path)
        self.text_workers = text_workers(spec, cuda)
        self.decode_threads = decode_threads(spec, cuda, self.text_workers)
        self.pool = ThreadPoolExecutor(self.decode_threads, thread_name_prefix="clip-decode")
        self.text_pool = None
        if self.text_workers:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn: fresh interpreters (never a fork of a process holding CUDA or the JVM gateway)
            self.text_pool = ProcessPoolExecutor(self.text_workers, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_text_worker_init,
                                                 initargs=(spec.model, spec.model_config, spec.text_strategy))
        log.info("CLIP %s on %s (%s), text %s, images %s on %d threads, %d tokenizer processes", self.model_id,
                 self.device, self.dtype, spec.text_strategy, self.decode, self.decode_threads, self.text_workers)

    # -- CPU side: decode, preprocess, tokenize --------------------------------------------------
    def _image(self, data: bytes | None):
        from PIL import Image

        if not data:
            return None
        try:
            with Image.open(io.BytesIO(data)) as im:
                return self.preprocess(im.convert("RGB"))
        except Exception:  # noqa: BLE001  any undecodable image: a null score with a status, never a failed batch
            return None

    def _image_uint8(self, data: bytes | None):
        """(3, S, S) uint8 as open_clip's transform makes it before scaling (shorter side to S, bicubic with
        antialias, center crop), with torch on this CPU thread (torch releases the GIL): JPEGs up to
        FAST_PIXELS decoded by torchvision, anything else read by Pillow (its bomb guard included)."""
        from torchvision.io import ImageReadMode, decode_jpeg
        from torchvision.transforms.v2 import functional as TF

        if not data:
            return None
        torch = self.torch
        x = None
        hw = jpeg_size(data)
        if hw is not None and 0 < hw[0] * hw[1] <= FAST_PIXELS:
            try:
                x = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
            except RuntimeError:
                x = None                   # e.g. a cut JPEG: Pillow decides below
        if x is None:
            from PIL import Image

            try:
                with Image.open(io.BytesIO(data)) as im:
                    x = TF.pil_to_tensor(im.convert("RGB"))
            except Exception:  # noqa: BLE001  undecodable: a null score with a status, never a failed batch
                return None
        return self._fit(x)

    def _fit(self, x):
        """open_clip's geometry on a (3, H, W) tensor, uint8 or float: shorter side to the model's size
        (bicubic, antialiased), then the center crop. One definition for the `cpu` and `torch` paths."""
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        size = self.image_size
        x = TF.resize(x, [size], interpolation=InterpolationMode.BICUBIC, antialias=True)
        return TF.center_crop(x, [size, size])

    def _images_uint8(self, datas: Sequence[bytes | None]) -> list:
        """_image_uint8 of each, in chunks over the decode threads (a chunk per task keeps the pool's
        per-task overhead off the rate)."""
        step = max(1, min(64, -(-len(datas) // self.decode_threads)))
        parts = self.pool.map(lambda part: [self._image_uint8(d) for d in part],
                              [datas[k:k + step] for k in range(0, len(datas), step)])
        return [x for part in parts for x in part]

    def _images_on_device(self, datas: Sequence[bytes | None]) -> list:
        """JPEGs decoded (nvJPEG on CUDA) and resized/cropped/normalized with torch on the model's device,
        as open_clip's preprocessing does (shorter side to size, bicubic with antialias, center crop).
        Anything that is not a JPEG, or fails, goes through the PIL path."""
        from torchvision.io import ImageReadMode, decode_jpeg

        torch = self.torch
        out: list = [None] * len(datas)
        jpegs = [i for i, d in enumerate(datas) if d and d[:3] == b"\xff\xd8\xff"]
        decoded: dict[int, object] = {}
        if jpegs:
            raw = [torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i in jpegs]
            try:
                decoded = dict(zip(jpegs, decode_jpeg(raw, mode=ImageReadMode.RGB, device=self.device), strict=True))
            except RuntimeError:   # one bad JPEG fails the batched call: decode one by one
                for i, r in zip(jpegs, raw, strict=True):
                    try:
                        decoded[i] = decode_jpeg(r, mode=ImageReadMode.RGB, device=self.device)
                    except RuntimeError:
                        pass
        if decoded:
            # per image only what depends on its size (resize, crop); scaling, clamping and normalizing
            # once for the whole batch (resizing is linear, so x/255 resized = (x resized)/255)
            crops = [self._fit(img.to(torch.float32)) for img in decoded.values()]
            batch = torch.stack(crops).clamp_(0, 255).mul_(1 / 255.0).sub_(self.mean).div_(self.std)
            for i, x in zip(decoded, batch, strict=True):
                out[i] = x
        for i, d in enumerate(datas):
            if out[i] is None and i not in decoded:
                t = self._image(d)
                out[i] = None if t is None else t.to(self.device)
        return out

    def prepare(self, pairs: Sequence[Pair]):
        """Everything before the model, on CPU threads (and tokenizer processes): image tensors and token windows."""
        import numpy as np

        torch = self.torch
        slots = [(i, j) for i, p in enumerate(pairs) for j, text in enumerate((p.caption, p.recaption))
                 if text and text.strip()]
        texts = [(pairs[i].caption, pairs[i].recaption)[j] for i, j in slots]
        chunks = []
        if self.text_pool is not None and texts:
            # tokenized in other processes while this thread prepares the images
            step = -(-len(texts) // self.text_workers)
            chunks = [self.text_pool.submit(_text_worker_windows, texts[k:k + step])
                      for k in range(0, len(texts), step)]
        if self.decode == "cpu":
            images = self._images_uint8([p.image for p in pairs])
        elif self.decode_on_device:
            images = self._images_on_device([p.image for p in pairs])
        else:
            images = list(self.pool.map(self._image, [p.image for p in pairs]))
        per_text = [w for c in chunks for w in c.result()] if chunks else [self.windows(t) for t in texts]
        windows, owner = [], []       # owner: (pair index, 0 caption | 1 recaption) per window
        for slot, ws in zip(slots, per_text, strict=True):
            windows.extend(ws)
            owner.extend([slot] * len(ws))
        flat = np.zeros((len(windows), self.windows.context), dtype=np.int64)
        for k, w in enumerate(windows):
            flat[k, :len(w)] = w
        tokens = torch.from_numpy(flat)
        ok = [i for i, t in enumerate(images) if t is not None]
        stack = torch.stack([images[i] for i in ok]) if ok else None
        return len(pairs), ok, stack, tokens, owner

    # -- model side ---------------------------------------------------------------------------
    def run(self, prepared) -> list[Score]:
        """Embeddings and cosine similarities for one prepared batch."""
        torch = self.torch
        n, ok, stack, tokens, owner = prepared
        dim = None
        with torch.inference_mode():
            img = None
            if stack is not None:
                x = stack.to(self.device, non_blocking=True)
                if x.dtype == torch.uint8:    # the `cpu` path: scaled and normalized here, once for the batch
                    x = x.float().mul_(1 / 255.0).sub_(self.mean).div_(self.std)
                img = self.model.encode_image(x.to(self.dtype), normalize=True)
                dim = img.shape[1]
            txt = None
            if len(owner):
                txt = self.model.encode_text(tokens.to(self.device, non_blocking=True), normalize=True)
                dim = txt.shape[1]
            if dim is None:
                return [Score(None, None, "image_unreadable,caption_empty,recaption_empty")] * n
            # mean of window embeddings per (pair, text), renormalized (one window: the embedding itself)
            sums = torch.zeros(n * 2, dim, device=self.device, dtype=torch.float32)
            if txt is not None:
                index = torch.tensor([i * 2 + j for i, j in owner], device=self.device)
                sums.index_add_(0, index, txt.float())
            text_emb = torch.nn.functional.normalize(sums, dim=-1).view(n, 2, dim)
            img_emb = torch.zeros(n, dim, device=self.device, dtype=torch.float32)
            if img is not None:
                img_emb[torch.tensor(ok, device=self.device)] = img.float()
            cos = torch.einsum("nd,ntd->nt", img_emb, text_emb).cpu().tolist()
        has_text = [[False, False] for _ in range(n)]
        for i, j in owner:
            has_text[i][j] = True
        good = set(ok)
        out = []
        for i in range(n):
            status = []
            if i not in good:
                status.append("image_unreadable")
            if not has_text[i][0]:
                status.append("caption_empty")
            if not has_text[i][1]:
                status.append("recaption_empty")
            sc = cos[i][0] if i in good and has_text[i][0] else None
            sr = cos[i][1] if i in good and has_text[i][1] else None
            out.append(Score(sc, sr, ",".join(status) or "ok"))
        return out

    def close(self) -> None:
        """Stops the decode threads and tokenizer processes (a Scorer kept for the process needs no close)."""
        self.pool.shutdown(wait=True)
        if self.text_pool is not None:
            self.text_pool.shutdown(wait=True)

    def score(self, pairs: Sequence[Pair]) -> list[Score]:
        """Scores for one batch of pairs."""
        return self.run(self.prepare(pairs))

    def score_batches(self, batches: Iterable[Sequence[Pair]]) -> Iterator[list[Score]]:
        """Scores batch by batch; the next batch is decoded on CPU threads while the model runs."""
        feeder = ThreadPoolExecutor(1, thread_name_prefix="clip-prepare")
        try:
            it = iter(batches)
            first = next(it, None)
            if first is None:
                return
            pending = feeder.submit(self.prepare, first)
            for batch in it:
                ready = pending.result()
                pending = feeder.submit(self.prepare, batch)
                yield self.run(ready)
            yield self.run(pending.result())
        finally:
            feeder.shutdown(wait=True)


_CACHE: dict[ScorerSpec, Scorer] = {}
_LOCK = threading.Lock()


def scorer_for(spec: ScorerSpec) -> Scorer:
    """The Scorer of this process for spec (one model per Python worker, reused across tasks)."""
    with _LOCK:
        if spec not in _CACHE:
            _CACHE[spec] = Scorer(spec)
        return _CACHE[spec]
