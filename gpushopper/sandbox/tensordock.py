"""A loopback HTTP emulator of the TensorDock v2 ("Instances") API for the test suite.

Follows shared/reference/tensordock.md (the project's notes, beside the repository): base
``/api/v2``, Bearer auth, JSON:API-like envelopes, errors as ``{"error": ..., "status": ...}``
(sometimes inside an HTTP 200), GPU prices per GPU-hour and per-resource pricing per
vCPU-hour / GB-hour.

Stdlib only (the ``tensordock_emulator`` pytest fixture lives in tests/fakes/fixtures.py).
It listens on 127.0.0.1 only, in a daemon thread; the status machine is computed lazily from
an injectable ``clock`` (no background threads), so tests drive time with a fake clock.

Typical use::

    with TensorDockEmulator(ssh_backend=pool) as emu:
        emu.seed_default()
        client = TensorDockClient(base_url=emu.url, token=emu.api_token)
        ...
        emu.fail_next("DELETE", r"^/instances/", status=500, times=2)

Status machine (lazy, from ``clock()``): "starting" until ``running_after`` seconds after
create/start, then "running". ``emu.boot`` (overridden per hostnode by ``add_hostnode(boot=)``)
takes ``mode`` ("ok" | "stuck_starting" | "stopped"), ``running_after``, and for mode "stopped"
``running_for`` (default 0: the first poll that sees "running" is the last one), and
``stopping_for`` (default 0: a stopped instance reports "stopped" at once).

Paths given to the fault helpers are regular expressions searched (``re.search``) in the path
relative to the v2 base (``/instances/<id>``) and in the full path (``/api/v2/instances/<id>``);
``emu.requests[i]["path"]`` is the relative path.
"""

from __future__ import annotations

import copy
import json
import random
import re
import socket
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from gpushopper.sandbox.base import LoopbackEmulator, LoopbackHandler, SSHBackend

API_PREFIX = "/api/v2"
DEFAULT_TOKEN = "td-test-token"
DEFAULT_DRIVER_VERSION = "550.54.15"
DEFAULT_CUDA_VERSION = "12.4"
DEFAULT_PRICING: dict[str, float] = {
    "per_vcpu_hr": 0.003,
    "per_gb_ram_hr": 0.002,
    "per_gb_storage_hr": 0.00005,
}
DEFAULT_BOOT: dict[str, Any] = {"mode": "ok", "running_after": 0.0}
BOOT_MODES = ("ok", "stuck_starting", "stopped")
MIN_STORAGE_GB = 100
MIN_BALANCE_USD = 1.0

UNAUTHORIZED = "Unauthorized: invalid or missing API token"
STOCKOUT = "No available nodes found"
NO_PUBLIC_IP = "No available public IPs on hostnode"

# v0Name -> (displayName, typical USD per GPU-hour)
GPU_CATALOG: dict[str, tuple[str, float]] = {
    "geforcertx5090-pcie-32gb": ("NVIDIA GeForce RTX 5090 PCIe 32GB", 0.65),
    "geforcertx4090-pcie-24gb": ("NVIDIA GeForce RTX 4090 PCIe 24GB", 0.35),
    "geforcertx3090-pcie-24gb": ("NVIDIA GeForce RTX 3090 PCIe 24GB", 0.20),
    "geforcertx3080ti-pcie-12gb": ("NVIDIA GeForce RTX 3080 Ti PCIe 12GB", 0.17),
    "geforcertx3080-pcie-10gb": ("NVIDIA GeForce RTX 3080 PCIe 10GB", 0.15),
    "geforcertx3070-pcie-8gb": ("NVIDIA GeForce RTX 3070 PCIe 8GB", 0.11),
    "geforcertx3060-pcie-12gb": ("NVIDIA GeForce RTX 3060 PCIe 12GB", 0.09),
    "rtxa4000-pcie-16gb": ("NVIDIA RTX A4000 PCIe 16GB", 0.13),
    "rtxa5000-pcie-24gb": ("NVIDIA RTX A5000 PCIe 24GB", 0.22),
    "rtxa6000-pcie-48gb": ("NVIDIA RTX A6000 PCIe 48GB", 0.45),
    "rtx4000ada-pcie-20gb": ("NVIDIA RTX 4000 Ada PCIe 20GB", 0.19),
    "rtx6000ada-pcie-48gb": ("NVIDIA RTX 6000 Ada PCIe 48GB", 0.75),
    "a40-pcie-48gb": ("NVIDIA A40 PCIe 48GB", 0.40),
    "l40-pcie-48gb": ("NVIDIA L40 PCIe 48GB", 0.85),
    "l40s-pcie-48gb": ("NVIDIA L40S PCIe 48GB", 0.95),
    "v100-pcie-16gb": ("NVIDIA V100 PCIe 16GB", 0.20),
    "a100-pcie-40gb": ("NVIDIA A100 PCIe 40GB", 0.90),
    "a100-pcie-80gb": ("NVIDIA A100 PCIe 80GB", 1.20),
    "a100-sxm4-80gb": ("NVIDIA A100 SXM4 80GB", 1.40),
    "h100-sxm5-80gb": ("NVIDIA H100 SXM5 80GB", 2.20),
}

_TITLE_STATUS = {
    "running": "Running",
    "starting": "Starting",
    "stopping": "Stopping",
    "stopped": "Stopped",
    "stoppeddisassociated": "StoppedDisassociated",
    "deleted": "Deleted",
}
_KNOWN_PHASES = {"starting": "booting", "running": "running", "stopping": "stopping"}
_KEY_RE = re.compile(
    r"(?:ssh-ed25519|ssh-rsa|ecdsa-[A-Za-z0-9-]+)[ \t]+[A-Za-z0-9+/]+={0,3}"
    r"(?:[ \t]+[^\s'\"\\<>|;&]+)?"
)
_KEY_LINE_RE = re.compile(r"^(?:ssh-ed25519|ssh-rsa|ecdsa-[A-Za-z0-9-]+)\s+\S+")
_LOCATION_NS = uuid.UUID("6f1d0f4e-5d0a-4a57-9d55-7a1f3c2b9e10")


def gpu_display_name(v0_name: str) -> str:
    """TensorDock's displayName for a v0Name ("NVIDIA GeForce RTX 4090 PCIe 24GB")."""
    known = GPU_CATALOG.get(v0_name)
    return known[0] if known else f"NVIDIA {v0_name.upper()}"


def gpu_vram_gb(v0_name: str) -> int:
    """VRAM in GB: the number before ``gb`` at the end of the v0Name (0 when absent)."""
    m = re.search(r"(\d+)gb$", v0_name)
    return int(m.group(1)) if m else 0


def extract_public_keys(text: str) -> list[str]:
    """OpenSSH public keys (ssh-ed25519 / ssh-rsa / ecdsa-*) found anywhere in ``text``."""
    return [m.group(0) for m in _KEY_RE.finditer(text)]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _err(message: str, status: int) -> dict[str, Any]:
    return {"error": message, "status": status}


