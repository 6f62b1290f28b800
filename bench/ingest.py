"""Ingest throughput against a bare multiprocessing Pillow loop, on two archive layouts, with peak memory.

    .venv/bin/python bench/ingest.py [--copies 8] [--layout one-archive many-archives] [--archive-gb 2]

Corpus: the 300 real figures of ../shared/data/scifig300 (PNG), each copy k made distinct bytes by a
PNG text chunk (same pixels, same decode work; copies x 300 figures), laid out as arXiv with one JSONL
file per copy and the images either in ONE archive (one-archive: the real release's shape, a year in
one gzip tar) or in one small archive per copy (many-archives), and unpacked as loose files for the
baseline. Every side does the same per-image work (decode check, sha256, difference hash, 256 px JPEG
thumbnail) with the same function, on the same cores:
  baseline   multiprocessing.Pool(cores) over the unpacked files, no Spark, no tables;
  task code  the archive tasks' own code (split into slices, then analyse each slice) in the same kind
             of Pool, no Spark (what Spark adds, apart);
  ingest     ingest.run in a warm local[cores] session with Spark's default memory: archives split,
             slices analysed, JSONL parsed, Delta writes; peak RSS of the JVM and the Python workers.
Memory: the archive task's code over a generated archive of --archive-gb GB in one process, its peak
RSS measured by the OS.
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
from contextlib import ExitStack
from multiprocessing import Pool
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))
SCIFIG = REPO.parent / "shared" / "data" / "scifig300"
WORK = REPO / "work" / "bench"
LAYOUTS = ("many", "one")
LAYOUT_DIRS = {"one-archive": "one", "many-archives": "many"}


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
    """copies x 300 figures, laid out twice over the same JSONL files: many/ (one yearly archive per copy,
    as today's small archives) and one/ (every figure in one archive, as the real release ships a year);
    loose/ holds the same files unpacked, for the baseline."""
    if not 1 <= copies <= 89:
        sys.exit("bench/ingest: --copies runs from 1 to 89 (one arXiv year per copy, 2010-2098)")
    root = WORK / f"corpus-v3-{copies}"
    if (root / "done").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    for layout in LAYOUTS:
        (root / layout / "arxiv/jsonl").mkdir(parents=True)
    (root / "loose").mkdir()
    figs = figures()
    with ExitStack() as stack:
        one = _tar_writer(stack, root / "one/arxiv/images_all.tar.gz")
        for k in range(copies):
            year = 10 + k
            blobs = [_variant(k, b) for _, b, _ in figs]
            with ExitStack() as per_year:
                many = _tar_writer(per_year, root / f"many/arxiv/images_20{year}.tar.gz")
                lines = []
                for i, ((path, _, rec), blob) in enumerate(zip(figs, blobs, strict=True)):
                    new_id = f"{year}01.{i:0{4 if year < 15 else 5}d}"
                    new_path = f"images/{year}01/{new_id}.tar.gz/{Path(path).name}"
                    for tar in (many, one):
                        info = tarfile.TarInfo(new_path)
                        info.size = len(blob)
                        tar.addfile(info, io.BytesIO(blob))
                    lines.append(json.dumps({**rec, "image_path": new_path,
                                             "metadata": {**rec["metadata"], "arxiv_id": new_id}}) + "\n")
                    (root / "loose" / f"{k}-{i}-{Path(path).name}").write_bytes(blob)
            for layout in LAYOUTS:
                (root / layout / f"arxiv/jsonl/{year}_recaption.jsonl").write_text("".join(lines))
    (root / "done").touch()
    return root


def _tar_writer(stack: ExitStack, path: Path) -> tarfile.TarFile:
    raw = stack.enter_context(open(path, "wb"))
    gz = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=6))
    return stack.enter_context(tarfile.open(fileobj=gz, mode="w|"))


def _baseline_one(path: str):
    from s1mmalign.config import IngestConf
    from s1mmalign.ingest import images

    with open(path, "rb") as f:
        facts = images.analyze(f.read(), IngestConf())
    return facts.status


def baseline(root: Path, cores: int) -> tuple[int, float]:
    paths = sorted(str(p) for p in (root / "loose").iterdir())
    t0 = time.perf_counter()
    with Pool(cores) as pool:
        statuses = pool.map(_baseline_one, paths, chunksize=4)
    secs = time.perf_counter() - t0
    assert all(s == "ok" for s in statuses)
    return len(paths), secs


def _split_one(args: tuple[str, str]) -> list[str]:
    """The archive task's own code (tasks.split_archives) over one archive: its slice files."""
    import pyarrow as pa

    from s1mmalign.ingest import tasks
    from s1mmalign.lake.storage import LocalStore

    path, slice_dir = args
    p = Path(path)
    fn = tasks.split_archives(LocalStore(str(p.parent)), 32 << 20, LocalStore(slice_dir), "slices", 64 << 20)
    desc = pa.RecordBatch.from_pylist([{"source": "arxiv", "archive": p.name, "missing_after": None,
                                        "parts": json.dumps([{"rel": p.name, "size": p.stat().st_size}])}])
    rows = [r for b in fn(iter([desc])) for r in b.to_pylist()]
    return [(slice_dir, r["image_path"]) for r in rows if r["kind"] == "slice"]


def _analyze_one(where: tuple[str, str]) -> int:
    """The slice task's own code (tasks.analyze_slices) over one slice file: members analysed."""
    import pyarrow as pa

    from s1mmalign.config import IngestConf
    from s1mmalign.ingest import tasks
    from s1mmalign.lake.storage import LocalStore

    scratch, slice_name = where
    fn = tasks.analyze_slices(IngestConf(), LocalStore(scratch))
    desc = pa.RecordBatch.from_pylist([{"source": "arxiv", "archive": "a", "slice": slice_name}])
    return sum(sum(1 for s in b.column("status").to_pylist() if s == "ok") for b in fn(iter([desc])))


def _stream_one(path: str) -> int:
    """An archive split, then its slices analysed, in this one process: members analysed."""
    import tempfile

    with tempfile.TemporaryDirectory(dir=WORK) as slice_dir:
        return sum(_analyze_one(s) for s in _split_one((path, slice_dir)))


def task_code(source: Path, cores: int) -> tuple[int, float]:
    """The archive tasks' own code (gunzip + untar into slices, then the per-image work per slice, Arrow
    batches) in plain Pools, archives then slices as Spark schedules them: the stage without Spark."""
    import tempfile

    paths = sorted(str(p) for p in (source / "arxiv").glob("images_*.tar.gz"))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=WORK) as slice_dir, Pool(cores) as pool:
        slices = [s for got in pool.map(_split_one, [(p, slice_dir) for p in paths], chunksize=1) for s in got]
        n = sum(pool.map(_analyze_one, slices, chunksize=1))
    return n, time.perf_counter() - t0


