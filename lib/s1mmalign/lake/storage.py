"""Files under a root on local disk or S3 (boto3), by paths relative to that root: reading a source
root, and the lake's own files besides its Delta tables (lease, staging slices, Data Docs, reports)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import BinaryIO
from urllib.parse import unquote, urlparse

from s1mmalign.config import S3Conf
from s1mmalign.errors import JobError


class SourceError(JobError):
    """A source root that cannot be read at all (wrong path, no bucket, no access)."""


class StoreError(OSError):
    """A file the store refuses to read: a link out of the source root, not a regular file (a FIFO, a
    device, a socket), or over the size asked for. Its message is the detail a quarantine row keeps."""


class Conflict(Exception):
    """A conditional write refused: the file exists (create), or it changed since read (replace)."""


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

    def child(self, rel: str) -> "Store":
        """The store rooted at the folder `rel` under this root."""
        raise NotImplementedError

    # --- writing (the lake's own files) -------------------------------------------------------------

    def get(self, rel: str) -> tuple[bytes, str] | None:
        """A small file's bytes and version (what put(if_match=...) compares), or None when absent."""
        raise NotImplementedError

    def put(self, rel: str, data: bytes, *, create: bool = False, if_match: str | None = None) -> str:
        """Write a small file whole; returns its new version. create: only when no such file exists;
        if_match: only when the file's version is still this one. Conflict when the condition fails."""
        raise NotImplementedError

    def delete(self, rel: str, if_match: str | None = None) -> None:
        """Remove a file (absent is fine); with if_match only while its version is still this one."""
        raise NotImplementedError

    def spool(self, rel: str) -> str:
        """A local path to write `rel`'s bytes to before put_file (beside it, on a local root)."""
        raise NotImplementedError

    def put_file(self, rel: str, local: str) -> None:
        """Publish a complete local file as `rel` at once (readers never see part of it); `local` is gone
        afterwards."""
        raise NotImplementedError

    @contextlib.contextmanager
    def local_copy(self, rel: str):
        """A local path holding `rel`'s bytes for the duration (the file itself on a local root)."""
        raise NotImplementedError
        yield

    def remove_tree(self, rel: str) -> None:
        """Remove the folder `rel` and everything under it (absent is fine)."""
        raise NotImplementedError

    def list_tree(self, rel: str) -> set[str]:
        """The paths (relative to `rel`, "/" separated) of every file under the folder `rel`, at any depth."""
        raise NotImplementedError

    def upload_tree(self, local: str, rel: str) -> int:
        """Copy every regular file under the local folder into `rel` (replacing files of the same name;
        links and special files are left out); returns how many."""
        count = 0
        for folder, _, names in os.walk(local):
            for name in sorted(names):
                path = os.path.join(folder, name)
                if os.path.islink(path) or not stat.S_ISREG(os.stat(path).st_mode):
                    continue
                dest = "/".join(p for p in (rel, os.path.relpath(path, local).replace(os.sep, "/")) if p)
                spooled = self.spool(dest)
                shutil.copyfile(path, spooled)
                self.put_file(dest, spooled)
                count += 1
        return count

    def download_tree(self, rel: str, local: str) -> int:
        """Copy every file under `rel` into the local folder; returns how many (0: no such folder)."""
        count = 0
        dirs, files = self.list_dir(rel)
        os.makedirs(local, exist_ok=True)
        for f in files:
            with self.local_copy(f.rel) as path:
                shutil.copyfile(path, os.path.join(local, f.rel.rsplit("/", 1)[-1]))
            count += 1
        for d in dirs:
            count += self.download_tree(f"{rel}/{d}" if rel else d, os.path.join(local, d))
        return count

    @staticmethod
    def from_uri(uri: str, s3: S3Conf | None = None) -> "Store":
        """A LocalStore for a path or file:// URI, an S3Store for s3://bucket/prefix (s3: its settings)."""
        parsed = urlparse(uri)
        if parsed.scheme in ("s3", "s3a"):
            if not parsed.netloc:
                raise SourceError(f"no bucket in {uri}")
            return S3Store(parsed.netloc, parsed.path.strip("/"), s3 or S3Conf())
        if parsed.scheme not in ("", "file"):
            raise SourceError(f"unsupported source scheme {parsed.scheme!r} in {uri} (use a path or s3://)")
        path = parsed.path if parsed.scheme == "file" else uri
        return LocalStore(os.path.abspath(path))


