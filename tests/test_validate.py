"""jobs/validate's pipeline in a local Spark session: a clean lake passes every suite; each planted
violation fails exactly the expectations meant to catch it; the duplicates table lists exactly the
planted duplicates."""

from __future__ import annotations

import dataclasses
import html
import io
import ipaddress
import json
import re
import shutil
import socket
from pathlib import Path

import pytest
from delta.tables import DeltaTable
from PIL import Image

from helpers import browse, copy_lake, held, lake_at, result_numbers
from s1mmalign.ingest import pipeline as ingest
from s1mmalign.ingest import sources
from s1mmalign.lake import schemas
from s1mmalign.lake.storage import Store
from s1mmalign.validate import dedup, incremental, quality
from s1mmalign.validate import pipeline as validate


@pytest.fixture(scope="module")
def strict_cfg(cfg):
    """Duplicate shares must be 0, so that one planted duplicate fails its (warning) expectation."""
    thresholds = {**cfg.quality.thresholds, "exact_duplicate_share_max": 0.0, "near_duplicate_share_max": 0.0}
    return dataclasses.replace(cfg, quality=dataclasses.replace(cfg.quality, thresholds=thresholds))


@pytest.fixture(scope="module")
def nodocs_cfg(strict_cfg):
    """strict_cfg without Data Docs, for the runs that check verdicts only (the pages: the tests that read them)."""
    return dataclasses.replace(strict_cfg, quality=dataclasses.replace(strict_cfg.quality, data_docs="off"))


@pytest.fixture()
def lake_copy(clean_lake, tmp_path) -> Path:
    return copy_lake(clean_lake, tmp_path / "lake")


def failed(outcome) -> set[str]:
    return {r.key for r in outcome.results if not r.success}


def expected_count(with_clip: bool = False, present: tuple[str, ...] = ()) -> int:
    """Expectations of every suite whose table is there (the optional tables' suites are skipped without them)."""
    there = set(present) | ({"clip_scores"} if with_clip else set())
    return sum(len(s.expectation_names) for s in quality.load_suites()
               if s.table not in validate.OPTIONAL or s.table in there)


def table(spark, lake, name):
    return lake_at(str(lake)).read(spark, name)


def test_clean_lake_passes_every_suite(spark, strict_cfg, lake_copy, tmp_path):
    docs = tmp_path / "docs"
    outcome = validate.run(spark, strict_cfg, held(str(lake_copy), strict_cfg), out=str(docs))
    assert failed(outcome) == set(), [(r.key, r.describe(), r.details) for r in outcome.results if not r.success]
    assert len(outcome.results) == expected_count()
    assert table(spark, lake_copy, "duplicates").count() == 0
    stored = table(spark, lake_copy, "quality_results").where(f"validate_run_id = '{outcome.run_id}'")
    assert stored.count() == len(outcome.results) and stored.where("NOT success").count() == 0
    row = stored.where("expectation = 'recaption_present'").first()
    assert row.suite == "schema_values.pairs" and row.suite_group == "schema_values" and row.severity == "critical"
    assert json.loads(row.observed_value) == 1.0
    index = (docs / "index.html").read_text()
    assert "path_integrity.pairs" in index and "deduplication.images" in index
    assert list((docs / "validations").rglob("*.html")), "Data Docs has no validation page"
    # the same run id again (a retried run) replaces its rows: no row twice
    validate.run(spark, strict_cfg, held(str(lake_copy), strict_cfg), out=str(docs), run_id=outcome.run_id)
    assert table(spark, lake_copy, "quality_results").count() == len(outcome.results)


def _append_copy_of_a_pair(spark, lake):
    pairs = lake_at(str(lake)).path("pairs")
    spark.read.format("delta").load(pairs).orderBy("pair_id").limit(1).write.format("delta").mode("append").save(pairs)


def _delete_an_image_row(spark, lake):
    sha = table(spark, lake, "pairs").orderBy("pair_id").first().image_sha256
    DeltaTable.forPath(spark, lake_at(str(lake)).path("images")).delete(f"image_sha256 = '{sha}'")


