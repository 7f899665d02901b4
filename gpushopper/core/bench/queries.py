"""Questions asked of stored benchmark results: which GPU is cheapest per unit of work,
which is fastest, how they compare, what to rent; and a performance estimate per offer for
``inventory --sort perf-per-dollar --workload``.

Every ranking recomputes cost per unit from the offer's price and the value (a stored
figure is never trusted); invalid results and results without a price are left out.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from gpushopper.core.bench.records import cost_per_unit, split_workload
from gpushopper.model.errors import UsageError
from gpushopper.model.models import Offer, canonical_gpu
from gpushopper.model.units import parse_iso

MACHINE_WINDOW = timedelta(days=30)


def _number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def rankable(record: dict[str, Any]) -> bool:
    """Sound enough to rank: valid, a positive finite value, a real boolean direction."""
    return (
        record.get("valid") is True
        and _number(record.get("value"))
        and record["value"] > 0
        and type(record.get("higher_is_better")) is bool
    )


def price_of(record: dict[str, Any]) -> float | None:
    offer = record.get("offer")
    price: Any = offer.get("price_per_hour") if isinstance(offer, dict) else None
    return float(price) if _number(price) and price >= 0 else None


def gpu_of(record: dict[str, Any]) -> str | None:
    """The advertised GPU (what one rents), else the measured one."""
    for block in ("offer", "hardware"):
        part = record.get(block)
        name = part.get("gpu_name") if isinstance(part, dict) else None
        if isinstance(name, str) and name:
            return name
    return None


def count_of(record: dict[str, Any]) -> int:
    for block in ("offer", "hardware"):
        part = record.get(block)
        count = part.get("gpu_count") if isinstance(part, dict) else None
        if type(count) is int and count > 0:
            return count
    return 1


def provider_of(record: dict[str, Any]) -> str | None:
    offer = record.get("offer")
    provider = offer.get("provider") if isinstance(offer, dict) else None
    return provider if isinstance(provider, str) else None


def _text(record: dict[str, Any], key: str) -> str:
    value = record.get(key)
    return value if isinstance(value, str) else ""


# -- selecting ------------------------------------------------------------------------------------
def select(
    records: Iterable[dict[str, Any]],
    workload: str | None = None,
    gpus: Iterable[str] = (),
    providers: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """Results of ``workload`` (``NAME@V`` exactly; a bare ``NAME``: its newest version
    present), on any of ``gpus`` and ``providers``, newest first."""
    from gpushopper.model.models import gpu_matches

    gpus, providers = list(gpus), list(providers)
    picked = list(records)
    if workload is not None:
        name, version = split_workload(workload)
        if version is not None:
            picked = [r for r in picked if r.get("workload") == workload]
        else:
            mine = [r for r in picked if r.get("workload_name", r.get("workload")) == name]
            versions = [v for v in (r.get("workload_version") for r in mine) if type(v) is int]
            newest = max(versions, default=None)
            picked = [r for r in mine if r.get("workload_version") == newest]
    if gpus:
        picked = [r for r in picked if any(gpu_matches(g, gpu_of(r) or "") for g in gpus)]
    if providers:
        picked = [r for r in picked if provider_of(r) in providers]
    picked.sort(key=lambda r: (_text(r, "created_at"), _text(r, "id")), reverse=True)
    return picked


def resolve_id(ids: Iterable[str], wanted: str, what: str) -> str:
    """The one id equal to, or starting with, ``wanted``."""
    ids = list(ids)
    if wanted in ids:
        return wanted
    found = [i for i in ids if i.startswith(wanted)] if wanted else []
    if len(found) == 1:
        return found[0]
    if found:
        raise UsageError(
            f"{wanted!r} matches {len(found)} {what}s ({', '.join(sorted(found)[:5])}...)"
        )
    raise UsageError(f"no {what} {wanted!r} (see 'gpu-shopper benchmark list')")


# -- one workload's figures ---------------------------------------------------------------------
@dataclass
class Ranked:
    """One workload's rankable results, and what was left out."""

    workload: str
    metric: str | None
    unit: str | None
    higher_is_better: bool
    results: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)


def ranked_results(records: Iterable[dict[str, Any]], workload: str) -> Ranked:
    """The valid results of ``workload`` for its main metric (that of its newest result)."""
    chosen = select(records, workload)
    if not chosen:
        raise UsageError(
            f"no stored results for workload {workload!r} (see 'gpu-shopper benchmark list')"
        )
    good = [r for r in chosen if rankable(r)]
    notes = []
    if len(good) < len(chosen):
        notes.append(f"{len(chosen) - len(good)} invalid results left out")
    if not good:
        raise UsageError(f"every stored result for workload {workload!r} is invalid")
    metric = good[0].get("metric")
    same = [r for r in good if r.get("metric") == metric]
    if len(same) < len(good):
        notes.append(f"{len(good) - len(same)} results of another metric than {metric} left out")
    return Ranked(
        workload=workload,
        metric=metric,
        unit=same[0].get("unit"),
        higher_is_better=same[0]["higher_is_better"],
        results=same,
        notes=notes,
    )


