"""JSONL chunking: lines split across byte ranges come out once each, with their file line numbers."""

import random

import pytest

from s1mmalign import tasks
from s1mmalign.storage import LocalStore


def chunked(store, rel, data: bytes, size: int):
    out, before = [], 0
    for start in range(0, max(len(data), 1), size):
        end = min(start + size, len(data))
        out += list(tasks.chunk_lines(store, rel, start, end, before))
        before += data[start:end].count(b"\n")
    return out


@pytest.mark.parametrize("size", [1, 2, 3, 7, 16, 64, 1000])
@pytest.mark.parametrize("ending", [b"\n", b""])
def test_chunked_equals_plain_split(tmp_path, size, ending):
    rng = random.Random(size)
    lines = [b"x" * rng.randint(0, 20) for _ in range(40)] + [b"", b"", b"last"]
    data = b"\n".join(lines) + ending
    (tmp_path / "f.jsonl").write_bytes(data)
    got = chunked(LocalStore(str(tmp_path)), "f.jsonl", data, size)
    expected = list(enumerate(data.split(b"\n"), start=1))
    if expected and expected[-1][1] == b"":
        expected.pop()
    assert got == expected


def test_empty_file(tmp_path):
    (tmp_path / "e.jsonl").write_bytes(b"")
    assert chunked(LocalStore(str(tmp_path)), "e.jsonl", b"", 8) == []
