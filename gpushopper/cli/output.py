"""Everything the user sees: tables for people (plain text; rich draws them only in
colour), one JSON document for scripts, and the mapping from errors to a one-line
message and an exit code (see CLI.md)."""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import click

from gpushopper.model.errors import GpuShopperError
from gpushopper.model.lazyre import LazyPattern
from gpushopper.model.redact import redact

_mode = {"verbose": False}
# click >= 8.2 raises this for a group given no arguments (8.1 printed the help and exited 0).
_NO_ARGS_IS_HELP: type[Exception] = getattr(
    click.exceptions, "NoArgsIsHelpError", type("_NeverRaised", (Exception,), {})
)

# -- --json ----------------------------------------------------------------------------------
# Each command's own parsed ``--json`` (its ``as_json`` parameter) decides how it renders
# (:func:`render`), and how an error escaping it is written: json_option marks the error
# with that value on its way out, for run() to hand to fail(). Only an error no command
# marked (raised while parsing, before the command's options exist) falls back to a scan
# of our arguments.
_JSON_MARK = "_gpushopper_as_json"


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """The ``--json`` flag every command has (its ``as_json`` parameter). An error that
    escapes the command carries the parsed value, so it is reported as the command's
    ``--json`` asks, whatever else the command line holds."""

    @functools.wraps(func)
    def command(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BaseException as exc:
            setattr(exc, _JSON_MARK, bool(kwargs.get("as_json")))
            raise

    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="Print one JSON document on stdout (and nothing else there).",
    )(command)


def _json_asked_before_parsing(args: Sequence[str]) -> bool:
    """``--json`` among our own arguments, those before a ``--`` (after it they belong to a
    remote command: `sessions ssh ID -- tool --json`, `run -- python x.py --json`). Only
    for an error raised before any command's options exist (an unknown option, a bad
    value): click stops parsing at the first, so a later ``--json`` is never parsed."""
    ours = args[: args.index("--")] if "--" in args else args
    return "--json" in ours


def _error_as_json(exc: BaseException, asked_before_parsing: bool) -> bool:
    """How ``exc`` is reported: as the command it escaped from had its ``--json`` (click
    turns a KeyboardInterrupt into an Abort caused by it), else by the argument scan."""
    for raised in (exc, exc.__cause__):
        marked = getattr(raised, _JSON_MARK, None)
        if marked is not None:
            return bool(marked)
    return asked_before_parsing


def set_verbose(value: bool) -> None:
    _mode["verbose"] = value


def debug_enabled() -> bool:
    return _mode["verbose"] or os.environ.get("GPU_SHOPPER_DEBUG", "") not in ("", "0")


# -- writing -------------------------------------------------------------------------------
# Every write goes through _guarded: a closed pipe (``| head -3``) is handled as SIGPIPE
# (the streams go to /dev/null, and a command holding an instance destroys it), never as a
# crash halfway through a cleanup.
def _guarded(write: Callable[[], None]) -> None:
    try:
        write()
    except OSError as exc:
        from gpushopper.core.interrupts import output_lost

        output_lost(exc)


# -- the sandbox -----------------------------------------------------------------------------
# `eval "$(gpu-shopper sandbox start)"` exports GPU_SHOPPER_SANDBOX (the sandbox folder) with
# the provider URLs and keys; while it is set, everything printed says SANDBOX, so simulated
# prices are never mistaken for real ones. Read from the environment only: nothing of
# gpushopper.sandbox loads for it.
SANDBOX_ENV = "GPU_SHOPPER_SANDBOX"


def sandbox_active() -> bool:
    """Is this command pointed at the practice market (``sandbox start``'s exports)?"""
    return bool(os.environ.get(SANDBOX_ENV, "").strip())


def sandbox_banner() -> None:
    """The one stderr line a command run against the sandbox starts with."""
    if sandbox_active():
        _guarded(
            lambda: click.echo(
                "SANDBOX: simulated market on 127.0.0.1, prices and instances are not real "
                "('gpu-shopper sandbox stop' ends it)",
                err=True,
            )
        )


def _mark_sandbox(data: Any) -> Any:
    """``"sandbox": true`` on the document (an object), or on each object of a list; the
    caller's data is never changed. Outside the sandbox the data goes out as it is."""
    if not sandbox_active():
        return data
    if isinstance(data, dict):
        return {**data, "sandbox": True}
    if isinstance(data, list):
        return [{**row, "sandbox": True} if isinstance(row, dict) else row for row in data]
    return data


