"""The HTTP API (docs/api.md) as a FastAPI app over a `Backend`.

The decoder deployment (the HTTP ingress) builds this app per replica with its
configuration and passes itself as the backend (it decodes, or forwards a request to the
replica holding its image). What happens here, before any decoding: authentication, rate limits, content types, body size, JSON and
schema validation, request limits, image header checks and URI reads — in that order,
so a request is refused by the first rule it breaks.

Request bodies are read and validated by hand rather than by FastAPI's body parameters:
that is what lets the body-size limit apply while streaming, a wrong Content-Type be a
415 before any parsing, and malformed JSON (400) be told apart from a schema error (422).
The request models still appear in the OpenAPI document (`_openapi`).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import os
import time
from importlib import resources
from typing import Any, Awaitable, Callable, Protocol

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from model.image_io import ImageDecodeError, ImageTooLarge, image_size
from model.prompt_schema import validation_message

from .config import ServeConfig
from .errors import ApiError, error_body
from .limits import check_limits, normalize_image_id
from .proxy_guard import BODY_SCOPE_KEY
from .schemas import (ErrorResponse, HealthResponse, ImageResponse, ImageUriRequest, PanopticRequest, PanopticResponse,
                      ReferringPrompt, SegmentRequest, SegmentResponse)
from .sources import read_uri

__all__ = ["Backend", "create_api", "ROUTES"]

log = logging.getLogger("seem.serving")

#: Route labels for metrics; anything else is "other" (bounded label values).
ROUTES = ("/", "/healthz", "/metrics", "/docs", "/openapi.json", "/v1/images", "/v1/segment", "/v1/panoptic")
_PUBLIC = frozenset({"/healthz"})


class Backend(Protocol):
    """What the API needs from the rest of the system (the ingress deployment)."""

    async def ingest(self, image_id: str, data: bytes | None) -> dict[str, Any]:
        """Features of the image available (encoded if new): an ImageResponse body."""
        ...

    async def segment(self, image_id: str, data: bytes | None, request: SegmentRequest) -> dict[str, Any]:
        """A SegmentResponse body; `data` are the image bytes when the request named a URI."""
        ...

    async def panoptic(self, image_id: str, data: bytes | None, request: PanopticRequest) -> dict[str, Any]:
        """A PanopticResponse body."""
        ...

    async def metrics_text(self) -> str:
        """Prometheus text of the app's and Serve's metrics."""
        ...

    async def video_segment(self, data: bytes, request: Any) -> dict[str, Any]:
        """A VideoSegmentResponse body (serving.video_api)."""
        ...


# --------------------------------------------------------------------------- guard
class _TokenBuckets:
    """Per-client token buckets (requests_per_s, burst); one set per ingress replica."""

    def __init__(self, rate: float, burst: int, max_clients: int = 10_000) -> None:
        self.rate, self.burst, self.max_clients = rate, burst, max_clients
        self.buckets: dict[str, tuple[float, float]] = {}

    def take(self, client: str) -> float:
        """0 when allowed, else seconds until a token is available."""
        now = time.monotonic()
        tokens, last = self.buckets.get(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self.buckets[client] = (tokens, now)
            return (1.0 - tokens) / self.rate
        if len(self.buckets) >= self.max_clients and client not in self.buckets:
            # Forget full buckets first: they carry no state worth keeping.
            self.buckets = {c: b for c, b in self.buckets.items() if b[0] < self.burst}
        self.buckets[client] = (tokens - 1.0, now)
        return 0.0


def _credential(headers: dict[str, str]) -> str | None:
    """The API key in `Authorization`: `Bearer KEY`, or Basic with KEY as the password
    (what a browser sends after its login prompt, so the web page works with keys)."""
    value = headers.get("authorization", "")
    scheme, _, rest = value.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return rest.strip() or None
    if scheme == "basic":
        try:
            decoded = base64.b64decode(rest.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


class GuardMiddleware:
    """Outermost app layer: API keys, rate limit, request metrics, and the last line of
    defence that turns an unexpected exception into a JSON 500 (and logs it)."""

    def __init__(self, app: ASGIApp, *, api_keys: tuple[str, ...], rate: float | None, burst: int,
                 observe: Callable[[str, int, float], None] | None) -> None:
        self.app = app
        self.api_keys = tuple(k.encode() for k in api_keys)
        self.buckets = _TokenBuckets(rate, burst) if rate else None
        self.observe = observe

    def _authorized(self, key: str | None) -> bool:
        if key is None:
            return False
        given = key.encode()
        ok = False
        for k in self.api_keys:  # compare with every key: time does not tell which matched
            ok |= hmac.compare_digest(given, k)
        return ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope.get("path", "")
        route = path if path in ROUTES else ("/static" if path.startswith("/static/") else "other")
        status = {"code": 500, "started": False}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
                status["started"] = True
            await send(message)

        try:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            key = _credential(headers)
            if self.api_keys and path not in _PUBLIC and not self._authorized(key):
                message = "missing API key (send Authorization: Bearer <key>)" if key is None else "invalid API key"
                # Basic first: Chromium takes no Basic challenge that follows a Bearer one in the same
                # header, and Basic (key as password) is how a browser opens the web page.
                raise ApiError("unauthorized", message,
                               headers={"WWW-Authenticate": 'Basic realm="seem-ray", Bearer realm="seem-ray"'})
            if self.buckets is not None and path not in _PUBLIC:
                client = key or (scope.get("client") or ("?",))[0]
                wait = self.buckets.take(client)
                if wait > 0:
                    raise ApiError("rate_limited", f"too many requests; retry in {wait:.2f} s",
                                   headers={"Retry-After": str(max(1, int(wait + 0.999)))})
            await self.app(scope, receive, send_wrapper)
        except ApiError as e:
            await _json(e.status, e.body(), e.headers)(scope, receive, send_wrapper)
        except Exception:  # a bug: generic message out, detail in the log
            log.exception("unhandled error on %s %s", scope.get("method"), path)
            if not status["started"]:
                await _json(500, error_body("internal_error", "internal server error"))(scope, receive, send_wrapper)
        finally:
            if self.observe is not None:
                try:
                    self.observe(route, status["code"], (time.perf_counter() - started) * 1000)
                except Exception:  # metrics must never fail a request
                    log.debug("metrics observe failed", exc_info=True)


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


# --------------------------------------------------------------------------- body helpers
def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _is_json(media_type: str) -> bool:
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refusing more than `limit` bytes: by Content-Length up front, and by
    counting while streaming (a client can lie about, or omit, Content-Length). When
    serving.proxy_guard runs in Serve's proxy, the whole body arrives in the scope."""
    buffered = request.scope.get(BODY_SCOPE_KEY)
    if isinstance(buffered, bytes):
        if len(buffered) > limit:
            raise ApiError("body_too_large", f"body of {len(buffered)} bytes is over the limit of {limit} bytes")
        return buffered
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise ApiError("validation_error", "Content-Length is not a number", status=400) from None
        if n > limit:
            raise ApiError("body_too_large", f"body of {n} bytes is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ApiError("body_too_large", f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(model: type[BaseModel], body: bytes) -> Any:
    """JSON body -> model; malformed JSON is 400, a schema mismatch 422."""
    if not body.strip():
        raise ApiError("invalid_json", "the body is empty; send a JSON object")
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        if any(err.get("type") == "json_invalid" for err in e.errors(include_url=False)):
            first = e.errors(include_url=False)[0]
            raise ApiError("invalid_json", f"malformed JSON: {first.get('msg')}") from None
        raise ApiError("validation_error", validation_message(e)) from None


def _check_image_header(data: bytes, max_pixels: int) -> tuple[int, int]:
    """(width, height) from the image header, or the 4xx for bytes that are not a usable image."""
    if not data:
        raise ApiError("empty_body", "the body is empty; send the image bytes")
    try:
        width, height = image_size(data)
    except ImageTooLarge as e:  # past even Pillow's own guard
        raise ApiError("too_many_pixels", f"{e}; the limit is {max_pixels} pixels") from None
    except ImageDecodeError as e:
        raise ApiError("unsupported_image", f"not a supported image: {e}") from None
    if width * height > max_pixels:
        raise ApiError("too_many_pixels", f"image is {width} x {height} = {width * height} pixels; "
                                          f"the limit is {max_pixels}")
    return width, height


def _image_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- OpenAPI
_ERRORS = {
    400: "Malformed JSON, empty body, or a URI outside the allowed prefixes",
    401: "Missing or wrong API key",
    404: "Unknown image_id, or no image at the URI",
    413: "Body or image over the configured limits",
    415: "Wrong Content-Type, or bytes that are not a supported image",
    422: "Request does not fit the schema, the limits or the image",
    429: "Rate limit exceeded",
    503: "Overloaded, timed out, or storage unavailable",
}


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": ErrorResponse, "description": _ERRORS[c]} for c in codes}


def _json_body(name: str) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}}


