"""Records -> envelopes, field by field (reference sections 1.4, 1.7, 4.2, 4.3)."""

from __future__ import annotations

import json
import sys
import traceback
from typing import Any

import pytest
from appinsights_helpers import (
    IKEY,
    JOB_SPAN,
    MB_SPAN,
    T0,
    TRACE_ID,
    envelope_problems,
    log_record,
    metric_record,
    span_record,
)

from pipeobs_appinsights.envelopes import (
    SDK_VERSION,
    flatten_properties,
    format_duration,
    format_time,
    severity_of,
    to_envelopes,
)
from pipeobs_appinsights.tracebacks import MAX_STACK_CHARS, exception_details, parse_traceback


def one(record: dict[str, Any]) -> dict[str, Any]:
    envelopes = to_envelopes(record, IKEY)
    assert len(envelopes) == 1
    assert envelope_problems(envelopes[0]) == []
    return envelopes[0]


def _load_data() -> None:
    raise KeyError("rows")


def _score() -> None:
    try:
        _load_data()
    except KeyError as exc:
        raise ValueError("cannot score\nsecond line") from exc


def real_traceback() -> tuple[str, BaseException]:
    try:
        _score()
    except ValueError as exc:
        return "".join(traceback.format_exception(exc)), exc
    raise AssertionError("unreachable")


class TestCommonFields:
    def test_envelope_header(self) -> None:
        """name, time (ISO UTC, microseconds, Z), iKey, data.baseType and baseData.ver."""
        envelope = one(log_record())

        assert envelope["name"] == "Microsoft.ApplicationInsights.Message"
        assert envelope["time"] == "2026-09-21T14:13:21.250000Z"
        assert envelope["iKey"] == IKEY
        assert envelope["data"]["baseType"] == "MessageData"
        assert envelope["data"]["baseData"]["ver"] == 2

    def test_tags_of_a_log(self) -> None:
        """operation id = trace id, parent = the span the line was written in, role = step, instance = worker."""
        tags = one(log_record())["tags"]

        assert tags == {
            "ai.operation.id": TRACE_ID,
            "ai.operation.parentId": MB_SPAN,
            "ai.cloud.role": "score-step",
            "ai.cloud.roleInstance": "0/process001",
            "ai.internal.sdkVersion": SDK_VERSION,
        }
        assert SDK_VERSION.startswith(f"py{sys.version_info.major}.{sys.version_info.minor}")

    def test_ids_are_normalised_and_invalid_ones_left_out(self) -> None:
        """Upper-case hex is lowered; a malformed or all-zero id gives no tag (never a fake operation)."""
        upper = one(log_record(trace_id=TRACE_ID.upper(), span_id=MB_SPAN.upper()))["tags"]
        zeros = one(log_record(trace_id="0" * 32, span_id=None))["tags"]
        short = one(log_record(trace_id="abc"))["tags"]

        assert (upper["ai.operation.id"], upper["ai.operation.parentId"]) == (TRACE_ID, MB_SPAN)
        assert "ai.operation.id" not in zeros and "ai.operation.parentId" not in zeros
        assert "ai.operation.id" not in short

    def test_context_properties_always_present(self) -> None:
        """step_id, worker, mini_batch_id, attempt on every envelope, as strings."""
        for record in (log_record(), metric_record(), span_record()):
            properties = to_envelopes(record, IKEY)[0]["data"]["baseData"]["properties"]

            assert {k: properties[k] for k in ("step_id", "worker", "mini_batch_id", "attempt")} == {
                "step_id": "step-1",
                "worker": "0/process001",
                "mini_batch_id": "3",
                "attempt": "1",
            }

    def test_absent_context_is_absent_not_none(self) -> None:
        """A driver record without a mini-batch has no mini_batch_id key (not "None")."""
        properties = one(log_record(mini_batch_id=None, attempt=None, worker="driver"))["data"]["baseData"][
            "properties"
        ]

        assert "mini_batch_id" not in properties and "attempt" not in properties
        assert properties["worker"] == "driver"

    def test_unknown_record_type(self) -> None:
        """A record type the exporter does not know is a ValueError (the exporter rejects that record)."""
        with pytest.raises(ValueError, match="unsupported record type"):
            to_envelopes({"type": "profile"}, IKEY)