def _dotdot_path(spark, lake):
    pid = table(spark, lake, "pairs").where("source = 'arxiv'").orderBy("pair_id").first().pair_id
    DeltaTable.forPath(spark, lake_at(str(lake)).path("pairs")).update(
        f"pair_id = '{pid}'", {"image_path": "regexp_replace(image_path, '^images/', 'images/../')"})


def _unknown_flood(spark, lake):
    DeltaTable.forPath(spark, lake_at(str(lake)).path("pairs")).update(
        "pair_id < '4'", {"discipline": "'unknown'"})


def _quarantine_flood(spark, lake):
    from pyspark.sql import functions as F

    flood = table(spark, lake, "pairs").select(
        "source", "source_file", (F.col("source_line") + 1_000_000).alias("source_line"), F.lit("{").alias("raw"),
        F.lit(None).cast("string").alias("image_path"), F.lit("malformed_json").alias("reason"),
        F.lit("planted").alias("detail"), "ingest_run_id", "ingested_at")
    flood.write.format("delta").mode("append").save(lake_at(str(lake)).path("quarantine"))


def _clip_scores(spark, lake, out_of_range=False, doubled=False):
    from pyspark.sql import functions as F

    tdef = schemas.table("clip_scores")
    (DeltaTable.createIfNotExists(spark).location(lake_at(str(lake)).path("clip_scores"))
     .addColumns(tdef.spark()).partitionedBy(*tdef.partition_by).execute())
    scores = (table(spark, lake, "pairs").select(
        "pair_id", "discipline", F.lit("ViT-B-32@test").alias("model"),
        (F.conv(F.substring("pair_id", 1, 4), 16, 10).cast("double") / 65535 * 0.6 - 0.1).alias("score_caption"),
        F.lit(0.31).alias("score_recaption"), F.lit("ok").alias("status"),
        F.current_timestamp().alias("scored_at")))
    first = scores.orderBy("pair_id").limit(1)
    if out_of_range:
        scores = scores.withColumn("score_caption", F.when(F.col("pair_id") == first.first().pair_id, 1.5)
                                   .otherwise(F.col("score_caption")))
    if doubled:
        scores = scores.unionByName(first)
    scores.write.format("delta").mode("append").save(lake_at(str(lake)).path("clip_scores"))


def _text_signals(spark, lake, doubled=False, math_over_one=False):
    """text_signals of every pair as score_text writes them, then one row doubled or one share above 1."""
    from pyspark.sql import functions as F

    from s1mmalign import config
    from s1mmalign.score import pipeline as score

    score.run_text(spark, config.load(), held(str(lake)))
    path = lake_at(str(lake)).path("text_signals")
    first = spark.read.format("delta").load(path).orderBy("pair_id").limit(1)
    if doubled:
        first.write.format("delta").mode("append").save(path)
    if math_over_one:
        DeltaTable.forPath(spark, path).update(F.col("pair_id") == first.first().pair_id,
                                               {"caption_math_share": F.lit(1.5)})


def _fluency_below_one(spark, lake):
    from pyspark.sql import functions as F

    held(str(lake)).ensure_tables(spark, job="score_fluency")
    rows = table(spark, lake, "pairs").select(
        "pair_id", "discipline", F.lit("bert@test").alias("model"), "arxiv_id", F.lit("unknown").alias("figure_type"),
        F.lit("stratified").alias("sample"), F.lit(-30.0).alias("pll_caption"), F.lit(10).alias("tokens_caption"),
        F.when(F.col("pair_id") == table(spark, lake, "pairs").agg(F.min("pair_id")).first()[0], 0.5)
        .otherwise(20.0).alias("ppl_caption"), F.lit(-20.0).alias("pll_recaption"), F.lit(10).alias("tokens_recaption"),
        F.lit(7.4).alias("ppl_recaption"), F.lit("ok").alias("status"), F.current_timestamp().alias("scored_at"))
    rows.write.format("delta").mode("append").save(lake_at(str(lake)).path("fluency_scores"))


def _cut_a_commit(spark, lake):
    """A pairs commit cut at a line boundary (its last add action gone), as a careless copy or a full disk
    leaves it: valid JSON lines, so Delta reads the table without the rows of that file."""
    commit = _last_commit_with_adds(lake, "pairs")
    lines = commit.read_text().splitlines(keepends=True)
    last_add = max(i for i, ln in enumerate(lines) if ln.startswith('{"add"'))
    commit.write_text("".join(lines[:last_add] + lines[last_add + 1:]))
    commit.with_suffix(".crc").unlink(missing_ok=True)                        # Delta's checksum of the version
    (commit.parent / f".{commit.name}.crc").unlink(missing_ok=True)           # Hadoop's of the file


