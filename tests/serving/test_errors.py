"""Bad requests get the documented 4xx and the JSON error model, over real HTTP; never a 5xx."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from .conftest import LIMITS, OTHER_KEY, ServingEnv, png_bytes


def expect(r, status: int, code: str, words: str = "") -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    assert words.lower() in body["error"]["message"].lower(), body
    return body


def post(serving: ServingEnv, path: str, data, content_type: str | None = "application/json", headers=None):
    h = dict(serving.headers if headers is None else headers)
    if content_type is not None:
        h["Content-Type"] = content_type
    return serving.session.post(serving.url(path), data=data, headers=h, timeout=60)


# --------------------------------------------------------------------------- auth
@pytest.mark.parametrize("path, method", [
    ("/v1/images", "post"), ("/v1/segment", "post"), ("/v1/panoptic", "post"), ("/metrics", "get"),
    ("/docs", "get"), ("/openapi.json", "get"), ("/", "get"), ("/static/app.js", "get"), ("/v1/video/segment", "post"),
])
def test_every_route_but_healthz_needs_the_key(serving: ServingEnv, path: str, method: str) -> None:
    r = getattr(serving.session, method)(serving.url(path), timeout=10)
    expect(r, 401, "unauthorized", "missing")
    assert "Bearer" in r.headers["www-authenticate"]
    r = getattr(serving.session, method)(serving.url(path), headers={"Authorization": "Bearer wrong"}, timeout=10)
    expect(r, 401, "unauthorized", "invalid")
    r = getattr(serving.session, method)(serving.url(path), headers={"Authorization": "Token x"}, timeout=10)
    expect(r, 401, "unauthorized")


def test_each_configured_key_works(serving: ServingEnv) -> None:
    r = serving.session.get(serving.url("/openapi.json"), headers={"Authorization": f"Bearer {OTHER_KEY}"}, timeout=10)
    assert r.status_code == 200


def test_healthz_is_public(serving: ServingEnv) -> None:
    assert serving.session.get(serving.url("/healthz"), timeout=10).status_code == 200


# --------------------------------------------------------------------------- bodies and types
def test_malformed_json(serving: ServingEnv) -> None:
    expect(post(serving, "/v1/segment", b'{"image_id": "ab", "prompts": ['), 400, "invalid_json", "json")
    expect(post(serving, "/v1/panoptic", b"not json at all"), 400, "invalid_json")
    expect(post(serving, "/v1/segment", b""), 400, "invalid_json", "empty")
    expect(post(serving, "/v1/images", b"{oops"), 400, "invalid_json")


def test_wrong_content_type(serving: ServingEnv) -> None:
    body = json.dumps({"image_id": "ab" * 32, "prompts": [{"type": "text", "text": "x"}]})
    expect(post(serving, "/v1/segment", body, "text/plain"), 415, "unsupported_media_type", "application/json")
    expect(post(serving, "/v1/segment", body, None), 415, "unsupported_media_type")
    expect(post(serving, "/v1/panoptic", body, "application/x-www-form-urlencoded"), 415, "unsupported_media_type")
    expect(post(serving, "/v1/images", png_bytes(np.zeros((8, 8, 3), np.uint8)), "text/plain"), 415,
           "unsupported_media_type")
    expect(post(serving, "/v1/images", b"", None), 415, "unsupported_media_type")


def test_empty_and_non_image_bodies(serving: ServingEnv) -> None:
    expect(post(serving, "/v1/images", b"", "image/png"), 400, "empty_body")
    expect(post(serving, "/v1/images", b"<html><body>404</body></html>", "image/png"), 415, "unsupported_image",
           "html")
    expect(post(serving, "/v1/images", bytes(range(256)) * 4, "image/jpeg"), 415, "unsupported_image")


def test_truncated_image_is_422(serving: ServingEnv) -> None:
    rng = np.random.default_rng(0)
    data = png_bytes(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    expect(post(serving, "/v1/images", data[: len(data) // 2], "image/png"), 422, "invalid_image")


def test_oversized_body_by_length_and_by_stream(serving: ServingEnv) -> None:
    big = b"\x89PNG\r\n\x1a\n" + b"\0" * (LIMITS["max_body_bytes"] + 10)
    expect(post(serving, "/v1/images", big, "image/png"), 413, "body_too_large")

    def chunks():  # no Content-Length: the limit must hold while streaming
        for _ in range(40):
            yield b"\0" * 65536

    expect(post(serving, "/v1/images", chunks(), "image/png"), 413, "body_too_large")
    huge_json = json.dumps({"image_id": "ab" * 32, "prompts": [{"type": "text", "text": "x" * (3 << 20)}]})
    expect(post(serving, "/v1/segment", huge_json), 413, "body_too_large")


def test_too_many_pixels(serving: ServingEnv) -> None:
    data = png_bytes(np.zeros((1001, 1000, 3), np.uint8))  # compresses to a few kB
    assert len(data) < LIMITS["max_body_bytes"]
    expect(post(serving, "/v1/images", data, "image/png"), 413, "too_many_pixels", "1001000")


# --------------------------------------------------------------------------- ids, prompts, limits
def test_unknown_image_id(serving: ServingEnv) -> None:
    for image_id in ("0" * 64, "nope", "F" * 64):
        r = serving.post_json("/v1/segment", {"image_id": image_id, "prompts": [{"type": "text", "text": "x"}]})
        expect(r, 404, "image_not_found", "unknown")
    expect(serving.post_json("/v1/panoptic", {"image_id": "1" * 64}), 404, "image_not_found")
    _, image_id = serving.scene(3)
    r = serving.post_json("/v1/segment", {"image_id": image_id, "prompts": [
        {"type": "referring", "image_id": "2" * 64, "region": {"type": "point", "xy": [1, 1]}}]})
    expect(r, 404, "image_not_found")


def test_coordinates_out_of_the_image(serving: ServingEnv) -> None:
    scene, image_id = serving.scene(3)
    w, h = scene.width, scene.height
    bad = [
        {"type": "point", "xy": [w, 0]},
        {"type": "point", "xy": [0, -0.5]},
        {"type": "box", "xyxy": [0, 0, w + 10, 5]},
        {"type": "scribble", "path": [[1, 1], [1, h + 1]]},
        {"type": "polygon", "points": [[1, 1], [5, 1], [1e9, 5]]},
    ]
    for prompt in bad:
        r = serving.post_json("/v1/segment", {"image_id": image_id, "prompts": [prompt]})
        expect(r, 422, "invalid_prompt", "outside the image")
    _, other = serving.scene(4)
    r = serving.post_json("/v1/segment", {"image_id": image_id, "prompts": [
        {"type": "referring", "image_id": other, "region": {"type": "point", "xy": [5000, 1]}}]})
    expect(r, 422, "invalid_prompt", "outside the image")


def test_unknown_prompt_type_and_schema_errors(serving: ServingEnv) -> None:
    _, image_id = serving.scene(3)
    r = serving.post_json("/v1/segment", {"image_id": image_id, "prompts": [{"type": "lasso", "xy": [1, 1]}]})
    expect(r, 422, "validation_error", "lasso")
    r = serving.post_json("/v1/segment", {"image_id": image_id, "prompts": [{"type": "point"}]})
    expect(r, 422, "validation_error", "xy")
    r = serving.post_json("/v1/segment", {"image_id": image_id, "prompts": "point"})
    expect(r, 422, "validation_error", "prompts")
    r = serving.post_json("/v1/segment", [1, 2, 3])
    expect(r, 422, "validation_error")
    r = serving.post_json("/v1/segment", {"image_id": image_id, "image_uri": "s3://x/y",
                                          "prompts": [{"type": "text", "text": "a"}]})
    expect(r, 422, "validation_error", "exactly one")


def test_bad_masks(serving: ServingEnv) -> None:
    scene, image_id = serving.scene(3)
    point = {"type": "point", "xy": [1, 1]}
    cases = [
        {"prompts": [{"type": "mask", "rle": {"size": [scene.height, scene.width], "counts": "not RLE"}}]},
        {"prompts": [{"type": "mask", "rle": {"size": [5, 5], "counts": [25]}}]},
        {"prompts": [point], "previous_mask": {"size": [scene.height, scene.width], "counts": [3, 4]}},
        {"prompts": [point], "previous_mask": {"size": [scene.height + 1, scene.width],
                                               "counts": [(scene.height + 1) * scene.width]}},
    ]
    for case in cases:
        expect(serving.post_json("/v1/segment", {"image_id": image_id, **case}), 422, "invalid_prompt")


def test_limits(serving: ServingEnv) -> None:
    _, image_id = serving.scene(3)
    point = {"type": "point", "xy": [1, 1]}
    cases = [
        ({"prompts": [point] * (LIMITS["max_prompts"] + 1)}, "prompts"),
        ({"prompts": [{"type": "scribble", "path": [[1, 1]] * (LIMITS["max_points"] + 1)}]}, "points"),
        ({"prompts": [point], "max_masks": LIMITS["max_masks"] + 1}, "max_masks"),
        ({"prompts": [point], "vocabulary": [f"n{i}" for i in range(LIMITS["max_vocabulary"] + 1)]}, "vocabulary"),
        ({"prompts": [{"type": "text", "text": "x" * (LIMITS["max_text_chars"] + 1)}]}, "characters"),
    ]
    for case, words in cases:
        expect(serving.post_json("/v1/segment", {"image_id": image_id, **case}), 422, "limit_exceeded", words)
    expect(serving.post_json("/v1/segment", {"image_id": image_id, "prompts": [point], "vocabulary": ["a", "a"]}),
           422, "validation_error", "duplicate")


# --------------------------------------------------------------------------- URIs
def test_uris_outside_the_allowed_prefixes(serving: ServingEnv) -> None:
    refused = [
        f"s3://{serving.bucket}/private/scene7.png",
        f"s3://{serving.bucket}/allowed/../private/scene7.png",
        str(serving.secret_dir / "scene7.png"),
        str(serving.allowed_dir / ".." / "secret" / "scene7.png"),
        "http://127.0.0.1:1/a.png",
        "/etc/passwd",
    ]
    for uri in refused:
        expect(serving.post_json("/v1/images", {"uri": uri}), 400, "uri_not_allowed")
        expect(serving.post_json("/v1/segment", {"image_uri": uri, "prompts": [{"type": "text", "text": "a"}]}),
               400, "uri_not_allowed")


def test_uris_that_hold_no_image(serving: ServingEnv) -> None:
    expect(serving.post_json("/v1/images", {"uri": f"s3://{serving.bucket}/allowed/missing.png"}), 404,
           "image_not_found")
    expect(serving.post_json("/v1/images", {"uri": str(serving.allowed_dir / "missing.png")}), 404, "image_not_found")
    expect(serving.post_json("/v1/images", {"uri": str(serving.allowed_dir / "not-an-image.png")}), 415,
           "unsupported_image")


# --------------------------------------------------------------------------- routes
def test_unknown_route_and_method(serving: ServingEnv) -> None:
    expect(serving.session.get(serving.url("/v2/nothing"), headers=serving.headers, timeout=10), 404, "not_found")
    expect(serving.session.get(serving.url("/v1/segment"), headers=serving.headers, timeout=10), 405,
           "method_not_allowed")


def test_a_corrupt_jpeg_is_never_a_5xx(serving: ServingEnv) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    data[200:260] = b"\xff" * 60  # damage the entropy-coded data
    r = post(serving, "/v1/images", bytes(data), "image/jpeg")
    assert r.status_code < 500, r.text
