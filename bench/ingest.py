"""Ingest throughput against a bare multiprocessing Pillow loop, and the memory of an archive task.

    .venv/bin/python bench/ingest.py [--copies 8] [--archive-gb 2]

Corpus: the 300 real figures of ../shared/data/scifig300 (PNG), each copy k made distinct bytes by a
PNG text chunk (same pixels, same decode work; copies x 300 figures), laid out as arXiv with one
yearly archive and JSONL file per copy, and unpacked as loose files for the baseline. Every side does
the same per-image work (decode check, sha256, difference hash, 256 px JPEG thumbnail) with the same
function, on the same cores:
  baseline   multiprocessing.Pool(cores) over the unpacked files, no Spark, no tables;
  streaming  the archive tasks' own code in the same kind of Pool, no Spark (what Spark adds, apart);
  ingest     ingest.run in a warm local[cores] session: archives streamed, JSONL parsed, Delta MERGEs.
Memory: one archive task (the code Spark's Python worker runs) over a generated archive of
--archive-gb GB, its peak RSS measured by the OS.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from multiprocessing import Pool
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))
SCIFIG = REPO.parent / "shared" / "data" / "scifig300"
WORK = REPO / "work" / "bench"


def figures() -> list[tuple[str, bytes, dict]]:
    recs = [json.loads(line) for line in (SCIFIG / "arxiv/jsonl/24_recaption.jsonl").read_text().splitlines()
            if line.strip()]
    with tarfile.open(SCIFIG / "arxiv/images_2024.tar.gz") as tar:
        data = {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}
    return [(r["image_path"], data[r["image_path"]], r) for r in recs]


def _variant(k: int, blob: bytes) -> bytes:
    """Copy k of a PNG figure: the same pixels (the same decode work), made distinct bytes (another
    sha256, so content addressing keeps every copy) by a tEXt chunk after the header."""
    assert blob[:8] == b"\x89PNG\r\n\x1a\n", "scifig300's figures are PNGs"
    ihdr_end = 8 + 4 + 4 + 13 + 4
    data = b"Comment\x00s1mmalign bench copy " + str(k).encode()
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(">I", zlib.crc32(b"tEXt" + data))
    return blob[:ihdr_end] + chunk + blob[ihdr_end:]


def make_corpus(copies: int) -> Path:
    if not 1 <= copies <= 89:
        sys.exit("bench/ingest: --copies runs from 1 to 89 (one arXiv year per copy, 2010-2098)")
    root = WORK / f"corpus-v2-{copies}"
    if (root / "done").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    (root / "arxiv/jsonl").mkdir(parents=True)
    (root / "loose").mkdir()
    figs = figures()
    for k in range(copies):
        year = 10 + k
        blobs = [_variant(k, b) for _, b, _ in figs]
        with open(root / f"arxiv/jsonl/{year}_recaption.jsonl", "w") as out, \
                open(root / f"arxiv/images_20{year}.tar.gz", "wb") as raw, \
                gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=6) as gz, \
                tarfile.open(fileobj=gz, mode="w|") as tar:
            for i, ((path, _, rec), blob) in enumerate(zip(figs, blobs)):
                new_id = f"{year}01.{i:0{4 if year < 15 else 5}d}"
                new_path = f"images/{year}01/{new_id}.tar.gz/{Path(path).name}"
                info = tarfile.TarInfo(new_path)
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
                out.write(json.dumps({**rec, "image_path": new_path,
                                      "metadata": {**rec["metadata"], "arxiv_id": new_id}}) + "\n")
                (root / "loose" / f"{k}-{i}-{Path(path).name}").write_bytes(blob)
    (root / "done").touch()
    return root


def _baseline_one(path: str):
    from s1mmalign import images

    with open(path, "rb") as f:
        facts = images.analyze(f.read(), images.ImagePolicy())
    return facts.status


def baseline(root: Path, cores: int) -> tuple[int, float]:
    paths = sorted(str(p) for p in (root / "loose").iterdir())
    t0 = time.perf_counter()
    with Pool(cores) as pool:
        statuses = pool.map(_baseline_one, paths, chunksize=4)
    secs = time.perf_counter() - t0
    assert all(s == "ok" for s in statuses)
    return len(paths), secs


def _stream_one(path: str) -> int:
    """Archive members streamed by the archive task's own code (tasks.stream_archives) over one archive."""
    import pyarrow as pa

    from s1mmalign import images, tasks
    from s1mmalign.storage import LocalStore

    p = Path(path)
    fn = tasks.stream_archives(LocalStore(str(p.parent)), images.ImagePolicy())
    desc = pa.RecordBatch.from_pylist([{"source": "arxiv", "archive": p.name, "missing_after": None,
                                        "parts": json.dumps([{"rel": p.name, "size": p.stat().st_size}])}])
    return sum(sum(1 for k in b.column("kind").to_pylist() if k == "member") for b in fn(iter([desc])))


