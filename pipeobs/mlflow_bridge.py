"""MLflow inside entry scripts: its files go to the run directory, its values also to the store.

Workers get ``MLFLOW_TRACKING_URI``, a ``file:`` URI of ``<run dir>/mlruns``
(:func:`tracking_environment`), unless the step's ``environment_variables`` set their own: the
file store needs no service and no extra package, so it works with ``mlflow-skinny`` as with
``mlflow``; each worker process logs into its own MLflow run (MLflow starts one on the first call).

``mlflow.log_metric``, ``log_metrics``, ``log_param``, ``log_params``, ``set_tag`` and
``set_tags`` are wrapped when the entry script imports ``mlflow`` (a ``sys.meta_path`` finder
patches the module right after it has executed, so ``from mlflow import log_metric`` gets the
wrapped function too). A wrapped call makes the real MLflow call first, then sends the same
values as metric points with the step, worker, mini-batch and attempt they came from, as
``Run.get_context().log`` does: metrics as ``scalar`` points, params as ``param`` points and
tags as ``tag`` points, both holding the string MLflow stores (``str(value)``). MLflow's
``step`` is not kept: a point has its time. pipeobs never imports ``mlflow`` itself, so a script
that does not use it pays one string comparison per import.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from pipeobs import context, env

MODULE = "mlflow"
SOURCE = "mlflow"  # the description of every point sent from an MLflow call


def tracking_environment(run_dir: str, step_environment: Mapping[str, str]) -> dict[str, str]:
    """The variables that point a worker's MLflow at ``<run_dir>/mlruns``; none when the step sets
    its own tracking URI."""
    if env.MLFLOW_TRACKING_URI in step_environment:
        return {}
    return {
        env.MLFLOW_TRACKING_URI: (Path(run_dir).resolve() / "mlruns").as_uri(),
        env.MLFLOW_ALLOW_FILE_STORE: step_environment.get(env.MLFLOW_ALLOW_FILE_STORE, "true"),
    }


def install() -> None:
    """Record the entry script's MLflow calls: now if ``mlflow`` is already imported, else when it is."""
    module = sys.modules.get(MODULE)
    if module is not None:
        wrap_module(module)
    elif not any(isinstance(finder, MlflowFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MlflowFinder())


def _send(kind: str, name: Any, value: Any) -> None:
    if context.worker() is None:  # mlflow imported outside a worker (a test, a notebook): MLflow alone
        return
    from pipeobs.capture import emit_metric

    emit_metric(kind, str(name), value, SOURCE)


def _metric(arguments: Mapping[str, Any]) -> None:
    _send("scalar", arguments["key"], arguments["value"])


def _metrics(arguments: Mapping[str, Any]) -> None:
    for key, value in arguments["metrics"].items():
        _send("scalar", key, value)


def _param(arguments: Mapping[str, Any]) -> None:
    _send("param", arguments["key"], str(arguments["value"]))


def _params(arguments: Mapping[str, Any]) -> None:
    for key, value in arguments["params"].items():
        _send("param", key, str(value))


def _tag(arguments: Mapping[str, Any]) -> None:
    _send("tag", arguments["key"], str(arguments["value"]))


def _tags(arguments: Mapping[str, Any]) -> None:
    for key, value in arguments["tags"].items():
        _send("tag", key, str(value))


RECORDERS: dict[str, Callable[[Mapping[str, Any]], None]] = {
    "log_metric": _metric,
    "log_metrics": _metrics,
    "log_param": _param,
    "log_params": _params,
    "set_tag": _tag,
    "set_tags": _tags,
}


def wrap_module(module: ModuleType) -> None:
    """Replace the module's MLflow calls with ones that also send their values (once)."""
    for name, record in RECORDERS.items():
        real = getattr(module, name, None)
        if callable(real) and not hasattr(real, "__pipeobs_wrapped__"):
            setattr(module, name, _recording(real, record))


def _recording(real: Callable[..., Any], record: Callable[[Mapping[str, Any]], None]) -> Callable[..., Any]:
    signature = inspect.signature(real)  # read once: the arguments are found by name, however passed

    @functools.wraps(real)
    def call(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)  # MLflow first: a value it refuses is the script's error, not a point
        record(signature.bind(*args, **kwargs).arguments)
        return result

    call.__pipeobs_wrapped__ = real  # type: ignore[attr-defined]
    return call


class MlflowFinder(importlib.abc.MetaPathFinder):
    """Finds ``mlflow`` with the finders after it, and has its loader wrap the module once executed."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != MODULE:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = WrappingLoader(spec.loader)
                return spec
        return None


class WrappingLoader(importlib.abc.Loader):
    """The real loader of ``mlflow``; after it has executed the module, :func:`wrap_module` runs."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)  # type: ignore[no-any-return]

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        wrap_module(module)
        sys.meta_path[:] = [
            f for f in sys.meta_path if not isinstance(f, MlflowFinder)
        ]  # done: imports pay nothing more

    def __getattr__(self, name: str) -> Any:  # resource readers and the like: the real loader's
        return getattr(self.loader, name)