_REQUEST_MODELS: tuple[type[BaseModel], ...] = (SegmentRequest, PanopticRequest, ImageUriRequest)


def _openapi(app: FastAPI, secured: bool) -> dict[str, Any]:
    """FastAPI's document plus the request models (declared by hand, see module doc)."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for model in _REQUEST_MODELS:
        js = model.model_json_schema(ref_template="#/components/schemas/{model}", mode="validation")
        for name, sub in js.pop("$defs", {}).items():
            schemas.setdefault(name, sub)
        schemas[model.__name__] = js
    if secured:
        doc["components"]["securitySchemes"] = {"bearerAuth": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearerAuth": []}]
        doc["paths"]["/healthz"]["get"]["security"] = []
    app.openapi_schema = doc
    return doc


# --------------------------------------------------------------------------- app
def _static_dir() -> str:
    return str(resources.files("serving") / "static")


def create_api(config: ServeConfig, backend: Backend, *,
               observe: Callable[[str, int, float], None] | None = None) -> FastAPI:
    """The FastAPI app of one ingress replica: the guard, the error handlers and one router
    per route group (ops, images, inference, web page)."""
    limits = config.limits
    api_keys = config.effective_api_keys()
    app = FastAPI(
        title="seem-ray",
        version="1",
        description="SEEM on Ray Serve: upload an image once, then prompt it (text, clicks, boxes, scribbles, "
                    "polygons, masks, regions of other images) round after round. Coordinates are pixels of the "
                    "original image; masks are COCO compressed RLE.",
        docs_url="/docs",
        redoc_url=None,
    )
    app.openapi = lambda: _openapi(app, bool(api_keys))  # type: ignore[method-assign]
    app.add_middleware(GuardMiddleware, api_keys=api_keys, rate=limits.requests_per_s, burst=limits.burst,
                       observe=observe)
    _add_error_handlers(app)
    reader = _RequestReader(config)
    app.include_router(_ops_routes(backend))
    app.include_router(_image_routes(reader, backend))
    app.include_router(_inference_routes(reader, backend))
    from .video_api import video_routes  # imports this module

    app.include_router(video_routes(reader, backend))
    _add_web_page(app)
    return app


# --------------------------------------------------------------------------- errors
def _add_error_handlers(app: FastAPI) -> None:
    """Every error as the JSON error model (serving.errors)."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _json(exc.status, exc.body(), exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = "no such route" if exc.status_code == 404 else str(exc.detail)
        return _json(exc.status_code, error_body(code, message), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()[:3]]
        return _json(422, error_body("validation_error", "; ".join(parts) or "invalid request"))


