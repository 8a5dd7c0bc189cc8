"""Stand-ins for ``azureml.core.Run``, ``Model`` and ``Dataset`` in pipeobs workers.

Inside a pipeobs run, ``Run.get_context()`` returns the run context of the current worker:
``log``, ``log_list``, ``log_row``, ``log_table``, ``tag`` and ``set_tags`` become metric points
and tags stored with the mini-batch, attempt, worker and time they came from. Outside a run it
behaves like AzureML's offline run: it prints what it was asked to log.

``Model.get_model_path(name)`` resolves ``<model dir>/<name>`` where the model dir is
``pipeobs run --model-dir DIR`` (``PIPEOBS_MODEL_DIR``), else ``AZUREML_MODEL_DIR``.

``Dataset`` imports, so scripts written for Azure load; what needs a workspace
(``Dataset.get_by_name``, ``get_by_id``, ...) raises a :class:`~pipeobs.errors.ConfigError` when
called. ``Dataset.File.from_files`` and ``Dataset.Tabular.from_delimited_files`` /
``from_parquet_files`` / ``from_json_lines_files`` with local paths build pipeobs's own
:class:`~pipeobs.datasets.FileDataset` / :class:`~pipeobs.datasets.TabularDataset`: the
constructors take the same arguments and mean the same files here, and the result is what a
pipeobs step takes as an input.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, NoReturn

from pipeobs import context, env
from pipeobs.errors import ConfigError

if TYPE_CHECKING:
    from pipeobs.datasets import FileDataset, PathSpec, TabularDataset


class ModelNotFoundError(Exception):
    """The model is not in the model directory."""


class Model:
    """``azureml.core.Model``: only the static ``get_model_path`` is meaningful locally."""

    @staticmethod
    def get_model_path(model_name: str, version: int | None = None, _workspace: Any = None) -> str:
        root = env.first(env.MODEL_DIR, env.AZURE_MODEL_DIR)
        if root is None:
            raise ModelNotFoundError(
                f"Model.get_model_path('{model_name}'): no model directory; run with "
                "'pipeobs run --model-dir DIR' (models are looked up as DIR/<name>)"
            )
        candidates = [os.path.join(root, model_name, str(version))] if version is not None else []
        candidates += [os.path.join(root, model_name)]
        for path in candidates:
            if os.path.exists(path):
                return path
        raise ModelNotFoundError(f"Model.get_model_path('{model_name}'): '{candidates[-1]}' does not exist")


class Run:
    """``azureml.core.Run``: ``Run.get_context()`` is the run of the current pipeobs job."""

    def __init__(self, run_id: str, offline: bool) -> None:
        self.id = run_id
        self._offline = offline
        self._metrics: dict[str, list[Any]] = {}
        self._tags: dict[str, str] = {}

    @classmethod
    def get_context(cls, allow_offline: bool = True, **_kwargs: Any) -> Run:
        global _current
        info = context.worker()
        if _current is None or (info is not None and _current.id != info.step_id):
            if info is None and not allow_offline:
                raise RuntimeError("Run.get_context(allow_offline=False) outside a pipeobs run")
            _current = cls(info.step_id, offline=False) if info else cls(f"OfflineRun_{int(time.time())}", offline=True)
        return _current

    def _emit(self, kind: str, name: str, value: Any, description: str = "") -> None:
        self._metrics.setdefault(name, []).append(value)
        if self._offline:
            print(f"Attempted to log {kind} metric {name}:\n{value}")
            return
        from pipeobs.capture import emit_metric

        emit_metric(kind, name, value, description)

    def log(self, name: str, value: Any, description: str = "", step: int | None = None) -> None:
        """A scalar metric."""
        self._emit("scalar", name, value, description)

    def log_list(self, name: str, value: list[Any], description: str = "") -> None:
        self._emit("list", name, list(value), description)

    def log_row(self, name: str, description: str | None = None, **kwargs: Any) -> None:
        self._emit("row", name, dict(kwargs), description or "")

    def log_table(self, name: str, value: dict[str, list[Any]], description: str = "") -> None:
        self._emit("table", name, {k: list(v) for k, v in value.items()}, description)

    def tag(self, key: str, value: Any = None) -> None:
        self._tags[key] = "" if value is None else str(value)
        self._emit("tag", key, self._tags[key])

    def set_tags(self, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.tag(key, value)

    def get_tags(self) -> dict[str, str]:
        return dict(self._tags)

    def get_metrics(self, name: str | None = None) -> dict[str, Any]:
        """The metrics this process logged (a worker sees its own; the store holds all)."""
        metrics = {k: (v[0] if len(v) == 1 else list(v)) for k, v in self._metrics.items()}
        return {name: metrics[name]} if name is not None and name in metrics else ({} if name else metrics)

    def __repr__(self) -> str:
        return f"Run(id={self.id!r}{', offline' if self._offline else ''})"


_current: Run | None = None


LOCAL_INPUTS = (
    "pipeobs runs the entry script locally, with no Azure ML workspace to look datasets up in: a "
    "step's inputs reach run() as its mini_batch (pipeobs run --input PATH, or the step's inputs); "
    "pass other data as a local path in the step's arguments"
)
# Azure's options whose default is what pipeobs does anyway; any other value is refused by name.
_AZURE_DEFAULTS: dict[str, Any] = {
    "include_path": False,
    "infer_column_types": True,
    "set_column_types": None,
    "support_multi_line": False,
    "empty_as_string": False,
    "invalid_lines": "error",
}


def _needs_workspace(name: str) -> Any:
    def call(*_args: Any, **_kwargs: Any) -> NoReturn:
        raise ConfigError(f"{name}(): {LOCAL_INPUTS}")

    call.__name__ = call.__qualname__ = name.rsplit(".", 1)[-1]
    return staticmethod(call)


def _check_options(name: str, options: dict[str, Any]) -> None:
    """Azure's options left at their defaults are fine; others are refused by name, not ignored."""
    for key, value in options.items():
        if key not in _AZURE_DEFAULTS or value != _AZURE_DEFAULTS[key]:
            raise ConfigError(
                f"{name}(): pipeobs does not support {key}={value!r}; remove it (pipeobs takes path, "
                "partition_format, and for delimited files separator, header and encoding)"
            )


