"""A local Application Insights ingestion sink: ``python -m bench.sink`` prints ``PORT <n>``.

``POST /v2.1/track`` (JSON array, or newline-delimited JSON, optionally gzipped) answers 200 with
the ingestion service's ``{"itemsReceived", "itemsAccepted", "errors"}`` and counts the items
and the time of the last one; ``GET /stats`` returns the counts as JSON. It listens on
127.0.0.1 only and runs in its own process, so it takes no CPU time from the client's
interpreter (GIL) under test.
"""

from __future__ import annotations

import gzip
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

STATS: dict[str, Any] = {"items": 0, "requests": 0, "first": None, "last": None, "bad": 0}
LOCK = threading.Lock()


class Ingestion(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive where the client wants it (requests does)

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        try:
            items = _items(body)
        except ValueError:
            with LOCK:
                STATS["bad"] += 1
            self._answer(400, {"itemsReceived": 0, "itemsAccepted": 0, "errors": []})
            return
        now = time.time()
        with LOCK:
            STATS["items"] += items
            STATS["requests"] += 1
            STATS["first"] = STATS["first"] or now
            STATS["last"] = now
        self._answer(200, {"itemsReceived": items, "itemsAccepted": items, "errors": []})

    def do_GET(self) -> None:  # noqa: N802
        with LOCK:
            self._answer(200, dict(STATS))

    def _answer(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass


def _items(body: bytes) -> int:
    text = body.decode("utf-8").strip()
    if text.startswith("["):
        return len(json.loads(text))
    return sum(1 for line in text.splitlines() if line.strip() and json.loads(line) is not None)


def main() -> int:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Ingestion)
    server.daemon_threads = True
    print(f"PORT {server.server_address[1]}", flush=True)
    threading.Thread(target=_exit_with_stdin, args=(server,), daemon=True).start()
    server.serve_forever(poll_interval=0.1)
    return 0


def _exit_with_stdin(server: ThreadingHTTPServer) -> None:
    """The parent closes our stdin to stop us (and so we never outlive it)."""
    sys.stdin.read()
    server.shutdown()


if __name__ == "__main__":
    sys.exit(main())
