"""The caption-quality report: PNG plots and one self-contained HTML page, made from a summary.

Everything here reads the summary that analytics.collect returns (no Spark), so the page shows exactly
the numbers that summary.json holds. Plots are embedded as data: URIs; the page loads nothing else.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
from collections import defaultdict
from pathlib import Path

from s1mmalign.lake import storage
from s1mmalign.lake.storage import remote

CAPTION, RECAPTION = "#d95f02", "#1b9e77"     # one colour per field on every plot
FIELD_LABEL = {"caption": "raw caption", "recaption": "recaption (AI)"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def _grid(n: int):
    cols = min(n, 4)
    return (n + cols - 1) // cols, cols


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:60] or "model"


def clip_plot_name(model: str) -> str:
    """The file (and page) name of a CLIP model's score plot."""
    return f"clip_{_slug(model)}.png"


# ---------------------------------------------------------------------------------------------- plots

def plot_histograms(rows: list[dict], *, x_lo: str, x_hi: str, count: str, title: str, xlabel: str,
                    log_x: bool = False) -> bytes:
    """Small multiples, one panel per discipline ('*' first, as "all"), caption against recaption as
    shares of that panel's texts, on one x and one y scale."""
    plt = _pyplot()
    by_disc: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by_disc[r["discipline"]][r["field"]].append(r)
    discs = sorted(by_disc, key=lambda d: (d != "*", d))
    nrows, ncols = _grid(len(discs))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.4 * nrows), sharex=True, sharey=True,
                             squeeze=False)
    for ax, disc in zip(axes.flat, discs, strict=False):   # the grid may have a spare panel
        for field, colour in (("caption", CAPTION), ("recaption", RECAPTION)):
            bins = sorted(by_disc[disc][field], key=lambda r: r[x_lo])
            total = sum(r[count] for r in bins)
            if not total:
                continue
            edges = [b[x_lo] for b in bins]
            ax.bar(edges, [b[count] / total for b in bins], width=[b[x_hi] - b[x_lo] for b in bins],
                   align="edge", alpha=0.55, color=colour, label=FIELD_LABEL[field])
        ax.set_title("all disciplines" if disc == "*" else disc.replace("_", " "), fontsize=9)
        if log_x:
            from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(discs):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=11)
    fig.supxlabel(xlabel, fontsize=9)
    fig.supylabel("share of texts", fontsize=9)
    return _png(fig)


def plot_stacked_bars(rows: list[dict], *, category: str, stack: str, value: str, title: str,
                      xlabel: str) -> bytes:
    """Horizontal bars per category, stacked by `stack` (e.g. pairs per discipline by source)."""
    plt = _pyplot()
    cats = sorted({r[category] for r in rows})
    stacks = sorted({r[stack] for r in rows})
    fig, ax = plt.subplots(figsize=(7.5, 0.35 * len(cats) + 1.4))
    left = [0] * len(cats)
    for s in stacks:
        vals = [sum(r[value] for r in rows if r[category] == c and r[stack] == s) for c in cats]
        ax.barh(cats, vals, left=left, label=s)
        left = [a + b for a, b in zip(left, vals, strict=True)]
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.legend(fontsize=8, title=stack, title_fontsize=8)
    return _png(fig)


def make_plots(summary: dict) -> dict[str, bytes]:
    """Every plot the summary has data for, by file name."""
    views = summary["views"]
    plots: dict[str, bytes] = {}
    counts = [r for r in views.get("pair_counts", []) if r["discipline"] != "*" and r["source"] != "*"]
    if counts:
        plots["pairs.png"] = plot_stacked_bars(counts, category="discipline", stack="source", value="pairs",
                                               title="Pairs per discipline and source", xlabel="pairs")
    lengths = views.get("length_histogram", [])
    if lengths:
        plots["lengths.png"] = plot_histograms(
            lengths, x_lo="words_lo", x_hi="words_hi", count="texts", log_x=True,
            title="Caption length: raw caption against recaption", xlabel="words (log scale)")
    for model in sorted({r["model"] for r in views.get("clip_histogram", [])}):
        rows = [r for r in views["clip_histogram"] if r["model"] == model]
        plots[clip_plot_name(model)] = plot_histograms(
            rows, x_lo="score_lo", x_hi="score_hi", count="pairs",
            title=f"CLIP alignment, {model}: raw caption against recaption", xlabel="cosine similarity")
    reasons = [r for r in views.get("quarantine_reasons", []) if r["source"] != "*" and r["ingest_run_id"] == "*"]
    if reasons:
        plots["quarantine.png"] = plot_stacked_bars(reasons, category="reason", stack="source", value="lines",
                                                    title="Quarantined lines per reason", xlabel="lines")
    return plots


