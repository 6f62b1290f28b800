"""The views of sql/ and the report, on a small lake with known values: every number of every view
equals an independent pandas computation over the same rows read back; the hand-checked CLIP uplift and
variance change; plots are real PNGs; the page opens in headless Chromium and shows those numbers."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from helpers import browse, held, lake_at
from s1mmalign.lake import schemas
from s1mmalign.report import analytics
from s1mmalign.report import page as report

NOW = dt.datetime(2026, 11, 26, 12, 0, 0)
M1, M2 = "tiny-clip@sha256:aaaaaaaaaaaaaaaa", "other-clip@sha256:bbbbbbbbbbbbbbbb"
R1, R2 = "20261101T000000-run1", "20261120T000000-run2"
# pair_id: (source, discipline, run, paper, caption, recaption)
PAIRS = {
    "p01": ("arxiv", "physics", R1, "2401.00001", "Figure 1: Band structure of graphene near the K point.",
            "The figure shows the electronic band structure of graphene with Dirac cones at the K point."),
    "p02": ("arxiv", "physics", R1, "2401.00001", "Fig. 2. Phase diagram",
            "A phase diagram of temperature against pressure with three phases."),
    "p03": ("arxiv", "physics", R1, "2401.00002", None, "Spectra of three samples measured at room temperature."),
    "p04": ("arxiv", "physics", R1, "2401.00003", "   \n\t ", "Histogram of counts per energy bin."),
    "p05": ("arxiv", "physics", R1, "2401.00004", "Short", "Two panels: left shows a map, right shows a profile."),
    "p06": ("arxiv", "physics", R1, "2401.00005", "Figures of merit for all detectors in the experiment.",
            "Bar chart comparing detector figures of merit."),
    "p07": ("arxiv", "biology", R2, "2402.00001", "FIG. 3  Gene   expression\nover time",
            "Line plot of gene expression levels over time for two cell lines."),
    "p08": ("arxiv", "biology", R2, "2402.00002", "Cell counts after treatment with the drug.",
            "Box plots of cell counts."),
    "p09": ("biorxiv", "biology", R2, "10.1101/001", "Figs. S4 Western blot of lysates.",
            "Western blot image with six lanes of protein lysates."),
    "p10": ("biorxiv", "biology", R2, "10.1101/002",
            "Microscopy of tissue sections stained for collagen fibres in mice.", ""),
    "p11": ("biorxiv", "biology", R2, "10.1101/003", "Fig 7 Survival curves",
            "Kaplan-Meier survival curves for treated and control groups of patients."),
    "p12": ("biorxiv", "biology", R2, "10.1101/004", "Heat map of correlations",
            "A heat map of pairwise correlations between twenty genes."),
}
FIGURE_TYPES = {"p01": "plot", "p02": "plot", "p03": " plot ", "p04": "plot", "p05": "diagram", "p06": "diagram",
                "p07": "diagram", "p08": "diagram", "p10": "  "}     # the others have none: unknown
SHARED_IMAGE = {"p12": "p08"}       # p12's image bytes are p08's: an exact duplicate
# (pair_id, model): (score_caption, score_recaption, status); p06 has no score yet
SCORES = {
    ("p01", M1): (0.2, 0.3, "ok"), ("p02", M1): (0.3, 0.35, "ok"), ("p03", M1): (0.4, 0.4, "ok"),
    ("p04", M1): (None, None, "empty_text"), ("p05", M1): (0.25, None, "image_error"),
    ("p07", M1): (0.22, 0.31, "ok"), ("p08", M1): (0.18, 0.15, "ok"), ("p09", M1): (0.27, 0.29, "ok"),
    ("p10", M1): (0.3, None, "empty_text"), ("p11", M1): (0.21, 0.33, "ok"), ("p12", M1): (0.19, 0.26, "ok"),
    ("p01", M2): (0.5, 0.6, "ok"), ("p07", M2): (0.4, 0.45, "ok"),
}
F1, F2 = "tiny-bert@sha256:cccccccccccccccc", "other-bert@sha256:dddddddddddddddd"
# (pair_id, model): (ppl_caption, ppl_recaption, status): strata physics/plot 4 pairs (2 scored), physics/diagram
# 2 (1), biology/diagram 2 (2), biology/unknown 4 (3 scored, p12 not scored: its recaption too long)
FLUENCY = {
    ("p01", F1): (120.0, 40.0, "ok"), ("p02", F1): (300.0, 60.0, "ok"), ("p05", F1): (800.0, 90.0, "ok"),
    ("p07", F1): (150.0, 45.0, "ok"), ("p08", F1): (90.0, 70.0, "ok"), ("p09", F1): (200.0, 55.0, "ok"),
    ("p10", F1): (60.0, 80.0, "ok"), ("p11", F1): (400.0, 35.0, "ok"), ("p12", F1): (110.0, None, "recaption_too_long"),
    ("p01", F2): (50.0, 20.0, "ok"),
}
# one caption text (its key) in 3 papers: 2401.00001 twice, 2402.00001, 10.1101/001
BOILERPLATE = ("p01", "p02", "p07", "p09")
QUARANTINE = [("arxiv", "arxiv/jsonl/24_recaption.jsonl", 7, "malformed_json", R1),
              ("arxiv", "arxiv/jsonl/24_recaption.jsonl", 9, "image_missing", R1),
              ("arxiv", "arxiv/jsonl/24_recaption.jsonl", 11, "image_missing", R2),
              ("biorxiv", "biorxiv/jsonl/records.jsonl", 3, "unsafe_path", R2)]
NEAR = ["p02", "p05", "p09"]        # one near-duplicate cluster
# Two validate runs: the later one skipped the clip_scores suite, so that suite's latest verdicts are V1's.
V1, V2 = "v20261124T000000Z-aaaa", "v20261125T000000Z-bbbb"
# (run, validated_at, suite, expectation, severity, success, observed_value, element_count, unexpected_count,
#  unexpected_percent, details)
RUNS = [   # job, run id, minutes after NOW, status, exit code, counts, versions written, bytes written, detail
    ("ingest", "R1", 0, "ok", 0, {"lines": 16, "files_read_n": 3, "reexamined": 0}, '{"pairs": 1}',
     {"pairs": 4000, "images": 90000}, None),
    ("validate", V1, 5, "failed", 1, {"results_n": 3, "critical_failures_n": 2}, '{"duplicates": 0}', {}, None),
    ("ingest", "R2", 9, "stopped", 143, {}, "{}", {"pairs": 10}, "stopped by SIGTERM"),
]
QUALITY = [
    (V1, NOW - dt.timedelta(days=2), "schema_values.pairs", "recaption_present", "critical", False, "0.9",
     None, None, None, None),
    (V1, NOW - dt.timedelta(days=2), "schema_values.pairs", "unknown_discipline_share", "warning", True, "0.01",
     None, None, None, None),
    (V1, NOW - dt.timedelta(days=2), "schema_values.clip_scores", "score_caption_range", "critical", False,
     '{"unexpected_count": 1, "unexpected_percent": 8.333333333333334}', 12, 1, 8.333333333333334,
     '{"unexpected": [1.5]}'),
    (V2, NOW - dt.timedelta(days=1), "schema_values.pairs", "recaption_present", "critical", True, "0.995",
     None, None, None, None),
    (V2, NOW - dt.timedelta(days=1), "schema_values.pairs", "unknown_discipline_share", "warning", False, "0.08",
     None, None, None, '{"exception": "planted: no such column"}'),
]


def sha(pid: str) -> str:
    return (SHARED_IMAGE.get(pid, pid) * 32)[:64]


def write_table(spark, lake: str, name: str, rows: list[dict]) -> None:
    tdef = schemas.table(name)
    df = spark.createDataFrame([tuple(r.get(c) for c in tdef.names) for r in rows], schema=tdef.spark())
    held(lake).append(spark, name, df)


def text_signal_rows() -> list[dict]:
    """text_signals of PAIRS by score/text.py, with planted values the views must aggregate: a boilerplate
    caption key, a German recaption, a truncated caption, a math-heavy one."""
    from s1mmalign import config
    from s1mmalign.score import text

    cfg = config.load()
    signals = text.Signals(cfg.text, cfg.report.figure_label_regex)
    rows = []
    for pid, (_, disc, _, _, cap, recap) in sorted(PAIRS.items()):
        row = dict(pair_id=pid, discipline=disc, arxiv_id=None, row_hash=pid, version=text.VERSION,
                   **text.row(signals.pair(cap, recap)), computed_at=NOW)
        if pid in BOILERPLATE:
            row["caption_key"] = "k-boilerplate"
        rows.append(row)
    by = {r["pair_id"]: r for r in rows}
    by["p08"]["recaption_lang"] = "de"
    by["p06"].update(caption_truncated=True, caption_math_share=0.8)
    by["p11"].update(recaption_truncated=True, caption_digit_share=0.6)
    return rows


def build_lake(spark, lake: str, database: str, with_clip: bool = True, with_duplicates: bool = True) -> None:
    jobs = ("ingest",) + (("score_clip", "score_text", "score_fluency") if with_clip else ())
    for job in jobs + (("validate",) if with_duplicates else ()):
        held(lake, database=database).ensure_tables(spark, job=job)
    pairs = []
    for n, (pid, (source, disc, run, paper, cap, recap)) in enumerate(sorted(PAIRS.items()), start=1):
        pairs.append(dict(pair_id=pid, source=source, discipline=disc, paper_id=paper,
                          arxiv_id=paper if source == "arxiv" else None, image_path=f"images/x/{pid}.png",
                          caption=cap, recaption=recap, image_sha256=sha(pid), image_format="PNG", width=64,
                          height=48, image_bytes=100, image_dhash=n, image_container="tree",
                          source_file=f"{source}/jsonl/records.jsonl", source_line=n, row_hash=pid,
                          metadata_json=json.dumps({"figure_type": FIGURE_TYPES[pid]} if pid in FIGURE_TYPES else {}),
                          ingest_run_id=run, ingested_at=NOW))
    write_table(spark, lake, "pairs", pairs)
    write_table(spark, lake, "quarantine", [dict(source=s, source_file=f, source_line=ln, raw="{", reason=r,
                                                 ingest_run_id=run, ingested_at=NOW)
                                            for s, f, ln, r, run in QUARANTINE])
    if with_clip:
        write_table(spark, lake, "clip_scores", [dict(pair_id=p, discipline=PAIRS[p][1], model=m, score_caption=c,
                                                      score_recaption=r, status=st, scored_at=NOW)
                                                 for (p, m), (c, r, st) in SCORES.items()])
        write_table(spark, lake, "text_signals", text_signal_rows())
        write_table(spark, lake, "fluency_scores", [
            dict(pair_id=p, discipline=PAIRS[p][1], model=m, figure_type="x", sample="stratified", pll_caption=-1.0,
                 tokens_caption=3, ppl_caption=c, pll_recaption=None if r is None else -1.0,
                 tokens_recaption=None if r is None else 3, ppl_recaption=r, status=st, scored_at=NOW)
            for (p, m), (c, r, st) in FLUENCY.items()])
    if with_duplicates:
        dups = [("exact", sha("p08"), ["p08", "p12"]), ("near", sha("p02"), NEAR)]
        write_table(spark, lake, "duplicates", [
            dict(group_kind=kind, group_id=gid, group_pairs=len(members), group_images=1 if kind == "exact" else 3,
                 pair_id=p, source=PAIRS[p][0], discipline=PAIRS[p][1], image_path=f"images/x/{p}.png",
                 image_sha256=sha(p), image_dhash=0, distance=0, validate_run_id="v-1", computed_at=NOW)
            for kind, gid, members in dups for p in members])
        write_table(spark, lake, "quality_results", [
            dict(validate_run_id=run, validated_at=at, suite=suite, suite_group=suite.split(".")[0],
                 table_name=suite.split(".")[1], expectation=exp, expectation_type="expect_x", severity=sev,
                 success=ok, observed_value=obs, element_count=n, unexpected_count=bad, unexpected_percent=pct,
                 details=det)
            for run, at, suite, exp, sev, ok, obs, n, bad, pct, det in QUALITY])
        write_table(spark, lake, "job_runs", [
            dict(job=job, run_id=run, started_at=NOW + dt.timedelta(minutes=m),
                 ended_at=NOW + dt.timedelta(minutes=m + 2),
                 seconds=120.0, status=status, exit_code=code, counts=json.dumps(counts),
                 versions_read='{"pairs": 1}', versions_written=written, bytes_written=json.dumps(wrote),
                 settings_digest="0123456789abcdef", detail=detail)
            for job, run, m, status, code, counts, written, wrote, detail in RUNS])


@pytest.fixture(scope="module")
def known(spark, cfg, tmp_path_factory):
    """The known lake, its own catalog database, and the summary collected from its views."""
    tcfg = dataclasses.replace(cfg, catalog=dataclasses.replace(cfg.catalog, database="report_known"))
    lake = str(tmp_path_factory.mktemp("report") / "lake")
    build_lake(spark, lake, "report_known")
    return tcfg, lake, analytics.collect(spark, tcfg, lake_at(lake, tcfg))


# ------------------------------------------------------------------ the independent computation (pandas)

def grouping_sets(df: pd.DataFrame, sets: list[tuple[str, ...]], stars: tuple[str, ...], fn) -> list[dict]:
    """GROUP BY GROUPING SETS: one row per group of each set; columns of `stars` not in the set are '*'."""
    rows = []
    for keys in sets:
        groups = df.groupby(list(keys), sort=True, dropna=False) if keys else [((), df)]
        for name, g in groups:
            name = name if isinstance(name, tuple) else (name,)
            row = {k: "*" for k in stars}
            row.update(dict(zip(keys, name, strict=True)))
            row.update(fn(g))
            rows.append(row)
    return rows


def pct(values, q):
    """numpy's linear percentiles (Spark's percentile interpolates the same way)."""
    values = list(values)
    if not values:
        return None
    got = np.percentile(values, q)
    return [float(x) for x in got] if isinstance(q, list) else float(got)


def num(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def expected_views(spark, lake: str, rcfg) -> dict[str, list[dict]]:
    """Every view's rows, computed with pandas from the tables read back (not from the views)."""
    pairs = lake_at(lake).read(spark, "pairs").toPandas()
    clip = lake_at(lake).read(spark, "clip_scores").toPandas()
    quar = lake_at(lake).read(spark, "quarantine").toPandas()
    dup = lake_at(lake).read(spark, "duplicates").toPandas()
    label = re.compile(rcfg.figure_label_regex)
    t = pairs.copy()
    for f in ("caption", "recaption"):
        text = [s if isinstance(s, str) else None for s in t[f]]      # pandas reads a null string as NaN
        t[f + "_blank"] = [s is None or s.strip() == "" for s in text]
        t[f + "_chars"] = [0 if s is None else len(s) for s in text]
        t[f + "_words"] = [0 if b else len(s.split()) for s, b in zip(text, t[f + "_blank"], strict=True)]
        t[f + "_label"] = [(not b) and label.match(s) is not None for s, b in zip(text, t[f + "_blank"], strict=True)]
    out: dict[str, list[dict]] = {}
    out["overview"] = [dict(pairs=len(t), papers=t.paper_id.nunique(), images=t.image_sha256.nunique(),
                            sources=t.source.nunique(), disciplines=t.discipline.nunique(),
                            quarantined_lines=len(quar), input_lines=len(t) + len(quar),
                            quarantined_share=len(quar) / (len(t) + len(quar)),
                            latest_ingest_run_id=t.ingest_run_id.max())]
    ds = [("discipline", "source"), ("discipline",), ("source",), ()]
    out["pair_counts"] = grouping_sets(t, ds, ("discipline", "source"), lambda g: dict(
        pairs=len(g), papers=g.paper_id.nunique(), images=g.image_sha256.nunique()))
    texts = pd.concat([pd.DataFrame(dict(discipline=t.discipline, source=t.source, field=f, blank=t[f + "_blank"],
                                         chars=t[f + "_chars"], words=t[f + "_words"], label=t[f + "_label"]))
                       for f in ("caption", "recaption")], ignore_index=True)

    def lengths(g):
        present = g[~g.blank]
        cp, wp = (pct(present.chars, [5, 50, 95]) or [None] * 3), (pct(present.words, [5, 50, 95]) or [None] * 3)
        return dict(pairs=len(g), present=len(present), empty_share=g.blank.mean(),
                    empty_or_short_share=(g.blank | (g.chars < rcfg.short_chars)).mean(),
                    label_share=present.label.sum() / len(present) if len(present) else None,
                    chars_mean=present.chars.mean() if len(present) else None, chars_p5=cp[0], chars_p50=cp[1],
                    chars_p95=cp[2], words_mean=present.words.mean() if len(present) else None,
                    words_p5=wp[0], words_p50=wp[1], words_p95=wp[2])
    out["caption_lengths"] = grouping_sets(texts, [k + ("field",) for k in ds], ("discipline", "source"), lengths)
    both = t[~t.caption_blank & ~t.recaption_blank]
    out["length_ratio"] = grouping_sets(both, ds, ("discipline", "source"), lambda g: dict(
        pairs_with_both=len(g), chars_ratio=g.recaption_chars.sum() / g.caption_chars.sum(),
        words_ratio=g.recaption_words.sum() / g.caption_words.sum(),
        chars_ratio_p50=pct(g.recaption_chars / g.caption_chars, 50)))
    k = rcfg.length_bins_per_decade
    present = texts[~texts.blank].assign(bin=lambda d: np.floor(np.log10(d.words) * k).astype(int))
    out["length_histogram"] = grouping_sets(present, [("discipline", "field", "bin"), ("field", "bin")],
                                            ("discipline",), lambda g: dict(texts=len(g)))
    for r in out["length_histogram"]:
        r.update(words_lo=10 ** (r["bin"] / k), words_hi=10 ** ((r["bin"] + 1) / k))
    ok = clip[clip.score_caption.notna() & clip.score_recaption.notna()]

    def stats(g):
        s = g[g.score_caption.notna() & g.score_recaption.notna()]
        c, r = s.score_caption, s.score_recaption
        cm, rm, cv, rv = c.mean(), r.mean(), c.var(ddof=1), r.var(ddof=1)
        return dict(pairs_scored=len(s), pairs_unscored=len(g) - len(s), caption_mean=cm, caption_std=c.std(ddof=1),
                    caption_var=cv, recaption_mean=rm, recaption_std=r.std(ddof=1), recaption_var=rv,
                    uplift_pct=100 * (rm - cm) / abs(cm), variance_change_pct=100 * (rv - cv) / cv,
                    recaption_higher_share=(r > c).mean())
    out["clip_stats"] = grouping_sets(clip, [("model", "discipline"), ("model",)], ("discipline",), stats)
    w = rcfg.score_bin_width
    scores = pd.concat([pd.DataFrame(dict(model=ok.model, discipline=ok.discipline, field=f,
                                          bin=np.floor(ok["score_" + f] / w).astype(int)))
                        for f in ("caption", "recaption")], ignore_index=True)
    out["clip_histogram"] = grouping_sets(scores, [("model", "discipline", "field", "bin"), ("model", "field", "bin")],
                                          ("discipline",), lambda g: dict(pairs=len(g)))
    for r in out["clip_histogram"]:
        r.update(score_lo=r["bin"] * w, score_hi=(r["bin"] + 1) * w)
    lowest = []
    by_id = pairs.set_index("pair_id")
    def cut(s):
        return s[:rcfg.preview_chars] if isinstance(s, str) else None

    best = ok.assign(best=np.maximum(ok.score_caption, ok.score_recaption))
    for (model, disc), g in best.groupby(["model", "discipline"]):
        for rank, r in enumerate(g.sort_values(["best", "pair_id"]).head(rcfg.review_pairs).itertuples(), start=1):
            p = by_id.loc[r.pair_id]
            lowest.append(dict(model=model, discipline=disc, rank=rank, pair_id=r.pair_id, source=p.source,
                               paper_id=p.paper_id, image_path=p.image_path, score_caption=r.score_caption,
                               score_recaption=r.score_recaption, best_score=r.best, caption=cut(p.caption),
                               recaption=cut(p.recaption)))
    out["clip_lowest"] = lowest
    kinds = dup.groupby("pair_id").group_kind.agg(set)
    t["exact"] = t.pair_id.map(lambda p: int("exact" in kinds.get(p, set())))
    t["near"] = t.pair_id.map(lambda p: int("near" in kinds.get(p, set())))
    out["duplicate_rates"] = grouping_sets(t, [("source",), ("ingest_run_id",), ()], ("source", "ingest_run_id"),
                                           lambda g: dict(pairs=len(g), exact_duplicate_pairs=g.exact.sum(),
                                                          exact_duplicate_share=g.exact.mean(),
                                                          near_duplicate_pairs=g.near.sum(),
                                                          near_duplicate_share=g.near.mean(),
                                                          validate_run_id=dup.validate_run_id.max()))
    lines = pd.concat([t[["source", "ingest_run_id"]], quar[["source", "ingest_run_id"]]])
    rs = [("source",), ("ingest_run_id",), ()]
    inputs = {(r["source"], r["ingest_run_id"]): r["n"] for r in
              grouping_sets(lines, rs, ("source", "ingest_run_id"), lambda g: dict(n=len(g)))}
    out["quarantine_reasons"] = grouping_sets(quar, [k + ("reason",) for k in rs], ("source", "ingest_run_id"),
                                              lambda g: dict(lines=len(g)))
    for r in out["quarantine_reasons"]:
        r["input_lines"] = inputs[(r["source"], r["ingest_run_id"])]
        r["share"] = r["lines"] / r["input_lines"]
    qr = lake_at(lake).read(spark, "quality_results").toPandas()
    latest = qr[qr.validated_at == qr.groupby("suite").validated_at.transform("max")]
    out["quality_latest"] = [
        dict(suite=r.suite, expectation=r.expectation, suite_group=r.suite_group, table_name=r.table_name,
             expectation_type=r.expectation_type, severity=r.severity, success=bool(r.success),
             observed_value=r.observed_value, element_count=num(r.element_count),
             unexpected_count=num(r.unexpected_count),
             unexpected_share=None if num(r.unexpected_percent) is None else r.unexpected_percent / 100,
             sample_values=r.details, validate_run_id=r.validate_run_id, validated_at=r.validated_at.isoformat())
        for r in latest.itertuples()]
    for r in out["quality_latest"]:     # pandas holds a missing count as NaN (a float)
        for col in ("element_count", "unexpected_count"):
            r[col] = None if r[col] is None else int(r[col])
    trend = []
    for run, g in qr.groupby("validate_run_id"):
        failed = g[~g.success]
        trend.append(dict(validate_run_id=run, validated_at=g.validated_at.max().isoformat(), expectations=len(g),
                          failed_critical=int((failed.severity == "critical").sum()),
                          failed_warning=int((failed.severity == "warning").sum()),
                          failed=", ".join(sorted(failed.suite + ":" + failed.expectation))))
    trend.sort(key=lambda r: r["validated_at"], reverse=True)
    out["quality_trend"] = trend[:rcfg.quality_runs]
    runs = lake_at(lake).read(spark, "job_runs").toPandas().sort_values(["started_at", "job", "run_id"],
                                                                         ascending=[False, True, True])
    out["refresh_history"] = [
        dict(job=r.job, run_id=r.run_id, started_at=r.started_at.isoformat(), ended_at=r.ended_at.isoformat(),
             seconds=r.seconds, status=r.status, exit_code=r.exit_code,
             files_read=json.loads(r.counts).get("files_read_n"), lines=json.loads(r.counts).get("lines"),
             lines_reexamined=json.loads(r.counts).get("reexamined"),
             bytes_written=sum(json.loads(r.bytes_written).values()), versions_written=r.versions_written,
             settings_digest=r.settings_digest, detail=r.detail)
        for r in runs.head(rcfg.history_runs).itertuples()]
    out.update(expected_card_views(spark, lake, rcfg, pairs, clip))
    return out


