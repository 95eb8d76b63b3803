"""The HTTP API (docs/api.md) over real HTTP on 127.0.0.1, against the local Ray app.

These pass with random weights: they check shapes, codes, consistency and routing, not
mask quality (tests/serving/test_quality.py does that once seem-tiny is trained).
"""
from __future__ import annotations

import base64
import io
import time

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from model.rle import decode_mask, encode_mask
from training.shapes_world import CATEGORIES, generate_scene

from .conftest import API_KEY, ServingEnv, png_bytes, sha256


def point_in(mask: np.ndarray) -> list[float]:
    """A pixel well inside a mask (its most interior point)."""
    from scipy.ndimage import distance_transform_edt

    dist = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return [float(x), float(y)]


def check_masks(body: dict, height: int, width: int, vocabulary=CATEGORIES) -> list[np.ndarray]:
    """Every mask well-formed: RLE of the image's size, area and bbox agree, labelled."""
    assert set(body) == {"masks", "timings_ms"}
    assert {"decode", "rle", "features", "decoder", "decoder_call", "total"} == set(body["timings_ms"])
    assert body["masks"], "no mask"
    out = []
    scores = [m["score"] for m in body["masks"]]
    assert scores == sorted(scores, reverse=True), "masks must be best first"
    for m in body["masks"]:
        assert set(m) == {"rle", "bbox", "area", "score", "label", "label_score"}
        assert m["rle"]["size"] == [height, width] and isinstance(m["rle"]["counts"], str)
        mask = decode_mask(m["rle"])
        assert m["area"] == int(mask.sum())
        if m["area"]:
            ys, xs = np.nonzero(mask)
            assert m["bbox"] == [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                                 int(ys.max() - ys.min() + 1)]
        assert m["label"] in vocabulary
        assert 0.0 <= m["label_score"] <= 1.0
        out.append(mask)
    return out


# --------------------------------------------------------------------------- images
def test_upload_returns_sha256_size_and_caches(serving: ServingEnv) -> None:
    scene = generate_scene(101)
    data = png_bytes(scene.image)
    first = serving.upload(data)
    assert first == {"image_id": sha256(data), "width": scene.width, "height": scene.height, "cached": False}
    again = serving.upload(data)
    assert again == {**first, "cached": True}
    stored = list(serving.store_dir.rglob(f"{first['image_id']}.safetensors"))
    assert len(stored) == 1, "the encoder writes the features to the store"
    from store import deserialize_features

    assert deserialize_features(stored[0].read_bytes()).has_object_pass  # with the object queries' pass
    meta = safe_open(str(stored[0]), framework="pt").metadata()
    assert meta["store.codec"] == "shuffle+zstd", "serving compresses as `seem encode` does"


def test_the_decoder_holds_uploaded_images_in_its_lru(serving: ServingEnv) -> None:
    """Routing by image id relies on the replica's multiplexed LRU; see that it is there."""
    from ray import serve

    data = png_bytes(generate_scene(103).image)
    image_id = serving.upload(data)["image_id"]
    decoder = serve.get_deployment_handle("Decoder", serving.app_name).options(multiplexed_model_id=image_id)
    # With two replicas (an earlier test scaled out) this handle learns which one loaded the
    # image only when the replica's report reaches it: until then it may ask the other one.
    deadline = time.monotonic() + 20
    while True:
        info = decoder.info.remote().result(timeout_s=60)
        assert info["cached_images"] is not None, "Serve's multiplexed LRU is no longer where serving.app looks"
        if image_id in info["cached_images"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert image_id in info["cached_images"]
    assert len(info["cached_images"]) <= info["cache_size"]
    # While idle, the replica that holds the image computes its decoder projections for its first
    # phrase (decoder.warm_images), within decoder_cache_mb (256 by default).
    deadline = time.monotonic() + 20
    while image_id not in info["warm_images"] and time.monotonic() < deadline:
        time.sleep(0.2)
        info = decoder.info.remote().result(timeout_s=60)
    assert image_id in info["warm_images"]
    assert 0 < info["decoder_cache_mb"] <= 256
    r = serving.post_json("/v1/segment", {"image_id": image_id, "prompts": [{"type": "text", "text": "a circle"}]},
                          headers={**serving.headers, "Serve-Multiplexed-Model-Id": image_id})
    assert r.status_code == 200, r.text


def test_upload_jpeg_applies_exif_orientation(serving: ServingEnv) -> None:
    scene = generate_scene(102)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: viewers show it as height x width
    buf = io.BytesIO()
    Image.fromarray(scene.image).save(buf, format="JPEG", quality=92, exif=exif.tobytes())
    info = serving.upload(buf.getvalue(), "image/jpeg")
    assert (info["width"], info["height"]) == (scene.height, scene.width)


@pytest.mark.parametrize("where", ["s3", "file", "file-uri"])
def test_upload_by_uri(serving: ServingEnv, where: str) -> None:
    expected = sha256((serving.allowed_dir / "scene7.png").read_bytes())
    uri = {
        "s3": f"s3://{serving.bucket}/allowed/scene7.png",
        "file": str(serving.allowed_dir / "scene7.png"),
        "file-uri": f"file://{serving.allowed_dir / 'scene7.png'}",
    }[where]
    r = serving.post_json("/v1/images", {"uri": uri})
    assert r.status_code == 200, r.text
    assert r.json()["image_id"] == expected


# --------------------------------------------------------------------------- segment
def _prompt(kind: str, scene, mask: np.ndarray) -> dict:
    from numpy.random import default_rng

    from training import prompt_sampling as ps

    rng = default_rng(0)
    if kind == "point":
        return {"type": "point", "xy": point_in(mask)}
    if kind == "box":
        b = ps.sample_box(mask, rng)
        return {"type": "box", "xyxy": [b.x0, b.y0, b.x1, b.y1]}
    if kind == "scribble":
        s = ps.sample_scribble(mask, rng)
        return {"type": "scribble", "path": [list(p) for p in s.path]}
    if kind == "polygon":
        p = ps.sample_polygon(mask, rng)
        return {"type": "polygon", "points": [list(q) for q in p.points]}
    if kind == "mask":
        return {"type": "mask", "rle": encode_mask(mask)}
    if kind == "text":
        return {"type": "text", "text": scene.phrases[0][0]}
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["point", "box", "scribble", "polygon", "mask", "text"])
def test_each_prompt_type_gives_labelled_masks(serving: ServingEnv, kind: str) -> None:
    scene, image_id = serving.scene(3)
    thing = scene.things[0]
    r = serving.post_json("/v1/segment", {"image_id": image_id, "prompts": [_prompt(kind, scene, scene.mask(thing.id))]})
    assert r.status_code == 200, r.text
    check_masks(r.json(), scene.height, scene.width)


