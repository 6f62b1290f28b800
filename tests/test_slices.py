"""Slice files: found as soon as they are complete, and read back column-wise (no JVM)."""

import datetime
import os

import pyarrow as pa

from helpers import header_bomb
from s1mmalign.ingest import slices, tasks
from s1mmalign.lake import image_files, schemas
from s1mmalign.lake.storage import LocalStore


def _slices(folder, key, blobs, limit):
    writer = slices.Writer(LocalStore(str(folder)), "slices", key, limit)
    where = [writer.add(f"images/{i}.png", blob, i) for i, blob in enumerate(blobs)]
    writer.close()
    return where


def test_only_complete_slices_of_this_runs_archives_are_taken_once(tmp_path):
    key = slices.key("arxiv", "arxiv/images_2024.tar.gz")
    _slices(tmp_path, key, [b"a" * 10, b"b" * 10, b"c" * 10], limit=15)      # two complete slices
    folder = tmp_path / "slices"
    (folder / f"{key}-000002{slices.SUFFIX}.tmp99").write_bytes(b"half written")
    (folder / f"{slices.key('arxiv', 'other.tar.gz')}-000000{slices.SUFFIX}").write_bytes(b"x")
    owners = {key: ("arxiv", "arxiv/images_2024.tar.gz")}
    taken: set[str] = set()
    scratch = LocalStore(str(tmp_path))

    first = slices.complete(scratch, "slices", owners, taken)
    assert [d["slice"] for d in first] == [f"slices/{key}-000000.arrow", f"slices/{key}-000001.arrow"]
    assert {(d["source"], d["archive"]) for d in first} == {("arxiv", "arxiv/images_2024.tar.gz")}
    assert slices.complete(scratch, "slices", owners, taken) == []        # never handed out twice

    os.replace(folder / f"{key}-000002{slices.SUFFIX}.tmp99", folder / f"{key}-000002.arrow")
    later = slices.complete(scratch, "slices", owners, taken)
    assert [os.path.basename(d["slice"]) for d in later] == [f"{key}-000002.arrow"]


def test_write_images_takes_each_rows_bytes_from_its_slice_into_files_per_discipline(tmp_path, monkeypatch):
    """The images files a task writes: every row's own bytes (taken from its slice, rows in any order),
    one file per discipline (a new one past image_files.FILE_BYTES), row groups of about BATCH_BYTES, and the
    row each file is committed from (path, size, rows, Delta stats)."""
    import json

    import pyarrow.parquet as pq

    blobs = [os.urandom(1000 + 37 * i) for i in range(40)]
    where = _slices(tmp_path, "k", blobs, limit=9000)                            # several slice files
    assert len({w[0] for w in where}) > 2
    order = list(range(40))[::-1][:25] + list(range(15))[::3]                  # interleaved, repeats
    monkeypatch.setattr(tasks, "BATCH_BYTES", 5000)                            # several row groups
    monkeypatch.setattr(image_files, "FILE_BYTES", 20000)                      # several files
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    schema = schemas.table("images").arrow()
    disciplines = ["physics", "cs", "a b/c"]                                   # one needs quoting in a path
    rows = [{f.name: None for f in schema if f.name != "content"} | {
        "image_sha256": f"{i:064d}", "discipline": disciplines[i % 3], "format": "png", "width": i + 1,
        "height": 1, "image_bytes": len(blobs[i]), "image_dhash": i, "thumbnail": b"t", "thumbnail_width": 1,
        "thumbnail_height": 1, "first_source": "arxiv", "first_image_path": f"images/{i}.png",
        "ingest_run_id": "r", "ingested_at": now, "slice": where[i][0], "slice_row": where[i][1]} for i in order]
    batch = pa.RecordBatch.from_pylist(rows)
    folder = tmp_path / "images"

    out = list(tasks.write_images(LocalStore(str(tmp_path)), LocalStore(str(folder)), "part-r")(
        iter([batch.slice(0, 20), batch.slice(20)])))

    files = pa.Table.from_batches(out).to_pylist()
    assert sum(f["rows"] for f in files) == len(order)
    assert len(files) > len(disciplines)                                        # files closed at the cap
    assert not list(folder.rglob("*.tmp*"))                                    # every file published whole
    seen = []
    for f in files:
        path = folder / f["path"]
        assert path.is_file() and path.stat().st_size == f["bytes"]
        assert f["path"].startswith("discipline=") and f["path"].split("/")[0] in (
            "discipline=physics", "discipline=cs", "discipline=a%20b%2Fc")
        got = pq.read_table(path)
        assert got.schema.names == schema.names
        assert set(got.column("discipline").to_pylist()) == {f["discipline"]}
        assert got.num_rows == f["rows"]
        for row in got.to_pylist():
            i = row["image_dhash"]
            assert row["content"] == blobs[i] and row["discipline"] == disciplines[i % 3]
            seen.append(i)
        meta = pq.ParquetFile(path).metadata
        cap = 5000 + 2 * max(map(len, blobs))
        assert all(meta.row_group(g).total_byte_size < cap for g in range(meta.num_row_groups))
        stats = json.loads(f["stats"])
        assert stats["numRecords"] == f["rows"]
        assert stats["minValues"]["width"] == min(got.column("width").to_pylist())
        assert stats["maxValues"]["image_sha256"] == max(got.column("image_sha256").to_pylist())
        assert "content" not in stats["minValues"] and "first_image_path" not in stats["maxValues"]
    assert sorted(seen) == sorted(order)


