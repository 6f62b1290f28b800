"""Export: training shards (WebDataset tar or Parquet) from one consistent snapshot of the lake.

Steps, each a function below:
  snapshot   the Delta version of every table read (pairs, images; duplicates and clip_scores when they
             exist), pinned for the whole export (time travel), so a re-run with the same spec and
             versions writes byte-identical shards
  select     pairs -> the user's predicate -> score threshold -> a non-blank text -> dedup (the lowest
             pair_id of each exact group or near cluster among what is left), counted step by step
  plan       pairs in order, cut into shards of about --shard-size by their estimated bytes: a prefix sum
             by buckets (no single task sees every row), shard = floor(bytes before the pair / shard size).
             --order storage (the default): in the order the images table stores the images (file, row:
             by discipline, then as ingested), the way a bare reader of the files would write them;
             buckets are the table's files. --order pair_id: by pair_id, a sha256 prefix, so every shard
             is a well-mixed sample of the selection; buckets are pair_id prefixes
  write      one task per shard. storage order: only the rows' fields are shuffled; the task reads its
             images straight from the table's Parquet files at the pinned version (the row groups that
             hold them, one at a time), no image byte through the JVM. pair_id order: the chosen rows
             joined with their image bytes, one shuffle by shard; the task spools the image bytes to
             local disk as they come, then writes the shard in pair_id order. Either way the
             shard goes to a spool file, published whole (rename or one S3 object), with a record of
             its size and sha256 under _shards/
  manifest   spec, versions, counts, every shard's name/samples/bytes/sha256 in _manifest.json; _SUCCESS last

A re-run over the same --out resumes: the draft manifest (_manifest.draft.json) pins spec and versions,
shards whose record and bytes agree are kept, only the rest are written.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tarfile
import time
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone

from s1mmalign import delta_io
from s1mmalign.errors import JobError
from s1mmalign.storage import Store, arrow_s3, remote

log = logging.getLogger(__name__)

FORMATS = ("webdataset", "parquet")
DEDUP = ("none", "exact", "near")
TEXTS = ("recaption", "caption", "both")
IMAGES = ("original", "thumbnail")
SCORE_FIELDS = ("caption", "recaption")
ORDERS = ("pair_id", "storage")
EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif"}
LICENSE = "CC BY-NC 4.0"
MANIFEST, DRAFT, SUCCESS, RECORDS = "_manifest.json", "_manifest.draft.json", "_SUCCESS", "_shards"
TAR_OVERHEAD = 3 * (512 + 256) + 700     # per sample: 3 member headers, average padding, the JSON
_SHARD = re.compile(r"^shard-\d{6}\.(tar|parquet)$")
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


@dataclass
class Result:
    samples: int
    shards: int
    written: int           # shards written by this run (the others were kept from an earlier one)
    bytes: int
    seconds: float
    manifest: dict


# ------------------------------------------------------------------------------------------- snapshot

def snapshot(spark, lake: str, spec: Spec, s3=None) -> dict[str, int]:
    """The newest version of every table the export reads."""
    from s1mmalign import schemas

    needed = ["pairs", "images"] + (["duplicates"] if spec.dedup != "none" else [])
    needed += ["clip_scores"] if spec.model else []
    missing = [t for t in needed if not delta_io.exists(spark, lake, t, s3)]
    if missing:
        why = {"duplicates": f"--dedup {spec.dedup} needs the duplicates table",
               "clip_scores": f"--model {spec.model} needs the clip_scores table"}
        first = missing[0]
        raise ExportError(f"lake {lake} has no {first} table: {why.get(first, 'nothing to export')}; "
                          f"run {schemas.producer(first)} first")
    versions = {t: delta_io.version(spark, lake, t) for t in needed}
    for optional in ("duplicates", "clip_scores"):   # the samples' JSON shows groups and scores when there
        if optional not in versions and delta_io.exists(spark, lake, optional, s3):
            versions[optional] = delta_io.version(spark, lake, optional)
    return versions


def _read(spark, lake: str, name: str, versions: dict[str, int]):
    try:
        df = delta_io.read(spark, lake, name, version=versions[name])
        df.schema   # noqa: B018  (resolves the version now)
        return df
    except Exception as exc:
        raise ExportError(f"table {name} at version {versions[name]} cannot be read (vacuumed, or the lake "
                          f"is another one): {_first_line(exc)}") from None


def resolve_model(spark, lake: str, versions: dict[str, int], model: str) -> str:
    """--model as clip_scores names it: an exact model id, or a model name with one checkpoint scored."""
    ids = sorted(r[0] for r in _read(spark, lake, "clip_scores", versions).select("model").distinct().collect())
    if model in ids:
        return model
    named = [i for i in ids if i.split("@", 1)[0] == model]
    if len(named) == 1:
        return named[0]
    if named:
        raise ExportError(f"--model {model}: scores of {len(named)} checkpoints ({', '.join(named)}); name one")
    raise ExportError(f"--model {model} has no scores in clip_scores (scored: {', '.join(ids) or 'none'}); "
                      f"run jobs/score_clip.py --model {model} first")


# --------------------------------------------------------------------------------------------- select

def candidates(spark, lake: str, spec: Spec, versions: dict[str, int]):
    """Every pair with what the filters and the samples need: its model's scores (score_caption,
    score_recaption, score_status when --model), all models' scores, duplicate groups."""
    from pyspark.sql import functions as F

    df = _read(spark, lake, "pairs", versions).drop("row_hash", "ingest_run_id", "ingested_at")
    clip_scores = _read(spark, lake, "clip_scores", versions) if "clip_scores" in versions else None
    if spec.model:
        mine = (clip_scores.where(F.col("model") == spec.model)
                .select("pair_id", "score_caption", "score_recaption", F.col("status").alias("score_status")))
        df = df.join(mine, "pair_id", "left")
    if clip_scores is not None:
        scores = (clip_scores.where(F.col("model") == spec.model if spec.model else F.lit(True))
                  .groupBy("pair_id").agg(F.array_sort(F.collect_list(F.struct(
                      "model", "score_caption", "score_recaption", "status"))).alias("scores")))
        df = df.join(scores, "pair_id", "left")
    else:
        df = df.withColumn("scores", F.lit(None).cast(
            "array<struct<model:string,score_caption:double,score_recaption:double,status:string>>"))
    if "duplicates" in versions:
        dup = _read(spark, lake, "duplicates", versions)
        for kind in ("exact", "near"):
            df = df.join(dup.where(F.col("group_kind") == kind)
                         .select("pair_id", F.col("group_id").alias(f"{kind}_group")), "pair_id", "left")
    else:
        df = (df.withColumn("exact_group", F.lit(None).cast("string"))
              .withColumn("near_group", F.lit(None).cast("string")))
    return df


