"""Offer -> instance -> running -> verified over SSH -> handed off, never leaking one.

Intent before action: the session (status ``creating``, label, key path, owner process) is
saved before the provider is asked to create anything. A create that errors is followed by
a lookup by label, never a second create, and a create answer is trusted only when the
instance it names carries our label. Every failure after the create (a failed boot, a
signal, a closed output pipe, a crash) destroys what was created through
``core/teardown.py``, confirms it is gone, records it, and only then says so.

One attempt is a sequence of stages a job or benchmark runner can reuse one by one:
:meth:`Provisioner.intent` (the record and key), ``create`` (intent saved, one create,
the label lookup), ``wait`` (running, SSH details checked, billing recorded), ``verify``
(SSH and preflight) and ``hand_off`` (``running``); each says in its docstring what it
records before and after and what it raises. None of them destroys anything: whatever
they raise goes to :meth:`Provisioner.clean_up`, the one failure path.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from gpushopper.core import interrupts, rules
from gpushopper.core.inventory import get_offer_or_fail, machine_key, search
from gpushopper.core.owner import current_owner
from gpushopper.core.sessions import close_record, refresh_ssh_config
from gpushopper.core.teardown import (
    LABEL_WAIT_S,
    destroy_and_confirm,
    find_by_label,
    note_in_journal,
    wait_for_label,
)
from gpushopper.model.errors import (
    GpuShopperError,
    Interrupted,
    NoSuchItem,
    SshError,
    StateError,
)
from gpushopper.model.jsontypes import JSONObject, JSONValue
from gpushopper.model.models import Instance, LaunchSpec, Offer, OfferQuery, Template, gpu_matches
from gpushopper.model.redact import clip
from gpushopper.model.session import Session, SessionStatus, make_label
from gpushopper.model.units import format_duration, iso, parse_iso
from gpushopper.providers.registry import no_template, split_offer_id

if TYPE_CHECKING:
    from gpushopper.core.runtime import Runtime
    from gpushopper.providers.base import Provider
    from gpushopper.state.store import StateStore


SUPPRESS_AFTER = 2  # failures before an offer/machine is suppressed
SUPPRESS_FOR = timedelta(hours=1)
FORGET_AFTER = timedelta(hours=24)


class BootFailed(GpuShopperError):
    """One attempt failed; its instance (if any) is already destroyed."""

    def __init__(self, message: str, *, cleaned_up: bool = False) -> None:
        super().__init__(message)
        self.cleaned_up = cleaned_up  # the cleanup ran already: do not run it twice


class ProvisionFailed(GpuShopperError):
    """Every attempt failed."""


@dataclass
class ProvisionRequest:
    query: OfferQuery
    offer_id: str | None = None
    template: str | None = None
    image: str | None = None
    hours_s: float = 7200.0
    consumer: str | None = None
    auto_retry: int = 0
    ssh_key: str | None = None
    timeout_s: float = 900.0
    verify: bool = True
    override: bool = False
    hard_max_s: float = 12 * 3600.0
    preferred_gpus: list[str] = field(default_factory=list)
    min_disk_free_gb: float | None = None  # a job's upload must fit (preflight)
    on_stage: Callable[[str], None] | None = None  # a job follows provisioning -> preflight
    # Boot timeouts measured per provider (core/stats.py); ``timeout_s`` where none is.
    timeout_by_provider: dict[str, float] = field(default_factory=dict)

    def timeout_for(self, provider: str) -> float:
        return self.timeout_by_provider.get(provider, self.timeout_s)


@dataclass
class Candidate:
    provider: Provider
    offer: Offer
    template: Template | None


def rented(instance: Instance, session: Session, provider: Provider) -> JSONObject:
    """What the provider says was rented, for the session record (each value validated
    by Instance): the image booted, the disk it bills (beside the disk asked for) and the
    ports it opened. A provider that does not report the image booted the one asked for,
    else its configured default (TensorDock's ``image`` setting)."""
    default = getattr(provider, "image", None)
    asked = session.rest.get("image")
    image = instance.image or asked or (default if isinstance(default, str) else None)
    out: JSONObject = {"image": image, "ports": list(instance.ports)}
    if instance.disk_gb is not None:
        out["disk_gb"] = instance.disk_gb
        out["disk_gb_requested"] = session.rest.get(
            "disk_gb_requested", session.rest.get("disk_gb")
        )
    return out


def below_reliability_floor(req: ProvisionRequest, offer: Offer) -> str | None:
    """A warning when an offer asked for by id is less reliable than the floor a search
    would have applied (it is rented as asked: the id was explicit), else None."""
    floor = req.query.min_reliability
    if req.offer_id is None or floor is None:
        return None
    if offer.reliability is not None and offer.reliability >= floor:
        return None
    shown = "unknown" if offer.reliability is None else f"{offer.reliability:.3f}"
    return (
        f"{offer.id} has reliability {shown}, below the floor {floor:g} "
        "(--min-reliability / defaults.min_reliability); renting it because it was named"
    )


def record_failure(store: StateStore, offer: Offer, reason: str, now: datetime) -> None:
    """Remember a failed boot against the offer and its machine (suppressed when repeated)."""
    with store.transaction() as state:
        health = state.setdefault("offer_health", {})
        for key in (offer.id, machine_key(offer)):
            if not key:
                continue
            entry = dict(health.get(key) or {})
            last = parse_iso(entry.get("last_failure_at"))
            if last is None or now - last > FORGET_AFTER:
                entry["failures"] = 0
            entry["failures"] = int(entry.get("failures", 0)) + 1
            entry["last_failure_at"] = iso(now)
            entry["last_reason"] = clip(reason, 300)
            entry["provider"] = offer.provider
            if entry["failures"] >= SUPPRESS_AFTER:
                entry["suppressed_until"] = iso(now + SUPPRESS_FOR)
            health[key] = entry


@dataclass
class Cleanup:
    """What the cleanup of one attempt did; said only once it is done."""

    instance_id: str | None
    destroyed: bool = False
    error: str | None = None  # why the destroy could not be confirmed
    state_error: str | None = None  # why the outcome could not be written down

    def summary(self) -> str:
        if self.error:
            what = (
                "looking up the instance the create may have made"
                if self.instance_id is None
                else f"destroying instance {self.instance_id}"
            )
            return (
                f"{what} was NOT confirmed ({self.error}); run 'gpu-shopper cleanup-orphans --yes'"
            )
        if self.instance_id is None:
            return "no instance had been created"
        return f"instance {self.instance_id} destroyed (the provider confirms it is gone)"


@dataclass
class Boot:
    """One attempt as it passes from stage to stage (see :meth:`Provisioner.attempt`).

    ``session`` is the session as :meth:`Provisioner.create` first saves it (the intent);
    the stages fill in the rest as they learn it: ``instance_id`` once an id is trusted,
    ``instance`` and ``ssh`` once it runs, ``verification`` once it is checked."""

    req: ProvisionRequest
    candidate: Candidate
    session: Session
    spec: LaunchSpec
    key_path: Path
    public_key: str
    started: float = 0.0  # mono() when the create was sent: boot timeouts count from it
    instance_id: str | None = None
    instance: Instance | None = None
    ssh: JSONObject = field(default_factory=dict)
    verification: JSONObject | None = None
    host_key_fingerprint: str | None = None
    create_sent: bool = False  # from here on an instance may exist: look for it by label
    looked_up: bool = False  # ...unless that lookup was done already

    @property
    def session_id(self) -> str:
        return self.session.id

    @property
    def timings(self) -> dict[str, float]:
        """The stage timings so far (written with each stage's update)."""
        timings: dict[str, float] = self.session.timings
        return timings

    @property
    def lookup_needed(self) -> bool:
        """A cleanup that knows no instance id must look for one by label first: the
        create was sent and no lookup has settled what it made."""
        return self.create_sent and not self.looked_up

    def trusted_id(self) -> str:
        """The instance id :meth:`Provisioner.create` trusted (the later stages need one)."""
        if self.instance_id is None:
            raise BootFailed(f"session {self.session_id} has no instance yet")
        return self.instance_id


def _check_ssh_details(instance: Instance, user: str) -> None:
    """What the provider says about SSH reaches ssh_config and ssh arguments: check it
    first. Unusable details are a failed boot (the caller destroys and records it)."""
    from gpushopper.core.validate import ssh_endpoint_problem

    problem = ssh_endpoint_problem(instance.ssh_host, instance.ssh_port, user)
    if problem is not None:
        raise BootFailed(f"instance {instance.instance_id} has unusable SSH details: {problem}")
    endpoints = instance.extra.get("ssh_endpoints")
    if endpoints:
        instance.extra["ssh_endpoints"] = [
            (host, port) for host, port in endpoints if ssh_endpoint_problem(host, port) is None
        ]


class Provisioner:
    def __init__(
        self,
        *,
        store: StateStore,
        keys_dir: Path,
        ssh_config_path: Path,
        provider_factory: Callable[[str], Provider],
        clock: Callable[[], datetime],
        mono: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        log: Callable[[str], None] = lambda message: None,
        health: JSONObject | None = None,
        deadline_script: Callable[[Provider, JSONObject], str | None] | None = None,
        on_rented: Callable[[Offer], None] | None = None,
        estimate: Callable[[list[Offer], str], int] | None = None,
    ) -> None:
        self.store = store
        self.keys_dir = keys_dir
        self.ssh_config_path = ssh_config_path
        self.provider_factory = provider_factory
        self.clock = clock
        self.mono = mono
        self.sleep = sleep
        self.log = log
        self.health = health or {}
        self.deadline_script = deadline_script
        self.on_rented = on_rented  # e.g. mark the offer taken in the offer cache
        self.estimate = estimate  # measured price-performance for query.workload

    # -- choosing ---------------------------------------------------------------------------
    def _template_for(self, provider: Provider, ident: str | None) -> Template | None:
        if not ident:
            return None
        return provider.get_template(ident)

    def candidates(self, req: ProvisionRequest) -> tuple[list[Candidate], list[str]]:
        """Offers to try, best first, and notes about skipped or failing providers."""
        notes: list[str] = []
        if req.offer_id is not None:  # "" is a mistake (an unset $OFFER), never "any offer"
            name, native = split_offer_id(req.offer_id)
            provider = self.provider_factory(name)
            template = self._template_for(provider, req.template)
            if req.template and template is None:
                raise NoSuchItem(no_template(name, req.template))
            offer = get_offer_or_fail(provider, req.offer_id, native, req.query.disk_gb)
            return [Candidate(provider, offer, template)], notes
        # The best few of all matches are enough to try in turn (and to show alternatives);
        # preferred GPUs re-order the whole market, so then every match is asked for.
        enough = None if req.preferred_gpus and not req.query.gpus else max(20, req.auto_retry + 4)
        query = replace(req.query, template=req.template, limit=enough)
        templates: dict[str, Template | None] = {}
        providers: dict[str, Provider] = {}

        def resolver(provider: Provider, ident: str) -> Template | None:
            templates[provider.NAME] = provider.get_template(ident)
            return templates[provider.NAME]

        def factory(name: str) -> Provider:
            providers[name] = self.provider_factory(name)
            return providers[name]

        result = search(
            query,
            factory,
            cache=None,
            refresh=True,
            health=self.health,
            now=self.clock,
            template_resolver=resolver,
            estimate=self.estimate,
        )
        result.raise_if_nobody_answered(query.providers)
        notes += [f"skipped {why}" for why in result.skipped.values()]
        notes += [f"{name} failed: {msg}" for name, msg in result.errors.items()]
        offers = result.offers  # already ranked by search()
        if not offers:
            raise ProvisionFailed(
                "no offer matches; loosen the filters (see 'gpu-shopper inventory')"
            )
        if req.preferred_gpus and not query.gpus:

            def preference(offer: Offer) -> int:
                for i, name in enumerate(req.preferred_gpus):
                    if gpu_matches(name, offer.gpu_name or ""):
                        return i
                return len(req.preferred_gpus)

            offers = sorted(offers, key=preference)
        return [
            Candidate(providers[o.provider], o, templates.get(o.provider)) for o in offers
        ], notes

    # -- the whole job ----------------------------------------------------------------------
    def provision(self, req: ProvisionRequest, candidates: list[Candidate]) -> Session:
        """Try candidates in order (1 + auto_retry attempts); return the running session."""
        attempts = 1 + max(0, req.auto_retry)
        failures: list[str] = []
        failed_machines: set[str] = set()
        tried = 0
        for candidate in candidates:
            if tried >= attempts:
                break
            key = machine_key(candidate.offer)
            if key and key in failed_machines:
                continue
            tried += 1
            if tried > 1:
                self._say(f"Trying the next offer: {candidate.offer.id}")
                if req.on_stage is not None:
                    req.on_stage("provisioning")
            try:
                return self.attempt(req, candidate)
            except BootFailed as exc:
                failures.append(f"{candidate.offer.id}: {exc}")
                if key:
                    failed_machines.add(key)
                self._say(f"Attempt {tried} failed: {exc}")
        summary = "; ".join(failures) or "no usable offer"
        raise ProvisionFailed(f"provisioning failed after {tried} attempt(s): {summary}")

    def _ssh_key(
        self, req: ProvisionRequest, session_id: str, label: str
    ) -> tuple[Path, str, bool]:
        from gpushopper.remote.keys import generate_session_key, public_key_for

        if req.ssh_key:
            path = Path(req.ssh_key).expanduser()
            return path, public_key_for(path), False
        path, public = generate_session_key(self.keys_dir, session_id, label)
        return path, public, True

    def _update(self, session_id: str, **changes: JSONValue) -> Session:
        """Update our session, unless another process (watch, shutdown) ended it meanwhile:
        only a booting session is moved on, never one closed ``failed`` (watch, finding no
        instance listed) or ended (checked and written in one transaction)."""
        with self.store.transaction() as state:
            record = state["sessions"].get(session_id)
            session = None if record is None else Session.from_record(record)
            if session is None or not session.booting:
                raise BootFailed(f"session {session_id} was ended by another process while booting")
            session.set(**changes)
            written = state["sessions"][session_id] = session.to_record()
            return Session.from_record(written)

    # -- one attempt, stage by stage --------------------------------------------------------
    def attempt(self, req: ProvisionRequest, candidate: Candidate) -> Session:
        """One boot of one offer: the intent, then the stages create, wait, verify and hand
        off. Any failure on the way goes through :meth:`clean_up`, which destroys what was
        created. Returns the running session; raises BootFailed (cleaned up already),
        Interrupted or ProvisionFailed (a signal), or a bug as it is (cleaned up too)."""
        boot = self.intent(req, candidate)
        try:
            self.create(boot)
            self.wait(boot)
            self.verify(boot)
            return self.hand_off(boot)
        except BaseException as exc:
            failure = self.clean_up(boot, exc)
            if failure is exc:
                raise
            raise failure from None

    def intent(self, req: ProvisionRequest, candidate: Candidate) -> Boot:
        """What :meth:`create` saves and sends: a new session id, its label, the SSH key
        (generated unless given: the only thing written here), the session record
        (``creating``, with its owner process) and the launch spec. Nothing is saved to the
        state and nothing is asked of the provider yet."""
        provider, offer, template = candidate.provider, candidate.offer, candidate.template
        session_id = self.store.new_session_id()
        install_id = self.store.install_id()
        label = make_label(install_id, session_id)
        key_path, public_key, generated = self._ssh_key(req, session_id, label)
        record = self._new_record(
            req, candidate, session_id, install_id, label, key_path, generated
        )
        onstart = self.deadline_script(provider, record) if self.deadline_script else None
        record["deadline_on_instance"] = bool(onstart)
        spec = LaunchSpec(
            offer=offer,
            label=label,
            public_key=public_key,
            disk_gb=req.query.disk_gb,
            image=req.image,
            template=template,
            onstart=onstart,
            ssh_user=record["ssh"]["user"],
        )
        # Built as JSON (the deadline snippet adds to it), typed from here on.
        return Boot(req, candidate, Session.from_record(record), spec, key_path, public_key)

    def _new_record(
        self,
        req: ProvisionRequest,
        candidate: Candidate,
        session_id: str,
        install_id: str,
        label: str,
        key_path: Path,
        generated: bool,
    ) -> JSONObject:
        """The session as first saved: ``creating``, nothing rented yet."""
        provider, offer, template = candidate.provider, candidate.offer, candidate.template
        now = self.clock()
        return {
            "id": session_id,
            "status": "creating",
            "provider": offer.provider,
            "offer_id": offer.id,
            "machine_id": offer.machine_id,
            "instance_id": None,
            "label": label,
            "install_id": install_id,
            "owner": current_owner(),  # watch/cleanup-orphans destroy it if we die meanwhile
            "gpu_name": offer.gpu_name,
            "num_gpus": offer.num_gpus,
            "vram_gb": offer.vram_gb,
            "price_per_hour": offer.price_per_hour,
            "consumer": req.consumer,
            "created_at": iso(now),
            "ready_at": None,
            "billing_started_at": None,
            "reservation_s": req.hours_s,
            "reservation_ends_at": iso(
                rules.reservation_end(now, req.hours_s, req.hard_max_s, req.override)
            ),
            "hard_max_at": iso(rules.hard_max_at(now, req.hours_s, req.hard_max_s, req.override)),
            "ended_at": None,
            "end_reason": None,
            "cost_usd": 0.0,
            "image": req.image or (template.image if template else None),
            "template": template.name if template else None,
            "disk_gb": req.query.disk_gb,
            "ssh": {
                "host": None,
                "port": None,
                "user": getattr(provider, "ssh_user", "root"),
                "key_path": str(key_path),
                "key_generated": generated,
                "known_hosts": str(self.keys_dir / session_id / "known_hosts"),
            },
            "timings": {},
            "boot_timeout_s": req.timeout_for(offer.provider),  # watch waits at least this
            "overrides": rules.overrides_at_creation(
                now, req.hours_s, req.hard_max_s, req.override
            ),
        }

    def create(self, boot: Boot) -> None:
        """Stage 1: save the intent, then ask the provider for the instance, once.

        Before: nothing of the session is in the state. After: the session is saved
        (``creating``) and ``boot.instance_id`` names an instance that carries its label.
        A create that errors is followed by a lookup by label, never a second create; when
        that finds nothing, the session is closed ``failed`` here and BootFailed raised with
        ``cleaned_up`` set. An answer whose instance never shows the label (and no other
        instance showing it within LABEL_WAIT_S) raises BootFailed: the named instance is not
        ours and is left alone; one carrying the label that turns up later is an orphan for
        watch and cleanup-orphans."""
        provider, offer = boot.candidate.provider, boot.candidate.offer
        session_id, label, timings = boot.session_id, boot.spec.label, boot.timings
        self.store.put_session(boot.session)  # intent before action
        self._say(
            f"Renting {offer.id} ({offer.gpu_name} x{offer.num_gpus}, "
            f"${offer.price_per_hour or 0:.3f}/h) as session {session_id}"
        )
        boot.started = self.mono()
        try:
            boot.create_sent = True
            answered = provider.create_instance(boot.spec)
        except GpuShopperError as exc:
            # It may have been created all the same: look it up by label, never create twice.
            found = wait_for_label(provider, label, runtime=self._runtime(self._say))
            # The id before the flag: a signal between the two must not leave clean_up with
            # a settled lookup and no instance to destroy.
            boot.instance_id = found.instance_id if found is not None else None
            boot.looked_up = True
            if found is None:
                reason = f"create failed: {exc}"
                self._finish(session_id, "failed", reason)
                self._record_failure(offer, reason)
                raise BootFailed(reason, cleaned_up=True) from None
            self._say(
                f"The create call failed ({exc}) but instance {boot.instance_id} exists; adopting it"
            )
        else:
            timings["create_call_s"] = round(self.mono() - boot.started, 3)
            boot.instance_id = self._trusted_id(provider, answered, label)
            boot.looked_up = boot.instance_id is None
            if boot.instance_id is None:
                raise BootFailed(
                    f"the create answer named instance {answered}, which does not carry "
                    f"this session's label, and no instance with the label appeared within "
                    f"{format_duration(LABEL_WAIT_S)}"
                )
        timings.setdefault("create_call_s", round(self.mono() - boot.started, 3))

    def wait(self, boot: Boot) -> Instance:
        """Stage 2: from a trusted instance id to a running instance with usable SSH details.

        Before: ``creating``, ``boot.instance_id`` set by :meth:`create`. Records the
        instance id (``provisioning``), marks the offer taken, attaches the key and polls.
        After: ``verifying``, with the SSH host and port, what was rented and
        ``billing_started_at`` recorded; ``boot.instance`` and ``boot.ssh`` set. Raises
        BootFailed (exited, gone, not running in time, unusable SSH details, or the session
        ended by another process); destroys nothing itself."""
        provider, offer = boot.candidate.provider, boot.candidate.offer
        session_id, instance_id, timings = boot.session_id, boot.trusted_id(), boot.timings
        self._update(session_id, instance_id=instance_id, status="provisioning", timings=timings)
        if self.on_rented is not None:  # inside the guard: a crash here still destroys
            try:
                self.on_rented(offer)
            except (OSError, ValueError) as exc:  # a cache hint: never a reason to stop
                self._say(f"Note: could not mark {offer.id} taken in the offer cache: {exc}")
        provider.attach_ssh_key(instance_id, boot.public_key)
        instance = self._wait_running(
            provider, instance_id, boot.req.timeout_for(offer.provider), boot.started
        )
        _check_ssh_details(instance, boot.session.ssh["user"])
        boot.instance = instance
        timings["time_to_running_s"] = round(self.mono() - boot.started, 3)
        boot.ssh = dict(boot.session.ssh, host=instance.ssh_host, port=instance.ssh_port)
        self._update(
            session_id,
            status="verifying",
            ssh=boot.ssh,
            timings=timings,
            **rented(instance, boot.session, provider),
            # The provider charges from "running", not from when our checks pass.
            billing_started_at=self.clock(),
        )
        return instance

    def verify(self, boot: Boot) -> None:
        """Stage 3: unless ``req.verify`` is off, SSH in, check the machine is what was
        rented (GPU model and count, VRAM, CUDA, driver, free disk) and pin its host key in
        the session's known_hosts; then look once more that the instance still runs.

        Before: ``verifying`` (after :meth:`wait`). After: ``boot.ssh`` holds the endpoint
        that answered and its host key, ``boot.verification`` what was found; the state is
        not written (:meth:`hand_off` records it). Raises BootFailed; destroys nothing."""
        req, offer, template = boot.req, boot.candidate.offer, boot.candidate.template
        instance = boot.instance
        assert instance is not None, "verify runs after wait"
        if req.verify:
            if req.on_stage is not None:
                req.on_stage("preflight")
            boot.verification, host_key, boot.host_key_fingerprint = self._verify(
                instance, boot.ssh["user"], boot.key_path, offer, template, req, boot.started
            )
            boot.ssh.update(host=instance.ssh_host, port=instance.ssh_port, host_key=host_key)
            self._write_known_hosts(Path(boot.ssh["known_hosts"]), instance, host_key)
        boot.timings["time_to_ssh_s"] = round(self.mono() - boot.started, 3)
        self._still_running(boot.candidate.provider, boot.trusted_id())

    def hand_off(self, boot: Boot) -> Session:
        """Stage 4: record the session ``running`` and return it.

        After: ``ready_at``, the reservation's end (from now, capped at the hard maximum
        unless overridden), the SSH details, the verification and the timings recorded, and
        ssh_config regenerated. Raises BootFailed when another process ended the session
        meanwhile. What the caller does with the session next is its own: a hand-off that
        reaches no one is undone by :meth:`undo`."""
        req, session_id = boot.req, boot.session_id
        ready = self.clock()
        created = boot.session.created_at or ready
        hard = boot.session.hard_max_at or ready
        ends = ready + timedelta(seconds=req.hours_s)
        final = self._update(
            session_id,
            status="running",
            ready_at=ready,
            reservation_ends_at=ends if req.override else min(ends, hard),
            ssh=boot.ssh,
            timings=boot.timings,
            verification=boot.verification,
            host_key_fingerprint=boot.host_key_fingerprint,
        )
        self._refresh_ssh_config()
        self._say(
            f"Session {session_id} is ready ({format_duration((ready - created).total_seconds())} to boot)"
        )
        return final

    def clean_up(self, boot: Boot, exc: BaseException) -> BaseException:
        """The one failure path of an attempt, for any exception out of its stages: destroy
        what was created through core/teardown.py (:meth:`_abort`: looking it up by label
        when the create was sent and no lookup has settled it), record it, and return the
        exception to raise: ``exc`` itself to re-raise it as it is (a BootFailed cleaned up
        already, a bug), else BootFailed, or Interrupted / ProvisionFailed for a signal."""

        def abort(reason: str, *, record_health: bool = True) -> Cleanup:
            return self._abort(
                boot.candidate.provider,
                boot.candidate.offer,
                boot.session,
                boot.instance_id,
                reason,
                record_health=record_health,
                lookup=boot.lookup_needed,
            )

        if isinstance(exc, BootFailed):
            if exc.cleaned_up:
                return exc
            cleanup = abort(str(exc))
            return BootFailed(self._with_cleanup(str(exc), cleanup), cleaned_up=True)
        if isinstance(exc, KeyboardInterrupt):  # Ctrl-C, SIGTERM, SIGHUP, a closed output pipe
            signum = getattr(exc, "signum", signal.SIGINT)
            name = interrupts.signal_name(signum)
            cleanup = abort(f"interrupted by {name}", record_health=False)
            message = (
                f"interrupted by {name}; {cleanup.summary()}; session {boot.session_id} failed"
            )
            if cleanup.error:
                return ProvisionFailed(message)
            return Interrupted(message, signum)
        if isinstance(exc, (GpuShopperError, OSError)):
            cleanup = abort(f"boot failed: {exc}")
            return BootFailed(self._with_cleanup(str(exc), cleanup), cleaned_up=True)
        # A bug (here or in an adapter): whatever was created is destroyed all the same.
        abort(f"crashed: {type(exc).__name__}: {exc}")
        return exc

    @staticmethod
    def _with_cleanup(message: str, cleanup: Cleanup) -> str:
        if cleanup.error:
            return f"{message}; {cleanup.summary()}"
        return message

    def _trusted_id(self, provider: Provider, answered: str, label: str) -> str | None:
        """The id the create answered, once the instance it names carries our label.

        A wrong id there once left the real instance running until a later sweep (and the
        named one, someone else's, adopted): otherwise the id of the instance that does
        carry the label, waiting for the listing to show it. None when none appears; when
        the last listing failed, its error (the clean-up looks again, and an instance it
        cannot rule out keeps the session live for watch: a glitch is not "not ours")."""
        deadline = self.mono() + LABEL_WAIT_S
        delay = 0.5
        while True:
            try:
                named = provider.get_instance(answered)
            except GpuShopperError as exc:
                self._say(f"Checking instance {answered} failed: {exc}")
                named = None
            if named is not None and named.label == label:
                return answered
            failure: GpuShopperError | None = None
            try:
                found = find_by_label(provider, label)
            except GpuShopperError as exc:
                self._say(f"Looking the instance up by label failed: {exc}")
                found, failure = None, exc
            if found is not None:
                if found.instance_id != answered:
                    self._say(
                        f"The create answer named instance {answered}, but the one carrying "
                        f"this session's label is {found.instance_id}; using that one"
                    )
                return found.instance_id
            remaining = deadline - self.mono()
            if remaining <= 0:
                if failure is not None:
                    raise failure
                return None
            self.sleep(min(delay, remaining))
            delay = min(delay * 2, 8.0)

    def undo(self, session: Session, exc: BaseException) -> GpuShopperError:
        """The hand-off reached no one (a signal or a closed pipe while the result was
        printed, or a crash printing it): destroy the new session too, and return the
        error to exit with (Interrupted for a signal, else ProvisionFailed)."""
        from gpushopper.core.teardown import end_session

        signum = getattr(exc, "signum", signal.SIGINT)
        if isinstance(exc, KeyboardInterrupt):
            why = f"interrupted by {interrupts.signal_name(signum)}"
        else:
            why = f"the hand-off failed ({type(exc).__name__}: {exc})"
        with interrupts.deferred():
            try:
                end_session(
                    self.store,
                    self.provider_factory,
                    session.id,
                    f"{why} before the hand-off" if isinstance(exc, KeyboardInterrupt) else why,
                    runtime=self._runtime(),
                    ssh_config_path=self.ssh_config_path,
                )
            except GpuShopperError as error:
                return ProvisionFailed(
                    f"{why}; destroying instance {session.instance_id} "
                    f"was NOT confirmed ({error}); run 'gpu-shopper cleanup-orphans --yes'"
                )
        done = (
            f"{why}; instance {session.instance_id} destroyed (the "
            f"provider confirms it is gone); session {session.id} ended"
        )
        if isinstance(exc, KeyboardInterrupt):
            return Interrupted(done, signum)
        return ProvisionFailed(done)

    # -- steps ------------------------------------------------------------------------------
    def _runtime(self, log: Callable[[str], None] | None = None) -> Runtime:
        """This provisioner's clocks as a Runtime (for teardown), saying ``log``'s lines."""
        from gpushopper.core.runtime import Runtime

        if log is None:
            return Runtime(clock=self.clock, mono=self.mono, sleep=self.sleep)
        return Runtime(clock=self.clock, mono=self.mono, sleep=self.sleep, log=log)

    def _say(self, message: str) -> None:
        """Progress for people; a closed pipe here is an interruption, never a failed boot."""
        try:
            self.log(message)
        except OSError as exc:
            interrupts.output_lost(exc)

    def _wait_running(
        self, provider: Provider, instance_id: str, timeout_s: float, started: float
    ) -> Instance:
        deadline = started + timeout_s
        delay = 0.5
        last = ""
        while True:
            try:
                instance = provider.get_instance(instance_id)
            except GpuShopperError as exc:  # a flaky poll is not a failed boot
                self._say(f"Polling {instance_id} failed: {exc}")
                instance = Instance(
                    provider.NAME, instance_id, None, "unknown", raw_status="poll failed"
                )
            if instance is None:
                raise BootFailed(f"instance {instance_id} disappeared at the provider")
            seen = instance.raw_status or instance.status
            if seen != last:
                # Heavy images pull for minutes: say what the provider reports as it changes.
                elapsed = format_duration(self.mono() - started)
                self._say(f"Instance {instance_id}: {seen} ({elapsed} since create)")
            last = seen
            if instance.status == "running" and instance.ssh_host and instance.ssh_port:
                return instance
            if instance.status in ("exited", "stopped"):
                detail = instance.extra.get("status_msg") or ""
                raise BootFailed(
                    f"instance {instance_id} is {last}" + (f": {detail}" if detail else "")
                )
            remaining = deadline - self.mono()
            if remaining <= 0:
                raise BootFailed(
                    f"instance {instance_id} not running after {format_duration(timeout_s)} (still {last})"
                )
            self.sleep(min(delay, remaining))
            delay = min(delay * 1.5, 10.0)

    def _still_running(self, provider: Provider, instance_id: str) -> None:
        """Hosts have stopped right after start: look once more before handing off."""
        try:
            instance = provider.get_instance(instance_id)
        except GpuShopperError as exc:
            self._say(f"Final status check of {instance_id} failed: {exc}")
            return
        if instance is None:
            raise BootFailed(f"instance {instance_id} disappeared at the provider")
        if instance.status != "running":
            raise BootFailed(
                f"instance {instance_id} is {instance.raw_status or instance.status} after boot"
            )

    def _verify(
        self,
        instance: Instance,
        user: str,
        key_path: Path,
        offer: Offer,
        template: Template | None,
        req: ProvisionRequest,
        started: float,
    ) -> tuple[JSONObject, str, str]:
        from gpushopper.remote import ssh

        assert instance.ssh_host and instance.ssh_port
        self._say(f"Checking the machine over SSH ({user}@{instance.ssh_host}:{instance.ssh_port})")
        try:
            conn = ssh.connect(
                instance.ssh_host,
                instance.ssh_port,
                user,
                key_path,
                alternatives=instance.extra.get("ssh_endpoints"),
                deadline=started + req.timeout_for(offer.provider),
                clock=self.mono,
                sleep=self.sleep,
            )
        except SshError as exc:
            raise BootFailed(str(exc)) from None
        try:
            found = ssh.inspect(conn)
            host_key = conn.host_key()
        finally:
            conn.close()
        if conn.endpoint and conn.endpoint != (instance.ssh_host, instance.ssh_port):
            self._say(
                f"SSH answers on {conn.endpoint[0]}:{conn.endpoint[1]} (the proxy), not the direct port"
            )
            instance.ssh_host, instance.ssh_port = conn.endpoint
        min_cuda = max(
            [
                c
                for c in (req.query.min_cuda, template.min_cuda if template else None)
                if c is not None
            ],
            default=None,
        )
        driver_expected = not (template and template.requirements.get("nvidia_driver") is False)
        problems = ssh.judge(
            found,
            num_gpus=offer.num_gpus,
            vram_gb=offer.vram_gb,
            min_cuda=min_cuda,
            driver_expected=driver_expected,
            gpu_name=offer.gpu_name,
            min_disk_free_gb=req.min_disk_free_gb,
        )
        found.problems = problems
        if problems:
            raise BootFailed("machine is not what was rented: " + "; ".join(problems))
        key_line = f"{host_key.get_name()} {host_key.get_base64()}"
        return found.to_json(), key_line, ssh.fingerprint(host_key)

    def _write_known_hosts(self, path: Path, instance: Instance, host_key: str) -> None:
        from gpushopper.state.atomic import atomic_write_text

        host = (
            instance.ssh_host
            if instance.ssh_port == 22
            else f"[{instance.ssh_host}]:{instance.ssh_port}"
        )
        atomic_write_text(path, f"{host} {host_key}\n", mode=0o600)

    def _finish(self, session_id: str, status: str, reason: str, **extra: JSONValue) -> str | None:
        """Close the session record; returns why it could not be written (never raises:
        a full disk must not stand between a failure and its cleanup)."""
        try:
            with self.store.transaction() as state:
                record = state["sessions"].get(session_id)
                if record is None:
                    return None
                session = Session.from_record(record)
                session.set(**extra)
                close_record(session, SessionStatus(status), reason, self.clock())
                state["sessions"][session_id] = session.to_record()
        except StateError as exc:
            return str(exc)
        self._refresh_ssh_config()
        return None

    def _record_failure(self, offer: Offer, reason: str) -> None:
        try:
            record_failure(self.store, offer, reason, self.clock())
        except StateError as exc:
            self._say(f"Could not record the failure in offer health: {exc}")

    def _abort(
        self,
        provider: Provider,
        offer: Offer,
        session: Session,
        instance_id: str | None,
        reason: str,
        *,
        record_health: bool = True,
        lookup: bool = False,
    ) -> Cleanup:
        """Destroy what this attempt created, confirm it is gone, record that, and only
        then say so. Signals are held meanwhile (a second Ctrl-C cannot cut the destroy
        short) and nothing is printed before the destroy (a full or closed pipe cannot
        stand in its way)."""
        session_id, label = session.id, session.label
        with interrupts.deferred():
            cleanup = Cleanup(instance_id)
            if instance_id is None and lookup:
                # The create may have gone through: wait for the listing to show the label.
                try:
                    found = wait_for_label(provider, label, runtime=self._runtime())
                except GpuShopperError as exc:  # unknown, not "none": left for watch
                    found, cleanup.error = None, f"the listing failed: {exc}"
                cleanup.instance_id = found.instance_id if found else None
            if cleanup.instance_id is not None:
                try:
                    destroy_and_confirm(
                        provider,
                        cleanup.instance_id,
                        runtime=self._runtime(),
                        label=label,
                        allow_unlabelled=True,
                    )
                    cleanup.destroyed = True
                except GpuShopperError as exc:
                    cleanup.error = str(exc)
            extra: JSONObject = {}
            if cleanup.instance_id is not None:
                extra["instance_id"] = cleanup.instance_id
            if cleanup.error:
                # Keep it live in the state so watch/cleanup-orphans finish the job.
                extra["error"] = cleanup.error
                cleanup.state_error = self._finish(
                    session_id,
                    "ending",
                    f"{reason}; destroy not confirmed: {cleanup.error}",
                    **extra,
                )
            else:
                cleanup.state_error = self._finish(session_id, "failed", reason, **extra)
            if record_health:
                self._record_failure(offer, reason)
            if cleanup.state_error:
                note_in_journal(
                    provider,
                    "state_write_failed",
                    session=session_id,
                    instance_id=cleanup.instance_id,
                    wanted="ending" if cleanup.error else "failed",
                    error=cleanup.state_error,
                )
            # Only now, with the destroy confirmed (or not) and recorded, tell the user.
            if cleanup.instance_id is not None or cleanup.error:
                self._say(f"Session {session_id} ({reason}): {cleanup.summary()}")
            if cleanup.state_error:
                self._say(f"Could not record it in the state file: {cleanup.state_error}")
        return cleanup

    def _refresh_ssh_config(self) -> None:
        refresh_ssh_config(self.ssh_config_path, self.store, self._say)
