"""A static file server on 127.0.0.1 for tests and benchmarks: HTTP range requests (or,
``ranges=False``, a server that ignores them), and a count of the body bytes it sent."""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class RangeServer:
    """``with RangeServer(folder) as server:`` serves ``folder`` at ``server.url``."""

    def __init__(self, root: str | Path, *, ranges: bool = True):
        self.root = Path(root).resolve()
        self.ranges = ranges
        self.bytes_sent = 0
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def reset(self) -> None:
        with self._lock:
            self.bytes_sent = 0
            self.requests.clear()

    def sent(self, path_part: str) -> int:
        """Requests whose path contains ``path_part``."""
        return sum(path_part in path for path, _ in self.requests)

    def _record(self, path: str, header: str | None, size: int) -> None:
        with self._lock:
            self.requests.append((path, header))
            self.bytes_sent += size

    def __enter__(self) -> RangeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)


def _handler_for(server: RangeServer):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            target = (server.root / self.path.lstrip("/").split("?")[0]).resolve()
            if server.root not in target.parents or not target.is_file():
                self.send_error(404)
                return
            data = target.read_bytes()
            header = self.headers.get("Range")
            match = _RANGE.match(header or "") if server.ranges else None
            if match:
                start = int(match[1])
                end = min(int(match[2]) if match[2] else len(data) - 1, len(data) - 1)
                body = data[start : end + 1]
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            else:
                body = data
                self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            server._record(self.path, header, len(body))  # before the client can have it
            self.wfile.write(body)

        def log_message(self, *args):  # quiet
            pass

    return Handler
