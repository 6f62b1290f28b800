"""Lake writes: MERGE on the key from schemas/, and each table's writer options from schemas/."""

from __future__ import annotations

import glob
from datetime import datetime, timezone

import pyarrow.parquet as pq
from delta.tables import DeltaTable

from s1mmalign import delta_io, schemas


def index_row(path: str, status: str = "ok", width: int = 10) -> dict:
    return {"source": "arxiv", "image_path": path, "container": "arxiv/images_2024.tar.gz", "status": status,
            "detail": None, "image_sha256": path.encode().hex().ljust(64, "0")[:64], "image_format": "PNG",
            "width": width, "height": 5, "image_bytes": 100, "image_dhash": 7, "ingest_run_id": "r1"}


def test_merge_inserts_new_keys_and_updates_known_ones(spark, tmp_path):
    lake = str(tmp_path / "lake")
    delta_io.ensure_tables(spark, lake, "s1mmalign")
    schema = schemas.table("image_index").spark()
    table = DeltaTable.forPath(spark, delta_io.table_path(lake, "image_index"))
    first = [index_row("a.png"), index_row("b.png"), index_row("c.png", "image_corrupt")]
    delta_io.merge_on_key(spark, lake, "image_index", spark.createDataFrame(first, schema))
    second = [index_row("a.png", width=99), index_row("d.png")]
    delta_io.merge_on_key(spark, lake, "image_index", spark.createDataFrame(second, schema))
    assert table.history(1).first().operation == "MERGE"
    got = {r.image_path: (r.status, r.width) for r in table.toDF().collect()}
    assert got == {"a.png": ("ok", 99), "b.png": ("ok", 10), "c.png": ("image_corrupt", 10), "d.png": ("ok", 10)}


def test_image_bytes_are_stored_without_compression(spark, tmp_path):
    """schemas/tables.yaml gives images `compression: none` (image bytes do not compress); others keep
    Spark's default (snappy)."""
    assert dict(schemas.table("images").write_options) == {"compression": "none"}
    assert schemas.table("pairs").write_options == ()
    lake = str(tmp_path / "lake")
    delta_io.ensure_tables(spark, lake, "s1mmalign")
    now = datetime.now(timezone.utc)
    row = {"image_sha256": "0" * 64, "discipline": "physics", "format": "PNG", "width": 1, "height": 1,
           "image_bytes": 3, "image_dhash": 0, "content": b"abc" * 100, "thumbnail": b"xyz", "thumbnail_width": 1,
           "thumbnail_height": 1, "first_source": "arxiv", "first_image_path": "a.png", "ingest_run_id": "r1",
           "ingested_at": now}
    delta_io.append(spark, lake, "images", spark.createDataFrame([row], schemas.table("images").spark()))
    delta_io.merge_on_key(spark, lake, "image_index",
                          spark.createDataFrame([index_row("a.png")], schemas.table("image_index").spark()))
    codecs = {}
    for table in ("images", "image_index"):
        for f in glob.glob(f"{delta_io.table_path(lake, table)}/**/*.parquet", recursive=True):
            meta = pq.ParquetFile(f).metadata
            codecs.setdefault(table, set()).update(meta.row_group(g).column(i).compression
                                                   for g in range(meta.num_row_groups) for i in range(meta.num_columns))
    assert codecs == {"images": {"UNCOMPRESSED"}, "image_index": {"SNAPPY"}}


def test_a_write_that_commits_nothing_never_reports_the_previous_commits_metrics(spark, tmp_path, caplog):
    lake = str(tmp_path / "lake")
    delta_io.ensure_tables(spark, lake, "s1mmalign")
    schema = schemas.table("images").spark()
    row = {"image_sha256": "1" * 64, "discipline": "physics", "format": "PNG", "width": 1, "height": 1,
           "image_bytes": 3, "image_dhash": 0, "content": b"abc", "thumbnail": b"xyz", "thumbnail_width": 1,
           "thumbnail_height": 1, "first_source": "arxiv", "first_image_path": "a.png", "ingest_run_id": "r1",
           "ingested_at": datetime.now(timezone.utc)}
    assert delta_io.append(spark, lake, "images", spark.createDataFrame([row], schema))["numOutputRows"] == "1"
    caplog.set_level("INFO", logger="s1mmalign.delta_io")
    assert delta_io.append(spark, lake, "images", spark.createDataFrame([], schema)) == {}   # Delta commits nothing
    assert "write images: append (no commit: nothing to write)" in caplog.text
