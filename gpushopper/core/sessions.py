"""Session records: the JSON contract, costs, the SSH command and our ssh_config."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from gpushopper.model.errors import GpuShopperError, SshError
from gpushopper.model.jsontypes import JSONObject
from gpushopper.model.session import (
    SESSION_ID_RE,
    Session,
    SessionStatus,
)

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


# -- cost -------------------------------------------------------------------------------------
# (Which records can be trusted is the model's rule, model.session.record_problem: the
# store applies it, so every session here is a valid one.)
def accrued_cost(session: Session, now: datetime) -> float:
    """Price x running time, by the second, from first seen running to ended (or now)."""
    price = session.price_per_hour
    start = session.billing_started_at
    if not price or start is None:
        return float(session.cost_usd or 0.0)
    end = session.ended_at or now
    seconds = max(0.0, (end - start).total_seconds())
    return float(price) * seconds / 3600.0


def close_record(
    session: Session,
    status: SessionStatus,
    reason: str,
    now: datetime,
    *,
    keep_reason: bool = False,
) -> None:
    """Move a session (in place) to ``status``; for ended/failed also stamp the end time and
    finalise the cost. ``keep_reason`` keeps an end reason and end time already recorded."""
    session.status = status
    if not (keep_reason and session.end_reason):
        session.end_reason = reason
    if status.done:
        if not (keep_reason and session.ended_at):
            session.ended_at = now
        session.cost_usd = round(accrued_cost(session, now), 6)


def ssh_command(session: Session) -> str | None:
    from gpushopper.core.validate import ssh_record_problem

    ssh: JSONObject = session.ssh
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


def public_view(session: Session, now: datetime) -> JSONObject:
    """The session as CLI.md's JSON shape (never any key material, only the key path).

    Made from the record the session would write (``to_record``): the JSON view names the
    record's own keys, a key the record lacks stays absent, so the shape never moves."""
    record = session.to_record()
    out = {key: record.get(key) for key in SESSION_KEYS}
    ssh = dict(record.get("ssh") or {})
    ssh.pop("host_key", None)
    ssh["command"] = ssh_command(session)
    for key in ("host", "port", "user", "key_path"):
        ssh.setdefault(key, None)
    out["ssh"] = ssh
    out["timings"] = dict(record.get("timings") or {})
    ports = record.get("ports")
    out["ports"] = (
        [dict(p) for p in ports if isinstance(p, dict)] if isinstance(ports, list) else []
    )
    if not session.done:
        out["cost_usd"] = round(accrued_cost(session, now), 6)
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


def observe(session: Session, provider_factory: Callable[[str], Provider]) -> JSONObject:
    """What the provider says of a session's instance now, beside what we recorded:
    ``provider_status`` is the instance's status (running, loading, exited, stopped,
    unknown...), ``gone`` when the provider answers it has no such instance, or
    ``unreachable`` when it could not be asked (never taken as gone); ``provider_detail``
    says more. Empty for an ended session or one with no instance yet."""
    from gpushopper.model.redact import clip

    instance_id = session.instance
    if session.status is SessionStatus.ENDED or instance_id is None:
        return {}
    try:
        instance = provider_factory(session.provider).get_instance(instance_id)
    except GpuShopperError as exc:
        return {"provider_status": "unreachable", "provider_detail": clip(str(exc), 200)}
    if instance is None:
        return {"provider_status": "gone", "provider_detail": "the provider has no such instance"}
    detail = instance.extra.get("status_msg") if isinstance(instance.extra, dict) else None
    parts = [p for p in (instance.raw_status, detail) if isinstance(p, str) and p]
    return {"provider_status": instance.status, "provider_detail": clip(": ".join(parts), 200)}


def render_ssh_config(sessions: dict[str, Session]) -> str:
    """One ``Host gpu-<session>`` block per live session with an SSH endpoint (the valid
    sessions only: a damaged record never becomes a block).

    A block is written only when every value in it passed validation: a newline in a host
    would otherwise become a directive (``ProxyCommand``) that ``ssh gpu-<id>`` runs."""
    from gpushopper.core.validate import ssh_record_problem

    lines = ["# Written by gpu-shopper; Include this file from ~/.ssh/config.", ""]
    for session_id in sorted(sessions):
        session = sessions[session_id]
        ssh: JSONObject = session.ssh
        if not SESSION_ID_RE.fullmatch(str(session_id)):
            continue  # a hand-edited id never becomes a Host line
        if not session.live or not ssh.get("host"):
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


def write_ssh_config(path: Path, sessions: dict[str, Session]) -> None:
    from gpushopper.state.atomic import atomic_write_text

    atomic_write_text(path, render_ssh_config(sessions), mode=0o600)


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


