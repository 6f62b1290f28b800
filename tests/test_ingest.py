"""The ingest pipeline in a local Spark session: the invariant, idempotence, incremental refresh."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import shutil
import subprocess
import tarfile

import pytest
from delta.tables import DeltaTable

from helpers import BIN, REPO, assert_image_bytes, assert_invariant, held, lake_at, manifest, snapshot, table_rows
from s1mmalign.ingest import pipeline as ingest
from s1mmalign.lake import schemas


@pytest.fixture(scope="module")
def small_chunks(cfg):
    """Tiny JSONL chunks and archive slices, so that every file is parsed by several tasks across line
    boundaries and the members of one archive (split parts too) are analysed by several tasks."""
    return dataclasses.replace(cfg, ingest=dataclasses.replace(cfg.ingest, jsonl_chunk_bytes=4096,
                                                               archive_slice_bytes=128 << 10))


def versions(spark, lake) -> dict[str, int]:
    return {t: DeltaTable.forPath(spark, lake_at(str(lake)).path(t)).history(1).first().version
            for t in schemas.lake_tables("ingest")}


def test_faults_corpus_every_line_in_exactly_one_table(spark, small_chunks, corpus_copy, tmp_path):
    lake = tmp_path / "lake"
    summary = ingest.run(spark, small_chunks, str(corpus_copy), held(str(lake), small_chunks))
    expected = manifest(corpus_copy)
    pairs, quarantine = assert_invariant(spark, lake, expected)
    assert summary.lines == len(expected) and summary.pairs == len(pairs)
    reasons = {r.reason for r in quarantine}
    assert reasons == {e["expect"] for e in expected.values()} - {"pair"}
    assert reasons <= set(schemas.quarantine_reasons())
    assert_image_bytes(spark, lake, pairs)
    # Members of the whole archives and of the split (and broken) one went to more than one task.
    for archive in ("arxiv/images_2007.tar.gz", "arxiv/images_2024.tar.gz", "arxiv/images_2019.tar.gz"):
        assert summary.archive_tasks[archive] > 1, summary.archive_tasks

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
    assert set(DeltaTable.forPath(spark, lake_at(str(lake)).path("pairs")).detail()
               .first().partitionColumns) == {"discipline"}
    assert spark.sql("SHOW TABLES IN s1mmalign").where("tableName = 'pairs'").count() == 1

    # A second run over unchanged sources reads nothing and writes nothing.
    before = versions(spark, lake)
    again = ingest.run(spark, small_chunks, str(corpus_copy), held(str(lake), small_chunks))
    assert (again.jsonl_files, again.archives, again.images_read) == (0, 0, 0)
    assert versions(spark, lake) == before


def test_incremental_new_changed_and_touched_files(spark, cfg, corpus_copy, tmp_path):
    lake = tmp_path / "lake"
    ingest.run(spark, cfg, str(corpus_copy), held(str(lake), cfg))
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
    summary = ingest.run(spark, cfg, str(corpus_copy), held(str(lake), cfg))
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
    summary = ingest.run(spark, cfg, str(corpus_copy), held(str(lake), cfg))
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

    # jobs/plan.py reads ingest_log without Spark (here no Java at all): nothing changed since the last
    # run, then the one file touched since
    no_java = {**os.environ, "JAVA_HOME": "/nonexistent", "PATH": str(BIN)}
    plan = [str(BIN / "python"), str(REPO / "jobs" / "plan.py"), "--source", str(corpus_copy), "--lake", str(lake)]
    idle = subprocess.run(plan, capture_output=True, text=True, env=no_java, cwd=REPO)
    assert idle.returncode == 99, idle.stderr[-2000:]
    assert "plan: 0 file(s) to ingest" in idle.stdout
    with open(corpus_copy / rel, "a") as f:
        f.write("\n")
    busy = subprocess.run(plan, capture_output=True, text=True, env=no_java, cwd=REPO)
    assert busy.returncode == 0, busy.stderr[-2000:]
    assert busy.stdout.splitlines() == [f"plan: read {rel}", f"plan: 1 file(s) to ingest from {corpus_copy}"]


def test_a_new_archive_turns_missing_images_into_pairs_reads_no_jsonl_touches_nothing_else(
        spark, cfg, corpus_copy, tmp_path):
    lake = tmp_path / "lake"
    archive = corpus_copy / "chemrxiv" / "images_chemrxiv.tar.gz"
    parked = tmp_path / "parked.tar.gz"
    archive.rename(parked)
    ingest.run(spark, cfg, str(corpus_copy), held(str(lake), cfg))
    expected = manifest(corpus_copy)
    chem = {k for k, e in expected.items() if e["source"] == "chemrxiv"}
    reasons = {(r.source_file, r.source_line): r.reason
               for r in table_rows(spark, lake, "quarantine", "source_file", "source_line", "reason")}
    assert chem and all(reasons[k] == "image_missing" for k in chem)
    untouched = [r for r in snapshot(spark, lake, "pairs", drop=()) if "chemrxiv" not in r]

    parked.rename(archive)
    summary = ingest.run(spark, cfg, str(corpus_copy), held(str(lake), cfg))
    assert (summary.archives, summary.jsonl_files) == (1, 0)     # the archive; no JSONL parsed again
    assert summary.reexamined == summary.moved == len(chem)      # its lines, from waiting_lines
    assert_invariant(spark, lake, expected)
    # Rows of other sources are exactly as they were, run ids and times included.
    assert [r for r in snapshot(spark, lake, "pairs", drop=()) if "chemrxiv" not in r] == untouched


def _write_tar_gz(path, members: list[tuple[str, bytes]]) -> None:
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w|") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_one_archive_in_parts_spreads_over_tasks_and_equals_many_archives(spark, cfg, scifig300, tmp_path):
    """The real release's shape (a year in one archive, split into byte parts) against small archives:
    one archive's members are analysed by several tasks, and every table holds the same rows."""
    jsonl = scifig300 / "arxiv/jsonl/24_recaption.jsonl"
    with tarfile.open(scifig300 / "arxiv/images_2024.tar.gz") as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar if m.isreg()]
    one, many = tmp_path / "one", tmp_path / "many"
    for root in (one, many):
        (root / "arxiv/jsonl").mkdir(parents=True)
        shutil.copy(jsonl, root / "arxiv/jsonl/24_recaption.jsonl")
    for k in range(3):
        _write_tar_gz(many / f"arxiv/images_202{k}.tar.gz", members[k::3])
    _write_tar_gz(tmp_path / "whole.tar.gz", members)
    data = (tmp_path / "whole.tar.gz").read_bytes()
    third = len(data) // 3 + 1
    for i, suffix in enumerate(("aa", "ab", "ac")):
        (one / f"arxiv/images_2024.tar.gz.part{suffix}").write_bytes(data[i * third:(i + 1) * third])

    sliced = dataclasses.replace(cfg, ingest=dataclasses.replace(cfg.ingest, archive_slice_bytes=2 << 20))
    got = {}
    for name, root in (("one", one), ("many", many)):
        summary = ingest.run(spark, sliced, str(root), held(str(tmp_path / f"lake-{name}"), sliced))
        assert (summary.pairs, summary.quarantined) == (300, 0), summary
        got[name] = summary
    assert got["one"].archive_tasks["arxiv/images_2024.tar.gz"] >= 2, got["one"].archive_tasks
    lakes = {name: tmp_path / f"lake-{name}" for name in got}
    where = ("image_container", "row_hash", "ingest_run_id", "ingested_at")   # which archive held the image
    assert snapshot(spark, lakes["one"], "pairs", drop=where) == snapshot(spark, lakes["many"], "pairs", drop=where)
    assert snapshot(spark, lakes["one"], "images") == snapshot(spark, lakes["many"], "images")
    assert_image_bytes(spark, lakes["one"], table_rows(spark, lakes["one"], "pairs", "pair_id", "image_sha256"))
    log = {r.source_file: r for r in table_rows(spark, lakes["one"], "ingest_log", "source_file", "status", "read")}
    parts = [log[f"arxiv/images_2024.tar.gz.part{s}"] for s in ("aa", "ab", "ac")]
    assert [p.status for p in parts] == ["ok"] * 3 and sum(p.read for p in parts) == 300


