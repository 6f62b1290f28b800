"""JSONL chunking: lines split across byte ranges come out once each, with their file line numbers."""

import random

import pytest

from helpers import chunked
from s1mmalign.ingest import tasks
from s1mmalign.lake.storage import LocalStore


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


def test_a_row_arrow_refuses_becomes_an_invalid_value_reject_not_a_failed_task():
    """The last guard: a parsed row no column can hold (here an arxiv_version past int32) is found when the
    batch meets Arrow, and only that row is replaced by its reject."""
    import pyarrow as pa

    from s1mmalign.ingest import records
    from s1mmalign.lake import schemas

    schema = schemas.table("parsed_lines").arrow()
    good = {"source": "arxiv", "source_file": "a.jsonl", "source_line": 1, "raw": "{}", "pair_id": "p",
            "image_path": "x.png", "caption": "c"}
    bad = {**good, "source_line": 2, "arxiv_version": 1 << 40, "image_path": "y\ud800.png"}
    batches = list(tasks._batched([good, bad], schema, refused=records.unstorable))
    rows = pa.Table.from_batches(batches).to_pylist()
    assert [r["source_line"] for r in rows] == [1, 2]
    assert rows[0]["reason"] is None
    assert rows[1]["reason"] == "invalid_value" and rows[1]["image_path"] == "y\\ud800.png" and rows[1]["detail"]
