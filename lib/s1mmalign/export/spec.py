"""What an export selects and writes: the Spec (the manifest's "spec"), built from the export conf section,
whose fields are also jobs/export.py's flags; its checks, and the shard size's parser."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields

from s1mmalign.config import CHOICES, ExportConf
from s1mmalign.errors import JobError

# the values each choice takes: config's, where the flags' defaults live too
FORMATS, DEDUP, TEXTS = CHOICES["export.format"], CHOICES["export.dedup"], CHOICES["export.text"]
IMAGES, SCORE_FIELDS, ORDERS = CHOICES["export.image"], CHOICES["export.score_field"], CHOICES["export.order"]
EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif"}
LICENSE = "CC BY-NC 4.0"
TAR_OVERHEAD = 3 * (512 + 256) + 700     # per sample: 3 member headers, average padding, the JSON
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*$", re.IGNORECASE)


class ExportError(JobError):
    """An export that cannot run as asked (bad predicate, missing model or table, foreign --out)."""


MIN_SHARD, MAX_SHARD = 1024, 1 << 40           # 1 KiB .. 1 TiB a shard


def parse_size(text: str) -> int:
    """'512MB' -> 512_000_000, '1GiB' -> 2**30, '4096' -> 4096 bytes."""
    m = _SIZE.match(str(text)[:100])
    if not m:
        raise ExportError(f"--shard-size {str(text)[:40]!r}: use a size such as 512MB, 1GiB or a number of bytes")
    power = "KMGT".find(m.group(2).upper()) + 1 if m.group(2) else 0
    size = float(m.group(1)) * (1024 if m.group(3) else 1000) ** power
    if not MIN_SHARD <= size <= MAX_SHARD:       # before int(): 400 digits are inf here, refused, no overflow
        raise ExportError(f"--shard-size {str(text)[:40]!r}: between 1 KiB and 1 TiB")
    return int(size)


@dataclass(frozen=True)
class Spec:
    """What an export selects and writes: the manifest's "spec"; equal specs over equal versions give
    the same shards."""
    where: str | None = None
    dedup: str = "none"
    model: str | None = None            # a model id as clip_scores holds it (resolved from --model)
    min_score: float | None = None
    score_field: str = "recaption"
    text: str = "recaption"
    format: str = "webdataset"
    shard_bytes: int = 512_000_000
    image: str = "original"
    order: str = "storage"              # storage: as the images table stores them (fast); pair_id: well mixed
    boilerplate_papers: int = 3         # what --where's `boilerplate` means (text.boilerplate_papers when it ran)

    @classmethod
    def of(cls, conf: ExportConf, boilerplate_papers: int = 3) -> "Spec":
        """The spec the export conf section asks for (jobs/export.py's flags are overrides of it); its model
        stays a name until the export resolves it (conf.model)."""
        field = conf.score_field or ("recaption" if conf.text == "recaption" else "caption")
        return cls(where=conf.where, dedup=conf.dedup, min_score=conf.min_score, score_field=field, text=conf.text,
                   format=conf.format, shard_bytes=parse_size(conf.shard_size), image=conf.image, order=conf.order,
                   boilerplate_papers=boilerplate_papers)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Spec":
        known = {f.name for f in fields(cls)}
        # a manifest written before --order existed holds pair_id-ordered shards
        return cls(**{"order": "pair_id", **{k: v for k, v in data.items() if k in known}})

    def check(self, model_name: str | None = None) -> None:
        """ExportError for a value no flag takes, or a score threshold without a model (model_name: --model
        as given, before it is resolved into `model`)."""
        for name, allowed in (("dedup", DEDUP), ("text", TEXTS), ("format", FORMATS), ("image", IMAGES),
                              ("score_field", SCORE_FIELDS), ("order", ORDERS)):
            if getattr(self, name) not in allowed:
                raise ExportError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}")
        if self.min_score is not None and not (self.model or model_name):
            raise ExportError("--min-score needs --model (whose scores to compare)")
        # the same rules whether a value came from a flag or a manifest (a hand-edited one included)
        for name in ("where", "model"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ExportError(f"--{name} must be text, got {getattr(self, name)!r}")
        if not isinstance(self.shard_bytes, int) or not MIN_SHARD <= self.shard_bytes <= MAX_SHARD:
            raise ExportError(f"shard size must be a whole number of bytes between {MIN_SHARD} and {MAX_SHARD}, "
                              f"got {self.shard_bytes!r}")
        if self.min_score is not None and (isinstance(self.min_score, bool) or not isinstance(
                self.min_score, (int, float)) or not -1.0 <= self.min_score <= 1.0):
            raise ExportError(f"--min-score must be a number between -1 and 1 (a cosine similarity), "
                              f"got {self.min_score!r}")

    @property
    def suffix(self) -> str:
        return "tar" if self.format == "webdataset" else "parquet"
