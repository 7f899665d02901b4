"""Running session records and a state store with an install id, for the safety tests
that drive the enforcer and the watch loop against the in-process fake provider."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from gpushopper.model.units import iso
from gpushopper.state.store import StateStore

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
ME = "aaaa1111"


def label(sid: str, install: str = ME) -> str:
    return f"gpu-shopper:{install}:{sid}"


def running(
    sid: str,
    instance_id: str | None,
    provider: str = "vastai",
    ends_s: float = 7200.0,
    **extra: Any,
) -> dict[str, Any]:
    """A running session created and billed from T0, its reservation ending ``ends_s`` later."""
    return {
        "id": sid,
        "status": "running",
        "provider": provider,
        "instance_id": instance_id,
        "label": label(sid),
        "created_at": iso(T0),
        "billing_started_at": iso(T0),
        "reservation_ends_at": iso(T0 + timedelta(seconds=ends_s)),
        "hard_max_at": iso(T0 + timedelta(hours=12)),
        "price_per_hour": 0.5,
        **extra,
    }


def new_store(tmp_path: Path) -> StateStore:
    store = StateStore(tmp_path / "state.json")
    with store.transaction() as state:
        state["install_id"] = ME
    return store


def put(store: StateStore, *records: dict[str, Any]) -> None:
    with store.transaction() as state:
        for record in records:
            state["sessions"][record["id"]] = record


def read_state(home: Path) -> dict[str, Any]:
    """The state file under ``home`` (a GPU_SHOPPER_HOME), read as the tool reads it."""
    return StateStore(home / "state.json").read()
