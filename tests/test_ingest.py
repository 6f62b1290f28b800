"""The ingest pipeline in a local Spark session: the invariant, idempotence, incremental refresh."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
from delta.tables import DeltaTable

from helpers import assert_image_bytes, assert_invariant, manifest, snapshot, table_rows
from s1mmalign import delta_io, ingest, schemas


@pytest.fixture(scope="module")
def small_chunks(cfg):
    """Tiny JSONL chunks, so that every file is parsed by several tasks across line boundaries."""
    return dataclasses.replace(cfg, ingest=dataclasses.replace(cfg.ingest, jsonl_chunk_bytes=4096))


def versions(spark, lake) -> dict[str, int]:
    return {t: DeltaTable.forPath(spark, delta_io.table_path(str(lake), t)).history(1).first().version
            for t in schemas.lake_tables("ingest")}


def test_faults_corpus_every_line_in_exactly_one_table(spark, small_chunks, corpus_copy, tmp_path):
    lake = tmp_path / "lake"
    summary = ingest.run(spark, small_chunks, str(corpus_copy), str(lake))
    expected = manifest(corpus_copy)
    pairs, quarantine = assert_invariant(spark, lake, expected)
    assert summary.lines == len(expected) and summary.pairs == len(pairs)
    reasons = {r.reason for r in quarantine}
    assert reasons == {e["expect"] for e in expected.values()} - {"pair"}
    assert reasons <= set(schemas.quarantine_reasons())
    assert_image_bytes(spark, lake, pairs)

    log = {r.source_file: r for r in table_rows(spark, lake, "ingest_log", "source_file", "kind", "status",
                                                 "read", "accepted", "quarantined", "checksum", "detail")}
    assert log["arxiv/images_2012.tar.gz"].status == "truncated"
    assert log["arxiv/images_2019.tar.gz.partaa"].status == "missing_part"
    assert log["arxiv/images_2024.tar.gz"].status == "ok" and len(log["arxiv/images_2024.tar.gz"].checksum) == 64
    f24 = log["arxiv/jsonl/24_recaption.jsonl"]
    n24 = [e for k, e in expected.items() if k[0] == "arxiv/jsonl/24_recaption.jsonl"]
    assert (f24.read, f24.accepted) == (len(n24), sum(e["expect"] == "pair" for e in n24))
    assert f24.accepted + f24.quarantined == f24.read

    # Images cut off by the broken archives say so; nothing of the unsafe members was written.
    lost = [r for r in table_rows(spark, lake, "quarantine", "reason", "detail", "source_file")
            if r.reason == "image_missing" and r.source_file == "arxiv/jsonl/12_recaption.jsonl"]
    assert lost and all("images_2012.tar.gz" in r.detail for r in lost)
    assert not os.path.exists("/tmp/s1mmalign-evil.png")
    assert not (corpus_copy / "evil.png").exists() and not (corpus_copy.parent / "evil.png").exists()

    # Partitioned by discipline, ids normalized, catalog registered.
    assert set(DeltaTable.forPath(spark, delta_io.table_path(str(lake), "pairs")).detail()
               .first().partitionColumns) == {"discipline"}
    assert spark.sql("SHOW TABLES IN s1mmalign").where("tableName = 'pairs'").count() == 1

    # A second run over unchanged sources reads nothing and writes nothing.
    before = versions(spark, lake)
    again = ingest.run(spark, small_chunks, str(corpus_copy), str(lake))
    assert (again.jsonl_files, again.archives, again.images_read) == (0, 0, 0)
    assert versions(spark, lake) == before


def test_incremental_new_changed_and_touched_files(spark, cfg, corpus_copy, tmp_path):
    lake = tmp_path / "lake"
    ingest.run(spark, cfg, str(corpus_copy), str(lake))
    expected = manifest(corpus_copy)
    before_pairs = snapshot(spark, lake, "pairs")
    images_before = snapshot(spark, lake, "images")

    # A new JSONL file whose records use images already in an (unchanged) archive: only its rows are
    # added, resolved from the image index without reading any archive.
    chem = sorted((k, e) for k, e in expected.items() if e["source"] == "chemrxiv" and e["expect"] == "pair")
    first_key, first = chem[0]
    original = (corpus_copy / first_key[0]).read_text().splitlines()[first_key[1] - 1]
    new_file = corpus_copy / "chemrxiv" / "jsonl" / "chemrxiv_2022.jsonl"
    moved = json.loads(original)
    new_file.write_text(json.dumps({**moved, "image_path": "images/none/fig9.png"}) + "\n" + "\n"
                        + '{"broken json\n')
    summary = ingest.run(spark, cfg, str(corpus_copy), str(lake))
    assert (summary.jsonl_files, summary.archives, summary.images_read) == (1, 0, 0)
    assert snapshot(spark, lake, "pairs") == before_pairs          # no pair added or touched
    q_new = {(r.source_line, r.reason) for r in table_rows(spark, lake, "quarantine", "source_file",
                                                           "source_line", "reason")
             if r.source_file == "chemrxiv/jsonl/chemrxiv_2022.jsonl"}
    assert q_new == {(1, "image_missing"), (3, "malformed_json")}

    # Change an existing file: edit one caption, drop one line. That pair is updated, the dropped
    # one is gone, nothing doubles, and other files' rows stay as they were.
    rel = first_key[0]
    lines = (corpus_copy / rel).read_text().splitlines()
    edited = json.loads(lines[first_key[1] - 1])
    edited["caption"] = "Figure 1: an edited caption."
    lines[first_key[1] - 1] = json.dumps(edited)
    dropped_key, dropped = chem[1]
    lines[dropped_key[1] - 1] = ""              # blank: line numbers of the others stay the same
    (corpus_copy / rel).write_text("\n".join(lines) + "\n")
    summary = ingest.run(spark, cfg, str(corpus_copy), str(lake))
    assert (summary.jsonl_files, summary.archives) == (1, 0)
    rows = {r.pair_id: r for r in table_rows(spark, lake, "pairs", "pair_id", "caption", "source_file")}
    assert rows[first["pair_id"]].caption == "Figure 1: an edited caption."
    assert dropped["pair_id"] not in rows
    assert len(rows) == len(before_pairs) - 1
    others = [p for p in snapshot(spark, lake, "pairs") if rel not in p]
    assert others == [p for p in before_pairs if rel not in p]
    assert snapshot(spark, lake, "images") == images_before       # content-addressed: nothing new
    del expected[dropped_key]
    expected[("chemrxiv/jsonl/chemrxiv_2022.jsonl", 1)] = {"expect": "image_missing"}
    expected[("chemrxiv/jsonl/chemrxiv_2022.jsonl", 3)] = {"expect": "malformed_json"}
    assert_invariant(spark, lake, expected)


def test_a_new_archive_turns_missing_images_into_pairs_and_touches_nothing_else(spark, cfg, corpus_copy, tmp_path):
    lake = tmp_path / "lake"
    archive = corpus_copy / "chemrxiv" / "images_chemrxiv.tar.gz"
    parked = tmp_path / "parked.tar.gz"
    archive.rename(parked)
    ingest.run(spark, cfg, str(corpus_copy), str(lake))
    expected = manifest(corpus_copy)
    chem = {k for k, e in expected.items() if e["source"] == "chemrxiv"}
    reasons = {(r.source_file, r.source_line): r.reason
               for r in table_rows(spark, lake, "quarantine", "source_file", "source_line", "reason")}
    assert chem and all(reasons[k] == "image_missing" for k in chem)
    untouched = [r for r in snapshot(spark, lake, "pairs", drop=()) if "chemrxiv" not in r]

    parked.rename(archive)
    summary = ingest.run(spark, cfg, str(corpus_copy), str(lake))
    assert (summary.archives, summary.jsonl_files) == (1, 1)     # the archive, and its source's JSONL
    assert_invariant(spark, lake, expected)
    # Rows of other sources are exactly as they were, run ids and times included.
    assert [r for r in snapshot(spark, lake, "pairs", drop=()) if "chemrxiv" not in r] == untouched