def _row(record: dict[str, Any], live: dict[tuple[str, int], Offer] | None) -> dict[str, Any]:
    price = price_of(record)
    offer: dict[str, Any] = record["offer"] if isinstance(record.get("offer"), dict) else {}
    row = {
        "result_id": record.get("id"),
        "workload": record.get("workload"),
        "gpu_name": gpu_of(record),
        "gpu_count": count_of(record),
        "provider": provider_of(record),
        "offer_id": offer.get("offer_id"),
        "metric": record.get("metric"),
        "value": record["value"],
        "unit": record.get("unit"),
        "higher_is_better": record["higher_is_better"],
        "price_per_hour": price,
        "cost_per_unit": cost_per_unit(price, record["value"], record["higher_is_better"]),
        "created_at": record.get("created_at"),
    }
    row.update(_live_fields(live or {}, row["gpu_name"], row["gpu_count"], row))
    return row


def _live_fields(
    live: dict[tuple[str, int], Offer], gpu: str | None, count: int, row: dict[str, Any]
) -> dict[str, Any]:
    offer = live.get((canonical_gpu(gpu), count)) if gpu else None
    price = offer.price_per_hour if offer is not None else None
    return {
        "live_offer_id": offer.id if offer is not None else None,
        "live_price_per_hour": price,
        "live_cost_per_unit": cost_per_unit(price, row["value"], row["higher_is_better"]),
    }


def _last(value: Any) -> float:
    return value if value is not None else math.inf


def cheapest(
    ranked: Ranked, live: dict[tuple[str, int], Offer] | None = None
) -> list[dict[str, Any]]:
    """Results by cost per unit of work, cheapest first (re-priced with ``live`` offers
    when given); results without a price come last."""
    rows = [_row(r, live) for r in ranked.results]
    key = "live_cost_per_unit" if live is not None else "cost_per_unit"
    rows.sort(key=lambda r: (_last(r[key]), _last(r["cost_per_unit"]), r["result_id"] or ""))
    return rows


def best(ranked: Ranked, live: dict[tuple[str, int], Offer] | None = None) -> list[dict[str, Any]]:
    """Results by value, best first (highest, or lowest for lower-is-better metrics)."""
    sign = -1 if ranked.higher_is_better else 1
    rows = [_row(r, live) for r in ranked.results]
    rows.sort(key=lambda r: (sign * r["value"], _last(r["cost_per_unit"]), r["result_id"] or ""))
    return rows


def _groups(ranked: Ranked) -> dict[tuple[str, int], list[dict[str, Any]]]:
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for record in ranked.results:
        gpu = gpu_of(record)
        if gpu:
            groups.setdefault((gpu, count_of(record)), []).append(record)
    # One spelling per model: the most common one names the group.
    merged: dict[tuple[str, int], list[dict[str, Any]]] = {}
    by_key: dict[tuple[str, int], tuple[str, int]] = {}
    for (gpu, count), items in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        key = (canonical_gpu(gpu), count)
        name = by_key.setdefault(key, (gpu, count))
        merged.setdefault(name, []).extend(items)
    return merged


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def recommendations(
    ranked: Ranked, live: dict[tuple[str, int], Offer] | None = None
) -> list[dict[str, Any]]:
    """One row per GPU model and count: median value, n, cost per unit at the median
    recorded price (and at the cheapest live offer), peak VRAM used; cheapest first."""
    rows = []
    hib = ranked.higher_is_better
    for (gpu, count), items in _groups(ranked).items():
        value = _median([r["value"] for r in items])
        prices = [p for p in (price_of(r) for r in items) if p is not None]
        price = _median(prices)
        peaks = [
            r["extra_metrics"]["peak_vram_mb"]
            for r in items
            if isinstance(r.get("extra_metrics"), dict)
            and _number(r["extra_metrics"].get("peak_vram_mb"))
        ]
        row = {
            "gpu_name": gpu,
            "gpu_count": count,
            "n": len(items),
            "metric": ranked.metric,
            "median_value": value,
            "unit": ranked.unit,
            "higher_is_better": hib,
            "median_price_per_hour": price,
            "cost_per_unit": cost_per_unit(price, value, hib),
            "peak_vram_mb": max(peaks) if peaks else None,
            "providers": sorted({p for p in (provider_of(r) for r in items) if p}),
        }
        row.update(_live_fields(live or {}, gpu, count, {"value": value, "higher_is_better": hib}))
        rows.append(row)
    key = "live_cost_per_unit" if live is not None else "cost_per_unit"
    rows.sort(key=lambda r: (_last(r[key]), _last(r["cost_per_unit"]), r["gpu_name"]))
    return rows


