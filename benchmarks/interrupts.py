"""N interrupted provisions, then one `watch --once`: how many instances are left? (Goal: 0.)

Each run starts a real `gpu-shopper provision` process against the loopback emulators
(Vast.ai and TensorDock in turn; a real sshd per instance for the SSH check) and interrupts
it at a random moment of its life (start-up, offer search, the create call, the boot,
the SSH check) with one of:

* SIGHUP (a closed terminal or a dropped SSH session), SIGINT (Ctrl-C), SIGTERM;
* SIGPIPE, the way programs meet it: the reader of its output goes away (`| head -3`),
  so its next write hits a closed pipe;
* SIGKILL, which nothing can catch: the owner check of the next `watch --once` must do it.

Afterwards it counts the instances still at the emulators, runs one `watch --once`, and
counts again. A provision that finished before its interrupt landed holds a legitimate
session: it is reported, ended with `sessions done`, and left out of the count.

Run: .venv/bin/python benchmarks/interrupts.py [--runs 40] [--seed 8] [--boot 3.0]
Exits 1 when anything was left after the `watch --once`.
"""

from __future__ import annotations

import argparse
import os
import random
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import gpu_shopper_cmd, scrubbed_environ  # noqa: E402

from gpushopper.sandbox.sshd import SshdPool, find_sshd  # noqa: E402
from gpushopper.sandbox.tensordock import TensorDockEmulator  # noqa: E402
from gpushopper.sandbox.vastai import VastEmulator  # noqa: E402
from gpushopper.state.store import StateStore  # noqa: E402
from tests.waiting import default_signals  # noqa: E402

KINDS = ("SIGHUP", "SIGINT", "SIGTERM", "SIGPIPE", "SIGKILL")


@dataclass
class Run:
    index: int
    provider: str
    kind: str
    delay: float
    code: int | None = None
    exit_after_s: float | None = None  # from the interrupt to the process's exit
    phase: str = "?"  # how far it had got when interrupted, from the state file
    completed: bool = False  # it finished (exit 0) before the interrupt landed


CREATE_S = 0.5  # a create call takes this long at both emulators (Vast.ai's is often slower)


class SlowCreates(VastEmulator):
    """Creates that take a while, as real ones do: an interrupt can land mid-call."""

    def _handle(self, method: str, raw_path: str, headers: dict[str, str], raw: bytes) -> Any:
        if method == "PUT" and "/asks/" in raw_path:
            time.sleep(CREATE_S)  # the server finishes the create even if the client is gone
        return super()._handle(method, raw_path, headers, raw)


def tool_env(home: Path, vast: VastEmulator, td: TensorDockEmulator, user: str) -> dict[str, str]:
    env = scrubbed_environ()
    env.update(
        {
            "GPU_SHOPPER_HOME": str(home),
            "VASTAI_API_KEY": vast.api_key,
            "VASTAI_API_URL": vast.url,
            "VASTAI_SSH_USER": user,
            "TENSORDOCK_API_TOKEN": td.api_token,
            "TENSORDOCK_API_URL": td.url,
            "TENSORDOCK_SSH_USER": user,
            "GPU_SHOPPER_DEADLINE_FILE": str(home / "instance-deadline"),
            "GPU_SHOPPER_DEFAULTS_HTTP_BACKOFF": "0.05",
            "NO_COLOR": "1",
            "PYTHONPYCACHEPREFIX": str(home.parent / "pycache"),
            "PYTHONDONTWRITEBYTECODE": "",
        }
    )
    return env


def phase_of(store: StateStore, before: set[str]) -> str:
    """How far the interrupted provision had got: the status of its session."""
    if not store.exists():
        return "before the session"
    new = [r for sid, r in store.sessions().items() if sid not in before]
    if not new:
        return "before the session"
    session = new[-1]
    if session.status in ("failed", "ending", "ended"):
        reason = str(session.end_reason or "")
        return (
            "creating"
            if not session.instance_id
            else "booting"
            + (" (verifying)" if session.ssh.get("host") else "")
            + ("" if "interrupted" in reason or reason == "owner_gone" else f": {reason[:40]}")
        )
    return str(session.status)


