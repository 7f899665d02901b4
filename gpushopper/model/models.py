"""The tool's vocabulary, in normalised units: GB, USD per hour, 0-1 reliability, UTC."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import TypedDict

from gpushopper.model.gpus import (  # re-exported: older imports name models
    canonical_gpu,
    gpu_form_factor,  # noqa: F401
    gpu_matches,
)
from gpushopper.model.jsontypes import JSONObject, JSONValue
from gpushopper.model.lazyre import LazyPattern

OFFER_KEYS = (
    "id",
    "provider",
    "gpu_name",
    "num_gpus",
    "vram_gb",
    "price_per_hour",
    "reliability",
    "cuda_version",
    "disk_gb",
    "cpu_cores",
    "ram_gb",
    "country",
    "location",
    "inet_down_mbps",
    "verified",
    "health",
)


class OfferExtra(TypedDict, total=False):
    """What a provider needs to rent this exact offer (not part of the JSON contract).

    Copied from the search answer as it came (the create call's answer is validated);
    read back from the offer cache as JSON."""

    # Vast.ai: the ask to accept and the host that offers it.
    ask_id: JSONValue
    host_id: JSONValue
    # TensorDock: the host node, its location, the GPU model's v0 name and the resource
    # plan (vCPUs, RAM, storage) the price was computed for.
    hostnode_id: JSONValue
    location_id: JSONValue
    tier: JSONValue
    v0name: str
    vcpu_count: int
    ram_gb: int
    storage_gb: int


class InstanceExtra(TypedDict, total=False):
    """Provider facts about an instance beyond the common fields, as its answer said."""

    # Vast.ai: why the instance is in its state, what it is asked to become, and every
    # SSH endpoint (direct first, then the proxy).
    status_msg: JSONValue
    intended_status: JSONValue
    ssh_endpoints: list[tuple[str, int]]
    # TensorDock: the host node it runs on.
    hostnode_id: JSONValue


@dataclass
class Offer:
    """One rentable configuration. Unknown values are None, never guessed."""

    id: str
    provider: str
    gpu_name: str | None
    num_gpus: int | None
    vram_gb: float | None = None
    price_per_hour: float | None = None
    reliability: float | None = None
    cuda_version: float | None = None
    disk_gb: float | None = None
    cpu_cores: float | None = None
    ram_gb: float | None = None
    country: str | None = None
    location: str | None = None
    inet_down_mbps: float | None = None
    verified: bool | None = None
    health: str | None = "ok"
    machine_id: str | None = None
    driver_version: str | None = None
    dlperf: float | None = None
    total_flops: float | None = None
    perf_per_dollar: float | None = None
    max_disk_gb: float | None = None
    # With ``--sort perf-per-dollar --workload NAME``: the measured figure this offer is
    # expected to reach, where it comes from (machine, gpu_provider, gpu_model) and its
    # cost per unit of work; ``perf_per_dollar`` then is work per dollar. Else None.
    perf_estimate: float | None = None
    perf_source: str | None = None
    cost_per_unit: float | None = None
    # provider-specific facts needed to rent this exact offer (not part of the JSON contract)
    extra: OfferExtra = field(default_factory=OfferExtra, repr=False)

    def to_json(self) -> JSONObject:
        # Every field but ``extra`` is a plain value: a shallow copy (``asdict`` deep-copies
        # and costs ~30x as much over a few hundred offers).
        data = dict(self.__dict__)
        data.pop("extra")
        return data


@dataclass
class OfferQuery:
    """What the user asked the market for."""

    providers: list[str] = field(default_factory=lambda: ["vastai", "tensordock"])
    gpus: list[str] = field(default_factory=list)
    min_vram_gb: float | None = None
    num_gpus: int | None = None
    max_price: float | None = None
    min_reliability: float | None = None
    min_cuda: float | None = None
    min_disk_gb: float | None = None
    countries: list[str] = field(default_factory=list)
    disk_gb: float = 32
    verified: bool | None = None
    sort: str = "price"
    limit: int | None = None
    template: str | None = None
    workload: str | None = None  # rank by measured cost per unit of this benchmark workload

    def cache_key(self, provider: str) -> str:
        parts = {
            "p": provider,
            "g": sorted(canonical_gpu(g) for g in self.gpus),
            "v": self.min_vram_gb,
            "n": self.num_gpus,
            "m": self.max_price,
            "r": self.min_reliability,
            "c": self.min_cuda,
            "d": self.min_disk_gb,
            "cc": sorted(c.upper() for c in self.countries),
            "disk": self.disk_gb,
            "ver": self.verified,
            "sort": self.sort,  # the server orders (and limits) by it
        }
        return repr(sorted(parts.items()))


@dataclass
class Template:
    """A launch recipe: a Vast.ai template or a TensorDock OS image."""

    id: str
    provider: str
    name: str
    image: str | None = None
    hash_id: str | None = None
    description: str | None = None
    use_ssh: bool | None = None
    runtype: str | None = None
    min_cuda: float | None = None
    recommended_disk_gb: float | None = None
    requirements: JSONObject = field(default_factory=dict)
    env: str | None = None
    onstart: str | None = None

    def to_json(self) -> JSONObject:
        return asdict(self)


@dataclass
class Instance:
    """A machine at a provider, as the provider reports it now."""

    provider: str
    instance_id: str
    label: str | None
    status: str  # normalised: creating, loading, running, stopped, exited, failed, unknown
    raw_status: str | None = None
    ssh_host: str | None = None
    ssh_port: int | None = None
    price_per_hour: float | None = None
    gpu_name: str | None = None
    num_gpus: int | None = None
    started_at: float | None = None  # epoch seconds, when the provider says
    extra: InstanceExtra = field(default_factory=InstanceExtra, repr=False)
    image: str | None = None  # the image it booted, as the provider names it
    disk_gb: float | None = None  # the disk it got (and bills), as the provider says
    # Ports opened to the outside: {"internal": 8675, "external": 40321, "protocol": "tcp"}
    ports: list[JSONObject] = field(default_factory=list)

    def __post_init__(self) -> None:
        # What the provider sent, typed once here: a label of True or a list of hosts is
        # "none", never something the ownership check or ssh trips over later.
        if not isinstance(self.label, str):
            self.label = None
        if not isinstance(self.ssh_host, str):
            self.ssh_host = None
        if isinstance(self.ssh_port, bool) or not isinstance(self.ssh_port, int):
            self.ssh_port = None
        for name in ("raw_status", "gpu_name"):
            if not isinstance(getattr(self, name), (str, type(None))):
                setattr(self, name, str(getattr(self, name)))
        # Recorded in the session and shown: only a plain image name, a sane size, ports.
        if not (isinstance(self.image, str) and _IMAGE_RE.fullmatch(self.image)):
            self.image = None
        disk = self.disk_gb
        if isinstance(disk, bool) or not isinstance(disk, (int, float)) or not 0 < disk < 1e6:
            self.disk_gb = None
        else:
            self.disk_gb = float(disk)
        self.ports = [
            p for p in (self.ports if isinstance(self.ports, list) else []) if _port_ok(p)
        ]


_IMAGE_RE = LazyPattern(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,199}")


def _port_ok(port: JSONValue) -> bool:
    if not isinstance(port, dict) or port.get("protocol") not in ("tcp", "udp"):
        return False
    return all(type(port.get(k)) is int and 0 < port[k] < 65536 for k in ("internal", "external"))


@dataclass
class LaunchSpec:
    """Everything needed to create one instance for one session."""

    offer: Offer
    label: str
    public_key: str
    disk_gb: float
    image: str | None = None
    template: Template | None = None
    onstart: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    ssh_user: str = "root"


def offer_matches(offer: Offer, query: OfferQuery) -> bool:
    """The query's filters applied on our side too (servers may ignore some)."""
    # TensorDock's model slug says more than its display name (h100-sxm5-80gb vs H100 SXM5).
    name = str(offer.extra.get("v0name") or offer.gpu_name or "")
    if query.gpus and not any(gpu_matches(w, name) for w in query.gpus):
        return False
    if query.min_vram_gb is not None and (
        offer.vram_gb is None or offer.vram_gb < query.min_vram_gb - 0.05
    ):
        return False
    if (
        query.num_gpus is not None
        and offer.num_gpus is not None
        and offer.num_gpus != query.num_gpus
    ):
        return False
    if query.max_price is not None and (
        offer.price_per_hour is None or offer.price_per_hour > query.max_price
    ):
        return False
    if query.min_reliability is not None and (
        offer.reliability is None or offer.reliability < query.min_reliability
    ):
        return False
    # Unknown CUDA (TensorDock before boot) passes here; provisioning checks it over SSH.
    if (
        query.min_cuda is not None
        and offer.cuda_version is not None
        and offer.cuda_version < query.min_cuda - 1e-9
    ):
        return False
    disk_floor = query.min_disk_gb
    if disk_floor is not None and (offer.disk_gb is None or offer.disk_gb < disk_floor):
        return False
    if query.countries and (offer.country or "").upper() not in {
        c.upper() for c in query.countries
    }:
        return False
    return not (query.verified and offer.verified is False)


def known_gpu(wanted: str, names: Iterable[str]) -> list[str]:
    """The names in ``names`` (a provider's exact spellings) that ``wanted`` means."""
    return [n for n in names if gpu_matches(wanted, n)]


def close_gpu_names(wanted: str, names: Iterable[str], n: int = 3) -> list[str]:
    """Names that look like a misspelt ``wanted`` (``4900`` -> ``RTX 4090``), closest first."""
    import difflib

    want = canonical_gpu(wanted)
    if not want:
        return []
    by_key: dict[str, str] = {}
    for name in names:
        key = canonical_gpu(name)
        by_key.setdefault(key, name)
        # A bare model number is compared with the other numbers: 4900 ~ 4090.
        digits = re.sub(r"^[a-z]+", "", key)
        if digits and digits != key:
            by_key.setdefault(digits, name)
    scored = []
    for key in by_key:
        ratio = difflib.SequenceMatcher(None, want, key).ratio()
        if ratio >= 0.6:
            # Swapped characters (4900 for 4090) first, then the most alike.
            scored.append((sorted(key) != sorted(want), -ratio, key))
    picked: list[str] = []
    for _, _, key in sorted(scored):
        name = by_key[key]
        if name not in picked:
            picked.append(name)
    return picked[:n]


# -- ranking -------------------------------------------------------------------------------------
# An offer's place in a ranking: numbers first (smaller ranks higher), its id last.
RankKey = tuple[float, float, str]

SORTS = ("price", "reliability", "vram", "perf-per-dollar")
_BIG = float("inf")


def _key_price(o: Offer) -> RankKey:
    return (o.price_per_hour if o.price_per_hour is not None else _BIG, -(o.reliability or 0), o.id)


def _key_reliability(o: Offer) -> RankKey:
    rel = o.reliability if o.reliability is not None else -1
    return (-rel, o.price_per_hour or _BIG, o.id)


def _key_vram(o: Offer) -> RankKey:
    return (-((o.vram_gb or 0) * (o.num_gpus or 1)), o.price_per_hour or _BIG, o.id)


def _key_perf(o: Offer) -> RankKey:
    perf = o.perf_per_dollar if o.perf_per_dollar is not None else -1
    return (-perf, o.price_per_hour or _BIG, o.id)


RANK_KEYS: dict[str, Callable[[Offer], RankKey]] = {
    "price": _key_price,
    "reliability": _key_reliability,
    "vram": _key_vram,
    "perf-per-dollar": _key_perf,
}


def rank_offers(offers: list[Offer], sort: str) -> list[Offer]:
    """Stable ranking, best first; unknown values sort last. ``sort`` must be in SORTS."""
    return sorted(offers, key=RANK_KEYS[sort])


def primary_key(offer: Offer, sort: str) -> float:
    """The first element of the offer's rank key: smaller ranks first."""
    value = RANK_KEYS[sort](offer)[0]
    return float(value)