def _last_commit_with_adds(lake, name) -> Path:
    log_dir = Path(lake) / name / "_delta_log"
    return max((p for p in log_dir.glob("*.json") if '{"add"' in p.read_text()), key=lambda p: p.name)


RECONCILED = "path_integrity.source_files:lines_reconciled"
PLANTS = {
    "doubled_pair": (_append_copy_of_a_pair,
                     {"deduplication.pairs:pair_id_unique", "deduplication.pairs:source_image_path_unique",
                      RECONCILED}),
    "cut_commit": (_cut_a_commit, {RECONCILED}),
    "missing_image_row": (_delete_an_image_row, {"path_integrity.pairs:image_row_exists"}),
    "dotdot_path": (_dotdot_path, {"path_integrity.pairs:image_path_no_dotdot"}),
    "unknown_flood": (_unknown_flood, {"schema_values.pairs:unknown_discipline_share"}),
    "quarantine_flood": (_quarantine_flood, {"schema_values.input_lines:quarantined_share", RECONCILED}),
    "score_out_of_range": (lambda s, lake: _clip_scores(s, lake, out_of_range=True),
                           {"schema_values.clip_scores:score_caption_range"}),
    "score_doubled": (lambda s, lake: _clip_scores(s, lake, doubled=True),
                      {"schema_values.clip_scores:one_row_per_pair_model"}),
    "signals_doubled": (lambda s, lake: _text_signals(s, lake, doubled=True),
                        {"schema_values.text_signals:one_row_per_pair"}),
    "signals_math_over_one": (lambda s, lake: _text_signals(s, lake, math_over_one=True),
                              {"schema_values.text_signals:caption_math_share_range"}),
    "fluency_below_one": (_fluency_below_one, {"schema_values.fluency_scores:ppl_caption_at_least_one"}),
}


# Plants validated together (one validate run per group, not per plant: ~35 s apiece): within a group no two
# plants share an expectation (the three that unbalance the source files' counts are in three groups), so each
# expectation that fails is one plant's, and its unexpected count says it saw that plant's rows alone.
TOGETHER = (("cut_commit", "missing_image_row", "dotdot_path", "unknown_flood", "score_out_of_range",
             "signals_math_over_one", "fluency_below_one"),
            ("score_doubled", "signals_doubled", "quarantine_flood"),
            ("doubled_pair",))
UNEXPECTED = {"image_row_exists": 1, "image_path_no_dotdot": 1, "pair_id_unique": 2, "source_image_path_unique": 2,
              "score_caption_range": 1, "caption_math_share_range": 1, "ppl_caption_at_least_one": 1,
              "one_row_per_pair_model": 2, "one_row_per_pair": 2}


def test_every_plant_is_validated_once():
    assert sorted(p for group in TOGETHER for p in group) == sorted(PLANTS)


@pytest.mark.parametrize("group", TOGETHER, ids=lambda g: "+".join(g))
def test_each_planted_violation_fails_exactly_its_expectation(spark, nodocs_cfg, lake_copy, group):
    for plant in group:
        PLANTS[plant][0](spark, lake_copy)
    expected = set().union(*(PLANTS[p][1] for p in group))
    assert sum(len(PLANTS[p][1]) for p in group) == len(expected)        # no expectation is two plants'
    outcome = validate.run(spark, nodocs_cfg, held(str(lake_copy), nodocs_cfg))
    assert failed(outcome) == expected and outcome.docs_index is None
    assert {r.key for r in outcome.critical_failures} == expected   # each of these is critical: the job exits 1
    for r in outcome.results:
        if r.expectation in UNEXPECTED and not r.success:
            assert r.unexpected_count == UNEXPECTED[r.expectation], (r.key, r.describe())
    present = {"score": "clip_scores", "signals": "text_signals", "fluency": "fluency_scores"}
    assert len(outcome.results) == expected_count(present=tuple({present[p.split("_")[0]] for p in group
                                                                 if p.split("_")[0] in present}))
    summary = outcome.summary_line()
    assert all(key in summary for key in expected)


