"""The images table's Parquet files, the one format of the lake written outside Spark: written by ingest's
Python tasks (ImagesFile: row groups of bounded bytes, Delta data-skipping stats), committed by delta-rs
(commit), located row by row (locations) and read back by row group (rows_of_file) by export's storage
order, so that no image byte passes through the JVM either way."""

from __future__ import annotations

import json
import logging
import os
import time

import pyarrow as pa

from s1mmalign.lake import schemas
from s1mmalign.lake.storage import Store, open_data_file

log = logging.getLogger(__name__)

FILE_BYTES = 256 << 20     # an images table file is closed once it holds about this many bytes
# Columns of an images file with Parquet statistics and Delta data-skipping stats (min/max): the keys and
# numbers, not the image bytes, the paths (any length) or the timestamp (Delta keeps it in milliseconds).
STATS_COLUMNS = ("image_sha256", "discipline", "format", "width", "height", "image_bytes", "image_dhash",
                 "thumbnail_width", "thumbnail_height", "ingest_run_id")


class ImagesFile:
    """One Parquet file of the images table being written (a spool file until it is complete), under the
    table's folder (`table`) at `rel`."""

    def __init__(self, table: Store, rel: str, schema: pa.Schema):
        import pyarrow.parquet as pq

        self.table, self.rel = table, rel
        self.local = table.spool(rel)
        keys = [c for c in schema.names if c in STATS_COLUMNS]
        self.writer = pq.ParquetWriter(self.local, schema, compression="none", use_dictionary=keys,
                                       write_statistics=keys)
        self.rows = self.bytes = 0
        self.low: dict = {}
        self.high: dict = {}

    def write(self, batch: pa.RecordBatch) -> None:
        import pyarrow.compute as pc

        self.writer.write_batch(batch, row_group_size=batch.num_rows)   # one row group per bounded batch
        self.rows += batch.num_rows
        self.bytes += batch.nbytes
        for c in STATS_COLUMNS:
            got = pc.min_max(batch.column(c)).as_py()
            if got["min"] is not None:
                self.low[c] = got["min"] if c not in self.low else min(self.low[c], got["min"])
                self.high[c] = got["max"] if c not in self.high else max(self.high[c], got["max"])

    def close(self, discipline: str) -> dict:
        """Complete the file (published whole); its images_files row (what commit takes)."""
        self.writer.close()
        size = os.path.getsize(self.local)
        self.table.put_file(self.rel, self.local)
        stats = {"numRecords": self.rows, "minValues": self.low, "maxValues": self.high,
                 "nullCount": {c: 0 for c in STATS_COLUMNS}}
        return {"path": self.rel, "discipline": discipline, "bytes": size, "rows": self.rows,
                "stats": json.dumps(stats, separators=(",", ":"))}


def commit(lake, name: str, files: list[dict]) -> int:
    """Commit files written under table `name`'s folder (images_files rows: path, partition values, size,
    rows, stats) as one append through delta-rs; returns the rows added. The caller (Lake.add_files) has
    checked the lease.

    delta-rs (the `deltalake` package) is the Delta Lake project's other engine: Spark's Delta has no public
    API that adds files written outside a Spark write, and passing the image bytes through the JVM only to
    write them again costs most of an ingest's write stage. The files follow the table's schema and
    partitioning from schemas/; the table's protocol stays Spark's own (no feature is added).
    """
    from deltalake import CommitProperties, DeltaTable
    from deltalake.transaction import AddAction

    tdef = schemas.table(name)
    uri, options = lake.delta_rs(name)
    table = DeltaTable(uri, storage_options=options)
    now = int(time.time() * 1000)
    # paths as they are on storage: delta-rs percent-encodes them into the log, as the protocol wants
    actions = [AddAction(f["path"], int(f["bytes"]), {c: f[c] for c in tdef.partition_by}, now, True, f["stats"])
               for f in files]
    table.create_write_transaction(actions, mode="append", schema=table.schema(), partition_by=list(tdef.partition_by),
                                   commit_properties=CommitProperties(custom_metadata={"s1mmalign": "add files"}))
    rows = sum(int(f["rows"]) for f in files)
    log.info("write %s: add %d files (numOutputRows=%d)", name, len(files), rows)
    return rows


def plain_parquet(properties: dict[str, str]) -> bool:
    """Whether a table with these properties can be read as plain Parquet files: no deletion vectors (rows
    a file holds but Delta hides), no column mapping (other names in the files). Ours are made without."""
    props = {k.lower(): str(v).lower() for k, v in properties.items()}
    return (props.get("delta.enabledeletionvectors") != "true"
            and props.get("delta.columnmapping.mode", "none") == "none")


def locations(spark, images):
    """Where each image's row is in the images table's files of a snapshot (`images`: the table read at a
    version): (file URI, row in that file), the first when a sha256 has several rows. The snapshot's files
    read as plain Parquet (Delta does not expose a row index), key columns only: no image bytes."""
    from pyspark.sql import functions as F

    files = images.inputFiles()
    if not files:
        return spark.createDataFrame([], "image_sha256 string, _file string, _row long")
    loc = F.struct(F.col("_metadata.file_path").alias("_file"), F.col("_metadata.row_index").alias("_row"))
    return (spark.read.parquet(*files).select("image_sha256", loc.alias("_loc")).groupBy("image_sha256")
            .agg(F.min("_loc").alias("_loc")).select("image_sha256", "_loc._file", "_loc._row"))


def rows_of_file(uri: str, column: str, metas: list[dict], s3):
    """metas (dicts with `_row`, sorted by it) with `image`: their bytes from `column` of the images file at
    uri, each row group that holds one read once, only that column."""
    import bisect
    import itertools

    import pyarrow.parquet as pq

    with open_data_file(uri, s3) as source:
        pf = pq.ParquetFile(source)
        starts = list(itertools.accumulate((pf.metadata.row_group(g).num_rows
                                            for g in range(pf.metadata.num_row_groups)), initial=0))
        for group, in_group in itertools.groupby(metas, key=lambda r: bisect.bisect_right(starts, r["_row"]) - 1):
            values = pf.read_row_group(group, columns=[column]).column(0)
            for r in in_group:
                yield {**r, "image": values[r["_row"] - starts[group]].as_py()}
