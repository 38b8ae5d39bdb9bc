"""The HTTP edge: a standard-library ``ThreadingHTTPServer`` in a daemon thread.

Why the standard library and not kmock: kmock's ``KubernetesEmulator`` runs
on aiohttp inside an asyncio test loop and, as measured, fails kubectl
("Object 'Kind' is missing") and client-go discovery; fixing that means
replacing its lists, discovery, patching and error bodies, i.e. most of it.
A synchronous server in its own thread serves the synchronous ``kubernetes``
client, kubectl and a CLI ``opsgate sandbox`` alike, needs no event loop in
the caller, and leaves every byte of the protocol (Status bodies, chunked
watch streams, dropped connections for fault tests) under our control.

HTTP/1.1 keep-alive is on; open connections are tracked so ``stop()`` can
close them (otherwise a pooled client connection would keep being served).
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import ssl
import sys
import threading
import time
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .api import Api, Request, Response, WatchStream
from .errors import generic
from .faults import FaultTable
from .logs import log


class TrackingHTTPServer(ThreadingHTTPServer):
    """A threaded server that remembers its open connections, so stopping it can close keep-alive ones."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self._conn_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conn_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conn_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up mid-answer (a timeout, a dropped connection) is routine: log it, no traceback."""
        log.debug("sandbox.connection_error", client=str(client_address), error=repr(sys.exc_info()[1]))

    def close_connections(self) -> None:
        with self._conn_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


TRACEPARENTS_KEPT = 256


class SandboxHTTPServer(TrackingHTTPServer):
    """The API server's socket edge; HTTPS when given an ``ssl_context``.

    A connection is wrapped as it is accepted but its handshake runs on the first read, in the
    connection's own thread, so a slow or failing client never holds up ``accept``.
    """

    request_queue_size = 64

    def __init__(self, address: tuple[str, int], api: Api, faults: FaultTable,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.api = api
        self.faults = faults
        self.log_requests = False
        # (method, path, traceparent) of the last requests that sent one: a test joins them to the client's spans.
        self.traceparents: deque[tuple[str, str, str]] = deque(maxlen=TRACEPARENTS_KEPT)
        self.baggage: deque[str] = deque(maxlen=TRACEPARENTS_KEPT)  # W3C baggage headers received
        self.ssl_context = ssl_context
        super().__init__(address, Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, address = self.socket.accept()
        if self.ssl_context is not None:
            conn = self.ssl_context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        return conn, address


class Handler(BaseHTTPRequestHandler):
    """Turns one HTTP request into an ``api.Request`` and writes the answer back."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without TCP_NODELAY, Nagle plus delayed ACKs cost ~40 ms each.
    disable_nagle_algorithm = True
    server_version = "opsgate-sandbox"
    sys_version = ""
    server: SandboxHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the base class, which writes every request line to stderr."""

    def do_GET(self) -> None:
        self._serve("GET")

    def do_HEAD(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0] or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _serve(self, method: str) -> None:
        started = time.monotonic()
        body = self._read_body()
        split = urlsplit(self.path)
        fault = self.server.faults.take(method, split.path)
        if fault is not None:
            if fault.delay > 0:
                time.sleep(fault.delay)
            if fault.drop:
                self.close_connection = True
                log.debug("sandbox.fault_drop", method=method, path=split.path)
                return
        request = Request(
            method=method,
            path=split.path,
            query=dict(parse_qsl(split.query, keep_blank_values=True)),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            impersonate_groups=tuple(self.headers.get_all("Impersonate-Group") or ()),
        )
        audit_id = request.header("audit-id") or str(uuid.uuid4())
        traceparent = request.header("traceparent")
        if traceparent:
            self.server.traceparents.append((method, split.path, traceparent))
        if request.header("baggage"):
            self.server.baggage.append(request.header("baggage") or "")
        if fault is not None and fault.status is not None:
            error = generic(fault.status)
            headers = {"Retry-After": "1"} if fault.status == 429 else {}
            result: Response | WatchStream = Response(fault.status, error.status(), headers=headers)
        else:
            result = self.server.api.handle(request)
        try:
            if isinstance(result, WatchStream):
                self._stream(result, audit_id)
            else:
                self._send(result, audit_id, pretty=request.query.get("pretty") == "true")
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True
        if self.server.log_requests:
            log.debug(
                "sandbox.request",
                method=method,
                path=split.path,
                status=getattr(result, "status", 200),
                ms=round((time.monotonic() - started) * 1000, 2),
            )

    def _send(self, response: Response, audit_id: str, *, pretty: bool) -> None:
        if isinstance(response.body, bytes):  # pod logs, cut at limitBytes
            payload = response.body
        elif isinstance(response.body, str):
            payload = response.body.encode()
        else:
            separators = None if pretty else (",", ":")
            payload = json.dumps(response.body, indent=2 if pretty else None, separators=separators).encode()
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Audit-Id", audit_id)
        for key, value in response.headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        self.wfile.flush()

    def _client_gone(self) -> bool:
        """Whether the client has closed its end of a watch. A watch's client sends nothing more on its
        connection, so a socket that reads at all has reached its end (FIN, TLS close_notify) or was reset: the
        API server notices the same way (Go's server reads in the background and ends the request)."""
        conn: socket.socket = self.connection
        try:
            readable, _, _ = select.select([conn], [], [], 0)
        except (OSError, ValueError):
            return True
        if not readable:
            return False
        timeout = conn.gettimeout()
        try:
            conn.settimeout(0)
            return conn.recv(1) == b""
        except (ssl.SSLWantReadError, BlockingIOError):
            return False  # part of a TLS record: not an end
        except OSError:
            return True
        finally:
            with contextlib.suppress(OSError):
                conn.settimeout(timeout)

    def _stream(self, stream: WatchStream, audit_id: str) -> None:
        """A watch: chunked transfer, one JSON event per line, flushed as it happens."""
        self.send_response(200)
        self.send_header("Content-Type", stream.content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Audit-Id", audit_id)
        self.end_headers()
        self.wfile.flush()
        try:
            for event in stream.events:
                if event is None:  # a quiet watch's tick
                    if self._client_gone():
                        self.close_connection = True
                        return
                    continue
                line = (json.dumps(event, separators=(",", ":")) + "\n").encode()
                self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        finally:
            close = getattr(stream.events, "close", None)
            if callable(close):
                close()
