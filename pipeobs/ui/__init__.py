"""The web explorer: ``pipeobs ui [RUNS_DIR]`` serves the runs below a folder as web pages.

Runs, one run (summary, worker-lane timeline, tables, charts), a mini-batch, a span, all logs of
a run, and two runs compared; live runs update in place. See :mod:`pipeobs.ui.app` for the pages
and the security rules, :mod:`pipeobs.ui.data` for what they read.

Importing this package costs no starlette or jinja2 import; :func:`create_ui_app` and
:func:`serve` load them on first use and, if missing, raise an ``ImportError`` naming
``pip install 'pipeobs[ui]'``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pipeobs.ui._deps import INSTALL_HINT, PERFETTO_URL

__all__ = ["INSTALL_HINT", "add_subcommand", "create_ui_app", "dispatch", "serve"]


def create_ui_app(root: str | Path, **options: Any) -> Any:
    """The explorer's ASGI app over the runs below ``root`` (options: ``perfetto_url``)."""
    from pipeobs.ui.app import create_ui_app as create

    return create(root, **options)


def serve(root: str | Path, host: str = "127.0.0.1", port: int = 0, ready: Any = None, **options: Any) -> None:
    """Serve the explorer until Ctrl-C, printing its URL (and a warning off loopback)."""
    from pipeobs.ui.server import serve as run

    run(root, host, port, ready, **options)


def add_subcommand(subparsers: Any) -> None:
    """Add ``ui`` to an argparse subparsers object."""
    from pipeobs.collector import port_number

    description = "browse runs in a web page: timeline of workers, logs, metrics, live runs"
    parser = subparsers.add_parser("ui", help=description, description=description, allow_abbrev=False)
    parser.add_argument("runs_dir", nargs="?", default="runs", metavar="RUNS_DIR",
                        help="folder of runs (or one run directory) to serve (default: ./runs)")
    parser.add_argument("--port", type=port_number, default=0, help="port to listen on (default: 0, a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--perfetto-url", "--perfetto_url", dest="perfetto_url", default=PERFETTO_URL,
                        metavar="URL", help="the Perfetto UI 'Open in Perfetto' hands traces to "
                                            "(default: https://ui.perfetto.dev; a self-hosted one works)")


def dispatch(args: argparse.Namespace) -> int | None:
    """Run ``ui`` until interrupted; None when ``args.command`` is another command."""
    if getattr(args, "command", None) != "ui":
        return None
    from pipeobs.errors import ConfigError

    root = Path(args.runs_dir)
    if not root.is_dir():
        raise ConfigError(f"'{root}' is not a folder: give the folder holding your runs (default ./runs) "
                          "or one run directory")
    try:
        serve(root, args.host, args.port, perfetto_url=_http_url(args.perfetto_url))
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _http_url(text: str) -> str:
    from urllib.parse import urlsplit

    from pipeobs.errors import ConfigError

    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"--perfetto-url '{text}' is not an http(s) URL: give one like https://ui.perfetto.dev")
    return text
