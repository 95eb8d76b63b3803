"""Limits where request bytes enter: an ASGI middleware inside Ray Serve's HTTP proxy.

Serve's proxy hands a request to the ingress replica as soon as its headers arrive; the
replica then pulls the body through the proxy. A client that sends headers and then one
byte a minute therefore holds one of the ingress's `max_ongoing_requests` slots for as
long as it likes, and a few hundred such clients take the whole API down (no key needed:
authentication runs in the replica, after the body). The uvicorn server inside the proxy
is not configurable from outside (no body timeout, no connection limit), but Serve runs
the middlewares named by `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH` around its own app,
in the proxy process, for every request. This is one of them (`seem serve` sets the
variable; KubeRay sets it in the pod spec):

    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=serving.proxy_guard:middlewares

Before the request goes anywhere, the guard
- refuses header blocks over `SEEM_MAX_HEADER_BYTES` (431),
- refuses more than `SEEM_MAX_OPEN_REQUESTS` requests in the proxy at once (503 +
  Retry-After) and, when set, more than `SEEM_MAX_REQUESTS_PER_CLIENT` from one client
  address (429),
- reads the whole body within `SEEM_BODY_TIMEOUT_S` (408 otherwise, connection closed)
  and at most `SEEM_MAX_BODY_BYTES` (413), with at most `SEEM_MAX_BUFFERED_BYTES` of
  bodies held in the proxy at once (503 + Retry-After),
so a replica only ever sees requests whose bytes have all arrived. It also routes: a request
without Serve's `serve_multiplexed_model_id` header gets one from its body (the image id,
or the sha256 of an upload), so it reaches the replica holding that image in one hop. Bodies are buffered in
the proxy: the ingress's own (smaller, per-application) body limit still applies after.
Because the body is held here, a request whose replica died before answering is sent once
more (`ProxyGuard._forward`), then answered 503 with Retry-After: Serve's own answer to a
lost replica is no response (a bare 500 at the client).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Any

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["GuardLimits", "ProxyGuard", "middlewares", "CALLBACK_ENV", "CALLBACK_PATH", "BODY_SCOPE_KEY"]

CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
#: Serve's routing header (the proxy reads it with '-' and '_' alike), docs/api.md.
ROUTING_HEADER = b"serve_multiplexed_model_id"
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_MAX_ROUTING_JSON = 1 << 20
#: The ASGI scope key under which the guard hands the whole request body to the app.
BODY_SCOPE_KEY = "seem.body"
CALLBACK_PATH = "serving.proxy_guard:middlewares"


@dataclass(frozen=True)
class GuardLimits:
    """The proxy's limits; `from_env` reads them from the proxy's environment."""

    body_timeout_s: float = 10.0
    max_body_bytes: int = 64 << 20
    max_header_bytes: int = 16 << 10
    max_open_requests: int = 1024
    # Bodies are read before authentication (that happens in the replica): bound their sum too.
    max_buffered_bytes: int = 512 << 20
    # Off by default: behind a load balancer or NAT every client has the same address.
    max_requests_per_client: int = 0

    _ENV = {"body_timeout_s": "SEEM_BODY_TIMEOUT_S", "max_body_bytes": "SEEM_MAX_BODY_BYTES",
            "max_header_bytes": "SEEM_MAX_HEADER_BYTES", "max_open_requests": "SEEM_MAX_OPEN_REQUESTS",
            "max_buffered_bytes": "SEEM_MAX_BUFFERED_BYTES",
            "max_requests_per_client": "SEEM_MAX_REQUESTS_PER_CLIENT"}

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "GuardLimits":
        """Limits from `SEEM_*` variables (unset: the defaults); a bad value is an error."""
        environ = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        for field, var in cls._ENV.items():
            if environ.get(var):
                kind = float if field == "body_timeout_s" else int
                value = kind(environ[var])
                if value < 0 or (value == 0 and field != "max_requests_per_client"):
                    raise ValueError(f"{var} must be positive, got {environ[var]!r}")
                values[field] = value
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The variables that give these limits to a proxy started from this environment."""
        return {var: str(getattr(self, field)) for field, var in self._ENV.items()}


