"""Captured lines queued for the store in groups, and inserted by statements that SQLite expands.

A run of lines of one stream, invocation and worker is one queued group row: the shared values once, the
texts together. One ``INSERT ... SELECT ... FROM json_each(?)`` expands it inside SQLite; a row bound from
Python per line costs about three times as much. The table and its columns are those of ``log_lines``
(:mod:`pipeobs.record.store`).
"""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections.abc import Iterable
from operator import itemgetter
from typing import Any

from pipeobs.records import Line, LineBlock, RecordBlock

LOG_LINE_COLUMNS = ("time", "step_id", "worker", "stream", "phase", "mini_batch_id", "attempt", "level", "logger",
                    "text", "trace_id", "span_id", "attributes")
_ROW_SQL = f"INSERT INTO log_lines ({', '.join(LOG_LINE_COLUMNS)}) VALUES ({', '.join('?' * len(LOG_LINE_COLUMNS))})"

# A group of lines (queue_lines): the shared values once, then a JSON array whose elements are the texts of
# lines with the group's time, level and logger, or [time, level, logger, text(, attributes JSON)] for the others.
_LINES_SQL = (
    f"INSERT INTO log_lines ({', '.join(LOG_LINE_COLUMNS)}) SELECT "
    "CASE type WHEN 'array' THEN json_extract(value, '$[0]') ELSE ?1 END, ?2, ?3, ?4, ?5, ?6, ?7, "
    "CASE type WHEN 'array' THEN json_extract(value, '$[1]') ELSE ?8 END, "
    "CASE type WHEN 'array' THEN json_extract(value, '$[2]') ELSE ?9 END, "
    "CASE type WHEN 'array' THEN json_extract(value, '$[3]') ELSE value END, ?10, ?11, "
    "CASE type WHEN 'array' THEN json_extract(value, '$[4]') END FROM json_each(?12) ORDER BY key"
)
# A group of log records (queue_lines of a RecordBlock): the shared values once, then a JSON array of
# [time, text(, attributes JSON)].
_RECORDS_SQL = (
    f"INSERT INTO log_lines ({', '.join(LOG_LINE_COLUMNS)}) SELECT json_extract(value, '$[0]'), ?1, ?2, 'log', "
    "?3, ?4, ?5, ?6, ?7, json_extract(value, '$[1]'), ?8, ?9, json_extract(value, '$[2]') FROM json_each(?10) ORDER BY key"
)
_GROUP_SQL = {12: _LINES_SQL, 10: _RECORDS_SQL}  # by the length of a queued group row


def insert_lines(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """The queued lines in order: runs of group rows by their statement, single rows (one value per column)
    as they are."""
    for size, run in itertools.groupby(rows, key=len):
        sql = _GROUP_SQL.get(size)
        if sql is not None:
            conn.executemany(sql, [(*row[:-1], json.dumps(row[-1], ensure_ascii=False)) for row in run])
        else:
            conn.executemany(_ROW_SQL, run)


def _record_groups(block: RecordBlock, step_id: str) -> list[tuple[Any, ...]]:
    """A block's records as group rows of :data:`_RECORDS_SQL`, one per run of records of one level and logger."""
    inv = block.invocation
    head, tail = (step_id, block.worker, inv.phase, inv.mini_batch_id, inv.attempt), (inv.trace_id, inv.span_id)
    # The times as JSON numbers: SQLite converts those exactly, its conversion of text to REAL can miss by an ulp.
    times = map(float, block.times)
    if block.dimensions is None:
        elements: Iterable[tuple[Any, ...]] = zip(times, block.messages, strict=True)
    else:
        dimensions = [json.dumps(dims) if dims else None for dims in block.dimensions]
        elements = zip(times, block.messages, dimensions, strict=True)
    levels, loggers = block.levels, block.loggers
    if levels.count(levels[0]) == len(levels) and loggers.count(loggers[0]) == len(loggers):
        return [(*head, levels[0], loggers[0], *tail, list(elements))]
    return [(*head, level, logger, *tail, [element for _, element in run])
            for (level, logger), run in itertools.groupby(zip(zip(levels, loggers, strict=True), elements, strict=True),
                                                          key=itemgetter(0))]


def queue_lines(queue: list[tuple[Any, ...]], step_id: str, lines: Iterable[Line | LineBlock | RecordBlock]) -> None:
    """Lines in order. A run of lines of one stream, invocation and worker is queued as one group row,
    inserted by one statement that expands the group in SQLite (:data:`_LINES_SQL`): a row from Python
    per line costs about three times as much. A text holding NUL, which SQLite's JSON cuts, is queued
    alone (a :class:`LineBlock` or :class:`RecordBlock` never holds one)."""
    group: list[Any] = []
    key: tuple[Any, ...] = ()
    head: tuple[Any, ...] = ()
    for line in lines:
        inv = line.invocation
        if isinstance(line, LineBlock):
            if (line.stream, inv, line.worker) != key or (line.time, None, None) != head:
                key, head, group = (line.stream, inv, line.worker), (line.time, None, None), []
                queue.append((line.time, step_id, line.worker, line.stream, inv.phase, inv.mini_batch_id,
                              inv.attempt, None, None, inv.trace_id, inv.span_id, group))
            group += line.texts
            continue
        if isinstance(line, RecordBlock):
            queue += _record_groups(line, step_id)
            key = ()  # a later line starts a group of its own, after these
            continue
        text, dims = line.text, line.custom_dimensions
        if "\x00" in text:
            key = ()
            queue.append((line.time, step_id, line.worker, line.stream, inv.phase, inv.mini_batch_id, inv.attempt,
                          line.level, line.logger, text, inv.trace_id, inv.span_id, json.dumps(dims) if dims else None))
            continue
        if (line.stream, inv, line.worker) != key:
            key, head, group = (line.stream, inv, line.worker), (line.time, line.level, line.logger), []
            queue.append((line.time, step_id, line.worker, line.stream, inv.phase, inv.mini_batch_id, inv.attempt,
                          line.level, line.logger, inv.trace_id, inv.span_id, group))
        if dims:
            group.append((line.time, line.level, line.logger, text, json.dumps(dims)))
        elif (line.time, line.level, line.logger) != head:
            group.append((line.time, line.level, line.logger, text))
        else:
            group.append(text)
