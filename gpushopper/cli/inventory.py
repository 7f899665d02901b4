"""``gpu-shopper inventory``: what can be rented right now, best first."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from gpushopper.cli import App, pass_app
from gpushopper.cli.filters import (
    SORTS,
    bench_estimator,
    bounded,
    build_query,
    filter_args,
    filter_options,
    offer_cache,
    resolve_template,
    workload_option,
)
from gpushopper.cli.output import Table, info, json_option, render, warn
from gpushopper.cli.params import OFFER_ID


def _money(value: float | None) -> str | None:
    return None if value is None else f"{value:.3f}"


def offer_rows(offers: list[Any], known: Sequence[str] = ()) -> list[tuple[Any, ...]]:
    from gpushopper.providers.registry import short_offer_ids

    # A unique prefix of a long id (TensorDock's), as `inventory show` and `provision` take it.
    short = short_offer_ids([o.id for o in offers], known)
    rows = []
    for o in offers:
        rows.append(
            (
                short[o.id],
                o.gpu_name,
                o.num_gpus,
                o.vram_gb,
                _money(o.price_per_hour),
                None if o.reliability is None else f"{o.reliability:.3f}",
                o.cuda_version,
                None if o.disk_gb is None else int(o.disk_gb),
                o.country,
                None if o.health == "ok" else o.health,
            )
        )
    return rows


OFFER_COLUMNS = [
    "OFFER",
    "GPU",
    "#",
    "VRAM GB",
    "$/h",
    "RELIAB.",
    "CUDA",
    "DISK GB",
    "CC",
    "HEALTH",
]


def report_providers(result: Any) -> None:
    for why in result.skipped.values():
        info(f"Note: skipped {why}")
    for name, message in result.errors.items():
        reason = message.removeprefix(f"{name}: ")
        warn(f"{name} failed ({reason}); showing the other providers' offers")
    for note in result.notes:
        info(f"Note: {note}")


class StatusLine:
    """A rich status line on stderr naming the providers still being asked."""

    def __init__(self) -> None:
        self._status: Any = None

    def show(self, waiting: list[str]) -> None:
        text = f"Asking {', '.join(waiting)}..."
        if self._status is None:
            from gpushopper.cli.output import console

            self._status = console(stderr=True).status(text)
            self._status.start()
        else:
            self._status.update(text)

    def stop(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


def status_line(as_json: bool) -> StatusLine | None:
    """A status line only for a person watching: stderr a terminal, and no --json."""
    import sys

    if as_json:
        return None
    isatty = getattr(sys.stderr, "isatty", None)
    return StatusLine() if isatty is not None and isatty() else None


def run_search(
    app: App, query: Any, *, refresh: bool, include_unhealthy: bool, as_json: bool = True
) -> Any:
    from gpushopper.core.inventory import search

    health = app.store.read().get("offer_health", {})
    result = search(
        query,
        app.provider,
        cache=offer_cache(app),
        refresh=refresh,
        health=health,
        include_unhealthy=include_unhealthy,
        now=app.clock,
        template_resolver=resolve_template,
        progress=status_line(as_json),
        estimate=bench_estimator(app) if query.workload else None,
    )
    result.raise_if_nobody_answered(query.providers)
    return result


@click.group(
    invoke_without_command=True,
    epilog="""Examples:

\b
  gpu-shopper inventory --gpu 4090 --max-price 0.6
  gpu-shopper inventory --sort perf-per-dollar --workload gpu-matmul@1
  gpu-shopper inventory --profile flux-lora --limit 5
  gpu-shopper inventory --min-vram 48 --country US --country CA --json | jq '.[0].id'
