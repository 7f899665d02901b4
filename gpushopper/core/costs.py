"""Cost reports from the state file: by session, and by month with the budget."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from gpushopper.core.sessions import accrued_cost
from gpushopper.model.errors import UsageError
from gpushopper.model.units import parse_iso


def parse_since(text: str) -> datetime:
    """``2026-11-01`` or a full ISO time, as UTC."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"--since takes a date like 2026-11-01 or an ISO time, not {text!r}"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def parse_month(text: str) -> tuple[datetime, datetime]:
    try:
        start = datetime.strptime(text.strip(), "%Y-%m").replace(tzinfo=timezone.utc)
    except ValueError:
        raise UsageError(f"--month takes YYYY-MM, not {text!r}") from None
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, end


def session_cost_rows(records: Iterable[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
    rows = []
    for record in records:
        started = parse_iso(record.get("billing_started_at"))
        ended = parse_iso(record.get("ended_at")) or now
        hours = max(0.0, (ended - started).total_seconds() / 3600) if started else 0.0
        rows.append(
            {
                "session_id": record.get("id"),
                "provider": record.get("provider"),
                "consumer": record.get("consumer"),
                "gpu_name": record.get("gpu_name"),
                "num_gpus": record.get("num_gpus"),
                "status": record.get("status"),
                "created_at": record.get("created_at"),
                "ended_at": record.get("ended_at"),
                "billed_hours": round(hours, 6),
                "price_per_hour": record.get("price_per_hour"),
                "cost_usd": round(accrued_cost(record, now), 6),
            }
        )
    return sorted(rows, key=lambda r: r["created_at"] or "")


def month_cost(record: dict[str, Any], start: datetime, end: datetime, now: datetime) -> float:
    """The part of a session's cost that fell within [start, end)."""
    price = record.get("price_per_hour")
    began = parse_iso(record.get("billing_started_at"))
    if not price or began is None:
        return 0.0
    finished = parse_iso(record.get("ended_at")) or now
    lo, hi = max(began, start), min(finished, end)
    return max(0.0, (hi - lo).total_seconds()) * float(price) / 3600
