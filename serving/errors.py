"""The JSON error model of the HTTP API: `{"error": {"code": ..., "message": ...}}`.

Every failure a client can cause is an `ApiError` with a 4xx status, raised anywhere in
the ingress or in a replica (Ray carries it back to the ingress). Anything else is a bug
or an outage: a 500 with a generic message, logged with its traceback — never a 500 for
bad input.

Status codes and error codes (docs/api.md):

=====  =========================  ===================================================
400    invalid_json               body is not JSON (or is empty)
400    empty_body                 POST /v1/images without bytes
400    uri_not_allowed            image_uri / uri outside the allowed prefixes
401    unauthorized               API key missing or wrong
404    image_not_found            unknown image_id, or no object at the URI
404    not_found                  no such route
405    method_not_allowed         route exists, method does not
413    body_too_large             more bytes than limits.max_body_bytes
413    too_many_pixels            image over limits.max_pixels
415    unsupported_media_type     wrong Content-Type for the route
415    unsupported_image          bytes that are not an image format we read
422    validation_error           JSON that does not fit the schema (names the field)
422    invalid_prompt             a prompt that does not fit the image (coordinates, RLE)
422    invalid_image              an image whose data is corrupt or truncated
422    limit_exceeded             too many prompts / points / names / masks; audio too long or large
422    invalid_audio              an audio prompt that is not audio, truncated, or bad base64
422    no_speech                  an audio prompt in which nothing was recognised (body has
                                  "transcripts" with the empty transcript)
422    invalid_video              a video that is not one, corrupt or truncated, or bad base64
429    rate_limited               over limits.requests_per_s
503    overloaded / timeout /     queue full, request over its time, store unreachable
       unavailable
500    internal_error             a bug; the message is generic, the log has the detail
=====  =========================  ===================================================
"""
from __future__ import annotations

from typing import Any

__all__ = ["ApiError", "error_body", "as_api_error", "ERROR_CODES"]

ERROR_CODES: dict[str, int] = {
    "invalid_json": 400,
    "empty_body": 400,
    "uri_not_allowed": 400,
    "unauthorized": 401,
    "image_not_found": 404,
    "not_found": 404,
    "method_not_allowed": 405,
    "body_too_large": 413,
    "too_many_pixels": 413,
    "unsupported_media_type": 415,
    "unsupported_image": 415,
    "validation_error": 422,
    "invalid_prompt": 422,
    "invalid_image": 422,
    "limit_exceeded": 422,
    "invalid_audio": 422,
    "no_speech": 422,
    "invalid_video": 422,
    "rate_limited": 429,
    "overloaded": 503,
    "timeout": 503,
    "unavailable": 503,
    "internal_error": 500,
}


class ApiError(Exception):
    """An error with its HTTP status, stable `code` and a message for the client.

    Picklable with all its fields (it crosses Ray from replicas to the ingress).
    """

    def __init__(self, code: str, message: str, status: int | None = None,
                 headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None) -> None:
        super().__init__(code, message, status, headers)
        self.extra = dict(extra or {})  # more top-level fields of the body (e.g. "transcripts")
        if code not in ERROR_CODES and status is None:
            raise ValueError(f"unknown error code {code!r} without a status")
        self.code = code
        self.message = message
        self.status = status if status is not None else ERROR_CODES[code]
        self.headers = dict(headers or {})

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (ApiError, (self.code, self.message, self.status, self.headers, self.extra))

    def body(self) -> dict[str, Any]:
        """The JSON response body."""
        return {**self.extra, **error_body(self.code, self.message)}


def error_body(code: str, message: str) -> dict[str, Any]:
    """The JSON body of an error response."""
    return {"error": {"code": code, "message": message}}


def as_api_error(exc: BaseException) -> ApiError | None:
    """The `ApiError` inside `exc`, if any.

    A replica's exception reaches the caller as a Ray error that *also* derives from the
    original class and keeps the original as `.cause`; look through both.
    """
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, ApiError) and type(exc) is ApiError:
            return exc
        cause = getattr(exc, "cause", None)
        if isinstance(cause, ApiError):
            return cause
        if isinstance(exc, ApiError):  # Ray's dual class without a readable cause
            return ApiError(exc.code, exc.message, exc.status, exc.headers, getattr(exc, "extra", None))
        exc = exc.__cause__ or cause  # type: ignore[assignment]
        seen += 1
    return None
