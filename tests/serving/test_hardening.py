"""Defences that need no running service: the rules that bound a request's cost before any
work starts, allow-list boundaries, errors that never quote a file, fail-closed binding,
and the limits of the proxy guard (its behaviour against the real `seem serve` is in
test_attacks.py)."""
from __future__ import annotations

import asyncio
import io
import time

import numpy as np
import pytest
from PIL import Image

from model.image_io import ImageDecodeError, ImageTooLarge, decode_image, image_size
from serving.config import Limits, ServeConfig
from serving.errors import ApiError
from serving.limits import check_limits
from serving.prompts import to_prompts
from serving.proxy_guard import GuardLimits, ProxyGuard
from serving.schemas import PanopticRequest, SegmentRequest
from serving.sources import resolve_uri

SHA = "ab" * 32
# The 165-byte mask prompt: RLE counts that claim a 46340 x 46340 mask.
BOMB = {"type": "mask", "rle": {"size": [46340, 46340], "counts": "`PZmoo1"}}


def test_rle_bomb_is_refused_before_decoding() -> None:
    req = SegmentRequest.model_validate({"image_id": SHA, "prompts": [BOMB]})
    started = time.perf_counter()
    with pytest.raises(ApiError) as e:  # the ingress: the claimed size against the pixel limit
        check_limits(req, Limits())
    assert e.value.status == 422 and "46340" in e.value.message
    with pytest.raises(ApiError) as e:  # the decoder: the claimed size against the image's
        to_prompts(req, (100, 200), {})
    assert e.value.status == 422 and "differs from the image" in e.value.message
    assert time.perf_counter() - started < 1.0, "both refusals must come before any pixel is allocated"


def test_rle_counts_length_is_bounded() -> None:
    long_counts = {"type": "mask", "rle": {"size": [100, 200], "counts": "0" * 5000}}
    req = SegmentRequest.model_validate({"image_id": SHA, "prompts": [long_counts]})
    with pytest.raises(ApiError) as e:
        check_limits(req, Limits(max_rle_chars=4096))
    assert e.value.code == "limit_exceeded" and "4096" in e.value.message
    # More characters than runs a mask of that size can have: refused without parsing them.
    big = {"type": "mask", "rle": {"size": [10, 10], "counts": "0" * 19_000_000}}
    req = SegmentRequest.model_validate({"image_id": SHA, "prompts": [big]})
    started = time.perf_counter()
    with pytest.raises(ApiError) as e:
        to_prompts(req, (10, 10), {})
    assert "more than a 10 x 10 mask can need" in e.value.message
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize("xy", [[True, False], ["1", "2"]])
def test_point_coordinates_must_be_numbers(xy: list) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        SegmentRequest.model_validate_json(
            '{"image_id": "%s", "prompts": [{"type": "point", "xy": %s}]}' % (SHA, str(xy).replace("'", '"')
                                                                               .replace("True", "true")
                                                                               .replace("False", "false")
                                                                               .replace("None", "null")))
    ok = SegmentRequest.model_validate_json('{"image_id": "%s", "prompts": [{"type": "point", "xy": [3, 4.5]}]}'
                                            % SHA)
    assert ok.prompts[0].xy == [3.0, 4.5]


def test_vocabulary_total_characters_are_bounded() -> None:
    limits = Limits()
    names = [f"{i:03d}" + "x" * 480 for i in range(512)]  # the 512 names of ~490 characters
    with pytest.raises(ApiError) as e:
        check_limits(PanopticRequest(image_id=SHA, vocabulary=names), limits)
    assert e.value.code == "limit_exceeded" and f"{limits.max_vocabulary_chars}" in e.value.message
    check_limits(PanopticRequest(image_id=SHA, vocabulary=["person", "car", "sky"]), limits)