def poisson(u: float) -> int:
    """Poisson(1) by inverting its distribution function at u (as the views do)."""
    k, cum = 0, math.exp(-1)
    while u >= cum and k < 8:
        k += 1
        cum += math.exp(-1) / math.factorial(k)
    return k


def uniforms(spark, keys: list, reps: int, key_type: str) -> dict[tuple, float]:
    """(key, rep) -> the uniform draw the views take from Spark's xxhash64 (only the hash function is Spark's)."""
    rows = spark.sql(
        f"SELECT k, rep, (xxhash64(CAST(k AS {key_type}), rep) & 9007199254740991) / 9007199254740992.0D AS u "
        f"FROM (SELECT explode(array({', '.join(repr(k) for k in keys)})) AS k) "
        f"CROSS JOIN (SELECT explode(sequence(1, {reps})) AS rep)").collect()
    return {(r.k if key_type == "STRING" else int(r.k), r.rep): r.u for r in rows}


def lower_median(values, weights) -> float | None:
    order = sorted(zip(values, weights, range(len(values)), strict=True), key=lambda x: (x[0], x[2]))
    total, cum = sum(w for _, w, _ in order), 0.0
    for v, w, _ in order:
        cum += w
        if w > 0 and cum >= total / 2:
            return v
    return None


