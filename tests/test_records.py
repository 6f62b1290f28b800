import json

import pytest

from s1mmalign import config
from s1mmalign.ingest import records
from s1mmalign.ingest.disciplines import DisciplineMap

DMAP = DisciplineMap.from_conf(config.load(environ={}).disciplines)
ARXIV = records.LineContext("arxiv", "arxiv/jsonl/24_recaption.jsonl", True, DMAP, 100)
BIO = records.LineContext("biorxiv", "biorxiv/jsonl/b.jsonl", False, DMAP, 100)


def line(obj) -> bytes:
    return json.dumps(obj).encode()


GOOD = {"image_path": "images/2401/2401.00008.tar.gz/fig001.png", "caption": "Figure 1: x", "recaption": "A",
        "metadata": {"arxiv_id": "2401.00008v2", "title": "T", "categories": ["cs.LG", "stat.ML"],
                     "figure_type": "plot"}}


def test_nested_record():
    row = records.parse_line(line(GOOD), 5, ARXIV)
    assert "reason" not in row
    assert row["source_line"] == 5 and row["source_file"] == ARXIV.source_file
    assert row["arxiv_id"] == "2401.00008" and row["arxiv_version"] == 2
    assert row["paper_id"] == "2401.00008"
    assert row["categories"] == ["cs.LG", "stat.ML"] and row["primary_category"] == "cs.LG"
    assert row["discipline"] == "computer_science"
    assert json.loads(row["metadata_json"])["figure_type"] == "plot"
    assert row["pair_id"] == records.pair_id("arxiv", GOOD["image_path"])


def test_top_level_metadata_and_unknown_fields_are_kept():
    obj = {"image_path": "images/0701/0701001.tar.gz/fig1.png", "caption": "c", "arxiv_id": "hep-th/0701001",
           "categories": "hep-th math.AP", "title": "Old", "brand_new_field": [1, 2]}
    row = records.parse_line(line(obj), 1, ARXIV)
    assert "reason" not in row
    assert row["arxiv_id"] == "hep-th/0701001" and row["categories"] == ["hep-th", "math.AP"]
    assert row["discipline"] == "physics" and row["title"] == "Old"
    assert json.loads(row["metadata_json"]) == {"brand_new_field": [1, 2]}


def test_old_style_without_categories_uses_its_archive():
    obj = {"image_path": "images/0701/0701001.tar.gz/fig1.png", "caption": "c",
           "metadata": {"arxiv_id": "astro-ph/0701001"}}
    assert records.parse_line(line(obj), 1, ARXIV)["discipline"] == "astronomy"


def test_arxiv_id_from_path_when_absent():
    obj = {"image_path": "images/1805/1805.01234.tar.gz/fig1.png", "recaption": "r"}
    row = records.parse_line(line(obj), 1, ARXIV)
    assert row["arxiv_id"] == "1805.01234" and row["discipline"] == "unknown"


def test_non_arxiv_source_ids():
    obj = {"image_path": "images/10.1101_x/fig1.png", "caption": "c", "metadata": {"doi": "10.1101/x"}}
    row = records.parse_line(line(obj), 1, BIO)
    assert row["arxiv_id"] is None and row["paper_id"] == "10.1101/x" and row["discipline"] == "biology"
    obj["metadata"] = {}
    assert records.parse_line(line(obj), 1, BIO)["paper_id"] == "biorxiv:10.1101_x"


def test_bom_crlf_blank():
    assert "reason" not in records.parse_line(records.BOM + line(GOOD) + b"\r", 1, ARXIV)
    assert records.parse_line(b"", 3, ARXIV) is None
    assert records.parse_line(b"  \t\r", 3, ARXIV) is None
    # a BOM is only a BOM on the first line
    assert records.parse_line(records.BOM + line(GOOD), 2, ARXIV)["reason"] == "malformed_json"


@pytest.mark.parametrize("raw, reason", [
    (b'{"image_path": "a.png", "caption": "x"', "malformed_json"),
    (b'{"image_path": "a.png", "caption": "\xff"}', "invalid_utf8"),
    (b"[1, 2]", "not_an_object"),
    (b"null", "not_an_object"),
    (line({**GOOD, "caption": 3}), "wrong_type"),
    (line({**GOOD, "image_path": 7}), "wrong_type"),
    (line({**GOOD, "metadata": "x"}), "wrong_type"),
    (line({**GOOD, "metadata": {"arxiv_id": "2401.00008", "categories": [1]}}), "wrong_type"),
    (line({**GOOD, "metadata": {"arxiv_id": 2401.00008}}), "wrong_type"),
    (line({"caption": "c", "metadata": GOOD["metadata"]}), "missing_field"),
    (line({**GOOD, "image_path": ""}), "missing_field"),
    (line({**GOOD, "caption": " ", "recaption": None}), "empty_caption"),
    (line({**GOOD, "metadata": {"arxiv_id": "2401.0008"}}), "bad_arxiv_id"),
    (line({**GOOD, "image_path": "/etc/passwd"}), "unsafe_path"),
    (line({**GOOD, "image_path": "images/../../x.png"}), "unsafe_path"),
    (line({**GOOD, "image_path": "C:\\figs\\x.png"}), "unsafe_path"),
    (line({**GOOD, "image_path": "images\\..\\x.png"}), "unsafe_path"),
    (line({"image_path": "images/0705/0606282.tar.gz/f.png", "caption": "c"}), "missing_field"),
    (line({**GOOD, "metadata": {**GOOD["metadata"], "score": "<n>"}}).replace(b'"<n>"', b"NaN"), "invalid_value"),
    (line({**GOOD, "width": "<n>"}).replace(b'"<n>"', b"-Infinity"), "invalid_value"),
    (line({**GOOD, "metadata": {**GOOD["metadata"], "s": ["<n>"]}}).replace(b'"<n>"', b"Infinity"), "invalid_value"),
])
def test_rejects(raw, reason):
    row = records.parse_line(raw, 9, ARXIV)
    assert row["reason"] == reason, row
    assert row["source_line"] == 9 and row["detail"]
    assert len(row["raw"]) <= 100


def test_raw_is_capped_and_invalid_utf8_kept_readable():
    row = records.parse_line(b'{"x": "' + b"a" * 500 + b'\xff"}', 1, ARXIV)
    assert row["reason"] == "invalid_utf8" and len(row["raw"]) == 100 and row["raw"].startswith('{"x"')


def test_pair_id_is_stable_and_source_scoped():
    a = records.pair_id("arxiv", "images/x.png")
    assert a == records.pair_id("arxiv", "images/x.png") and len(a) == 32
    assert a != records.pair_id("biorxiv", "images/x.png")


def test_leading_dot_slash_is_normalized():
    row = records.parse_line(line({**GOOD, "image_path": "./" + GOOD["image_path"]}), 1, ARXIV)
    assert row["image_path"] == GOOD["image_path"]
