"""From a command's filter flags to an ``OfferQuery``: the one place ``inventory``,
``provision``, ``run``, ``benchmark run`` and ``templates catalog`` merge flag > profile >
setting > default for the offer filters (a profile is read from the settings: the config
file or a built-in one). Its neighbour core/request.py merges the rental's own fields.

The commands parse their flags into ``QueryFlags``, call ``offer_query`` and render; the
rules are tested in tests/test_request.py.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, NamedTuple

from gpushopper.model.errors import UsageError
from gpushopper.model.jsontypes import JSONMapping, JSONObject, JSONValue
from gpushopper.model.models import SORTS, OfferQuery
from gpushopper.providers.registry import PROVIDERS

if TYPE_CHECKING:
    from gpushopper.state.config import Settings


class QueryFlags(NamedTuple):
    """The offer filters a command's flags asked for; empty (None, ()) where not given.
    (A NamedTuple: every command that searches builds one, and a dataclass this wide costs
    the cached ``inventory --json`` most of a millisecond at import.)"""

    providers: tuple[str, ...] = ()
    gpus: tuple[str, ...] = ()
    min_vram: float | None = None
    num_gpus: int | None = None
    max_price: float | None = None
    min_reliability: float | None = None
    min_cuda: float | None = None
    min_disk: float | None = None
    countries: tuple[str, ...] = ()
    disk: int | None = None
    template: str | None = None
    verified_only: bool | None = None
    profile: str | None = None  # a profile's name: read from the settings (config file)
    sort: str | None = None
    limit: int | None = None
    workload: str | None = None


def _pick(flag: JSONValue, profile: JSONMapping, key: str, default: JSONValue) -> JSONValue:
    """Flag > profile > default (a setting's value, where one applies); a profile's values
    are checked against the flags' ranges when the settings read it."""
    if flag not in (None, (), []):
        return flag
    if key in profile:
        return profile[key]
    return default


def offer_query(settings: Settings, flags: QueryFlags) -> tuple[OfferQuery, JSONObject]:
    """The OfferQuery for these flags (flag > profile > setting > default, filter by
    filter), and the profile that was applied (empty without ``--profile``). Raises
    UsageError for a bad country code, provider or sort, or ``--workload`` with another
    sort; an unknown profile is the settings' ConfigError."""
    sort = flags.sort
    if flags.workload is not None:
        from gpushopper.core.bench.records import split_workload

        split_workload(flags.workload)
        if sort not in (None, "perf-per-dollar"):
            raise UsageError(
                f"--workload ranks by measured price-performance: use it with --sort "
                f"perf-per-dollar, not --sort {sort}"
            )
        sort = "perf-per-dollar"
    prof = settings.profile(flags.profile) if flags.profile else {}
    for code in flags.countries:
        if not re.fullmatch(r"[A-Za-z]{2}", code):
            raise UsageError(f"--country takes a two-letter code such as US or DE, not {code!r}")
    chosen = list(_pick(flags.providers, prof, "providers", settings.get("defaults.providers")))
    unknown = [p for p in chosen if p not in PROVIDERS]
    if unknown:
        raise UsageError(f"unknown provider {unknown[0]!r} (choose from {', '.join(PROVIDERS)})")
    query = OfferQuery(
        providers=chosen,
        gpus=list(_pick(flags.gpus, prof, "gpu", [])),
        min_vram_gb=_pick(flags.min_vram, prof, "min_vram_gb", None),
        num_gpus=_pick(flags.num_gpus, prof, "num_gpus", None),
        max_price=_pick(flags.max_price, prof, "max_price", settings.get("defaults.max_price")),
        min_reliability=_pick(
            flags.min_reliability,
            prof,
            "min_reliability",
            settings.get("defaults.min_reliability"),
        ),
        min_cuda=_pick(flags.min_cuda, prof, "min_cuda", None),
        min_disk_gb=_pick(flags.min_disk, prof, "min_disk_gb", None),
        countries=[c.upper() for c in _pick(flags.countries, prof, "country", [])],
        disk_gb=float(_pick(flags.disk, prof, "disk_gb", settings.get("defaults.disk_gb"))),
        verified=_pick(flags.verified_only, prof, "verified", None),
        sort=_pick(sort, prof, "sort", "price"),
        limit=_pick(flags.limit, prof, "limit", None),
        template=_pick(flags.template, prof, "template", None),
        workload=flags.workload,
    )
    if query.sort not in SORTS:
        raise UsageError(f"unknown sort {query.sort!r} (choose from {', '.join(SORTS)})")
    return query, prof