def expected_card_views(spark, lake: str, rcfg, pairs, clip) -> dict[str, list[dict]]:
    """The caption card's views with pandas and numpy, from the tables read back."""
    out = {}
    B = rcfg.bootstrap_replicates
    meta = [json.loads(m) if isinstance(m, str) else {} for m in pairs.metadata_json]
    ft = [(m.get("figure_type") or "").strip() or "unknown" for m in meta]
    strata = pairs.assign(figure_type=ft)[["pair_id", "discipline", "figure_type", "paper_id"]]
    strata["stratum_pairs"] = strata.groupby(["discipline", "figure_type"]).pair_id.transform("size")
    levels = [("discipline",), ("figure_type",), ()]
    # text signals
    ts = lake_at(lake).read(spark, "text_signals").toPandas().drop(columns=["discipline"]).merge(strata, on="pair_id")
    papers = ts.dropna(subset=["caption_key"]).groupby("caption_key").paper_id.nunique()
    ts["caption_key_papers"] = ts.caption_key.map(papers)
    ts["boilerplate"] = ts.caption_key_papers.fillna(0) >= 3
    for f in ("caption", "recaption"):
        ts[f + "_non_english"] = ts[f + "_lang"].notna() & (ts[f + "_lang"] != "en")
    fields = ("caption", "recaption")
    out["text_signal_rates"] = grouping_sets(ts, levels, ("discipline", "figure_type"), lambda g: dict(
        pairs=len(g), boilerplate_share=g.boilerplate.mean(), identical_share=g.identical.mean(),
        recaption_repeats_share=g.recaption_repeats.mean(), caption_figure_prefix_share=g.caption_figure_prefix.mean(),
        **{f"{f}_truncated_share": g[f + "_truncated"].mean() for f in fields},
        **{f"{f}_non_english_share": g[f + "_non_english"].mean() for f in fields},
        **{f"{f}_{m}_mean": g[f"{f}_{m}"].mean() for f in fields
           for m in ("math_share", "digit_share", "units", "sentences", "words")}))
    by_id = pairs.set_index("pair_id")
    flags = {"boilerplate": (ts.boilerplate, ts.caption_key_papers), "math_heavy": (ts.caption_math_share > 0.5,
             ts.caption_math_share), "digit_heavy": (ts.caption_digit_share > 0.5, ts.caption_digit_share),
             "caption_truncated": (ts.caption_truncated, ts.caption_chars),
             "recaption_truncated": (ts.recaption_truncated, ts.caption_chars),
             "non_english": (ts.caption_non_english | ts.recaption_non_english, ts.caption_chars),
             "identical": (ts.identical, ts.caption_chars),
             "recaption_repeats": (ts.recaption_repeats, ts.caption_chars)}
    worst = []
    for signal, (mask, value) in flags.items():
        chosen = ts.assign(value=value.astype(float))[mask].sort_values(["value", "pair_id"], ascending=[False, True])
        for rank, r in enumerate(chosen.head(rcfg.worst_examples).itertuples(), start=1):
            p = by_id.loc[r.pair_id]
            worst.append(dict(signal=signal, rank=rank, pair_id=r.pair_id, discipline=p.discipline,
                              paper_id=p.paper_id, value=r.value,
                              caption=p.caption[:rcfg.preview_chars] if isinstance(p.caption, str) else None,
                              recaption=p.recaption[:rcfg.preview_chars] if isinstance(p.recaption, str) else None))
    out["text_signal_worst"] = worst
    # CLIP: block sums resampled with Poisson weights
    ok = clip[clip.score_caption.notna() & clip.score_recaption.notna()].drop(columns=["discipline"]).merge(
        strata, on="pair_id")
    blocks_of = {r.pair_id: r.b for r in spark.sql(
        f"SELECT pair_id, pmod(xxhash64(pair_id), {rcfg.bootstrap_blocks}) AS b FROM (SELECT explode(array("
        + ", ".join(repr(p) for p in sorted(set(ok.pair_id))) + ")) AS pair_id)").collect()}
    ok["block"] = ok.pair_id.map(blocks_of)
    u = uniforms(spark, sorted(set(ok.block)), B, "BIGINT")

    def clip_stats(c, r, w):
        n = w.sum()
        if n <= 0:
            return None
        cm, rm = (w * c).sum() / n, (w * r).sum() / n
        cv = ((w * c * c).sum() - (w * c).sum() ** 2 / n) / (n - 1) if n > 1 else None
        rv = ((w * r * r).sum() - (w * r).sum() ** 2 / n) / (n - 1) if n > 1 else None
        cv, rv = (None if v is None else max(v, 0.0) for v in (cv, rv))
        return dict(n=n, cm=cm, rm=rm, uplift=100 * (rm - cm) / abs(cm) if cm else None,
                    vchange=None if cv is None or rv is None or cv == 0 else 100 * (rv - cv) / cv)

    def ci(reps, key):
        values = [s[key] for s in reps if s is not None and s[key] is not None]
        return pct(values, [2.5, 97.5]) or [None, None]

    def card(g):
        c, r = g.score_caption.to_numpy(), g.score_recaption.to_numpy()
        point = clip_stats(c, r, np.ones(len(g)))
        reps = [clip_stats(c, r, np.array([poisson(u[(b, k)]) for b in g.block], dtype=float))
                for k in range(1, B + 1)]
        vlo, vhi = ci(reps, "vchange")
        return dict(n=len(g), caption_mean=point["cm"], recaption_mean=point["rm"], uplift_pct=point["uplift"],
                    variance_change_pct=point["vchange"],
                    **dict(zip(("caption_mean_lo", "caption_mean_hi"), ci(reps, "cm"), strict=True)),
                    **dict(zip(("recaption_mean_lo", "recaption_mean_hi"), ci(reps, "rm"), strict=True)),
                    **dict(zip(("uplift_pct_lo", "uplift_pct_hi"), ci(reps, "uplift"), strict=True)),
                    variance_change_pct_lo=None if point["vchange"] is None else vlo,
                    variance_change_pct_hi=None if point["vchange"] is None else vhi)
    out["clip_card"] = grouping_sets(ok, [("model",) + k for k in levels], ("discipline", "figure_type"), card)
    # fluency: pairs resampled with Poisson weights, each weighing its stratum over its stratum's scored pairs
    fl = lake_at(lake).read(spark, "fluency_scores").toPandas().drop(columns=["discipline", "figure_type"])
    fl = fl[fl.ppl_caption.notna() & fl.ppl_recaption.notna()].merge(strata, on="pair_id")
    fl["sw"] = fl.stratum_pairs / fl.groupby(["model", "discipline", "figure_type"]).pair_id.transform("size")
    uf = uniforms(spark, sorted(set(fl.pair_id)), B, "STRING")

    def medians(g, w):
        mc, mr = lower_median(list(g.ppl_caption), list(w)), lower_median(list(g.ppl_recaption), list(w))
        return dict(mc=mc, mr=mr, change=None if mc is None or mr is None else 100 * (mr - mc) / mc)

    def fcard(g):
        point = medians(g, g.sw)
        reps = [medians(g, g.sw * [poisson(uf[(p, k)]) for p in g.pair_id]) for k in range(1, B + 1)]
        return dict(n=len(g), ppl_caption_median=point["mc"], ppl_recaption_median=point["mr"],
                    ppl_change_pct=point["change"],
                    **dict(zip(("ppl_caption_median_lo", "ppl_caption_median_hi"), ci(reps, "mc"), strict=True)),
                    **dict(zip(("ppl_recaption_median_lo", "ppl_recaption_median_hi"), ci(reps, "mr"), strict=True)),
                    **dict(zip(("ppl_change_pct_lo", "ppl_change_pct_hi"), ci(reps, "change"), strict=True)))
    out["fluency_card"] = grouping_sets(fl, [("model",) + k for k in levels], ("discipline", "figure_type"), fcard)
    # the card: the most-scoring models' rows beside the rates
    cm = max((r for r in out["clip_card"] if r["discipline"] == r["figure_type"] == "*"),
             key=lambda r: (r["n"], [-ord(ch) for ch in r["model"]]))["model"]
    fm = max((r for r in out["fluency_card"] if r["discipline"] == r["figure_type"] == "*"),
             key=lambda r: (r["n"], [-ord(ch) for ch in r["model"]]))["model"]
    cc = {(r["discipline"], r["figure_type"]): r for r in out["clip_card"] if r["model"] == cm}
    fc = {(r["discipline"], r["figure_type"]): r for r in out["fluency_card"] if r["model"] == fm}
    rows = []
    for t in out["text_signal_rates"]:
        c, f = cc.get((t["discipline"], t["figure_type"]), {}), fc.get((t["discipline"], t["figure_type"]), {})
        rows.append(dict(
            discipline=t["discipline"], figure_type=t["figure_type"], pairs=t["pairs"],
            clip_model=c.get("model"), clip_n=c.get("n"), clip_caption_mean=c.get("caption_mean"),
            clip_recaption_mean=c.get("recaption_mean"),
            **{f"clip_{k}": c.get(k) for k in ("uplift_pct", "uplift_pct_lo", "uplift_pct_hi", "variance_change_pct",
                                                "variance_change_pct_lo", "variance_change_pct_hi")},
            fluency_model=f.get("model"), fluency_n=f.get("n"),
            **{k: f.get(k) for k in ("ppl_caption_median", "ppl_recaption_median", "ppl_change_pct",
                                     "ppl_change_pct_lo", "ppl_change_pct_hi")},
            **{k: t[k] for k in ("caption_truncated_share", "recaption_truncated_share", "caption_non_english_share",
                                 "recaption_non_english_share", "boilerplate_share", "identical_share",
                                 "recaption_repeats_share", "caption_math_share_mean", "recaption_math_share_mean")}))
    out["caption_card"] = rows
    return out


