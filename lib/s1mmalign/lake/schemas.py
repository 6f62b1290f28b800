"""Spark and Arrow schemas, all built from the one definition in schemas/tables.yaml."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import pyarrow as pa
from pyspark.sql import types as T

from s1mmalign import resources

_SPARK = {
    "string": T.StringType(), "int": T.IntegerType(), "bigint": T.LongType(),
    "double": T.DoubleType(), "float": T.FloatType(), "boolean": T.BooleanType(),
    "timestamp": T.TimestampType(), "binary": T.BinaryType(),
    "array<string>": T.ArrayType(T.StringType(), containsNull=True),
}
_ARROW = {
    "string": pa.string(), "int": pa.int32(), "bigint": pa.int64(), "double": pa.float64(),
    "float": pa.float32(), "boolean": pa.bool_(), "timestamp": pa.timestamp("us", tz="UTC"),
    "binary": pa.binary(), "array<string>": pa.list_(pa.string()),
}


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    nullable: bool


@dataclass(frozen=True)
class TableDef:
    name: str
    columns: tuple[Column, ...]
    partition_by: tuple[str, ...] = ()
    key: tuple[str, ...] = ()
    catalog: bool = False
    job: str | None = None
    write_options: tuple[tuple[str, str], ...] = ()   # Delta/Parquet writer options (e.g. compression)
    properties: tuple[tuple[str, str], ...] = ()      # Delta table properties (also the Parquet writer's conf)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def spark(self) -> T.StructType:
        """The Spark schema."""
        return T.StructType([T.StructField(c.name, _SPARK[c.type], c.nullable) for c in self.columns])

    def arrow(self) -> pa.Schema:
        """The Arrow schema (what Python tasks yield)."""
        return pa.schema([pa.field(c.name, _ARROW[c.type], c.nullable) for c in self.columns])


# A pair's figure type (its stratum with the discipline: score_fluency's sample, the caption card, export's
# --where): metadata.figure_type, blank or absent -> unknown. sql/12_pair_strata.sql says the same in SQL.
FIGURE_TYPE_SQL = "coalesce(nullif(trim(get_json_object(metadata_json, '$.figure_type')), ''), 'unknown')"


def _parse_column(spec: str) -> Column:
    parts = spec.split()
    if len(parts) not in (2, 4) or parts[1] not in _SPARK:
        raise ValueError(f"bad column spec in schemas/tables.yaml: {spec!r}")
    nullable = not (len(parts) == 4 and parts[2:] == ["not", "null"])
    return Column(parts[0], parts[1], nullable)


def _load() -> dict:
    return resources.tables_yaml()


@functools.lru_cache(maxsize=None)
def table(name: str) -> TableDef:
    """The definition of table or intermediate `name`."""
    spec = _load()[name]
    return TableDef(
        name=name,
        columns=tuple(_parse_column(c) for c in spec["columns"]),
        partition_by=tuple(spec.get("partition_by", ())),
        key=tuple(spec.get("key", ())),
        catalog=bool(spec.get("catalog", False)),
        job=spec.get("job"),
        write_options=tuple((str(k), str(v)) for k, v in (spec.get("write_options") or {}).items()),
        properties=tuple((str(k), str(v).lower() if isinstance(v, bool) else str(v))
                         for k, v in (spec.get("properties") or {}).items()),
    )


def lake_tables(job: str | None = None) -> list[str]:
    """Names of the Delta tables under a lake root (not the intermediates); those `job` creates if given."""
    return [n for n in resources.table_names() if job is None or _load()[n].get("job") == job]


def producer(name: str) -> str:
    """The job script that writes table `name` (its `job:` in tables.yaml), for "run ... first" messages."""
    return f"jobs/{table(name).job}.py"


def quarantine_reasons() -> tuple[str, ...]:
    """The stable reason codes of the quarantine table."""
    return tuple(_load()["quarantine_reasons"])
