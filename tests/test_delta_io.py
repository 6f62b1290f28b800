"""Lake writes (root.Lake over delta_io): MERGE on the key from schemas/, each table's writer options from
schemas/, files committed by delta-rs, and no write at all through a Lake whose job holds no lease."""

from __future__ import annotations

import glob
from datetime import datetime, timezone

import pyarrow.parquet as pq
from delta.tables import DeltaTable

from helpers import held, lake_at
from s1mmalign.ingest import slices
from s1mmalign.lake import schemas


def index_row(path: str, status: str = "ok", width: int = 10) -> dict:
    return {"source": "arxiv", "image_path": path, "container": "arxiv/images_2024.tar.gz", "status": status,
            "detail": None, "image_sha256": path.encode().hex().ljust(64, "0")[:64], "image_format": "PNG",
            "width": width, "height": 5, "image_bytes": 100, "image_dhash": 7, "ingest_run_id": "r1"}


def test_merge_inserts_new_keys_and_updates_known_ones(spark, tmp_path):
    lake = str(tmp_path / "lake")
    held(lake).ensure_tables(spark)
    schema = schemas.table("image_index").spark()
    table = DeltaTable.forPath(spark, lake_at(lake).path("image_index"))
    first = [index_row("a.png"), index_row("b.png"), index_row("c.png", "image_corrupt")]
    metrics = held(lake).merge(spark, "image_index", spark.createDataFrame(first, schema))
    # into the empty table: appended (the rows a MERGE inserts), with MERGE's metrics
    assert table.history(1).first().operation == "WRITE"
    assert (metrics["numTargetRowsInserted"], metrics["numTargetRowsUpdated"]) == ("3", "0")
    second = [index_row("a.png", width=99), index_row("d.png")]
    metrics = held(lake).merge(spark, "image_index", spark.createDataFrame(second, schema))
    assert table.history(1).first().operation == "MERGE"
    assert (metrics["numTargetRowsInserted"], metrics["numTargetRowsUpdated"]) == ("1", "1")
    got = {r.image_path: (r.status, r.width) for r in table.toDF().collect()}
    assert got == {"a.png": ("ok", 99), "b.png": ("ok", 10), "c.png": ("image_corrupt", 10), "d.png": ("ok", 10)}


def test_image_bytes_are_stored_without_compression(spark, tmp_path):
    """schemas/tables.yaml gives images `compression: none` (image bytes do not compress); others keep
    Spark's default (snappy)."""
    assert dict(schemas.table("images").write_options) == {"compression": "none"}
    assert schemas.table("pairs").write_options == ()
    lake = str(tmp_path / "lake")
    held(lake).ensure_tables(spark)
    now = datetime.now(timezone.utc)
    row = {"image_sha256": "0" * 64, "discipline": "physics", "format": "PNG", "width": 1, "height": 1,
           "image_bytes": 3, "image_dhash": 0, "content": b"abc" * 100, "thumbnail": b"xyz", "thumbnail_width": 1,
           "thumbnail_height": 1, "first_source": "arxiv", "first_image_path": "a.png", "ingest_run_id": "r1",
           "ingested_at": now}
    held(lake).append(spark, "images", spark.createDataFrame([row], schemas.table("images").spark()))
    held(lake).merge(spark, "image_index",
                     spark.createDataFrame([index_row("a.png")], schemas.table("image_index").spark()))
    codecs = {}
    for table in ("images", "image_index"):
        for f in glob.glob(f"{lake_at(lake).path(table)}/**/*.parquet", recursive=True):
            meta = pq.ParquetFile(f).metadata
            codecs.setdefault(table, set()).update(meta.row_group(g).column(i).compression
                                                   for g in range(meta.num_row_groups) for i in range(meta.num_columns))
    assert codecs == {"images": {"UNCOMPRESSED"}, "image_index": {"SNAPPY"}}


def image_row(sha: str) -> dict:
    return {"image_sha256": sha * 64, "discipline": "physics", "format": "PNG", "width": 1, "height": 1,
            "image_bytes": 3, "image_dhash": 0, "content": b"abc", "thumbnail": b"xyz", "thumbnail_width": 1,
            "thumbnail_height": 1, "first_source": "arxiv", "first_image_path": "a.png", "ingest_run_id": "r1",
            "ingested_at": datetime.now(timezone.utc)}