# --------------------------------------------------------------------------- request reading
class _RequestReader:
    """Bodies, JSON requests and image references of one app, within its limits."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.limits = config.limits

    async def body(self, request: Request) -> bytes:
        return await _read_body(request, self.limits.max_body_bytes)

    async def uri(self, uri: str) -> bytes:
        """The image bytes at an allowed URI, header-checked."""
        data = await read_uri(uri, self.config.allowed_uri_prefixes, self.limits.max_body_bytes,
                              self.config.endpoint_url)
        _check_image_header(data, self.limits.max_pixels)
        return data

    async def json_request(self, request: Request, model: type[BaseModel]) -> Any:
        """The body of a JSON-only route as `model`, within the request limits."""
        media = _media_type(request)
        if not _is_json(media):
            raise ApiError("unsupported_media_type", f"Content-Type {media or '(none)'!r}: send application/json")
        req = _parse(model, await self.body(request))
        check_limits(req, self.limits)
        return req

    async def resolve(self, image_id: str | None, image_uri: str | None) -> tuple[str, bytes | None]:
        """(canonical image id, bytes when read from a URI)."""
        if image_uri is not None:
            data = await self.uri(image_uri)
            return _image_id(data), data
        assert image_id is not None
        canonical = normalize_image_id(image_id)
        if canonical is None:
            raise ApiError("image_not_found", f"unknown image_id {image_id[:80]!r}: upload it with POST /v1/images")
        return canonical, None


# --------------------------------------------------------------------------- routes
_INFERENCE_ERRORS = _responses(400, 401, 404, 413, 415, 422, 429, 503)


def _ops_routes(backend: Backend) -> APIRouter:
    router = APIRouter(tags=["ops"])

    @router.get("/healthz", response_model=HealthResponse)
    async def healthz() -> dict[str, str]:
        """Liveness of the ingress (no API key needed)."""
        return {"status": "ok"}

    @router.get("/metrics", response_class=PlainTextResponse, responses=_responses(401, 503))
    async def metrics() -> PlainTextResponse:
        """Prometheus text: the app's metrics (`ray_seem_*`) and Serve's (`ray_serve_*`),
        gathered from every node's Ray metrics endpoint."""
        text = await backend.metrics_text()
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    return router


