"""Azure ML ``MLTable`` files read without the ``mltable`` package, for the documented subset.

The ``mltable`` package is proprietary, large and needs Azure's Rust runtime; a local run only
needs what the file says: which local files, how to read them, and which column and row steps
follow. :func:`mltable_dataset` parses and checks the file once and returns an ordinary dataset:

* no ``read_*`` transformation: a :class:`MLTableFileDataset` whose items are the listed files;
  ``extract_columns_from_partition_format`` becomes its ``partition_format``, ``skip``/``take``
  cut the sorted file list;
* ``read_delimited``, ``read_json_lines`` or ``read_parquet``: a :class:`MLTableTabularDataset`
  whose rows go through the transformations in order.

Choices where a local run differs from Azure:

* Partition-format columns are taken from each row's file path even without
  ``include_path_column`` (Azure then gives nulls); the path column itself (the absolute local
  path) is kept only when ``include_path_column`` is true.
* ``file:`` naming a folder lists the files below it (Azure gives one row for the folder).
* The ``MLTable`` file is never an input item, even when ``folder: ./`` lists its folder.
* A column pattern (``{pattern: ...}``) matches like ``re.search``.

The parsed file is kept as a JSON-able spec (:attr:`MLTableDataset.mltable`): ``to_dict()``
records it, so ``--resume`` and fingerprints see what ran, not what the file says later.
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Callable, Iterable
from typing import Any

from pipeobs.datasets.inputs import Dataset, FileDataset, TabularDataset, _check_readable, _codec, _expand_spec
from pipeobs.datasets.keys import _compile_format
from pipeobs.errors import ConfigError, InputError

MLTABLE_FILE = "MLTable"
TOP_LEVEL_KEYS = ("$schema", "type", "paths", "query_source", "transformations", "metadata", "traits")
PATH_KINDS = ("file", "folder", "pattern")
CLOUD_PREFIXES = ("azureml:", "http://", "https://", "wasb://", "wasbs://", "abfs://", "abfss://", "adl://")
HEADER_MODES = ("no_header", "from_first_file", "all_files_same_headers", "all_files_different_headers")
READERS = {"read_delimited": "csv", "read_json_lines": "jsonl", "read_parquet": "parquet"}
SUPPORTED = (
    *READERS,
    "extract_columns_from_partition_format",
    "keep_columns",
    "drop_columns",
    "skip",
    "take",
)
_PATH_PARAMETERS: dict[str, Any] = {"include_path_column": False, "path_column": "Path"}
_READ_PARAMETERS: dict[str, dict[str, Any]] = {
    "read_delimited": {
        "delimiter": ",",
        "header": "all_files_same_headers",
        "encoding": "utf8",
        "empty_as_string": False,
        "infer_column_types": True,
        "support_multi_line": False,
        "partition_size": None,
        **_PATH_PARAMETERS,
    },
    "read_json_lines": {"encoding": "utf8", "invalid_lines": "error", "partition_size": None, **_PATH_PARAMETERS},
    "read_parquet": dict(_PATH_PARAMETERS),
}


def mltable_dataset(path: str | os.PathLike[str]) -> Dataset:
    """The dataset an ``MLTable`` file describes; ``path`` is the file or the folder holding it."""
    import yaml

    file = os.path.abspath(os.fspath(path))
    if os.path.isdir(file):
        file = os.path.join(file, MLTABLE_FILE)
    try:
        with open(file, encoding="utf-8") as stream:
            document = yaml.safe_load(stream)
    except FileNotFoundError:
        raise InputError(f"no MLTable file at {file!r}; give the MLTable file or the folder holding it") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = " ".join(str(exc).split())
        raise ConfigError(f"cannot read the MLTable file {file!r}: {reason}") from None
    return _from_spec(_parse(document, file))


def _from_spec(spec: dict[str, Any]) -> Dataset:
    """Build the dataset of a parsed (or recorded) spec, checking it again."""
    spec = _parse(_document(spec), spec["file"])
    steps = spec["transformations"]
    if steps and next(iter(steps[0])) in READERS:
        return MLTableTabularDataset(spec)
    columns = [name for step in steps for name in step if name.endswith("_columns")]
    if columns:
        raise ConfigError(
            f"{spec['file']}: {columns[0]} needs rows; add read_delimited, read_json_lines or read_parquet first"
        )
    return MLTableFileDataset(spec)


def _document(spec: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in spec.items() if key != "file"}


class MLTableDataset(Dataset):
    """What both MLTable datasets share: the parsed spec, its listing and its record."""

    mltable: dict[str, Any]

    def _init_mltable(self, spec: dict[str, Any]) -> None:
        self.mltable = copy.deepcopy(spec)
        self.paths = [next(iter(item.values())) for item in spec["paths"]]

    @property
    def mltable_file(self) -> str:
        return str(self.mltable["file"])

    def _listed(self) -> list[str]:
        """The files the paths name, without the MLTable file itself."""
        found: set[str] = set()
        for spec in self.paths:
            found.update(_expand_spec(spec))
        found.discard(self.mltable_file)
        if not found:
            raise InputError(f"the paths of {self.mltable_file} name no files besides the MLTable file")
        for path in found:
            _check_readable(path)
        return sorted(found)

    def check_exists(self) -> None:
        self.files()  # the MLTable file itself does not count: its listing says so

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "mltable": copy.deepcopy(self.mltable)}

    def _restricted_to(self, files: Iterable[str]) -> Dataset:
        clone = super()._restricted_to(files)
        assert isinstance(clone, MLTableDataset)
        clone.mltable = copy.deepcopy(self.mltable)
        clone.mltable["paths"] = [{"file": path} for path in clone.paths]
        return clone

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.mltable_file!r})"


class MLTableFileDataset(MLTableDataset, FileDataset):
    """A path-only MLTable: its files are the items (never the MLTable file)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        formats = [value for name, value in _column_steps(spec["transformations"]) if name == "extract"]
        super().__init__([next(iter(item.values())) for item in spec["paths"]], formats[-1] if formats else None)
        self._init_mltable(spec)

    def _list_files(self) -> list[str]:
        start, stop = _row_window(self.mltable["transformations"])
        return self._listed()[start:stop]