def test_no_write_passes_through_a_lake_whose_job_holds_no_lease(spark, tmp_path):
    """Every write of a Lake checks the lease before it commits: without one (a job that never took it, or
    gave it back) each is refused, and the table keeps its version and rows."""
    from s1mmalign.lake import lease
    from s1mmalign.lake.root import NoLease

    lake = tmp_path / "lake"
    writer = held(lake)
    writer.ensure_tables(spark)
    writer.append(spark, "images", spark.createDataFrame([image_row("1")], schemas.table("images").spark()))
    lease.release_all()
    bare = lake_at(lake)
    before = bare.version("images")
    rows = spark.createDataFrame([image_row("2")], schemas.table("images").spark())
    writes = {"append": lambda: bare.append(spark, "images", rows),
              "merge": lambda: bare.merge(spark, "images", rows),
              "replace": lambda: bare.replace(spark, "images", rows),
              "replace where": lambda: bare.replace(spark, "images", rows, "discipline = 'physics'"),
              "add_files": lambda: bare.add_files("images", [{"path": "x.parquet", "bytes": 1, "rows": 1,
                                                              "discipline": "physics", "stats": "{}"}])}
    for name, write in writes.items():
        try:
            write()
        except NoLease:
            continue
        raise AssertionError(f"{name} through a lake without the lease was not refused")
    assert bare.version("images") == before and [r.image_sha256 for r in bare.read(spark, "images").collect()] \
        == ["1" * 64]


def test_a_write_that_commits_nothing_never_reports_the_previous_commits_metrics(spark, tmp_path, caplog):
    lake = str(tmp_path / "lake")
    held(lake).ensure_tables(spark)
    schema = schemas.table("images").spark()
    row = {"image_sha256": "1" * 64, "discipline": "physics", "format": "PNG", "width": 1, "height": 1,
           "image_bytes": 3, "image_dhash": 0, "content": b"abc", "thumbnail": b"xyz", "thumbnail_width": 1,
           "thumbnail_height": 1, "first_source": "arxiv", "first_image_path": "a.png", "ingest_run_id": "r1",
           "ingested_at": datetime.now(timezone.utc)}
    assert held(lake).append(spark, "images", spark.createDataFrame([row], schema))["numOutputRows"] == "1"
    caplog.set_level("INFO", logger="s1mmalign.lake.root")
    assert held(lake).append(spark, "images", spark.createDataFrame([], schema)) == {}   # Delta commits nothing
    assert "write images: append (no commit: nothing to write)" in caplog.text


def test_files_python_tasks_write_are_committed_as_one_append_spark_reads(spark, tmp_path):
    """The images path of ingest: tasks.write_images writes Parquet files under the table's folder, and
    add_files commits them (delta-rs) in one commit that Spark's Delta reads row for row, partition values
    included (one that needs quoting in a path too), with the table's protocol unchanged and the files'
    stats usable for data skipping."""
    import os

    import pyarrow as pa

    from s1mmalign.ingest import tasks
    from s1mmalign.lake.storage import LocalStore

    lake = str(tmp_path / "lake")
    held(lake).ensure_tables(spark)
    path = lake_at(lake).path("images")
    protocol = spark.sql(f"DESCRIBE DETAIL delta.`{path}`").select("minReaderVersion", "minWriterVersion").first()
    writer = slices.Writer(LocalStore(str(tmp_path)), "slices", "k", 1 << 20)
    blobs = [os.urandom(500 + i) for i in range(12)]
    where = [writer.add(f"images/{i}.png", b) for i, b in enumerate(blobs)]
    writer.close()
    disciplines = ["physics", "cs", "a b/c"]
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rows = [{"image_sha256": f"{i:064x}", "discipline": disciplines[i % 3], "format": "PNG", "width": i + 1,
             "height": 1, "image_bytes": len(blobs[i]), "image_dhash": i, "thumbnail": b"t", "thumbnail_width": 1,
             "thumbnail_height": 1, "first_source": "arxiv", "first_image_path": f"images/{i}.png",
             "ingest_run_id": "r1", "ingested_at": now, "slice": where[i][0], "slice_row": where[i][1]}
            for i in range(12)]
    files = [f for b in tasks.write_images(LocalStore(str(tmp_path)), LocalStore(path), "part-r1")(
        iter([pa.RecordBatch.from_pylist(rows)])) for f in b.to_pylist()]
    assert len(files) == 3

    assert held(lake).add_files("images", files) == 12
    assert held(lake).add_files("images", []) == 0                        # nothing: no commit
    assert lake_at(lake).version("images", spark) == 1

    got = {r.image_sha256: (r.discipline, bytes(r.content), r.ingested_at.replace(tzinfo=timezone.utc))
           for r in lake_at(lake).read(spark, "images").collect()}
    assert got == {f"{i:064x}": (disciplines[i % 3], blobs[i], now) for i in range(12)}
    assert spark.sql(f"DESCRIBE DETAIL delta.`{path}`").select(
        "minReaderVersion", "minWriterVersion").first() == protocol
    one = lake_at(lake).read(spark, "images").where(f"image_sha256 = '{4:064x}'")
    assert one.count() == 1                                  # stats wrong for it would skip its file
    assert lake_at(lake).read(spark, "images").where("width = 12").count() == 1
    assert [r.discipline for r in lake_at(lake).read(spark, "images").where("discipline = 'a b/c'")
            .select("discipline").collect()] == ["a b/c"] * 4
    # Spark's Delta goes on writing the table after delta-rs's commit
    assert held(lake).append(spark, "images", lake_at(lake).read(spark, "images").limit(1))["numOutputRows"] == "1"
    assert lake_at(lake).read(spark, "images").count() == 13