def interrupt(proc: subprocess.Popen, kind: str) -> None:
    if kind == "SIGPIPE":
        assert proc.stdout is not None
        proc.stdout.close()  # the reader goes away: the next write hits a closed pipe
    else:
        proc.send_signal(getattr(signal, kind))


def one_run(
    run: Run, cmd: list[str], env: dict[str, str], home: Path, store: StateStore, log: Path
) -> None:
    args = [*cmd, "provision", "--provider", run.provider, "--gpu", "4090", "--yes"]
    before = set(store.sessions()) if store.exists() else set()
    with log.open("a") as out:
        out.write(f"\n== run {run.index}: {run.provider} {run.kind} after {run.delay:.2f}s\n")
        out.flush()
        if run.kind == "SIGPIPE":
            proc = subprocess.Popen(
                args,
                env=env,
                cwd=home,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                preexec_fn=default_signals,
            )
            # Read what it writes until the moment comes (as `| head` does), then stop.
            assert proc.stdout is not None
            fd = proc.stdout.fileno()
            until = time.monotonic() + run.delay
            while (remaining := until - time.monotonic()) > 0:
                ready, _, _ = select.select([fd], [], [], remaining)
                if ready:
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        break  # it exited already
                    out.write(chunk.decode(errors="replace"))
        else:
            proc = subprocess.Popen(
                args,
                env=env,
                cwd=home,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                preexec_fn=default_signals,
            )
            time.sleep(run.delay)
        if proc.poll() is None:
            run.phase = phase_of(store, before)
            at = time.monotonic()
            interrupt(proc, run.kind)
            run.code = proc.wait(180)
            run.exit_after_s = time.monotonic() - at
            after = phase_of(store, before)
            if run.phase == "before the session" and after != run.phase:
                run.phase = after  # the session appeared while the signal was on its way
        else:
            run.code = proc.wait()
            run.completed = run.code == 0
            run.phase = "finished first"