class MLTableTabularDataset(MLTableDataset, TabularDataset):
    """An MLTable with a ``read_*`` step: rows, through its transformations in order."""

    def __init__(self, spec: dict[str, Any]) -> None:
        reader, *_ = spec["transformations"]
        name, parameters = next(iter(reader.items()))
        super().__init__([next(iter(item.values())) for item in spec["paths"]], READERS[name])
        self._init_mltable(spec)
        self.reader = dict(parameters)

    def _list_files(self) -> list[str]:
        return self._listed()

    @property
    def row_window(self) -> tuple[int, int | None]:
        """``skip``/``take`` composed into one [start, stop) over the whole table's rows."""
        return _row_window(self.mltable["transformations"])

    def _reader_options(self, files: list[str]) -> dict[str, Any]:
        """What each mini-batch carries to read its rows: the plan, with the headers it needs."""
        plan: dict[str, Any] = {
            "reader": self.reader,
            "path_column": self.reader["path_column"] if self.reader["include_path_column"] else None,
            "steps": _column_steps(self.mltable["transformations"]),
        }
        if self.kind == "csv" and files:
            from pipeobs.datasets.load import _csv_header

            mode = self.reader["header"]
            if mode in ("from_first_file", "all_files_same_headers"):
                plan["names"] = _csv_header(files[0], self.reader)
                plan["first_file"] = files[0]
            elif mode == "all_files_different_headers":
                union: dict[str, None] = {}
                for path in files:
                    union.update(dict.fromkeys(_csv_header(path, self.reader)))
                plan["columns"] = list(union)
            header = plan.get("names") or plan.get("columns")
            if header:
                _check_named_columns(self.mltable_file, header, plan)
        return {"table": plan}

    def _header_files(self, files: list[str]) -> set[str]:
        """The files whose first line is a header, not data."""
        mode = self.reader.get("header")
        if self.kind != "csv" or mode == "no_header":
            return set()
        return set(files[:1]) if mode == "from_first_file" else set(files)


