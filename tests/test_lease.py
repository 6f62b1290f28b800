"""The lake's lease (one writer per lake) on a local lake and on moto's S3 server: exclusive create,
refusal naming the holder, takeover after expiry or of a dead process, renewal, loss, release."""

import json
import os
import socket
import subprocess
import time

import pytest

from s1mmalign.config import S3Conf
from s1mmalign.lake import lease
from s1mmalign.lake.lease import LEASE_FILE, Lease, LeaseHeld, LeaseLost
from s1mmalign.lake.storage import Conflict, LocalStore, S3Store


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(str(tmp_path))
    endpoint = request.getfixturevalue("moto")
    bucket = f"lease-{os.urandom(4).hex()}"
    s3 = S3Store(bucket, "lake", S3Conf(endpoint_url=endpoint))
    s3.client.create_bucket(Bucket=bucket)
    return s3


def test_conditional_puts(store):
    v1 = store.put("f", b"one", create=True)
    with pytest.raises(Conflict):
        store.put("f", b"two", create=True)              # exists
    assert store.get("f") == (b"one", v1)
    v2 = store.put("f", b"two", if_match=v1)
    with pytest.raises(Conflict):
        store.put("f", b"three", if_match=v1)            # changed since v1
    with pytest.raises(Conflict):
        store.delete("f", if_match=v1)
    store.delete("f", if_match=v2)
    assert store.get("f") is None


def test_second_writer_refuses_naming_the_holder_and_release_frees_it(store):
    first = Lease(store, "L", ttl=60, heartbeat=20, job="ingest.py", run_id="r1").acquire()
    try:
        with pytest.raises(LeaseHeld, match=rf"being written by ingest.py pid {os.getpid()} on "
                                            rf"{socket.gethostname()}, run r1"):
            Lease(store, "L", ttl=60, heartbeat=20, job="validate.py").acquire()
        first.check()
    finally:
        first.release()
    assert store.get(LEASE_FILE) is None
    with Lease(store, "L", ttl=60, heartbeat=20) as again:
        again.check()


def _plant(store, **fields):
    holder = {"host": "other-host", "pid": 1, "job": "ingest.py", "run_id": "dead", "started": time.time() - 600,
              "expires": time.time() + 30, **fields}
    store.put(LEASE_FILE, json.dumps(holder).encode(), create=True)


def test_an_expired_lease_is_taken_over_and_a_live_one_is_not(store, caplog):
    _plant(store, expires=time.time() - 5)                   # its holder died on another host
    with caplog.at_level("WARNING", logger="s1mmalign.lake.lease"):
        with Lease(store, "L", ttl=60, heartbeat=20, run_id="new") as taken:
            taken.check()
            assert json.loads(store.get(LEASE_FILE)[0])["run_id"] == "new"
    assert "took over the lease of ingest.py pid 1 on other-host, run dead" in caplog.text
    assert "expired 5s ago" in caplog.text or "expired 6s ago" in caplog.text
    store.delete(LEASE_FILE)
    _plant(store)                                            # alive elsewhere, not expired
    with pytest.raises(LeaseHeld, match=r"other-host.*lease until 2\d{3}-\d\d-\d\dT\d\d:\d\d:\d\dZ"):
        Lease(store, "L", ttl=60, heartbeat=20).acquire()
    store.delete(LEASE_FILE)
    _plant(store, expires=time.time() + 600, ttl=1200.0)     # a holder with a longer ttl: still its lease
    with pytest.raises(LeaseHeld, match="other-host"):
        Lease(store, "L", ttl=60, heartbeat=20).acquire()


def _live(**change) -> bytes:
    """A lease record, live (its expiry days ahead, within its ttl, whenever the test runs) but for `change`:
    so each case is refused for what it changes, not for an expiry past or too far ahead."""
    return json.dumps({"host": "h", "pid": 1, "job": "j", "run_id": "r", "started": 1.0,
                       "expires": time.time() + 500_000, "ttl": 1_000_000.0, **change}).encode()


@pytest.mark.parametrize("garbled", [
    _live(pid="abc"),                                                                            # a string pid
    b'{"host": "h", "pid": 1, "job": "j", "run_id": "r", "started": 1, "expires": 1e300}',       # year 10^292
    b'{"host": "h", "pid": 1, "job": "j", "run_id": "r", "started": 1, "expires": Infinity}',
    b'{"host": "h", "pid": 1, "job": "j", "run_id": "r", "started": 1, "expires": NaN}',
    _live(pid=10**20),
    _live(pid=True),
    b'{"host": "h", "pid": 1, "job": "j", "run_id": "r", "started": 1}',                         # no expiry
    _live(started=-1.0), _live(pid=0), _live(ttl="long"),                                        # 1969, no pid
    _live(x=1),                                                                                  # foreign
    b'{"host": "h", "pid": 1, "job": "j", "run_id": "r", "started": 1, "expires": "soon"}',
    b'[1, 2]', b'{"host": ', b'\xff\xfe\x00garbage', b'',
    # well formed, but held far further ahead than any ttl: no holder renews that far
    json.dumps({"host": "h", "pid": 1, "job": "j", "run_id": "r", "started": 1.0, "expires": time.time() + 86400,
                "ttl": 120.0}).encode(),
])
def test_a_garbled_lease_file_is_taken_over_as_torn(store, caplog, garbled):
    store.put(LEASE_FILE, garbled, create=True)
    with caplog.at_level("WARNING", logger="s1mmalign.lake.lease"):
        with Lease(store, "L", ttl=60, heartbeat=20, run_id="new") as taken:
            taken.check()
            assert json.loads(store.get(LEASE_FILE)[0])["run_id"] == "new"
    assert "took over a torn lease file" in caplog.text