def test_allow_list_matches_whole_path_components(tmp_path) -> None:
    allowed, secret = tmp_path / "allowed", tmp_path / "allowed-secret"
    allowed.mkdir()
    secret.mkdir()
    for prefixes in ((str(allowed), "s3://imgs/photos"), (str(allowed) + "/", "s3://imgs/photos/")):
        assert resolve_uri(str(allowed / "x.png"), prefixes) == ("file", str(allowed / "x.png"))
        assert resolve_uri("s3://imgs/photos/a/x.png", prefixes) == ("s3", "s3://imgs/photos/a/x.png")
        for uri in (str(secret / "x.png"), f"{allowed}/../allowed-secret/x.png", f"file://{secret}/x.png",
                    "s3://imgs/photos2/x.png", "s3://imgs/photos-secret/x.png", "s3://imgsx/photos/x.png"):
            with pytest.raises(ApiError) as e:
                resolve_uri(uri, prefixes)
            assert e.value.code == "uri_not_allowed", (uri, prefixes)
    assert resolve_uri("s3://imgs/any/x.png", ("s3://imgs",)) == ("s3", "s3://imgs/any/x.png")  # whole bucket


def test_decode_errors_never_quote_the_file() -> None:
    secret = b"AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n"
    for data in (secret, b"P6\n" + b"9" * 200 + b" 1\n255\n", bytes(range(1, 40)) + secret):
        with pytest.raises(ImageDecodeError) as e:
            decode_image(data)
        message = str(e.value)
        assert "wJalr" not in message and "AWS_SECRET" not in message and "999" not in message, message


def test_huge_image_header_is_too_large_not_unsupported() -> None:
    # A real PNG header claiming 20000 x 20000 (past Pillow's own decompression-bomb guard).
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, format="PNG")
    with pytest.raises(ImageTooLarge):
        image_size(buf.getvalue())
    from serving.api import _check_image_header

    with pytest.raises(ApiError) as e:
        _check_image_header(buf.getvalue(), 1_000_000)
    assert (e.value.status, e.value.code) == (413, "too_many_pixels")


def test_open_bind_without_keys_fails_closed(monkeypatch) -> None:
    monkeypatch.delenv("SEEM_API_KEYS", raising=False)
    open_config = ServeConfig()
    assert open_config.open_to_network_refusal("0.0.0.0") is not None
    assert open_config.open_to_network_refusal("::") is not None
    for host in ("127.0.0.1", "::1", "localhost"):
        assert open_config.open_to_network_refusal(host) is None
    assert ServeConfig(api_keys=("k",)).open_to_network_refusal("0.0.0.0") is None
    assert ServeConfig(insecure=True).open_to_network_refusal("0.0.0.0") is None
    monkeypatch.setenv("SEEM_API_KEYS", "from-a-secret")
    assert open_config.open_to_network_refusal("0.0.0.0") is None


