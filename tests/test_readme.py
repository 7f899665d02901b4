"""The README's promises, run as written: its first command (the sandbox job), the error a
TensorDock-only user sees, the tour, and links that stay inside the repository."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _sshd_missing() -> bool:
    from gpushopper.sandbox.sshd import find_sshd

    try:
        return find_sshd() is None
    except Exception:  # noqa: BLE001 - no sshd in any form
        return True


needs_sshd = pytest.mark.skipif(_sshd_missing(), reason="OpenSSH's sshd is not installed")


def setup_commands() -> dict[str, str]:
    """The opening ```bash block's numbered commands, as text: {"1": "scripts/install ...", ...}."""
    block = README.split("```bash\n", 1)[1].split("```", 1)[0]
    commands: dict[str, str] = {}
    for paragraph in block.strip().split("\n\n"):
        lines = paragraph.splitlines()
        number = re.match(r"# (\d+)\. ", lines[0])
        assert number, paragraph
        commands[number.group(1)] = "\n".join(ln for ln in lines if not ln.startswith("#"))
    return commands


def test_the_readme_opens_with_the_two_set_up_commands():
    commands = setup_commands()
    assert list(commands) == ["1", "2"]
    first = commands["1"]
    assert first.startswith("scripts/install --sandbox && ")
    for step in (
        'eval "$(gpu-shopper sandbox start)"',
        "gpu-shopper inventory --profile flux-lora",
        "gpu-shopper provision --profile flux-lora",
        'gpu-shopper sessions ssh "$ID" -- ',
        'gpu-shopper sessions done "$ID"',
        'eval "$(gpu-shopper sandbox stop)"',
    ):
        assert step in first, step
    assert commands["2"] == "scripts/test"
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith("scripts/test")


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


@needs_sshd
def test_the_first_command_runs_the_sandbox_job_as_written_and_leaves_nothing(tmp_path):
    """EXACTLY the README's first command, in bash, on a machine with no account and no state.

    Only `scripts/install` is a stand-in (it would pip-install this checkout over the test
    environment): it checks its argument and leaves the installed executable where the real
    one puts it, .venv/bin/gpu-shopper. Everything after it runs as the README says."""
    command = setup_commands()["1"]
    clone = tmp_path / "clone"
    (clone / "scripts").mkdir(parents=True)
    install = clone / "scripts" / "install"
    install.write_text('#!/bin/sh\n[ "$1" = --sandbox ] || exit 2\necho "Installed" >&2\n')
    install.chmod(0o755)
    (clone / ".venv" / "bin").mkdir(parents=True)
    executable = clone / ".venv" / "bin" / "gpu-shopper"
    executable.write_text(f'#!/bin/sh\nexec {sys.executable} -m gpushopper "$@"\n')
    executable.chmod(0o755)
    home = tmp_path / "fresh-home"
    home.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VASTAI_", "VAST_", "TENSORDOCK_", "GPU_SHOPPER_", "XDG_"))
        and k not in ("SSH_AUTH_SOCK", "PYTHONPATH")
    }
    env.update(HOME=str(home), PYTHONPATH=str(ROOT))
    root = home / ".local" / "state" / "gpu-shopper-sandbox"  # where `sandbox start` puts it
    try:
        out = subprocess.run(
            ["bash", "-c", command],
            cwd=clone,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert "sandbox started" in out.stderr and "SANDBOX: " in out.stderr
        assert re.search(r"^vastai:\d+ +RTX", out.stdout, re.M)  # the inventory table
        assert "GPU 0: NVIDIA" in out.stdout  # nvidia-smi -L over the session's SSH
        assert "destroyed (the provider confirms it is gone)" in out.stderr
        assert "sandbox stopped: every instance destroyed" in out.stderr
        assert not root.exists()
        assert _processes_mentioning(str(root)) == []  # no server, no instance's sshd
    finally:
        if root.exists():  # the command failed halfway: stop what it left
            stop_env = {**env, "GPU_SHOPPER_SANDBOX_DIR": str(root)}
            subprocess.run(
                [str(executable), "sandbox", "stop"], env=stop_env, capture_output=True, timeout=60
            )


def test_a_tensordock_only_user_gets_the_error_the_readme_shows(gs, tensordock):
    result = gs("inventory --profile flux-lora --limit 5")
    assert result.exit_code == 2
    (error,) = [ln for ln in result.stderr.splitlines() if ln.startswith("Error: ")]
    assert f"\n{error}\n" in README
    swapped = gs("inventory --profile flux-lora --template ubuntu2404_ml_pytorch --json")
    assert swapped.exit_code == 0, swapped.stderr
    offers = swapped.json()
    assert offers and all(o["vram_gb"] >= 24 and o["reliability"] >= 0.98 for o in offers)


@needs_sshd
def test_the_tour_is_current():
    out = subprocess.run(
        [sys.executable, "-m", "gpushopper.tour", "--check"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr


def test_the_readme_points_only_inside_the_repository():
    assert "../" not in README and "/work/" not in README
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):
        if target.startswith(("http://", "https://")):
            continue
        assert (ROOT / target).exists(), target
    assert (ROOT / "docs" / "cli.md").is_file() and "(docs/cli.md)" in README
    assert "../" not in (ROOT / "docs" / "cli.md").read_text()


def test_the_install_script_knows_its_arguments():
    script = ROOT / "scripts" / "install"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    bad = subprocess.run([str(script), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument" in bad.stderr
