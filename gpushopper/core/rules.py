"""The rental rules the commands apply, in one place, pure (the caller passes ``now``).

The hard maximum (a reservation may not pass ``safety.hard_max_hours`` from creation
without ``--override``, which is recorded), ``sessions extend`` (and ``extend_session``,
the one function here that reads and writes the store), and the dry-run plan.
``core/provisioner.py`` uses ``hard_max_at`` for the record it writes, so the dry run and
the rental agree by construction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from gpushopper.model.errors import NoSuchItem, UsageError
from gpushopper.model.jsontypes import JSONObject
from gpushopper.model.session import LIVE, Session
from gpushopper.model.units import format_duration, iso, parse_iso

if TYPE_CHECKING:
    from gpushopper.core.deadline import DeadlineHost


def check_hours(hours_s: float, hard_max_s: float, override: bool) -> None:
    """Refuse a reservation longer than the hard maximum unless overridden."""
    if hours_s > hard_max_s and not override:
        raise UsageError(
            f"--hours {format_duration(hours_s)} is past the {format_duration(hard_max_s)} "
            "hard maximum; add --override to allow it (it is recorded)"
        )


def reservation_end(now: datetime, hours_s: float, hard_max_s: float, override: bool) -> datetime:
    """When a reservation made ``now`` ends: never past the hard maximum unless overridden."""
    reservation = now + timedelta(seconds=hours_s)
    return reservation if override else min(reservation, now + timedelta(seconds=hard_max_s))


def hard_max_at(now: datetime, hours_s: float, hard_max_s: float, override: bool) -> datetime:
    """The hard maximum of a session created ``now``; an override moves it to the reservation."""
    hard = now + timedelta(seconds=hard_max_s)
    return max(hard, now + timedelta(seconds=hours_s)) if override else hard


def overrides_at_creation(
    now: datetime, hours_s: float, hard_max_s: float, override: bool
) -> list[JSONObject]:
    """The ``overrides`` a new session records: one entry when ``--override`` really moved
    its hard maximum (a reservation past it), none otherwise."""
    reservation = now + timedelta(seconds=hours_s)
    if not override or reservation <= now + timedelta(seconds=hard_max_s):
        return []
    return [{"at": iso(now), "hard_max_at": iso(reservation), "via": "provision"}]


@dataclass
class Extension:
    changes: JSONObject  # what to write on the session
    moved_hard_max_to: str | None = None  # set when --override moved the hard maximum


def extend(
    session_id: str,
    record: JSONObject,
    by_s: float,
    now: datetime,
    hard_max_hours: float,
    override: bool,
) -> Extension:
    """``sessions extend``: push the reservation end ``by_s`` past max(end, now).

    Refused for a session that is not live, and past the hard maximum without ``override``
    (the override is appended to the session's ``overrides``)."""
    if record.get("status") not in LIVE:
        raise NoSuchItem(
            f"session {session_id} is {record.get('status')}; only live sessions can be extended"
        )
    current = parse_iso(record.get("reservation_ends_at")) or now
    new_end = max(current, now) + timedelta(seconds=by_s)
    hard = parse_iso(record.get("hard_max_at")) or new_end
    changes: JSONObject = {"reservation_ends_at": iso(new_end)}
    if new_end <= hard:
        return Extension(changes)
    if not override:
        raise UsageError(
            f"refused: the reservation would end at {iso(new_end)}, past the hard maximum "
            f"{iso(hard)} ({hard_max_hours:g}h from creation); "
            "add --override to go past it"
        )
    overrides = list(record.get("overrides") or [])
    overrides.append({"at": iso(now), "hard_max_at": iso(new_end), "via": "extend"})
    changes.update(hard_max_at=iso(new_end), overrides=overrides)
    return Extension(changes, moved_hard_max_to=iso(new_end))


def extend_session(
    host: DeadlineHost,
    session_id: str,
    by_s: float,
    override: bool,
    now: datetime,
    log: Callable[[str], None],
) -> Session:
    """``sessions extend`` on the state file: ``extend`` at ``now``, the changes
    written, the on-instance deadline moved (``core/deadline.push_deadline``, which never
    raises); returns the updated record. The one rule that touches the store here."""
    from gpushopper.core.deadline import push_deadline
    from gpushopper.core.teardown import get_session_or_fail

    get_session_or_fail(host.store, session_id)  # an unknown id is bad input (exit 2)
    hard_max_hours = host.settings.get("safety.hard_max_hours")
    moved: list[str] = []

    def decide(session: Session) -> JSONObject:
        # The rule runs on the session as it stands under the store's lock, so a second
        # extend running at the same time cannot lose this one's override (or the other's).
        extension = extend(session_id, session.to_record(), by_s, now, hard_max_hours, override)
        moved[:] = [extension.moved_hard_max_to] if extension.moved_hard_max_to else []
        return extension.changes

    updated = host.store.change_session(session_id, decide)
    if moved:
        log(f"Override recorded: hard maximum moved to {moved[0]}")
    push_deadline(host, updated, log=log)
    return updated


def dry_run_plan(
    offer_json: JSONObject,
    price_per_hour: float | None,
    *,
    now: datetime,
    hours_s: float,
    hard_max_s: float,
    override: bool,
    template: str | None,
    image: str | None,
    alternatives: list[str],
) -> JSONObject:
    """What ``provision --dry-run`` reports (CLI.md pins this shape)."""
    price = price_per_hour or 0.0
    return {
        "dry_run": True,
        "offer": offer_json,
        "price_per_hour": price_per_hour,
        "hours": round(hours_s / 3600, 4),
        "reservation_ends_at": iso(now + timedelta(seconds=hours_s)),
        "hard_max_at": iso(hard_max_at(now, hours_s, hard_max_s, override)),
        "projected_cost_usd": round(price * hours_s / 3600, 4),
        "template": template,
        "image": image,
        "alternatives": alternatives,
    }
