"""Export's fourth step: one task per shard. Storage order: only the rows' fields are shuffled; the task reads
its images straight from the images table's Parquet files at the pinned version (the row groups that hold
them, one at a time: lake/image_files.py), no image byte through the JVM. pair_id order: the chosen rows
joined with their image bytes, one shuffle by shard; the task spools the image bytes to local disk as they
come, then writes the shard in pair_id order. Either way the shard goes to a spool file, published whole
(rename or one S3 object), with a record of its size and sha256 under _shards/ (manifest.RECORDS)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass

from s1mmalign.export import manifest
from s1mmalign.export.plan import shard_name
from s1mmalign.export.spec import EXTENSIONS, LICENSE, Spec
from s1mmalign.lake import image_files
from s1mmalign.lake.storage import Store


@dataclass(frozen=True)
class Writer:
    """Writes one shard: the samples' fields (`sample`, `texts`, `ext`) the same in every format; each
    format a subclass (TarWriter, ParquetWriter) with its own `_write`. Pickled into the shard tasks."""
    out: Store
    spec: Spec
    row_group_bytes: int

    @staticmethod
    def of(out: Store, spec: Spec, row_group_bytes: int) -> "Writer":
        """The writer of spec.format."""
        return (TarWriter if spec.format == "webdataset" else ParquetWriter)(out, spec, row_group_bytes)

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
            samples = self._write(sink, rows)
        size = sink.size
        self.out.put_file(name, local)
        record = {"name": name, "samples": samples, "bytes": size, "sha256": digest.hexdigest()}
        self.out.put(f"{manifest.RECORDS}/{name}.json", json.dumps(record, sort_keys=True).encode())
        return record

    def _write(self, sink, rows) -> int:
        """Write the shard's samples from rows to sink; how many."""
        raise NotImplementedError


class TarWriter(Writer):
    """WebDataset: a ustar archive, per sample its image, text(s) and JSON as members of one key."""

    def _write(self, sink, rows) -> int:
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

class ParquetWriter(Writer):
    """Parquet: one row per sample (key, image bytes, text(s), ids, JSON), row groups of about
    row_group_bytes; the image column neither compressed nor dictionary-encoded."""

    def _write(self, sink, rows) -> int:
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


def write_shards(spark, cfg, store: Store, spec: Spec, chosen, images, shards: list[tuple[int, int]],
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
    writer = Writer.of(store, spec, ecfg.row_group_bytes)
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
                    yield from image_files.rows_of_file(file, column, list(group), s3)

        yield pa.RecordBatch.from_pylist([writer.write(metas[0]["shard"], rows())], schema=out_schema)
    return run


_BATCH_CONF = ("spark.sql.execution.arrow.maxRecordsPerBatch", "spark.sql.execution.arrow.maxBytesPerBatch")
