import gzip
import io
import tarfile

import pytest

from helpers import header_bomb
from s1mmalign.ingest import archives
from s1mmalign.lake.storage import LocalStore


def make_tar(members) -> bytes:
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w|") as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = data
                tar.addfile(info)
    return raw.getvalue()


def stream(tmp_path, blobs: dict[str, bytes], max_bytes=1 << 20):
    for name, data in blobs.items():
        (tmp_path / name).write_bytes(data)
    parts = [archives.PartStats(name, len(data)) for name, data in blobs.items()]
    chain = archives.ChainedParts(parts, LocalStore(str(tmp_path)).open)
    result = archives.StreamResult()
    members = list(archives.iter_members(chain, max_bytes, result))
    if result.status == "ok":
        chain.drain()
    return members, result, parts


def test_split_parts_read_as_one_stream_with_per_part_checksums(tmp_path):
    payload = [(f"images/a/{i}.png", bytes([i]) * (3000 + i), "file") for i in range(20)]
    data = make_tar(payload)
    cut = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    blobs = {f"x.tar.gz.part{s}": data[cut[i]:cut[i + 1]] for i, s in enumerate(["aa", "ab", "ac"])}
    members, result, parts = stream(tmp_path, blobs)
    assert result.status == "ok"
    assert [(m.name, m.data) for m in members] == [(n, d) for n, d, _ in payload]
    import hashlib
    for part, blob in zip(parts, blobs.values(), strict=True):
        assert part.sha256.hexdigest() == hashlib.sha256(blob).hexdigest()
    assert sum(p.members for p in parts) == 20


def test_unsafe_members_and_links_are_never_followed(tmp_path):
    data = make_tar([("../evil.png", b"e", "file"), ("/abs/evil.png", b"a", "file"),
                     ("images/link.png", "/etc/passwd", "symlink"), ("images/hard.png", "images/ok.png", "hard"),
                     ("./images/ok.png", b"fine", "file")])
    members, result, _ = stream(tmp_path, {"a.tar.gz": data})
    # the hard link is a member (its bytes are its target's, found by the reader: tasks.split_archives)
    assert [(m.name, m.data, m.link) for m in members] == [("images/hard.png", None, "images/ok.png"),
                                                           ("images/ok.png", b"fine", None)]
    assert result.skipped == 3
    assert not (tmp_path / "evil.png").exists() and not (tmp_path.parent / "evil.png").exists()


