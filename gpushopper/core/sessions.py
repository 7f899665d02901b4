"""Session records: the JSON contract, costs, the SSH command and our ssh_config."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from gpushopper.model.errors import GpuShopperError
from gpushopper.model.jsontypes import JSONObject, JSONValue
from gpushopper.model.session import DONE, LIVE, SESSION_ID_RE, STATUSES
from gpushopper.model.units import iso, parse_iso

if TYPE_CHECKING:
    from gpushopper.providers.base import Provider
    from gpushopper.state.store import StateStore


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
    "image",
    "disk_gb",
    "ports",
)


def resolve_session_id(store: StateStore, given: str) -> str:
    """The session id ``given`` names: the id itself, or a unique prefix of one
    (:func:`gpushopper.model.ids.match_prefix`). Unknown: NoSuchItem (exit 2, not_found); a prefix
    of several: AmbiguousId (exit 2, naming them)."""
    from gpushopper.model.errors import NoSuchItem
    from gpushopper.model.ids import match_prefix

    found = match_prefix(given, store.read()["sessions"], "session")
    if found is None:
        raise NoSuchItem(f"no session {given!r} (see 'gpu-shopper sessions list --all')")
    return found


# -- records that cannot be trusted --------------------------------------------------------
TIME_FIELDS = (
    "created_at",
    "ready_at",
    "billing_started_at",
    "reservation_ends_at",
    "hard_max_at",
    "ended_at",
    "warned_at",
)


def record_problem(record: JSONValue) -> str | None:
    """Why a session record cannot be enforced as it stands, or None when it can."""
    if not isinstance(record, dict):
        return f"is {'null' if record is None else type(record).__name__}, not a session object"
    status = record.get("status")
    if status not in STATUSES:
        return f"has an unknown status {status!r}"
    if not isinstance(record.get("provider"), str) or not record["provider"]:
        return f"names no provider ({record.get('provider')!r})"
    for name in TIME_FIELDS:
        value = record.get(name)
        if value is None:
            continue
        try:
            if not isinstance(value, str):
                raise ValueError
            parse_iso(value)
        except ValueError:
            return f"{name} {value!r} is not a time"
    instance_id = record.get("instance_id")
    if instance_id is not None and (
        isinstance(instance_id, bool) or not isinstance(instance_id, (str, int))
    ):
        return f"instance_id {instance_id!r} is not an id"
    for name in ("label", "consumer"):
        if record.get(name) is not None and not isinstance(record[name], str):
            return f"{name} {record[name]!r} is not text"
    price = record.get("price_per_hour")
    if price is not None and (isinstance(price, bool) or not isinstance(price, (int, float))):
        return f"price_per_hour {price!r} is not a number"
    if record.get("ssh") is not None and not isinstance(record["ssh"], dict):
        return "ssh is not an object"
    return None


def split_records(
    sessions: JSONObject,
) -> tuple[dict[str, JSONObject], dict[str, str]]:
    """(records that can be enforced, {session id: why not} for the others)."""
    good: dict[str, JSONObject] = {}
    bad: dict[str, str] = {}
    for session_id, record in sessions.items():
        why = record_problem(record)
        if why is None:
            good[session_id] = record
        else:
            bad[session_id] = why
    return good, bad


def accrued_cost(record: JSONObject, now: datetime) -> float:
    """Price x running time, by the second, from first seen running to ended (or now)."""
    price = record.get("price_per_hour")
    start = parse_iso(record.get("billing_started_at"))
    if not price or start is None:
        return float(record.get("cost_usd") or 0.0)
    end = parse_iso(record.get("ended_at")) or now
    seconds = max(0.0, (end - start).total_seconds())
    return float(price) * seconds / 3600.0


def close_record(
    record: JSONObject, status: str, reason: str, now: datetime, *, keep_reason: bool = False
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


def ssh_command(record: JSONObject) -> str | None:
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


def public_view(record: JSONObject, now: datetime) -> JSONObject:
    """The session as CLI.md's JSON shape (never any key material, only the key path)."""
    out = {key: record.get(key) for key in SESSION_KEYS}
    ssh = dict(record.get("ssh") or {})
    ssh.pop("host_key", None)
    ssh["command"] = ssh_command(record)
    for key in ("host", "port", "user", "key_path"):
        ssh.setdefault(key, None)
    out["ssh"] = ssh
    out["timings"] = dict(record.get("timings") or {})
    ports = record.get("ports")
    out["ports"] = (
        [dict(p) for p in ports if isinstance(p, dict)] if isinstance(ports, list) else []
    )
    if record.get("status") not in DONE:
        out["cost_usd"] = round(accrued_cost(record, now), 6)
    for extra in (
        "install_id",
        "image",
        "template",
        "disk_gb",
        "disk_gb_requested",
        "provider_status",
        "provider_detail",
        "host_key_fingerprint",
        "verification",
        "overrides",
        "failures",
        "error",
        "billing_started_at",
        "deadline_on_instance",
        "owner",
    ):
        if extra in record:
            out[extra] = record[extra]
    return out


