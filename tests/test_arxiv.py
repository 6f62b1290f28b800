import pytest

from s1mmalign.ingest import arxiv


@pytest.mark.parametrize("raw, ident, version, folder", [
    ("1805.01234", "1805.01234", None, "1805.01234"),
    ("2401.00008v2", "2401.00008", 2, "2401.00008"),
    ("0704.0001", "0704.0001", None, "0704.0001"),
    ("arXiv:1203.4567v11", "1203.4567", 11, "1203.4567"),
    ("https://arxiv.org/abs/2101.00001", "2101.00001", None, "2101.00001"),
    ("hep-th/0606282", "hep-th/0606282", None, "0606282"),
    ("math.AP/0701001v3", "math.AP/0701001", 3, "0701001"),
    ("cond-mat/9912345", "cond-mat/9912345", None, "9912345"),
    (" q-bio/0412001 ", "q-bio/0412001", None, "0412001"),
])
def test_parse_valid(raw, ident, version, folder):
    got = arxiv.parse(raw)
    assert got is not None
    assert (got.id, got.version, got.folder) == (ident, version, folder)


@pytest.mark.parametrize("raw", [
    "not-an-id", "", "1805.1234",      # 4 digits after 2015
    "1203.45678",                      # 5 digits before 2015
    "1813.01234",                      # month 13
    "0701.0001",                       # new style before 0704
    "hep-th/0613001",                  # month 13, old style
    "hep-th/1501001",                  # old style after 2007
    "HEP-TH/0606282", "1805.01234v", "1805.01234 extra",
])
def test_parse_invalid(raw):
    assert arxiv.parse(raw) is None


def test_old_style_archive_drops_subject_class():
    assert arxiv.parse("math.AP/0701001").archive == "math"
    assert arxiv.parse("1805.01234").archive is None


def test_from_image_path():
    assert arxiv.from_image_path("images/2401/2401.00008.tar.gz/fig001.png").id == "2401.00008"
    assert arxiv.from_image_path("images/0705/0606282.tar.gz/fig002.png") is None  # number only
    assert arxiv.from_image_path("figs/x.png") is None