def emit_json(data: Any) -> None:
    """Write ``data`` as the single JSON document on stdout (marked in the sandbox)."""
    data = _mark_sandbox(data)
    text = _flat_rows_json(data)
    if text is None or redact(text) != text:
        import json

        from gpushopper.model.redact import redact_tree

        # Redact the values, not the text: the document stays valid JSON whatever a secret
        # is. The fast path above is taken only when no secret appears in any form.
        plain = json.loads(json.dumps(data, default=str))
        text = json.dumps(redact_tree(plain), indent=2, ensure_ascii=False)

    def write() -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    _guarded(write)


def flush_output() -> None:
    """Flush stdout and stderr now, so a closed pipe shows while it can still be acted on."""

    def flush() -> None:
        sys.stdout.flush()
        sys.stderr.flush()

    _guarded(flush)


def _flat_rows_json(data: Any) -> str | None:
    """``json.dumps(data, indent=2, ensure_ascii=False)``, byte for byte, for a list of flat
    objects (offers, orphans), built with the C string encoder: ``indent`` sends json to
    its pure-Python encoder, 4x slower over a few hundred offers. None for any other shape."""
    if type(data) is not list or not data:
        return None
    from json.encoder import encode_basestring as enc

    rows = []
    prefixes: dict[str, str] = {}  # the same keys in every row: encode each once
    for row in data:
        if type(row) is not dict or not row:
            return None
        parts = []
        for key, value in row.items():
            kind = type(value)
            prefix = prefixes.get(key)
            if prefix is None:
                if type(key) is not str:
                    return None
                prefix = prefixes[key] = f"    {enc(key)}: "
            if value is None:
                text = "null"
            elif value is True:
                text = "true"
            elif value is False:
                text = "false"
            elif kind is str:
                text = enc(value)
            elif kind is int:
                text = int.__repr__(value)
            elif kind is float and value - value == 0:  # finite (json spells NaN its own way)
                text = float.__repr__(value)
            else:
                return None
            parts.append(prefix + text)
        rows.append("  {\n" + ",\n".join(parts) + "\n  }")
    return "[\n" + ",\n".join(rows) + "\n]"


def _color_ok(stream: Any) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def terminal_width(stream: Any = None) -> int:
    """The width tables are laid out for: ``COLUMNS`` when set, else the width of the
    terminal behind stdout, stderr or stdin (``| less`` still has one), else 80."""
    text = os.environ.get("COLUMNS", "").strip()
    if text.isdigit() and int(text) > 0:
        return int(text)
    for candidate in (stream or sys.stdout, sys.stderr, sys.stdin):
        try:
            columns = os.get_terminal_size(candidate.fileno()).columns
        except (AttributeError, OSError, ValueError):
            continue
        if columns > 0:
            return columns
    return 80


def console(stderr: bool = False, file: Any = None) -> Any:
    """A rich Console that follows the terminal (no colour off a TTY or with NO_COLOR) and
    is as wide as :func:`terminal_width` says, piped or not."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    color = _color_ok(stream)
    return Console(
        file=file or stream,
        no_color=not color,
        color_system="auto" if color else None,
        force_terminal=color,
        highlight=False,
        soft_wrap=False,
        width=terminal_width(stream),
    )


# Terminal control characters (ESC starts colour, cursor and title sequences): a provider's
# text is shown with each as "?", never obeyed by the terminal.
_CONTROL = LazyPattern(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def shown(value: Any) -> str:
    """A value as text for people: redacted, control characters other than tab and
    newline shown as ``?``."""
    return _CONTROL.sub("?", redact(str(value)))


def number_text(value: float) -> str:
    """A float as people read it: ``0.383``, ``24.6``, ``12``; a tiny one keeps its digits
    (``0.000049``), never ``0.38333333333333336`` or ``4.9e-05``."""
    if value != value or value in (float("inf"), float("-inf")):
        return str(value)
    places = 3 if value == 0 or abs(value) >= 0.001 else 6
    text = f"{value:.{places}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def cell_text(value: Any) -> str:
    """One value of a table or ``key: value`` line, never a Python repr: ``None`` is
    ``-``, booleans are yes/no, numbers as :func:`number_text`, lists joined with ", "."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return number_text(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        return ", ".join(cell_text(item) for item in items) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={cell_text(v)}" for k, v in value.items()) or "-"
    return str(value)


GAP = 2  # between two columns: the right padding and the (blank) rule of SIMPLE_HEAD


