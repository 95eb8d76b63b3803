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
so a replica only ever sees requests whose bytes have all arrived. Bodies are buffered in
the proxy: the ingress's own (smaller, per-application) body limit still applies after.
"""
from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from typing import Any

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["GuardLimits", "ProxyGuard", "middlewares", "CALLBACK_ENV", "CALLBACK_PATH"]

CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
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
            await self.app(scope, _replay(body, receive), send)
        finally:
            self.open -= 1
            self.buffered -= held[0]
            left = self.per_client[client] - 1
            if left:
                self.per_client[client] = left
            else:
                del self.per_client[client]

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
        deadline = time.monotonic() + limits.body_timeout_s
        chunks: list[bytes] = []
        total = 0
        while True:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise asyncio.TimeoutError
                message = await asyncio.wait_for(receive(), left)
            except asyncio.TimeoutError:
                raise _Refused(408, "body_timeout",
                               f"the request body did not arrive within {limits.body_timeout_s:g} s") from None
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
