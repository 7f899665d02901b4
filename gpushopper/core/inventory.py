"""Shop every provider at once: isolate failures, filter, rank, cache, mark health."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from gpushopper.core.errors import (
    GpuShopperError,
    MissingCredentials,
    NoProviderConfigured,
    RateLimited,
    Unavailable,
    UsageError,
)
from gpushopper.core.models import (
    Offer,
    OfferQuery,
    Template,
    gpu_form_factor,
    offer_matches,
)
from gpushopper.core.units import iso, parse_iso

RATE_LIMITED_TTL_S = 300.0  # after a 429, reuse answers for at least this long
STALE_LIMIT_S = 3600.0  # a provider that is rate limiting may be answered from cache this old
SORTS = ("price", "reliability", "vram", "perf-per-dollar")


@dataclass
class InventoryResult:
    offers: list[Offer]
    failures: dict[str, GpuShopperError] = field(default_factory=dict)  # provider -> its error
    skipped: dict[str, str] = field(default_factory=dict)  # provider -> why (no credentials...)
    no_credentials: list[str] = field(default_factory=list)  # the skipped ones lacking keys
    cached: dict[str, bool] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    hidden_unhealthy: int = 0

    @property
    def errors(self) -> dict[str, str]:
        """provider -> message, for reports."""
        return {name: str(exc) for name, exc in self.failures.items()}

    def raise_if_nobody_answered(self, asked: list[str]) -> None:
        """When every provider asked was skipped or failed, raise the most useful error:
        no credentials at all, nobody able to answer (e.g. no such template), the one
        provider's own error, or all of them."""
        asked = list(dict.fromkeys(asked))
        if len(self.skipped) + len(self.failures) < len(asked):
            return
        if not self.failures:
            if len(self.no_credentials) == len(asked):
                raise NoProviderConfigured()
            raise UsageError("no provider can answer: " + "; ".join(self.skipped.values()))
        if len(self.failures) == 1:
            raise next(iter(self.failures.values()))
        raise Unavailable("all providers", "; ".join(self.errors.values()))


# -- offer ids -------------------------------------------------------------------------------
def split_offer_id(offer_id: str) -> tuple[str, str]:
    """``vastai:123`` -> ("vastai", "123"); ``tensordock:<node>:<gpu>`` -> (..., "<node>:<gpu>")."""
    if not offer_id.strip():
        raise UsageError(
            "the offer id is empty (an unset shell variable?); give one such as vastai:1234, "
            "or leave it out to rent the best offer"
        )
    provider, sep, native = offer_id.partition(":")
    if not sep or not native or provider not in ("vastai", "tensordock"):
        raise UsageError(
            f"not an offer id: {offer_id!r} (expected vastai:<ask id> or "
            "tensordock:<hostnode id>:<gpu model>)"
        )
    if provider == "vastai" and not native.isdigit():
        raise UsageError(f"not a Vast.ai offer id: {offer_id!r} (expected vastai:<number>)")
    if provider == "tensordock" and not re.fullmatch(r"[A-Za-z0-9_-]+:[A-Za-z0-9_.-]+", native):
        raise UsageError(
            f"not a TensorDock offer id: {offer_id!r} (expected tensordock:<hostnode id>:<gpu model>)"
        )
    return provider, native


# -- filtering and ranking ---------------------------------------------------------------------
def matches(offer: Offer, query: OfferQuery) -> bool:
    """The query's filters applied on our side too (servers may ignore some)."""
    return offer_matches(offer, query)


def rank(offers: list[Offer], sort: str) -> list[Offer]:
    """Stable ranking; unknown values sort last."""
    big = float("inf")
    if sort == "price":
        key: Callable[[Offer], Any] = lambda o: (  # noqa: E731
            o.price_per_hour if o.price_per_hour is not None else big,
            -(o.reliability or 0),
            o.id,
        )
    elif sort == "reliability":
        key = lambda o: (
            -(o.reliability if o.reliability is not None else -1),
            o.price_per_hour or big,
            o.id,
        )  # noqa: E731
    elif sort == "vram":
        key = lambda o: (-((o.vram_gb or 0) * (o.num_gpus or 1)), o.price_per_hour or big, o.id)  # noqa: E731
    elif sort == "perf-per-dollar":
        key = lambda o: (  # noqa: E731
            -(o.perf_per_dollar if o.perf_per_dollar is not None else -1),
            o.price_per_hour or big,
            o.id,
        )
    else:
        raise UsageError(f"unknown sort {sort!r} (choose from {', '.join(SORTS)})")
    return sorted(offers, key=key)


