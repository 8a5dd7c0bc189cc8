"""The driver-side stream parser: markers, partial lines, long lines, invalid UTF-8."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator

from pipeobs import streams
from pipeobs.capture import MAX_LINE, Invocation, Line, _encode_log, marker_prefix
from pipeobs.records import LineBlock, RecordBlock, expand
from pipeobs.streams import Boundary, _decode_log

TOKEN = "0123456789abcdef"
MARK = marker_prefix(TOKEN)


class StreamParser(streams.StreamParser):
    """The parser with its blocks of plain lines expanded: most tests here check line by line."""

    def feed(self, data: bytes) -> Iterator[streams.Item]:
        return iter(expand(super().feed(data)))

    def close(self) -> Iterator[streams.Item]:
        return iter(expand(super().close()))


def begin(mb: int, attempt: int = 1) -> bytes:
    return MARK + b"B" + f"run {mb} {attempt} - -".encode() + b"\n"


def log(message: str, name: str = "user.mod", level: int = logging.INFO, created: float = 1795948165.8251133,
        dims: dict[str, object] | None = None, sent_to: tuple[str, ...] = (), entry_script: bool = False) -> bytes:
    """A log record's marker line, as a worker writes it."""
    record = logging.LogRecord(name, level, __file__, 1, message, None, None)
    record.created = created
    record.pipeobs_entry_script = entry_script
    return MARK + b"L" + _encode_log(record, message, dims, sent_to) + b"\n"


RECORDS = [  # log records of every shape a worker writes
    log("plain"), log("second", created=1795948165.9), log("warned", level=logging.WARNING, name="other"),
    log("with dims", dims={"k": [1, 2], "s": "tab\there"}), log("own record", name="pipeobs.worker"),
    log("entry script", entry_script=True), log("sent", sent_to=("azure", "otlp")),
    log("escapes\nnew\tline\\ back\r", name="tab\tlogger\\x"), log("caf\u00e9 \u2603"), log(""),
    log("nul\x00inside"), log("own, sent, with dims", name="pipeobs", dims={"a": None}, sent_to=("azure",)),
]


def _shape(item: object) -> tuple[object, ...]:
    if isinstance(item, Line) and item.stream == "log":
        return ("log", item.text, item.invocation, item.level, item.logger, item.system, item.entry_script,
                item.time, item.custom_dimensions, item.worker, item.sent_to, item.continued)
    if isinstance(item, Line):
        return ("line", item.text, item.continued, item.invocation.mini_batch_id, item.invocation.attempt)
    assert isinstance(item, Boundary)
    return ("boundary", item.invocation.mini_batch_id if item.invocation else None)


def lines(items: list[Line | Boundary]) -> list[tuple[str, int | None]]:
    return [(i.text, i.invocation.mini_batch_id) for i in items if isinstance(i, Line)]


