"""Exceptions raised by pipeobs.

::

    PipeobsError                  base class; the CLI prints "error: <message>"
    +-- ConfigError (ValueError)  an invalid parameter; the text is Azure's where Azure has one
    +-- InputError                an input that does not exist, is empty, unreadable or corrupt
    +-- EntryScriptError          the entry script cannot be loaded (missing, syntax, no run())
    +-- RunDirError               a run directory that cannot be created, locked or resumed
    +-- JobFailed                 the job ran and failed (thresholds, init failures, timeouts)
    Terminated (KeyboardInterrupt)  SIGTERM while a driver runs: handled like Ctrl-C

Each class carries the CLI exit code documented in the README.
"""

from __future__ import annotations


class PipeobsError(Exception):
    """Base class of every error pipeobs raises on purpose."""

    exit_code = 1


class ConfigError(PipeobsError, ValueError):
    """A configuration value is invalid (Azure's message where Azure has one)."""

    exit_code = 2


class InputError(PipeobsError):
    """An input dataset is missing, empty, unreadable or corrupt."""

    exit_code = 2


class RunDirError(PipeobsError):
    """A run directory cannot be created, locked or resumed."""

    exit_code = 2


class EntryScriptError(PipeobsError):
    """The entry script cannot be loaded: missing, not Python, a syntax error, no run()."""

    exit_code = 3


class JobFailed(PipeobsError):
    """The job ran and failed; the exit code matches Azure's driver (SystemExit: 42)."""

    exit_code = 42


class Terminated(KeyboardInterrupt):
    """SIGTERM while a driver runs: the run ends ``Interrupted`` as after Ctrl-C (exit 143, not 130)."""

    signal_name = "SIGTERM"
    exit_code = 143
