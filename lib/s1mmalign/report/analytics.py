"""The named SQL views of sql/ over the catalog tables, and the numbers the report is made of.

Each file in sql/ holds one `CREATE OR REPLACE VIEW ${db}.<name> AS ...` statement, headed by
`-- view: <name>`, `-- requires: <table>, ...` and `-- key: <column>, ...` (what makes a row unique;
"(one row)" for none), then comment lines that describe it. The placeholders `${db}` and
`${<report setting>}` are filled from conf (report section), and the views are created in the catalog
as persistent views, so a later spark-sql session sees them as s1mmalign.<name>. A view whose tables
are missing (no CLIP scores yet, no validate run yet) is dropped and reported as unavailable, with why.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import time
from dataclasses import dataclass
from decimal import Decimal

from s1mmalign import resources
from s1mmalign.config import Config
from s1mmalign.errors import JobError
from s1mmalign.lake import schemas
from s1mmalign.lake.root import Lake

log = logging.getLogger(__name__)

BASE_VIEW = "pair_text"     # every caption view reads it; not itself part of the summary
PER_PAIR = ("pair_id",)     # a view of one row per pair (pair_text, pair_strata, pair_signals) is read by
                            # other views, queried by users, never collected into the summary

_PLACEHOLDER = re.compile(r"\$\{([a-z_]+)\}")
_HEADER = re.compile(r"^--\s*(view|requires|key):\s*(.*?)\s*$", re.MULTILINE)


class ViewError(JobError, ValueError):
    """A view file that cannot be used (bad header, unknown placeholder, unsafe setting)."""


@dataclass(frozen=True)
class View:
    name: str
    requires: tuple[str, ...]
    key: tuple[str, ...]        # the columns that make a row unique (none: one row)
    description: str
    statement: str      # with ${...} placeholders
    file: str


def load_views(cfg: Config) -> list[View]:
    """Every view file of report.sql_dir, in file-name order (a view may read those before it)."""
    views = []
    for file in resources.list_names(cfg.report.sql_dir, ".sql"):
        text = resources.read_text(cfg.report.sql_dir, file)
        header = dict(_HEADER.findall(text))
        name = header.get("view", "")
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ViewError(f"{cfg.report.sql_dir}/{file}: no '-- view: <name>' header line")
        if f"VIEW ${{db}}.{name} AS" not in text:
            raise ViewError(f"{cfg.report.sql_dir}/{file}: does not create view ${{db}}.{name}")
        requires, key = (tuple(t.strip() for t in header.get(h, "").split(",") if re.fullmatch(r"\s*\w+\s*", t))
                         for h in ("requires", "key"))
        comments = [ln[2:].strip() for ln in text.splitlines() if ln.startswith("--")]
        description = " ".join(c for c in comments if not _HEADER.match("-- " + c))
        views.append(View(name, requires, key, description, text, file))
    if not views or views[0].name != BASE_VIEW:
        raise ViewError(f"{cfg.report.sql_dir}/: the first view must be {BASE_VIEW}")
    return views


def parameters(cfg: Config) -> dict[str, object]:
    """The values the views' placeholders take."""
    r = cfg.report
    return {"db": cfg.catalog.database, "short_chars": int(r.short_chars),
            "figure_label_regex": r.figure_label_regex, "review_pairs": int(r.review_pairs),
            "preview_chars": int(r.preview_chars), "score_bin_width": float(r.score_bin_width),
            "length_bins_per_decade": int(r.length_bins_per_decade), "quality_runs": int(r.quality_runs),
            "history_runs": int(r.history_runs),
            "bootstrap_replicates": int(r.bootstrap_replicates), "bootstrap_blocks": int(r.bootstrap_blocks),
            "worst_examples": int(r.worst_examples), "boilerplate_papers": int(cfg.text.boilerplate_papers)}


def render(view: View, params: dict[str, object]) -> str:
    """The statement with its placeholders filled; an unknown placeholder or a quote in a value is refused."""
    def fill(m: re.Match) -> str:
        key = m.group(1)
        if key not in params:
            raise ViewError(f"{view.file}: unknown placeholder ${{{key}}}")
        value = str(params[key])
        if "'" in value:    # values sit inside r'...' literals or are numbers
            raise ViewError(f"report setting {key} may not hold a quote: {value!r}")
        return value
    body = "\n".join(ln for ln in view.statement.splitlines() if not ln.startswith("--"))
    return _PLACEHOLDER.sub(fill, body).strip()


@dataclass
class Views:
    created: list[View]
    unavailable: dict[str, str]     # view name -> why it was not created


def create_views(spark, cfg: Config, lake: Lake) -> Views:
    """Create (or replace) every view whose tables exist; drop the others. Idempotent."""
    params = parameters(cfg)
    db = cfg.catalog.database
    lake.register_tables(spark)
    created, unavailable = [], {}
    for view in load_views(cfg):
        missing = [t for t in view.requires if not lake.exists(t, spark)]
        if missing:
            spark.sql(f"DROP VIEW IF EXISTS {db}.{view.name}")
            unavailable[view.name] = "no {} table yet: run {}".format(
                ", ".join(missing), " and ".join(sorted({schemas.producer(t) for t in missing})))
            continue
        spark.sql(render(view, params))
        created.append(view)
    log.info("views: %d created (%s), %d unavailable (%s)", len(created), ", ".join(v.name for v in created),
             len(unavailable), ", ".join(unavailable) or "none")
    return Views(created, unavailable)


def _plain(value):
    """A JSON-ready Python value (NaN and infinities become None)."""
    if isinstance(value, Decimal):
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    return value


def _sort_key(row: dict, key: tuple[str, ...]):
    return tuple((row[c] is None, row[c] if row[c] is not None else 0) for c in key)


def collect(spark, cfg: Config, lake: Lake, views: Views | None = None) -> dict:
    """Create the views, then read every one of them (but the base) into one JSON-ready summary."""
    views = views or create_views(spark, cfg, lake)
    db = cfg.catalog.database
    summary = {"generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "lake": lake.uri, "database": db, "parameters": parameters(cfg),
               "views": {}, "unavailable": dict(views.unavailable), "seconds": {},
               "descriptions": {v.name: v.description for v in views.created}}
    del summary["parameters"]["db"]
    # A view that later views read is cached as it is read: pair_text once for every caption view,
    # pair_counts for the overview built on its totals.
    read_by_others = {v.name for v in views.created
                      if any(f"${{db}}.{v.name}" in later.statement for later in views.created if later is not v)}
    cached: list[str] = []
    try:
        for view in views.created:
            start = time.monotonic()
            if view.name in read_by_others:
                spark.sql(f"CACHE TABLE {db}.{view.name}")
                cached.append(view.name)
            if view.key != PER_PAIR:
                rows = [{k: _plain(v) for k, v in r.asDict().items()}
                        for r in spark.table(f"{db}.{view.name}").collect()]
                summary["views"][view.name] = sorted(rows, key=lambda r: _sort_key(r, view.key))   # stable diffs
            summary["seconds"][view.name] = round(time.monotonic() - start, 3)
            log.info("view %s: %s (%.1fs)", view.name, f"{len(summary['views'][view.name])} rows"
                     if view.name in summary["views"] else "one row per pair, not collected",
                     summary["seconds"][view.name])
    finally:
        for name in reversed(cached):
            spark.sql(f"UNCACHE TABLE IF EXISTS {db}.{name}")
    return summary
