"""Suites as data (expectations/*.json) and the per-row checks the suites run on."""

import dataclasses
import json
from pathlib import Path

import pytest

from s1mmalign import resources
from s1mmalign.config import QualityConf
from s1mmalign.lake import schemas
from s1mmalign.validate import pipeline as validate
from s1mmalign.validate import quality


def _params(spec):
    """Every $PARAMETER name a suite refers to."""
    if isinstance(spec, dict):
        if set(spec) == {"$PARAMETER"}:
            return {spec["$PARAMETER"]}
        return set().union(*(_params(v) for v in spec.values())) if spec else set()
    if isinstance(spec, list):
        return set().union(*(_params(v) for v in spec)) if spec else set()
    return set()


def test_suites_load_with_groups_severities_and_unique_names():
    suites = quality.load_suites()
    assert {s.group for s in suites} == set(quality.GROUPS)
    names = {s.name for s in suites}
    for need in ("path_integrity.pairs", "path_integrity.images", "deduplication.pairs", "deduplication.images",
                 "schema_values.pairs", "schema_values.quarantine", "schema_values.input_lines",
                 "schema_values.clip_scores", "schema.pairs", "schema.images"):
        assert need in names
    for s in suites:
        assert len(set(s.expectation_names)) == len(s.expectation_names)
        for exp in s.spec["expectations"]:
            assert exp["severity"] in quality.SEVERITIES


def test_schema_suites_match_schemas_yaml():
    """The stored schema suites are what schemas/tables.yaml generates (rerun --write-schema-suites)."""
    for table in quality.SCHEMA_TABLES:
        stored = json.loads(resources.read_text("expectations", f"schema.{table}.json"))
        assert stored == quality.schema_suite(table), f"expectations/schema.{table}.json is stale"
    cols = quality.schema_suite("pairs")["expectations"][0]["kwargs"]["column_set"]
    assert cols == schemas.table("pairs").names


def test_every_parameter_a_suite_uses_comes_from_conf(cfg):
    given = set(validate.parameters(cfg))
    for suite in quality.load_suites():
        missing = _params(suite.spec) - given
        assert not missing, f"{suite.name} refers to {missing}, which conf does not give"
    assert validate.parameters(cfg)["quarantine_reasons"] == list(schemas.quarantine_reasons())
    assert "unknown" in validate.parameters(cfg)["disciplines"]


@pytest.mark.parametrize("change,message", [
    (lambda s: s["expectations"][0].update(severity="fatal"), "severity"),
    (lambda s: s["expectations"][1]["meta"].update(name=s["expectations"][0]["meta"]["name"]), "unique"),
    (lambda s: s["meta"].update(group="misc"), "meta.group"),
    (lambda s: s.update(name="other"), "file name"),
])
def test_broken_suite_files_are_refused(change, message):
    spec = json.loads(resources.read_text("expectations", "path_integrity.pairs.json"))
    change(spec)
    with pytest.raises(quality.SuiteError, match=message):
        quality._check(spec, "path_integrity.pairs.json")


def test_the_engine_is_pandas_up_to_pandas_max_rows_and_never_with_0():
    conf = dataclasses.replace(QualityConf(), pandas_max_rows=1000)
    assert [quality.engine(n, conf) for n in (0, 999, 1000, 1001, None)] == ["pandas"] * 3 + ["spark"] * 2
    never = dataclasses.replace(conf, pandas_max_rows=0)
    assert [quality.engine(n, never) for n in (0, 1)] == ["spark", "spark"]


def test_results_from_pandas_keep_numbers_as_numbers():
    """pandas' results hold numpy scalars: stored as the numbers they are, not as their text."""
    import numpy as np

    assert quality.json_text({"unexpected": [np.int64(5), np.float64(0.5), "x"]}) == '{"unexpected": [5, 0.5, "x"]}'


