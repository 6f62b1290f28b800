"""Export's first step: the Delta version of every table it reads, pinned for the whole export (time travel),
so that a re-run with the same spec and versions writes byte-identical shards; the tables read at those
versions; --model resolved to the model id clip_scores holds."""

from __future__ import annotations

import logging

from s1mmalign.export.spec import ExportError, Spec
from s1mmalign.lake import schemas
from s1mmalign.lake.root import Lake

log = logging.getLogger(__name__)


def snapshot(spark, lake: Lake, spec: Spec) -> dict[str, int]:
    """The newest version of every table the export reads."""
    needed = ["pairs", "images"] + (["duplicates"] if spec.dedup != "none" else [])
    needed += ["clip_scores"] if spec.model else []
    missing = [t for t in needed if not lake.exists(t)]
    if missing:
        why = {"duplicates": f"--dedup {spec.dedup} needs the duplicates table",
               "clip_scores": f"--model {spec.model} needs the clip_scores table"}
        first = missing[0]
        raise ExportError(f"lake {lake} has no {first} table: {why.get(first, 'nothing to export')}; "
                          f"run {schemas.producer(first)} first")
    versions = {t: lake.version(t, spark) for t in needed}
    # the samples' JSON shows groups and scores when there; --where may use text signals and fluency
    for optional in ("duplicates", "clip_scores", "text_signals", "fluency_scores"):
        if optional not in versions and lake.exists(optional):
            versions[optional] = lake.version(optional, spark)
    return versions


def read(spark, lake: Lake, name: str, versions: dict[str, int]):
    """Table `name` at its pinned version (ExportError when that version cannot be read)."""
    try:
        df = lake.read(spark, name, version=versions[name])
        df.schema   # noqa: B018  (resolves the version now)
        return df
    except Exception as exc:
        raise ExportError(f"table {name} at version {versions[name]} cannot be read (vacuumed, or the lake "
                          f"is another one): {first_line(exc)}") from None


def resolve_model(spark, lake: Lake, versions: dict[str, int], model: str) -> str:
    """--model as clip_scores names it: an exact model id, or a model name with one checkpoint scored."""
    ids = sorted(r[0] for r in read(spark, lake, "clip_scores", versions).select("model").distinct().collect())
    if model in ids:
        return model
    named = [i for i in ids if i.split("@", 1)[0] == model]
    if len(named) == 1:
        return named[0]
    if named:
        raise ExportError(f"--model {model}: scores of {len(named)} checkpoints ({', '.join(named)}); name one")
    raise ExportError(f"--model {model} has no scores in clip_scores (scored: {', '.join(ids) or 'none'}); "
                      f"run jobs/score_clip.py --model {model} first")


def warnings(spark, lake: Lake, versions: dict[str, int], spec: Spec) -> list[str]:
    """Things a reader of the manifest should know: duplicates computed before the newest pairs."""
    from delta.tables import DeltaTable

    if spec.dedup == "none" or "duplicates" not in versions:
        return []

    def when(name):
        hist = DeltaTable.forPath(spark, lake.path(name)).history()
        return hist.where(f"version = {versions[name]}").select("timestamp").first()[0]

    if when("pairs") > when("duplicates"):
        line = ("pairs changed after the duplicates table was computed: pairs ingested since are not "
                "deduplicated (run jobs/validate.py first)")
        log.warning("export: %s", line)
        return [line]
    return []


def first_line(exc: BaseException) -> str:
    """Spark's message for a bad predicate or table, in one line (its first)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:500]
