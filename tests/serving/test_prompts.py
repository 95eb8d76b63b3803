"""The serving layer without Ray: schemas, limits, prompt conversion, URI rules, errors,
configuration, and one request answered by a real (random-weight) predictor."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from pydantic import ValidationError

from model.rle import decode_mask, encode_mask
from model.types import Box, MaskPrompt, Point, Polygon, Scribble
from serving.api import _TokenBuckets, _credential
from serving.config import Limits, ServeConfig
from serving.errors import ERROR_CODES, ApiError, as_api_error
from serving.limits import check_limits, normalize_image_id, referring_image_ids
from serving.prompts import to_prompts
from serving.schemas import PanopticRequest, SegmentRequest
from serving.sources import resolve_uri

ID = "ab" * 32
SIZE = (100, 200)  # height, width


def seg(**kwargs) -> SegmentRequest:
    kwargs.setdefault("image_id", ID)
    return SegmentRequest.model_validate(kwargs)


def code_of(excinfo: pytest.ExceptionInfo) -> str:
    return excinfo.value.code


# --------------------------------------------------------------------------- schemas
def _mask() -> np.ndarray:
    mask = np.zeros(SIZE, bool)
    mask[10:20, 30:40] = True
    return mask


def _prompts_on_this_image(mask: np.ndarray) -> list[dict]:
    """One prompt of every type that lies on the request's own image."""
    return [
        {"type": "text", "text": "red circle"},
        {"type": "point", "xy": [5, 6], "positive": False},
        {"type": "box", "xyxy": [1, 2, 30, 40]},
        {"type": "scribble", "path": [[1, 1], [5, 5]], "width": 3},
        {"type": "polygon", "points": [[1, 1], [10, 1], [5, 8]]},
        {"type": "mask", "rle": encode_mask(mask)},
    ]


def test_every_prompt_type_parses() -> None:
    req = seg(prompts=_prompts_on_this_image(_mask()) + [
        {"type": "referring", "image_id": "cd" * 32, "region": {"type": "point", "xy": [3, 3]}},
    ], vocabulary=["circle", "square"], max_masks=2)
    assert [p.type for p in req.prompts] == ["text", "point", "box", "scribble", "polygon", "mask", "referring"]
    assert referring_image_ids(req) == ["cd" * 32]


@pytest.mark.parametrize("body, field", [
    ({"image_id": ID, "prompts": [{"type": "lasso"}]}, "prompts.0"),
    ({"image_id": ID, "prompts": [{"type": "point", "xy": [1]}]}, "xy"),
    ({"image_id": ID, "prompts": [{"type": "point", "xy": [1, 2], "positve": True}]}, "positve"),
    ({"image_id": ID, "prompts": []}, "prompts"),
    ({"prompts": [{"type": "text", "text": "a"}]}, "image_id"),
    ({"image_id": ID, "image_uri": "s3://b/k", "prompts": [{"type": "text", "text": "a"}]}, "image_id"),
    ({"image_id": ID, "prompts": [{"type": "polygon", "points": [[1, 1], [2, 2]]}]}, "points"),
    ({"image_id": ID, "prompts": [{"type": "text", "text": "a"}], "max_masks": 0}, "max_masks"),
])
def test_schema_rejects_with_the_field_named(body: dict, field: str) -> None:
    with pytest.raises(ValidationError) as e:
        SegmentRequest.model_validate(body)
    assert field in str(e.value)


def test_nan_and_infinity_are_refused() -> None:
    with pytest.raises(ValidationError):
        SegmentRequest.model_validate_json(f'{{"image_id": "{ID}", "prompts": [{{"type": "point", "xy": [NaN, 1]}}]}}')
    with pytest.raises(ValidationError):
        SegmentRequest.model_validate_json(
            f'{{"image_id": "{ID}", "prompts": [{{"type": "point", "xy": [Infinity, 1]}}]}}')


# --------------------------------------------------------------------------- limits
def test_limits() -> None:
    limits = Limits(max_prompts=2, max_points=3, max_vocabulary=2, max_masks=2, max_text_chars=5)
    ok = seg(prompts=[{"type": "text", "text": "abc"}], vocabulary=["a", "b"], max_masks=2)
    check_limits(ok, limits)
    cases = [
        seg(prompts=[{"type": "point", "xy": [1, 1]}] * 3),
        seg(prompts=[{"type": "scribble", "path": [[1, 1]] * 4}]),
        seg(prompts=[{"type": "referring", "image_id": ID,
                      "region": {"type": "polygon", "points": [[1, 1], [2, 1], [2, 2], [1, 2]]}}]),
        seg(prompts=[{"type": "text", "text": "abcdef"}]),
        seg(prompts=[{"type": "text", "text": "a"}], max_masks=3),
        seg(prompts=[{"type": "text", "text": "a"}], vocabulary=["a", "b", "c"]),
        seg(prompts=[{"type": "text", "text": "a"}], vocabulary=["abcdef"]),
    ]
    for req in cases:
        with pytest.raises(ApiError) as e:
            check_limits(req, limits)
        assert e.value.status == 422 and e.value.code == "limit_exceeded", req
    with pytest.raises(ApiError) as e:
        check_limits(PanopticRequest(image_id=ID, vocabulary=["a", "a"]), limits)
    assert code_of(e) == "validation_error"


