"""Great Expectations glue: the suites in expectations/, run over the frames validate builds, results as rows.

A frame of up to `quality.pandas_max_rows` rows is validated by Great Expectations' pandas engine (brought
to the driver through Arrow, once per frame: at the 200,000 pairs of bench/refresh.py the suites took 3.2-3.5 s,
against 7.9-10 s for Spark's metric jobs); a larger one, and every schema suite (column types are Spark's), by its Spark
engine. Both give the same results (tests/test_validate.py runs every suite on both and compares them).

A suite file is Great Expectations' own suite JSON (`ExpectationSuite.to_json_dict()`), named
`<group>.<table>.json`, with `meta.group` (path_integrity, deduplication or schema_values), `meta.table`
(the frame it runs on) and, on every expectation, a stable `meta.name` and a `severity` (critical or
warning). Thresholds are `{"$PARAMETER": "<name>"}`, filled from conf (quality.thresholds) at run time.
The `schema.<table>.json` suites (columns and types) are generated from schemas/tables.yaml:
`python -m s1mmalign.validate.quality --write-schema-suites` rewrites them, and a test fails when they drift.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from s1mmalign import resources
from s1mmalign.config import QualityConf
from s1mmalign.errors import JobError
from s1mmalign.lake import schemas
from s1mmalign.validate import docs_offline

log = logging.getLogger(__name__)

GROUPS = ("path_integrity", "deduplication", "schema_values")
SEVERITIES = ("critical", "warning")
DOCS_SITE = "lake"
MODE_FILE = ".s1mmalign-docs-mode"
_SPARK_TYPE = {"string": "StringType", "int": "IntegerType", "bigint": "LongType", "double": "DoubleType",
               "float": "FloatType", "boolean": "BooleanType", "timestamp": "TimestampType",
               "binary": "BinaryType", "array<string>": "ArrayType"}
# Tables whose columns and types are checked (clip_scores only when it exists).
SCHEMA_TABLES = ("pairs", "images", "quarantine", "ingest_log", "clip_scores", "text_signals", "fluency_scores")


class SuiteError(JobError, ValueError):
    """A suite file that cannot be used."""


@dataclass(frozen=True)
class Suite:
    name: str
    group: str
    table: str
    spec: Mapping[str, Any]     # the suite JSON

    @property
    def expectation_names(self) -> list[str]:
        return [e["meta"]["name"] for e in self.spec["expectations"]]


@dataclass(frozen=True)
class Result:
    suite: str
    suite_group: str
    table_name: str
    expectation: str
    expectation_type: str
    severity: str
    success: bool
    observed_value: str | None
    element_count: int | None
    unexpected_count: int | None
    unexpected_percent: float | None
    details: str | None

    @property
    def key(self) -> str:
        return f"{self.suite}:{self.expectation}"

    def describe(self) -> str:
        """One short phrase: what was seen."""
        if self.unexpected_count is not None:
            return f"{self.unexpected_count} unexpected of {self.element_count}"
        return f"observed {self.observed_value}"


def schema_suite(table: str) -> dict:
    """The generated suite checking `table`'s columns and types against schemas/tables.yaml."""
    tdef = schemas.table(table)
    exps = [{"type": "expect_table_columns_to_match_set", "severity": "critical",
             "kwargs": {"column_set": tdef.names, "exact_match": True}, "meta": {"name": "columns"}}]
    exps += [{"type": "expect_column_values_to_be_of_type", "severity": "critical",
              "kwargs": {"column": c.name, "type_": _SPARK_TYPE[c.type]}, "meta": {"name": f"type_{c.name}"}}
             for c in tdef.columns]
    return {"name": f"schema.{table}", "expectations": exps,
            "meta": {"group": "schema_values", "table": table,
                     "generated_from": "schemas/tables.yaml "
                                       "(python -m s1mmalign.validate.quality --write-schema-suites)"}}


def _check(spec: Mapping, file: str) -> Suite:
    meta = spec.get("meta") or {}
    name, group, table = spec.get("name"), meta.get("group"), meta.get("table")
    if f"{name}.json" != file:
        raise SuiteError(f"expectations/{file}: suite name {name!r} does not match the file name")
    if group not in GROUPS or not table:
        raise SuiteError(f"expectations/{file}: meta.group must be one of {GROUPS} and meta.table set")
    seen = set()
    for exp in spec.get("expectations") or []:
        ename = (exp.get("meta") or {}).get("name")
        if not ename or ename in seen:
            raise SuiteError(f"expectations/{file}: every expectation needs a unique meta.name ({ename!r})")
        if exp.get("severity") not in SEVERITIES:
            raise SuiteError(f"expectations/{file}: {ename}: severity must be one of {SEVERITIES}")
        seen.add(ename)
    return Suite(name, group, table, spec)


def load_suites() -> list[Suite]:
    """Every suite in expectations/, checked for names, groups and severities."""
    out = []
    for file in resources.list_names("expectations", ".json"):
        try:
            spec = json.loads(resources.read_text("expectations", file))
        except json.JSONDecodeError as exc:
            raise SuiteError(f"expectations/{file} is not valid JSON: {exc}") from None
        out.append(_check(spec, file))
    if not out:
        raise SuiteError("no suites found in expectations/")
    return out


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return None


