"""What an exporter plugin implements, and the record model it receives.

An exporter only knows its destination ("where to send"); batching, retries with backoff,
``Retry-After``, the bounded queue, the disk spool and the accounting ("when to send") are
written once, in :mod:`pipeobs.export.delivery`, and shared by every exporter.

Plugins are distributions registering a factory under the entry-point group
``pipeobs.exporters``: ``appinsights = "pipeobs_appinsights:create_exporter"``. The factory is
called as ``create_exporter(options: dict[str, str]) -> Exporter``; it reads its own
environment variables (``APPLICATIONINSIGHTS_CONNECTION_STRING``, ``OTEL_EXPORTER_OTLP_*``...)
and raises :class:`pipeobs.errors.ConfigError` with one line naming what is missing.

Records are plain dicts (JSON-able), one of three types. Every record has ``type``,
``step_id``, ``step_name``, ``worker`` (``"<node>/processNNN"`` or ``"driver"``), ``time``
(epoch seconds; for spans the start), and where they apply ``mini_batch_id``, ``attempt``,
``trace_id`` (32 hex) and ``span_id`` (16 hex):

* ``span``: ``name``, ``kind`` (``CONSUMER``/``INTERNAL``/...), ``parent_span_id``, ``start``,
  ``end``, ``status`` (``UNSET``/``OK``/``ERROR``), ``status_message``, ``attributes`` (dict),
  ``events`` (list of ``{name, time, attributes}``; an ``exception`` event carries
  ``exception.type``, ``exception.message``, ``exception.stacktrace``).
* ``log``: ``level`` (``DEBUG``..``CRITICAL``, or None for a plain stdout/stderr line),
  ``stream`` (``stdout``/``stderr``/``log``), ``logger``, ``text``, ``phase``,
  ``custom_dimensions`` (dict, from ``extra={"custom_dimensions": ...}``; may be empty).
* ``metric``: ``name``, ``kind`` (``scalar``/``list``/``row``/``table``/``tag`` for the user's
  ``run.log`` family, ``counter``/``gauge``/``histogram``/``observation`` for built-ins),
  ``value`` (float or None), ``value_json`` (JSON text for non-numbers), ``labels`` (dict),
  ``description``.

A ``log`` or ``span`` record may also carry ``sent_to``: the destinations the entry script's own
instrumentation already sent it to (an opencensus ``AzureLogHandler``, the Azure Monitor
OpenTelemetry distro, ...; see :mod:`pipeobs.telemetry.compose`). An exporter whose
``destination`` attribute is among them does not receive the record, so one record reaches one
destination once. Application Insights destinations are named by :func:`appinsights_destination`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

Record = dict[str, Any]

ENTRY_POINT_GROUP = "pipeobs.exporters"


@dataclass
class ExportResult:
    """What happened to one batch.

    ``delivered`` counts accepted items. ``retry`` lists indexes (into the batch) worth sending
    again (e.g. the 429/5xx items of a 206 partial answer, or every index after a timeout);
    ``rejected`` lists ``(index, reason)`` the backend refused for good (counted as dropped).
    ``retry_after`` is the server's Retry-After in seconds, if it sent one.
    """

    delivered: int = 0
    retry: list[int] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    retry_after: float | None = None
    error: str | None = None

    @classmethod
    def ok(cls, count: int) -> ExportResult:
        return cls(delivered=count)

    @classmethod
    def retry_all(cls, count: int, error: str, retry_after: float | None = None) -> ExportResult:
        return cls(retry=list(range(count)), error=error, retry_after=retry_after)


class Exporter(Protocol):
    """A destination. ``export`` must not retry by itself and must honour its own timeout.

    It may also set ``destination: str`` (e.g. :func:`appinsights_destination` of its key): records
    whose ``sent_to`` holds that value are not given to it.
    """

    name: str

    def export(self, records: Sequence[Record]) -> ExportResult: ...

    def shutdown(self) -> None: ...


def appinsights_destination(instrumentation_key: str) -> str:
    """The destination name of an Application Insights resource, from its instrumentation key.

    ``appinsights:`` and a hash of the key (lower-cased), so records and the store never hold the
    key itself. An exporter sending to that resource sets ``destination`` to this value.
    """
    digest = hashlib.sha256(instrumentation_key.strip().lower().encode("utf-8")).hexdigest()
    return f"appinsights:{digest[:16]}"
