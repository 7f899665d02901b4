"""Cost reports from the state file: by session, and by month with the budget."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone

from gpushopper.core.sessions import accrued_cost
from gpushopper.model.errors import UsageError
from gpushopper.model.jsontypes import JSONObject
from gpushopper.model.session import Session


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


def session_cost_rows(sessions: Iterable[Session], now: datetime) -> list[JSONObject]:
    rows = []
    for session in sessions:
        started = session.billing_started_at
        ended = session.ended_at or now
        hours = max(0.0, (ended - started).total_seconds() / 3600) if started else 0.0
        record = session.to_record()  # the JSON row quotes the record's own values
        rows.append(
            {
                "session_id": record.get("id"),
                "provider": session.provider,
                "consumer": session.consumer,
                "gpu_name": session.gpu_name,
                "num_gpus": session.num_gpus,
                "status": session.status.value,
                "created_at": record.get("created_at"),
                "ended_at": record.get("ended_at"),
                "billed_hours": round(hours, 6),
                "price_per_hour": session.price_per_hour,
                "cost_usd": round(accrued_cost(session, now), 6),
            }
        )
    return sorted(rows, key=lambda r: r["created_at"] or "")


@dataclass
class CostReport:
    rows: list[JSONObject]  # session_cost_rows, oldest first
    total: float  # the rows' cost, rounded to the micro-dollar


def cost_report(
    sessions: Iterable[Session],
    now: datetime,
    *,
    session_id: str | None = None,
    consumer: str | None = None,
    provider: str | None = None,
    since: datetime | None = None,
) -> CostReport:
    """``costs``: the sessions that match (``since``: created then or later, see
    ``parse_since``) with their cost by the second, and the total. An unknown
    ``session_id`` is NoSuchItem."""
    from gpushopper.model.errors import NoSuchItem

    records = list(sessions)
    if session_id:
        records = [r for r in records if r.id == session_id]
        if not records:
            raise NoSuchItem(f"no session {session_id!r} (see 'gpu-shopper sessions list --all')")
    if consumer:
        records = [r for r in records if r.consumer == consumer]
    if provider:
        records = [r for r in records if r.provider == provider]
    if since:
        records = [r for r in records if (r.created_at or since) >= since]
    rows = session_cost_rows(records, now)
    return CostReport(rows, round(sum(r["cost_usd"] for r in rows), 6))


def month_cost(session: Session, start: datetime, end: datetime, now: datetime) -> float:
    """The part of a session's cost that fell within [start, end)."""
    price = session.price_per_hour
    began = session.billing_started_at
    if not price or began is None:
        return 0.0
    finished = session.ended_at or now
    lo, hi = max(began, start), min(finished, end)
    return max(0.0, (hi - lo).total_seconds()) * float(price) / 3600


@dataclass
class MonthSummary:
    month: str
    total: float  # unrounded; the JSON view rounds it
    by_provider: dict[str, float]
    by_consumer: dict[str, float]
    budget: float | None

    def to_json(self) -> JSONObject:
        budget = self.budget
        return {
            "month": self.month,
            "total_usd": round(self.total, 6),
            "by_provider": {k: round(v, 6) for k, v in sorted(self.by_provider.items())},
            "by_consumer": {k: round(v, 6) for k, v in sorted(self.by_consumer.items())},
            "budget_usd": budget,
            "budget_used": round(self.total / budget, 4) if budget else None,
        }


def month_summary(
    sessions: Iterable[Session], month: str | None, now: datetime, budget: float | None
) -> MonthSummary:
    """Spend in ``month`` (YYYY-MM; default this month) by provider and consumer, against
    ``budget``. The one place a month's spend is summed: ``costs summary`` shows it and
    ``provision`` checks the budget with it (``budget_warning``)."""
    start, end = parse_month(month or now.strftime("%Y-%m"))
    by_provider: dict[str, float] = {}
    by_consumer: dict[str, float] = {}
    total = 0.0
    for session in sessions:
        cost = month_cost(session, start, end, now)
        if cost <= 0:
            continue
        total += cost
        name = session.provider or "?"
        by_provider[name] = by_provider.get(name, 0.0) + cost
        key = session.consumer or "-"
        by_consumer[key] = by_consumer.get(key, 0.0) + cost
    return MonthSummary(start.strftime("%Y-%m"), total, by_provider, by_consumer, budget)


def budget_warning(
    sessions: Iterable[Session], projected: float, now: datetime, budget: float | None
) -> str | None:
    """Why this rental would take the month past ``budget`` (a warning, never a refusal)."""
    if not budget:
        return None
    spent = month_summary(sessions, None, now, budget).total
    if spent + projected > budget:
        return (
            f"this month's spend ${spent:.2f} plus this rental's ${projected:.2f} would pass "
            f"the ${budget:.2f} budget (safety.monthly_budget_usd)"
        )
    return None
