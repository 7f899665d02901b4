"""Lifecycle statistics from recorded sessions, and the provisioning timeout they set.

Pure: every function takes sessions (``store.sessions().values()``) and returns
plain data. ``sessions stats`` renders ``group_stats``; ``provision`` asks
``provision_timeout`` which boot timeout to use and why.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from gpushopper.model.jsontypes import JSONMapping, JSONObject, JSONValue
from gpushopper.model.session import Session, SessionStatus

# The phases a boot goes through, as the provisioner records them in ``timings`` (seconds
# from the start of the create call), then the ones recorded later.
PHASES: tuple[tuple[str, str], ...] = (
    ("create_call_s", "create call"),
    ("time_to_running_s", "time to running"),
    ("time_to_ssh_s", "time to SSH"),
    ("setup_s", "setup"),
    ("destroy_to_gone_s", "destroy to gone"),
)
# A failed session failed at the first boot stage it has no timing for.
STAGES: tuple[tuple[str, str], ...] = (
    ("create", "create_call_s"),
    ("running", "time_to_running_s"),
    ("ssh", "time_to_ssh_s"),
)
MIN_BOOTS = 5  # recorded boots of a provider/template pair before they set its timeout
TIMEOUT_FACTOR = 1.5
TIMEOUT_FLOOR_S = 300.0


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0-1) by linear interpolation between closest ranks; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = math.floor(pos)
    high = math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _num(value: JSONValue) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) and number >= 0 else None


def timing(session: Session, key: str) -> float | None:
    return _num(session.timings.get(key))


def template_of(session: Session) -> str:
    """The template (Vast.ai) or image (TensorDock) a session booted, or "-"."""
    return str(session.rest.get("template") or session.rest.get("image") or "-")


def failed_stage(session: Session) -> str | None:
    """The boot stage a failed session failed at; None for one that did not fail."""
    if session.status is not SessionStatus.FAILED:
        return None
    for stage, key in STAGES:
        if timing(session, key) is None:
            return stage
    return "after boot"


def booted(session: Session) -> float | None:
    """Seconds from the create call to SSH for a session that came up, else None."""
    return timing(session, "time_to_ssh_s")


@dataclass(frozen=True)
class Filters:
    provider: str | None = None
    template: str | None = None
    gpu: str | None = None

    def keep(self, session: Session) -> bool:
        if self.provider and session.provider != self.provider:
            return False
        if self.template and template_of(session).lower() != self.template.lower():
            return False
        if not self.gpu:
            return True
        gpu = str(session.gpu_name or "").lower().replace(" ", "")
        return self.gpu.lower().replace(" ", "") in gpu


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def group_stats(sessions: Iterable[Session], filters: Filters | None = None) -> list[JSONObject]:
    """One row per (provider, template or image, GPU model): counts, failure rate by
    stage, median and 90th percentile of each phase. Sorted by provider, template, GPU."""
    filters = filters or Filters()
    groups: dict[tuple[str, str, str], list[Session]] = {}
    for session in sessions:
        if not filters.keep(session):
            continue
        if session.booting:
            continue  # still booting: neither a success nor a failure yet
        group = (
            str(session.provider or "-"),
            template_of(session),
            str(session.gpu_name or "-"),
        )
        groups.setdefault(group, []).append(session)
    rows = []
    for (provider, template, gpu), members in sorted(groups.items()):
        failures: dict[str, int] = {stage: 0 for stage, _ in STAGES}
        failures["after boot"] = 0
        failed = 0
        for session in members:
            stage = failed_stage(session)
            if stage is not None:
                failed += 1
                failures[stage] += 1
        count = len(members)
        phases: dict[str, JSONObject] = {}
        for key, _label in PHASES:
            values = [v for v in (timing(r, key) for r in members) if v is not None]
            phases[key] = {
                "n": len(values),
                "median_s": _round(percentile(values, 0.5)),
                "p90_s": _round(percentile(values, 0.9)),
            }
        rows.append(
            {
                "provider": provider,
                "template": template,
                "gpu": gpu,
                "count": count,
                "failed": failed,
                "failure_rate": round(failed / count, 3) if count else 0.0,
                "failure_rate_by_stage": {
                    stage: round(n / count, 3) for stage, n in failures.items()
                },
                "phases": phases,
            }
        )
    return rows


@dataclass(frozen=True)
class TimeoutChoice:
    seconds: float
    source: str  # where it came from: the flag, profile or setting; "measured"; "default"
    reason: str
    provider: str = ""
    template: str = ""

    def to_json(self) -> JSONObject:
        return {
            "seconds": self.seconds,
            "source": self.source,
            "reason": self.reason,
            "provider": self.provider,
            "template": self.template,
        }


def measured_timeout(
    sessions: Iterable[Session], provider: str, template: str, max_s: float
) -> tuple[float, int, float] | None:
    """(timeout, boots, p90) from the recorded boots of this provider/template pair, once
    there are at least MIN_BOOTS: p90 x 1.5, never below 5 minutes nor above ``max_s``."""
    boots = [
        b
        for b in (
            booted(s) for s in sessions if s.provider == provider and template_of(s) == template
        )
        if b is not None
    ]
    if len(boots) < MIN_BOOTS:
        return None
    p90 = percentile(boots, 0.9) or 0.0
    value = min(max(p90 * TIMEOUT_FACTOR, TIMEOUT_FLOOR_S), max(max_s, TIMEOUT_FLOOR_S))
    return round(value, 1), len(boots), p90


def provision_timeout(
    sessions: Iterable[Session],
    provider: str,
    template: str,
    *,
    explicit: tuple[float, str] | None,
    default_s: float,
    max_s: float,
) -> TimeoutChoice:
    """Which boot timeout a provision uses: an explicit one (flag, profile or setting)
    always wins; then the measured one for this pair; then the default."""
    from gpushopper.model.units import format_duration

    sessions = list(sessions)
    if explicit is not None:
        seconds, source = explicit
        return TimeoutChoice(seconds, source, f"set by the {source}", provider, template)
    measured = measured_timeout(sessions, provider, template, max_s)
    if measured is not None:
        seconds, boots, p90 = measured
        return TimeoutChoice(
            seconds,
            "measured",
            f"{boots} recorded boots of {provider}/{template}: 90th percentile "
            f"{format_duration(p90)} x {TIMEOUT_FACTOR:g}, within "
            f"[{format_duration(TIMEOUT_FLOOR_S)}, {format_duration(max_s)}]",
            provider,
            template,
        )
    count = sum(
        1
        for s in sessions
        if s.provider == provider and template_of(s) == template and booted(s) is not None
    )
    return TimeoutChoice(
        default_s,
        "default",
        f"the default: {count} recorded boots of {provider}/{template}, "
        f"{MIN_BOOTS} needed to measure one",
        provider,
        template,
    )


TABLE_COLUMNS: tuple[str, ...] = (
    "PROVIDER",
    "TEMPLATE/IMAGE",
    "GPU",
    "N",
    "FAILED %",
    "FAILED AT",
    *(f"{label.upper()} p50/p90" for _key, label in PHASES),
)


def _pair(phase: JSONMapping) -> str:
    from gpushopper.model.units import format_duration

    if not phase.get("n"):
        return "-"
    return f"{format_duration(phase['median_s'])} / {format_duration(phase['p90_s'])}"


def table_rows(rows: Iterable[JSONMapping]) -> list[tuple[str, ...]]:
    """``group_stats`` rows as the cells of ``sessions stats``'s table."""
    out = []
    for row in rows:
        stages = ", ".join(
            f"{stage} {rate * 100:.0f}%"
            for stage, rate in row["failure_rate_by_stage"].items()
            if rate
        )
        out.append(
            (
                row["provider"],
                row["template"],
                row["gpu"],
                str(row["count"]),
                f"{row['failure_rate'] * 100:.0f}",
                stages or "-",
                *(_pair(row["phases"][key]) for key, _label in PHASES),
            )
        )
    return out
