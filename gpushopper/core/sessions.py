"""Session records: the JSON contract, costs, the SSH command and our ssh_config."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from gpushopper.core.units import iso, parse_iso

LIVE = ("creating", "provisioning", "verifying", "running", "ending")
DONE = ("ended", "failed")
SESSION_KEYS = (
    "id",
    "status",
    "provider",
    "offer_id",
    "instance_id",
    "label",
    "gpu_name",
    "num_gpus",
    "price_per_hour",
    "consumer",
    "created_at",
    "ready_at",
    "reservation_ends_at",
    "hard_max_at",
    "ended_at",
    "end_reason",
    "cost_usd",
    "ssh",
    "timings",
)


def make_label(install_id: str, session_id: str) -> str:
    return f"gpu-shopper:{install_id}:{session_id}"


def parse_label(label: str | None) -> tuple[str, str] | None:
    """(install id, session id) from one of our labels, else None."""
    if not label or not label.startswith("gpu-shopper:"):
        return None
    parts = label.split(":")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def accrued_cost(record: dict[str, Any], now: datetime) -> float:
    """Price x running time, by the second, from first seen running to ended (or now)."""
    price = record.get("price_per_hour")
    start = parse_iso(record.get("billing_started_at"))
    if not price or start is None:
        return float(record.get("cost_usd") or 0.0)
    end = parse_iso(record.get("ended_at")) or now
    seconds = max(0.0, (end - start).total_seconds())
    return float(price) * seconds / 3600.0


def close_record(
    record: dict[str, Any], status: str, reason: str, now: datetime, *, keep_reason: bool = False
) -> None:
    """Move a record (in place) to ``status``; for ended/failed also stamp the end time and
    finalise the cost. ``keep_reason`` keeps an end reason and end time already recorded."""
    record["status"] = status
    if not (keep_reason and record.get("end_reason")):
        record["end_reason"] = reason
    if status in DONE:
        if not (keep_reason and record.get("ended_at")):
            record["ended_at"] = iso(now)
        record["cost_usd"] = round(accrued_cost(record, now), 6)


def ssh_command(record: dict[str, Any]) -> str | None:
    from gpushopper.core.validate import ssh_record_problem

    ssh = record.get("ssh") or {}
    if not ssh.get("host") or not ssh.get("port") or ssh_record_problem(ssh) is not None:
        return None
    parts = ["ssh", "-i", ssh["key_path"], "-p", str(ssh["port"]), "-o", "IdentitiesOnly=yes"]
    if ssh.get("known_hosts"):
        parts += [
            "-o",
            f"UserKnownHostsFile={ssh['known_hosts']}",
            "-o",
            "StrictHostKeyChecking=yes"
            if ssh.get("host_key")
            else "StrictHostKeyChecking=accept-new",
        ]
    parts.append(f"{ssh['user']}@{ssh['host']}")
    return " ".join(shlex.quote(p) for p in parts)


def public_view(record: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The session as CLI.md's JSON shape (never any key material, only the key path)."""
    out = {key: record.get(key) for key in SESSION_KEYS}
    ssh = dict(record.get("ssh") or {})
    ssh.pop("host_key", None)
    ssh["command"] = ssh_command(record)
    for key in ("host", "port", "user", "key_path"):
        ssh.setdefault(key, None)
    out["ssh"] = ssh
    out["timings"] = dict(record.get("timings") or {})
    if record.get("status") not in DONE:
        out["cost_usd"] = round(accrued_cost(record, now), 6)
    for extra in (
        "install_id",
        "image",
        "template",
        "disk_gb",
        "host_key_fingerprint",
        "verification",
        "overrides",
        "failures",
        "error",
        "billing_started_at",
        "deadline_on_instance",
    ):
        if extra in record:
            out[extra] = record[extra]
    return out


def render_ssh_config(records: dict[str, dict[str, Any]]) -> str:
    """One ``Host gpu-<session>`` block per live session with an SSH endpoint.

    A block is written only when every value in it passed validation: a newline in a host
    would otherwise become a directive (``ProxyCommand``) that ``ssh gpu-<id>`` runs."""
    from gpushopper.core.validate import ssh_record_problem

    lines = ["# Written by gpu-shopper; Include this file from ~/.ssh/config.", ""]
    for session_id in sorted(records):
        record = records[session_id]
        ssh = record.get("ssh") or {}
        if record.get("status") not in LIVE or not ssh.get("host"):
            continue
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", session_id) or ssh_record_problem(ssh):
            lines += ["# session skipped: its SSH details failed validation", ""]
            continue
        lines += [
            f"Host gpu-{session_id}",
            f"  HostName {ssh['host']}",
            f"  Port {ssh['port']}",
            f"  User {ssh['user']}",
            f'  IdentityFile "{ssh["key_path"]}"',
            "  IdentitiesOnly yes",
        ]
        if ssh.get("known_hosts"):
            lines.append(f'  UserKnownHostsFile "{ssh["known_hosts"]}"')
            lines.append(
                "  StrictHostKeyChecking " + ("yes" if ssh.get("host_key") else "accept-new")
            )
        lines.append("")
    return "\n".join(lines)


def write_ssh_config(path: Path, records: dict[str, dict[str, Any]]) -> None:
    from gpushopper.state.atomic import atomic_write_text

    atomic_write_text(path, render_ssh_config(records), mode=0o600)


def refresh_ssh_config(
    path: Path | None, store: Any, log: Callable[[str], None] | None = None
) -> None:
    """Rewrite our ssh_config from the state; a failure is reported, never raised."""
    if path is None:
        return
    try:
        write_ssh_config(path, store.sessions())
    except OSError as exc:
        if log is not None:
            log(f"Could not update {path}: {exc.strerror}")


def stamp(now: datetime) -> str:
    return iso(now) or ""
