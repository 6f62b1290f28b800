"""Reading a source root on local disk or S3 (boto3), by paths relative to that root."""

from __future__ import annotations

import io
import os
import stat
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import BinaryIO
from urllib.parse import urlparse


class SourceError(Exception):
    """A source root that cannot be read at all (wrong path, no bucket, no access)."""


class StoreError(OSError):
    """A file the store refuses to read: a link out of the source root, not a regular file (a FIFO, a
    device, a socket), or over the size asked for. Its message is the detail a quarantine row keeps."""


class TooLarge(StoreError):
    """A file over the byte limit of a read (found from its size, before reading any of it)."""

    def __init__(self, size: int, limit: int):
        super().__init__(f"{size} bytes > {limit}")
        self.size = size


@dataclass(frozen=True)
class FileInfo:
    rel: str                      # relative to the source root, "/" separated
    size: int
    modified_at: datetime | None
    etag: str | None

    @property
    def fingerprint(self) -> str:
        """What a refresh compares to decide whether the file changed."""
        if self.etag:
            return f"{self.size}:etag:{self.etag}"
        stamp = self.modified_at.timestamp() if self.modified_at else 0
        return f"{self.size}:mtime:{stamp:.6f}"


class Store:
    """A source root. Instances are small and picklable: tasks receive them in closures."""

    uri: str

    def list_dir(self, rel: str) -> tuple[list[str], list[FileInfo]]:
        """Subfolder names and files directly under `rel` (one level: never a recursive walk)."""
        raise NotImplementedError

    def open(self, rel: str, start: int = 0, end: int | None = None) -> BinaryIO:
        """A stream of the bytes [start, end) of a file."""
        raise NotImplementedError

    def read(self, rel: str, limit: int) -> bytes | None:
        """The whole file, or None when there is no such file; TooLarge (before any byte is read) over
        `limit` bytes, StoreError or OSError when it cannot be read."""
        raise NotImplementedError

    def parent(self) -> "Store":
        """The folder above the root."""
        raise NotImplementedError

    def basename(self) -> str:
        """The root folder's own name."""
        return self.uri.rstrip("/").rsplit("/", 1)[-1]

    @staticmethod
    def from_uri(uri: str, endpoint_url: str | None = None, region: str | None = None) -> "Store":
        """A LocalStore for a path or file:// URI, an S3Store for s3://bucket/prefix."""
        parsed = urlparse(uri)
        if parsed.scheme in ("s3", "s3a"):
            if not parsed.netloc:
                raise SourceError(f"no bucket in {uri}")
            return S3Store(parsed.netloc, parsed.path.strip("/"), endpoint_url, region)
        if parsed.scheme not in ("", "file"):
            raise SourceError(f"unsupported source scheme {parsed.scheme!r} in {uri} (use a path or s3://)")
        path = parsed.path if parsed.scheme == "file" else uri
        return LocalStore(os.path.abspath(path))


