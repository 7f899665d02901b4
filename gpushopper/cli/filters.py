"""The inventory filter flags, shared by ``inventory`` and ``provision``, and the query
they build (flag > profile > config default)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import click

from gpushopper.model.models import SORTS as SORTS  # the commands' --sort choices
from gpushopper.model.models import OfferQuery
from gpushopper.providers.registry import PROVIDERS


class Finite(click.FloatRange):
    """A float range that also refuses ``nan`` and ``inf`` (click's ranges let nan through,
    and an infinite filter reached the provider as invalid JSON)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        out = super().convert(value, param, ctx)
        if not math.isfinite(out):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return out


def bounded(option: str, integer: bool = False) -> click.ParamType:
    """The range a filter takes: the same table config and profiles are checked against."""
    from gpushopper.state.config import RANGES

    low, high, open_low = RANGES[option]
    if integer:
        return click.IntRange(
            min=None if low is None else int(low), max=None if high is None else int(high)
        )
    return Finite(min=low, max=high, min_open=open_low)


def filter_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--provider",
            "providers",
            multiple=True,
            type=click.Choice(PROVIDERS),
            help="Only this provider (repeatable).",
        ),
        click.option(
            "--gpu",
            "gpus",
            multiple=True,
            metavar="NAME",
            help="GPU model, loosely matched: 4090, RTX_4090, 'rtx 4090' (repeatable).",
        ),
        click.option(
            "--min-vram",
            type=bounded("min_vram_gb"),
            metavar="GB",
            help="Minimum VRAM per GPU, GB.",
        ),
        click.option(
            "--num-gpus", type=bounded("num_gpus", True), metavar="N", help="Exactly N GPUs."
        ),
        click.option(
            "--max-price",
            type=bounded("max_price"),
            metavar="USD",
            help="Maximum total price, USD/h.",
        ),
        click.option(
            "--min-reliability",
            type=bounded("min_reliability"),
            metavar="R",
            help="Reliability floor, 0-1 (default from config, 0.95).",
        ),
        click.option(
            "--min-cuda",
            type=bounded("min_cuda"),
            metavar="X.Y",
            help="Minimum CUDA version the driver supports.",
        ),
        click.option(
            "--min-disk",
            type=bounded("min_disk_gb"),
            metavar="GB",
            help="Minimum free disk on the host, GB.",
        ),
        click.option(
            "--country",
            "countries",
            multiple=True,
            metavar="CC",
            help="Two-letter country code (repeatable).",
        ),
        click.option(
            "--disk",
            type=bounded("disk_gb", True),
            metavar="GB",
            help="Disk to rent, GB; prices include it (default 32).",
        ),
        click.option(
            "--template", metavar="ID|NAME", help="Only offers that meet this template's needs."
        ),
        click.option(
            "--verified-only",
            is_flag=True,
            default=None,
            help="Only offers the provider has verified.",
        ),
        click.option(
            "--profile", metavar="NAME", help="Apply a saved set of options (built in: flux-lora)."
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


# The parameter names filter_options() adds, as build_query() takes them.
FILTER_PARAMS = (
    "providers",
    "gpus",
    "min_vram",
    "num_gpus",
    "max_price",
    "min_reliability",
    "min_cuda",
    "min_disk",
    "countries",
    "disk",
    "template",
    "verified_only",
    "profile",
)


def filter_args(opts: dict[str, Any]) -> dict[str, Any]:
    """The filter flags out of a command's parsed options, for build_query()."""
    return {name: opts[name] for name in FILTER_PARAMS}


def build_query(app: Any, **flags: Any) -> tuple[OfferQuery, dict[str, Any]]:
    """The OfferQuery for these flags (``QueryFlags``' fields; the merge is
    core/query.offer_query), and the profile that was applied (may be empty); a GPU
    name no provider knows gets a note."""
    from gpushopper.core.query import QueryFlags, offer_query

    query, prof = offer_query(app.settings, QueryFlags(**flags))
    for name in query.gpus:
        hint = unknown_gpu_hint(name)
        if hint:
            from gpushopper.cli.output import info

            info(hint)
    return query, prof


def unknown_gpu_hint(name: str) -> str | None:
    """For a GPU name no provider's model list knows: which known models are close."""
    from gpushopper.model.models import close_gpu_names, gpu_matches
    from gpushopper.providers.vastai import GPU_NAMES

    if name in GPU_NAMES or name.replace("_", " ") in GPU_NAMES:
        return None  # Vast.ai's own spelling, the usual case: no loose matching needed
    if any(gpu_matches(name, known) for known in GPU_NAMES):
        return None
    from gpushopper.providers.tensordock import GPU_MODELS, display_name

    if any(gpu_matches(name, known) for known in GPU_MODELS):
        return None
    names = [*GPU_NAMES, *(display_name(m) for m in GPU_MODELS)]
    close = close_gpu_names(name, names)
    guess = f"did you mean {' or '.join(close)}?" if close else "check the spelling"
    return f"Note: no provider lists a GPU called {name!r} ({guess}); asking for it as written"


def workload_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--workload NAME``: with ``--sort perf-per-dollar``, rank by benchmark results."""
    return click.option(
        "--workload",
        metavar="NAME",
        help="Rank by this benchmark workload's measured cost per unit of work "
        "(implies --sort perf-per-dollar; see 'gpu-shopper benchmark').",
    )(func)


def bench_estimator(app: Any) -> Callable[[list[Any], str], int]:
    """The offer estimator of ``--workload``: the benchmark file is read only when a
    search asks for a workload (plain ``inventory`` never opens it)."""

    def estimate(offers: list[Any], workload: str) -> int:
        from gpushopper.core.bench.queries import estimate_offers
        from gpushopper.state.benchstore import BenchStore

        table = BenchStore(app.paths.bench_file).table()
        return estimate_offers(offers, table, workload, app.clock())

    return estimate


def offer_cache(app: Any) -> Any:
    from gpushopper.core.inventory import OfferCache

    return OfferCache(app.paths.cache_dir, app.settings.get("defaults.cache_ttl"), app.clock)


def resolve_template(provider: Any, ident: str) -> Any:
    return provider.get_template(ident)