def streaming(root: Path, cores: int) -> tuple[int, float]:
    """The archive tasks' own code (gunzip, untar, per-image work, Arrow batches) in a plain Pool: what
    the archive stage would take without Spark, its JVM and the tables."""
    paths = sorted(str(p) for p in (root / "arxiv").glob("images_*.tar.gz"))
    t0 = time.perf_counter()
    with Pool(cores) as pool:
        n = sum(pool.map(_stream_one, paths, chunksize=1))
    return n, time.perf_counter() - t0


def ingest_run(root: Path, cores: int) -> tuple[int, float, float]:
    from s1mmalign import config, ingest, session

    cfg = config.load(str(REPO / "conf" / "local.yaml"),
                      overrides={"spark": {"master": f"local[{cores}]", "shuffle_partitions": cores,
                                           "extra": {"spark.ui.enabled": "false"}}})
    lake = WORK / "lake"
    shutil.rmtree(lake, ignore_errors=True)
    t0 = time.perf_counter()
    spark = session.build(str(lake), cfg)
    spark.range(1).count()
    startup = time.perf_counter() - t0
    # Warm the Delta tables (created once per lake, not per run) outside the timed part.
    from s1mmalign import delta_io
    delta_io.ensure_tables(spark, str(lake), cfg.catalog.database)
    t0 = time.perf_counter()
    summary = ingest.run(spark, cfg, str(root), str(lake))
    secs = time.perf_counter() - t0
    spark.stop()
    assert summary.quarantined == 0, summary
    return summary.pairs, secs, startup


def archive_memory(gb: float) -> tuple[int, int]:
    """Peak RSS of the archive task over an archive of `gb` GB (written once, kept in work/bench)."""
    path = WORK / f"big-{gb}g.tar.gz"
    figs = figures()
    if not path.exists():
        target, n = int(gb * (1 << 30)), 0
        with open(path.with_suffix(".tmp"), "wb") as raw, \
                gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=1) as gz, \
                tarfile.open(fileobj=gz, mode="w|") as tar:
            while raw.tell() < target:
                name, blob, _ = figs[n % len(figs)]
                info = tarfile.TarInfo(f"images/big/{n:07d}/{Path(name).name}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
                n += 1
        path.with_suffix(".tmp").rename(path)
    # a fresh process running the archive task's code (_stream_one), so its peak RSS is the task's alone
    code = f"""
import resource, sys
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from ingest import _stream_one
print(_stream_one({str(path)!r}), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), int(out[1]) * 1024


def main() -> None:
    import logging
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--copies", type=int, default=8, help="copies of the 300 figures (8: 2,400 figures)")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    p.add_argument("--archive-gb", type=float, default=2.0, help="0 skips the memory measurement")
    args = p.parse_args()
    if not SCIFIG.is_dir():
        sys.exit(f"bench/ingest: {SCIFIG} is missing (shared/ must be beside the checkout)")
    WORK.mkdir(parents=True, exist_ok=True)
    root = make_corpus(args.copies)
    n_base, t_base = baseline(root, args.cores)
    n_str, t_str = streaming(root, args.cores)
    n_ing, t_ing, startup = ingest_run(root, args.cores)
    base_rate, ing_rate = n_base / t_base, n_ing / t_ing
    print(f"machine: {os.cpu_count()} cores, {args.cores} used; {n_base} real-size figures "
          f"({sum(f.stat().st_size for f in (root / 'loose').iterdir()) / 1e6:.0f} MB of PNG)")
    print(f"baseline Pool({args.cores}) Pillow loop: {n_base} figures in {t_base:.1f}s = {base_rate:.1f}/s")
    print(f"archive tasks' code alone in Pool({args.cores}) (gunzip + untar + same work + Arrow, no Spark): "
          f"{n_str} figures in {t_str:.1f}s = {n_str / t_str:.1f}/s")
    print(f"ingest (warm session, all stages and Delta writes): {n_ing} pairs in {t_ing:.1f}s = {ing_rate:.1f}/s"
          f" (+{startup:.1f}s JVM/session start, not counted)")
    if args.archive_gb > 0:
        members, peak = archive_memory(args.archive_gb)
        size = (WORK / f"big-{args.archive_gb}g.tar.gz").stat().st_size
        print(f"archive task memory: {size / 1e9:.2f} GB archive, {members} members streamed, "
              f"peak RSS {peak / 1e6:.0f} MB")
    print(f"ingest throughput: {ing_rate:.1f} pairs/s vs bare Pillow loop {base_rate:.1f}/s "
          f"ratio={ing_rate / base_rate:.2f}")


if __name__ == "__main__":
    main()
