"""Table maintenance in a local Spark session: same rows, fewer files, Z-ordered files that a query by
arXiv id skips, VACUUM within the retention (time travel still works), leftover staging removed."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
from pyspark.sql import functions as F

from helpers import held, lake_at, snapshot
from s1mmalign import config, stages
from s1mmalign.config import ConfigError
from s1mmalign.lake import maintain

TABLES = ("pairs", "images", "quarantine", "ingest_log", "image_index")


def files_read(df) -> int:
    """Files the scan of df actually read, from Spark's SQL metrics (after Delta's data skipping)."""
    df.collect()
    plan = df._jdf.queryExecution().executedPlan()
    if plan.nodeName() == "AdaptiveSparkPlan":
        plan = plan.executedPlan()
    leaves = plan.collectLeaves()
    counts = [int(leaves.apply(i).metrics().apply("numFiles").value()) for i in range(leaves.size())
              if leaves.apply(i).metrics().contains("numFiles")]
    assert counts, plan.toString()
    return sum(counts)


@pytest.fixture(scope="module")
def lake(spark, cfg, tmp_path_factory):
    """An ingested lake whose pairs are spread over many small files per discipline, each holding arXiv
    ids from all over (as many incremental runs leave them): rewritten by 8 random tasks. Its own 360
    pairs, not the shared 120: a discipline needs enough bytes to keep four or more files after compaction."""
    from s1mmalign.ingest import pipeline as ingest
    from s1mmalign.ingest import sample
    from s1mmalign.lake import lease

    root = tmp_path_factory.mktemp("maintain") / "corpus"
    sample.generate(root, n_pairs=360, seed=21, faults=False, processes=2)
    lake = tmp_path_factory.mktemp("maintain-lake") / "lake"
    ingest.run(spark, cfg, str(root), held(lake, cfg))
    lease.release_all()
    path = lake_at(str(lake)).path("pairs")
    rows = lake_at(str(lake)).read(spark, "pairs").localCheckpoint()
    rows.repartition(8).write.format("delta").mode("overwrite").save(path)
    return lake


def test_maintain_keeps_rows_compacts_zorders_and_respects_the_retention(spark, cfg, lake):
    path = lake_at(str(lake)).path("pairs")
    before = {t: snapshot(spark, lake, t) for t in TABLES}
    version_before = lake_at(str(lake)).version("pairs", spark)
    files_before, _ = maintain._files(spark, lake_at(lake), "pairs")
    leftover = lake / "_staging" / "20260101T000000Z-0badc0de" / "slices"
    leftover.mkdir(parents=True)
    (leftover / "x.arrow").write_bytes(b"left by a crashed run")
    (leftover.parent / stages.STAGING_MARKER).write_bytes(b"20260101T000000Z-0badc0de")
    # what ingest did not make stays: a folder named as a run but without the marker, a file of someone's
    foreign = lake / "_staging" / "20260101T000000Z-00000000"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("not ingest's")
    (lake / "_staging" / "notes.txt").write_text("not ingest's either")

    # small target files, so that each discipline partition keeps several Z-ordered files
    spark.conf.set("spark.databricks.delta.optimize.maxFileSize", str(24 << 10))
    try:
        reports = {r.table: r for r in maintain.run(spark, cfg, held(str(lake), cfg))}
    finally:
        spark.conf.unset("spark.databricks.delta.optimize.maxFileSize")

    assert {t: snapshot(spark, lake, t) for t in TABLES} == before               # same rows
    pairs = reports["pairs"]
    assert pairs.zorder == ("arxiv_id",) and pairs.files_before == files_before
    assert pairs.files_after < pairs.files_before and pairs.version > version_before
    assert reports["ingest_log"].files_after <= reports["ingest_log"].files_before
    assert not leftover.parent.exists()
    assert (foreign / "keep.txt").read_text() == "not ingest's" and (lake / "_staging" / "notes.txt").exists()
    # the retention (7 days) keeps what the versions before maintenance read: time travel still works
    old = spark.read.format("delta").option("versionAsOf", version_before).load(path)
    assert sorted(tuple(r) for r in old.select("pair_id", "caption").collect()) == \
        sorted(tuple(r) for r in lake_at(str(lake)).read(spark, "pairs").select("pair_id", "caption").collect())
    # within a discipline, a query by arXiv id reads only the file(s) whose arxiv_id range holds it: at
    # most two (rows of one paper may straddle a boundary) of the partition's four or more Z-ordered files
    # (compaction without the Z-order keeps the files' ranges wide: the query read 5 of 8 when planted)
    table = lake_at(str(lake)).read(spark, "pairs")
    busiest = table.select("discipline", F.input_file_name().alias("f")).distinct().groupBy("discipline") \
        .count().orderBy(F.desc("count"), "discipline").first()
    assert busiest["count"] >= 4, busiest
    ids = sorted(r.arxiv_id for r in table.where(F.col("discipline") == busiest["discipline"])
                 .select("arxiv_id").collect() if r.arxiv_id)
    query = table.where((F.col("discipline") == busiest["discipline"]) & (F.col("arxiv_id") == ids[len(ids) // 2]))
    assert query.count() >= 1
    assert files_read(query) <= 2, (files_read(query), busiest)


def test_bad_maintenance_settings_are_config_errors(cfg, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("maintain:\n  vacuum_retention_hours: 1\n")
    with pytest.raises(ConfigError, match="maintain.vacuum_retention_hours must be between 168 and"):
        config.load(str(bad), environ={})
    with pytest.raises(ConfigError, match="table pairs has no column.s. paper"):
        maintain.zorder_columns(dataclasses.replace(cfg, maintain=dataclasses.replace(
            cfg.maintain, zorder={"pairs": ("paper",)})))
    with pytest.raises(ConfigError, match="names no lake table: nope"):
        maintain.zorder_columns(dataclasses.replace(cfg, maintain=dataclasses.replace(
            cfg.maintain, zorder={"nope": ("x",)})))


def test_staging_is_emptied_only_of_the_run_folders_ingest_marked(tmp_path):
    from s1mmalign.lake.storage import LocalStore

    lake = LocalStore(str(tmp_path))
    ours = ["20260101T000000Z-0badc0de", "v20260101T000000Z-00c0ffee"]
    for run in ours:
        scratch = lake.child(f"_staging/{run}")
        stages.start_staging(scratch, run)
        scratch.put("slices/x.arrow", b"slice")
    unmarked = tmp_path / "_staging" / "20260101T000000Z-00000000"        # named as a run, no marker
    unmarked.mkdir()
    (unmarked / "keep").write_text("x")
    named_otherwise = tmp_path / "_staging" / "notes"                      # a marker, but not a run's name
    named_otherwise.mkdir()
    (named_otherwise / stages.STAGING_MARKER).write_text("x")
    assert sorted(stages.clear_staging(lake, "_staging")) == [f"_staging/{r}" for r in sorted(ours)]
    assert sorted(p.name for p in (tmp_path / "_staging").iterdir()) == ["20260101T000000Z-00000000", "notes"]
    for kept in (unmarked, named_otherwise):
        shutil.rmtree(kept)
    stages.start_staging(lake.child("_staging/20260102T000000Z-0badc0de"), "20260102T000000Z-0badc0de")
    assert stages.clear_staging(lake, "_staging") == ["_staging/20260102T000000Z-0badc0de"]
    assert not (tmp_path / "_staging").exists()                            # emptied: the folder goes too
    assert stages.clear_staging(lake, "_staging") == []                   # nothing there: nothing to do
