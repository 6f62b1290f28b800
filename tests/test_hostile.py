"""Issue 12's hostile corpus through spark-submit in one run: every line of every file ends in exactly one
of pairs or quarantine with the outcome it must get, special files are reported, nothing outside the root
is read, and a re-run changes nothing."""

from __future__ import annotations

import pytest

import hostile
from helpers import run_job, snapshot, table_rows

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    expected = hostile.build(base / "corpus")
    conf = base / "small-chunks.yaml"   # 1 MB chunks: the 50 MB line crosses fifty chunk boundaries
    conf.write_text("ingest:\n  jsonl_chunk_bytes: 1048576\n")
    lake = base / "lake"
    proc = run_job("ingest", "--source", str(base / "corpus"), "--lake", str(lake), "--conf", str(conf))
    yield expected, lake, conf, proc, base


def test_one_run_over_the_hostile_corpus_gives_every_line_one_outcome(spark, hostile_run):
    expected, lake, _, proc, _ = hostile_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    pairs = table_rows(spark, lake, "pairs", "source_file", "source_line", "source", "image_path", "image_sha256",
                       "image_format")
    quarantine = table_rows(spark, lake, "quarantine", "source_file", "source_line", "reason", "detail", "raw")
    for source_file, outcomes in expected["lines"].items():      # file by file
        got: dict[int, list[str]] = {}
        for r in pairs:
            if r.source_file == source_file:
                got.setdefault(r.source_line, []).append("pair")
        for r in quarantine:
            if r.source_file == source_file:
                got.setdefault(r.source_line, []).append(r.reason)
        assert {n: v for n, v in got.items() if len(v) > 1} == {}, f"{source_file}: lines with two outcomes"
        assert {n: v[0] for n, v in got.items()} == outcomes, source_file
    for r in pairs:                   # the image each pair must carry: the last of a repeated name, MPO as JPEG
        assert r.image_sha256 == expected["sha"][(r.source, r.image_path)], r
    assert {r.image_format for r in pairs if r.image_path.endswith("00004.tar.gz/fig1.png")} == {"JPEG"}
    files = {r.source_file for r in pairs} | {r.source_file for r in quarantine}
    assert files == set(expected["lines"]), "rows from a file that must not be read"
    too_long = [r for r in quarantine if r.reason == "line_too_long"]
    assert len(too_long) == 1 and len(too_long[0].raw) <= 4096
    assert int(too_long[0].detail.split()[0]) > hostile.BIG_LINE_BYTES     # its length, counted while read past
    index = [(r.source, r.image_path) for r in table_rows(spark, lake, "image_index", "source", "image_path")]
    assert len(index) == len(set(index)), "a member name twice in image_index"
    missing = {r.source_file: r.detail for r in quarantine if r.reason == "image_missing"}
    assert "images_2012" in missing["arxiv/jsonl/h.jsonl"]
    assert "images_2012" not in missing["treesrc/jsonl/t.jsonl"]   # another source's broken archive


def test_ingest_log_reports_special_files_and_counts_every_line(spark, hostile_run):
    expected, lake, _, _, _ = hostile_run
    log = {r.source_file: r for r in table_rows(spark, lake, "ingest_log", "source_file", "status", "detail",
                                                 "read", "accepted", "quarantined")}
    assert {f: log[f].status for f in expected["log"]} == expected["log"]
    assert "link out of the source root" in log["arxiv/jsonl/outside.jsonl"].detail
    assert "FIFO" in log["arxiv/jsonl/pipe.jsonl"].detail
    assert f"GNU long-name header of {256 << 20} bytes" in log[hostile.BOMB_TAR].detail
    assert log[hostile.BOMB_TAR].read == 1                   # the member before the header was read
    for name in ("arxiv/jsonl/caf%E9.jsonl", "arxiv/images_caf%E9.tar.gz"):
        assert "not UTF-8" in log[name].detail and log[name].read == 0
    for source_file, outcomes in expected["lines"].items():
        r = log[source_file]
        assert (r.read, r.accepted, r.quarantined) == (
            len(outcomes), sum(v == "pair" for v in outcomes.values()), sum(v != "pair" for v in outcomes.values()))


def test_a_rerun_changes_nothing(spark, hostile_run):
    _, lake, conf, _, base = hostile_run
    before = {t: snapshot(spark, lake, t) for t in ("pairs", "quarantine", "ingest_log")}
    proc = run_job("ingest", "--source", str(base / "corpus"), "--lake", str(lake), "--conf", str(conf))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # spark-submit's Python runner sends the driver's stderr (our log) to its stdout
    assert "nothing changed since the last run" in proc.stdout + proc.stderr
    assert {t: snapshot(spark, lake, t) for t in before} == before
