"""Benchmark records: results, runs and schedules, in their own locked JSON file.

The same discipline as the state file (``StateStore``): a file lock shared by every
process, atomic fsynced replaces, a damaged file reported and backed up, never reset.
A separate file so that 10,000 stored results never slow a session command down.

Next to it, ``benchmarks.index.json``: one flat row per result (what the queries rank by),
rewritten under the lock after every write and tagged with the identity (inode, size,
mtime) of the file it was made from. Queries read only the index (a tenth of the size);
an index that does not match the file, or is unreadable, is rebuilt from the file, so it
can never be the one source of any figure.

Layout (``schema_version`` 1)::

    {"schema_version": 1,
     "results":   {RESULT_ID: {...}},   # one measurement of one offer
     "runs":      {RUN_ID: {...}},      # one `benchmark run`, its budget and entries
     "schedules": {NAME: {...}}}        # `benchmark schedule add`
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

from gpushopper.state.store import StateStore, _Damaged

if TYPE_CHECKING:
    from typing import TypedDict

    from gpushopper.model.jsontypes import JSONMapping, JSONObject, JSONValue

    #: A value of a flat row: a plain JSON scalar, or None for anything else.
    Scalar = str | int | float | bool | None

    class Layout(TypedDict):
        """The index header (``_layout_of`` checked every field): where each part is."""

        version: int
        of: list[int] | None
        keys: list[str]
        n: int
        size: int
        columns: list[list[int]]  # [start, length] of each ROW_KEYS column
        offsets: list[int]  # [start, length] of the row offsets line
        rows: int  # where the row lines start


BENCH_SCHEMA_VERSION = 1
SECTIONS = ("results", "runs", "schedules")
INDEX_VERSION = 4
# The flat row of a result the queries use: (key, where in the record). Values that are not
# plain JSON scalars become None.
ROW_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("id", ("id",)),
    ("workload", ("workload",)),
    ("workload_name", ("workload_name",)),
    ("workload_version", ("workload_version",)),
    ("metric", ("metric",)),
    ("value", ("value",)),
    ("unit", ("unit",)),
    ("higher_is_better", ("higher_is_better",)),
    ("valid", ("valid",)),
    ("gpu_name", ("offer", "gpu_name")),
    ("gpu_count", ("offer", "gpu_count")),
    ("provider", ("offer", "provider")),
    ("offer_id", ("offer", "offer_id")),
    ("machine_id", ("offer", "machine_id")),
    ("price_per_hour", ("offer", "price_per_hour")),
    ("measured_gpu", ("hardware", "gpu_name")),
    ("measured_count", ("hardware", "gpu_count")),
    ("device", ("hardware", "device")),
    ("peak_vram_mb", ("extra_metrics", "peak_vram_mb")),
    ("cost_usd", ("cost_usd",)),
    ("source", ("source",)),
    ("run_id", ("run_id",)),
    ("created_at", ("created_at",)),
)
ROW_KEYS = tuple(key for key, _ in ROW_FIELDS)
_SCALARS = (str, int, float, bool)
_PLAIN = {str, int, float, bool, type(None)}


def result_row(key: str, record: JSONMapping) -> list[Scalar]:
    """A result's flat row, in ROW_KEYS order (its id is the key it is stored under)."""
    row: list[Scalar] = []
    for name, path in ROW_FIELDS:
        value: JSONValue = record
        for step in path:
            value = value.get(step) if isinstance(value, dict) else None
        if name == "id":
            value = key
        row.append(value if isinstance(value, _SCALARS) else None)
    return row


def empty_bench() -> JSONObject:
    return {"schema_version": BENCH_SCHEMA_VERSION, **{name: {} for name in SECTIONS}}