# What a --where may not use: it is an expression over the selection's columns, evaluated the same way on
# every run (--from-manifest and resume rely on it), that reads nothing else and runs no code of its own.
_SUBQUERY_NODES = {"Exists", "ListQuery", "UnresolvedRelation", "UnresolvedTableValuedFunction", "UnresolvedStar"}
_REFUSED_FUNCTIONS = {
    "java_method", "reflect", "try_reflect",                                        # calls into the JVM
    "raise_error", "assert_true",                                                    # fail the job on purpose
    "rand", "randn", "random", "uuid", "shuffle", "randstr", "uniform",              # another answer each run
    "current_date", "current_timestamp", "now", "localtimestamp", "curdate", "current_timezone", "current_user",
    "user", "session_user", "current_catalog", "current_database", "current_schema", "version",
    "input_file_name", "input_file_block_start", "input_file_block_length", "spark_partition_id",
    "monotonically_increasing_id",
}


MAX_WHERE_CHARS, MAX_WHERE_NODES = 100_000, 20_000


def check_where(spark, where: str) -> None:
    """ExportError (one line) unless `where` parses as one Spark SQL expression that reads no table (no
    subquery, no table function) and calls no reflective, time- or run-dependent function; whether its
    columns exist and it is deterministic is checked against the selection (_predicate)."""
    if len(where) > MAX_WHERE_CHARS:
        raise ExportError(f"--where of {len(where)} characters: at most {MAX_WHERE_CHARS}")
    try:
        root = spark._jsparkSession.sessionState().sqlParser().parseExpression(where)
    except Exception as exc:
        raise ExportError(f"--where {where[:200]!r}: {_first_line(exc) or 'not one SQL expression'}") from None
    stack, seen = [root], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_WHERE_NODES:
            raise ExportError(f"--where {where[:200]!r}: over {MAX_WHERE_NODES} terms; say it shorter")
        kind = node.getClass().getSimpleName()
        if kind in _SUBQUERY_NODES or kind.endswith("Subquery"):     # Scalar-, In-, LateralSubquery
            raise ExportError(f"--where {where[:200]!r}: a subquery or table reference ({kind}) is not allowed: the "
                              f"condition is an expression over the selection's columns")
        if kind == "UnresolvedFunction":
            parts = node.nameParts()
            name = ".".join(parts.apply(i) for i in range(parts.size()))
            if parts.size() != 1 or name.lower() in _REFUSED_FUNCTIONS or (
                    name.lower() == "unix_timestamp" and node.arguments().size() == 0):
                raise ExportError(f"--where {where[:200]!r}: function {name} is not allowed (the condition must give "
                                  f"the same answer on every run and read nothing but the selection's columns)")
        children = node.children()
        stack += [children.apply(i) for i in range(children.size())]