VIEWS = ["overview", "pair_counts", "caption_lengths", "length_ratio", "length_histogram", "clip_stats",
         "clip_histogram", "clip_lowest", "duplicate_rates", "quarantine_reasons", "quality_latest", "quality_trend",
         "text_signal_rates", "text_signal_worst", "clip_card", "fluency_card", "caption_card", "refresh_history"]


def assert_rows_equal(view: str, key: tuple[str, ...], got: list[dict], want: list[dict]) -> None:
    got_by = {tuple(r[k] for k in key): r for r in got}
    want_by = {tuple(r[k] for k in key): r for r in want}
    assert len(got_by) == len(got), f"{view}: duplicate keys"
    assert sorted(got_by) == sorted(want_by), view
    for k, w in want_by.items():
        g = got_by[k]
        assert set(g) == set(w), (view, k, set(g) ^ set(w))
        for col, wv in w.items():
            gv, wv = num(g[col]), num(wv.item() if hasattr(wv, "item") else wv)
            if isinstance(wv, float) or isinstance(gv, float):
                assert gv is not None and wv is not None and gv == pytest.approx(wv, rel=1e-9, abs=1e-12) \
                    or gv is None and wv is None, (view, k, col, gv, wv)
            else:
                assert gv == wv, (view, k, col, gv, wv)


