"""One writer per lake: a lease file at the lake root, taken before a job writes, renewed while it runs.

Delta on S3 (S3SingleDriverLogStore) assumes a single writing driver: two drivers committing the same
version at once can silently lose a commit. So a writing job first takes the lake's lease, `_lease.json`:
  - taken by a create that fails when the file exists (S3: a put with `If-None-Match: *`; a local lake:
    link(2) of a complete file, which fails when the name exists);
  - naming its holder (host, pid, job, run id, start) and an expiry, pushed forward by a heartbeat
    thread with a put conditional on the version it last wrote (`If-Match` on S3), so a holder that
    lost the lease finds out at its next beat and never overwrites the new holder's;
  - a second writer refuses at once with one line naming the holder (LeaseHeld, exit 2);
  - a lease past its expiry (its holder died: kill -9, a lost node), or one left on this host by a
    process that no longer runs, is taken over by a put conditional on the version read, said in one
    line; of two jobs taking over at once, one wins;
  - before every commit the job checks that it still holds the lease (every write of root.Lake calls check()): a job
    that lost it (a heartbeat refused, or its expiry passed without renewal) stops there (LeaseLost).
Read-only jobs (spark-sql, the report's queries) take no lease.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass

from s1mmalign.errors import JobError
from s1mmalign.lake.storage import Conflict, Store

log = logging.getLogger(__name__)

LEASE_FILE = "_lease.json"


class LeaseHeld(Exception):
    """Another job holds the lake's lease."""


class LeaseLost(JobError):
    """This job no longer holds the lease it took (expired unrenewed, or taken over)."""


CLOCK_SKEW = 60.0          # seconds a holder's clock may run ahead of ours


@dataclass
class Holder:
    host: str
    pid: int
    job: str
    run_id: str
    started: float
    expires: float          # epoch seconds
    ttl: float = 0.0        # the holder's lease ttl (0: a record written before it was kept)

    def describe(self) -> str:
        return f"{self.job} pid {self.pid} on {self.host}, run {self.run_id}, since {stamp(self.started)}"