def session_logs(provider: Provider, session: Session, tail: int, secrets: list[str]) -> JSONObject:
    """The session's instance log from its provider, cleaned: ``{session_id, provider,
    instance_id, tail, lines}``. An ended session's instance is gone, and its log with it."""
    if session.done:
        raise GpuShopperError(
            f"session {session.id} is {session.status}: its instance is destroyed "
            "and the provider keeps no log of it (a job's own output is in jobs logs)"
        )
    if not session.instance_id:
        raise GpuShopperError(f"session {session.id} has no instance (yet): no log to read")
    raw = provider.instance_logs(str(session.instance_id), tail)
    lines = printable_log(raw, secrets)[-tail:]
    return {
        "session_id": session.id,
        "provider": session.provider,
        "instance_id": str(session.instance_id),
        "tail": tail,
        "lines": lines,
    }


# -- what the sessions commands decide (each command parses, calls one of these, renders) -------


def session_views(
    sessions: Iterable[Session],
    now: datetime,
    *,
    show_all: bool,
    consumer: str | None,
    refresh: Callable[[Session, JSONObject], None] | None = None,
) -> list[JSONObject]:
    """``sessions list``: the live sessions (every one with ``show_all``), only
    ``consumer``'s when given, oldest first; ``refresh`` adds what the provider says."""
    out = []
    for session in sessions:
        if not show_all and session.done:
            continue
        if consumer and session.consumer != consumer:
            continue
        view = public_view(session, now)
        if refresh is not None:
            refresh(session, view)
        out.append(view)
    return sorted(out, key=lambda v: str(v.get("created_at") or ""))


def refresh_view(
    session: Session, view: JSONObject, provider_factory: Callable[[str], Provider]
) -> str | None:
    """Add what the provider says of the instance (:func:`observe`) to ``view``; the
    warning to give when it disagrees with what we recorded, or could not be asked."""
    seen = observe(session, provider_factory)
    view.update(seen)
    said, sid = seen.get("provider_status"), view["id"]
    if said == "unreachable":
        return f"session {sid}: {view['provider']} could not be asked: {seen['provider_detail']}"
    if said in ("gone", "exited", "stopped") and view["status"] in ("running", "verifying"):
        return (
            f"session {sid} is {view['status']} here but {view['provider']} says {said}"
            f" ({seen['provider_detail']}); 'gpu-shopper sessions done {sid}' ends it"
        )
    return None


def ends_in(view: JSONObject, now: datetime) -> str | None:
    """The ENDS IN column: time left on the reservation, ``overdue`` past it, nothing for
    a session that is over."""
    from gpushopper.model.units import format_duration, parse_iso

    end = parse_iso(view.get("reservation_ends_at"))
    if end is None or view.get("status") in ("ended", "failed"):
        return None
    seconds = (end - now).total_seconds()
    return format_duration(seconds) if seconds > 0 else "overdue"


def job_secrets(store: StateStore, session_id: str, environ: Mapping[str, str]) -> list[str]:
    """The values of the ``--secret-env`` names of the session's jobs, read from
    ``environ`` as ``run`` read them, so a log masks them too (the names are recorded,
    never the values)."""
    names = {
        n
        for job in (store.read().get("jobs") or {}).values()
        if isinstance(job, dict) and job.get("session_id") == session_id
        for n in job.get("secret_names") or []
        if isinstance(n, str)
    }
    return [environ[n] for n in sorted(names) if environ.get(n)]


def diagnostics(session: Session, mono: Callable[[], float]) -> JSONObject:
    """``sessions diagnostics``: SSH in (30 s to connect) and report nvidia-smi, CUDA,
    disk and uptime."""
    from gpushopper.remote import ssh as remote

    ssh: JSONObject = session.ssh
    if not ssh.get("host"):
        raise SshError(f"session {session.id} has no SSH endpoint yet (status {session.status})")
    conn = remote.connect(
        ssh["host"], int(ssh["port"]), ssh["user"], Path(ssh["key_path"]), deadline=mono() + 30
    )
    try:
        return {"session": session.id, **remote.diagnostics(conn)}
    finally:
        conn.close()


def ssh_argv(session: Session, command: Iterable[str]) -> list[str]:
    """``sessions ssh``: the OpenSSH command line for the session (and ``command``)."""
    import shutil

    line = ssh_command(session)
    if not line:
        raise SshError(f"session {session.id} has no SSH endpoint (status {session.status})")
    if shutil.which("ssh") is None:
        raise SshError("OpenSSH client not found: apt-get install openssh-client")
    return shlex.split(line) + list(command)
