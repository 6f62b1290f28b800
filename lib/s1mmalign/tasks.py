"""Work that runs inside Spark's Python tasks: Arrow batches of descriptors in, Arrow batches out.

Each factory takes what the task needs (store, policy, ...) and returns a function for mapInArrow.
Every function yields bounded batches, so a task's memory stays flat however large its input is.
"""

from __future__ import annotations

import hashlib
import json
from typing import Callable, Iterable, Iterator

import pyarrow as pa

from s1mmalign import archives, images, records, schemas
from s1mmalign.storage import Store

BATCH_ROWS = 64


def _batched(rows: Iterable[dict], schema: pa.Schema, size: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    buf: list[dict] = []
    for row in rows:
        buf.append(row)
        if len(buf) >= size:
            yield pa.RecordBatch.from_pylist(buf, schema=schema)
            buf = []
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
               content: bytes | None) -> dict:
    ok = facts.status == "ok"
    return {
        "kind": "member", "source": source, "image_path": image_path, "container": container,
        "status": facts.status, "detail": facts.detail, "image_sha256": facts.sha256,
        "image_format": facts.format, "width": facts.width, "height": facts.height,
        "image_bytes": facts.size, "image_dhash": facts.dhash, "content": content if ok else None,
        "thumbnail": facts.thumbnail, "thumbnail_width": facts.thumbnail_width,
        "thumbnail_height": facts.thumbnail_height, "members": None,
    }


def stream_archives(store: Store, policy: images.ImagePolicy) -> Callable:
    """Stream whole archives (one per input row): a member row per regular file, then a row per part."""
    schema = schemas.table("image_facts").arrow()

    def rows(batches):
        for d in _descriptors(batches):
            parts = [archives.PartStats(p["rel"], p["size"]) for p in json.loads(d["parts"])]
            stream = archives.ChainedParts(parts, store.open)
            result = archives.StreamResult()
            for member in archives.iter_members(stream, policy.max_bytes, result):
                if member.data is None:
                    facts = images.ImageFacts(member.problem, member.detail)
                else:
                    facts = images.analyze(member.data, policy)
                yield _facts_row(d["source"], member.name, d["archive"], facts, member.data)
            broken_at = stream.current.rel if result.status != "ok" and stream.current else None
            if result.status == "ok":
                stream.drain()
            stream.close()
            yield from _part_rows(d, parts, result, broken_at)

    def run(batches):
        yield from _batched(rows(batches), schema, 16)
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


def read_tree(store: Store, policy: images.ImagePolicy) -> Callable:
    """Read images from the unpacked tree, one per input row (source, image_path)."""
    schema = schemas.table("image_facts").arrow()

    def rows(batches):
        for d in _descriptors(batches):
            data = store.read(f"{d['source']}/{d['image_path']}")
            if data is None:
                facts = images.ImageFacts("image_missing", "in no archive and not in the unpacked tree")
            else:
                facts = images.analyze(data, policy)
            yield _facts_row(d["source"], d["image_path"], "tree", facts, data)

    def run(batches):
        yield from _batched(rows(batches), schema, 16)
    return run
