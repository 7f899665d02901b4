"""The session: its statuses, its label, and a typed view of its on-disk record.

The state file stores a session as a JSON object (CLI.md pins its keys). ``Session`` is the
typed model of that object: ``Session.from_record`` reads one at the store boundary and
``to_record`` writes it back without losing a key it does not model (hand-added or newer
keys survive a round trip). ``SessionStatus`` is a ``str`` enum, so a status is still the
same string in every JSON document.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import Enum

from gpushopper.model.jsontypes import JSONObject
from gpushopper.model.units import parse_iso


class SessionStatus(str, Enum):
    CREATING = "creating"
    PROVISIONING = "provisioning"
    VERIFYING = "verifying"
    RUNNING = "running"
    ENDING = "ending"
    ENDED = "ended"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value

    @property
    def live(self) -> bool:
        """An instance may exist (or be about to): the enforcer watches it."""
        return self.value in LIVE

    @property
    def done(self) -> bool:
        return self.value in DONE


# The status sets, once. Plain strings so ``record.get("status") in LIVE`` works on raw records.
LIVE: tuple[str, ...] = tuple(
    s.value
    for s in (
        SessionStatus.CREATING,
        SessionStatus.PROVISIONING,
        SessionStatus.VERIFYING,
        SessionStatus.RUNNING,
        SessionStatus.ENDING,
    )
)
DONE: tuple[str, ...] = (SessionStatus.ENDED.value, SessionStatus.FAILED.value)
STATUSES: tuple[str, ...] = LIVE + DONE

LABEL_PREFIX = "gpu-shopper:"
# Our own shapes (state/store.py makes them): 8 hex digits of install id, 6 of session id.
INSTALL_ID_RE = re.compile(r"[0-9a-f]{8}")
SESSION_ID_RE = re.compile(r"[0-9a-f]{6}")
_LABEL_RE = re.compile(r"gpu-shopper:([0-9a-f]{8}):([0-9a-f]{6})")


def make_label(install_id: str, session_id: str) -> str:
    return f"{LABEL_PREFIX}{install_id}:{session_id}"


def parse_label(label: str | None) -> tuple[str, str] | None:
    """(install id, session id) when ``label`` is exactly one of ours, else None.

    Both ids must have the shape this tool makes, so a label such as
    ``gpu-shopper:<our id>:$(touch x)`` is never taken as ours (never destroyed) and
    nothing read from a label can carry shell syntax anywhere.
    """
    if not isinstance(label, str):
        return None
    match = _LABEL_RE.fullmatch(label)
    return (match.group(1), match.group(2)) if match else None


def looks_like_ours(label: str | None) -> bool:
    """A gpu-shopper label, well-formed or not (reported, never destroyed when malformed)."""
    return isinstance(label, str) and label.startswith(LABEL_PREFIX)


def _time(value: object) -> datetime | None:
    return parse_iso(value) if isinstance(value, str) else None


@dataclass
class Session:
    """One session record, typed. Only records that pass ``record_problem`` are converted."""

    id: str
    status: SessionStatus
    provider: str
    offer_id: str | None = None
    instance_id: str | int | None = None
    label: str | None = None
    gpu_name: str | None = None
    num_gpus: int | None = None
    price_per_hour: float | None = None
    consumer: str | None = None
    created_at: datetime | None = None
    ready_at: datetime | None = None
    billing_started_at: datetime | None = None
    reservation_ends_at: datetime | None = None
    hard_max_at: datetime | None = None
    ended_at: datetime | None = None
    warned_at: datetime | None = None
    end_reason: str | None = None
    cost_usd: float | None = None
    ssh: dict[str, object] = field(default_factory=dict)
    timings: dict[str, object] = field(default_factory=dict)
    # Every other key of the record, kept as it was read (round trips lose nothing).
    rest: dict[str, object] = field(default_factory=dict)

    @property
    def live(self) -> bool:
        return self.status.live

    @classmethod
    def from_record(cls, record: JSONObject) -> Session:
        names = {f.name for f in fields(cls)} - {"rest"}
        times = {n for n in names if n.endswith("_at")}
        kwargs: JSONObject = {}
        for name in names:
            if name not in record:
                continue
            value = record[name]
            if name in times:
                value = _time(value)
            elif name == "status":
                value = SessionStatus(value)
            elif name in ("ssh", "timings"):
                value = dict(value or {})
            kwargs[name] = value
        kwargs.setdefault("id", str(record.get("id", "")))
        return cls(**kwargs, rest={k: v for k, v in record.items() if k not in names})

    def to_record(self, original: JSONObject | None = None) -> JSONObject:
        """The on-disk dict. Fields equal to what ``original`` already says keep the
        original's exact text (and absence), so a round trip changes no byte of JSON."""
        from gpushopper.model.units import iso

        before = Session.from_record(original) if original is not None else None
        out: JSONObject = dict(original or {})
        out.update(self.rest)
        for f in fields(self):
            if f.name == "rest":
                continue
            value = getattr(self, f.name)
            if before is not None and getattr(before, f.name) == value:
                continue
            if isinstance(value, datetime):
                value = iso(value)
            elif isinstance(value, SessionStatus):
                value = value.value
            out[f.name] = value
        return out