def _plain(value):
    """numpy's scalars as Python's (pandas' results hold them), anything else as its text."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (str, bytes)) else str(value)


def json_text(value) -> str | None:
    """A result value as the JSON text quality_results stores (at most 4,000 characters)."""
    if value is None:
        return None
    return json.dumps(value, default=_plain, sort_keys=True)[:4000]


def observed_value(observed, unexpected_count: int | None, unexpected_percent: float | None):
    """What a result observed: its observed value, or for an expectation that counts unexpected values (none
    observed) its unexpected count and percent."""
    if observed is None and unexpected_count is not None:
        return {"unexpected_count": unexpected_count, "unexpected_percent": _number(unexpected_percent)}
    return observed


def _number(value) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


class Runner:
    """A file-backed Great Expectations project under the lake, with one Spark data source."""

    ENGINES = ("spark", "pandas")

    def __init__(self, context_root: str, docs_dir: str, conf: QualityConf):
        # Usage statistics: off unless the conf asks (the variable for this process, the flag for the project).
        os.environ["GX_ANALYTICS_ENABLED"] = "true" if conf.analytics else "false"
        import great_expectations as gx

        self.gx = gx
        self.conf = conf
        self.partial_unexpected = conf.partial_unexpected
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.context = gx.get_context(mode="file", project_root_dir=context_root)
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        if self.context.get_config().analytics_enabled is not conf.analytics:
            self.context.enable_analytics(conf.analytics)
        sites = self.context.get_config().data_docs_sites or {}
        for name in list(sites):   # keep one site, at docs_dir (which --out may change between runs)
            base = (sites[name].get("store_backend") or {}).get("base_directory")
            if name != DOCS_SITE or base != docs_dir or conf.data_docs == "off":
                self.context.delete_data_docs_site(name)
        # An existing site with its index in place gets only this runner's pages (and a new index); a new one
        # (first run, another --out, a fresh folder for an s3:// target) every page of the stored results.
        self._mode_file = os.path.join(docs_dir, MODE_FILE)
        self._site_built = (DOCS_SITE in (self.context.get_config().data_docs_sites or {})
                            and os.path.isfile(os.path.join(docs_dir, "index.html"))
                            and _read(self._mode_file) == conf.data_docs)
        self._run_names: set[str] = set()
        self._suites_run: set[str] = set()
        if conf.data_docs != "off" and DOCS_SITE not in (self.context.get_config().data_docs_sites or {}):
            self.context.add_data_docs_site(site_name=DOCS_SITE, site_config={
                "class_name": "SiteBuilder", "show_how_to_buttons": False,
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": docs_dir},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}})
        self.docs_dir = docs_dir
        self._sources: dict[str, Any] = {}

    def source(self, engine: str):
        """The project's data source for an engine ("lake": Spark, "lake_pandas"), made on first use: Great
        Expectations starts a Spark session for its Spark source when none runs, so a Runner that only
        builds docs or sets switches starts none."""
        if engine not in self._sources:
            sources = self.context.data_sources
            name = "lake" if engine == "spark" else "lake_pandas"
            try:        # the project's own, with its assets: recreating it drops them, and a stored validation
                self._sources[engine] = sources.get(name)    # definition naming one then no longer loads
            except (KeyError, LookupError, ValueError):
                self._sources[engine] = (sources.add_spark(name=name) if engine == "spark"
                                         else sources.add_pandas(name=name))
        return self._sources[engine]

    def _definition(self, suite: Suite, engine: str):
        gx = self.gx
        source = self.source(engine)
        try:
            asset = source.get_asset(suite.table)
        except LookupError:
            asset = source.add_dataframe_asset(name=suite.table)
        try:
            batch = asset.get_batch_definition("whole")
        except (KeyError, LookupError, ValueError):
            batch = asset.add_batch_definition_whole_dataframe("whole")
        gx_suite = self.context.suites.add_or_update(gx.ExpectationSuite(
            name=suite.name, expectations=[dict(e) for e in suite.spec["expectations"]],
            meta=dict(suite.spec.get("meta") or {})))
        return self.context.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=suite.name, data=batch, suite=gx_suite))

    def run(self, suite: Suite, df, parameters: Mapping[str, Any], run_name: str,
            engine: str | None = None) -> list[Result]:
        """Validate df (a Spark or a pandas DataFrame) with suite, by `engine` (a Spark DataFrame is brought to
        pandas for "pandas"; by default the engine of df's kind); one Result per expectation (an expectation
        that raised fails)."""
        from great_expectations.core.run_identifier import RunIdentifier

        engine = engine or ("pandas" if is_pandas(df) else "spark")
        if engine not in self.ENGINES:
            raise ValueError(f"engine {engine!r}: one of {self.ENGINES}")
        definition = self._definition(suite, engine)
        self._run_names.add(run_name)
        self._suites_run.add(suite.name)
        data = to_pandas(df) if engine == "pandas" and not is_pandas(df) else df
        with warnings.catch_warnings():     # pandas' "pattern has match groups" on every regex with a group
            warnings.filterwarnings("ignore", message="This pattern is interpreted as a regular expression")
            outcome = definition.run(
                batch_parameters={"dataframe": data}, expectation_parameters=dict(parameters),
                result_format={"result_format": "BASIC", "partial_unexpected_count": self.partial_unexpected},
                run_id=RunIdentifier(run_name=run_name))
        out = []
        for r in outcome.results:
            conf = r.expectation_config
            res = r.result or {}
            raised = (r.exception_info or {}).get("raised_exception")
            details = None
            if raised:
                details = json_text({"exception": (r.exception_info or {}).get("exception_message")})
            elif res.get("partial_unexpected_list"):
                details = json_text({"unexpected": res["partial_unexpected_list"]})
            observed = observed_value(res.get("observed_value"), res.get("unexpected_count"),
                                      res.get("unexpected_percent"))
            out.append(Result(
                suite=suite.name, suite_group=suite.group, table_name=suite.table,
                expectation=conf.meta["name"], expectation_type=conf.type,
                severity=str(getattr(conf.severity, "value", conf.severity)),
                success=bool(r.success) and not raised, observed_value=json_text(observed),
                element_count=res.get("element_count"), unexpected_count=res.get("unexpected_count"),
                unexpected_percent=_number(res.get("unexpected_percent")), details=details))
        return out

    def build_docs(self) -> tuple[str | None, str]:
        """Build Data Docs: the pages of this runner's validations and suites and the index (every stored
        validation's pages on a new site, or one built in another mode): (the index page or None, what was
        done). Offline (the default) the pages load only files of the docs folder; without the assets
        ./build.sh fetches, no pages are built (the results are in quality_results and the report all the
        same)."""
        mode = self.conf.data_docs
        if mode == "off":
            return None, "off by quality.data_docs"
        if mode == "offline":
            assets = docs_assets(self.conf)
            lacking = docs_offline.missing(assets)
            if lacking:
                log.warning("Data Docs not built: %d of their assets are missing in %s (./build.sh fetches them)",
                            len(lacking), assets)
                return None, f"not built: assets missing in {assets} (run ./build.sh)"
        started = time.time()
        self.context.build_data_docs(site_names=[DOCS_SITE], resource_identifiers=self._built_now())
        if mode == "offline":
            done = docs_offline.localize(self.docs_dir, assets, since=started - 1 if self._site_built else None)
            log.info("Data Docs offline: %(rewritten)d of %(pages)d pages rewritten, %(dropped)d URLs disabled", done)
        with open(self._mode_file, "w", encoding="utf-8") as f:    # the mode every page is in: a build in
            f.write(mode)                                            # another renders every page anew
        return os.path.join(self.docs_dir, "index.html"), mode

    def _built_now(self) -> list | None:
        """The pages a build renders: None (every stored result and suite) for a new site; else this runner's
        validation results and suites, so that a build costs one run's pages, not the whole history."""
        if not self._site_built:
            return None
        from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier

        results = [k for k in self.context.validation_results_store.list_keys()
                   if k.run_id.run_name in self._run_names]
        return results + [ExpectationSuiteIdentifier(name=name) for name in sorted(self._suites_run)]


