"""The driver log's precompiled rendering is byte for byte what its structlog processors render."""

from __future__ import annotations

import io

from pipeobs.record.driverlog import PROCESSORS, DriverLog, add_invocation, add_utc_time, render_columns
from pipeobs.records import Invocation

RECORDS = [
    (1_795_930_280.0, "0/process000", Invocation("init"), "INFO", "init(): loaded model"),
    (1_795_930_280.0004, "0/process000", Invocation("run", 17, 1, "t", "s"), "STDOUT", "scored 5 images"),
    (1_795_930_280.9996, "0/process000", Invocation("run", 17, 1, "t", "s"), "STDERR", "warning: [x] \x1b[31m"),
    (1_795_930_281.5, "1/process003", Invocation("run", 3, 2), "ERROR", "Traceback (most recent call last):"),
    (1_795_930_282.25, "driver", None, "INFO", "Processed 4 of 10 mini batches."),
    (1_795_930_282.25, "0/process001", Invocation("shutdown"), "WARNING", ""),
]


def render(processors: list[object] | None) -> str:
    handle = io.StringIO()
    log = DriverLog(handle, processors)
    for record in RECORDS:
        log.write(*record)
    return handle.getvalue()


def test_the_fast_path_renders_what_the_processors_render() -> None:
    chain = [lambda *a, step=step: step(*a) for step in (add_utc_time, add_invocation, render_columns)]
    through_structlog = render(chain)  # the same processors, wrapped: not the default list, so structlog runs them

    assert render(None) == render(PROCESSORS) == through_structlog
    assert through_structlog.splitlines()[1] == "2026-11-29T05:31:20.000Z 0/process000 mb=17 a=1 STDOUT scored 5 images"
    assert through_structlog.splitlines()[4] == "2026-11-29T05:31:22.250Z driver - INFO Processed 4 of 10 mini batches."


def test_other_processors_still_shape_the_log() -> None:
    def shout(_logger: object, _method: str, event_dict: dict[str, object]) -> dict[str, object]:
        event_dict["event"] = str(event_dict["event"]).upper()
        return event_dict

    shouted = render([shout, add_utc_time, add_invocation, render_columns])

    assert "SCORED 5 IMAGES" in shouted
