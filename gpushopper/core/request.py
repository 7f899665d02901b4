"""From a command's flags to a ``ProvisionRequest``: the one place ``provision``, ``run`` and
``benchmark run`` merge flag > profile > setting > default, apply the hard maximum, pick the
boot timeout (with where it came from) and read ``--secret-env`` names. The offer filters'
merge (the ``OfferQuery`` these commands and ``inventory`` search with) is its neighbour,
core/query.py.

The commands parse their flags into ``Flags``, call ``build`` (and, once the offers are
known, ``choose``), and render; the rules are tested here (tests/test_request.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING

from gpushopper.core import rules
from gpushopper.core.provisioner import Candidate, ProvisionRequest, below_reliability_floor
from gpushopper.model.errors import UsageError
from gpushopper.model.jsontypes import JSONMapping, JSONObject
from gpushopper.model.models import Offer, OfferQuery

if TYPE_CHECKING:
    from gpushopper.core.provisioner import Provisioner
    from gpushopper.core.stats import TimeoutChoice
    from gpushopper.model.session import Session
    from gpushopper.state.config import Settings
    from gpushopper.state.store import StateStore


class Purpose(str, Enum):
    """What the rental is for; the three differ only where a command's flags do."""

    # provision: the reservation is flag > profile > defaults.hours, refused past the hard
    # maximum without --override.
    RENTAL = "provision"
    # run: the reservation follows the job's --max-duration (+30m) or the profile/setting,
    # capped at the hard maximum; only an explicit --hours is refused past it.
    JOB = "run"
    # benchmark run: each attempt sets its own reservation and retries (core/bench/runner);
    # the profile's auto_retry and vastai.preferred_gpus do not apply.
    BENCH = "benchmark"


@dataclass
class Flags:
    """What a command's flags asked for; None (or the default) where a flag was not given
    or the command has no such flag."""

    offer_id: str | None = None
    image: str | None = None
    hours_s: float | None = None
    consumer: str | None = None
    auto_retry: int | None = None
    ssh_key: str | None = None
    timeout_s: float | None = None
    verify: bool = True
    override: bool = False
    job_duration_s: float | None = None  # run's --max-duration (Purpose.JOB)


@dataclass
class Built:
    request: ProvisionRequest
    # The boot timeout someone set (flag, profile or setting) and where; None when it is
    # left to the measured boots (core/stats.provision_timeout).
    explicit_timeout: tuple[float, str] | None


def explicit_timeout(
    settings: Settings, flag_s: float | None, profile: JSONMapping
) -> tuple[float, str] | None:
    """The boot timeout someone set (flag > profile > setting), with where; None if unset."""
    if flag_s:
        return float(flag_s), "--timeout flag"
    if profile.get("timeout"):
        return float(profile["timeout"]), "profile"
    if settings.source("safety.provision_timeout") != "default":
        return float(settings.get("safety.provision_timeout")), "safety.provision_timeout setting"
    return None


def build(
    settings: Settings,
    query: OfferQuery,
    profile: JSONMapping,
    flags: Flags,
    purpose: Purpose = Purpose.RENTAL,
) -> Built:
    """The request a command's flags, its profile and the settings make (flag > profile >
    setting > default, field by field); raises UsageError past the hard maximum."""
    hard_max_s = settings.get("safety.hard_max_hours") * 3600
    if purpose is Purpose.RENTAL:
        hours = flags.hours_s or profile.get("hours") or settings.get("defaults.hours")
        rules.check_hours(hours, hard_max_s, flags.override)
    elif purpose is Purpose.JOB:
        from gpushopper.core.jobs import default_hours  # the job runner: run's only

        if flags.hours_s:
            rules.check_hours(flags.hours_s, hard_max_s, False)
        fallback = profile.get("hours") or settings.get("defaults.hours")
        hours = flags.hours_s or default_hours(flags.job_duration_s, fallback, hard_max_s)
    else:
        hours = ProvisionRequest.hours_s  # each attempt sets its own (core/bench/runner.py)
    explicit = explicit_timeout(settings, flags.timeout_s, profile)
    request = ProvisionRequest(
        query=query,
        offer_id=flags.offer_id,
        template=query.template,
        image=flags.image or profile.get("image"),
        hours_s=hours,
        consumer=flags.consumer or profile.get("consumer") or settings.get("defaults.consumer"),
        auto_retry=_auto_retry(flags, profile, purpose),
        ssh_key=flags.ssh_key or profile.get("ssh_key") or settings.get("vastai.ssh_key_path"),
        timeout_s=explicit[0] if explicit else settings.get("safety.provision_timeout"),
        verify=flags.verify,
        override=flags.override,
        hard_max_s=hard_max_s,
        preferred_gpus=[]
        if purpose is Purpose.BENCH
        else settings.get("vastai.preferred_gpus") or [],
    )
    return Built(request, explicit)


