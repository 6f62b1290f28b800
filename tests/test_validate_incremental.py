"""Incremental validate (validate/incremental.py): a refresh re-checks only the rows its change touches, and its
results equal those of a full validate (--full) on the same lake. (That the lake-wide numbers aggregated from
the stored checks equal Great Expectations' over the whole frame, every planted violation among them:
test_validate.test_both_engines_give_the_same_results.)"""

from __future__ import annotations

import dataclasses

import pytest
from delta.tables import DeltaTable
from pyspark.sql import functions as F

from helpers import copy_lake, held, lake_at, result_numbers
from s1mmalign.validate import incremental
from s1mmalign.validate import pipeline as validate


@pytest.fixture(scope="module")
def quiet_cfg(cfg):
    """No Data Docs, and no frame on the driver: checked tables larger than quality.pandas_max_rows take the
    incremental path of the release's size (the lake-wide numbers aggregated from the stored checks, Great
    Expectations on the re-checked rows); up to it, every suite runs on the whole stored frame. (The --full
    runs compared with them keep the pandas engine: both engines' results are the same, test_validate.)"""
    return dataclasses.replace(cfg, quality=dataclasses.replace(cfg.quality, data_docs="off", pandas_max_rows=0))


@pytest.fixture(scope="module")
def pandas_cfg(cfg):
    return dataclasses.replace(cfg, quality=dataclasses.replace(cfg.quality, data_docs="off"))


def _same(a, b) -> None:
    """Two validate runs' results of the pairs and images suites (the per-row checks) say the same of the lake.
    (The other suites run on whole frames either way; the --full run compared here uses the pandas engine,
    which reads an empty quarantine frame's unexpected count as 0 where Spark's says none.)"""
    def mine(results):
        return result_numbers([r for r in results if r.table_name in incremental.TABLES
                               and not r.suite.startswith("schema.")])

    left, right = mine(a), mine(b)
    assert len(left) == 20 and left == right


def _rows(spark, lake, table: str) -> list:
    df = lake_at(str(lake)).read(spark, table)
    return sorted((tuple(r) for r in df.select(*sorted(df.columns)).collect()), key=repr)


def _pair_like(spark, lake, row, **change):
    pairs = lake_at(str(lake)).read(spark, "pairs")
    spark.createDataFrame([row.asDict() | change], pairs.schema).write.format("delta").mode("append") \
        .save(lake_at(str(lake)).path("pairs"))


def _near_copy(spark, lake, row, sha: str) -> None:
    """A new image (sha) whose hash is one bit from row's image's, and a pair of its own showing it."""
    images = lake_at(str(lake)).read(spark, "images")
    dhash = row.image_dhash ^ 1
    img = images.where(F.col("image_sha256") == row.image_sha256).first().asDict() | {
        "image_sha256": sha, "image_dhash": dhash}
    spark.createDataFrame([img], images.schema).write.format("delta").mode("append") \
        .save(lake_at(str(lake)).path("images"))
    _pair_like(spark, lake, row, pair_id="f" * 32, image_path=row.image_path.rsplit("/", 1)[0] + "/near-copy.png",
               image_sha256=sha, image_dhash=dhash, source_line=row.source_line + 7_000_000)