class TestProperties:
    def test_flat_and_typed(self) -> None:
        """Scalars are stringified one by one in JSON spelling; nested dicts flatten; lists are JSON."""
        flat = flatten_properties(
            {"s": "text", "i": 7, "f": 1.5, "b": True, "n": None, "d": {"a": {"b": 1}}, "l": [1, "x"], "e": {}}
        )

        assert flat == {
            "s": "text",
            "i": "7",
            "f": "1.5",
            "b": "true",
            "n": "null",
            "d.a.b": "1",
            "l": '[1, "x"]',
            "e": "{}",
        }

    def test_never_a_python_repr(self) -> None:
        """The 4.3 defect: custom_dimensions must not arrive as "{'run_id': 'r1'}"."""
        properties = one(log_record(custom_dimensions={"run_id": "r1", "step": 7, "cfg": {"lr": 0.1}}))["data"][
            "baseData"
        ]["properties"]

        assert properties["run_id"] == "r1" and properties["step"] == "7" and properties["cfg.lr"] == "0.1"
        assert "custom_dimensions" not in properties
        assert not any(value.startswith("{'") for value in properties.values())

    def test_context_keys_win_and_a_different_user_value_is_kept_aside(self) -> None:
        """A user "step_id" cannot overwrite the context; a different value moves to custom_dimensions.step_id."""
        properties = one(log_record(custom_dimensions={"step_id": "azure-run-9", "worker": "0/process001"}))["data"][
            "baseData"
        ]["properties"]

        assert properties["step_id"] == "step-1"
        assert properties["custom_dimensions.step_id"] == "azure-run-9"
        assert "custom_dimensions.worker" not in properties

    def test_limits(self) -> None:
        """Keys are cut to 150 characters and values to 8192 (the service's limits)."""
        flat = flatten_properties({"k" * 200: "v" * 10_000})

        assert [(len(k), len(v)) for k, v in flat.items()] == [(150, 8192)]

    def test_numpy_like_scalars(self) -> None:
        """Objects with .item() (numpy scalars) are stringified as the Python number."""

        class Float32:
            def item(self) -> float:
                return 0.5

        assert flatten_properties({"x": Float32()}) == {"x": "0.5"}


class TestLogs:
    @pytest.mark.parametrize(
        ("level", "severity"),
        [
            ("DEBUG", 0),
            ("INFO", 1),
            ("WARNING", 2),
            ("ERROR", 3),
            ("CRITICAL", 4),
            ("Level 25", 2),
            ("Level 5", 0),
            ("TRACE", 1),
        ],
    )
    def test_severity_of_levels(self, level: str, severity: int) -> None:
        """opencensus's mapping: (levelno - 1) // 10; unknown names are Information."""
        assert severity_of(level) == severity
        assert one(log_record(level=level))["data"]["baseData"]["severityLevel"] == severity

    def test_plain_lines_by_stream(self) -> None:
        """stdout lines are Information, stderr lines Warning."""
        out = one(log_record(level=None, stream="stdout", text="epoch 1"))
        err = one(log_record(level=None, stream="stderr", text="50%|#####"))

        assert out["data"]["baseData"]["severityLevel"] == 1
        assert err["data"]["baseData"]["severityLevel"] == 2
        assert err["data"]["baseData"]["properties"]["stream"] == "stderr"

    def test_message_and_log_properties(self) -> None:
        """The text is the message; logger, stream and phase are properties."""
        base = one(log_record())["data"]["baseData"]

        assert base["message"] == "scored 128 rows"
        assert (base["properties"]["logger"], base["properties"]["stream"], base["properties"]["phase"]) == (
            "entry",
            "log",
            "run",
        )

    def test_empty_line_still_has_a_message(self) -> None:
        """The service refuses an empty message, so an empty line is sent as "(empty)"."""
        assert one(log_record(level=None, stream="stdout", text=""))["data"]["baseData"]["message"] == "(empty)"

    def test_logged_traceback_becomes_an_exception(self) -> None:
        """logger.exception(): an Exception envelope with the parsed stack; the message goes to log_message."""
        text, _exc = real_traceback()

        envelope = one(log_record(level="ERROR", text="scoring failed\n" + text))

        base = envelope["data"]["baseData"]
        assert envelope["name"] == "Microsoft.ApplicationInsights.Exception"
        assert base["severityLevel"] == 3
        assert base["exceptions"][0]["typeName"] == "ValueError"
        assert base["properties"]["log_message"] == "scoring failed"