class LocalStore(Store):
    def __init__(self, root: str):
        self.root = root
        self.uri = root
        self._real_root = os.path.realpath(root)    # once: every open checks a path against it

    def parent(self) -> "Store":
        return LocalStore(os.path.dirname(self.root))

    def _full(self, rel: str) -> str:
        return os.path.join(self.root, *rel.split("/")) if rel else self.root

    def _real(self, rel: str) -> str:
        """The file's real path; StoreError when links lead it out of the source root."""
        real = os.path.realpath(self._full(rel))
        root = self._real_root
        if real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
            raise StoreError(f"{rel} is a link out of the source root: not read")
        return real

    def _open_regular(self, rel: str) -> tuple[int, os.stat_result]:
        """An open descriptor of a regular file under the root (never blocks: a FIFO is refused)."""
        fd = os.open(self._real(rel), os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            kind = ("FIFO" if stat.S_ISFIFO(st.st_mode) else "socket" if stat.S_ISSOCK(st.st_mode)
                    else "device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "folder"
                    if stat.S_ISDIR(st.st_mode) else "special file")
            raise StoreError(f"{rel} is a {kind}, not a regular file: not read")
        os.set_blocking(fd, True)
        return fd, st

    def list_dir(self, rel: str) -> tuple[list[str], list[FileInfo]]:
        """Folders, and every other entry as a file: links and special files too, so that what cannot be
        read is reported when it is opened (ingest_log says why), never skipped unseen."""
        dirs, files = [], []
        try:
            entries = list(os.scandir(self._full(rel)))
        except FileNotFoundError:
            if not rel:
                raise SourceError(f"source root does not exist: {self.root}") from None
            return [], []
        except NotADirectoryError:
            raise SourceError(f"source root is not a directory: {self._full(rel)}") from None
        for entry in sorted(entries, key=lambda e: e.name):
            try:
                if entry.is_dir():
                    dirs.append(entry.name)
                    continue
                st = entry.stat() if entry.is_file() else entry.stat(follow_symlinks=False)
            except OSError:           # a dangling link, or an entry gone since the listing
                st = None
            size = st.st_size if st is not None and stat.S_ISREG(st.st_mode) else 0
            mtime = datetime.fromtimestamp(st.st_mtime, timezone.utc) if st is not None else None
            files.append(FileInfo(f"{rel}/{entry.name}" if rel else entry.name, size, mtime, None))
        return dirs, files

    def open(self, rel: str, start: int = 0, end: int | None = None) -> BinaryIO:
        fd, _ = self._open_regular(rel)
        handle = os.fdopen(fd, "rb")
        if start:
            handle.seek(start)
        return handle if end is None else _Limited(handle, end - start)

    def read(self, rel: str, limit: int) -> bytes | None:
        try:
            fd, st = self._open_regular(rel)
        except (FileNotFoundError, NotADirectoryError):
            return None
        with os.fdopen(fd, "rb") as handle:
            if st.st_size > limit:
                raise TooLarge(st.st_size, limit)
            data = handle.read(limit + 1)
        if len(data) > limit:       # grew since fstat
            raise TooLarge(len(data), limit)
        return data


class S3Store(Store):
    def __init__(self, bucket: str, prefix: str, endpoint_url: str | None, region: str | None):
        self.bucket, self.prefix = bucket, prefix
        self.endpoint_url, self.region = endpoint_url, region
        self.uri = f"s3://{bucket}/{prefix}".rstrip("/")
        self._client = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_client"] = None
        return state

    @property
    def client(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region,
                                        config=Config(retries={"max_attempts": 8, "mode": "adaptive"}))
        return self._client

    def parent(self) -> "Store":
        return S3Store(self.bucket, self.prefix.rpartition("/")[0], self.endpoint_url, self.region)

    def _key(self, rel: str) -> str:
        return "/".join(p for p in (self.prefix, rel) if p)

    def list_dir(self, rel: str) -> tuple[list[str], list[FileInfo]]:
        from botocore.exceptions import BotoCoreError, ClientError

        prefix = self._key(rel)
        prefix = prefix + "/" if prefix else ""
        dirs, files = [], []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix, Delimiter="/")
            for page in pages:
                for common in page.get("CommonPrefixes", ()):
                    dirs.append(common["Prefix"][len(prefix):].rstrip("/"))
                for obj in page.get("Contents", ()):
                    name = obj["Key"][len(prefix):]
                    if name:
                        files.append(FileInfo(f"{rel}/{name}" if rel else name, obj["Size"],
                                              obj["LastModified"], obj["ETag"].strip('"')))
        except (ClientError, BotoCoreError) as exc:
            raise SourceError(f"cannot list {self.uri}/{rel}: {exc}") from None
        return sorted(dirs), sorted(files, key=lambda f: f.rel)

    def open(self, rel: str, start: int = 0, end: int | None = None) -> BinaryIO:
        if end is not None and end <= start:
            return io.BytesIO(b"")
        kwargs = {}
        if start or end is not None:
            kwargs["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        return self.client.get_object(Bucket=self.bucket, Key=self._key(rel), **kwargs)["Body"]

    def read(self, rel: str, limit: int) -> bytes | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(rel))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise StoreError(f"{rel}: {exc}") from None
        except BotoCoreError as exc:
            raise StoreError(f"{rel}: {exc}") from None
        body = response["Body"]
        try:
            if response.get("ContentLength", 0) > limit:      # the size, before reading the body
                raise TooLarge(response["ContentLength"], limit)
            data = body.read(limit + 1)
        finally:
            body.close()
        if len(data) > limit:
            raise TooLarge(len(data), limit)
        return data


class _Limited:
    """At most `remaining` bytes of an open file."""

    def __init__(self, handle: BinaryIO, remaining: int):
        self.handle, self.remaining = handle, remaining

    def read(self, n: int = -1) -> bytes:
        if self.remaining <= 0:
            return b""
        n = self.remaining if n is None or n < 0 else min(n, self.remaining)
        data = self.handle.read(n)
        self.remaining -= len(data)
        return data

    def close(self) -> None:
        self.handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