def remote(uri: str) -> bool:
    """Whether `uri` names an object store (s3://, s3a://), not a local path."""
    return "://" in uri and not uri.startswith("file://")


def hadoop_uri(uri: str) -> str:
    """The URI Spark's Hadoop file systems take for `uri`: s3:// becomes s3a:// (S3A), a local path is
    made absolute."""
    if uri.startswith("s3://"):
        return "s3a://" + uri[len("s3://"):]
    if "://" in uri:
        return uri
    return os.path.abspath(uri)


@contextlib.contextmanager
def output_folder(out: str, s3: S3Conf | None = None):
    """A local folder to write a job's output files into: `out` itself when local; for s3:// a temporary
    folder whose files are uploaded to `out` (each object whole) when the block ends without error."""
    if not remote(out):
        os.makedirs(out, exist_ok=True)
        yield out
        return
    with tempfile.TemporaryDirectory(prefix="s1mmalign-out-") as folder:
        yield folder
        Store.from_uri(out, s3).upload_tree(folder, "")


class LocalStore(Store):
    def __init__(self, root: str):
        self.root = root
        self.uri = root
        self._real_root = os.path.realpath(root)    # once: every open checks a path against it

    def parent(self) -> "Store":
        return LocalStore(os.path.dirname(self.root))

    def child(self, rel: str) -> "Store":
        return LocalStore(self._full(rel))

    def get(self, rel: str) -> tuple[bytes, str] | None:
        try:
            with open(self._full(rel), "rb") as f:
                data = f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return data, hashlib.sha256(data).hexdigest()

    def put(self, rel: str, data: bytes, *, create: bool = False, if_match: str | None = None) -> str:
        import fcntl

        path = self._full(rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}-{os.urandom(4).hex()}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            if create:      # an exclusive create of the complete file: link(2) fails when the name exists
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    raise Conflict(f"{rel} exists") from None
            elif if_match is None:      # an unconditional replace: rename(2) is atomic
                os.replace(tmp, path)
            else:
                # A conditional replace: compare and swap under a short lock of a guard file beside it
                # (every conditional writer of this file takes it), so no other writer slips in between.
                with open(f"{path}.guard", "a+b") as guard:
                    fcntl.flock(guard, fcntl.LOCK_EX)
                    if if_match is not None:
                        now = self.get(rel)
                        if now is None or now[1] != if_match:
                            raise Conflict(f"{rel} changed")
                    os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        return hashlib.sha256(data).hexdigest()

    def delete(self, rel: str, if_match: str | None = None) -> None:
        import fcntl

        path = self._full(rel)
        if not os.path.exists(path):
            return
        if if_match is None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            return
        with open(f"{path}.guard", "a+b") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            if if_match is not None:
                now = self.get(rel)
                if now is not None and now[1] != if_match:
                    raise Conflict(f"{rel} changed")
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)

    def spool(self, rel: str) -> str:
        path = self._full(rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return f"{path}.tmp{os.getpid()}"

    def put_file(self, rel: str, local: str) -> None:
        path = self._full(rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.replace(local, path)

    @contextlib.contextmanager
    def local_copy(self, rel: str):
        yield self._full(rel)

    def remove_tree(self, rel: str) -> None:
        shutil.rmtree(self._full(rel), ignore_errors=True)

    def list_tree(self, rel: str) -> set[str]:
        top = self._full(rel)
        return {os.path.relpath(os.path.join(folder, n), top).replace(os.sep, "/")
                for folder, _, names in os.walk(top) for n in names}

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
    def __init__(self, bucket: str, prefix: str, s3: S3Conf):
        self.bucket, self.prefix, self.s3 = bucket, prefix, s3
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

            s3 = self.s3     # as S3A has them (session.s3a_settings): attempts, path style, connect timeout
            self._client = boto3.client("s3", endpoint_url=s3.endpoint_url, region_name=s3.region, config=Config(
                retries={"total_max_attempts": s3.max_attempts, "mode": "adaptive"},
                s3={"addressing_style": "path" if s3.path_style_access else "auto"},
                connect_timeout=s3.connection_timeout_ms / 1000))
        return self._client

    def parent(self) -> "Store":
        return S3Store(self.bucket, self.prefix.rpartition("/")[0], self.s3)

    def child(self, rel: str) -> "Store":
        return S3Store(self.bucket, self._key(rel), self.s3)

    def get(self, rel: str) -> tuple[bytes, str] | None:
        from botocore.exceptions import ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(rel))
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
        with contextlib.closing(response["Body"]) as body:
            return body.read(), response["ETag"]

    def put(self, rel: str, data: bytes, *, create: bool = False, if_match: str | None = None) -> str:
        from botocore.exceptions import ClientError

        conditions = {"IfNoneMatch": "*"} if create else {"IfMatch": if_match} if if_match else {}
        try:
            return self.client.put_object(Bucket=self.bucket, Key=self._key(rel), Body=data, **conditions)["ETag"]
        except ClientError as exc:
            # 412: the condition failed; 409: a concurrent conditional write to the same key won
            if _code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                raise Conflict(f"{rel}: {_code(exc)}") from None
            if _code(exc) in ("NoSuchKey", "404") and if_match:
                raise Conflict(f"{rel} is gone") from None
            raise

    def delete(self, rel: str, if_match: str | None = None) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(rel),
                                      **({"IfMatch": if_match} if if_match else {}))
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                return
            if _code(exc) in ("PreconditionFailed", "412"):
                raise Conflict(f"{rel} changed") from None
            raise

    def spool(self, rel: str) -> str:
        fd, path = tempfile.mkstemp(prefix="s1mmalign-", suffix="-" + rel.rsplit("/", 1)[-1])
        os.close(fd)
        return path

    def put_file(self, rel: str, local: str) -> None:
        try:
            self.client.upload_file(local, self.bucket, self._key(rel))   # multipart above 8 MB
        finally:
            os.remove(local)

    @contextlib.contextmanager
    def local_copy(self, rel: str):
        path = self.spool(rel)
        try:
            self.client.download_file(self.bucket, self._key(rel), path)
            yield path
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)

    def remove_tree(self, rel: str) -> None:
        prefix = self._key(rel).rstrip("/") + "/"
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", ())]
            if keys:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})

    def list_tree(self, rel: str) -> set[str]:
        prefix = self._key(rel).rstrip("/") + "/" if self._key(rel) else ""
        return {o["Key"][len(prefix):]
                for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
                for o in page.get("Contents", ())}

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