def test_every_view_equals_pandas_over_the_same_rows(spark, known):
    tcfg, lake, summary = known
    want = expected_views(spark, lake, tcfg.report)
    keys = {v.name: v.key for v in analytics.load_views(tcfg)}
    assert summary["unavailable"] == {}
    assert sorted(summary["views"]) == sorted(VIEWS)
    for view in VIEWS:
        assert summary["views"][view], view
        assert_rows_equal(view, keys[view], summary["views"][view], want[view])


def test_known_values_by_hand(known):
    _, _, summary = known
    v = summary["views"]
    stats = {(r["model"], r["discipline"]): r for r in v["clip_stats"]}
    phys = stats[(M1, "physics")]       # captions .2 .3 .4, recaptions .3 .35 .4 (p04, p05 unscored)
    assert (phys["pairs_scored"], phys["pairs_unscored"]) == (3, 2)
    assert phys["uplift_pct"] == pytest.approx(100 * (0.35 - 0.3) / 0.3)          # +16.67%
    assert phys["variance_change_pct"] == pytest.approx(-75.0)                     # .01 -> .0025
    assert phys["recaption_higher_share"] == pytest.approx(2 / 3)
    one = stats[(M2, "physics")]        # one pair: no sample variance, so no variance change either
    assert one["pairs_scored"] == 1 and one["caption_var"] is None and one["variance_change_pct"] is None
    lengths = {(r["discipline"], r["source"], r["field"]): r for r in v["caption_lengths"]}
    cap = lengths[("*", "*", "caption")]
    assert (cap["pairs"], cap["present"]) == (12, 10)                   # p03 null, p04 whitespace
    assert cap["empty_share"] == pytest.approx(2 / 12)
    assert cap["empty_or_short_share"] == pytest.approx(3 / 12)         # + "Short"
    assert cap["label_share"] == pytest.approx(5 / 10)                  # Figure 1:, Fig. 2., FIG. 3, Figs. S4, Fig 7
    bio = lengths[("biology", "*", "caption")]     # words 4 4 6 6 7 10: linear percentiles
    assert (bio["words_p5"], bio["words_p50"], bio["words_p95"]) == pytest.approx((4.0, 6.0, 9.25))
    ov = v["overview"][0]
    assert (ov["pairs"], ov["papers"], ov["images"], ov["quarantined_lines"]) == (12, 11, 11, 4)
    assert ov["quarantined_share"] == pytest.approx(4 / 16)
    dup = {(r["source"], r["ingest_run_id"]): r for r in v["duplicate_rates"]}
    assert (dup[("*", "*")]["exact_duplicate_pairs"], dup[("*", "*")]["near_duplicate_pairs"]) == (2, 3)
    assert dup[("biorxiv", "*")]["exact_duplicate_share"] == pytest.approx(1 / 4)
    q = {(r["source"], r["ingest_run_id"], r["reason"]): r for r in v["quarantine_reasons"]}
    assert q[("*", "*", "image_missing")]["lines"] == 2
    assert q[("biorxiv", "*", "unsafe_path")]["share"] == pytest.approx(1 / 5)
    assert q[("*", R2, "image_missing")]["share"] == pytest.approx(1 / 8)     # run 2: 6 pairs + 2 lines
    latest = {(r["suite"], r["expectation"]): r for r in v["quality_latest"]}
    assert sorted((k, r["validate_run_id"], r["success"]) for k, r in latest.items()) == [
        (("schema_values.clip_scores", "score_caption_range"), V1, False),    # skipped by V2: V1's verdict
        (("schema_values.pairs", "recaption_present"), V2, True),
        (("schema_values.pairs", "unknown_discipline_share"), V2, False)]
    assert latest[("schema_values.clip_scores", "score_caption_range")]["unexpected_share"] == pytest.approx(1 / 12)
    assert [(r["validate_run_id"], r["expectations"], r["failed_critical"], r["failed_warning"], r["failed"])
            for r in v["quality_trend"]] == [     # in key order here; the page shows the newest first
        (V1, 3, 2, 0, "schema_values.clip_scores:score_caption_range, schema_values.pairs:recaption_present"),
        (V2, 2, 0, 1, "schema_values.pairs:unknown_discipline_share")]
    assert [(r["job"], r["run_id"], r["status"], r["files_read"], r["lines"], r["bytes_written"])
            for r in v["refresh_history"]] == [("ingest", "R1", "ok", 3, 16, 94000),   # key order; the page:
                                               ("ingest", "R2", "stopped", None, None, 10),   # newest first
                                               ("validate", V1, "failed", None, None, 0)]
    # the card: CLIP point figures are clip_stats' own; fluency's medians weigh each stratum by its size
    card = {(r["model"], r["discipline"], r["figure_type"]): r for r in v["clip_card"]}
    assert card[(M1, "physics", "*")]["uplift_pct"] == pytest.approx(phys["uplift_pct"])
    assert card[(M1, "physics", "*")]["variance_change_pct"] == pytest.approx(-75.0)
    assert card[(M1, "*", "plot")]["n"] == 3 and card[(M1, "*", "unknown")]["n"] == 3    # p01-p03; p09, p11, p12
    fl = {(r["model"], r["discipline"], r["figure_type"]): r for r in v["fluency_card"]}
    overall = fl[(F1, "*", "*")]      # weights 2 (physics/plot), 2 (physics/diagram), 1 (biology/diagram), 4/3
    assert overall["n"] == 8 and (overall["ppl_caption_median"], overall["ppl_recaption_median"]) == (200.0, 60.0)
    assert overall["ppl_change_pct"] == pytest.approx(-70.0)      # unweighted, the lower medians are 150 and 55
    for r in [*v["clip_card"], *v["fluency_card"]]:
        for k in ("uplift_pct", "ppl_change_pct", "caption_mean", "ppl_caption_median"):
            if r.get(k) is not None and r["n"] > 2:
                assert r[k + "_lo"] <= r[k] <= r[k + "_hi"] and r[k + "_lo"] < r[k + "_hi"], (r, k)
    rates = {(r["discipline"], r["figure_type"]): r for r in v["text_signal_rates"]}
    assert rates[("*", "*")]["boilerplate_share"] == pytest.approx(4 / 12)
    assert rates[("biology", "*")]["recaption_non_english_share"] == pytest.approx(1 / 6)
    worst = [(r["signal"], r["pair_id"]) for r in v["text_signal_worst"]]
    assert ("math_heavy", "p06") in worst and ("digit_heavy", "p11") in worst
    assert [p for s, p in worst if s == "boilerplate"] == ["p01", "p02", "p07", "p09"]
    cc = {(r["discipline"], r["figure_type"]): r for r in v["caption_card"]}
    assert cc[("*", "*")]["clip_model"] == M1 and cc[("*", "*")]["fluency_model"] == F1
    low = [r for r in v["clip_lowest"] if r["model"] == M1 and r["discipline"] == "biology"]
    assert [r["pair_id"] for r in low] == ["p08", "p12", "p09", "p07", "p11"]    # best .18 .26 .29 .31 .33


