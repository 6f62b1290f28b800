"""The hostile corpus: one source root holding every class of input a careless or hostile producer writes
(issue 12), and the outcome each line must get. Built on demand (it holds a FIFO, a 4 GB sparse file,
links out of the root and a 50 MB line, none of which belong in git).

    build(root) -> {source_file: {line: expected outcome}}, and what ingest_log must say of special files
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path

from PIL import Image

from helpers import header_bomb

ARXIV_TAR = "arxiv/images_2024.tar.gz"
BROKEN_TAR = "arxiv/images_2012.tar.gz"
BOMB_TAR = "arxiv/images_2013.tar.gz"          # a GNU long-name header claiming 256 MB, in a 300 KB archive
LATIN1 = [b"arxiv/jsonl/caf\xe9.jsonl", b"arxiv/images_caf\xe9.tar.gz"]   # names that are not UTF-8
BIG_LINE_BYTES = 50 << 20


def image(color: str, fmt: str = "PNG", size=(64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, fmt)
    return out.getvalue()


def mpo() -> bytes:
    """A two-frame MPO, as phones write (a JPEG with a second image after the first)."""
    out = io.BytesIO()
    second = Image.new("RGB", (80, 60), "blue")
    Image.new("RGB", (80, 60), "red").save(out, "MPO", save_all=True, append_images=[second])
    return out.getvalue()


def _tar(members: list[tuple[str, bytes | str]], end: bool = True) -> bytes:
    """A GNU tar of (name, bytes) members; a str instead of bytes makes a hard link to that name (as GNU tar
    stores a file it stored before). end=False leaves out the end-of-archive blocks."""
    raw = io.BytesIO()
    for name, data in members:
        info = tarfile.TarInfo(name)
        if isinstance(data, str):
            info.type, info.linkname = tarfile.LNKTYPE, data
            raw.write(info.tobuf(format=tarfile.GNU_FORMAT))
        else:
            info.size = len(data)
            raw.write(info.tobuf(format=tarfile.GNU_FORMAT) + data + bytes(-len(data) % 512))
    if end:
        raw.write(bytes(1024))
    return raw.getvalue()


def _multi_member_gzip(body: bytes, pieces: int) -> bytes:
    """What pigz and bgzip write: gzip members back to back (gzip -t passes)."""
    step = -(-len(body) // pieces)
    return b"".join(gzip.compress(body[i:i + step]) for i in range(0, len(body), step))


def _line(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=True).encode()


def p(n: str) -> str:
    return f"images/2401/2401.0000{n}.tar.gz/fig1.png"


def build(root: Path) -> dict:
    """Write the corpus under root; returns {"lines": {source_file: {line: outcome}}, "log": {...},
    "sha": {(source, image_path): sha256 of the image a pair must carry}, "outside": path}."""
    import hashlib

    root.mkdir(parents=True)
    outside = root.parent / f"{root.name}-outside"
    outside.mkdir()
    cap = {"caption": "Figure 1: a plot.", "recaption": "A plot."}

    # arXiv: one multi-member gzip archive with a repeated name, an MPO; one archive cut short.
    arx = root / "arxiv"
    (arx / "jsonl").mkdir(parents=True)
    dup_first, dup_last = image("green"), image("purple")
    members = [(p(1), image("red")), (p(2).replace("fig1", "dup"), dup_first), (p(3), image("blue")),
               (p(4), mpo())] + [(f"images/2401/2401.0009{k}.tar.gz/fig1.png", image((k * 40, 10, 10)))
                                 for k in range(6)]
    # a hard link to an earlier member; the last member: in the last gzip member
    members += [(p(6), p(1)), (p(2).replace("fig1", "dup"), dup_last), (p(5), image("orange"))]
    (root / ARXIV_TAR).write_bytes(_multi_member_gzip(_tar(members), 5))
    broken = gzip.compress(_tar([("images/1201/1201.0001.tar.gz/fig1.png", image("gray")),
                                 ("images/1201/1201.0002.tar.gz/fig1.png", os.urandom(200_000))]))
    (root / BROKEN_TAR).write_bytes(broken[: len(broken) // 2])
    sha = {("arxiv", name): hashlib.sha256(data).hexdigest() for name, data in members if isinstance(data, bytes)}
    sha[("arxiv", p(6))] = sha[("arxiv", p(1))]
    (root / BOMB_TAR).write_bytes(header_bomb(256 << 20, _tar([(p(7), image("cyan"))], end=False)))
    sha[("arxiv", p(7))] = hashlib.sha256(image("cyan")).hexdigest()
    for rel in LATIN1:
        with open(os.path.join(os.fsencode(root), rel), "wb") as f:
            f.write(_line({"image_path": p(1), **cap}) + b"\n" if rel.endswith(b".jsonl") else b"\x1f\x8b")

    deep = '{"image_path": "%s", "caption": "c", "metadata": {"x": %s}}' % (p(1), "[" * 100_000 + "]" * 100_000)
    arxiv_lines = [
        (_line({"image_path": p(1), **cap}), "pair"),
        (_line({"image_path": p(1).replace("fig1", "f\ud800"), **cap}), "invalid_value"),     # surrogate in a path
        (_line({"image_path": p(3), "caption": "bad \udc00 text"}), "invalid_value"),         # ... in a caption
        (_line({"image_path": p(3), **cap, "metadata": {"n": "<big>"}}).replace(b'"<big>"', b"9" * 5000),
         "invalid_value"),                                                                   # 5,000 digits
        (deep.encode(), "invalid_value"),                                                    # nesting 100,000 deep
        (_line({"image_path": p(3), **cap, "metadata": {"arxiv_id": "2401.00003v99999999999"}}), "bad_arxiv_id"),
        (_line({"image_path": p(3), **cap, "metadata": {"arxiv_id": "２４０１.00003"}}), "bad_arxiv_id"),
        (_line({"image_path": p(3), **cap, "metadata": {"arxiv_id": "٢٤٠١.00003"}}), "bad_arxiv_id"),
        (b"", ""),
        (_line({"image_path": p(4), "caption": "x" * BIG_LINE_BYTES}), "line_too_long"),    # 50 MB, valid JSON
        (_line({"image_path": p(2).replace("fig1", "dup"), **cap}), "pair"),                 # the last "dup" wins
        (_line({"image_path": "./" + p(3).replace("/", "//", 1) + "/", **cap}), "pair"),     # one file, odd spelling
        (_line({"image_path": p(3), **cap}), "duplicate_pair"),                              # ... and plain
        (_line({"image_path": p(4), **cap}), "pair"),                                        # MPO
        (_line({"image_path": p(5), **cap}), "pair"),                                        # in gzip member 5 of 5
        (_line({"image_path": "images/1201/1201.0002.tar.gz/fig1.png", **cap}), "image_missing"),  # lost in the cut
        (_line({"image_path": p(6), **cap}), "pair"),                                        # a hard link member
        (_line({"image_path": p(7), **cap}), "pair"),                                        # before the bomb
        (_line({"image_path": p(8), **cap}), "image_missing"),                               # (would be) after it
        (_line({"image_path": p(8), **cap, "metadata": {"v": "<n>"}}).replace(b'"<n>"', b"NaN"), "invalid_value"),
    ]
    _write_lines(arx / "jsonl" / "h.jsonl", arxiv_lines)
    (outside / "elsewhere.jsonl").write_bytes(_line({"image_path": p(1), **cap}) + b"\n")
    os.symlink(outside / "elsewhere.jsonl", arx / "jsonl" / "outside.jsonl")
    os.mkfifo(arx / "jsonl" / "pipe.jsonl")

    # A source with an unpacked tree: special files, a sparse file, a link out, a name too long.
    tree = root / "treesrc"
    (tree / "jsonl").mkdir(parents=True)
    (tree / "images" / "p1").mkdir(parents=True)
    good = image("yellow")
    (tree / "images" / "p1" / "fig1.png").write_bytes(good)
    sha[("treesrc", "images/p1/fig1.png")] = hashlib.sha256(good).hexdigest()
    os.mkfifo(tree / "images" / "p1" / "fifo.png")
    with open(tree / "images" / "p1" / "sparse.png", "wb") as f:
        f.truncate(4 << 30)
    (outside / "secret.png").write_bytes(image("black"))
    os.symlink(outside / "secret.png", tree / "images" / "p1" / "outlink.png")
    tree_lines = [
        (_line({"image_path": "images/p1/fig1.png", **cap}), "pair"),
        (_line({"image_path": "images/p1/fifo.png", **cap}), "image_unreadable"),
        (_line({"image_path": "images/p1/sparse.png", **cap}), "image_too_large"),
        (_line({"image_path": "images/p1/outlink.png", **cap}), "image_unreadable"),
        (_line({"image_path": "images/p1/" + "x" * 300 + ".png", **cap}), "image_unreadable"),   # ENAMETOOLONG
        (_line({"image_path": "images//p1/./fig1.png", **cap}), "duplicate_pair"),
        (_line({"image_path": "images/p9/none.png", **cap}), "image_missing"),
    ]
    _write_lines(tree / "jsonl" / "t.jsonl", tree_lines)

    lines = {"arxiv/jsonl/h.jsonl": _outcomes(arxiv_lines), "treesrc/jsonl/t.jsonl": _outcomes(tree_lines)}
    log = {"arxiv/jsonl/outside.jsonl": "unreadable", "arxiv/jsonl/pipe.jsonl": "unreadable",
           "arxiv/jsonl/h.jsonl": "ok", "treesrc/jsonl/t.jsonl": "ok", ARXIV_TAR: "ok", BROKEN_TAR: "truncated",
           BOMB_TAR: "bad_header", "arxiv/jsonl/caf%E9.jsonl": "unreadable", "arxiv/images_caf%E9.tar.gz": "unreadable"}
    return {"lines": lines, "log": log, "sha": sha, "outside": outside}


def _write_lines(path: Path, lines: list[tuple[bytes, str]]) -> None:
    with open(path, "wb") as f:
        for data, _ in lines:
            f.write(data + b"\n")


def _outcomes(lines: list[tuple[bytes, str]]) -> dict[int, str]:
    return {n: expect for n, (data, expect) in enumerate(lines, start=1) if expect}
