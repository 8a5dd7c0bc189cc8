"""The output file of ``append_row``: rows appended by the driver, cut back on resume.

Exactly-once: a finished mini-batch's rows are appended (buffered), written before the store
commit that records the mini-batch as done with the file's new length, and a resumed run
truncates the file to the last committed length before it continues.
"""

from __future__ import annotations

import os

BUFFER = 4 << 20  # rows are written at each flush, or sooner past this many bytes


class OutputFile:
    """Append-only rows with a committed length; ``size`` counts buffered rows too."""

    def __init__(self, path: str | None, header: bool = False) -> None:
        self.path = path
        self.header = header  # --append-row-dataframe-header: the first DataFrame's header once at the top
        self.size = 0
        self._fd: int | None = None
        self._buffer = bytearray()

    def open(self, committed: int) -> None:
        """Open for appending, cutting the file back to ``committed`` bytes (0 for a new run)."""
        if self.path is None:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.ftruncate(self._fd, committed)
        self.size = committed

    def append(self, rows: bytes | None, header: bytes | None = None) -> None:
        if not rows or self._fd is None:
            return
        if self.size == 0 and self.header and header:
            rows = header + rows
        self._buffer += rows
        self.size += len(rows)
        if len(self._buffer) > BUFFER:
            self.flush()

    def flush(self) -> None:
        """Rows reach the file before the ledger commit that covers them."""
        if self._buffer and self._fd is not None:
            view = memoryview(self._buffer)
            while view:
                view = view[os.write(self._fd, view) :]
            view.release()
            self._buffer.clear()

    def close(self) -> None:
        self.flush()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
