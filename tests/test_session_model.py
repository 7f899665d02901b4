"""The Session model: the on-disk record round-trips byte for byte; statuses stay strings."""

from __future__ import annotations

import json

import pytest

from gpushopper.model.session import DONE, LIVE, STATUSES, Session, SessionStatus

RECORD = {
    "id": "a1b2c3",
    "status": "running",
    "provider": "vastai",
    "offer_id": "vastai:42",
    "instance_id": 7,
    "label": "gpu-shopper:0123abcd:a1b2c3",
    "price_per_hour": 0.5,
    "created_at": "2026-01-01T00:00:00Z",
    "billing_started_at": "2026-01-01T00:01:00.500000Z",
    "hard_max_at": None,
    "ssh": {"host": "127.0.0.1", "port": 22},
    "timings": {"create_s": 1.0},
    "install_id": "0123abcd",
    "custom": [1, 2],
}


def test_a_record_round_trips_unchanged():
    session = Session.from_record(RECORD)
    assert session.status is SessionStatus.RUNNING and session.live
    assert session.rest == {"install_id": "0123abcd", "custom": [1, 2]}
    assert json.dumps(session.to_record(RECORD)) == json.dumps(RECORD)


def test_a_change_writes_only_that_field():
    session = Session.from_record(RECORD)
    session.status = SessionStatus.ENDED
    out = session.to_record(RECORD)
    assert out["status"] == "ended" and json.dumps(out["status"]) == '"ended"'
    assert {k: v for k, v in out.items() if k != "status"} == {
        k: v for k, v in RECORD.items() if k != "status"
    }


def test_status_sets_are_the_enum():
    assert tuple(s.value for s in SessionStatus) == STATUSES == LIVE + DONE
    assert all(SessionStatus(s).live for s in LIVE) and all(SessionStatus(s).done for s in DONE)
    assert json.dumps({"s": SessionStatus.FAILED}) == '{"s": "failed"}'


def test_an_unknown_status_is_refused():
    with pytest.raises(ValueError):
        Session.from_record({**RECORD, "status": "zombie"})


def test_every_time_the_model_types_is_one_record_problem_checks():
    """A new ``*_at`` field must be both checked and typed, or a damaged time would crash
    the store instead of being reported."""
    from dataclasses import fields

    from gpushopper.model.session import TIME_FIELDS, Session

    assert set(TIME_FIELDS) == {f.name for f in fields(Session) if f.name.endswith("_at")}
