"""The first hour (issue 14): help with no arguments, "n" at the prompt, SANDBOX marking,
the safety-net notes of provision and doctor."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gpushopper.cli import COMMANDS
from tests.fakes.tool import run_tool

# Groups whose bare name is a list (the contract: `sessions [list]`, `jobs [list]`, ...).
LISTING_GROUPS = {"sessions", "jobs", "templates", "inventory", "costs"}


def _groups() -> list[str]:
    import click

    from gpushopper.cli import cli

    ctx = click.Context(cli)
    return [
        name
        for name in sorted(COMMANDS)
        if isinstance(cli.get_command(ctx, name), click.Group) and name not in LISTING_GROUPS
    ]


def test_no_arguments_prints_the_help_and_exits_0(gs):
    result = gs([])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("Usage: gpu-shopper [OPTIONS] COMMAND")
    assert "\nCommands:\n" in result.stdout  # the help as printed, not squashed onto one line
    assert "Error" not in result.stderr


@pytest.mark.parametrize("group", _groups())
def test_a_bare_group_prints_its_help_and_exits_0(gs, group):
    assert {"config", "transfer", "sandbox"} <= set(_groups())
    result = gs([group])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"Usage: gpu-shopper {group} ")
    assert "\nCommands:\n" in result.stdout and "Error" not in result.stderr


def test_a_bare_group_as_installed_exits_0():
    out = run_tool("config")
    assert out.returncode == 0 and out.stdout.startswith("Usage: gpu-shopper config")
    assert out.stderr == ""


def _creates(vast) -> list[dict]:
    return [r for r in vast.requests if r["method"] == "PUT" and "/asks/" in r["path"]]


# -- "n" at the rent prompt -----------------------------------------------------------------
@pytest.fixture
def at_a_terminal(monkeypatch):
    """Both ends are a person (the prompt's own test: stdin and stderr are terminals)."""
    monkeypatch.setattr("gpushopper.cli.provision.prompting", lambda: True)


def test_no_at_the_provision_prompt_rents_nothing_and_exits_0(gs, vast, at_a_terminal):
    result = gs("provision --provider vastai --gpu 4090 --hours 1h", input="n\n")
    assert result.exit_code == 0, result.stderr
    assert "Rent vastai:" in result.stderr and "Nothing rented." in result.stderr
    assert "Error" not in result.stderr and "Aborted" not in result.stderr
    assert vast.live_instances() == [] and not _creates(vast)
    assert gs("sessions list --all --json").json() == []


def test_yes_at_the_provision_prompt_rents(gs, vast, at_a_terminal):
    result = gs("provision --provider vastai --gpu 4090 --hours 1h", input="y\n")
    assert result.exit_code == 0, result.stderr
    assert len(vast.live_instances()) == 1
    (session,) = gs("sessions list --json").json()
    assert gs(f"sessions done {session['id']}").exit_code == 0


def test_no_at_the_run_prompt_rents_nothing_and_exits_0(gs, vast, at_a_terminal, tmp_path):
    argv = ["run", "--provider", "vastai", "--out", str(tmp_path / "o"), "--", "true"]
    result = gs(argv, input="n\n")
    assert result.exit_code == 0, result.stderr
    assert "Nothing rented." in result.stderr and "Error" not in result.stderr
    assert vast.live_instances() == [] and not _creates(vast)
    (job,) = gs("jobs list --all --json").json()
    assert job["status"] == "cancelled" and "nothing rented" in job["error"]


def test_end_of_input_at_the_prompt_is_an_interruption_not_a_yes(gs, vast, at_a_terminal):
    result = gs("provision --provider vastai --gpu 4090 --hours 1h", input="")
    assert result.exit_code == 130
    assert vast.live_instances() == []


@pytest.mark.parametrize("flag", ["--json", "--yes"])
def test_json_or_yes_never_asks_even_at_a_terminal(gs, vast, at_a_terminal, flag):
    """--json is for scripts and --yes says yes: neither stops at the rent prompt (a script
    has no one to answer; end of input there would be an interruption, exit 130)."""
    result = gs(f"provision --provider vastai --gpu 4090 --hours 1h --no-verify {flag}", input="")
    assert result.exit_code == 0, result.stderr
    assert "Rent vastai:" not in result.stderr
    (session,) = gs("sessions list --json").json()
    if flag == "--json":
        assert result.json()["id"] == session["id"]  # the one document on stdout
    assert gs(f"sessions done {session['id']}").exit_code == 0
    assert vast.live_instances() == []


def test_run_with_json_never_asks_at_a_terminal(gs, vast, at_a_terminal, tmp_path):
    argv = ["run", "--provider", "vastai", "--out", str(tmp_path / "o"), "--json", "--", "true"]
    result = gs(argv, input="")
    assert "Rent vastai:" not in result.stderr
    assert result.exit_code == 0, result.stderr
    assert result.json()["exit_code"] == 0
    assert vast.live_instances() == []


# -- SANDBOX: the banner and the JSON key --------------------------------------------------
@pytest.fixture
def pointed_at_sandbox(monkeypatch, tmp_path):
    monkeypatch.setenv("GPU_SHOPPER_SANDBOX", str(tmp_path / "sandbox"))


@pytest.mark.parametrize(
    "args",
    [
        "sessions list --json",
        "config path --json",
        "offer-health --json",
        "sessions show nope --json",
    ],
)
def test_every_json_document_says_sandbox_and_the_banner_is_printed_once(
    gs, pointed_at_sandbox, args
):
    result = gs(args)
    doc = result.json()
    rows = doc if isinstance(doc, list) else [doc]
    assert all(row["sandbox"] is True for row in rows)
    assert result.stderr.count("SANDBOX") == 1
    assert result.stderr.startswith("SANDBOX: ")


def test_each_row_of_a_json_list_says_sandbox(gs, vast, pointed_at_sandbox):
    rows = gs("inventory --provider vastai --limit 3 --json").json()
    assert len(rows) == 3 and all(row["sandbox"] is True for row in rows)
    table = gs("inventory --provider vastai --limit 3")
    assert table.stderr.count("SANDBOX") == 1 and "sandbox" not in table.stdout


def test_outside_the_sandbox_no_key_and_no_banner(gs, vast):
    result = gs("inventory --provider vastai --limit 3 --json")
    assert all("sandbox" not in row for row in result.json())
    assert "SANDBOX" not in result.stderr
    assert "sandbox" not in gs("config path --json").json()


def test_the_sandbox_key_never_changes_the_callers_data(pointed_at_sandbox, capsys):
    from gpushopper.cli.output import emit_json

    rows = [{"id": "a"}]
    emit_json(rows)
    assert rows == [{"id": "a"}]
    assert json.loads(capsys.readouterr().out) == [{"id": "a", "sandbox": True}]


def test_the_sandbox_banner_needs_no_sandbox_module(tmp_path, isolated_home):
    env = {**os.environ, "GPU_SHOPPER_SANDBOX": str(tmp_path)}
    code = (
        "import sys; from gpushopper.cli import cli; from gpushopper.cli.output import run\n"
        "run(cli, ['sessions', 'list', '--json'])\n"
        "print('LOADED:' + ','.join(m for m in sys.modules if m.startswith('gpushopper.sandbox')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.stdout.strip().splitlines()[-1] == "LOADED:", out.stdout + out.stderr
    assert "SANDBOX" in out.stderr


# -- is anything enforcing the deadlines? ----------------------------------------------------
def test_provision_says_watch_is_not_running_and_how_to_start_it(gs, vast):
    result = gs("provision --provider vastai --gpu 4090 --hours 1h --yes")
    assert result.exit_code == 0, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "watch is not running for this home" in last and "gpu-shopper watch" in last
    (session,) = gs("sessions list --json").json()
    gs(f"sessions done {session['id']}")


def test_provision_names_the_running_watch(gs, vast, isolated_home):
    from gpushopper.state.pidlock import PidLock

    lock = PidLock(isolated_home / "watch.pid")
    lock.acquire()  # as a running watch holds it
    try:
        result = gs("provision --provider vastai --gpu 4090 --hours 1h --yes --json")
        assert f"watch is running for this home (pid {os.getpid()})" in result.stderr
        doctor = {c["check"]: c for c in gs("doctor --json").json()["checks"]}
        assert doctor["safety net"]["status"] == "ok"
        assert str(os.getpid()) in doctor["safety net"]["detail"]
    finally:
        lock.release()
    assert "watch is not running" in gs("doctor").stdout
    gs(f"sessions done {result.json()['id']}")


def _fake_crontab(tmp_path, monkeypatch, script: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    crontab = bin_dir / "crontab"
    crontab.write_text("#!/bin/sh\n" + script)
    crontab.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_doctor_accepts_a_cron_sweep(gs, tmp_path, monkeypatch):
    line = "*/15 * * * * $HOME/.venv/bin/gpu-shopper cleanup-orphans --yes --json"
    _fake_crontab(tmp_path, monkeypatch, f"echo '# cleanup-orphans, commented'\necho '{line}'\n")
    checks = {c["check"]: c for c in gs("doctor --json").json()["checks"]}
    assert checks["safety net"] == {
        "check": "safety net",
        "status": "ok",
        "detail": f"cron sweep: {line}",
    }


@pytest.mark.parametrize(
    "script, says",
    [
        ("echo 'no crontab for me' >&2; exit 1\n", "no crontab line"),
        ("echo '# gpu-shopper cleanup-orphans --yes'\n", "no crontab line"),
        ("exec sleep 30\n", "not available"),  # hangs: doctor gives up, never fails on it
        (None, "not available"),
    ],
)
def test_doctor_warns_without_watch_or_cron_and_never_fails_on_it(
    gs, vast, tmp_path, monkeypatch, script, says
):
    if script is None:
        monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no crontab command at all
    else:
        _fake_crontab(tmp_path, monkeypatch, script)
    monkeypatch.setattr("gpushopper.core.doctor.CRONTAB_TIMEOUT_S", 0.5)
    result = gs("doctor --json")
    checks = {c["check"]: c for c in result.json()["checks"]}
    assert checks["safety net"]["status"] == "warn"
    assert says in checks["safety net"]["detail"]
    assert "gpu-shopper watch" in checks["safety net"]["detail"]


# -- exit codes agree: an unknown or ended session, offer or template is bad input (2) ------
SESSION_COMMANDS = [
    "sessions show {id}",
    "sessions done {id}",
    "sessions delete {id}",
    "shutdown {id}",
    "sessions extend {id} --hours 1h",
    "sessions diagnostics {id}",
    "sessions ssh {id} -- true",
    "transfer upload {id} {file} /tmp/",
    "transfer download {id} /etc/hostname {dir}",
    "costs --session {id}",
]
# An ended session is still a record to show, cost or end again (ending is idempotent);
# every command that needs a live one refuses it like an unknown one.
ENDED_IS_FINE = {"sessions show", "sessions done", "sessions delete", "shutdown", "costs"}


def _argv(template: str, session_id: str, tmp_path) -> list[str]:
    src = tmp_path / "f.txt"
    src.write_text("x")
    import shlex

    return [part.format(id=session_id, file=src, dir=tmp_path) for part in shlex.split(template)]


@pytest.mark.parametrize("template", SESSION_COMMANDS)
def test_an_unknown_session_is_exit_2_for_every_command(gs, tmp_path, template):
    result = gs(_argv(template, "abc123", tmp_path) + ["--json"] * ("ssh" not in template))
    assert result.exit_code == 2, (template, result.stderr)
    assert "no session 'abc123'" in result.stderr
    if "ssh" not in template:
        assert result.json()["error"]["type"] == "not_found"


@pytest.fixture
def ended_session(gs, vast) -> str:
    session = gs("provision --provider vastai --gpu 4090 --hours 1h --yes --json").json()
    assert gs(f"sessions done {session['id']}").exit_code == 0
    return session["id"]


def test_an_ended_session_is_exit_2_for_every_command_that_needs_a_live_one(
    gs, ended_session, tmp_path
):
    for template in SESSION_COMMANDS:
        result = gs(_argv(template, ended_session, tmp_path))
        name = template.split(" {id}")[0].replace(" --session", "")
        if name in ENDED_IS_FINE:
            assert result.exit_code == 0, (template, result.stderr)
        else:
            assert result.exit_code == 2, (template, result.stderr)
            assert f"session {ended_session} is ended" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        "inventory show vastai:4040404",
        "inventory compatible-templates vastai:4040404",
        "provision vastai:4040404 --yes",
        "templates show 'No Such Template'",
        "provision --provider vastai --template 'No Such Template' --yes",
        "provision vastai:1000001 --template 'No Such Template' --yes",
    ],
)
def test_an_unknown_offer_or_template_is_exit_2(gs, vast, args):
    result = gs(args + " --json")
    assert result.exit_code == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and result.json()["error"]["type"] in ("not_found", "usage")
    assert vast.live_instances() == []


def test_a_provider_that_answers_404_for_an_offer_is_bad_input_too():
    from gpushopper.core.inventory import get_offer_or_fail
    from gpushopper.model.errors import NoSuchItem, NotFound

    class Gone:
        def get_offer(self, native: str, disk_gb: float):
            raise NotFound("vastai", "error 404: no_such_ask")

    with pytest.raises(NoSuchItem, match="vastai:7 is not available any more") as caught:
        get_offer_or_fail(Gone(), "vastai:7", "7", 32.0)  # type: ignore[arg-type]
    assert caught.value.exit_code == 2
