"""A threaded loopback HTTP server over in-memory routes: the demo's image host and the tests'."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    """What one path answers: status, body, headers; optionally slow or cut short."""

    body: bytes = b""
    status: int = 200
    content_type: str = "image/jpeg"
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    truncate_to: int | None = None  # send Content-Length of the whole body, then only this many bytes
    # a tarpit: send the whole response ("all") or only the body ("body") a byte every trickle_gap_s
    trickle: str | None = None
    trickle_gap_s: float = 0.2
    reset: bool = False  # close the connection with a TCP reset before answering


class _Server(ThreadingHTTPServer):
    # the default backlog of 5 drops connections when many download threads arrive at once
    request_queue_size = 1024
    daemon_threads = True


class ImageServer:
    """Serves `routes` on 127.0.0.1 at a free port (or `port`), over HTTPS given `tls`; counts
    requests per path."""

    def __init__(self, routes: dict[str, Route] | None = None, port: int = 0, delay_s: float = 0.0,
                 tls: tuple[str, str] | None = None):
        self.routes: dict[str, Route] = dict(routes or {})
        self.requests: Counter[str] = Counter()
        self.delay_s = delay_s
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test and demo output clean
                pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                with server._lock:
                    server.requests[path] += 1
                route = server.routes.get(path)
                if route is None:
                    route = Route(b"not found", 404, "text/plain")
                delay = route.delay_s or server.delay_s
                if delay:
                    time.sleep(delay)
                if route.trickle:
                    self._trickle(route)
                    return
                if route.reset:  # linger 0: closing sends RST, as an overloaded host or a middlebox does
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    return
                try:
                    self.send_response(route.status)
                    self.send_header("Content-Type", route.content_type)
                    self.send_header("Content-Length", str(len(route.body)))
                    for key, value in route.headers.items():
                        self.send_header(key, value)
                    if route.truncate_to is not None:
                        self.send_header("Connection", "close")
                        self.close_connection = True
                    self.end_headers()
                    body = route.body if route.truncate_to is None else route.body[: route.truncate_to]
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            def _trickle(self, route: Route) -> None:
                self.close_connection = True
                head = (f"HTTP/1.1 {route.status} OK\r\nContent-Type: {route.content_type}\r\n"
                        f"Content-Length: {len(route.body)}\r\nConnection: close\r\n\r\n").encode()
                data, at_once = head + route.body, len(head) if route.trickle == "body" else 0
                try:
                    self.wfile.write(data[:at_once])
                    for i in range(at_once, len(data)):
                        self.wfile.write(data[i:i + 1])
                        self.wfile.flush()
                        time.sleep(route.trickle_gap_s)
                except OSError:  # the client gave up and shut the connection: what a tarpit wants to see
                    pass

        self._httpd = _Server(("127.0.0.1", port), Handler)
        self.scheme = "http"
        if tls is not None:  # (certificate file, key file): serve HTTPS
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="image-server", daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def start(self) -> ImageServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> ImageServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
