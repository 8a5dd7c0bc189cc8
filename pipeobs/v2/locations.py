"""Where a v2 path is on this machine: local paths, datastore URIs and ``azureml:`` assets.

* A relative local path is relative to the YAML file that holds it; scripts get absolute paths.
* ``azureml://datastores/<NAME>/paths/<P>`` is the local folder ``<datastores root>/<NAME>/<P>``; the root
  is ``./datastores`` beside the job YAML unless the assets file says otherwise, and one notice says
  where each such URI went.
* ``azureml:<NAME>:<VERSION>`` and ``azureml:<NAME>@latest`` (data, models, code, components) are looked
  up in the assets file, ``pipeobs-assets.yml`` beside the job YAML or ``--assets FILE``::

      assets:
        azureml:iris_model:1: ./models/iris      # relative to this file
      datastores_root: ./blob                    # default: ./datastores beside the job YAML
      datastores:
        workspaceartifactstore: /mnt/artifacts   # one datastore elsewhere

  An asset it does not map is an error saying so (or give the path with ``--set``).
* Other cloud URIs (``https://``, ``wasbs://``, ``abfss://``, ``adl://``, registries) need Azure: an error
  says to give a local path instead.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeobs.errors import ConfigError
from pipeobs.v2.document import read_yaml

ASSETS_FILE = "pipeobs-assets.yml"
DATASTORE_URI = re.compile(r"^azureml://datastores/([^/]+)/paths/?(.*)$")
ASSET_REF = re.compile(r"^azureml:(?!//)([^:@]+)(?::([^:@]+)|@(\w+))?$")
CLOUD_PREFIXES = ("http://", "https://", "wasbs://", "wasb://", "abfss://", "abfs://", "adl://", "azureml://",
                  "s3://", "gs://")
DEFAULT_DATASTORE = "workspaceblobstore"


def _print_notice(text: str) -> None:
    print(f"notice: {text}", file=sys.stderr, flush=True)


class Locations:
    """Maps the paths of one job YAML (and the components it names) to local paths."""

    def __init__(self, yaml_file: Path, assets_file: str | None = None,
                 notice: Callable[[str], None] = _print_notice) -> None:
        self.yaml_dir = yaml_file.resolve().parent
        self._notice = notice
        self._noticed: set[str] = set()
        self.assets: dict[str, Path] = {}
        self.datastores: dict[str, Path] = {}
        self.datastores_root = self.yaml_dir / "datastores"
        path = Path(assets_file) if assets_file else self.yaml_dir / ASSETS_FILE
        if assets_file or path.is_file():
            self._read_assets(path)

    def _read_assets(self, path: Path) -> None:
        data = read_yaml(path, "assets file")
        unknown = set(data) - {"assets", "datastores", "datastores_root"}
        if unknown:
            raise ConfigError(f"unknown key '{sorted(unknown)[0]}' in assets file '{path}'; use assets, datastores, "
                              "datastores_root")
        base = path.resolve().parent
        for key, value in _mapping(data.get("assets"), path, "assets").items():
            self.assets[str(key)] = base / str(value)
        for key, value in _mapping(data.get("datastores"), path, "datastores").items():
            self.datastores[str(key)] = base / str(value)
        if data.get("datastores_root"):
            self.datastores_root = base / str(data["datastores_root"])

    def path(self, text: Any, base: Path, where: str) -> str:
        """The absolute local path a v2 path names."""
        text = str(text)
        datastore = DATASTORE_URI.match(text)
        if datastore:
            return str(self._datastore_path(text, datastore.group(1), datastore.group(2)))
        if text.startswith("azureml:") and not text.startswith("azureml://"):
            return str(self.asset(text, where))
        if text.startswith("file:") and not text.startswith("file://"):
            text = text[len("file:"):]
        if text.lower().startswith(CLOUD_PREFIXES):
            raise ConfigError(f"{where}: '{text}' is in the cloud, which pipeobs does not reach: give a local path "
                              f"(--set {_set_key(where)}=PATH), or map it in {ASSETS_FILE}")
        path = Path(text).expanduser()
        return str((path if path.is_absolute() else base / path).resolve())

    def asset(self, ref: str, where: str) -> Path:
        """The local path an ``azureml:NAME:VERSION`` or ``azureml:NAME@latest`` asset is mapped to."""
        if not ASSET_REF.match(ref):
            raise ConfigError(f"{where}: '{ref}' is not an asset reference (azureml:NAME:VERSION or azureml:NAME@latest)")
        if ref not in self.assets:
            raise ConfigError(f"{where}: asset '{ref}' is in an Azure ML workspace, which pipeobs does not reach: map "
                              f"it to a local path in {ASSETS_FILE} (assets: {{'{ref}': ./path}}) or give the path "
                              f"with --set {_set_key(where)}=PATH")
        return self.assets[ref]

    def _datastore_path(self, uri: str, name: str, rest: str) -> Path:
        folder = self.datastores.get(name, self.datastores_root / name)
        local = (folder / rest).resolve() if rest else folder.resolve()
        if uri not in self._noticed:
            self._noticed.add(uri)
            self._notice(f"{uri} is the local path {local}")
        return local

    def output_path(self, text: Any, base: Path, where: str, names: dict[str, str]) -> str:
        """An output's path, its ``${{name}}``, ``${{default_datastore}}`` and ``${{output_name}}`` resolved."""
        from pipeobs.v2.expressions import substitute

        def lookup(name: str) -> str:
            if name not in names:
                raise ConfigError(f"{where}: ${{{{{name}}}}} cannot be used in an output path; use "
                                  "${{name}}, ${{default_datastore}} or ${{output_name}}")
            return names[name]

        return self.path(substitute(str(text), lookup, where), base, where)


def _mapping(value: Any, path: Path, key: str) -> dict[Any, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"'{key}' in assets file '{path}' must be a mapping")
    return value


def _set_key(where: str) -> str:
    """The ``--set`` key a message suggests: the dotted part of ``where`` with its node
    (``"pipeline.yml jobs.score inputs.data"`` -> ``jobs.score.inputs.data.path``)."""
    match = re.search(r"(?:(jobs\.[a-z0-9_]+) )?(\S+)$", where)
    if match is None:
        return where
    dotted = ".".join(part for part in match.groups() if part)
    return dotted + ".path" if ".inputs." in f".{dotted}" or dotted.startswith(("inputs.", "outputs.")) else dotted
