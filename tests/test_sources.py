import os

import pytest

from s1mmalign.ingest.sources import discover, group_archives
from s1mmalign.lake.storage import FileInfo, LocalStore, SourceError, StoreError, TooLarge


def info(rel):
    return FileInfo(rel, 10, None, None)


def test_group_archives_whole_split_and_gap():
    files = [info(f"arxiv/{n}") for n in ["images_2007.tar.gz", "images_2019.tar.gz.partab",
                                            "images_2019.tar.gz.partaa", "images_2020.tar.gz.partaa",
                                            "images_2020.tar.gz.partac", "notes.txt"]]
    got = {a.name: a for a in group_archives("arxiv", files, ".tar.gz")}
    assert set(got) == {"arxiv/images_2007.tar.gz", "arxiv/images_2019.tar.gz", "arxiv/images_2020.tar.gz"}
    assert [p.rel for p in got["arxiv/images_2019.tar.gz"].parts] == [
        "arxiv/images_2019.tar.gz.partaa", "arxiv/images_2019.tar.gz.partab"]
    assert got["arxiv/images_2019.tar.gz"].missing_after is None
    gap = got["arxiv/images_2020.tar.gz"]
    assert [p.rel for p in gap.parts] == ["arxiv/images_2020.tar.gz.partaa"] and gap.missing_after == "aa"


def make_layout(root):
    for rel in ["arxiv/jsonl/07_recaption.jsonl", "arxiv/images_2007.tar.gz", "bio/jsonl/b.jsonl",
                "bio/images/p1/fig1.png", "notasource/readme.txt", "arxiv/jsonl/readme.md"]:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_discover(tmp_path):
    make_layout(tmp_path)
    store, plan = discover(LocalStore(str(tmp_path)))
    assert [s.name for s in plan.sources] == ["arxiv", "bio"]
    arxiv = plan.source("arxiv")
    assert [f.rel for f in arxiv.jsonl] == ["arxiv/jsonl/07_recaption.jsonl"]
    assert [a.name for a in arxiv.archives] == ["arxiv/images_2007.tar.gz"] and not arxiv.has_tree
    assert plan.source("bio").has_tree and plan.source("bio").archives == ()


def test_a_source_folder_as_root_reads_as_its_parent(tmp_path):
    make_layout(tmp_path)
    store, plan = discover(LocalStore(str(tmp_path / "arxiv")))
    assert store.root == str(tmp_path)
    assert [s.name for s in plan.sources] == ["arxiv"]


def test_no_sources_and_no_root(tmp_path):
    with pytest.raises(SourceError, match="no S1-MMAlign sources"):
        discover(LocalStore(str(tmp_path)))
    with pytest.raises(SourceError, match="does not exist"):
        discover(LocalStore(str(tmp_path / "nope")))


def test_local_reads_never_leave_the_root(tmp_path):
    (tmp_path / "src" / "jsonl").mkdir(parents=True)
    (tmp_path / "secret.png").write_bytes(b"s")
    (tmp_path / "secret.jsonl").write_bytes(b'{"x": 1}\n')
    os.symlink(tmp_path / "secret.png", tmp_path / "src" / "link.png")
    os.symlink(tmp_path / "secret.jsonl", tmp_path / "src" / "jsonl" / "a.jsonl")
    (tmp_path / "src" / "inside.png").write_bytes(b"i")
    os.symlink(tmp_path / "src" / "inside.png", tmp_path / "src" / "ok-link.png")
    store = LocalStore(str(tmp_path / "src"))
    with pytest.raises(StoreError, match="link out of the source root"):
        store.read("link.png", 100)
    with pytest.raises(StoreError, match="link out of the source root"):
        store.open("jsonl/a.jsonl")
    # listed (so that ingest_log can say why it was not read), never read
    assert [f.rel for f in store.list_dir("jsonl")[1]] == ["jsonl/a.jsonl"]
    assert store.read("missing.png", 100) is None
    assert store.read("ok-link.png", 100) == b"i"       # a link that stays inside the root is fine