def _auto_retry(flags: Flags, profile: JSONMapping, purpose: Purpose) -> int:
    if purpose is Purpose.BENCH:
        return 0
    if flags.auto_retry is not None:
        return flags.auto_retry
    value: int = profile.get("auto_retry", 0)
    return value


def boot_timeouts(
    built: Built, candidates: list[Candidate], sessions: Iterable[Session], max_s: float
) -> dict[str, TimeoutChoice]:
    """The boot timeout per provider among the candidates, and why (core/stats.py)."""
    from gpushopper.core import stats

    records = list(sessions) if built.explicit_timeout is None else []
    req = built.request
    first: dict[str, Candidate] = {}
    for candidate in candidates:
        first.setdefault(candidate.offer.provider, candidate)
    # The same key a session records (core/stats.template_of): its template, else its image.
    return {
        name: stats.provision_timeout(
            records,
            name,
            c.template.name if c.template else (req.image or "-"),
            explicit=built.explicit_timeout,
            default_s=req.timeout_s,
            max_s=max_s,
        )
        for name, c in first.items()
    }


@dataclass
class Choice:
    """The offers to try for a request, best first, and what to say before renting."""

    built: Built
    candidates: list[Candidate]
    notes: list[str]
    floor_warning: str | None
    timeouts: dict[str, TimeoutChoice] = field(default_factory=dict)

    @property
    def best(self) -> Offer:
        return self.candidates[0].offer

    @property
    def price(self) -> float:
        return self.best.price_per_hour or 0.0

    @property
    def projected_usd(self) -> float:
        """The reservation's cost at the best offer's price."""
        return self.price * self.built.request.hours_s / 3600

    @property
    def timeout(self) -> TimeoutChoice:
        return self.timeouts[self.best.provider]

    def budget_warning(
        self, settings: Settings, sessions: Callable[[], Iterable[Session]], now: datetime
    ) -> str | None:
        """Why renting the best offer for the whole reservation would take this month past
        ``safety.monthly_budget_usd`` (a warning, never a refusal); ``sessions`` is read
        only when a budget is set."""
        from gpushopper.core.costs import budget_warning

        budget = settings.get("safety.monthly_budget_usd")
        if not budget:
            return None
        return budget_warning(sessions(), self.projected_usd, now, budget)

    def dry_run_plan(self, now: datetime) -> JSONObject:
        """What ``provision --dry-run`` reports (CLI.md pins the shape)."""
        req = self.built.request
        plan = rules.dry_run_plan(
            self.best.to_json(),
            self.best.price_per_hour,
            now=now,
            hours_s=req.hours_s,
            hard_max_s=req.hard_max_s,
            override=req.override,
            template=req.template,
            image=req.image,
            alternatives=[c.offer.id for c in self.candidates[1 : 1 + (req.auto_retry or 0) + 3]],
        )
        plan["timeout"] = self.timeout.to_json()
        return plan


def choose(provisioner: Provisioner, built: Built, store: StateStore, settings: Settings) -> Choice:
    """The candidates for ``built`` (raises when there are none), the reliability-floor
    warning, and the boot timeout per provider, which it sets on the request."""
    candidates, notes = provisioner.candidates(built.request)
    floor_warning = below_reliability_floor(built.request, candidates[0].offer)
    records = store.sessions().values() if built.explicit_timeout is None else ()
    timeouts = boot_timeouts(
        built, candidates, records, settings.get("safety.provision_timeout_max")
    )
    built.request.timeout_by_provider = {n: choice.seconds for n, choice in timeouts.items()}
    return Choice(built, candidates, notes, floor_warning, timeouts)


def rent(provisioner: Provisioner, choice: Choice, hand_off: Callable[[Session], None]) -> Session:
    """Provision the choice and hand the session off (print it). A signal, a closed pipe
    or a crash during the hand-off means it reached no one: the new session is destroyed
    too (``Provisioner.undo``), rather than left running unseen, and its error raised."""
    session = provisioner.provision(choice.built.request, choice.candidates)
    # Until the session exists, a signal unwinds through each attempt's own cleanup.
    try:
        hand_off(session)
    except KeyboardInterrupt as exc:
        raise provisioner.undo(session, exc) from None
    except Exception as exc:  # a bug printing it: nobody has the SSH details
        raise provisioner.undo(session, exc) from exc
    return session


def read_secret_env(names: Iterable[str], environ: Mapping[str, str]) -> dict[str, str]:
    """``--secret-env NAME...``: each value from ``environ``; a name that is not a valid
    variable name, or is unset or empty, is a UsageError naming it (never a value)."""
    from gpushopper.remote.jobwrap import check_env_name

    values: dict[str, str] = {}
    for name in names:
        check_env_name(name)
        value = environ.get(name)
        if not value:
            raise UsageError(f"--secret-env {name}: {name} is not set in this environment")
        values[name] = value
    return values
