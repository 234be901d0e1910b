"""A fault-injecting HTTP proxy between the job and a real S3 server, on 127.0.0.1.

    proxy = FaultProxy(server.endpoint, rate=0.3, seed=1).start()
    env = {**server.env(), "AWS_ENDPOINT_URL": proxy.endpoint}    # the job talks to the proxy
    ...
    proxy.stop(); proxy.faults   # {"500": 3, "503": 4, "drop": 2, "stall": 1, "truncate": 2}

Requests are forwarded byte for byte (the Host header too, so SigV4 signatures stay valid).
A seeded share of them (`rate`) gets one of the faults instead:
    500       an S3 InternalError, the request never reaches the server
    503       an S3 SlowDown (throttling), the request never reaches the server
    drop      the connection is closed without a response
    stall     no response for `stall_s` seconds (longer than the client's read timeout), then closed
    truncate  the server's answer to a GET is cut off half-way through its body
No request key gets more than `max_in_a_row` faults in a row, so a client that retries as
S3 clients should always gets through; one that does not, fails the test.

`hold(predicate)` makes matching requests wait (not forwarded) until `release()`, so a test can
kill the job while, say, a checkpoint upload is in flight. `set_upstream(url)` points the proxy
at a restarted server, as a Kubernetes Service would.
"""

from __future__ import annotations

import collections
import http.client
import random
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

MODES = ("500", "503", "drop", "stall", "truncate")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection"}
_ERROR_XML = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>injected by the test '
              'proxy</Message><RequestId>fault</RequestId></Error>')


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # clients that hang up (or are hung up on) are the point here


class FaultProxy:
    def __init__(self, upstream: str, rate: float = 0.0, seed: int = 0, modes: tuple[str, ...] = MODES,
                 stall_s: float = 4.0, max_in_a_row: int = 2):
        unknown = set(modes) - set(MODES)
        assert not unknown, unknown
        self.rate, self.modes, self.stall_s, self.max_in_a_row = rate, modes, stall_s, max_in_a_row
        self.set_upstream(upstream)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._in_a_row: dict[tuple[str, str], int] = collections.defaultdict(int)
        self.faults: collections.Counter = collections.Counter()
        self.requests = 0
        self._hold: Callable[[str, str], bool] | None = None
        self.held = threading.Event()       # set when a request matching hold() arrived
        self._released = threading.Event()
        self._stopping = threading.Event()
        self._server = _QuietServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._released.set()
        self._server.shutdown()
        self._server.server_close()

    def set_upstream(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname, parts.port or 80)

    def hold(self, predicate: Callable[[str, str], bool]) -> None:
        """Hold requests for which predicate(method, path) is true until release()."""
        self.held.clear()
        self._released.clear()
        self._hold = predicate

    def release(self) -> None:
        self._hold = None
        self._released.set()

    # ------------------------------------------------------------------ decisions

    def _fault_for(self, method: str, path: str) -> str | None:
        key = (method, path.split("?")[0])
        with self._lock:
            self.requests += 1
            if self.rate <= 0 or self._in_a_row[key] >= self.max_in_a_row or self._rng.random() >= self.rate:
                self._in_a_row[key] = 0
                return None
            modes = [m for m in self.modes if m != "truncate" or method == "GET"]
            if not modes:
                return None
            mode = self._rng.choice(modes)
            self._in_a_row[key] += 1
            self.faults[mode] += 1
            return mode

    # ------------------------------------------------------------------ the handler

    def _handler_class(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _read_body(self) -> bytes:
                """The request body as sent (chunked framing kept)."""
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    raw = bytearray()
                    while True:
                        size_line = self.rfile.readline()
                        raw += size_line
                        size = int(size_line.split(b";")[0].strip(), 16)
                        if size == 0:
                            while True:  # trailers, then the empty line
                                line = self.rfile.readline()
                                raw += line
                                if line in (b"\r\n", b"\n", b""):
                                    return bytes(raw)
                        raw += self.rfile.read(size + 2)
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _error(self, status: int, code: str) -> None:
                body = _ERROR_XML.format(code=code).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _hang_up(self) -> None:
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
                host, port = proxy._upstream
                conn = http.client.HTTPConnection(host, port, timeout=60)
                try:
                    conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for name, value in self.headers.items():
                        if name.lower() not in ("connection", "keep-alive", "proxy-connection"):
                            conn.putheader(name, value)
                    conn.endheaders()
                    if body:
                        conn.send(body)
                    resp = conn.getresponse()
                    data = resp.read()
                    return resp.status, resp.getheaders(), data
                finally:
                    conn.close()

            def _handle(self) -> None:
                body = self._read_body()
                hold = proxy._hold
                if hold is not None and hold(self.command, self.path):
                    proxy.held.set()
                    proxy._released.wait()
                    if proxy._stopping.is_set():
                        return self._hang_up()
                fault = proxy._fault_for(self.command, self.path)
                if fault == "500":
                    return self._error(500, "InternalError")
                if fault == "503":
                    return self._error(503, "SlowDown")
                if fault == "drop":
                    return self._hang_up()
                if fault == "stall":
                    proxy._stopping.wait(proxy.stall_s)
                    return self._hang_up()
                try:
                    status, headers, data = self._forward(body)
                except OSError:  # the server is down: what a client sees of a dead endpoint
                    return self._hang_up()
                self.send_response(status)
                content_length = None
                for name, value in headers:
                    if name.lower() == "content-length":
                        content_length = value
                    elif name.lower() not in _HOP_BY_HOP:
                        self.send_header(name, value)
                # HEAD answers carry the object's length and no body.
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                elif content_length is not None:
                    self.send_header("Content-Length", content_length)
                self.end_headers()
                if self.command == "HEAD":
                    return None
                if fault == "truncate" and len(data) > 1:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    time.sleep(0.05)
                    return self._hang_up()
                self.wfile.write(data)
                return None

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        return Handler
