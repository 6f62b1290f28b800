"""Work that runs inside Spark's Python tasks: Arrow batches of descriptors in, Arrow batches out.

Each factory takes what the task needs (store, policy, ...) and returns a function for mapInArrow.
Every function yields bounded batches, so a task's memory stays flat however large its input is.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import pyarrow as pa

from s1mmalign.config import IngestConf
from s1mmalign.ingest import archives, images, records, slices
from s1mmalign.lake import image_files, schemas
from s1mmalign.lake.storage import Store, TooLarge

BATCH_ROWS = 64
BATCH_BYTES = 8 << 20      # image bytes per Arrow batch handed to the JVM (a member may exceed it alone)


def _thumbnail_bytes(row: dict) -> int:
    return len(row.get("thumbnail") or b"")


def _text_bytes(row: dict) -> int:
    return sum(len(row.get(c) or "") for c in ("raw", "caption", "recaption", "title", "metadata_json"))


def _batched(rows: Iterable[dict], schema: pa.Schema, size: int = BATCH_ROWS, max_bytes: int = BATCH_BYTES,
             weigh: Callable[[dict], int] = _thumbnail_bytes,
             refused: Callable[[dict, Exception], dict | None] | None = None) -> Iterator[pa.RecordBatch]:
    """Arrow batches of at most `size` rows and about `max_bytes` as `weigh` counts them (by default the
    thumbnails: the only bytes in image facts rows, as originals stay in slice files).

    A row Arrow cannot take (a value out of its column's range, text that is not Unicode) never fails the
    task: `refused(row, error)` gives the row that stands for it (a quarantine outcome), or None to drop it.
    """
    buf: list[dict] = []
    held = 0
    for row in rows:
        buf.append(row)
        held += weigh(row)
        if len(buf) >= size or held >= max_bytes:
            yield _to_batch(buf, schema, refused)
            buf, held = [], 0
    if buf:
        yield _to_batch(buf, schema, refused)


_ARROW_REFUSALS = (pa.ArrowException, UnicodeError, OverflowError, ValueError, TypeError)


def _to_batch(rows: list[dict], schema: pa.Schema, refused) -> pa.RecordBatch:
    try:
        return pa.RecordBatch.from_pylist(rows, schema=schema)
    except _ARROW_REFUSALS:
        if refused is None:
            raise
    kept = []
    for row in rows:      # the rare batch with a bad row: find it, one row at a time
        try:
            pa.RecordBatch.from_pylist([row], schema=schema)
            kept.append(row)
        except _ARROW_REFUSALS as exc:
            stand_in = refused(row, exc)
            if stand_in is not None:
                kept.append(stand_in)
    return pa.RecordBatch.from_pylist(kept, schema=schema)


def _descriptors(batches: Iterable[pa.RecordBatch]) -> Iterator[dict]:
    for batch in batches:
        yield from batch.to_pylist()


# --- JSONL ----------------------------------------------------------------------------------------

def chunk_stats(store: Store) -> Callable:
    """Per chunk [start, end) of a JSONL file: its newline count, sha256 and bytes read (the line numbers,
    the checksum, and whether the whole file was read). A chunk that cannot be read gives its error."""
    schema = schemas.table("jsonl_chunks").arrow()

    def run(batches):
        for d in _descriptors(batches):
            digest, lines, size, error = hashlib.sha256(), 0, 0, None
            try:
                with store.open(d["source_file"], d["start"], d["end"]) as stream:
                    while block := stream.read(1 << 20):
                        digest.update(block)
                        lines += block.count(b"\n")
                        size += len(block)
            except Exception as exc:  # noqa: BLE001 - an unreadable file is that file's outcome, not the run's
                error = f"{type(exc).__name__}: {exc}"[:500]
            yield pa.RecordBatch.from_pylist([{"source_file": d["source_file"], "chunk": d["chunk"],
                                               "lines": lines, "sha256": digest.hexdigest(), "bytes": size,
                                               "error": error}], schema=schema)
    return run


LINE_BLOCK = 1 << 20


@dataclass(frozen=True)
class LongLine:
    """A line over the size limit: its first bytes and its length (the rest was read past, not kept)."""

    prefix: bytes
    length: int


def chunk_lines(store: Store, rel: str, start: int, end: int, newlines_before: int,
                max_line: int | None = None) -> Iterator[tuple[int, bytes | LongLine]]:
    """(line number, line) for every line that starts in [start, end) of a file; 1-based numbers.

    A line starts at p when p == 0 or byte p-1 is a newline; `newlines_before` counts the newlines in
    [0, start), so numbering counts every line, blank ones included, across chunk boundaries. The file is
    read in blocks and no more than `max_line` bytes of a line are ever held: a longer line comes out as
    a LongLine (its first bytes and length), however long it is and wherever chunks cut it.
    """
    keep = max_line if max_line is not None else 1 << 62
    first = max(start - 1, 0)
    with store.open(rel, first) as stream:
        reader = _BlockReader(stream)
        pos = first
        if start > 0:
            if reader.byte() != b"\n":          # byte start-1: mid-line, that line belongs to the chunk before
                _, length, ended = reader.line(0)
                pos = start + length + (1 if ended else 0)
                if not ended:
                    return
                newlines_before += 1
            else:
                pos = start
        line_no = newlines_before
        while pos < end:
            kept, length, ended = reader.line(keep + 1)
            if not ended and length == 0:
                return                           # the end of the file, right after a newline
            line_no += 1
            pos += length + (1 if ended else 0)
            yield line_no, (kept if length <= keep else LongLine(kept[: 1 << 16], length))


class _BlockReader:
    """Lines out of a byte stream read in blocks, each line kept only up to a given number of bytes."""

    def __init__(self, stream):
        self.stream, self.buf, self.i = stream, b"", 0

    def _fill(self) -> bool:
        if self.i >= len(self.buf):
            self.buf, self.i = self.stream.read(LINE_BLOCK), 0
        return bool(self.buf)

    def byte(self) -> bytes:
        if not self._fill():
            return b""
        self.i += 1
        return self.buf[self.i - 1: self.i]

    def line(self, keep: int) -> tuple[bytes, int, bool]:
        """(first `keep` bytes, length without the newline, whether a newline ended it)."""
        parts, kept, length = [], 0, 0
        while self._fill():
            cut = self.buf.find(b"\n", self.i)
            stop = len(self.buf) if cut < 0 else cut
            if kept < keep:
                piece = self.buf[self.i: min(stop, self.i + keep - kept)]
                parts.append(piece)
                kept += len(piece)
            length += stop - self.i
            self.i = stop
            if cut >= 0:
                self.i += 1
                return b"".join(parts), length, True
        return b"".join(parts), length, False


def parse_chunks(store: Store, ctx_args: dict) -> Callable:
    """Parse the lines of JSONL chunks into parsed_lines rows (records and rejects; blank lines skipped).

    Whatever a line holds, it becomes one row: a record or a reject with its reason; lines over
    ingest.max_line_bytes are quarantined from their first bytes, never held whole.
    """
    from s1mmalign.ingest.disciplines import DisciplineMap

    schema = schemas.table("parsed_lines").arrow()
    disciplines = DisciplineMap.from_conf(ctx_args["disciplines"])
    max_line = ctx_args["max_line_bytes"]

    def rows(batches):
        for d in _descriptors(batches):
            ctx = records.LineContext(d["source"], d["source_file"], d["source"] in ctx_args["arxiv_sources"],
                                      disciplines, ctx_args["raw_cap_chars"])
            for line_no, line in chunk_lines(store, d["source_file"], d["start"], d["end"], d["newlines_before"],
                                             max_line):
                if isinstance(line, LongLine):
                    yield records.too_long(line_no, line.prefix, line.length, max_line, ctx)
                    continue
                row = records.parse_line(line, line_no, ctx)
                if row is not None:
                    yield row

    def run(batches):
        yield from _batched(rows(batches), schema, 1024, BATCH_BYTES, _text_bytes, records.unstorable)
    return run


# --- images ---------------------------------------------------------------------------------------

def _facts_row(source: str, image_path: str, container: str, facts: images.ImageFacts,
               where: tuple[str, int] | None = None, ordinal: int | None = None) -> dict:
    """An image_facts member row; `where` is the (slice file, row) that holds the bytes of a good image,
    `ordinal` the member's position in its archive."""
    ok = facts.status == "ok"
    return {
        "kind": "member", "source": source, "image_path": image_path, "container": container,
        "status": facts.status, "detail": facts.detail, "image_sha256": facts.sha256,
        "image_format": facts.format, "width": facts.width, "height": facts.height,
        "image_bytes": facts.size, "image_dhash": facts.dhash,
        "slice": where[0] if ok and where else None, "slice_row": where[1] if ok and where else None,
        "thumbnail": facts.thumbnail, "thumbnail_width": facts.thumbnail_width,
        "thumbnail_height": facts.thumbnail_height, "members": None, "member": ordinal,
    }


def split_archives(store: Store, max_bytes: int, scratch: Store, slice_dir: str, slice_bytes: int) -> Callable:
    """Stream whole archives (one per input row) and cut their members into slices for analysis tasks.

    Member bytes go to Arrow IPC files under slice_dir of the scratch store (the run's staging folder,
    which every executor reaches: a shared disk or S3) of about slice_bytes each, never through the JVM.
    Yields a 'slice' row per file (image_path: its path, members, image_bytes), a 'member' row per member
    that is not read (over max_bytes), and a 'part' row per archive part (status, checksum, members).
    """
    schema = schemas.table("image_facts").arrow()

    def rows(batches):
        for d in _descriptors(batches):
            parts = [archives.PartStats(p["rel"], p["size"]) for p in json.loads(d["parts"])]
            stream = archives.ChainedParts(parts, store.open)
            result = archives.StreamResult()
            held = slices.Writer(scratch, slice_dir, slices.key(d["source"], d["archive"]), slice_bytes)
            for member in archives.iter_members(stream, max_bytes, result):
                if member.link is not None:
                    data = held.read(member.link)
                    if data is None:
                        yield _facts_row(d["source"], member.name, d["archive"], images.ImageFacts(
                            "image_missing", f"a hard link to {member.link}, which is no member read before it"),
                            ordinal=member.ordinal)
                    else:
                        held.add(member.name, data, member.ordinal)
                elif member.data is None:
                    yield _facts_row(d["source"], member.name, d["archive"],
                                     images.ImageFacts(member.problem, member.detail), ordinal=member.ordinal)
                else:
                    held.add(member.name, member.data, member.ordinal)
            held.close()
            for path, members, size in held.done:
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


def analyze_slices(policy: IngestConf, scratch: Store) -> Callable:
    """The per-image work over slice files of the scratch store (one per input row: source, archive,
    slice): a member row each.

    Rows record the Spark task that analysed them (`task`: its attempt id, unique in the application),
    so a run can show how one archive's members spread over tasks.
    """
    from pyspark import TaskContext

    schema = schemas.table("image_facts").arrow()

    def rows(batches):
        ctx = TaskContext.get()
        task = ctx.taskAttemptId() if ctx is not None else None
        for d in _descriptors(batches):
            with scratch.local_copy(d["slice"]) as path, pa.memory_map(path) as source:
                reader = pa.ipc.open_file(source)
                n = 0
                for i in range(reader.num_record_batches):
                    batch = reader.get_batch(i)
                    for name, content, ordinal in zip(*(batch.column(c).to_pylist() for c in range(3)), strict=True):
                        row = _facts_row(d["source"], name, d["archive"], images.analyze(content, policy),
                                         (d["slice"], n), ordinal)
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
            status = "missing_part" if d["missing_after"] else result.status     # truncated | bad_header
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


def read_tree(store: Store, policy: IngestConf, scratch: Store, slice_dir: str,
              slice_bytes: int) -> Callable:
    """Read images from the unpacked tree, one per input row (source, image_path); the bytes of good
    ones go to this task's slice files, as archive members' do."""
    from pyspark import TaskContext

    schema = schemas.table("image_facts").arrow()

    def rows(batches):
        ctx = TaskContext.get()
        key = f"tree-{ctx.stageId()}-{ctx.partitionId()}" if ctx is not None else f"tree-{os.getpid()}"
        held = slices.Writer(scratch, slice_dir, key, slice_bytes)
        for d in _descriptors(batches):
            try:
                data = store.read(f"{d['source']}/{d['image_path']}", policy.max_image_bytes)
                unread = None if data is not None else images.ImageFacts(
                    "image_missing", "in no archive and not in the unpacked tree")
            except TooLarge as exc:       # its size, known before any byte was read
                unread = images.ImageFacts("image_too_large", str(exc), size=exc.size)
            except (OSError, ValueError) as exc:   # a FIFO, a link out of the root, a name too long, ...
                unread = images.ImageFacts("image_unreadable", f"{type(exc).__name__}: {exc}"[:500])
            if unread is not None:
                yield _facts_row(d["source"], d["image_path"], "tree", unread)
                continue
            facts = images.analyze(data, policy)
            where = held.add(d["image_path"], data) if facts.status == "ok" else None
            yield _facts_row(d["source"], d["image_path"], "tree", facts, where)
        held.close()

    def run(batches):
        yield from _batched(rows(batches), schema, 16)
    return run


def write_images(scratch: Store, folder: Store, name_prefix: str) -> Callable:
    """images rows without `content` but with (slice, slice_row) in (their discipline chosen); written, with
    the original bytes read back from the slice files, as Parquet files of the images table (`folder`: its
    root), one open file per discipline, row groups of about BATCH_BYTES and files of about
    image_files.FILE_BYTES; out: an images_files row per file written (path in the table, discipline, size,
    rows, Delta stats).

    The image bytes never pass through the JVM. Nothing here touches the Delta log: the driver commits the
    files of every task at once (Lake.add_files); the files of a task that fails are never committed
    (VACUUM removes them), and a retried task writes files of new names.
    """
    import uuid
    from urllib.parse import quote

    import pyarrow.compute as pc
    from pyspark import TaskContext

    images = schemas.table("images").arrow()
    out_schema = schemas.table("images_files").arrow()

    def run(batches):
        ctx = TaskContext.get()
        task = ctx.taskAttemptId() if ctx is not None else os.getpid()
        files: dict[str, image_files.ImagesFile] = {}
        done = []
        for batch in slices.with_content(scratch, batches, images, BATCH_BYTES):
            column = batch.column("discipline")
            for discipline in sorted(set(column.to_pylist())):
                if discipline not in files:
                    name = f"{name_prefix}-{task}-{uuid.uuid4().hex}.parquet"
                    files[discipline] = image_files.ImagesFile(
                        folder, f"discipline={quote(discipline, safe='')}/{name}", images)
                files[discipline].write(batch.filter(pc.equal(column, discipline)))
                if files[discipline].bytes >= image_files.FILE_BYTES:
                    done.append(files.pop(discipline).close(discipline))
        for discipline, f in sorted(files.items()):
            done.append(f.close(discipline))
        if done:
            yield pa.RecordBatch.from_pylist(done, schema=out_schema)
    return run