def test_a_refresh_rechecks_only_what_it_touches_and_equals_a_full_validate(spark, quiet_cfg, pandas_cfg, clean_lake,
                                                                           tmp_path):
    """After a full validate, two changes (pairs updated, inserted and deleted; an exact duplicate formed with an
    untouched pair and taken apart again; a new image near an untouched one): each validate after re-checks
    only the rows they touch, and its results and check tables equal a --full validate's on the same lake."""
    lake_dir = copy_lake(clean_lake, tmp_path / "lake")
    def run(full=False):
        c = pandas_cfg if full else quiet_cfg
        return validate.run(spark, c, held(str(lake_dir), c), full=full)

    pairs = lake_at(str(lake_dir)).read(spark, "pairs").where("source = 'arxiv'").orderBy("pair_id").collect()
    # a pair whose image has no images row yet (missing_image_row): its row stays as it is when the row comes
    _pair_like(spark, lake_dir, pairs[5], pair_id="d" * 32, image_sha256="1" * 64, source_line=9_000_000,
               image_path=pairs[5].image_path.rsplit("/", 1)[0] + "/late.png")
    first = validate.run(spark, pandas_cfg, held(str(lake_dir), pandas_cfg))     # no record yet: every row
    assert first.checks.startswith("every row checked (no record")
    assert "path_integrity.pairs:image_row_exists" in {r.key for r in first.results if not r.success}
    held_pairs = len(lake_at(str(lake_dir)).read(spark, "pairs").collect())

    # change 1: a path made unsafe and a discipline unknown (updates), a copy of a pair's path and bytes under
    # another id (its partner now shares bytes and path), a new image one bit from an untouched one's
    table = DeltaTable.forPath(spark, lake_at(str(lake_dir)).path("pairs"))
    table.update(f"pair_id = '{pairs[0].pair_id}'",
                 {"image_path": "regexp_replace(image_path, '^images/', 'images/../')"})
    table.update(f"pair_id = '{pairs[1].pair_id}'", {"discipline": "'unknown'"})
    _pair_like(spark, lake_dir, pairs[2], pair_id="e" * 32, source_line=pairs[2].source_line + 5_000_000)
    _near_copy(spark, lake_dir, pairs[3], "0" * 64)
    images = lake_at(str(lake_dir)).read(spark, "images")
    late = images.where(F.col("image_sha256") == pairs[5].image_sha256).first().asDict() | {
        "image_sha256": "1" * 64, "image_dhash": 0x5A5A_5A5A_5A5A_5A5A}
    spark.createDataFrame([late], images.schema).write.format("delta").mode("append") \
        .save(lake_at(str(lake_dir)).path("images"))
    second = run()
    assert second.checks.startswith("incremental: 6 pairs and 3 images re-checked"), second.checks
    assert "path_integrity.pairs:image_row_exists" not in {r.key for r in second.results if not r.success}
    third = run(full=True)
    assert third.checks == "every row checked (--full)"
    _same(second.results, third.results)
    assert {r.key for r in second.results if not r.success} >= {
        "path_integrity.pairs:image_path_no_dotdot", "deduplication.pairs:source_image_path_unique"}
    checked = {t: _rows(spark, lake_dir, t) for t in ("checked_pairs", "checked_images")}
    assert len(checked["checked_pairs"]) == held_pairs + 2

    # change 2: the copy deleted (its partner no longer shares bytes), an untouched pair deleted too
    table.delete(f"pair_id IN ('{'e' * 32}', '{pairs[4].pair_id}')")
    fourth = run()
    assert fourth.checks.startswith("incremental: 3 pairs and 0 images re-checked"), fourth.checks
    after_incremental = {t: _rows(spark, lake_dir, t) for t in ("checked_pairs", "checked_images")}
    fifth = run(full=True)
    _same(fourth.results, fifth.results)
    assert after_incremental == {t: _rows(spark, lake_dir, t) for t in ("checked_pairs", "checked_images")}
    assert len(after_incremental["checked_pairs"]) == held_pairs


def test_the_settings_the_checks_depend_on_are_in_their_digest(cfg):
    """A change of layouts, arXiv sources, fallback discipline or taxonomy re-checks every row; thresholds (applied
    when the numbers are aggregated) do not."""
    cats = validate.taxonomy(cfg)
    base = incremental.settings_digest(cfg, cats)
    q, i = cfg.quality, cfg.ingest
    assert incremental.settings_digest(cfg, list(reversed(cats))) == base
    assert incremental.settings_digest(dataclasses.replace(cfg, quality=dataclasses.replace(
        q, thresholds={**q.thresholds, "unknown_share_max": 0.5})), cats) == base
    changed = [
        dataclasses.replace(cfg, quality=dataclasses.replace(q, layouts={**q.layouts, "default": "^x/"})),
        dataclasses.replace(cfg, ingest=dataclasses.replace(i, arxiv_sources=(*i.arxiv_sources, "arxiv2"))),
        dataclasses.replace(cfg, disciplines={**cfg.disciplines, "fallback": "other"}),
    ]
    digests = {incremental.settings_digest(c, cats) for c in changed} | {incremental.settings_digest(cfg, cats[1:])}
    assert base not in digests and len(digests) == 4
    assert 0 <= base < 2 ** 63        # validate_state's version column is a bigint


def test_map_results_follow_great_expectations_at_their_edges():
    """incremental._map_result as Great Expectations 1.x gives a map expectation's result: an empty frame and a
    frame of nulls pass vacuously with no percent; `mostly` is a share of the rows considered, met at equality;
    the percent is of non-null rows, or of every row where nulls count (expect_column_values_to_be_null)."""
    r = incremental._map_result
    assert r(0, 0, 0, 1.0) == {"success": True, "element_count": 0, "unexpected_count": 0, "unexpected_percent": None}
    assert r(4, 0, 0, 1.0)["success"] is True and r(4, 0, 0, 1.0)["unexpected_percent"] is None
    assert r(4, 2, 1, 0.5) == {"success": True, "element_count": 4, "unexpected_count": 1, "unexpected_percent": 50.0}
    assert r(4, 3, 2, 0.5)["success"] is False
    assert r(4, None, 1, 0.75) == {"success": True, "element_count": 4, "unexpected_count": 1,
                                   "unexpected_percent": 25.0}
    assert r(4, None, 2, 0.75)["success"] is False
    assert r(4, 4, 0, 1.0)["success"] is True and r(4, 4, 1, 1.0)["success"] is False
