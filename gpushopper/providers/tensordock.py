"""TensorDock v2 adapter: hostnode inventory and VM instances.

Facts from shared/reference/tensordock.md: Bearer token, ``{"data": ...}`` envelopes,
errors that may arrive inside an HTTP 200 body, prices built from components (GPU x count
+ vCPU + RAM + storage, per hour), even vCPU counts, at least 100 GB of storage.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypedDict

from gpushopper.model.errors import (
    AuthFailed,
    NotFound,
    ProviderError,
    RateLimited,
    Unavailable,
)
from gpushopper.model.jsontypes import JSONObject, JSONValue
from gpushopper.model.models import (
    RANK_KEYS,
    Instance,
    LaunchSpec,
    Offer,
    OfferQuery,
    Template,
    offer_matches,
    rank_offers,
)
from gpushopper.providers.base import HttpClient, HttpConfig, SettingsReader, error_text
from gpushopper.providers.common import (
    ApiCall,
    checked_instance_id,
    country_code,
    integer,
    num,
)
from gpushopper.providers.registry import offer_id_ok, tensordock_config

NAME = "tensordock"
API_PATH = "/api/v2"  # the adapter's paths are relative to the API base, which ends here
_ENDS = ("sessions done", "shutdown", "watch", "cleanup-orphans", "provision (a failed boot)")
# Every call this adapter makes (docs/api-coverage.md is generated from it).
API_CALLS: tuple[ApiCall, ...] = (
    ApiCall("GET", "/api/v2/locations", "check the token", ("doctor",)),
    ApiCall(
        "GET",
        "/api/v2/hostnodes",
        "every host node with its free GPUs and prices (filtered here)",
        ("inventory", "provision", "templates catalog"),
    ),
    ApiCall("GET", "/api/v2/hostnodes/:id", "look one offer up", ("provision",)),
    ApiCall(
        "POST",
        "/api/v2/instances",
        "create a VM on a host node, with the SSH key and cloud-init",
        ("provision",),
    ),
    ApiCall(
        "GET",
        "/api/v2/instances/:id",
        "one VM: status, IP, port forwards",
        ("provision", "sessions done", "watch", "cleanup-orphans"),
    ),
    ApiCall(
        "GET",
        "/api/v2/instances",
        "every VM of the account",
        ("watch", "cleanup-orphans", "sessions done", "provision"),
    ),
    ApiCall("DELETE", "/api/v2/instances/:id", "delete a VM (then confirmed gone)", _ENDS),
)
MIN_STORAGE_GB = 100

# The GPU model slugs ("v0Name") the reference has seen (section 2.4).
GPU_MODELS = (
    "geforcertx4090-pcie-24gb", "geforcertx3090-pcie-24gb", "geforcertx3080-pcie-10gb",
    "geforcertx3080ti-pcie-12gb", "geforcertx3070-pcie-8gb", "geforcertx3070ti-pcie-8gb",
    "geforcertx3060-pcie-12gb", "geforcertx3060ti-pcie-8gb", "geforcertx3060tilhr-pcie-8gb",
    "geforcegtx1070-pcie-8gb", "rtxa4000-pcie-16gb", "rtxa5000-pcie-24gb",
    "rtxa6000-pcie-48gb", "l40-pcie-48gb", "a100-pcie-80gb", "v100-pcie-16gb",
    "h100-sxm5-80gb", "a100-sxm4-80gb", "a100-pcie-40gb", "a100-nvlink-40gb",
    "l40s-pcie-48gb", "v100-sxm2-16gb", "v100-nvlink-16gb", "rtx6000ada-pcie-48gb",
    "rtx5000ada-pcie-32gb", "rtx4500ada-pcie-24gb", "rtx4000ada-pcie-20gb",
    "rtx4000sffada-pcie-20gb", "quadrortx4000-pcie-8gb", "quadrortx5000-pcie-16gb",
    "a40-pcie-48gb", "geforcertx5090-pcie-32gb",
)  # fmt: skip

# OS images offered as "templates" (the v2 API has no template catalogue).
IMAGES = [
    ("ubuntu2404_ml_pytorch", "Ubuntu 24.04 + PyTorch (ML image, NVIDIA driver)", True),
    ("ubuntu2404_ml_everything", "Ubuntu 24.04 + ML stack (NVIDIA driver)", True),
    ("ubuntu2404_ml_tensorflow", "Ubuntu 24.04 + TensorFlow (NVIDIA driver)", True),
    ("ubuntu2404", "Ubuntu 24.04 (no NVIDIA driver: cloud-init must install one)", False),
    ("ubuntu2204", "Ubuntu 22.04 (no NVIDIA driver: cloud-init must install one)", False),
]

STATUS_MAP = {
    "starting": "loading",
    "queued": "creating",
    "pending": "creating",
    "creating": "creating",
    "provisioning": "creating",
    "running": "running",
    "stopping": "stopped",
    "stopped": "stopped",
    "stoppeddisassociated": "stopped",
    "stopped_disassociated": "stopped",
    "deleting": "exited",
    "deleted": "exited",
    "terminated": "exited",
    "error": "exited",
}


def classify(status: int, body: JSONValue, text: str) -> ProviderError | None:
    """TensorDock sometimes reports errors inside an HTTP 200 body: ``{"error", "status"}``."""
    if not (200 <= status < 300) or not isinstance(body, dict):
        return None
    err = body.get("error")
    if not err or "data" in body:
        return None
    inner = integer(body.get("status")) or 400
    message = error_text(body) or "request failed"
    if inner in (401, 403):
        return AuthFailed(NAME, f"authentication failed: {message}", status=inner)
    if inner == 404:
        return NotFound(NAME, message, status=inner)
    if inner == 429:
        return RateLimited(NAME, f"rate limited: {message}", status=inner)
    if inner >= 500:
        return Unavailable(NAME, message, status=inner)
    return ProviderError(NAME, message, status=inner)


def _obj(value: JSONValue) -> JSONObject:
    """An answer's sub-object, or {} when it has another shape (parsed defensively)."""
    return value if isinstance(value, dict) else {}


