"""gpu-shopper as a separate process, for the tests that need one: real signals, pipes and
terminals, the pid lock of ``watch``, the module entry point, a clock shifted by environment.
Everything else runs the CLI in-process through the ``gs`` fixture (tests/conftest.py), where
a crash fails the test.

The child gets this process's environment (the ``GPU_SHOPPER_HOME``, ``HOME`` and provider
settings that the ``isolated_home`` and emulator fixtures put there), less the variables
``unset`` names (exact names or prefixes), plus ``env``; ``PYTHONPATH`` puts this checkout first,
so the child runs the code under test whatever is installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TOOL = (sys.executable, "-m", "gpushopper")


def tool_argv(*args: str) -> list[str]:
    return [*TOOL, *args]


def tool_env(env: Mapping[str, str] | None = None, unset: Iterable[str] = ()) -> dict[str, str]:
    drop = tuple(unset)
    out = {k: v for k, v in os.environ.items() if not (drop and k.startswith(drop))}
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), out.get("PYTHONPATH")) if p)
    out.update(env or {})
    return out


def run_tool(
    *args: str,
    env: Mapping[str, str] | None = None,
    unset: Iterable[str] = (),
    timeout: float = 60,
    **run: Any,
) -> subprocess.CompletedProcess[str]:
    """Run ``gpu-shopper ARGS`` to its end: text output captured, stdin empty."""
    run.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(
        tool_argv(*args),
        env=tool_env(env, unset),
        capture_output=True,
        text=True,
        timeout=timeout,
        **run,
    )


def spawn_tool(
    *args: str, env: Mapping[str, str] | None = None, unset: Iterable[str] = (), **popen: Any
) -> subprocess.Popen[Any]:
    """Start ``gpu-shopper ARGS`` and return at once; stdin empty unless ``popen`` says."""
    popen.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.Popen(tool_argv(*args), env=tool_env(env, unset), **popen)
