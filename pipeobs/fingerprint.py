"""A step's fingerprint: what it would run with, by content (:mod:`pipeobs.reuse` compares them).

A step's fingerprint is the SHA-256 of these components, each recorded item by item in
``<run dir>/fingerprint.json`` (the digest also in the ``runs`` row), so that ``pipeobs why``
can say what changed:

* ``source_directory``: every file below it, by content (SHA-256, never mtimes). In each folder
  ``.amlignore``, or where there is none ``.gitignore``, is honoured as Azure's snapshot does
  (gitignore rules, by ``pathspec``). Left out: ``.git``, ``__pycache__``, ``*.pyc``, virtual
  environments (folders holding ``pyvenv.cfg``: the packages are the ``python`` component), and
  the runs folder, output folder, model folder and input files when they lie inside it.
* ``entry_script``: its path in the source directory.
* ``config``: every ParallelRunConfig value and runtime setting except ``environment`` and
  ``compute_target`` (recorded, with no local effect: the interpreter is fingerprinted instead).
* ``arguments`` (the script's) and ``environment_variables`` (the config's; only their names
  are ever shown).
* ``inputs``: each dataset's kind and options and its files: a file of up to 16 MiB by its
  content, a larger one by its size and modification time (reading such files whole at every
  start would cost more than reuse saves; rewriting a file changes its modification time), and so
  is a named pipe or device, which is never read.
* ``model_dir`` (``--model-dir``): its files, by the inputs' rule.
* ``python``: the Python version and every installed distribution with its version
  (``importlib.metadata``).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG
from typing import TYPE_CHECKING, Any

from pipeobs.errors import InputError

if TYPE_CHECKING:
    from pipeobs.config import Settings
    from pipeobs.datasets import Dataset
    from pipeobs.step import ParallelRunStep

CONTENT_LIMIT = 16 << 20  # bytes: larger inputs are fingerprinted by size and modification time
SMALL_FILE = 64 << 10  # bytes: read at once
IGNORE_FILES = (".amlignore", ".gitignore")  # the first one a folder has is its ignore file, as on Azure
ALWAYS_IGNORED = (".git/", "__pycache__/", "*.py[cod]")
COMPONENTS = ("source_directory", "entry_script", "config", "arguments", "environment_variables", "inputs",
              "model_dir", "python")
NOT_FINGERPRINTED = ("entry_script", "source_directory", "environment_variables", "environment", "compute_target")


@dataclass
class Fingerprint:
    """The components of a step's fingerprint (JSON-able) and their digest."""

    components: dict[str, Any]

    @property
    def digest(self) -> str:
        text = json.dumps(self.components, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def take_fingerprint(step: ParallelRunStep, runs_dir: str | os.PathLike[str], settings: Settings,
                     model_dir: str | os.PathLike[str] | None) -> Fingerprint:
    """The fingerprint of ``step`` as it would run now under ``runs_dir``."""
    from pipeobs.environment import installed_packages

    source = Path(step.config.source_directory or step.entry_script.parent).resolve()
    models = os.path.realpath(model_dir) if model_dir else None
    skipped = {os.path.realpath(p) for p in (runs_dir, step.output, models) if p} | _input_paths(step.inputs)
    config = {k: v for k, v in step.config.to_dict().items() if k not in NOT_FINGERPRINTED}
    return Fingerprint({
        "source_directory": {"path": str(source), "files": SourceScan(source, skipped).files()},
        "entry_script": os.path.relpath(step.entry_script, source),
        "config": {**config, **settings.to_dict()},
        "arguments": list(step.script_arguments),
        "environment_variables": dict(step.config.environment_variables),
        "inputs": [_input(dataset) for dataset in step.inputs],
        "model_dir": None if models is None else {"path": models, "files": _data_files(models)},
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation(),
                   "packages": installed_packages()},
    })


