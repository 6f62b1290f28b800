import pytest

from s1mmalign import config
from s1mmalign.config import ConfigError
from s1mmalign.ingest.disciplines import DisciplineMap


@pytest.fixture(scope="module")
def dmap():
    return DisciplineMap.from_conf(config.load().disciplines)


@pytest.mark.parametrize("category, source, expected", [
    ("math.AP", "arxiv", "mathematics"), ("stat.ML", "arxiv", "mathematics"),
    ("math-ph", "arxiv", "mathematics"), ("astro-ph.GA", "arxiv", "astronomy"),
    ("astro-ph", "arxiv", "astronomy"), ("physics.ao-ph", "arxiv", "earth_science"),
    ("physics.geo-ph", "arxiv", "earth_science"), ("physics.chem-ph", "arxiv", "chemistry"),
    ("physics.med-ph", "arxiv", "medicine"), ("q-bio.NC", "arxiv", "biology"),
    ("physics.bio-ph", "arxiv", "biology"), ("cs.CV", "arxiv", "computer_science"),
    ("eess.SP", "arxiv", "engineering"), ("physics.optics", "arxiv", "physics"),
    ("cond-mat.mtrl-sci", "arxiv", "physics"), ("hep-th", "arxiv", "physics"),
    ("nucl-ex", "arxiv", "physics"), ("gr-qc", "arxiv", "physics"), ("quant-ph", "arxiv", "physics"),
    ("nlin.CD", "arxiv", "physics"), ("q-fin.ST", "arxiv", "unknown"), ("econ.EM", "arxiv", "unknown"),
    (None, "chemrxiv", "chemistry"), (None, "medrxiv", "medicine"), (None, "biorxiv", "biology"),
    (None, "engrxiv", "engineering"), (None, "psyarxiv", "unknown"), (None, "arxiv", "unknown"),
    ("cs.LG", "biorxiv", "computer_science"),  # a category wins over the source
])
def test_derive(dmap, category, source, expected):
    assert dmap.derive(category, source) == expected


def test_mathematics_prefix_does_not_swallow_math_ph_lookalikes(dmap):
    assert dmap.category("mathx") is None
    assert dmap.category("cs") is None


def test_rules_must_target_known_disciplines():
    with pytest.raises(ConfigError, match="geology"):
        DisciplineMap.from_conf({"disciplines": ["physics"], "fallback": "unknown",
                                 "category_rules": [{"match": "physics.geo-ph", "discipline": "geology"}]})
