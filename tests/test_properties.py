"""Property-based tests (Hypothesis): whatever a producer writes, no exception escapes the line parser or
the archive reader, and every input line or member has exactly one outcome.

Examples are derandomized (the same thousands on every run, so CI is stable); raise
S1MM_HYPOTHESIS_EXAMPLES to search further on a workstation.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
import tempfile

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s1mmalign import config
from s1mmalign.ingest import archives, records, tasks
from s1mmalign.lake import schemas
from s1mmalign.lake.storage import LocalStore

EXAMPLES = int(os.environ.get("S1MM_HYPOTHESIS_EXAMPLES", "2000"))
SETTINGS = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CTX_ARGS = {"disciplines": dict(config.load(environ={}).disciplines), "arxiv_sources": ["arxiv"],
            "raw_cap_chars": 64, "max_line_bytes": 4096}
PARSED = schemas.table("parsed_lines").arrow()
REASONS = set(schemas.quarantine_reasons())

HUGE = "<a 5,000-digit integer>"     # written into the line as such (Python's int() refuses over 4,300 digits)
# Text as hostile JSON can spell it: any code point, unpaired surrogates included (as \u escapes).
TEXT = st.text(st.one_of(st.characters(codec=None), st.integers(0xD800, 0xDFFF).map(chr),
                         st.sampled_from("/.\\\n\r\t\x00 ０１٣")), max_size=40)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.just(HUGE) | st.floats(allow_nan=True, allow_infinity=True)
    | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=12)
PATHS = st.one_of(TEXT, st.sampled_from(["images/2401/2401.00008.tar.gz/f.png", "./images//a.png/", ".", "/etc/x",
                                         "a/../b.png", "C:\\x.png", "images/a.png\x00"]),
                  st.from_regex(r"(\./|/)?(images/)?[0-9]{4}/[0-9]{4}\.[0-9]{5}(v[0-9]+)?\.tar\.gz/fig[0-9]\.png",
                                fullmatch=True))
IDS = st.one_of(TEXT, st.from_regex(r"(arXiv:)?[0-9０-９]{4}\.[0-9]{4,5}(v[0-9]{1,12})?", fullmatch=True),
                st.sampled_from(["hep-th/0606282", "hep-th/0606282v99999999999", "math.AP/0101001"]))
RECORD = st.fixed_dictionaries({}, optional={
    "image_path": st.one_of(PATHS, JSON), "caption": st.one_of(TEXT, JSON), "recaption": TEXT,
    "metadata": st.one_of(st.fixed_dictionaries({}, optional={"arxiv_id": st.one_of(IDS, JSON),
                                                             "categories": st.one_of(st.lists(TEXT), JSON),
                                                             "title": TEXT, "doi": JSON}), JSON),
    "arxiv_id": IDS, "extra": JSON})


def _lines_of(payloads: list[bytes]) -> list[tuple[str, dict]]:
    """parse_chunks over a file of these lines, through the real Arrow conversion; (line, row) pairs."""
    with tempfile.TemporaryDirectory() as root:
        os.makedirs(os.path.join(root, "arxiv", "jsonl"))
        rel = "arxiv/jsonl/x.jsonl"
        data = b"\n".join(payloads)
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
        store = LocalStore(root)
        rows = []
        # two chunks, cut mid-file, as tasks would get them
        cut = len(data) // 2
        before = data[:cut].count(b"\n")
        desc = pa.RecordBatch.from_pylist([
            {"source": "arxiv", "source_file": rel, "start": 0, "end": cut, "newlines_before": 0},
            {"source": "arxiv", "source_file": rel, "start": cut, "end": len(data), "newlines_before": before}])
        for batch in tasks.parse_chunks(store, CTX_ARGS)([desc]):
            assert batch.schema.equals(PARSED)
            rows += batch.to_pylist()
        return rows


def _check_one_outcome(payloads: list[bytes]) -> None:
    rows = _lines_of(payloads)
    numbers = [r["source_line"] for r in rows]
    assert len(numbers) == len(set(numbers)), "a line with two outcomes"
    expected = {i for i, p in enumerate(payloads, start=1) if p.rstrip(b"\r").strip() and not (
        i == 1 and p.startswith(records.BOM) and not p[3:].rstrip(b"\r").strip())}
    assert set(numbers) == expected, "a non-blank line with no outcome, or a blank one with one"
    for r in rows:
        assert r["reason"] is None or r["reason"] in REASONS, r["reason"]
        if r["reason"] is None:
            assert r["pair_id"] and r["image_path"] and ((r["caption"] or "").strip() or (r["recaption"] or "").strip())
            if r["metadata_json"] is not None:          # strict JSON: no NaN or Infinity ever stored
                json.loads(r["metadata_json"], parse_constant=lambda c: pytest.fail(f"{c} in metadata_json"))
        else:
            assert r["detail"]


@SETTINGS
@given(st.lists(st.binary(max_size=200).map(lambda b: b.replace(b"\n", b"")), max_size=8))
def test_arbitrary_bytes_each_line_one_outcome(payloads):
    _check_one_outcome(payloads)


@SETTINGS
@given(st.lists(st.one_of(RECORD, JSON).map(
    lambda v: json.dumps(v, ensure_ascii=True).replace(json.dumps(HUGE), "9" * 5000).encode()), min_size=1, max_size=6))
def test_arbitrary_json_values_each_line_one_outcome(payloads):
    _check_one_outcome(payloads)


@SETTINGS
@given(st.lists(st.one_of(st.integers(0, 5000), st.just(4096), st.just(4097)), min_size=1, max_size=5))
def test_lines_over_the_limit_are_quarantined_never_held(lengths):
    payloads = [b'{"image_path": "a.png", "caption": "' + b"x" * n + b'"}' for n in lengths]
    rows = {r["source_line"]: r for r in _lines_of(payloads)}
    for i, p in enumerate(payloads, start=1):
        assert (rows[i]["reason"] == "line_too_long") == (len(p) > CTX_ARGS["max_line_bytes"])
        assert len(rows[i]["raw"]) <= CTX_ARGS["raw_cap_chars"]


# --- archives -------------------------------------------------------------------------------------

KINDS = [tarfile.REGTYPE, tarfile.REGTYPE, tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
         tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.CONTTYPE]
NAMES = st.one_of(
    st.sampled_from(["a.png", "b.png", "./a.png", "dir//a.png", "a.png/", "../up.png", "/abs.png", ".", "",
                     "x" * 300 + ".png", "caf\udce9.png", "d/./a.png"]),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=30))
MEMBER = st.tuples(NAMES, st.sampled_from(KINDS), st.binary(max_size=300))


def _archive(members, fmt: int, gzip_members: int) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape") as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind in (tarfile.REGTYPE, tarfile.CONTTYPE):
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                info.linkname = "a.png"
                tar.addfile(info)
    body = raw.getvalue()
    step = max(1, len(body) // gzip_members)     # pigz/bgzip style: several gzip members back to back
    return b"".join(gzip.compress(body[i:i + step]) for i in range(0, len(body), step))


def _expected(members, max_bytes: int) -> list[tuple[str, bytes | None, str | None]]:
    """(name, bytes or None, hard link target or None) of each member a reader gets: regular files (bytes
    over max_bytes not read) and hard links (to "a.png", whose bytes the slicer takes from that member)."""
    out = []
    for name, kind, data in members:
        norm = records.normalize_path(name)
        hard = kind == tarfile.LNKTYPE
        if (kind not in (tarfile.REGTYPE, tarfile.CONTTYPE) and not hard) or records.path_problem(name) or not norm:
            continue
        try:
            norm.encode("utf-8")
        except UnicodeEncodeError:
            continue
        out.append((norm, None, "a.png") if hard else (norm, data if len(data) <= max_bytes else None, None))
    return out


@SETTINGS
@given(st.lists(MEMBER, max_size=8), st.sampled_from([tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]),
       st.integers(1, 4))
def test_arbitrary_members_each_one_outcome(members, fmt, gzip_members):
    try:
        blob = _archive(members, fmt, gzip_members)
    except (ValueError, UnicodeError):
        return     # tarfile itself cannot write this archive (e.g. a name that does not fit the format)
    stream = archives.ChainedParts([archives.PartStats("a.tar.gz", len(blob))], lambda _: io.BytesIO(blob))
    result = archives.StreamResult()
    got = [(m.name, m.data, m.link, m.ordinal) for m in archives.iter_members(stream, 200, result)]
    assert result.status == "ok", result.detail
    assert [(n, d, link) for n, d, link, _ in got] == _expected(members, 200)
    assert [o for *_, o in got] == list(range(1, len(got) + 1))


@SETTINGS
@given(st.binary(max_size=400), st.integers(0, 2000))
def test_arbitrary_bytes_as_an_archive_never_raise(junk, cut):
    good = _archive([("a.png", tarfile.REGTYPE, b"x" * 50)], tarfile.GNU_FORMAT, 1)
    for blob in (junk, good[:cut] + junk, gzip.compress(junk)):
        stream = archives.ChainedParts([archives.PartStats("a.tar.gz", len(blob))], lambda _, b=blob: io.BytesIO(b))
        result = archives.StreamResult()
        names = [m.name for m in archives.iter_members(stream, 200, result)]
        assert result.status in ("ok", "truncated")
        assert set(names) <= {"a.png"}


LAKE_FOLDER = st.one_of(st.text(st.sampled_from("ab_./\\ :%"), max_size=12),
                        st.sampled_from(["pairs", "pairs/x", "_staging", "..", "x/..", "images_x", "_lease.json"]))


@SETTINGS
@given(LAKE_FOLDER)
def test_a_lake_folder_setting_is_accepted_only_strictly_under_the_lake_and_outside_every_table(value):
    """Whatever the value: refused (one ConfigError), or a folder strictly below the lake root, in no table's
    folder and not the lake's own files, wherever the lake is."""
    tables = schemas.lake_tables()
    try:
        config.load(environ={}, overrides={"ingest": {"staging_dir": value}})
    except config.ConfigError as exc:
        assert "ingest.staging_dir" in str(exc)
        return
    lake = "/data/lake"
    resolved = os.path.normpath(os.path.join(lake, value))
    assert resolved.startswith(lake + "/"), value
    first = os.path.relpath(resolved, lake).split("/")[0]
    assert first not in tables and first not in config.LAKE_FILES and resolved == os.path.join(lake, value)