def stamp(epoch: float) -> str:
    """An epoch time as an ISO date and time (UTC)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


_TYPES = {"host": str, "pid": int, "job": str, "run_id": str, "started": float, "expires": float, "ttl": float}
_LATEST = 253402300799.0      # 9999-12-31T23:59:59Z: any later time is no real expiry (and gmtime overflows)


def _parse(data: bytes) -> Holder | None:
    """The holder a lease file names, or None for a torn or foreign file (its writer cannot be renewing it):
    not JSON, other keys, a value of the wrong type, a time that is not a finite date."""
    try:
        record = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or not set(_TYPES) - {"ttl"} <= set(record) <= set(_TYPES):
        return None
    for key, value in record.items():
        want = _TYPES[key]
        if isinstance(value, bool) or not isinstance(value, (int, float) if want is float else want):
            return None
        if want is float and not 0 <= value <= _LATEST:      # also NaN and infinities
            return None
    if not 0 < record["pid"] < 2**31:        # what os.kill takes
        return None
    return Holder(**record)


def _process_gone(holder: Holder) -> bool:
    """The holder ran on this host and its process is no longer there (killed, crashed)."""
    if holder.host != socket.gethostname():
        return False
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Lease:
    """The lease of one lake, for one job; use acquire() and release() (or `with`)."""

    def __init__(self, store: Store, lake: str, ttl: float, heartbeat: float, job: str | None = None,
                 run_id: str | None = None):
        if not 0 < heartbeat < ttl:
            raise ValueError(f"lease heartbeat {heartbeat}s must be above 0 and below its ttl {ttl}s")
        self.store, self.lake, self.ttl, self.heartbeat = store, lake, ttl, heartbeat
        self.holder = Holder(socket.gethostname(), os.getpid(),
                             job or os.path.basename(sys.argv[0] or "?"), run_id or uuid.uuid4().hex[:12],
                             time.time(), 0.0)
        self.version: str | None = None
        self._attempt = 0.0                      # the expiry of our last write, written or not
        self.lost: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _put(self, **condition) -> None:
        """Write our record with a new expiry under `condition`; the expiry counts only once written."""
        expires = time.time() + self.ttl
        self._attempt = expires
        record = {**asdict(self.holder), "expires": expires, "ttl": float(self.ttl)}
        self.version = self.store.put(LEASE_FILE, json.dumps(record).encode(), **condition)
        self.holder.expires = expires

    def _adopt(self, current: tuple[bytes, str] | None, expires: float | None = None) -> bool:
        """Whether the stored record is our own write whose answer was lost (then retried and refused):
        if so, take its version (and expiry) as ours."""
        other = _parse(current[0]) if current else None
        if other is None or not self._mine(other) or (expires is not None and other.expires != expires):
            return False
        self.version, self.holder.expires = current[1], other.expires
        return True

    def acquire(self) -> "Lease":
        try:
            self._put(create=True)
        except Conflict:
            self._take_over()
        self._thread = threading.Thread(target=self._beat, name="lake-lease", daemon=True)
        self._thread.start()
        return self

    def _take_over(self) -> None:
        current = self.store.get(LEASE_FILE)
        if current is None:     # released between our create and our read: create again, once
            try:
                self._put(create=True)
                return
            except Conflict:
                current = self.store.get(LEASE_FILE)
                if current is None:
                    raise LeaseHeld(f"lake {self.lake}: its lease changes hands too fast to take; retry") from None
        if self._adopt(current):       # our own create, whose answer was lost and retried
            return
        data, version = current
        other = _parse(data)
        now = time.time()
        if other is not None and other.expires > now + (other.ttl or self.ttl) + CLOCK_SKEW:
            log.warning("lake %s: the lease file says %s holds it until %s, further ahead than its ttl: "
                        "read as torn", self.lake, other.describe(), stamp(other.expires))
            other = None        # no holder renews that far ahead: a garbled or hand-made file
        if other is not None and other.expires > now and not _process_gone(other):
            raise LeaseHeld(f"lake {self.lake} is being written by {other.describe()} (lease until "
                            f"{stamp(other.expires)}); one writer per lake: "
                            f"wait for it, or for its lease to expire if it died")
        why = ("a torn lease file" if other is None else
               f"the lease of {other.describe()}, " +
               ("whose process is gone" if other.expires > now else
                f"expired {now - other.expires:.0f}s ago without renewal"))
        try:
            self._put(if_match=version)
        except Conflict:
            raise LeaseHeld(f"lake {self.lake}: another job took over {why} first") from None
        log.warning("lake %s: took over %s", self.lake, why)

    def _mine(self, other: Holder) -> bool:
        h = self.holder
        return (other.host, other.pid, other.run_id, other.started) == (h.host, h.pid, h.run_id, h.started)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            with self._lock:
                if self.lost:
                    return
                try:
                    self._put(if_match=self.version)
                except Conflict:
                    if self._adopt(self.store.get(LEASE_FILE), self._attempt):
                        continue                       # our own renewal, whose answer was lost and retried
                    self.lost = "another job took the lease over"
                    log.error("lake %s: lease lost (%s); this job stops before its next commit", self.lake,
                              self.lost)
                    return
                except Exception as exc:      # S3 unreachable for now: retry at the next beat, expiry guards
                    log.warning("lake %s: lease renewal failed (%s); retrying", self.lake, exc)

    def check(self) -> None:
        """LeaseLost unless this job still holds the lease (called before each commit)."""
        if self.lost:
            raise LeaseLost(f"lake {self.lake}: this job's lease was lost ({self.lost}); stopped before committing")
        if time.time() >= self.holder.expires:
            raise LeaseLost(f"lake {self.lake}: this job's lease expired unrenewed "
                            f"(heartbeat every {self.heartbeat:.0f}s, ttl {self.ttl:.0f}s); stopped before committing")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.heartbeat + 5)
        with self._lock:
            if self.version is not None and not self.lost:
                try:
                    self.store.delete(LEASE_FILE, if_match=self.version)
                except Conflict:
                    pass          # someone took it over after our expiry: theirs now
                except Exception as exc:
                    log.warning("lake %s: lease not released (%s); it expires in %.0fs", self.lake, exc, self.ttl)
            self.version = None
            self.lost = self.lost or "released"      # given back: a write after it must not pass check()

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


_held: dict[str, Lease] = {}


def hold(store: Store, lake: str, ttl: float, heartbeat: float, job: str | None = None) -> Lease:
    """Take the lake's lease for this process, once (released at exit; see release_all)."""
    if lake not in _held:
        _held[lake] = Lease(store, lake, ttl, heartbeat, job).acquire()
    return _held[lake]


def release_all() -> None:
    while _held:
        _, lease = _held.popitem()
        lease.release()