class TestSpans:
    def test_mini_batch_span_is_a_request(self) -> None:
        """A CONSUMER span: RequestData with id = span id, parent tag = parent span, duration, success."""
        envelope = one(span_record())
        base = envelope["data"]["baseData"]

        assert envelope["name"] == "Microsoft.ApplicationInsights.Request"
        assert envelope["time"] == format_time(T0)
        assert base["id"] == MB_SPAN
        assert envelope["tags"]["ai.operation.parentId"] == JOB_SPAN
        assert envelope["tags"]["ai.operation.id"] == TRACE_ID
        assert envelope["tags"]["ai.operation.name"] == "mini_batch"
        assert (base["name"], base["duration"], base["responseCode"], base["success"]) == (
            "mini_batch",
            "0.00:00:02.500000",
            "0",
            True,
        )

    def test_root_job_span_has_no_parent(self) -> None:
        """The job span (no parent) carries the operation id and no parentId."""
        tags = one(span_record(name="job", span_id=JOB_SPAN, parent_span_id=None, mini_batch_id=None))["tags"]

        assert tags["ai.operation.id"] == TRACE_ID
        assert "ai.operation.parentId" not in tags

    def test_span_attributes_are_properties_without_pipeobs_copies(self) -> None:
        """User attributes become properties; pipeobs.step_id & co. are not repeated."""
        properties = one(span_record())["data"]["baseData"]["properties"]

        assert properties["rows"] == "128"
        assert not [key for key in properties if key.startswith("pipeobs.")]

    def test_error_status(self) -> None:
        """status ERROR: success false and the status message as a property."""
        base = one(span_record(status="ERROR", status_message="boom"))["data"]["baseData"]

        assert base["success"] is False
        assert base["properties"]["status_message"] == "boom"

    def test_internal_span_is_an_inproc_dependency(self) -> None:
        """Any other kind: RemoteDependencyData, type InProc."""
        envelope = one(
            span_record(name="load_data", kind="INTERNAL", span_id="1111222233334444", parent_span_id=MB_SPAN)
        )
        base = envelope["data"]["baseData"]

        assert envelope["name"] == "Microsoft.ApplicationInsights.RemoteDependency"
        assert (base["type"], base["name"], base["id"], base["success"]) == (
            "InProc",
            "load_data",
            "1111222233334444",
            True,
        )
        assert envelope["tags"]["ai.operation.parentId"] == MB_SPAN

    def test_http_client_span(self) -> None:
        """A CLIENT span with HTTP attributes: type HTTP, data = URL, target = host, resultCode = status."""
        attributes: dict[str, Any] = {
            "http.request.method": "GET",
            "url.full": "https://api.example/x",
            "server.address": "api.example",
        }
        attributes["http.response.status_code"] = 200
        base = one(span_record(kind="CLIENT", attributes=attributes))["data"]["baseData"]

        assert (base["type"], base["data"], base["target"], base["resultCode"]) == (
            "HTTP",
            "https://api.example/x",
            "api.example",
            "200",
        )

    def test_exception_event_gives_a_second_envelope(self) -> None:
        """A span with an exception event: Request, then Exception parented to the span."""
        text, _exc = real_traceback()
        event = {
            "name": "exception",
            "time": T0 + 2,
            "attributes": {
                "exception.type": "ValueError",
                "exception.message": "cannot score",
                "exception.stacktrace": text,
                "exception.escaped": "False",
            },
        }

        request, exception = to_envelopes(span_record(status="ERROR", events=[event]), IKEY)

        assert envelope_problems(exception) == []
        base = exception["data"]["baseData"]
        assert request["name"].endswith(".Request") and exception["name"].endswith(".Exception")
        assert exception["tags"]["ai.operation.parentId"] == MB_SPAN
        assert exception["time"] == format_time(T0 + 2)
        assert base["severityLevel"] == 3
        assert base["properties"]["exception.escaped"] == "False"
        assert base["properties"]["mini_batch_id"] == "3"
        assert (base["exceptions"][0]["typeName"], base["exceptions"][0]["message"]) == ("ValueError", "cannot score")

    def test_other_events_become_messages(self) -> None:
        """A non-exception event is a Message (its name) under the span."""
        event = {"name": "checkpoint saved", "time": T0 + 1, "attributes": {"path": "/tmp/ck"}}

        _request, message = to_envelopes(span_record(events=[event]), IKEY)

        assert envelope_problems(message) == []
        assert message["data"]["baseData"]["message"] == "checkpoint saved"
        assert message["data"]["baseData"]["properties"]["path"] == "/tmp/ck"
        assert message["tags"]["ai.operation.parentId"] == MB_SPAN

    def test_killed_span_without_stack(self) -> None:
        """The driver's killed span: an exception with no stack text has no parsedStack and hasFullStack false."""
        event = {
            "name": "exception",
            "time": T0 + 3,
            "attributes": {"exception.type": "WorkerKilled", "exception.message": "SIGKILL"},
        }

        _request, exception = to_envelopes(span_record(status="ERROR", events=[event]), IKEY)

        detail = exception["data"]["baseData"]["exceptions"][0]
        assert detail == {
            "id": 1,
            "outerId": 0,
            "typeName": "WorkerKilled",
            "message": "SIGKILL",
            "hasFullStack": False,
        }


