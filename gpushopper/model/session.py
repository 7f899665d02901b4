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

from gpushopper.model.jsontypes import JSONObject, JSONValue
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


# -- records that cannot be trusted --------------------------------------------------------
TIME_FIELDS = (
    "created_at",
    "ready_at",
    "billing_started_at",
    "reservation_ends_at",
    "hard_max_at",
    "ended_at",
    "warned_at",
)


def record_problem(record: JSONValue) -> str | None:
    """Why a session record cannot be enforced as it stands, or None when it can."""
    if not isinstance(record, dict):
        return f"is {'null' if record is None else type(record).__name__}, not a session object"
    status = record.get("status")
    if status not in STATUSES:
        return f"has an unknown status {status!r}"
    if not isinstance(record.get("provider"), str) or not record["provider"]:
        return f"names no provider ({record.get('provider')!r})"
    for name in TIME_FIELDS:
        value = record.get(name)
        if value is None:
            continue
        try:
            if not isinstance(value, str):
                raise ValueError
            parse_iso(value)
        except ValueError:
            return f"{name} {value!r} is not a time"
    instance_id = record.get("instance_id")
    if instance_id is not None and (
        isinstance(instance_id, bool) or not isinstance(instance_id, (str, int))
    ):
        return f"instance_id {instance_id!r} is not an id"
    for name in ("label", "consumer"):
        if record.get(name) is not None and not isinstance(record[name], str):
            return f"{name} {record[name]!r} is not text"
    price = record.get("price_per_hour")
    if price is not None and (isinstance(price, bool) or not isinstance(price, (int, float))):
        return f"price_per_hour {price!r} is not a number"
    if record.get("ssh") is not None and not isinstance(record["ssh"], dict):
        return "ssh is not an object"
    return None


def _time(value: object) -> datetime | None:
    return parse_iso(value) if isinstance(value, str) else None


@dataclass
class Session:
    """One session record, typed. Only records that pass :func:`record_problem` are
    converted (the store hands the others out apart, as :class:`Damaged`).

    A session read from a record remembers it (``source``), so :meth:`to_record` writes
    back every byte it did not change: a time keeps its original text, a key the record
    did not have stays absent, and every key the model does not name lives in ``rest``.
    """

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
    ssh: JSONObject = field(default_factory=dict)
    timings: JSONObject = field(default_factory=dict)
    # Every other key of the record, kept as it was read (round trips lose nothing).
    rest: JSONObject = field(default_factory=dict)
    # The record this session was read from (never compared, never written as a key).
    source: JSONObject | None = field(default=None, repr=False, compare=False)

    @property
    def live(self) -> bool:
        return self.status.live

    @property
    def done(self) -> bool:
        return self.status.done

    @property
    def booting(self) -> bool:
        """Created but not yet handed over (creating, provisioning, verifying)."""
        return self.status in BOOTING

    @property
    def instance(self) -> str | None:
        """The instance id as text, or None when none is recorded (yet)."""
        return str(self.instance_id) if self.instance_id not in (None, "") else None

    @classmethod
    def from_record(cls, record: JSONObject, key: str | None = None) -> Session:
        """The typed session of ``record``. ``key`` is the id the state file stores it
        under: when given it is the session's ``id`` (a record whose own ``id`` is missing
        or hand-edited is still acted on, and written back, under its key)."""
        kwargs: JSONObject = {}
        for name in _FIELDS:
            if name not in record:
                continue
            value = record[name]
            if name in _TIMES:
                value = _time(value)
            elif name == "status":
                value = SessionStatus(value)
            elif name in ("ssh", "timings"):
                value = dict(value) if isinstance(value, dict) else {}
            kwargs[name] = value
        kwargs.setdefault("id", str(record.get("id", "")))
        if key is not None:
            kwargs["id"] = key
        rest = {k: v for k, v in record.items() if k not in _FIELDS}
        return cls(**kwargs, rest=rest, source=dict(record))

    def set(self, **changes: object) -> None:
        """Change fields by name; a name the model does not have goes to ``rest``."""
        for name, value in changes.items():
            if name not in _FIELDS:
                self.rest[name] = value
                continue
            if name in _TIMES and isinstance(value, str):
                value = parse_iso(value)
            elif name == "status" and isinstance(value, str):
                value = SessionStatus(value)
            setattr(self, name, value)

    def recorded(self, name: str) -> object:
        """A field as the record writes it (a time as its own text): for messages that
        quote the record."""
        return self.to_record().get(name)

    def to_record(self, original: JSONObject | None = None) -> JSONObject:
        """The on-disk dict. Fields equal to what ``original`` (by default the record this
        session was read from) already says keep its exact text (and absence), so a round
        trip changes no byte of JSON; a key dropped from ``rest`` is dropped."""
        from gpushopper.model.units import iso

        base = original if original is not None else self.source
        before = Session.from_record(base) if base is not None else None
        out: JSONObject = {
            k: self.rest.get(k, v)
            for k, v in (base or {}).items()
            if k in _FIELDS or k in self.rest
        }
        out.update(self.rest)
        for f in fields(self):
            if f.name not in _FIELDS or (f.name == "id" and base is not None):
                continue  # a record's own "id" is never rewritten (the key names it)
            value = getattr(self, f.name)
            if before is not None and getattr(before, f.name) == value:
                continue
            if isinstance(value, datetime):
                value = iso(value)
            elif isinstance(value, SessionStatus):
                value = value.value
            out[f.name] = value
        return out


_FIELDS = frozenset(f.name for f in fields(Session)) - {"rest", "source"}
_TIMES = frozenset(TIME_FIELDS)  # the times record_problem checks are the ones typed
BOOTING: tuple[SessionStatus, ...] = (
    SessionStatus.CREATING,
    SessionStatus.PROVISIONING,
    SessionStatus.VERIFYING,
)


@dataclass(frozen=True)
class Damaged:
    """A session record that cannot be trusted: ``why`` (a phrase after "it"), and the
    record exactly as read (reported and left alone, never rewritten or dropped)."""

    id: str
    why: str
    record: JSONValue


@dataclass
class SessionRecords:
    """Every session record of a state file: the ones that can be trusted, typed, and the
    damaged ones apart, so that none is enforced on bad data and none goes unreported."""

    valid: dict[str, Session] = field(default_factory=dict)
    damaged: dict[str, Damaged] = field(default_factory=dict)

    @classmethod
    def split(cls, records: JSONObject) -> SessionRecords:
        out = cls()
        for session_id, record in records.items():
            why = record_problem(record)
            if why is None:
                out.valid[session_id] = Session.from_record(record, session_id)
            else:
                out.damaged[session_id] = Damaged(session_id, why, record)
        return out

    @property
    def problems(self) -> dict[str, str]:
        """{session id: why it is damaged}."""
        return {sid: d.why for sid, d in self.damaged.items()}

    def ids(self) -> set[str]:
        """Every session id, valid or damaged (a new id must be none of them)."""
        return set(self.valid) | set(self.damaged)