class SourceScan:
    """The files of a source directory that Azure's snapshot takes, by content."""

    def __init__(self, root: Path, skipped: set[str]) -> None:
        import pathspec

        self.root = root
        self.skipped = skipped
        self.always = pathspec.GitIgnoreSpec.from_lines(ALWAYS_IGNORED)
        self.rules: dict[str, Any] = {}  # folder ("" or "sub/") -> the rules of its ignore file

    def files(self) -> dict[str, str]:
        """Relative path -> content digest, for each file taken."""
        found: dict[str, str] = {}
        for folder, dirs, names in os.walk(self.root):
            base = "" if folder == str(self.root) else os.path.relpath(folder, self.root) + "/"
            self._read_rules(folder, base, names)
            dirs[:] = sorted(d for d in dirs if self._takes(folder, base, d, is_dir=True))
            for name in sorted(names):
                if self._takes(folder, base, name, is_dir=False):
                    found[base + name] = content_digest(os.path.join(folder, name))
        return found

    def _read_rules(self, folder: str, base: str, names: list[str]) -> None:
        import pathspec

        name = next((n for n in IGNORE_FILES if n in names), None)
        if name is not None:
            with open(os.path.join(folder, name), encoding="utf-8", errors="replace") as handle:
                self.rules[base] = pathspec.GitIgnoreSpec.from_lines(handle)

    def _takes(self, folder: str, base: str, name: str, is_dir: bool) -> bool:
        path = os.path.join(folder, name)
        relative = base + name + ("/" if is_dir else "")
        if path in self.skipped or self.always.match_file(relative) or self._ignored(relative):
            return False
        return not os.path.isfile(os.path.join(path, "pyvenv.cfg")) if is_dir else os.path.isfile(path)

    def _ignored(self, relative: str) -> bool:
        """The nearest ignore file with a rule for the path decides (git's precedence)."""
        for base in sorted((b for b in self.rules if relative.startswith(b)), key=len, reverse=True):
            verdict = self.rules[base].check_file(relative[len(base):]).include
            if verdict is not None:
                return bool(verdict)
        return False


def content_digest(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()[:32]
    except OSError as exc:
        raise InputError(f"cannot read '{path}' for the step's fingerprint ({exc.strerror or exc}): make it "
                         "readable, or leave it out of the source directory with .amlignore") from None


def data_digest(path: str) -> str:
    """Content up to :data:`CONTENT_LIMIT`, else (or for a pipe or device, never read) size and modification time."""
    stat = os.stat(path)
    if stat.st_size > CONTENT_LIMIT or not S_ISREG(stat.st_mode):
        return f"size {stat.st_size}, modified {stat.st_mtime_ns}"
    if stat.st_size <= SMALL_FILE:  # one read, no file object: a run over many small files lists them all
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                content = os.read(fd, SMALL_FILE + 1)
            finally:
                os.close(fd)
        except OSError:
            return content_digest(path)  # says why, as for any file
        if len(content) == stat.st_size:  # a short read (a FUSE or network file system) hashes it all below
            return hashlib.sha256(content).hexdigest()[:32]
    return content_digest(path)


def _data_files(folder: str) -> dict[str, str]:
    return {os.path.relpath(os.path.join(d, n), folder): data_digest(os.path.join(d, n))
            for d, _, names in os.walk(folder) for n in sorted(names) if os.path.isfile(os.path.join(d, n))}


def _input(dataset: Dataset) -> dict[str, Any]:
    definition = {k: v for k, v in dataset.to_dict().items() if k != "paths"}
    return {"name": input_name(dataset), **definition, "files": {p: data_digest(p) for p in dataset.files()}}


def input_name(dataset: Dataset) -> str:
    return ", ".join(spec.rstrip("/") or spec for spec in dataset.paths)


def _input_paths(datasets: list[Any]) -> set[str]:
    """Inputs as the source scan meets them: the folders and files named (globs: their files)."""
    paths = set()
    for dataset in datasets:
        for spec in dataset.paths:
            if os.path.exists(spec):
                paths.add(os.path.realpath(spec))
            else:
                paths.update(os.path.realpath(p) for p in dataset.files())
    return paths