def test_image_ids() -> None:
    assert normalize_image_id("AB" * 32) == "ab" * 32
    assert normalize_image_id("nope") is None
    assert normalize_image_id("ab" * 31) is None


# --------------------------------------------------------------------------- conversion
def test_conversion_to_model_types() -> None:
    mask = _mask()
    req = seg(prompts=_prompts_on_this_image(mask), previous_mask=encode_mask(mask))
    prompts, previous = to_prompts(req, SIZE, {})
    assert prompts.text == "red circle"
    kinds = [type(p) for p in prompts.spatial]
    assert kinds == [Point, Box, Scribble, Polygon, MaskPrompt]
    assert prompts.spatial[0] == Point(5.0, 6.0, positive=False)
    assert prompts.spatial[2].width == 3
    assert np.array_equal(prompts.spatial[4].mask, mask)
    assert previous is not None and np.array_equal(previous, mask)


@pytest.mark.parametrize("prompts, previous, words", [
    ([{"type": "point", "xy": [200, 5]}], None, "outside the image"),
    ([{"type": "point", "xy": [-1, 5]}], None, "outside the image"),
    ([{"type": "box", "xyxy": [10, 10, 5, 20]}], None, "x1 must be"),
    ([{"type": "box", "xyxy": [0, 0, 10, 100]}], None, "outside the image"),
    ([{"type": "scribble", "path": [[1, 1], [1, 500]]}], None, "point 1"),
    ([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], None, "at most one text"),
    ([{"type": "text", "text": "   "}], None, "blank"),
    ([{"type": "point", "xy": [5, 5], "positive": False}], None, "only negative"),
    ([{"type": "mask", "rle": {"size": [100, 200], "counts": "@@@@"}}], None, "prompts[0]"),
    ([{"type": "mask", "rle": {"size": [10, 10], "counts": [100]}}], None, "differs from the image"),
    ([{"type": "mask", "rle": {"size": [100, 200], "counts": [20000]}}], None, "empty"),
    ([{"type": "point", "xy": [5, 5]}], {"size": [100, 200], "counts": [5]}, "previous_mask"),
    ([{"type": "point", "xy": [5, 5]}], {"size": [100, 201], "counts": [20100]}, "previous_mask"),
])
def test_conversion_errors_are_422_with_the_reason(prompts: list, previous: dict | None, words: str) -> None:
    req = seg(prompts=prompts, previous_mask=previous)
    with pytest.raises(ApiError) as e:
        to_prompts(req, SIZE, {})
    assert e.value.status == 422 and e.value.code == "invalid_prompt"
    assert words in e.value.message


def test_negative_only_is_allowed_with_a_previous_mask() -> None:
    req = seg(prompts=[{"type": "point", "xy": [5, 5], "positive": False}],
              previous_mask={"size": [100, 200], "counts": [20000]})
    prompts, previous = to_prompts(req, SIZE, {})
    assert prompts.spatial == (Point(5.0, 5.0, positive=False),)
    assert previous is not None and not previous.any()


