"""The watch daemon's cost and promptness against the loopback emulators; prints its figures.

50 live sessions (half on each provider, their instances present in the emulators) are
written to a fresh state file, then `gpu-shopper watch` runs as a real process while this
script samples its CPU time and memory from /proc once a second. Goals:

(a) CPU over the run (start-up included) below 1 % of one core;
(b) peak resident memory below 80 MB;
(c) for the few sessions whose reservation ends during the run, the delay from the deadline
    to the provider's destroy call at most interval + 2 s.

At the end the daemon gets SIGTERM, which destroys every remaining session: the time that
takes and the instances left over (goal: none) are reported too.

Run: .venv/bin/python benchmarks/watch.py [--duration 300] [--interval 30s]
Quick check: .venv/bin/python benchmarks/watch.py --duration 20 --interval 5s
Exits 1 only when the daemon died early or its shutdown left something behind.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import SCRUB, gpu_shopper_cmd, scrubbed_environ  # noqa: E402

from gpushopper.model.session import make_label  # noqa: E402
from gpushopper.model.units import iso, parse_duration, parse_iso  # noqa: E402
from gpushopper.sandbox.tensordock import TensorDockEmulator  # noqa: E402
from gpushopper.sandbox.vastai import VastEmulator  # noqa: E402
from gpushopper.state.store import StateStore  # noqa: E402

CPU_GOAL_PCT = 1.0
RSS_GOAL_MB = 80.0  # 10^6 bytes
DEADLINE_SLACK_S = 2.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


class TimedLog(list):  # type: ignore[type-arg]
    """An emulator's request log that stamps each entry with the wall-clock time it came in."""

    def append(self, entry: Any) -> None:
        entry.setdefault("at", time.time())
        super().append(entry)


@dataclass
class Session:
    id: str
    provider: str
    instance_id: str
    label: str
    deadline: float | None = None  # epoch seconds, for the sessions that expire in the run


@dataclass
class Sample:
    at: float  # monotonic
    cpu_s: float
    rss_kb: int
    hwm_kb: int


def tool_env(home: Path, vast: VastEmulator, td: TensorDockEmulator) -> dict[str, str]:
    env = scrubbed_environ()
    env.update(
        {
            "GPU_SHOPPER_HOME": str(home),
            "VASTAI_API_KEY": vast.api_key,
            "VASTAI_API_URL": vast.url,
            "TENSORDOCK_API_TOKEN": td.api_token,
            "TENSORDOCK_API_URL": td.url,
            "NO_COLOR": "1",
            # As installed: bytecode cached (in a private folder, so the checkout stays
            # clean) even where PYTHONDONTWRITEBYTECODE is set; the warm-up run fills it.
            "PYTHONPYCACHEPREFIX": str(home.parent / "pycache"),
            "PYTHONDONTWRITEBYTECODE": "",
        }
    )
    return env


# -- setting the scene ---------------------------------------------------------------------------