class ResultTable:
    """Results as columns: ``col(KEY)`` is one list per ROW_KEYS key, read and parsed on
    first use (a column that is not a list of ``n`` values reads as all None); ``row(i)``
    reads only result ``i``'s own line.

    ``read(start, length)`` returns bytes of the index body; ``layout`` says where each
    column, the row offsets and the row lines are in it.
    """

    def __init__(
        self, n: int, read: Callable[[int, int], bytes] | None = None, layout: Layout | None = None
    ) -> None:
        self.n = n
        self._read = read
        self._layout = layout
        self._offsets: list[JSONValue] | None = None
        self._parsed: dict[str, list[JSONValue]] = {}

    def col(self, key: str) -> list[JSONValue]:
        column = self._parsed.get(key)
        if column is None:
            if self._read is not None and self._layout is not None:
                start, length = self._layout["columns"][ROW_KEYS.index(key)]
                try:
                    column = json.loads(self._read(start, length))
                except ValueError:
                    column = None
            if not isinstance(column, list) or len(column) != self.n:
                column = [None] * self.n
            self._parsed[key] = column
        return column

    def _row_offsets(self) -> list[JSONValue]:
        if self._offsets is None:
            offsets: JSONValue = None
            if self._read is not None and self._layout is not None:
                start, length = self._layout["offsets"]
                try:
                    offsets = json.loads(self._read(start, length))
                except ValueError:
                    pass
            ok = isinstance(offsets, list) and len(offsets) == self.n + 1
            sound: list[JSONValue] = offsets if ok else [None] * (self.n + 1)
            self._offsets = sound
        return self._offsets

    def _line(self, i: int) -> JSONValue:
        """Result ``i``'s own row line, parsed; None when the index has no sound one."""
        if self._read is None or self._layout is None:
            return None
        offsets = self._row_offsets()
        begin, end = offsets[i], offsets[i + 1]
        if type(begin) is not int or type(end) is not int or not 0 <= begin < end:
            return None
        try:
            return json.loads(self._read(self._layout["rows"] + begin, end - begin - 1))
        except ValueError:
            return None

    def _all_lines(self) -> list[JSONValue] | None:
        """Every row line, read as one piece and parsed by one ``json.loads``; None unless
        the piece is exactly the lines the offsets name, one JSON value each."""
        if self._read is None or self._layout is None or self.n == 0:
            return None
        offsets = self._row_offsets()
        size = offsets[-1]
        if offsets[0] != 0 or type(size) is not int or size <= 0:
            return None
        blob = self._read(self._layout["rows"], size)
        ends = [m.end() for m in re.finditer(b"\n", blob)]
        if len(blob) != size or ends != offsets[1:]:
            return None
        try:  # a JSON text never holds a raw newline: each one ends a line
            lines = json.loads(b"[" + blob[:-1].replace(b"\n", b",") + b"]")
        except ValueError:
            return None
        return lines if len(lines) == self.n else None

    def row(self, i: int, values: JSONValue = None) -> JSONObject:
        """Result ``i``'s flat row: each ROW_KEYS value a JSON scalar or None (typed as a
        JSON object: the index is a file, and readers still check each value's type)."""
        if values is None:
            values = self._line(i)
        if not isinstance(values, list) or len(values) != len(ROW_KEYS):
            values = [self.col(key)[i] for key in ROW_KEYS]
        if set(map(type, values)) <= _PLAIN:  # as JSON parses them: no value to drop
            return dict(zip(ROW_KEYS, values, strict=True))
        return {
            k: (v if isinstance(v, _SCALARS) else None)
            for k, v in zip(ROW_KEYS, values, strict=True)
        }

    def rows(self, indices: Sequence[int]) -> list[JSONObject]:
        """``row(i)`` for each of ``indices``. Many are read at once (``list --limit 0``
        over 10,000 results: one read and one parse, not 10,000 of each)."""
        lines = self._all_lines() if len(indices) > 64 else None
        if lines is None:
            return [self.row(i) for i in indices]
        return [self.row(i, lines[i]) for i in indices]

    @classmethod
    def of_rows(cls, rows: list[JSONObject]) -> ResultTable:
        """A table of flat-row dicts (tests, small callers)."""
        table = cls(len(rows))
        table._parsed = {key: [row.get(key) for row in rows] for key in ROW_KEYS}
        return table


def _spans_ok(value: JSONValue, count: int) -> bool:
    return (
        isinstance(value, list)
        and len(value) == count
        and all(
            isinstance(pair, list)
            and len(pair) == 2
            and all(type(x) is int and x >= 0 for x in pair)
            for pair in value
        )
    )


def _layout_of(header: JSONValue, identity: list[int] | None, body_size: int) -> Layout | None:
    """The header's layout when the index is of this file, this version and complete."""
    if not (
        isinstance(header, dict)
        and header.get("version") == INDEX_VERSION
        and header.get("of") == identity
        and header.get("keys") == list(ROW_KEYS)
        and type(header.get("n")) is int
        and header.get("size") == body_size
        and _spans_ok(header.get("columns"), len(ROW_KEYS))
        and _spans_ok([header.get("offsets")], 1)
        and type(header.get("rows")) is int
    ):
        return None
    return cast("Layout", header)  # each field checked just above


def _table_of_text(text: str, identity: list[int] | None) -> ResultTable:
    head, _, body = text.partition("\n")
    data = body.encode()
    layout = _layout_of(json.loads(head), identity, len(data))
    assert layout is not None  # made just now
    return ResultTable(layout["n"], lambda start, length: data[start : start + length], layout)