def column_widths(
    headers: Sequence[str], cells: Sequence[Sequence[str]], words: Sequence[bool], width: int
) -> list[int]:
    """Each column's width so the table fits ``width``: every column as wide as its
    widest cell while that fits; else headers of several words wrap, then columns of
    several words narrow (widest first) down to their longest word, so ids and numbers
    stay whole; only when even that is too wide are the widest columns cut (ellipsis),
    the first column (the row's id) last."""

    def longest(texts: Sequence[str], split: bool) -> int:
        parts = [p for t in texts for p in (t.split() if split else t.splitlines())]
        return max((len(p) for p in parts), default=1)

    natural = [max(len(h), longest(c, False)) for h, c in zip(headers, cells, strict=True)]
    # A header of several words may wrap ("DISK / GB"); a cell of one word never does.
    least = [
        max(longest([h], True), longest(c, not w))
        for h, c, w in zip(headers, cells, words, strict=True)
    ]
    room = max(len(headers), width - GAP * (len(headers) - 1))
    cell_widths = [longest(c, False) for c in cells]
    headers_wrapped = [max(a, b) for a, b in zip(least, cell_widths, strict=True)]
    out = list(natural)
    # First headers wrap ("DISK / GB"), then cells at their spaces, then the cut: of the
    # other columns before the first (the id a row is known by).
    cut_others = [out[0]] + [1] * (len(out) - 1)
    for floor in (headers_wrapped, least, cut_others, [1] * len(out)):
        while sum(out) > room:
            shrinkable = [i for i in range(len(out)) if out[i] > floor[i]]
            if not shrinkable:
                break
            widest = max(shrinkable, key=lambda i: out[i])
            out[widest] -= 1
    return out


# A line's end made of padding and colour codes: the codes stay, the spaces go.
_TRAILING = LazyPattern(r"(?:[ \t]|\x1b\[[0-9;]*m)+$", re.MULTILINE)
_SGR = LazyPattern(r"\x1b\[[0-9;]*m")


def _strip_trailing(text: str) -> str:
    return _TRAILING.sub(lambda m: "".join(_SGR.findall(m.group(0))), text)


def print_table(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    title: str | None = None,
    empty: str = "Nothing to show.",
    total: Sequence[Any] | None = None,
) -> None:
    """A table on stdout for people, as wide as the terminal (:func:`terminal_width`),
    with no trailing spaces. A column whose cells are single words (ids, numbers,
    states) is never broken inside a word; columns of several words wrap at spaces.
    ``total`` is a last row under the others (a sum), aligned with their columns."""
    if not rows:
        info(empty)
        return
    texts = [[shown(cell_text(cell)) for cell in row] for row in rows]
    totals = None if total is None else [shown(cell_text(cell)) for cell in total]
    cells = [
        [row[i] for row in texts] + ([totals[i]] if totals else []) for i in range(len(columns))
    ]
    words = [all(" " not in c and "\n" not in c for c in column) for column in cells]
    width = terminal_width(sys.stdout)
    layout = _Layout(
        headers=list(columns),
        rows=texts,
        totals=totals,
        widths=column_widths(columns, cells, words, width),
        words=words,
        right=[c.endswith(("$/h", "GB", "#", "%", "USD", "$")) for c in columns],
        title=None if title is None else shown(title),
    )
    render = _plain_table if _plain_will_do(layout, width) else _rich_table

    def write() -> None:
        text = render(layout)
        sys.stdout.write(text.rstrip("\n") + "\n")
        sys.stdout.flush()

    _guarded(write)


class _Layout:
    """A table decided: its texts and each column's width, justification and overflow
    (a column of single words is cut with an ellipsis, never folded). A plain class: a
    NamedTuple or a dataclass costs every command's start-up, not only a table's."""

    __slots__ = ("headers", "rows", "totals", "widths", "words", "right", "title")

    def __init__(
        self,
        *,
        headers: list[str],
        rows: list[list[str]],
        totals: list[str] | None,
        widths: list[int],
        words: list[bool],
        right: list[bool],
        title: str | None,
    ) -> None:
        self.headers, self.rows, self.totals = headers, rows, totals
        self.widths, self.words, self.right, self.title = widths, words, right, title

    def __repr__(self) -> str:
        return f"_Layout({', '.join(f'{k}={getattr(self, k)!r}' for k in self.__slots__)})"