def test_views_are_in_the_catalog(spark, known):
    tcfg, _, summary = known
    names = {t.name for t in spark.catalog.listTables("report_known") if t.tableType == "VIEW"}
    assert names == set(summary["views"]) | {analytics.BASE_VIEW, "pair_strata", "pair_signals"}
    # the same numbers straight from SQL
    row = spark.sql("SELECT uplift_pct FROM report_known.clip_stats WHERE discipline = 'physics' "
                    f"AND model = '{M1}'").first()
    assert row.uplift_pct == pytest.approx(100 * 0.05 / 0.3)


def png_ok(data: bytes) -> None:
    from PIL import Image, ImageStat

    img = Image.open(io.BytesIO(data))
    img.load()
    assert img.format == "PNG" and img.width > 300 and img.height > 150
    assert max(ImageStat.Stat(img.convert("L")).stddev) > 10, "a blank picture"


@pytest.fixture(scope="module")
def written(known, tmp_path_factory):
    _, _, summary = known
    out = tmp_path_factory.mktemp("report-out")
    return out, report.write(str(out), summary)


def test_report_files_and_plots(known, written):
    _, _, summary = known
    out, files = written
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["views"] == json.loads(json.dumps(summary["views"]))
    assert files["plots"] == on_disk["plots"] == sorted(
        ["pairs.png", "lengths.png", "quarantine.png", "clip_tiny-clip-sha256-aaaaaaaaaaaaaaaa.png",
         "clip_other-clip-sha256-bbbbbbbbbbbbbbbb.png"])
    for name in files["plots"]:
        png_ok((out / name).read_bytes())
    page = (out / "report.html").read_text()
    assert page.count('<img class="plot"') == len(files["plots"])
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "the page loads something from elsewhere"


