"""Text signals (score/text.py) against hand-checked texts: real captions from scifig300 (226 of them cut at
300 characters by the data set they come from), and made-up ones for each signal's edges. No JVM."""

from __future__ import annotations

import json

import pytest

from s1mmalign.score import text


@pytest.fixture(scope="module")
def signals(cfg):
    return text.Signals(cfg.text, cfg.report.figure_label_regex)


@pytest.fixture(scope="module")
def real(scifig300):
    """image_path -> record, the 300 real pairs."""
    return {r["image_path"]: r for f in sorted((scifig300 / "arxiv" / "jsonl").glob("*.jsonl"))
            for r in map(json.loads, f.read_text(encoding="utf-8").splitlines()) if r}


def fig(real, arxiv_id: str, n: int) -> dict:
    return real[f"images/{arxiv_id[:4]}/{arxiv_id}.tar.gz/fig{n:03d}.png"]


@pytest.mark.parametrize("arxiv_id, n, truncated, why", [
    ("2401.00008", 1, True, "cut at 300 characters mid-word: '... and detail'"),
    ("2401.06641", 21, True, "cut after 'is located in': no sentence ends on 'in'"),
    ("2401.06238", 2, True, "ends on 'The'"),
    ("2401.04427", 2, False, "a title with no full stop: 'Figure 2: NSGF++ framework'"),
    ("2401.00119", 13, False, "a title of six words after its label"),
    ("2401.02439", 4, False, "a full stop, then the PDF's page number '16'"),
    ("2401.05528", 8, False, "'Screenshot of user study. 20'"),
])
def test_truncation_of_real_captions(signals, real, arxiv_id, n, truncated, why):
    rec = fig(real, arxiv_id, n)
    assert signals.text(rec["caption"]).truncated is truncated, why


def test_real_captions_cut_at_300_characters_are_truncated_and_the_rest_mostly_not(signals, real):
    at_cap = [r for r in real.values() if len(r["caption"]) == 300]
    assert len(at_cap) == 225            # the 226th cut caption is shorter (its own end was trimmed)
    ended = [r for r in at_cap if r["caption"].rstrip()[-1] in ".!?)]"]
    assert len(ended) == 4               # cut exactly after a sentence: whole, as far as a reader can tell
    assert all(signals.text(r["caption"]).truncated for r in at_cap if r not in ended)
    assert not any(signals.text(r["caption"]).truncated for r in ended)
    short = [r for r in real.values() if len(r["caption"]) < 300]
    flagged = [r["caption"] for r in short if signals.text(r["caption"]).truncated]
    # of the 75 shorter ones, the flagged are those ending inside a sentence or a table dump (hand-checked)
    assert 8 <= len(flagged) <= 16, flagged


def test_real_pairs_figure_prefix_identical_repeats_and_language(signals, real):
    out = {k: signals.pair(r["caption"], r["recaption"]) for k, r in real.items()}
    assert sum(s.caption.figure_prefix for s in out.values()) == 300        # every caption starts "Figure N:"
    assert sum(s.recaption.figure_prefix for s in out.values()) == 1        # the one equal to its caption
    assert sum(s.identical for s in out.values()) == 1
    # SciFigAlign's "recaption" is the caption cleaned: most only repeat it
    assert 200 < sum(s.recaption_repeats for s in out.values()) < 300
    nsgf = out["images/2401/2401.04427.tar.gz/fig002.png"]
    assert nsgf.recaption_repeats and not nsgf.identical and nsgf.caption.words == 4
    langs = [s.caption.lang for s in out.values()]
    assert langs.count("en") >= 295 and set(langs) <= {"en", None}
    # boilerplate keys: the label does not count, the text does
    assert len({s.caption_key for s in out.values()}) == 300


def test_each_signal_at_its_edges(signals):
    t = signals.text
    assert t(None) == text.TextSignals() and t("   \n\t ") == text.TextSignals(chars=6)
    assert t("Fig. 2 shows a rise. It is fast! Then what? Done").sentences == 4
    assert t("Results from Smith et al. and e.g. Jones, cf. Fig. 3 for details.").sentences == 1
    spectra = "Spectra at 5 nm, 3.2 GeV and 40% load, over 10 s (not 10 sets)."
    s = t(spectra)
    assert s.units == 4 and s.digit_share == pytest.approx(9 / sum(not c.isspace() for c in spectra))
    math = t(r"$\alpha + \beta = \gamma$")
    assert math.math_share == 1.0
    assert 0.3 < t(r"The loss $\mathcal{L} = \sum_i x_i^2$ falls with time.").math_share < 0.7
    assert t("A plot of the loss over time.").math_share == 0.0
    assert t("Figure 3: A plot.").figure_prefix and t("FIG. 12. A plot.").figure_prefix
    assert not t("Figures are plots.").figure_prefix and not t("A figure 3 of them.").figure_prefix
    assert t("Die Abbildung zeigt die Temperaturabhängigkeit des Widerstands für drei Proben.").lang == "de"
    assert t("Loss curve.").lang is None                       # under lang_min_words words of letters
    assert t("x" * 2_000_000 + " the end.").chars == 2_000_009  # read past max_chars only for length and end
    assert t("a, b" * 10 + ",").truncated and t("A plot of loss -").truncated
    assert t("Figure 1: the loss of the model during training for each of the").truncated
    assert not t("Figure 1: the loss.").truncated and not t("Figure 1: loss (left).").truncated


def test_pair_signals(signals):
    p = signals.pair
    assert p("Figure 1: A plot.", "a  PLOT. ").identical is False
    assert p("A plot.", "a  PLOT. ").identical is True and p("A plot.", "a  PLOT. ").recaption_repeats is False
    assert p("Figure 1: A plot of loss. More text.", "A plot of loss.").recaption_repeats
    assert not p("Figure 1: A plot of loss.", "The loss falls as training goes on.").recaption_repeats
    assert not p("A plot.", "").recaption_repeats and not p("", "").identical
    assert p("Figure 1: Results.", "x").caption_key == p("Fig. 7. results", "y").caption_key
    assert p("Figure 1: Results.", "x").caption_key != p("Figure 1: Results for B.", "x").caption_key
    assert p("", "x").caption_key is None and p("Figure 2:", "x").caption_key is None


def test_hostile_texts_give_signals_not_errors(signals):
    for hostile in ("\x00\x01\x02\x7f", "\ud800 lone surrogate", "$" * 100_000, "\\" * 50_000 + "{" * 50_000,
                    "中文图注：温度随时间变化。" * 1000, "a" * 5_000_000):
        row = text.row(signals.pair(hostile, hostile))
        assert row["caption_chars"] == len(hostile) and row["identical"] is True



def test_a_page_number_after_a_full_stop_is_not_a_cut_even_at_a_cut_length(signals):
    text = ("The loss falls as training goes on. " * 9)[:296].rstrip() + ". 21"     # a PDF page number after it
    assert len(text) == 300 and text.endswith("The loss. 21")
    assert not signals.text(text).truncated
    assert signals.text(text[:-4] + " and").truncated             # the same length cut mid-sentence
