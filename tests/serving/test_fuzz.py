"""Fuzzing the OpenAPI schema with schemathesis over HTTP: no 5xx, responses as documented.

Schema-valid (positive) and schema-breaking (negative) requests, a bounded number per
operation. Half of the JSON bodies that name an image get the id of a real uploaded
image, so generated prompts reach the decoder instead of stopping at a 404.
"""
from __future__ import annotations

import hashlib
import json

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

from .conftest import ServingEnv, png_bytes

KNOWN_IMAGES: list[str] = []
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def api_schema(serving: ServingEnv):
    for seed in (3, 4):
        KNOWN_IMAGES.append(serving.scene(seed)[1])
    return schemathesis.openapi.from_url(serving.url("/openapi.json"), headers=serving.headers)


def _with_known_image(case) -> None:  # noqa: ANN001 - a schemathesis Case
    """Point half of the JSON bodies at a real image (deterministically, by content)."""
    body = case.body
    if isinstance(body, dict) and ("image_id" in body or "image_uri" in body):
        digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).digest()
        if digest[0] % 2 == 0:
            body = dict(body)
            body.pop("image_uri", None)
            body["image_id"] = KNOWN_IMAGES[digest[1] % len(KNOWN_IMAGES)]
            case.body = body


# (method, path, generation mode, examples). GET routes take no input: nothing to negate.
CASES = [("GET", "/healthz", "positive", 3), ("GET", "/metrics", "positive", 2)] + [
    ("POST", path, mode, n) for path, n in (("/v1/images", 25), ("/v1/segment", 80), ("/v1/panoptic", 25))
    for mode in ("positive", "negative")]


@pytest.mark.parametrize("method, path, mode, examples", CASES, ids=[f"{m} {p} {g}" for m, p, g, _ in CASES])
def test_fuzzed_requests_get_no_5xx_and_match_the_schema(api_schema, serving: ServingEnv, method: str, path: str,
                                                         mode: str, examples: int) -> None:
    operation = api_schema[path][method]
    statuses: list[int] = []

    @given(case=operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode)))
    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case) -> None:  # noqa: ANN001
        _with_known_image(case)
        response = case.call(base_url=serving.base_url, headers=serving.headers, timeout=60)
        statuses.append(response.status_code)
        case.validate_response(response, checks=CHECKS)

    run()
    assert statuses and max(statuses) < 500
    print(f"{mode} {method} {path}: {len(statuses)} requests, statuses {sorted(set(statuses))}")


@pytest.fixture(scope="module")
def real_png() -> bytes:
    from training.shapes_world import generate_scene

    return png_bytes(generate_scene(9, size=(48, 64)).image)


@st.composite
def damaged_images(draw, original: bytes) -> bytes:  # noqa: ANN001
    """Random bytes, or a real PNG truncated / with bytes overwritten: what uploads go wrong as."""
    kind = draw(st.sampled_from(["random", "truncated", "flipped"]))
    if kind == "random":
        return draw(st.binary(min_size=0, max_size=2048))
    if kind == "truncated":
        return original[: draw(st.integers(0, len(original) - 1))]
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


def test_damaged_uploads_get_4xx_never_5xx(serving: ServingEnv, real_png: bytes) -> None:
    statuses: list[int] = []

    @given(data=damaged_images(real_png), media=st.sampled_from(["image/png", "image/jpeg", "image/webp"]))
    @settings(max_examples=40, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(data: bytes, media: str) -> None:
        r = serving.session.post(serving.url("/v1/images"), data=data,
                                 headers={**serving.headers, "Content-Type": media}, timeout=60)
        statuses.append(r.status_code)
        assert r.status_code < 500, r.text
        if r.status_code != 200:
            assert r.json()["error"]["code"] in {"empty_body", "unsupported_image", "invalid_image",
                                                 "too_many_pixels"}, r.text

    run()
    print(f"damaged uploads: {len(statuses)} requests, statuses {sorted(set(statuses))}")
