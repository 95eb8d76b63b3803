"""The pipeline's stages without Ray: decode, encoder worker, segmenter worker."""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pyarrow as pa
import pytest
import torch

from model.image_io import decode_image
from model.rle import decode_mask
from pipeline.stages import (
    DECODED_SCHEMA,
    ENCODED_SCHEMA,
    ITEM_SCHEMA,
    SEGMENT_INPUT_SCHEMA,
    DecodeOptions,
    EncoderWorker,
    FeatureFormat,
    ModelSpec,
    SegmenterWorker,
    SegmentSpec,
    decode_item,
    decode_table,
    load_predictor,
)
from store import FeatureStore

from .conftest import SAMPLES

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools vs numpy 2

MODEL = ModelSpec()  # seem-tiny with its shipped weights


@pytest.fixture(scope="module")
def predictor():
    return load_predictor(MODEL)


def _items(paths) -> pa.Table:
    return pa.table({"uri": [str(p) for p in paths], "size": [p.stat().st_size for p in paths],
                     "etag": ["v1"] * len(paths)}, schema=ITEM_SCHEMA)


def test_model_is_the_same_in_every_process(predictor):
    # The store is keyed by the model id: every process building the same spec must get the
    # same one, for the shipped weights and for seeded random weights; the seed matters.
    import subprocess
    import sys

    specs = {"shipped": MODEL, "random 3": ModelSpec(weights="random", seed=3)}
    code = ("from pipeline.stages import ModelSpec, load_predictor; "
            "print(load_predictor(ModelSpec()).model_id, load_predictor(ModelSpec(weights='random', seed=3)).model_id)")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    here = [load_predictor(spec).model_id for spec in specs.values()]
    assert other.stdout.strip().splitlines()[-1].split() == here
    assert load_predictor(ModelSpec(weights="random", seed=4)).model_id not in here


def test_decode_corpus(mixed_source, tmp_path, predictor):
    root, valid, broken = mixed_source
    store = FeatureStore(str(tmp_path / "store"))
    paths = sorted(p for p in root.rglob("*") if p.is_file())
    table = decode_table(_items(paths), model_name=MODEL.name, model_id=predictor.model_id, store_uri=store.root_uri,
                         store_endpoint_url=None, options=DecodeOptions())
    assert table.schema == DECODED_SCHEMA
    rows = {r["uri"][len(str(root)) + 1:]: r for r in table.to_pylist()}
    assert set(rows) == set(valid) | set(broken)
    for name, (w, h) in valid.items():
        r = rows[name]
        assert r["state"] == "decoded", (name, r["error"])
        assert (r["width"], r["height"]) == (w, h), name
        # Resized to the model input right away: the original never travels on.
        assert (r["pixels_h"], r["pixels_w"]) == predictor.input_size(h, w)
        assert len(r["pixels"]) == r["pixels_h"] * r["pixels_w"] * 3
        assert r["sha256"] == hashlib.sha256((root / name).read_bytes()).hexdigest()
    for name, reason in broken.items():
        r = rows[name]
        assert r["state"] == "error" and r["pixels"] is None
        assert r["error"].startswith("decode: ") and reason in r["error"], (name, r["error"])


def test_decode_limits_and_unreadable(tmp_path, predictor):
    store = FeatureStore(str(tmp_path / "store"))
    src = SAMPLES / "coffee.jpg"
    kw = dict(model_name=MODEL.name, model_id=predictor.model_id, store=store)
    r = decode_item(str(src), src.stat().st_size, "e", options=DecodeOptions(max_pixels=10_000), **kw)
    assert r["state"] == "error" and "pixels > cap 10000" in r["error"]
    r = decode_item(str(src), src.stat().st_size, "e", options=DecodeOptions(max_bytes=1000), **kw)
    assert r["error"].startswith("read: object too large")
    r = decode_item(str(tmp_path / "gone.jpg"), 10, "e", options=DecodeOptions(), **kw)
    assert r["error"].startswith("read: ") and "gone.jpg" in r["error"]