def _image_routes(reader: _RequestReader, backend: Backend) -> APIRouter:
    router = APIRouter(tags=["inference"])

    @router.post(
        "/v1/images", response_model=ImageResponse, responses=_INFERENCE_ERRORS,
        openapi_extra={"requestBody": {"required": True, "content": {
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": {"$ref": "#/components/schemas/ImageUriRequest"}},
        }, "description": "image bytes with an image/* Content-Type, or {\"uri\": ...}"}},
    )
    async def post_image(request: Request) -> JSONResponse:
        """Encode an image (or find its features): returns its `image_id` (sha256 of the bytes)."""
        media = _media_type(request)
        if media.startswith("image/"):
            data = await reader.body(request)
            _check_image_header(data, reader.limits.max_pixels)
        elif _is_json(media):
            data = await reader.uri(_parse(ImageUriRequest, await reader.body(request)).uri)
        else:
            raise ApiError("unsupported_media_type",
                           f"Content-Type {media or '(none)'!r}: send image bytes as image/* or JSON {{\"uri\": ...}}")
        return _json(200, await backend.ingest(_image_id(data), data))

    return router


def _inference_routes(reader: _RequestReader, backend: Backend) -> APIRouter:
    router = APIRouter(tags=["inference"])

    @router.post("/v1/segment", response_model=SegmentResponse, responses=_INFERENCE_ERRORS,
                 openapi_extra=_json_body("SegmentRequest"))
    async def post_segment(request: Request) -> JSONResponse:
        """Masks (best first, each with a label) for prompts that together describe one object."""
        started = time.perf_counter()
        req: SegmentRequest = await reader.json_request(request, SegmentRequest)
        for prompt in req.prompts:  # referring ids in canonical form, unknown forms are 404 now
            if isinstance(prompt, ReferringPrompt):
                canonical = normalize_image_id(prompt.image_id)
                if canonical is None:
                    raise ApiError("image_not_found", f"unknown referring image_id {prompt.image_id[:80]!r}")
                prompt.image_id = canonical
        image_id, data = await reader.resolve(req.image_id, req.image_uri)
        body = await backend.segment(image_id, data, req)
        body["timings_ms"]["total"] = (time.perf_counter() - started) * 1000
        return _json(200, body)

    @router.post("/v1/panoptic", response_model=PanopticResponse, responses=_INFERENCE_ERRORS,
                 openapi_extra=_json_body("PanopticRequest"))
    async def post_panoptic(request: Request) -> JSONResponse:
        """Every segment of the image with a label from `vocabulary` (default: the model's)."""
        started = time.perf_counter()
        req: PanopticRequest = await reader.json_request(request, PanopticRequest)
        image_id, data = await reader.resolve(req.image_id, req.image_uri)
        body = await backend.panoptic(image_id, data, req)
        body["timings_ms"]["total"] = (time.perf_counter() - started) * 1000
        return _json(200, body)

    return router


def _add_web_page(app: FastAPI) -> None:
    """The web page (plain HTML + JavaScript from serving/static) at / and /static."""
    static = _static_dir()

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        with open(os.path.join(static, "index.html"), encoding="utf-8") as f:
            return HTMLResponse(f.read())

    app.mount("/static", StaticFiles(directory=static), name="static")


async def with_timeout(awaitable: Awaitable[Any], timeout_s: float) -> Any:
    """Await with a deadline; a request over its time is a 503 `timeout`. (`asyncio.timeout`
    runs the awaitable in this task; `wait_for` would start a task per request.)"""
    try:
        async with asyncio.timeout(timeout_s):
            return await awaitable
    except TimeoutError:
        raise ApiError("timeout", f"the request took longer than {timeout_s:g} s") from None
