"""Slice files: the member bytes of an archive, cut by the task that streams it into Arrow IPC files of
about ingest.archive_slice_bytes each under the run's staging folder (every executor reaches it: a shared
disk or S3), so that analysis tasks take an archive's members in parallel and the image bytes never pass
through the JVM. The one owner of that format: written (Writer), named (key, SUFFIX), found as they are
completed (complete), read back by row (Reader, with_content)."""

from __future__ import annotations

import hashlib
from itertools import groupby
from operator import itemgetter
from typing import Iterable, Iterator

import pyarrow as pa

from s1mmalign.lake.storage import Store

SCHEMA = pa.schema([pa.field("image_path", pa.string(), False), pa.field("content", pa.binary(), False),
                          pa.field("member", pa.int64())])
BATCH_BYTES = 8 << 20       # member bytes per record batch of a slice file


SUFFIX = ".arrow"


def key(source: str, archive: str) -> str:
    """The name prefix of an archive's slice files (no '-' in it: the slice number follows one)."""
    return hashlib.sha256(f"{source}\x00{archive}".encode()).hexdigest()[:20]


class Writer:
    """Member bytes of one archive into Arrow IPC files of about `limit` bytes each under `folder` of the
    scratch store, each written aside (a local spool file) and published whole when complete: renamed on
    a local or shared disk, uploaded on S3 (a retried or speculative task rewrites the same names with
    the same bytes)."""

    def __init__(self, scratch: Store, folder: str, key: str, limit: int):
        self.scratch, self.folder, self.key, self.limit = scratch, folder, key, limit
        self.done: list[tuple[str, int, int]] = []     # (name, members, bytes) of complete slices
        self._names: list[str] = []
        self._blobs: list[bytes] = []
        self._ordinals: list[int | None] = []
        self._pending = 0                               # bytes in _names/_blobs
        self._writer = self._sink = self._path = self._tmp = None
        self._members = self._bytes = 0
        self._where: dict[str, tuple[str, int]] = {}    # member name -> its slice and row (the last of a name)

    def read(self, name: str) -> bytes | None:
        """The bytes of the member of this name stored last, or None (a hard link's target)."""
        where = self._where.get(name)
        if where is None:
            return None
        path, row = where
        if path == self._path and self._writer is not None:      # the open slice
            first_pending = self._members - len(self._names)
            if row >= first_pending:
                return self._blobs[row - first_pending]
            self.close()        # its batch is in the open file: complete the file to read it back
        with self.scratch.local_copy(path) as local, pa.memory_map(local) as source:
            reader = pa.ipc.open_file(source)
            for i in range(reader.num_record_batches):
                batch = reader.get_batch(i)
                if row < batch.num_rows:
                    return batch.column(1)[row].as_py()
                row -= batch.num_rows
        return None

    def add(self, name: str, data: bytes, ordinal: int | None = None) -> tuple[str, int]:
        """Store one member; returns the slice file (its name in the scratch store) and row that hold it."""
        if self._writer is None:
            self._path = f"{self.folder}/{self.key}-{len(self.done):06d}{SUFFIX}"
            self._tmp = self.scratch.spool(self._path)
            self._sink = pa.OSFile(self._tmp, "wb")
            self._writer = pa.ipc.new_file(self._sink, SCHEMA)
        where = (self._path, self._members)
        self._where[name] = where
        self._names.append(name)
        self._blobs.append(data)
        self._ordinals.append(ordinal)
        self._pending += len(data)
        self._members += 1
        self._bytes += len(data)
        if self._pending >= BATCH_BYTES:
            self._flush()
        if self._bytes >= self.limit:
            self.close()
        return where

    def _flush(self) -> None:
        if self._names:
            self._writer.write_batch(pa.RecordBatch.from_arrays(
                [pa.array(self._names, pa.string()), pa.array(self._blobs, pa.binary()),
                 pa.array(self._ordinals, pa.int64())], schema=SCHEMA))
            self._names, self._blobs, self._ordinals, self._pending = [], [], [], 0

    def close(self) -> None:
        """Complete the open slice, if any."""
        if self._writer is None:
            return
        self._flush()
        self._writer.close()
        self._sink.close()
        self.scratch.put_file(self._path, self._tmp)
        self.done.append((self._path, self._members, self._bytes))
        self._writer = self._sink = None
        self._members = self._bytes = 0


def complete(scratch: Store, folder: str, owners: dict[str, tuple[str, str]],
                     taken: set[str]) -> list[dict]:
    """Slice files complete under folder of the scratch store (published whole: a listed slice name is a
    complete file) that are not taken yet, as descriptors (source, archive, slice); marks them taken."""
    ready = []
    for f in scratch.list_dir(folder)[1]:
        name = f.rel.rsplit("/", 1)[-1]
        owner = owners.get(name.split("-", 1)[0])
        if name.endswith(SUFFIX) and owner and f.rel not in taken:
            taken.add(f.rel)
            ready.append({"source": owner[0], "archive": owner[1], "slice": f.rel})
    return ready


class Reader:
    """Rows of one slice file by number (memory-mapped: reading rows costs only their bytes; a slice on
    S3 is downloaded once, to a local file, for as long as the reader is open)."""

    def __init__(self, scratch: Store, path: str):
        self.path = path
        self._copy = scratch.local_copy(path)
        self.table = pa.ipc.open_file(pa.memory_map(self._copy.__enter__())).read_all()

    def take(self, rows: list[int]) -> pa.Array:
        return self.table.column(1).take(pa.array(rows, pa.int64())).combine_chunks()

    def close(self) -> None:
        self.table = None
        self._copy.__exit__(None, None, None)


def with_content(scratch: Store, batches: Iterable[pa.RecordBatch], schema: pa.Schema,
                 batch_bytes: int) -> Iterator[pa.RecordBatch]:
    """images rows without `content` but with (slice, slice_row) in; the same rows with the original bytes
    read back from the slice files of the scratch store out, in batches of about batch_bytes of images.

    Columnar: each batch takes its bytes from the memory-mapped slices with one Arrow `take` per run of
    rows from the same slice; no value becomes a Python object.
    """
    reader = None
    try:
        for batch in batches:
            for part in _byte_bounded(batch, "image_bytes", batch_bytes):
                pieces = []
                runs = zip(part.column("slice").to_pylist(), part.column("slice_row").to_pylist(), strict=True)
                for path, run_rows in groupby(runs, key=itemgetter(0)):    # one take per slice file run
                    if reader is None or reader.path != path:
                        if reader is not None:
                            reader.close()
                        reader = Reader(scratch, path)
                    pieces.append(reader.take([row for _, row in run_rows]))
                yield pa.RecordBatch.from_arrays(
                    [pa.concat_arrays(pieces) if f.name == "content" else part.column(f.name).cast(f.type)
                     for f in schema], schema=schema)
    finally:
        if reader is not None:
            reader.close()


def _byte_bounded(batch: pa.RecordBatch, size_column: str, limit: int) -> Iterator[pa.RecordBatch]:
    """batch in consecutive non-empty pieces, each ending at the row that brings the sum of size_column
    to limit (a row larger than limit is a piece alone)."""
    start, held = 0, 0
    for i, size in enumerate(batch.column(size_column).to_pylist()):
        held += size
        if held >= limit:
            yield batch.slice(start, i + 1 - start)
            start, held = i + 1, 0
    if start < batch.num_rows:
        yield batch.slice(start)