class BenchStore(StateStore):
    """``paths.data_dir / "benchmarks.json"``; every section is an object keyed by id."""

    what = "benchmark file"
    schema_version = BENCH_SCHEMA_VERSION

    def _empty(self) -> JSONObject:
        return empty_bench()

    def _upgrade(self, data: JSONObject) -> JSONObject:
        version = data.get("schema_version", BENCH_SCHEMA_VERSION)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise _Damaged(f"invalid schema_version {version!r}")
        if version > BENCH_SCHEMA_VERSION:
            from gpushopper.model.errors import StateError

            raise StateError(
                f"{self.what} {self.path} has schema version {version}, newer than this "
                f"gpu-shopper understands ({BENCH_SCHEMA_VERSION}); upgrade gpu-shopper"
            )
        for name in SECTIONS:
            data.setdefault(name, {})
            if not isinstance(data[name], dict):
                raise _Damaged(f"{name!r} is {type(data[name]).__name__}, not an object")
        return data

    # -- the query index ----------------------------------------------------------------------
    @property
    def index_path(self) -> Path:
        return self.path.with_name(self.path.stem + ".index.json")

    def identity(self) -> list[int] | None:
        """(inode, size, mtime) of the file, None without one: every write replaces the
        file, so an unchanged identity means unchanged records."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return [st.st_ino, st.st_size, st.st_mtime_ns]

    def _index_text(self, data: JSONObject, identity: list[int] | None) -> str:
        """The index: a header line with the layout, then one JSON array per ROW_KEYS
        column (a query reads and parses only the columns it ranks by), the row offsets,
        and each result's row on its own line (only the rows shown are read)."""
        rows = [
            result_row(key, record)
            for key, record in data["results"].items()
            if isinstance(record, dict)
        ]
        compact = (",", ":")  # and ASCII only: a character is a byte
        columns = [
            json.dumps([row[i] for row in rows], separators=compact) for i in range(len(ROW_KEYS))
        ]
        row_lines = [json.dumps(row, separators=compact) for row in rows]
        offsets, at = [0], 0
        for line in row_lines:
            at += len(line) + 1
            offsets.append(at)
        offsets_line = json.dumps(offsets, separators=compact)
        spans, pos = [], 0
        for line in [*columns, offsets_line]:
            spans.append([pos, len(line)])
            pos += len(line) + 1
        body = "\n".join([*columns, offsets_line, *row_lines]) + "\n"
        header = {
            "version": INDEX_VERSION,
            "of": identity,
            "keys": list(ROW_KEYS),
            "n": len(rows),
            "size": len(body),
            "columns": spans[:-1],
            "offsets": spans[-1],
            "rows": pos,
        }
        return json.dumps(header, separators=compact) + "\n" + body

    def _written(self, data: JSONObject) -> None:
        from gpushopper.state.atomic import atomic_write_text

        atomic_write_text(self.index_path, self._index_text(data, self.identity()), stale_after=0)

    def table(self) -> ResultTable:
        """Every result's flat row (ROW_KEYS) as columns, from the index when it matches
        the file; else rebuilt from the file (and the index rewritten, best effort)."""
        identity = self.identity()
        if identity is None:
            return ResultTable(0)
        try:
            table = self._open_index(identity)
            if table is not None:
                return table
        except (OSError, ValueError):
            pass  # missing, stale, damaged or a link: the file itself decides
        data = self.read()  # a damaged benchmark file is reported here, never hidden
        text = self._index_text(data, identity)
        try:
            from gpushopper.state.atomic import atomic_write_text

            atomic_write_text(self.index_path, text)
        except OSError:
            pass  # a read-only home: the next reader rebuilds it again
        return _table_of_text(text, identity)

    def _open_index(self, identity: list[int]) -> ResultTable | None:
        """The index, opened for reading by parts (None when it is not this file's)."""
        import weakref

        from gpushopper.state.fs import open_nofollow

        fd = open_nofollow(self.index_path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            head = os.pread(fd, 1 << 16, 0)
            end = head.index(b"\n")
            layout = _layout_of(json.loads(head[:end]), identity, size - end - 1)
        except BaseException:
            os.close(fd)
            raise
        if layout is None:
            os.close(fd)
            return None
        base = end + 1

        def read(start: int, length: int) -> bytes:
            return os.pread(fd, length, base + start)

        table = ResultTable(layout["n"], read, layout)
        weakref.finalize(table, os.close, fd)
        return table

    def rows(self) -> list[JSONObject]:
        """Every result's flat row as a dict (for a few results; queries use table())."""
        table = self.table()
        return table.rows(range(table.n))

    def install_id(self) -> str:  # pragma: no cover - the state file owns the install id
        raise NotImplementedError("the install id lives in the state file")

    # -- sections ---------------------------------------------------------------------------
    def section(self, name: str) -> dict[str, JSONObject]:
        """A snapshot of one section (records that are not objects are skipped)."""
        items = self.read()[name]
        return {k: v for k, v in items.items() if isinstance(v, dict)}

    def put(self, name: str, key: str, record: JSONObject) -> None:
        with self.transaction() as data:
            data[name][key] = record

    def get(self, name: str, key: str) -> JSONObject | None:
        record = self.read()[name].get(key)
        return record if isinstance(record, dict) else None

    def delete(self, name: str, key: str) -> bool:
        with self.transaction() as data:
            return data[name].pop(key, None) is not None

    def new_id(self, name: str, prefix: str) -> str:
        """``PREFIX-<6 hex>`` unused in section ``name`` (e.g. ``r-1a2b3c``, ``b-...``)."""
        existing = self.read()[name]
        while True:
            candidate = f"{prefix}-{os.urandom(3).hex()}"
            if candidate not in existing:
                return candidate

    # -- shortcuts --------------------------------------------------------------------------
    def results(self) -> dict[str, JSONObject]:
        return self.section("results")

    def runs(self) -> dict[str, JSONObject]:
        return self.section("runs")

    def schedules(self) -> dict[str, JSONObject]:
        return self.section("schedules")
