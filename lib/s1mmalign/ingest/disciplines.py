"""Discipline of a pair from its primary arXiv category or its source, by the rules in conf/."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from s1mmalign.config import ConfigError


@dataclass(frozen=True)
class DisciplineMap:
    """Ordered category rules, then source rules, then the fallback."""

    category_rules: tuple[tuple[str, str], ...]
    source_rules: Mapping[str, str]
    known: frozenset[str]
    fallback: str

    @classmethod
    def from_conf(cls, conf: Mapping) -> "DisciplineMap":
        """Build from the mapping in conf/disciplines.yaml, checking every target is a known value."""
        known = frozenset(conf.get("disciplines", ())) | {conf.get("fallback", "unknown")}
        rules = tuple((str(r["match"]), str(r["discipline"])) for r in conf.get("category_rules", ()))
        sources = {str(k): str(v) for k, v in (conf.get("source_rules") or {}).items()}
        for target in [d for _, d in rules] + list(sources.values()):
            if target not in known:
                raise ConfigError(f"disciplines.yaml maps to {target!r}, which is not in its disciplines list")
        return cls(rules, sources, known, str(conf.get("fallback", "unknown")))

    def category(self, category: str | None) -> str | None:
        """The discipline of one arXiv category, or None when no rule matches."""
        if not category:
            return None
        for match, discipline in self.category_rules:
            if match.endswith("*"):
                if category.startswith(match[:-1]):
                    return discipline
            elif match.endswith("."):
                if category.startswith(match):
                    return discipline
            elif category == match:
                return discipline
        return None

    def derive(self, primary_category: str | None, source: str) -> str:
        """The discipline of a pair: its primary category's, else its source's, else the fallback."""
        return self.category(primary_category) or self.source_rules.get(source) or self.fallback