def _check_named_columns(file: str, header: list[str], plan: dict[str, Any]) -> None:
    """``keep_columns`` by name names columns the table has: a misspelt one would otherwise become a
    column of nulls (a ``drop_columns`` name it lacks drops nothing, and is let be)."""
    columns = list(header) + ([plan["path_column"]] if plan["path_column"] else [])
    for step, value in plan["steps"]:
        if step == "extract":
            columns += [key for key in _compile_format(value)[1] if key not in columns]
        elif isinstance(value, list) and step == "keep":
            missing = next((name for name in value if name not in columns), None)
            if missing is not None:
                raise ConfigError(f"{file}: keep_columns names column {missing!r}, which the table does not have"
                                  f"{_did_you_mean(missing, columns)}")
            columns = list(value)
        elif isinstance(value, list):
            columns = [name for name in columns if name not in value]


def _row_window(steps: list[dict[str, Any]]) -> tuple[int, int | None]:
    start, stop = 0, None
    for step in steps:
        (name, value), *_ = step.items()
        if name == "skip":
            start = start + value if stop is None else min(start + value, stop)
        elif name == "take":
            stop = start + value if stop is None else min(start + value, stop)
    return start, stop


def _column_steps(steps: list[dict[str, Any]]) -> list[list[Any]]:
    names = {"extract_columns_from_partition_format": "extract", "keep_columns": "keep", "drop_columns": "drop"}
    return [
        [names[name], value["partition_format"] if name.startswith("extract") else value]
        for step in steps
        for name, value in step.items()
        if name in names
    ]


def _parse(document: Any, file: str) -> dict[str, Any]:
    """Check an MLTable document and normalise it into a JSON-able spec with absolute paths."""
    if not isinstance(document, dict):
        raise ConfigError(f"{file} must be a YAML mapping with 'paths' and optional 'transformations'")
    for key in document:
        if key not in TOP_LEVEL_KEYS:
            raise ConfigError(f"{file} has an unknown key {key!r}{_did_you_mean(key, TOP_LEVEL_KEYS)}")
    if "query_source" in document:
        raise ConfigError(f"{file} uses query_source, which needs Azure; give local files under 'paths'")
    if document.get("type", "mltable") != "mltable":
        raise ConfigError(f"{file}: type must be 'mltable', got {document['type']!r}")
    spec: dict[str, Any] = {"file": file, "paths": _parse_paths(document.get("paths"), file)}
    spec["transformations"] = _parse_transformations(document.get("transformations") or [], file)
    for key in ("$schema", "type", "metadata", "traits"):
        if key in document:
            spec[key] = copy.deepcopy(document[key])
    return spec


def _parse_paths(paths: Any, file: str) -> list[dict[str, str]]:
    if not isinstance(paths, list) or not paths:
        raise ConfigError(f"{file} needs 'paths': a list of file:, folder: or pattern: entries")
    folder = os.path.dirname(file)
    parsed = []
    for item in paths:
        if not isinstance(item, dict) or len(item) != 1 or next(iter(item)) not in PATH_KINDS:
            raise ConfigError(f"{file}: each entry of 'paths' must be one of file:, folder:, pattern:; got {item!r}")
        (kind, value), *_ = item.items()
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{file}: paths entry {kind}: must be a non-empty string, got {value!r}")
        if value.lower().startswith(CLOUD_PREFIXES):
            raise ConfigError(f"{file}: path {value!r} needs Azure; give a local path (download the data first)")
        parsed.append({kind: os.path.normpath(os.path.join(folder, value))})
    return parsed


def _parse_transformations(steps: Any, file: str) -> list[dict[str, Any]]:
    if not isinstance(steps, list):
        raise ConfigError(f"{file}: 'transformations' must be a list, got {steps!r}")
    parsed = []
    for position, step in enumerate(steps):
        name, value = _step_parts(step, file)
        if name not in SUPPORTED:
            raise ConfigError(
                f"MLTable transformation {name!r} in {file} is not supported by pipeobs; supported: {', '.join(SUPPORTED)}"
            )
        if name in READERS and position:
            raise ConfigError(f"{file}: {name} must be the first transformation (it is number {position + 1})")
        parsed.append({name: _PARSERS[name](value, f"{file}: {name}")})
    return parsed


def _step_parts(step: Any, file: str) -> tuple[str, Any]:
    if isinstance(step, str):
        return step, None
    if isinstance(step, dict) and len(step) == 1:
        (name, value), *_ = step.items()
        return str(name), value
    raise ConfigError(f"{file}: each transformation must be a name or a one-key mapping, got {step!r}")