def _code(exc) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


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


@functools.lru_cache(maxsize=4)
def arrow_s3(s3: S3Conf):
    """One pyarrow S3FileSystem per process and S3 settings (it holds the connection pool and the credentials
    it resolved from the AWS chain), reused by every file read through it; endpoint, region, path style and
    attempts as boto3 and S3A have them."""
    from pyarrow import fs

    endpoint = s3.endpoint_url
    return fs.S3FileSystem(region=s3.region, endpoint_override=endpoint,
                           scheme="http" if endpoint and endpoint.startswith("http://") else "https",
                           force_virtual_addressing=bool(endpoint) and not s3.path_style_access,
                           connect_timeout=s3.connection_timeout_ms / 1000,
                           retry_strategy=fs.AwsStandardS3RetryStrategy(max_attempts=s3.max_attempts))


def open_data_file(uri: str, s3: S3Conf):
    """A data file of a Delta table as its log or Spark names it (a path, file:/..., s3://, s3a://bucket/key),
    opened for pyarrow: a local file, or an input stream of pyarrow's S3 file system."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return open(unquote(parsed.path), "rb")
    if parsed.scheme in ("s3", "s3a", "s3n"):
        return arrow_s3(s3).open_input_file(
            f"{parsed.netloc}/{unquote(parsed.path.lstrip('/'))}")
    raise StoreError(f"{uri}: no reader for its scheme {parsed.scheme}")