@SETTINGS
@given(st.lists(st.one_of(st.characters(codec="utf-8"), st.integers(0xDC80, 0xDCFF).map(chr),
                          st.sampled_from("%/")), max_size=30).map("".join))
def test_escaped_names_are_storable_and_lossless(name):
    """Any name os.listdir can give (surrogate escapes stand for the bytes that are not UTF-8)."""
    import re

    escaped = records.escape_name(name)
    assert records.storable(escaped)
    unescaped = re.sub("%([0-9A-F]{2})", lambda m: "%" if m[1] == "25" else chr(0xDC00 + int(m[1], 16)), escaped)
    assert unescaped == name
    if records.storable(name) and "%" not in name:
        assert escaped == name                  # a plain name is its own spelling


@SETTINGS
@given(st.one_of(st.binary(max_size=200), JSON.map(lambda v: json.dumps(v).encode()),
                 st.fixed_dictionaries({k: JSON for k in ("host", "pid", "job", "run_id", "started", "expires")})
                 .map(lambda d: json.dumps(d).encode())))
def test_any_lease_file_reads_as_a_holder_with_a_real_expiry_or_as_torn(data):
    import math
    import time

    from s1mmalign.lake import lease

    holder = lease._parse(data)
    if holder is not None:
        assert isinstance(holder.pid, int) and 0 < holder.pid < 2**31 and math.isfinite(holder.expires)
        time.gmtime(holder.expires)               # printable as a date
        holder.describe()