class PeakRSS:
    """Samples the RSS of this process's descendants: the Spark JVM and its Python workers."""

    def __init__(self, every: float = 0.25):
        import threading

        self.every, self.jvm, self.worker, self.workers = every, 0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @staticmethod
    def _children() -> dict[int, list[int]]:
        kids: dict[int, list[int]] = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                kids.setdefault(ppid, []).append(int(d))
        return kids

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            kids, todo, total = self._children(), [os.getpid()], 0
            while todo:
                for pid in kids.get(todo.pop(), []):
                    todo.append(pid)
                    try:
                        cmd = open(f"/proc/{pid}/cmdline", "rb").read()
                        status = open(f"/proc/{pid}/status").read()
                    except OSError:
                        continue
                    rss = int(status.split("VmRSS:")[1].split()[0]) * 1024 if "VmRSS:" in status else 0
                    if b"java" in cmd.split(b"\0")[0]:
                        self.jvm = max(self.jvm, rss)
                    elif b"pyspark" in cmd or b"python" in cmd.split(b"\0")[0]:
                        self.worker = max(self.worker, rss)
                        total += rss
            self.workers = max(self.workers, total)


def session(cores: int, event_log: str | None = None):
    """A local[cores] session with Spark's default memory, and the config its runs use; with event_log,
    Spark's event log goes to that folder (every stage and task, with times: where a run spends them)."""
    from s1mmalign import config
    from s1mmalign.lake import session as sessions
    from s1mmalign.lake.root import Lake

    extra = {"spark.ui.enabled": "false"}
    if event_log:
        Path(event_log).mkdir(parents=True, exist_ok=True)
        extra |= {"spark.eventLog.enabled": "true", "spark.eventLog.dir": str(Path(event_log).resolve())}
    cfg = config.load(str(REPO / "conf" / "local.yaml"),
                      overrides={"spark": {"master": f"local[{cores}]", "shuffle_partitions": cores,
                                           "extra": extra}})
    t0 = time.perf_counter()
    spark = sessions.build(Lake(str(WORK / "catalog")), cfg, write=False)
    spark.range(1).count()
    return spark, cfg, time.perf_counter() - t0