def build_sessions(
    store: StateStore,
    vast: VastEmulator,
    td: TensorDockEmulator,
    count: int,
    deadlines: list[float],
) -> list[Session]:
    """``count`` running sessions, alternating providers, with their instances created at the
    emulators; the first ``len(deadlines)`` get those reservation ends, the rest 2 hours."""
    install = store.install_id()
    now = datetime.now(timezone.utc)
    created = now - timedelta(minutes=10)
    vast_offers = sorted(vast.offers)
    nodes = [n for n in td.hostnodes.values() if n["available_resources"]["gpus"]]
    sessions: list[Session] = []
    records: dict[str, dict[str, Any]] = {}
    used: set[str] = set()
    for i in range(count):
        sid = secrets.token_hex(3)
        while sid in used:
            sid = secrets.token_hex(3)
        used.add(sid)
        label = make_label(install, sid)
        if i % 2 == 0:
            provider = "vastai"
            offer_id = vast_offers[(i // 2) % len(vast_offers)]
            rec = vast.create_instance_directly(label=label, offer_id=offer_id)
            instance_id, price, gpu = str(rec["id"]), rec["dph_total"], rec["gpu_name"]
            host, port = rec["ssh_host"], rec["ssh_port"]
            offer = f"vastai:{offer_id}"
        else:
            provider = "tensordock"
            node = nodes[(i // 2) % len(nodes)]
            rec = td.create_instance_directly(name=label, hostnode_id=node["id"])
            instance_id, price = rec["id"], rec["rate_hourly"]
            gpu = next(iter(rec["resources"]["gpus"]), None)
            host, port = rec["ip_address"], rec["ssh_port"]
            offer = f"tensordock:{node['id']}:{gpu}"
        deadline = deadlines[i] if i < len(deadlines) else None
        ends = (
            datetime.fromtimestamp(deadline, timezone.utc)
            if deadline is not None
            else now + timedelta(hours=2)
        )
        keys = store.path.parent / "keys" / sid
        records[sid] = {
            "id": sid,
            "status": "running",
            "provider": provider,
            "offer_id": offer,
            "machine_id": None,
            "instance_id": instance_id,
            "label": label,
            "install_id": install,
            "gpu_name": gpu,
            "num_gpus": 1,
            "vram_gb": 24.0,
            "price_per_hour": price,
            "consumer": "benchmark",
            "created_at": iso(created),
            "ready_at": iso(created + timedelta(seconds=90)),
            "billing_started_at": iso(created + timedelta(seconds=60)),
            "reservation_s": (ends - created).total_seconds(),
            "reservation_ends_at": iso(ends),
            "hard_max_at": iso(created + timedelta(hours=12)),
            "ended_at": None,
            "end_reason": None,
            "cost_usd": 0.0,
            "image": None,
            "template": None,
            "disk_gb": 32.0,
            "ssh": {
                "host": host,
                "port": port,
                "user": "root",
                "key_path": str(keys / "id_ed25519"),
                "key_generated": True,
                "known_hosts": str(keys / "known_hosts"),
            },
            "timings": {"create_call_s": 0.4, "time_to_running_s": 60.0, "time_to_ssh_s": 90.0},
            "overrides": [],
            "deadline_on_instance": False,
        }
        sessions.append(Session(sid, provider, instance_id, label, deadline))
    with store.transaction() as state:
        state["sessions"].update(records)
    return sessions


def spread_deadlines(n: int, start: float, duration: float, interval: float) -> list[float]:
    """``n`` deadlines spread through the run and across the pass cycle.

    Deadline k falls (k + 0.5) / n of an interval into its cycle, so the delays sample the
    whole range from just after a pass (nearly a full interval to wait) to just before one.
    None falls in the first cycle (start-up) and the last leaves time for one more pass.
    """
    if n <= 0:
        return []
    top = max(1, int((duration - DEADLINE_SLACK_S - 3.0) // interval) - 2)
    out = []
    for k in range(n):
        cycle = 1 + round(k * (top - 1) / (n - 1)) if n > 1 else 1
        out.append(start + cycle * interval + (k + 0.5) / n * interval)
    return out


# -- measuring -----------------------------------------------------------------------------------


def read_proc(pid: int) -> tuple[float, int, int] | None:
    """(user + system CPU seconds, VmRSS kB, VmHWM kB) of a live process, else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
    mem = {}
    for line in status.splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":", 1)
            mem[key] = int(value.split()[0])
    return cpu, mem.get("VmRSS", 0), mem.get("VmHWM", 0)


def take(pid: int) -> Sample | None:
    got = read_proc(pid)
    if got is None:
        return None
    return Sample(time.monotonic(), got[0], got[1], got[2])


def delete_times(emulators: list[Any]) -> dict[str, float]:
    """First DELETE per instance id seen by the emulators, as epoch seconds."""
    out: dict[str, float] = {}
    for emu in emulators:
        for entry in list(emu.requests):
            if entry["method"] != "DELETE":
                continue
            instance_id = entry["path"].rstrip("/").rsplit("/", 1)[-1]
            out.setdefault(instance_id, entry["at"])
    return out


def pass_starts(vast: VastEmulator, since: float, until: float) -> list[float]:
    """When each pass began: Vast.ai list calls that start a listing (no page token)."""
    return [
        e["at"]
        for e in list(vast.requests)
        if e["method"] == "GET"
        and e["path"].startswith("/api/v1/instances")
        and "after_token" not in e["query"]
        and since <= e["at"] <= until
    ]


def mark(ok: bool) -> str:
    return "ok" if ok else "OVER"


# -- the run -------------------------------------------------------------------------------------


def warm_up(cmd: list[str], tmp: Path, vast: VastEmulator, td: TensorDockEmulator) -> None:
    """One `watch --once` in a throwaway home (nothing to act on) fills the bytecode cache."""
    home = tmp / "warm-up"
    home.mkdir()
    done = subprocess.run(
        [*cmd, "watch", "--once"],
        env=tool_env(home, vast, td),
        cwd=home,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise SystemExit(f"warm-up watch --once exited {done.returncode}: {done.stderr[-500:]}")


def run(args: argparse.Namespace) -> int:
    interval = parse_duration(args.interval)
    cmd = gpu_shopper_cmd()
    with (
        tempfile.TemporaryDirectory() as tmp_name,
        VastEmulator() as vast,
        TensorDockEmulator() as td,
    ):
        tmp = Path(tmp_name)
        vast.generate_offers(max(40, args.sessions), seed=11)
        td.seed_default()
        warm_up(cmd, tmp, vast, td)
        vast.requests = TimedLog()
        td.requests = TimedLog()

        home = tmp / "home"
        home.mkdir()
        store = StateStore(home / "state.json")
        started = time.time()
        deadlines = spread_deadlines(args.deadlines, started, args.duration, interval)
        sessions = build_sessions(store, vast, td, args.sessions, deadlines)
        by_provider = {p: sum(s.provider == p for s in sessions) for p in ("vastai", "tensordock")}
        log_path = tmp / "watch.log"
        with log_path.open("w") as log:
            launched_wall, launched = time.time(), time.monotonic()
            proc = subprocess.Popen(
                [*cmd, "watch", "--interval", args.interval],
                env=tool_env(home, vast, td),
                cwd=home,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
            try:
                return measure(
                    args,
                    proc,
                    log_path,
                    interval,
                    sessions,
                    by_provider,
                    vast,
                    td,
                    store,
                    launched,
                    launched_wall,
                )
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)


def measure(
    args: argparse.Namespace,
    proc: subprocess.Popen[bytes],
    log_path: Path,
    interval: float,
    sessions: list[Session],
    by_provider: dict[str, int],
    vast: VastEmulator,
    td: TensorDockEmulator,
    store: StateStore,
    launched: float,
    launched_wall: float,
) -> int:
    samples: list[Sample] = []
    ready: Sample | None = None  # the first sample once "watch started" is logged
    end = launched + args.duration
    while time.monotonic() < end:
        sample = take(proc.pid)
        if sample is None or proc.poll() is not None:
            print(f"watch exited early ({proc.poll()}); its log:\n{log_path.read_text()[-2000:]}")
            return 1
        samples.append(sample)
        if ready is None and "watch started" in log_path.read_text():
            ready = sample
        pause = 0.05 if ready is None else args.sample
        time.sleep(max(0.0, min(pause, end - time.monotonic())))
    last = take(proc.pid)
    if last is None:
        print(f"watch exited early; its log:\n{log_path.read_text()[-2000:]}")
        return 1
    samples.append(last)

    # SIGTERM: every remaining session is destroyed before the daemon exits.
    signalled_wall, signalled = time.time(), time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        code = None
    shutdown_s = time.monotonic() - signalled
    left = len(vast.live_instances()) + len(td.live_instances())
    text = log_path.read_text()
    final = store.read()["sessions"]

    wall = last.at - launched
    cpu_pct = last.cpu_s / wall * 100
    peak_rss_mb = max(s.rss_kb for s in samples) * 1024 / 1e6
    hwm_mb = last.hwm_kb * 1024 / 1e6
    starts = pass_starts(vast, launched_wall, signalled_wall)
    errors = [line for line in text.splitlines() if " error" in line or "_failed " in line]

    print(
        f"watch: {len(sessions)} running sessions ({by_provider['vastai']} vastai, "
        f"{by_provider['tensordock']} tensordock), interval {interval:g}s, "
        f"{wall:.1f} s measured"
    )
    print(f"    command: {Path(gpu_shopper_cmd()[0]).name} watch --interval {args.interval}")
    period = (starts[-1] - starts[0]) / (len(starts) - 1) if len(starts) > 1 else float("nan")
    print(
        f"    passes: {len(starts)}, one every {period:.2f} s on average; "
        f"error lines in its log: {len(errors)}"
    )
    for line in errors[:5]:
        print(f"      {line}")

    cpu_ok = cpu_pct < CPU_GOAL_PCT
    print(
        f"(a) CPU {last.cpu_s:.2f} s over {wall:.1f} s = {cpu_pct:.3f} % of one core"
        f"  goal < {CPU_GOAL_PCT:g} %  {mark(cpu_ok)}"
    )
    if ready is not None and last.at > ready.at:
        steady = (last.cpu_s - ready.cpu_s) / (last.at - ready.at) * 100
        print(
            f"    start-up to 'watch started': {ready.cpu_s:.2f} s CPU in "
            f"{ready.at - launched:.2f} s; after it {steady:.3f} % of one core"
        )

    rss_ok = hwm_mb < RSS_GOAL_MB
    print(
        f"(b) peak RSS {hwm_mb:.1f} MB (VmHWM; sampled peak {peak_rss_mb:.1f} MB, at the end "
        f"{last.rss_kb * 1024 / 1e6:.1f} MB)  goal < {RSS_GOAL_MB:g} MB  {mark(rss_ok)}"
    )

    goal_s = interval + DEADLINE_SLACK_S
    deletes = delete_times([vast, td])
    expiring = [s for s in sessions if s.deadline is not None]
    print(f"(c) deadline -> destroy call, {len(expiring)} sessions  goal <= {goal_s:g} s")
    delays: list[float] = []
    missing = 0
    for s in expiring:
        assert s.deadline is not None
        at = deletes.get(s.instance_id)
        record = final.get(s.id, {})
        offset = s.deadline - launched_wall
        if at is None or at >= signalled_wall:
            missing += 1
            print(
                f"    {s.id} {s.provider:10} deadline +{offset:6.1f} s  no destroy before SIGTERM"
            )
            continue
        delay = at - s.deadline
        delays.append(delay)
        ended = parse_iso(record.get("ended_at"))
        ended_note = f", ended +{ended.timestamp() - s.deadline:.1f} s" if ended else ""
        print(
            f"    {s.id} {s.provider:10} deadline +{offset:6.1f} s  destroy call "
            f"+{at - launched_wall:6.1f} s  delay {delay:5.2f} s "
            f"({record.get('end_reason')}{ended_note})  {mark(delay <= goal_s)}"
        )
    worst = max(delays) if delays else float("nan")
    deadline_ok = bool(delays) and missing == 0 and worst <= goal_s
    print(f"    max delay {worst:.2f} s  {mark(deadline_ok)}")
    early = [
        s
        for s in sessions
        if s.deadline is None and deletes.get(s.instance_id, float("inf")) < signalled_wall
    ]
    if early:
        print(f"    UNEXPECTED: {len(early)} long-reservation sessions destroyed during the run")

    remaining = len(sessions) - len(expiring)
    not_ended = [sid for sid, r in final.items() if r.get("status") != "ended"]
    after = sum(1 for at in deletes.values() if at >= signalled_wall)
    shutdown_ok = code == 128 + signal.SIGTERM and left == 0 and not not_ended and not early
    print(
        f"(d) SIGTERM: exit {code} after {shutdown_s:.2f} s, {after} destroy calls for "
        f"{remaining} remaining sessions ({shutdown_s / max(remaining, 1) * 1000:.0f} ms each); "
        f"instances left {left}, sessions not ended {len(not_ended)}  "
        f"{'ok' if shutdown_ok else 'FAIL'}"
    )
    met = cpu_ok and rss_ok and deadline_ok and shutdown_ok
    print("all goals met" if met else "some goals missed")
    if args.keep_log:
        Path(args.keep_log).write_text(text)
    return 0 if shutdown_ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds to measure")
    parser.add_argument("--interval", default="30s", help="watch --interval (a duration)")
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--deadlines", type=int, default=5, help="sessions expiring in the run")
    parser.add_argument("--sample", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--keep-log", metavar="PATH", help="copy watch's stderr log here")
    args = parser.parse_args()
    if args.deadlines > args.sessions:
        parser.error("--deadlines must not exceed --sessions")
    for name in list(os.environ):
        if name.startswith(SCRUB):
            del os.environ[name]
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