def test_resized_in_decode_gives_the_predictors_features(tmp_path, predictor):
    """Decoding prepares the image for the model (resize, with its geometry); encoding that
    in the worker must equal encoding the original image."""
    image = decode_image((SAMPLES / "coffee.jpg").read_bytes())
    store = FeatureStore(str(tmp_path / "store"))
    worker = EncoderWorker(model=MODEL, model_id=predictor.model_id, store_uri=store.root_uri,
                           feature_format=FeatureFormat(dtype="float32"))
    decoded = decode_table(_items([SAMPLES / "coffee.jpg"]), model_name=MODEL.name, model_id=predictor.model_id,
                           store_uri=store.root_uri, store_endpoint_url=None, options=DecodeOptions())
    out = worker(decoded).to_pylist()[0]
    assert out["status"] == "ok" and out["encoded"]
    stored = store.get(predictor.model_id, out["sha256"])
    direct = predictor.encode([image])[0]
    assert stored.original_size == direct.original_size == image.shape[:2]
    assert stored.input_size == direct.input_size and stored.padded_size == direct.padded_size
    assert stored.has_object_pass  # the bulk encode stores the object queries' pass too
    for k, v in direct.tensors.items():
        torch.testing.assert_close(stored.tensors[k], v, atol=1e-4, rtol=1e-4)


def test_encoder_worker_rows_and_store(tmp_path, mixed_source, predictor):
    root, valid, broken = mixed_source
    store = FeatureStore(str(tmp_path / "store"))
    names = ["samples/shapes-1.png", "corpus/very_wide.png", "corpus/tiny.png", "corpus/truncated.jpg"]
    paths = [root / n for n in names]
    # A second name for the same bytes: its features already exist on the next call.
    (tmp_path / "copy").mkdir()
    dup = tmp_path / "copy" / "same.png"
    dup.write_bytes(paths[0].read_bytes())
    worker = EncoderWorker(model=MODEL, model_id=predictor.model_id, store_uri=store.root_uri, batch_size=2,
                           decode_options=DecodeOptions())  # decodes inside, like --decode-in actor
    first = worker(_items(paths)).to_pylist()
    assert [r["status"] for r in first] == ["ok", "ok", "ok", "error"]
    assert all(r["encoded"] for r in first[:3]) and not first[3]["encoded"]
    assert set(first[0]) == set(ENCODED_SCHEMA.names)  # metadata only, never tensors
    for r in first[:3]:
        f = store.get(predictor.model_id, r["sha256"])  # verifies checksum and framing
        assert f.original_size == (r["height"], r["width"])
        assert f.dtype == torch.float32  # read back as fp32; stored as the format says
        assert r["bytes"] == store.backend.stat(r["feature_key"]).size
    assert first[1]["width"] == 4000 and first[1]["height"] == 2  # thinner than the model's resize rule allows
    second = worker(_items([dup])).to_pylist()[0]
    assert second["status"] == "ok" and not second["encoded"]
    assert second["feature_key"] == first[0]["feature_key"]
    # Identical new bytes twice in one batch: encoded once.
    twin = tmp_path / "copy" / "twin.png"
    twin.write_bytes(paths[2].read_bytes() + b"")
    fresh = FeatureStore(str(tmp_path / "store2"))
    worker2 = EncoderWorker(model=MODEL, model_id=predictor.model_id, store_uri=fresh.root_uri,
                            decode_options=DecodeOptions())
    pair = worker2(_items([paths[2], twin])).to_pylist()
    assert [r["encoded"] for r in pair] == [True, False] and pair[0]["feature_key"] == pair[1]["feature_key"]


def test_worker_refuses_another_model(tmp_path, predictor):
    with pytest.raises(RuntimeError, match="the job is for"):
        EncoderWorker(model=MODEL, model_id="seem-tiny-000000000000", store_uri=str(tmp_path / "s"))


