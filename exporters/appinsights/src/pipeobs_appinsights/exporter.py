"""The Application Insights destination: records -> envelopes -> one POST -> an ExportResult.

``export`` never retries and never sleeps: it reports, per *record*, what the ingestion service
said, and :mod:`pipeobs.export.delivery` decides when to try again. A record may give several
envelopes (a span with an exception event gives a Request and an Exception); it counts as
delivered when all of them are accepted, as retryable when any of them is worth resending, and
as rejected when any was refused for good and none is retryable.

How answers are read (the ingestion protocol, and opencensus's retry rules where they are sound):

=================================  =====================================================
answer                             ExportResult
=================================  =====================================================
200                                every record delivered
206 (per-item ``errors``)          items 408/429/500/502/503/504 -> retry; others rejected
307/308 with ``Location``          followed (same host or an Azure Monitor host, at most
                                   10 hops, within the same timeout) and remembered
408, 429, 5xx                      retry everything, with ``Retry-After`` (seconds or date)
402, 439 (quota, daily cap)        rejected
400, 404, other 4xx                rejected, with the service's message
401, 403                           rejected, the reason naming the key / credential
timeout, connection error          retry everything, with the error text
=================================  =====================================================

Records that cannot be mapped (an unknown type, a value JSON cannot carry) are rejected alone.
"""

from __future__ import annotations

import email.utils
import enum
import gzip
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from pipeobs.errors import ConfigError
from pipeobs.export.base import ExportResult, Record, appinsights_destination
from pipeobs_appinsights.connection import CONNECTION_STRING_ENV, TRACK_PATH, ConnectionInfo, resolve_connection
from pipeobs_appinsights.envelopes import Envelope, to_envelopes
from pipeobs_appinsights.transport import HttpSender, Response, Sender

logger = logging.getLogger(__name__)

RETRYABLE_ITEM_CODES = frozenset({408, 429, 500, 502, 503, 504})
AAD_SCOPE = "https://monitor.azure.com//.default"
MAX_REDIRECTS = 10
AZURE_INGESTION_SUFFIXES = (
    ".applicationinsights.azure.com",
    ".applicationinsights.azure.cn",
    ".applicationinsights.azure.us",
    ".services.visualstudio.com",
    ".monitor.azure.com",
)
TelemetryProcessor = Callable[[Any], Any]  # gets an AttrDict: keys and attributes


