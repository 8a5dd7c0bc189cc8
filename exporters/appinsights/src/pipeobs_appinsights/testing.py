"""A fake ingestion endpoint for unit tests: pass ``FakeSender`` as ``AppInsightsExporter(sender=...)``.

::

    sender = FakeSender(partial({1: 429, 2: 400}), ok())
    exporter = AppInsightsExporter(CONNECTION_STRING, sender=sender)
    result = exporter.export(records)
    sender.requests[0].envelopes  # what was posted, decoded

Each call takes the next queued answer (the last one repeats); an answer may be a response
tuple, an exception instance (raised, like a network failure) or a callable
``answer(request) -> response``. Integration tests should still use a real server on 127.0.0.1.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pipeobs_appinsights.transport import Response

CONNECTION_STRING = (
    "InstrumentationKey=00000000-0000-0000-0000-000000000001;IngestionEndpoint=https://ingest.example.invalid/"
)
"""A well-formed connection string pointing nowhere, for tests."""


@dataclass
class SentRequest:
    """One POST the exporter made."""

    url: str
    headers: dict[str, str]
    body: bytes
    timeout: float

    @property
    def envelopes(self) -> list[dict[str, Any]]:
        """The posted JSON array, decompressed if it was gzipped."""
        data = self.body
        if self.headers.get("Content-Encoding") == "gzip":
            data = gzip.decompress(data)
        return json.loads(data)


Answer = Response | BaseException | Callable[[SentRequest], Response]


class FakeSender:
    """Records requests and answers from a script of responses."""

    def __init__(self, *answers: Answer) -> None:
        self._answers: list[Answer] = list(answers) or [ok()]
        self.requests: list[SentRequest] = []

    def __call__(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> Response:
        request = SentRequest(url, dict(headers), body, timeout)
        self.requests.append(request)
        answer = self._answers.pop(0) if len(self._answers) > 1 else self._answers[0]
        if isinstance(answer, BaseException):
            raise answer
        if callable(answer):
            return answer(request)
        if answer[0] in (200, 206) and answer[2] == _ECHO:
            return answer[0], answer[1], track_response(len(request.envelopes), [])
        return answer


_ECHO = b"<echo>"


def track_response(received: int, errors: list[tuple[int, int, str]] | list[dict[str, Any]]) -> bytes:
    """A TrackResponse body: ``errors`` as ``(index, statusCode, message)`` or as dicts."""
    items = [e if isinstance(e, dict) else {"index": e[0], "statusCode": e[1], "message": e[2]} for e in errors]
    body = {"itemsReceived": received, "itemsAccepted": received - len(items), "errors": items}
    return json.dumps(body).encode()


def ok() -> Response:
    """200, every item accepted (the counts follow the request)."""
    return 200, {"content-type": "application/json"}, _ECHO


def partial(item_codes: Mapping[int, int], retry_after: str | None = None) -> Callable[[SentRequest], Response]:
    """206 with ``{envelope index: statusCode}`` errors."""

    def answer(request: SentRequest) -> Response:
        errors = [(index, code, f"item {index}: status {code}") for index, code in sorted(item_codes.items())]
        headers = {"content-type": "application/json"} | ({"retry-after": retry_after} if retry_after else {})
        return 206, headers, track_response(len(request.envelopes), errors)

    return answer


def status(code: int, retry_after: str | None = None, message: str = "") -> Response:
    """A whole-batch answer such as 503 (with ``Retry-After``), 400 or 401."""
    headers = {"retry-after": retry_after} if retry_after else {}
    body = track_response(0, [(0, code, message)]) if message else b""
    return code, headers, body
