"""S3Store against moto's S3 server on 127.0.0.1: listing one level, ranged reads, missing keys."""

import pytest

from helpers import chunked
from s1mmalign.config import S3Conf
from s1mmalign.ingest.sources import discover
from s1mmalign.lake.storage import S3Store, SourceError, TooLarge


@pytest.fixture(scope="module")
def s3(moto):
    store = S3Store("bucket", "root", S3Conf(endpoint_url=moto))
    store.client.create_bucket(Bucket="bucket")
    return store


def put(store, rel, data: bytes):
    store.client.put_object(Bucket=store.bucket, Key=f"{store.prefix}/{rel}", Body=data)


def test_ranged_chunks_over_s3_equal_a_plain_split(s3):
    data = b"\n".join(b"line %d " % i + b"x" * (i % 13) for i in range(200)) + b"\n\n\nend"
    put(s3, "src/jsonl/a.jsonl", data)
    expected = list(enumerate(data.split(b"\n"), start=1))
    for size in (5, 64, 333, 10_000):
        assert chunked(s3, "src/jsonl/a.jsonl", data, size) == expected


def test_listing_and_reads(s3):
    put(s3, "src/jsonl/b.jsonl", b"{}\n")
    put(s3, "src/images_2020.tar.gz.partaa", b"x")
    put(s3, "src/images/p1/fig1.png", b"png")
    store, plan = discover(s3)
    src = plan.source("src")
    assert src.has_tree and [a.name for a in src.archives] == ["src/images_2020.tar.gz"]
    assert all(f.etag for f in src.jsonl)
    assert s3.read("src/images/p1/fig1.png", 100) == b"png"
    assert s3.read("src/images/p1/nope.png", 100) is None
    with pytest.raises(TooLarge, match="3 bytes > 2"):
        s3.read("src/images/p1/fig1.png", 2)
    with pytest.raises(SourceError, match="no-such-bucket"):
        discover(S3Store("no-such-bucket", "", s3.s3))


def test_files_added_to_a_table_on_s3_are_named_as_s3a_reads_them(s3, moto):
    """Lake.files_added over S3 (delta-rs reads the log): the files one append added, under the lake's s3a://
    scheme and present in the bucket; a file removed since (an overwrite) makes it say why it cannot tell."""
    import pyarrow as pa
    from deltalake import write_deltalake

    from helpers import lake_at

    lake = lake_at("s3a://bucket/lake", s3=S3Conf(endpoint_url=moto))
    uri, options = lake.delta_rs("images")
    for n in (2, 3):
        write_deltalake(uri, pa.table({"image_dhash": list(range(n))}), mode="append", storage_options=options)
    added, how = lake.files_added("images", 0, 1)
    assert how == "1 file(s) added to images since version 0" and len(added) == 1
    assert added[0].startswith("s3a://bucket/lake/images/") and added[0].endswith(".parquet")
    assert s3.client.head_object(Bucket="bucket", Key=added[0].split("bucket/", 1)[1])["ContentLength"] > 0
    assert lake.files_added("images", 1, 1) == ([], "0 file(s) added to images since version 1")
    write_deltalake(uri, pa.table({"image_dhash": [9]}), mode="overwrite", storage_options=options)
    assert lake.files_added("images", 1, 2) == (None, "2 file(s) of images removed since version 1")
    assert lake.files_added("images", 1, 7)[0] is None