class TestStreamParser:
    def test_plain_lines_between_markers_come_as_one_block(self) -> None:
        """Complete lines with no marker among them are one LineBlock (the sinks write them together),
        attributed to the invocation; lines of a read holding a NUL are single lines (SQLite's JSON would cut
        them at the NUL), and a partial line waits."""
        items = list(streams.StreamParser("stdout", TOKEN).feed(
            begin(4) + b"a\nb\r\nc\n" + MARK + b"E\n" + b"nul\x00x\ny\nz\npartial"))
        blocks = [i for i in items if isinstance(i, LineBlock)]
        assert [(b.texts, b.invocation.mini_batch_id) for b in blocks] == [(["a", "b", "c"], 4)]
        assert [i.text for i in items if isinstance(i, Line)] == ["nul\x00x", "y", "z"]

    def test_any_split_of_a_stream_parses_the_same(self) -> None:
        """Plain output and runs of log records are taken a whole read at a time; other markers, partial and long
        lines the slow way: however the stream is cut into reads, the items are the same."""
        rng = random.Random(7)
        stream = b"".join([
            b"plain 1\nplain 2\r\n", begin(4), b"in 4\n" * 50, b"partial", MARK + b"E\n", b"\xffbad\n",
            b"b" * (MAX_LINE + 7) + b"\n", begin(5, 2), b"x\n" * 300, *RECORDS, b"between\n", *RECORDS * 20,
            b"\xff\xfe after\n", *rng.sample(RECORDS * 5, 60), MARK + b"E\n", *RECORDS[:3], b"tail without newline",
        ])
        whole = StreamParser("stderr", TOKEN)
        expected = [_shape(i) for i in [*whole.feed(stream), *whole.close()]]

        for _ in range(40):
            parser, items, pos = StreamParser("stderr", TOKEN), [], 0
            while pos < len(stream):
                step = rng.choice([1, 3, 17, 100, 4096, 70_000])
                items += parser.feed(stream[pos:pos + step])
                pos += step
            items += parser.close()
            assert [_shape(i) for i in items] == expected

    def test_a_run_of_log_records_is_one_block_of_the_lines_each_decodes_to(self) -> None:
        """Consecutive log record markers of a read are one RecordBlock (a record holding NUL, which SQLite's
        JSON would cut, is a Line of its own), and the block expands to the Lines each marker decodes to."""
        parser = streams.StreamParser("stderr", TOKEN, "0/process001")
        inv = Invocation("run", 3, 1, None, None)
        expected = [_decode_log(inv, record[len(MARK) + 1 : -1]) for record in RECORDS]
        for line in expected:
            line.worker = "0/process001"

        items = list(parser.feed(MARK + b"B" + b"run 3 1 - -\n" + b"".join(RECORDS) + b"printed\n" + RECORDS[0]))

        assert [type(i).__name__ for i in items] == ["Boundary", "RecordBlock", "Line", "RecordBlock", "LineBlock",
                                                     "RecordBlock"]
        assert [i for i in expand(items) if isinstance(i, Line) and i.stream == "log"] == [*expected, expected[0]]

    def test_log_records_with_dimensions_or_flags_keep_them_per_record(self) -> None:
        """A block holds dimensions and flags only when a record has some; each record keeps its own."""
        plain, = streams.StreamParser("stderr", TOKEN).feed(log("a") + log("b", level=logging.ERROR))
        mixed, = streams.StreamParser("stderr", TOKEN).feed(log("a") + log("b", dims={"k": 1}, entry_script=True))

        assert isinstance(plain, RecordBlock) and isinstance(mixed, RecordBlock)
        assert (plain.flags, plain.dimensions, plain.levels) == (None, None, ["INFO", "ERROR"])
        assert (mixed.flags, mixed.dimensions) == (["", "e"], [None, {"k": 1}])

    def test_a_stdout_read_of_markers_only_parses_the_last(self) -> None:
        """stdout's markers only attribute its lines: in a read holding nothing else, only the last is parsed."""
        parsed: list[bytes] = []

        class Counting(streams.StreamParser):
            def _marker(self, raw: bytes) -> streams.Item | None:
                parsed.append(raw)
                return super()._marker(raw)

        parser = Counting("stdout", TOKEN)
        markers = b"".join(begin(mb) + MARK + b"E\n" for mb in range(100)) + begin(100)

        assert list(parser.feed(markers + MARK[:3])) == []
        assert len(parsed) == 1
        assert lines(expand(parser.feed(MARK[3:] + b"E\n" + begin(101) + b"in 101\n"))) == [("in 101", 101)]

    def test_only_stderr_markers_reach_the_driver_as_boundaries(self) -> None:
        """stderr carries the finished span, so its begin/end markers are the boundaries the driver keeps;
        stdout's only attribute its lines (parsed when a line needs them)."""
        data = begin(3) + b"inside\n" + MARK + b"E\n"
        out = list(StreamParser("stdout", TOKEN).feed(data))
        err = list(StreamParser("stderr", TOKEN).feed(data))

        assert [type(i).__name__ for i in out] == ["Line"]
        assert [type(i).__name__ for i in err] == ["Boundary", "Line", "Boundary"]
        assert err[0].invocation.mini_batch_id == 3 and err[2].invocation is None

    def test_text_before_a_marker_is_cut_as_any_long_line(self) -> None:
        """A line without a newline that a marker ends is cut at MAX_LINE like any other; short lines before a
        long one in the same read all come out."""
        long_text = b"y" * (MAX_LINE * 2 + 5)
        items = list(StreamParser("stdout", TOKEN).feed(b"a\n" * 1000 + b"z" * (MAX_LINE + 3) + b"\n" +
                                                       begin(1) + long_text + MARK + b"E\n"))
        texts = [i.text for i in items if hasattr(i, "text")]

        assert texts[:1000] == ["a"] * 1000
        assert all(len(t) <= MAX_LINE for t in texts)
        assert "".join(texts[1000:]) == "z" * (MAX_LINE + 3) + long_text.decode()
        assert [i.continued for i in items if hasattr(i, "text")][-3:] == [True, True, False]

    def test_lines_attributed_between_markers(self) -> None:
        """Lines between begin and end markers belong to that mini-batch; others to the worker."""
        parser = StreamParser("stdout", TOKEN)

        items = list(parser.feed(b"before\n" + begin(3) + b"inside\n" + MARK + b"E\n" + b"after\n"))

        assert lines(items) == [("before", None), ("inside", 3), ("after", None)]

    def test_marker_split_across_reads(self) -> None:
        """A marker that arrives in two reads is still recognised."""
        parser = StreamParser("stdout", TOKEN)
        data = begin(7) + b"x\n"

        items = list(parser.feed(data[:5])) + list(parser.feed(data[5:]))

        assert lines(items) == [("x", 7)]

    def test_partial_line_before_marker_is_its_own_line(self) -> None:
        """Text without a newline before an end marker stays with the invocation that wrote it."""
        parser = StreamParser("stdout", TOKEN)

        items = list(parser.feed(begin(1) + b"no newline" + MARK + b"E\n"))

        assert lines(items) == [("no newline", 1)]

    def test_invalid_utf8_is_escaped(self) -> None:
        """Invalid bytes are kept as backslash escapes."""
        parser = StreamParser("stderr", TOKEN)

        items = list(parser.feed(b"\xff\xfeok\n"))

        assert lines(items) == [("\\xff\\xfeok", None)]

    def test_long_line_is_split_in_pieces(self) -> None:
        """A line longer than MAX_LINE is split into continued pieces; nothing is lost."""
        parser = StreamParser("stdout", TOKEN)

        items = [i for i in parser.feed(b"a" * (MAX_LINE * 2 + 10) + b"\n") if isinstance(i, Line)]

        assert [len(i.text) for i in items] == [MAX_LINE, MAX_LINE, 10]
        assert [i.continued for i in items] == [True, True, False]

    def test_forged_marker_without_token_is_text(self) -> None:
        """A marker with the wrong token is ordinary output."""
        parser = StreamParser("stdout", TOKEN)
        forged = marker_prefix("ffffffffffffffff") + b"E\n"

        items = list(parser.feed(forged))

        assert len(lines(items)) == 1

    def test_close_flushes_last_partial_line(self) -> None:
        """At EOF a last line without newline is emitted."""
        parser = StreamParser("stdout", TOKEN)

        items = list(parser.feed(b"tail")) + list(parser.close())

        assert lines(items) == [("tail", None)]

    def test_log_record_marker(self) -> None:
        """A log marker becomes a Line with level, logger, time, flags and escaped text intact."""
        parser = StreamParser("stderr", TOKEN)
        record = logging.LogRecord("my.mod\tx", logging.WARNING, __file__, 1, "careful\nmulti\\line\ttab", None, None)
        record.created = 1.5
        body = _encode_log(record, record.getMessage(), {"k": [1, 2]})

        items = list(parser.feed(begin(2) + MARK + b"L" + body + b"\n"))

        log = [i for i in items if isinstance(i, Line)][0]
        assert (log.stream, log.level, log.logger, log.time) == ("log", "WARNING", "my.mod\tx", 1.5)
        assert log.text == "careful\nmulti\\line\ttab"
        assert log.custom_dimensions == {"k": [1, 2]}
        assert (log.system, log.entry_script) == (False, False)
        assert log.invocation == Invocation("run", 2, 1)
