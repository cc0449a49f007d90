"""Publishing to a real S3-compatible server on loopback (moto's standalone server)."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

import srlib
from srlib.ops.publish import PublishError, S3Target, publish, publish_product
from srlib.product.manifest import write_manifest
from srlib.product.qc import CheckResult, QCReport

from .servers import CREDENTIALS, moto_s3, s3_client

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3():
    mp = pytest.MonkeyPatch()
    for key, value in CREDENTIALS.items():
        mp.setenv(key, value)
    with moto_s3() as endpoint:
        client = s3_client(endpoint)
        client.create_bucket(Bucket="products")
        yield client
    mp.undo()


def _keys(client, prefix=""):
    listing = client.list_objects_v2(Bucket="products", Prefix=prefix)
    return sorted(o["Key"] for o in listing.get("Contents", []))


def test_multipart_upload_is_verified_and_lands_at_its_key(s3, tmp_path):
    path = tmp_path / "S2x10_T29RKH_20200219_v1.tif"
    data = bytes(range(256)) * (24 * 4096)  # 24 MiB: three 8 MiB parts
    path.write_bytes(data)
    stored = publish([path], "s3://products/tiles/29RKH", client=s3, multipart_mb=8)
    assert list(stored) == ["s3://products/tiles/29RKH/S2x10_T29RKH_20200219_v1.tif"]
    parts = [hashlib.sha256(data[i:i + (8 << 20)]).digest() for i in range(0, len(data), 8 << 20)]
    composite = base64.b64encode(hashlib.sha256(b"".join(parts)).digest()).decode()
    assert next(iter(stored.values())).split("-")[0] == composite  # as S3 reports it
    body = s3.get_object(Bucket="products", Key="tiles/29RKH/" + path.name)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(data).hexdigest()
    assert _keys(s3, "tiles/29RKH/.incoming") == []


def test_failure_mid_upload_leaves_nothing_at_the_final_key(s3, tmp_path):
    path = tmp_path / "big.tif"
    path.write_bytes(b"\1" * (20 << 20))
    sent = {"n": 0}

    def explode(nbytes):
        sent["n"] += nbytes
        if sent["n"] > (9 << 20):  # after the first part
            raise ConnectionError("network cable pulled")

    with pytest.raises(PublishError, match="not published"):
        publish([path], "s3://products/fail", client=s3, multipart_mb=8, progress=explode)
    assert sent["n"] > 0
    assert _keys(s3, "fail/") == []
    uploads = s3.list_multipart_uploads(Bucket="products").get("Uploads", [])
    assert not [u for u in uploads if u["Key"].startswith("fail/")]  # aborted, not dangling


def test_only_products_that_passed_qc_are_published(s3, tmp_path):
    cog = tmp_path / "p.tif"
    cog.write_bytes(b"cog")
    bad = QCReport(str(cog), [CheckResult("values", "fail", 0, "x")])
    with pytest.raises(srlib.QCFailed, match="values"):
        publish_product(cog, bad, "s3://products/qc", client=s3)
    assert _keys(s3, "qc/") == []
    good = QCReport(str(cog), [CheckResult("values", "pass", 1, "x")])
    with pytest.raises(srlib.InputError, match="no complete manifest"):
        publish_product(cog, good, "s3://products/qc", client=s3)  # not a finished product
    assert _keys(s3, "qc/") == []
    good.to_json(cog.with_suffix(".qc.json"))
    write_manifest(cog, [cog, cog.with_suffix(".qc.json")], identity={"date": "20200219"},
                   qc=good.to_dict())
    uris = publish_product(cog, good, "s3://products/qc", client=s3)
    assert uris == ["s3://products/qc/p.tif", "s3://products/qc/p.qc.json",
                    "s3://products/qc/p.manifest.json"]
    manifest = json.loads(s3.get_object(Bucket="products", Key="qc/p.manifest.json")["Body"]
                          .read())
    assert [f["name"] for f in manifest["files"]] == ["p.tif", "p.qc.json"]
    assert all(f["stored_checksum"] for f in manifest["files"])


@pytest.mark.parametrize("uri", ["products/x", "s3://", "https://bucket/x"])
def test_bad_destination(uri):
    with pytest.raises(srlib.InputError, match="s3://bucket/prefix"):
        S3Target.parse(uri)