def test_truncated_archive_keeps_members_before_the_break(tmp_path):
    payload = [(f"m{i}.png", bytes([i]) * 50_000, "file") for i in range(10)]
    import os
    payload = [(n, os.urandom(50_000), k) for n, _, k in payload]  # incompressible: the cut lands mid-way
    data = make_tar(payload)
    members, result, _ = stream(tmp_path, {"t.tar.gz": data[: len(data) // 2]})
    assert result.status == "truncated" and "broke" in result.detail
    assert 2 <= len(members) < 10
    assert all(m.data == payload[i][1] for i, m in enumerate(members))


def test_oversized_member_is_skipped_unread(tmp_path):
    data = make_tar([("big.png", b"x" * 5000, "file"), ("small.png", b"y", "file")])
    members, result, _ = stream(tmp_path, {"a.tar.gz": data}, max_bytes=1000)
    assert result.status == "ok"
    assert (members[0].name, members[0].data, members[0].problem) == ("big.png", None, "image_too_large")
    assert members[1].data == b"y"


def test_not_a_gzip_file_is_reported_not_raised(tmp_path):
    members, result, _ = stream(tmp_path, {"a.tar.gz": b"plain text, not gzip"})
    assert members == [] and result.status == "truncated"


@pytest.mark.parametrize("kind", [tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE])
def test_a_header_claiming_hundreds_of_mb_ends_the_archive_in_bounded_memory(tmp_path, kind):
    import tracemalloc

    ok = tarfile.TarInfo("images/ok.png")
    ok.size = 4
    body = ok.tobuf(format=tarfile.GNU_FORMAT) + b"fine".ljust(512, b"\0")     # one member, no end blocks
    data = header_bomb(256 << 20, body, kind)
    assert len(data) < 2 << 20                          # a small archive
    tracemalloc.start()
    try:
        members, result, _ = stream(tmp_path, {"bomb.tar.gz": data})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [(m.name, m.data) for m in members] == [("images/ok.png", b"fine")]
    assert result.status == "bad_header" and f"{256 << 20} bytes > {archives.MAX_HEADER_BYTES}" in result.detail
    assert peak < 32 << 20, peak


def test_a_header_under_the_bound_is_read(tmp_path):
    long_name = "images/" + "n" * 3000 + ".png"            # a GNU long name of 3 KB: read as usual
    data = make_tar([(long_name, b"x", "file")])
    members, result, _ = stream(tmp_path, {"a.tar.gz": data})
    assert result.status == "ok" and [m.name for m in members] == [long_name]


def test_an_extended_header_at_the_bound_is_read_and_one_byte_over_is_not(tmp_path, monkeypatch):
    long_name = "images/" + "n" * 2989 + ".png"            # its GNU long-name header: 3,000 bytes and a NUL
    info = tarfile.TarInfo(long_name)
    info.size = 1
    data = gzip.compress(info.tobuf(format=tarfile.GNU_FORMAT) + b"x".ljust(512, b"\0") + bytes(1024))
    monkeypatch.setattr(archives, "MAX_HEADER_BYTES", 3001)
    members, result, _ = stream(tmp_path, {"a.tar.gz": data})
    assert result.status == "ok" and [m.name for m in members] == [long_name]
    monkeypatch.setattr(archives, "MAX_HEADER_BYTES", 3000)
    members, result, _ = stream(tmp_path, {"b.tar.gz": data})
    assert result.status == "bad_header" and members == []


def test_a_hard_link_to_an_unsafe_name_is_not_followed(tmp_path):
    data = make_tar([("images/ok.png", b"fine", "file"), ("images/h1.png", "../evil.png", "hard"),
                     ("images/h2.png", "/etc/passwd", "hard"), ("images/h3.png", "images/ok.png", "hard")])
    members, result, _ = stream(tmp_path, {"a.tar.gz": data})
    assert [(m.name, m.link) for m in members] == [("images/ok.png", None), ("images/h3.png", "images/ok.png")]
    assert result.skipped == 2
    latin = tarfile.TarInfo("images/h4.png")                     # a target named in bytes that are not UTF-8
    latin.type, latin.linkname = tarfile.LNKTYPE, "images/caf\udce9.png"
    block = latin.tobuf(format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape")
    members, result, _ = stream(tmp_path, {"b.tar.gz": gzip.compress(block + bytes(1024))})
    assert members == [] and result.skipped == 1


def test_memory_stays_flat_over_many_members(tmp_path):
    """tarfile keeps every header it reads (TarFile.members): a year's archive of 500,000 members would hold
    them all. 30,000 one-byte members: the reader's peak stays that of its buffers."""
    import tracemalloc

    raw = io.BytesIO()
    for i in range(30_000):
        info = tarfile.TarInfo(f"images/{i}.png")
        info.size = 1
        raw.write(info.tobuf(format=tarfile.GNU_FORMAT) + b"x" + bytes(511))
    raw.write(bytes(1024))
    (tmp_path / "many.tar.gz").write_bytes(gzip.compress(raw.getvalue()))
    chain = archives.ChainedParts([archives.PartStats("many.tar.gz", (tmp_path / "many.tar.gz").stat().st_size)],
                                  LocalStore(str(tmp_path)).open)
    result = archives.StreamResult()
    tracemalloc.start()
    try:
        count = sum(1 for _ in archives.iter_members(chain, 100, result))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 30_000 and result.status == "ok"
    assert peak < 16 << 20, peak          # the held headers alone would add about 10 MB