def cells(dom: str, table_id: str, key: str) -> list[str]:
    table = re.search(rf'<table id="{re.escape(table_id)}">(.*?)</table>', dom, re.S)
    assert table, table_id
    return re.findall(rf'<td data-key="{key}"[^>]*>(.*?)</td>', table.group(1), re.S)


def test_page_opens_in_headless_chromium_and_shows_the_numbers(known, written, tmp_path):
    _, _, summary = known
    out, files = written
    asked: list[str] = []
    dom = browse(out / "report.html", tmp_path, asked)
    body = re.search(r"<body([^>]*)>", dom).group(1)
    n = len(files["plots"])
    assert f'data-images="{n}"' in body and f'data-images-decoded="{n}"' in body, body
    ov = summary["views"]["overview"][0]
    kpi = dict(re.findall(r'<div data-key="(\w+)"><b>(.*?)</b>', dom))
    assert kpi["pairs"] == "12" and kpi["quarantined_lines"] == "4"
    assert kpi["quarantined_share"] == f"{100 * ov['quarantined_share']:.2f}%" == "25.00%"
    # the CLIP table of the first model: one row per discipline and one for all, uplift and variance change
    stats = [r for r in summary["views"]["clip_stats"] if r["model"] == M1]
    tid = "clip_stats_tiny-clip-sha256-aaaaaaaaaaaaaaaa"
    assert cells(dom, tid, "discipline") == ["all" if r["discipline"] == "*" else r["discipline"] for r in stats]
    assert cells(dom, tid, "uplift_pct") == [f"{r['uplift_pct']:+.2f}%" for r in stats]
    assert f"{100 * 0.05 / 0.3:+.2f}%" in cells(dom, tid, "uplift_pct")
    assert "-75.00%" in cells(dom, tid, "variance_change_pct")
    reasons = summary["views"]["quarantine_reasons"]
    assert cells(dom, "quarantine_reasons", "lines") == [str(r["lines"]) for r in reasons]
    # validation: the failed expectations (critical first), their observed and unexpected values; the trend
    assert cells(dom, "quality_failed", "expectation") == ["score_caption_range", "unknown_discipline_share"]
    assert cells(dom, "quality_failed", "observed") == [
        '{"unexpected_count": 1, "unexpected_percent": 8.333333333333334}', "0.0800"]
    assert cells(dom, "quality_failed", "unexpected_share") == ["8.33%", "n/a"]
    assert cells(dom, "quality_failed", "samples") == ["1.5", "raised: planted: no such column"]
    assert cells(dom, "quality_latest", "result") == ["FAILED", "passed", "FAILED"]
    assert cells(dom, "quality_trend", "failed_critical") == ["0", "2"]
    assert cells(dom, "refresh_history", "run_id") == ["R2", V1, "R1"]      # newest first
    assert re.search(r"<b>3</b> expectations, <b>2</b> failed \(1 critical, 1 warning\)", dom)
    assert [u for u in asked if not u.startswith(("file:", "data:"))] == [], asked
    assert "No CLIP scores" not in dom
    # the card: overall first, each figure with its interval, the method under the table
    card = {(r["discipline"], r["figure_type"]): r for r in summary["views"]["caption_card"]}
    groups = cells(dom, "caption_card", "group")
    assert groups[0] == "all pairs" and len(groups) == len(card)
    assert groups[1:3] == ["discipline biology", "discipline physics"] and "figure type unknown" in groups
    top = card[("*", "*")]
    assert cells(dom, "caption_card", "ppl")[0] == (f"{top['ppl_change_pct']:+.2f}% [{top['ppl_change_pct_lo']:+.2f}%, "
                                                    f"{top['ppl_change_pct_hi']:+.2f}%]") == cells(dom, "caption_card",
                                                                                                  "ppl")[0]
    assert cells(dom, "caption_card", "ppl")[0].startswith("-70.00% [")
    assert cells(dom, "caption_card", "boilerplate_share")[0] == "33.33%"
    assert "Poisson bootstrap replicates" in dom and f"over {summary['parameters']['bootstrap_replicates']} " in dom
    assert "p06" in cells(dom, "text_signal_worst", "pair_id")


