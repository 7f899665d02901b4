"""Shop every provider at once: isolate failures, filter, rank, cache, mark health."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

from gpushopper.model.errors import (
    GpuShopperError,
    MissingCredentials,
    NoProviderConfigured,
    NoSuchItem,
    NotFound,
    RateLimited,
    Unavailable,
    UsageError,
)
from gpushopper.model.jsontypes import JSONObject, JSONValue
from gpushopper.model.models import (
    RANK_KEYS,
    SORTS,
    Offer,
    OfferQuery,
    Template,
    gpu_form_factor,
    offer_matches,
    rank_offers,
)
from gpushopper.model.units import iso, parse_iso
from gpushopper.providers.registry import no_template, offer_id_ok
from gpushopper.state.fs import read_bytes_nofollow

RATE_LIMITED_TTL_S = 300.0  # after a 429, reuse answers for at least this long
STALE_LIMIT_S = 3600.0  # a provider that is rate limiting may be answered from cache this old
MAX_ASKED = 1_000_000  # never ask one provider for more offers than this in one search


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


# -- filtering and ranking ---------------------------------------------------------------------
def usable(offer: Offer, query: OfferQuery) -> bool:
    """The query's filters applied on our side too (servers may ignore some), and an id
    ``provision`` takes (it reaches the create call's URL)."""
    return offer_matches(offer, query) and offer_id_ok(offer.id, offer.provider)


def rank(offers: list[Offer], sort: str) -> list[Offer]:
    """Stable ranking; unknown values sort last."""
    if sort not in RANK_KEYS:
        raise UsageError(f"unknown sort {sort!r} (choose from {', '.join(SORTS)})")
    return rank_offers(offers, sort)


# -- health ------------------------------------------------------------------------------------
def machine_key(offer: Offer) -> str | None:
    return f"machine:{offer.provider}:{offer.machine_id}" if offer.machine_id else None


def health_of(offer: Offer, health: JSONObject, now: datetime) -> str:
    """``ok``, ``degraded`` (failed before) or ``suppressed`` (failed repeatedly, recently)."""
    worst = "ok"
    for key in (offer.id, machine_key(offer)):
        entry = health.get(key) if key else None
        if not entry:
            continue
        until = _when(entry.get("suppressed_until"))
        if until and until > now:
            return "suppressed"
        if entry.get("failures"):
            worst = "degraded"
    return worst


def _when(text: JSONValue) -> datetime | None:
    """An ISO time from our own files; None when missing or mangled."""
    try:
        return parse_iso(text) if isinstance(text, str) else None
    except ValueError:
        return None


# -- cache -------------------------------------------------------------------------------------
MAX_CACHED_QUERIES = 32  # per provider; the oldest answers go first
TAKEN_TTL_S = STALE_LIMIT_S


class CachedAnswer:
    """A provider's answer: its offers, and whether they are every match (not only the
    best ``len(offers)``)."""

    __slots__ = ("offers", "complete")

    def __init__(self, offers: list[Offer], complete: bool) -> None:
        self.offers = offers
        self.complete = complete


class OfferCache:
    """One small file per provider and query (``offers/<provider>-<hash>.json``), so a
    lookup reads only its own answer and a refresh writes only its own query. At most
    MAX_CACHED_QUERIES per provider, none older than STALE_LIMIT_S. Offers this install
    has just rented are marked ``taken`` in answers fetched before the rental."""

    def __init__(self, cache_dir: Path, ttl_s: float, now: Callable[[], datetime]) -> None:
        self.cache_dir = cache_dir
        self.dir = cache_dir / "offers"
        self.ttl_s = ttl_s
        self.now = now

    def _path(self, provider: str, key: str) -> Path:
        # FNV-1a, 64 bits: no import (hashlib loads OpenSSL, 2 ms); the file holds its key,
        # so a collision is only a cache miss.
        digest = 0xCBF29CE484222325
        for byte in key.encode():
            digest = ((digest ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
        return self.dir / f"{provider}-{digest:016x}.json"

    @staticmethod
    def _read(path: Path) -> JSONValue:
        """A cache file's JSON; None when missing, mangled or a link (never followed)."""
        try:
            return json.loads(read_bytes_nofollow(path))
        except (OSError, ValueError):
            return None

    def _stamp(self, name: str) -> datetime | None:
        data = self._read(self.dir / name)
        return _when(data.get("at")) if isinstance(data, dict) else None

    def _effective_ttl(self, provider: str) -> float:
        limited = self._stamp(f"{provider}.rate-limited")
        if limited and self.now() - limited < timedelta(seconds=RATE_LIMITED_TTL_S * 2):
            return max(self.ttl_s, RATE_LIMITED_TTL_S)
        return self.ttl_s

    def lookup(
        self, provider: str, key: str, max_age_s: float | None = None
    ) -> CachedAnswer | None:
        data = self._read(self._path(provider, key))
        if not isinstance(data, dict) or data.get("key") != key:
            return None
        fetched = _when(data.get("fetched_at"))
        if fetched is None:
            return None
        limit = self._effective_ttl(provider) if max_age_s is None else max_age_s
        if (self.now() - fetched).total_seconds() > limit:
            return None
        try:
            offers = [Offer(**o) for o in data.get("offers", [])]
        except TypeError:
            return None
        taken = self._taken(provider)
        for offer in offers:
            when = taken.get(offer.id)
            if when is not None and when >= fetched:
                offer.health = "taken"
        return CachedAnswer(offers, bool(data.get("complete")))

    def get(self, provider: str, key: str, max_age_s: float | None = None) -> list[Offer] | None:
        hit = self.lookup(provider, key, max_age_s)
        return None if hit is None else hit.offers

    def put(self, provider: str, key: str, offers: list[Offer], complete: bool = True) -> None:
        from gpushopper.state.atomic import atomic_write_text

        # A shallow copy per offer: ``asdict`` deep-copies and costs 25x as much.
        data = {
            "key": key,
            "fetched_at": iso(self.now()),
            "complete": complete,
            "offers": [dict(o.__dict__) for o in offers],
        }
        path = self._path(provider, key)
        atomic_write_text(path, json.dumps(data, separators=(",", ":")), mode=0o600)
        self._prune(provider, keep=path)

    def _prune(self, provider: str, keep: Path) -> None:
        """Drop answers past STALE_LIMIT_S and all but the newest MAX_CACHED_QUERIES."""
        import os
        import time

        (self.cache_dir / f"offers-{provider}.json").unlink(missing_ok=True)  # the old layout
        entries = []
        with os.scandir(self.dir) as it:
            for entry in it:
                if entry.name.startswith(f"{provider}-") and entry.name.endswith(".json"):
                    try:
                        entries.append((entry.stat().st_mtime, entry.path))
                    except OSError:
                        continue
        entries.sort(reverse=True)
        oldest = time.time() - STALE_LIMIT_S
        for i, (mtime, path) in enumerate(entries):
            if path != str(keep) and (i >= MAX_CACHED_QUERIES or mtime < oldest):
                Path(path).unlink(missing_ok=True)

    def known_ids(self, provider: str) -> list[str]:
        """Ids of the offers ``provider`` listed in every cached answer (what short ids in
        tables are unique among, and what a typed prefix is matched against)."""
        import os

        ids: list[str] = []
        try:
            with os.scandir(self.dir) as it:
                names = [e.path for e in it if e.name.startswith(f"{provider}-")]
        except OSError:
            return ids
        for path in names:
            data = self._read(Path(path))
            offers = data.get("offers") if isinstance(data, dict) else None
            for offer in offers if isinstance(offers, list) else []:
                if isinstance(offer, dict) and isinstance(offer.get("id"), str):
                    ids.append(offer["id"])
        return ids

    def note_rate_limited(self, provider: str) -> None:
        from gpushopper.state.atomic import atomic_write_text

        path = self.dir / f"{provider}.rate-limited"
        atomic_write_text(path, json.dumps({"at": iso(self.now())}), mode=0o600)

    def _taken(self, provider: str) -> dict[str, datetime]:
        data = self._read(self.dir / "taken.json")
        out: dict[str, datetime] = {}
        if isinstance(data, dict):
            for offer_id, at in data.items():
                when = _when(at) if isinstance(at, str) else None
                if when is not None and offer_id.startswith(f"{provider}:"):
                    out[offer_id] = when
        return out

    def mark_taken(self, offer_id: str) -> None:
        """Remember that this install has just rented ``offer_id``: cached answers fetched
        before now show it as ``taken`` until the provider is asked again."""
        from gpushopper.state.atomic import atomic_write_text

        now = self.now()
        data = self._read(self.dir / "taken.json")
        kept: JSONObject = {
            k: v
            for k, v in (data.items() if isinstance(data, dict) else [])
            if isinstance(v, str)
            and (when := _when(v)) is not None
            and (now - when).total_seconds() < TAKEN_TTL_S
        }
        kept[offer_id] = iso(now)
        atomic_write_text(self.dir / "taken.json", json.dumps(kept), mode=0o600)


# -- the search --------------------------------------------------------------------------------
ProviderFactory = Callable[[str], "Provider"]


class Answer(NamedTuple):  # a NamedTuple: each dataclass costs ~0.5 ms at import
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


def _suppressed(health: JSONObject, now: datetime) -> int:
    """How many offers or machines are suppressed now: a search asks for that many more."""
    count = 0
    for entry in health.values():
        until = _when(entry.get("suppressed_until")) if isinstance(entry, dict) else None
        if until is not None and until > now:
            count += 1
    return count


if TYPE_CHECKING:  # a Protocol class costs import time; only the type checker needs it
    from gpushopper.providers.base import Provider

    class Progress(Protocol):
        """What ``search`` reports to while providers are slow (the CLI draws a status
        line)."""

        def show(self, waiting: list[str]) -> None: ...

        def stop(self) -> None: ...


# (offers, workload) -> how many got an estimate; sets Offer.perf_* (core/bench/queries.py)
Estimator = Callable[[list[Offer], str], int]


def search(
    query: OfferQuery,
    provider_factory: ProviderFactory,
    *,
    cache: OfferCache | None = None,
    refresh: bool = False,
    health: JSONObject | None = None,
    include_unhealthy: bool = False,
    now: Callable[[], datetime],
    template_resolver: Callable[[Provider, str], Template | None] | None = None,
    progress: Progress | None = None,
    progress_after_s: float = 1.0,
    estimate: Estimator | None = None,
) -> InventoryResult:
    """Ask every provider in ``query.providers`` concurrently and merge the answers.

    Every filter a provider applies itself is sent; ``query.limit`` asks each for its
    ``limit`` best (more while our own checks drop some), so the result is the best of
    all matches, not of a page. A provider without credentials is skipped; one that fails
    is reported in ``errors`` while the others' offers are still returned. ``progress``
    hears which providers are still being asked once ``progress_after_s`` has passed.

    With ``query.workload`` every match is asked for (in price order: the providers know
    nothing of our measurements) and ``estimate`` gives each offer its measured
    price-performance before the ranking and the cut.
    """
    asked_for = query
    query = _provider_query(query, estimate)
    result = InventoryResult(offers=[])
    health = health or {}
    stamp = now()
    clients = _clients(query.providers, provider_factory, result)
    shop = _Shopping(
        query,
        clients,
        result,
        cache=cache,
        refresh=refresh,
        health=health,
        stamp=stamp,
        include_unhealthy=include_unhealthy,
        template_resolver=template_resolver,
    )
    merged = shop.merge(shop.answers(progress, progress_after_s))
    if asked_for.workload and estimate is not None:
        _estimate(merged, asked_for.workload, estimate, result)
        query = asked_for
    ranked = rank(merged, query.sort)
    result.offers = ranked[: query.limit] if query.limit else ranked
    return result


def _provider_query(query: OfferQuery, estimate: Estimator | None) -> OfferQuery:
    """The question the providers are asked: ``query`` itself, or with a workload every
    match in price order (the ranking by measured price-performance is ours)."""
    if query.sort not in RANK_KEYS:
        raise UsageError(f"unknown sort {query.sort!r} (choose from {', '.join(SORTS)})")
    if query.workload:
        if estimate is None:
            raise UsageError("--workload ranks by benchmark results, which this command lacks")
        return replace(query, sort="price", limit=None)
    return query


def _clients(
    names: list[str], provider_factory: ProviderFactory, result: InventoryResult
) -> dict[str, Provider]:
    """A client per provider named (each once, in order); one without credentials is
    skipped and said so in ``result``."""
    clients: dict[str, Provider] = {}
    for name in dict.fromkeys(names):
        try:
            clients[name] = provider_factory(name)
        except MissingCredentials as exc:
            result.skipped[name] = str(exc)
            result.no_credentials.append(name)
    return clients


def _estimate(
    merged: list[Offer], workload: str, estimate: Estimator, result: InventoryResult
) -> None:
    """Give each offer its measured price-performance; say so when none has one."""
    if merged and not estimate(merged, workload):
        result.notes.append(
            f"no valid benchmark result of workload {workload!r} matches these "
            "offers; they are in price order"
        )


class _Shopping:
    """One search's asking: each provider's question, the cache, our own checks.

    ``fetch`` runs in a thread per provider; it changes only its own provider's entry in
    ``queries`` and appends to ``result.notes``."""

    def __init__(
        self,
        query: OfferQuery,
        clients: dict[str, Provider],
        result: InventoryResult,
        *,
        cache: OfferCache | None,
        refresh: bool,
        health: JSONObject,
        stamp: datetime,
        include_unhealthy: bool,
        template_resolver: Callable[[Provider, str], Template | None] | None,
    ) -> None:
        self.query = query
        self.clients = clients
        self.result = result
        self.cache = cache
        self.refresh = refresh
        self.health = health
        self.stamp = stamp
        self.include_unhealthy = include_unhealthy
        self.template_resolver = template_resolver
        self.queries = dict.fromkeys(clients, query)  # a template may raise its min_cuda
        # Offers hidden after failed boots are dropped after the provider's cut: ask for more.
        self.want = None if not query.limit else query.limit + _suppressed(health, stamp)

    # -- the steps, in order ----------------------------------------------------------------
    def answers(self, progress: Progress | None, progress_after_s: float) -> dict[str, Answer]:
        """Every provider's answer. Cache hits are read here; only the providers that
        must be asked get a thread each (one alone, with nobody to tell, none)."""
        answers: dict[str, Answer] = {}
        if not self.query.template:
            for name in self.clients:
                hit = self.cached(name, _cache_key(self.query, name), self.query)
                if hit is not None:
                    answers[name] = hit
        pending = [name for name in self.clients if name not in answers]
        if len(pending) == 1 and progress is None:
            answers[pending[0]] = self.fetch(pending[0])
        elif pending:
            answers.update(_fan_out(pending, self.fetch, progress, progress_after_s))
        return answers

    def merge(self, answers: dict[str, Answer]) -> list[Offer]:
        """The offers that pass our checks, in the order asked (whichever answered first);
        each skip and failure recorded in ``result``."""
        merged: list[Offer] = []
        for name in self.clients:
            answer = answers[name]
            if answer.skipped is not None:
                self.result.skipped[name] = answer.skipped
                continue
            if answer.error is not None:
                self.result.failures[name] = answer.error
                continue
            self.result.cached[name] = answer.cached
            merged.extend(o for o in answer.offers or [] if self.keep(o, self.queries[name]))
        return merged

    # -- one provider -----------------------------------------------------------------------
    def fetch(self, name: str) -> Answer:
        """One provider's offers: its template's needs folded in, from cache or over HTTP."""
        template = self.query.template
        refused = self._fold_template(name, template) if template else None
        if refused is not None:
            return refused
        asked = self.queries[name]
        key = _cache_key(asked, name)
        # Without a template the cache was already read before any thread started.
        if template:
            hit = self.cached(name, key, asked)
            if hit is not None:
                return hit
        return self._over_http(name, key, asked)

    def _fold_template(self, name: str, template_name: str) -> Answer | None:
        """Raise this provider's question to its template's CUDA floor; an Answer (error
        or skip) when the template cannot be had there."""
        if self.template_resolver is None:
            return None
        try:
            template = self.template_resolver(self.clients[name], template_name)
        except GpuShopperError as exc:
            return Answer(name, error=exc)
        if template is None:
            return Answer(name, skipped=no_template(name, template_name))
        if template.min_cuda is not None and (self.query.min_cuda or 0) < template.min_cuda:
            self.queries[name] = replace(self.query, min_cuda=template.min_cuda)
        return None

    def _over_http(self, name: str, key: str, asked: OfferQuery) -> Answer:
        """Ask the provider and cache its answer; rate limited, an earlier answer will do."""
        try:
            answer = self.ask(name, asked)
        except RateLimited as exc:
            if self.cache is not None:
                self.cache.note_rate_limited(name)
                stale = self.cache.get(name, key, max_age_s=STALE_LIMIT_S)
                if stale is not None:
                    self.result.notes.append(
                        f"{name}: rate limited; showing answers cached earlier"
                    )
                    return Answer(name, stale, cached=True)
            return Answer(name, error=exc)
        except GpuShopperError as exc:
            return Answer(name, error=exc)
        if self.cache is not None:
            try:
                self.cache.put(name, key, answer.offers, answer.complete)
            except OSError as exc:
                self.result.notes.append(f"could not write the offer cache: {exc.strerror}")
        return Answer(name, answer.offers)

    def ask(self, name: str, asked: OfferQuery) -> CachedAnswer:
        """The provider's best ``want`` offers, asked again for more while ours drop some."""
        limit = self.want
        while True:
            offers = self.clients[name].search_offers(asked, limit=limit)
            answer = CachedAnswer(offers, limit is None or len(offers) < limit)
            if limit is None or self.enough(answer, asked) or limit >= MAX_ASKED:
                return answer
            limit *= 4

    def cached(self, name: str, key: str, asked: OfferQuery) -> Answer | None:
        """The cache's answer when it is fresh and holds enough (never with ``refresh``)."""
        cache = self.cache
        hit = cache.lookup(name, key) if cache is not None and not self.refresh else None
        if hit is not None and self.enough(hit, asked):
            return Answer(name, hit.offers, cached=True)
        return None

    # -- our checks -------------------------------------------------------------------------
    def keep(self, offer: Offer, asked: OfferQuery) -> bool:
        """Our own checks (:func:`usable`) and the health check."""
        if not usable(offer, asked):
            return False
        if offer.health != "taken":
            offer.health = health_of(offer, self.health, self.stamp)
        if offer.health == "suppressed" and not self.include_unhealthy:
            self.result.hidden_unhealthy += 1
            return False
        return True

    def enough(self, answer: CachedAnswer, asked: OfferQuery) -> bool:
        """Does this answer hold the best ``query.limit`` of every match?"""
        if answer.complete or not self.query.limit:
            return answer.complete
        kept = sum(1 for o in answer.offers if usable(o, asked) and not self._hidden(o))
        return kept >= self.query.limit

    def _hidden(self, offer: Offer) -> bool:
        return (
            not self.include_unhealthy and health_of(offer, self.health, self.stamp) == "suppressed"
        )


def _fan_out(
    names: list[str],
    fetch: Callable[[str], Answer],
    progress: Progress | None,
    after_s: float,
) -> dict[str, Answer]:
    """Ask every provider at once; tell ``progress`` who is still being asked after
    ``after_s`` and each time one answers."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        futures = {pool.submit(fetch, name): name for name in names}
        _, waiting = wait(futures, timeout=after_s if progress is not None else None)
        if waiting and progress is not None:
            try:
                while waiting:
                    progress.show([futures[f] for f in futures if f in waiting])
                    _, waiting = wait(waiting, return_when=FIRST_COMPLETED)
            finally:
                progress.stop()
        return {name: future.result() for future, name in futures.items()}


def get_offer_or_fail(provider: Provider, offer_id: str, native: str, disk_gb: float) -> Offer:
    """The offer, fetched again. One that does not exist or is gone (rented by someone
    else, withdrawn; the provider's 404 included) is bad input, exit 2, like an unknown
    session: the id given is no longer one that can be rented."""
    try:
        offer = provider.get_offer(native, disk_gb)
    except NotFound:
        offer = None
    if offer is None:
        raise NoSuchItem(
            f"offer {offer_id} is not available any more (see 'gpu-shopper inventory --refresh')"
        )
    return offer