# -- health ------------------------------------------------------------------------------------
def machine_key(offer: Offer) -> str | None:
    return f"machine:{offer.provider}:{offer.machine_id}" if offer.machine_id else None


def health_of(offer: Offer, health: dict[str, Any], now: datetime) -> str:
    """``ok``, ``degraded`` (failed before) or ``suppressed`` (failed repeatedly, recently)."""
    worst = "ok"
    for key in (offer.id, machine_key(offer)):
        entry = health.get(key) if key else None
        if not entry:
            continue
        until = parse_iso(entry.get("suppressed_until"))
        if until and until > now:
            return "suppressed"
        if entry.get("failures"):
            worst = "degraded"
    return worst


# -- cache -------------------------------------------------------------------------------------
class OfferCache:
    """Answers per provider and query, with ``fetched_at``; a corrupt file is replaced."""

    def __init__(self, cache_dir: Path, ttl_s: float, now: Callable[[], datetime]) -> None:
        self.cache_dir = cache_dir
        self.ttl_s = ttl_s
        self.now = now

    def _path(self, provider: str) -> Path:
        return self.cache_dir / f"offers-{provider}.json"

    def _load(self, provider: str) -> dict[str, Any]:
        try:
            data = json.loads(self._path(provider).read_text(encoding="utf-8"))
            if isinstance(data, dict) and isinstance(data.get("entries"), dict):
                return data
        except (OSError, ValueError):
            pass
        return {"entries": {}}

    def _effective_ttl(self, data: dict[str, Any]) -> float:
        limited = parse_iso(data.get("rate_limited_at"))
        if limited and self.now() - limited < timedelta(seconds=RATE_LIMITED_TTL_S * 2):
            return max(self.ttl_s, RATE_LIMITED_TTL_S)
        return self.ttl_s

    def get(self, provider: str, key: str, max_age_s: float | None = None) -> list[Offer] | None:
        data = self._load(provider)
        entry = data["entries"].get(key)
        if not isinstance(entry, dict):
            return None
        fetched = parse_iso(entry.get("fetched_at"))
        if fetched is None:
            return None
        limit = self._effective_ttl(data) if max_age_s is None else max_age_s
        if (self.now() - fetched).total_seconds() > limit:
            return None
        try:
            return [Offer(**o) for o in entry.get("offers", [])]
        except TypeError:
            return None

    def put(self, provider: str, key: str, offers: list[Offer]) -> None:
        from gpushopper.state.atomic import atomic_write_text

        data = self._load(provider)
        now = self.now()
        entries = {
            k: v
            for k, v in data["entries"].items()
            if isinstance(v, dict)
            and (fetched := parse_iso(v.get("fetched_at"))) is not None
            and (now - fetched).total_seconds() < STALE_LIMIT_S
        }
        entries[key] = {"fetched_at": iso(now), "offers": [asdict(o) for o in offers]}
        data["entries"] = entries
        atomic_write_text(self._path(provider), json.dumps(data), mode=0o600)

    def note_rate_limited(self, provider: str) -> None:
        from gpushopper.state.atomic import atomic_write_text

        data = self._load(provider)
        data["rate_limited_at"] = iso(self.now())
        atomic_write_text(self._path(provider), json.dumps(data), mode=0o600)


# -- the search --------------------------------------------------------------------------------
ProviderFactory = Callable[[str], Any]


@dataclass
class Answer:
    """What one provider gave: offers, or an error, or a reason it was skipped."""

    provider: str
    offers: list[Offer] | None = None
    cached: bool = False
    error: GpuShopperError | None = None
    skipped: str | None = None