# Printable ASCII and newlines: one character is one terminal cell, as len() counts it.
# (Patterns of the table writer are compiled on first use, from re's cache: not at start-up.)
_ONE_CELL_EACH = r"[\x20-\x7e\n]*"


def _plain_will_do(layout: _Layout, width: int) -> bool:
    """Can the table be written as plain text, the same characters rich would print?
    Rich is still needed for colour (a terminal without NO_COLOR), for characters whose
    width is not one cell (wide, combining, tabs), for its ASCII box on a stream that
    cannot write "─", and for its own squeeze of a table too wide even for
    :func:`column_widths` (fewer columns of room than columns)."""
    if _color_ok(sys.stdout):
        return False
    encoding = (getattr(sys.stdout, "encoding", None) or "utf-8").lower()
    if not encoding.startswith("utf"):
        return False
    if sum(layout.widths) + GAP * (len(layout.widths) - 1) > width:
        return False
    texts = [*layout.headers, layout.title or ""]
    texts += [cell for row in layout.rows for cell in row] + (layout.totals or [])
    one_cell = re.compile(_ONE_CELL_EACH)
    return all(one_cell.fullmatch(text) for text in texts)


def _rich_table(layout: _Layout) -> str:
    """The table rendered by rich on :func:`console` (colour when it is wanted)."""
    from rich import box
    from rich.table import Table
    from rich.text import Text  # not markup: "[/]" in a provider's text once crashed the table

    totals = layout.totals
    table = Table(
        title=None if layout.title is None else Text(layout.title, style="table.title"),
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1, 0, 0),
        show_footer=totals is not None,
    )
    for index, header in enumerate(layout.headers):
        table.add_column(
            Text(header),
            footer=Text(totals[index]) if totals else "",
            justify="right" if layout.right[index] else "left",
            width=layout.widths[index],
            overflow="ellipsis" if layout.words[index] else "fold",
        )
    for row in layout.rows:
        table.add_row(*(Text(cell) for cell in row))
    out = console()
    with out.capture() as captured:
        out.print(table)
    return _strip_trailing(captured.get())


# rich's Table with box SIMPLE_HEAD, no edge, one space of padding on the right of each
# column but the last, and rich's wrapping (rich/_wrap.py divide_line, Text.wrap), for
# text of one-cell characters without colour. tests/test_tables.py compares the two.
_WORD = r"\s*\S+\s*"
_END_SPACE = r"\s+$"


def _breaks(line: str, width: int, fold: bool) -> list[int]:
    """Where ``line`` is broken to fit ``width``: at the start of a word that does not fit
    (a word takes the spaces after it); a word longer than a line is folded into pieces
    ``width`` long, or (not ``fold``) left whole on its own line to be cut."""
    breaks: list[int] = []
    offset = 0
    for match in re.finditer(_WORD, line):
        start, word = match.start(), match.group()
        length = len(word.rstrip())
        if width - offset >= length:
            offset += len(word)
        elif length > width:
            if fold:
                pieces = [word[i : i + width] for i in range(0, len(word), width)]
                for piece in pieces:
                    if start:
                        breaks.append(start)
                    start += len(piece)
                offset = len(pieces[-1])
            else:
                if start:
                    breaks.append(start)
                offset = len(word)
        elif offset and start:
            breaks.append(start)
            offset = len(word)
    return breaks


def _cut(text: str, width: int, fold: bool) -> str:
    if len(text) <= width:
        return text
    return text[:width] if fold else text[: width - 1] + "…"


def _wrapped(text: str, width: int, justify: str, fold: bool) -> list[str]:
    """``text`` as lines exactly ``width`` long (before the trailing spaces go)."""
    lines = []
    for line in text.split("\n"):
        bounds = [0, *_breaks(line, width, fold), len(line)]
        for begin, stop in zip(bounds, bounds[1:], strict=False):
            piece = line[begin:stop]
            excess = len(piece) - width
            space = re.search(_END_SPACE, piece) if excess > 0 else None
            if space:
                piece = piece[: len(piece) - min(len(space.group()), excess)]
            if justify == "left":
                piece = _cut(piece, width, fold).ljust(width)
            else:
                piece = _cut(piece.rstrip(), width, fold)
                pad = width - len(piece)
                left = pad // 2 if justify == "center" else pad
                piece = " " * left + piece + " " * (pad - left)
            lines.append(piece)
    return lines


