"""Loopback HTTP emulator of the Vast.ai REST API, for tests and benchmarks.

Follows shared/reference/vastai.md (paths, units, envelopes, error shapes). Stdlib only:
a ``ThreadingHTTPServer`` bound to 127.0.0.1 on an ephemeral port, served from a daemon thread.
Instance state is computed lazily from ``clock()`` at every request (no background threads), so a
fake clock drives the whole lifecycle deterministically.

Quick use::

    with VastEmulator() as emu:
        emu.seed_default_offers()
        requests.post(emu.url + "/api/v0/bundles/", json={...},
                      headers={"Authorization": f"Bearer {emu.api_key}"})

Public surface (see each docstring):

* ``VastEmulator(api_key="vast-test-key", ssh_backend=None, clock=time.monotonic)``
* ``start()`` / ``stop()`` / context manager, ``url`` (base without ``/api/v0``)
* seeding: ``add_offer``, ``seed_default_offers``, ``generate_offers``, ``generate_market``,
  ``add_template``,
  ``create_instance_directly``
* knobs: ``auth_error_status``, ``boot``, ``latency``, ``create_error_after_create``,
  ``destroy_fail_times``, ``default_search_limit``, ``user``, ``log_ready_after`` (404s a
  log URL answers before the log is there), ``log_url_override``
* container logs: ``container_logs[iid]`` (lines the container printed; boot lines are
  added at create); ``PUT /api/v0/instances/request_logs/{id}/`` answers a ``result_url``
  on this server (``/logs/<token>.log``, no auth, like the S3 URL the real one sends)
* faults: ``fail_next``, ``rate_limit_next``, ``clear_faults``
* inspection: ``offers``, ``templates``, ``instances``, ``live_instances()``, ``requests``,
  ``account_keys``, ``backend_errors``, ``refresh()``, ``force_status()``
* the pytest fixture ``vast_emulator`` lives in tests/fakes/fixtures.py
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import random
import re
import secrets
import shlex
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from gpushopper.sandbox.base import LoopbackEmulator, LoopbackHandler, SSHBackend, free_port

__all__ = [
    "DEFAULT_API_KEY",
    "SSHBackend",
    "VastEmulator",
    "marketing_gpu_name",
]

DEFAULT_API_KEY = "vast-test-key"

JSON_CT = "application/json"
AUTH_ERROR_BODY = {"success": False, "error": "auth_error", "msg": "Invalid user key"}
SERVER_ERROR_BODY = {"success": False, "error": "server_error", "msg": "Internal server error"}
RATE_LIMIT_TEXT = "API requests too frequent endpoint threshold=2.0"
DEPRECATED_V0_LIST = {
    "success": False,
    "error": "deprecated_endpoint",
    "msg": "/api/v0/instances/ is deprecated. Use /api/v1/instances/ instead.",
}

FIRST_OFFER_ID = 1000001
FIRST_INSTANCE_ID = 21000001
FIRST_TEMPLATE_ID = 310001
FIRST_SSH_KEY_ID = 500001
USER_ID = 424242

MIN_DISK_GB = 8.0
MAX_CREATE_LABEL = 256
MAX_PUT_LABEL = 1024
MAX_IMAGE_LEN = 1024
MAX_SCRIPT_LEN = 4096
V1_PAGE_MAX = 25

# Fields that only exist in the emulator's bookkeeping: never sent over HTTP.
_HIDDEN_INSTANCE_FIELDS = frozenset({"authorized_keys", "instance_api_key", "destroyed"})
# v1 list: computed columns cannot be filtered on (reference §4.2).
_V1_COMPUTED_COLUMNS = frozenset({"dph_total", "num_gpus"})
_OPS = frozenset({"eq", "neq", "gt", "gte", "lt", "lte", "in", "notin"})
_OFFER_ALIASES = {
    "cuda_vers": "cuda_max_good",
    "dph": "dph_total",
    "dlperf_usd": "dlperf_per_dphtotal",
    "flops_usd": "flops_per_dphtotal",
    "display_active": "gpu_display_active",
    "reliability2": "reliability2",
}
_SEARCH_TYPES = {
    "on-demand": "on-demand",
    "ondemand": "on-demand",
    "on_demand": "on-demand",
    "bid": "bid",
    "interruptible": "bid",
    "reserved": "reserved",
}
_PRICED_KEYS = frozenset(
    {
        "storage_total_cost",
        "dph_total",
        "dlperf_per_dphtotal",
        "flops_per_dphtotal",
        "discounted_dph_total",
        "discounted_hourly",
        "search",
        "instance",
    }
)
_FINAL_STATUS = {"ok": "running", "exited": "exited", "unknown": "unknown", "offline": "offline"}


# --------------------------------------------------------------------------------------------
# Hardware catalogue used for realistic defaults
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _GpuModel:
    name: str  # Vast gpu_name
    smi_name: str  # what nvidia-smi prints
    ram_mb: int  # per GPU, Vast's "MB"
    compute_cap: int
    tflops: float  # per GPU
    dlperf: float  # per GPU
    mem_bw: float  # GB/s
    max_power: float  # W
    price: float  # $/h per GPU, typical


_GPU_MODELS = [
    _GpuModel("RTX 4090", "NVIDIA GeForce RTX 4090", 24564, 890, 82.6, 33.5, 1008.0, 450.0, 0.38),
    _GpuModel("RTX 3090", "NVIDIA GeForce RTX 3090", 24576, 860, 35.6, 21.4, 936.0, 350.0, 0.20),
    _GpuModel("RTX 5090", "NVIDIA GeForce RTX 5090", 32607, 1200, 104.8, 45.0, 1792.0, 575.0, 0.6),
    _GpuModel("RTX 4080", "NVIDIA GeForce RTX 4080", 16376, 890, 48.7, 24.0, 717.0, 320.0, 0.22),
    _GpuModel("RTX 3080", "NVIDIA GeForce RTX 3080", 10240, 860, 29.8, 17.0, 760.0, 320.0, 0.10),
    _GpuModel("RTX A5000", "NVIDIA RTX A5000", 24564, 860, 27.8, 19.0, 768.0, 230.0, 0.22),
    _GpuModel("RTX A6000", "NVIDIA RTX A6000", 49140, 860, 38.7, 26.5, 768.0, 300.0, 0.45),
    _GpuModel("L40S", "NVIDIA L40S", 46068, 890, 91.6, 40.0, 864.0, 350.0, 0.70),
    _GpuModel("A100 SXM4", "NVIDIA A100-SXM4-80GB", 81920, 800, 19.5, 60.0, 2039.0, 400.0, 1.10),
    _GpuModel("A100 PCIE", "NVIDIA A100-PCIE-40GB", 40960, 800, 19.5, 48.0, 1555.0, 250.0, 0.70),
    _GpuModel("H100 SXM", "NVIDIA H100 80GB HBM3", 81559, 900, 66.9, 100.0, 3350.0, 700.0, 2.20),
    _GpuModel("H100 PCIE", "NVIDIA H100 PCIe", 81559, 900, 51.2, 80.0, 2000.0, 350.0, 1.80),
]
# Cards that only the big market mix uses (generate_offers keeps its 12 models and weights).
_MARKET_ONLY_MODELS = [
    _GpuModel("RTX 3060", "NVIDIA GeForce RTX 3060", 12288, 860, 12.7, 9.5, 360.0, 170.0, 0.06),
    _GpuModel("Tesla T4", "Tesla T4", 15360, 750, 8.1, 6.0, 320.0, 70.0, 0.07),
    _GpuModel(
        "RTX 3060 Ti", "NVIDIA GeForce RTX 3060 Ti", 8192, 860, 16.2, 11.0, 448.0, 200.0, 0.08
    ),
    _GpuModel("RTX 4070", "NVIDIA GeForce RTX 4070", 12282, 890, 29.1, 18.0, 504.0, 200.0, 0.14),
    _GpuModel(
        "RTX 4090D", "NVIDIA GeForce RTX 4090 D", 24564, 890, 73.5, 30.0, 1008.0, 425.0, 0.33
    ),
    _GpuModel("H200", "NVIDIA H200", 143771, 900, 66.9, 110.0, 4800.0, 700.0, 3.10),
]
_GPU_CATALOG = {m.name: m for m in _GPU_MODELS + _MARKET_ONLY_MODELS}
# A market shaped like Vast.ai's: cheap consumer cards by the thousand, few big ones.
_MARKET_MIX = {
    "RTX 3060": 22, "Tesla T4": 14, "RTX 3090": 16, "RTX 3060 Ti": 8, "RTX 4070": 6,
    "RTX 3080": 6, "RTX 4080": 4, "RTX 4090": 3, "RTX 4090D": 1, "RTX 5090": 2,
    "RTX A5000": 3, "RTX A6000": 3, "L40S": 2, "A100 PCIE": 2, "A100 SXM4": 2,
    "H100 PCIE": 1, "H100 SXM": 2, "H200": 1,
}  # fmt: skip
_DEFAULT_GPU = _GPU_CATALOG["RTX 4090"]

# (driver, highest CUDA it supports), ascending.
_DRIVERS = [
    ("520.61.05", 11.8),
    ("535.183.01", 12.2),
    ("550.127.05", 12.4),
    ("560.35.03", 12.6),
    ("570.124.04", 12.8),
    ("575.57.08", 12.9),
    ("580.82.07", 13.0),
]

_GEOLOCATIONS = [
    "California, US",
    "Texas, US",
    "Virginia, US",
    "Oregon, US",
    "Quebec, CA",
    "Ontario, CA",
    "Germany, DE",
    "Netherlands, NL",
    "Sweden, SE",
    "Poland, PL",
    "Spain, ES",
    "France, FR",
    "Czechia, CZ",
    "Japan, JP",
    "Hong Kong, HK",
    "Vietnam, VN",
    "Brazil, BR",
    "Taiwan, TW",
]

_CPUS = [
    ("AMD Ryzen 9 7950X 16-Core Processor", 32, 4.5),
    ("AMD EPYC 7763 64-Core Processor", 128, 2.45),
    ("Intel Xeon Gold 6338 CPU @ 2.00GHz", 64, 2.0),
    ("AMD Ryzen Threadripper PRO 5975WX 32-Cores", 64, 3.6),
]


def marketing_gpu_name(gpu_name: str) -> str:
    """Full name nvidia-smi would print for a Vast ``gpu_name`` ("RTX 4090" -> GeForce...)."""
    model = _GPU_CATALOG.get(gpu_name)
    if model is not None:
        return model.smi_name
    if gpu_name.upper().startswith("NVIDIA"):
        return gpu_name
    parts = gpu_name.split()
    if len(parts) >= 2 and parts[0] in ("RTX", "GTX") and parts[1][:1].isdigit():
        return f"NVIDIA GeForce {gpu_name}"
    return f"NVIDIA {gpu_name}"


def _driver_for_cuda(cuda: float) -> str:
    best = _DRIVERS[0][0]
    for drv, top in _DRIVERS:
        if top <= cuda + 1e-9:
            best = drv
    return best


def _driver_int(value: Any) -> int | None:
    """'535.86.05' -> 535086005 (the CLI's encoding); ints and digit strings pass through."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return int(value)
    text = str(value).strip()
    if not text:
        return None
    if "." in text:
        parts = text.split(".")
        if not all(p.isdigit() for p in parts):
            return None
        return int("".join(p.zfill(3) for p in parts))
    return int(text) if text.isdigit() else None


# --------------------------------------------------------------------------------------------
# Query helpers (offer search, v1 instance list, template search)
# --------------------------------------------------------------------------------------------


def _to_num(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _to_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return bool(value)
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
    return None


def _to_str(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.replace("_", " ")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple, set)):
        return list(value)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = [p.strip().strip("'\"") for p in text[1:-1].split(",") if p.strip()]
            return list(parsed) if isinstance(parsed, list) else [parsed]
    return [value]


class _Cond:
    """One ``{op: value}`` condition; coerces the wanted value to the stored value's type."""

    __slots__ = ("op", "raw", "nums", "bools", "strs", "has_none")

    def __init__(self, op: str, value: Any) -> None:
        self.op = op
        vals = _as_list(value) if op in ("in", "notin") else [value]
        self.raw = vals
        self.nums = [_to_num(v) for v in vals]
        self.bools = [_to_bool(v) for v in vals]
        self.strs = [_to_str(v) for v in vals]
        self.has_none = any(v is None for v in vals)

    def test(self, actual: Any) -> bool:
        op = self.op
        if actual is None:
            if op in ("eq", "in"):
                return self.has_none
            if op in ("neq", "notin"):
                return not self.has_none
            return False
        cands: list[Any]
        if isinstance(actual, bool):
            cands = self.bools
        elif isinstance(actual, (int, float)):
            cands = self.nums
        elif isinstance(actual, str):
            cands = self.strs
            actual = actual.replace("_", " ")
        else:
            cands = self.raw
        if op == "eq":
            return cands[0] is not None and actual == cands[0]
        if op == "neq":
            return not (cands[0] is not None and actual == cands[0])
        if op == "in":
            return any(c is not None and actual == c for c in cands)
        if op == "notin":
            return not any(c is not None and actual == c for c in cands)
        want = cands[0]
        if want is None:
            return False
        try:
            if op == "gt":
                return bool(actual > want)
            if op == "gte":
                return bool(actual >= want)
            if op == "lt":
                return bool(actual < want)
            if op == "lte":
                return bool(actual <= want)
        except TypeError:
            return False
        return True


def _country(geo: Any) -> str:
    if not isinstance(geo, str):
        return ""
    return geo.rsplit(",", 1)[-1].strip().upper()


def _geo_test(cond: _Cond, geo: Any) -> bool:
    def hit(want: Any) -> bool:
        if want is None or not isinstance(geo, str):
            return want is None and geo is None
        text = str(want).strip()
        return text == geo or text.upper() == _country(geo)

    if cond.op in ("eq", "in"):
        return any(hit(w) for w in cond.raw)
    if cond.op in ("neq", "notin"):
        return not any(hit(w) for w in cond.raw)
    return True  # ordering ops make no sense on a place name: ignored


def _sort_key(value: Any) -> tuple[int, Any]:
    if isinstance(value, bool):
        return (0, float(value))
    if isinstance(value, (int, float)):
        return (0, float(value))
    if isinstance(value, str):
        return (1, value)
    return (2, json.dumps(value, sort_keys=True, default=str))


def _multi_sort(
    rows: list[Any], keys: list[tuple[str, bool]], get: Callable[[Any, str], Any]
) -> list[Any]:
    """Stable multi-key sort; ``keys`` = [(field, descending)]; None values always last."""
    out = list(rows)
    for fld, desc in reversed(keys):
        present = [r for r in out if get(r, fld) is not None]
        missing = [r for r in out if get(r, fld) is None]

        def key(row: Any, name: str = fld) -> tuple[int, Any]:
            return _sort_key(get(row, name))

        present.sort(key=key, reverse=desc)
        out = present + missing
    return out


def _parse_order_by(raw: Any) -> list[tuple[str, bool]]:
    """Accept [{"col":..,"dir":..}], [[col, dir]], [col] and "col-" forms."""
    if raw is None:
        return []
    if isinstance(raw, (str, dict)):
        raw = [raw]
    if not isinstance(raw, list):
        raise ValueError("order must be a list")
    keys: list[tuple[str, bool]] = []
    for item in raw:
        if isinstance(item, dict):
            col, direction = item.get("col"), str(item.get("dir", "asc"))
        elif isinstance(item, (list, tuple)) and item:
            col = item[0]
            direction = str(item[1]) if len(item) > 1 else "asc"
        elif isinstance(item, str):
            col, direction = item.rstrip("+-"), ("desc" if item.endswith("-") else "asc")
        else:
            raise ValueError(f"bad order item {item!r}")
        if not isinstance(col, str) or not col:
            raise ValueError(f"bad order item {item!r}")
        keys.append((col, direction.strip().lower() in ("desc", "-", "descending")))
    return keys


def _parse_env_string(env: str) -> dict[str, str]:
    """Docker-flag string from a template ("-p 1:2 -e K=V") -> create-style env dict."""
    out: dict[str, str] = {}
    try:
        tokens = shlex.split(env)
    except ValueError:
        tokens = env.split()
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        if tok == "-e" and nxt:
            key, _, val = nxt.partition("=")
            out[key] = val
            i += 2
        elif tok in ("-p", "-v", "-n", "-h") and nxt:
            out[f"{tok} {nxt}"] = "1"
            i += 2
        else:
            i += 1
    return out


def _json_param(query: dict[str, str], name: str) -> Any:
    """Query params are JSON-encoded when not strings (reference §1.1)."""
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _encode_token(offset: int) -> str:
    payload = json.dumps({"o": offset, "v": 1}).encode()
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def _decode_token(token: str) -> int:
    try:
        text = token.strip().strip('"')
        padded = text + "=" * (-len(text) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()).decode())
        offset = data["o"]
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError("invalid token") from exc
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise ValueError("invalid token")
    return offset