def _cache_key(query: OfferQuery, provider: str) -> str:
    # Canonical GPU names drop the form factor, which still filters (H100 SXM vs H100).
    forms = sorted(gpu_form_factor(g) or "" for g in query.gpus)
    return query.cache_key(provider) + (f"|forms={forms}" if any(forms) else "")


def _server_limit(query: OfferQuery) -> int:
    # Names are matched loosely on our side, so ask for more when filtering by GPU.
    return 1000 if query.gpus else 300


def search(
    query: OfferQuery,
    provider_factory: ProviderFactory,
    *,
    cache: OfferCache | None = None,
    refresh: bool = False,
    health: dict[str, Any] | None = None,
    include_unhealthy: bool = False,
    now: Callable[[], datetime],
    template_resolver: Callable[[Any, str], Template | None] | None = None,
) -> InventoryResult:
    """Ask every provider in ``query.providers`` concurrently and merge the answers.

    A provider without credentials is skipped; one that fails is reported in ``errors``
    while the others' offers are still returned. Raises only when every provider failed.
    """
    result = InventoryResult(offers=[])
    clients: dict[str, Any] = {}
    for name in dict.fromkeys(query.providers):
        try:
            clients[name] = provider_factory(name)
        except MissingCredentials as exc:
            result.skipped[name] = str(exc)
            result.no_credentials.append(name)
    queries = dict.fromkeys(clients, query)

    def fetch(name: str) -> Answer:
        """One provider's offers: its template's needs folded in, from cache or over HTTP."""
        if query.template and template_resolver is not None:
            try:
                template = template_resolver(clients[name], query.template)
            except GpuShopperError as exc:
                return Answer(name, error=exc)
            if template is None:
                return Answer(name, skipped=f"{name}: no template {query.template!r}")
            if template.min_cuda is not None and (query.min_cuda or 0) < template.min_cuda:
                queries[name] = replace(query, min_cuda=template.min_cuda)
        asked = queries[name]
        key = _cache_key(asked, name)
        # Without a template the cache was already read before any thread started.
        if cache is not None and not refresh and query.template:
            hit = cache.get(name, key)
            if hit is not None:
                return Answer(name, hit, cached=True)
        try:
            offers = clients[name].search_offers(asked, limit=_server_limit(asked))
        except RateLimited as exc:
            if cache is not None:
                cache.note_rate_limited(name)
                stale = cache.get(name, key, max_age_s=STALE_LIMIT_S)
                if stale is not None:
                    result.notes.append(f"{name}: rate limited; showing answers cached earlier")
                    return Answer(name, stale, cached=True)
            return Answer(name, error=exc)
        except GpuShopperError as exc:
            return Answer(name, error=exc)
        if cache is not None:
            try:
                cache.put(name, key, offers)
            except OSError as exc:
                result.notes.append(f"could not write the offer cache: {exc.strerror}")
        return Answer(name, offers)

    # Cache hits are read here; only the providers that must be asked get a thread each.
    answers: dict[str, Answer] = {}
    if cache is not None and not refresh and not query.template:
        for name in clients:
            hit = cache.get(name, _cache_key(query, name))
            if hit is not None:
                answers[name] = Answer(name, hit, cached=True)
    pending = [name for name in clients if name not in answers]
    if len(pending) == 1:
        answers[pending[0]] = fetch(pending[0])
    elif pending:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=len(pending)) as pool:
            answers.update(zip(pending, pool.map(fetch, pending), strict=True))

    stamp = now()
    merged: list[Offer] = []
    for name in clients:  # in the order asked, whichever answered first
        answer = answers[name]
        if answer.skipped is not None:
            result.skipped[name] = answer.skipped
            continue
        if answer.error is not None:
            result.failures[name] = answer.error
            continue
        result.cached[name] = answer.cached
        for offer in answer.offers or []:
            if not matches(offer, queries[name]):
                continue
            offer.health = health_of(offer, health or {}, stamp)
            if offer.health == "suppressed" and not include_unhealthy:
                result.hidden_unhealthy += 1
                continue
            merged.append(offer)
    ranked = rank(merged, query.sort)
    result.offers = ranked[: query.limit] if query.limit else ranked
    return result