def _plain_table(layout: _Layout) -> str:
    """The table as rich prints it without colour, written directly: no import of rich,
    and a tenth of its time for a few dozen rows."""
    widths = layout.widths
    justify = ["right" if right else "left" for right in layout.right]
    fold = [not words for words in layout.words]
    out: list[str] = []

    def add_row(cells: Sequence[str], bottom: bool = False) -> None:
        blocks = [_wrapped(cell, widths[i], justify[i], fold[i]) for i, cell in enumerate(cells)]
        height = max(len(block) for block in blocks)
        for i, block in enumerate(blocks):
            blank = [" " * widths[i]] * (height - len(block))
            blocks[i] = blank + block if bottom else block + blank
        out.extend((" " * GAP).join(parts).rstrip() for parts in zip(*blocks, strict=True))

    table_width = sum(widths) + GAP * (len(widths) - 1)
    if layout.title is not None:
        out.extend(line.rstrip() for line in _wrapped(layout.title, table_width, "center", True))
    add_row(layout.headers, bottom=True)
    out.append("─" * table_width)
    for row in layout.rows:
        add_row(row)
    if layout.totals is not None:
        out.append("")  # SIMPLE_HEAD's foot rule is blank
        add_row(layout.totals)
    return "\n".join(out) + "\n"


def print_kv(pairs: Sequence[tuple[str, Any]]) -> None:
    """``key: value`` lines for one object."""
    width = max((len(k) for k, _ in pairs), default=0)
    lines = []
    for key, value in pairs:
        value_text = "-" if value == "" else cell_text(value)
        lines.append(f"{key.ljust(width)}  {shown(value_text)}".rstrip())
    _guarded(lambda: click.echo("\n".join(lines)))


# -- the renderer ------------------------------------------------------------------------------
class Table:
    """How a command's data is drawn for people as a table (:func:`print_table`): its
    columns, and its rows made from the data only when the table is drawn: ``row`` makes
    one from each item of the data (a list), ``rows`` makes them all from the data."""

    __slots__ = ("columns", "rows", "title", "empty", "total")

    def __init__(
        self,
        columns: Sequence[str],
        row: Callable[[Any], Sequence[Any]] | None = None,
        *,
        rows: Callable[[Any], Sequence[Sequence[Any]]] | None = None,
        title: str | None = None,
        empty: str = "Nothing to show.",
        total: Sequence[Any] | None = None,
    ) -> None:
        if rows is None:
            if row is None:
                raise TypeError("Table takes row (one per item) or rows (all at once)")
            each = row
            rows = lambda data: [each(item) for item in data]  # noqa: E731
        elif row is not None:
            raise TypeError("Table takes row (one per item) or rows (all at once), not both")
        self.columns, self.rows = columns, rows
        self.title, self.empty, self.total = title, empty, total

    def draw(self, data: Any) -> None:
        print_table(
            self.columns, self.rows(data), title=self.title, empty=self.empty, total=self.total
        )


def render(
    as_json: bool,
    data: Any,
    *,
    table: Table | None = None,
    pairs: Callable[[Any], Iterable[tuple[str, Any]]] | None = None,
    text: Callable[[Any], object] | None = None,
) -> None:
    """Write a command's result: the one place that chooses between JSON and people.

    ``as_json`` is the command's own parsed ``--json``: then ``data`` is the one JSON
    document on stdout (:func:`emit_json`: marked in the sandbox, redacted). Otherwise
    ``data`` is drawn for people in exactly one way: a :class:`Table`, ``key: value``
    ``pairs`` made from it (:func:`print_kv`), or ``text``, a function given the data
    that writes it (several blocks, a line, notes on stderr)."""
    if sum(way is not None for way in (table, pairs, text)) != 1:
        raise TypeError("render takes exactly one of table, pairs or text")
    if as_json:
        emit_json(data)
    elif table is not None:
        table.draw(data)
    elif pairs is not None:
        print_kv(list(pairs(data)))
    elif text is not None:
        text(data)


def info(message: str) -> None:
    """Progress and notes: stderr, so stdout stays clean for JSON and pipes."""
    _guarded(lambda: click.echo(shown(message), err=True))


def warn(message: str) -> None:
    _guarded(lambda: click.echo(shown(f"Warning: {message}"), err=True))


# -- errors --------------------------------------------------------------------------------
def _one_line(message: str) -> str:
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def fail(error_type: str, message: str, exit_code: int, *, as_json: bool) -> int:
    """Report an error: one line on stderr, and with ``as_json`` (see :func:`run`) the JSON
    error object on stdout."""
    _register_known_secrets()
    message = shown(_one_line(message))
    try:
        if as_json:
            emit_json({"error": {"type": error_type, "message": message}})
        click.echo(f"Error: {message}", err=True)
    except (OSError, KeyboardInterrupt):  # nobody is listening any more: the code still counts
        from gpushopper.core.interrupts import silence_std_streams

        silence_std_streams()
    return exit_code


