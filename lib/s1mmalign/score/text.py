"""Text signals of a caption and its recaption, with no model: plain Python and regular expressions (C speed),
plus py3langid for the language (its model ships inside its PyPI package). No Spark here.

Every signal of a text is computed on its first `max_chars` characters (a 50 MB caption costs what 1 MB
costs); its length and its end (truncation) are read from the whole text.

truncated: the text stops where no sentence stops. After a trailing page number is dropped (PDF crawls
append one: "... in the reactor. 21"), a text that ends in sentence punctuation or a closing bracket is
whole; otherwise it is truncated when (a) its length is one of `cut_lengths` (producers cut at fixed
lengths: 226 of scifig300's 300 captions are exactly 300 characters), (b) its last word is one no
sentence ends on ("of", "the", "and", ...) or it ends in a comma or hyphen, or (c) its last sentence runs
`open_sentence_words` words or more with no end. A short title with no full stop ("Figure 2: NSGF++
framework") is whole.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from s1mmalign.config import TextConf

VERSION = 1      # bump when a signal's definition changes: score_text recomputes rows of older versions

_WORD = re.compile(r"\S+")
_ALPHA_WORD = re.compile(r"[^\W\d_]{2,}")
_DIGIT = re.compile(r"\d")
_NONSPACE = re.compile(r"\S")
# LaTeX math spans and commands, then single math characters outside them: Greek, math operators and
# arrows, mathematical alphanumerics, and the ASCII signs that are math in running text.
_MATH_SPAN = re.compile(r"\$\$.*?\$\$|\$[^$\n]*\$|\\\(.*?\\\)|\\\[.*?\\\]|\\[A-Za-z]+\*?(?:\{[^{}]*\})?", re.S)
_MATH_CHAR = re.compile("[\u0370-\u03ff\u2190-\u21ff\u2200-\u22ff\u27c0-\u27ef\u2980-\u2aff\U0001d400-\U0001d7ff"
                        "±×÷=<>^_~∞√∑∏∫∂]")
_UNITS = ("nm", "µm", "μm", "um", "mm", "cm", "m", "km", "ms", "µs", "μs", "ns", "ps", "fs", "s", "min", "h",
          "Hz", "kHz", "MHz", "GHz", "THz", "eV", "meV", "keV", "MeV", "GeV", "TeV", "K", "°C", "°", "%", "mV",
          "V", "kV", "mA", "µA", "μA", "A", "W", "mW", "kW", "MW", "J", "kJ", "N", "Pa", "kPa", "MPa", "GPa",
          "mg", "g", "kg", "mol", "mM", "µM", "μM", "nM", "L", "mL", "µL", "μL", "dB", "dBm", "bp", "kb", "Mb",
          "kbp", "Mbp", "KB", "MB", "GB", "TB", "px", "dpi", "T", "mT", "Gy", "Sv", "rpm", "ppm", "ppb", "au",
          "AU", "pc", "kpc", "Mpc", "Å", "Ω", "kΩ", "F", "µF", "μF", "pF", "nF")
_UNIT = re.compile(r"(?<![\w.])[-+]?\d+(?:[.,]\d+)?\s?(?:" + "|".join(
    re.escape(u) for u in sorted(_UNITS, key=len, reverse=True)) + r")(?![\w])")
_SENTENCE_END = re.compile(r"[.!?。！？]+(?=[\s\"'”’)\]]*(?:\s|$))")
_ABBREVIATIONS = frozenset("fig figs eq eqs al vs cf e.g i.e ref refs no nos sec tab approx resp etc ca dr".split())
_PAGE_TAIL = re.compile(r"(?<=[.!?)\]])\s+\d{1,4}\s*$")
_WHOLE_END = set(".!?。！？)]}\"'”’»:;…$")
_OPEN_WORDS = frozenset("a an the of in on at to for with by from and or nor but as is are was were be been "
                        "that which whose this these those its their our than into onto via per".split())
_SPACE = re.compile(r"\s+")
_EDGE_PUNCT = re.compile(r"^[\W_]+|[\W_]+$")


@dataclass(frozen=True)
class TextSignals:
    """One text's signals (a blank text: zeros, not truncated, no language)."""

    chars: int = 0
    words: int = 0
    sentences: int = 0
    math_share: float = 0.0      # of its non-space characters, those in LaTeX math or math symbols
    digit_share: float = 0.0     # of its non-space characters, the digits
    units: int = 0               # numbers with a unit ("5 nm", "3.2 GeV", "40%")
    figure_prefix: bool = False  # starts with a figure label ("Figure 3:", "Fig. 2.")
    truncated: bool = False
    lang: str | None = None      # ISO 639-1 code; None for a blank text or one with too few words