def vram_from_v0name(v0name: str | None) -> float | None:
    match = re.search(r"(\d+)gb$", v0name or "")
    return float(match.group(1)) if match else None


def display_name(v0name: str) -> str:
    """``geforcertx4090-pcie-24gb`` -> ``RTX 4090``; ``h100-sxm5-80gb`` -> ``H100 SXM5``."""
    match = re.match(r"^(.*?)-(pcie|sxm\d?|nvlink|pci)-\d+gb$", v0name)
    base, form = (match.group(1), match.group(2)) if match else (v0name, "")
    base = re.sub(r"^(geforce|quadro)", "", base)
    family = re.match(r"^(rtx|gtx)(.*)$", base)
    if family:
        pretty = f"{family.group(1).upper()} {family.group(2).upper()}"
    else:
        pretty = base.upper()
    pretty = re.sub(r"(\d)TI\b", r"\1 Ti", pretty).replace("ADA", " Ada").replace("LHR", " LHR")
    if form and form != "pcie":
        pretty += f" {form.upper()}"
    return pretty.strip()


# RAM sizes clients have found TensorDock to accept (reference/tensordock.md 2.6).
RAM_SIZES = (2, 4, 6, 8, 10, 16, 32, 48, 64, 80, 96, 128, 160, 192, 256, 384, 512)


def allowed_ram(gb: float) -> int:
    """The largest accepted RAM size not above ``gb`` (0 when below the smallest)."""
    return max((size for size in RAM_SIZES if size <= gb), default=0)


def even_down(value: float) -> int:
    out = int(value)
    return out - (out % 2)


class ResourcePlan(TypedDict):
    """The vCPUs, RAM and storage asked for with the GPUs (and priced)."""

    vcpu_count: int
    ram_gb: int
    storage_gb: int


