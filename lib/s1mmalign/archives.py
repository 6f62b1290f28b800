"""Streaming members out of gzip tar archives, split parts included, without unpacking to disk.

Memory stays flat: one member's bytes at a time (members over the byte cap are skipped unread).
Links, directories and members named with '..' or an absolute path are never followed or written.
"""

from __future__ import annotations

import hashlib
import tarfile
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterator

from s1mmalign.records import normalize_path, path_problem


@dataclass
class PartStats:
    """What streaming learned about one part: its checksum and how many members started in it."""

    rel: str
    size: int
    sha256: "hashlib._Hash" = field(default_factory=hashlib.sha256)
    bytes_read: int = 0
    members: int = 0


class ChainedParts:
    """A read-only stream over parts in order, hashing each part as it passes."""

    def __init__(self, parts: list[PartStats], opener: Callable[[str], BinaryIO]):
        self.parts, self.opener = parts, opener
        self.index, self.handle = -1, None

    @property
    def current(self) -> PartStats | None:
        return self.parts[self.index] if 0 <= self.index < len(self.parts) else None

    def read(self, n: int = -1) -> bytes:
        out = []
        want = n if n is not None and n >= 0 else None
        while want is None or want > 0:
            if self.handle is None:
                if self.index + 1 >= len(self.parts):
                    break
                self.index += 1
                self.handle = self.opener(self.parts[self.index].rel)
            block = self.handle.read(want if want is not None else 1 << 20)
            if not block:
                self.handle.close()
                self.handle = None
                continue
            part = self.parts[self.index]
            part.sha256.update(block)
            part.bytes_read += len(block)
            out.append(block)
            if want is not None:
                want -= len(block)
        return b"".join(out)

    def drain(self) -> None:
        """Read to the end, so every part's checksum covers all its bytes."""
        while self.read(1 << 20):
            pass

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


@dataclass(frozen=True)
class Member:
    """A regular file in an archive: its name, and its bytes or why they were not read."""

    name: str
    data: bytes | None
    problem: str | None = None        # a quarantine reason when data is None
    detail: str | None = None


@dataclass
class StreamResult:
    status: str = "ok"                # ok | truncated
    detail: str | None = None
    skipped: int = 0                  # links, folders, unsafe names: not followed


def iter_members(stream: ChainedParts, max_bytes: int, result: StreamResult) -> Iterator[Member]:
    """Yield the regular-file members of a gzip tar stream; stop cleanly where the data breaks."""
    try:
        with tarfile.open(fileobj=stream, mode="r|gz") as tar:
            for info in tar:
                if not info.isreg():
                    result.skipped += 1
                    continue
                if path_problem(info.name):
                    result.skipped += 1
                    continue
                part = stream.current
                if part is not None:
                    part.members += 1
                name = normalize_path(info.name)
                if info.size > max_bytes:
                    yield Member(name, None, "image_too_large", f"{info.size} bytes > {max_bytes}")
                    continue
                handle = tar.extractfile(info)
                data = handle.read() if handle else b""
                if len(data) != info.size:
                    raise EOFError(f"member {name} cut short")
                yield Member(name, data)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        result.status = "truncated"
        result.detail = f"stream broke: {type(exc).__name__}: {str(exc)[:200]}"