def _predicate(df, where: str):
    """The user's predicate as a Column, checked against df now (one line, before any work)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import BooleanType

    check_where(df.sparkSession, where)
    try:
        cond = F.expr(where)
        checked = df.select(cond.alias("_w"))
        kind = checked.schema[0].dataType
        deterministic = checked._jdf.queryExecution().analyzed().expressions().apply(0).deterministic()
    except Exception as exc:
        raise ExportError(f"--where {where!r}: {_first_line(exc)}") from None
    if not isinstance(kind, BooleanType):
        raise ExportError(f"--where {where!r} is a {kind.simpleString()}, not a condition")
    if not deterministic:
        raise ExportError(f"--where {where!r} is not deterministic: an export must select the same pairs on every run")
    return cond


def _blank(col):
    from pyspark.sql import functions as F

    return col.isNull() | (F.trim(col) == "")


def select(df, spec: Spec):
    """Every candidate with the step flags `_ok_where`, `_ok_score`, `_ok_text` (each including the ones
    before) and `_keep` (passed every step and first of its duplicate group)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    ok_where = F.coalesce(_predicate(df, spec.where), F.lit(False)) if spec.where else F.lit(True)
    ok_score = (F.coalesce(F.col(f"score_{spec.score_field}") >= F.lit(spec.min_score), F.lit(False))
                if spec.min_score is not None else F.lit(True))
    if spec.text == "both":
        ok_text = ~(_blank(F.col("caption")) & _blank(F.col("recaption")))
    else:
        ok_text = ~_blank(F.col(spec.text))
    df = (df.withColumn("_ok_where", ok_where).withColumn("_ok_score", ok_where & ok_score)
          .withColumn("_ok_text", F.col("_ok_score") & ok_text))
    if spec.dedup == "none":
        return df.withColumn("_keep", F.col("_ok_text"))
    group = (F.coalesce("exact_group", "pair_id") if spec.dedup == "exact"
             else F.coalesce(F.concat(F.lit("near:"), "near_group"), F.concat(F.lit("exact:"), "exact_group"),
                             "pair_id"))
    first = F.row_number().over(Window.partitionBy("_group").orderBy("pair_id"))
    passed = df.where("_ok_text").withColumn("_group", group).withColumn("_keep", first == 1).drop("_group")
    failed = df.where("NOT _ok_text").withColumn("_keep", F.lit(False))
    return passed.unionByName(failed)


def counts(selected) -> dict:
    """Pairs read and kept by each step, and the kept ones per discipline and source (one Spark job)."""
    from pyspark.sql import functions as F

    flags = ("_ok_where", "_ok_score", "_ok_text", "_keep")
    rows = selected.groupBy("discipline", "source").agg(
        F.count("*").alias("pairs"), *(F.sum(F.col(f).cast("long")).alias(f) for f in flags)).collect()
    names = {"pairs": "pairs", "_ok_where": "where", "_ok_score": "min_score", "_ok_text": "text", "_keep": "dedup"}
    steps = {step: sum(int(r[col] or 0) for r in rows) for col, step in names.items()}
    by_discipline: dict[str, int] = {}
    by_source: dict[str, int] = {}
    for r in rows:
        if r["_keep"]:
            by_discipline[r["discipline"]] = by_discipline.get(r["discipline"], 0) + int(r["_keep"])
            by_source[r["source"]] = by_source.get(r["source"], 0) + int(r["_keep"])
    return {"steps": steps, "by_discipline": dict(sorted(by_discipline.items())),
            "by_source": dict(sorted(by_source.items()))}


# ----------------------------------------------------------------------------------------------- plan

def _locations(spark, images):
    """Where each image's row is in the images table's files at the pinned version: (file URI, row in that
    file), the first when a sha256 has several rows. The snapshot's files read as plain Parquet (Delta does
    not expose a row index), key columns only: no image bytes (check_storage_order says when they can be)."""
    from pyspark.sql import functions as F

    files = images.inputFiles()
    if not files:
        return spark.createDataFrame([], "image_sha256 string, _file string, _row long")
    loc = F.struct(F.col("_metadata.file_path").alias("_file"), F.col("_metadata.row_index").alias("_row"))
    return (spark.read.parquet(*files).select("image_sha256", loc.alias("_loc")).groupBy("image_sha256")
            .agg(F.min("_loc").alias("_loc")).select("image_sha256", "_loc._file", "_loc._row"))