def test_local_reads_refuse_special_files_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    store = LocalStore(str(tmp_path))
    with pytest.raises(StoreError, match="FIFO"):
        store.read("pipe.png", 100)       # would block for ever if it were opened for a plain read
    with pytest.raises(StoreError, match="FIFO"):
        store.open("pipe.png")
    assert [(f.rel, f.size) for f in store.list_dir("")[1]] == [("pipe.png", 0)]


def test_local_read_checks_the_size_before_reading(tmp_path):
    with open(tmp_path / "sparse.png", "wb") as f:
        f.truncate(4 << 30)               # 4 GB that occupy no disk: reading it whole would take 4 GB
    with pytest.raises(TooLarge) as err:
        LocalStore(str(tmp_path)).read("sparse.png", 1 << 20)
    assert err.value.size == 4 << 30
    (tmp_path / "small.png").write_bytes(b"x" * 10)
    assert LocalStore(str(tmp_path)).read("small.png", 10) == b"x" * 10


def test_fingerprint_changes_with_size_or_mtime(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b"1\n")
    first = LocalStore(str(tmp_path)).list_dir("")[1][0].fingerprint
    os.utime(path, (1_000_000, 1_000_000))
    assert LocalStore(str(tmp_path)).list_dir("")[1][0].fingerprint != first


def test_discovery_never_lists_image_folders(tmp_path):
    make_layout(tmp_path)
    listed = []

    class Counting(LocalStore):
        def list_dir(self, rel):
            listed.append(rel)
            return super().list_dir(rel)

        def parent(self):
            return Counting(os.path.dirname(self.root))

    discover(Counting(str(tmp_path)))
    assert listed and not any("images" in rel for rel in listed), listed


def test_names_that_are_not_utf8_are_refused_under_an_escaped_name(tmp_path):
    """POSIX names are bytes: a Latin-1 JSONL file, archive part or source folder is listed as refused
    (escaped losslessly), never handed to a reader, and the rest of the source is read as usual."""
    make_layout(tmp_path)
    root = os.fsencode(str(tmp_path))
    for rel in [b"arxiv/jsonl/caf\xe9.jsonl", b"arxiv/images_caf\xe9.tar.gz", b"arxiv/images_2019%.tar.gz.partaa",
                b"arxiv/images_2019%.tar.gz.part\xe9b", b"m\xfcll/jsonl/a.jsonl", b"m\xfcll/images_1.tar.gz",
                b"m\xfcll/images/p1/f.png", b"t\xfcr/images/p1/f.png"]:
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(b"x")
    os.makedirs(os.path.join(root, b"t\xfcr/jsonl"))         # a source with a tree and no JSONL file yet
    _, plan = discover(LocalStore(str(tmp_path)))
    arxiv = plan.source("arxiv")
    assert [f.rel for f in arxiv.jsonl] == ["arxiv/jsonl/07_recaption.jsonl"]
    assert [a.name for a in arxiv.archives] == ["arxiv/images_2007.tar.gz", "arxiv/images_2019%.tar.gz"]
    assert sorted((r.kind, r.file.rel, r.archive) for r in arxiv.refused) == [
        ("archive_part", "arxiv/images_caf%E9.tar.gz", "arxiv/images_caf%E9.tar.gz"),
        ("jsonl", "arxiv/jsonl/caf%E9.jsonl", None)]
    assert all(r.file.size == 1 and r.file.fingerprint for r in arxiv.refused)
    muell = plan.source("m%FCll")           # a source folder so named: every file refused, nothing read
    assert muell.jsonl == () and muell.archives == () and not muell.has_tree
    tuer = plan.source("t%FCr")             # ... also when it holds no file to refuse: its tree is not read
    assert (tuer.jsonl, tuer.archives, tuer.refused, tuer.has_tree) == ((), (), (), False)
    assert sorted(r.file.rel for r in muell.refused) == ["m%FCll/images_1.tar.gz", "m%FCll/jsonl/a.jsonl"]
    from s1mmalign.ingest.records import escape_name
    assert escape_name("50%\udce9") == "50%25%E9"        # lossless: a '%' of the name is escaped too
