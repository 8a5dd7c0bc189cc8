"""opencensus's Azure handlers and exporter, composed with pipeobs inside a worker.

Every ``AzureLogHandler``/``AzureEventHandler`` created in a worker gets a filter adding
pipeobs's context (:class:`OpencensusContext`) and is registered with its Application Insights
destination; every ``AzureExporter`` adds the same keys to its spans. The classes are patched
when the entry script imports them (a ``sys.meta_path`` finder), so nothing here imports
opencensus unless the entry script does. See :mod:`pipeobs.telemetry.compose` for the rules.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import logging
import sys
from collections.abc import Callable, MutableMapping
from typing import Any

from pipeobs import context
from pipeobs.telemetry import compose


class OpencensusContext(logging.Filter):
    """On an opencensus log handler: pipeobs's dimensions and operation ids on each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        added: dict[str, Any] = {key: str(value) for key, value in compose.context_attributes().items()}
        if not added:
            return True
        user = record.__dict__.get("pipeobs_user_dimensions", record.__dict__.get("custom_dimensions"))
        if "pipeobs_user_dimensions" not in record.__dict__:
            record.pipeobs_user_dimensions = user  # what pipeobs's own capture stores
        if isinstance(record.args, dict):
            added.update(record.args)
        if isinstance(user, dict):
            added.update(user)
        record.custom_dimensions = added
        invocation = context.current_invocation.get()
        if invocation.trace_id is not None:
            record.traceId = invocation.trace_id
            record.spanId = invocation.span_id
        return True


def _patch_log_exporter(module: Any) -> None:
    base = getattr(module, "BaseLogHandler", None)
    if base is None or getattr(base, "_pipeobs_composed", False):
        return
    init = base.__init__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.addFilter(OpencensusContext())
        compose.user_destinations.handlers[self] = compose.destinations(self)
        compose.to_flush.append(("opencensus " + type(self).__name__, self))

    base.__init__ = __init__
    base._pipeobs_composed = True


def _patch_trace_exporter(module: Any) -> None:
    cls = getattr(module, "AzureExporter", None)
    if cls is None or getattr(cls, "_pipeobs_composed", False):
        return
    init, export = cls.__init__, cls.export

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        compose.to_flush.append(("opencensus AzureExporter", self))

    @functools.wraps(export)
    def export_with_context(self: Any, span_datas: Any) -> Any:
        added = compose.context_attributes()
        for span_data in span_datas or ():
            attributes = getattr(span_data, "attributes", None)  # opencensus's BoundedDict, a MutableMapping
            if isinstance(attributes, MutableMapping):
                for key, value in added.items():
                    if key not in attributes:
                        attributes[key] = str(value)
        return export(self, span_datas)

    cls.__init__ = __init__
    cls.export = export_with_context
    cls._pipeobs_composed = True


_PATCHES: dict[str, Callable[[Any], None]] = {
    "opencensus.ext.azure.log_exporter": _patch_log_exporter,
    "opencensus.ext.azure.trace_exporter": _patch_trace_exporter,
}


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, patch: Callable[[Any], None]) -> None:
        self._loader = loader
        self._patch = patch

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        try:
            self._patch(module)
        except Exception:  # noqa: BLE001 - a library we do not know: leave it as it is
            compose.log.debug("could not compose with %s", module.__name__, exc_info=True)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patches opencensus's Azure modules when the entry script imports them."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        patch = _PATCHES.get(fullname)
        if patch is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _PatchingLoader(spec.loader, patch)
        return spec


def install() -> None:
    """Patch the classes when imported (and now, if a plugin imported them before the worker started)."""
    sys.meta_path.insert(0, _PatchOnImport())
    for name, patch in _PATCHES.items():
        if name in sys.modules:
            patch(sys.modules[name])
