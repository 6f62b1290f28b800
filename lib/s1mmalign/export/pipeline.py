"""Export: training shards (WebDataset tar or Parquet) from one consistent snapshot of the lake.

Steps, each a module of this folder with the details in its doc, called in turn by run() below:
  spec       what to select and write (the export conf section, whose fields are the job's flags)
  snapshot   every table read pinned at its version for the whole export (time travel)
  select     pairs -> --where -> score threshold -> a non-blank text -> dedup, counted step by step
  plan       the chosen pairs in storage or pair_id order, cut into shards of about the shard size
  write      one task per shard, one writer class per format (TarWriter, ParquetWriter)
  manifest   the draft that makes a re-run resume, each shard's record, _manifest.json and _SUCCESS last

A re-run over the same --out resumes: the draft manifest (_manifest.draft.json) pins spec and versions,
shards whose record and bytes agree are kept, only the rest are written.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, replace

from s1mmalign.export import manifest, plan, select, snapshot, write
from s1mmalign.export.spec import ExportError, Spec, parse_size  # noqa: F401 (the job's names)
from s1mmalign.lake.root import Lake
from s1mmalign.lake.storage import Store, remote

log = logging.getLogger(__name__)


@dataclass
class Result:
    samples: int
    shards: int
    written: int           # shards written by this run (the others were kept from an earlier one)
    bytes: int
    seconds: float
    manifest: dict


def run(spark, cfg, lake: Lake, out: str, spec: Spec, *, model_name: str | None = None,
        versions: dict[str, int] | None = None) -> Result:
    """Export the pairs `spec` selects from `lake` into `out` (a folder or s3://); see the module doc.

    model_name: --model as given (resolved here to a model id); versions: pinned table versions
    (--from-manifest), else the newest (or a resumed draft's)."""
    started = time.monotonic()
    if not remote(out):
        os.makedirs(out, exist_ok=True)
    store = Store.from_uri(out, cfg.s3)
    if versions is None:
        versions = snapshot.snapshot(spark, lake, spec if not model_name else replace(spec, model=model_name))
    if model_name:
        spec = replace(spec, model=snapshot.resolve_model(spark, lake, versions, model_name))
    spec.check()
    held = manifest.check_out(store, spec, lake.uri)
    if held and held.get("complete"):
        log.info("export: %s already holds this export, complete", out)
        return Result(held["samples"], len(held["shards"]), 0, held["bytes"], time.monotonic() - started, held)
    if held:
        versions = held["versions"]
        log.info("export: resuming the unfinished export in %s (versions %s)", out, versions)

    if spec.order == "storage":
        plan.check_storage_order(spark, lake)
    df = select.candidates(spark, lake, spec, versions)
    selected = select.select(df, spec).localCheckpoint()
    tally = select.counts(selected)
    images = snapshot.read(spark, lake, "images", versions)
    picked = selected.where("_keep").drop("_ok_where", "_ok_score", "_ok_text", "_keep", *select.FILTER_ONLY,
                                        *select.signal_columns())
    chosen, shards = plan.plan(spark, picked, images, spec)
    if not shards:
        steps = tally["steps"]
        raise ExportError(f"the selection is empty ({steps['pairs']} pairs; where kept {steps['where']}, score "
                          f"{steps['min_score']}, text {steps['text']}, dedup {steps['dedup']}): nothing written")
    warnings = snapshot.warnings(spark, lake, versions, spec)
    draft = {"lake": lake.uri, "spec": spec.as_dict(), "versions": versions,
             "shards": [{"name": plan.shard_name(i, spec), "samples": n} for i, n in shards]}
    if held and held["shards"] != draft["shards"]:
        raise ExportError(f"--out {out}: the unfinished export's plan differs from this run's over the same "
                          f"versions (was the lake rewritten?): remove {out} and export again")
    store.put(manifest.DRAFT, json.dumps(draft, indent=1, sort_keys=True).encode())
    kept = manifest.kept_shards(store, draft) if held else {}
    todo = [i for i, _ in shards if plan.shard_name(i, spec) not in kept]
    log.info("export: %d pairs in %d shards (%d kept from an earlier run); versions %s",
             tally["steps"]["dedup"], len(shards), len(kept), versions)

    records = dict(kept)
    if todo:
        for r in write.write_shards(spark, cfg, store, spec, chosen, images, shards, todo):
            records[r["name"]] = r.asDict()
    planned = {plan.shard_name(i, spec): n for i, n in shards}
    short = [n for n in planned if records.get(n, {}).get("samples") != planned[n]]
    if short:
        raise ExportError(f"shard(s) {', '.join(short[:3])} hold fewer samples than planned: pairs whose image "
                          f"is not in images at version {versions['images']} (run jobs/validate.py)")

    done = manifest.publish(store, lake.uri, spec, versions, tally, warnings, [records[n] for n in sorted(planned)])
    return Result(done["samples"], len(done["shards"]), len(todo), done["bytes"], time.monotonic() - started, done)
