"""Export throughput against a bare pyarrow loop, and the memory of a shard task with 5 MB figures.

    .venv/bin/python bench/export.py [--copies 72] [--lake work/bench/lake-one-archive] [--big 200]

Lake: bench/ingest's corpus (copies x 300 real figures of ../shared/data/scifig300, each copy other bytes)
ingested once into work/bench/export-lake-<copies> (or --lake: a lake bench/ingest already wrote from the
same corpus). Both sides write every pair as a WebDataset sample (image, recaption .txt, .json) into tar
shards of --shard-size:
  baseline  the newest Delta files of pairs and images (their list from delta-rs) read with pyarrow, image
            row group by row group, each image's pairs written straight into tar files by one Python loop,
            in storage order (no sort, no manifest, no hashes, no resume);
  export    export.run in a warm local[cores] session with Spark's default memory (shards of a
            deterministic size, sha256 and manifest), in both orders: --order pair_id (well-mixed shards: one
            shuffle of the image bytes) and --order storage (as the baseline: the images read from the
            table's files by the shard tasks); the last line gives storage order's ratio.
Memory: --big figures of ~5 MB each (random pixels, PNG) ingested into their own lake, then exported into
one shard of everything and into 64 MB shards; the peak RSS of the Python workers (the shard tasks) and of
the JVM, sampled from /proc.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest import SCIFIG, WORK, PeakRSS, make_corpus, session  # noqa: E402  (bench/ingest.py)

EXT = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif"}


def bench_lake(spark, cfg, copies: int) -> Path:
    """bench/ingest's corpus of `copies` ingested (many-archives layout), once."""
    from s1mmalign.ingest import pipeline as ingest
    from s1mmalign.lake.root import Lake

    lake = WORK / f"export-lake-{copies}"
    if (lake / "done").exists():
        return lake
    shutil.rmtree(lake, ignore_errors=True)
    root = make_corpus(copies)
    dest = Lake.open(str(lake), cfg, existing=False).hold("bench")
    dest.ensure_tables(spark)
    summary = ingest.run(spark, cfg, str(root / "many"), dest)
    assert summary.quarantined == 0, summary
    (lake / "done").touch()
    return lake


def _member(tar, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def baseline(lake: Path, out: Path, shard_bytes: int) -> tuple[int, float]:
    """pyarrow over the tables' newest files, one loop writing tar shards; (samples, seconds)."""
    import pyarrow.parquet as pq
    from deltalake import DeltaTable

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    cols = ["pair_id", "source", "source_file", "source_line", "arxiv_id", "discipline", "title", "caption",
            "recaption", "image_sha256", "image_format", "width", "height"]
    by_image: dict[str, list[dict]] = {}
    for uri in DeltaTable(str(lake / "pairs")).file_uris():
        for r in pq.read_table(uri, columns=cols).to_pylist():
            by_image.setdefault(r["image_sha256"], []).append(r)
    n, shard, tar, raw = 0, 0, None, None
    for uri in DeltaTable(str(lake / "images")).file_uris():
        pf = pq.ParquetFile(uri)
        for g in range(pf.num_row_groups):
            for img in pf.read_row_group(g, columns=["image_sha256", "content"]).to_pylist():
                for r in by_image.get(img["image_sha256"], ()):
                    if tar is None or raw.tell() >= shard_bytes:
                        if tar is not None:
                            tar.close()
                            raw.close()
                        raw = open(out / f"shard-{shard:06d}.tar", "wb")
                        tar, shard = tarfile.open(fileobj=raw, mode="w"), shard + 1
                    key = r["pair_id"]
                    _member(tar, f"{key}.{EXT[r['image_format']]}", img["content"])
                    _member(tar, f"{key}.txt", (r["recaption"] or "").encode())
                    meta = {k: r[k] for k in cols if k not in ("caption", "recaption")}
                    _member(tar, f"{key}.json", json.dumps(meta).encode())
                    n += 1
    if tar is not None:
        tar.close()
        raw.close()
    return n, time.perf_counter() - t0


def big_lake(spark, cfg, count: int) -> Path:
    """`count` figures of ~5 MB (random RGB pixels, PNG) in one arXiv archive, ingested once."""
    import gzip

    import numpy as np
    from PIL import Image

    from s1mmalign.ingest import pipeline as ingest
    from s1mmalign.lake.root import Lake

    lake = WORK / f"export-big-lake-{count}"
    if (lake / "done").exists():
        return lake
    root = WORK / f"export-big-corpus-{count}"
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(lake, ignore_errors=True)
    (root / "arxiv/jsonl").mkdir(parents=True)
    rng = np.random.default_rng(5)
    lines = []
    with open(root / "arxiv/images_2099.tar.gz", "wb") as fh, \
            gzip.GzipFile(fileobj=fh, mode="wb", compresslevel=1, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w|") as tar:
        for i in range(count):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (1290, 1290, 3), dtype=np.uint8)).save(buf, "PNG", compress_level=1)
            path = f"images/9901/9901.{i:05d}.tar.gz/fig1.png"
            _member(tar, path, buf.getvalue())
            lines.append(json.dumps({"image_path": path, "caption": f"Figure 1: noise {i}",
                                     "recaption": f"Random pixels, figure {i}.",
                                     "metadata": {"arxiv_id": f"9901.{i:05d}", "categories": ["cs.LG"]}}))
    (root / "arxiv/jsonl/99_recaption.jsonl").write_text("\n".join(lines) + "\n")
    dest = Lake.open(str(lake), cfg, existing=False).hold("bench")
    dest.ensure_tables(spark)
    summary = ingest.run(spark, cfg, str(root), dest)
    assert summary.pairs == count, summary
    (lake / "done").touch()
    return lake