def check_storage_order(spark, lake: str) -> None:
    """ExportError unless the images table's files can be read as plain Parquet: no deletion vectors (rows
    a file holds but Delta hides), no column mapping (other names in the files). Ours are made without."""
    have = delta_io.properties(spark, delta_io.table_path(lake, "images"))
    props = {k.lower(): str(v).lower() for k, v in have.items()}
    if props.get("delta.enabledeletionvectors") == "true" or props.get("delta.columnmapping.mode", "none") != "none":
        raise ExportError("--order storage reads the images table's files directly, which needs a table without "
                          "deletion vectors and column mapping; this one has them: use --order pair_id")


def plan(spark, chosen, images, spec: Spec):
    """chosen (the kept pairs) with `shard` and `_est` (estimated bytes in a shard), plus `_file` and `_row`
    (where the image is) in storage order, and the shards as [(index, samples)] in order."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    text_cols = ["caption", "recaption"] if spec.text == "both" else [spec.text]
    text_bytes = sum((F.coalesce(F.octet_length(c), F.lit(0)) for c in text_cols), F.lit(0))
    if spec.image == "original":
        img_bytes = F.col("image_bytes")
    else:
        sizes = images.select("image_sha256", F.octet_length("thumbnail").alias("_thumb_bytes"))
        chosen = chosen.join(sizes, "image_sha256", "left")
        img_bytes = F.coalesce(F.col("_thumb_bytes"), F.lit(0))
    chosen = chosen.withColumn("_est", (img_bytes + text_bytes + F.lit(TAR_OVERHEAD)).cast("long"))
    if spec.order == "storage":
        # a pair whose image has no row gets file '' (first): its shard task finds no image and comes up short
        chosen = (chosen.join(_locations(spark, images), "image_sha256", "left")
                  .withColumn("_file", F.coalesce("_file", F.lit(""))).withColumn("_bucket", F.col("_file")))
        within = ("_row", "pair_id")
    else:
        chosen = chosen.withColumn("_bucket", F.substring("pair_id", 1, 3))
        within = ("pair_id",)
    sums = chosen.groupBy("_bucket").agg(F.sum("_est").alias("_b")).collect()
    offsets, total = [], 0
    for row in sorted(sums, key=lambda r: r["_bucket"]):
        offsets.append((row["_bucket"], total))
        total += row["_b"]
    if not offsets:
        return chosen.withColumn("shard", F.lit(0).cast("long")), []
    offset_df = spark.createDataFrame(offsets, "_bucket string, _offset long")
    before = F.coalesce(F.sum("_est").over(Window.partitionBy("_bucket").orderBy(*within)
                                           .rowsBetween(Window.unboundedPreceding, -1)), F.lit(0))
    planned = (chosen.join(F.broadcast(offset_df), "_bucket")
               .withColumn("shard", F.floor((F.col("_offset") + before) / F.lit(spec.shard_bytes)).cast("long"))
               .drop("_bucket", "_offset")).localCheckpoint()
    shards = [(r[0], r[1]) for r in planned.groupBy("shard").count().orderBy("shard").collect()]
    return planned, shards


def shard_name(index: int, spec: Spec) -> str:
    return f"shard-{index:06d}.{spec.suffix}"


# ---------------------------------------------------------------------------------------------- write

@dataclass(frozen=True)
class Writer:
    """What a shard task needs (pickled into the tasks)."""
    out: Store
    spec: Spec
    row_group_bytes: int

    def sample(self, r: dict) -> tuple[str, dict]:
        """(key, the sample's JSON fields) for row r."""
        meta = {
            "key": r["pair_id"], "pair_id": r["pair_id"], "source": r["source"], "source_file": r["source_file"],
            "source_line": r["source_line"], "arxiv_id": r["arxiv_id"], "discipline": r["discipline"],
            "title": r["title"], "caption_chars": len(r["caption"] or ""),
            "recaption_chars": len(r["recaption"] or ""), "text": self.spec.text,
            "image": self.spec.image, "image_format": r["image_format"],
            "image_sha256": r["image_sha256"], "width": r["width"], "height": r["height"],
            "scores": [dict(s) for s in (r["scores"] or [])],
            "duplicates": {"exact": r["exact_group"], "near": r["near_group"]},
            "license": LICENSE,
        }
        return r["pair_id"], meta

    def texts(self, r: dict) -> dict[str, str]:
        if self.spec.text == "both":
            return {"caption.txt": r["caption"] or "", "recaption.txt": r["recaption"] or ""}
        return {"txt": r[self.spec.text] or ""}

    def ext(self, r: dict) -> str:
        return "jpg" if self.spec.image == "thumbnail" else EXTENSIONS.get(r["image_format"], r["image_format"].lower())

    def write(self, index: int, rows) -> dict:
        """Write shard `index` from rows (dicts in pair_id order): spool, hash, publish, record."""
        name = shard_name(index, self.spec)
        local = self.out.spool(name)
        digest = hashlib.sha256()
        with open(local, "wb") as raw:
            sink = _Hashing(raw, digest)
            samples = (self._tar if self.spec.format == "webdataset" else self._parquet)(sink, rows)
        size = sink.size
        self.out.put_file(name, local)
        record = {"name": name, "samples": samples, "bytes": size, "sha256": digest.hexdigest()}
        self.out.put(f"{RECORDS}/{name}.json", json.dumps(record, sort_keys=True).encode())
        return record

    def _tar(self, sink, rows) -> int:
        samples = 0
        with tarfile.open(fileobj=sink, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for r in rows:
                key, meta = self.sample(r)
                _member(tar, f"{key}.{self.ext(r)}", r["image"])
                for ext, text in self.texts(r).items():
                    _member(tar, f"{key}.{ext}", text.encode("utf-8"))
                _member(tar, f"{key}.json", json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8"))
                samples += 1
        return samples

    def _parquet(self, sink, rows) -> int:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = parquet_schema(self.spec)
        binary = ["image"]
        writer = pq.ParquetWriter(sink, schema,
                                  compression={n: ("none" if n in binary else "zstd") for n in schema.names},
                                  use_dictionary=[n for n in schema.names if n not in binary],
                                  write_statistics=[n for n in schema.names if n not in binary])
        buffer, held, samples = [], 0, 0
        try:
            for r in rows:
                key, meta = self.sample(r)
                row = {"key": key, "image": r["image"], "image_ext": self.ext(r), "pair_id": r["pair_id"],
                       "discipline": r["discipline"], "arxiv_id": r["arxiv_id"], "source": r["source"],
                       "json": json.dumps(meta, sort_keys=True, ensure_ascii=False)}
                row.update({k.removesuffix(".txt"): v for k, v in self.texts(r).items()})
                buffer.append(row)
                held += len(r["image"]) + len(row["json"])
                samples += 1
                if held >= self.row_group_bytes:
                    writer.write_table(pa.Table.from_pylist(buffer, schema), row_group_size=len(buffer))
                    buffer, held = [], 0
            if buffer:
                writer.write_table(pa.Table.from_pylist(buffer, schema), row_group_size=len(buffer))
        finally:
            writer.close()
        return samples


def parquet_schema(spec: Spec):
    import pyarrow as pa

    texts = [("caption", pa.string()), ("recaption", pa.string())] if spec.text == "both" else [("txt", pa.string())]
    return pa.schema([("key", pa.string()), ("image", pa.binary()), ("image_ext", pa.string()), *texts,
                      ("pair_id", pa.string()), ("discipline", pa.string()), ("arxiv_id", pa.string()),
                      ("source", pa.string()), ("json", pa.string())])


class _Hashing(io.RawIOBase):
    """A write-only file that hashes and counts what passes through to `raw`."""

    def __init__(self, raw, digest):
        self.raw, self.digest, self.size = raw, digest, 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def tell(self) -> int:
        return self.size


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o444, "", ""
    tar.addfile(info, io.BytesIO(data))


META = ("pair_id", "source", "source_file", "source_line", "arxiv_id", "discipline", "title", "caption",
        "recaption", "image_sha256", "image_format", "width", "height", "scores", "exact_group", "near_group")


RECORD_SCHEMA = "name string, samples long, bytes long, sha256 string"     # what a shard task returns


def _record_schema():
    """RECORD_SCHEMA as pyarrow writes it in the tasks."""
    import pyarrow as pa

    return pa.schema([("name", pa.string()), ("samples", pa.int64()), ("bytes", pa.int64()), ("sha256", pa.string())])


def _partition_keys(spark, n: int) -> dict[int, int]:
    """For each partition 0..n-1, a long whose Spark hash lands in it: shard i keyed by keys[i] goes to
    partition i, one shard per task (hash partitioning of the shard number itself would put several in
    one task and leave others empty)."""
    from pyspark.sql import functions as F

    found = (spark.range(0, 64 * n).select("id", F.expr(f"pmod(hash(id), {n})").alias("p"))
             .groupBy("p").agg(F.min("id").alias("id")).collect())
    keys = {r["p"]: r["id"] for r in found}
    if len(keys) < n:
        raise RuntimeError(f"no hash preimage for {n - len(keys)} of {n} partitions")
    return keys


def _write(spark, cfg, store: Store, spec: Spec, chosen, images, shards: list[tuple[int, int]],
           todo: list[int]):
    """Write the shards `todo`; their records.

    Storage order: the rows' fields alone are shuffled to one task per shard, which reads the images from
    the table's files itself (storage_task). pair_id order: image bytes cross the network once: images are
    joined with the pairs' (image_sha256, pair_id, shard) keys (broadcast when small), the pairs' other
    fields travel as their own rows beside them (a union, not a second join), one shuffle brings each
    shard's rows to its own task (shard_task orders them).
    """
    from pyspark.sql import functions as F

    ecfg = cfg.export
    chosen = chosen.where(F.col("shard").isin(todo))
    content = "content" if spec.image == "original" else "thumbnail"
    part = _partition_keys(spark, len(todo))
    routes = spark.createDataFrame([(shard, part[i]) for i, shard in enumerate(todo)], "shard long, _route long")
    writer = Writer(store, spec, ecfg.row_group_bytes)
    if spec.order == "storage":
        rows = (chosen.select("shard", *META, "_file", "_row").join(F.broadcast(routes), "shard")
                .repartition(len(todo), "_route").drop("_route"))
        return rows.mapInArrow(storage_task(writer, content, cfg.s3), RECORD_SCHEMA).collect()
    keys = chosen.select("image_sha256", "pair_id", "shard")
    wanted = set(todo)
    if sum(n for i, n in shards if i in wanted) <= ecfg.broadcast_pairs:
        keys = F.broadcast(keys)
    blobs = (images.select("image_sha256", F.col(content).alias("image")).join(keys, "image_sha256")
             .select("shard", "pair_id", F.lit(1).alias("_part"), "image"))
    metas = chosen.select("shard", *META, F.lit(0).alias("_part"))
    rows = (metas.unionByName(blobs, allowMissingColumns=True).join(F.broadcast(routes), "shard")
            .repartition(len(todo), "_route").drop("_route"))
    conf = spark.conf
    saved = {k: conf.get(k, None) for k in _BATCH_CONF}
    conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(ecfg.batch_rows))
    conf.set("spark.sql.execution.arrow.maxBytesPerBatch", str(ecfg.batch_bytes))
    try:
        return rows.mapInArrow(shard_task(writer), RECORD_SCHEMA).collect()
    finally:
        for k, v in saved.items():
            conf.unset(k) if v is None else conf.set(k, v)


def shard_task(writer: Writer):
    """The mapInArrow function over one partition = one shard (routing keys guarantee it), its rows in
    any order: the pairs' fields are kept, the image bytes go to a local spool file as they come (no sort
    in the JVM, no image held in memory), then the shard is written in pair_id order from the two. A pair
    whose image row is missing (its image is not in the table) is left out, and the shard comes up short."""
    import pyarrow as pa

    out_schema = _record_schema()

    def run(batches):
        import tempfile

        fields_of: dict[str, dict] = {}
        where: dict[str, tuple[int, int]] = {}
        shard = None
        with tempfile.TemporaryFile(prefix="s1mmalign-export-") as spool:
            for batch in batches:
                kinds = batch.column("_part").to_pylist()
                if 0 in kinds:
                    for r, kind in zip(batch.drop_columns(["image"]).to_pylist(), kinds, strict=True):
                        if kind == 0:
                            fields_of[r["pair_id"]] = r
                            shard = r["shard"]
                if 1 in kinds:
                    ids, images = batch.column("pair_id"), batch.column("image")
                    for i, kind in enumerate(kinds):
                        if kind == 1:
                            data = images[i].as_buffer()
                            where[ids[i].as_py()] = (spool.tell(), data.size)
                            spool.write(data)
            if shard is None:
                return

            def rows():
                for pair_id in sorted(fields_of):
                    if pair_id in where:
                        offset, size = where[pair_id]
                        spool.seek(offset)
                        yield {**fields_of[pair_id], "image": spool.read(size)}

            yield pa.RecordBatch.from_pylist([writer.write(shard, rows())], schema=out_schema)
    return run


def storage_task(writer: Writer, column: str, s3):
    """The mapInArrow function of storage order over one partition = one shard: its rows' fields (small)
    sorted by (file, row, pair_id), then each file's needed row groups read with pyarrow, one at a time,
    only `column`, and the shard written as they come. A pair whose image has no row is left out (the
    shard comes up short, as in pair_id order)."""
    import itertools

    import pyarrow as pa

    out_schema = _record_schema()

    def run(batches):
        metas = [r for batch in batches for r in batch.to_pylist()]
        if not metas:
            return
        metas.sort(key=lambda r: (r["_file"], r["_row"] if r["_row"] is not None else -1, r["pair_id"]))

        def rows():
            for file, group in itertools.groupby(metas, key=lambda r: r["_file"]):
                if file:
                    yield from _rows_of_file(file, column, list(group), s3)

        yield pa.RecordBatch.from_pylist([writer.write(metas[0]["shard"], rows())], schema=out_schema)
    return run


def _rows_of_file(uri: str, column: str, metas: list[dict], s3):
    """metas (sorted by row) with their image bytes from `column` of the Parquet file at uri."""
    import bisect
    import itertools

    import pyarrow.parquet as pq

    with _open_parquet(uri, s3) as source:
        pf = pq.ParquetFile(source)
        starts = list(itertools.accumulate((pf.metadata.row_group(g).num_rows
                                            for g in range(pf.metadata.num_row_groups)), initial=0))
        for group, in_group in itertools.groupby(metas, key=lambda r: bisect.bisect_right(starts, r["_row"]) - 1):
            values = pf.read_row_group(group, columns=[column]).column(0)
            for r in in_group:
                yield {**r, "image": values[r["_row"] - starts[group]].as_py()}


def _open_parquet(uri: str, s3):
    """A file pyarrow reads: a Delta data file named as Spark names it (file:/..., s3a://bucket/key)."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return open(unquote(parsed.path), "rb")
    if parsed.scheme in ("s3", "s3a", "s3n"):
        return arrow_s3(s3.endpoint_url, s3.region, s3.path_style_access).open_input_file(
            f"{parsed.netloc}/{unquote(parsed.path.lstrip('/'))}")
    raise ExportError(f"images file {uri}: no reader for its scheme {parsed.scheme}")


# -------------------------------------------------------------------------------------------- the run

def _first_line(exc: BaseException) -> str:
    """Spark's message for a bad predicate or table, in one line (its first)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:500]


def _load_json(store: Store, rel: str) -> dict | None:
    """A small JSON object the export wrote, or None when absent, torn or not an object (a shard record
    torn by a crash is rewritten with its shard; a torn draft reads as another export's)."""
    got = store.get(rel)
    try:
        data = json.loads(got[0]) if got else None
    except (ValueError, RecursionError):
        log.warning("export: %s is not JSON (torn by a crash?): ignored", rel)
        return None
    return data if isinstance(data, dict) else None


def check_out(store: Store, spec: Spec, lake: str) -> dict | None:
    """What --out holds: None (empty), or the draft to resume; ExportError when it holds anything else.
    Spool files of shards whose task died are removed."""
    dirs, files = store.list_dir("")
    ours = {MANIFEST, DRAFT, SUCCESS}
    strangers = [f.rel for f in files if f.rel not in ours and not _SHARD.match(f.rel) and ".tmp" not in f.rel]
    strangers += [d for d in dirs if d != RECORDS]
    if strangers:
        raise ExportError(f"--out {store.uri} holds files that are not an export's ({', '.join(sorted(strangers)[:3])}"
                          f"...): choose an empty folder")
    names = {f.rel for f in files}
    held = None
    for rel in (MANIFEST, DRAFT) if SUCCESS in names else (DRAFT,):
        if rel in names:
            held = _load_json(store, rel)
            if held is None or held.get("spec") != spec.as_dict() or held.get("lake") != lake:
                what = "a complete" if SUCCESS in names else "an unfinished"
                raise ExportError(f"--out {store.uri} holds {what} export of another spec or lake: "
                                  f"choose another folder (or remove it)")
            break
    for name in names:
        if ".tmp" in name:
            store.delete(name)
    return held


def kept_shards(store: Store, draft: dict) -> dict[str, dict]:
    """Shards of the draft's plan already written whole: record present, bytes and sha256 agree."""
    planned = {s["name"]: s["samples"] for s in draft["shards"]}
    _, files = store.list_dir("")
    present = {f.rel: f.size for f in files}
    kept = {}
    for rec_file in store.list_dir(RECORDS)[1]:
        rec = _load_json(store, f"{RECORDS}/{rec_file.rel.rsplit('/', 1)[-1]}")
        name = rec and rec.get("name")
        if not name or planned.get(name) != rec.get("samples") or present.get(name) != rec.get("bytes"):
            continue
        digest = hashlib.sha256()
        with store.open(name) as fh:
            for block in iter(lambda: fh.read(8 << 20), b""):
                digest.update(block)
        if digest.hexdigest() == rec.get("sha256"):
            kept[name] = rec
    return kept


def run(spark, cfg, lake: str, out: str, spec: Spec, *, model_name: str | None = None,
        versions: dict[str, int] | None = None) -> Result:
    """Export the pairs `spec` selects from `lake` into `out` (a folder or s3://); see the module doc.

    model_name: --model as given (resolved here to a model id); versions: pinned table versions
    (--from-manifest), else the newest (or a resumed draft's)."""
    started = time.monotonic()
    if not remote(out):
        os.makedirs(out, exist_ok=True)
    store = Store.from_uri(out, cfg.s3.endpoint_url, cfg.s3.region)
    if versions is None:
        versions = snapshot(spark, lake, spec if not model_name else _with_model(spec, model_name), cfg.s3)
    if model_name:
        spec = _with_model(spec, resolve_model(spark, lake, versions, model_name))
    spec.check()
    held = check_out(store, spec, lake)
    if held and held.get("complete"):
        log.info("export: %s already holds this export, complete", out)
        m = held
        return Result(m["samples"], len(m["shards"]), 0, m["bytes"], time.monotonic() - started, m)
    if held:
        versions = held["versions"]
        log.info("export: resuming the unfinished export in %s (versions %s)", out, versions)

    if spec.order == "storage":
        check_storage_order(spark, lake)
    df = candidates(spark, lake, spec, versions)
    selected = select(df, spec).localCheckpoint()
    tally = counts(selected)
    images = _read(spark, lake, "images", versions)
    chosen, shards = plan(spark, selected.where("_keep").drop("_ok_where", "_ok_score", "_ok_text", "_keep"),
                          images, spec)
    if not shards:
        steps = tally["steps"]
        raise ExportError(f"the selection is empty ({steps['pairs']} pairs; where kept {steps['where']}, score "
                          f"{steps['min_score']}, text {steps['text']}, dedup {steps['dedup']}): nothing written")
    warnings = _warnings(spark, lake, versions, spec)
    draft = {"lake": lake, "spec": spec.as_dict(), "versions": versions,
             "shards": [{"name": shard_name(i, spec), "samples": n} for i, n in shards]}
    if held and held["shards"] != draft["shards"]:
        raise ExportError(f"--out {out}: the unfinished export's plan differs from this run's over the same "
                          f"versions (was the lake rewritten?): remove {out} and export again")
    store.put(DRAFT, json.dumps(draft, indent=1, sort_keys=True).encode())
    kept = kept_shards(store, draft) if held else {}
    todo = [i for i, _ in shards if shard_name(i, spec) not in kept]
    log.info("export: %d pairs in %d shards (%d kept from an earlier run); versions %s",
             tally["steps"]["dedup"], len(shards), len(kept), versions)

    records = dict(kept)
    if todo:
        for r in _write(spark, cfg, store, spec, chosen, images, shards, todo):
            records[r["name"]] = r.asDict()
    planned = {shard_name(i, spec): n for i, n in shards}
    short = [n for n in planned if records.get(n, {}).get("samples") != planned[n]]
    if short:
        raise ExportError(f"shard(s) {', '.join(short[:3])} hold fewer samples than planned: pairs whose image "
                          f"is not in images at version {versions['images']} (run jobs/validate.py)")

    shard_list = [records[n] for n in sorted(planned)]
    manifest = {
        "complete": True, "lake": lake, "spec": spec.as_dict(), "versions": versions,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "license": LICENSE,
        "samples": sum(s["samples"] for s in shard_list), "bytes": sum(s["bytes"] for s in shard_list),
        "selection": tally["steps"], "by_discipline": tally["by_discipline"], "by_source": tally["by_source"],
        "warnings": warnings, "shards": [{k: s[k] for k in ("name", "samples", "bytes", "sha256")} for s in shard_list],
    }
    store.put(MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
    store.put(SUCCESS, b"")
    store.delete(DRAFT)
    store.remove_tree(RECORDS)
    return Result(manifest["samples"], len(shard_list), len(todo), manifest["bytes"],
                  time.monotonic() - started, manifest)


_BATCH_CONF = ("spark.sql.execution.arrow.maxRecordsPerBatch", "spark.sql.execution.arrow.maxBytesPerBatch")


def _with_model(spec: Spec, model: str) -> Spec:
    from dataclasses import replace

    return replace(spec, model=model)


def _warnings(spark, lake: str, versions: dict[str, int], spec: Spec) -> list[str]:
    """Things a reader of the manifest should know: duplicates computed before the newest pairs."""
    from delta.tables import DeltaTable

    if spec.dedup == "none" or "duplicates" not in versions:
        return []

    def when(name):
        hist = DeltaTable.forPath(spark, delta_io.table_path(lake, name)).history()
        return hist.where(f"version = {versions[name]}").select("timestamp").first()[0]

    if when("pairs") > when("duplicates"):
        line = ("pairs changed after the duplicates table was computed: pairs ingested since are not "
                "deduplicated (run jobs/validate.py first)")
        log.warning("export: %s", line)
        return [line]
    return []