class TestParsedStack:
    def test_frames_match_the_real_traceback(self) -> None:
        """parsedStack = the traceback's frames, innermost first, level 0 where it was raised."""
        text, exc = real_traceback()
        expected = list(reversed(traceback.extract_tb(exc.__traceback__)))

        detail = exception_details("ValueError", "cannot score", text)[0]

        assert detail["hasFullStack"] is True
        assert [(f["level"], f["method"], f["fileName"], f["line"]) for f in detail["parsedStack"]] == [
            (level, frame.name, frame.filename, frame.lineno) for level, frame in enumerate(expected)
        ]
        assert detail["parsedStack"][0]["method"] == "_score"

    def test_chained_cause_is_an_inner_exception(self) -> None:
        """raise ... from: the cause follows with outerId = the outer exception's id, and its own stack."""
        text, exc = real_traceback()
        cause = exc.__cause__
        assert cause is not None

        outer, inner = exception_details("ValueError", "cannot score", text)

        assert (outer["id"], outer["outerId"]) == (1, 0)
        assert (inner["id"], inner["outerId"], inner["typeName"], inner["message"]) == (2, 1, "KeyError", "'rows'")
        assert inner["parsedStack"][0]["method"] == "_load_data"
        assert inner["parsedStack"][0]["line"] == traceback.extract_tb(cause.__traceback__)[-1].lineno

    def test_type_and_message_parsed_when_attributes_are_missing(self) -> None:
        """Without exception.type/message the last line of the traceback names them (multi-line message kept)."""
        text, _exc = real_traceback()

        parsed = parse_traceback(text)

        assert [(p.type_name, p.message) for p in parsed] == [
            ("KeyError", "'rows'"),
            ("ValueError", "cannot score\nsecond line"),
        ]

    def test_recursion_elision_is_not_a_full_stack(self) -> None:
        """[Previous line repeated N more times] means frames are missing: hasFullStack false."""

        def recurse(n: int) -> int:
            return recurse(n + 1)

        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(200)
        try:
            recurse(0)
        except RecursionError as exc:
            text = "".join(traceback.format_exception(exc))
        finally:
            sys.setrecursionlimit(limit)

        detail = exception_details("RecursionError", None, text)[0]

        assert "Previous line repeated" in text
        assert detail["hasFullStack"] is False
        assert detail["message"].startswith("maximum recursion depth exceeded")

    def test_huge_stack_is_cut(self) -> None:
        """Frames beyond the size budget are dropped (innermost kept) and hasFullStack is false."""
        frames = "".join(f'  File "/very/long/{"p" * 200}/mod{i}.py", line {i}, in f{i}\n    x()\n' for i in range(500))
        text = "Traceback (most recent call last):\n" + frames + "RuntimeError: deep\n"

        detail = exception_details(None, None, text)[0]

        assert detail["hasFullStack"] is False
        assert detail["parsedStack"][0]["method"] == "f499"
        assert sum(len(f["fileName"]) + len(f["method"]) for f in detail["parsedStack"]) < MAX_STACK_CHARS

    def test_exception_group_is_sent_as_text(self) -> None:
        """A group traceback is not a plain stack: it is sent whole as "stack"."""
        try:
            raise ExceptionGroup("eg", [ValueError(1), TypeError(2)])
        except ExceptionGroup as exc:
            text = "".join(traceback.format_exception(exc))

        detail = exception_details("ExceptionGroup", "eg", text)[0]

        assert detail["stack"] == text and "parsedStack" not in detail


