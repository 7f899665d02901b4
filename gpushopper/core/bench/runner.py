"""``benchmark run``: entries, attempts and a budget; every attempt an ordinary job.

A run is a record in the benchmark file (``state/benchstore.py``), written before anything
is rented and updated as entries progress. Each entry (one offer, or the best reliable
offers of one GPU model on one provider) is measured by one or more attempts, and every
attempt is a job of ``core/jobs.py``: a labelled session with a reservation and the
on-instance deadline, destroyed through ``core/teardown.py`` on every outcome. So a dead
laptop costs at most one reservation, and ``cleanup-orphans`` still finds what it left.

What holds:

* **Budget**: an attempt starts only while spent (every attempt, failed ones included) +
  committed (price x entry timeout of the attempts running) + its own commitment stays
  within ``--max-budget`` (:func:`budget_allows`).
* **No second try of a failure**: an offer or machine that failed once is not tried again
  in the run; an offer answering ``no_such_ask`` (taken since the search) is skipped
  without using an attempt.
* **The measured GPU is the advertised one**, or the result is invalid and the mismatch
  goes to offer health (as preflight mismatches do).
* **Stops**: the first SIGINT/SIGTERM/SIGHUP (``core/interrupts.py``) or a
  ``cancel_requested`` set by ``benchmark cancel`` stops every attempt: each job tears its
  session down as on Ctrl-C. Final statuses never change back.

Entries run in threads (``--parallel``), each attempt with its own JobRunner. Signals reach
the main thread only: it tells the workers through :class:`Stop`, which their sleeps (every
wait of a job or a boot sleeps on the host's clock) turn into the same ``KeyboardInterrupt``
a job handles on Ctrl-C, never inside a deferred destroy.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar, cast

from gpushopper.core import interrupts
from gpushopper.core.bench.records import assign_id, validate_result
from gpushopper.core.bench.workloads import (
    ResultInvalid,
    Workload,
    invalid_reasons,
    read_outcome,
)
from gpushopper.core.owner import current_owner
from gpushopper.model.errors import (
    GpuShopperError,
    NoSuchItem,
    NotFound,
    StateError,
    UsageError,
)
from gpushopper.model.jsontypes import JSONObject, JSONValue
from gpushopper.model.redact import clip
from gpushopper.model.session import Damaged, Session, SessionStatus
from gpushopper.model.units import iso, parse_iso

if TYPE_CHECKING:
    from gpushopper.core.jobs import JobHost, JobRunner, JobSpec
    from gpushopper.core.provisioner import Candidate, Provisioner, ProvisionRequest
    from gpushopper.model.models import Offer
    from gpushopper.state.benchstore import BenchStore
    from gpushopper.state.store import StateStore

# The caller's host (the CLI's App): the runner hands it, behind _AttemptHost, back to the
# caller's own make_provisioner, so its full type travels through.
H = TypeVar("H", bound="JobHost")

RUN_FINAL = ("completed", "partial", "failed", "cancelled", "interrupted")
ENTRY_FINAL = ("succeeded", "failed", "cached", "skipped")
CACHE_DAYS = 30
CANCEL_POLL_S = 1.0
# A create refused because the offer went since the search: Vast.ai's no_such_ask, and
# TensorDock's stock-outs (field lessons). The offer is skipped without using an attempt.
TAKEN_SIGNS = ("no_such_ask", "No available nodes found", "No available public IPs")
# A job's stage -> the entry's failure stage.
STAGE_OF_JOB = {
    "provisioning": "provision",
    "preflight": "verify",
    "uploading": "setup",
    "running": "measure",
    "collecting": "collect",
    "tearing_down": "teardown",
}


def budget_allows(max_budget: float, spent: float, committed: float, commitment: float) -> bool:
    """A new attempt may start: what was spent, what running attempts may still cost, and
    what this one may cost stay within the budget."""
    return spent + committed + commitment <= max_budget + 1e-9


@dataclass
class RunOptions:
    workload: Workload
    max_budget: float
    request: ProvisionRequest  # query, image, timeouts: as 'run' builds it
    offers: list[str] = field(default_factory=list)
    gpus: list[str] = field(default_factory=list)
    parallel: int = 1
    entry_timeout_s: float = 1800.0
    attempts: int = 1
    no_cache: bool = False
    secret_names: list[str] = field(default_factory=list)
    secret_env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    schedule: str | None = None
    remote_root: str = "gpu-shopper-jobs"


class RunStopped(KeyboardInterrupt):
    """Raised in a worker's sleep once the run is stopping (as SIGTERM for a cancel)."""

    def __init__(self, signum: int) -> None:
        super().__init__(interrupts.signal_name(signum))
        self.signum = signum


