"""Reading a v2 job YAML: the file, ``--set`` overrides (Azure CLI's dotted syntax), component files.

``--set a.b=v`` is written into the raw YAML mapping before anything is checked, as ``az ml job create
--set`` does: missing keys are created, and a path through a reference string (``component: ./x.yml``,
``${{parent...}}``) is refused. The value is read as YAML (``5`` is a number, ``true`` a boolean); a value
naming an existing file or folder relative to the current directory is made absolute, since a path typed
on the command line means one relative to where it is typed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipeobs.errors import ConfigError


def load_yaml_file(path: str | Path, what: str = "job YAML") -> Any:
    """What a YAML file holds (None when empty), or a one-line error."""
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} '{path}': {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{what} '{path}' is not valid YAML{where}: {problem}") from None


def read_yaml(path: Path, what: str = "job YAML") -> dict[str, Any]:
    """A YAML file's mapping, or a one-line error."""
    data = load_yaml_file(path, what)
    if not isinstance(data, dict):
        raise ConfigError(f"{what} '{path}' must be a mapping of keys to values")
    return data


def parse_set(text: str) -> tuple[list[str], Any]:
    """``"jobs.score.mini_batch_size=5"`` -> (["jobs", "score", "mini_batch_size"], 5)."""
    import yaml

    key, sep, raw = text.partition("=")
    path = key.strip().split(".")
    if not sep or not all(path):
        raise ConfigError(f"--set '{text}' must be KEY.PATH=VALUE, e.g. --set jobs.score.mini_batch_size=5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and value and not os.path.isabs(value) and os.path.exists(value):
        value = os.path.abspath(value)
    return path, value


def apply_sets(document: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """``document`` with every ``--set`` written in, in order."""
    for text in sets:
        path, value = parse_set(text)
        node: Any = document
        for depth, key in enumerate(path[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif isinstance(child, str):
                where = ".".join(path[: depth + 1])
                raise ConfigError(f"--set {text}: cannot use '--set' on properties defined by reference strings "
                                  f"('{where}' is {child!r}); set '{where}' itself")
            elif not isinstance(child, dict):
                where = ".".join(path[: depth + 1])
                raise ConfigError(f"--set {text}: '{where}' is {child!r}, not a mapping; set '{where}' itself")
            node = child
        node[path[-1]] = value
    return document
