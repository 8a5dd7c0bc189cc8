"""Stand-ins for ``azureml.core.Run`` and ``azureml.core.Model`` in pipeobs workers.

Inside a pipeobs run, ``Run.get_context()`` returns the run context of the current worker:
``log``, ``log_list``, ``log_row``, ``log_table``, ``tag`` and ``set_tags`` become metric points
and tags stored with the mini-batch, attempt, worker and time they came from. Outside a run it
behaves like AzureML's offline run: it prints what it was asked to log.

``Model.get_model_path(name)`` resolves ``<model dir>/<name>`` where the model dir is
``pipeobs run --model-dir DIR`` (``PIPEOBS_MODEL_DIR``), else ``AZUREML_MODEL_DIR``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from pipeobs import context, env


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