def test_a_jsonl_file_read_short_is_incomplete_and_read_again(spark, cfg, corpus_copy, tmp_path):
    """ingest_log marks a file done only when the bytes read equal its listed size: a file that shrank
    between the listing and the read is `incomplete`, and the next run reads it again."""
    from s1mmalign.ingest import sources
    from s1mmalign.lake.storage import Store

    lake = tmp_path / "lake"
    listed = sources.discover(Store.from_uri(str(corpus_copy)))
    f07 = corpus_copy / "arxiv" / "jsonl" / "07_recaption.jsonl"
    data = f07.read_bytes()
    keep = data[: data.index(b"\n", len(data) // 2) + 1]
    f07.write_bytes(keep)                     # shrinks after the listing, before the read
    ingest.run(spark, cfg, str(corpus_copy), held(str(lake), cfg), discovered=listed)
    log = {r.source_file: r for r in table_rows(spark, lake, "ingest_log", "source_file", "status", "detail", "read")}
    row = log["arxiv/jsonl/07_recaption.jsonl"]
    assert row.status == "incomplete" and f"read {len(keep)} of {len(data)} bytes" in row.detail
    assert log["arxiv/jsonl/24_recaption.jsonl"].status == "ok"
    again = ingest.run(spark, cfg, str(corpus_copy), held(str(lake), cfg))
    assert again.jsonl_files == 1             # that file alone, now listed at its new size
    row = {r.source_file: r for r in table_rows(spark, lake, "ingest_log", "source_file", "status", "read")}[
        "arxiv/jsonl/07_recaption.jsonl"]
    assert row.status == "ok" and row.read == keep.count(b"\n")


# --- a refresh equals one clean load of the final source ---------------------------------------------------

STATE = {"pairs": None, "quarantine": None, "waiting_lines": None, "image_index": None, "ingest_log": None,
         "images": ("image_sha256", "format", "width", "height", "image_dhash")}


def lake_state(lake) -> dict[str, list]:
    """Every ingest table's rows, read with delta-rs and pyarrow (not Spark), without run ids and times."""
    from s1mmalign.lake import schemas as lake_schemas

    reader, out = lake_at(str(lake)), {}
    for name, cols in STATE.items():
        cols = cols or [c for c in lake_schemas.table(name).names if c not in ("ingest_run_id", "ingested_at")]
        out[name] = sorted(tuple(tuple(v) if isinstance(v, list) else v for v in (r[c] for c in cols))
                           for r in reader.rows(name, cols))
    return out


def _line_of(root, rel: str, expect: str, n: int = 0) -> tuple[int, dict]:
    """The n-th line of a JSONL file whose manifest outcome is `expect`: (line number, record)."""
    entries = sorted(k[1] for k, e in manifest(root).items() if k[0] == rel and e["expect"] == expect)
    lines = (root / rel).read_bytes().split(b"\n")
    return entries[n], json.loads(lines[entries[n] - 1].removeprefix(b"\xef\xbb\xbf"))


def _png(seed: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (40 + seed, 30), (seed * 40 % 256, 90, 200)).save(out, format="PNG")
    return out.getvalue()


def test_a_refresh_equals_one_clean_load_of_the_final_source(spark, cfg, corpus_copy, tmp_path, monkeypatch):
    """New, edited, deleted and re-appearing JSONL files and archives, an image that arrives in a later archive
    than its line, a member a later archive overrides, a line that takes a pair from another file: after each
    refresh the tables equal one clean load of the source as it is, and each refresh parsed only the files that
    changed (and the one file whose pair became a duplicate: its line as written goes to quarantine)."""
    root = corpus_copy
    parked = tmp_path / "parked"
    parked.mkdir()
    chem_archive, late = root / "chemrxiv/images_chemrxiv.tar.gz", root / "arxiv/jsonl/24_recaption.jsonl"
    chem_archive.rename(parked / "chem.tar.gz")
    late.rename(parked / "24.jsonl")
    lake = tmp_path / "lake"
    ingest.run(spark, cfg, str(root), held(str(lake), cfg))

    def refresh(step: int) -> ingest.RunSummary:
        got = ingest.run(spark, cfg, str(root), held(str(lake), cfg))
        clean = tmp_path / f"clean-{step}"
        ingest.run(spark, cfg, str(root), held(str(clean), cfg))
        want, have = lake_state(clean), lake_state(lake)
        for name in STATE:
            if name == "images":       # content-addressed: a refresh keeps what a removed archive held
                assert set(want[name]) <= set(have[name]), name
                continue
            extra, missing = sorted(set(have[name]) - set(want[name])), sorted(set(want[name]) - set(have[name]))
            assert not extra and not missing, (f"step {step}, {name}: {len(extra)} extra {[r[:4] for r in extra[:3]]}, "
                                               f"{len(missing)} missing {[r[:4] for r in missing[:3]]}")
            assert have[name] == want[name], f"step {step}, {name}: rows repeated"
        return got

    # 1. a new file, a line edited in place, a file deleted
    late_rel, edited_rel = "arxiv/jsonl/24_recaption.jsonl", "arxiv/jsonl/07_recaption.jsonl"
    (parked / "24.jsonl").rename(late)
    n, record = _line_of(root, edited_rel, "pair")
    lines = (root / edited_rel).read_bytes().split(b"\n")
    lines[n - 1] = json.dumps({**record, "caption": "Figure 3: a caption edited in place."}).encode()
    (root / edited_rel).write_bytes(b"\n".join(lines))
    bio = sorted((root / "biorxiv/jsonl").glob("*.jsonl"))[0]
    bio_rel, bio_text = f"biorxiv/jsonl/{bio.name}", bio.read_bytes()
    bio.unlink()
    s1 = refresh(1)
    assert (s1.files_read, s1.gone_files, s1.archives) == (sorted([late_rel, edited_rel]), [bio_rel], 0)

    # 2. the images of lines already read arrive; a later archive overrides one member; a new file earlier by
    # name takes a pair from another file (which is then read for that line as written)
    (parked / "chem.tar.gz").rename(chem_archive)
    _, taken = _line_of(root, late_rel, "pair", 1)
    (root / "arxiv/jsonl/00_first.jsonl").write_text(json.dumps({**taken, "caption": "Figure 1: earlier."}) + "\n")
    _, overridden = _line_of(root, late_rel, "pair", 2)
    _write_tar_gz(root / "arxiv/images_2099.tar.gz", [(overridden["image_path"], _png(3))])
    s2 = refresh(2)
    assert s2.files_read == sorted(["arxiv/jsonl/00_first.jsonl", late_rel]), s2.files_read
    assert s2.archives == 2 and s2.moved > 0 and s2.reexamined >= s2.moved
    chem_pairs = [r for r in lake_at(str(lake)).rows("pairs", ["source"]) if r["source"] == "chemrxiv"]
    assert chem_pairs, "the chemrxiv lines did not become pairs when their archive arrived"

    # 3. the overriding archive is deleted (its member falls back to the older archive), the file re-appears
    (root / "arxiv/images_2099.tar.gz").unlink()
    bio.write_bytes(bio_text)
    s3 = refresh(3)
    assert (s3.files_read, s3.gone_files) == ([bio_rel], ["arxiv/images_2099.tar.gz"]), s3

    # 4. a truncated archive arrives (the arXiv lines whose image is in no archive now name it as broken:
    # they are re-examined without their file being read), and an archive holding a member of an older one
    # under the same name with the same bytes (one image row, the member found in both)
    with tarfile.open(sorted((root / "arxiv").glob("images_*.tar.gz"))[0], "r|gz") as tar:
        same = next((m.name, tar.extractfile(m).read()) for m in tar if m.isfile() and m.size > 0)
    _write_tar_gz(root / "arxiv/images_9998.tar.gz", [same])
    cut = root / "arxiv/images_9997.tar.gz"
    _write_tar_gz(cut, [(f"images/2401/2401.99991.tar.gz/fig{i}.png", _png(10 + i)) for i in range(6)])
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size * 6 // 10])
    missing = [r for r in lake_at(str(lake)).rows("quarantine", ["source", "reason", "detail"])
               if r["source"] == "arxiv" and r["reason"] == "image_missing"]
    assert missing and not any("images_9997" in (r["detail"] or "") for r in missing)
    s4 = refresh(4)
    assert (s4.files_read, s4.archives) == ([], 2) and s4.reexamined >= len(missing), s4
    now = [r for r in lake_at(str(lake)).rows("quarantine", ["source", "reason", "detail"])
           if r["source"] == "arxiv" and r["reason"] == "image_missing"]
    assert len(now) == len(missing) and all("images_9997.tar.gz" in r["detail"] for r in now), now[:2]
    containers = {r["container"] for r in lake_at(str(lake)).rows("image_index", ["image_path", "container"])
                  if r["image_path"] == same[0]}
    assert len(containers) == 2 and "arxiv/images_9998.tar.gz" in containers, containers
    shas = [r["image_sha256"] for r in lake_at(str(lake)).rows("images", ["image_sha256"])]
    assert len(shas) == len(set(shas))

    # 5. new lines only (a new JSONL file and the archive of their images): appended, not merged. The run crashes
    # after the tables' commits and before ingest_log's; the next one reads the same files again and must not
    # append their rows twice (the tables hold them: it merges).
    _, template = _line_of(root, late_rel, "pair", 3)
    fresh = [(f"images/2412/2412.9900{i}/fig{i}.png", _png(20 + i)) for i in range(3)]
    new_rel = "arxiv/jsonl/25_new.jsonl"
    (root / new_rel).write_text("".join(json.dumps({**template, "image_path": path}) + "\n" for path, _ in fresh))
    _write_tar_gz(root / "arxiv/images_2412.tar.gz", fresh)
    real_append = type(held(str(lake), cfg)).append

    def crash_before_the_log(self, spark, name, df):
        if name == "ingest_log":
            raise RuntimeError("killed before ingest_log committed")
        return real_append(self, spark, name, df)

    monkeypatch.setattr(type(held(str(lake), cfg)), "append", crash_before_the_log)
    with pytest.raises(RuntimeError, match="killed before"):
        ingest.run(spark, cfg, str(root), held(str(lake), cfg))
    monkeypatch.undo()
    pairs_log = DeltaTable.forPath(spark, lake_at(str(lake)).path("pairs")).history(1).first()
    assert pairs_log.operation == "WRITE" and pairs_log.operationMetrics["numOutputRows"] == "3", pairs_log
    s5 = refresh(5)
    assert (s5.files_read, s5.archives, s5.reexamined) == ([new_rel], 1, 0), s5

    # Nothing changed: nothing read, no commit.
    before = versions(spark, lake)
    idle = ingest.run(spark, cfg, str(root), held(str(lake), cfg))
    assert (idle.files_read, idle.archives, idle.reexamined) == ([], 0, 0)
    assert versions(spark, lake) == before