def _num_out(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


# --------------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------------


@dataclass
class _Reply:
    status: int
    body: bytes
    content_type: str = JSON_CT
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


def _json_reply(status: int, obj: Any, headers: dict[str, str] | None = None) -> _Reply:
    return _Reply(status, json.dumps(obj).encode(), JSON_CT, dict(headers or {}))


def _error(status: int, error: str, msg: str, **extra: Any) -> _Reply:
    return _json_reply(status, {"success": False, "error": error, "msg": msg, **extra})


@dataclass
class _Fault:
    method: str | None
    pattern: re.Pattern[str] | None
    status: int
    body: Any
    times: int
    retry_after: float | str | None
    delay: float
    malformed: bool

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method not in ("*", method.upper()):
            return False
        return self.pattern is None or self.pattern.search(path) is not None

    def reply(self) -> _Reply:
        headers: dict[str, str] = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(_num_out(float(self.retry_after)))
        if self.malformed:
            return _Reply(200, b'{"success": true, "offers": [{"id": 1,', JSON_CT, headers)
        if isinstance(self.body, str):
            return _Reply(self.status, self.body.encode(), "text/plain", headers)
        if self.body is not None:
            return _json_reply(self.status, self.body, headers)
        if self.status in (502, 503, 504):
            phrase = HTTPStatus(self.status).phrase
            html = f"<html><head><title>{self.status} {phrase}</title></head></html>"
            return _Reply(self.status, html.encode(), "text/html", headers)
        if self.status >= 500:
            return _json_reply(self.status, SERVER_ERROR_BODY, headers)
        try:
            phrase = HTTPStatus(self.status).phrase
        except ValueError:
            phrase = "Error"
        return _json_reply(
            self.status, {"success": False, "error": "injected_fault", "msg": phrase}, headers
        )


class _Handler(LoopbackHandler):
    server_version = "VastEmulator/1.0"
    timeout = 60

    def serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        emulator = self.server.emulator
        assert isinstance(emulator, VastEmulator)
        reply = emulator._handle(method, self.path, headers, raw)
        if reply.delay > 0:  # stop() ends the wait: no handler sleeps past the market
            emulator._stop_event.wait(reply.delay)
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            for key, val in reply.headers.items():
                self.send_header(key, val)
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(reply.body)
        except OSError:  # client went away (e.g. timed out on an injected delay)
            self.close_connection = True


# --------------------------------------------------------------------------------------------
# The emulator
# --------------------------------------------------------------------------------------------


@dataclass
class _InstanceMeta:
    offer_id: int | None
    boot: dict[str, Any]
    real_gpu: dict[str, Any]
    phase_start: float
    ssh_keys: list[dict[str, Any]] = field(default_factory=list)
    stopped: bool = False
    destroyed: bool = False
    backend_started: bool = False
    ssh_up: bool = False
    note: str | None = None  # status_msg override (e.g. why the backend failed)


_Route = tuple[str, "re.Pattern[str]", Callable[..., _Reply]]
_INSTANCE_PATH = re.compile(r"/api/v0/instances/(\d+)")
_LOG_PATH = re.compile(r"/logs/([0-9a-f]{32})\.log")


class VastEmulator(LoopbackEmulator):
    """In-process fake of console.vast.ai. Thread-safe; all state is guarded by ``self.lock``."""

    handler = _Handler
    thread_name = "vast-emulator"

    def __init__(
        self,
        api_key: str = DEFAULT_API_KEY,
        ssh_backend: SSHBackend | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.ssh_backend = ssh_backend
        self.clock = clock

        # knobs
        self.auth_error_status = 401
        self.boot: dict[str, Any] = {"mode": "ok", "loading_after": 0.0, "running_after": 0.0}
        self.latency = 0.0
        self.create_error_after_create = False
        self.destroy_fail_times = 0
        self.default_search_limit: int | None = None
        self.log_ready_after = 1
        self.log_url_override: str | None = None

        # state
        self.container_logs: dict[int, list[str]] = {}
        self._log_files: dict[str, dict[str, Any]] = {}  # token -> {"text", "misses"}
        self.offers: dict[int, dict[str, Any]] = {}
        self.templates: list[dict[str, Any]] = []
        self.instances: dict[int, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.account_keys: list[dict[str, Any]] = []
        self.backend_errors: list[tuple[int, str]] = []
        self.errors: list[str] = []  # unexpected exceptions inside handlers
        self.user: dict[str, Any] = {
            "id": USER_ID,
            "username": "tester",
            "email": "tester@example.com",
            "fullname": "Test User",
            "balance": 0.0,
            "credit": 25.0,
            "can_pay": True,
            "has_billing": True,
            "balance_threshold": 5.0,
            "balance_threshold_enabled": False,
            "billed_expected": 0.0,
            "paid_expected": 0.0,
            "email_verified": True,
            "got_signup_credit": False,
            "host_agreement_accepted": False,
            "ssh_key": None,
            "sid": None,
            "key_id": 77001,
            "billaddress_city": None,
            "billaddress_country": None,
            "billaddress_line1": None,
            "billaddress_line2": None,
            "billaddress_zip": None,
        }

        self._meta: dict[int, _InstanceMeta] = {}
        self._instance_keys: dict[str, int] = {}
        self._offer_boot: dict[int, dict[str, Any]] = {}
        self._offer_real_gpu: dict[int, dict[str, Any]] = {}
        self._faults: list[_Fault] = []
        self._next_offer_id = FIRST_OFFER_ID
        self._next_instance_id = FIRST_INSTANCE_ID
        self._next_template_id = FIRST_TEMPLATE_ID
        self._next_key_id = FIRST_SSH_KEY_ID
        self._epoch_base = time.time() - float(clock())

        self._routes: list[_Route] = self._build_routes()
        self._seed_templates()

    # ---------------------------------------------------------------- lifecycle

    def _release(self) -> None:
        for iid, meta in self._meta.items():  # the containers go away with the platform
            if meta.backend_started:
                self._backend_stop(iid, meta)
            if meta.ssh_up:
                meta.ssh_up = False
                self._clear_ssh(self.instances[iid])

    @property
    def url(self) -> str:
        """Base URL without /api/v0 (the client appends /api/v0/... or /api/v1/...)."""
        return self.base_url

    def epoch_now(self) -> float:
        """Wall-clock epoch seconds that advance with ``clock`` (fake clocks move it too)."""
        return self._epoch_base + float(self.clock())

    # ---------------------------------------------------------------- seeding: offers

    def add_offer(
        self,
        *,
        boot: dict[str, Any] | None = None,
        real_gpu: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """Add one offer with realistic defaults for every §2.3 field; returns the stored dict.

        ``boot`` overrides ``emu.boot`` for instances created from this offer; ``real_gpu``
        overrides the GPU facts handed to the ssh backend (e.g. ``{"cuda_version": "12.8"}``).
        """
        with self.lock:
            offer = self._make_offer(overrides)
            self.offers[offer["id"]] = offer
            if boot is not None:
                self._offer_boot[offer["id"]] = dict(boot)
            if real_gpu is not None:
                self._offer_real_gpu[offer["id"]] = dict(real_gpu)
            return offer

    def _make_offer(self, overrides: dict[str, Any]) -> dict[str, Any]:
        oid = int(overrides.get("id") or self._next_offer_id)
        self._next_offer_id = max(self._next_offer_id, oid + 1)
        seq = oid - FIRST_OFFER_ID
        gpu_name = str(overrides.get("gpu_name", _DEFAULT_GPU.name))
        model = _GPU_CATALOG.get(gpu_name, _DEFAULT_GPU)
        num_gpus = int(overrides.get("num_gpus", 1))
        gpu_ram = overrides.get("gpu_ram", model.ram_mb)
        cuda = overrides.get("cuda_max_good", 12.8)
        cuda_f = _to_num(cuda) or 12.8
        driver = overrides.get("driver_version", _driver_for_cuda(cuda_f))
        cpu_name, cpu_cores, cpu_ghz = _CPUS[seq % len(_CPUS)]
        now = self.epoch_now()
        duration = float(overrides.get("duration", 30 * 86400.0))
        offer: dict[str, Any] = {
            "id": oid,
            "ask_contract_id": oid,
            "bundle_id": 700000000 + seq,
            "bundled_results": 0,
            "machine_id": 40000 + seq,
            "host_id": 90000 + seq // 3,
            "gpu_name": gpu_name,
            "num_gpus": num_gpus,
            "gpu_ram": gpu_ram,
            "gpu_total_ram": None,
            "gpu_frac": 1.0,
            "gpu_mem_bw": model.mem_bw,
            "gpu_max_power": model.max_power,
            "gpu_max_temp": 83.0,
            "gpu_arch": "nvidia",
            "gpu_display_active": False,
            "gpu_ids": list(range(num_gpus)),
            "gpu_lanes": 16,
            "cpu_name": cpu_name,
            "cpu_arch": "amd64",
            "cpu_ghz": cpu_ghz,
            "cpu_cores": cpu_cores,
            "cpu_cores_effective": float(min(cpu_cores, 16 * num_gpus)),
            "cpu_ram": 64400 * num_gpus,
            "disk_space": 250.0,
            "disk_bw": 3200.0,
            "disk_name": "Samsung SSD 980 PRO 2TB",
            "dph_base": round(model.price * num_gpus, 4),
            "dph_total": None,
            "storage_cost": 0.15,
            "storage_total_cost": None,
            "inet_up": 600.0,
            "inet_down": 900.0,
            "inet_up_cost": 0.005,
            "inet_down_cost": 0.005,
            "internet_up_cost_per_tb": None,
            "internet_down_cost_per_tb": None,
            "reliability": 0.995,
            "reliability2": None,
            "reliability_mult": 0.99,
            "expected_reliability": None,
            "dlperf": round(model.dlperf * num_gpus, 2),
            "dlperf_per_dphtotal": None,
            "flops_per_dphtotal": None,
            "total_flops": round(model.tflops * num_gpus, 2),
            "score": None,
            "cuda_max_good": cuda,
            "driver_version": driver,
            "driver_vers": None,
            "compute_cap": model.compute_cap,
            "pci_gen": 4.0,
            "pcie_bw": 25.1,
            "bw_nvlink": 0.0,
            "mobo_name": "ROG STRIX X670E-E",
            "geolocation": "California, US",
            "geolocode": 1840,
            "verification": "verified",
            "static_ip": True,
            "direct_port_count": 100,
            "public_ipaddr": f"203.0.113.{seq % 250 + 1}",
            "min_bid": None,
            "is_bid": False,
            "duration": duration,
            "start_date": now,
            "end_date": None,
            "rentable": True,
            "rented": False,
            "external": False,
            "vms_enabled": False,
            "hosting_type": 0,
            "has_avx": 1,
            "os_version": "22.04",
            "ubuntu_version": "22.04",
            "cluster_id": None,
            "resource_type": "gpu",
            "credit_discount_max": 0.4,
            "discount_rate": 0.0,
            "discounted_dph_total": None,
            "discounted_hourly": None,
            "avail_vol_ask_id": None,
            "avail_vol_dph": None,
            "avail_vol_size": None,
            "search": None,
            "instance": None,
        }
        offer.update(overrides)
        offer["id"] = oid
        # Derived fields, unless given explicitly.
        n = int(offer["num_gpus"] or 1)
        derived: dict[str, Any] = {
            "ask_contract_id": oid,
            "gpu_total_ram": (offer["gpu_ram"] or 0) * n,
            "internet_up_cost_per_tb": round(float(offer["inet_up_cost"]) * 1000, 4),
            "internet_down_cost_per_tb": round(float(offer["inet_down_cost"]) * 1000, 4),
            "reliability2": offer["reliability"],
            "expected_reliability": offer["reliability"],
            "driver_vers": _driver_int(offer["driver_version"]),
            "min_bid": round(float(offer["dph_base"]) * 0.55, 4),
            "end_date": now + float(offer["duration"] or 0),
        }
        for key, val in derived.items():
            if key not in overrides:
                offer[key] = val
        pricing = self._pricing(offer, 8.0)
        for key, val in pricing.items():
            if key not in overrides:
                offer[key] = val
        if "score" not in overrides:
            rel = float(offer["reliability"] or 0)
            offer["score"] = round(float(pricing["dlperf_per_dphtotal"] or 0) * rel**3, 4)
        return offer

    @staticmethod
    def _pricing(offer: dict[str, Any], allocated: float) -> dict[str, Any]:
        """Fields that depend on the allocated storage (GiB) of a search or an instance."""
        storage_cost = float(offer.get("storage_cost") or 0.0)
        dph_base = float(offer.get("dph_base") or 0.0)
        stc = storage_cost * allocated / 720.0
        total = dph_base + stc
        discount = float(offer.get("discount_rate") or 0.0)
        dlperf = offer.get("dlperf")
        flops = offer.get("total_flops")
        breakdown = {
            "gpuCostPerHour": dph_base,
            "diskHour": stc,
            "totalHour": total,
            "discountTotalHour": total * discount,
            "discountedTotalPerHour": total * (1 - discount),
        }
        return {
            "storage_total_cost": stc,
            "dph_total": total,
            "dlperf_per_dphtotal": (float(dlperf) / total) if dlperf and total else 0.0,
            "flops_per_dphtotal": (float(flops) / total) if flops and total else 0.0,
            "discounted_dph_total": total * (1 - discount),
            "discounted_hourly": total * (1 - discount),
            "search": dict(breakdown),
            "instance": dict(breakdown),
        }

    def seed_default_offers(self) -> list[dict[str, Any]]:
        """~10 realistic offers: 3x RTX 4090 (prices/countries), 3090, A6000, A100, H100,
        one unreliable (0.80), one unverified, one CUDA 11.8, one 2-GPU."""
        # gpu_name, num_gpus, dph_base, geolocation, reliability, cuda_max_good, disk GB, extra
        table: list[tuple[str, int, float, str, float, float, float, dict[str, Any]]] = [
            ("RTX 4090", 1, 0.40, "California, US", 0.995, 12.8, 250.0, {}),
            ("RTX 4090", 1, 0.36, "Quebec, CA", 0.990, 12.9, 180.0, {"inet_down": 2000.0}),
            ("RTX 4090", 1, 0.45, "Germany, DE", 0.985, 12.4, 400.0, {}),
            ("RTX 3090", 1, 0.22, "Texas, US", 0.980, 12.6, 120.0, {}),
            ("RTX A6000", 1, 0.48, "Netherlands, NL", 0.992, 12.8, 500.0, {}),
            ("A100 SXM4", 1, 1.15, "Virginia, US", 0.997, 12.6, 800.0, {"cpu_ram": 257000}),
            ("H100 SXM", 1, 2.35, "Oregon, US", 0.999, 12.9, 1000.0, {"cpu_ram": 515000}),
            ("RTX A5000", 1, 0.17, "Poland, PL", 0.80, 12.8, 100.0, {}),
            (
                "RTX 5090", 1, 0.55, "Hong Kong, HK", 0.97, 12.9, 150.0,
                {"verification": "unverified", "static_ip": False, "direct_port_count": 0},
            ),
            ("RTX 3090", 1, 0.15, "Brazil, BR", 0.975, 11.8, 80.0, {}),
            ("RTX 3090", 2, 0.46, "Sweden, SE", 0.990, 12.8, 300.0, {}),
        ]  # fmt: skip
        return [
            self.add_offer(
                gpu_name=gpu,
                num_gpus=num,
                dph_base=price,
                geolocation=geo,
                reliability=rel,
                cuda_max_good=cuda,
                disk_space=disk,
                **extra,
            )
            for gpu, num, price, geo, rel, cuda, disk, extra in table
        ]

    def generate_offers(self, n: int, seed: int = 0) -> list[dict[str, Any]]:
        """Add ``n`` varied offers quickly (deterministic for a given seed)."""
        rng = random.Random(seed)
        weights = [30, 18, 8, 8, 4, 6, 6, 5, 5, 3, 4, 3]
        gpu_counts = [1, 1, 1, 1, 1, 2, 2, 4, 8]
        made: list[dict[str, Any]] = []
        with self.lock:
            for _ in range(n):
                model = rng.choices(_GPU_MODELS, weights=weights)[0]
                num = rng.choice(gpu_counts)
                drv, cuda = rng.choice(_DRIVERS)
                rel = round(rng.triangular(0.7, 0.9995, 0.99), 4)
                verified = rng.random() < 0.8
                overrides: dict[str, Any] = {
                    "gpu_name": model.name,
                    "num_gpus": num,
                    "dph_base": round(model.price * num * rng.uniform(0.65, 1.6), 4),
                    "storage_cost": round(rng.uniform(0.05, 0.4), 4),
                    "geolocation": rng.choice(_GEOLOCATIONS),
                    "reliability": rel,
                    "cuda_max_good": cuda,
                    "driver_version": drv,
                    "verification": "verified"
                    if verified
                    else rng.choice(["unverified", "deverified"]),
                    "disk_space": float(rng.choice([32, 50, 80, 100, 150, 250, 500, 1000, 2000])),
                    "inet_down": round(rng.uniform(50, 5000), 1),
                    "inet_up": round(rng.uniform(20, 3000), 1),
                    "direct_port_count": rng.choice([0, 0, 10, 50, 100, 500]),
                    "static_ip": rng.random() < 0.6,
                    "cpu_ram": int(rng.choice([32000, 64400, 128800, 257000]) * max(1, num // 2)),
                    "duration": float(rng.choice([1, 3, 7, 30, 90, 180]) * 86400),
                }
                offer = self._make_offer(overrides)
                self.offers[offer["id"]] = offer
                made.append(offer)
        return made

    def generate_market(self, n: int = 20_000, seed: int = 10) -> list[dict[str, Any]]:
        """``n`` offers shaped like the real market (thousands of cheap RTX 3060, T4 and
        3090; a few hundred 4090; a handful of H100/H200), reproducible for a seed. Every
        offer is priced, verified or not, placed and rated at random, so any filter set
        both keeps and drops some."""
        rng = random.Random(seed)
        names = list(_MARKET_MIX)
        weights = list(_MARKET_MIX.values())
        counts = [1] * 12 + [2] * 4 + [4] * 2 + [8]
        made: list[dict[str, Any]] = []
        with self.lock:
            for _ in range(n):
                model = _GPU_CATALOG[rng.choices(names, weights=weights)[0]]
                num = rng.choice(counts)
                drv, cuda = rng.choice(_DRIVERS)
                overrides: dict[str, Any] = {
                    "gpu_name": model.name,
                    "num_gpus": num,
                    "gpu_ram": model.ram_mb,
                    "dph_base": round(model.price * num * rng.uniform(0.6, 1.8), 4),
                    "storage_cost": round(rng.uniform(0.05, 0.4), 4),
                    "geolocation": rng.choice(_GEOLOCATIONS),
                    "reliability": round(rng.triangular(0.7, 0.9995, 0.99), 4),
                    "cuda_max_good": cuda,
                    "driver_version": drv,
                    "verification": "verified"
                    if rng.random() < 0.8
                    else rng.choice(["unverified", "deverified"]),
                    "disk_space": float(rng.choice([16, 32, 50, 80, 100, 250, 500, 1000, 2000])),
                    "inet_down": round(rng.uniform(50, 5000), 1),
                    "cpu_ram": int(rng.choice([32000, 64400, 128800]) * max(1, num // 2)),
                }
                offer = self._make_offer(overrides)
                self.offers[offer["id"]] = offer
                made.append(offer)
        return made

    # ---------------------------------------------------------------- seeding: templates

    def _seed_templates(self) -> None:
        self.add_template(
            name="Ostris AI Toolkit",
            image="vastai/ostris-ai-toolkit",
            tag="latest-cuda-12.9",
            env="-p 18675:8675 -e WORKSPACE=/workspace",
            onstart="entrypoint.sh",
            runtype="ssh",
            use_ssh=True,
            ssh_direct=True,
            jup_direct=False,
            use_jupyter_lab=False,
            extra_filters={"cuda_max_good": {"gte": 12.8}},
            recommended_disk_space=32,
            recommended=True,
            desc="Ostris AI Toolkit for FLUX LoRA training",
        )
        self.add_template(
            name="PyTorch (Vast)",
            image="vastai/pytorch",
            tag="2.9.1-cuda-12.9-auto",
            env="-p 1111:1111 -p 8080:8080 -e OPEN_BUTTON_PORT=1111",
            onstart="entrypoint.sh",
            runtype="jupyter",
            use_ssh=True,
            ssh_direct=True,
            jup_direct=True,
            use_jupyter_lab=True,
            extra_filters={"cuda_max_good": {"gte": 12.4}},
            recommended_disk_space=16,
            recommended=True,
            desc="PyTorch with Jupyter and SSH",
        )
        self.add_template(
            name="NVIDIA CUDA",
            image="vastai/base-image",
            tag="cuda-12.8.1-auto",
            env="-p 1111:1111",
            onstart="entrypoint.sh",
            runtype="ssh",
            use_ssh=True,
            ssh_direct=True,
            jup_direct=False,
            use_jupyter_lab=False,
            extra_filters={},
            recommended_disk_space=8,
            recommended=True,
            desc="Vast base image with CUDA",
        )

    def add_template(self, **fields: Any) -> dict[str, Any]:
        """Add a template; ``id`` and a hex ``hash_id`` are generated unless given."""
        with self.lock:
            tid = int(fields.get("id") or self._next_template_id)
            self._next_template_id = max(self._next_template_id, tid + 1)
            name = str(fields.get("name", f"template-{tid}"))
            digest = hashlib.md5(f"{tid}:{name}".encode()).hexdigest()
            tpl: dict[str, Any] = {
                "id": tid,
                "hash_id": digest,
                "name": name,
                "image": "vastai/base-image",
                "tag": "latest",
                "desc": "",
                "readme": "",
                "readme_visible": False,
                "href": "",
                "repo": "",
                "env": "",
                "onstart": "",
                "runtype": "ssh",
                "args_str": "",
                "use_ssh": True,
                "ssh_direct": False,
                "jup_direct": False,
                "jupyter_dir": None,
                "use_jupyter_lab": False,
                "docker_login_repo": None,
                "docker_login_user": None,
                "docker_login_pass": None,
                "extra_filters": {},
                "recommended_disk_space": 8,
                "private": False,
                "volume_info": None,
                "count_created": 1000,
                "creator_id": 525202,
                "created_at": self.epoch_now(),
                "recent_create_date": self.epoch_now(),
                "default_tag": fields.get("tag", "latest"),
                "recommended": False,
            }
            tpl.update(fields)
            tpl["id"] = tid
            self.templates.append(tpl)
            return tpl

    def _template_by_hash(self, hash_id: str) -> dict[str, Any] | None:
        for tpl in self.templates:
            if tpl.get("hash_id") == hash_id:
                return tpl
        return None

    # ---------------------------------------------------------------- faults

    def fail_next(
        self,
        method: str | None,
        path_regex: str | None,
        status: int = 500,
        body: dict[str, Any] | list[Any] | str | None = None,
        times: int = 1,
        retry_after: float | str | None = None,
        delay: float = 0.0,
        malformed: bool = False,
    ) -> None:
        """Answer the next ``times`` requests matching method (None/"*" = any) and
        ``re.search(path_regex, path)`` with this fault instead of serving them (no side
        effects). ``body``: dict/list -> JSON, str -> text/plain, None -> a default error body.
        ``malformed`` sends invalid JSON with status 200; ``delay`` sleeps before answering."""
        with self.lock:
            self._faults.append(
                _Fault(
                    method=method.upper() if method else None,
                    pattern=re.compile(path_regex) if path_regex else None,
                    status=status,
                    body=body,
                    times=times,
                    retry_after=retry_after,
                    delay=delay,
                    malformed=malformed,
                )
            )

    def rate_limit_next(
        self,
        times: int = 1,
        retry_after: float | str | None = None,
        method: str | None = None,
        path_regex: str | None = None,
    ) -> None:
        """The next ``times`` requests (optionally only matching ones) get 429 text/plain."""
        self.fail_next(
            method,
            path_regex,
            status=429,
            body=RATE_LIMIT_TEXT,
            times=times,
            retry_after=retry_after,
        )

    def clear_faults(self) -> None:
        with self.lock:
            self._faults.clear()

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        for fault in self._faults:
            if fault.times > 0 and fault.matches(method, path):
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    # ---------------------------------------------------------------- inspection / control

    def live_instances(self) -> list[dict[str, Any]]:
        """Instances that exist (not destroyed), state refreshed from the clock."""
        with self.lock:
            self._refresh()
            return [self.instances[i] for i, m in self._meta.items() if not m.destroyed]

    def refresh(self) -> None:
        """Recompute every instance's status from ``clock()`` (requests do this themselves)."""
        with self.lock:
            self._refresh()

    def force_status(self, instance_id: int, status: str | None) -> dict[str, Any]:
        """Pin an instance's ``actual_status`` (e.g. "exited" or "offline" mid-run)."""
        with self.lock:
            meta = self._meta[instance_id]
            meta.note = None
            if status == "stopped":
                meta.stopped = True
            else:
                meta.stopped = False
                meta.boot = {"mode": "fixed", "status": status}
            self._refresh()
            return self.instances[instance_id]

    def instance_key_for(self, instance_id: int) -> str:
        return str(self.instances[instance_id]["instance_api_key"])

    def create_instance_directly(
        self,
        label: str | None = None,
        status: str | None = "running",
        offer_id: int | None = None,
        image: str = "vastai/base-image:cuda-12.8.1-auto",
        disk: float = 16.0,
        **fields: Any,
    ) -> dict[str, Any]:
        """An instance that was not created through the API (orphan tests). ``status`` is where
        it sits now: "running" (backend started as usual), "loading" (stuck), "stopped", or any
        other value pinned as-is. ``fields`` override record fields."""
        with self.lock:
            if offer_id is not None:
                offer = self.offers[offer_id]
                offer["rented"] = True
            else:
                offer = self._make_offer({})
            if status == "running":
                boot: dict[str, Any] = {"mode": "ok", "loading_after": 0.0, "running_after": 0.0}
            elif status == "loading":
                boot = {"mode": "stuck_loading", "loading_after": 0.0, "running_after": 0.0}
            elif status == "stopped":
                boot = {"mode": "ok", "loading_after": 0.0, "running_after": 0.0}
            else:
                boot = {"mode": "fixed", "status": status}
            rec = self._new_instance(
                offer,
                offer_id=offer_id,
                image=image,
                runtype="ssh",
                env={},
                label=label,
                onstart=None,
                args=[],
                disk=float(disk),
                template=None,
                is_bid=False,
                boot=boot,
            )
            if status == "stopped":
                self._meta[rec["id"]].stopped = True
            rec.update(fields)
            self._refresh()
            return rec

    # ---------------------------------------------------------------- instance state

    def _compute_status(self, meta: _InstanceMeta) -> str | None:
        if meta.stopped:
            return "stopped"
        boot = meta.boot
        mode = str(boot.get("mode", "ok"))
        if mode == "fixed":
            status = boot.get("status")
            return None if status is None else str(status)
        elapsed = float(self.clock()) - meta.phase_start
        if elapsed < float(boot.get("loading_after", 0.0)):
            return None
        if mode == "stuck_loading":
            return "loading"
        if elapsed < float(boot.get("running_after", 0.0)):
            return "loading"
        return _FINAL_STATUS.get(mode, mode)

    def _refresh(self) -> None:
        for iid, meta in list(self._meta.items()):
            if not meta.destroyed:
                self._apply_status(iid, meta, self._compute_status(meta))

    def _apply_status(self, iid: int, meta: _InstanceMeta, status: str | None) -> None:
        rec = self.instances[iid]
        if status != "running" and meta.ssh_up:
            if meta.backend_started:
                self._backend_stop(iid, meta)
            meta.ssh_up = False
            self._clear_ssh(rec)
        if status == "running" and not meta.ssh_up and not self._bring_up_ssh(iid, rec, meta):
            status = self._compute_status(meta)
        rec["actual_status"] = status
        if status == "stopped":
            rec["intended_status"] = "stopped"
            rec["cur_state"] = "stopped"
            rec["next_state"] = "stopped"
        else:
            rec["intended_status"] = "running"
            rec["cur_state"] = "running"
            rec["next_state"] = "running"
        rec["status_msg"] = meta.note or self._status_msg(rec, status)

    @staticmethod
    def _status_msg(rec: dict[str, Any], status: str | None) -> str | None:
        image = rec.get("image_uuid")
        if status is None:
            return "Creating container"
        if status == "loading":
            return f"Pulling image {image}"
        if status == "running":
            return f"success, running {image}/ssh"
        if status == "exited":
            return "Error: container exited with code 1"
        if status == "stopped":
            return "Instance stopped"
        if status in ("unknown", "offline"):
            return "Host not responding"
        return None

    def _gpu_facts(self, rec: dict[str, Any], meta: _InstanceMeta) -> dict[str, Any]:
        disk = float(rec.get("disk_space") or 0)
        cuda = rec.get("cuda_max_good")
        facts: dict[str, Any] = {
            "name": marketing_gpu_name(str(rec.get("gpu_name"))),
            "count": rec.get("num_gpus"),
            "memory_mib": rec.get("gpu_ram"),
            "driver_version": rec.get("driver_version"),
            "cuda_version": None if cuda is None else str(cuda),
            "disk_total_gb": _num_out(disk),
            "disk_free_gb": _num_out(max(disk - 2, 0.0)),
        }
        facts.update(meta.real_gpu)
        return facts

    def _bring_up_ssh(self, iid: int, rec: dict[str, Any], meta: _InstanceMeta) -> bool:
        if self.ssh_backend is None:
            host, port = "127.0.0.1", free_port()
        else:
            try:
                host, port = self.ssh_backend.start(
                    f"vastai:{iid}", list(rec["authorized_keys"]), self._gpu_facts(rec, meta)
                )
            except Exception as exc:  # backend broke: the container "exits"
                self.backend_errors.append((iid, repr(exc)))
                meta.boot = {"mode": "fixed", "status": "exited"}
                meta.note = f"Error: ssh backend failed to start: {exc}"
                return False
            meta.backend_started = True
        rec["ssh_host"] = host
        rec["ssh_port"] = int(port)
        rec["public_ipaddr"] = host
        rec["ports"] = {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(port)}]}
        # Each "-p EXT:INT" of the env opens INT on a random external port (§ Ports).
        for key, _ in rec.get("env") or []:
            flag, _, mapping = str(key).partition(" ")
            inner = mapping.rpartition(":")[2].partition("/")[0]
            if flag == "-p" and inner.isdigit() and f"{inner}/tcp" not in rec["ports"]:
                outer = 20000 + (iid * 131 + int(inner)) % 40000
                rec["ports"][f"{inner}/tcp"] = [{"HostIp": "0.0.0.0", "HostPort": str(outer)}]
        rec["machine_dir_ssh_port"] = int(port)
        meta.ssh_up = True
        return True

    @staticmethod
    def _clear_ssh(rec: dict[str, Any]) -> None:
        rec["ssh_host"] = None
        rec["ssh_port"] = None
        rec["public_ipaddr"] = None
        rec["ports"] = {}
        rec["machine_dir_ssh_port"] = None

    def _backend_stop(self, iid: int, meta: _InstanceMeta) -> None:
        meta.backend_started = False
        if self.ssh_backend is None:
            return
        try:
            self.ssh_backend.stop(f"vastai:{iid}")
        except Exception as exc:
            self.backend_errors.append((iid, repr(exc)))

    def _backend_set_keys(self, iid: int, meta: _InstanceMeta) -> None:
        if self.ssh_backend is None or not meta.backend_started:
            return
        try:
            self.ssh_backend.set_keys(f"vastai:{iid}", list(self.instances[iid]["authorized_keys"]))
        except Exception as exc:
            self.backend_errors.append((iid, repr(exc)))

    def _new_instance(
        self,
        offer: dict[str, Any],
        *,
        offer_id: int | None,
        image: str,
        runtype: str,
        env: dict[str, Any],
        label: str | None,
        onstart: str | None,
        args: list[Any],
        disk: float,
        template: dict[str, Any] | None,
        is_bid: bool,
        boot: dict[str, Any],
        price: float | None = None,
    ) -> dict[str, Any]:
        iid = self._next_instance_id
        self._next_instance_id += 1
        key = secrets.token_hex(32)
        pairs = [[str(k), "" if v is None else str(v)] for k, v in env.items()]
        pricing = self._pricing(offer, disk)
        now = self.epoch_now()
        meta = _InstanceMeta(
            offer_id=offer_id,
            boot=boot,
            real_gpu=dict(self._offer_real_gpu.get(offer_id, {})) if offer_id else {},
            phase_start=float(self.clock()),
        )
        for acct in self.account_keys:
            meta.ssh_keys.append(self._key_obj(acct["public_key"], iid))
        rec: dict[str, Any] = {
            "id": iid,
            "label": label,
            "machine_id": offer.get("machine_id"),
            "host_id": offer.get("host_id"),
            "bundle_id": offer.get("bundle_id"),
            "image_uuid": image,
            "image_args": list(args),
            "image_runtype": runtype,
            "env": [list(p) for p in pairs],
            "extra_env": [list(p) for p in pairs],
            "onstart": onstart,
            "jupyter_token": secrets.token_hex(32),
            "template_id": template.get("id") if template else None,
            "template_hash_id": template.get("hash_id") if template else None,
            "template_name": template.get("name") if template else None,
            "disk_space": disk,
            "disk_usage": 0.0,
            "disk_util": 0.0,
            "gpu_name": offer.get("gpu_name"),
            "num_gpus": offer.get("num_gpus"),
            "gpu_ram": offer.get("gpu_ram"),
            "gpu_totalram": offer.get("gpu_total_ram"),
            "gpu_frac": offer.get("gpu_frac"),
            "gpu_util": 0.0,
            "gpu_temp": None,
            "gpu_arch": offer.get("gpu_arch"),
            "cpu_name": offer.get("cpu_name"),
            "cpu_cores": offer.get("cpu_cores"),
            "cpu_cores_effective": offer.get("cpu_cores_effective"),
            "cpu_ram": offer.get("cpu_ram"),
            "cpu_util": 0.0,
            "mem_limit": offer.get("cpu_ram"),
            "mem_usage": 0.0,
            "vmem_usage": 0.0,
            "cuda_max_good": offer.get("cuda_max_good"),
            "driver_version": offer.get("driver_version"),
            "compute_cap": offer.get("compute_cap"),
            "dph_base": offer.get("dph_base"),
            "dph_total": pricing["dph_total"],
            "storage_cost": offer.get("storage_cost"),
            "storage_total_cost": pricing["storage_total_cost"],
            "inet_up": offer.get("inet_up"),
            "inet_down": offer.get("inet_down"),
            "inet_up_cost": offer.get("inet_up_cost"),
            "inet_down_cost": offer.get("inet_down_cost"),
            "min_bid": offer.get("min_bid"),
            "is_bid": is_bid,
            "bid_price": price,
            "reliability2": offer.get("reliability2"),
            "geolocation": offer.get("geolocation"),
            "verification": offer.get("verification"),
            "static_ip": offer.get("static_ip"),
            "direct_port_count": offer.get("direct_port_count"),
            "direct_port_start": None,
            "direct_port_end": None,
            "start_date": now,
            "end_date": offer.get("end_date"),
            "duration": offer.get("duration"),
            "uptime_mins": 0,
            "actual_status": None,
            "intended_status": "running",
            "cur_state": "running",
            "next_state": "running",
            "status_msg": None,
            "ssh_host": None,
            "ssh_port": None,
            "ssh_idx": None,
            "machine_dir_ssh_port": None,
            "public_ipaddr": None,
            "local_ipaddrs": "",
            "ports": {},
            "time_remaining": "",
            "time_remaining_isbid": "",
            "credit_balance": None,
            "credit_discount": None,
            "credit_discount_max": offer.get("credit_discount_max"),
            "client_run_time": 0.0,
            "host_run_time": 0.0,
            "volume_info": None,
            "search": pricing["search"],
            "instance": pricing["instance"],
            "authorized_keys": [k["public_key"] for k in meta.ssh_keys],
            "instance_api_key": key,
            "destroyed": False,
        }
        self.instances[iid] = rec
        self._meta[iid] = meta
        self._instance_keys[key] = iid
        self.container_logs[iid] = [
            f"Pulling image {image}",
            "Status: Downloaded newer image",
            f"Starting container C.{iid}",
            f"onstart: {onstart or '(none)'}",
        ]
        return rec

    @staticmethod
    def _public(rec: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in rec.items() if k not in _HIDDEN_INSTANCE_FIELDS}

    def _key_obj(self, public_key: str, instance_id: int | None = None) -> dict[str, Any]:
        kid = self._next_key_id
        self._next_key_id += 1
        obj: dict[str, Any] = {
            "id": kid,
            "user_id": USER_ID,
            "key": public_key,
            "public_key": public_key,
            "created_at": self.epoch_now(),
            "deleted_at": None,
        }
        if instance_id is not None:
            obj["instance_id"] = instance_id
        return obj

    # ---------------------------------------------------------------- request handling

    def _auth(self, method: str, norm: str, token: str | None) -> bool:
        if token is None:
            return False
        if secrets.compare_digest(token.encode(), self.api_key.encode()):
            return True
        iid = self._instance_keys.get(token)
        if iid is None or method not in ("GET", "PUT", "DELETE"):
            return False
        match = _INSTANCE_PATH.fullmatch(norm)
        return match is not None and int(match.group(1)) == iid

    def _handle(self, method: str, raw_path: str, headers: dict[str, str], raw: bytes) -> _Reply:
        if self.latency > 0:
            self._stop_event.wait(self.latency)
        split = urlsplit(raw_path)
        path = split.path or "/"
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        norm = re.sub(r"/+", "/", path).rstrip("/") or "/"
        body: Any = None
        bad_json = False
        if raw.strip():
            try:
                body = json.loads(raw)
            except ValueError:
                bad_json = True
        auth_header = headers.get("authorization", "")
        log_match = _LOG_PATH.fullmatch(path)
        if method == "GET" and log_match is not None:
            return self._serve_log(log_match.group(1), path, bool(auth_header))
        token: str | None = None
        if auth_header.lower().startswith("bearer "):
            token = auth_header[7:].strip()
        elif "api_key" in query:
            token = query["api_key"]
        with self.lock:
            auth_ok = self._auth(method, norm, token)
            entry: dict[str, Any] = {
                "method": method,
                "path": path,
                "query": dict(query),
                "json": body,
                "auth_ok": auth_ok,
            }
            self.requests.append(entry)
            fault = self._take_fault(method, path)
            if fault is not None:
                reply = fault.reply()
                reply.delay = fault.delay
                entry["fault"] = True
            elif not auth_ok:
                reply = _json_reply(self.auth_error_status, AUTH_ERROR_BODY)
            elif bad_json:
                reply = _error(400, "invalid_request", "Request body is not valid JSON")
            else:
                try:
                    self._refresh()
                    reply = self._route(method, norm, query, body)
                except Exception:
                    tb = traceback.format_exc()
                    self.errors.append(tb)
                    reply = _error(500, "server_error", "Internal server error")
            entry["status"] = reply.status
            return reply

    def _build_routes(self) -> list[_Route]:
        table: list[tuple[str, str, Callable[..., _Reply]]] = [
            ("POST", r"/api/v0/bundles", self._r_search),
            ("GET", r"/api/v0/bundles", self._r_search_legacy),
            ("PUT", r"/api/v0/search/asks", self._r_search_new),
            ("GET", r"/api/v0/template", self._r_templates),
            ("GET", r"/api/v0/users/current", self._r_user),
            ("PUT", r"/api/v0/asks/(\d+)", self._r_create),
            ("GET", r"/api/v1/instances", self._r_list_v1),
            ("GET", r"/api/v0/instances", self._r_list_v0),
            ("GET", r"/api/v0/instances/(\d+)", self._r_show),
            ("PUT", r"/api/v0/instances/(\d+)", self._r_manage),
            ("PUT", r"/api/v0/instances/request_logs/(\d+)", self._r_request_logs),
            ("DELETE", r"/api/v0/instances/(\d+)", self._r_destroy),
            ("GET", r"/api/v0/instances/(\d+)/ssh", self._r_inst_keys),
            ("POST", r"/api/v0/instances/(\d+)/ssh", self._r_attach),
            ("DELETE", r"/api/v0/instances/(\d+)/ssh/(\d+)", self._r_detach),
            ("GET", r"/api/v0/ssh", self._r_keys),
            ("POST", r"/api/v0/ssh", self._r_add_key),
            ("DELETE", r"/api/v0/ssh/(\d+)", self._r_del_key),
        ]
        return [(m, re.compile(p), fn) for m, p, fn in table]

    def _route(self, method: str, norm: str, query: dict[str, str], body: Any) -> _Reply:
        path_known = False
        for route_method, pattern, fn in self._routes:
            match = pattern.fullmatch(norm)
            if match is None:
                continue
            path_known = True
            if route_method == method:
                return fn(*match.groups(), query=query, body=body)
        if path_known:
            return _error(405, "method_not_allowed", f"{method} not allowed on {norm}/")
        return _error(404, "not_found", f"No such endpoint: {norm}/")

    # ---------------------------------------------------------------- offers

    def _r_search(self, *, query: dict[str, str], body: Any) -> _Reply:
        return self._search(body if body is not None else {})

    def _r_search_legacy(self, *, query: dict[str, str], body: Any) -> _Reply:
        q = _json_param(query, "q")
        return self._search(q if q is not None else {})

    def _r_search_new(self, *, query: dict[str, str], body: Any) -> _Reply:
        q = body.get("q", {}) if isinstance(body, dict) else {}
        return self._search(q)

    def _search(self, body: Any) -> _Reply:
        if not isinstance(body, dict):
            return _error(400, "invalid_args", "query must be a JSON object")
        q = dict(body)
        order_raw = q.pop("order", None)
        limit_raw = q.pop("limit", None)
        type_raw = q.pop("type", None)
        alloc_raw = q.pop("allocated_storage", None)
        q.pop("disable_bundling", None)
        alloc = 8.0 if alloc_raw is None else _to_num(alloc_raw)
        if alloc is None or alloc < 0:
            return _error(400, "invalid_args", f"invalid allocated_storage {alloc_raw!r}")
        limit: int | None = self.default_search_limit
        if limit_raw is not None:
            lim = _to_num(limit_raw)
            if lim is None:
                return _error(400, "invalid_args", f"invalid limit {limit_raw!r}")
            limit = int(lim)
        if type_raw is not None and str(type_raw).lower() not in _SEARCH_TYPES:
            return _error(400, "invalid_args", f"invalid type {type_raw!r}")
        try:
            order = [(_OFFER_ALIASES.get(f, f), d) for f, d in _parse_order_by(order_raw)]
        except ValueError as exc:
            return _error(400, "invalid_args", str(exc))
        if not order:
            order = [("score", True)]

        conds: list[tuple[str, _Cond]] = []
        for fld, spec in q.items():
            if not isinstance(spec, dict):
                continue  # the live API silently drops malformed filters
            name = _OFFER_ALIASES.get(fld, fld)
            for op, val in spec.items():
                if op in _OPS:
                    conds.append((name, _Cond(op, val)))
        if not any(name == "rentable" for name, _ in conds):
            conds.append(("rentable", _Cond("eq", True)))

        sample = next(iter(self.offers.values()), {})
        known = set(sample) | _PRICED_KEYS | {"verified"}
        compiled: list[tuple[str, _Cond]] = []
        for name, cond in conds:
            if name not in known:
                continue  # unknown fields are ignored
            if name == "driver_version":  # the CLI sends 535.86.05 as the int 535086005
                want = [_driver_int(v) for v in cond.raw]
                cond = _Cond(cond.op, want if cond.op in ("in", "notin") else want[0])
            compiled.append((name, cond))
        need_price = any(n in _PRICED_KEYS for n, _ in compiled) or any(
            f in _PRICED_KEYS for f, _ in order
        )

        hits: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for offer in self.offers.values():
            if offer.get("rented"):
                continue
            priced = self._pricing(offer, alloc) if need_price else {}
            if all(self._offer_cond(offer, priced, n, c) for n, c in compiled):
                hits.append((offer, priced))

        hits = _multi_sort(
            hits, order, lambda pair, f: pair[1][f] if f in pair[1] else pair[0].get(f)
        )
        if limit is not None and limit >= 0:
            hits = hits[:limit]
        out = [{**offer, **(priced or self._pricing(offer, alloc))} for offer, priced in hits]
        return _json_reply(200, {"offers": out})

    @staticmethod
    def _offer_cond(offer: dict[str, Any], priced: dict[str, Any], name: str, cond: _Cond) -> bool:
        if name == "verified":
            return cond.test(offer.get("verification") == "verified")
        if name == "geolocation":
            return _geo_test(cond, offer.get("geolocation"))
        if name == "driver_version":
            return cond.test(_driver_int(offer.get("driver_version")))
        value = priced[name] if name in priced else offer.get(name)
        return cond.test(value)

    # ---------------------------------------------------------------- templates / user

    def _r_templates(self, *, query: dict[str, str], body: Any) -> _Reply:
        filters = _json_param(query, "select_filters") or {}
        if not isinstance(filters, dict):
            return _error(400, "invalid_request", "select_filters must be a JSON object")
        try:
            order = _parse_order_by(_json_param(query, "order_by"))
        except ValueError as exc:
            return _error(400, "invalid_request", str(exc))
        cols = _json_param(query, "select_cols")
        rows = [t for t in self.templates if self._row_match(t, filters)]
        rows = _multi_sort(rows, order + [("id", False)], lambda r, f: r.get(f))
        out = [self._project(dict(t), cols) for t in rows]
        return _json_reply(200, {"success": True, "templates_found": len(out), "templates": out})

    @staticmethod
    def _row_match(row: dict[str, Any], filters: dict[str, Any]) -> bool:
        for col, spec in filters.items():
            if isinstance(spec, dict):
                for op, val in spec.items():
                    if op in _OPS and not _Cond(op, val).test(row.get(col)):
                        return False
            elif not _Cond("eq", spec).test(row.get(col)):
                return False
        return True

    @staticmethod
    def _project(row: dict[str, Any], cols: Any) -> dict[str, Any]:
        if not cols or cols == "*" or (isinstance(cols, list) and "*" in cols):
            return row
        wanted = [cols] if isinstance(cols, str) else list(cols)
        return {c: row.get(c) for c in ["id", *wanted]}

    def _r_user(self, *, query: dict[str, str], body: Any) -> _Reply:
        user = {k: v for k, v in self.user.items() if k != "api_key"}
        if user.get("ssh_key") is None and self.account_keys:
            user["ssh_key"] = self.account_keys[-1]["public_key"]
        return _json_reply(200, user)

    # ---------------------------------------------------------------- create

    def _r_create(self, ask: str, *, query: dict[str, str], body: Any) -> _Reply:
        ask_id = int(ask)
        if not isinstance(body, dict):
            return _error(400, "invalid_args", "request body must be a JSON object")
        env = body.get("env")
        if env is None:
            env = {}
        if not isinstance(env, dict):
            return _error(400, "invalid_args", "invalid env type: env must be a dict")
        label = body.get("label")
        if label is not None and not isinstance(label, str):
            return _error(400, "invalid_args", "label must be a string")
        if label is not None and len(label) > MAX_CREATE_LABEL:
            return _error(
                400, "invalid_args", f"label too long: {len(label)} > {MAX_CREATE_LABEL} characters"
            )
        onstart = body.get("onstart")
        args = body.get("args") or []
        if not isinstance(args, list):
            args = [args]
        args_str = body.get("args_str") or ""
        script_len = len(str(onstart or "")) + len(str(args_str)) + len(" ".join(map(str, args)))
        if script_len > MAX_SCRIPT_LEN:
            return _error(
                400,
                "invalid_args",
                f"onstart + args too long: {script_len} > {MAX_SCRIPT_LEN} characters",
            )

        template: dict[str, Any] | None = None
        hash_id = body.get("template_hash_id")
        if hash_id:
            template = self._template_by_hash(str(hash_id))
            if template is None:
                return _error(400, "invalid_args", f"template with hash_id {hash_id} not found")

        disk_raw = body.get("disk")
        if disk_raw is None:
            disk_raw = template.get("recommended_disk_space", MIN_DISK_GB) if template else 8.0
        disk = _to_num(disk_raw)
        if disk is None or isinstance(disk_raw, bool):
            return _error(400, "invalid_args", f"invalid disk {disk_raw!r}")
        if disk < MIN_DISK_GB:
            return _error(400, "invalid_args", f"disk must be at least {MIN_DISK_GB:g} GB")

        price = body.get("price")
        if price is not None:
            bid = _to_num(price)
            if bid is None or not 0.001 <= bid <= 128:
                return _error(400, "invalid_price", f"invalid bid price {price!r}")
            price = bid

        image = body.get("image")
        if not image and template is not None:
            tag = template.get("tag")
            image = f"{template['image']}:{tag}" if tag else template["image"]
        if not image:
            return _error(400, "invalid_args", "image or template_hash_id is required")
        if not isinstance(image, str) or len(image) > MAX_IMAGE_LEN:
            return _error(400, "invalid_args", "invalid image")

        merged_env: dict[str, Any] = {}
        if template is not None and template.get("env"):
            tenv = template["env"]
            merged_env.update(_parse_env_string(tenv) if isinstance(tenv, str) else dict(tenv))
        merged_env.update(env)
        if onstart is None and template is not None:
            onstart = template.get("onstart") or None
        runtype = body.get("runtype") or (template.get("runtype") if template else None) or "ssh"

        offer = self.offers.get(ask_id)
        if offer is None or offer.get("rented") or not offer.get("rentable", True):
            return _error(
                404,
                "no_such_ask",
                f"error 404/3603: no_such_ask Instance type by id {ask_id} is not available.",
                ask_id=ask_id,
            )
        offer_disk = _to_num(offer.get("disk_space"))
        if offer_disk is not None and disk > offer_disk:
            disk = offer_disk  # the live API silently caps the disk at what the host has
        boot = {**self.boot, **self._offer_boot.get(ask_id, {})}
        offer["rented"] = True
        rec = self._new_instance(
            offer,
            offer_id=ask_id,
            image=image,
            runtype=str(runtype),
            env=merged_env,
            label=label,
            onstart=onstart,
            args=args,
            disk=disk,
            template=template,
            is_bid=price is not None,
            boot=boot,
            price=price,
        )
        meta = self._meta[rec["id"]]
        if body.get("target_state") == "stopped":
            meta.stopped = True
            self._apply_status(rec["id"], meta, "stopped")
        if self.create_error_after_create:
            return _json_reply(500, SERVER_ERROR_BODY)
        return _json_reply(
            200,
            {
                "success": True,
                "new_contract": rec["id"],
                "instance_api_key": rec["instance_api_key"],
            },
        )

    # ---------------------------------------------------------------- list / show

    def _r_list_v0(self, *, query: dict[str, str], body: Any) -> _Reply:
        return _json_reply(410, DEPRECATED_V0_LIST)

    def _r_list_v1(self, *, query: dict[str, str], body: Any) -> _Reply:
        filters = _json_param(query, "select_filters") or {}
        if not isinstance(filters, dict):
            return _error(400, "invalid_request", "select_filters must be a JSON object")
        for col in filters:
            if col in _V1_COMPUTED_COLUMNS:
                return _error(400, "invalid_request", f"cannot filter on computed column {col}")
        try:
            order = _parse_order_by(_json_param(query, "order_by"))
        except ValueError as exc:
            return _error(400, "invalid_request", str(exc))
        if not any(col == "id" for col, _ in order):
            order.append(("id", False))
        limit_raw = _json_param(query, "limit")
        limit = V1_PAGE_MAX
        if limit_raw is not None:
            lim = _to_num(limit_raw)
            if lim is None:
                return _error(400, "invalid_request", f"invalid limit {limit_raw!r}")
            limit = int(lim)
        if limit <= 0:
            limit = 5
        limit = min(limit, V1_PAGE_MAX)
        offset = 0
        token = query.get("after_token")
        if token:
            try:
                offset = _decode_token(token)
            except ValueError:
                return _error(400, "invalid_token", f"Invalid after_token: {token!r}")
        cols = _json_param(query, "select_cols")

        live = [self.instances[i] for i, m in self._meta.items() if not m.destroyed]
        rows = [r for r in live if self._row_match(r, filters)]
        rows = _multi_sort(rows, order, lambda r, f: r.get(f))
        page = rows[offset : offset + limit]
        next_token = _encode_token(offset + limit) if offset + limit < len(rows) else None
        label_counts: dict[str, int] = {}
        for rec in live:
            lbl = rec.get("label")
            if lbl:
                label_counts[lbl] = label_counts.get(lbl, 0) + 1
        return _json_reply(
            200,
            {
                "success": True,
                "instances_found": len(page),
                "total_instances": len(rows),
                "label_counts": label_counts,
                "next_token": next_token,
                "instances": [self._project(self._public(r), cols) for r in page],
            },
        )

    def _live(self, iid: int) -> tuple[dict[str, Any], _InstanceMeta] | None:
        meta = self._meta.get(iid)
        if meta is None or meta.destroyed:
            return None
        return self.instances[iid], meta

    def _r_show(self, iid: str, *, query: dict[str, str], body: Any) -> _Reply:
        found = self._live(int(iid))
        return _json_reply(200, {"instances": self._public(found[0]) if found else None})

    # ---------------------------------------------------------------- manage / destroy

    def _r_manage(self, iid_s: str, *, query: dict[str, str], body: Any) -> _Reply:
        iid = int(iid_s)
        found = self._live(iid)
        if found is None:
            return _error(404, "no_such_instance", f"Instance {iid} not found.")
        rec, meta = found
        body = body if isinstance(body, dict) else {}
        if "label" not in body and "state" not in body:
            return _error(400, "invalid_args", "nothing to change: give label or state")
        msg = None
        if "label" in body:
            label = body["label"]
            if label is not None and not isinstance(label, str):
                return _error(400, "invalid_args", "label must be a string")
            if label is not None and len(label) > MAX_PUT_LABEL:
                return _error(
                    400,
                    "label_too_long",
                    f"label too long: {len(label)} > {MAX_PUT_LABEL} characters",
                )
            rec["label"] = label
            msg = f"label for {iid} set to '{label}'"
        if "state" in body:
            state = body["state"]
            if state == "stopped":
                if not meta.stopped:
                    meta.stopped = True
                    self._apply_status(iid, meta, "stopped")
            elif state == "running":
                if meta.stopped:
                    meta.stopped = False
                    meta.phase_start = float(self.clock())
                    self._apply_status(iid, meta, self._compute_status(meta))
            else:
                return _error(400, "invalid_args", f"invalid state {state!r}")
        out: dict[str, Any] = {"success": True}
        if msg is not None:
            out["msg"] = msg
        return _json_reply(200, out)

    def _r_request_logs(self, iid_s: str, *, query: dict[str, str], body: Any) -> _Reply:
        """Reference: body ``{"tail", "filter", "daemon_logs"}`` (all optional, strings);
        the answer names a URL the log is fetched from with a plain GET once it is ready."""
        iid = int(iid_s)
        if self._live(iid) is None:
            return _error(404, "no_such_instance", f"Instance {iid} not found.")
        body = body if isinstance(body, dict) else {}
        lines = list(self.container_logs.get(iid, []))
        if body.get("daemon_logs") in (True, "true"):
            lines = [f"[daemon] container {iid} managed by vast-agent", *lines]
        wanted = body.get("filter")
        if isinstance(wanted, str) and wanted:
            lines = [line for line in lines if wanted in line]
        tail = _to_num(body.get("tail")) if body.get("tail") is not None else None
        if body.get("tail") is not None and (tail is None or tail < 0):
            return _error(400, "invalid_args", f"invalid tail {body.get('tail')!r}")
        if tail is not None:
            lines = lines[-int(tail) :] if int(tail) else []
        token = secrets.token_hex(16)
        text = "".join(line + "\n" for line in lines)
        self._log_files[token] = {"text": text, "misses": self.log_ready_after}
        url = self.log_url_override or f"{self.url}/logs/{token}.log"
        return _json_reply(
            200, {"success": True, "result_url": url, "msg": "Logs will be available shortly."}
        )

    def _serve_log(self, token: str, path: str, authorization_sent: bool) -> _Reply:
        with self.lock:
            self.requests.append(
                {"method": "GET", "path": path, "authorization_sent": authorization_sent}
            )
            entry = self._log_files.get(token)
            if entry is None:
                return _Reply(404, b"<Error><Code>NoSuchKey</Code></Error>", "application/xml")
            if entry["misses"] > 0:  # not uploaded yet, as S3 answers until it is
                entry["misses"] -= 1
                return _Reply(404, b"<Error><Code>NoSuchKey</Code></Error>", "application/xml")
            return _Reply(200, entry["text"].encode(), "text/plain; charset=utf-8")

    def _r_destroy(self, iid_s: str, *, query: dict[str, str], body: Any) -> _Reply:
        iid = int(iid_s)
        found = self._live(iid)
        if found is None:
            return _error(404, "not_found", f"Instance {iid} not found")
        if self.destroy_fail_times > 0:
            self.destroy_fail_times -= 1
            return _json_reply(500, SERVER_ERROR_BODY)
        rec, meta = found
        if meta.backend_started:
            self._backend_stop(iid, meta)
        meta.ssh_up = False
        meta.destroyed = True
        rec["destroyed"] = True
        rec["cur_state"] = "unloaded"
        rec["intended_status"] = "stopped"
        self._clear_ssh(rec)
        if meta.offer_id is not None and meta.offer_id in self.offers:
            self.offers[meta.offer_id]["rented"] = False  # the machine is for rent again
        return _json_reply(200, {"success": True})

    # ---------------------------------------------------------------- ssh keys

    @staticmethod
    def _valid_pubkey(text: Any) -> bool:
        if not isinstance(text, str):
            return False
        parts = text.strip().split()
        return len(parts) >= 2 and (
            parts[0].startswith("ssh-")
            or parts[0].startswith("ecdsa-")
            or parts[0].startswith("sk-")
        )

    def _r_inst_keys(self, iid_s: str, *, query: dict[str, str], body: Any) -> _Reply:
        found = self._live(int(iid_s))
        if found is None:
            return _error(404, "no_such_instance", f"Instance {iid_s} not found.")
        # The API documents ssh_keys as a JSON-encoded array (a string), not a list.
        return _json_reply(200, {"success": True, "ssh_keys": json.dumps(found[1].ssh_keys)})

    def _r_attach(self, iid_s: str, *, query: dict[str, str], body: Any) -> _Reply:
        iid = int(iid_s)
        found = self._live(iid)
        if found is None:
            return _error(404, "no_such_instance", f"Instance {iid} not found.")
        key = body.get("ssh_key") if isinstance(body, dict) else None
        if not key:
            return _error(400, "no_ssh_key", "ssh_key is required")
        if not self._valid_pubkey(key):
            return _error(400, "invalid_args", "ssh_key is not a valid public key")
        rec, meta = found
        key = key.strip()
        if key not in rec["authorized_keys"]:
            meta.ssh_keys.append(self._key_obj(key, iid))
            rec["authorized_keys"] = [k["public_key"] for k in meta.ssh_keys]
            self._backend_set_keys(iid, meta)
        return _json_reply(200, {"success": True, "msg": "SSH key attached successfully"})

    def _r_detach(self, iid_s: str, kid_s: str, *, query: dict[str, str], body: Any) -> _Reply:
        iid, kid = int(iid_s), int(kid_s)
        found = self._live(iid)
        if found is None:
            return _error(404, "no_such_instance", f"Instance {iid} not found.")
        rec, meta = found
        keep = [k for k in meta.ssh_keys if k["id"] != kid]
        if len(keep) == len(meta.ssh_keys):
            return _error(404, "not_found", f"SSH key {kid} not attached to instance {iid}")
        meta.ssh_keys = keep
        rec["authorized_keys"] = [k["public_key"] for k in keep]
        self._backend_set_keys(iid, meta)
        return _json_reply(200, {"success": True, "msg": "SSH key detached successfully"})

    def _r_keys(self, *, query: dict[str, str], body: Any) -> _Reply:
        return _json_reply(200, [dict(k) for k in self.account_keys])

    def _r_add_key(self, *, query: dict[str, str], body: Any) -> _Reply:
        key = body.get("ssh_key") if isinstance(body, dict) else None
        if not key:
            return _error(400, "no_ssh_key", "ssh_key is required")
        if not self._valid_pubkey(key):
            return _error(400, "invalid_args", "ssh_key is not a valid public key")
        obj = self._key_obj(key.strip())
        self.account_keys.append(obj)
        return _json_reply(200, {"success": True, "key": dict(obj)})

    def _r_del_key(self, kid_s: str, *, query: dict[str, str], body: Any) -> _Reply:
        kid = int(kid_s)
        before = len(self.account_keys)
        self.account_keys = [k for k in self.account_keys if k["id"] != kid]
        if len(self.account_keys) == before:
            return _error(404, "not_found", f"SSH key {kid} not found")
        return _json_reply(200, {"success": True})