def test_segmenter_text_panoptic_and_overlays(tmp_path, panoptic_config):
    model = ModelSpec(name=panoptic_config)
    predictor = load_predictor(model)
    store = FeatureStore(str(tmp_path / "store"))
    inputs = _segment_rows_for(model, predictor, store, [SAMPLES / "shapes-2.png", SAMPLES / "chelsea.jpg"])
    vocab = predictor.default_vocabulary.names
    cats = {n: i + 1 for i, n in enumerate(vocab)} | {"a red circle": len(vocab) + 1}
    spec = SegmentSpec(vocabulary=vocab, texts=("a red circle", "circle"), categories=cats, overlays=True,
                       out_uri=str(tmp_path / "out"))
    worker = SegmenterWorker(model=model, model_id=predictor.model_id, store_uri=store.root_uri, segment=spec)
    rows = worker(inputs).to_pylist()
    for row in rows:
        assert row["status"] == "ok", row["error"]
        masks = row["masks"]
        sources = [m["source"] for m in masks]
        assert sources.count("text") == 2 and "panoptic" in sources
        assert sources == sorted(sources)  # panoptic first, then texts in the order given
        assert [m["index"] for m in masks] == list(range(len(masks)))
        for m in masks:
            mask = decode_mask({"size": [row["height"], row["width"]], "counts": m["rle_counts"]})
            assert mask.sum() == m["area"] > 0
            ys, xs = np.nonzero(mask)
            assert m["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert m["category_id"] == cats[m["label"]]
        assert [m["prompt"] for m in masks if m["source"] == "text"] == ["a red circle", "circle"]
        png = (tmp_path / "out" / row["overlay"]).read_bytes()
        assert decode_image(png).shape[:2] == (row["height"], row["width"])
    # Same inputs, same worker state or not: same masks.
    again = SegmenterWorker(model=model, model_id=predictor.model_id, store_uri=store.root_uri, segment=spec)
    assert again(inputs).to_pylist() == rows


def _segment_rows_for(model, predictor, store, paths):
    worker = EncoderWorker(model=model, model_id=predictor.model_id, store_uri=store.root_uri,
                           decode_options=DecodeOptions())
    enc = worker(_items(paths)).to_pylist()
    assert all(r["status"] == "ok" for r in enc)
    return pa.table({"image_id": list(range(1, len(enc) + 1)), "uri": [r["uri"] for r in enc],
                     "sha256": [r["sha256"] for r in enc], "width": [r["width"] for r in enc],
                     "height": [r["height"] for r in enc]}, schema=SEGMENT_INPUT_SCHEMA)


def test_segmenter_heals_damaged_features(tmp_path, predictor):
    store = FeatureStore(str(tmp_path / "store"))
    src = tmp_path / "img.png"
    src.write_bytes((SAMPLES / "shapes-3.png").read_bytes())
    inputs = _segment_rows_for(MODEL, predictor, store, [src])
    sha = inputs["sha256"][0].as_py()
    path = store.uri(predictor.model_id, sha)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF  # one flipped bit in the tensor data
    open(path, "wb").write(bytes(data))
    spec = SegmentSpec(texts=("circle",), panoptic=False, categories={"circle": 1})
    worker = SegmenterWorker(model=MODEL, model_id=predictor.model_id, store_uri=store.root_uri, segment=spec)
    row = worker(inputs).to_pylist()[0]
    assert row["status"] == "ok" and row["reencoded"] and len(row["masks"]) == 1
    store.get(predictor.model_id, sha)  # verifies again
    # A source that changed since it was encoded cannot be healed from: an error, not wrong masks.
    store.delete(predictor.model_id, sha)
    src.write_bytes((SAMPLES / "shapes-4.png").read_bytes())
    row = worker(inputs).to_pylist()[0]
    assert row["status"] == "error" and row["error"].startswith("read: ") and "changed" in row["error"]


def test_feature_format_validation():
    with pytest.raises(ValueError, match="stage"):
        FeatureFormat(stage="decoder")
    with pytest.raises(ValueError, match="dtype"):
        FeatureFormat(dtype="int4")  # int8 is a format since store version 2
    assert FeatureFormat(dtype="int8").dtype == "int8"
    with pytest.raises(ValueError, match="codec"):
        FeatureFormat(codec="lz4")
    assert dataclasses.replace(FeatureFormat(), codec="shuffle+zstd").codec == "shuffle+zstd"


def test_axes_format_through_the_workers_and_lost_axes_healed(tmp_path, predictor):
    """Format 4 in a bulk job: the encoder stores the model's mask axes once with its objects,
    the segmenter reads the features along them (the masks of float32 features, to within the
    quantisation), and an object whose axes were lost is encoded again, axes and all."""
    paths = [SAMPLES / "shapes-2.png", SAMPLES / "chelsea.jpg"]
    spec = SegmentSpec(texts=("circle",), panoptic=True, categories={})
    rows = {}
    for dtype in ("float32", "axes"):
        store = FeatureStore(str(tmp_path / dtype))
        fmt = FeatureFormat(dtype=dtype, codec="shuffle+zstd")
        worker = EncoderWorker(model=MODEL, model_id=predictor.model_id, store_uri=store.root_uri,
                               decode_options=DecodeOptions(), feature_format=fmt)
        enc = worker(_items(paths)).to_pylist()
        assert all(r["status"] == "ok" for r in enc)
        inputs = pa.table({"image_id": [1, 2], "uri": [r["uri"] for r in enc], "sha256": [r["sha256"] for r in enc],
                           "width": [r["width"] for r in enc], "height": [r["height"] for r in enc]},
                          schema=SEGMENT_INPUT_SCHEMA)
        segmenter = SegmenterWorker(model=MODEL, model_id=predictor.model_id, store_uri=store.root_uri,
                                    segment=spec, feature_format=fmt)
        rows[dtype] = segmenter(inputs).to_pylist()
    axes_store = FeatureStore(str(tmp_path / "axes"))
    assert len(list(axes_store.backend.list(f"{predictor.model_id}/mask_axes/"))) == 1
    assert axes_store.get(predictor.model_id, rows["axes"][0]["sha256"]).mask_axes is not None
    for want, got in zip(rows["float32"], rows["axes"]):
        assert got["status"] == "ok" and not got["reencoded"], got["error"]
        assert [m["label"] for m in got["masks"]] == [m["label"] for m in want["masks"]]
        for a, b in zip(want["masks"], got["masks"]):
            size = [want["height"], want["width"]]
            ma, mb = (decode_mask({"size": size, "counts": m["rle_counts"]}) for m in (a, b))
            assert (ma & mb).sum() / max((ma | mb).sum(), 1) > 0.97
    # The axes object lost: the segmenter re-encodes the first image (storing the axes again),
    # then reads as before.
    for key, _ in list(axes_store.backend.list(f"{predictor.model_id}/mask_axes/")):
        axes_store.backend.delete(key)
    from pipeline.stages import _feature_store

    _feature_store.cache_clear()  # as in a new worker process: the axes this one read are gone with it
    from storage import CorruptObject

    with pytest.raises(CorruptObject, match="mask axes"):
        FeatureStore(axes_store.root_uri).get(predictor.model_id, rows["axes"][0]["sha256"])
    segmenter = SegmenterWorker(model=MODEL, model_id=predictor.model_id, store_uri=axes_store.root_uri,
                                segment=spec, feature_format=FeatureFormat(dtype="axes", codec="shuffle+zstd"))
    healed = segmenter(inputs).to_pylist()
    assert all(r["status"] == "ok" for r in healed) and healed[0]["reencoded"]
    # (the axes it stored again are the ones the second object names: that one reads as it was)
    assert [m["label"] for m in healed[0]["masks"]] == [m["label"] for m in rows["axes"][0]["masks"]]
    assert len(list(axes_store.backend.list(f"{predictor.model_id}/mask_axes/"))) == 1