class _ApiError(Exception):
    def __init__(self, http_status: int, message: str, body_status: int | None = None):
        super().__init__(message)
        self.http_status = http_status
        self.body = _err(message, http_status if body_status is None else body_status)


class _Handler(LoopbackHandler):
    server_version = "TensorDockEmulator/1.0"
    timeout = 30

    def serve(self, method: str) -> None:
        emulator = self.server.emulator
        assert isinstance(emulator, TensorDockEmulator)
        emulator._handle(self, method)


class TensorDockEmulator(LoopbackEmulator):
    """TensorDock v2 API on 127.0.0.1 with inspectable state and injectable faults."""

    handler = _Handler
    thread_name = "tensordock-emulator"
    poll_interval = 0.01

    def __init__(
        self,
        api_token: str = DEFAULT_TOKEN,
        ssh_backend: SSHBackend | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.api_token = api_token
        self.ssh_backend = ssh_backend
        self.clock = clock

        # state (id -> record); hostnode records are the API objects plus "_"-prefixed extras
        self.hostnodes: dict[str, dict[str, Any]] = {}
        self.instances: dict[str, dict[str, Any]] = {}
        self.ssh_key_secrets: dict[str, str] = {}
        self.requests: list[dict[str, Any]] = []

        # behaviour knobs
        self.balance = 100.0
        self.boot: dict[str, Any] = dict(DEFAULT_BOOT)
        self.status_case = "lower"  # or "title"
        self.list_shape = "documented"  # or "flat" / "nested"
        self.get_shape = "flat"  # or "wrapped"
        self.create_http_status = 200
        self.stockout_http_status = 200
        self.create_error_after_create = False
        self.destroy_fail_times = 0
        self.drop_ssh_key_field = False
        # The disk a VM gets (and is billed) at least, whatever was asked: the field has seen
        # 100 GB given for 32 asked. None: what was asked.
        self.min_storage_gb: int | None = None
        self.latency = 0.0
        self.rate_limit_per_minute: int | None = None  # None: no enforcement, no headers

        self._faults: list[dict[str, Any]] = []
        self._window: list[float] = []

    # ------------------------------------------------------------------ lifecycle
    def _release(self) -> None:
        for rec in self.instances.values():
            self._backend_stop(rec)
            self._release_dead_port(rec)

    @property
    def url(self) -> str:
        """The v2 base the client appends ``/locations``, ``/instances``... to."""
        return self.base_url + API_PREFIX

    # ------------------------------------------------------------------ seeding
    def add_hostnode(
        self,
        *,
        id: str | None = None,
        gpu: str | None = "geforcertx4090-pcie-24gb",
        gpu_count: int = 4,
        gpu_price: float | None = None,
        gpus: list[dict[str, Any]] | None = None,
        city: str = "Dallas",
        stateprovince: str = "Texas",
        country: str = "United States",
        location_id: str | None = None,
        tier: int = 3,
        uptime_percentage: float = 99.9,
        vcpu_count: int = 64,
        ram_gb: int = 256,
        storage_gb: int = 2000,
        max_vcpus_per_gpu: int = 16,
        max_ram_per_gpu: int = 64,
        pricing: dict[str, float] | None = None,
        ports: list[int] | None = None,
        has_public_ip_available: bool = True,
        has_network_storage: bool = False,
        network_speed_gbps: float = 10.0,
        network_speed_upload_gbps: float = 10.0,
        organization: str | None = None,
        organization_name: str | None = None,
        engine: str = "kvm",
        boot: dict[str, Any] | None = None,
        real_gpu: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Seed one hostnode and return its (live) record.

        ``gpus`` (a list of ``{"v0Name", "availableCount", "price_per_hr"}``) replaces the
        single ``gpu``/``gpu_count``/``gpu_price`` triple; ``gpu=None`` makes a CPU-only node.
        ``boot`` overrides ``emu.boot`` for instances here; ``real_gpu`` overrides the GPU facts
        given to the SSH backend (e.g. ``{"driver_version": None}`` = no NVIDIA driver).
        """
        with self.lock:
            index = len(self.hostnodes)
            if gpus is not None:
                gpu_list = [
                    {
                        "v0Name": g["v0Name"],
                        "availableCount": int(g.get("availableCount", 1)),
                        "price_per_hr": float(
                            g.get("price_per_hr", GPU_CATALOG.get(g["v0Name"], ("", 0.5))[1])
                        ),
                    }
                    for g in gpus
                ]
            elif gpu is None:
                gpu_list = []
            else:
                price = gpu_price if gpu_price is not None else GPU_CATALOG.get(gpu, ("", 0.5))[1]
                gpu_list = [
                    {"v0Name": gpu, "availableCount": int(gpu_count), "price_per_hr": price}
                ]
            if ports is None:
                base = 20000 + (index % 400) * 100
                ports = list(range(base, base + 10))
            loc_id = location_id or str(
                uuid.uuid5(_LOCATION_NS, f"{city}|{stateprovince}|{country}")
            )
            org = organization or f"org-{uuid.uuid5(_LOCATION_NS, loc_id).hex[:8]}"
            node = {
                "id": id or str(uuid.uuid4()),
                "location_id": loc_id,
                "engine": engine,
                "uptime_percentage": float(uptime_percentage),
                "available_resources": {
                    "gpus": gpu_list,
                    "vcpu_count": int(vcpu_count),
                    "ram_gb": int(ram_gb),
                    "storage_gb": int(storage_gb),
                    "max_vcpus_per_gpu": int(max_vcpus_per_gpu),
                    "max_ram_per_gpu": int(max_ram_per_gpu),
                    "max_vcpus": int(vcpu_count),
                    "max_ram_gb": int(ram_gb),
                    "max_storage_gb": int(storage_gb),
                    "available_ports": [int(p) for p in ports],
                    "has_public_ip_available": bool(has_public_ip_available),
                },
                "pricing": {**DEFAULT_PRICING, **(pricing or {})},
                "location": {
                    "uuid": loc_id,
                    "city": city,
                    "stateprovince": stateprovince,
                    "country": country,
                    "has_network_storage": bool(has_network_storage),
                    "network_speed_gbps": float(network_speed_gbps),
                    "network_speed_upload_gbps": float(network_speed_upload_gbps),
                    "organization": org,
                    "organizationName": organization_name or f"{city} Compute",
                    "tier": int(tier),
                },
                "_boot": dict(boot) if boot else None,
                "_real_gpu": dict(real_gpu) if real_gpu else None,
            }
            if node["id"] in self.hostnodes:
                raise ValueError(f"duplicate hostnode id {node['id']}")
            self.hostnodes[str(node["id"])] = node
            return node

    def seed_default(self) -> list[dict[str, Any]]:
        """A realistic mix of 8 hostnodes (first: 4x RTX 4090, tier-3 Dallas, 99.9 % uptime)."""
        return [
            self.add_hostnode(
                gpu="geforcertx4090-pcie-24gb",
                gpu_count=4,
                gpu_price=0.40,
                city="Dallas",
                stateprovince="Texas",
                country="United States",
                tier=3,
                uptime_percentage=99.9,
                organization_name="Lone Star Compute",
            ),
            self.add_hostnode(
                gpu="geforcertx4090-pcie-24gb",
                gpu_count=2,
                gpu_price=0.42,
                city="Frankfurt",
                stateprovince="Hesse",
                country="Germany",
                tier=3,
                uptime_percentage=99.5,
                vcpu_count=32,
                ram_gb=128,
                storage_gb=1500,
                organization_name="Rhein DC GmbH",
            ),
            self.add_hostnode(
                gpu="geforcertx3090-pcie-24gb",
                gpu_count=2,
                gpu_price=0.20,
                city="Orlando",
                stateprovince="Florida",
                country="United States",
                tier=1,
                uptime_percentage=92.0,
                vcpu_count=24,
                ram_gb=96,
                storage_gb=1000,
                max_vcpus_per_gpu=12,
                max_ram_per_gpu=48,
                network_speed_gbps=1.0,
                network_speed_upload_gbps=0.5,
                organization_name="Home Lab Hosting",
            ),
            self.add_hostnode(
                gpu="rtxa6000-pcie-48gb",
                gpu_count=4,
                gpu_price=0.45,
                city="Dallas",
                stateprovince="Texas",
                country="United States",
                tier=3,
                uptime_percentage=99.7,
                vcpu_count=96,
                ram_gb=384,
                storage_gb=4000,
                max_vcpus_per_gpu=24,
                max_ram_per_gpu=96,
                organization_name="Lone Star Compute",
            ),
            self.add_hostnode(
                gpu="a100-pcie-80gb",
                gpu_count=4,
                gpu_price=1.20,
                city="Amsterdam",
                stateprovince="North Holland",
                country="Netherlands",
                tier=3,
                uptime_percentage=99.8,
                vcpu_count=96,
                ram_gb=512,
                storage_gb=6000,
                max_vcpus_per_gpu=24,
                max_ram_per_gpu=128,
                has_network_storage=True,
                organization_name="Polder Cloud BV",
            ),
            self.add_hostnode(
                gpu="h100-sxm5-80gb",
                gpu_count=8,
                gpu_price=2.20,
                city="Austin",
                stateprovince="Texas",
                country="United States",
                tier=4,
                uptime_percentage=99.95,
                vcpu_count=128,
                ram_gb=1024,
                storage_gb=8000,
                max_vcpus_per_gpu=16,
                max_ram_per_gpu=128,
                network_speed_gbps=25.0,
                network_speed_upload_gbps=25.0,
                organization_name="Capitol HPC",
            ),
            self.add_hostnode(
                gpu="geforcertx4090-pcie-24gb",
                gpu_count=2,
                gpu_price=0.33,
                city="Toronto",
                stateprovince="Ontario",
                country="Canada",
                tier=2,
                uptime_percentage=98.5,
                vcpu_count=32,
                ram_gb=128,
                storage_gb=1000,
                has_public_ip_available=False,
                organization_name="Maple GPU",
            ),
            self.add_hostnode(
                gpu="geforcertx3090-pcie-24gb",
                gpu_count=0,
                gpu_price=0.18,
                city="London",
                stateprovince="England",
                country="United Kingdom",
                tier=3,
                uptime_percentage=99.2,
                vcpu_count=4,
                ram_gb=16,
                storage_gb=200,
                organization_name="Thames Metal",
            ),
        ]

    def generate_hostnodes(self, n: int, seed: int = 0) -> list[dict[str, Any]]:
        """``n`` varied, reproducible hostnodes (some sold out, some without a public IP)."""
        rng = random.Random(seed)
        cities = [
            ("Dallas", "Texas", "United States"),
            ("Chicago", "Illinois", "United States"),
            ("Seattle", "Washington", "United States"),
            ("Montreal", "Quebec", "Canada"),
            ("Frankfurt", "Hesse", "Germany"),
            ("Amsterdam", "North Holland", "Netherlands"),
            ("Helsinki", "Uusimaa", "Finland"),
            ("Tokyo", "Tokyo", "Japan"),
        ]
        models = list(GPU_CATALOG)
        out = []
        for i in range(n):
            v0 = rng.choice(models)
            city, state, country = rng.choice(cities)
            total = rng.choice([1, 2, 4, 8])
            per_gpu_vcpu = rng.choice([8, 12, 16, 24])
            node_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            out.append(
                self.add_hostnode(
                    id=node_id if node_id not in self.hostnodes else None,
                    gpu=v0,
                    gpu_count=rng.choice([0, *range(1, total + 1)]),
                    gpu_price=round(GPU_CATALOG[v0][1] * rng.uniform(0.8, 1.3), 3),
                    city=city,
                    stateprovince=state,
                    country=country,
                    tier=rng.randint(0, 4),
                    uptime_percentage=round(rng.uniform(85.0, 99.99), 2),
                    vcpu_count=per_gpu_vcpu * total,
                    ram_gb=per_gpu_vcpu * total * 4,
                    storage_gb=rng.choice([500, 1000, 2000, 4000]),
                    max_vcpus_per_gpu=per_gpu_vcpu,
                    max_ram_per_gpu=per_gpu_vcpu * 4,
                    ports=list(range(30000 + i * 20, 30000 + i * 20 + rng.randint(0, 20))),
                    has_public_ip_available=rng.random() < 0.8,
                    pricing={
                        "per_vcpu_hr": rng.choice([0.002, 0.003, 0.004]),
                        "per_gb_ram_hr": rng.choice([0.0015, 0.002, 0.0025]),
                        "per_gb_storage_hr": 0.00005,
                    },
                )
            )
        return out

    def add_ssh_key_secret(self, public_key: str) -> str:
        """Store an SSHKEY secret; its id can be sent as ``ssh_key_id``."""
        with self.lock:
            secret_id = str(uuid.uuid4())
            self.ssh_key_secrets[secret_id] = public_key.strip()
            return secret_id

    # ------------------------------------------------------------------ faults
    def fail_next(
        self,
        method: str | None,
        path_regex: str,
        status: int = 500,
        body: dict[str, Any] | str | None = None,
        times: int = 1,
        retry_after: float | str | None = None,
        delay: float = 0.0,
        malformed: bool = False,
    ) -> None:
        """The next ``times`` matching requests answer ``status`` with ``body``.

        ``body``: dict -> JSON, str -> text; None -> ``{"error": <reason>, "status": status}``.
        ``malformed`` sends truncated JSON; ``delay`` waits before answering (client timeouts).
        ``method`` None or "*" matches any method.
        """
        self._add_fault(
            "fail",
            method,
            path_regex,
            times,
            status=status,
            body=body,
            retry_after=retry_after,
            delay=delay,
            malformed=malformed,
        )

    def error_in_200_next(
        self, method: str | None, path_regex: str, message: str, status: int = 400, times: int = 1
    ) -> None:
        """The next matching requests answer HTTP 200 with ``{"error": message, "status": ...}``."""
        self._add_fault("error200", method, path_regex, times, message=message, status=status)

    def rate_limit_next(self, times: int = 1, retry_after: float | str | None = None) -> None:
        """The next ``times`` requests (any path) answer 429 ``Too many requests``."""
        self._add_fault("ratelimit", None, "", times, retry_after=retry_after)

    def slow_next(self, method: str | None, path_regex: str, delay: float, times: int = 1) -> None:
        """The next matching requests wait ``delay`` seconds, then are served normally."""
        self._add_fault("slow", method, path_regex, times, delay=delay)

    def clear_faults(self) -> None:
        with self.lock:
            self._faults.clear()
            self.destroy_fail_times = 0
            self.create_error_after_create = False

    def _add_fault(
        self, kind: str, method: str | None, path_regex: str, times: int, **kw: Any
    ) -> None:
        with self.lock:
            self._faults.append(
                {
                    "kind": kind,
                    "method": None if method in (None, "*") else str(method).upper(),
                    "rx": re.compile(path_regex),
                    "times": int(times),
                    **kw,
                }
            )

    def _take_fault(self, method: str, rel: str, full: str) -> dict[str, Any] | None:
        for fault in self._faults:
            if fault["method"] is not None and fault["method"] != method:
                continue
            if not (fault["rx"].search(rel) or fault["rx"].search(full)):
                continue
            fault["times"] -= 1
            if fault["times"] <= 0:
                self._faults.remove(fault)
            return fault
        return None

    # ------------------------------------------------------------------ inspection / control
    def live_instances(self) -> list[dict[str, Any]]:
        """Records of instances not deleted, with ``status`` refreshed from the clock."""
        with self.lock:
            out = []
            for rec in self.instances.values():
                if rec["deleted"]:
                    continue
                self._refresh(rec)
                out.append(rec)
            return out

    def instance_status(self, instance_id: str) -> str:
        """Current (lowercase) status of an instance, refreshed from the clock."""
        with self.lock:
            return self._refresh(self.instances[instance_id])

    def power_off(self, instance_id: str) -> None:
        """What an on-VM ``shutdown`` does: the instance reports "stopped"."""
        with self.lock:
            rec = self.instances[instance_id]
            if rec["deleted"]:
                raise KeyError(instance_id)
            self._set_phase(rec, "stopped")

    def set_status(self, instance_id: str, status: str) -> None:
        """Force a status ("running", "starting", "stopped", or any string, e.g.
        "StoppedDisassociated", which is then reported verbatim)."""
        with self.lock:
            rec = self.instances[instance_id]
            phase = _KNOWN_PHASES.get(status.lower())
            if status.lower() == "stopped":
                self._set_phase(rec, "stopped")
            elif phase is not None:
                self._set_phase(rec, phase)
            else:
                self._set_phase(rec, "fixed")
                rec["_fixed_status"] = status
            self._refresh(rec)

    def set_authorized_keys(self, instance_id: str, authorized_keys: list[str]) -> None:
        """Replace an instance's keys (and tell the SSH backend when it is up)."""
        with self.lock:
            rec = self.instances[instance_id]
            rec["authorized_keys"] = list(authorized_keys)
            if rec["backend_started"] and self.ssh_backend is not None:
                self.ssh_backend.set_keys(rec["instance_key"], list(authorized_keys))

    def create_instance_directly(
        self,
        *,
        name: str = "direct-instance",
        status: str = "running",
        hostnode_id: str | None = None,
        gpu: str | None = None,
        gpu_count: int = 1,
        vcpu_count: int = 8,
        ram_gb: int = 32,
        storage_gb: int = 100,
        image: str = "ubuntu2404",
        authorized_keys: list[str] | None = None,
        cloud_init: dict[str, Any] | None = None,
        instance_id: str | None = None,
    ) -> dict[str, Any]:
        """Put an instance on the account without the API (e.g. a foreign or orphaned one).

        Takes no stock from the hostnode (and gives none back on delete).
        """
        with self.lock:
            node = self.hostnodes.get(hostnode_id) if hostnode_id else None
            if hostnode_id and node is None:
                raise KeyError(hostnode_id)
            if gpu is None and node is not None and node["available_resources"]["gpus"]:
                gpu = node["available_resources"]["gpus"][0]["v0Name"]
            gpus = {gpu: {"count": gpu_count}} if gpu else {}
            resources = {
                "vcpu_count": vcpu_count,
                "ram_gb": ram_gb,
                "storage_gb": storage_gb,
                "gpus": gpus,
            }
            rec = self._new_record(
                instance_id=instance_id,
                name=name,
                image=image,
                node=node,
                resources=resources,
                authorized_keys=list(authorized_keys or []),
                cloud_init=cloud_init,
                attributes={},
                consumed=None,
            )
            self.set_status(rec["id"], status)
            return rec

    # ------------------------------------------------------------------ HTTP plumbing
    def _handle(self, h: _Handler, method: str) -> None:
        split = urlsplit(h.path)
        full = split.path
        rel: str | None = None
        if full == API_PREFIX or full.startswith(API_PREFIX + "/"):
            rel = full[len(API_PREFIX) :].rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length > 0 else b""
        parsed: Any = None
        json_ok = True
        if raw:
            try:
                parsed = json.loads(raw)
            except ValueError:
                json_ok = False
        auth = h.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        auth_ok = scheme.lower() == "bearer" and token.strip() == self.api_token
        with self.lock:
            self.requests.append(
                {
                    "method": method,
                    "path": rel if rel is not None else full,
                    "full_path": full,
                    "query": query,
                    "json": parsed,
                    "body": raw.decode("utf-8", "replace"),
                    "headers": dict(h.headers.items()),
                    "auth_ok": auth_ok,
                    "time": self.clock(),
                }
            )
            fault = self._take_fault(method, rel if rel is not None else full, full)
        if self.latency > 0:
            self._stop_event.wait(self.latency)
        if fault is not None and fault.get("delay"):
            self._stop_event.wait(float(fault["delay"]))
        if fault is not None and fault["kind"] != "slow":
            self._send_fault(h, fault)
            return

        extra: dict[str, str] = {}
        with self.lock:
            limited = self._rate_window(extra)
        if limited is not None:
            self._send_json(h, 429, _err("Too many requests", 429), {**extra, **limited})
            return
        if not auth_ok:
            self._send_json(h, 401, _err(UNAUTHORIZED, 401), extra)
            return
        if rel is None:
            self._send_json(h, 404, _err("Not found", 404), extra)
            return
        if raw and not json_ok:
            self._send_json(h, 400, _err("Invalid JSON body", 400), extra)
            return
        try:
            with self.lock:
                status, payload = self._route(method, rel, parsed)
        except _ApiError as e:
            status, payload = e.http_status, e.body
        except Exception as e:  # a broken SSH backend must not kill the server thread
            status, payload = 500, _err(f"Internal server error: {e}", 500)
        self._send_json(h, status, payload, extra)

    def _rate_window(self, headers: dict[str, str]) -> dict[str, str] | None:
        limit = self.rate_limit_per_minute
        if limit is None:
            return None
        now = self.clock()
        self._window = [t for t in self._window if now - t < 60.0]
        if len(self._window) >= limit:
            retry = max(1, int(60.0 - (now - self._window[0])) + 1)
            headers.update({"X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": "0"})
            return {"Retry-After": str(retry)}
        self._window.append(now)
        headers.update(
            {
                "X-RateLimit-Limit": str(limit),
                "X-RateLimit-Remaining": str(limit - len(self._window)),
            }
        )
        return None

    def _send_fault(self, h: _Handler, fault: dict[str, Any]) -> None:
        headers: dict[str, str] = {}
        if fault.get("retry_after") is not None:
            headers["Retry-After"] = str(fault["retry_after"])
        kind = fault["kind"]
        if kind == "ratelimit":
            self._send_json(h, 429, _err("Too many requests", 429), headers)
        elif kind == "error200":
            self._send_json(h, 200, _err(fault["message"], fault["status"]), headers)
        elif fault["malformed"]:
            body: Any = b'{"data": {"instances": [{"type": "virtualmachine", "id": "'
            self._send(h, fault["status"], body, "application/json", headers)
        elif isinstance(fault["body"], str):
            ctype = "text/html" if fault["body"].lstrip().startswith("<") else "text/plain"
            self._send(h, fault["status"], fault["body"].encode(), ctype, headers)
        else:
            body = fault["body"]
            if body is None:
                reason = BaseHTTPRequestHandler.responses.get(fault["status"], ("Error",))[0]
                body = _err(reason, fault["status"])
            self._send_json(h, fault["status"], body, headers)

    def _send_json(
        self, h: _Handler, status: int, payload: Any, headers: dict[str, str] | None = None
    ) -> None:
        self._send(h, status, json.dumps(payload).encode(), "application/json", headers)

    @staticmethod
    def _send(
        h: _Handler, status: int, body: bytes, ctype: str, headers: dict[str, str] | None
    ) -> None:
        try:
            h.send_response(status)
            h.send_header("Content-Type", ctype)
            h.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(body)
            h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            h.close_connection = True

    # ------------------------------------------------------------------ routing
    def _route(self, method: str, rel: str, body: Any) -> tuple[int, Any]:
        routes: list[tuple[str, str, Callable[..., tuple[int, Any]]]] = [
            ("GET", r"/locations", self._get_locations),
            ("GET", r"/hostnodes", self._get_hostnodes),
            ("GET", r"/hostnodes/([^/]+)", self._get_hostnode),
            ("GET", r"/instances", self._list_instances),
            ("POST", r"/instances", lambda: self._create(body)),
            ("GET", r"/instances/([^/]+)", self._get_instance),
            ("DELETE", r"/instances/([^/]+)", self._delete_instance),
            ("POST", r"/instances/([^/]+)/start", self._start_instance),
            ("POST", r"/instances/([^/]+)/stop", self._stop_instance),
        ]
        path_matched = False
        for route_method, pattern, fn in routes:
            m = re.fullmatch(pattern, rel)
            if not m:
                continue
            path_matched = True
            if route_method == method:
                return fn(*m.groups())
        if path_matched:
            return 405, _err("Method not allowed", 405)
        return 404, _err("Not found", 404)

    # --- inventory
    def _public_hostnode(self, node: dict[str, Any]) -> dict[str, Any]:
        return copy.deepcopy({k: v for k, v in node.items() if not k.startswith("_")})

    def _get_hostnodes(self) -> tuple[int, Any]:
        nodes = [self._public_hostnode(n) for n in self.hostnodes.values()]
        return 200, {"data": {"hostnodes": nodes}}

    def _get_hostnode(self, node_id: str) -> tuple[int, Any]:
        node = self.hostnodes.get(node_id)
        if node is None:
            return 404, _err("Hostnode not found", 404)
        return 200, {"data": self._public_hostnode(node)}

    def _get_locations(self) -> tuple[int, Any]:
        groups: dict[str, list[dict[str, Any]]] = {}
        for node in self.hostnodes.values():
            groups.setdefault(node["location_id"], []).append(node)
        locations = []
        for loc_id, nodes in groups.items():
            first = nodes[0]["location"]
            by_model: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
            for node in nodes:
                for g in node["available_resources"]["gpus"]:
                    if g["availableCount"] > 0:
                        by_model.setdefault(g["v0Name"], []).append((node, g))
            gpus = []
            for v0, offers in by_model.items():
                cheapest_node, cheapest = min(offers, key=lambda o: o[1]["price_per_hr"])
                ars = [n["available_resources"] for n, _ in offers]
                gpus.append(
                    {
                        "v0Name": v0,
                        "displayName": gpu_display_name(v0),
                        "max_count": max(g["availableCount"] for _, g in offers),
                        "price_per_hr": cheapest["price_per_hr"],
                        "resources": {
                            "max_vcpus": max(a["vcpu_count"] for a in ars),
                            "max_ram_gb": max(a["ram_gb"] for a in ars),
                            "max_storage_gb": max(a["storage_gb"] for a in ars),
                        },
                        "pricing": dict(cheapest_node["pricing"]),
                        "network_features": {
                            "dedicated_ip_available": any(
                                a["has_public_ip_available"] for a in ars
                            ),
                            "port_forwarding_available": any(a["available_ports"] for a in ars),
                            "network_storage_available": any(
                                n["location"]["has_network_storage"] for n, _ in offers
                            ),
                        },
                    }
                )
            locations.append(
                {
                    "id": loc_id,
                    "city": first["city"],
                    "stateprovince": first["stateprovince"],
                    "country": first["country"],
                    "tier": first["tier"],
                    "gpus": gpus,
                }
            )
        return 200, {"data": {"locations": locations}}

    # --- create
    def _create(self, body: Any) -> tuple[int, Any]:
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict) or not isinstance(data.get("attributes"), dict):
            raise _ApiError(
                400,
                'Invalid request body: expected {"data": {"type": "virtualmachine", '
                '"attributes": {...}}}',
            )
        if data.get("type") != "virtualmachine":
            raise _ApiError(400, "Invalid resource type: expected 'virtualmachine'")
        attrs = data["attributes"]
        name = attrs.get("name")
        if not isinstance(name, str) or not name.strip():
            raise _ApiError(400, "Instance name is required")
        image = attrs.get("image")
        if not isinstance(image, str) or not image.strip():
            raise _ApiError(400, "Image is required")

        res = attrs.get("resources")
        if not isinstance(res, dict):
            raise _ApiError(400, "resources is required")
        vcpu: Any = res.get("vcpu_count")
        if not _is_int(vcpu) or vcpu < 1:
            raise _ApiError(400, "vcpu_count must be a positive integer")
        if vcpu % 2:
            raise _ApiError(400, "vCPU count must be even")
        ram: Any = res.get("ram_gb")
        if not _is_num(ram) or ram <= 0:
            raise _ApiError(400, "RAM must be greater than 0 GB")
        storage: Any = res.get("storage_gb")
        if not _is_num(storage):
            raise _ApiError(400, "storage_gb is required")
        if storage < MIN_STORAGE_GB:
            raise _ApiError(400, f"Storage must be at least {MIN_STORAGE_GB} GB")
        gpus_raw = res.get("gpus") or {}
        if not isinstance(gpus_raw, dict):
            raise _ApiError(400, "resources.gpus must be an object keyed by GPU model (v0Name)")
        gpus: dict[str, int] = {}
        for v0, spec in gpus_raw.items():
            count: Any = spec.get("count") if isinstance(spec, dict) else None
            if not _is_int(count) or count < 1:
                raise _ApiError(400, f"GPU count for {v0} must be at least 1")
            gpus[v0] = count

        location_id, hostnode_id = attrs.get("location_id"), attrs.get("hostnode_id")
        if location_id and hostnode_id:
            raise _ApiError(400, "Specify either location_id or hostnode_id, not both")
        if not location_id and not hostnode_id:
            raise _ApiError(400, "Either location_id or hostnode_id is required")
        if location_id and not gpus:
            raise _ApiError(400, "At least one GPU is required for location-based deployments")

        ssh_key, ssh_key_id = attrs.get("ssh_key"), attrs.get("ssh_key_id")
        if ssh_key and ssh_key_id:
            raise _ApiError(400, "Provide either ssh_key or ssh_key_id, not both")
        if not ssh_key and not ssh_key_id and not image.lower().startswith("windows"):
            raise _ApiError(400, "SSH key required")
        if ssh_key is not None and not isinstance(ssh_key, str):
            raise _ApiError(400, "ssh_key must be a string")
        if ssh_key_id and ssh_key_id not in self.ssh_key_secrets:
            raise _ApiError(404, "SSH key not found")

        cloud_init = attrs.get("cloud_init")
        cloud_keys = self._cloud_init_keys(cloud_init)

        forwards = attrs.get("port_forwards") or []
        if not isinstance(forwards, list) or not all(
            isinstance(f, dict)
            and _is_int(f.get("internal_port"))
            and _is_int(f.get("external_port"))
            and 0 < f["internal_port"] < 65536
            and 0 < f["external_port"] < 65536
            for f in forwards
        ):
            raise _ApiError(
                400, "port_forwards must be a list of {internal_port, external_port} integers"
            )
        dedicated = bool(attrs.get("useDedicatedIp"))

        if self.balance < MIN_BALANCE_USD:
            raise _ApiError(
                400,
                f"Failed to create instance: insufficient balance, need at least "
                f"${MIN_BALANCE_USD:.2f} (current balance ${self.balance:.2f})",
            )

        want = {"gpus": gpus, "vcpu": vcpu, "ram": ram, "storage": storage}
        ext_ports = [f["external_port"] for f in forwards]
        if hostnode_id:
            node = self.hostnodes.get(hostnode_id)
            if node is None:
                raise _ApiError(404, "Hostnode not found")
            ar = node["available_resources"]
            for p in ext_ports:
                if p not in ar["available_ports"]:
                    raise _ApiError(400, f"Port {p} is not available on this hostnode")
            self._check_per_gpu_limits(node, want)
            if not self._has_stock(node, want):
                raise self._stockout(STOCKOUT)
            if dedicated and not ar["has_public_ip_available"]:
                raise self._stockout(NO_PUBLIC_IP)
        else:
            here = [n for n in self.hostnodes.values() if n["location_id"] == location_id]
            if not here:
                raise _ApiError(404, "Location not found")
            fits = [
                n
                for n in here
                if self._has_stock(n, want)
                and self._within_per_gpu_limits(n, want)
                and (not dedicated or n["available_resources"]["has_public_ip_available"])
                and all(p in n["available_resources"]["available_ports"] for p in ext_ports)
            ]
            if not fits:
                raise self._stockout(STOCKOUT)
            node = fits[0]

        consumed = self._consume(node, want, ext_ports)
        keys: list[str] = []
        if not self.drop_ssh_key_field:
            if ssh_key:
                keys.append(ssh_key.strip())
            if ssh_key_id:
                keys.append(self.ssh_key_secrets[ssh_key_id])
        keys = _dedupe_keys(keys + cloud_keys)
        rec = self._new_record(
            instance_id=None,
            name=name,
            image=image,
            node=node,
            resources={
                "vcpu_count": vcpu,
                "ram_gb": ram,
                "storage_gb": max(storage, self.min_storage_gb or 0),
                "gpus": {v0: {"count": c} for v0, c in gpus.items()},
            },
            authorized_keys=keys,
            cloud_init=cloud_init,
            attributes=copy.deepcopy(attrs),
            consumed=consumed,
        )
        rec.update(
            {
                "ssh_key": ssh_key,
                "ssh_key_id": ssh_key_id,
                "use_dedicated_ip": dedicated,
                "port_forwards": copy.deepcopy(forwards),
            }
        )
        if self.create_error_after_create:
            return 500, _err("Internal server error", 500)
        return self.create_http_status, {
            "data": {
                "type": "virtualmachine",
                "id": rec["id"],
                "name": rec["name"],
                "status": self._cased("starting"),
            }
        }

    def _stockout(self, message: str) -> _ApiError:
        return _ApiError(self.stockout_http_status, message, body_status=400)

    @staticmethod
    def _has_stock(node: dict[str, Any], want: dict[str, Any]) -> bool:
        ar = node["available_resources"]
        for v0, count in want["gpus"].items():
            g = next((g for g in ar["gpus"] if g["v0Name"] == v0), None)
            if g is None or g["availableCount"] < count:
                return False
        return (
            want["vcpu"] <= ar["vcpu_count"]
            and want["ram"] <= ar["ram_gb"]
            and want["storage"] <= ar["storage_gb"]
        )

    @staticmethod
    def _per_gpu_problem(node: dict[str, Any], want: dict[str, Any]) -> str | None:
        n = sum(want["gpus"].values())
        if not n:
            return None
        ar = node["available_resources"]
        if want["vcpu"] > ar["max_vcpus_per_gpu"] * n:
            return f"vCPU count exceeds the maximum of {ar['max_vcpus_per_gpu'] * n} for {n} GPU(s)"
        if want["ram"] > ar["max_ram_per_gpu"] * n:
            return f"RAM exceeds the maximum of {ar['max_ram_per_gpu'] * n} GB for {n} GPU(s)"
        return None

    def _check_per_gpu_limits(self, node: dict[str, Any], want: dict[str, Any]) -> None:
        problem = self._per_gpu_problem(node, want)
        if problem:
            raise _ApiError(400, problem)

    def _within_per_gpu_limits(self, node: dict[str, Any], want: dict[str, Any]) -> bool:
        return self._per_gpu_problem(node, want) is None

    @staticmethod
    def _consume(node: dict[str, Any], want: dict[str, Any], ports: list[int]) -> dict[str, Any]:
        ar = node["available_resources"]
        for v0, count in want["gpus"].items():
            for g in ar["gpus"]:
                if g["v0Name"] == v0:
                    g["availableCount"] -= count
        ar["vcpu_count"] -= want["vcpu"]
        ar["ram_gb"] -= want["ram"]
        ar["storage_gb"] -= want["storage"]
        ar["available_ports"] = [p for p in ar["available_ports"] if p not in ports]
        return {**want, "ports": list(ports), "hostnode_id": node["id"]}

    def _give_back(self, rec: dict[str, Any]) -> None:
        consumed, rec["_consumed"] = rec["_consumed"], None
        if not consumed:
            return
        node = self.hostnodes.get(consumed["hostnode_id"])
        if node is None:
            return
        ar = node["available_resources"]
        for v0, count in consumed["gpus"].items():
            for g in ar["gpus"]:
                if g["v0Name"] == v0:
                    g["availableCount"] += count
        ar["vcpu_count"] += consumed["vcpu"]
        ar["ram_gb"] += consumed["ram"]
        ar["storage_gb"] += consumed["storage"]
        ar["available_ports"] = sorted(set(ar["available_ports"]) | set(consumed["ports"]))

    @staticmethod
    def _cloud_init_keys(cloud_init: Any) -> list[str]:
        if cloud_init is None:
            return []
        if not isinstance(cloud_init, dict):
            raise _ApiError(400, "cloud_init must be an object")
        keys: list[str] = []
        runcmd = cloud_init.get("runcmd") or []
        if not isinstance(runcmd, list):
            raise _ApiError(400, "cloud_init.runcmd must be a list")
        for entry in runcmd:
            if isinstance(entry, list):
                text = " ".join(str(part) for part in entry)
            elif isinstance(entry, str):
                text = entry
            else:
                raise _ApiError(400, "cloud_init.runcmd entries must be strings or lists")
            if "authorized_keys" in text:
                keys.extend(extract_public_keys(text))
        write_files = cloud_init.get("write_files") or []
        if not isinstance(write_files, list):
            raise _ApiError(400, "cloud_init.write_files must be a list")
        for wf in write_files:
            if not isinstance(wf, dict) or not isinstance(wf.get("path"), str):
                raise _ApiError(400, "cloud_init.write_files entries need a path")
            if "encoding" in wf:
                raise _ApiError(
                    400, "cloud_init.write_files: the 'encoding' field is not supported"
                )
            if wf["path"].rstrip().endswith("authorized_keys"):
                for line in str(wf.get("content") or "").splitlines():
                    line = line.strip()
                    if _KEY_LINE_RE.match(line):
                        keys.append(line)
        return keys

    # --- instances
    def _new_record(
        self,
        *,
        instance_id: str | None,
        name: str,
        image: str,
        node: dict[str, Any] | None,
        resources: dict[str, Any],
        authorized_keys: list[str],
        cloud_init: Any,
        attributes: dict[str, Any],
        consumed: dict[str, Any] | None,
    ) -> dict[str, Any]:
        iid = instance_id or str(uuid.uuid4())
        rec: dict[str, Any] = {
            "id": iid,
            "instance_key": f"tensordock:{iid}",
            "name": name,
            "image": image,
            "status": "starting",
            "hostnode_id": node["id"] if node else None,
            "location_id": node["location_id"] if node else None,
            "resources": copy.deepcopy(resources),
            "authorized_keys": authorized_keys,
            "cloud_init": copy.deepcopy(cloud_init),
            "attributes": attributes,
            "ssh_key": None,
            "ssh_key_id": None,
            "use_dedicated_ip": False,
            "port_forwards": [],
            "rate_hourly": _rate_hourly(node, resources),
            "created_at": self.clock(),
            "ip_address": None,
            "ssh_port": None,
            "backend_started": False,
            "backend_start_count": 0,
            "deleted": False,
            "_phase": "booting",
            "_since": self.clock(),
            "_first_running_at": None,
            "_fixed_status": None,
            "_consumed": consumed,
            "_dead_socket": None,
        }
        self.instances[iid] = rec
        return rec

    def _live(self, instance_id: str) -> dict[str, Any]:
        rec = self.instances.get(instance_id)
        if rec is None or rec["deleted"]:
            raise _ApiError(404, "Instance not found")
        return rec

    def _list_instances(self) -> tuple[int, Any]:
        recs = [r for r in self.instances.values() if not r["deleted"]]
        for r in recs:
            self._refresh(r)
        if self.list_shape == "flat":
            return 200, {
                "data": [
                    {
                        "type": "virtualmachine",
                        "id": r["id"],
                        "name": r["name"],
                        "status": self._cased(r["status"]),
                    }
                    for r in recs
                ]
            }
        item_type = "instance" if self.list_shape == "nested" else "virtualmachine"
        items = [
            {
                "type": item_type,
                "id": r["id"],
                "attributes": {"name": r["name"], "status": self._cased(r["status"])},
            }
            for r in recs
        ]
        if self.list_shape == "nested":
            return 200, {"data": {"attributes": {"instances": items}}}
        if self.list_shape != "documented":
            raise ValueError(f"unknown list_shape {self.list_shape!r}")
        return 200, {"data": {"instances": items}}

    def _get_instance(self, instance_id: str) -> tuple[int, Any]:
        rec = self._live(instance_id)
        status = self._refresh(rec)
        forwards: list[dict[str, int]] = []
        if rec["ssh_port"] is not None:
            forwards.append({"internal_port": 22, "external_port": rec["ssh_port"]})
            forwards.extend(
                {"internal_port": f["internal_port"], "external_port": f["external_port"]}
                for f in rec["port_forwards"]
                if f["internal_port"] != 22
            )
        obj: dict[str, Any] = {
            "type": "virtualmachine",
            "id": rec["id"],
            "name": rec["name"],
            "status": self._cased(status),
            "ipAddress": rec["ip_address"],
            "portForwards": forwards,
            "rateHourly": rec["rate_hourly"],
            "resources": {
                "vcpu_count": rec["resources"]["vcpu_count"],
                "ram_gb": rec["resources"]["ram_gb"],
                "storage_gb": rec["resources"]["storage_gb"],
                "gpus": {
                    v0: {"count": g["count"], "v0Name": v0}
                    for v0, g in rec["resources"]["gpus"].items()
                },
            },
        }
        if rec["location_id"]:
            obj["location_id"] = rec["location_id"]
        if rec["hostnode_id"]:
            obj["hostnode_id"] = rec["hostnode_id"]
        if self.get_shape == "wrapped":
            return 200, {"data": obj}
        return 200, obj

    def _start_instance(self, instance_id: str) -> tuple[int, Any]:
        rec = self._live(instance_id)
        status = self._refresh(rec)
        if status == "running":
            raise _ApiError(409, "Instance is already running")
        if status == "stopping":
            raise _ApiError(409, "Instance must be stopped before it can be started")
        if status != "starting":
            self._set_phase(rec, "booting")
            self._refresh(rec)
        return 200, self._power_reply(rec, "starting")

    def _stop_instance(self, instance_id: str) -> tuple[int, Any]:
        rec = self._live(instance_id)
        status = self._refresh(rec)
        if status in ("stopped", "stoppeddisassociated"):
            raise _ApiError(409, "Instance is already stopped")
        self._set_phase(rec, "stopping")
        self._refresh(rec)
        return 200, self._power_reply(rec, "stopping")

    def _power_reply(self, rec: dict[str, Any], status: str) -> dict[str, Any]:
        return {
            "data": {
                "type": "instance",
                "id": rec["id"],
                "attributes": {"status": self._cased(status)},
            }
        }

    def _delete_instance(self, instance_id: str) -> tuple[int, Any]:
        rec = self._live(instance_id)
        if self.destroy_fail_times > 0:
            self.destroy_fail_times -= 1
            return 500, _err("Internal server error", 500)
        self._backend_stop(rec)
        self._release_dead_port(rec)
        self._give_back(rec)
        rec["deleted"] = True
        rec["_phase"] = "deleted"
        rec["status"] = "deleted"
        rec["deleted_at"] = self.clock()
        return 200, {
            "data": {"type": "success", "attributes": {"message": "Instance deleted successfully"}}
        }

    # --- status machine
    def _boot_for(self, rec: dict[str, Any]) -> dict[str, Any]:
        node = self.hostnodes.get(rec["hostnode_id"] or "")
        boot = {**DEFAULT_BOOT, **self.boot, **((node or {}).get("_boot") or {})}
        if boot["mode"] not in BOOT_MODES:
            raise ValueError(f"unknown boot mode {boot['mode']!r}")
        return boot

    def _set_phase(self, rec: dict[str, Any], phase: str) -> None:
        rec["_phase"] = phase
        rec["_since"] = self.clock()
        rec["_first_running_at"] = None
        if phase in ("stopped", "stopping", "fixed"):
            self._backend_stop(rec)

    def _refresh(self, rec: dict[str, Any]) -> str:
        status = self._compute_status(rec)
        rec["status"] = status
        return status

    def _compute_status(self, rec: dict[str, Any]) -> str:
        phase = rec["_phase"]
        if phase == "deleted":
            return "deleted"
        if phase == "fixed":
            return str(rec["_fixed_status"])
        if phase == "stopped":
            return "stopped"
        now = self.clock()
        boot = self._boot_for(rec)
        if phase == "stopping":
            if now - rec["_since"] >= float(boot.get("stopping_for", 0.0)):
                self._set_phase(rec, "stopped")
                return "stopped"
            return "stopping"
        if phase == "running":
            self._on_running(rec)
            return "running"
        # booting
        if boot["mode"] == "stuck_starting" or now - rec["_since"] < float(boot["running_after"]):
            return "starting"
        if boot["mode"] == "stopped":
            if rec["_first_running_at"] is None:
                rec["_first_running_at"] = now
                self._on_running(rec)
                return "running"
            if now - rec["_first_running_at"] >= float(boot.get("running_for", 0.0)):
                self._set_phase(rec, "stopped")
                return "stopped"
            return "running"
        rec["_phase"] = "running"
        self._on_running(rec)
        return "running"

    def _gpu_facts(self, rec: dict[str, Any]) -> dict[str, Any]:
        gpus = rec["resources"]["gpus"]
        v0 = next(iter(gpus), None)
        storage = rec["resources"]["storage_gb"]
        facts: dict[str, Any] = {
            "name": gpu_display_name(v0) if v0 else None,
            "count": sum(g["count"] for g in gpus.values()),
            "memory_mib": gpu_vram_gb(v0) * 1024 if v0 else 0,
            "driver_version": DEFAULT_DRIVER_VERSION,
            "cuda_version": DEFAULT_CUDA_VERSION,
            "disk_total_gb": storage,
            "disk_free_gb": storage - 10,
        }
        node = self.hostnodes.get(rec["hostnode_id"] or "")
        facts.update((node or {}).get("_real_gpu") or {})
        return facts

    def _on_running(self, rec: dict[str, Any]) -> None:
        if self.ssh_backend is None:
            if rec["_dead_socket"] is None:
                # bound but never listening: connecting to it is refused, and no one else
                # can take the port while we hold it
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.bind(("127.0.0.1", 0))
                rec["_dead_socket"] = sock
                rec["ssh_port"] = int(sock.getsockname()[1])
                rec["ip_address"] = "127.0.0.1"
            return
        if rec["backend_started"]:
            return
        host, port = self.ssh_backend.start(
            rec["instance_key"], list(rec["authorized_keys"]), self._gpu_facts(rec)
        )
        rec["backend_started"] = True
        rec["backend_start_count"] += 1
        rec["ip_address"] = host
        rec["ssh_port"] = int(port)

    def _backend_stop(self, rec: dict[str, Any]) -> None:
        if rec["backend_started"] and self.ssh_backend is not None:
            rec["backend_started"] = False
            self.ssh_backend.stop(rec["instance_key"])

    @staticmethod
    def _release_dead_port(rec: dict[str, Any]) -> None:
        sock, rec["_dead_socket"] = rec["_dead_socket"], None
        if sock is not None:
            sock.close()

    def _cased(self, status: str) -> str:
        if self.status_case == "title":
            return _TITLE_STATUS.get(status.lower(), status)
        if self.status_case != "lower":
            raise ValueError(f"unknown status_case {self.status_case!r}")
        return status


def _rate_hourly(node: dict[str, Any] | None, resources: dict[str, Any]) -> float:
    """USD/h: GPU price x count + per-vCPU-hour x vCPUs + per-GB-hour x RAM and storage."""
    pricing = node["pricing"] if node else DEFAULT_PRICING
    prices = (
        {g["v0Name"]: g["price_per_hr"] for g in node["available_resources"]["gpus"]}
        if node
        else {}
    )
    total = sum(
        prices.get(v0, GPU_CATALOG.get(v0, ("", 0.0))[1]) * g["count"]
        for v0, g in resources["gpus"].items()
    )
    total += pricing["per_vcpu_hr"] * resources["vcpu_count"]
    total += pricing["per_gb_ram_hr"] * resources["ram_gb"]
    total += pricing["per_gb_storage_hr"] * resources["storage_gb"]
    return round(total, 6)


def _dedupe_keys(keys: list[str]) -> list[str]:
    seen: set[tuple[str, ...]] = set()
    out = []
    for key in keys:
        ident = tuple(key.split()[:2])
        if key and ident not in seen:
            seen.add(ident)
            out.append(key)
    return out
