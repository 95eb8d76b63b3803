"""A fault-injecting HTTP proxy in front of the test S3 server (moto), on 127.0.0.1.

Clients are pointed at the proxy's URL instead of moto's; every request is forwarded
unchanged (SigV4 signs the Host header, which moto does not check, so it passes), except
the ones the proxy decides to fail, as a throttled or flaky S3 endpoint would:

- `slowdown`: a share of requests answered `503 SlowDown` (S3's throttling reply, with
  its XML error body) without reaching moto;
- `drop`: a share of requests whose connection is closed without any answer (what a
  client sees when a request times out or a load balancer resets it) — also before
  moto, so the request had no effect;
- `outage(seconds)`: every request during that window answered `503 ServiceUnavailable`.

Faults are drawn from a seeded RNG. `counts` says what was forwarded and injected.
Registered as a pytest plugin (tests/conftest.py): the `s3_faults` fixture starts a
proxy in front of the session's moto server and stops it after the test.
"""
from __future__ import annotations

import http.client
import http.server
import random
import threading
import time
from collections import Counter
from typing import Iterator

import pytest

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
_ERROR_XML = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
              '<RequestId>fault-proxy</RequestId></Error>')


class FaultProxy:
    """A threaded HTTP/1.1 proxy to `upstream` ("http://127.0.0.1:PORT") injecting faults."""

    def __init__(self, upstream: str, *, slowdown: float = 0.0, drop: float = 0.0, seed: int = 0) -> None:
        self.upstream_host, _, port = upstream.split("://", 1)[1].partition(":")
        self.upstream_port = int(port or 80)
        self.slowdown, self.drop = slowdown, drop
        self.counts: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._outage_until = 0.0
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-fault-proxy", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FaultProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def set_faults(self, *, slowdown: float | None = None, drop: float | None = None) -> None:
        """Change the shares of requests failed from now on (0 turns a fault off)."""
        with self._lock:
            if slowdown is not None:
                self.slowdown = slowdown
            if drop is not None:
                self.drop = drop

    def outage(self, seconds: float) -> None:
        """Answer every request with 503 ServiceUnavailable for the next `seconds`."""
        with self._lock:
            self._outage_until = time.monotonic() + seconds

    def _decide(self) -> str:
        """What to do with the next request: "outage", "slowdown", "drop" or "forward"."""
        with self._lock:
            self.counts["requests"] += 1
            if time.monotonic() < self._outage_until:
                verdict = "outage"
            else:
                draw = self._rng.random()
                verdict = ("slowdown" if draw < self.slowdown else
                           "drop" if draw < self.slowdown + self.drop else "forward")
            self.counts[verdict] += 1
            return verdict

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        proxy = self

        class Handler(_ForwardingHandler):
            def handle_one(self) -> None:
                body = self.read_body()
                verdict = proxy._decide()
                if verdict == "drop":
                    self.close_connection = True
                    self.connection.close()  # no status line: the client sees a dropped connection
                    return
                if verdict in ("slowdown", "outage"):
                    code, message = (("SlowDown", "Please reduce your request rate.") if verdict == "slowdown"
                                     else ("ServiceUnavailable", "The service is unavailable (injected outage)."))
                    self.reply(503, _ERROR_XML.format(code=code, message=message).encode(),
                               {"Content-Type": "application/xml"})
                    return
                self.forward(proxy.upstream_host, proxy.upstream_port, body)

        return Handler


class _ForwardingHandler(http.server.BaseHTTPRequestHandler):
    """Reads a request's body and forwards it over one kept-alive upstream connection."""

    protocol_version = "HTTP/1.1"
    _upstream: http.client.HTTPConnection | None = None

    def log_message(self, format: str, *args: object) -> None:  # quiet: tests read counts instead
        pass

    def handle_one(self) -> None:  # overridden by FaultProxy's handler
        raise NotImplementedError

    def finish(self) -> None:
        super().finish()
        if self._upstream is not None:
            self._upstream.close()

    def do_GET(self) -> None:
        self.handle_one()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def forward(self, host: str, port: int, body: bytes) -> None:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        if body or "Content-Length" in self.headers or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        for attempt in (1, 2):  # a kept-alive upstream connection may have been closed by moto
            if self._upstream is None:
                self._upstream = http.client.HTTPConnection(host, port, timeout=60)
            try:
                self._upstream.request(self.command, self.path, body=body, headers=headers)
                response = self._upstream.getresponse()
                data = response.read()
                break
            except (http.client.HTTPException, OSError):
                self._upstream.close()
                self._upstream = None
                if attempt == 2:
                    raise
        out = {k: v for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP | {"content-length"}}
        self.send_response(response.status, response.reason)
        for name, value in out.items():
            self.send_header(name, value)
        # A HEAD reply states the object's length without a body.
        length = response.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
        self.send_header("Content-Length", length or "0")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


@pytest.fixture
def s3_faults(s3_server: str) -> Iterator[FaultProxy]:
    """A fault proxy in front of the session's moto server (no faults until set)."""
    proxy = FaultProxy(s3_server).start()
    try:
        yield proxy
    finally:
        proxy.stop()