def ingest_run(spark, cfg, source: Path, layout: str) -> tuple[int, float, PeakRSS, dict]:
    """ingest.run over `source` into a new lake, the Delta tables created (once per lake) beforehand."""
    from s1mmalign.ingest import pipeline as ingest
    from s1mmalign.lake.root import Lake

    lake = WORK / f"lake-{layout}"
    shutil.rmtree(lake, ignore_errors=True)
    dest = Lake.open(str(lake), cfg, existing=False).hold("bench")
    dest.ensure_tables(spark)
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        summary = ingest.run(spark, cfg, str(source), dest)
        secs = time.perf_counter() - t0
    assert summary.quarantined == 0, summary
    return summary.pairs, secs, rss, summary.archive_tasks


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
    p.add_argument("--layout", nargs="+", choices=sorted(LAYOUT_DIRS), default=["one-archive", "many-archives"],
                   help="one-archive: every figure in one archive (the real release's shape); many-archives: "
                        "one small archive per copy")
    p.add_argument("--event-log", metavar="DIR", help="write Spark's event log of the ingest runs to DIR")
    args = p.parse_args()
    if not SCIFIG.is_dir():
        sys.exit(f"bench/ingest: {SCIFIG} is missing (shared/ must be beside the checkout)")
    WORK.mkdir(parents=True, exist_ok=True)
    root = make_corpus(args.copies)
    n_base, t_base = baseline(root, args.cores)
    base_rate = n_base / t_base
    print(f"machine: {os.cpu_count()} cores, {args.cores} used; {n_base} real-size figures "
          f"({sum(f.stat().st_size for f in (root / 'loose').iterdir()) / 1e6:.0f} MB of PNG)")
    print(f"baseline Pool({args.cores}) Pillow loop: {n_base} figures in {t_base:.1f}s = {base_rate:.1f}/s")
    ratios = {}
    for layout in args.layout:   # Pools fork: run them before the JVM and its gateway exist
        source = root / LAYOUT_DIRS[layout]
        archives = len(list((source / "arxiv").glob("images_*.tar.gz")))
        n_str, t_str = task_code(source, args.cores)
        print(f"[{layout}: {archives} archive(s)] archive tasks' code alone in Pool({args.cores}) (gunzip + untar "
              f"into slices, then the same work per slice + Arrow, no Spark): {n_str} figures in {t_str:.1f}s "
              f"= {n_str / t_str:.1f}/s")
    spark, cfg, startup = session(args.cores, args.event_log)
    for layout in args.layout:
        n_ing, t_ing, rss, spread = ingest_run(spark, cfg, root / LAYOUT_DIRS[layout], layout)
        ratios[layout] = n_ing / t_ing / base_rate
        print(f"[{layout}] ingest (warm session, all stages and Delta writes): {n_ing} pairs in {t_ing:.1f}s "
              f"= {n_ing / t_ing:.1f}/s (+{startup:.1f}s JVM/session start, not counted); "
              f"ratio {ratios[layout]:.2f}; tasks per archive: max {max(spread.values(), default=0)}")
        print(f"[{layout}] peak RSS during the ingest: driver JVM {rss.jvm / 1e6:.0f} MB (heap: Spark's default), "
              f"largest Python worker {rss.worker / 1e6:.0f} MB, all Python workers at once {rss.workers / 1e6:.0f} MB")
    if args.archive_gb > 0:
        members, peak = archive_memory(args.archive_gb)
        size = (WORK / f"big-{args.archive_gb}g.tar.gz").stat().st_size
        print(f"archive task memory: {size / 1e9:.2f} GB archive, {members} members streamed, "
              f"peak RSS {peak / 1e6:.0f} MB")
    spark.stop()
    worst = min(ratios, key=ratios.get)
    print(f"ingest throughput ({', '.join(f'{k} {v * base_rate:.1f} pairs/s' for k, v in ratios.items())}; "
          f"the lower, {worst}): {ratios[worst] * base_rate:.1f} pairs/s vs bare Pillow loop {base_rate:.1f}/s "
          f"ratio={ratios[worst]:.2f}")


if __name__ == "__main__":
    main()
