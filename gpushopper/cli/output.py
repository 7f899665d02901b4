"""Everything the user sees: rich tables for people, one JSON document for scripts,
and the mapping from errors to a one-line message and an exit code (see CLI.md)."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from gpushopper.model.errors import GpuShopperError
from gpushopper.model.redact import redact

_mode = {"json": False, "verbose": False}


def json_requested() -> bool:
    return _mode["json"]


def _json_callback(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:
        _mode["json"] = True
    return value


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """The ``--json`` flag every command has."""
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        is_eager=True,
        callback=_json_callback,
        help="Print one JSON document on stdout (and nothing else there).",
    )(func)


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


def emit_json(data: Any) -> None:
    """Write ``data`` as the single JSON document on stdout."""
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


def console(stderr: bool = False) -> Any:
    """A rich Console that follows the terminal (no colour off a TTY or with NO_COLOR)."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    color = _color_ok(stream)
    return Console(
        file=stream,
        no_color=not color,
        color_system="auto" if color else None,
        highlight=False,
        soft_wrap=False,
        width=None if color else 200,
    )


# Terminal control characters (ESC starts colour, cursor and title sequences): a provider's
# text is shown with each as "?", never obeyed by the terminal.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def shown(value: Any) -> str:
    """A value as text for people: redacted, control characters other than tab and
    newline shown as ``?``."""
    return _CONTROL.sub("?", redact(str(value)))


def print_table(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    title: str | None = None,
    empty: str = "Nothing to show.",
) -> None:
    """A table on stdout for people; ``None`` shows as ``-``."""
    if not rows:
        info(empty)
        return
    from rich import box
    from rich.table import Table
    from rich.text import Text  # not markup: "[/]" in a provider's text once crashed the table

    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for column in columns:
        justify = "right" if column.endswith(("$/h", "GB", "#", "%", "USD", "$")) else "left"
        table.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for row in rows:
        table.add_row(*(Text("-" if cell is None else shown(cell)) for cell in row))
    _guarded(lambda: console().print(table))


def print_kv(pairs: Sequence[tuple[str, Any]]) -> None:
    """``key: value`` lines for one object."""
    width = max((len(k) for k, _ in pairs), default=0)
    lines = []
    for key, value in pairs:
        value_text = "-" if value is None or value == "" else value
        lines.append(f"{key.ljust(width)}  {shown(value_text)}")
    _guarded(lambda: click.echo("\n".join(lines)))


def info(message: str) -> None:
    """Progress and notes: stderr, so stdout stays clean for JSON and pipes."""
    _guarded(lambda: click.echo(shown(message), err=True))


def warn(message: str) -> None:
    _guarded(lambda: click.echo(shown(f"Warning: {message}"), err=True))


# -- errors --------------------------------------------------------------------------------
def _one_line(message: str) -> str:
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def fail(error_type: str, message: str, exit_code: int) -> int:
    """Report an error: one line on stderr, and the JSON error object with ``--json``."""
    _register_known_secrets()
    message = shown(_one_line(message))
    try:
        if json_requested():
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
    _mode["json"] = "--json" in args
    _mode["verbose"] = any(a in ("-v", "--verbose") for a in args[:3])
    loaded = sys.modules.get("gpushopper.core.interrupts")
    if loaded is not None:  # an earlier command in this process (tests): forget its signal
        loaded.reset()
    try:
        result = cli.main(args=args, prog_name="gpu-shopper", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code or 0)
    except click.exceptions.Abort as exc:
        # Click turns a KeyboardInterrupt (ours carry the signal) into Abort.
        return _interrupted(getattr(exc.__cause__, "signum", None))
    except click.UsageError as exc:
        hint = ""
        if exc.ctx is not None:
            hint = f" (see '{exc.ctx.command_path} --help')"
        return fail("usage", exc.format_message() + hint, 2)
    except click.ClickException as exc:
        return fail("usage", exc.format_message(), exc.exit_code or 1)
    except GpuShopperError as exc:
        return fail(exc.type, str(exc), exc.exit_code)
    except KeyboardInterrupt as exc:
        return _interrupted(getattr(exc, "signum", None))
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
        return fail("internal", f"{type(exc).__name__}: {exc}{hint}", 1)
    if isinstance(result, int):
        return result
    return 0


def _interrupted(signum: int | None) -> int:
    import signal

    from gpushopper.core import interrupts

    signum = signum or interrupts.last_signal() or signal.SIGINT
    return fail("interrupted", f"interrupted by {interrupts.signal_name(signum)}", 128 + signum)