def _run_guard(limits: GuardLimits, events: list, headers: list | None = None, delay_s: float = 0.0) -> tuple:
    """One request through ProxyGuard: (status sent, body the app saw or None)."""
    seen: dict = {}

    async def app(scope, receive, send) -> None:
        seen["body"] = (await receive())["body"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def main() -> int:
        queue = list(events)
        sent: list = []

        async def receive():
            if not queue:
                await asyncio.sleep(3600)
            await asyncio.sleep(delay_s)
            return queue.pop(0)

        async def send(message) -> None:
            sent.append(message)

        scope = {"type": "http", "headers": headers or [], "client": ("127.0.0.1", 1)}
        await ProxyGuard(app, limits)(scope, receive, send)
        return sent[0]["status"]

    return asyncio.run(main()), seen.get("body")


def test_proxy_guard_limits() -> None:
    limits = GuardLimits(body_timeout_s=0.3, max_body_bytes=10, max_header_bytes=100)
    whole = [{"type": "http.request", "body": b"abc", "more_body": True},
             {"type": "http.request", "body": b"de", "more_body": False}]
    assert _run_guard(limits, whole) == (200, b"abcde")
    started = time.perf_counter()
    assert _run_guard(limits, whole[:1]) == (408, None)  # the rest of the body never comes
    assert time.perf_counter() - started < 2
    assert _run_guard(limits, [{"type": "http.request", "body": b"x" * 11}]) == (413, None)
    assert _run_guard(limits, whole, headers=[(b"x-big", b"y" * 200)]) == (431, None)
    assert _run_guard(GuardLimits(max_buffered_bytes=4), whole) == (503, None)  # the proxy's total
    assert GuardLimits.from_env({"SEEM_BODY_TIMEOUT_S": "2.5"}).body_timeout_s == 2.5
    with pytest.raises(ValueError):
        GuardLimits.from_env({"SEEM_MAX_OPEN_REQUESTS": "0"})


def _guard_answers(answers: list) -> tuple[list, int]:
    """One request through ProxyGuard whose app answers as `answers` say, one entry per call
    (None: no response at all, as Serve's proxy does when the replica died; else (status,
    content-type)): the messages the client got and how often the app was called."""
    calls = []

    async def app(scope, receive, send) -> None:
        calls.append((await receive())["body"])
        answer = answers[min(len(calls), len(answers)) - 1]
        if answer is not None:
            status, media = answer
            await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", media)]})
            await send({"type": "http.response.body", "body": b"Request dropped due to backpressure"})

    async def main() -> list:
        sent: list = []
        queue = [{"type": "http.request", "body": b"{}", "more_body": False}]

        async def receive():
            return queue.pop(0) if queue else {"type": "http.disconnect"}

        async def send(message) -> None:
            sent.append(message)

        await ProxyGuard(app, GuardLimits())({"type": "http", "headers": [], "client": ("127.0.0.1", 1)}, receive, send)
        return sent

    sent = asyncio.run(main())
    assert all(body == b"{}" for body in calls), "every try gets the whole body"
    return sent, len(calls)


def test_proxy_guard_turns_a_lost_replica_into_a_retry_then_a_503_never_a_500() -> None:
    import json

    sent, calls = _guard_answers([None, (200, b"application/json")])  # died, then another replica answered
    assert (sent[0]["status"], calls) == (200, 2)
    sent, calls = _guard_answers([None])  # died twice: 503 + Retry-After in the API's error form
    headers = dict(sent[0]["headers"])
    assert (sent[0]["status"], calls, headers[b"retry-after"]) == (503, 2, b"1")
    assert json.loads(sent[1]["body"])["error"]["code"] == "unavailable"
    sent, calls = _guard_answers([(503, b"text/plain")])  # Serve's own backpressure answer, in JSON
    assert (sent[0]["status"], calls, json.loads(sent[1]["body"])["error"]["code"]) == (503, 1, "overloaded")
    sent, _ = _guard_answers([(503, b"application/json")])  # our app's own 503 passes untouched
    assert sent[1]["body"] == b"Request dropped due to backpressure"


def test_proxy_guard_routes_requests_without_the_header_by_their_body() -> None:
    import hashlib
    import json

    from serving.proxy_guard import BODY_SCOPE_KEY, ROUTING_HEADER, _with_route

    image_id = "AB" * 32

    def routed(path: str, body: bytes, media: bytes = b"application/json", extra: list | None = None) -> bytes | None:
        scope = _with_route({"path": path, "headers": [(b"content-type", media), *(extra or [])]}, body)
        assert scope[BODY_SCOPE_KEY] == body
        return dict(scope["headers"]).get(ROUTING_HEADER)

    segment = json.dumps({"image_id": image_id, "prompts": [{"type": "referring", "image_id": "cd" * 32}]}).encode()
    assert routed("/v1/segment", segment) == image_id.lower().encode()  # the body's image, canonical
    assert routed("/v1/panoptic", json.dumps({"image_id": image_id}).encode()) == image_id.lower().encode()
    assert routed("/v1/images", b"\x89PNG...", b"image/png") == hashlib.sha256(b"\x89PNG...").hexdigest().encode()
    assert routed("/v1/segment", b'{"image_uri": "s3://b/k.png"}') is None  # not known before the read
    assert routed("/v1/segment", b"{not json") is None and routed("/v1/segment", b"[1]") is None
    sent = [(b"Serve-Multiplexed-Model-Id", b"mine")]  # the client's own header is left alone
    assert routed("/v1/segment", segment, extra=sent) is None


def test_seem_serve_passes_local_paths_absolute(tmp_path, monkeypatch) -> None:
    """Replicas start in the package root (never the user's folder, see serving.cli), so a
    relative checkpoint, config or store path must reach them absolute."""
    import argparse

    from serving.cli import _app_args

    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.safetensors").write_bytes(b"")
    args = argparse.Namespace(config=None, store="features", endpoint_url=None, model="seem-tiny",
                              weights="w.safetensors", api_keys=None, allowed_uri_prefixes=None)
    app_args = _app_args(args)
    assert app_args["weights"] == str(tmp_path / "w.safetensors")
    assert app_args["store"] == str(tmp_path / "features") and app_args["model"] == "seem-tiny"