def plan_resources(
    hostnode: JSONObject,
    gpu_count: int,
    disk_gb: float,
    vcpus_per_gpu: int = 8,
    ram_per_gpu: int = 32,
) -> ResourcePlan | None:
    """vCPU (even), RAM and storage (>= 100 GB) to ask for with ``gpu_count`` GPUs,
    within what the host has free; None when it cannot fit."""
    res = _obj(hostnode.get("available_resources"))
    vcpu_avail = num(res.get("vcpu_count"))
    ram_avail = num(res.get("ram_gb"))
    storage_avail = num(res.get("storage_gb"))
    vcpus = vcpus_per_gpu * gpu_count
    ram = ram_per_gpu * gpu_count
    caps_v = [c for c in (vcpu_avail, num(res.get("max_vcpus"))) if c is not None]
    per_gpu_v = num(res.get("max_vcpus_per_gpu"))
    if per_gpu_v is not None:
        caps_v.append(per_gpu_v * gpu_count)
    caps_r = [c for c in (ram_avail, num(res.get("max_ram_gb"))) if c is not None]
    per_gpu_r = num(res.get("max_ram_per_gpu"))
    if per_gpu_r is not None:
        caps_r.append(per_gpu_r * gpu_count)
    if caps_v:
        vcpus = min(vcpus, int(min(caps_v)))
    if caps_r:
        ram = min(ram, int(min(caps_r)))
    vcpus = even_down(vcpus)
    ram = allowed_ram(ram)
    storage = int(math.ceil(max(MIN_STORAGE_GB, disk_gb)))
    if vcpus < 2 or ram < 1:
        return None
    if storage_avail is not None and storage > storage_avail:
        return None
    max_storage = num(res.get("max_storage_gb"))
    if max_storage is not None and storage > max_storage:
        return None
    return {"vcpu_count": vcpus, "ram_gb": int(ram), "storage_gb": storage}


def price_of(
    gpu_price: float, gpu_count: int, pricing: JSONObject, plan: ResourcePlan
) -> float | None:
    per_vcpu = num(pricing.get("per_vcpu_hr"))
    per_ram = num(pricing.get("per_gb_ram_hr"))
    per_storage = num(pricing.get("per_gb_storage_hr"))
    if per_vcpu is None or per_ram is None or per_storage is None:
        return None
    total = (
        gpu_price * gpu_count
        + per_vcpu * plan["vcpu_count"]
        + per_ram * plan["ram_gb"]
        + per_storage * plan["storage_gb"]
    )
    return round(total, 5)


def parse_hostnodes(
    data: JSONValue,
    query: OfferQuery,
    vcpus_per_gpu: int = 8,
    ram_per_gpu: int = 32,
) -> list[Offer]:
    """``GET /hostnodes`` answer -> one Offer per (hostnode, GPU model) that can host
    ``query.num_gpus`` (default 1) GPUs with a dedicated IP. Pure; tolerant of gaps."""
    count = query.num_gpus or 1
    offers: list[Offer] = []
    for node in _hostnodes(data):
        for gpu in _gpus(node):
            offer = _gpu_offer(node, gpu, count, query.disk_gb, vcpus_per_gpu, ram_per_gpu)
            if offer is not None:
                offers.append(offer)
    return [o for o in offers if offer_matches(o, query)]


def _hostnodes(data: JSONValue) -> list[JSONObject]:
    """The answer's hostnodes that have an id and can give a dedicated IP."""
    payload = data.get("data", data) if isinstance(data, dict) else {}
    rows = payload.get("hostnodes") if isinstance(payload, dict) else payload
    if not isinstance(rows, list):
        return []
    return [
        node
        for node in rows
        if isinstance(node, dict)
        and node.get("id")
        # SSH needs a dedicated IP: port forwards were ignored at some sites
        and _obj(node.get("available_resources")).get("has_public_ip_available") is not False
    ]