def _paths_regex_engines_could_disagree_on(spark, lake):
    """Pairs whose image_path a Java and a Python regex could read apart: a newline before the end, a drive
    letter, a backslash, '..' as a whole name and inside one, non-ASCII, empty; and arXiv ids at the pattern's
    edges."""
    from pyspark.sql import functions as F

    paths = ["images/2101/2101.00001.tar.gz/a.png\n", "C:/images/x.png", "images\\..\\x.png", "images/a..b/x.png",
             "images/../x.png\n", "images/fig/\u00e9\u5716.png", "", "images/x/..", "\\\\host/x.png"]
    ids = ["2101.00001\n", "math/0101001", "math.AP/0101001", "2101.123456", "hep-th/0101001", None, "", "2101.0001",
           "q-bio.NC/0101001"]
    first = table(spark, lake, "pairs").orderBy("pair_id").first()
    rows = [first.asDict() | {"pair_id": f"{i:02d}{first.pair_id[2:]}", "image_path": p, "arxiv_id": a,
                              "source_line": 5_000_000 + i} for i, (p, a) in enumerate(zip(paths, ids, strict=True))]
    pairs = table(spark, lake, "pairs")
    (spark.createDataFrame(rows, pairs.schema).withColumn("caption", F.lit(" \n "))
     .write.format("delta").mode("append").save(lake_at(str(lake)).path("pairs")))


def test_both_engines_give_the_same_results(spark, cfg, lake_copy, tmp_path):
    """Every suite run by Great Expectations' pandas engine and by its Spark engine over the same frames (every
    plant at once, and values regex engines could read apart) gives the same verdicts, counts, observed
    values and, where the rows come in one order, the same unexpected values."""
    for plant, _ in PLANTS.values():
        plant(spark, lake_copy)
    _paths_regex_engines_could_disagree_on(spark, lake_copy)
    lake = held(str(lake_copy))
    lake.ensure_tables(spark, job="validate")
    raw = {t: lake.read(spark, t) for t in (*validate.NEEDED, *validate.OPTIONAL)}
    duplicates, _ = dedup.find(raw["pairs"], raw["images"], cfg.quality, lake.read(spark, "dhash_edges"),
                               dedup.DedupStats())
    on_spark = dataclasses.replace(cfg, quality=dataclasses.replace(cfg.quality, pandas_max_rows=0))
    duplicates = duplicates.cache()
    checks = validate._Checks({"pairs": validate.checked_pairs(raw["pairs"], raw["images"], duplicates, cfg,
                                                               validate.taxonomy(cfg)),
                               "images": validate.checked_images(raw["images"], duplicates)})
    frames, rows, _ = validate._frames(spark, on_spark, raw, checks)
    runner = quality.Runner(str(tmp_path / "gx"), str(tmp_path / "docs"),
                            dataclasses.replace(cfg.quality, data_docs="off"))
    params = validate.parameters(cfg)
    compared = failures = 0
    for suite in quality.load_suites():
        if suite.name.startswith("schema."):
            continue
        frame = frames[suite.table].orderBy(*frames[suite.table].columns)    # one order for both engines
        by = {e: {r.expectation: r for r in runner.run(suite, frame, params, f"engine-{e}", engine=e)}
              for e in quality.Runner.ENGINES}
        assert by["spark"].keys() == by["pandas"].keys() == set(suite.expectation_names)
        for name, s in by["spark"].items():
            p = by["pandas"][name]
            assert (s.success, s.element_count, s.unexpected_count, s.observed_value) == \
                   (p.success, p.element_count, p.unexpected_count, p.observed_value), (suite.name, name, s, p)
            assert s.unexpected_percent == pytest.approx(p.unexpected_percent), (suite.name, name)
            if "unique" not in s.expectation_type:      # which copy of a duplicate is listed first: engine's choice
                assert s.details == p.details, (suite.name, name)
            compared += 1
            failures += not s.success
    assert compared == sum(len(s.expectation_names) for s in quality.load_suites() if not s.name.startswith("schema."))
    assert failures >= 12 and rows["pairs"] > rows["images"]

    # An incremental validate's lake-wide numbers (incremental.lake_results, aggregated from the stored checks)
    # say of the same frames what Great Expectations says over all of them.
    lake_wide = lake_failed = 0
    for suite in quality.load_suites():
        if suite.table not in checks.frames or suite.name.startswith("schema."):
            continue
        assert incremental.supported(suite, params), suite.name
        gx = runner.run(suite, frames[suite.table], params, "whole", engine="pandas")
        ours = incremental.results_without_rows(
            suite, incremental.lake_results(checks.frames[suite.table].cache(), [suite], params))
        assert result_numbers(ours) == result_numbers(gx), suite.name
        lake_wide += len(gx)
        lake_failed += sum(not r.success for r in gx)
    assert lake_wide == 20 and lake_failed >= 6



