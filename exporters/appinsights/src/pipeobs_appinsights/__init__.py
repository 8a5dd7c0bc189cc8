"""Azure Application Insights for pipeobs: an exporter plugin and a drop-in ``AzureLogHandler``.

* :class:`AppInsightsExporter` - the ``appinsights`` destination of ``pipeobs.exporters``
  (records -> envelopes -> ``POST <IngestionEndpoint>/v2.1/track`` -> ``ExportResult``).
* :func:`create_exporter` - the entry point: ``create_exporter(options) -> AppInsightsExporter``.
* :class:`AzureLogHandler` - opencensus's handler, routed through pipeobs.
* :func:`resolve_connection` / :func:`parse_connection_string` / :class:`ConnectionInfo`.

Test helpers (a fake sender) are in :mod:`pipeobs_appinsights.testing`.
"""

from pipeobs_appinsights._version import __version__
from pipeobs_appinsights.connection import ConnectionInfo, parse_connection_string, resolve_connection
from pipeobs_appinsights.exporter import AppInsightsExporter, create_exporter
from pipeobs_appinsights.handler import AzureLogHandler

__all__ = [
    "AppInsightsExporter",
    "AzureLogHandler",
    "ConnectionInfo",
    "__version__",
    "create_exporter",
    "parse_connection_string",
    "resolve_connection",
]