class Stop:
    """The run is stopping: by which signal, or by ``benchmark cancel``."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.cancelled = False
        self.failed: str | None = None  # the run itself failed (a bug, an unconfirmed prompt)
        self._raised: set[int] = set()
        self._lock = threading.Lock()

    @property
    def stopping(self) -> bool:
        return self.signum is not None or self.cancelled or self.failed is not None

    def check(self) -> None:
        """In a worker: raise RunStopped once per thread, never inside a deferred destroy."""
        if self.signum is None and interrupts.last_signal() is not None:
            self.signum = interrupts.last_signal()
        if not self.stopping or interrupts.deferring():
            return
        ident = threading.get_ident()
        with self._lock:
            if ident in self._raised:
                return
            self._raised.add(ident)
        raise RunStopped(self.signum or signal.SIGTERM)


class _AttemptHost:
    """The caller's host with a sleep that notices a stopping run."""

    def __init__(self, host: JobHost, stop: Stop) -> None:
        self._host = host
        self._stop = stop

    @classmethod
    def wrap(cls, host: H, stop: Stop) -> H:
        """``host`` behind the stop check, typed as the host it forwards to: the proxy
        answers every other attribute through ``__getattr__``, which the type checker cannot
        see (the one cast of this seam)."""
        return cast("H", cls(host, stop))

    def __getattr__(self, name: str) -> object:
        return getattr(self._host, name)

    def sleep(self, seconds: float) -> None:
        self._stop.check()
        self._host.sleep(seconds)


@dataclass
class _Entry:
    record: JSONObject
    candidates: list[Candidate]
    match_gpu: str | None = None  # cache by GPU model + provider (None: by the offer's machine)


