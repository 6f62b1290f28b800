"""A deterministic S1-MMAlign-shaped corpus for runs and tests, with every kind of bad input on demand.

Layout written under ROOT:
  arxiv/jsonl/YY_recaption.jsonl, arxiv/images_20YY.tar.gz (2019 split into .partaa, .partab, ...)
  biorxiv/jsonl/*.jsonl + biorxiv/images/<paper>/figN.png   (an unpacked tree, no archive)
  chemrxiv/jsonl/*.jsonl + chemrxiv/images_chemrxiv.tar.gz
  _manifest.jsonl   the expected outcome of every non-blank line: "pair" or a quarantine reason,
                    with pair_id, discipline, arxiv_id and the image's sha256 for pairs
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import logging
import multiprocessing
import os
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

from s1mmalign.ingest import records

log = logging.getLogger(__name__)

# (category, discipline): every discipline through real arXiv categories, plus one that maps to none.
CATEGORIES = [
    ("math.AP", "mathematics"), ("stat.ML", "mathematics"), ("math-ph", "mathematics"),
    ("astro-ph.GA", "astronomy"), ("astro-ph", "astronomy"),
    ("physics.ao-ph", "earth_science"), ("physics.geo-ph", "earth_science"),
    ("physics.chem-ph", "chemistry"), ("physics.med-ph", "medicine"),
    ("q-bio.NC", "biology"), ("physics.bio-ph", "biology"),
    ("cs.CV", "computer_science"), ("cs.LG", "computer_science"),
    ("eess.SP", "engineering"), ("eess.IV", "engineering"),
    ("cond-mat.mtrl-sci", "physics"), ("hep-th", "physics"), ("quant-ph", "physics"), ("gr-qc", "physics"),
    ("q-fin.ST", "unknown"),
]
OLD_ARCHIVES = [("hep-th", "physics"), ("math", "mathematics"), ("astro-ph", "astronomy"),
                ("cond-mat", "physics"), ("q-bio", "biology")]
YEARS = [7, 12, 19, 24]          # 07: old-style ids; 12: 4-digit; 19, 24: 5-digit
SPLIT_YEAR = 19
TRUNCATED_YEAR = 12              # with --faults
FORMATS = [("png", "PNG")] * 17 + [("jpg", "JPEG"), ("webp", "WEBP"), ("gif", "GIF")]
WORDS = ("signal noise temperature pressure spectrum density energy loss accuracy epoch gradient flux "
         "velocity sample model baseline ablation cell protein galaxy redshift lattice phase field "
         "error rate frequency amplitude layer network distribution").split()


@dataclass
class Planned:
    """One line of a JSONL file and what ingest must make of it."""

    line: bytes
    expect: str = "pair"                  # "pair" or a quarantine reason; "" for a blank line
    source: str = ""
    image_path: str | None = None
    discipline: str | None = None
    arxiv_id: str | None = None
    image_key: int | None = None          # which rendered image backs it


@dataclass
class SourceFiles:
    jsonl: dict[str, list[Planned]] = field(default_factory=dict)        # rel -> lines
    members: dict[str, list[tuple[str, int | bytes | tuple]]] = field(default_factory=dict)  # archive -> members
    tree: list[tuple[str, int | bytes]] = field(default_factory=list)


def render(key: int, seed: int, fmt: str) -> bytes:
    """A distinct, plot-like figure (axes, ticks, series, labels) as image bytes."""
    rng = random.Random(seed * 1_000_003 + key)
    w, h = rng.choice([(640, 480), (800, 600), (560, 420), (720, 540), (480, 360)])
    im = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(im)
    left, top, right, bottom = 60, 40, w - 20, h - 50
    # A heatmap-like backdrop of shaded cells: it gives each figure its own coarse structure, so the
    # perceptual hashes of unrelated figures stay far apart (on flat white plots they nearly collide).
    cols, rows = rng.randint(9, 14), rng.randint(7, 10)
    for cx in range(cols):
        for cy in range(rows):
            shade = tuple(rng.randrange(150, 256) for _ in range(3))
            d.rectangle([left + cx * (right - left) // cols, top + cy * (bottom - top) // rows,
                         left + (cx + 1) * (right - left) // cols, top + (cy + 1) * (bottom - top) // rows],
                        fill=shade)
    d.rectangle([left, top, right, bottom], outline="black")
    for i in range(6):
        x = left + i * (right - left) // 5
        y = top + i * (bottom - top) // 5
        d.line([x, bottom, x, bottom + 6], fill="black")
        d.line([left - 6, y, left, y], fill="black")
        d.text((x - 8, bottom + 10), f"{i * rng.choice([1, 2, 5, 10])}", fill="black")
        d.text((10, y - 6), f"{(5 - i) / 5:.1f}", fill="black")
    kind = rng.choice(["line", "bar", "scatter"])
    for s in range(rng.randint(1, 4)):
        color = tuple(rng.randrange(0, 200) for _ in range(3))
        n = rng.randint(8, 40)
        ys, y = [], rng.random()
        for _ in range(n):
            y = min(0.98, max(0.02, y + rng.gauss(0, 0.08)))
            ys.append(y)
        xs = [left + 5 + i * (right - left - 10) / (n - 1) for i in range(n)]
        pts = [(x, bottom - v * (bottom - top)) for x, v in zip(xs, ys, strict=True)]
        if kind == "line":
            d.line(pts, fill=color, width=2)
        elif kind == "scatter":
            for x, y in pts:
                d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
        else:
            bw = max(2, (right - left) // (n * 4))
            for x, y in pts:
                d.rectangle([x + s * bw, y, x + (s + 1) * bw, bottom], fill=color)
    d.text((left + 10, 12), f"Fig. {key}: {' '.join(rng.sample(WORDS, 3))}", fill="black")
    out = io.BytesIO()
    if fmt == "JPEG":
        im.save(out, "JPEG", quality=88)
    elif fmt == "GIF":
        im.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(out, "GIF")
    elif fmt == "WEBP":
        im.save(out, "WEBP", quality=80)
    else:
        im.save(out, "PNG", compress_level=6)
    return out.getvalue()


def _render_job(args):
    return args[0], render(*args)


def _caption(rng: random.Random, n: int) -> tuple[str, str]:
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40)))
    raw = f"Figure {n}: {words}."
    recap = (f"The figure shows {words}, plotted against {rng.choice(WORDS)}; "
             f"the {rng.choice(WORDS)} increases with {rng.choice(WORDS)}.")
    return raw, recap


def _line(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


class _Builder:
    def __init__(self, n_pairs: int, seed: int, faults: bool):
        self.rng = random.Random(seed)
        self.seed, self.n, self.faults = seed, n_pairs, faults
        self.files: dict[str, SourceFiles] = {}
        self.formats: dict[int, str] = {}
        self.next_key = 0

    def key(self, fmt: str) -> int:
        self.next_key += 1
        self.formats[self.next_key] = fmt
        return self.next_key

    def src(self, name: str) -> SourceFiles:
        return self.files.setdefault(name, SourceFiles())

    def arxiv_record(self, year: int, i: int) -> Planned:
        rng = self.rng
        month = rng.randint(1, 12) if year != 7 else rng.randint(1, 3)
        ext, fmt = rng.choice(FORMATS)
        j = i // len(YEARS)  # the record's number within its year: drives the variants below
        if year == 7:  # old style: hep-th/0701001; image folder carries the number only
            month, fig = 1 + (j // 1000) % 3, j // 3000 + 1
            arch, disc = OLD_ARCHIVES[i % len(OLD_ARCHIVES)]
            number = f"{year:02d}{month:02d}{j % 1000:03d}"
            ident, folder, cats = f"{arch}/{number}", number, [arch] if i % 3 else None
        else:
            cat, disc = CATEGORIES[(i // len(YEARS)) % len(CATEGORIES)]
            digits = 4 if year < 15 else 5
            number = f"{year:02d}{month:02d}.{i % 10 ** digits:0{digits}d}"
            ident, folder, fig = number, number, i // 10 ** digits + 1
            cats = [cat] + ([rng.choice(CATEGORIES)[0]] if j % 4 == 0 else [])
        image_path = f"images/{year:02d}{month:02d}/{folder}.tar.gz/fig{fig:03d}.{ext}"
        caption, recaption = _caption(rng, i % 9 + 1)
        shown_id = ident + (f"v{j % 3 + 1}" if j % 5 == 0 else "")
        meta = {"arxiv_id": shown_id, "title": f"On {rng.choice(WORDS)} and {rng.choice(WORDS)}",
                "categories": cats if j % 7 else (" ".join(cats) if cats else None),
                "doi": None, "figure_type": rng.choice(["plot", "diagram", "photo"])}
        if j % 6 == 0:  # some readers see the metadata at the top level
            obj = {"image_path": image_path, "recaption": recaption, "caption": caption, **meta}
        else:
            obj = {"image_path": image_path, "recaption": recaption, "caption": caption, "metadata": meta}
        if j % 11 == 0:
            obj["extra_field"] = {"source_page": i % 17}
        return Planned(_line(obj), "pair", "arxiv", image_path, disc, ident, self.key(fmt))

    def doi_record(self, source: str, disc: str, i: int) -> Planned:
        ext, fmt = ("png", "PNG") if i % 5 else ("jpg", "JPEG")
        paper = f"10.1101_{2020 + i % 4}.{i:06d}"
        image_path = f"images/{paper}/fig{i % 6 + 1}.{ext}"
        caption, recaption = _caption(self.rng, i % 6 + 1)
        obj = {"image_path": image_path, "caption": caption, "recaption": recaption,
               "metadata": {"doi": paper.replace("_", "/"), "title": f"{source} paper {i}"}}
        return Planned(_line(obj), "pair", source, image_path, disc, None, self.key(fmt))

    def build(self) -> None:
        n_arxiv = max(len(YEARS) * 4, int(self.n * 0.75))
        n_bio = max(4, int(self.n * 0.15))
        n_chem = max(2, self.n - n_arxiv - n_bio)
        per_year = {y: [] for y in YEARS}
        for i in range(n_arxiv):
            year = YEARS[i % len(YEARS)]
            per_year[year].append(self.arxiv_record(year, i))
        for year, lines in per_year.items():
            self.src("arxiv").jsonl[f"arxiv/jsonl/{year:02d}_recaption.jsonl"] = lines
            self.src("arxiv").members[f"arxiv/images_20{year:02d}.tar.gz"] = [
                (p.image_path, p.image_key) for p in lines]
        bio = [self.doi_record("biorxiv", "biology", i) for i in range(n_bio)]
        self.src("biorxiv").jsonl["biorxiv/jsonl/biorxiv_2020.jsonl"] = bio
        self.src("biorxiv").tree = [(p.image_path, p.image_key) for p in bio]
        chem = [self.doi_record("chemrxiv", "chemistry", i) for i in range(n_chem)]
        self.src("chemrxiv").jsonl["chemrxiv/jsonl/chemrxiv_2021.jsonl"] = chem
        self.src("chemrxiv").members["chemrxiv/images_chemrxiv.tar.gz"] = [(p.image_path, p.image_key) for p in chem]
        if self.faults:
            self.add_faults()

    def add_faults(self) -> None:
        arx = self.src("arxiv")
        f24 = arx.jsonl["arxiv/jsonl/24_recaption.jsonl"]
        good = f24[0]
        ok_caption = {"caption": "Figure 1: a plot.", "recaption": "A plot of a quantity."}

        def bad(reason, line, image_path=None):
            return Planned(line if isinstance(line, bytes) else _line(line), reason, "arxiv", image_path)

        members24 = arx.members["arxiv/images_2024.tar.gz"]
        zero, trunc, text, bomb = (f"images/2401/2401.9999{k}.tar.gz/fig001.png" for k in range(4))
        members24 += [(zero, b""), (trunc, ("truncated", self.key("PNG"))),
                      (text, b"this is not an image at all\n" * 20), (bomb, ("bomb",))]
        members24 += [("../evil.png", b"escape"), ("/tmp/s1mmalign-evil.png", b"absolute"),
                      ("images/2401/2401.99990.tar.gz/link.png", ("symlink", "/etc/passwd")),
                      ("images/2401/2401.99990.tar.gz/hard.png", ("hardlink", zero))]

        def rec(path, **kw):
            return {"image_path": path, **ok_caption, "metadata": {"arxiv_id": "2401.99990"}, **kw}

        faults = [
            bad("malformed_json", b'{"image_path": "images/2401/x.tar.gz/fig1.png", "caption": "cut'),
            bad("invalid_utf8", b'{"image_path": "images/2401/2401.00001.tar.gz/f.png", "caption": "\xff\xfe"}'),
            bad("not_an_object", b'[1, 2, 3]'),
            bad("not_an_object", b'"just a string"'),
            bad("wrong_type", {"image_path": "images/2401/2401.00002.tar.gz/f.png", "caption": 42,
                               "recaption": "ok", "metadata": {"arxiv_id": "2401.00002"}}),
            bad("wrong_type", {"image_path": ["a", "b"], **ok_caption}),
            bad("missing_field", {**ok_caption, "metadata": {"arxiv_id": "2401.00003"}}),
            bad("empty_caption", {"image_path": "images/2401/2401.00004.tar.gz/f.png", "caption": "  ",
                                  "recaption": "", "metadata": {"arxiv_id": "2401.00004"}}),
            bad("bad_arxiv_id", rec("images/2401/2401.00005.tar.gz/f.png", metadata={"arxiv_id": "not-an-id"})),
            bad("unsafe_path", rec("/etc/passwd"), "/etc/passwd"),
            bad("unsafe_path", rec("images/../../secret.png"), "images/../../secret.png"),
            bad("image_missing", rec("images/2401/2401.99990.tar.gz/nowhere.png"),
                "images/2401/2401.99990.tar.gz/nowhere.png"),
            bad("image_corrupt", rec(zero), zero),
            bad("image_corrupt", rec(trunc), trunc),
            bad("image_corrupt", rec(text), text),
            bad("image_too_large", rec(bomb), bomb),
            bad("image_missing", rec("images/2401/2401.99990.tar.gz/link.png"),
                "images/2401/2401.99990.tar.gz/link.png"),
            bad("duplicate_pair", good.line, good.image_path),
            # JSON allows an unpaired surrogate escape; no UTF-8 column can hold it
            bad("invalid_value", b'{"image_path": "images/2401/2401.00006.tar.gz/f.png", "caption": "x \\ud800"}',
                "images/2401/2401.00006.tar.gz/f.png"),
        ]
        blank = [Planned(b"", ""), Planned(b"   ", "")]
        # Spread faults and blank lines through the file; the repeat must come after its original.
        lines = list(f24)
        for k, fault in enumerate(faults + blank):
            lines.insert(min(len(lines), 1 + 2 * k), fault)
        arx.jsonl["arxiv/jsonl/24_recaption.jsonl"] = lines
        # A BOM and CRLF line ends in one file, an unknown field everywhere in another: all fine.
        f07 = arx.jsonl["arxiv/jsonl/07_recaption.jsonl"]
        f07[0] = Planned(records.BOM + f07[0].line, **{k: v for k, v in vars(f07[0]).items() if k != "line"})
        for p in f07:
            p.line += b"\r"
        bio = self.src("biorxiv")
        bio_lines = bio.jsonl["biorxiv/jsonl/biorxiv_2020.jsonl"]
        bio_lines.append(Planned(_line({"image_path": "images/10.1101_missing/fig1.png", **ok_caption}),
                                 "image_missing", "biorxiv", "images/10.1101_missing/fig1.png"))
        folder = bio_lines[0].image_path.rsplit("/", 1)[0]     # a folder of the tree, not a file
        bio_lines.append(Planned(_line({"image_path": folder, **ok_caption}), "image_unreadable", "biorxiv", folder))
        bio_lines.append(Planned(_line({"image_path": "C:\\\\figs\\\\fig1.png", **ok_caption}), "unsafe_path",
                                 "biorxiv", "C:\\\\figs\\\\fig1.png"))


def _member_bytes(spec, images: dict[int, bytes]) -> bytes:
    if isinstance(spec, int):
        return images[spec]
    if isinstance(spec, bytes):
        return spec
    if spec[0] == "truncated":
        data = images[spec[1]]
        return data[: len(data) // 2]
    if spec[0] == "bomb":  # 10000 x 10000 pixels: over Pillow's limit, a few hundred KB as PNG
        out = io.BytesIO()
        Image.new("L", (10_000, 10_000), 255).save(out, "PNG", optimize=False)
        return out.getvalue()
    raise ValueError(spec)


def _write_archive(path: Path, members, images: dict[int, bytes]) -> dict[str, bytes]:
    written: dict[str, bytes] = {}
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, spec in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1_704_067_200
            if isinstance(spec, tuple) and spec[0] in ("symlink", "hardlink"):
                info.type = tarfile.SYMTYPE if spec[0] == "symlink" else tarfile.LNKTYPE
                info.linkname = spec[1]
                tar.addfile(info)
                continue
            data = _member_bytes(spec, images)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            written[name] = data
    return written


def _surviving(path: Path) -> set[str]:
    """Members a stream reader still gets whole from a truncated archive."""
    names = set()
    try:
        with tarfile.open(path, mode="r|gz") as tar:
            for info in tar:
                if info.isreg():
                    f = tar.extractfile(info)
                    if f is not None and len(f.read()) == info.size:
                        names.add(info.name)
    except (tarfile.TarError, EOFError, OSError):
        pass
    return names


def generate(root: str | Path, n_pairs: int = 1000, seed: int = 7, faults: bool = False,
             processes: int | None = None) -> dict:
    """Write the corpus under root (which must not hold one already); returns counts by outcome."""
    root = Path(root)
    if (root / "_manifest.jsonl").exists():
        raise FileExistsError(f"{root} already holds a sample corpus")
    builder = _Builder(n_pairs, seed, faults)
    builder.build()
    jobs = [(k, seed, fmt) for k, fmt in builder.formats.items()]
    # forkserver, not fork: a caller with threads (a Spark driver, delta-rs's runtime, jemalloc's) would
    # leave a forked worker waiting forever on a lock one of them held at the fork
    with multiprocessing.get_context("forkserver").Pool(processes or os.cpu_count() or 2) as pool:
        images = dict(pool.imap_unordered(_render_job, jobs, chunksize=32))
    lost: set[tuple[str, str]] = set()
    for name, files in builder.files.items():
        for rel, members in files.members.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            written = _write_archive(path, members, images)
            year = rel.rsplit("_", 1)[-1].split(".")[0]
            if faults and year == f"20{TRUNCATED_YEAR:02d}":
                data = path.read_bytes()
                path.write_bytes(data[: int(len(data) * 0.6)])
                lost |= {(name, m) for m in written if m not in _surviving(path)}
            if year == f"20{SPLIT_YEAR:02d}":
                data = path.read_bytes()
                path.unlink()
                cut = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
                for idx, suffix in enumerate(["aa", "ab", "ac"]):
                    (root / f"{rel}.part{suffix}").write_bytes(data[cut[idx]:cut[idx + 1]])
                if faults:  # the middle part went missing: members from it on are lost
                    (root / f"{rel}.partab").unlink()
                    kept = root / "_probe.tar.gz"
                    kept.write_bytes(data[: cut[1]])
                    lost |= {(name, m) for m in written if m not in _surviving(kept)}
                    kept.unlink()
        for image_path, key in files.tree:
            path = root / name / image_path
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(images[key])
    counts: dict[str, int] = {}
    with open(root / "_manifest.jsonl", "w", encoding="utf-8") as manifest:
        for name, files in builder.files.items():
            for rel, lines in files.jsonl.items():
                path = root / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "wb") as out:
                    for number, planned in enumerate(lines, start=1):
                        out.write(planned.line + b"\n")
                        if planned.expect == "":
                            continue
                        expect = planned.expect
                        if expect == "pair" and (name, planned.image_path) in lost:
                            expect = "image_missing"
                        entry = {"source_file": rel, "source_line": number, "expect": expect,
                                 "source": name, "image_path": planned.image_path}
                        if expect == "pair":
                            entry.update(pair_id=records.pair_id(name, planned.image_path),
                                         discipline=planned.discipline, arxiv_id=planned.arxiv_id,
                                         image_sha256=hashlib.sha256(images[planned.image_key]).hexdigest(),
                                         image_format=builder.formats[planned.image_key])
                        manifest.write(json.dumps(entry) + "\n")
                        counts[expect] = counts.get(expect, 0) + 1
    log.info("sample corpus under %s: %s", root, counts)
    return counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="s1mmalign.ingest.sample", description="write a sample S1-MMAlign corpus")
    p.add_argument("--out", required=True, help="folder to write the corpus into")
    p.add_argument("--pairs", type=int, default=1000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--faults", action="store_true", help="add every kind of bad input")
    args = p.parse_args(argv)
    if args.pairs < 20:
        p.error("--pairs must be at least 20")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        counts = generate(args.out, args.pairs, args.seed, args.faults)
    except FileExistsError as exc:
        print(f"sample: error: {exc}")
        return 2
    print(json.dumps(counts, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
