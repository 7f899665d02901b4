"""The safety policy as a pure function: (sessions, provider instances, now) -> actions.

No I/O here: ``watch`` and ``cleanup-orphans`` carry the actions out, so every branch is
tested with a fake clock and plain lists. What needs I/O to know (is a booting session's
owner process still alive?) comes in as an argument.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from gpushopper.model.jsontypes import JSONObject
from gpushopper.model.models import Instance
from gpushopper.model.session import (
    Damaged,
    Session,
    SessionRecords,
    SessionStatus,
    looks_like_ours,
    parse_label,
)

# action kinds
WARN = "warn"
DESTROY_SESSION = "destroy_session"
MARK_ENDED = "mark_ended"
DESTROY_ORPHAN = "destroy_orphan"
REPORT_FOREIGN = "report_foreign"
REPORT_MALFORMED = "report_malformed"  # a gpu-shopper label not of our shape: never destroyed
REPORT_BAD_RECORD = "report_bad_record"  # a session record that cannot be enforced: skipped

BOOTING = ("creating", "provisioning", "verifying")


@dataclass(frozen=True)
class Policy:
    install_id: str | None
    warn_before_s: float = 600.0
    provision_timeout_s: float = 900.0
    include_foreign: bool = False
    gone_grace_s: float = 120.0  # a booting instance may lag in the provider's list
    hard_max_s: float = 12 * 3600.0  # no boot may be waited out longer (safety.hard_max_hours)


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
    extra: JSONObject = field(default_factory=dict)


def _age(session: Session, now: datetime) -> float | None:
    created = session.created_at
    return (now - created).total_seconds() if created else None


def plan(
    sessions: SessionRecords,
    instances: dict[str, list[Instance]],
    now: datetime,
    policy: Policy,
    gone_owners: frozenset[str] | set[str] = frozenset(),
) -> list[Action]:
    """What to do now.

    ``instances`` holds, per provider, the full list the provider just returned; a provider
    missing from it could not be listed, so nothing is concluded from absence there (and a
    session missing from a list is only a candidate for MARK_ENDED: the enforcer closes it
    once the provider confirms the instance itself is gone). ``gone_owners`` names the
    booting sessions whose owner process is known to be dead. A record that cannot be
    enforced is reported and skipped, and the instances it may hold are left alone.
    """
    # A broken record's instances are neither enforced nor orphans: left alone, reported.
    actions, held_by_bad, held_ids = _bad_records(sessions.damaged)
    claimed: set[tuple[str, str]] = set()
    for session_id, session in sorted(sessions.valid.items()):
        provider = session.provider or "?"
        listed = instances.get(provider)
        match = _find_instance(session, listed)
        if not session.live:
            continue
        if match is not None:
            claimed.add((provider, match.instance_id))  # only live sessions claim instances
        action = _session_action(session_id, session, listed, match, now, policy, gone_owners)
        if action is not None:
            actions.append(action)
    by_label = {s.label: s for s in sessions.valid.values() if s.label}
    # Instances nobody live claims (each real id once, however often a listing repeats it).
    for provider, listed in sorted(instances.items()):
        seen: set[str] = set()
        for inst in listed:
            if (provider, inst.instance_id) in claimed or inst.instance_id in seen:
                continue
            seen.add(inst.instance_id)
            action = _unclaimed_action(provider, inst, now, policy, by_label, held_by_bad, held_ids)
            if action is not None:
                actions.append(action)
    return actions


def _bad_records(damaged: dict[str, Damaged]) -> tuple[list[Action], set[str], set[str]]:
    """One report per broken record, and the session and instance ids it may hold."""
    actions: list[Action] = []
    held_by_bad: set[str] = set(damaged)
    held_ids: set[str] = set()
    for session_id, bad in sorted(damaged.items()):
        raw, why = bad.record, bad.why
        if isinstance(raw, dict):
            if isinstance(raw.get("label"), str):
                owner = parse_label(raw["label"])
                if owner:
                    held_by_bad.add(owner[1])
            if isinstance(raw.get("instance_id"), (str, int)):
                held_ids.add(str(raw["instance_id"]))
        actions.append(
            Action(REPORT_BAD_RECORD, "bad_record", "?", session_id=session_id, detail=why)
        )
    return actions, held_by_bad, held_ids


def _find_instance(session: Session, listed: list[Instance] | None) -> Instance | None:
    """The listed instance a session names, by instance id or by label."""
    for inst in listed or ():
        if (session.instance_id and inst.instance_id == str(session.instance_id)) or (
            session.label and inst.label == session.label
        ):
            return inst
    return None


def _session_action(
    session_id: str,
    session: Session,
    listed: list[Instance] | None,
    match: Instance | None,
    now: datetime,
    policy: Policy,
    gone_owners: frozenset[str] | set[str],
) -> Action | None:
    """The one rule (first that applies) for a live session, or None while it is fine."""
    status = session.status
    provider = session.provider or "?"
    instance_id = match.instance_id if match else session.instance_id
    base: JSONObject = {
        "provider": provider,
        "session_id": session_id,
        "instance_id": str(instance_id) if instance_id else None,
        "label": session.label,
        "age_seconds": _age(session, now),
        "price_per_hour": session.price_per_hour,
    }
    age = base["age_seconds"] or 0.0
    hard = session.hard_max_at
    ends = session.reservation_ends_at

    if listed is not None and match is None and _gone(session, age, policy):
        return Action(MARK_ENDED, "instance_gone", **base, detail="not at the provider any more")
    if status is SessionStatus.ENDING:
        return Action(
            DESTROY_SESSION, "ending_incomplete", **base, detail="an earlier destroy did not finish"
        )
    if hard is not None and now >= hard:
        return Action(
            DESTROY_SESSION,
            "hard_max",
            **base,
            detail=f"hard maximum {session.recorded('hard_max_at')} reached",
        )
    if session.booting:
        if age > boot_limit(session, policy):
            return Action(
                DESTROY_SESSION,
                "provision_timeout",
                **base,
                detail=f"still {status} after {int(age)}s",
            )
        if session_id in gone_owners:
            pid = (session.rest.get("owner") or {}).get("pid")
            return Action(
                DESTROY_SESSION,
                "owner_gone",
                **base,
                detail=f"still {status}, and its provision (pid {pid}) is gone",
            )
        return None
    if ends is not None and now >= ends:
        return Action(
            DESTROY_SESSION,
            "reservation_ended",
            **base,
            detail=f"reservation ended {session.recorded('reservation_ends_at')}",
        )
    if ends is not None and now >= ends - timedelta(seconds=policy.warn_before_s):
        warned = session.warned_at
        if warned is None or warned < ends - timedelta(seconds=policy.warn_before_s):
            left = int((ends - now).total_seconds())
            return Action(
                WARN, "reservation_ending", **base, detail=f"{left}s left; extend or finish"
            )
    return None


def _unclaimed_action(
    provider: str,
    inst: Instance,
    now: datetime,
    policy: Policy,
    by_label: dict[str, Session],
    held_by_bad: set[str],
    held_ids: set[str],
) -> Action | None:
    """What to do with an instance no live session claims (None: not ours, or held)."""
    base: JSONObject = {
        "provider": provider,
        "instance_id": inst.instance_id,
        "label": inst.label,
        "age_seconds": (now.timestamp() - inst.started_at) if inst.started_at else None,
        "price_per_hour": inst.price_per_hour,
    }
    owner = parse_label(inst.label)
    if owner is None:
        if looks_like_ours(inst.label):
            return Action(
                REPORT_MALFORMED,
                "malformed_label",
                **base,
                detail="a gpu-shopper label not of this tool's shape; never destroyed",
            )
        return None  # not ours: never touched
    install, session_id = owner
    base["session_id"] = session_id
    if policy.install_id is None or install != policy.install_id:
        kind = DESTROY_ORPHAN if policy.include_foreign else REPORT_FOREIGN
        return Action(kind, "foreign", **base, detail=f"install id {install}")
    if session_id in held_by_bad or inst.instance_id in held_ids:
        return None  # its record is broken (reported by _bad_records): leave it be
    owner_record = by_label.get(inst.label or "")
    if owner_record is None:
        return Action(DESTROY_ORPHAN, "unknown_to_state", **base, detail="no session records it")
    if owner_record.live:
        # The live session already holds another instance: this one is a duplicate.
        return Action(
            DESTROY_ORPHAN, "duplicate", **base, detail="a second instance of a live session"
        )
    return Action(
        DESTROY_ORPHAN,
        "session_ended",
        **base,
        detail=f"session is {owner_record.status}",
    )


def boot_limit(session: Session, policy: Policy) -> float:
    """How long a booting session may take before it counts as stuck: the policy's
    timeout, or the longer one its provision chose (a measured or explicit --timeout),
    never past the hard maximum: a huge value in the state (or a record without
    ``hard_max_at``) must not switch the stuck-boot sweep off."""
    chosen = session.rest.get("boot_timeout_s")
    if isinstance(chosen, bool) or not isinstance(chosen, (int, float)) or chosen != chosen:
        return policy.provision_timeout_s
    return max(policy.provision_timeout_s, min(float(chosen), policy.hard_max_s))


def _gone(session: Session, age: float, policy: Policy) -> bool:
    """May a live session whose instance the provider does not list be closed?"""
    if session.status in (SessionStatus.RUNNING, SessionStatus.ENDING):
        return True
    if not session.booting:
        return False
    if not session.instance_id:
        return age > boot_limit(session, policy)  # the create call may still be under way
    return age > policy.gone_grace_s  # a fresh instance may lag in the provider's list