@dataclass(frozen=True)
class PairSignals:
    caption: TextSignals
    recaption: TextSignals
    identical: bool              # caption and recaption the same text (case and spacing aside)
    recaption_repeats: bool      # the recaption only repeats (a part of) the caption
    caption_key: str | None      # digest of the caption without its label: the same key in many papers is boilerplate


def _language(text: str) -> str:
    import py3langid  # its model (4 MB) ships in the package; loaded once per process, on first use

    return py3langid.classify(text)[0]


def normalized(text: str | None) -> str:
    """Case folded, whitespace collapsed, stripped."""
    return _SPACE.sub(" ", text or "").strip().casefold()


class Signals:
    """The signals of texts under one conf (its compiled label pattern kept)."""

    def __init__(self, conf: TextConf, figure_label_regex: str):
        self.conf = conf
        self.cut_lengths = frozenset(conf.cut_lengths)
        self.label = re.compile(figure_label_regex)
        self.label_tail = re.compile(r"^[a-z]?\s*[:.|\-–—]?\s*", re.I)

    def without_label(self, text: str) -> str:
        m = self.label.match(text)
        if not m:
            return text
        rest = text[m.end():]
        return rest[self.label_tail.match(rest).end():]

    def truncated(self, text: str) -> bool:
        tail = text[-4000:].rstrip()
        if not tail:
            return False
        tail = _PAGE_TAIL.sub("", tail)
        if tail[-1] in _WHOLE_END:
            return False
        if len(text) in self.cut_lengths or tail[-1] in ",-–":
            return True
        words = _WORD.findall(tail[-2000:])
        if words and words[-1].casefold() in _OPEN_WORDS:
            return True
        end, last = tail[-2000:], 0
        for m in _SENTENCE_END.finditer(end):
            last = m.end()
        sentence = end[last:] if last or len(tail) > 2000 else self.without_label(end)   # a label is not a word
        return len(_WORD.findall(sentence)) >= self.conf.open_sentence_words

    @staticmethod
    def sentences(text: str) -> int:
        count, last = 0, 0
        for m in _SENTENCE_END.finditer(text):
            before = text[max(0, m.start() - 8):m.start()].split()
            if before and before[-1].casefold().rstrip(".") in _ABBREVIATIONS:
                continue
            count, last = count + 1, m.end()
        return count + (1 if _ALPHA_WORD.search(text, last) or _DIGIT.search(text, last) else 0)

    def text(self, text: str | None) -> TextSignals:
        if not text or not text.strip():
            return TextSignals(chars=len(text or ""))
        head = text[:self.conf.max_chars]
        nonspace = len(_NONSPACE.findall(head)) or 1
        spans = _MATH_SPAN.findall(head)
        span_chars = sum(len(s) - s.count(" ") for s in spans)
        rest = _MATH_SPAN.sub(" ", head) if spans else head
        math = span_chars + len(_MATH_CHAR.findall(rest))
        lang = None
        if len(_ALPHA_WORD.findall(head[:2000])) >= self.conf.lang_min_words:
            lang = _language(head[:2000])
        return TextSignals(
            chars=len(text), words=len(_WORD.findall(head)), sentences=self.sentences(head),
            math_share=min(1.0, math / nonspace), digit_share=len(_DIGIT.findall(head)) / nonspace,
            units=len(_UNIT.findall(head)), figure_prefix=bool(self.label.match(head)),
            truncated=self.truncated(text), lang=lang)

    def pair(self, caption: str | None, recaption: str | None) -> PairSignals:
        cap, rec = normalized(caption), normalized(recaption)
        identical = bool(cap) and cap == rec
        repeats = bool(rec) and not identical and (rec in cap or rec == normalized(self.without_label(caption or "")))
        key_text = _EDGE_PUNCT.sub("", normalized(self.without_label((caption or "").strip())))
        key = hashlib.sha256(key_text.encode("utf-8", "surrogatepass")).hexdigest()[:16] if key_text else None
        return PairSignals(self.text(caption), self.text(recaption), identical, repeats, key)


def row(signals: PairSignals) -> dict:
    """The text_signals columns of one pair's signals (without its keys)."""
    out = {}
    for name, s in (("caption", signals.caption), ("recaption", signals.recaption)):
        out.update({f"{name}_{k}": getattr(s, k) for k in
                    ("chars", "words", "sentences", "math_share", "digit_share", "units", "figure_prefix",
                     "truncated", "lang")})
    out.update(identical=signals.identical, recaption_repeats=signals.recaption_repeats,
               caption_key=signals.caption_key)
    return out
