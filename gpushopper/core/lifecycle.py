"""The safety policy as a pure function: (sessions, provider instances, now) -> actions.

No I/O here: ``watch`` and ``cleanup-orphans`` carry the actions out, so every branch is
tested with a fake clock and plain lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from gpushopper.core.models import Instance
from gpushopper.core.sessions import LIVE, parse_label
from gpushopper.core.units import parse_iso

# action kinds
WARN = "warn"
DESTROY_SESSION = "destroy_session"
MARK_ENDED = "mark_ended"
DESTROY_ORPHAN = "destroy_orphan"
REPORT_FOREIGN = "report_foreign"

BOOTING = ("creating", "provisioning", "verifying")


@dataclass(frozen=True)
class Policy:
    install_id: str | None
    warn_before_s: float = 600.0
    provision_timeout_s: float = 900.0
    include_foreign: bool = False
    gone_grace_s: float = 120.0  # a booting instance may lag in the provider's list


@dataclass
class Action:
    kind: str
    reason: str
    provider: str
    session_id: str | None = None
    instance_id: str | None = None
    label: str | None = None
    detail: str = ""
    age_seconds: float | None = None
    price_per_hour: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _age(record: dict[str, Any], now: datetime) -> float | None:
    created = parse_iso(record.get("created_at"))
    return (now - created).total_seconds() if created else None


def plan(
    sessions: dict[str, dict[str, Any]],
    instances: dict[str, list[Instance]],
    now: datetime,
    policy: Policy,
) -> list[Action]:
    """What to do now.

    ``instances`` holds, per provider, the full list the provider just returned; a provider
    missing from it could not be listed, so nothing is concluded from absence there.
    """
    actions: list[Action] = []
    claimed: set[tuple[str, str]] = set()
    by_label: dict[str, dict[str, Any]] = {}
    for record in sessions.values():
        if record.get("label"):
            by_label[record["label"]] = record

    for session_id, record in sorted(sessions.items()):
        provider = record.get("provider") or "?"
        listed = instances.get(provider)
        match = None
        if listed is not None:
            for inst in listed:
                if (
                    record.get("instance_id") and inst.instance_id == str(record["instance_id"])
                ) or (record.get("label") and inst.label == record["label"]):
                    match = inst
                    break
        status = record.get("status")
        if status not in LIVE:
            continue
        if match is not None:
            claimed.add((provider, match.instance_id))  # only live sessions claim instances
        instance_id = match.instance_id if match else record.get("instance_id")
        base: dict[str, Any] = {
            "provider": provider,
            "session_id": session_id,
            "instance_id": str(instance_id) if instance_id else None,
            "label": record.get("label"),
            "age_seconds": _age(record, now),
            "price_per_hour": record.get("price_per_hour"),
        }
        age = base["age_seconds"] or 0.0
        hard = parse_iso(record.get("hard_max_at"))
        ends = parse_iso(record.get("reservation_ends_at"))

        if listed is not None and match is None and _gone(status, record, age, policy):
            actions.append(
                Action(MARK_ENDED, "instance_gone", **base, detail="not at the provider any more")
            )
            continue
        if status == "ending":
            actions.append(
                Action(
                    DESTROY_SESSION,
                    "ending_incomplete",
                    **base,
                    detail="an earlier destroy did not finish",
                )
            )
            continue
        if hard is not None and now >= hard:
            actions.append(
                Action(
                    DESTROY_SESSION,
                    "hard_max",
                    **base,
                    detail=f"hard maximum {record.get('hard_max_at')} reached",
                )
            )
            continue
        if status in BOOTING:
            if age > policy.provision_timeout_s:
                actions.append(
                    Action(
                        DESTROY_SESSION,
                        "provision_timeout",
                        **base,
                        detail=f"still {status} after {int(age)}s",
                    )
                )
            continue
        if ends is not None and now >= ends:
            actions.append(
                Action(
                    DESTROY_SESSION,
                    "reservation_ended",
                    **base,
                    detail=f"reservation ended {record.get('reservation_ends_at')}",
                )
            )
            continue
        if ends is not None and now >= ends - timedelta(seconds=policy.warn_before_s):
            warned = parse_iso(record.get("warned_at"))
            if warned is None or warned < ends - timedelta(seconds=policy.warn_before_s):
                left = int((ends - now).total_seconds())
                actions.append(
                    Action(
                        WARN, "reservation_ending", **base, detail=f"{left}s left; extend or finish"
                    )
                )

    # Instances nobody live claims.
    for provider, listed in sorted(instances.items()):
        for inst in listed:
            if (provider, inst.instance_id) in claimed:
                continue
            owner = parse_label(inst.label)
            if owner is None:
                continue  # not ours: never touched
            install, session_id = owner
            base = {
                "provider": provider,
                "session_id": session_id,
                "instance_id": inst.instance_id,
                "label": inst.label,
                "age_seconds": (now.timestamp() - inst.started_at) if inst.started_at else None,
                "price_per_hour": inst.price_per_hour,
            }
            if policy.install_id is None or install != policy.install_id:
                kind = DESTROY_ORPHAN if policy.include_foreign else REPORT_FOREIGN
                actions.append(Action(kind, "foreign", **base, detail=f"install id {install}"))
                continue
            owner_record = by_label.get(inst.label or "")
            if owner_record is None:
                actions.append(
                    Action(
                        DESTROY_ORPHAN, "unknown_to_state", **base, detail="no session records it"
                    )
                )
            elif owner_record.get("status") in LIVE:
                # The live session already holds another instance: this one is a duplicate.
                actions.append(
                    Action(
                        DESTROY_ORPHAN,
                        "duplicate",
                        **base,
                        detail="a second instance of a live session",
                    )
                )
            else:
                actions.append(
                    Action(
                        DESTROY_ORPHAN,
                        "session_ended",
                        **base,
                        detail=f"session is {owner_record.get('status')}",
                    )
                )
    return actions


def _gone(status: Any, record: dict[str, Any], age: float, policy: Policy) -> bool:
    """May a live session whose instance the provider does not list be closed?"""
    if status in ("running", "ending"):
        return True
    if status not in BOOTING:
        return False
    if not record.get("instance_id"):
        return age > policy.provision_timeout_s  # the create call may still be under way
    return age > policy.gone_grace_s  # a fresh instance may lag in the provider's list