def test_files_added_are_the_appended_files_and_none_when_rows_may_have_gone(tmp_path):
    """Lake.files_added on a local table (delta-rs): the files of the appends in between; None with the reason
    once a file was removed (an overwrite) or the table has deletion vectors."""
    import pyarrow as pa
    from deltalake import write_deltalake

    from helpers import lake_at

    lake = lake_at(tmp_path / "lake")
    uri = lake.path("images")
    for n in (1, 2, 3):
        write_deltalake(uri, pa.table({"image_dhash": list(range(n))}), mode="append")
    added, how = lake.files_added("images", 0, 2)
    assert how == "2 file(s) added to images since version 0" and len(added) == 2
    assert all(Path(f).is_file() and Path(f).parent == Path(uri) for f in added)
    assert lake.files_added("images", 2, 2) == ([], "0 file(s) added to images since version 2")
    write_deltalake(uri, pa.table({"image_dhash": [7]}), mode="overwrite")
    assert lake.files_added("images", 2, 3) == (None, "3 file(s) of images removed since version 2")
    dv = lake_at(tmp_path / "dv").path("images")
    for n in (1, 2):
        write_deltalake(dv, pa.table({"image_dhash": list(range(n))}), mode="append",
                        configuration={"delta.enableDeletionVectors": "true"})
    assert lake_at(tmp_path / "dv").files_added("images", 0, 1) == (None, "images has deletion vectors")


def test_taxonomy_has_current_and_legacy_categories(cfg):
    cats = set(validate.taxonomy(cfg))
    assert {"cs.LG", "math.AP", "astro-ph.CO", "hep-th", "q-bio.NC", "solv-int", "physics.optics"} <= cats
    assert "cs.XX" not in cats and "cs" not in cats


PATH_SCHEMA = "pair_id string, source string, arxiv_id string, image_path string"


def test_path_checks_report_each_defect_once(spark, cfg):
    source_df = spark.createDataFrame([
        ("ok_new", "arxiv", "2401.00008", "images/2401/2401.00008.tar.gz/fig001.png"),
        ("ok_old", "arxiv", "hep-th/0606282", "images/0606/0606282.tar.gz/fig002.png"),
        ("ok_bio", "biorxiv", None, "images/10.1101_2020.000001/fig1.png"),
        ("dotdot", "arxiv", "2401.00008", "images/2401/../2401.00008.tar.gz/fig001.png"),
        ("absolute", "biorxiv", None, "/etc/fig1.png"),
        ("drive", "biorxiv", None, "C:\\figs\\fig1.png"),
        ("off_layout_arxiv", "arxiv", "2401.00008", "figs/2401.00008/fig001.png"),
        ("off_layout_bio", "biorxiv", None, "images/a/b/fig1.png"),
        ("other_id", "arxiv", "2401.00009", "images/2401/2401.00008.tar.gz/fig001.png"),
        ("other_month", "arxiv", "2401.00008", "images/2402/2401.00008.tar.gz/fig001.png"),
        ("old_other", "arxiv", "hep-th/0606283", "images/0606/0606282.tar.gz/fig002.png"),
        ("no_id", "arxiv", None, "images/2401/2401.00008.tar.gz/fig001.png"),
    ], PATH_SCHEMA)
    actual = {r.pair_id: (r.path_off_layout, r.path_arxiv_mismatch)
              for r in source_df.transform(validate.with_path_checks(cfg)).collect()}
    assert actual == {
        "ok_new": (None, None), "ok_old": (None, None), "ok_bio": (None, None),
        "dotdot": (None, None), "absolute": (None, None), "drive": (None, None),   # caught by the path regexes
        "off_layout_arxiv": ("figs/2401.00008/fig001.png", None),
        "off_layout_bio": ("images/a/b/fig1.png", None),
        "other_id": (None, "images/2401/2401.00008.tar.gz/fig001.png <> 2401.00009"),
        "other_month": (None, "images/2402/2401.00008.tar.gz/fig001.png <> 2401.00008"),
        "old_other": (None, "images/0606/0606282.tar.gz/fig002.png <> hep-th/0606283"),
        "no_id": (None, "images/2401/2401.00008.tar.gz/fig001.png <> null"),
    }


def test_value_checks(spark, cfg):
    source_df = spark.createDataFrame([
        ("a", "unknown", ["q-fin.ST"], "Figure 1: x", "  "),
        ("b", "physics", ["hep-th", "cs.ZZ"], None, "A long recaption"),
        ("c", "physics", None, "", "r"),
    ], "pair_id string, discipline string, categories array<string>, caption string, recaption string")
    actual = {r.pair_id: (r.is_unknown, r.has_unknown_category, r.caption_chars, r.recaption_chars,
                          r.recaption_present)
              for r in source_df.transform(validate.with_value_checks(cfg, validate.taxonomy(cfg))).collect()}
    assert actual == {"a": (1, 0, 11, 2, 0), "b": (0, 1, 0, 16, 1), "c": (0, 0, 0, 1, 1)}
