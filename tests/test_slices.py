"""Slice files: found as soon as they are complete, and read back column-wise (no JVM)."""

import datetime
import os

import pyarrow as pa

from s1mmalign import ingest, schemas, tasks
from s1mmalign.storage import LocalStore


def _slices(folder, key, blobs, limit):
    writer = tasks._SliceWriter(LocalStore(str(folder)), "slices", key, limit)
    where = [writer.add(f"images/{i}.png", blob, i) for i, blob in enumerate(blobs)]
    writer.close()
    return where


def test_only_complete_slices_of_this_runs_archives_are_taken_once(tmp_path):
    key = tasks.slice_key("arxiv", "arxiv/images_2024.tar.gz")
    _slices(tmp_path, key, [b"a" * 10, b"b" * 10, b"c" * 10], limit=15)      # two complete slices
    folder = tmp_path / "slices"
    (folder / f"{key}-000002{tasks.SLICE_SUFFIX}.tmp99").write_bytes(b"half written")
    (folder / f"{tasks.slice_key('arxiv', 'other.tar.gz')}-000000{tasks.SLICE_SUFFIX}").write_bytes(b"x")
    owners = {key: ("arxiv", "arxiv/images_2024.tar.gz")}
    taken: set[str] = set()
    scratch = LocalStore(str(tmp_path))

    first = ingest._complete_slices(scratch, "slices", owners, taken)
    assert [d["slice"] for d in first] == [f"slices/{key}-000000.arrow", f"slices/{key}-000001.arrow"]
    assert {(d["source"], d["archive"]) for d in first} == {("arxiv", "arxiv/images_2024.tar.gz")}
    assert ingest._complete_slices(scratch, "slices", owners, taken) == []        # never handed out twice

    os.replace(folder / f"{key}-000002{tasks.SLICE_SUFFIX}.tmp99", folder / f"{key}-000002.arrow")
    later = ingest._complete_slices(scratch, "slices", owners, taken)
    assert [os.path.basename(d["slice"]) for d in later] == [f"{key}-000002.arrow"]


def test_write_images_takes_each_rows_bytes_from_its_slice_into_files_per_discipline(tmp_path, monkeypatch):
    """The images files a task writes: every row's own bytes (taken from its slice, rows in any order),
    one file per discipline (a new one past IMAGE_FILE_BYTES), row groups of about BATCH_BYTES, and the
    row each file is committed from (path, size, rows, Delta stats)."""
    import json

    import pyarrow.parquet as pq

    blobs = [os.urandom(1000 + 37 * i) for i in range(40)]
    where = _slices(tmp_path, "k", blobs, limit=9000)                            # several slice files
    assert len({w[0] for w in where}) > 2
    order = list(range(40))[::-1][:25] + list(range(15))[::3]                  # interleaved, repeats
    monkeypatch.setattr(tasks, "BATCH_BYTES", 5000)                            # several row groups
    monkeypatch.setattr(tasks, "IMAGE_FILE_BYTES", 20000)                      # several files
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
