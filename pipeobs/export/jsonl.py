"""The ``jsonl`` exporter: every record as one JSON line in a file (for pipelines and tests).

``pipeobs run --export jsonl`` with ``PIPEOBS_EXPORT_JSONL`` naming the file (appended to).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from pipeobs import env
from pipeobs.errors import ConfigError
from pipeobs.export.base import ExportResult, Record

PATH_VARIABLE = env.EXPORT_JSONL


class JsonlExporter:
    name = "jsonl"

    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, records: Sequence[Record]) -> ExportResult:
        try:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.writelines(json.dumps(r, default=str) + "\n" for r in records)
        except OSError as exc:
            return ExportResult.retry_all(len(records), f"cannot write {self.path}: {exc.strerror}")
        return ExportResult.ok(len(records))

    def shutdown(self) -> None:
        pass


def create_exporter(options: dict[str, str]) -> JsonlExporter:
    path = options.get("path") or os.environ.get(PATH_VARIABLE)
    if not path:
        raise ConfigError(f"the jsonl exporter needs a file: set {PATH_VARIABLE}=PATH")
    return JsonlExporter(path)