def test_rows_lost_from_a_table_are_named_and_the_next_ingest_reads_their_file_again(spark, cfg, nodocs_cfg,
                                                                                     clean_corpus, lake_copy):
    """A pairs commit cut at a line boundary loses rows with no error anywhere: validate names the files
    whose rows disagree with ingest_log (critical) and marks them incomplete; the next ingest reads exactly
    those files again, and the lake is whole: the same rows as before the cut."""
    before = {r.pair_id for r in table(spark, lake_copy, "pairs").select("pair_id").collect()}
    _cut_a_commit(spark, lake_copy)
    lost = before - {r.pair_id for r in table(spark, lake_copy, "pairs").select("pair_id").collect()}
    assert lost
    outcome = validate.run(spark, nodocs_cfg, held(str(lake_copy), nodocs_cfg))
    (result,) = [r for r in outcome.critical_failures if r.key == RECONCILED]
    log_rows = {r.source_file: r for r in table(spark, lake_copy, "ingest_log").collect()}
    marked = {f for f, r in log_rows.items() if r.status == "incomplete"}
    assert marked and all(f in result.details for f in marked)
    assert all("ingest_log counted" in log_rows[f].detail and outcome.run_id in log_rows[f].detail for f in marked)
    _, listed = sources.discover(Store.from_uri(str(clean_corpus)))
    todo = ingest.changes(lake_at(lake_copy), listed)
    assert {f.rel for _, f in todo.jsonl} == marked and todo.archives == [] and todo.gone_files == []
    ingest.run(spark, cfg, str(clean_corpus), held(str(lake_copy), cfg))
    assert {r.pair_id for r in table(spark, lake_copy, "pairs").select("pair_id").collect()} == before
    again = validate.run(spark, nodocs_cfg, held(str(lake_copy), nodocs_cfg))
    assert RECONCILED not in failed(again)


def test_a_data_file_the_log_names_but_the_store_lacks_is_one_lake_damaged_line(lake_copy):
    from helpers import run_job
    from s1mmalign.errors import LakeError

    lake_at(str(lake_copy)).require_intact(validate.NEEDED)          # whole: nothing to say
    victim = sorted((lake_copy / "pairs").rglob("*.parquet"))[0]
    victim.unlink()
    with pytest.raises(LakeError, match=r"is damaged: 1 data file\(s\) .* are missing \(pairs/"):
        lake_at(str(lake_copy)).require_intact(validate.NEEDED)
    proc = run_job("validate", "--lake", str(lake_copy), submit=False)
    assert proc.returncode == 2, proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("validate:")]
    assert "is damaged" in line and victim.name in line and "Traceback" not in proc.stderr


def test_clean_clip_scores_pass(spark, strict_cfg, lake_copy):
    _clip_scores(spark, lake_copy)
    outcome = validate.run(spark, strict_cfg, held(str(lake_copy), strict_cfg))
    assert failed(outcome) == set()
    assert {r.suite for r in outcome.results} >= {"schema.clip_scores", "schema_values.clip_scores"}