class ExporterState(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


class AppInsightsExporter:
    """Sends pipeobs records to Application Insights (``POST <IngestionEndpoint>/v2.1/track``).

    ``connection_string`` defaults to ``APPLICATIONINSIGHTS_CONNECTION_STRING``; ``sender`` is a
    callable ``send(url, body, headers, timeout) -> (status, headers, body)`` (the default is
    :class:`~pipeobs_appinsights.transport.HttpSender`; tests pass
    :class:`pipeobs_appinsights.testing.FakeSender`). ``credential`` is an Entra ID token
    credential (anything with ``get_token``), as opencensus takes it.
    """

    name = "appinsights"

    def __init__(
        self,
        connection_string: str | None = None,
        timeout: float = 10.0,
        sender: Sender | None = None,
        *,
        instrumentation_key: str | None = None,
        credential: Any = None,
        proxies: Mapping[str, str] | str | None = None,
        compress: bool = False,
        telemetry_processors: Iterable[TelemetryProcessor] = (),
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.connection: ConnectionInfo = resolve_connection(connection_string, instrumentation_key, environ)
        if credential is not None and not callable(getattr(credential, "get_token", None)):
            raise ConfigError("credential must be an azure.core TokenCredential (an object with get_token)")
        if self.connection.authorization == "aad" and credential is None:
            raise ConfigError(
                "The connection string says Authorization=AAD: pass credential= (e.g. DefaultAzureCredential())"
            )
        if not timeout or timeout <= 0:
            raise ConfigError(f"timeout must be a positive number of seconds, not {timeout!r}")
        self.timeout = float(timeout)
        self.compress = compress
        self.url = self.connection.track_url
        self._send: Sender = sender if sender is not None else HttpSender(proxies)
        self._credential = credential
        self._token: tuple[str, float] | None = None
        self._processors: list[TelemetryProcessor] = list(telemetry_processors)
        self._state = ExporterState.OPEN
        self._lock = threading.Lock()
        self._warned: set[int] = set()

    @property
    def destination(self) -> str:
        """The Application Insights resource this exporter sends to (see ``pipeobs.export.base``):
        records the entry script's own instrumentation already sent there are not sent again."""
        return appinsights_destination(self.connection.instrumentation_key)

    def add_telemetry_processor(self, processor: TelemetryProcessor) -> None:
        """``processor(envelope)`` may edit the envelope in place; returning ``False`` drops it (opencensus)."""
        self._processors.append(processor)

    def clear_telemetry_processors(self) -> None:
        self._processors.clear()

    def export(self, records: Sequence[Record]) -> ExportResult:
        """Send one batch and say, per record index, what happened; never retries, never sleeps."""
        if self._state is ExporterState.CLOSED:
            raise RuntimeError("AppInsightsExporter.export() called after shutdown()")
        batch = _Batch.build(records, self.connection.instrumentation_key, self._processors)
        if not batch.bodies:
            return batch.result()
        try:
            status, headers, body = self._post(batch.payload(self.compress))
        except _RefusedRedirect as exc:
            return batch.reject_all(f"{exc}; set IngestionEndpoint to the final host", [], None)
        except Exception as exc:  # noqa: BLE001 - the telemetry boundary: every failure becomes a result
            return batch.retry_all(f"{type(exc).__name__}: {exc}")
        return self._interpret(batch, status, headers, body)

    def force_flush(self, timeout_s: float | None = None) -> bool:
        """Nothing is buffered here."""
        return True

    def shutdown(self) -> None:
        """Idempotent; ``export`` raises ``RuntimeError`` afterwards."""
        with self._lock:
            if self._state is ExporterState.CLOSED:
                return
            self._state = ExporterState.CLOSED
        close = getattr(self._send, "close", None)
        if callable(close):
            close()

    def __enter__(self) -> AppInsightsExporter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    # -- the POST ----------------------------------------------------------------------------

    def _post(self, body: tuple[bytes, bool]) -> Response:
        data, gzipped = body
        headers = {"Content-Type": "application/json; charset=utf-8", "Accept": "application/json"}
        if gzipped:
            headers["Content-Encoding"] = "gzip"
        if self._credential is not None:
            headers["Authorization"] = f"Bearer {self._bearer_token()}"
        deadline = time.monotonic() + self.timeout
        url = self.url
        for _hop in range(MAX_REDIRECTS + 1):
            status, raw_headers, answer = self._send(url, data, headers, max(0.001, deadline - time.monotonic()))
            answer_headers = {str(key).lower(): value for key, value in raw_headers.items()}
            location = answer_headers.get("location")
            if status not in (307, 308) or not location:
                return status, answer_headers, answer
            url = self._redirect_target(url, location)
            if time.monotonic() >= deadline:
                raise TimeoutError(f"redirects took longer than {self.timeout:g} s")
        raise RuntimeError(f"more than {MAX_REDIRECTS} consecutive redirects from {self.url}")

    def _redirect_target(self, current: str, location: str) -> str:
        """The new track URL (opencensus keeps the path and takes the host); only to a trusted host."""
        new = urlsplit(location)
        old = urlsplit(current)
        host = (new.hostname or old.hostname or "").lower()
        if host != (old.hostname or "").lower() and not host.endswith(AZURE_INGESTION_SUFFIXES):
            raise _RefusedRedirect(f"refused a redirect to {host!r}, which is not an Azure Monitor ingestion host")
        if old.scheme == "https" and new.scheme == "http":
            raise _RefusedRedirect(f"refused a redirect from https to plain http ({location})")
        netloc = new.netloc or old.netloc
        url = f"{new.scheme or old.scheme}://{netloc}{TRACK_PATH}"
        self.url = url
        return url

    def _bearer_token(self) -> str:
        now = time.time()
        if self._token is None or self._token[1] - 300 <= now:
            token = self._credential.get_token(AAD_SCOPE)
            self._token = (token.token, float(getattr(token, "expires_on", now + 600)))
        return self._token[0]

    def _interpret(self, batch: _Batch, status: int, headers: Mapping[str, str], body: bytes) -> ExportResult:
        retry_after = parse_retry_after(headers.get("retry-after"))
        if status in (200, 206):
            errors = _item_errors(body)
            if status == 206 and errors is None:
                return batch.retry_all("206 partial success with an unreadable body", retry_after)
            return batch.with_item_errors(errors or [], retry_after)
        if status in (408, 429) or 500 <= status <= 599:
            return batch.retry_all(f"HTTP {status}{_service_message(body)}", retry_after)
        return batch.reject_all(self._reason(status, body), _item_errors(body) or [], status)

    def _reason(self, status: int, body: bytes) -> str:
        detail = _service_message(body)
        if status in (401, 403):
            self._warn_once(status, "Application Insights refused the credentials (HTTP %d)%s", status, detail)
            return (
                f"HTTP {status}: the instrumentation key or credential was refused{detail}; "
                f"check {CONNECTION_STRING_ENV} (InstrumentationKey) and, for Entra ID, the credential's role"
            )
        if status in (402, 439):
            return f"HTTP {status}: the Application Insights daily cap or quota is exhausted{detail}"
        if status == 404:
            return f"HTTP 404: no ingestion endpoint at {self.url}{detail}; check IngestionEndpoint"
        return f"HTTP {status}{detail}"

    def _warn_once(self, key: int, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)


class _RefusedRedirect(Exception):
    pass


class _Batch:
    """The envelopes of a batch and, for each, the index of the record it came from."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.bodies: list[bytes] = []
        self.owners: list[int] = []
        self.rejected: dict[int, str] = {}

    @classmethod
    def build(cls, records: Sequence[Record], ikey: str, processors: Sequence[TelemetryProcessor]) -> _Batch:
        batch = cls(len(records))
        for index, record in enumerate(records):
            try:
                envelopes = to_envelopes(record, ikey)
                if processors:
                    envelopes = apply_telemetry_processors(envelopes, processors)
                bodies = [_dump(envelope) for envelope in envelopes]
            except Exception as exc:  # noqa: BLE001 - one bad record must not sink the batch
                batch.rejected[index] = f"cannot map to an envelope: {type(exc).__name__}: {exc}"
                continue
            batch.bodies.extend(bodies)
            batch.owners.extend([index] * len(bodies))
        return batch

    def payload(self, compress: bool) -> tuple[bytes, bool]:
        data = b"[" + b",".join(self.bodies) + b"]"
        return (gzip.compress(data, mtime=0), True) if compress else (data, False)

    def result(
        self, retry: Iterable[int] = (), retry_after: float | None = None, error: str | None = None
    ) -> ExportResult:
        retry_set = set(retry) - set(self.rejected)
        delivered = self.count - len(retry_set) - len(self.rejected)
        return ExportResult(
            delivered=delivered,
            retry=sorted(retry_set),
            rejected=sorted(self.rejected.items()),
            retry_after=retry_after,
            error=error,
        )

    def retry_all(self, error: str, retry_after: float | None = None) -> ExportResult:
        return self.result(set(self.owners), retry_after, error)

    def with_item_errors(self, errors: list[dict[str, Any]], retry_after: float | None) -> ExportResult:
        retry: set[int] = set()
        for item in errors:
            owner = self._owner(item)
            if owner is None:
                continue
            code = item.get("statusCode")
            if code in RETRYABLE_ITEM_CODES:
                retry.add(owner)
            else:
                self.rejected.setdefault(owner, f"HTTP {code}: {item.get('message') or 'refused by ingestion'}")
        error = f"{len(errors)} of {len(self.bodies)} envelopes not accepted" if errors else None
        for owner in retry:
            self.rejected.pop(owner, None)  # a record with any retryable envelope is retried whole
        return self.result(retry, retry_after if retry else None, error)

    def reject_all(self, reason: str, errors: list[dict[str, Any]], code: int | None) -> ExportResult:
        """Every sent record refused; a record's own item error, when the service gave one, is its reason."""
        detail = {owner: item.get("message") for item in errors if (owner := self._owner(item)) is not None}
        others = f"HTTP {code}: refused with its batch, which had {len(detail)} invalid item(s)" if detail else reason
        for owner in set(self.owners):
            message = detail.get(owner)
            self.rejected.setdefault(owner, f"HTTP {code}: {message}" if message else others)
        return self.result(error=reason)

    def _owner(self, item: Mapping[str, Any]) -> int | None:
        index = item.get("index")
        if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(self.owners):
            return self.owners[index]
        return None


def apply_telemetry_processors(envelopes: list[Envelope], processors: Sequence[TelemetryProcessor]) -> list[Envelope]:
    """opencensus's rule: in order; ``False`` drops the envelope; a processor that raises is logged and skipped.

    Processors get the envelope with attribute access as well (``envelope.tags["ai.cloud.role"]``,
    ``envelope.data.baseData.properties``), as opencensus's envelope objects allow.
    """
    kept: list[Envelope] = []
    for envelope in envelopes:
        view = AttrDict.wrap(envelope)
        accepted = True
        for processor in processors:
            try:
                if processor(view) is False:
                    accepted = False
                    break
            except Exception as exc:  # noqa: BLE001 - opencensus logs and carries on
                logger.warning("Telemetry processor %r failed: %s", processor, exc)
        if accepted:
            kept.append(view)
    return kept


class AttrDict(dict[str, Any]):
    """A dict whose keys are also attributes (what opencensus's processors are written against)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    @classmethod
    def wrap(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return cls({key: cls.wrap(item) for key, item in value.items()})
        if isinstance(value, list):
            return [cls.wrap(item) for item in value]
        return value


def _dump(envelope: Envelope) -> bytes:
    # allow_nan=False: one NaN would make the service refuse the whole POST with 400
    return json.dumps(envelope, separators=(",", ":"), allow_nan=False, default=str).encode("ascii")


def _item_errors(body: bytes) -> list[dict[str, Any]] | None:
    """The ``errors`` of a TrackResponse, or None when the body is not one."""
    try:
        answer = json.loads(body or b"null")
    except ValueError:
        return None
    if not isinstance(answer, dict):
        return None
    errors = answer.get("errors") or []
    return [item for item in errors if isinstance(item, dict)] if isinstance(errors, list) else None


def _service_message(body: bytes) -> str:
    errors = _item_errors(body)
    if errors:
        message = errors[0].get("message")
        return f": {message}" if message else ""
    text = body[:200].decode("utf-8", "replace").strip()
    return f": {text}" if text and not text.startswith("{") else ""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` in seconds: a number of seconds or an HTTP date (RFC 9110); None if absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if seconds == seconds else None


def create_exporter(options: Mapping[str, Any]) -> AppInsightsExporter:
    """The ``pipeobs.exporters`` entry point: ``connection_string`` (else the env var), ``timeout``, ``compress``."""
    timeout_text = options.get("timeout", 10.0)
    try:
        timeout = float(timeout_text)
    except (TypeError, ValueError):
        raise ConfigError(f"appinsights timeout must be a number of seconds, not {timeout_text!r}") from None
    compress = str(options.get("compress", "false")).strip().lower() in ("1", "true", "yes", "on")
    return AppInsightsExporter(
        connection_string=options.get("connection_string") or None,
        timeout=timeout,
        instrumentation_key=options.get("instrumentation_key") or None,
        proxies=options.get("proxies") or None,
        compress=compress,
    )
