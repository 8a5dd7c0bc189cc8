"""MiniBatch: the picklable descriptor of which inputs one ``run()`` call reads, and its summary text."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from typing import Any

from pipeobs.datasets.inputs import KINDS


@dataclass(frozen=True)
class MiniBatch:
    """Which inputs one ``run()`` call gets: a descriptor, cheap to store, pickle and send.

    Tabular mini-batches hold one file and a byte range (csv, jsonl) or row groups (parquet),
    except partition-key mini-batches, which read all their files whole (keeping the rows of
    their key values when grouped by data columns), and mini-batches of an MLTable with
    skip/take, which hold ``options["rows"]``: [start, stop) of each file's rows. ``options``
    carries what reading needs (an MLTable's plan under ``"table"``).
    """

    id: int
    input_index: int
    kind: str
    files: tuple[str, ...]
    start: int = 0
    end: int = 0
    row_groups: tuple[int, ...] = ()
    partition_key_value: dict[str, str] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    item_count: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"MiniBatch kind must be one of {list(KINDS)}, got {self.kind!r}")
        # Copies, so that a caller's later edits cannot change a sent or stored descriptor.
        object.__setattr__(self, "files", tuple(self.files))
        object.__setattr__(self, "row_groups", tuple(self.row_groups))
        object.__setattr__(self, "options", dict(self.options))
        if self.partition_key_value is not None:
            object.__setattr__(self, "partition_key_value", dict(self.partition_key_value))

    def __hash__(self) -> int:
        keys = self.partition_key_value
        return hash(
            (self.id, self.input_index, self.kind, self.files, self.start, self.end)
            + (self.row_groups, None if keys is None else tuple(sorted(keys.items())))
        )

    def to_json(self) -> str:
        """One line of JSON, for the ledger and for ``--resume``: keys sorted, no spaces.

        The driver stores one per mini-batch as it partitions; the plain kind (files, nothing else set) is
        written from a template with only its lists encoded, the same text at a third of the cost."""
        if not (self.options or self.row_groups or self.partition_key_value is not None):
            count = "null" if self.item_count is None else int(self.item_count)
            return (f'{{"end":{int(self.end)},"files":{_encode(self.files)},"id":{int(self.id)},'
                    f'"input_index":{int(self.input_index)},"item_count":{count},"kind":{_encode(self.kind)},'
                    f'"options":{{}},"partition_key_value":null,"row_groups":[],"start":{int(self.start)}}}')
        values = {f: getattr(self, f) for f in _MINI_BATCH_FIELDS}  # asdict() deep-copies: 50 us a call
        return _encode(values)

    @classmethod
    def from_json(cls, text: str) -> MiniBatch:
        """The inverse of :meth:`to_json`."""
        return cls(**json.loads(text))

    def summary(self, limit: int = 3) -> str:
        """Short text naming the inputs, for logs and error messages."""
        if "rows" in self.options and self.partition_key_value is None:
            (start, end), *_ = self.options["rows"]
            text = f"{_base(self.files[0])} rows {start}-{end}"
        elif self.kind == "file" or _reads_whole_files(self):
            text = _name_files(self.files, limit)
        elif self.kind == "parquet":
            text = f"{_base(self.files[0])} {_span('row group', self.row_groups)}"
        else:
            text = f"{_base(self.files[0])} bytes {self.start}-{self.end}"
        if self.partition_key_value:
            values = ", ".join(f"{k}={v}" for k, v in self.partition_key_value.items())
            text += f" ({values})"
        return text


_MINI_BATCH_FIELDS = tuple(f.name for f in dataclass_fields(MiniBatch))
_encode = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode


def _reads_whole_files(mb: MiniBatch) -> bool:
    """Partition-key and row-window mini-batches read whole files; others a range of one file."""
    return mb.partition_key_value is not None or "rows" in mb.options


def _base(path: str) -> str:
    return os.path.basename(path) or path


def _name_files(files: tuple[str, ...], limit: int) -> str:
    noun = "file" if len(files) == 1 else "files"
    names = ", ".join(_base(path) for path in files[: max(limit, 0)])
    more = f", ... (+{len(files) - limit} more)" if len(files) > limit else ""
    return f"{len(files)} {noun}: {names}{more}"


def _span(noun: str, numbers: tuple[int, ...]) -> str:
    if len(numbers) == 1:
        return f"{noun} {numbers[0]}"
    return f"{noun}s {numbers[0]}-{numbers[-1]}"
