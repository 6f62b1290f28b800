"""The house rules that code review would otherwise have to remember, checked from the code itself: ruff's
config passes; the package is wings over a shared lake layer (each pipeline imports only lake/ and the
shared ground, never another pipeline; lake/ imports no pipeline; only jobs import cli), read from the
imports; every exception the library defines is a user-facing errors.JobError or is caught inside the
library; tests share helpers through helpers.py, never by importing conftest or each other."""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess

from helpers import BIN, REPO

LIB = REPO / "lib" / "s1mmalign"
LAKE = "lake"


def _imports(path) -> set[str]:
    """Every module a file imports, at any depth of its code, as dotted names (`from s1mmalign.lake import
    root` counts as s1mmalign.lake.root and s1mmalign.lake). The package uses no relative import."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{path}: a relative import"
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def _modules() -> dict[str, object]:
    """Every library module: dotted name -> path."""
    return {".".join(("s1mmalign", *p.relative_to(LIB).with_suffix("").parts)).removesuffix(".__init__"): p
            for p in LIB.rglob("*.py")}


def _room(module: str) -> str:
    """Where a module lives: a wing (its folder under s1mmalign/), or `ground` (a module at the top)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (LIB / parts[1]).is_dir()) else "ground"


def _uses(module: str, path) -> set[str]:
    """The library modules a module imports (`from s1mmalign.config import Config`: s1mmalign.config)."""
    known = _modules()
    return {m if m in known else m.rsplit(".", 1)[0] for m in _imports(path)
            if m.startswith("s1mmalign.") and (m in known or m.rsplit(".", 1)[0] in known)}


def test_ruff_passes_on_the_whole_tree():
    proc = subprocess.run([str(BIN / "ruff"), "check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_the_package_is_wings_over_the_lake_and_the_ground():
    """Every folder of s1mmalign/ but lake/ is a pipeline; the top-level modules are the shared ground (and
    cli, the job template, above everything). A pipeline imports its own folder, lake/ and the ground; lake/
    imports itself and the ground; the ground imports only the ground; no library module imports cli."""
    rooms = {p.name for p in LIB.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    pipelines = rooms - {LAKE}
    assert LAKE in rooms and {"ingest", "validate", "score", "report", "export"} <= pipelines
    wrong = {}
    for module, path in _modules().items():
        room = _room(module)
        if module == "s1mmalign.cli":
            continue
        allowed = {"ground"} | ({LAKE} if room != "ground" else set()) | {room}
        rooms_used = {_room(m) for m in _uses(module, path) if m != "s1mmalign.cli"}
        bad = sorted(rooms_used - allowed)
        if "s1mmalign.cli" in _uses(module, path):
            bad.append("cli")
        if bad:
            wrong[module] = bad
    assert wrong == {}


def test_the_house_rule_sees_a_pipeline_importing_another(tmp_path):
    """The rule above reads real imports: one pipeline module importing another pipeline is caught."""
    fake = LIB / "export" / "_house_probe.py"
    fake.write_text("from s1mmalign.ingest import records\nfrom s1mmalign.lake.root import Lake\n")
    try:
        assert _room("s1mmalign.export._house_probe") == "export"
        assert {_room(m) for m in _uses("s1mmalign.export._house_probe", fake)} == {"ingest", LAKE}
    finally:
        fake.unlink()


def test_no_lake_string_is_taken_apart_outside_the_lake():
    """Whether a root is local or on S3 is the Lake's (and storage's) to say: no `"://" in` test of a lake
    string in the pipelines, the jobs or cli."""
    offenders = [str(p.relative_to(REPO)) for p in [*LIB.rglob("*.py"), *(REPO / "jobs").glob("*.py")]
                 if LAKE not in p.relative_to(LIB if LIB in p.parents else REPO).parts[:1]
                 and p.name != "config.py" and '"://" in' in p.read_text()]
    assert offenders == []


def test_every_exception_the_library_defines_is_a_job_error_or_caught_inside_it():
    """cli.main turns errors.JobError into one line and exit 2. An exception class the library defines is
    either one of those, or an internal signal that some `except` clause of the library names (itself or a
    base class of its own, e.g. OSError for storage.StoreError): none can reach the user as a traceback
    unnamed. Found by scanning every module, not from a list."""
    from s1mmalign.errors import JobError

    handled: set[str] = set()
    for path in LIB.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ExceptHandler) and node.type is not None:
                kinds = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
                handled.update(k.attr if isinstance(k, ast.Attribute) else getattr(k, "id", "") for k in kinds)
    found, loose = [], []
    for module in _modules():
        mod = importlib.import_module(module)
        for name, cls in inspect.getmembers(mod, inspect.isclass):
            if cls.__module__ != module or not issubclass(cls, BaseException):
                continue
            found.append(f"{module}.{name}")
            bases = {c.__name__ for c in cls.__mro__} - {"object", "BaseException", "Exception"}
            if not issubclass(cls, JobError) and not bases & handled:
                loose.append(f"{module}.{name}")
    assert len(found) >= 15 and "s1mmalign.lake.root.NoLease" in found
    assert loose == []


def test_no_test_module_imports_another_or_conftest():
    """Shared fixtures live in conftest.py and shared helpers in helpers.py/hostile.py; importing a test
    module (or conftest) from another would run its module-level setup and hide where a fixture comes from."""
    offenders = {p.name: sorted(m for m in _imports(p) if m.split(".")[0].startswith(("test_", "conftest")))
                 for p in (REPO / "tests").glob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_inside_the_zip_the_checkout_is_the_one_it_was_built_in(tmp_path):
    """A job run from dist/s1mmalign.zip (Airflow's tasks) finds jars/ and Data Docs' assets in the checkout
    build.sh named in the zip; a zip that names none falls back to the folder above it, as before."""
    import sys
    import zipfile

    probe = "from s1mmalign import resources; print(resources.repo_root())"
    for named in ("/somewhere/checkout", None):
        zip_path = tmp_path / f"{bool(named)}" / "s1mmalign.zip"
        zip_path.parent.mkdir()
        with zipfile.ZipFile(zip_path, "w") as zf:
            for path in LIB.rglob("*.py"):
                zf.write(path, f"s1mmalign/{path.relative_to(LIB).as_posix()}")
            if named:
                zf.writestr("s1mmalign/_data/checkout", named + "\n")
        code = f"import sys; sys.path.insert(0, {str(zip_path)!r}); {probe}"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.strip() == (named or str(zip_path.parent)), proc.stdout
