import pyarrow as pa
from pyspark.sql import types as T

from s1mmalign.lake import schemas


def test_spark_and_arrow_schemas_agree():
    for name in schemas.lake_tables() + ["parsed_lines", "image_facts", "jsonl_chunks"]:
        tdef = schemas.table(name)
        spark, arrow = tdef.spark(), tdef.arrow()
        assert spark.fieldNames() == arrow.names == tdef.names
        for sf, af in zip(spark.fields, arrow, strict=True):
            assert sf.nullable == af.nullable, (name, sf.name)


def test_contract_columns_of_pairs():
    pairs = schemas.table("pairs")
    assert pairs.partition_by == ("discipline",) and pairs.key == ("pair_id",)
    need = {"pair_id", "source", "discipline", "arxiv_id", "arxiv_version", "paper_id", "image_path",
            "caption", "recaption", "title", "categories", "doi", "metadata_json", "image_sha256",
            "image_format", "width", "height", "image_bytes", "image_dhash", "source_file", "source_line",
            "ingest_run_id", "ingested_at"}
    assert need <= set(pairs.names)
    assert pairs.spark()["categories"].dataType == T.ArrayType(T.StringType(), True)
    assert pairs.arrow().field("ingested_at").type == pa.timestamp("us", tz="UTC")


def test_lake_tables_and_reasons():
    assert set(schemas.lake_tables("ingest")) == {"pairs", "images", "quarantine", "ingest_log", "image_index",
                                                    "waiting_lines", "job_runs"}
    assert set(schemas.lake_tables("validate")) == {"duplicates", "quality_results", "dhash_bands", "dhash_edges",
                                                   "validate_state", "checked_pairs", "checked_images"}
    assert set(schemas.lake_tables()) == set(schemas.lake_tables("ingest")) | set(schemas.lake_tables("validate")) | {
        "clip_scores", "text_signals", "fluency_scores"}
    assert "duplicate_pair" in schemas.quarantine_reasons()
    assert len(set(schemas.quarantine_reasons())) == len(schemas.quarantine_reasons()) == 15
