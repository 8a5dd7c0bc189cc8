"""Blocks of log records reach every sink as the lines they expand to would (store, files, driver log)."""

from __future__ import annotations

import io
import logging
import random
from pathlib import Path

from pipeobs.capture import _encode_log, marker_prefix
from pipeobs.record.driverlog import (
    DriverLog,
    DriverLogSink,
    add_invocation,
    add_utc_time,
    render_columns,
    utc_stamp,
    utc_stamps,
)
from pipeobs.record.files import RunFiles
from pipeobs.record.pipeline import Pipeline
from pipeobs.record.rundir import RunDir
from pipeobs.record.store import Store
from pipeobs.records import IDLE, Line, LineBlock, RecordBlock, expand
from pipeobs.streams import StreamParser

TOKEN = "0123456789abcdef"
MARK = marker_prefix(TOKEN)


def record(rng: random.Random, created: float) -> bytes:
    """A log record marker of a random shape: levels, loggers (pipeobs's own among them), dimensions, flags, escapes."""
    name = rng.choice(["user.mod", "user.mod", "pipeobs.worker", "tab\tlogger"])
    message = rng.choice(["scored %d", "multi\nline %d", "back\\slash\t%d", "caf\u00e9 %d"]) % rng.randrange(100)
    entry = logging.LogRecord(name, rng.choice([logging.INFO, logging.WARNING]), __file__, 1, message, None, None)
    entry.created = created
    entry.pipeobs_entry_script = rng.random() < 0.3
    dims = rng.choice([None, None, {"k": rng.randrange(9), "s": "q\"\t"}])
    sent_to = rng.choice([(), (), ("azure",), ("azure", "otlp")])
    return MARK + b"L" + _encode_log(entry, message, dims, sent_to) + b"\n"


def parsed_items(seed: int) -> list[object]:
    """The lines of a stderr stream of mostly log records, read in random pieces, as the driver's sinks get them."""
    rng = random.Random(seed)
    parts, created = [], 1_795_948_165.0
    for mb in range(6):
        parts.append(MARK + b"B" + f"run {mb} 1 {'ab' * 16} {'cd' * 8}".encode() + b"\n")
        for i in range(rng.choice([1, 40, 400])):
            created += rng.random() * 0.002
            parts.append(record(rng, created) if rng.random() < 0.9 else b"plain %d\n" % i)
        parts.append(MARK + b"E\n")
    stream, parser, items, pos = b"".join(parts), StreamParser("stderr", TOKEN, "0/process002"), [], 0
    while pos < len(stream):
        step = rng.choice([50, 4096, 65536])
        items += [i for i in parser.feed(stream[pos : pos + step]) if isinstance(i, Line | LineBlock | RecordBlock)]
        pos += step
    return items


def written(root: Path, items: list[object], together: bool) -> tuple[list[tuple[object, ...]], dict[str, str], str]:
    """What the store, the per-process files and the driver log hold after ``items``, given together or line by line."""
    root.mkdir()
    store, files, handle = Store(root / "pipeobs.db", "s"), RunFiles(RunDir(root)), io.StringIO()
    pipeline = Pipeline([store, files, DriverLogSink(lambda: handle)])
    if together:
        pipeline.lines(items)  # type: ignore[arg-type]
    else:
        for line in expand(items):
            pipeline.lines([line])
    pipeline.flush()
    rows = [tuple(row) for row in store.conn.execute("SELECT * FROM log_lines ORDER BY id")]
    texts = {str(p.relative_to(root)): p.read_text() for p in (root / "logs").rglob("process*") if p.is_file()}
    pipeline.close()
    return rows, texts, handle.getvalue()


class TestRecordBlocks:
    def test_the_sinks_write_a_block_as_its_lines(self, tmp_path: Path) -> None:
        """log_lines rows (every column), the per-process files and the driver log are the same whether the
        records come as blocks or one Line at a time."""
        items = parsed_items(3)

        together = written(tmp_path / "together", items, together=True)
        one_by_one = written(tmp_path / "one_by_one", items, together=False)

        assert any(isinstance(i, RecordBlock) for i in items)
        assert together == one_by_one
        rows, texts, driver_log = together
        assert {row[4] for row in rows} == {"log", "stderr"}
        assert set(texts) == {"logs/sys/node/0/process002.txt", "logs/user/stdout/0/process002.stdout.txt",
                              "logs/user/stderr/0/process002.stderr.txt", "logs/user/entry_script_log/0/process002.log.txt"}
        assert len(driver_log.splitlines()) == sum(text.count("\n") for text in texts.values())

    def test_utc_stamps_are_utc_stamp_of_each_time(self) -> None:
        """The stamps of a block's times are those of stamping each (milliseconds truncated as utc_stamp does)."""
        rng = random.Random(1)
        times = [repr(1_795_948_165 + rng.random() * 5) for _ in range(2000)]
        times += ["1795948165.825", "1795948165.999", "1795948166.0", "1795948165.0009999"]

        assert utc_stamps(times) == [utc_stamp(float(t)) for t in times]

    def test_other_processors_render_each_record(self) -> None:
        """With processors of its own, the driver log renders a block's records one by one, through them."""
        chain = [lambda *a, step=step: step(*a) for step in (add_utc_time, add_invocation, render_columns)]
        direct, through = io.StringIO(), io.StringIO()
        block = next(i for i in parsed_items(5) if isinstance(i, RecordBlock))

        for log in (DriverLog(direct), DriverLog(through, chain)):
            log.write_records(block.times, block.worker, block.invocation, block.levels, block.messages)

        assert direct.getvalue() == through.getvalue()
        assert direct.getvalue().count(" 0/process002 mb=") == len(block.times)


def test_a_record_keeps_its_exact_time_in_the_store(tmp_path: Path) -> None:
    """Each record's time is stored as the float the worker wrote, to the last bit (among them times whose text
    SQLite converts an ulp off)."""
    rng = random.Random(7)
    times = ("1796016342.928599", "1712345679.036394", *(repr(1.7e9 + rng.random() * 1e8) for _ in range(5000)))
    block = RecordBlock(IDLE, times, ("INFO",) * len(times), ("x",) * len(times), ("m",) * len(times))
    store = Store(tmp_path / "store.db", "step")
    store.add_lines([block])
    store.flush()

    stored = [row[0] for row in store.conn.execute("SELECT time FROM log_lines ORDER BY id")]
    assert stored == [float(text) for text in times]