def engine(rows: int | None, conf: QualityConf) -> str:
    """The engine for a frame of (at most) `rows` rows: pandas within quality.pandas_max_rows, else spark
    (always spark when it is 0, an empty frame too)."""
    return "pandas" if rows is not None and 0 < conf.pandas_max_rows and rows <= conf.pandas_max_rows else "spark"


def to_pandas(df):
    """A Spark DataFrame on the driver as pandas, through Arrow (integers with nulls as Python ints and
    None, so that an unexpected value reads as it is stored, not as a float)."""
    return df.toArrow().to_pandas(integer_object_nulls=True)


def is_pandas(frame) -> bool:
    import pandas as pd

    return isinstance(frame, pd.DataFrame)


def docs_assets(conf: QualityConf) -> Path:
    """The folder of Data Docs' fetched assets (a relative quality.docs_assets is under the checkout)."""
    path = Path(conf.docs_assets).expanduser()
    return path if path.is_absolute() else resources.repo_root() / path


def write_schema_suites(folder: Path) -> list[Path]:
    """Regenerate expectations/schema.<table>.json from schemas/tables.yaml."""
    written = []
    for table in SCHEMA_TABLES:
        path = folder / f"schema.{table}.json"
        path.write_text(json.dumps(schema_suite(table), indent=2) + "\n", encoding="utf-8")
        written.append(path)
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m s1mmalign.validate.quality", description=__doc__.splitlines()[0])
    p.add_argument("--write-schema-suites", action="store_true",
                   help="rewrite expectations/schema.<table>.json from schemas/tables.yaml")
    args = p.parse_args(argv)
    if not args.write_schema_suites:
        p.print_usage()
        return 2
    for path in write_schema_suites(resources.repo_root() / "expectations"):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