def _plant_duplicate_images(corpus: Path) -> dict[str, str]:
    """Two new bioRxiv records: one whose image is a byte copy of another's, one a retouched copy whose
    perceptual hash differs from the original's by 1 or 2 bits (a hash new to the lake, within k)."""
    from s1mmalign import config
    from s1mmalign.ingest.images import analyze

    policy = config.load().ingest
    jsonl = corpus / "biorxiv" / "jsonl" / "biorxiv_2020.jsonl"
    records = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    pngs = [r for r in records if r["image_path"].endswith(".png")]
    exact_src, near_src = pngs[0], pngs[1]
    images = corpus / "biorxiv"
    exact_path, near_path = "images/10.1101_2020.900001/fig1.png", "images/10.1101_2020.900002/fig1.png"
    (images / exact_path).parent.mkdir(parents=True)
    shutil.copyfile(images / exact_src["image_path"], images / exact_path)
    original = (images / near_src["image_path"]).read_bytes()
    was = analyze(original, policy).dhash
    for i in range(200):           # a patch of ink somewhere: the first one that moves 1 or 2 hash bits
        im = Image.open(io.BytesIO(original)).convert("RGB")
        w, h = im.size
        x, y = (i % 10) * w // 10, (i // 10 % 10) * h // 10
        im.paste((0, 0, 0) if i < 100 else (255, 255, 255), (x, y, x + max(1, w // 12), y + max(1, h // 12)))
        buf = io.BytesIO()
        im.save(buf, "PNG")
        if 1 <= bin((analyze(buf.getvalue(), policy).dhash ^ was) & (1 << 64) - 1).count("1") <= 2:
            break
    else:
        raise AssertionError("no patch moved the hash by 1 or 2 bits")
    (images / near_path).parent.mkdir(parents=True)
    (images / near_path).write_bytes(buf.getvalue())
    with jsonl.open("a") as f:
        for path, src in ((exact_path, exact_src), (near_path, near_src)):
            f.write(json.dumps({**src, "image_path": path, "doi": "10.1101/" + path.split("/")[1][8:]}) + "\n")
    return {"exact_src": exact_src["image_path"], "exact": exact_path,
            "near_src": near_src["image_path"], "near": near_path}


def test_planted_duplicates_are_listed_and_nothing_else(spark, cfg, strict_cfg, clean_corpus, tmp_path):
    """...also when they arrive in a refresh after a validate in the same session (Great Expectations persists
    the frames it validates: a cache left behind answered the next run with the tables' old versions)."""
    corpus = tmp_path / "corpus"
    shutil.copytree(clean_corpus, corpus)
    lake = tmp_path / "lake"
    ingest.run(spark, cfg, str(corpus), held(str(lake), cfg))
    first = validate.run(spark, strict_cfg, held(str(lake), strict_cfg))
    assert failed(first) == set() and first.stats.search == "in full (no stored band keys)"
    planted = _plant_duplicate_images(corpus)
    ingest.run(spark, cfg, str(corpus), held(str(lake), cfg))
    outcome = validate.run(spark, strict_cfg, held(str(lake), strict_cfg))
    assert failed(outcome) == {"deduplication.pairs:exact_duplicate_share",
                               "deduplication.images:near_duplicate_share"}
    assert outcome.critical_failures == []          # duplicate shares are warnings: the job exits 0
    rows = table(spark, lake, "duplicates").collect()
    got = {(r.group_kind, r.source, r.image_path) for r in rows}
    assert got == {("exact", "biorxiv", planted["exact_src"]), ("exact", "biorxiv", planted["exact"]),
                   ("near", "biorxiv", planted["near_src"]), ("near", "biorxiv", planted["near"])}
    exact = [r for r in rows if r.group_kind == "exact"]
    assert len({r.group_id for r in exact}) == 1 and exact[0].group_id == exact[0].image_sha256
    near = [r for r in rows if r.group_kind == "near"]
    assert len({r.group_id for r in near}) == 1 and {r.group_pairs for r in near} == {2}
    assert len({r.image_sha256 for r in near}) == 2 and all(r.distance <= cfg.quality.near_duplicate_distance
                                                            for r in near)
    assert outcome.stats.exact_groups == 1 and outcome.stats.near_clusters == 1
    # the near pair was found by banding only the refresh's new hashes against the stored band keys
    assert outcome.stats.search == "incremental (1 new hashes)"
    # only the groups of the refresh's two pairs found again (and their images: one new, one a copy)
    assert outcome.stats.built.startswith("updated (2 image(s) of pairs changed or images added since pairs version")
    columns = [c for c in schemas.table("duplicates").names if c not in ("validate_run_id", "computed_at")]

    def dups():
        return sorted(tuple(r) for r in table(spark, lake, "duplicates").select(*columns).collect())

    def found_over_everything():
        at = lake_at(str(lake))
        rows, _ = dedup.find(at.read(spark, "pairs"), at.read(spark, "images"), cfg.quality,
                             at.read(spark, "dhash_edges"))
        return sorted(tuple(r) for r in rows.select(*columns).collect())

    assert dups() == found_over_everything()

    def edit(path, **change):        # the planted line of `path`, changed in place
        jsonl = corpus / "biorxiv" / "jsonl" / "biorxiv_2020.jsonl"
        lines = [json.loads(x) for x in jsonl.read_text().splitlines()]
        lines = [{**x, **change} if x["image_path"] == path else x for x in lines]
        jsonl.write_text("".join(json.dumps(x) + "\n" for x in lines))
        ingest.run(spark, cfg, str(corpus), held(str(lake), cfg))

    kept = dups()
    assert len(kept) == 4
    # a caption edited: pairs changed, nothing duplicates are made of; the table is kept as it is (and the
    # default thresholds tolerate one duplicate in ~120 pairs: nothing fails)
    edit(planted["exact"], caption="edited caption")
    edited = validate.run(spark, cfg, held(str(lake), cfg))
    assert failed(edited) == set() and edited.stats.search == "incremental (0 new hashes)"
    assert edited.stats.built.startswith("kept") and dups() == kept
    assert (edited.stats.exact_groups, edited.stats.near_clusters) == (1, 1)
    # the copy's bytes replaced by the near original's (an update of image_sha256, same pair_id): built anew
    shutil.copyfile(corpus / "biorxiv" / planted["near_src"], corpus / "biorxiv" / planted["exact"])
    edit(planted["exact"], caption="edited again")
    moved = validate.run(spark, cfg, held(str(lake), cfg))
    assert moved.stats.built.startswith("updated (2 image(s) of pairs changed")    # the copy's old and new bytes
    now = dups()
    assert now == found_over_everything()
    exact_paths = {r.image_path for r in table(spark, lake, "duplicates").where("group_kind = 'exact'").collect()}
    assert now != kept and exact_paths == {planted["near_src"], planted["exact"]}
    # a full run (--full: every hash banded anew) gives the same duplicates
    full = validate.run(spark, cfg, held(str(lake), cfg), full=True)
    assert full.stats.search == "in full (--full)" and full.stats.built == "built anew (--full)"
    assert dups() == now
    results = table(spark, lake, "quality_results")
    assert results.select("validate_run_id").distinct().count() == 5
    assert results.count() == 5 * expected_count()


def test_missing_tables_are_a_clear_error(tmp_path, lake_copy):
    """The job's one check of validate.NEEDED, before Spark starts: the missing table and who writes it."""
    from s1mmalign.errors import JobError, LakeError

    missing = r"no pairs, images, quarantine, ingest_log table\(s\): run jobs/ingest.py first"
    with pytest.raises(LakeError, match=missing):
        lake_at(str(tmp_path / "empty-lake")).require(validate.NEEDED)
    shutil.rmtree(lake_copy / "quarantine")
    with pytest.raises(LakeError, match=r"has no quarantine table\(s\)") as caught:
        lake_at(str(lake_copy)).require(validate.NEEDED)
    assert isinstance(caught.value, JobError)                   # cli.main: one line, exit 2
    lake_at(str(lake_copy)).require(("pairs", "images", "ingest_log"))


def _text(dom: str) -> str:
    """What a reader sees of a page: its text, scripts and styles left out."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", dom)).split())


def test_data_docs_show_the_results_offline_and_nothing_leaves(spark, strict_cfg, lake_copy, tmp_path, monkeypatch):
    """A validation with a failure; its Data Docs opened in Chromium with every host name unresolvable: the
    failed expectation's counts and unexpected value are on screen (drawn by the docs folder's own copies of
    bootstrap-table and jQuery), the pages asked for nothing but their own files, and the job itself opened
    no connection off this machine."""
    _dotdot_path(spark, lake_copy)
    outside = []
    connect = socket.socket.connect

    def watched(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                local = ipaddress.ip_address(address[0]).is_loopback
            except ValueError:
                local = address[0] == "localhost"
            if not local:
                outside.append(address)
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", watched)
    docs = tmp_path / "docs"
    outcome = validate.run(spark, strict_cfg, held(str(lake_copy), strict_cfg), out=str(docs))
    monkeypatch.undo()
    assert outside == []
    assert outcome.docs_index == str(docs / "index.html") and outcome.docs_note == "offline"
    (bad,) = [r for r in outcome.results if not r.success]
    assert bad.key == "path_integrity.pairs:image_path_no_dotdot" and bad.unexpected_count == 1
    planted = json.loads(bad.details)["unexpected"][0]
    asked: list[str] = []
    index = _text(browse(docs / "index.html", tmp_path, asked))
    assert outcome.run_id in index and "path_integrity.pairs" in index and "schema_values.input_lines" in index
    (page,) = (docs / "validations" / "path_integrity" / "pairs").rglob("*.html")
    shown = _text(browse(page, tmp_path, asked))
    assert [u for u in asked if not u.startswith("file:")] == [], asked
    assert re.search(rf"Unsuccessful Expectations {bad.unexpected_count}\b", shown), shown[:2000]
    assert planted in shown and re.search(rf"\b{bad.element_count}\b total rows", shown), shown[:4000]

    # A second run renders its own pages and the index, not the first run's again (a build costs one run's
    # pages, not the history); its pages are offline too, and the index lists both runs. It changed nothing:
    # it re-checked no row, and ran every suite on the stored checks (few enough rows for the driver).
    first = {p: p.stat().st_mtime_ns for p in (docs / "validations").rglob("*.html")}
    again = validate.run(spark, strict_cfg, held(str(lake_copy), strict_cfg), out=str(docs))
    assert again.checks.startswith("incremental: 0 pairs and 0 images re-checked")
    assert {p: p.stat().st_mtime_ns for p in first} == first
    new = [p for p in (docs / "validations").rglob("*.html") if p not in first]
    assert len(new) == len(first) and all(again.run_id in str(p) for p in new)
    index = (docs / "index.html").read_text()       # (the page shows 10 rows at a time: read its table)
    assert outcome.run_id in index and again.run_id in index
    (page,) = [p for p in new if "path_integrity/pairs" in p.as_posix()]
    assert planted in _text(browse(page, tmp_path, asked))
    assert [u for u in asked if not u.startswith("file:")] == [], asked


def test_text_signal_shares_over_their_thresholds_are_warnings(spark, cfg, nodocs_cfg, lake_copy):
    """The text signal shares are warnings with thresholds in conf: over them, named; the lake still passes."""
    from pyspark.sql import functions as F

    _text_signals(spark, lake_copy)
    outcome = validate.run(spark, nodocs_cfg, held(str(lake_copy), nodocs_cfg))
    assert failed(outcome) == set() and len(outcome.results) == expected_count(present=("text_signals",))
    path = lake_at(str(lake_copy)).path("text_signals")
    pairs = table(spark, lake_copy, "pairs").count()
    some = [r.pair_id for r in table(spark, lake_copy, "text_signals").orderBy("pair_id").limit(pairs // 10).collect()]
    DeltaTable.forPath(spark, path).update(F.col("pair_id").isin(some), {
        "recaption_lang": F.lit("de"), "recaption_truncated": F.lit(True), "caption_key": F.lit("k"),
        "row_hash": F.lit("stale")})
    # 10% of pairs: over non_english 0.02 and truncated_recaption 0.05; boilerplate needs 3 papers
    outcome = validate.run(spark, nodocs_cfg, held(str(lake_copy), nodocs_cfg))
    assert failed(outcome) == {"schema_values.text_signals:non_english_share",
                               "schema_values.text_signals:truncated_recaption_share",
                               "schema_values.text_signals:boilerplate_share",
                               "schema_values.text_signals:signals_current"}
    assert outcome.critical_failures == []
    loose = dataclasses.replace(nodocs_cfg, quality=dataclasses.replace(nodocs_cfg.quality, thresholds={
        **nodocs_cfg.quality.thresholds, "non_english_share_max": 0.2}))
    assert "schema_values.text_signals:non_english_share" not in failed(validate.run(spark, loose,
                                                                                     held(str(lake_copy), loose)))
