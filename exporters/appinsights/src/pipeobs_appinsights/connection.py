"""Application Insights connection strings: where to send, and with which key.

The rules are opencensus-ext-azure's (``common/__init__.py``), so a connection string that
works there works here:

* ``Key=Value`` pairs joined by ``;``; keys match without regard to case.
* ``Authorization``, if present, is ``ikey`` (or ``aad``, which needs a token credential).
* No ``IngestionEndpoint`` but an ``EndpointSuffix``: ``https://[<Location>.]dc.<EndpointSuffix>``;
  with neither, ``https://dc.services.visualstudio.com``.
* Instrumentation key priority: the ``connection_string`` argument > the ``instrumentation_key``
  argument (deprecated) > :data:`CONNECTION_STRING_ENV` > :data:`INSTRUMENTATION_KEY_ENV`
  (deprecated). Endpoint priority: the argument's connection string > the environment's > default.

Where we differ, on purpose: empty segments (a trailing ``;``, as pasted from some portals) are
ignored, as the .NET SDK does, and a value may contain ``=``. Every failure is a
:class:`pipeobs.errors.ConfigError` whose one line names the fix.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from pipeobs.errors import ConfigError

CONNECTION_STRING_ENV = "APPLICATIONINSIGHTS_CONNECTION_STRING"
"""The connection string, as Microsoft's SDKs read it."""
INSTRUMENTATION_KEY_ENV = "APPINSIGHTS_INSTRUMENTATIONKEY"
"""A bare instrumentation key (deprecated by Microsoft, still honoured by opencensus)."""
DEFAULT_INGESTION_ENDPOINT = "https://dc.services.visualstudio.com"
TRACK_PATH = "/v2.1/track"

_GUID = re.compile(r"^[0-9a-f]{8}-(?:[0-9a-f]{4}-){3}[0-9a-f]{12}$", re.IGNORECASE)
_WHERE = "the Application Insights resource's Overview page in the Azure portal"


@dataclass(frozen=True)
class ConnectionInfo:
    """A resolved destination: the instrumentation key and the ingestion endpoint (no trailing /)."""

    instrumentation_key: str
    ingestion_endpoint: str = DEFAULT_INGESTION_ENDPOINT
    authorization: str = "ikey"

    @property
    def track_url(self) -> str:
        """Where envelopes are POSTed: ``<IngestionEndpoint>/v2.1/track``."""
        return self.ingestion_endpoint + TRACK_PATH


def parse_connection_string(text: str) -> dict[str, str]:
    """The pairs of a connection string, keys lower-cased, with ``ingestionendpoint`` always set."""
    pairs = _pairs_of(text)
    pairs.setdefault("ingestionendpoint", DEFAULT_INGESTION_ENDPOINT)
    return pairs


def _pairs_of(text: str) -> dict[str, str]:
    """The pairs, with ``ingestionendpoint`` only when the string gives or implies one."""
    pairs: dict[str, str] = {}
    for segment in text.split(";"):
        if not segment.strip():
            continue
        key, sep, value = segment.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"Invalid Application Insights connection string (segment {_prefix(segment.strip())} is not Key=Value): "
                f"copy it whole from {_WHERE}"
            )
        pairs[key.strip().lower()] = value.strip()
    auth = pairs.get("authorization")
    if auth is not None and auth.lower() not in ("ikey", "aad"):
        raise ConfigError(
            f"Invalid authorization mechanism {auth!r} in the connection string: use Authorization=ikey or remove it"
        )
    endpoint = _endpoint_of(pairs)
    pairs.pop("ingestionendpoint", None)
    if endpoint:
        pairs["ingestionendpoint"] = endpoint
    return pairs


def _endpoint_of(pairs: Mapping[str, str]) -> str | None:
    endpoint = pairs.get("ingestionendpoint")
    if not endpoint:
        suffix = pairs.get("endpointsuffix")
        if not suffix:
            return None
        location = pairs.get("location")
        endpoint = f"https://{location + '.' if location else ''}dc.{suffix.strip('.')}"
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"Invalid IngestionEndpoint {endpoint!r} in the connection string: it must be an https:// URL"
        )
    return endpoint.rstrip("/")


def resolve_connection(
    connection_string: str | None = None,
    instrumentation_key: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> ConnectionInfo:
    """The destination from the arguments and the environment, with opencensus's priorities."""
    env = os.environ if environ is None else environ
    code = _pairs_of(connection_string) if connection_string and connection_string.strip() else {}
    env_text = env.get(CONNECTION_STRING_ENV, "").strip()
    from_env = _pairs_of(env_text) if env_text else {}
    candidates = [
        (code.get("instrumentationkey"), False),
        (instrumentation_key, True),
        (from_env.get("instrumentationkey"), False),
        (env.get(INSTRUMENTATION_KEY_ENV), True),
    ]
    key, bare = next(((k.strip(), bare) for k, bare in candidates if k and k.strip()), ("", False))
    if not key:
        raise ConfigError(
            f"No Application Insights instrumentation key: set {CONNECTION_STRING_ENV} (or pass connection_string=) "
            f"to the connection string from {_WHERE}"
        )
    if not _GUID.match(key):
        raise ConfigError(
            f"Invalid Application Insights instrumentation key {_prefix(key)}: it must be a GUID; "
            f"copy the connection string from {_WHERE}"
        )
    if bare:
        warnings.warn(
            "A bare Application Insights instrumentation key is deprecated: use a connection string",
            DeprecationWarning,
            stacklevel=3,
        )
    endpoint = code.get("ingestionendpoint") or from_env.get("ingestionendpoint") or DEFAULT_INGESTION_ENDPOINT
    auth = (code or from_env).get("authorization") or "ikey"
    return ConnectionInfo(key, endpoint, auth.lower())


def _prefix(secret: str, shown: int = 8) -> str:
    """The start of something that may be a secret pasted in the wrong place: never all of it."""
    if len(secret) <= shown:
        return repr(secret[:2] + "..." if len(secret) > 2 else secret)
    return f"{secret[:shown]!r}... ({len(secret)} characters)"