def observe(record: JSONObject, provider_factory: Callable[[str], Provider]) -> JSONObject:
    """What the provider says of a session's instance now, beside what we recorded:
    ``provider_status`` is the instance's status (running, loading, exited, stopped,
    unknown...), ``gone`` when the provider answers it has no such instance, or
    ``unreachable`` when it could not be asked (never taken as gone); ``provider_detail``
    says more. Empty for an ended session or one with no instance yet."""
    from gpushopper.model.redact import clip

    instance_id = record.get("instance_id")
    if record.get("status") == "ended" or instance_id in (None, ""):
        return {}
    try:
        instance = provider_factory(record["provider"]).get_instance(str(instance_id))
    except GpuShopperError as exc:
        return {"provider_status": "unreachable", "provider_detail": clip(str(exc), 200)}
    if instance is None:
        return {"provider_status": "gone", "provider_detail": "the provider has no such instance"}
    detail = instance.extra.get("status_msg") if isinstance(instance.extra, dict) else None
    parts = [p for p in (instance.raw_status, detail) if isinstance(p, str) and p]
    return {"provider_status": instance.status, "provider_detail": clip(": ".join(parts), 200)}


def render_ssh_config(records: dict[str, JSONObject]) -> str:
    """One ``Host gpu-<session>`` block per live session with an SSH endpoint.

    A block is written only when every value in it passed validation: a newline in a host
    would otherwise become a directive (``ProxyCommand``) that ``ssh gpu-<id>`` runs."""
    from gpushopper.core.validate import ssh_record_problem

    lines = ["# Written by gpu-shopper; Include this file from ~/.ssh/config.", ""]
    good, _ = split_records(records)
    for session_id in sorted(good):
        record = good[session_id]
        ssh = record.get("ssh") or {}
        if not SESSION_ID_RE.fullmatch(str(session_id)):
            continue  # a hand-edited id never becomes a Host line
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


def write_ssh_config(path: Path, records: dict[str, JSONObject]) -> None:
    from gpushopper.state.atomic import atomic_write_text

    atomic_write_text(path, render_ssh_config(records), mode=0o600)


def refresh_ssh_config(
    path: Path | None, store: StateStore, log: Callable[[str], None] | None = None
) -> None:
    """Rewrite our ssh_config from the state; a failure is reported, never raised."""
    if path is None:
        return
    try:
        write_ssh_config(path, store.sessions())
    except (OSError, GpuShopperError) as exc:
        if log is not None:
            log(f"Could not update {path}: {getattr(exc, 'strerror', None) or exc}")


# -- the instance's own log (sessions logs) ------------------------------------------------------
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?")
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
MAX_LOG_LINES = 100_000


def printable_log(text: str, secrets: Iterable[str] = ()) -> list[str]:
    """A provider's log as lines safe to print: terminal escapes removed, other control
    characters shown as '?', carriage-return progress bars as lines, and every registered
    secret (and ``secrets``) masked."""
    from gpushopper.model.redact import redact, register_secret

    for value in secrets:
        register_secret(value)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROLS.sub("?", _ESCAPES.sub("", text))
    return redact(text).splitlines()


def session_logs(
    provider: Provider, record: JSONObject, tail: int, secrets: list[str]
) -> JSONObject:
    """The session's instance log from its provider, cleaned: ``{session_id, provider,
    instance_id, tail, lines}``. An ended session's instance is gone, and its log with it."""
    if record.get("status") in DONE:
        raise GpuShopperError(
            f"session {record.get('id')} is {record.get('status')}: its instance is destroyed "
            "and the provider keeps no log of it (a job's own output is in jobs logs)"
        )
    if not record.get("instance_id"):
        raise GpuShopperError(f"session {record.get('id')} has no instance (yet): no log to read")
    raw = provider.instance_logs(str(record["instance_id"]), tail)
    lines = printable_log(raw, secrets)[-tail:]
    return {
        "session_id": record.get("id"),
        "provider": record.get("provider"),
        "instance_id": str(record["instance_id"]),
        "tail": tail,
        "lines": lines,
    }
