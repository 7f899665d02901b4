"""completions/ must match what Click generates now."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes.tool import run_tool

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_script_is_current(shell):
    out = run_tool(env={"_GPU_SHOPPER_COMPLETE": f"{shell}_source"})
    assert out.stdout.strip(), out.stderr
    committed = (ROOT / "completions" / f"gpu-shopper.{shell}").read_text()
    assert committed == out.stdout, f"run scripts/gen-completions to refresh gpu-shopper.{shell}"