# --------------------------------------------------------------------------- URIs
def test_uri_rules(tmp_path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (tmp_path / "secret.png").write_bytes(b"x")
    os.symlink(tmp_path / "secret.png", allowed / "link.png")
    prefixes = ("s3://bucket/images/", str(allowed) + "/")
    assert resolve_uri("s3://bucket/images/a/b.png", prefixes) == ("s3", "s3://bucket/images/a/b.png")
    assert resolve_uri(str(allowed / "x.png"), prefixes) == ("file", str(allowed / "x.png"))
    assert resolve_uri(f"file://{allowed}/x.png", prefixes) == ("file", str(allowed / "x.png"))
    refused = [
        "s3://bucket/other/b.png",
        "s3://bucket/images/../other/b.png",
        "s3://bucket/images//b.png",
        "s3://bucketx/images/b.png",
        str(allowed / ".." / "secret.png"),
        str(allowed / "link.png"),  # a symlink out of the prefix
        str(tmp_path / "allowedx.png"),
        "http://example.com/a.png",
        "file://otherhost/a.png",
        "relative/path.png",
    ]
    for uri in refused:
        with pytest.raises(ApiError) as e:
            resolve_uri(uri, prefixes)
        assert e.value.status == 400 and e.value.code == "uri_not_allowed", uri
    with pytest.raises(ApiError) as e:
        resolve_uri("s3://bucket/images/a.png", ())
    assert "disabled" in e.value.message


# --------------------------------------------------------------------------- errors, auth, config
def test_api_error_survives_pickling_and_ray_style_wrapping() -> None:
    err = ApiError("invalid_prompt", "bad click")
    back = pickle.loads(pickle.dumps(err))
    assert (back.status, back.code, back.message) == (422, "invalid_prompt", "bad click")

    class Wrapped(Exception):  # how Ray hands a replica's exception to the caller
        def __init__(self, cause: BaseException) -> None:
            super().__init__(str(cause))
            self.cause = cause

    assert as_api_error(Wrapped(err)) is err
    assert as_api_error(ValueError("x")) is None
    assert set(ERROR_CODES.values()) <= {400, 401, 404, 405, 413, 415, 422, 429, 500, 503}


def test_credentials_and_token_bucket() -> None:
    import base64

    assert _credential({"authorization": "Bearer abc"}) == "abc"
    assert _credential({"authorization": "bearer  abc "}) == "abc"
    basic = base64.b64encode(b"anyone:the-key").decode()
    assert _credential({"authorization": f"Basic {basic}"}) == "the-key"
    assert _credential({"authorization": "Basic !!!"}) is None
    assert _credential({}) is None
    buckets = _TokenBuckets(rate=1.0, burst=3)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = buckets.take("a")
    assert 0 < wait <= 1.0
    assert buckets.take("b") == 0.0  # clients are limited separately


def test_config() -> None:
    cfg = ServeConfig.from_args({"api_keys": "k1,k2", "autoscaling": {"max_replicas": 9}})
    assert cfg.api_keys == ("k1", "k2")
    assert cfg.autoscaling["max_replicas"] == 9 and cfg.autoscaling["min_replicas"] == 1
    assert ServeConfig.from_args(None).model == "seem-tiny"
    with pytest.raises(ValidationError):
        ServeConfig.from_args({"limtis": {}})  # typo: refused, not ignored
    with pytest.raises(ValidationError):
        ServeConfig.from_args({"allowed_uri_prefixes": ["relative/"]})
    with pytest.raises(ValidationError):
        ServeConfig.from_args({"api_keys": ["ok", " "]})
    # Every store format is selectable; an unknown one is refused, naming the choices.
    assert ServeConfig.from_args({"store_dtype": "int8"}).store_dtype == "int8"
    with pytest.raises(ValidationError, match="float16, bfloat16, float32, int8"):
        ServeConfig.from_args({"store_dtype": "int4"})
    assert ServeConfig.from_args(None).store_codec == "shuffle+zstd"  # what `seem encode` writes
    with pytest.raises(ValidationError, match="none, zlib, zstd, shuffle\\+zlib, shuffle\\+zstd"):
        ServeConfig.from_args({"store_codec": "lz4"})


# --------------------------------------------------------------------------- one request, real predictor
@pytest.fixture(scope="module")
def predictor_and_scene():
    from model.loading import ModelSpec, load_predictor
    from training.shapes_world import generate_scene

    predictor = load_predictor(ModelSpec("seem-tiny", "default"))
    scene = generate_scene(3)
    return predictor, scene, predictor.encode([scene.image])[0]


def test_segment_and_panoptic_bodies(predictor_and_scene) -> None:
    from serving.inference import panoptic, segment

    predictor, scene, features = predictor_and_scene
    thing = scene.things[0]
    ys, xs = np.nonzero(scene.mask(thing.id))
    req = seg(prompts=[{"type": "point", "xy": [float(xs[0]), float(ys[0])]}], max_masks=2,
              vocabulary=["circle", "square", "triangle", "star", "hexagon", "ring", "diamond", "cross"])
    body = segment(predictor, features, req, {})
    assert 1 <= len(body["masks"]) <= 2
    for m in body["masks"]:
        mask = decode_mask(m["rle"])
        assert mask.shape == scene.image.shape[:2]
        assert m["area"] == int(mask.sum())
        assert m["label"] in req.vocabulary
        assert np.isfinite(m["score"]) and 0 <= m["label_score"] <= 1
    assert set(body["timings_ms"]) == {"decode", "rle"}
    pan = panoptic(predictor, features, PanopticRequest(image_id=ID, png=True))
    assert isinstance(pan["segments"], list) and isinstance(pan["png"], str)


def test_prompt_the_rasteriser_refuses_becomes_422(predictor_and_scene) -> None:
    from serving.inference import segment

    predictor, scene, features = predictor_and_scene
    h, w = scene.image.shape[:2]
    req = seg(prompts=[{"type": "point", "xy": [w + 3, 1]}])
    with pytest.raises(ApiError) as e:
        segment(predictor, features, req, {})
    assert e.value.status == 422


def test_very_thin_image_is_segmented_in_its_own_coordinates(predictor_and_scene) -> None:
    """A 1 x 1024 strip resizes to one row at the model's input, not to nothing: it must encode and
    answer a click with a mask of the strip's own shape."""
    from serving.inference import segment

    predictor = predictor_and_scene[0]
    strip = np.zeros((1, 1024, 3), np.uint8)
    strip[:, 300:700] = (220, 30, 30)
    features = predictor.encode([strip])[0]
    body = segment(predictor, features, seg(prompts=[{"type": "point", "xy": [500, 0]}]), {})
    assert body["masks"] and decode_mask(body["masks"][0]["rle"]).shape == (1, 1024)