def _gpus(node: JSONObject) -> list[JSONObject]:
    """A hostnode's GPU models (each with its free count and price), as objects."""
    gpus = _obj(node.get("available_resources")).get("gpus")
    return [gpu for gpu in gpus if isinstance(gpu, dict)] if isinstance(gpus, list) else []


def _gpu_offer(
    node: JSONObject,
    gpu: JSONObject,
    count: int,
    disk_gb: float,
    vcpus_per_gpu: int,
    ram_per_gpu: int,
) -> Offer | None:
    """One GPU model of a hostnode as an offer of ``count`` GPUs; None when too few are
    free, it has no price or name, its id is one the user could not type, or the host has
    no room for the vCPUs, RAM and disk that go with them."""
    v0name = gpu.get("v0Name")
    available = integer(gpu.get("availableCount")) or 0
    gpu_price = num(gpu.get("price_per_hr"))
    if not isinstance(v0name, str) or not v0name or available < count or gpu_price is None:
        return None
    # The node id goes into a URL path (GET /hostnodes/ID) and the create: an offer
    # id the user could not type ("../x", "a#b") is no offer.
    offer_id = f"{NAME}:{node['id']}:{v0name}"
    if not offer_id_ok(offer_id, NAME):
        return None
    plan = plan_resources(node, count, disk_gb, vcpus_per_gpu, ram_per_gpu)
    if plan is None:
        return None
    price = price_of(gpu_price, count, _obj(node.get("pricing")), plan)
    return _offer(node, gpu, offer_id, count, plan, price)


def _offer(
    node: JSONObject,
    gpu: JSONObject,
    offer_id: str,
    count: int,
    plan: ResourcePlan,
    price: float | None,
) -> Offer:
    """The Offer for a GPU model that passed ``_gpu_offer``'s checks."""
    v0name: str = gpu["v0Name"]
    res = _obj(node.get("available_resources"))
    location = _obj(node.get("location"))
    uptime = num(node.get("uptime_percentage"))
    speed = num(location.get("network_speed_gbps"))
    shown = gpu.get("displayName")
    display = shown if isinstance(shown, str) and shown else display_name(v0name)
    return Offer(
        id=offer_id,
        provider=NAME,
        gpu_name=display,
        num_gpus=count,
        vram_gb=vram_from_v0name(v0name),
        price_per_hour=price,
        reliability=round(uptime / 100, 4) if uptime is not None else None,
        cuda_version=None,
        disk_gb=num(res.get("storage_gb")),
        cpu_cores=float(plan["vcpu_count"]),
        ram_gb=float(plan["ram_gb"]),
        country=country_code(location.get("country")),
        location=_place(location),
        inet_down_mbps=speed * 1000 if speed is not None else None,
        verified=None,
        machine_id=str(node["id"]),
        perf_per_dollar=None,
        max_disk_gb=num(res.get("storage_gb")),
        extra={
            "hostnode_id": node["id"],
            "location_id": node.get("location_id") or location.get("uuid"),
            "v0name": v0name,
            "tier": location.get("tier"),
            **plan,
        },
    )


def _place(location: JSONObject) -> str | None:
    """``Dallas, Texas, United States`` from the parts the location has (None: none)."""
    parts = (location.get("city"), location.get("stateprovince"), location.get("country"))
    return ", ".join(str(p) for p in parts if p) or None


