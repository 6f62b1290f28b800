import hashlib
import json

from s1mmalign.ingest import sample
from s1mmalign.lake import schemas


def digest_tree(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_by_seed(tmp_path):
    sample.generate(tmp_path / "a", n_pairs=40, seed=3, processes=1)
    sample.generate(tmp_path / "b", n_pairs=40, seed=3, processes=2)
    sample.generate(tmp_path / "c", n_pairs=40, seed=4, processes=1)
    a, b, c = (digest_tree(tmp_path / x) for x in "abc")
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_layout_disciplines_formats_and_faults(tmp_path):
    counts = sample.generate(tmp_path, n_pairs=400, seed=5, faults=True, processes=2)
    names = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert {"arxiv/images_2007.tar.gz", "arxiv/images_2024.tar.gz", "arxiv/images_2019.tar.gz.partaa",
            "arxiv/jsonl/07_recaption.jsonl", "chemrxiv/images_chemrxiv.tar.gz"} <= names
    assert any(n.startswith("biorxiv/images/") for n in names)          # an unpacked tree
    entries = [json.loads(line) for line in (tmp_path / "_manifest.jsonl").read_text().splitlines()]
    pairs = [e for e in entries if e["expect"] == "pair"]
    assert {e["discipline"] for e in pairs} >= {
        "mathematics", "physics", "chemistry", "biology", "astronomy", "earth_science", "medicine",
        "engineering", "computer_science", "unknown"}
    assert {e["image_format"] for e in pairs} == {"PNG", "JPEG", "WEBP", "GIF"}
    assert any("/" in (e["arxiv_id"] or "") for e in pairs) and any("." in (e["arxiv_id"] or "") for e in pairs)
    assert len({e["image_sha256"] for e in pairs}) == len(pairs)          # every image distinct
    # every reason planted but line_too_long (a line over 8 MB: tests/hostile.py has one)
    assert set(counts) - {"pair"} == set(schemas.quarantine_reasons()) - {"line_too_long"}
    raw = (tmp_path / "arxiv/jsonl/07_recaption.jsonl").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and b"\r\n" in raw
    nested = top = 0
    for line in (tmp_path / "arxiv/jsonl/24_recaption.jsonl").read_bytes().splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            nested += "metadata" in obj
            top += "arxiv_id" in obj
    assert nested and top
