"""completions/ must match what Click generates now."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_script_is_current(shell):
    env = dict(os.environ, _GPU_SHOPPER_COMPLETE=f"{shell}_source")
    out = subprocess.run(
        [sys.executable, "-m", "gpushopper"], env=env, capture_output=True, text=True, check=False
    )
    assert out.stdout.strip(), out.stderr
    committed = (ROOT / "completions" / f"gpu-shopper.{shell}").read_text()
    assert committed == out.stdout, f"run scripts/gen-completions to refresh gpu-shopper.{shell}"