def test_without_clip_scores_the_page_says_so(spark, cfg, tmp_path):
    tcfg = dataclasses.replace(cfg, catalog=dataclasses.replace(cfg.catalog, database="report_noclip"))
    lake = str(tmp_path / "lake")
    build_lake(spark, lake, "report_noclip", with_clip=False, with_duplicates=False)
    spark.sql("CREATE OR REPLACE VIEW report_noclip.clip_stats AS SELECT 1 AS stale")   # left by an older run
    summary = analytics.collect(spark, tcfg, lake_at(lake, tcfg))
    assert set(summary["unavailable"]) == {"clip_stats", "clip_histogram", "clip_lowest", "duplicate_rates",
                                           "quality_latest", "quality_trend", "pair_signals", "text_signal_rates",
                                           "text_signal_worst", "clip_card", "fluency_card", "caption_card"}
    assert "run jobs/score_clip.py" in summary["unavailable"]["clip_stats"]
    assert summary["unavailable"]["caption_card"] == (
        "no clip_scores, fluency_scores, text_signals table yet: run jobs/score_clip.py and jobs/score_fluency.py and "
        "jobs/score_text.py")
    assert "run jobs/validate.py" in summary["unavailable"]["duplicate_rates"]
    assert not spark.catalog.tableExists("report_noclip.clip_stats"), "a stale view was left in the catalog"
    files = report.write(str(tmp_path / "out"), summary)
    assert files["plots"] == ["lengths.png", "pairs.png", "quarantine.png"]
    page = (tmp_path / "out" / "report.html").read_text()
    assert ('<p class="note" id="note-clip_stats">No CLIP scores in this lake: no clip_scores table yet: '
            'run jobs/score_clip.py.</p>') in page
    assert "No duplicate analysis" in page and "clip_" not in " ".join(files["plots"])
    assert ('<p class="note" id="note-caption_card">No caption quality measures (CLIP, fluency or text signals): no '
            'clip_scores, fluency_scores, text_signals table yet') in page
    assert "No validation results: no quality_results table yet: run jobs/validate.py." in page


def test_view_files_are_checked(cfg):
    views = analytics.load_views(cfg)
    assert views[0].name == analytics.BASE_VIEW and len({v.name for v in views}) == len(views)
    params = analytics.parameters(cfg)
    for view in views:
        text = analytics.render(view, params)
        assert "${" not in text and text.startswith(f"CREATE OR REPLACE VIEW {cfg.catalog.database}.{view.name} AS")
    bad = dataclasses.replace(views[1], statement=views[1].statement + " ${nope}")
    with pytest.raises(analytics.ViewError, match="unknown placeholder"):
        analytics.render(bad, params)
    with pytest.raises(analytics.ViewError, match="may not hold a quote"):
        analytics.render(views[0], {**params, "figure_label_regex": "x' OR '1"})


def test_an_empty_lake_gives_a_page_that_says_so():
    summary = {"views": {name: [] for name in VIEWS}, "unavailable": {}, "lake": "/lake", "database": "s1mmalign",
               "generated_at": "2026-11-26T00:00:00+00:00", "parameters": {"short_chars": 20}}
    assert report.make_plots(summary) == {}
    page = report.render_html(summary, {})
    assert "No pairs in this lake yet" in page and "No CLIP scores in this lake: its table has no rows yet" in page
    assert "No duplicate analysis" in page and "No quarantined lines" in page and "<img" not in page