def test_a_lease_left_here_by_a_process_that_is_gone_is_taken_at_once(store):
    gone = subprocess.Popen(["true"])
    gone.wait()
    _plant(store, host=socket.gethostname(), pid=gone.pid)
    with Lease(store, "L", ttl=60, heartbeat=20, job="taker", run_id="after") as taken:
        taken.check()
        now = json.loads(store.get(LEASE_FILE)[0])          # who holds it after the takeover: this process
        assert (now["host"], now["pid"], now["job"], now["run_id"]) == (socket.gethostname(), os.getpid(),
                                                                        "taker", "after")
        assert now["expires"] > time.time()
    assert store.get(LEASE_FILE) is None                     # and gives it back when done


def test_heartbeat_renews_and_a_holder_that_lost_its_lease_stops_before_committing(store):
    held = Lease(store, "L", ttl=3, heartbeat=1).acquire()
    try:
        first_expiry = held.holder.expires
        time.sleep(2.5)
        held.check()                                          # renewed: still held past the first expiry
        assert held.holder.expires > first_expiry
        assert json.loads(store.get(LEASE_FILE)[0])["expires"] == held.holder.expires
        # another job takes it over (as after a long pause of this one): the next beat finds out
        _, version = store.get(LEASE_FILE)
        store.put(LEASE_FILE, json.dumps({"host": "h2", "pid": 2, "job": "j", "run_id": "r2", "started": 0,
                                          "expires": time.time() + 60}).encode(), if_match=version)
        deadline = time.time() + 5
        while not held.lost and time.time() < deadline:
            time.sleep(0.1)
        with pytest.raises(LeaseLost, match="was lost"):
            held.check()
    finally:
        held.release()
    assert json.loads(store.get(LEASE_FILE)[0])["run_id"] == "r2"       # release leaves the new holder's


def test_an_unrenewed_lease_stops_its_job(store):
    held = Lease(store, "L", ttl=3, heartbeat=2.5)
    held.acquire()
    held._stop.set()                                          # no more beats (a stalled process)
    held.holder.expires = time.time() - 1
    with pytest.raises(LeaseLost, match="expired unrenewed"):
        held.check()
    held.release()


def test_a_write_through_a_lake_is_refused_without_the_lease_and_after_losing_it(tmp_path):
    from s1mmalign.lake.root import Lake, NoLease

    bare = Lake(str(tmp_path))
    with pytest.raises(NoLease, match="holds no lease"):        # a job that never took it: an error, not a pass
        bare.check_lease()
    lake = Lake(str(tmp_path), lease_ttl=60, lease_heartbeat=20).hold("test")
    try:
        lake.check_lease()
        assert Lake(str(tmp_path)).hold("again").lease is lake.lease       # once per lake and process
        lake.lease.lost = "test"
        with pytest.raises(LeaseLost):
            lake.check_lease()
    finally:
        lake.lease.lost = None
        lease.release_all()
    assert not (tmp_path / LEASE_FILE).exists()
    with pytest.raises(LeaseLost, match="released"):            # given back: no more writes through it
        lake.check_lease()


class _Flaky:
    """A store whose next puts fail as S3 can: `lost` writes and then refuses (the answer to a conditional
    put was lost, the SDK retried it, and the retry found the condition false), `down` raises without
    writing."""

    def __init__(self, store):
        self.store, self.lost, self.down = store, 0, 0

    def put(self, rel, data, **condition):
        if self.down:
            self.down -= 1
            raise ConnectionError("S3 unreachable")
        version = self.store.put(rel, data, **condition)
        if self.lost:
            self.lost -= 1
            raise Conflict("retried after a lost answer")
        return version

    def __getattr__(self, name):
        return getattr(self.store, name)


def test_our_own_write_whose_answer_was_lost_is_recognized(store):
    flaky = _Flaky(store)
    flaky.lost = 1
    held = Lease(flaky, "L", ttl=3, heartbeat=1).acquire()         # the create: written, then "refused"
    try:
        held.check()
        flaky.lost = 1                                               # a renewal: the same
        expires = held.holder.expires
        deadline = time.time() + 5
        while held.holder.expires == expires and time.time() < deadline:
            time.sleep(0.1)
        assert held.holder.expires > expires and not held.lost
        held.check()
    finally:
        held.release()
    assert store.get(LEASE_FILE) is None


def test_a_renewal_that_fails_does_not_extend_the_lease(store):
    flaky = _Flaky(store)
    held = Lease(flaky, "L", ttl=2, heartbeat=0.5).acquire()
    try:
        flaky.down = 1000                                            # S3 unreachable from now on
        time.sleep(2.5)
        assert not held.lost
        with pytest.raises(LeaseLost, match="expired unrenewed"):
            held.check()
    finally:
        flaky.down = 0
        held.release()


def test_a_holder_with_a_longer_ttl_keeps_its_lease_against_a_job_with_a_shorter_one(store):
    """The record says its ttl: a job whose own ttl is shorter does not read the holder's far expiry as torn."""
    holder = Lease(store, "L", ttl=3600, heartbeat=600, job="maintain.py").acquire()
    try:
        assert json.loads(store.get(LEASE_FILE)[0])["ttl"] == 3600
        with pytest.raises(LeaseHeld, match="maintain.py"):
            Lease(store, "L", ttl=60, heartbeat=20).acquire()
    finally:
        holder.release()
