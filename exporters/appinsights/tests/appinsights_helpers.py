"""Test helpers: pipeobs records, an envelope schema checker, and a real ingestion endpoint on 127.0.0.1."""

from __future__ import annotations

import gzip
import json
import math
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

IKEY = "00000000-0000-0000-0000-000000000001"
TRACE_ID = "5bd4e8c5a1b2c3d4e5f60718293a4b5c"
JOB_SPAN = "b7501f2a3c4d163a"
MB_SPAN = "18a5c0d1e2f3e46f"
T0 = 1_790_000_000.25  # 2026-09-21T14:13:20.250000Z

_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
_DURATION = re.compile(r"^\d+\.\d\d:\d\d:\d\d\.\d{6}$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_HEX16 = re.compile(r"^[0-9a-f]{16}$")
BASE_TYPES = {
    "Microsoft.ApplicationInsights.Message": "MessageData",
    "Microsoft.ApplicationInsights.Exception": "ExceptionData",
    "Microsoft.ApplicationInsights.Request": "RequestData",
    "Microsoft.ApplicationInsights.RemoteDependency": "RemoteDependencyData",
    "Microsoft.ApplicationInsights.Metric": "MetricData",
}


def span_record(**overrides: Any) -> dict[str, Any]:
    record = {
        "type": "span",
        "step_id": "step-1",
        "step_name": "score-step",
        "worker": "0/process001",
        "time": T0,
        "mini_batch_id": 3,
        "attempt": 1,
        "trace_id": TRACE_ID,
        "span_id": MB_SPAN,
        "name": "mini_batch",
        "kind": "CONSUMER",
        "parent_span_id": JOB_SPAN,
        "start": T0,
        "end": T0 + 2.5,
        "status": "OK",
        "status_message": None,
        "attributes": {"pipeobs.step_id": "step-1", "pipeobs.mini_batch_id": 3, "pipeobs.attempt": 1, "rows": 128},
        "events": [],
    }
    record.update(overrides)
    return record


def log_record(**overrides: Any) -> dict[str, Any]:
    record = {
        "type": "log",
        "step_id": "step-1",
        "step_name": "score-step",
        "worker": "0/process001",
        "time": T0 + 1,
        "mini_batch_id": 3,
        "attempt": 1,
        "trace_id": TRACE_ID,
        "span_id": MB_SPAN,
        "level": "INFO",
        "stream": "log",
        "logger": "entry",
        "text": "scored 128 rows",
        "phase": "run",
        "custom_dimensions": {},
    }
    record.update(overrides)
    return record


def metric_record(**overrides: Any) -> dict[str, Any]:
    record = {
        "type": "metric",
        "step_id": "step-1",
        "step_name": "score-step",
        "worker": "0/process001",
        "time": T0 + 2,
        "mini_batch_id": 3,
        "attempt": 1,
        "trace_id": TRACE_ID,
        "span_id": MB_SPAN,
        "name": "accuracy",
        "kind": "scalar",
        "value": 0.93,
        "value_json": None,
        "labels": {},
        "description": "",
    }
    record.update(overrides)
    return record


def envelope_problems(envelope: dict[str, Any], ikey: str = IKEY) -> list[str]:
    """Every way ``envelope`` breaks the schema of reference section 1.7 (required fields and formats)."""
    problems: list[str] = []
    name = envelope.get("name")
    if name not in BASE_TYPES:
        return [f"unknown envelope name {name!r}"]
    if not _TIME.match(str(envelope.get("time"))):
        problems.append(f"time {envelope.get('time')!r}")
    if envelope.get("iKey") != ikey:
        problems.append(f"iKey {envelope.get('iKey')!r}")
    tags = envelope.get("tags")
    if not isinstance(tags, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
        problems.append("tags must map str to str")
        tags = {}
    if "ai.operation.id" in tags and not _HEX32.match(tags["ai.operation.id"]):
        problems.append("ai.operation.id is not 32 hex")
    if "ai.operation.parentId" in tags and not _HEX16.match(tags["ai.operation.parentId"]):
        problems.append("ai.operation.parentId is not 16 hex")
    data = envelope.get("data") or {}
    if data.get("baseType") != BASE_TYPES[name]:
        problems.append(f"baseType {data.get('baseType')!r} for {name}")
    base = data.get("baseData") or {}
    if base.get("ver") != 2:
        problems.append("baseData.ver must be 2")
    problems += _base_problems(data.get("baseType"), base)
    properties = base.get("properties", {})
    if not isinstance(properties, dict):
        problems.append("properties must be an object")
    else:
        for key, value in properties.items():
            if not isinstance(value, str) or len(key) > 150 or len(value) > 8192:
                problems.append(f"property {key!r}={value!r} is not a short string")
    return problems


def _base_problems(base_type: str | None, base: dict[str, Any]) -> list[str]:
    problems: list[str] = []

    def need(key: str, kind: type | tuple[type, ...], nonempty: bool = False) -> None:
        value = base.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) is not (kind is bool) or (nonempty and not value):
            problems.append(f"{base_type}.{key} = {value!r}")

    if base_type == "MessageData":
        need("message", str, nonempty=True)
    elif base_type == "ExceptionData":
        need("exceptions", list, nonempty=True)
        for item in base.get("exceptions") or []:
            for key, kind in (
                ("id", int),
                ("outerId", int),
                ("typeName", str),
                ("message", str),
                ("hasFullStack", bool),
            ):
                if not isinstance(item.get(key), kind) or (kind is str and not item.get(key)):
                    problems.append(f"exception.{key} = {item.get(key)!r}")
            for frame in item.get("parsedStack", []):
                if not (isinstance(frame.get("level"), int) and isinstance(frame.get("line"), int)):
                    problems.append(f"frame {frame!r}")
                if not (isinstance(frame.get("method"), str) and isinstance(frame.get("fileName"), str)):
                    problems.append(f"frame {frame!r}")
    elif base_type in ("RequestData", "RemoteDependencyData"):
        need("id", str, nonempty=True)
        need("name", str, nonempty=True)
        need("success", bool)
        if not _DURATION.match(str(base.get("duration"))):
            problems.append(f"duration {base.get('duration')!r}")
        need("responseCode" if base_type == "RequestData" else "resultCode", str, nonempty=True)
        if base_type == "RemoteDependencyData":
            need("type", str, nonempty=True)
    elif base_type == "MetricData":
        need("metrics", list, nonempty=True)
        for metric in base.get("metrics") or []:
            if (
                not metric.get("name")
                or not isinstance(metric.get("value"), int | float)
                or not math.isfinite(metric["value"])
            ):
                problems.append(f"metric {metric!r}")
    if "severityLevel" in base and base["severityLevel"] not in range(5):
        problems.append(f"severityLevel {base['severityLevel']!r}")
    return problems


Answer = Callable[[list[dict[str, Any]], dict[str, str]], tuple[int, dict[str, str], bytes]]


@dataclass
class Ingestion:
    """A real HTTP ingestion endpoint: records posts, checks envelopes, answers with ``answer``."""

    port: int = 0
    posts: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    answer: Answer | None = None
    release: threading.Event = field(default_factory=threading.Event)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def connection_string(self) -> str:
        return f"InstrumentationKey={IKEY};IngestionEndpoint={self.endpoint}/"

    @property
    def envelopes(self) -> list[dict[str, Any]]:
        return [envelope for post in self.posts for envelope in post["envelopes"]]

    def hang(self) -> None:
        """Make the endpoint accept requests and answer nothing until the test ends."""
        self.answer = lambda _envelopes, _headers: (self.release.wait(10) and None) or (200, {}, b"{}")


def _track_ok(envelopes: list[dict[str, Any]], _headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    body = {"itemsReceived": len(envelopes), "itemsAccepted": len(envelopes), "errors": []}
    return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()


def handler_for(state: Ingestion) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            headers = {k.lower(): v for k, v in self.headers.items()}
            if headers.get("content-encoding") == "gzip":
                raw = gzip.decompress(raw)
            envelopes = json.loads(raw)
            state.posts.append({"path": self.path, "headers": headers, "envelopes": envelopes})
            if self.path != "/v2.1/track":
                state.problems.append(f"POST to {self.path}")
            if not headers.get("content-type", "").startswith("application/json"):
                state.problems.append(f"content-type {headers.get('content-type')!r}")
            for index, envelope in enumerate(envelopes):
                state.problems += [f"envelope {index}: {p}" for p in envelope_problems(envelope)]
            status, answer_headers, body = (state.answer or _track_ok)(envelopes, headers)
            self.send_response(status)
            for key, value in answer_headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet test output
            pass

    return Handler


@contextmanager
def serve(state: Ingestion) -> Iterator[Ingestion]:
    """Run ``state``'s endpoint on 127.0.0.1 (port 0) until the block ends."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(state))
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)