class _FileFactory:
    """``Dataset.File``."""

    @staticmethod
    def from_files(
        path: PathSpec, validate: bool = True, partition_format: str | None = None, is_file: bool = False
    ) -> FileDataset:
        """Local files, folders or globs, as pipeobs's FileDataset (``validate`` and ``is_file``: files
        are listed when the step runs)."""
        from pipeobs.datasets import FileDataset

        return FileDataset.from_files(path, partition_format=partition_format)

    upload_directory = _needs_workspace("Dataset.File.upload_directory")


class _TabularFactory:
    """``Dataset.Tabular`` (options after ``validate`` by keyword: Azure's positional order differs)."""

    @staticmethod
    def from_delimited_files(
        path: PathSpec,
        validate: bool = True,
        *,
        separator: str = ",",
        header: bool = True,
        partition_format: str | None = None,
        encoding: str = "utf8",
        **options: Any,
    ) -> TabularDataset:
        from pipeobs.datasets import TabularDataset

        _check_options("Dataset.Tabular.from_delimited_files", options)
        return TabularDataset.from_delimited_files(
            path, separator=separator, header=header, encoding=encoding, partition_format=partition_format
        )

    @staticmethod
    def from_parquet_files(
        path: PathSpec, validate: bool = True, *, partition_format: str | None = None, **options: Any
    ) -> TabularDataset:
        from pipeobs.datasets import TabularDataset

        _check_options("Dataset.Tabular.from_parquet_files", options)
        return TabularDataset.from_parquet_files(path, partition_format=partition_format)

    @staticmethod
    def from_json_lines_files(
        path: PathSpec,
        validate: bool = True,
        *,
        partition_format: str | None = None,
        encoding: str = "utf8",
        **options: Any,
    ) -> TabularDataset:
        from pipeobs.datasets import TabularDataset

        _check_options("Dataset.Tabular.from_json_lines_files", options)
        return TabularDataset.from_json_lines_files(path, encoding=encoding, partition_format=partition_format)

    from_sql_query = _needs_workspace("Dataset.Tabular.from_sql_query")
    register_pandas_dataframe = _needs_workspace("Dataset.Tabular.register_pandas_dataframe")
    register_spark_dataframe = _needs_workspace("Dataset.Tabular.register_spark_dataframe")
    register_dask_dataframe = _needs_workspace("Dataset.Tabular.register_dask_dataframe")


class Dataset:
    """``azureml.core.Dataset``: the local constructors of ``File`` and ``Tabular``; the workspace
    lookups raise, saying where a pipeobs step's data comes from."""

    File = _FileFactory
    Tabular = _TabularFactory
    get_by_name = _needs_workspace("Dataset.get_by_name")
    get_by_id = _needs_workspace("Dataset.get_by_id")
    get_all = _needs_workspace("Dataset.get_all")
