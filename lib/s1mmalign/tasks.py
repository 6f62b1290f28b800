"""Work that runs inside Spark's Python tasks: Arrow batches of descriptors in, Arrow batches out.

Each factory takes what the task needs (store, policy, ...) and returns a function for mapInArrow.
Every function yields bounded batches, so a task's memory stays flat however large its input is.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
from typing import Callable, Iterable, Iterator

import pyarrow as pa

from s1mmalign import archives, images, records, schemas
from s1mmalign.storage import Store

BATCH_ROWS = 64
BATCH_BYTES = 8 << 20      # image bytes per Arrow batch handed to the JVM (a member may exceed it alone)


def _batched(rows: Iterable[dict], schema: pa.Schema, size: int = BATCH_ROWS,
             max_bytes: int = BATCH_BYTES) -> Iterator[pa.RecordBatch]:
    """Arrow batches of at most `size` rows and about `max_bytes` of thumbnails (the only bytes in rows
    of image facts: originals stay in slice files until fetch_content)."""
    buf: list[dict] = []
    held = 0
    for row in rows:
        buf.append(row)
        held += len(row.get("thumbnail") or b"")
        if len(buf) >= size or held >= max_bytes:
            yield pa.RecordBatch.from_pylist(buf, schema=schema)
            buf, held = [], 0
    if buf:
        yield pa.RecordBatch.from_pylist(buf, schema=schema)


def _descriptors(batches: Iterable[pa.RecordBatch]) -> Iterator[dict]:
    for batch in batches:
        yield from batch.to_pylist()


# --- JSONL ----------------------------------------------------------------------------------------

def chunk_stats(store: Store) -> Callable:
    """Per chunk [start, end) of a JSONL file: its newline count and sha256 (for line numbers, checksums)."""
    schema = schemas.table("jsonl_chunks").arrow()

    def run(batches):
        for d in _descriptors(batches):
            digest, lines = hashlib.sha256(), 0
            with store.open(d["source_file"], d["start"], d["end"]) as stream:
                while block := stream.read(1 << 20):
                    digest.update(block)
                    lines += block.count(b"\n")
            yield pa.RecordBatch.from_pylist([{"source_file": d["source_file"], "chunk": d["chunk"],
                                               "lines": lines, "sha256": digest.hexdigest()}], schema=schema)
    return run


def chunk_lines(store: Store, rel: str, start: int, end: int, newlines_before: int) -> Iterator[tuple[int, bytes]]:
    """(line number, line) for every line that starts in [start, end) of a file; 1-based numbers.

    A line starts at p when p == 0 or byte p-1 is a newline; `newlines_before` counts the newlines in
    [0, start), so numbering counts every line, blank ones included, across chunk boundaries.
    """
    first = max(start - 1, 0)
    with store.open(rel, first) as stream:
        buf = stream.read(end - first)
        skip = 0
        if start > 0:
            cut = buf.find(b"\n")
            if cut < 0 or first + cut + 1 >= end:
                return  # no line starts inside this chunk
            skip = cut + 1
            newlines_before += 1 if cut > 0 else 0
        if buf and not buf.endswith(b"\n"):  # the last line runs on past `end`: read to its end
            tail = []
            while block := stream.read(1 << 16):
                cut = block.find(b"\n")
                if cut >= 0:
                    tail.append(block[: cut + 1])
                    break
                tail.append(block)
            buf += b"".join(tail)
    lines = buf[skip:].split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for offset, line in enumerate(lines, start=newlines_before + 1):
        yield offset, line


def parse_chunks(store: Store, ctx_args: dict) -> Callable:
    """Parse the lines of JSONL chunks into parsed_lines rows (records and rejects; blank lines skipped)."""
    from s1mmalign.disciplines import DisciplineMap

    schema = schemas.table("parsed_lines").arrow()
    disciplines = DisciplineMap.from_conf(ctx_args["disciplines"])

    def rows(batches):
        for d in _descriptors(batches):
            ctx = records.LineContext(d["source"], d["source_file"], d["source"] in ctx_args["arxiv_sources"],
                                      disciplines, ctx_args["raw_cap_chars"])
            for line_no, line in chunk_lines(store, d["source_file"], d["start"], d["end"], d["newlines_before"]):
                row = records.parse_line(line, line_no, ctx)
                if row is not None:
                    yield row

    def run(batches):
        yield from _batched(rows(batches), schema, 1024)
    return run


# --- images ---------------------------------------------------------------------------------------

def _facts_row(source: str, image_path: str, container: str, facts: images.ImageFacts,
               where: tuple[str, int] | None = None) -> dict:
    """An image_facts member row; `where` is the (slice file, row) that holds the bytes of a good image."""
    ok = facts.status == "ok"
    return {
        "kind": "member", "source": source, "image_path": image_path, "container": container,
        "status": facts.status, "detail": facts.detail, "image_sha256": facts.sha256,
        "image_format": facts.format, "width": facts.width, "height": facts.height,
        "image_bytes": facts.size, "image_dhash": facts.dhash,
        "slice": where[0] if ok and where else None, "slice_row": where[1] if ok and where else None,
        "thumbnail": facts.thumbnail, "thumbnail_width": facts.thumbnail_width,
        "thumbnail_height": facts.thumbnail_height, "members": None,
    }


SLICE_SCHEMA = pa.schema([pa.field("image_path", pa.string(), False), pa.field("content", pa.binary(), False)])
SLICE_BATCH_BYTES = 8 << 20       # member bytes per record batch of a slice file


class _SliceWriter:
    """Member bytes of one archive into Arrow IPC files of about `limit` bytes each, written aside and
    renamed when complete (a retried or speculative task rewrites the same names with the same bytes)."""

    def __init__(self, folder: str, key: str, limit: int):
        self.folder, self.key, self.limit = folder, key, limit
        self.done: list[tuple[str, int, int]] = []     # (path, members, bytes) of complete slices
        self._names: list[str] = []
        self._blobs: list[bytes] = []
        self._pending = 0                               # bytes in _names/_blobs
        self._writer = self._sink = self._path = self._tmp = None
        self._members = self._bytes = 0

    def add(self, name: str, data: bytes) -> tuple[str, int]:
        """Store one member; returns the slice file and row that hold it."""
        if self._writer is None:
            os.makedirs(self.folder, exist_ok=True)
            self._path = os.path.join(self.folder, f"{self.key}-{len(self.done):06d}.arrow")
            self._tmp = f"{self._path}.tmp{os.getpid()}"
            self._sink = pa.OSFile(self._tmp, "wb")
            self._writer = pa.ipc.new_file(self._sink, SLICE_SCHEMA)
        where = (self._path, self._members)
        self._names.append(name)
        self._blobs.append(data)
        self._pending += len(data)
        self._members += 1
        self._bytes += len(data)
        if self._pending >= SLICE_BATCH_BYTES:
            self._flush()
        if self._bytes >= self.limit:
            self.close()
        return where

    def _flush(self) -> None:
        if self._names:
            self._writer.write_batch(pa.RecordBatch.from_arrays(
                [pa.array(self._names, pa.string()), pa.array(self._blobs, pa.binary())], schema=SLICE_SCHEMA))
            self._names, self._blobs, self._pending = [], [], 0

    def close(self) -> None:
        """Complete the open slice, if any."""
        if self._writer is None:
            return
        self._flush()
        self._writer.close()
        self._sink.close()
        os.replace(self._tmp, self._path)
        self.done.append((self._path, self._members, self._bytes))
        self._writer = self._sink = None
        self._members = self._bytes = 0


def split_archives(store: Store, max_bytes: int, slice_dir: str, slice_bytes: int) -> Callable:
    """Stream whole archives (one per input row) and cut their members into slices for analysis tasks.

    Member bytes go to Arrow IPC files under slice_dir of about slice_bytes each, never through the JVM.
    Yields a 'slice' row per file (image_path: its path, members, image_bytes), a 'member' row per member
    that is not read (over max_bytes), and a 'part' row per archive part (status, checksum, members).
    """
    schema = schemas.table("image_facts").arrow()

    def rows(batches):
        for d in _descriptors(batches):
            parts = [archives.PartStats(p["rel"], p["size"]) for p in json.loads(d["parts"])]
            stream = archives.ChainedParts(parts, store.open)
            result = archives.StreamResult()
            key = hashlib.sha256(f"{d['source']}\x00{d['archive']}".encode()).hexdigest()[:20]
            slices = _SliceWriter(slice_dir, key, slice_bytes)
            for member in archives.iter_members(stream, max_bytes, result):
                if member.data is None:
                    yield _facts_row(d["source"], member.name, d["archive"],
                                     images.ImageFacts(member.problem, member.detail))
                else:
                    slices.add(member.name, member.data)
            slices.close()
            for path, members, size in slices.done:
                yield {"kind": "slice", "source": d["source"], "image_path": path, "container": d["archive"],
                       "status": "ok", "image_bytes": size, "members": members}
            broken_at = stream.current.rel if result.status != "ok" and stream.current else None
            if result.status == "ok":
                stream.drain()
            stream.close()
            yield from _part_rows(d, parts, result, broken_at)

    def run(batches):
        yield from _batched(rows(batches), schema)
    return run


def analyze_slices(policy: images.ImagePolicy) -> Callable:
    """The per-image work over slice files (one per input row: source, archive, slice): a member row each.

    Rows record the Spark partition that analysed them (`task`), so a run can show how one archive's
    members spread over tasks.
    """
    from pyspark import TaskContext

    schema = schemas.table("image_facts").arrow()

    def rows(batches):
        ctx = TaskContext.get()
        task = ctx.partitionId() if ctx is not None else None
        for d in _descriptors(batches):
            with pa.memory_map(d["slice"]) as source:
                reader = pa.ipc.open_file(source)
                n = 0
                for i in range(reader.num_record_batches):
                    batch = reader.get_batch(i)
                    for name, content in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
                        row = _facts_row(d["source"], name, d["archive"], images.analyze(content, policy),
                                         (d["slice"], n))
                        row["task"] = task
                        n += 1
                        yield row

    def run(batches):
        yield from _batched(rows(batches), schema)
    return run


def _part_rows(d: dict, parts: list[archives.PartStats], result: archives.StreamResult,
               broken_at: str | None) -> Iterator[dict]:
    reached_break = False
    for part in parts:
        if broken_at is not None and reached_break:
            status, detail = "unread", f"after the break in {broken_at}"
        elif part.rel == broken_at:
            reached_break = True
            status = "missing_part" if d["missing_after"] else "truncated"
            detail = (f"the part after .part{d['missing_after']} is missing; " if d["missing_after"] else "") \
                + (result.detail or "")
        elif d["missing_after"]:
            status, detail = "missing_part", f"the part after .part{d['missing_after']} is missing"
        else:
            status, detail = "ok", None
        complete = status in ("ok", "missing_part") and part.bytes_read == part.size
        yield {"kind": "part", "source": d["source"], "image_path": part.rel, "container": d["archive"],
               "status": status, "detail": detail,
               "image_sha256": part.sha256.hexdigest() if complete else None,
               "image_bytes": part.bytes_read, "members": part.members}


def read_tree(store: Store, policy: images.ImagePolicy, slice_dir: str, slice_bytes: int) -> Callable:
    """Read images from the unpacked tree, one per input row (source, image_path); the bytes of good
    ones go to this task's slice files, as archive members' do."""
    from pyspark import TaskContext

    schema = schemas.table("image_facts").arrow()

    def rows(batches):
        ctx = TaskContext.get()
        key = f"tree-{ctx.stageId()}-{ctx.partitionId()}" if ctx is not None else f"tree-{os.getpid()}"
        slices = _SliceWriter(slice_dir, key, slice_bytes)
        for d in _descriptors(batches):
            data = store.read(f"{d['source']}/{d['image_path']}")
            if data is None:
                yield _facts_row(d["source"], d["image_path"], "tree",
                                 images.ImageFacts("image_missing", "in no archive and not in the unpacked tree"))
                continue
            facts = images.analyze(data, policy)
            where = slices.add(d["image_path"], data) if facts.status == "ok" else None
            yield _facts_row(d["source"], d["image_path"], "tree", facts, where)
        slices.close()

    def run(batches):
        yield from _batched(rows(batches), schema, 16)
    return run


def fetch_content() -> Callable:
    """images rows without `content` but with (slice, slice_row) in; the same rows with the original
    bytes read back from the slice files out (the only time image bytes pass through the JVM)."""
    schema = schemas.table("images").arrow()

    def run(batches):
        open_slice = None
        for batch in batches:
            out, held = [], 0
            for row in batch.to_pylist():
                if open_slice is None or open_slice[0] != row["slice"]:
                    open_slice = (row["slice"], _SliceReader(row["slice"]))
                row["content"] = open_slice[1].content(row.pop("slice_row"))
                del row["slice"]
                out.append(row)
                held += len(row["content"])
                if held >= BATCH_BYTES:
                    yield pa.RecordBatch.from_pylist(out, schema=schema)
                    out, held = [], 0
            if out:
                yield pa.RecordBatch.from_pylist(out, schema=schema)
    return run


class _SliceReader:
    """Rows of one slice file by number (memory-mapped: reading one costs only its bytes)."""

    def __init__(self, path: str):
        self.reader = pa.ipc.open_file(pa.memory_map(path))
        self.starts = [0]
        for i in range(self.reader.num_record_batches):
            self.starts.append(self.starts[-1] + self.reader.get_batch(i).num_rows)

    def content(self, row: int) -> bytes:
        i = bisect.bisect_right(self.starts, row) - 1
        return self.reader.get_batch(i).column(1)[row - self.starts[i]].as_py()
