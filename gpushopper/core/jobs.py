"""``run``: one job from start to finish, results brought home, nothing left behind.

A job is a session with a job attached, so every safety layer of sessions (the ownership
label, the on-instance deadline, ``watch``, ``cleanup-orphans``) covers it. On top:

* **The record comes first**: the job is written to the state (``jobs``) before anything is
  rented, and moves ``provisioning, preflight, uploading, running, collecting,
  tearing_down`` to ``succeeded, failed, timed_out, stalled, cancelled, lost``.
* **Preflight** is the provisioner's SSH check (GPU model, count, VRAM, CUDA) plus free disk
  for the upload; a mismatch destroys the instance, is recorded against the offer, and
  ``--auto-retry`` moves on. Capacity is retried; the command never is.
* **Detached**: the command runs under ``remote/jobwrap.py``'s wrapper; the local side
  streams the log by offset, reconnects with backoff, and asks the provider every minute.
* **Watchdogs**: max-duration from the command's start, stall = no log growth; TERM to
  the process group, a grace, then KILL.
* **Results home on every outcome** once SSH worked; **then destroy** through
  ``core/teardown.end_session`` (the one destroy path), unless ``--keep-on-failure``.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from gpushopper.core import interrupts
from gpushopper.core.owner import current_owner
from gpushopper.model.errors import GpuShopperError, NoSuchItem, SshError, StateError
from gpushopper.model.jsontypes import JSONObject, JSONValue
from gpushopper.model.redact import clip
from gpushopper.model.session import Session, record_problem
from gpushopper.model.units import iso, parse_iso

if TYPE_CHECKING:
    from paramiko import SFTPClient

    from gpushopper.core.runtime import Runtime
    from gpushopper.providers.base import Provider, SettingsReader
    from gpushopper.remote.ssh import Connection
    from gpushopper.state.paths import Paths
    from gpushopper.state.store import StateStore


class JobHost(Protocol):
    """What a job needs from its caller (the CLI's ``App`` has it; core never imports it)."""

    @property
    def settings(self) -> SettingsReader: ...

    @property
    def store(self) -> StateStore: ...

    @property
    def paths(self) -> Paths: ...

    def clock(self) -> datetime: ...

    def mono(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...

    def provider(self, name: str) -> Provider: ...


STAGES = ("provisioning", "preflight", "uploading", "running", "collecting", "tearing_down")
FINAL = ("succeeded", "failed", "timed_out", "stalled", "cancelled", "lost")
TIMEOUT_EXIT = 124
PROVIDER_CHECK_S = 60.0
KILL_GRACE_S = 10.0
RECONNECT_S = 300.0
DOWNLOAD_ATTEMPTS = 3
HOURS_MARGIN_S = 1800.0
READ_CHUNK = 1 << 20


@dataclass
class JobSpec:
    command: list[str]
    workdir: str | None = None
    excludes: list[str] = field(default_factory=list)
    uploads: list[tuple[str, str]] = field(default_factory=list)  # (local, remote)
    downloads: list[tuple[str, str | None]] = field(default_factory=list)  # (remote, local)
    env: dict[str, str] = field(default_factory=dict)
    secret_names: list[str] = field(default_factory=list)
    out_dir: str | None = None
    max_duration_s: float | None = None
    stall_timeout_s: float | None = None
    keep_on_failure_s: float | None = None
    detach: bool = False
    remote_root: str = "gpu-shopper-jobs"


class Redactor:
    """Replaces secret values in streamed output; holds back an incomplete line so a secret
    split across two reads is still caught."""

    def __init__(self, secrets: list[str]) -> None:
        self.secrets = sorted({s.encode() for s in secrets if s}, key=len, reverse=True)
        self.held = b""

    def _clean(self, data: bytes) -> bytes:
        for secret in self.secrets:
            data = data.replace(secret, b"***")
        return data

    def feed(self, data: bytes) -> bytes:
        if not self.secrets:
            return data
        data = self.held + data
        cut = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
        longest = len(self.secrets[0])
        if cut == 0 and len(data) > 65536:
            cut = len(data) - longest
        self.held = data[cut:]
        return self._clean(data[:cut])

    def flush(self) -> bytes:
        data, self.held = self.held, b""
        return self._clean(data)


# -- the record -----------------------------------------------------------------------------
def new_job_id(store: StateStore) -> str:
    import secrets as _secrets

    existing = store.read().get("jobs") or {}
    while True:
        candidate = "j" + _secrets.token_hex(3)
        if candidate not in existing:
            return candidate


def resolve_job_id(store: StateStore, given: str) -> str:
    """The job id ``given`` names: the id itself or a unique prefix of one (exit 2 when
    it names none or several)."""
    from gpushopper.model.ids import match_prefix

    jobs = store.read().get("jobs") or {}
    found = match_prefix(given, jobs if isinstance(jobs, dict) else {}, "job")
    if found is None:
        raise NoSuchItem(f"no job {given!r} (see 'gpu-shopper jobs list --all')")
    return found


def get_job(store: StateStore, job_id: str) -> JSONObject:
    jobs = store.read().get("jobs") or {}
    record = jobs.get(job_id)
    if not isinstance(record, dict):
        raise NoSuchItem(f"no job {job_id!r} (see 'gpu-shopper jobs list --all')")
    return dict(record)


def list_jobs(store: StateStore) -> list[JSONObject]:
    jobs = store.read().get("jobs") or {}
    return sorted(
        (dict(j) for j in jobs.values() if isinstance(j, dict)),
        key=lambda j: str(j.get("created_at") or ""),
    )


JOB_KEYS = (
    "id",
    "status",
    "stage",
    "exit_code",
    "failure_stage",
    "error",
    "session_id",
    "offer_id",
    "gpu_name",
    "price_per_hour",
    "cost_usd",
    "timings",
    "artifacts",
    "log_path",
    "teardown",
)


# The time each stage of a job took, as its record's ``timings`` (and a benchmark result's).
TIMING_KEYS = ("provision_s", "upload_s", "run_s", "download_s", "teardown_s")


def job_timings(record: JSONObject) -> JSONObject:
    """Every stage's time in the job's record (None for a stage it never reached)."""
    return {k: (record.get("timings") or {}).get(k) for k in TIMING_KEYS}


def public_job(record: JSONObject) -> JSONObject:
    out = {key: record.get(key) for key in JOB_KEYS}
    out["timings"] = job_timings(record)
    out["artifacts"] = list(record.get("artifacts") or [])
    out["teardown"] = dict(record.get("teardown") or {"confirmed": False, "at": None})
    for key in ("command", "created_at", "ended_at", "out_dir", "detached"):
        out[key] = record.get(key)
    return out


class Outcome:
    def __init__(self) -> None:
        self.status: str | None = None
        self.exit_code: int | None = None
        self.error: str | None = None
        self.failure_stage: str | None = None
        self.signum: int | None = None


@dataclass
class _Stream:
    """Where one watch of a job's log stands: the offset, and the clocks of the watchdogs,
    the provider check and the reconnect backoff (``runtime.mono`` seconds)."""

    ctl: str
    local_log: Path
    offset: int
    max_s: float | None
    stall_s: float | None
    begun: float
    last_growth: float
    last_check: float
    saved_at: float
    lost_since: float | None = None
    delay: float = 1.0

    def watchdog(self, now: float) -> tuple[str, str, str] | None:
        """The watchdog that fired at ``now``, if one did: (status, what is said, the
        recorded error). --max-duration counts from the command's start, --stall-timeout
        from the last output."""
        if self.max_s and now - self.begun >= self.max_s:
            limit = f"--max-duration {_dur(self.max_s)}"
            return ("timed_out", f"{limit} reached", f"stopped by {limit}")
        if self.stall_s and now - self.last_growth >= self.stall_s:
            silent = f"no output for {_dur(self.stall_s)}"
            return ("stalled", silent, f"{silent} (--stall-timeout)")
        return None


class JobRunner:
    def __init__(
        self,
        app: JobHost,
        *,
        runtime: Runtime,
        emit: Callable[[bytes], None],
        poll_s: float = 0.25,
    ) -> None:
        self.app = app
        self.store = app.store
        self.runtime = runtime
        self.emit = emit
        self.poll_s = poll_s
        self.conn: Connection | None = None
        self.sftp: SFTPClient | None = None
        self.redactor = Redactor([])
        self.stage = "provisioning"

    # -- bookkeeping ------------------------------------------------------------------------
    def _say(self, message: str) -> None:
        try:
            self.runtime.log(message)
        except OSError as exc:
            interrupts.output_lost(exc)

    def _update(self, job_id: str, **changes: JSONValue) -> JSONObject:
        """Write changes to the job; a state that cannot be written is said, never a reason
        to stop a cleanup."""
        try:
            with self.store.transaction() as state:
                record = state.setdefault("jobs", {}).setdefault(job_id, {"id": job_id})
                timings = changes.pop("timings", None)
                record.update(changes)
                if timings:
                    record["timings"] = {**(record.get("timings") or {}), **timings}
                return dict(record)
        except StateError as exc:
            self._say(f"Could not record job {job_id} in the state file: {exc}")
            return {"id": job_id, **changes}

    def _stage(self, job_id: str, stage: str) -> None:
        self.stage = stage
        self._update(job_id, stage=stage, status=stage)

    def create(self, spec: JobSpec) -> JSONObject:
        job_id = new_job_id(self.store)
        log_dir = self.app.paths.data_dir / "jobs" / job_id
        out_dir = Path(spec.out_dir or Path("gpu-shopper-runs") / job_id).expanduser()
        record = {
            "id": job_id,
            "status": "provisioning",
            "stage": "provisioning",
            "command": list(spec.command),
            "workdir": str(Path(spec.workdir).resolve()) if spec.workdir else None,
            "uploads": [list(u) for u in spec.uploads],
            "downloads": [list(d) for d in spec.downloads],
            "env_names": sorted(spec.env),
            "secret_names": list(spec.secret_names),  # names only, never values
            "out_dir": str(out_dir.resolve()),
            "log_path": str(log_dir / "output.log"),
            "remote_dir": f"{spec.remote_root.rstrip('/')}/{job_id}",
            "owner": current_owner(),
            "created_at": iso(self.runtime.clock()),
            "max_duration_s": spec.max_duration_s,
            "stall_timeout_s": spec.stall_timeout_s,
            "keep_on_failure_s": spec.keep_on_failure_s,
            "detached": spec.detach,
            "session_id": None,
            "exit_code": None,
            "failure_stage": None,
            "error": None,
            "timings": {},
            "artifacts": [],
            "teardown": {"confirmed": False, "at": None},
            "log_offset": 0,
            "started": False,
        }
        with self.store.transaction() as state:  # intent before action: a full disk stops here
            state.setdefault("jobs", {})[job_id] = record
        return dict(record)

    # -- the whole job ----------------------------------------------------------------------
    def run(
        self,
        spec: JobSpec,
        job: JSONObject,
        provision: Callable[[Callable[[str], None]], Session],
    ) -> tuple[JSONObject, int]:
        """Provision (through ``provision``), then :meth:`carry_on`. Returns (job, exit)."""
        job_id = job["id"]
        self.stage = "provisioning"
        started = self.runtime.mono()

        def on_stage(stage: str) -> None:
            self._stage(job_id, stage)

        try:
            session = provision(on_stage)
        except KeyboardInterrupt:
            self._update(
                job_id,
                status="cancelled",
                failure_stage=self.stage,
                error=f"interrupted by {interrupts.signal_name(interrupts.last_signal() or 2)}",
                ended_at=iso(self.runtime.clock()),
                timings={"provision_s": round(self.runtime.mono() - started, 3)},
            )
            raise
        except (GpuShopperError, OSError) as exc:  # OSError: a local disk full, say
            cause = exc if isinstance(exc, GpuShopperError) else GpuShopperError(str(exc))
            done = self._update(
                job_id,
                status="cancelled" if cause.exit_code >= 128 or cause.exit_code == 0 else "failed",
                failure_stage=self.stage,
                error=clip(str(cause), 2000),
                ended_at=iso(self.runtime.clock()),
                timings={"provision_s": round(self.runtime.mono() - started, 3)},
            )
            raise JobFailed(done, cause) from None
        self._update(
            job_id,
            session_id=session.id,
            offer_id=session.offer_id,
            gpu_name=session.gpu_name,
            price_per_hour=session.price_per_hour,
            timings={"provision_s": round(self.runtime.mono() - started, 3)},
        )
        with contextlib.suppress(StateError):
            self.store.update_session(session.id, job_id=job_id)
        return self.carry_on(spec, job_id, session, fresh=True)

    def carry_on(
        self, spec: JobSpec, job_id: str, session: Session, *, fresh: bool
    ) -> tuple[JSONObject, int]:
        """From a running session to a finished, torn-down job (or a detached one)."""
        self._redact(spec)
        job = get_job(self.store, job_id)
        outcome = Outcome()
        ssh_worked = False
        started = bool(job.get("started"))
        if not fresh:
            self.stage = "running"  # attach: a first connect that fails is a running failure
        setup_from = self.runtime.mono()
        try:
            self._connect(session)
            ssh_worked = True
            if not fresh and not started:
                # The run that was starting it ended before it recorded the start: the
                # instance knows. A command that never started is not started now (never twice).
                started = self._wrapper_started(job)
                if not started:
                    raise GpuShopperError(
                        f"job {job_id} never started on the instance (the run that was starting "
                        "it ended first); it is not started now"
                    )
            if fresh:
                self._upload_stage(spec, job, session)
                self._start(job, session)
                started = True  # from here on the command is stopped on every way out
                self._mark_started(job_id, session, setup_from)
                if spec.detach:
                    self._say(
                        f"Job {job_id} is running detached on session {session.id}; "
                        f"'gpu-shopper jobs attach {job_id}' streams it, collects and destroys"
                    )
                    self._close()
                    return get_job(self.store, job_id), 0
            self.stage = "running"
            self._watch(job, session, outcome)
        except KeyboardInterrupt as exc:
            signum = getattr(exc, "signum", None) or interrupts.last_signal() or signal.SIGINT
            outcome.status, outcome.signum = "cancelled", signum
            outcome.error = f"interrupted by {interrupts.signal_name(signum)}"
            outcome.failure_stage = self.stage
        except (GpuShopperError, OSError) as exc:  # OSError: a local disk full, a log unwritable
            outcome.status = "failed"
            outcome.error = clip(str(exc), 2000)
            outcome.failure_stage = self.stage
        except Exception as exc:  # a bug: the instance still goes (one teardown), then it is raised
            outcome.status = "failed"
            outcome.error = clip(f"internal error: {type(exc).__name__}: {exc}", 2000)
            outcome.failure_stage = self.stage
            self._finish(spec, job_id, session, outcome, ssh_worked, started)
            raise
        return self._finish(spec, job_id, session, outcome, ssh_worked, started)

    def _upload_stage(self, spec: JobSpec, job: JSONObject, session: Session) -> None:
        """The uploading stage: the job's files, environment and wrapper on the instance."""
        self._stage(job["id"], "uploading")
        t0 = self.runtime.mono()
        self._upload(spec, job, session)
        self._update(job["id"], timings={"upload_s": round(self.runtime.mono() - t0, 3)})

    def _mark_started(self, job_id: str, session: Session, setup_from: float) -> None:
        """The command runs: recorded (an attach never starts it again) and timed."""
        self._record_setup(session.id, round(self.runtime.mono() - setup_from, 3))
        self._update(
            job_id,
            started=True,
            started_at=iso(self.runtime.clock()),
            status="running",
            stage="running",
        )
        self.stage = "running"

    def _redact(self, spec: JobSpec) -> list[str]:
        """Redact the job's secrets from what comes home; the names whose value this
        process lacks (an attach or cancel from another shell) are returned."""
        self.redactor = Redactor([spec.env[n] for n in spec.secret_names if spec.env.get(n)])
        return [n for n in spec.secret_names if not spec.env.get(n)]

    def cancel(self, spec: JobSpec, job_id: str, session: Session) -> tuple[JSONObject, int]:
        """``jobs cancel``: stop the command, collect what it wrote, destroy. The rest of
        its output comes home redacted; without a secret's value to redact, it stays on
        the instance (destroyed) and that is said."""
        job = get_job(self.store, job_id)
        unredactable = self._redact(spec)
        outcome = Outcome()
        outcome.status, outcome.error, outcome.failure_stage = "cancelled", "cancelled", "running"
        ssh_worked = False
        try:
            self._connect(session, timeout_s=60.0)
            ssh_worked = True
            self._stop(job)
            if unredactable:
                self._say(
                    f"Job {job_id}: its output stays on the instance: "
                    f"{', '.join(unredactable)} is not set here to redact it"
                )
            else:
                local_log, offset = self._local_log(job)
                self._drain(f"{job['remote_dir']}/ctl", local_log, offset)
        except KeyboardInterrupt as exc:  # a signal mid-cancel: on to the destroy, 128+N
            outcome.signum = getattr(exc, "signum", None) or interrupts.last_signal() or 2
            outcome.error = f"cancelled; interrupted by {interrupts.signal_name(outcome.signum)}"
        except (GpuShopperError, OSError) as exc:  # the destroy below happens all the same
            self._say(f"Job {job_id}: {exc}")
        record, code = self._finish(
            spec, job_id, session, outcome, ssh_worked, bool(job.get("started"))
        )
        return record, code if code == 3 or outcome.signum else 0

    # -- SSH ---------------------------------------------------------------------------------
    def _record_setup(self, session_id: str, seconds: float) -> None:
        """The session's ``setup_s`` (SSH ready to the command started: connect, upload,
        wrapper), for the lifecycle statistics (sessions stats)."""
        try:
            with self.store.transaction() as state:
                record = state["sessions"].get(session_id)
                if record_problem(record) is None:  # a damaged record is never rewritten
                    session = Session.from_record(record)
                    session.timings = {**session.timings, "setup_s": seconds}
                    state["sessions"][session_id] = session.to_record()
        except StateError as exc:
            self._say(f"Could not record the setup time of session {session_id}: {exc}")

    def _connect(self, session: Session, timeout_s: float = 120.0) -> None:
        from gpushopper.remote import ssh as remote

        endpoint = session.ssh
        if not endpoint.get("host") or not endpoint.get("port"):
            raise SshError(f"session {session.id} has no SSH endpoint")
        self._close()
        self.conn = remote.connect(
            str(endpoint["host"]),
            int(endpoint["port"]),
            str(endpoint.get("user") or "root"),
            Path(str(endpoint["key_path"])),
            deadline=self.runtime.mono() + timeout_s,
            clock=self.runtime.mono,
            sleep=self.runtime.sleep,
        )
        # The host key the provision verified (trust on first use): a machine that answers at
        # this endpoint with another key gets no secrets and no commands.
        recorded = endpoint.get("host_key")
        if recorded:
            key = self.conn.host_key()
            if f"{key.get_name()} {key.get_base64()}" != recorded:
                self._close()
                raise SshError(
                    f"the host key of {endpoint['host']}:{endpoint['port']} is not the one "
                    f"recorded for session {session.id}: refusing to use it"
                )
        self.sftp = self.conn.client.open_sftp()

    def _close(self) -> None:
        for thing in (self.sftp, self.conn):
            if thing is not None:
                with contextlib.suppress(Exception):
                    thing.close()
        self.sftp = self.conn = None

    def _exec(self, command: str, timeout: float = 60.0) -> tuple[int, str, str]:
        assert self.conn is not None
        try:
            return self.conn.run(command, timeout=timeout)
        except (OSError, EOFError) as exc:
            raise SshError(f"SSH command failed: {exc or type(exc).__name__}") from None
        except Exception as exc:  # paramiko.SSHException
            raise SshError(f"SSH command failed: {exc}") from None

    def _put_text(self, path: str, text: str, mode: int) -> None:
        assert self.sftp is not None
        with self.sftp.open(path, "w") as handle:
            self.sftp.chmod(path, mode)  # before a byte is written
            handle.write(text.encode())

    def _upload(self, spec: JobSpec, job: JSONObject, session: Session) -> None:
        from gpushopper.remote import jobwrap

        d = job["remote_dir"]
        code, _, err = self._exec(
            f"umask 077 && mkdir -p {_q(d)}/{jobwrap.CTL} {_q(d)}/{jobwrap.WORK}/out"
        )
        if code != 0:
            raise SshError(f"could not make the job folder {d}: {clip(err.strip(), 200)}")
        ssh = session.ssh
        work = f"{d}/{jobwrap.WORK}"
        if spec.workdir:
            self._say(f"Uploading {spec.workdir} as the working directory")
            jobwrap.upload_into(ssh, Path(spec.workdir), work, excludes=spec.excludes)
        for local, remote in spec.uploads:
            target = remote if remote.startswith("/") else f"{work}/{remote}"
            self._say(f"Uploading {local} to {target}")
            jobwrap.upload_tree(ssh, Path(local).expanduser(), target, excludes=spec.excludes)
        env = dict(spec.env)
        self._put_text(f"{d}/{jobwrap.CTL}/env", jobwrap.env_file(env), 0o600)
        self._put_text(
            f"{d}/{jobwrap.CTL}/run.sh", jobwrap.wrapper_script(job["id"], job["command"]), 0o700
        )

    def _start(self, job: JSONObject, session: Session) -> None:
        from gpushopper.remote import jobwrap

        code, out, err = self._exec(jobwrap.start_command(job["remote_dir"]))
        if code != 0 or "started" not in out:
            raise SshError(f"could not start the job: {clip((err or out).strip(), 200)}")
        self._say(f"Job {job['id']} started: {' '.join(job['command'])[:200]}")

    # -- running ------------------------------------------------------------------------------
    def _wrapper_started(self, job: JSONObject) -> bool:
        from gpushopper.remote import jobwrap

        assert self.sftp is not None
        try:
            self.sftp.stat(f"{job['remote_dir']}/{jobwrap.CTL}/started")
        except FileNotFoundError:
            return False
        return True

    def _read(self, path: str, offset: int) -> bytes:
        assert self.sftp is not None
        try:
            with self.sftp.open(path, "r") as handle:
                handle.seek(offset)
                return bytes(handle.read(READ_CHUNK))
        except FileNotFoundError:
            return b""

    def _status(self, path: str) -> int | None:
        """The exit status the wrapper wrote (None while there is none). The instance's
        text becomes this tool's own exit status, so it must be what sh writes, 0 to 255:
        anything else (``256`` would exit 0 here, ``-1`` 255) fails the job, never read as
        a code and never taken for a dropped SSH."""
        assert self.sftp is not None
        try:
            with self.sftp.open(path, "r") as handle:
                text = handle.read(64).decode(errors="replace").strip()
        except FileNotFoundError:
            return None
        if text.isascii() and text.isdigit() and int(text) <= 255:
            return int(text)
        raise BadExitStatus(
            f"the instance wrote {text[:20]!r} as the command's exit status (0 to 255 expected)"
        )

    def _watch(self, job: JSONObject, session: Session, outcome: Outcome) -> None:
        """Stream the log until the command ends, a watchdog fires, or the instance is gone."""
        stream = self._open_stream(job)
        while True:
            read = self._poll(job["id"], session, outcome, stream)
            if read is None:  # the instance is gone (outcome says so)
                return
            chunk, code = read
            if chunk:
                self._take(job["id"], stream, chunk)
            if code is not None:
                self._exited(job["id"], stream, code, outcome)
                return
            now = self.runtime.mono()
            fired = stream.watchdog(now)
            if fired is not None:
                self._fire(job, stream, fired, outcome)
                return
            if now - stream.last_check >= PROVIDER_CHECK_S:
                stream.last_check = now
                if self._instance_gone(session, outcome):
                    return
            if len(chunk) < READ_CHUNK:
                self.runtime.sleep(self.poll_s)

    def _open_stream(self, job: JSONObject) -> _Stream:
        """The local log (new, 0600, unless an attach resumes it at the recorded offset) and
        the clocks of the watchdogs (a resumed job's run counted from its start)."""
        from gpushopper.remote import jobwrap

        local_log, offset = self._local_log(job)
        # --max-duration counts from the command's start: an attach counts the time it ran
        # before (by the recorded wall-clock start) as run already.
        begun = self.runtime.mono()
        started_at = parse_iso(job.get("started_at"))
        if started_at is not None:
            begun -= max(0.0, (self.runtime.clock() - started_at).total_seconds())
        return _Stream(
            ctl=f"{job['remote_dir']}/{jobwrap.CTL}",
            local_log=local_log,
            offset=offset,
            max_s=job.get("max_duration_s"),
            stall_s=job.get("stall_timeout_s"),
            begun=begun,
            last_growth=self.runtime.mono(),
            last_check=self.runtime.mono(),
            saved_at=self.runtime.mono(),
        )

    @staticmethod
    def _local_log(job: JSONObject) -> tuple[Path, int]:
        """The job's local log and the offset it holds the remote log to: a new one (0600)
        unless one resumes at the recorded offset."""
        local_log = Path(job["log_path"])
        local_log.parent.mkdir(parents=True, exist_ok=True)
        offset = int(job.get("log_offset") or 0)
        if offset == 0 or not local_log.exists():
            offset = 0
            fd = os.open(local_log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.close(fd)
        return local_log, offset

    def _poll(
        self, job_id: str, session: Session, outcome: Outcome, stream: _Stream
    ) -> tuple[bytes, int | None] | None:
        """One read of the log, and of the exit status when no output came: (chunk, code).
        A failed read is a dropped SSH: closed, retried with backoff, and after RECONNECT_S
        the provider is asked (None: the instance is gone) or the job fails."""
        try:
            if self.sftp is None:
                self._connect(session, timeout_s=30.0)
                self._say(f"Job {job_id}: reconnected; the stream resumes at byte {stream.offset}")
                stream.delay = 1.0
                stream.lost_since = None
            chunk = self._read(f"{stream.ctl}/log", stream.offset)
            return chunk, (self._status(f"{stream.ctl}/status") if not chunk else None)
        except BadExitStatus:
            raise
        except Exception as exc:  # noqa: BLE001 - a failed read is a dropped SSH; signals pass
            if stream.lost_since is None:
                stream.lost_since = self.runtime.mono()
                self._say(f"Job {job_id}: SSH dropped ({exc or type(exc).__name__}); reconnecting")
            self._close()
            if self.runtime.mono() - stream.lost_since > RECONNECT_S:
                if self._instance_gone(session, outcome):
                    return None
                raise SshError(
                    f"SSH to the instance failed for {int(RECONNECT_S)}s: "
                    f"{exc or type(exc).__name__}"
                ) from None
            self.runtime.sleep(stream.delay)
            stream.delay = min(stream.delay * 2, 15.0)
            return b"", None

    def _take(self, job_id: str, stream: _Stream, chunk: bytes) -> None:
        """New output: mirrored (redacted) to the log and the caller; the offset saved at
        most every 5 seconds (an attach resumes there)."""
        stream.offset += len(chunk)
        stream.last_growth = self.runtime.mono()
        self._mirror(stream.local_log, chunk)
        if self.runtime.mono() - stream.saved_at > 5:
            self._update(job_id, log_offset=stream.offset)
            stream.saved_at = self.runtime.mono()

    def _exited(self, job_id: str, stream: _Stream, code: int, outcome: Outcome) -> None:
        """The command ended by itself with ``code``: the rest of the log, then the outcome."""
        stream.offset = self._drain(stream.ctl, stream.local_log, stream.offset)
        outcome.status = "succeeded" if code == 0 else "failed"
        outcome.exit_code = code
        if code != 0:
            outcome.failure_stage = "running"
            outcome.error = f"the command exited {code}"
        self._update(
            job_id,
            log_offset=stream.offset,
            timings={"run_s": round(self.runtime.mono() - stream.begun, 3)},
        )

    def _fire(
        self, job: JSONObject, stream: _Stream, fired: tuple[str, str, str], outcome: Outcome
    ) -> None:
        """A watchdog fired: the command stopped (TERM, grace, KILL), the outcome 124."""
        self._say(f"Job {job['id']}: {fired[1]}; stopping it")
        self._stop(job)
        outcome.status, outcome.exit_code = fired[0], TIMEOUT_EXIT
        outcome.error, outcome.failure_stage = fired[2], "running"
        self._update(job["id"], timings={"run_s": round(self.runtime.mono() - stream.begun, 3)})
        self._drain(stream.ctl, stream.local_log, stream.offset)

    def _drain(self, ctl: str, local_log: Path, offset: int) -> int:
        with contextlib.suppress(Exception):
            while self.sftp is not None:
                chunk = self._read(f"{ctl}/log", offset)
                if not chunk:
                    break
                offset += len(chunk)
                self._mirror(local_log, chunk)
        rest = self.redactor.flush()
        if rest:
            self._out(local_log, rest)
        return offset

    def _mirror(self, local_log: Path, chunk: bytes) -> None:
        clean = self.redactor.feed(chunk)
        if clean:
            self._out(local_log, clean)

    def _out(self, local_log: Path, data: bytes) -> None:
        with local_log.open("ab") as handle:
            handle.write(data)
        try:
            self.emit(data)
        except OSError as exc:
            interrupts.output_lost(exc)

    def _instance_gone(self, session: Session, outcome: Outcome) -> bool:
        provider = self.app.provider(session.provider)
        try:
            instance = provider.get_instance(str(session.instance_id))
        except GpuShopperError as exc:
            self._say(f"Checking instance {session.instance_id} failed: {exc}")
            return False
        if instance is not None and instance.status not in ("exited", "stopped"):
            return False
        seen = "gone" if instance is None else (instance.raw_status or instance.status)
        outcome.status = "lost"
        outcome.failure_stage = "running"
        outcome.error = f"instance {session.instance_id} is {seen} at the provider"
        self._say(f"Job {session.rest.get('job_id') or ''}: {outcome.error}; the job is lost")
        self._close()
        return True

    def _stop(self, job: JSONObject, grace_s: float = KILL_GRACE_S) -> None:
        """TERM to the command's process group, a grace, then KILL."""
        from gpushopper.remote import jobwrap

        if self.conn is None:
            return
        d = job["remote_dir"]
        for sig, wait_s in (("TERM", grace_s), ("KILL", 5.0)):
            self._exec(jobwrap.kill_command(d, sig))
            deadline = self.runtime.mono() + wait_s
            while self.runtime.mono() < deadline:
                with contextlib.suppress(Exception):
                    if self._status(f"{d}/{jobwrap.CTL}/status") is not None:
                        return
                self.runtime.sleep(0.2)

    # -- the end ------------------------------------------------------------------------------
    def _collect(self, spec: JobSpec, job: JSONObject, session: Session) -> list[JSONObject]:
        """Bring ``out/`` and every --download home: into a temporary folder, renamed only
        when complete, retried, each file listed with its size and sha256."""
        from gpushopper.remote import jobwrap

        work = f"{job['remote_dir']}/{jobwrap.WORK}"
        out_dir = Path(job["out_dir"])
        wanted: list[tuple[str, Path]] = [("out", out_dir)]
        for remote, local in spec.downloads:
            target = Path(local).expanduser() if local else out_dir / Path(remote).name
            wanted.append((remote, target))
        present = self._present(work, [w[0] for w in wanted])
        artifacts: list[JSONObject] = []
        problems: list[str] = []
        out_dir.mkdir(parents=True, exist_ok=True)
        # One transfer per source folder (out/ and the --download paths beside it travel together).
        groups: dict[str, list[tuple[str, str, Path]]] = {}
        for remote, target in wanted:
            if remote not in present:
                if remote != "out":
                    problems.append(f"{remote} does not exist on the instance")
                continue
            parent = remote.rstrip("/").rsplit("/", 1)[0] if "/" in remote.strip("/") else ""
            base = remote.rstrip("/").rsplit("/", 1)[-1]
            src_dir = (parent if remote.startswith("/") else f"{work}/{parent}".rstrip("/")) or "/"
            groups.setdefault(src_dir, []).append((remote, base, target))
        import shutil

        for number, (src_dir, items) in enumerate(groups.items()):
            stage = out_dir.parent / f".{out_dir.name}.gs-partial-{job['id']}-{number}"
            last: Exception | None = None
            for attempt in range(DOWNLOAD_ATTEMPTS):
                try:
                    shutil.rmtree(stage, ignore_errors=True)
                    names = sorted({base for _, base, _ in items})
                    assert self.sftp is not None
                    folders, files, skipped = jobwrap.plan_download(self.sftp, src_dir, names)
                    for name in skipped:
                        self._say(f"Left out {name}: its name has a control character")
                    hashes = jobwrap.download_tree(session.ssh, src_dir, folders, files, stage)
                    last = None
                    break
                except (GpuShopperError, OSError) as exc:
                    last = exc
                    self._say(f"Downloading from {src_dir} failed (attempt {attempt + 1}): {exc}")
                    self.runtime.sleep(min(2.0 * (attempt + 1), 5.0))
            if last is not None:
                problems += [f"{remote}: {last}" for remote, _, _ in items]
                shutil.rmtree(stage, ignore_errors=True)
                continue
            kept = False  # a clash leaves the arrival in the stage, which then stays
            for remote, base, target in items:  # complete: now, and only now, renamed
                landed = stage / base
                if not landed.exists():
                    problems.append(f"{remote}: nothing arrived")
                    continue
                clashes = self._place(landed, target)
                if clashes:
                    kept = True
                    problems.append(
                        f"{remote}: kept your {', '.join(clashes[:3])} (a file and a folder of "
                        f"the same name); what arrived is in {stage}"
                    )
                artifacts += self._list(remote, target, base, hashes)
            if not kept:
                shutil.rmtree(stage, ignore_errors=True)
        if problems:
            raise SshError("collecting results: " + "; ".join(problems))
        return artifacts

    def _present(self, work: str, names: list[str]) -> set[str]:
        found = set()
        for name in names:
            path = name if name.startswith("/") else f"{work}/{name}"
            try:
                assert self.sftp is not None
                self.sftp.stat(path)
                found.add(name)
            except FileNotFoundError:
                continue
        return found

    @staticmethod
    def _place(landed: Path, target: Path) -> list[str]:
        """Move what arrived into place, merged into what is already there: a file replaces
        the file of its name, a folder merges into the folder of its name, and the user's
        other files stay (the instance's names never decide what of ours is deleted).
        Where a file would replace a folder, or a folder a file, the user's is kept and the
        arrival left where it landed: those clashes are returned."""
        target.parent.mkdir(parents=True, exist_ok=True)
        landed_dir = landed.is_dir() and not landed.is_symlink()
        if landed_dir and target.is_dir():
            clashes: list[str] = []
            for child in sorted(landed.iterdir()):
                clashes += JobRunner._place(child, target / child.name)
            if not clashes:
                landed.rmdir()
            return clashes
        if target.is_dir() or (landed_dir and (target.exists() or target.is_symlink())):
            return [str(target)]
        os.replace(landed, target)
        return []

    @staticmethod
    def _list(
        remote: str, target: Path, base: str, hashes: dict[str, tuple[int, str]]
    ) -> list[JSONObject]:
        """The files that arrived for one item, with the size and sha256 taken as they were
        written (tar member ``base/rel`` landed at ``target/rel``)."""
        rows = []
        for name, (size, digest) in sorted(hashes.items()):
            if name == base:
                rel = ""
            elif name.startswith(base + "/"):
                rel = name[len(base) + 1 :]
            else:
                continue
            rows.append(
                {
                    "remote": f"{remote.rstrip('/')}/{rel}" if rel else remote,
                    "local": str(target / rel) if rel else str(target),
                    "bytes": size,
                    "sha256": digest,
                }
            )
        return rows

    def _finish(
        self,
        spec: JobSpec,
        job_id: str,
        session: Session,
        outcome: Outcome,
        ssh_worked: bool,
        started: bool,
    ) -> tuple[JSONObject, int]:
        """Stop, collect, destroy (or keep), record; signals are held until it is done."""
        job = get_job(self.store, job_id)
        with interrupts.deferred():
            if outcome.status is None:
                outcome.status = "failed"
            if started and outcome.status in ("cancelled", "failed") and outcome.exit_code is None:
                self._stop_for_good(job_id, job, session)
            if ssh_worked and outcome.status != "lost":
                self._bring_home(spec, job_id, job, session, outcome)
            self._close()
            keep = spec.keep_on_failure_s and outcome.status not in ("succeeded", "lost")
            teardown_error: str | None = None
            if keep:
                teardown = self._keep_for(session, float(spec.keep_on_failure_s or 0))
            else:
                teardown, teardown_error = self._tear_down(job_id, session, outcome)
            if teardown_error is not None:
                outcome.error = unconfirmed_error(outcome.error, teardown_error)
            code = exit_code(outcome, teardown_error is not None, started)
            record = self._update(
                job_id,
                status=outcome.status,
                stage=outcome.status,
                exit_code=outcome.exit_code,
                failure_stage=outcome.failure_stage,
                error=outcome.error,
                teardown=teardown,
                ended_at=iso(self.runtime.clock()),
            )
        if keep:
            self._say(
                f"Job {job_id} {outcome.status}: instance kept for {_dur(spec.keep_on_failure_s or 0)} "
                f"(--keep-on-failure): reservation and on-instance deadline moved to "
                f"{teardown['kept_until']}; 'gpu-shopper sessions done {session.id}' ends it"
            )
        return record, code

    def _stop_for_good(self, job_id: str, job: JSONObject, session: Session) -> None:
        """Stop a command that was started and did not end by itself (a signal, a failure
        while it ran); a command that cannot be stopped is said, and destroyed all the same."""
        try:
            # A signal may have cut a call on the old connection short: a fresh one.
            self._connect(session, timeout_s=30.0)
            self._stop(job)
        except Exception as exc:  # noqa: BLE001 - the destroy below still ends it
            self._say(f"Job {job_id}: could not stop the command: {exc}")

    def _bring_home(
        self, spec: JobSpec, job_id: str, job: JSONObject, session: Session, outcome: Outcome
    ) -> None:
        """The collecting stage: results home, their list recorded; a failed collect fails a
        job that had succeeded (at ``collecting``), and never stops the teardown after it."""
        self._stage(job_id, "collecting")
        t0 = self.runtime.mono()
        artifacts: list[JSONObject] = []
        try:
            if self.conn is None:
                self._connect(session, timeout_s=60.0)
            artifacts = self._collect(spec, job, session)
        except (GpuShopperError, OSError) as exc:
            self._say(f"Job {job_id}: {exc}")
            if outcome.error is None:
                outcome.error = clip(str(exc), 2000)
            if outcome.status == "succeeded":
                outcome.status, outcome.failure_stage = "failed", "collecting"
        self._update(
            job_id,
            artifacts=artifacts,
            timings={"download_s": round(self.runtime.mono() - t0, 3)},
        )

    def _keep_for(self, session: Session, keep_s: float) -> JSONObject:
        """--keep-on-failure: the instance stays, its reservation and deadline moved on."""
        self._keep(session, keep_s)
        return {
            "confirmed": False,
            "at": None,
            "kept_until": iso(self.runtime.clock() + timedelta(seconds=keep_s)),
        }

    def _tear_down(
        self, job_id: str, session: Session, outcome: Outcome
    ) -> tuple[JSONObject, str | None]:
        """The tearing_down stage, through the one teardown: (the record's ``teardown``, the
        error when the destroy was not confirmed)."""
        self._stage(job_id, "tearing_down")
        t0 = self.runtime.mono()
        teardown: JSONObject = {"confirmed": False, "at": None}
        teardown_error = None
        try:
            ended = end_job_session(
                self.app,
                session.id,
                f"job {job_id} {outcome.status}",
                # The job's own teardown line says what happened: end_session quiet.
                self.runtime.saying(lambda message: None),
            )
            teardown = {
                "confirmed": True,
                "at": ended.recorded("ended_at") or iso(self.runtime.clock()),
            }
            cost = ended.cost_usd
        except GpuShopperError as exc:
            teardown_error = str(exc)
            cost = None
        self._update(job_id, timings={"teardown_s": round(self.runtime.mono() - t0, 3)})
        if cost is not None:
            self._update(job_id, cost_usd=cost)
        return teardown, teardown_error

    def _keep(self, session: Session, keep_s: float) -> None:
        from gpushopper.core.deadline import push_deadline

        until = self.runtime.clock() + timedelta(seconds=keep_s)
        try:
            kept = self.store.update_session(session.id, reservation_ends_at=until)
        except StateError as exc:
            self._say(f"Could not move the reservation: {exc}")
            return
        push_deadline(self.app, kept, log=self._say)


class BadExitStatus(SshError):
    """The instance's status file holds no exit status sh could write (0 to 255)."""


class JobFailed(GpuShopperError):
    """The tool failed before the command ran; carries the job record."""

    def __init__(self, job: JSONObject, cause: GpuShopperError) -> None:
        super().__init__(str(cause))
        self.job = job
        self.cause = cause
        self.exit_code = (
            cause.exit_code
            if cause.exit_code in (0, 3) or cause.exit_code >= 128
            else 1  # a declined prompt is 0, not a failure
        )


def exit_code(outcome: Outcome, unconfirmed: bool, started: bool) -> int:
    """The job's exit status: 3 when the destroy was not confirmed, 128+N after signal N,
    124 for a watchdog, the command's own code once it ran (1 when collecting failed), and
    1 when the tool failed before the command started."""
    code: int
    if unconfirmed:
        code = 3
    elif outcome.signum is not None:
        code = 128 + outcome.signum
    elif outcome.status in ("timed_out", "stalled"):
        code = TIMEOUT_EXIT
    elif outcome.exit_code is not None and outcome.status in ("succeeded", "failed"):
        code = outcome.exit_code if outcome.failure_stage != "collecting" else 1
    else:
        code = 1
    if not started and outcome.status == "failed" and code != 3:
        code = 1
    return code


def unconfirmed_error(error: str | None, teardown_error: str) -> str:
    """The job's error once its destroy was not confirmed: what to run about it, last."""
    return clip(
        f"{error + '; ' if error else ''}destroying the instance "
        f"was NOT confirmed ({teardown_error}); run 'gpu-shopper cleanup-orphans --yes'",
        2000,
    )


def end_job_session(host: JobHost, session_id: str, reason: str, runtime: Runtime) -> Session:
    """The teardown stage of a job and of a benchmark run's sessions: the one destroy path
    (``core/teardown.end_session``) with the host's store, providers and ssh_config."""
    from gpushopper.core.teardown import end_session

    return end_session(
        host.store,
        host.provider,
        session_id,
        reason,
        runtime=runtime,
        ssh_config_path=host.paths.ssh_config_file,
    )


def _q(text: str) -> str:
    import shlex

    return shlex.quote(text)


def _dur(seconds: float) -> str:
    from gpushopper.model.units import format_duration

    return format_duration(seconds)


def default_hours(max_duration_s: float | None, fallback_s: float, hard_max_s: float) -> float:
    """The reservation: max-duration plus a margin, never past the hard maximum."""
    hours = max_duration_s + HOURS_MARGIN_S if max_duration_s else fallback_s
    return min(hours, hard_max_s)
