"""Delivery of alerts to webhooks (JSON) and to Alertmanager (``POST /api/v2/alerts``).

:meth:`Notifier.send` only queues: a thread of its own posts, with a timeout per request, so a
slow or dead receiver never holds up the driver's loop. Failures are kept for the driver to
record (:meth:`Notifier.failures`): the notifier never writes to the run directory itself.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

TIMEOUT = 5.0  # seconds per request
Post = Callable[[str, bytes], None]


def post_json(url: str, body: bytes) -> None:
    """POST a JSON body; an error status or no answer within TIMEOUT raises."""
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310 (http(s) checked in AlertSettings)
        response.read()


def alertmanager_url(base: str) -> str:
    return base.rstrip("/") + "/api/v2/alerts"


class Notifier:
    """Posts alert batches to each webhook and Alertmanager on a background thread."""

    def __init__(self, webhooks: list[str], alertmanager: str | None, post: Post = post_json) -> None:
        self.webhooks = list(webhooks)
        self.alertmanager = alertmanager
        self._post = post
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self._failures: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._deliver, name="pipeobs-alerts", daemon=True)
        self._thread.start()

    def send(self, status: str, alerts: list[dict[str, Any]], generator_url: str) -> None:
        """Queue ``alerts`` (dicts with labels, annotations, startsAt, endsAt) for every destination."""
        if not alerts:
            return
        items = [{**a, "generatorURL": generator_url} for a in alerts]
        body = json.dumps({"version": "4", "status": status, "externalURL": generator_url,
                           "alerts": [{"status": status, **a} for a in items]}).encode()
        if self.alertmanager:  # first: a webhook that looks the alert up in Alertmanager finds it
            self._queue.put((alertmanager_url(self.alertmanager), json.dumps(items).encode()))
        for url in self.webhooks:
            self._queue.put((url, body))

    def failures(self) -> list[str]:
        """Deliveries that failed since the last call, in words."""
        found = []
        while not self._failures.empty():
            found.append(self._failures.get())
        return found

    def _deliver(self) -> None:
        while (item := self._queue.get()) is not None:
            url, body = item
            try:
                self._post(url, body)
            except Exception as exc:  # the exporter boundary: a receiver's trouble never reaches the job
                logger.debug("alert delivery to %s failed: %s", url, exc)
                self._failures.put(f"Alert delivery to {url} failed: {exc}")

    def close(self, deadline: float = TIMEOUT) -> None:
        """Deliver what is queued, waiting at most ``deadline`` seconds."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(max(0.0, deadline))


def rfc3339(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1000):03d}Z"