def middlewares() -> list[Middleware]:
    """The callback Serve's proxy calls (see module doc)."""
    return [Middleware(ProxyGuard, limits=GuardLimits.from_env())]


async def _reply(send: Send, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
           (b"connection", b"close")]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


class _Gone(Exception):
    """The client disconnected: nobody to answer."""


class ProxyGuard:
    """See the module doc. One instance per proxy process."""

    def __init__(self, app: ASGIApp, limits: GuardLimits) -> None:
        self.app = app
        self.limits = limits
        self.open = 0
        self.buffered = 0  # body bytes held by requests in this proxy
        self.per_client: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("?",))[0]
        try:
            self._admit(scope, client)
        except _Refused as e:
            await _reply(send, e.status, e.code, e.message, e.headers)
            return
        self.open += 1
        self.per_client[client] = self.per_client.get(client, 0) + 1
        held = [0]  # this request's share of self.buffered
        try:
            try:
                body = await self._read_body(scope, receive, held)
            except _Refused as e:
                await _reply(send, e.status, e.code, e.message, e.headers)
                return
            except _Gone:
                return
            await self._forward(scope, body, receive, send)
        finally:
            self.open -= 1
            self.buffered -= held[0]
            left = self.per_client[client] - 1
            if left:
                self.per_client[client] = left
            else:
                del self.per_client[client]

    async def _forward(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        """Serve's app with the buffered body. When a replica dies under a request, Serve's
        proxy answers with no response at all (the client would see a bare 500): then the
        request goes once more (every route is idempotent and the body is still here), and
        after that the client gets 503 `unavailable` with Retry-After, never a 500."""
        started = False
        serve_error: int | None = None  # the status of an answer Serve's proxy made itself

        async def send_tracking(message: Message) -> None:
            nonlocal started, serve_error
            if message["type"] == "http.response.start":
                started = True
                if _is_serve_error(message):
                    serve_error = int(message["status"])
                    return
            if serve_error is None:
                await send(message)

        for _ in range(2):
            # The body rides along in the scope, which Serve pickles to the replica with the
            # request: the app reads it there instead of calling back into this proxy for it
            # (one Ray round trip less on every POST; serving.api._read_body).
            await self.app(_with_route(scope, body), _replay(body, receive), send_tracking)
            if started:
                break
        if serve_error is not None:
            status, code, message = _SERVE_ERRORS[serve_error]
            await _reply(send, status, code, message, {"Retry-After": "1"})
        elif not started:
            await _reply(send, 503, "unavailable", "a replica of the service is unavailable; retry shortly",
                         {"Retry-After": "1"})

    def _admit(self, scope: Scope, client: str) -> None:
        limits = self.limits
        header_bytes = sum(len(k) + len(v) + 4 for k, v in scope.get("headers", []))
        if header_bytes > limits.max_header_bytes:
            raise _Refused(431, "headers_too_large",
                           f"request headers of {header_bytes} bytes; the limit is {limits.max_header_bytes}")
        if self.open >= limits.max_open_requests:
            raise _Refused(503, "overloaded", "the service is at its connection limit; retry shortly",
                           {"Retry-After": "1"})
        if limits.max_requests_per_client and self.per_client.get(client, 0) >= limits.max_requests_per_client:
            raise _Refused(429, "too_many_requests",
                           f"more than {limits.max_requests_per_client} requests open from one client",
                           {"Retry-After": "1"})

    async def _read_body(self, scope: Scope, receive: Receive, held: list[int]) -> bytes:
        """The whole body within the time and size limits (or `_Refused`); `held[0]` counts
        the bytes this request adds to the proxy's buffered total."""
        limits = self.limits
        for name, value in scope.get("headers", []):
            if name.lower() == b"content-length" and value.isdigit() and int(value) > limits.max_body_bytes:
                raise _Refused(413, "body_too_large",
                               f"body of {int(value)} bytes is over the limit of {limits.max_body_bytes} bytes")
        # One deadline for the whole body (`asyncio.timeout`: no task per chunk, as `wait_for` makes).
        try:
            async with asyncio.timeout(limits.body_timeout_s):
                return await self._read_chunks(receive, held)
        except TimeoutError:
            raise _Refused(408, "body_timeout",
                           f"the request body did not arrive within {limits.body_timeout_s:g} s") from None

    async def _read_chunks(self, receive: Receive, held: list[int]) -> bytes:
        limits = self.limits
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Gone
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limits.max_body_bytes:
                raise _Refused(413, "body_too_large", f"body is over the limit of {limits.max_body_bytes} bytes")
            held[0] += len(chunk)
            self.buffered += len(chunk)
            if self.buffered > limits.max_buffered_bytes:
                raise _Refused(503, "overloaded", "the service is holding too many request bodies; retry shortly",
                               {"Retry-After": "1"})
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _with_route(scope: Scope, body: bytes) -> Scope:
    """The scope handed on: with the body, and with Serve's routing header
    `serve_multiplexed_model_id` when the client sent none but the body names the image
    (docs/api.md): the request then goes straight to the replica holding that image."""
    routed = {**scope, BODY_SCOPE_KEY: body}
    headers = scope.get("headers", [])
    if any(k.lower().replace(b"-", b"_") == ROUTING_HEADER for k, _ in headers):
        return routed
    image_id = _image_id_of(scope.get("path", ""), _content_type(headers), body)
    if image_id:
        routed["headers"] = [*headers, (ROUTING_HEADER, image_id.encode())]
    return routed


def _content_type(headers: list[tuple[bytes, bytes]]) -> bytes:
    for name, value in headers:
        if name.lower() == b"content-type":
            return value.split(b";", 1)[0].strip().lower()
    return b""


def _image_id_of(path: str, media: bytes, body: bytes) -> str | None:
    """The image a request is about, as the replica will name it: the sha256 of uploaded
    bytes, or the `image_id` of a JSON request (bodies up to `_MAX_ROUTING_JSON` bytes are
    parsed here; larger ones, and anything unexpected, go unrouted: any replica answers)."""
    if path == "/v1/images" and media.startswith(b"image/"):
        return hashlib.sha256(body).hexdigest()
    if path not in ("/v1/segment", "/v1/panoptic") or b"json" not in media or len(body) > _MAX_ROUTING_JSON:
        return None
    try:
        value = json.loads(body).get("image_id")
    except (ValueError, AttributeError):
        return None  # the replica answers 400/422 with the reason
    return value.lower() if isinstance(value, str) and _SHA256.fullmatch(value) else None


#: Answers Serve's proxy makes itself (plain text), in the API's JSON error form (docs/api.md).
_SERVE_ERRORS = {
    # Mostly a full queue (max_queued_requests), else no replica of the deployment is ready.
    503: (503, "overloaded", "the service is at capacity (or has no replica ready); retry shortly"),
    429: (503, "overloaded", "the service is at capacity; retry shortly"),
    408: (503, "timeout", "the request timed out in the service; retry shortly"),
}


def _is_serve_error(message: Message) -> bool:
    """Whether a response start is one of Serve's own error answers (our app answers every
    error in JSON): a queue full of requests (backpressure), no replica, a timeout."""
    if int(message["status"]) not in _SERVE_ERRORS:
        return False
    for name, value in message.get("headers", []):
        if name.lower() == b"content-type" and b"json" in value.lower():
            return False
    return True


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that yields the buffered body once, then the client's next events
    (a disconnect), which the app may wait for."""
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