def parse_instance(raw: JSONObject) -> Instance:
    if isinstance(raw.get("data"), dict):
        raw = raw["data"]
    attrs: JSONObject = raw["attributes"] if isinstance(raw.get("attributes"), dict) else {}
    merged = {**attrs, **{k: v for k, v in raw.items() if k != "attributes"}}
    status = str(merged.get("status") or "").strip()
    host = merged.get("ipAddress") or merged.get("ip_address")
    port: int | None = None
    forwards = merged.get("portForwards") or merged.get("port_forwards") or []
    if isinstance(forwards, dict):  # v0 style {"external": "internal"}
        forwards = [{"external_port": k, "internal_port": v} for k, v in forwards.items()]
    for fwd in forwards if isinstance(forwards, list) else []:
        if isinstance(fwd, dict) and integer(fwd.get("internal_port")) == 22:
            port = integer(fwd.get("external_port"))
    if host and port is None:
        port = 22  # dedicated IP: SSH straight on port 22
    resources: JSONObject = merged["resources"] if isinstance(merged.get("resources"), dict) else {}
    gpus: JSONObject = resources["gpus"] if isinstance(resources.get("gpus"), dict) else {}
    gpu_name = next(iter(gpus), None)
    gpu_count = None
    if gpu_name and isinstance(gpus[gpu_name], dict):
        gpu_count = integer(gpus[gpu_name].get("count"))
    return Instance(
        provider=NAME,
        instance_id=str(merged.get("id")),
        label=merged.get("name"),
        status=STATUS_MAP.get(status.lower().replace(" ", ""), "unknown") if status else "unknown",
        raw_status=status or None,
        ssh_host=str(host) if host else None,
        ssh_port=port,
        price_per_hour=num(merged.get("rateHourly")),
        gpu_name=gpu_name,
        num_gpus=gpu_count,
        extra={"hostnode_id": merged.get("hostnode_id")},
        image=merged.get("image"),
        disk_gb=num(resources.get("storage_gb")),
        ports=[
            {
                "internal": integer(f.get("internal_port")),
                "external": integer(f.get("external_port")),
                "protocol": "tcp",
            }
            for f in (forwards if isinstance(forwards, list) else [])
            if isinstance(f, dict) and integer(f.get("internal_port")) != 22
        ],
    )


def parse_instance_list(data: JSONValue) -> list[Instance]:
    """The three documented list shapes (``{"data": {"instances": [...]}}``, a flat
    ``{"data": [...]}``, nested ``data.attributes.instances``), believed only when
    well-formed: any other answer (``{}``, ``[]``, ``null``, rows without an id) raises
    Unavailable instead of reading as "no instances"."""
    rows: JSONValue = None
    inner = data.get("data") if isinstance(data, dict) else None
    if isinstance(inner, list):
        rows = inner
    elif isinstance(inner, dict):
        rows = inner.get("instances")
        if rows is None and isinstance(inner.get("attributes"), dict):
            rows = inner["attributes"].get("instances")
    if not isinstance(rows, list):
        shown = "null" if data is None else repr(data)[:80]
        raise Unavailable(NAME, f"instance list answered in an unknown shape: {shown}")
    out = []
    for row in rows:
        if not isinstance(row, dict) or not row.get("id"):
            raise Unavailable(NAME, f"instance list has a row without an id: {repr(row)[:80]}")
        checked_instance_id(row["id"], NAME, "an instance list row's id")
        out.append(parse_instance(row))
    return out


def cloud_init_for(spec: LaunchSpec, users: tuple[str, ...] = ("root", "user")) -> JSONObject:
    """Write the session key for root and ``user`` (keys passed at create did not always
    reach the VM), and add any deadline commands the caller put in ``spec.onstart``."""
    key = spec.public_key.strip().replace("'", "")
    runcmd: list[str] = []
    for user in users:
        home = "/root" if user == "root" else f"/home/{user}"
        runcmd.append(
            f"mkdir -p {home}/.ssh && echo '{key}' >> {home}/.ssh/authorized_keys && "
            f"chmod 700 {home}/.ssh && chmod 600 {home}/.ssh/authorized_keys && "
            f"(chown -R {user}:{user} {home}/.ssh || true)"
        )
    if spec.onstart:
        runcmd.append(spec.onstart)
    return {"runcmd": runcmd}