class BenchRunner(Generic[H]):
    def __init__(
        self,
        host: H,
        bench: BenchStore,
        *,
        make_provisioner: Callable[[H], Provisioner],
        log: Callable[[str], None],
        wait: Callable[[float], None] = time.sleep,
        real_mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self.bench = bench
        self.make_provisioner = make_provisioner
        self.log = log
        self.wait = wait  # the main loop's own pause (real time: workers do the work)
        self.real_mono = real_mono
        self.stop = Stop()
        self.lock = threading.RLock()
        self.run: JSONObject = {}
        self.entries: list[_Entry] = []
        self.failed_offers: set[str] = set()
        self.failed_machines: set[str] = set()
        self.unconfirmed = False
        self.commitments: dict[str, float] = {}
        self.watch = RunWatch(bench, "")  # the run's id is known once create() made it

    # -- the record ---------------------------------------------------------------------------
    def create(self, opts: RunOptions) -> JSONObject:
        """The run record, saved before anything is rented (intent before action)."""
        now = iso(self.host.clock())
        with self.bench.transaction() as data:
            existing = data["runs"]
            while True:
                run_id = self.bench_id()
                if run_id not in existing:
                    break
            self.run = {
                "id": run_id,
                "workload": opts.workload.key,
                "command": opts.workload.command_text,
                "status": "pending",
                "owner": current_owner(),
                "created_at": now,
                "updated_at": now,
                "finished_at": None,
                "cancel_requested": False,
                "budget": {"max": opts.max_budget, "spent": 0.0, "committed": 0.0},
                "args": list(opts.args),
                "schedule": opts.schedule,
                "parallel": opts.parallel,
                "entry_timeout_s": opts.entry_timeout_s,
                "attempts_per_entry": opts.attempts,
                "entries": [],
                "error": None,
            }
            existing[run_id] = self.run
        self.watch = RunWatch(self.bench, run_id)
        return dict(self.run)

    @staticmethod
    def bench_id() -> str:
        import os

        return f"b-{os.urandom(3).hex()}"

    def _save(self) -> None:
        """Write the run; a cancel asked for by another process is kept, and a final status
        written elsewhere (``benchmark cancel`` with the owner gone) never changes back."""
        with self.lock:
            self.run["updated_at"] = iso(self.host.clock())
            self.run["budget"]["committed"] = round(sum(self.commitments.values()), 6)
            try:
                with self.bench.transaction() as data:
                    stored = data["runs"].get(self.run["id"]) or {}
                    if stored.get("cancel_requested"):
                        self.run["cancel_requested"] = True
                    if stored.get("status") in RUN_FINAL and self.run["status"] not in RUN_FINAL:
                        self.run["status"] = stored["status"]
                    data["runs"][self.run["id"]] = self.run
            except StateError as exc:
                self._say(f"Could not record benchmark run {self.run['id']}: {exc}")

    def _say(self, message: str) -> None:
        try:
            self.log(message)
        except OSError as exc:
            interrupts.output_lost(exc)

    # -- planning -----------------------------------------------------------------------------
    def plan(self, opts: RunOptions) -> None:
        """One entry per --offer, or per GPU model x provider among the matching offers."""
        from gpushopper.core.provisioner import ProvisionFailed
        from gpushopper.model.models import canonical_gpu

        provisioner = self.make_provisioner(_AttemptHost.wrap(self.host, self.stop))
        entries: list[_Entry] = []
        seen: set[str] = set()
        for offer_id in opts.offers:
            if offer_id in seen:
                continue
            seen.add(offer_id)
            req = replace(opts.request, offer_id=offer_id)
            record = _entry_record(offer_id, None, offer_id.split(":", 1)[0], offer_id)
            try:
                candidates, _ = provisioner.candidates(req)
            except (NotFound, NoSuchItem, ProvisionFailed) as exc:
                # One gone offer among several is that entry's failure, not the run's end.
                _give_up(record, "failed", "find_offer", clip(str(exc), 300))
                entries.append(_Entry(record, []))
                continue
            offer = candidates[0].offer
            record["gpu_name"] = offer.gpu_name
            entries.append(_Entry(record, candidates))
        if not opts.offers:
            wanted: list[str | None] = list(opts.gpus) or [None]
            for gpu in wanted:
                query = replace(opts.request.query, gpus=[gpu] if gpu else [])
                req = replace(opts.request, query=query, offer_id=None, auto_retry=200)
                try:
                    candidates, notes = provisioner.candidates(req)
                except ProvisionFailed as exc:
                    record = _entry_record(f"{gpu or 'any'}/any", gpu, None, None)
                    _give_up(record, "failed", "find_offer", clip(str(exc), 300))
                    entries.append(_Entry(record, []))
                    continue
                for note in notes:
                    self._say(f"Note: {note}")
                groups: dict[tuple[str, str], _Entry] = {}
                for candidate in candidates:
                    offer = candidate.offer
                    group = (canonical_gpu(offer.gpu_name or ""), offer.provider)
                    if group not in groups:
                        key = f"{offer.gpu_name}/{offer.provider}"
                        if key in seen:
                            continue
                        seen.add(key)
                        groups[group] = _Entry(
                            _entry_record(key, offer.gpu_name, offer.provider, offer.id),
                            [],
                            match_gpu=offer.gpu_name,
                        )
                    groups[group].candidates.append(candidate)
                entries.extend(groups.values())
        with self.lock:
            self.entries = entries
            self.run["entries"] = [e.record for e in entries]
        self._save()

    # -- running ------------------------------------------------------------------------------
    def execute(self, opts: RunOptions) -> tuple[JSONObject, int]:
        """Run every entry (``--parallel`` at once); returns (the run, the exit status)."""
        with self.lock:
            self.run["status"] = "running"
        self._save()
        pending = deque(e for e in self.entries if e.record["status"] == "pending")
        threads: dict[str, threading.Thread] = {}
        last_poll = -1e9
        while True:
            try:
                with interrupts.deferred():
                    for key in [k for k, t in threads.items() if not t.is_alive()]:
                        threads.pop(key).join()
                    if self.real_mono() - last_poll >= CANCEL_POLL_S:
                        last_poll = self.real_mono()
                        self._poll_cancel()
                    if interrupts.last_signal() is not None and self.stop.signum is None:
                        self.stop.signum = interrupts.last_signal()
                    while not self.stop.stopping and pending and len(threads) < opts.parallel:
                        entry = pending[0]
                        started = self._start(entry, opts, busy=bool(threads))
                        if started is None:
                            break  # waits for budget a running entry will give back
                        pending.popleft()
                        if isinstance(started, threading.Thread):
                            threads[entry.record["key"]] = started
                    if not threads and (not pending or self.stop.stopping):
                        break
                self.wait(0.05)
            except KeyboardInterrupt as exc:
                self.stop.signum = getattr(exc, "signum", None) or signal.SIGINT
            except Exception as exc:  # a bug here: stop every entry (each tears down), then say
                self.stop.failed = clip(f"{type(exc).__name__}: {exc}", 500)
                for thread in threads.values():
                    thread.join()
                with self.lock:
                    self.run["error"] = self.stop.failed
                self._conclude()
                raise
        for entry in pending:
            _give_up(entry.record, "skipped", None, "the run was stopped before it started")
        return self._conclude()

    def _poll_cancel(self) -> None:
        """Read the run back only when the file changed since the last poll (a stat, not a
        parse of every stored result, once a second)."""
        try:
            stored = self.watch.changed()
        except StateError:
            return
        if stored is not None and stored.get("cancel_requested") and not self.stop.cancelled:
            self.stop.cancelled = True
            with self.lock:
                self.run["cancel_requested"] = True
            self._say(f"Benchmark run {self.run['id']}: cancel requested; stopping every entry")

    def _start(self, entry: _Entry, opts: RunOptions, busy: bool) -> threading.Thread | None | bool:
        """Start the entry's first attempt in a thread; False when the entry ended without
        one (cached, no offer left, over budget), None to wait for running entries."""
        record = entry.record
        cached = None if opts.no_cache else self._cached(entry, opts)
        if cached is not None:
            with self.lock:
                record["status"] = "cached"
                record["result_id"] = cached["id"]
            self._say(f"{record['key']}: cached result {cached['id']} ({cached.get('created_at')})")
            self._save()
            return False
        candidate = self._next_candidate(entry)
        if candidate is None:
            with self.lock:
                _give_up(record, "skipped", "find_offer", "no offer left that did not fail")
            self._save()
            return False
        commitment = _commitment(candidate, opts.entry_timeout_s)
        if not self._reserve(record["key"], commitment):
            if busy:
                return None
            with self.lock:
                _give_up(record, "skipped", None, self._over_budget(commitment))
            self._say(f"{record['key']}: not started: {record['reason']}")
            self._save()
            return False
        with self.lock:
            record["status"] = "running"
        self._save()
        thread = threading.Thread(
            target=self._entry_thread,
            args=(entry, opts, candidate),
            name=f"bench-{record['key']}",
            daemon=True,
        )
        thread.start()
        return thread

    def _over_budget(self, commitment: float) -> str:
        budget = self.run["budget"]
        if math.isinf(commitment):
            return "its price is unknown: no --max-budget can hold it"
        return (
            f"over budget: spent ${budget['spent']:.4f} + committed "
            f"${sum(self.commitments.values()):.4f} + this entry ${commitment:.4f} "
            f"> --max-budget ${budget['max']:.2f}"
        )

    def _reserve(self, key: str, commitment: float) -> bool:
        with self.lock:
            budget = self.run["budget"]
            committed = sum(self.commitments.values())
            if not budget_allows(budget["max"], budget["spent"], committed, commitment):
                return False
            self.commitments[key] = commitment
            return True

    def _release(self, key: str, cost: float) -> None:
        with self.lock:
            self.commitments.pop(key, None)
            self.run["budget"]["spent"] = round(self.run["budget"]["spent"] + cost, 6)

    def _next_candidate(self, entry: _Entry) -> Candidate | None:
        from gpushopper.core.inventory import machine_key

        with self.lock:
            while entry.candidates:
                candidate = entry.candidates[0]
                key = machine_key(candidate.offer)
                if candidate.offer.id in self.failed_offers or (
                    key and key in self.failed_machines
                ):
                    entry.candidates.pop(0)
                    continue
                return candidate
        return None

    def _cached(self, entry: _Entry, opts: RunOptions) -> JSONObject | None:
        from gpushopper.model.models import canonical_gpu

        if not entry.candidates:
            return None
        offer = entry.candidates[0].offer
        horizon = self.host.clock() - timedelta(days=CACHE_DAYS)
        data = self.bench.read()
        runs = data["runs"]
        command = opts.workload.command_text
        best = None
        for result in data["results"].values():
            if not isinstance(result, dict):
                continue
            if result.get("workload") != opts.workload.key or result.get("valid") is not True:
                continue
            if command is not None:
                # A custom workload is its --command: the same NAME running another command
                # measured something else (a submitted result, with no run, never matches).
                run_id = result.get("run_id")
                made_by = runs.get(run_id) if isinstance(run_id, str) else None
                if not isinstance(made_by, dict) or made_by.get("command") != command:
                    continue
            created = _when(result.get("created_at"))
            if created is None or created < horizon:
                continue
            seen = result.get("offer") or {}
            if seen.get("provider") != offer.provider:
                continue
            if entry.match_gpu is not None:
                if canonical_gpu(str(seen.get("gpu_name") or "")) != canonical_gpu(entry.match_gpu):
                    continue
            elif not offer.machine_id or str(seen.get("machine_id")) != str(offer.machine_id):
                continue
            if best is None or str(result.get("created_at")) > str(best.get("created_at")):
                best = result
        return best

    def _entry_thread(self, entry: _Entry, opts: RunOptions, candidate: Candidate) -> None:
        record = entry.record
        key = record["key"]
        used = 0
        try:
            while True:
                outcome = self._attempt(entry, opts, candidate)
                if outcome == "skip":  # no_such_ask: the offer was taken, not an attempt
                    pass
                else:
                    used += 1
                if outcome in ("succeeded", "interrupted"):
                    break
                if used >= opts.attempts or self.stop.stopping:
                    break
                nxt = self._next_candidate(entry)
                if nxt is None:
                    break
                commitment = _commitment(nxt, opts.entry_timeout_s)
                if not self._reserve(key, commitment):
                    with self.lock:
                        record["reason"] = self._over_budget(commitment)
                    break
                candidate = nxt
        except BaseException as exc:  # noqa: BLE001 - a bug must not leave the entry running
            with self.lock:
                record["reason"] = clip(f"crashed: {type(exc).__name__}: {exc}", 300)
            if isinstance(exc, KeyboardInterrupt) and self.stop.signum is None:
                self.stop.signum = getattr(exc, "signum", None) or signal.SIGINT
        finally:
            with self.lock:
                self.commitments.pop(key, None)
                if record["status"] not in ENTRY_FINAL:
                    # Only offers taken since the search (no_such_ask): nothing was measured.
                    taken = all(a.get("stage") == "find_offer" for a in record["attempts"])
                    record["status"] = "skipped" if taken else "failed"
                    if record.get("failure_stage") is None:
                        last = (record["attempts"] or [{}])[-1]
                        record["failure_stage"] = last.get("stage") or "find_offer"
                        record["reason"] = record.get("reason") or last.get("reason")
            self._save()

    def _attempt(self, entry: _Entry, opts: RunOptions, candidate: Candidate) -> str:
        """One job on one offer: 'succeeded', 'failed', 'skip' (no_such_ask) or
        'interrupted'. Whatever happens, its cost is recorded and its offer (and machine)
        is never tried again in this run once it failed."""
        from gpushopper.core.jobs import JobRunner
        from gpushopper.core.runtime import Runtime

        record = entry.record
        offer = candidate.offer
        host = _AttemptHost.wrap(self.host, self.stop)
        runner = JobRunner(host, runtime=Runtime.of(host, log=self._say), emit=lambda data: None)
        spec = self._spec(opts)
        job = runner.create(spec)
        attempt = self._open_attempt(record, offer, job)
        before = self.host.store.session_records().ids()  # damaged records' ids too
        provision = self._provision_step(opts, host, candidate, attempt)
        done, code, stopped = self._run_job(runner, spec, job, provision)
        session, cost, teardown_ok = self._settle(record, offer, done, before, attempt)
        outcome = self._verdict(done, code, stopped, attempt)
        if outcome is None:
            outcome = self._measured(entry, opts, candidate, done, session, attempt)
        if not teardown_ok:
            attempt["stage"] = "teardown"
            attempt["reason"] = clip(str(done.get("error") or "teardown not confirmed"), 500)
        self._remember(record, offer, outcome, attempt)
        self._say(
            f"{record['key']}: attempt on {offer.id} {outcome}"
            + (f" at {attempt['stage']}: {attempt['reason']}" if outcome != "succeeded" else "")
            + f" (cost ${cost:.4f})"
        )
        return outcome

    def _open_attempt(self, record: JSONObject, offer: Offer, job: JSONObject) -> JSONObject:
        """The attempt's record in its entry, saved (and said) before anything is rented."""
        attempt: JSONObject = {
            "offer_id": offer.id,
            "machine_id": offer.machine_id,
            "price_per_hour": offer.price_per_hour,
            "session_id": None,
            "job_id": job["id"],
            "stage": "provision",
            "reason": None,
            "cost_usd": 0.0,
            "result_id": None,
            "started_at": iso(self.host.clock()),
        }
        with self.lock:
            record["offer_id"] = offer.id
            record["attempts"].append(attempt)
        self._save()
        self._say(
            f"{record['key']}: attempt on {offer.id} ({offer.gpu_name}, "
            f"${offer.price_per_hour or 0:.3f}/h) as job {job['id']}"
        )
        return attempt

    def _provision_step(
        self, opts: RunOptions, host: H, candidate: Candidate, attempt: JSONObject
    ) -> Callable[[Callable[[str], None]], Session]:
        """The job's provision stage: this one offer, no retry, reserved for the entry's
        timeout (plus the margin, within the hard maximum); its session id saved as soon
        as it exists."""
        from gpushopper.core.jobs import default_hours

        hard_max = opts.request.hard_max_s
        req = replace(
            opts.request,
            offer_id=None,
            auto_retry=0,
            hours_s=default_hours(opts.entry_timeout_s, opts.entry_timeout_s, hard_max),
        )
        provisioner = self.make_provisioner(host)

        def provision(on_stage: Callable[[str], None]) -> Session:
            req.on_stage = on_stage
            session = provisioner.provision(req, [candidate])
            with self.lock:
                attempt["session_id"] = session.id
            self._save()
            return session

        return provision

    def _run_job(
        self,
        runner: JobRunner,
        spec: JobSpec,
        job: JSONObject,
        provision: Callable[[Callable[[str], None]], Session],
    ) -> tuple[JSONObject, int, int | None]:
        """The job, start to teardown: (its record as stored, its exit, the signal that
        stopped it). A signal is the run's stop too (unless the run was already stopping)."""
        from gpushopper.core.jobs import JobFailed, get_job

        stopped: int | None = None
        try:
            done, code = runner.run(spec, job, provision)
        except JobFailed as exc:
            done, code = exc.job, exc.exit_code
        except KeyboardInterrupt as exc:  # the job is recorded and torn down already
            stopped = getattr(exc, "signum", None) or signal.SIGINT
            done, code = job, 128 + stopped
            if self.stop.signum is None and not self.stop.cancelled:
                self.stop.signum = stopped
        except Exception:  # a bug, after the job tore its session down: a failed attempt,
            done, code = job, 1  # its cost and teardown settled like any other
        with contextlib.suppress(UsageError):
            done = get_job(self.host.store, job["id"])  # as recorded, whatever ended it
        return done, code, stopped

    def _settle(
        self,
        record: JSONObject,
        offer: Offer,
        done: JSONObject,
        before: set[str],
        attempt: JSONObject,
    ) -> tuple[Session | None, float, bool]:
        """What the attempt cost and whether all it rented is gone: (its session, its cost,
        teardown confirmed). The cost leaves the budget's commitments for the spent sum; an
        unconfirmed teardown makes the run's exit 3."""
        mine, damaged = self._attempt_sessions(done, before, offer.id)  # one read of them
        session = _session_of(done, mine)
        cost = _cost(done, mine, self.host.clock())
        self._release(record["key"], cost)
        teardown_ok = _all_gone(mine) and not damaged
        if not teardown_ok:
            self.unconfirmed = True
        attempt.update(
            session_id=(session.id if session else None) or done.get("session_id"),
            cost_usd=round(cost, 6),
            ended_at=iso(self.host.clock()),
        )
        return session, cost, teardown_ok

    @staticmethod
    def _verdict(
        done: JSONObject, code: int, stopped: int | None, attempt: JSONObject
    ) -> str | None:
        """What a job that did not succeed means for the attempt ('interrupted', 'skip' for
        an offer taken since the search, 'failed'), its stage and reason written to
        ``attempt``; None for a job that succeeded (its result is read next)."""
        status = done.get("status")
        error = clip(str(done.get("error") or ""), 500) or None
        stage = STAGE_OF_JOB.get(str(done.get("failure_stage")), "provision")
        if status == "cancelled" or stopped is not None or (code >= 128 and status != "succeeded"):
            attempt.update(stage="interrupted", reason=error or "interrupted")
            return "interrupted"
        if status == "succeeded":
            return None
        sign = next((t for t in TAKEN_SIGNS if error and t in error), None)
        if stage == "provision" and sign is not None:
            attempt.update(stage="find_offer", reason=f"{sign}: the offer was taken")
            return "skip"
        attempt.update(stage=stage, reason=error or f"the job {status}")
        return "failed"

    def _remember(
        self, record: JSONObject, offer: Offer, outcome: str, attempt: JSONObject
    ) -> None:
        """A failed offer (and, unless it was only taken, its machine) is never tried again in
        this run; the entry says how its last attempt ended."""
        from gpushopper.core.inventory import machine_key

        if outcome != "succeeded":
            with self.lock:
                self.failed_offers.add(offer.id)
                mkey = machine_key(offer)
                if mkey and outcome != "skip":
                    self.failed_machines.add(mkey)
        with self.lock:
            if outcome == "succeeded":
                record.update(status="succeeded", failure_stage=None, reason=None)
            elif outcome == "interrupted":
                record.update(
                    status="failed", failure_stage="interrupted", reason=attempt["reason"]
                )
            else:
                record.update(failure_stage=attempt["stage"], reason=attempt["reason"])
        self._save()

    def _spec(self, opts: RunOptions) -> JobSpec:
        from gpushopper.core.jobs import JobSpec

        workload = opts.workload
        env = dict(workload.env)
        env.update(opts.secret_env)
        return JobSpec(
            command=workload.command(),
            workdir=workload.workdir,
            uploads=list(workload.uploads),
            env=env,
            secret_names=list(opts.secret_names),
            out_dir=None,
            max_duration_s=opts.entry_timeout_s,
            remote_root=opts.remote_root,
        )

    def _attempt_sessions(
        self, job: JSONObject, before: set[str], offer_id: str
    ) -> tuple[dict[str, Session], list[str]]:
        """The sessions this attempt made, in the order they were recorded: its job's, and
        any boot of its offer since; and the ids of those whose record is damaged (their
        teardown cannot be confirmed from the state)."""
        own = job.get("session_id")
        records = self.host.store.session_records()

        def ours(sid: str, offer: JSONValue) -> bool:
            return sid == own or (sid not in before and offer == offer_id)

        damaged = [
            sid
            for sid, bad in records.damaged.items()
            if isinstance(bad.record, dict)
            and ours(sid, bad.record.get("offer_id"))
            and not _says_destroyed(bad.record)
        ]
        return {sid: s for sid, s in records.valid.items() if ours(sid, s.offer_id)}, damaged

    def _measured(
        self,
        entry: _Entry,
        opts: RunOptions,
        candidate: Candidate,
        job: JSONObject,
        session: Session | None,
        attempt: JSONObject,
    ) -> str:
        """Read, validate and store the result of a job that succeeded."""
        from gpushopper.core.provisioner import record_failure

        offer = candidate.offer
        try:
            found, hardware = read_outcome(opts.workload, Path(job["out_dir"]), job, session)
        except (ResultInvalid, OSError) as exc:
            attempt.update(stage="parse", reason=clip(str(exc), 300))
            return "failed"
        reasons = invalid_reasons(opts.workload, found, hardware, offer.gpu_name)
        mismatch = [r for r in reasons if r.startswith("measured GPU")]
        if mismatch:
            try:
                record_failure(self.host.store, offer, mismatch[0], self.host.clock())
            except StateError as exc:
                self._say(f"Could not record the mismatch in offer health: {exc}")
        raw = self._result_record(entry, opts, offer, found, hardware, job, session, attempt)
        raw["valid"] = not reasons
        raw["invalid_reasons"] = reasons
        try:
            # The one validator `benchmark submit` uses: nothing unchecked reaches the file.
            checked = validate_result(raw, where="result.", now=self.host.clock(), source="run")
        except UsageError as exc:
            attempt.update(stage="parse", reason=clip(str(exc), 300))
            return "failed"
        try:
            with self.bench.transaction() as data:
                result = assign_id(checked, data["results"])
                data["results"][result["id"]] = result
        except StateError as exc:
            attempt.update(stage="collect", reason=clip(f"could not store the result: {exc}", 300))
            return "failed"
        attempt["result_id"] = result["id"]
        with self.lock:
            entry.record["result_id"] = result["id"]
        if mismatch:
            attempt.update(stage="verify", reason=mismatch[0])
            return "failed"
        attempt.update(stage="done", reason=None if not reasons else "; ".join(reasons))
        return "succeeded"

    def _result_record(
        self,
        entry: _Entry,
        opts: RunOptions,
        offer: Offer,
        found: JSONObject,
        hardware: JSONObject,
        job: JSONObject,
        session: Session | None,
        attempt: JSONObject,
    ) -> JSONObject:
        from gpushopper.core.jobs import job_timings

        workload = opts.workload
        price = offer.price_per_hour
        extra = dict(found.get("extra_metrics") or {})
        value = float(found["value"])
        if price is not None and workload.name == "llm-throughput" and value > 0:
            extra["usd_per_mtok"] = price / (value * 3600.0) * 1e6
        if price is not None and workload.name == "flux-lora":
            extra["usd_per_1000_steps"] = price * value * 1000.0 / 3600.0
        timings = job_timings(job)
        return {
            "workload": workload.key,
            "workload_name": workload.name,
            "workload_version": workload.version,
            "metric": found["metric"],
            "value": value,
            "unit": found["unit"],
            "higher_is_better": found["higher_is_better"],
            "extra_metrics": extra,
            "backend": found.get("backend"),
            "hardware": {k: v for k, v in hardware.items() if k != "gpu_names"},
            "offer": {
                "provider": offer.provider,
                "offer_id": offer.id,
                "machine_id": offer.machine_id,
                "gpu_name": offer.gpu_name,
                "gpu_count": offer.num_gpus,
                "price_per_hour": price,
                "dlperf": getattr(offer, "dlperf", None),
            },
            "timings": timings,
            "cost_usd": attempt["cost_usd"],
            "valid": True,
            "invalid_reasons": [],
            "run_id": self.run["id"],
            "entry": entry.record["key"],
            "job_id": job.get("id"),
            "session_id": (session.id if session else None) or job.get("session_id"),
            "source": "run",
            "created_at": iso(self.host.clock()),
        }

    def abandon(self, exc: BaseException) -> None:
        """The run ends before any entry started (planning failed, a signal, a 'no' at the
        prompt): every entry is skipped and the run is final, saying why."""
        if isinstance(exc, KeyboardInterrupt):
            self.stop.signum = getattr(exc, "signum", None) or signal.SIGINT
            why = f"interrupted by {interrupts.signal_name(self.stop.signum)}"
        elif type(exc).__name__ == "Abort":  # click's: the prompt was answered no
            self.stop.cancelled = True
            why = "not confirmed"
        else:
            text = str(exc) if isinstance(exc, GpuShopperError) else f"{type(exc).__name__}: {exc}"
            self.stop.failed = why = clip(text, 500)
        with self.lock:
            self.run["error"] = why
            for entry in self.entries:
                _give_up(entry.record, "skipped", None, why)
        self._conclude()

    def _conclude(self) -> tuple[JSONObject, int]:
        with self.lock:
            statuses = [e.record["status"] for e in self.entries]
            good = sum(s in ("succeeded", "cached") for s in statuses)
            if self.stop.failed is not None:
                status = "failed"
            elif self.stop.cancelled:
                status = "cancelled"
            elif self.stop.signum is not None:
                status = "interrupted"
            elif statuses and good == len(statuses):
                status = "completed"
            elif good:
                status = "partial"
            else:
                status = "failed"
            self.run["status"] = status
            self.run["finished_at"] = iso(self.host.clock())
        self._save()
        run = dict(self.run)
        if self.unconfirmed:
            return run, 3
        if self.stop.signum is not None:
            return run, 128 + self.stop.signum
        return run, 0 if status == "completed" else 1


def _entry_record(
    key: str, gpu_name: str | None, provider: str | None, offer_id: str | None
) -> JSONObject:
    return {
        "key": key,
        "gpu_name": gpu_name,
        "provider": provider,
        "offer_id": offer_id,
        "status": "pending",
        "result_id": None,
        "failure_stage": None,
        "reason": None,
        "attempts": [],
    }


def _give_up(record: JSONObject, status: str, stage: str | None, reason: str) -> None:
    if record["status"] in ENTRY_FINAL:
        return
    record["status"] = status
    record["failure_stage"] = stage
    record["reason"] = reason


def _session_of(job: JSONObject, mine: dict[str, Session]) -> Session | None:
    """The attempt's session: its job's, else the last boot of its offer."""
    return mine.get(job.get("session_id") or "") or (list(mine.values())[-1] if mine else None)


def _destroyed(session: Session) -> bool:
    """Destroyed, as the provider confirmed: ended, or failed without a destroy error (a
    failed boot whose instance is gone)."""
    return _says_destroyed(session.to_record())


def _says_destroyed(record: JSONObject) -> bool:
    """:func:`_destroyed`'s rule on a record as stored, damaged ones too (as the raw records
    were judged before the store typed them: one that says so holds nothing)."""
    status = record.get("status")
    return status == SessionStatus.ENDED or (
        status == SessionStatus.FAILED and not record.get("error")
    )


def _all_gone(mine: dict[str, Session]) -> bool:
    """Every session of the attempt is destroyed, as the provider confirmed."""
    for session in mine.values():
        if _destroyed(session):
            continue
        return False
    return True


def _cost(job: JSONObject, mine: dict[str, Session], now: datetime) -> float:
    """What the attempt's session(s) cost, by the second, failed boots included."""
    from gpushopper.core.sessions import accrued_cost

    if not mine and isinstance(job.get("cost_usd"), (int, float)):
        return float(job["cost_usd"])
    return sum((accrued_cost(found, now) for found in mine.values()), 0.0)


def _commitment(candidate: Candidate, timeout_s: float) -> float:
    """What the attempt may cost at most: price x the entry timeout. An offer whose price
    the provider did not send (or sent negative) can be held to no budget: infinite, so
    :func:`budget_allows` never starts it."""
    price = candidate.offer.price_per_hour
    if price is None or not math.isfinite(price) or price < 0:
        return math.inf
    return float(price) * timeout_s / 3600.0


def _when(text: JSONValue) -> JSONValue:
    try:
        return parse_iso(text) if isinstance(text, str) else None
    except ValueError:
        return None


# -- status and cancel (another process) -----------------------------------------------------
class RunWatch:
    """One run, read back from the benchmark file only when the file changed since the last
    look (a stat, not a parse of every stored result, each time a waiter polls)."""

    def __init__(self, bench: BenchStore, run_id: str) -> None:
        self.bench = bench
        self.run_id = run_id
        self._seen: list[int] | None = None

    def changed(self) -> JSONObject | None:
        """The stored run when the file changed since the last call ({} when it holds no
        such run), else None. StateError when the file cannot be read (asked again next
        time)."""
        identity = self.bench.identity()
        if identity is not None and identity == self._seen:
            return None
        stored = self.bench.get("runs", self.run_id) or {}
        self._seen = identity
        return stored


def get_run(bench: BenchStore, run_id: str) -> JSONObject:
    found = bench.get("runs", run_id)
    if found is None:
        raise UsageError(f"no benchmark run {run_id!r} (see 'gpu-shopper benchmark list')")
    return found


def request_cancel(bench: BenchStore, run_id: str) -> JSONObject:
    """Set ``cancel_requested`` (the owning process polls it); a final run is left alone."""
    with bench.transaction() as data:
        run = data["runs"].get(run_id)
        if not isinstance(run, dict):
            raise UsageError(f"no benchmark run {run_id!r} (see 'gpu-shopper benchmark list')")
        if run.get("status") not in RUN_FINAL:
            run["cancel_requested"] = True
        return dict(run)


def sessions_of_run(store: StateStore, run: JSONObject) -> tuple[list[Session], list[Damaged]]:
    """The live sessions of a run: named by its attempts, or booted by its owner process;
    and its damaged records (never acted on: each is reported)."""
    named = {
        a.get("session_id")
        for e in run.get("entries") or []
        for a in e.get("attempts") or []
        if a.get("session_id")
    }
    jobs = {a.get("job_id") for e in run.get("entries") or [] for a in e.get("attempts") or []} - {
        None
    }
    owner = run.get("owner") or {}
    same_owner = ("pid", "host", "started", "boot_id")

    def of_run(sid: str, fields: JSONObject) -> bool:
        theirs = fields.get("owner") or {}
        return bool(
            sid in named
            or fields.get("job_id") in jobs
            or (owner and all(theirs.get(k) == owner.get(k) for k in same_owner))
        )

    records = store.session_records()
    out = []
    for sid, session in records.valid.items():
        if _destroyed(session):
            continue  # ended, or failed and destroyed
        if of_run(sid, session.rest):
            out.append(session)
    damaged = [bad for sid, bad in records.damaged.items() if _damaged_of_run(sid, bad, of_run)]
    return out, damaged


def _damaged_of_run(sid: str, bad: Damaged, of_run: Callable[[str, JSONObject], bool]) -> bool:
    """A damaged record the run may hold an instance through (reported by the cancel):
    one of the run's, unless it says it was destroyed, as the valid ones are judged; a
    record that is not even an object, when the run names it."""
    record = bad.record
    if not isinstance(record, dict):
        return of_run(sid, {})  # only its id can tie it to the run
    return not _says_destroyed(record) and of_run(sid, record)


def finish_abandoned(
    host: JobHost, bench: BenchStore, run_id: str, log: Callable[[str], None]
) -> tuple[JSONObject, list[str]]:
    """``benchmark cancel`` with the owning process gone: destroy the run's sessions through
    the one teardown path, close its jobs and entries, mark it cancelled. Returns the run
    and the destroys that could not be confirmed."""
    from gpushopper.core.jobs import FINAL as JOB_FINAL
    from gpushopper.core.jobs import end_job_session
    from gpushopper.core.runtime import Runtime

    run = get_run(bench, run_id)
    problems = []
    live, damaged = sessions_of_run(host.store, run)
    for session in live:
        try:
            end_job_session(
                host,
                session.id,
                f"benchmark run {run_id} cancelled (its process is gone)",
                Runtime.of(host),
            )
            log(f"Session {session.id}: instance {session.instance_id} destroyed")
        except GpuShopperError as exc:
            problems.append(f"session {session.id}: {exc}")
    for bad in damaged:  # as end_session would refuse it: reported, never touched
        problems.append(f"session {bad.id}: {host.store.damaged_error(bad.id, bad.why)}")
    job_ids = {
        a.get("job_id") for e in run.get("entries") or [] for a in e.get("attempts") or []
    } - {None}
    now = iso(host.clock())
    with contextlib.suppress(StateError), host.store.transaction() as state:
        for job_id in job_ids:
            job = (state.get("jobs") or {}).get(job_id)
            if isinstance(job, dict) and job.get("status") not in JOB_FINAL:
                job.update(
                    status="cancelled",
                    stage="cancelled",
                    error="benchmark run cancelled after its process was gone",
                    ended_at=now,
                )
    with bench.transaction() as data:
        stored = data["runs"].get(run_id) or run
        if stored.get("status") not in RUN_FINAL:
            for entry in stored.get("entries") or []:
                if entry.get("status") == "running":
                    entry.update(
                        status="failed",
                        failure_stage="interrupted",
                        reason="its process was gone; cancelled",
                    )
                elif entry.get("status") == "pending":
                    entry.update(status="skipped", reason="the run was cancelled")
            stored.update(
                status="cancelled", cancel_requested=True, finished_at=now, updated_at=now
            )
            if problems:
                stored["error"] = clip("; ".join(problems), 1000)
            data["runs"][run_id] = stored
        run = dict(stored)
    return run, problems