def _register_known_secrets() -> None:
    """Errors can come from code that never loaded settings: learn the secrets now."""
    try:
        from gpushopper.state.config import Settings
        from gpushopper.state.paths import resolve_paths

        Settings(paths=resolve_paths()).register_secrets()
    except Exception:  # never let redaction set-up hide the real error
        pass


def setup_logging() -> None:
    """Debug logging on stderr, redacted; without -v nothing is set up (fast start)."""
    if not debug_enabled():
        return
    import logging

    level = logging.DEBUG if debug_enabled() else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)

    class _Redacting(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:  # noqa: A003
            return redact(super().format(record))

    handler.setFormatter(_Redacting("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("gpushopper")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def run(
    cli: click.Command, argv: Sequence[str] | None = None, *, reraise_internal: bool = False
) -> int:
    """Run the Click tree; turn every outcome into an exit code (128 + N after signal N).

    ``reraise_internal`` (tests) lets a bug propagate instead of becoming exit 1, so a test
    that expects a provider's exit 1 cannot pass on a crash."""
    args = list(sys.argv[1:] if argv is None else argv)
    # Ours are the arguments before a "--"; after it they belong to a remote command.
    ours = args[: args.index("--")] if "--" in args else args
    _mode["verbose"] = any(a in ("-v", "--verbose") for a in ours[:3])
    # An error is written as JSON when the command it escaped from was given --json (its
    # parsed option, carried by the error: see json_option); one raised before any
    # command's options exist (a parse error) has only this scan of our arguments.
    json_scan = _json_asked_before_parsing(args)
    loaded = sys.modules.get("gpushopper.core.interrupts")
    if loaded is not None:  # an earlier command in this process (tests): forget its signal
        loaded.reset()
    try:
        result = cli.main(args=args, prog_name="gpu-shopper", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code or 0)
    except click.exceptions.Abort as exc:
        # Click turns a KeyboardInterrupt (ours carry the signal) into Abort.
        return _interrupted(
            getattr(exc.__cause__, "signum", None), as_json=_error_as_json(exc, json_scan)
        )
    except _NO_ARGS_IS_HELP as exc:
        # A bare `gpu-shopper` or group (`config`, `transfer`): the help, as asked, exit 0.
        help_ctx = getattr(exc, "ctx", None)
        help_text = help_ctx.get_help() if help_ctx is not None else ""
        _guarded(lambda: click.echo(help_text))
        return 0
    except click.UsageError as exc:
        hint = ""
        if exc.ctx is not None:
            hint = f" (see '{exc.ctx.command_path} --help')"
        return fail("usage", exc.format_message() + hint, 2, as_json=_error_as_json(exc, json_scan))
    except click.ClickException as exc:
        message = exc.format_message()
        return fail("usage", message, exc.exit_code or 1, as_json=_error_as_json(exc, json_scan))
    except GpuShopperError as exc:
        return fail(exc.type, str(exc), exc.exit_code, as_json=_error_as_json(exc, json_scan))
    except KeyboardInterrupt as exc:
        return _interrupted(getattr(exc, "signum", None), as_json=_error_as_json(exc, json_scan))
    except BrokenPipeError:
        import signal

        from gpushopper.core import interrupts

        interrupts.silence_std_streams()
        return 128 + (interrupts.last_signal() or signal.SIGPIPE)
    except Exception as exc:  # the last line of defence: no traceback unless asked
        if reraise_internal:
            raise
        if debug_enabled():
            import traceback

            traceback.print_exc()
        hint = "" if debug_enabled() else " (run with -v or GPU_SHOPPER_DEBUG=1 for details)"
        message = f"{type(exc).__name__}: {exc}{hint}"
        return fail("internal", message, 1, as_json=_error_as_json(exc, json_scan))
    if isinstance(result, int):
        return result
    return 0


def _interrupted(signum: int | None, *, as_json: bool) -> int:
    import signal

    from gpushopper.core import interrupts

    signum = signum or interrupts.last_signal() or signal.SIGINT
    message = f"interrupted by {interrupts.signal_name(signum)}"
    return fail("interrupted", message, 128 + signum, as_json=as_json)