class TestMetrics:
    def test_numeric_metric(self) -> None:
        """A number: MetricData with name and value; labels, kind and description as properties."""
        envelope = one(metric_record(labels={"model": "v2"}, description="top-1"))
        base = envelope["data"]["baseData"]

        assert envelope["name"] == "Microsoft.ApplicationInsights.Metric"
        assert base["metrics"] == [{"name": "accuracy", "value": 0.93}]
        assert (
            base["properties"]["model"],
            base["properties"]["metric_kind"],
            base["properties"]["metric_description"],
        ) == (
            "v2",
            "scalar",
            "top-1",
        )
        assert envelope["tags"]["ai.operation.parentId"] == MB_SPAN

    def test_non_numeric_metric_is_a_message(self) -> None:
        """run.log_row & co.: a Message "<name> = <json>" with metric_name/metric_kind/metric_value."""
        value_json = json.dumps({"precision": 0.9, "recall": 0.8})

        base = one(metric_record(name="scores", kind="row", value=None, value_json=value_json))["data"]["baseData"]

        assert base["message"] == f"scores = {value_json}"
        assert base["severityLevel"] == 1
        assert (
            base["properties"]["metric_name"],
            base["properties"]["metric_kind"],
            base["properties"]["metric_value"],
        ) == (
            "scores",
            "row",
            value_json,
        )

    def test_nan_is_not_a_metric_value(self) -> None:
        """NaN would make the whole POST invalid JSON: it goes the non-numeric way."""
        envelope = one(metric_record(value=float("nan")))

        assert envelope["name"] == "Microsoft.ApplicationInsights.Message"
        assert envelope["data"]["baseData"]["properties"]["metric_value"] == "NaN"


class TestFormats:
    @pytest.mark.parametrize(
        ("seconds", "text"),
        [
            (0, "0.00:00:00.000000"),
            (2.5, "0.00:00:02.500000"),
            (0.0000015, "0.00:00:00.000002"),
            (3723.25, "0.01:02:03.250000"),
            (90061.000001, "1.01:01:01.000001"),
            (-1, "0.00:00:00.000000"),
        ],
    )
    def test_duration(self, seconds: float, text: str) -> None:
        """d.hh:mm:ss.ffffff, negative clamped to zero."""
        assert format_duration(seconds) == text

    def test_time_is_utc_with_z(self) -> None:
        """Epoch seconds -> ISO 8601 UTC with microseconds and Z."""
        assert format_time(0.000001) == "1970-01-01T00:00:00.000001Z"