def live(vast: VastEmulator, td: TensorDockEmulator) -> list[str]:
    return [f"vastai:{i['id']}" for i in vast.live_instances()] + [
        f"tensordock:{i['id']}" for i in td.live_instances()
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument(
        "--boot", type=float, default=3.0, help="seconds an instance takes to reach running"
    )
    parser.add_argument("--verbose", action="store_true", help="one line per run")
    args = parser.parse_args()
    if find_sshd() is None:
        raise SystemExit("needs OpenSSH's sshd (apt-get install openssh-server)")
    rng = random.Random(args.seed)
    cmd = gpu_shopper_cmd()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        pool = SshdPool(tmp / "sshd")
        try:
            with SlowCreates(ssh_backend=pool) as vast, TensorDockEmulator(ssh_backend=pool) as td:
                return measure(args, rng, cmd, tmp, pool, vast, td)
        finally:
            pool.close()


def measure(
    args: argparse.Namespace,
    rng: random.Random,
    cmd: list[str],
    tmp: Path,
    pool: SshdPool,
    vast: VastEmulator,
    td: TensorDockEmulator,
) -> int:
    vast.seed_default_offers()
    for i in range(args.runs):  # enough 4090s that SIGKILLed runs cannot use them all up
        vast.add_offer(gpu_name="RTX 4090", dph_base=0.30 + i * 0.001, reliability2=0.99)
    td.seed_default()
    td.slow_next("POST", r"/instances$", delay=CREATE_S, times=10**6)
    vast.boot = {"mode": "ok", "loading_after": 0.3, "running_after": args.boot}
    td.boot = {"mode": "ok", "running_after": args.boot}
    home = tmp / "home"
    home.mkdir()
    env = tool_env(home, vast, td, pool.login_user)
    store = StateStore(home / "state.json")
    log = tmp / "provisions.log"
    # Two uninterrupted provisions first: the first fills the bytecode cache, the second
    # times a whole warm provision (start-up, search, create, boot, SSH check).
    whole = 0.0
    for _ in range(2):
        started = time.monotonic()
        warm = subprocess.run(
            [*cmd, "provision", "--provider", "vastai", "--gpu", "4090", "--yes", "--json"],
            env=env,
            cwd=home,
            capture_output=True,
            text=True,
            timeout=180,
        )
        whole = time.monotonic() - started
        if warm.returncode != 0:
            raise SystemExit(f"the warm-up provision failed: {warm.stderr[-600:]}")
        for session_id in list(store.sessions()):
            subprocess.run(
                [*cmd, "sessions", "done", session_id], env=env, cwd=home, capture_output=True
            )
    print(f"one uninterrupted provision (start-up, search, create, boot, SSH check): {whole:.2f} s")
    latest = 0.95 * whole  # interrupt while it still runs

    # Every third interrupt lands early (start-up, offer search, the create call), where
    # little time is spent but the most can go wrong; the rest anywhere in the provision.
    runs = [
        Run(
            i,
            ("vastai", "tensordock")[i % 2],
            KINDS[i % len(KINDS)],
            rng.uniform(0.02, 1.0) if i % 3 == 0 else rng.uniform(0.05, latest),
        )
        for i in range(args.runs)
    ]
    rng.shuffle(runs)
    for run in runs:
        one_run(run, cmd, env, home, store, log)
        if args.verbose:
            print(
                f"  run {run.index:2} {run.provider:10} {run.kind:7} at {run.delay:4.2f}s: "
                f"{run.phase}, exit {run.code}",
                flush=True,
            )
    completed = [r for r in runs if r.completed]
    # A provision that finished first holds a real, running session: end it, count it apart.
    for session_id, session in store.sessions().items():
        if session.status == "running":
            subprocess.run(
                [*cmd, "sessions", "done", session_id], env=env, cwd=home, capture_output=True
            )
    left_before = live(vast, td)
    watch = subprocess.run(
        [*cmd, "watch", "--once"], env=env, cwd=home, capture_output=True, text=True, timeout=300
    )
    left_after = live(vast, td)

    print(
        f"{len(runs)} provisions, interrupted at a random moment in [0.02, {latest:.2f}] s "
        "(a third of them in the first second):"
    )
    by_kind: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_kind[run.kind].append(run)
    for kind in KINDS:
        group = by_kind[kind]
        codes = Counter(str(r.code) for r in group)
        exits = [r.exit_after_s for r in group if r.exit_after_s is not None]
        slowest = f", exit within {max(exits):.2f} s of the signal" if exits else ""
        print(
            f"  {kind:8} {len(group):3} runs, exit codes "
            + ", ".join(f"{c} x{n}" for c, n in sorted(codes.items()))
            + slowest
        )
    phases = Counter(r.phase for r in runs)
    print("  interrupted while: " + ", ".join(f"{p} x{n}" for p, n in sorted(phases.items())))
    if completed:
        print(f"  {len(completed)} finished before the interrupt landed (ended, not counted)")
    print(f"instances left right after the interrupts: {len(left_before)}")
    print(
        f"instances left after one 'watch --once' (exit {watch.returncode}): {len(left_after)}"
        + (f" {left_after}" if left_after else "")
    )
    destroyed = [
        line
        for line in watch.stderr.splitlines()
        if "destroy" in line and "result=destroyed" in line
    ]
    reasons = Counter(
        line.split("reason=")[1].split()[0] for line in destroyed if "reason=" in line
    )
    if reasons:
        print("  watch destroyed: " + ", ".join(f"{r} x{n}" for r, n in sorted(reasons.items())))
    if left_after:
        print(watch.stderr[-2000:])
        print(f"(provision logs: {log})")
    return 1 if left_after else 0


if __name__ == "__main__":
    sys.exit(main())
