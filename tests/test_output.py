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
    """Register a throwaway command that raises what the test tells it to."""
    holder: dict[str, BaseException] = {}

    @click.command("boom")
    @click.option("--json", "as_json", is_flag=True)
    def boom(as_json: bool) -> None:
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
        "print('LOADED:' + ','.join(m for m in ('requests','rich','paramiko') if m in sys.modules)"
        " + f' {code}')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
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
