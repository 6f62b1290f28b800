"""Ingest with the lake on S3 (moto's server on 127.0.0.1) against the same ingest with the lake on local
disk: same corpus, same warm session, same run.

    .venv/bin/python bench/s3.py [--copies 4] [--layout many-archives|one-archive]

Corpus: bench/ingest.py's (copies x 300 real figures of ../shared/data/scifig300), source on local disk
for both sides, so only the lake's place differs: Delta's commits and log reads, the Parquet staging,
the slice files (uploaded, then downloaded by the tasks that read them) and the lease all go to S3.
A first run on disk warms the session up (not counted). Prints each stage's seconds on both sides (what S3
adds, and where), then ratio = local time / S3 time.
moto keeps objects in memory in one Python process: it is slower per request than S3 and has no network
latency, so the ratio says how request-bound the S3 path is, not what a region would give.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))
sys.path.insert(0, str(REPO / "bench"))

from ingest import LAYOUT_DIRS, SCIFIG, WORK, make_corpus, session  # noqa: E402  (bench/ingest.py)


class StageTimes(logging.Handler):
    """Collects the ingest's stage lines ("stage archives ... in 12.3s")."""

    PATTERN = re.compile(r"stage (\w+)\s.* in ([0-9.]+)s")

    def __init__(self):
        super().__init__()
        self.seconds: dict[str, float] = {}

    def emit(self, record):
        m = self.PATTERN.search(record.getMessage())
        if m:
            self.seconds[m.group(1)] = float(m.group(2))


def moto_server() -> tuple[subprocess.Popen, str]:
    sys.path.insert(0, str(REPO / "tests"))
    from helpers import free_port, wait_port

    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, f"http://127.0.0.1:{port}"


def timed(spark, cfg, source: Path, lake: str) -> tuple[int, float, dict[str, float]]:
    from s1mmalign.ingest import pipeline as ingest
    from s1mmalign.lake.root import Lake

    dest = Lake.open(lake, cfg, existing=False).hold("bench")
    dest.ensure_tables(spark)
    stages = StageTimes()
    logging.getLogger("s1mmalign.ingest.pipeline").addHandler(stages)
    try:
        t0 = time.perf_counter()
        summary = ingest.run(spark, cfg, str(source), dest)
        secs = time.perf_counter() - t0
    finally:
        logging.getLogger("s1mmalign.ingest.pipeline").removeHandler(stages)
    assert summary.quarantined == 0, summary
    return summary.pairs, secs, stages.seconds


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("s1mmalign.ingest.pipeline").setLevel(logging.INFO)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--copies", type=int, default=4, help="copies of the 300 figures (4: 1,200 figures)")
    p.add_argument("--layout", choices=sorted(LAYOUT_DIRS), default="many-archives")
    args = p.parse_args()
    if not SCIFIG.is_dir():
        sys.exit(f"bench/s3: {SCIFIG} is missing (shared/ must be beside the checkout)")
    WORK.mkdir(parents=True, exist_ok=True)
    source = make_corpus(args.copies) / LAYOUT_DIRS[args.layout]
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    server, endpoint = moto_server()
    try:
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
        spark, cfg, _ = session(os.cpu_count() or 2)
        s3_cfg = dataclasses.replace(cfg, s3=dataclasses.replace(cfg.s3, endpoint_url=endpoint,
                                                                  path_style_access=True))
        from s1mmalign.lake import session as sessions

        sessions.apply_s3a(spark, s3_cfg)
        local_lake = WORK / "s3bench-local-lake"
        shutil.rmtree(local_lake, ignore_errors=True)
        timed(spark, s3_cfg, source, str(local_lake))           # warm-up (JIT, Python workers), not counted
        shutil.rmtree(local_lake, ignore_errors=True)
        n_local, t_local, st_local = timed(spark, s3_cfg, source, str(local_lake))
        n_s3, t_s3, st_s3 = timed(spark, s3_cfg, source, "s3a://bench/lake")
        spark.stop()
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert n_local == n_s3, (n_local, n_s3)
    print(f"machine: {os.cpu_count()} cores; {n_local} figures ({args.layout}), source on local disk")
    print(f"{'stage':10} {'local s':>9} {'S3 s':>9}")
    for stage in st_local:
        print(f"{stage:10} {st_local[stage]:9.1f} {st_s3.get(stage, float('nan')):9.1f}")
    print(f"{'total':10} {t_local:9.1f} {t_s3:9.1f}")
    print(f"ingest with the lake on S3 (moto): {n_s3 / t_s3:.1f} pairs/s vs on local disk {n_local / t_local:.1f} "
          f"pairs/s ratio={t_local / t_s3:.2f}")


if __name__ == "__main__":
    main()
