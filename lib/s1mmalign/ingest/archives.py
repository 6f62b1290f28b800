"""Streaming members out of gzip tar archives, split parts included, without unpacking to disk.

Memory stays flat: one member's bytes at a time (members over the byte cap are skipped unread).
Symbolic links, directories and members named with '..' or an absolute path are never followed or
written; a hard link (GNU tar's way to store a file it stored before) gets the bytes of the earlier member
it names. A header that claims more than MAX_HEADER_BYTES ends the stream unread (bad_header).
A gzip stream of several members (pigz, bgzip) is read to its end, each member's CRC checked.
Members are numbered in stream order: when a name comes twice, the last one wins (tar's own rule).
"""

from __future__ import annotations

import hashlib
import tarfile
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterator

from s1mmalign.ingest.records import normalize_path, path_problem, storable


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


class Gunzip:
    """The decompressed bytes of a gzip stream of one or more members (as pigz and bgzip write them);
    zero padding between or after members is skipped, anything else after a member ends the stream.
    At most GUNZIP_OUT bytes are decompressed ahead, however well the input compresses."""

    def __init__(self, raw, block: int = 1 << 20):
        self.raw, self.block = raw, block
        self.d = zlib.decompressobj(31)
        self.buf, self.pos = b"", 0
        self.done = False
        self.cut = False                # the input ended inside a gzip member

    def read(self, n: int = -1) -> bytes:
        out = []
        want = n if n is not None and n >= 0 else None
        while want is None or want > 0:
            if self.pos >= len(self.buf):
                if self.done or not self._more():
                    break
                continue
            take = len(self.buf) - self.pos if want is None else min(want, len(self.buf) - self.pos)
            out.append(self.buf if take == len(self.buf) else self.buf[self.pos: self.pos + take])
            self.pos += take
            if want is not None:
                want -= take
        return out[0] if len(out) == 1 else b"".join(out)

    def _more(self) -> bool:
        """Decompress the next piece into buf; False at the end of the stream."""
        if self.d.eof:
            rest = self.d.unused_data
            while len(rest.lstrip(b"\0")) < 2:
                more = self.raw.read(self.block)
                if not more:
                    break
                rest += more
            rest = rest.lstrip(b"\0")
            if not rest.startswith(b"\x1f\x8b"):
                self.done = True            # the end (or bytes after the last member, which gzip ignores too)
                return False
            self.d = zlib.decompressobj(31)
            chunk = rest
        else:
            chunk = self.d.unconsumed_tail or self.raw.read(self.block)
            if not chunk:               # no raise here: the reader keeps every byte before the cut
                self.cut = self.done = True
                return False
        self.buf, self.pos = self.d.decompress(chunk, GUNZIP_OUT), 0
        return True


GUNZIP_OUT = 4 << 20


# A GNU long-name/long-link or PAX header holds a path and a few attributes: a few KB. One that claims more
# is refused before any of it is read (tarfile would read all it claims into memory, however small the
# archive: a 1 MB gzip of zeros is hundreds of MB of "header"); the archive ends there with status bad_header.
MAX_HEADER_BYTES = 1 << 20
_EXTENDED = {tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
             tarfile.SOLARIS_XHDTYPE}


class HeaderTooLarge(Exception):
    """An extended header (long name, PAX) larger than MAX_HEADER_BYTES."""


class _BoundedInfo(tarfile.TarInfo):
    """tarfile's TarInfo, refusing an extended header over MAX_HEADER_BYTES before reading it."""

    def _proc_member(self, tarfile_):
        if self.type in _EXTENDED and self.size > MAX_HEADER_BYTES:
            kind = "GNU long-name" if self.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK) else "PAX"
            raise HeaderTooLarge(f"{kind} header of {self.size} bytes > {MAX_HEADER_BYTES} (at offset {self.offset})")
        return super()._proc_member(tarfile_)


@dataclass(frozen=True)
class Member:
    """A regular file in an archive: its name, its position among the archive's regular members, and
    its bytes or why they were not read."""

    name: str
    data: bytes | None
    problem: str | None = None        # a quarantine reason when data is None
    detail: str | None = None
    ordinal: int = 0
    link: str | None = None           # a hard link: the earlier member whose bytes it has (data is None)


@dataclass
class StreamResult:
    status: str = "ok"                # ok | truncated | bad_header
    detail: str | None = None
    skipped: int = 0                  # links, folders, unsafe names: not followed


def iter_members(stream: ChainedParts, max_bytes: int, result: StreamResult) -> Iterator[Member]:
    """Yield the regular-file members of a gzip tar stream; stop cleanly where the data breaks."""
    ordinal = 0
    gunzip = Gunzip(stream)
    try:
        with tarfile.open(fileobj=gunzip, mode="r|", errors="surrogateescape", tarinfo=_BoundedInfo) as tar:
            for info in tar:
                tar.members.clear()     # tarfile keeps every header it read: memory would grow per member
                name = normalize_path(info.name)
                hard_link = info.islnk() and not path_problem(info.linkname) and storable(info.linkname)
                if not (info.isreg() or hard_link) or path_problem(info.name) or not name or not storable(name):
                    result.skipped += 1     # symbolic links, folders, devices, FIFOs; unsafe or non-UTF-8 names
                    continue
                part = stream.current
                if part is not None:
                    part.members += 1
                ordinal += 1
                if hard_link:               # GNU tar stores a file it archived before as a link to it
                    yield Member(name, None, ordinal=ordinal, link=normalize_path(info.linkname))
                    continue
                if info.size > max_bytes:
                    yield Member(name, None, "image_too_large", f"{info.size} bytes > {max_bytes}", ordinal)
                    continue
                handle = tar.extractfile(info)
                data = handle.read() if handle else b""
                if len(data) != info.size:
                    raise EOFError(f"member {name} cut short")
                yield Member(name, data, ordinal=ordinal)
    except HeaderTooLarge as exc:
        result.status = "bad_header"
        result.detail = f"stream stopped: {exc}"
        return
    except (tarfile.TarError, EOFError, OSError, zlib.error, ValueError, OverflowError) as exc:
        result.status = "truncated"
        result.detail = f"stream broke: {type(exc).__name__}: {str(exc)[:200]}"
        return
    if gunzip.cut:      # the tar stream looked complete, but its gzip stream was cut (at a member's end)
        result.status = "truncated"
        result.detail = "stream broke: the gzip stream ends before its end-of-member trailer"