""",
)
@filter_options
@click.option("--sort", type=click.Choice(SORTS), help="Ranking (default: price, cheapest first).")
@workload_option
@click.option("--limit", type=bounded("limit", True), metavar="N", help="Show at most N offers.")
@click.option("--refresh", is_flag=True, help="Ask the providers again instead of using the cache.")
@click.option(
    "--include-unhealthy", is_flag=True, help="Also show offers suppressed after failed boots."
)
@json_option
@pass_app
@click.pass_context
def inventory(ctx: click.Context, app: App, **opts: Any) -> None:
    """Offers across Vast.ai and TensorDock, cheapest reliable first.

    Providers are asked at once; one failing is reported on stderr while the others'
    offers still print. Prices are USD/h in total, including the disk asked for.
    """
    if ctx.invoked_subcommand is not None:
        return
    query, _ = build_query(
        app, **filter_args(opts), sort=opts["sort"], limit=opts["limit"], workload=opts["workload"]
    )
    result = run_search(
        app,
        query,
        refresh=opts["refresh"],
        include_unhealthy=opts["include_unhealthy"],
        as_json=opts["as_json"],
    )
    report_providers(result)
    if result.hidden_unhealthy:
        info(
            f"Note: {result.hidden_unhealthy} offers hidden after failed boots (--include-unhealthy shows them)"
        )
    offers = result.offers

    def rows(_: Any) -> list[tuple[Any, ...]]:
        cache = offer_cache(app)
        known = [k for name in {o.provider for o in offers} for k in cache.known_ids(name)]
        if not query.workload:
            return offer_rows(offers, known)
        return [
            (*row, _figure(o.perf_estimate), _figure(o.cost_per_unit), o.perf_source)
            for row, o in zip(offer_rows(offers, known), offers, strict=True)
        ]

    columns = [*OFFER_COLUMNS, "PERF", "$/H PER UNIT", "FROM"] if query.workload else OFFER_COLUMNS
    table = Table(columns, rows=rows, empty="No offers match.")
    render(opts["as_json"], [o.to_json() for o in offers], table=table)


def _figure(value: float | None) -> str | None:
    return None if value is None else f"{value:.4g}"


def _fetch_offer(app: App, offer_id: str, disk: int | None) -> Any:
    from gpushopper.core.inventory import get_offer_or_fail, health_of
    from gpushopper.providers.registry import split_offer_id

    provider_name, native = split_offer_id(offer_id)
    provider = app.provider(provider_name)
    disk_gb = float(disk or app.settings.get("defaults.disk_gb"))
    offer = get_offer_or_fail(provider, offer_id, native, disk_gb)
    offer.health = health_of(offer, app.store.read().get("offer_health", {}), app.clock())
    return provider, offer


@inventory.command("show", epilog="Example: gpu-shopper inventory show vastai:1000001 --json")
@click.argument("offer_id", type=OFFER_ID)
@click.option(
    "--disk", type=bounded("disk_gb", True), metavar="GB", help="Price for this much disk."
)
@json_option
@pass_app
def inventory_show(app: App, offer_id: str, disk: int | None, as_json: bool) -> None:
    """Fetch one offer again, fresh from its provider."""
    _, offer = _fetch_offer(app, offer_id, disk)
    render(as_json, offer.to_json(), pairs=dict.items)


def _check_requirements(offer: Any, requirements: dict[str, Any]) -> tuple[bool, list[str]]:
    """Does the offer meet a Vast.ai-style ``extra_filters`` dict? Unknown fields are listed."""
    ops = {
        "eq": lambda a, b: a == b,
        "neq": lambda a, b: a != b,
        "gt": lambda a, b: a > b,
        "gte": lambda a, b: a >= b,
        "lt": lambda a, b: a < b,
        "lte": lambda a, b: a <= b,
        "in": lambda a, b: a in b,
        "notin": lambda a, b: a not in b,
    }
    known = {
        "cuda_max_good": offer.cuda_version,
        "cuda_vers": offer.cuda_version,
        "gpu_ram": None if offer.vram_gb is None else offer.vram_gb * 1000,
        "num_gpus": offer.num_gpus,
        "disk_space": offer.disk_gb,
        "reliability": offer.reliability,
        "dph_total": offer.price_per_hour,
        "gpu_name": offer.gpu_name,
    }
    unchecked: list[str] = []
    for field, cond in requirements.items():
        if field not in known or not isinstance(cond, dict):
            unchecked.append(field)
            continue
        value = known[field]
        for op, wanted in cond.items():
            if op not in ops:
                unchecked.append(f"{field}.{op}")
                continue
            if value is None:
                unchecked.append(field)
                continue
            try:
                if isinstance(value, (int, float)) and not isinstance(wanted, list):
                    wanted = float(wanted)
                if not ops[op](value, wanted):
                    return False, unchecked
            except (TypeError, ValueError):
                unchecked.append(field)
    return True, unchecked


@inventory.command(
    "compatible-templates",
    epilog="Example: gpu-shopper inventory compatible-templates vastai:1000001",
)
@click.argument("offer_id", type=OFFER_ID)
@json_option
@pass_app
def inventory_compatible_templates(app: App, offer_id: str, as_json: bool) -> None:
    """Templates whose requirements (e.g. a minimum CUDA) this offer meets."""
    provider, offer = _fetch_offer(app, offer_id, None)
    rows = []
    for template in provider.list_templates():
        reqs = dict(template.requirements)
        if reqs.get("nvidia_driver") is False:
            ok, unchecked = (
                True,
                ["nvidia_driver (the image has none: install one with cloud-init)"],
            )
        else:
            reqs.pop("nvidia_driver", None)
            ok, unchecked = _check_requirements(offer, reqs)
        if ok:
            rows.append({**template.to_json(), "unchecked": unchecked})
    table = Table(
        ["TEMPLATE", "NAME", "IMAGE", "MIN CUDA", "UNCHECKED"],
        lambda r: (
            r["id"],
            r["name"],
            r["image"],
            r["min_cuda"],
            ", ".join(r["unchecked"]) or None,
        ),
        empty="No compatible templates.",
    )
    render(as_json, rows, table=table)