def test_composed_prompts_and_a_second_round(serving: ServingEnv) -> None:
    scene, image_id = serving.scene(3)
    mask = scene.mask(scene.things[0].id)
    prompts = [{"type": "text", "text": scene.phrases_for(scene.things[0].id)[0] if scene.phrases_for(
        scene.things[0].id) else scene.things[0].category}, {"type": "point", "xy": point_in(mask)}]
    first = serving.post_json("/v1/segment", {"image_id": image_id, "prompts": prompts})
    assert first.status_code == 200, first.text
    previous = first.json()["masks"][0]["rle"]
    outside = point_in(~mask)
    second = serving.post_json("/v1/segment", {
        "image_id": image_id,
        "prompts": prompts + [{"type": "point", "xy": outside, "positive": False}],
        "previous_mask": previous,
    })
    assert second.status_code == 200, second.text
    check_masks(second.json(), scene.height, scene.width)


def test_referring_region_of_another_image(serving: ServingEnv) -> None:
    target, target_id = serving.scene(3)
    source, source_id = serving.scene(4)
    region = {"type": "box", "xyxy": [float(v) for v in _prompt("box", source, source.mask(source.things[0].id))["xyxy"]]}
    r = serving.post_json("/v1/segment", {"image_id": target_id,
                                          "prompts": [{"type": "referring", "image_id": source_id, "region": region}]})
    assert r.status_code == 200, r.text
    check_masks(r.json(), target.height, target.width)


def test_vocabulary_max_masks_and_determinism(serving: ServingEnv) -> None:
    scene, image_id = serving.scene(3)
    vocabulary = ["blob", "stick", "sky"]
    body = {"image_id": image_id, "prompts": [{"type": "point", "xy": point_in(scene.mask(scene.things[0].id))}],
            "vocabulary": vocabulary, "max_masks": 3}
    r1 = serving.post_json("/v1/segment", body)
    assert r1.status_code == 200, r1.text
    masks = check_masks(r1.json(), scene.height, scene.width, vocabulary)
    assert 1 <= len(masks) <= 3
    r2 = serving.post_json("/v1/segment", body)
    assert [m["rle"] for m in r2.json()["masks"]] == [m["rle"] for m in r1.json()["masks"]]


def test_routing_header_is_a_hint_the_answer_never_depends_on_it(serving: ServingEnv) -> None:
    """docs/api.md: with the header, without it (the proxy derives it from the body) or
    with another image's id (routed there, answered all the same) the same masks come back."""
    scene, image_id = serving.scene(3)
    _, other_id = serving.scene(4)
    body = {"image_id": image_id, "prompts": [{"type": "point", "xy": point_in(scene.mask(scene.things[0].id))}]}
    answers = [serving.post_json("/v1/segment", body, headers={**serving.headers, **extra})
               for extra in ({"Serve-Multiplexed-Model-Id": image_id}, {}, {"serve_multiplexed_model_id": other_id})]
    assert [r.status_code for r in answers] == [200, 200, 200], [r.text for r in answers]
    rles = [[m["rle"] for m in r.json()["masks"]] for r in answers]
    assert rles[1] == rles[0] and rles[2] == rles[0]