def test_a_hard_link_gets_the_bytes_of_the_member_it_names_wherever_they_are(tmp_path):
    """slices.Writer.read: the last member of a name, from the pending batch, a flushed batch of the open
    slice (completed first) or a completed slice file; None for a name never stored."""
    writer = slices.Writer(LocalStore(str(tmp_path)), "slices", "k", 25_000)
    blobs = [os.urandom(6000 + i) for i in range(9)]
    for i, blob in enumerate(blobs[:8]):
        writer.add(f"images/{i}.png", blob, i)
    writer.add("images/3.png", blobs[8], 8)              # a repeated name: the last one is the link's target
    assert writer.read("images/7.png") == blobs[7]        # pending in the open slice
    assert writer.read("images/0.png") == blobs[0]        # in a completed slice file
    assert writer.read("images/3.png") == blobs[8]
    assert writer.read("images/none.png") is None
    writer.add("images/link.png", writer.read("images/7.png"), 9)
    writer.close()
    assert writer.read("images/link.png") == blobs[7]      # from the slice just completed
    rows = []
    for path, _, _ in writer.done:
        with pa.memory_map(str(tmp_path / path)) as source:
            rows += pa.ipc.open_file(source).read_all().to_pylist()
    assert [r["image_path"] for r in rows] == [f"images/{i}.png" for i in range(8)] + ["images/3.png",
                                                                                       "images/link.png"]
    assert rows[-1]["content"] == blobs[7] and rows[-2]["content"] == blobs[8]


def test_split_archives_stores_hard_links_and_reports_one_to_no_earlier_member(tmp_path):
    import gzip
    import io
    import json
    import tarfile

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in [("images/a.png", b"A" * 100), ("images/b.png", b"B" * 50)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in [("images/a2.png", "images/a.png"), ("images/c.png", "images/later.png")]:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.LNKTYPE, target
            tar.addfile(info)
    (tmp_path / "src").mkdir()
    data = gzip.compress(raw.getvalue())
    (tmp_path / "src" / "x.tar.gz").write_bytes(data)
    desc = pa.RecordBatch.from_pylist([{"source": "s", "archive": "s/x.tar.gz", "missing_after": None,
                                        "parts": json.dumps([{"rel": "x.tar.gz", "size": len(data)}])}])
    scratch = LocalStore(str(tmp_path / "scratch"))
    out = pa.Table.from_batches(list(tasks.split_archives(LocalStore(str(tmp_path / "src")), 1 << 20, scratch,
                                                          "slices", 1 << 20)(iter([desc])))).to_pylist()
    missing = [r for r in out if r["kind"] == "member"]
    assert [(r["image_path"], r["status"]) for r in missing] == [("images/c.png", "image_missing")]
    assert "hard link to images/later.png" in missing[0]["detail"]
    (slice_row,) = [r for r in out if r["kind"] == "slice"]
    with pa.memory_map(str(tmp_path / "scratch" / slice_row["image_path"])) as source:
        stored = {r["image_path"]: r["content"] for r in pa.ipc.open_file(source).read_all().to_pylist()}
    assert stored == {"images/a.png": b"A" * 100, "images/b.png": b"B" * 50, "images/a2.png": b"A" * 100}
    (part,) = [r for r in out if r["kind"] == "part"]
    assert part["status"] == "ok" and part["members"] == 4


def test_split_archives_logs_an_archive_with_a_header_bomb_bad_header(tmp_path, monkeypatch):
    import json
    import tarfile

    from s1mmalign.ingest import archives

    ok = tarfile.TarInfo("images/a.png")
    ok.size = 3
    data = header_bomb(5000, ok.tobuf(format=tarfile.GNU_FORMAT) + b"AAA".ljust(512, b"\0"))
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "x.tar.gz").write_bytes(data)
    monkeypatch.setattr(archives, "MAX_HEADER_BYTES", 4096)
    desc = pa.RecordBatch.from_pylist([{"source": "s", "archive": "s/x.tar.gz", "missing_after": None,
                                        "parts": json.dumps([{"rel": "x.tar.gz", "size": len(data)}])}])
    out = pa.Table.from_batches(list(tasks.split_archives(LocalStore(str(tmp_path / "src")), 1 << 20,
                                                          LocalStore(str(tmp_path / "scratch")), "slices",
                                                          1 << 20)(iter([desc])))).to_pylist()
    (part,) = [r for r in out if r["kind"] == "part"]
    assert part["status"] == "bad_header" and "GNU long-name header of 5000 bytes > 4096" in part["detail"]
    assert part["members"] == 1 and part["image_sha256"] is None
    assert [r["members"] for r in out if r["kind"] == "slice"] == [1]