def _read_parameters(name: str) -> Callable[[Any, str], dict[str, Any]]:
    def parse(value: Any, where: str) -> dict[str, Any]:
        defaults = _READ_PARAMETERS[name]
        given = {} if value is None else value
        if not isinstance(given, dict):
            raise ConfigError(f"{where} takes a mapping of parameters, got {value!r}")
        for key in given:
            if key not in defaults:
                raise ConfigError(f"{where} has an unknown parameter {key!r}{_did_you_mean(key, defaults)}")
        parameters = {**defaults, **given}
        if not isinstance(parameters["path_column"], str) or not parameters["path_column"]:
            raise ConfigError(f"{where}: path_column must be a non-empty string")
        if name == "read_delimited":
            _check_delimited(parameters, where)
        if "encoding" in parameters:
            parameters["encoding"] = _mltable_codec(parameters["encoding"], where)
        if name == "read_json_lines" and parameters["invalid_lines"] not in ("error", "drop"):
            raise ConfigError(f"{where}: invalid_lines must be 'error' or 'drop', got {parameters['invalid_lines']!r}")
        return parameters

    return parse


def _check_delimited(parameters: dict[str, Any], where: str) -> None:
    delimiter = parameters["delimiter"]
    if not isinstance(delimiter, str) or not 1 <= len(delimiter) <= 2 or "\n" in delimiter:
        raise ConfigError(f"{where}: delimiter must be 1 or 2 characters, got {delimiter!r}")
    if parameters["header"] not in HEADER_MODES:
        header = parameters["header"]
        raise ConfigError(f"{where}: header must be one of {', '.join(HEADER_MODES)}, got {header!r}")
    if parameters["support_multi_line"] is not False:
        raise ConfigError(f"{where}: support_multi_line: true is not supported (rows are split at line ends)")
    infer = parameters["infer_column_types"]
    if isinstance(infer, dict):
        if set(infer) - {"sample_size"}:
            raise ConfigError(f"{where}: infer_column_types supports true, false or {{sample_size}}, got {infer!r}")
        parameters["infer_column_types"] = True
    elif not isinstance(infer, bool):
        raise ConfigError(f"{where}: infer_column_types must be true or false, got {infer!r}")
    for flag in ("empty_as_string", "include_path_column"):
        if not isinstance(parameters[flag], bool):
            raise ConfigError(f"{where}: {flag} must be true or false, got {parameters[flag]!r}")


def _mltable_codec(encoding: Any, where: str) -> str:
    try:
        return _codec(str(encoding).replace(" ", ""))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _extract_format(value: Any, where: str) -> dict[str, str]:
    fmt = value.get("partition_format") if isinstance(value, dict) and len(value) == 1 else None
    if not isinstance(fmt, str):
        raise ConfigError(f'{where} takes {{partition_format: "{{Store}}/{{file_name}}.csv"}}, got {value!r}')
    _compile_format(fmt)
    return {"partition_format": fmt}


def _columns(value: Any, where: str) -> Any:
    """A column selector: a name, a list of names, or {pattern, ignore_case, invert}."""
    if isinstance(value, str) and value:
        return [value]
    if isinstance(value, list) and value and all(isinstance(name, str) for name in value):
        return list(value)
    if isinstance(value, dict) and isinstance(value.get("pattern"), str):
        if set(value) - {"pattern", "ignore_case", "invert"}:
            raise ConfigError(f"{where}: a pattern selector takes pattern, ignore_case, invert; got {value!r}")
        return {
            "pattern": value["pattern"],
            "ignore_case": bool(value.get("ignore_case")),
            "invert": bool(value.get("invert")),
        }
    raise ConfigError(f"{where} takes a column name, a list of names or {{pattern: ...}}, got {value!r}")


def _count(minimum: int) -> Callable[[Any, str], int]:
    def parse(value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{where} takes an integer >= {minimum}, got {value!r}")
        return value

    return parse


_PARSERS: dict[str, Callable[[Any, str], Any]] = {
    **{name: _read_parameters(name) for name in READERS},
    "extract_columns_from_partition_format": _extract_format,
    "keep_columns": _columns,
    "drop_columns": _columns,
    "skip": _count(0),
    "take": _count(1),
}


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; expected one of {', '.join(choices)}"