def test_segment_by_image_uri(serving: ServingEnv) -> None:
    r = serving.post_json("/v1/segment", {"image_uri": f"s3://{serving.bucket}/allowed/scene7.png",
                                          "prompts": [{"type": "point", "xy": [10, 10]}]})
    assert r.status_code == 200, r.text
    scene = generate_scene(7)
    check_masks(r.json(), scene.height, scene.width)


def test_panoptic(serving: ServingEnv) -> None:
    scene, image_id = serving.scene(3)
    r = serving.post_json("/v1/panoptic", {"image_id": image_id, "png": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"segments", "png", "timings_ms"}
    ids = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["png"]))).convert("RGB")).astype(np.int64)
    assert ids.shape == (scene.height, scene.width, 3)
    id_map = ids[..., 0] + 256 * ids[..., 1] + 65536 * ids[..., 2]
    for seg in body["segments"]:
        assert seg["label"] in CATEGORIES
        assert np.array_equal(decode_mask(seg["rle"]), id_map == seg["id"])
    plain = serving.post_json("/v1/panoptic", {"image_id": image_id, "vocabulary": ["circle", "sky"]})
    assert plain.status_code == 200 and plain.json()["png"] is None
    assert all(s["label"] in ("circle", "sky") for s in plain.json()["segments"])


# --------------------------------------------------------------------------- ops routes and page
def test_health_docs_page(serving: ServingEnv) -> None:
    s = serving.session
    assert s.get(serving.url("/healthz"), timeout=10).json() == {"status": "ok"}  # no key needed
    doc = s.get(serving.url("/openapi.json"), headers=serving.headers, timeout=10).json()
    assert {"/v1/images", "/v1/segment", "/v1/panoptic", "/healthz", "/metrics"} <= set(doc["paths"])
    assert "SegmentRequest" in doc["components"]["schemas"]
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    docs = s.get(serving.url("/docs"), headers=serving.headers, timeout=10)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    page = s.get(serving.url("/"), headers=serving.headers, timeout=10)
    assert page.status_code == 200 and "/static/app.js" in page.text
    js = s.get(serving.url("/static/app.js"), headers=serving.headers, timeout=10)
    assert js.status_code == 200 and "previous_mask" in js.text


def test_basic_auth_with_the_key_as_password_opens_the_page(serving: ServingEnv) -> None:
    r = serving.session.get(serving.url("/"), auth=("anyone", API_KEY), timeout=10)
    assert r.status_code == 200


@pytest.mark.parametrize("stage", ["pixel_decoder", "backbone"])
def test_features_stored_by_another_job_are_served_without_an_upload(serving: ServingEnv, stage: str) -> None:
    """The bulk pipeline fills the same store: its objects (either stage) answer prompts."""
    from model.loading import ModelSpec, load_predictor
    from store import FeatureStore

    scene = generate_scene(150 if stage == "backbone" else 151)
    data = png_bytes(scene.image)
    predictor = load_predictor(ModelSpec("seem-tiny", "default"))  # the replicas' spec: same model id
    features = predictor.encode([scene.image], stage=stage)[0]
    FeatureStore(str(serving.store_dir)).put(features, sha256(data))
    r = serving.post_json("/v1/segment", {"image_id": sha256(data), "prompts": [{"type": "point", "xy": [10, 10]}]})
    assert r.status_code == 200, r.text
    check_masks(r.json(), scene.height, scene.width)
    again = serving.upload(data)
    assert again["cached"] is True and (again["width"], again["height"]) == (scene.width, scene.height)


def test_an_encoder_storing_along_mask_axes_and_the_decoders_reading_them(serving: ServingEnv) -> None:
    """store_dtype "axes" (format 4): the encoder stores the model's mask axes with its first
    object and hands its decoders what a cache miss loads; the running app's decoders read
    such objects (features along the axes) and answer as from the fresh features."""
    import torch

    from serving.app import Encoder
    from store import FeatureStore

    scene = generate_scene(152)
    data = png_bytes(scene.image)
    encoder = Encoder.func_or_class({"store": str(serving.store_dir), "store_dtype": "axes",
                                     "store_codec": "shuffle+zstd"})
    fresh = encoder._encode_items([(sha256(data), data)])[0]
    store = FeatureStore(str(serving.store_dir))
    stored = store.get(encoder.predictor.model_id, sha256(data), dtype=None)
    assert fresh.mask_axes is not None and stored.mask_axes.id == fresh.mask_axes.id
    assert all(torch.equal(stored.tensors[k], fresh.tensors[k]) for k in stored.tensors)
    prompt = {"type": "point", "xy": [scene.width // 2, scene.height // 2]}
    r = serving.post_json("/v1/segment", {"image_id": sha256(data), "prompts": [prompt]})
    assert r.status_code == 200, r.text
    check_masks(r.json(), scene.height, scene.width)
    from model import Point, Prompts

    local = encoder.predictor.decode(fresh, Prompts(spatial=(Point(*prompt["xy"]),)))
    assert r.json()["masks"][0]["area"] == int(local.masks[0].mask.sum())
