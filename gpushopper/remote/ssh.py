"""SSH with paramiko: connect while the machine boots, verify the GPUs, diagnostics."""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gpushopper.model.errors import SshError

if TYPE_CHECKING:  # paramiko is imported where it connects (start-up stays light)
    from paramiko import PKey, SSHClient

    from gpushopper.model.jsontypes import JSONObject

QUERY = "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader,nounits"


@dataclass
class Verification:
    """What the machine really has, read over SSH."""

    gpu_count: int = 0
    gpu_names: list[str] = field(default_factory=list)
    vram_mib_min: int | None = None
    driver_version: str | None = None
    cuda_version: float | None = None
    disk_free_gb: float | None = None
    disk_total_gb: float | None = None
    nvidia_smi: bool = False
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> JSONObject:
        return asdict(self)


def fingerprint(key: PKey) -> str:
    """OpenSSH-style ``SHA256:...`` fingerprint of a paramiko host key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class Connection:
    """One paramiko client; ``run`` returns (exit status, stdout, stderr)."""

    def __init__(self, client: SSHClient, endpoint: tuple[str, int] | None = None) -> None:
        self.client = client
        self.endpoint = endpoint

    def run(self, command: str, timeout: float = 60.0) -> tuple[int, str, str]:
        stdin, stdout, stderr = self.client.exec_command(command, timeout=timeout)
        stdin.close()
        out = stdout.read().decode(errors="replace")
        err = stderr.read().decode(errors="replace")
        return stdout.channel.recv_exit_status(), out, err

    def host_key(self) -> PKey:
        transport = self.client.get_transport()
        assert transport is not None  # connected: connect() returns only a connected client
        return transport.get_remote_server_key()

    def close(self) -> None:
        self.client.close()


def connect(
    host: str,
    port: int,
    user: str,
    key_path: Path,
    *,
    deadline: float,
    alternatives: list[tuple[str, int]] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    connect_timeout: float = 10.0,
    on_retry: Callable[[str], None] | None = None,
) -> Connection:
    """Connect, retrying until ``deadline`` (the container may still be booting)."""
    import paramiko

    from gpushopper.remote.keys import load_private_key

    pkey = load_private_key(key_path)
    endpoints = [(host, port)] + [e for e in alternatives or [] if e != (host, port)]
    delay = 1.0
    last = "no attempt made"
    while True:
        for ep_host, ep_port in endpoints:
            client = paramiko.SSHClient()
            # Trust on first use: the key is recorded in the session and our known_hosts.
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
            try:
                client.connect(
                    ep_host,
                    port=ep_port,
                    username=user,
                    pkey=pkey,
                    timeout=connect_timeout,
                    banner_timeout=connect_timeout,
                    auth_timeout=connect_timeout,
                    allow_agent=False,
                    look_for_keys=False,
                )
                return Connection(client, (ep_host, ep_port))
            except paramiko.AuthenticationException as exc:
                client.close()
                last = f"{ep_host}:{ep_port}: authentication failed ({exc})"
            except (paramiko.SSHException, OSError, EOFError) as exc:
                client.close()
                last = f"{ep_host}:{ep_port}: {exc or type(exc).__name__}"
        remaining = deadline - clock()
        if remaining <= 0:
            raise SshError(f"SSH to {user}@{host}:{port} did not succeed in time: {last}")
        if on_retry:
            on_retry(last)
        sleep(min(delay, max(remaining, 0.05)))
        delay = min(delay * 1.5, 10.0)


def parse_gpu_query(text: str) -> list[tuple[str, int | None, str | None]]:
    rows = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 3:
            continue
        try:
            mib = int(float(parts[1]))
        except ValueError:
            mib = None
        rows.append((parts[0], mib, parts[2] or None))
    return rows


def parse_cuda(text: str) -> float | None:
    match = re.search(r"CUDA Version:\s*([0-9]+(?:\.[0-9]+)?)", text)
    return float(match.group(1)) if match else None


def parse_df(text: str) -> tuple[float | None, float | None]:
    """(free GB, total GB) from ``df -Pk`` output (1 GB = 10^9 bytes)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if len(lines) < 2:
        return None, None
    parts = lines[-1].split()
    try:
        total = int(parts[1]) * 1024 / 1e9
        free = int(parts[3]) * 1024 / 1e9
    except (IndexError, ValueError):
        return None, None
    return round(free, 2), round(total, 2)


def inspect(conn: Connection, disk_path: str = "/") -> Verification:
    """Read GPUs, driver, CUDA and disk from the machine."""
    result = Verification()
    code, out, _ = conn.run(QUERY)
    if code == 0:
        result.nvidia_smi = True
        rows = parse_gpu_query(out)
        result.gpu_count = len(rows)
        result.gpu_names = [r[0] for r in rows]
        mibs = [r[1] for r in rows if r[1] is not None]
        result.vram_mib_min = min(mibs) if mibs else None
        result.driver_version = next((r[2] for r in rows if r[2]), None)
        code, out, _ = conn.run("nvidia-smi")
        result.cuda_version = parse_cuda(out) if code == 0 else None
    code, out, _ = conn.run(f"df -Pk {disk_path}")
    if code == 0:
        result.disk_free_gb, result.disk_total_gb = parse_df(out)
    return result


def judge(
    found: Verification,
    *,
    num_gpus: int | None,
    vram_gb: float | None,
    min_cuda: float | None,
    driver_expected: bool = True,
    gpu_name: str | None = None,
    min_disk_free_gb: float | None = None,
) -> list[str]:
    """Reasons the machine falls short of what was rented (empty when it is fine)."""
    problems: list[str] = []
    if (
        min_disk_free_gb is not None
        and found.disk_free_gb is not None
        and found.disk_free_gb < min_disk_free_gb
    ):
        problems.append(
            f"{found.disk_free_gb} GB free disk, the upload needs {min_disk_free_gb:.2f} GB"
        )
    if not found.nvidia_smi:
        if driver_expected:
            problems.append("no NVIDIA driver (nvidia-smi not found or failing)")
        return problems
    if gpu_name and found.gpu_names:
        from gpushopper.model.models import gpu_matches

        wrong = sorted({n for n in found.gpu_names if not gpu_matches(gpu_name, n)})
        if wrong:
            problems.append(f"GPU {', '.join(wrong)} visible, {gpu_name} rented")
    if num_gpus and found.gpu_count < num_gpus:
        problems.append(f"{found.gpu_count} GPUs visible, {num_gpus} rented")
    if vram_gb and found.vram_mib_min is not None and found.vram_mib_min / 1000 < vram_gb * 0.95:
        problems.append(f"{found.vram_mib_min} MiB VRAM per GPU, offer said {vram_gb} GB")
    if min_cuda is not None:
        if found.cuda_version is None:
            problems.append(f"CUDA version unknown, {min_cuda} needed")
        elif found.cuda_version + 1e-9 < min_cuda:
            problems.append(f"CUDA {found.cuda_version} below the {min_cuda} needed")
    return problems


def diagnostics(conn: Connection) -> JSONObject:
    """nvidia-smi, CUDA, disk and uptime, for ``sessions diagnostics``."""
    found = inspect(conn)
    _, uptime, _ = conn.run("cat /proc/uptime 2>/dev/null || uptime")
    seconds = None
    try:
        seconds = float(uptime.split()[0])
    except (IndexError, ValueError):
        pass
    _, raw, _ = conn.run("nvidia-smi 2>&1 | head -n 20")
    return {**found.to_json(), "uptime_seconds": seconds, "nvidia_smi_output": raw}
