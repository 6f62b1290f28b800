"""What a refresh costs against a full load: ingest + validate of a 1% change, at the release's line count.

    .venv/bin/python bench/refresh.py [--pairs 200000] [--years 4] [--files-per-year 5] [--cores 2]

Corpus (built once under work/bench/refresh-<pairs>/): --pairs small synthetic figures (distinct noise
PNGs, 48x36, distinct bytes and hashes) with arXiv records, --years yearly archives (the release ships a
year as one archive) and --files-per-year JSONL files per year; and the 1% a refresh adds: one more
archive and one more JSONL file.
In one warm local[cores] session (a small load warms the JVM and Python workers first), into a new lake:
  full load   ingest + validate of the whole corpus;
  refresh new ingest + validate after the new archive and JSONL file (1% more pairs) are added;
  refresh chg ingest + validate after 1% of the existing lines (in one JSONL file) got a new caption.
Prints each time, the JSONL files each run parsed and the bytes it wrote per table; ratio = full load
time / the slower refresh's time (target >= 10 on 2 cores).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import random
import shutil
import sys
import tarfile
import time
from multiprocessing import Pool
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))
WORK = REPO / "work" / "bench"

from s1mmalign import cli, config  # noqa: E402
from s1mmalign.ingest import pipeline as ingest  # noqa: E402
from s1mmalign.lake import session  # noqa: E402
from s1mmalign.lake.root import Lake  # noqa: E402
from s1mmalign.validate import pipeline as validate  # noqa: E402

CATEGORIES = ["math.AP", "hep-th", "physics.chem-ph", "q-bio.NC", "astro-ph.CO", "physics.geo-ph",
              "physics.med-ph", "eess.SP", "cs.LG", "cond-mat.mtrl-sci"]
WORDS = ("signal noise temperature pressure spectrum density energy loss accuracy epoch gradient flux velocity "
         "sample model baseline ablation cell protein galaxy redshift lattice phase field error rate").split()


def _png(seed: int) -> bytes:
    from PIL import Image

    rnd = random.Random(seed)
    out = io.BytesIO()
    Image.frombytes("L", (48, 36), rnd.randbytes(48 * 36)).save(out, format="PNG")
    return out.getvalue()


def _year(args: tuple[Path, int, int, int, int]) -> int:
    """One year's archive (figures first..first+n) and its JSONL files."""
    root, year, first, n, files = args
    lines: list[str] = []
    tar_path = root / f"arxiv/images_20{year:02d}.tar.gz"
    with open(tar_path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=6) as gz, \
            tarfile.open(fileobj=gz, mode="w|") as tar:
        for i in range(first, first + n):
            rnd = random.Random(i)
            yymm = f"{year:02d}{i % 12 + 1:02d}"
            arxiv_id = f"{yymm}.{i // 12 % 99999 + 1:05d}"
            path = f"images/{yymm}/{arxiv_id}.tar.gz/fig{i // (12 * 99999) + 1}.png"
            blob = _png(i)
            info = tarfile.TarInfo(path)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
            words = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(8, 40)))
            lines.append(json.dumps({"image_path": path, "caption": f"Figure {i % 9 + 1}: {words}.",
                                     "recaption": f"The figure shows {words}.",
                                     "metadata": {"arxiv_id": arxiv_id, "title": f"paper {i}",
                                                  "categories": [CATEGORIES[i % len(CATEGORIES)]]}}))
    per = -(-len(lines) // files)
    for k in range(files):
        chunk = lines[k * per:(k + 1) * per]
        (root / f"arxiv/jsonl/{year:02d}_{k}_recaption.jsonl").write_text("\n".join(chunk) + "\n")
    return n


def make_corpus(pairs: int, years: int, files: int, cores: int) -> Path:
    """base/ (the corpus), extra/ (the 1% a refresh adds: one archive, one JSONL file): built once."""
    root = WORK / f"refresh-{pairs}-{years}x{files}"
    if (root / "done").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    for sub in ("base", "extra"):
        (root / sub / "arxiv/jsonl").mkdir(parents=True)
    per = pairs // years
    jobs = [(root / "base", 15 + y, y * per, per, files) for y in range(years)]
    jobs.append((root / "extra", 15 + years, years * per, pairs // 100, 1))
    with Pool(cores) as pool:
        pool.map(_year, jobs, chunksize=1)
    (root / "done").touch()
    return root


def change_lines(root: Path, share: float) -> tuple[str, int]:
    """Give a new caption to share x all pairs' lines, all in the first JSONL file (lines edited in place)."""
    files = sorted((root / "arxiv/jsonl").glob("*.jsonl"))
    total = sum(1 for f in files for _ in open(f))
    n = int(total * share)
    lines = files[0].read_text().splitlines()
    assert n <= len(lines), f"{n} lines to change, the first file holds {len(lines)}"
    for i in range(n):
        rec = json.loads(lines[i])
        rec["caption"] = rec["caption"].replace("Figure", "Fig.", 1) + " (revised)"
        lines[i] = json.dumps(rec)
    files[0].write_text("\n".join(lines) + "\n")
    return f"arxiv/jsonl/{files[0].name}", n


def timed_refresh(spark, cfg, source: Path, lake_dir: Path, what: str) -> dict:
    lake = Lake.open(str(lake_dir), cfg, existing=False).hold("bench")
    t0 = time.monotonic()
    summary = ingest.run(spark, cfg, str(source), lake)
    t1 = time.monotonic()
    outcome = validate.run(spark, cfg, lake)
    t2 = time.monotonic()
    row = {"what": what, "ingest": t1 - t0, "validate": t2 - t1, "total": t2 - t0, "parsed": len(summary.files_read),
           "lines": summary.lines, "reexamined": summary.reexamined, "bytes": dict(summary.bytes_written),
           "expectations": len(outcome.results), "critical": len(outcome.critical_failures)}
    mb = ", ".join(f"{k} {v / 1e6:.1f}" for k, v in sorted(row["bytes"].items()) if v)
    print(f"{what}: ingest {row['ingest']:.1f}s + validate {row['validate']:.1f}s = {row['total']:.1f}s; "
          f"{row['parsed']} JSONL file(s) parsed, {row['lines']:,} lines, {row['reexamined']:,} re-examined; "
          f"MB written: {mb or 'none'}; {row['critical']} critical failure(s)", flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=200_000)
    ap.add_argument("--years", type=int, default=4)
    ap.add_argument("--files-per-year", type=int, default=5)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    cli.setup_logging("INFO")
    t0 = time.monotonic()
    corpus = make_corpus(args.pairs, args.years, args.files_per_year, args.cores)
    print(f"corpus: {args.pairs:,} pairs in {args.years} archives at {corpus} "
          f"({time.monotonic() - t0:.1f}s to build or find)", flush=True)
    cfg = config.load(str(REPO / "conf" / "local.yaml"),
                      overrides={"spark": {"master": f"local[{args.cores}]", "shuffle_partitions": 2 * args.cores,
                                           "extra": {"spark.ui.enabled": "false"}}})
    run_dir = WORK / "refresh-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    spark = session.build(Lake(str(run_dir / "catalog")), cfg, write=False)

    # Warm-up: a small load and refresh of the same shape (JIT, Python workers, code generation).
    warm = make_corpus(4000, 2, 2, args.cores)
    shutil.copytree(warm / "base", run_dir / "warm-src")
    timed_refresh(spark, cfg, run_dir / "warm-src", run_dir / "warm-lake", "warm-up load")
    shutil.copy(warm / "extra/arxiv" / next(p.name for p in (warm / "extra/arxiv").glob("*.tar.gz")),
                run_dir / "warm-src/arxiv")
    shutil.copy(next((warm / "extra/arxiv/jsonl").glob("*.jsonl")), run_dir / "warm-src/arxiv/jsonl/99.jsonl")
    timed_refresh(spark, cfg, run_dir / "warm-src", run_dir / "warm-lake", "warm-up refresh")

    source = run_dir / "source"
    shutil.copytree(corpus / "base", source)
    full = timed_refresh(spark, cfg, source, run_dir / "lake", "full load")
    for f in (corpus / "extra/arxiv").glob("*.tar.gz"):
        shutil.copy(f, source / "arxiv" / f.name)
    for f in (corpus / "extra/arxiv/jsonl").glob("*.jsonl"):
        shutil.copy(f, source / "arxiv/jsonl" / f.name)
    added = timed_refresh(spark, cfg, source, run_dir / "lake", "refresh, 1% new (archive + JSONL file)")
    rel, n = change_lines(source, 0.01)
    changed = timed_refresh(spark, cfg, source, run_dir / "lake", f"refresh, 1% changed ({n:,} lines of {rel})")
    spark.stop()
    slower = max(added["total"], changed["total"])
    print(f"refresh of 1% at {args.pairs:,} pairs, {args.cores} cores: full load {full['total']:.1f}s, "
          f"refresh new {added['total']:.1f}s, refresh changed {changed['total']:.1f}s "
          f"... ratio={full['total'] / slower:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
