"""Questions asked of stored benchmark results: which GPU is cheapest per unit of work,
which is fastest, how they compare, what to rent; and a performance estimate per offer for
``inventory --sort perf-per-dollar --workload``.

Everything here reads results as columns (``BenchStore.table()``: the flat row of each
result, keys ``state/benchstore.ROW_KEYS``, from the benchmark file's index) and turns only
the rows it prints into dicts, so 10,000 results answer in milliseconds. Every ranking
recomputes cost per unit from the price and the value (a stored figure is never trusted);
invalid results are left out, and results without a price rank last on cost.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, TypeAlias

from gpushopper.core.bench.records import cost_per_unit, per_unit, split_workload
from gpushopper.model.errors import UsageError
from gpushopper.model.jsontypes import JSONObject, JSONValue

if TYPE_CHECKING:
    from gpushopper.model.models import Offer
    from gpushopper.state.benchstore import ResultTable

MACHINE_WINDOW = timedelta(days=30)
_FLOATS = (int, float)


def _number(value: JSONValue) -> bool:
    return type(value) in _FLOATS and math.isfinite(value)


def _median(values: list[float]) -> float | None:
    """statistics.median without its import (it costs more than a query over 10,000)."""
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


class _Cols:
    """The columns a query reads, with the row accessors every question shares."""

    def __init__(self, table: ResultTable) -> None:
        self.table = table  # other columns are parsed on first use
        col = table.col
        self.value = col("value")
        self.hib = col("higher_is_better")
        self.valid = col("valid")
        self.metric = col("metric")

    @cached_property
    def price_col(self) -> list[JSONValue]:
        return self.table.col("price_per_hour")

    @cached_property
    def gpu_col(self) -> list[JSONValue]:
        return self.table.col("gpu_name")

    @cached_property
    def count_col(self) -> list[JSONValue]:
        return self.table.col("gpu_count")

    @cached_property
    def provider_col(self) -> list[JSONValue]:
        return self.table.col("provider")

    def price(self, i: int) -> float | None:
        price = self.price_col[i]
        return float(price) if _number(price) and price >= 0 else None

    def prices(self, rows: list[int]) -> list[float | None]:
        isfinite = math.isfinite
        return [
            float(p) if type(p) in _FLOATS and isfinite(p) and p >= 0 else None
            for p in map(self.price_col.__getitem__, rows)
        ]

    def gpu(self, i: int) -> str | None:
        """The advertised GPU (what one rents), else the measured one."""
        name = self.gpu_col[i]
        if isinstance(name, str) and name:
            return name
        name = self.table.col("measured_gpu")[i]
        return name if isinstance(name, str) and name else None

    def count(self, i: int) -> int:
        count = self.count_col[i]
        if type(count) is int and count > 0:
            return count
        count = self.table.col("measured_count")[i]
        return count if type(count) is int and count > 0 else 1

    def provider(self, i: int) -> str | None:
        provider = self.provider_col[i]
        return provider if isinstance(provider, str) else None


# -- selecting ------------------------------------------------------------------------------------
def select(
    table: ResultTable,
    workload: str | None = None,
    gpus: Iterable[str] = (),
    providers: Iterable[str] = (),
    newest_first: bool = True,
) -> list[int]:
    """Row numbers of ``workload``'s results (``NAME@V`` exactly; a bare ``NAME``: its
    newest version present), on any of ``gpus`` and ``providers``, newest first."""
    gpus, providers = list(gpus), list(providers)
    picked = list(range(table.n))
    if workload is not None:
        name, version = split_workload(workload)
        if version is not None:
            full = table.col("workload")
            picked = [i for i in picked if full[i] == workload]
        else:
            names, full = table.col("workload_name"), table.col("workload")
            versions = table.col("workload_version")
            mine = [i for i in picked if names[i] == name or (names[i] is None and full[i] == name)]
            present = [versions[i] for i in mine if type(versions[i]) is int]
            newest = max(present, default=None)
            picked = [i for i in mine if versions[i] == newest]
    if gpus:
        from gpushopper.model.gpus import gpu_matches

        cols = _Cols(table)
        seen = {cols.gpu(i) or "" for i in picked}  # a dozen names, not 10,000 rows
        wanted = {n for n in seen if any(gpu_matches(g, n) for g in gpus)}
        picked = [i for i in picked if (cols.gpu(i) or "") in wanted]
    if providers:
        provider = table.col("provider")
        picked = [i for i in picked if provider[i] in providers]
    if newest_first:
        created = _created(table)
        picked.sort(key=created.__getitem__, reverse=True)
    return picked


def _created(table: ResultTable) -> list[str]:
    return [c if isinstance(c, str) else "" for c in table.col("created_at")]


def resolve_id(ids: Iterable[str], wanted: str, what: str) -> str:
    """The one id equal to, or starting with, ``wanted``."""
    ids = list(ids)
    if wanted in ids:
        return wanted
    found = [i for i in ids if i.startswith(wanted)] if wanted else []
    if len(found) == 1:
        return found[0]
    if found:
        listed = ", ".join(sorted(found)[:5])
        raise UsageError(f"{wanted!r} matches {len(found)} {what}s ({listed}...)")
    raise UsageError(f"no {what} {wanted!r} (see 'gpu-shopper benchmark list')")


# -- one workload's figures ---------------------------------------------------------------------
class Ranked:
    """One workload's rankable results (row numbers into ``cols``), and what was left out.
    (A plain class: the dataclasses import costs more than a query.)"""

    def __init__(
        self,
        *,
        workload: str,
        metric: str | None,
        unit: str | None,
        higher_is_better: bool,
        rows: list[int],
        cols: _Cols,
        notes: list[str],
    ) -> None:
        self.workload = workload
        self.metric = metric
        self.unit = unit
        self.higher_is_better = higher_is_better
        self.rows = rows
        self.cols = cols
        self.notes = notes


def ranked_results(table: ResultTable, workload: str) -> Ranked:
    """The valid results of ``workload`` for its main metric (that of the last result
    stored)."""
    chosen = select(table, workload, newest_first=False)
    if not chosen:
        raise UsageError(
            f"no stored results for workload {workload!r} (see 'gpu-shopper benchmark list')"
        )
    cols = _Cols(table)
    value, hib_col, valid = cols.value, cols.hib, cols.valid
    good = [  # sound enough to rank: valid, a real direction, a positive finite value
        i
        for i in chosen
        if valid[i] is True
        and type(hib_col[i]) is bool
        and type(value[i]) in _FLOATS
        and math.isfinite(value[i])
        and value[i] > 0
    ]
    notes = []
    if len(good) < len(chosen):
        notes.append(f"{len(chosen) - len(good)} invalid results left out")
    if not good:
        raise UsageError(f"every stored result for workload {workload!r} is invalid")
    newest = good[-1]  # the latest stored (rows are in the order results were stored)
    metric, hib = cols.metric[newest], cols.hib[newest]
    same = [i for i in good if cols.metric[i] == metric and cols.hib[i] is hib]
    if len(same) < len(good):
        notes.append(f"{len(good) - len(same)} results of another metric than {metric} left out")
    unit = table.col("unit")[same[0]]
    return Ranked(
        workload=workload,
        metric=metric if isinstance(metric, str) else None,
        unit=unit if isinstance(unit, str) else None,
        higher_is_better=hib,
        rows=same,
        cols=cols,
        notes=notes,
    )


Live: TypeAlias = "dict[tuple[str, int], Offer]"


def _live_offer(live: Live, gpu: str | None, count: int) -> Offer | None:
    """The cheapest live offer of this GPU model and count, if any."""
    if not live or not gpu:
        return None
    from gpushopper.model.gpus import canonical_gpu

    return live.get((canonical_gpu(gpu), count))


def _live_fields(live: Live, gpu: str | None, count: int, value: float, hib: bool) -> JSONObject:
    offer = _live_offer(live, gpu, count)
    price = offer.price_per_hour if offer is not None else None
    return {
        "live_offer_id": offer.id if offer is not None else None,
        "live_price_per_hour": price,
        "live_cost_per_unit": cost_per_unit(price, value, hib),
    }


def _result_row(ranked: Ranked, i: int, live: Live | None) -> JSONObject:
    """One result as the questions print it: the figures from the ranked columns, the
    rest from its own row."""
    cols, facts = ranked.cols, ranked.cols.table.row(i)
    value, hib, price = cols.value[i], ranked.higher_is_better, cols.price(i)
    gpu = facts["gpu_name"] or facts["measured_gpu"] or None
    count = next(
        (c for c in (facts["gpu_count"], facts["measured_count"]) if type(c) is int and c > 0), 1
    )
    row = {
        "result_id": facts["id"],
        "workload": facts["workload"],
        "gpu_name": gpu,
        "gpu_count": count,
        "provider": facts["provider"],
        "offer_id": facts["offer_id"],
        "metric": ranked.metric,
        "value": value,
        "unit": ranked.unit,
        "higher_is_better": hib,
        "price_per_hour": price,
        "cost_per_unit": cost_per_unit(price, value, hib),
        "created_at": facts["created_at"],
    }
    row.update(_live_fields(live or {}, gpu, count, value, hib))
    return {
        k: (v if v is None or isinstance(v, (str, int, float)) else None) for k, v in row.items()
    }


def _last(value: float | None) -> float:
    return value if value is not None else math.inf


def _costs(ranked: Ranked, live: Live | None) -> list[float]:
    """Each ranked row's cost per unit (live where asked), inf when unknown (the values
    are positive and finite: ranked_results kept only those)."""
    cols, rows = ranked.cols, ranked.rows
    if live is None:
        prices = cols.prices(rows)
    else:
        offers = [_live_offer(live, cols.gpu(i), cols.count(i)) for i in rows]
        prices = [offer.price_per_hour if offer is not None else None for offer in offers]
    values = [cols.value[i] for i in rows]
    inf, cost = math.inf, per_unit(ranked.higher_is_better)
    return [inf if p is None else cost(p, v) for p, v in zip(prices, values, strict=True)]


def cheapest(ranked: Ranked, live: Live | None = None, limit: int | None = None) -> list[dict]:
    """Results by cost per unit of work, cheapest first (re-priced with ``live`` offers
    when given); results without a price come last."""
    costs = _costs(ranked, live)
    if live is not None:  # ties on the live price: the cheaper when measured first
        recorded = _costs(ranked, None)
        order = sorted(range(len(ranked.rows)), key=lambda k: (costs[k], recorded[k]))
    else:
        order = sorted(range(len(ranked.rows)), key=costs.__getitem__)
    picked = order[:limit] if limit else order
    return [_result_row(ranked, ranked.rows[k], live) for k in picked]


def best(ranked: Ranked, live: Live | None = None, limit: int | None = None) -> list[dict]:
    """Results by value, best first (highest, or lowest for lower-is-better metrics)."""
    sign = -1 if ranked.higher_is_better else 1
    value = ranked.cols.value
    keys = [
        (sign * value[i], cost) for i, cost in zip(ranked.rows, _costs(ranked, None), strict=True)
    ]
    order = sorted(range(len(ranked.rows)), key=keys.__getitem__)
    picked = order[:limit] if limit else order
    return [_result_row(ranked, ranked.rows[k], live) for k in picked]


def _groups(ranked: Ranked) -> dict[tuple[str, int], list[int]]:
    """Rows per (GPU model, count); the most common spelling of a model names it."""
    from gpushopper.model.gpus import canonical_gpu

    cols = ranked.cols
    gpus, counts = cols.gpu_col, cols.count_col
    raw: dict[tuple[JSONValue, JSONValue], list[int]] = defaultdict(list)
    for i in ranked.rows:
        raw[(gpus[i], counts[i])].append(i)
    spelled: dict[tuple[str, int], list[int]] = defaultdict(list)
    for (gpu, count), items in raw.items():
        if isinstance(gpu, str) and gpu and type(count) is int and count > 0:
            spelled[(gpu, count)].extend(items)
            continue
        for i in items:  # the measured GPU, or a default count
            measured = cols.gpu(i)
            if measured:
                spelled[(measured, cols.count(i))].append(i)
    merged: dict[tuple[str, int], list[int]] = {}
    named: dict[tuple[str, int], tuple[str, int]] = {}
    for (gpu, count), items in sorted(spelled.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        name = named.setdefault((canonical_gpu(gpu), count), (gpu, count))
        merged.setdefault(name, []).extend(items)
    return merged


def recommendations(
    ranked: Ranked, live: Live | None = None, limit: int | None = None
) -> list[dict]:
    """One row per GPU model and count: median value, n, cost per unit at the median
    recorded price (and at the cheapest live offer), peak VRAM used; cheapest first."""
    cols, hib = ranked.cols, ranked.higher_is_better
    peak_col, provider_col = cols.table.col("peak_vram_mb"), cols.provider_col
    rows = []
    for (gpu, count), items in _groups(ranked).items():
        value = _median(list(map(cols.value.__getitem__, items)))
        assert value is not None  # every group has a row
        price = _median([p for p in cols.prices(items) if p is not None])
        peaks = [peak_col[i] for i in items if _number(peak_col[i])]
        row: JSONObject = {
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
            "providers": sorted(
                p for p in set(map(provider_col.__getitem__, items)) if isinstance(p, str)
            ),
        }
        row.update(_live_fields(live or {}, gpu, count, value, hib))
        rows.append(row)
    key = "live_cost_per_unit" if live is not None else "cost_per_unit"
    rows.sort(key=lambda r: (_last(r[key]), _last(r["cost_per_unit"]), r["gpu_name"]))
    return rows[:limit] if limit else rows


def compare(ranked: Ranked, live: Live | None = None, limit: int | None = None) -> list[dict]:
    """Each GPU model against the best: ``perf_ratio`` (1.0 = the best median value; 0.5 =
    half as good) and ``cost_ratio`` (1.0 = the lowest cost per unit; 2.0 = twice as dear)."""
    rows = recommendations(ranked, live)
    if not rows:
        return rows
    values = [r["median_value"] for r in rows]
    hib = ranked.higher_is_better
    top = max(values) if hib else min(values)
    key = "live_cost_per_unit" if live is not None else "cost_per_unit"
    costs = [r[key] for r in rows if r[key] is not None]
    lowest = min(costs) if costs else None
    for row in rows:
        v = row["median_value"]
        row["perf_ratio"] = round(v / top if hib else top / v, 4)
        cost = row[key]
        row["cost_ratio"] = round(cost / lowest, 4) if cost is not None and lowest else None
    rows.sort(key=lambda r: (-r["perf_ratio"], _last(r["cost_ratio"]), r["gpu_name"]))
    return rows[:limit] if limit else rows


def live_models(ranked: Ranked) -> list[tuple[str, int]]:
    """The (GPU name, count) pairs a ``--live`` query must price."""
    return sorted(_groups(ranked))


def cheapest_live(offers: Iterable[Offer]) -> Live:
    """The cheapest offer per (canonical GPU model, GPU count)."""
    from gpushopper.model.gpus import canonical_gpu

    out: Live = {}
    for offer in offers:
        if not offer.gpu_name or offer.price_per_hour is None:
            continue
        key = (canonical_gpu(offer.gpu_name), offer.num_gpus or 1)
        held = out.get(key)
        if held is None or offer.price_per_hour < (held.price_per_hour or math.inf):
            out[key] = offer
    return out


# -- inventory: a performance estimate for each offer ---------------------------------------------
def estimate_offers(offers: list[Offer], table: ResultTable, workload: str, now: datetime) -> int:
    """Give each offer ``perf_estimate`` / ``perf_source`` / ``cost_per_unit`` and a
    ``perf_per_dollar`` (work per dollar: larger is better) from ``workload``'s valid results,
    in order: a result on the same machine within 30 days (``machine``), the median of the
    same GPU model on the same provider (``gpu_provider``), the median of that GPU model
    (``gpu_model``). Offers with none get ``None`` and so rank last. Returns how many got one.
    """
    from gpushopper.model.gpus import canonical_gpu
    from gpushopper.model.units import parse_iso

    try:
        ranked: Ranked | None = ranked_results(table, workload)
    except UsageError:
        ranked = None
    machine: dict[tuple[str, str], float] = {}
    by_provider: dict[tuple[str, str], list[float]] = {}
    by_model: dict[str, list[float]] = {}
    hib = True
    if ranked is not None:
        cols, hib = ranked.cols, ranked.higher_is_better
        machines, created = table.col("machine_id"), _created(table)
        cutoff = now - MACHINE_WINDOW
        newest_first = sorted(ranked.rows, key=created.__getitem__, reverse=True)
        for i in newest_first:  # the first per machine is its latest
            gpu = cols.gpu(i)
            if not gpu:
                continue
            model, provider, figure = canonical_gpu(gpu), cols.provider(i) or "", cols.value[i]
            by_model.setdefault(model, []).append(figure)
            by_provider.setdefault((model, provider), []).append(figure)
            machine_id = machines[i]
            if isinstance(machine_id, str) and machine_id and (provider, machine_id) not in machine:
                try:
                    when = parse_iso(created[i]) if created[i] else None
                except ValueError:
                    when = None
                if when is not None and when >= cutoff:
                    machine[(provider, machine_id)] = figure
    medians_p = {k: _median(v) for k, v in by_provider.items()}
    medians_m = {k: _median(v) for k, v in by_model.items()}
    estimated = 0
    for offer in offers:
        value: float | None = None
        source: str | None = None
        kind = canonical_gpu(offer.gpu_name) if offer.gpu_name else None
        hit = machine.get((offer.provider, offer.machine_id)) if offer.machine_id else None
        if hit is not None:
            value, source = hit, "machine"
        elif kind is not None and (kind, offer.provider) in medians_p:
            value, source = medians_p[(kind, offer.provider)], "gpu_provider"
        elif kind is not None and kind in medians_m:
            value, source = medians_m[kind], "gpu_model"
        cost = cost_per_unit(offer.price_per_hour, value, hib) if value is not None else None
        offer.perf_estimate = value
        offer.perf_source = source if cost is not None else None
        offer.cost_per_unit = cost
        offer.perf_per_dollar = 1.0 / cost if cost else None
        if cost is not None:
            estimated += 1
    return estimated
