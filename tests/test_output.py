"""The output contract: one JSON document, one-line errors, exit codes, no tracebacks."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from gpushopper.cli import COMMANDS
from gpushopper.model.errors import (
    AuthFailed,
    ConfigError,
    NeedsAttention,
    ProviderError,
    StateError,
    UsageError,
)
from tests.fakes.tool import run_tool


@pytest.fixture
def boom_command(monkeypatch):
    """Register a throwaway command that raises what the test tells it to: its --json is
    the real json_option, as every command's, beside a --label that takes a value."""
    from gpushopper.cli.output import json_option

    holder: dict[str, BaseException] = {}

    @click.command("boom")
    @click.option("--label")
    @json_option
    def boom(label: str | None, as_json: bool) -> None:
        raise holder["exc"]

    monkeypatch.setitem(COMMANDS, "boom", ("tests.test_output", "_BOOM", "test"))
    monkeypatch.setattr(sys.modules[__name__], "_BOOM", boom, raising=False)
    return holder


@pytest.mark.internal_errors
@pytest.mark.parametrize(
    "exc, code, etype",
    [
        (UsageError("bad input"), 2, "usage"),
        (ConfigError("bad setting"), 2, "config"),
        (ProviderError("vastai", "no_such_ask"), 1, "provider"),
        (AuthFailed("vastai", "Invalid user key"), 1, "auth"),
        (StateError("state file broken"), 1, "state"),
        (NeedsAttention("3 orphans left"), 3, "needs_attention"),
        (KeyboardInterrupt(), 130, "interrupted"),
        (RuntimeError("surprise"), 1, "internal"),
    ],
)
def test_errors_map_to_exit_codes_and_json(gs, boom_command, exc, code, etype):
    boom_command["exc"] = exc
    result = gs("boom --json")
    assert result.exit_code == code
    assert result.json() == {"error": {"type": etype, "message": result.json()["error"]["message"]}}
    assert result.stderr.strip().startswith("Error: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_without_json_stdout_stays_empty_on_error(gs, boom_command):
    boom_command["exc"] = ProviderError("tensordock", "Hostnode unavailable")
    result = gs("boom")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.strip() == "Error: tensordock: Hostnode unavailable"


@pytest.mark.internal_errors
def test_traceback_only_when_asked(gs, boom_command, monkeypatch):
    boom_command["exc"] = RuntimeError("surprise")
    assert "Traceback" not in gs("boom").stderr
    assert "GPU_SHOPPER_DEBUG" in gs("boom").stderr
    assert "Traceback" in gs("-v boom").stderr
    monkeypatch.setenv("GPU_SHOPPER_DEBUG", "1")
    assert "Traceback" in gs("boom").stderr


@pytest.mark.internal_errors
def test_secret_in_exception_is_redacted(gs, boom_command, monkeypatch):
    monkeypatch.setenv("VASTAI_API_KEY", "leaky-key-0123456789")
    boom_command["exc"] = RuntimeError("request to /x?api_key=leaky-key-0123456789 failed")
    result = gs("boom --json")
    assert "leaky-key-0123456789" not in result.stdout + result.stderr
    assert "****6789" in result.stderr


def test_usage_errors_are_one_line_exit_2(gs):
    result = gs("config frobnicate")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert gs("no-such-command --json").json()["error"]["type"] == "usage"


def test_version_and_module_entry_point():
    from gpushopper import __version__

    out = run_tool("--version", check=True)
    assert __version__ in out.stdout


def test_every_command_has_help_with_example(gs):
    for name in COMMANDS:
        result = gs([name, "--help"])
        assert result.exit_code == 0, name
        assert "Example" in result.stdout, f"{name} --help has no example"


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["config", "path"], ["sessions", "list", "--json"], ["costs", "--json"]],
)
def test_heavy_modules_not_imported_for_light_commands(argv, isolated_home):
    code = (
        "import sys; from gpushopper.cli import cli; "
        f"from gpushopper.cli.output import run; run(cli, {argv!r}); "
        "print('LOADED:' + ','.join(m for m in ('requests','rich','paramiko') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "LOADED:", out.stderr


def test_a_cached_inventory_json_loads_no_http_nor_table_library(vast, gs, isolated_home):
    """The cache hit answers without a request: it must not pay for requests or rich."""
    assert gs("inventory --json --provider vastai").exit_code == 0  # fills the cache
    asked = len(vast.requests)
    argv = ["inventory", "--json", "--provider", "vastai"]
    code = (
        "import sys; from gpushopper.cli import cli; "
        f"from gpushopper.cli.output import run; code = run(cli, {argv!r}); "
        "print('LOADED:' + ','.join(m for m in ('requests','rich','paramiko',"
        " 'gpushopper.model.session') if m in sys.modules) + f' {code}')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    # ...nor for the session model: the search reads offer health, never a session
    assert out.stdout.strip().splitlines()[-1] == "LOADED: 0", out.stderr
    assert len(vast.requests) == asked


def test_flat_rows_are_written_exactly_as_json_dumps_would():
    import json
    import random

    from gpushopper.cli.output import _flat_rows_json

    rng = random.Random(4)
    values = [None, True, False, 0, -7, 2**70, 0.1, -1e-9, 1e300, 12.8, "", "RTX 4090",
              'quote " back \\ slash', "tab\tnew\nline", "caf\u00e9 \u2603 \U0001f600", "\x00\x1f"]  # fmt: skip
    for _ in range(200):
        rows = [
            {rng.choice(["id", "gpu_name", "é", "a\nb"]) + str(i): rng.choice(values)
             for i in range(rng.randint(1, 6))}
            for _ in range(rng.randint(1, 5))
        ]  # fmt: skip
        assert _flat_rows_json(rows) == json.dumps(rows, indent=2, ensure_ascii=False)
    for other in ([], [{}], {"a": 1}, [{"a": [1]}], [{"a": float("nan")}], [1, 2], [{"a": {}}]):
        assert _flat_rows_json(other) is None


def test_a_crash_fails_the_test_instead_of_exiting_1(gs, boom_command):
    """gs re-raises internal errors: an exit-1 assertion cannot pass on a bug."""
    boom_command["exc"] = RuntimeError("a bug")
    with pytest.raises(RuntimeError, match="a bug"):
        gs("boom --json")
    boom_command["exc"] = ProviderError("vastai", "no_such_ask")
    assert gs("boom --json").exit_code == 1  # a provider's error is still exit 1


def test_provider_text_is_shown_never_obeyed(capsys):
    """A provider's strings reach tables, key-value lines and messages: rich markup is
    text (``[/]`` crashed every table) and terminal control sequences are made visible."""
    from gpushopper.cli.output import info, print_kv, print_table, warn

    hostile = "RTX [/] [bold]4090[/bold] \x1b]0;owned\x07 \x1b[2J\r"
    print_table(["GPU", "#"], [(hostile, 1)])
    print_kv([("gpu_name", hostile)])
    info(hostile)
    warn(hostile)
    out, err = capsys.readouterr()
    for text in (out, err):
        assert "\x1b" not in text and "\x07" not in text and "\r" not in text
    assert out.count("RTX [/] [bold]4090[/bold] ?]0;owned? ?[2J?") == 2
    assert err.count("RTX [/] [bold]4090[/bold] ?]0;owned? ?[2J?") == 2


def test_benchmark_status_loads_no_http_ssh_nor_table_library(gs, isolated_home):
    """``benchmark status RUN --json`` reads one file: none of the heavy modules."""
    argv = ["benchmark", "status", "b-000000", "--json"]
    code = (
        "import sys; from gpushopper.cli import cli; "
        f"from gpushopper.cli.output import run; code = run(cli, {argv!r}); "
        "print('LOADED:' + ','.join(m for m in ('requests','rich','paramiko') if m in sys.modules)"
        " + f' {code}')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "LOADED: 2", out.stderr


# -- the renderer and the JSON mode (issue 11) ---------------------------------------------------
def test_render_writes_the_json_document_or_draws_for_people_never_both(capsys, monkeypatch):
    """render's two paths: with as_json exactly emit_json's document (nothing drawn, the
    rows never even made); without, exactly what print_table / print_kv / the text
    function write, and no JSON."""
    import json

    from gpushopper.cli.output import Table, emit_json, print_kv, print_table, render

    monkeypatch.setenv("COLUMNS", "60")
    rows = [
        {"id": "a1", "gpu": "RTX 4090", "price": 0.4},
        {"id": "b2", "gpu": "A100", "price": 1.5},
    ]
    made: list[str] = []

    def row(r):
        made.append(r["id"])
        return (r["id"], r["gpu"], r["price"])

    table = Table(["ID", "GPU", "$/h"], row, title="Offers", empty="None.", total=("", "", 1.9))
    render(True, rows, table=table)
    render(True, rows[0], pairs=dict.items)
    render(True, rows, text=lambda data: made.append("text"))
    out, err = capsys.readouterr()
    assert made == [] and err == ""
    emit_json(rows)
    emit_json(rows[0])
    emit_json(rows)
    assert out == capsys.readouterr().out
    assert json.loads(out.split("\n]\n")[0] + "\n]") == rows

    render(False, rows, table=table)
    render(False, [], table=table)
    render(False, rows[0], pairs=dict.items)
    render(False, rows, text=lambda data: print(f"{len(data)} rows"))
    people = capsys.readouterr()
    assert made == ["a1", "b2"]
    print_table(["ID", "GPU", "$/h"], [("a1", "RTX 4090", 0.4), ("b2", "A100", 1.5)],
                title="Offers", empty="None.", total=("", "", 1.9))  # fmt: skip
    print_table(["ID"], [], empty="None.")
    print_kv(list(rows[0].items()))
    print("2 rows")
    assert people == capsys.readouterr()
    assert "{" not in people.out and people.err == "None.\n"


def test_render_takes_exactly_one_way_to_draw():
    from gpushopper.cli.output import Table, render

    with pytest.raises(TypeError):
        render(False, [], table=Table(["A"], tuple), text=print)
    with pytest.raises(TypeError):
        render(True, [])
    with pytest.raises(TypeError):
        Table(["A"], tuple, rows=list)


def test_rendering_follows_the_commands_own_parsed_json_in_the_sandbox_too(gs, monkeypatch):
    monkeypatch.setenv("GPU_SHOPPER_SANDBOX", "/nowhere")
    doc = gs("config path --json").json()
    assert doc["sandbox"] is True and doc["config_file"].endswith("config.toml")
    plain = gs("config path")
    assert plain.stdout == doc["config_file"] + "\n"


@pytest.mark.internal_errors
@pytest.mark.parametrize(
    "exc, etype",
    [
        (UsageError("bad"), "usage"),
        (KeyboardInterrupt(), "interrupted"),
        (RuntimeError("x"), "internal"),
    ],
)
def test_an_error_is_written_as_the_command_that_raised_it_parsed_its_json(
    gs, boom_command, exc, etype
):
    """The command's own --json decides its error document: not a '--json' that is the
    value of another option (the old argv scan took it for ours), nor one after '--'."""
    boom_command["exc"] = exc
    assert gs("boom --json").json()["error"]["type"] == etype
    for argv in ("boom --label --json", "boom", "boom -- --json"):
        result = gs(argv)
        error = result.stderr.strip()  # (click closes a ^C echo with a blank line first)
        assert result.stdout == "" and error.startswith("Error: ") and "\n" not in error, argv


@pytest.mark.parametrize(
    "argv",
    [
        "inventory --no-such-flag --json",
        "sessions show abc --no-such-flag --json",
        "costs summary --month 2026-13-99 --nope --json",
        "sessions list --tail x --json",
        "benchmark list --limit -1 --json",
    ],
)
def test_a_json_after_an_unknown_option_or_bad_value_still_gets_the_json_error(gs, argv):
    """Click stops at the first bad option, before --json is parsed: the one case left
    to the scan of our arguments, and it still yields the error object (CLI.md)."""
    result = gs(argv)
    assert result.exit_code == 2, result.stderr
    assert result.json()["error"]["type"] == "usage"
    assert len(result.stderr.splitlines()) == 1


def test_a_json_given_only_to_a_remote_command_never_switches_our_output(gs, isolated_home):
    """After '--' every word is the remote command's: --json there neither renders our
    result as JSON nor turns our error into a JSON document."""
    added = gs("benchmark schedule add n --cron '@daily' --max-budget 5 -- --workload w --jsonx")
    assert added.exit_code == 0 and added.stdout == "", added.stderr
    assert "Schedule n:" in added.stderr
    updated = gs("benchmark schedule update n --max-budget 6 -- --workload w --json")
    assert updated.exit_code == 2 and updated.stdout == ""  # RUN-ARGS never hold --json
    assert "--json" in updated.stderr
    for argv in (
        "sessions ssh abc123 -- tool --json",
        "benchmark schedule update nope --cron '@daily' -- --workload w --json",
    ):
        result = gs(argv)
        assert result.exit_code == 2 and result.stdout == "", argv
        assert result.stderr.startswith("Error: ") and len(result.stderr.splitlines()) == 1


def test_commands_write_their_result_through_render_only():
    """One renderer: no command module writes its JSON document itself (an ``if as_json:
    emit_json(...) else: print_table(...)`` of its own); each hands it to render."""
    from pathlib import Path

    import gpushopper.cli

    folder = Path(gpushopper.cli.__file__).parent
    offenders = [
        path.name
        for path in sorted(folder.glob("*.py"))
        if path.name != "output.py" and "emit_json" in path.read_text(encoding="utf-8")
    ]
    assert offenders == []
