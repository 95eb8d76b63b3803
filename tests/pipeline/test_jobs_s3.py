"""End to end against an S3 endpoint over real HTTP (moto's server on 127.0.0.1): source,
feature store and outputs all in a bucket, reached only through boto3 / pyarrow with an
endpoint URL, as AWS or MinIO would be."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from pycocotools.coco import COCO

from model.image_io import decode_image
from pipeline.jobs import EncodeOptions, SegmentOptions, encode_job, segment_job
from pipeline.stages import DecodeOptions
from store import FeatureStore

pytestmark = [pytest.mark.timeout(300), pytest.mark.filterwarnings("ignore::DeprecationWarning")]

VALID = ("samples/shapes-1.png", "samples/chelsea.jpg", "corpus/orient_6.jpg", "corpus/cmyk.jpg",
         "corpus/gray16.png", "corpus/UPPER_CASE.JPEG")
BROKEN = ("corpus/truncated.jpg", "corpus/error_page.jpg", "corpus/bomb.png")


def test_s3_end_to_end(ray_address, s3_bucket, mixed_source):
    root, valid, broken = mixed_source
    client = s3_bucket.client()
    for name in VALID + BROKEN:
        client.put_object(Bucket=s3_bucket.name, Key=f"photos/in/{name}", Body=(root / name).read_bytes())
    client.put_object(Bucket=s3_bucket.name, Key="photos/in/readme.txt", Body=b"not listed: no image extension")
    endpoint = s3_bucket.endpoint_url
    # Decoding in separate CPU tasks here (the GPU-cluster layout), reading from S3 there.
    opts = EncodeOptions(progress=False, batch_size=4, endpoint_url=endpoint, decode=DecodeOptions(endpoint_url=endpoint),
                         decode_in="tasks")
    seg = SegmentOptions(texts=("circle",), overlays=True, out_endpoint_url=endpoint)
    src, store, out = s3_bucket.uri("photos/in"), s3_bucket.uri("features"), s3_bucket.uri("results/run1")

    summary = segment_job(src, out, store, seg, opts)
    assert (summary.encode.encoded, summary.encode.failed) == (len(VALID), len(BROKEN))
    assert summary.segmented == len(VALID)

    def get(key: str) -> bytes:
        return client.get_object(Bucket=s3_bucket.name, Key=f"results/run1/{key}")["Body"].read()

    coco = COCO()
    coco.dataset = json.loads(get("annotations.json"))
    coco.createIndex()
    images = coco.loadImgs(coco.getImgIds())
    assert [i["file_name"] for i in images] == sorted(s3_bucket.uri(f"photos/in/{n}") for n in VALID)
    for img in images:
        name = img["file_name"].split("/photos/in/", 1)[1]
        assert (img["width"], img["height"]) == valid[name]
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]])):
            assert coco.annToMask(ann).sum() == ann["area"]
        assert decode_image(get(img["overlay"])).shape[:2] == (img["height"], img["width"])
    # pyarrow's own S3 filesystem reads the Parquet outputs (what Spark/DuckDB users would do).
    fs = s3_bucket.pyarrow_filesystem()
    masks = pq.read_table(f"{s3_bucket.name}/results/run1/masks.parquet", filesystem=fs)
    assert masks.num_rows == len(coco.getAnnIds())
    errors = pq.read_table(f"{s3_bucket.name}/results/run1/errors.parquet", filesystem=fs).to_pylist()
    assert {e["uri"] for e in errors} == {s3_bucket.uri(f"photos/in/{n}") for n in BROKEN}
    for e in errors:
        assert broken[e["uri"].split("/photos/in/", 1)[1]] in e["reason"]

    # Features and manifest live in the bucket, one object per image.
    model_id = summary.encode.model_id
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket.name, Prefix=f"features/{model_id}/")["Contents"]]
    assert sum("/features/" in k for k in keys) == len(VALID)
    assert any("/manifest/part-" in k for k in keys)
    fstore = FeatureStore(store, endpoint)
    for row in fstore.manifest(model_id).read().to_pylist():
        if row["status"] == "ok":
            fstore.get(model_id, row["sha256"])  # verifies

    # Re-run: nothing encoded, identical outputs; a list file naming the same objects too.
    before = {k: get(k) for k in ("masks.parquet", "annotations.json", "errors.parquet")}
    again = segment_job(src, out, store, seg, opts)
    assert again.encode.encoded == 0 and again.encode.skipped == len(VALID) + len(BROKEN)
    assert {k: get(k) for k in before} == before
    client.put_object(Bucket=s3_bucket.name, Key="photos/list.txt",
                      Body="\n".join(f"in/{n}" for n in VALID).encode())
    listed = encode_job(s3_bucket.uri("photos/list.txt"), store, opts)
    assert (listed.listed, listed.skipped, listed.encoded) == (len(VALID), len(VALID), 0)
