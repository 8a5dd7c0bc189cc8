"""The local collector: App Insights and OTLP/HTTP ingestion into a run directory the explorer reads.

``pipeobs collect [--port P] [--host H] [--dir DIR] [--instrumentation-key KEY]`` listens on
127.0.0.1 (a free port unless ``--port``) and writes everything it receives into
``DIR/pipeobs.db`` (default ``./collected``), the store a job's run directory holds, with one
``runs`` row (step_id ``collected``, step name ``collector``, ``Running`` while serving,
``Completed`` once stopped). ``pipeobs logs DIR``, ``show DIR`` and ``trace DIR`` read it.

Endpoints:

* ``POST /v2/track``, ``/v2.1/track``: App Insights envelopes (a JSON array, one object or
  NDJSON; gzip by ``Content-Encoding`` or by its magic bytes). Answers ``{"itemsReceived",
  "itemsAccepted", "errors": [{"index", "statusCode", "message"}]}`` with 200 (all accepted),
  206 (some rejected: invalid, or another iKey than ``--instrumentation-key``), 400 (none
  accepted, or a body that is not JSON / not gzip / empty), 413 (larger than ``max_body``,
  before or after decompression), 415 (a Content-Type that cannot be JSON).
* ``POST /v1/traces``, ``/v1/logs``, ``/v1/metrics``: OTLP/HTTP, protobuf or OTLP JSON
  (hex ids), gzip or deflate. Answers the empty ``Export*ServiceResponse`` in the request's
  encoding; 400 / 413 / 415 with a ``google.rpc.Status`` body.
* ``GET /``: what the collector is and what it has stored.
* ``GET /ui/`` (with ``--ui``): the web explorer (:mod:`pipeobs.ui`) over the collected run.

How envelopes and OTLP records become ``spans``, ``log_lines`` and ``metrics`` rows is told in
:mod:`pipeobs.collector._appinsights` and :mod:`pipeobs.collector._otlp`.

Importing this package costs no starlette, uvicorn or protobuf import; :func:`create_app`,
:func:`create_server` and :func:`serve` load them on first use and, if missing, raise an
``ImportError`` naming ``pip install 'pipeobs[collector]'``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

from pipeobs.collector._body import DEFAULT_MAX_BODY
from pipeobs.collector._deps import INSTALL_HINT
from pipeobs.errors import ConfigError

if TYPE_CHECKING:
    from pipeobs.collector._app import create_app
    from pipeobs.collector._server import CollectorServer, create_server, serve

__all__ = ["CollectorServer", "DEFAULT_MAX_BODY", "INSTALL_HINT", "add_subcommand", "create_app", "create_server",
           "dispatch", "serve"]

_LAZY = {"create_app": "_app", "create_server": "_server", "serve": "_server", "CollectorServer": "_server"}
DEFAULT_DIR = "collected"


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def add_subcommand(subparsers: Any) -> None:
    """Add ``collect`` to an argparse subparsers object (its parser class is kept)."""
    description = "receive App Insights and OTLP telemetry on a local port and store it as a run"
    parser = subparsers.add_parser("collect", help=description, description=description, allow_abbrev=False)
    parser.add_argument("--port", type=port_number, default=0, help="port to listen on (default: 0, a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--dir", default=DEFAULT_DIR, metavar="DIR",
                        help=f"run directory to write pipeobs.db into (default: ./{DEFAULT_DIR})")
    parser.add_argument("--instrumentation-key", "--instrumentation_key", dest="instrumentation_key", metavar="KEY",
                        help="accept App Insights items with this iKey only (default: any)")
    parser.add_argument("--ui", action="store_true",
                        help="also serve the web explorer over what is collected, at /ui/ (needs pipeobs[ui])")


def dispatch(args: argparse.Namespace) -> int | None:
    """Run ``collect`` until interrupted; None when ``args.command`` is another command."""
    if getattr(args, "command", None) != "collect":
        return None
    if os.path.exists(args.dir) and not os.path.isdir(args.dir):
        raise ConfigError(f"--dir '{args.dir}' is an existing file, not a folder: name a folder for the "
                          "collected telemetry (it is created if missing)")
    try:
        from pipeobs.collector._server import serve
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    serve(port=args.port, host=args.host, store_dir=args.dir, instrumentation_key=args.instrumentation_key, ui=args.ui)
    return 0


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port '{text}' (0 to 65535; 0 picks a free one)")
    return port
