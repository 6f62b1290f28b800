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


def test_fetch_content_takes_each_rows_bytes_from_its_slice_in_any_order(tmp_path, monkeypatch):
    blobs = [os.urandom(1000 + 37 * i) for i in range(40)]
    where = _slices(tmp_path, "k", blobs, limit=9000)                            # several slice files
    assert len({w[0] for w in where}) > 2
    order = list(range(40))[::-1][:25] + list(range(15))[::3]                  # interleaved, repeats
    monkeypatch.setattr(tasks, "BATCH_BYTES", 5000)                            # several output batches
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    schema = schemas.table("images").arrow()
    rows = [{f.name: None for f in schema if f.name != "content"} | {
        "image_sha256": f"{i:064d}", "discipline": "physics", "format": "png", "width": 1, "height": 1,
        "image_bytes": len(blobs[i]), "image_dhash": i, "thumbnail": b"t", "thumbnail_width": 1,
        "thumbnail_height": 1, "first_source": "arxiv", "first_image_path": f"images/{i}.png",
        "ingest_run_id": "r", "ingested_at": now, "slice": where[i][0], "slice_row": where[i][1]} for i in order]
    batch = pa.RecordBatch.from_pylist(rows)

    out = list(tasks.fetch_content(LocalStore(str(tmp_path)))(iter([batch.slice(0, 20), batch.slice(20)])))

    assert len(out) > 2 and all(b.schema == schema for b in out)
    got = pa.Table.from_batches(out)
    assert got.column("content").to_pylist() == [blobs[i] for i in order]
    assert got.column("image_dhash").to_pylist() == order