def test_replace_slice_appends_into_an_empty_table_then_replaces_only_its_slice(spark, tmp_path):
    lake = str(tmp_path / "lake")
    held(lake).ensure_tables(spark)
    schema = schemas.table("quarantine").spark()
    now = datetime.now(timezone.utc)

    def rows(file: str, lines: range, reason: str):
        return spark.createDataFrame([("arxiv", file, n, "x", None, reason, None, "r", now) for n in lines], schema)

    first = held(lake).replace(spark, "quarantine", rows("a.jsonl", range(1, 4), "malformed_json")
                               .unionByName(rows("b.jsonl", range(1, 3), "malformed_json")),
                               "source_file IN ('a.jsonl', 'b.jsonl')")
    assert first["numOutputRows"] == "5"
    table = DeltaTable.forPath(spark, lake_at(lake).path("quarantine"))
    assert table.history(1).first().operation == "WRITE"                      # appended: nothing to replace
    held(lake).replace(spark, "quarantine", rows("a.jsonl", range(7, 8), "image_missing"), "source_file IN ('a.jsonl')")
    got = sorted((r.source_file, r.source_line, r.reason) for r in lake_at(lake).read(spark, "quarantine").collect())
    assert got == [("a.jsonl", 7, "image_missing"), ("b.jsonl", 1, "malformed_json"), ("b.jsonl", 2, "malformed_json")]


def test_may_hold_answers_from_the_files_statistics_and_only_ever_widens(spark, tmp_path):
    """Lake.may_hold (ingest's choice of an append over a MERGE rests on it): no for a value outside every file's
    min..max, yes inside one, at each end of a range, for a file without statistics, and for long names whose
    statistics Delta cuts short (a prefix for the minimum, a prefix and a last code point for the maximum)."""
    lake = str(tmp_path / "lake")
    held(lake).ensure_tables(spark)
    schema = schemas.table("image_index").spark()
    assert not held(lake).may_hold("image_index", "container", ["any"])          # no file yet
    long = "arxiv/" + "x" * 60
    rows = [{**index_row(f"{i}.png"), "container": c}
            for i, c in enumerate(["arxiv/images_2010.tar.gz", "arxiv/images_2012.tar.gz", long + "b", long + "d"])]
    held(lake).append(spark, "image_index", spark.createDataFrame(rows[:2], schema).coalesce(1))
    held(lake).append(spark, "image_index", spark.createDataFrame(rows[2:], schema).coalesce(1))
    may = lambda *values: held(lake).may_hold("image_index", "container", values)   # noqa: E731
    assert not may()
    assert may("arxiv/images_2010.tar.gz") and may("arxiv/images_2012.tar.gz")        # each end
    assert may("arxiv/images_2011.tar.gz")                                             # inside: a range says maybe
    assert not may("arxiv/images_2009.tar.gz") and not may("arxiv/images_2013.tar.gz", "zzz", "a")
    assert may(long + "c") and may(long + "d") and may(long + "b")                   # cut short, still inside
    assert may(long[:-1])                          # under the cut minimum's prefix: a range can only say maybe
    assert not may("arxiv/w" + "x" * 60) and not may("arxiv/y")
    assert may("arxiv/images_2009.tar.gz", long + "c")                                # any one of several
    assert held(lake).may_hold("image_index", "no_such_column", ["x"])                # no statistics: maybe