def main() -> None:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--copies", type=int, default=72, help="copies of the 300 figures (72: 21,600 figures)")
    p.add_argument("--lake", default=None, help="a lake bench/ingest wrote from that corpus (skips the ingest)")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    p.add_argument("--shard-size", default="256MB")
    p.add_argument("--big", type=int, default=200, help="5 MB figures for the memory measurement (0: skip)")
    args = p.parse_args()
    if not SCIFIG.is_dir():
        sys.exit(f"bench/export: {SCIFIG} is missing (shared/ must be beside the checkout)")
    WORK.mkdir(parents=True, exist_ok=True)
    from s1mmalign.export import pipeline as export
    from s1mmalign.lake.root import Lake

    shard_bytes = export.parse_size(args.shard_size)
    spark, cfg, _ = session(args.cores)
    lake = Path(args.lake).resolve() if args.lake else bench_lake(spark, cfg, args.copies)
    baseline(lake, WORK / "export-baseline", shard_bytes)    # warm: the lake's files in the page cache, as
    n_base, t_base = baseline(lake, WORK / "export-baseline", shard_bytes)   # the timed exports find them
    size = sum(f.stat().st_size for f in (WORK / "export-baseline").iterdir())
    print(f"machine: {os.cpu_count()} cores, {args.cores} used; lake {lake.name}: {n_base} pairs, "
          f"{size / 1e9:.2f} GB of shards")
    print(f"baseline (pyarrow + one tar loop): {n_base} samples in {t_base:.1f}s ({n_base / t_base:.0f}/s)")

    results = {}
    for order in ("pair_id", "storage"):
        out = WORK / "export-out"
        shutil.rmtree(out, ignore_errors=True)
        with PeakRSS() as rss:
            result = export.run(spark, cfg, Lake.open(str(lake), cfg), str(out),
                                export.Spec(shard_bytes=shard_bytes, order=order))
        assert result.samples == n_base, (result.samples, n_base)
        results[order] = result
        print(f"export --order {order} (Spark, {result.shards} shards): {result.samples} samples in "
              f"{result.seconds:.1f}s ({result.samples / result.seconds:.0f}/s, ratio={t_base / result.seconds:.2f}); "
              f"peak RSS JVM {rss.jvm / 2**20:.0f} MiB, largest Python worker {rss.worker / 2**20:.0f} MiB")

    if args.big:
        big = big_lake(spark, cfg, args.big)
        for order, label, shard in (("pair_id", "one shard of everything", "100GB"),
                                    ("pair_id", "64 MB shards", "64MB"),
                                    ("storage", "one shard of everything", "100GB")):
            shutil.rmtree(WORK / "export-big-out", ignore_errors=True)
            with PeakRSS() as rss:
                r = export.run(spark, cfg, Lake.open(str(big), cfg), str(WORK / "export-big-out"),
                               export.Spec(shard_bytes=export.parse_size(shard), order=order))
            print(f"memory, --order {order}, {args.big} figures of ~5 MB ({r.bytes / 1e9:.2f} GB), {label} "
                  f"({r.shards} shards): "
                  f"largest Python worker {rss.worker / 2**20:.0f} MiB, JVM {rss.jvm / 2**20:.0f} MiB")
    spark.stop()
    result = results["storage"]     # the order that reads as the baseline does (pair_id's figure is above)
    print(f"export --order storage of {n_base} real figures: {result.samples / result.seconds:.0f} samples/s vs "
          f"baseline {n_base / t_base:.0f}/s ratio={t_base / result.seconds:.2f}")


if __name__ == "__main__":
    main()