@dataclass(frozen=True)
class TensorDockConfig:
    """What a TensorDock client is built from; the registry reads it from the settings
    (``registry.tensordock_config``). The token never appears in its repr."""

    api_token: str = field(repr=False)
    api_url: str = "https://dashboard.tensordock.com/api/v2"
    ssh_user: str = "user"
    image: str = "ubuntu2404_ml_pytorch"  # the OS image booted when none is asked for
    vcpus_per_gpu: int = 8
    ram_per_gpu: int = 32  # GB (tensordock.ram_gb_per_gpu)
    http: HttpConfig = HttpConfig()


class TensorDock:
    """TensorDock v2 over HTTP, built from a :class:`TensorDockConfig` (the CLI:
    :meth:`from_settings`)."""

    NAME = NAME

    def __init__(
        self, config: TensorDockConfig, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.api_url = config.api_url.rstrip("/")
        self.ssh_user = config.ssh_user
        self.image = config.image
        self.vcpus_per_gpu = config.vcpus_per_gpu
        self.ram_per_gpu = config.ram_per_gpu
        self.http = HttpClient(
            NAME,
            self.api_url,
            headers={
                "Authorization": f"Bearer {config.api_token}",
                "Content-Type": "application/json",
            },
            secrets=[config.api_token],
            read_timeout=config.http.timeout,
            max_attempts=config.http.retries,
            backoff_base=config.http.backoff,
            sleep=sleep,
            classify=classify,
        )

    @classmethod
    def from_settings(cls, settings: SettingsReader) -> TensorDock:
        """The client the settings describe (MissingCredentials without a token)."""
        return cls(tensordock_config(settings))

    def check(self) -> str:
        data = self.http.request("GET", "/locations") or {}
        inner = data.get("data") if isinstance(data, dict) else None
        locations = inner.get("locations") if isinstance(inner, dict) else None
        return f"authenticated; {len(locations) if isinstance(locations, list) else 0} locations"

    # -- offers -----------------------------------------------------------------------------
    def search_offers(self, query: OfferQuery, limit: int | None = None) -> list[Offer]:
        """The ``limit`` best matches for ``query.sort`` (every match when None), best first.

        ``GET /hostnodes`` answers with every hostnode in one list: no page, no limit, and
        no server-side filter the reference confirms, so all filtering happens here.
        """
        data = self.http.request("GET", "/hostnodes")
        if not isinstance(data, dict) or "data" not in data:
            raise ProviderError(NAME, "hostnode list answered without a 'data' envelope")
        offers = parse_hostnodes(data, query, self.vcpus_per_gpu, self.ram_per_gpu)
        ranked = rank_offers(offers, query.sort if query.sort in RANK_KEYS else "price")
        return ranked if limit is None else ranked[:limit]

    def get_offer(self, native_id: str, disk_gb: float) -> Offer | None:
        hostnode_id, _, v0name = native_id.partition(":")
        try:
            data = self.http.request("GET", f"/hostnodes/{hostnode_id}")
        except NotFound:
            return None
        node = data.get("data") if isinstance(data, dict) else None
        if not isinstance(node, dict):
            # One hostnode asked for by id: an answer without it says nothing of the offer,
            # and must not read as "that offer is gone" (bad input, exit 2).
            raise ProviderError(
                NAME,
                f"hostnode {hostnode_id} answered with a wrong shape (expected a 'data' object)",
            )
        found = node.setdefault("id", hostnode_id)
        if str(found) != hostnode_id:  # its id goes into the create: never another node's
            raise Unavailable(
                NAME, f"asked for hostnode {hostnode_id}, the answer is {repr(found)[:80]}"
            )
        offers = parse_hostnodes({"data": {"hostnodes": [node]}}, OfferQuery(disk_gb=disk_gb))
        return next((o for o in offers if o.extra.get("v0name") == v0name), None)

    # -- templates (OS images) --------------------------------------------------------------
    def list_templates(
        self, name: str | None = None, use_ssh: bool | None = None
    ) -> list[Template]:
        out = [
            Template(
                id=slug,
                provider=NAME,
                name=slug,
                image=slug,
                description=desc,
                use_ssh=True,
                runtype="vm",
                requirements={"nvidia_driver": has_driver},
            )
            for slug, desc, has_driver in IMAGES
        ]
        if name:
            out = [
                t
                for t in out
                if name.lower() in t.name.lower() or name.lower() in (t.description or "").lower()
            ]
        return out

    def get_template(self, ident: str) -> Template | None:
        return next((t for t in self.list_templates() if t.id == ident), None)

    # -- instances --------------------------------------------------------------------------
    def create_instance(self, spec: LaunchSpec) -> str:
        """Create the VM on the offer's hostnode with a dedicated IP. Never retried."""
        offer = spec.offer
        plan = plan_resources(
            {"available_resources": {}},
            offer.num_gpus or 1,
            spec.disk_gb,
            self.vcpus_per_gpu,
            self.ram_per_gpu,
        )
        assert plan is not None
        for key in ("vcpu_count", "ram_gb"):
            if offer.extra.get(key):
                plan[key] = int(offer.extra[key])
        image = spec.image or (spec.template.image if spec.template else None) or self.image
        attributes: JSONObject = {
            "name": spec.label,
            "type": "virtualmachine",
            "image": image,
            "resources": {
                **plan,
                "gpus": {offer.extra["v0name"]: {"count": offer.num_gpus or 1}},
            },
            "hostnode_id": offer.extra["hostnode_id"],
            "useDedicatedIp": True,
            "ssh_key": spec.public_key.strip(),
            "cloud_init": cloud_init_for(spec),
        }
        body = {"data": {"type": "virtualmachine", "attributes": attributes}}
        data = self.http.request("POST", "/instances", json_body=body, idempotent=False)
        inner = data.get("data", data) if isinstance(data, dict) else {}
        instance_id = inner.get("id") if isinstance(inner, dict) else None
        if not instance_id:
            raise ProviderError(NAME, f"create answered without an instance id: {str(data)[:200]}")
        return checked_instance_id(instance_id, NAME, "the create answer's id")

    def get_instance(self, instance_id: str) -> Instance | None:
        """The instance, or None when TensorDock answers 404 (or reports it deleted).
        An answer that is not an instance is an error, never "gone"."""
        checked_instance_id(instance_id, NAME, "the instance to look up")
        try:
            data = self.http.request("GET", f"/instances/{instance_id}")
        except NotFound:
            return None
        obj = data.get("data", data) if isinstance(data, dict) else None
        if not isinstance(obj, dict) or not (
            obj.get("status") or obj.get("id") or isinstance(obj.get("attributes"), dict)
        ):
            shown = "null" if data is None else repr(data)[:80]
            raise Unavailable(NAME, f"instance {instance_id} answered {shown}")
        inst = parse_instance(data)
        if inst.instance_id in ("None", ""):
            inst.instance_id = instance_id
        elif inst.instance_id != str(instance_id):
            raise Unavailable(
                NAME, f"asked for instance {instance_id}, the answer is {inst.instance_id}"
            )
        if inst.status == "exited" and (inst.raw_status or "").lower() in ("deleted", "terminated"):
            return None
        return inst

    def list_instances(self) -> list[Instance]:
        return parse_instance_list(self.http.request("GET", "/instances"))

    def destroy_instance(self, instance_id: str) -> None:
        checked_instance_id(instance_id, NAME, "the instance to destroy")
        try:
            self.http.request("DELETE", f"/instances/{instance_id}")
        except NotFound:
            return

    def attach_ssh_key(self, instance_id: str, public_key: str) -> None:
        """Keys go in at create time (field and cloud-init); nothing to do afterwards."""

    def instance_logs(self, instance_id: str, tail: int | None = None) -> str:
        """TensorDock's v2 API has no log endpoint (a VM, not a container)."""
        raise ProviderError(
            NAME,
            "the v2 API has no log endpoint; read the VM's boot log over SSH: gpu-shopper "
            "sessions ssh ID -- tail -n 200 /var/log/cloud-init-output.log",
        )

    def close(self) -> None:
        self.http.close()
