"""debugpy, the debugger engine behind ``pipeobs replay --debugpy`` and ``pipeobs run --debug-mini-batch``:
imported when used (naming the extra when it is missing), and a breakpoint at the first line of
the user's ``run()``.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Iterator
from typing import Any

from pipeobs.errors import ConfigError

INSTALL_HINT = "pip install 'pipeobs[debug]'"
DEBUGPY_MISSING = "--debug-mini-batch needs debugpy, which is not installed"
BREAKPOINT_ID = -1  # the breakpoint at run()'s first line: debugpy numbers a client's breakpoints from 0


def import_debugpy(missing: str) -> Any:
    """The debugpy module; when it is not installed, a :class:`ConfigError`: ``missing`` and the install hint."""
    # Frozen standard-library modules are no place for the user's breakpoints: spare them debugpy's warning.
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    try:
        import debugpy
    except ImportError:
        raise ConfigError(f"{missing}: {INSTALL_HINT}") from None
    return debugpy


@contextlib.contextmanager
def breakpoint_at_first_line(function: Any) -> Iterator[None]:
    """While in the block, the attached debugger stops at the first line of ``function`` (the user's
    run(), through any ``functools.wraps`` decorator), once.

    debugpy has no public call for a breakpoint; this adds one the way its ``setBreakpoints``
    request does (pydevd's API, with an id no client uses), after the client's own breakpoints
    are set. (``debugpy.breakpoint()`` would stop in pipeobs's frame, before run() is called.)
    """
    code = inspect.unwrap(function).__code__
    import pydevd  # debugpy's engine: importable once debugpy listens
    from _pydevd_bundle.pydevd_api import PyDevdAPI

    api, debugger = PyDevdAPI(), pydevd.get_global_debugger()
    line = min((n for *_, n in code.co_lines() if n is not None and n > code.co_firstlineno), default=code.co_firstlineno)
    policy = "ALL" if debugger.multi_threads_single_notification else "NONE"
    api.add_breakpoint(debugger, code.co_filename, "python-line", BREAKPOINT_ID, line, None, "None", None, policy,
                       "@HIT@ == 1", False, adjust_line=True)  # once: not again on each turn of a loop there
    try:
        yield
    finally:
        api.remove_breakpoint(debugger, code.co_filename, "python-line", BREAKPOINT_ID)