# ----------------------------------------------------------------------------------------------- page

def fmt(value, kind: str = "") -> str:
    """How the page shows a number: counts with thousands separators, shares and changes in percent."""
    if value is None:
        return "n/a"
    if kind == "share":
        return f"{100 * value:.2f}%"
    if kind == "pct":
        return f"{value:+.2f}%"
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if kind == "score":
        return f"{value:.4f}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"


def _table(table_id: str, rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """columns: (key, header, kind)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h, _ in columns)
    body = []
    for r in rows:
        cells = []
        for key, _, kind in columns:
            num = isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)
            text = "all" if r.get(key) == "*" else fmt(r.get(key), kind)
            cls = ' class="num"' if num else ""
            cells.append(f'<td data-key="{key}"{cls}>{html.escape(text)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table id="{table_id}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def _img(name: str, png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img class="plot" data-name="{name}" alt="{html.escape(alt)}" '
            f'src="data:image/png;base64,{data}"></figure>')


def _note(view: str, summary: dict, what: str) -> str:
    why = summary["unavailable"].get(view, "its table has no rows yet")
    return f'<p class="note" id="note-{view}">{html.escape(what)}: {html.escape(why)}.</p>'


LENGTH_COLUMNS = [("present", "non-blank", ""), ("empty_share", "empty", "share"),
                  ("empty_or_short_share", "empty or short", "share"),
                  ("label_share", "starts with a figure label", "share"),
                  ("chars_mean", "chars mean", ""), ("chars_p5", "p5", ""), ("chars_p50", "p50", ""),
                  ("chars_p95", "p95", ""),
                  ("words_mean", "words mean", ""), ("words_p5", "p5", ""), ("words_p50", "p50", ""),
                  ("words_p95", "p95", "")]
CLIP_COLUMNS = [("discipline", "discipline", ""), ("pairs_scored", "pairs scored", ""),
                ("pairs_unscored", "unscored", ""),
                ("caption_mean", "caption mean", "score"), ("caption_std", "std", "score"),
                ("caption_var", "variance", "score"),
                ("recaption_mean", "recaption mean", "score"), ("recaption_std", "std", "score"),
                ("recaption_var", "variance", "score"), ("uplift_pct", "uplift of the mean", "pct"),
                ("variance_change_pct", "variance change", "pct"),
                ("recaption_higher_share", "recaption higher", "share")]
STYLE = """
body{font-family:system-ui,-apple-system,"DejaVu Sans",sans-serif;margin:2em auto;max-width:1250px;color:#222;
padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}h3{font-size:1.05em}
table{border-collapse:collapse;font-size:.82em;margin:.5em 0 1.2em}th,td{border:1px solid #ddd;padding:.25em .5em}
th{background:#f3f3f3;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
.note{background:#fff6d5;border-left:4px solid #e0b000;padding:.5em .8em}img.plot{max-width:100%}
.kpi{display:flex;flex-wrap:wrap;gap:1em}.kpi div{background:#f5f7fa;padding:.6em 1em;border-radius:6px}
.kpi b{display:block;font-size:1.3em}small{color:#666}dd{margin:0 0 .6em 1.5em;font-size:.9em}
"""


def _clip(text: str, chars: int = 200) -> str:
    return text if len(text) <= chars else text[:chars - 1] + "…"


def observed(value: str | None) -> str:
    """An expectation's observed value (JSON in quality_results) as the page shows it."""
    if value is None:
        return "n/a"
    try:
        parsed = json.loads(value)
    except ValueError:
        return _clip(value)
    if isinstance(parsed, (int, float)) and not isinstance(parsed, bool):
        return fmt(parsed, "score" if isinstance(parsed, float) else "")
    return _clip(json.dumps(parsed, ensure_ascii=False, separators=(", ", ": ")))


def samples(details: str | None) -> str:
    """A few unexpected values, or the exception an expectation raised."""
    if not details:
        return ""
    try:
        parsed = json.loads(details)
    except ValueError:
        return _clip(details)
    if isinstance(parsed, dict) and "exception" in parsed:
        return _clip(f"raised: {parsed['exception']}")
    values = parsed.get("unexpected", []) if isinstance(parsed, dict) else parsed
    return _clip(", ".join(json.dumps(x, ensure_ascii=False) for x in values))


QUALITY_COLUMNS = [("suite", "suite", ""), ("expectation", "expectation", ""), ("severity", "severity", ""),
                   ("result", "result", ""), ("observed", "observed", ""), ("unexpected_count", "unexpected", ""),
                   ("unexpected_share", "share", "share"), ("element_count", "rows checked", ""),
                   ("samples", "unexpected values", ""), ("validate_run_id", "run", "")]


def _quality(latest: list[dict], trend: list[dict], summary: dict) -> list[str]:
    rows = [dict(r, result="passed" if r["success"] else "FAILED", observed=observed(r["observed_value"]),
                 samples=samples(r["sample_values"])) for r in latest]
    failed = [r for r in rows if not r["success"]]
    failed.sort(key=lambda r: (r["severity"] != "critical", r["suite"], r["expectation"]))
    runs = sorted({r["validate_run_id"] for r in rows})
    critical = sum(r["severity"] == "critical" for r in failed)
    out = [f'<p id="quality-summary">The latest validate run of each suite ({html.escape(", ".join(runs))}): '
           f'<b>{len(rows)}</b> expectations, <b>{len(failed)}</b> failed ({critical} critical, '
           f'{len(failed) - critical} warning). Every run in full, with Great Expectations\' own pages: '
           f'Data Docs (by default <code>{html.escape(summary["lake"].rstrip("/"))}'
           f'/_quality/data_docs/index.html</code>, '
           "readable offline).</p>"]
    if failed:
        out.append("<h3>Failed expectations</h3>" + _table("quality_failed", failed, QUALITY_COLUMNS))
    out.append(f"<details><summary>Every expectation ({len(rows)})</summary>"
               + _table("quality_latest", rows, QUALITY_COLUMNS) + "</details>")
    if trend:
        trend = sorted(trend, key=lambda r: r["validated_at"], reverse=True)
        out.append(f"<h3>Failures over the last {len(trend)} runs, newest first</h3>" + _table(
            "quality_trend", trend, [("validate_run_id", "run", ""), ("validated_at", "validated at", ""),
                                     ("expectations", "expectations", ""), ("failed_critical", "failed critical", ""),
                                     ("failed_warning", "failed warning", ""), ("failed", "which", "")]))
    return out


def _header(summary: dict, plots: dict[str, bytes]) -> list[str]:
    return [f"<h1>S1-MMAlign lake: caption quality</h1><p><small>lake {html.escape(summary['lake'])} · "
            f"generated {html.escape(summary['generated_at'])} · views in the catalog as "
            f"{html.escape(summary['database'])}.&lt;view&gt;</small></p>"]


def _overview(summary: dict, plots: dict[str, bytes]) -> list[str]:
    ov = (summary["views"].get("overview") or [None])[0]
    if not ov:
        return ['<p class="note" id="note-overview">No pairs in this lake yet: run jobs/ingest.py.</p>']
    kpis = [("pairs", "pairs", ""), ("papers", "papers", ""), ("images", "distinct images", ""),
            ("sources", "sources", ""), ("disciplines", "disciplines", ""),
            ("quarantined_lines", "quarantined lines", ""),
            ("quarantined_share", "of input lines quarantined", "share")]
    return ['<div class="kpi" id="overview">' + "".join(
        f'<div data-key="{k}"><b>{fmt(ov[k], kind)}</b>{label}</div>' for k, label, kind in kpis) + "</div>"]


def _pair_counts(summary: dict, plots: dict[str, bytes]) -> list[str]:
    parts = ["<h2>Pairs per discipline and source</h2>"]
    if "pairs.png" in plots:
        parts.append(_img("pairs.png", plots["pairs.png"], "pairs per discipline and source"))
    counts = [r for r in summary["views"].get("pair_counts", []) if r["source"] == "*" or r["discipline"] == "*"]
    parts.append(_table("pair_counts", counts, [("discipline", "discipline", ""), ("source", "source", ""),
                                                ("pairs", "pairs", ""), ("papers", "papers", ""),
                                                ("images", "images", "")]))
    return parts


def _lengths(summary: dict, plots: dict[str, bytes]) -> list[str]:
    v = summary["views"]
    parts = ["<h2>Caption and recaption length</h2><p>Lengths of non-blank texts; "
             f"short = under {summary['parameters']['short_chars']} characters, blank included.</p>"]
    if "lengths.png" in plots:
        parts.append(_img("lengths.png", plots["lengths.png"], "word-count distributions"))
    lengths = v.get("caption_lengths", [])
    parts.append("<h3>Per discipline</h3>" + _table(
        "caption_lengths_discipline", [r for r in lengths if r["source"] == "*"],
        [("discipline", "discipline", ""), ("field", "field", "")] + LENGTH_COLUMNS))
    parts.append("<h3>Per source</h3>" + _table(
        "caption_lengths_source", [r for r in lengths if r["discipline"] == "*" and r["source"] != "*"],
        [("source", "source", ""), ("field", "field", "")] + LENGTH_COLUMNS))
    parts.append("<h3>Recaption against raw caption length (pairs with both)</h3>" + _table(
        "length_ratio", [r for r in v.get("length_ratio", []) if r["source"] == "*" or r["discipline"] == "*"],
        [("discipline", "discipline", ""), ("source", "source", ""), ("pairs_with_both", "pairs", ""),
         ("chars_ratio", "chars ratio", ""), ("words_ratio", "words ratio", ""),
         ("chars_ratio_p50", "median per-pair chars ratio", "")]))
    return parts


def _clip_alignment(summary: dict, plots: dict[str, bytes]) -> list[str]:
    v = summary["views"]
    parts = ["<h2>CLIP alignment</h2>"]
    if not v.get("clip_stats"):
        return parts + [_note("clip_stats", summary, "No CLIP scores in this lake")]
    for model in sorted({r["model"] for r in v["clip_stats"]}):
        parts.append(f"<h3>{html.escape(model)}</h3>")
        name = clip_plot_name(model)
        if name in plots:
            parts.append(_img(name, plots[name], f"CLIP score distributions, {model}"))
        parts.append(_table(f"clip_stats_{_slug(model)}", [r for r in v["clip_stats"] if r["model"] == model],
                            CLIP_COLUMNS))
        low = [r for r in v.get("clip_lowest", []) if r["model"] == model]
        parts.append(f"<details><summary>Lowest-aligned pairs for review ({len(low)})</summary>" + _table(
            f"clip_lowest_{_slug(model)}", low,
            [("discipline", "discipline", ""), ("rank", "#", ""), ("best_score", "best score", "score"),
             ("score_caption", "caption", "score"), ("score_recaption", "recaption", "score"),
             ("source", "source", ""), ("image_path", "image", ""), ("caption", "raw caption", ""),
             ("recaption", "recaption", "")]) + "</details>")
    return parts


def ci(row: dict, key: str, kind: str) -> str:
    """A figure with its 95% interval: '+18.21% [+16.90%, +19.55%]'."""
    if row.get(key) is None:
        return "n/a"
    lo, hi = row.get(key + "_lo"), row.get(key + "_hi")
    return fmt(row[key], kind) + ("" if lo is None or hi is None else f" [{fmt(lo, kind)}, {fmt(hi, kind)}]")


def card_rows(v: dict) -> list[dict]:
    """The card's rows: caption_card's where it exists, else composed from the parts the lake has (CLIP, fluency,
    text signals), each for its most-scoring model, overall first, then per discipline, then per figure_type."""
    if v.get("caption_card"):
        rows = [dict(r) for r in v["caption_card"]]
    else:
        def main(view):
            overall = [r for r in v.get(view, []) if r["discipline"] == r["figure_type"] == "*"]
            best = min(overall, key=lambda r: (-r["n"], r["model"]), default=None)
            return {(r["discipline"], r["figure_type"]): r for r in v.get(view, [])
                    if best and r["model"] == best["model"]}
        clip, flu = main("clip_card"), main("fluency_card")
        rates = {(r["discipline"], r["figure_type"]): r for r in v.get("text_signal_rates", [])}
        rows = []
        for key in sorted(set(clip) | set(flu) | set(rates)):
            c, f, t = clip.get(key, {}), flu.get(key, {}), rates.get(key, {})
            rows.append(dict(t, discipline=key[0], figure_type=key[1], clip_model=c.get("model"), clip_n=c.get("n"),
                             fluency_model=f.get("model"), fluency_n=f.get("n"),
                             **{f"clip_{k}": c.get(k) for k in ("caption_mean", "recaption_mean", "uplift_pct",
                                "uplift_pct_lo", "uplift_pct_hi", "variance_change_pct", "variance_change_pct_lo",
                                "variance_change_pct_hi")},
                             **{k: f.get(k) for k in ("ppl_caption_median", "ppl_recaption_median", "ppl_change_pct",
                                                      "ppl_change_pct_lo", "ppl_change_pct_hi")}))
    for r in rows:
        r["group"] = ("all pairs" if r["discipline"] == r["figure_type"] == "*" else
                      f"discipline {r['discipline']}" if r["figure_type"] == "*" else f"figure type {r['figure_type']}")
        r["uplift"] = ci(r, "clip_uplift_pct", "pct")
        r["variance"] = ci(r, "clip_variance_change_pct", "pct")
        r["ppl"] = ci(r, "ppl_change_pct", "pct")
    rows.sort(key=lambda r: (r["discipline"] != "*" or r["figure_type"] != "*", r["figure_type"] != "*",
                             r["discipline"], r["figure_type"]))
    return rows


CARD_COLUMNS = [("group", "group", ""), ("clip_n", "CLIP n", ""), ("clip_caption_mean", "CLIP caption", "score"),
                ("clip_recaption_mean", "CLIP recaption", "score"), ("uplift", "CLIP uplift [95% CI]", ""),
                ("variance", "CLIP variance change [95% CI]", ""), ("fluency_n", "fluency n", ""),
                ("ppl_caption_median", "pseudo-perplexity caption (median)", ""),
                ("ppl_recaption_median", "recaption (median)", ""), ("ppl", "change [95% CI]", ""),
                ("caption_truncated_share", "caption truncated", "share"),
                ("recaption_truncated_share", "recaption truncated", "share"),
                ("recaption_non_english_share", "recaption not English", "share"),
                ("boilerplate_share", "boilerplate caption", "share"),
                ("identical_share", "recaption = caption", "share"),
                ("recaption_repeats_share", "recaption repeats caption", "share"),
                ("caption_math_share_mean", "caption math share", "")]


def _caption_card(summary: dict, plots: dict[str, bytes]) -> list[str]:
    v = summary["views"]
    parts = ["<h2>Caption quality: the data set card's table</h2>"]
    rows = card_rows(v)
    if not rows:
        return parts + [_note("caption_card", summary, "No caption quality measures (CLIP, fluency or text signals)")]
    models = sorted({(k, r[k]) for r in rows for k in ("clip_model", "fluency_model") if r.get(k)})
    parts.append("<p>Models: " + (html.escape(", ".join(m for _, m in models)) or "none") + ". S1-MMAlign's card "
                 "reports, for recaptions against raw captions, CLIP score +18.21%, CLIP score variance -27.77% and a "
                 "lower SciBERT pseudo-perplexity.</p>")
    parts.append(_table("caption_card", rows, CARD_COLUMNS))
    b = summary.get("parameters", {}).get("bootstrap_replicates", "the configured number of")
    parts.append(
        '<p id="card-method">CLIP figures are over every pair whose caption and recaption were both scored, fluency '
        "figures over a sample stratified by discipline and figure type (each pair weighed by its stratum's size over "
        "the stratum's scored pairs), pseudo-perplexity being exp(-PLL/tokens) with each token masked in turn "
        f"(Salazar et al. 2020). Intervals are the 2.5th and 97.5th percentiles over {b} Poisson bootstrap replicates "
        "(CLIP pairs resampled in hashed blocks of their sums, fluency pairs one by one); n counts the pairs.</p>")
    worst = v.get("text_signal_worst", [])
    if worst:
        parts.append(f"<details><summary>The worst examples of each text signal ({len(worst)})</summary>" + _table(
            "text_signal_worst", worst,
            [("signal", "signal", ""), ("rank", "#", ""), ("pair_id", "pair_id", ""), ("discipline", "discipline", ""),
             ("paper_id", "paper", ""), ("value", "value", ""), ("caption", "raw caption", ""),
             ("recaption", "recaption", "")]) + "</details>")
    return parts


def _duplicates(summary: dict, plots: dict[str, bytes]) -> list[str]:
    rates = summary["views"].get("duplicate_rates")
    if not rates:
        return ["<h2>Duplicates</h2>", _note("duplicate_rates", summary, "No duplicate analysis")]
    return ["<h2>Duplicates</h2>", _table("duplicate_rates", rates,
                                          [("source", "source", ""), ("ingest_run_id", "ingest run", ""),
                                           ("pairs", "pairs", ""),
                                           ("exact_duplicate_pairs", "exact duplicates", ""),
                                           ("exact_duplicate_share", "share", "share"),
                                           ("near_duplicate_pairs", "near duplicates", ""),
                                           ("near_duplicate_share", "share", "share"),
                                           ("validate_run_id", "validate run", "")])]


def _quarantine(summary: dict, plots: dict[str, bytes]) -> list[str]:
    parts = ["<h2>Quarantine</h2>"]
    reasons = summary["views"].get("quarantine_reasons", [])
    if not reasons:
        return parts + ['<p class="note" id="note-quarantine_reasons">No quarantined lines.</p>']
    if "quarantine.png" in plots:
        parts.append(_img("quarantine.png", plots["quarantine.png"], "quarantined lines per reason"))
    parts.append(_table("quarantine_reasons", reasons,
                        [("source", "source", ""), ("ingest_run_id", "ingest run", ""), ("reason", "reason", ""),
                         ("lines", "lines", ""), ("input_lines", "input lines", ""), ("share", "share", "share")]))
    return parts


def _validation(summary: dict, plots: dict[str, bytes]) -> list[str]:
    latest = summary["views"].get("quality_latest", [])
    if not latest:
        return ["<h2>Validation (Great Expectations)</h2>",
                _note("quality_latest", summary, "No validation results")]
    return ["<h2>Validation (Great Expectations)</h2>",
            *_quality(latest, summary["views"].get("quality_trend", []), summary)]


def _history(summary: dict, plots: dict[str, bytes]) -> list[str]:
    runs = summary["views"].get("refresh_history")
    if not runs:
        return ["<h2>Refresh history</h2>", _note("refresh_history", summary, "No job run recorded")]
    runs = sorted(runs, key=lambda r: str(r["started_at"]), reverse=True)      # newest first
    return ["<h2>Refresh history</h2>", _table("refresh_history", runs, [
        ("job", "job", ""), ("run_id", "run", ""), ("started_at", "started", ""), ("seconds", "seconds", ""),
        ("status", "status", ""), ("files_read", "JSONL files read", ""), ("lines", "lines", ""),
        ("lines_reexamined", "lines re-examined", ""), ("bytes_written", "bytes written", ""),
        ("versions_written", "versions written", ""), ("detail", "detail", "")])]


def _views(summary: dict, plots: dict[str, bytes]) -> list[str]:
    described = summary.get("descriptions", {})
    if not described:
        return []
    db = html.escape(summary["database"])
    return ["<h2>The views behind this page</h2><p>In the catalog; query them with spark-sql, e.g. "
            f"<code>SELECT * FROM {db}.clip_stats</code>. "
            "'*' in a key column means all of them.</p><dl>" + "".join(
                f"<dt><code>{db}.{html.escape(n)}</code></dt><dd>{html.escape(d)}</dd>"
                for n, d in described.items()) + "</dl>"]


# The page's sections, in order: each (summary, plots) -> its HTML fragments.
SECTIONS = (_header, _overview, _pair_counts, _lengths, _clip_alignment, _caption_card, _duplicates, _quarantine,
            _validation, _history, _views)


def render_html(summary: dict, plots: dict[str, bytes]) -> str:
    """The page: every number comes from `summary`, every picture from `plots`."""
    parts = [fragment for section in SECTIONS for fragment in section(summary, plots)]
    # Marks the page once every picture has decoded: what a headless browser test (or a person) can check.
    script = ("<script>window.addEventListener('load',function(){var i=[].slice.call(document.images);"
              "document.body.dataset.imagesDecoded=i.filter(function(x){return x.complete&&x.naturalWidth>0}).length;"
              "document.body.dataset.images=i.length;});</script>")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
            f"<title>S1-MMAlign caption quality</title><style>{STYLE}</style></head><body>"
            + "\n".join(parts) + script + "</body></html>")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write(out: str, summary: dict, s3=None) -> dict[str, str]:
    """Write the plots, summary.json and report.html into `out`, a folder or s3:// (each file replaced
    whole); s3: the S3 settings."""
    plots = make_plots(summary)
    summary = {**summary, "plots": sorted(plots)}
    with storage.output_folder(out, s3) as local:
        folder = Path(local)
        for name, png in plots.items():
            _write_atomic(folder / name, png)
        _write_atomic(folder / "summary.json", json.dumps(summary, indent=1, sort_keys=True).encode("utf-8"))
        _write_atomic(folder / "report.html", render_html(summary, plots).encode("utf-8"))
    where = out.rstrip("/") if remote(out) else str(Path(out))
    return {"report": f"{where}/report.html", "summary": f"{where}/summary.json", "plots": sorted(plots)}