def compare(
    ranked: Ranked, live: dict[tuple[str, int], Offer] | None = None
) -> list[dict[str, Any]]:
    """Each GPU model against the best: ``perf_ratio`` (1.0 = the best median value; 0.5 =
    half as good) and ``cost_ratio`` (1.0 = the lowest cost per unit; 2.0 = twice as dear)."""
    rows = recommendations(ranked, live)
    values = [r["median_value"] for r in rows]
    if not rows:
        return rows
    top = max(values) if ranked.higher_is_better else min(values)
    key = "live_cost_per_unit" if live is not None else "cost_per_unit"
    costs = [r[key] for r in rows if r[key] is not None]
    cheapest_cost = min(costs) if costs else None
    for row in rows:
        v = row["median_value"]
        row["perf_ratio"] = round(v / top if ranked.higher_is_better else top / v, 4)
        cost = row[key]
        row["cost_ratio"] = (
            round(cost / cheapest_cost, 4) if cost is not None and cheapest_cost else None
        )
    rows.sort(key=lambda r: (-r["perf_ratio"], _last(r["cost_ratio"]), r["gpu_name"]))
    return rows


def live_models(ranked: Ranked) -> list[tuple[str, int]]:
    """The (GPU name, count) pairs a ``--live`` query must price."""
    return sorted(_groups(ranked))


def cheapest_live(offers: Iterable[Offer]) -> dict[tuple[str, int], Offer]:
    """The cheapest offer per (canonical GPU model, GPU count)."""
    out: dict[tuple[str, int], Offer] = {}
    for offer in offers:
        if not offer.gpu_name or offer.price_per_hour is None:
            continue
        key = (canonical_gpu(offer.gpu_name), offer.num_gpus or 1)
        held = out.get(key)
        if held is None or offer.price_per_hour < (held.price_per_hour or math.inf):
            out[key] = offer
    return out


# -- inventory: a performance estimate for each offer ---------------------------------------------
def estimate_offers(
    offers: list[Offer], records: Iterable[dict[str, Any]], workload: str, now: datetime
) -> int:
    """Give each offer ``perf_estimate`` / ``perf_source`` / ``cost_per_unit`` and a
    ``perf_per_dollar`` (work per dollar: larger is better) from ``workload``'s valid results,
    in order: a result on the same machine within 30 days (``machine``), the median of the
    same GPU model on the same provider (``gpu_provider``), the median of that GPU model
    (``gpu_model``). Offers with none get ``None`` and so rank last. Returns how many got one.
    """
    try:
        ranked = ranked_results(records, workload)
    except UsageError:
        ranked = None
    machine: dict[tuple[str, str], dict[str, Any]] = {}
    by_provider: dict[tuple[str, str], list[float]] = {}
    by_model: dict[str, list[float]] = {}
    if ranked is not None:
        cutoff = now - MACHINE_WINDOW
        for record in ranked.results:  # newest first: the first per machine is its latest
            gpu = gpu_of(record)
            if not gpu:
                continue
            model = canonical_gpu(gpu)
            provider = provider_of(record) or ""
            by_model.setdefault(model, []).append(record["value"])
            by_provider.setdefault((model, provider), []).append(record["value"])
            offer = record.get("offer") or {}
            machine_id = offer.get("machine_id") if isinstance(offer, dict) else None
            if isinstance(machine_id, str) and machine_id and (provider, machine_id) not in machine:
                try:
                    when = parse_iso(record.get("created_at"))
                except (TypeError, ValueError):
                    when = None
                if when is not None and when >= cutoff:
                    machine[(provider, machine_id)] = record
    medians_p = {k: statistics.median(v) for k, v in by_provider.items()}
    medians_m = {k: statistics.median(v) for k, v in by_model.items()}
    hib = ranked.higher_is_better if ranked is not None else True
    estimated = 0
    for offer in offers:
        value: float | None = None
        source: str | None = None
        kind = canonical_gpu(offer.gpu_name) if offer.gpu_name else None
        hit = machine.get((offer.provider, offer.machine_id)) if offer.machine_id else None
        if hit is not None:
            value, source = hit["value"], "machine"
        elif kind is not None and (kind, offer.provider) in medians_p:
            value, source = medians_p[(kind, offer.provider)], "gpu_provider"
        elif kind is not None and kind in medians_m:
            value, source = medians_m[kind], "gpu_model"
        cost = cost_per_unit(offer.price_per_hour, value, hib) if value is not None else None
        offer.perf_estimate = value
        offer.perf_source = source if cost is not None else None
        offer.cost_per_unit = cost
        offer.perf_per_dollar = (1.0 / cost if cost else None) if cost is not None else None
        if cost is not None:
            estimated += 1
    return estimated
