"""Partitioning on a thread of its own, so workers start (and run) while a big folder is listed."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterator
from typing import Any

DONE = None  # what follows the last mini-batch


class Partitioner:
    """Lists the inputs into mini-batches on a thread; the driver takes them with :meth:`take`.

    The thread appends mini-batches, then :data:`DONE` (or the exception that stopped it), to a
    deque, and calls ``wake`` so the driver's poll returns.
    """

    def __init__(self, datasets: list[Any], mini_batch_size: int, partition_keys: list[str] | None,
                 wake: Callable[[], None]) -> None:
        self._args = (datasets, mini_batch_size, partition_keys)
        self._wake = wake
        self._items: collections.deque[Any] = collections.deque()

    def start(self) -> None:
        threading.Thread(target=self._run, name="pipeobs-partition", daemon=True).start()

    def _run(self) -> None:
        from pipeobs.datasets import partition

        try:
            for mini_batch in partition(*self._args):
                self._items.append(mini_batch)
                self._wake()
        except BaseException as exc:  # noqa: BLE001 - reported by the driver thread
            self._items.append(exc)
        else:
            self._items.append(DONE)
        self._wake()

    def __bool__(self) -> bool:
        return bool(self._items)

    def take(self) -> Iterator[Any]:
        """What the thread produced since the last call: mini-batches, then DONE or an exception."""
        items = self._items
        while items:
            yield items.popleft()
