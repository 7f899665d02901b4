"""Vast.ai adapter: offer search, templates and instances over the REST API.

Facts from shared/reference/vastai.md: ``/api/v0`` for most calls, ``/api/v1/instances/``
for the paginated list, Bearer auth, ``gpu_ram``/``cpu_ram`` in MB, ``storage_cost`` per
GB-month, ``dph_total`` already priced for ``allocated_storage``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gpushopper.core.errors import AuthFailed, NotFound, ProviderError, RateLimited
from gpushopper.core.models import Instance, LaunchSpec, Offer, OfferQuery, Template
from gpushopper.providers.base import HttpClient, dumps_query
from gpushopper.providers.common import (
    country_code,
    http_settings,
    integer,
    num,
    require,
    rows_of,
)

if TYPE_CHECKING:
    from gpushopper.state.config import Settings

NAME = "vastai"
LIST_PAGE = 25
MAX_PAGES = 200  # 5000 instances: far past any account this tool serves
MAX_ONSTART = 4096  # args + args_str + onstart, characters (create_instance.yaml)

SORT_ORDER = {
    "price": [["dph_total", "asc"]],
    "reliability": [["reliability", "desc"]],
    "vram": [["gpu_ram", "desc"]],
    "perf-per-dollar": [["dlperf_per_dphtotal", "desc"]],
}

STATUS_MAP = {
    None: "creating",
    "created": "creating",
    "loading": "loading",
    "running": "running",
    "stopped": "stopped",
    "frozen": "stopped",
    "exited": "exited",
    "rebooting": "loading",
    "unknown": "unknown",
    "offline": "unknown",
}


def classify(status: int, body: Any, text: str) -> ProviderError | None:
    """Vast.ai quirks: bad keys often come back as 404 auth_error; daily search quota."""
    if not isinstance(body, dict):
        return None
    code = body.get("error")
    message = body.get("msg") or body.get("message") or code
    if status >= 400 and (code == "auth_error" or message == "Invalid user key"):
        return AuthFailed(
            NAME, f"authentication failed: {message}", status=status, code="auth_error"
        )
    if status == 429 and code == "search_quota_exceeded":
        return RateLimited(
            NAME,
            f"daily search quota exceeded: {message} (resets at UTC midnight)",
            retry_after=float("inf"),
            status=status,
            code=code,
        )
    if 200 <= status < 300 and body.get("success") is False:
        return ProviderError(NAME, str(message or "request failed"), status=status, code=code)
    return None


def next_page_token(token: Any, seen: set[str]) -> str | None:
    """The next ``after_token``, None at the end; a repeated or odd token is an error
    (an endless ``next_token`` cost 1000 requests per pass)."""
    if token is None or token == "":
        return None
    if not isinstance(token, str) or len(token) > 4096:
        raise ProviderError(NAME, f"the instance list sent an invalid next_token {token!r:.60}")
    if token in seen:
        raise ProviderError(NAME, "the instance list repeated a next_token (endless pages)")
    seen.add(token)
    return token


# -- pure translation ------------------------------------------------------------------------
def build_search(query: OfferQuery, limit: int = 200) -> dict[str, Any]:
    """Translate an OfferQuery into the ``POST /bundles/`` body (server-side filters)."""
    q: dict[str, Any] = {"rentable": {"eq": True}, "rented": {"eq": False}}
    if query.min_vram_gb is not None:
        q["gpu_ram"] = {"gte": round(query.min_vram_gb * 1000, 3)}
    if query.num_gpus is not None:
        q["num_gpus"] = {"eq": query.num_gpus}
    if query.max_price is not None:
        q["dph_total"] = {"lte": query.max_price}
    if query.min_reliability is not None:
        q["reliability"] = {"gte": query.min_reliability}
    if query.min_cuda is not None:
        q["cuda_max_good"] = {"gte": query.min_cuda}
    disk_floor = max(query.disk_gb or 0, query.min_disk_gb or 0)
    if disk_floor:
        q["disk_space"] = {"gte": disk_floor}
    if query.countries:
        q["geolocation"] = {"in": sorted({c.upper() for c in query.countries})}
    if query.verified:
        q["verified"] = {"eq": True}
    q["order"] = SORT_ORDER.get(query.sort, SORT_ORDER["price"])
    q["type"] = "on-demand"
    q["allocated_storage"] = float(query.disk_gb)
    q["limit"] = limit
    return q


def parse_offer(raw: dict[str, Any]) -> Offer:
    """One Vast.ai offer (``bundles`` row) as the common Offer; missing fields -> None."""
    gpu_ram_mb = num(raw.get("gpu_ram"))
    cpu_ram_mb = num(raw.get("cpu_ram"))
    price = num(raw.get("dph_total"))
    if price is None:
        base = num(raw.get("dph_base"))
        storage = num(raw.get("storage_total_cost"))
        price = base + storage if base is not None and storage is not None else None
    reliability = num(raw.get("reliability"))
    if reliability is None:
        reliability = num(raw.get("reliability2"))
    verification = raw.get("verification")
    verified: bool | None
    if isinstance(verification, str):
        verified = verification == "verified"
    elif isinstance(raw.get("verified"), bool):
        verified = raw["verified"]
    else:
        verified = None
    dlperf = num(raw.get("dlperf"))
    flops = num(raw.get("total_flops"))
    perf = None
    if price:
        if dlperf is not None:
            perf = round(dlperf / price, 3)
        elif flops is not None:
            perf = round(flops / price, 3)
    geo = raw.get("geolocation")
    cores = num(raw.get("cpu_cores_effective"))
    if cores is None:
        cores = num(raw.get("cpu_cores"))
    driver = raw.get("driver_version")
    return Offer(
        id=f"{NAME}:{raw.get('id')}",
        provider=NAME,
        gpu_name=raw.get("gpu_name") or None,
        num_gpus=integer(raw.get("num_gpus")),
        vram_gb=round(gpu_ram_mb / 1000, 1) if gpu_ram_mb is not None else None,
        price_per_hour=round(price, 6) if price is not None else None,
        reliability=round(reliability, 4) if reliability is not None else None,
        cuda_version=num(raw.get("cuda_max_good")),
        disk_gb=num(raw.get("disk_space")),
        cpu_cores=cores,
        ram_gb=round(cpu_ram_mb / 1000, 1) if cpu_ram_mb is not None else None,
        country=country_code(geo) if isinstance(geo, str) else None,
        location=geo if isinstance(geo, str) and geo else None,
        inet_down_mbps=num(raw.get("inet_down")),
        verified=verified,
        machine_id=str(raw["machine_id"]) if raw.get("machine_id") is not None else None,
        driver_version=str(driver) if driver else None,
        dlperf=dlperf,
        total_flops=flops,
        perf_per_dollar=perf,
        max_disk_gb=num(raw.get("disk_space")),
        extra={"ask_id": raw.get("id"), "host_id": raw.get("host_id")},
    )


def _text(value: Any) -> str | None:
    """A non-empty string from an answer, else None (numbers are text too)."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def parse_template(raw: dict[str, Any]) -> Template:
    extra = raw.get("extra_filters") if isinstance(raw.get("extra_filters"), dict) else {}
    cuda = None
    cuda_filter = extra.get("cuda_max_good") if isinstance(extra, dict) else None
    if isinstance(cuda_filter, dict):
        cuda = num(cuda_filter.get("gte", cuda_filter.get("gt", cuda_filter.get("eq"))))
    image = _text(raw.get("image"))
    if image and _text(raw.get("tag")):
        image = f"{image}:{raw['tag']}"
    return Template(
        id=str(_text(raw.get("hash_id")) or raw.get("id")),
        provider=NAME,
        name=str(raw.get("name") or ""),
        image=image,
        hash_id=_text(raw.get("hash_id")),
        description=_text(raw.get("desc")),
        use_ssh=raw.get("use_ssh") if isinstance(raw.get("use_ssh"), bool) else None,
        runtype=_text(raw.get("runtype")),
        min_cuda=cuda,
        recommended_disk_gb=num(raw.get("recommended_disk_space")),
        requirements=extra or {},
        env=raw.get("env") if isinstance(raw.get("env"), str) else None,
        onstart=raw.get("onstart") if isinstance(raw.get("onstart"), str) else None,
    )


def parse_instance(raw: dict[str, Any]) -> Instance:
    status = raw.get("actual_status")
    endpoints: list[tuple[str, int]] = []
    ports = raw.get("ports") if isinstance(raw.get("ports"), dict) else {}
    direct = ports.get("22/tcp") if ports else None
    if direct and raw.get("public_ipaddr"):
        # Direct SSH when the host exposes 22/tcp (faster than the proxy); tried first.
        try:
            endpoints.append((str(raw["public_ipaddr"]).strip(), int(direct[0]["HostPort"])))
        except (KeyError, IndexError, TypeError, ValueError):
            pass
    proxy_port = integer(raw.get("ssh_port"))
    if raw.get("ssh_host") and proxy_port is not None:
        if "jupyter" in str(raw.get("image_runtype") or ""):
            proxy_port += 1  # the proxy's off-by-one for jupyter runtypes (vast-cli #79)
        proxy = (str(raw["ssh_host"]).strip(), proxy_port)
        if proxy not in endpoints:
            endpoints.append(proxy)
    host, port = endpoints[0] if endpoints else (None, None)
    return Instance(
        provider=NAME,
        instance_id=str(raw.get("id")),
        label=raw.get("label"),
        status=STATUS_MAP.get(status, "unknown")
        if isinstance(status, str) or status is None
        else "unknown",
        raw_status=status,
        ssh_host=host,
        ssh_port=port,
        price_per_hour=num(raw.get("dph_total")),
        gpu_name=raw.get("gpu_name"),
        num_gpus=integer(raw.get("num_gpus")),
        started_at=num(raw.get("start_date")),
        extra={
            "status_msg": raw.get("status_msg"),
            "intended_status": raw.get("intended_status"),
            "ssh_endpoints": endpoints,
        },
    )


def env_from_docker_flags(text: str | None) -> dict[str, str]:
    """A template's Docker-flag env string (``-e A=1 -p 80:80``) as the create ``env`` dict."""
    import shlex

    out: dict[str, str] = {}
    if not text:
        return out
    tokens = shlex.split(text)
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok == "-e" and i + 1 < len(tokens):
            key, _, value = tokens[i + 1].partition("=")
            out[key] = value
            i += 2
        elif tok in ("-p", "-v", "-n", "-h") and i + 1 < len(tokens):
            out[f"{tok} {tokens[i + 1]}"] = "1"
            i += 2
        else:
            i += 1
    return out


# -- the client ------------------------------------------------------------------------------
class VastAI:
    """Vast.ai over HTTP. Construct with :meth:`from_settings`."""

    NAME = NAME

    def __init__(
        self,
        api_key: str,
        api_url: str = "https://console.vast.ai",
        *,
        ssh_user: str = "root",
        max_price: float | None = None,
        timeout: float = 30.0,
        retries: int = 4,
        backoff: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.ssh_user = ssh_user
        self.max_price = max_price
        self.http = HttpClient(
            NAME,
            self.api_url,
            headers={"Authorization": f"Bearer {api_key}"},
            secrets=[api_key],
            read_timeout=timeout,
            max_attempts=retries,
            backoff_base=backoff,
            sleep=sleep,
            classify=classify,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> VastAI:
        key = require(
            settings.get("vastai.api_key"),
            NAME,
            "set VASTAI_API_KEY or run 'gpu-shopper config set vastai.api_key -' (reads stdin)",
        )
        return cls(
            key,
            settings.get("vastai.api_url"),
            ssh_user=settings.get("vastai.ssh_user"),
            max_price=settings.get("vastai.max_price"),
            **http_settings(settings),
        )

    @staticmethod
    def _v0(path: str) -> str:
        return path if path.startswith("/api/v") else "/api/v0" + path

    # -- account ----------------------------------------------------------------------------
    def check(self) -> str:
        """One cheap authenticated call (``users/current``)."""
        user = self.http.request("GET", self._v0("/users/current/")) or {}
        if not isinstance(user, dict):
            raise ProviderError(NAME, "users/current answered with a wrong shape")
        who = user.get("username") or user.get("email") or user.get("id") or "?"
        credit = num(user.get("credit"))
        if credit is None:
            credit = num(user.get("balance"))
        money = f", credit ${credit:.2f}" if credit is not None else ""
        return f"authenticated as {who}{money}"

    # -- offers -----------------------------------------------------------------------------
    def search_offers(self, query: OfferQuery, limit: int = 200) -> list[Offer]:
        if self.max_price is not None and (
            query.max_price is None or query.max_price > self.max_price
        ):
            from dataclasses import replace

            query = replace(query, max_price=self.max_price)
        body = build_search(query, limit=limit)
        data = self.http.request("POST", self._v0("/bundles/"), json_body=body, idempotent=True)
        rows = data.get("offers") if isinstance(data, dict) else None
        if not isinstance(rows, list):
            raise ProviderError(NAME, "offer search answered without an 'offers' list")
        return [parse_offer(r) for r in rows if isinstance(r, dict) and r.get("id") is not None]

    def get_offer(self, native_id: str, disk_gb: float) -> Offer | None:
        body = {
            "id": {"eq": int(native_id) if native_id.isdigit() else native_id},
            "allocated_storage": float(disk_gb),
            "type": "on-demand",
            "limit": 1,
        }
        data = self.http.request("POST", self._v0("/bundles/"), json_body=body, idempotent=True)
        for row in rows_of(data, "offers", NAME, "the offer lookup"):
            if str(row.get("id")) == str(native_id):
                return parse_offer(row)
        return None

    # -- templates --------------------------------------------------------------------------
    def list_templates(
        self, name: str | None = None, use_ssh: bool | None = None
    ) -> list[Template]:
        filters: dict[str, Any] = {}
        if use_ssh is not None:
            filters["use_ssh"] = {"eq": use_ssh}
        params = {"select_cols": dumps_query(["*"]), "select_filters": dumps_query(filters)}
        data = self.http.request("GET", self._v0("/template/"), params=params)
        rows = rows_of(data, "templates", NAME, "the template list")
        templates = [parse_template(r) for r in rows]
        if name:
            needle = name.lower()
            templates = [t for t in templates if needle in t.name.lower()]
        return templates

    def get_template(self, ident: str) -> Template | None:
        """A template by hash id, numeric id or exact name (case-insensitive)."""
        attempts: list[dict[str, Any]] = []
        if ident.isdigit():
            attempts.append({"id": {"eq": int(ident)}})
        attempts.append({"hash_id": {"eq": ident}})
        attempts.append({"name": {"eq": ident}})
        for filters in attempts:
            params = {"select_cols": dumps_query(["*"]), "select_filters": dumps_query(filters)}
            try:
                data = self.http.request("GET", self._v0("/template/"), params=params)
            except AuthFailed:
                raise
            except ProviderError:
                continue  # a filter the server does not take: the full list below decides
            for row in rows_of(data, "templates", NAME, "the template search"):
                template = parse_template(row)
                if (
                    ident in (template.hash_id, str(row.get("id")))
                    or template.name.lower() == ident.lower()
                ):
                    return template
        for template in self.list_templates():
            if template.name.lower() == ident.lower():
                return template
        return None

    # -- instances --------------------------------------------------------------------------
    def create_instance(self, spec: LaunchSpec) -> str:
        """Rent the offer. Never retried: on error the caller looks the label up instead."""
        ask_id = spec.offer.extra.get("ask_id") or spec.offer.id.split(":", 1)[1]
        env: dict[str, str] = {}
        if spec.template is not None:
            env.update(env_from_docker_flags(spec.template.env))
        env.update(spec.env)
        onstart = spec.onstart
        own = spec.template.onstart if spec.template is not None else None
        if onstart and own:
            # A request's onstart replaces the template's: run the template's after ours
            # (the deadline snippet backgrounds itself, so it never blocks the template's).
            onstart = f"{onstart.rstrip()}\n{own}"
        if onstart and len(onstart) > MAX_ONSTART:
            raise ProviderError(
                NAME,
                f"onstart is {len(onstart)} characters (the on-instance deadline plus the "
                f"template's own), over Vast.ai's limit of {MAX_ONSTART}",
            )
        body: dict[str, Any] = {
            "client_id": "me",
            "env": env,
            "disk": float(spec.disk_gb),
            "label": spec.label,
            "onstart": onstart,
            "runtype": "ssh_direc ssh_proxy",
            "cancel_unavail": True,
            "target_state": "running",
        }
        if spec.template is not None and spec.template.hash_id:
            body["template_hash_id"] = spec.template.hash_id
        if spec.image:
            body["image"] = spec.image
        elif spec.template is None:
            body["image"] = "vastai/base-image:@vastai-automatic-tag"
        body = {
            k: v for k, v in body.items() if v is not None
        }  # no nulls for the server to trip on
        data = self.http.request(
            "PUT", self._v0(f"/asks/{ask_id}/"), json_body=body, idempotent=False
        )
        contract = data.get("new_contract") if isinstance(data, dict) else None
        if contract is None:
            raise ProviderError(NAME, f"create answered without new_contract: {str(data)[:200]}")
        return str(contract)

    def attach_ssh_key(self, instance_id: str, public_key: str) -> None:
        self.http.request(
            "POST",
            self._v0(f"/instances/{instance_id}/ssh/"),
            json_body={"ssh_key": public_key.strip()},
            idempotent=True,
        )

    def get_instance(self, instance_id: str) -> Instance | None:
        data = self.http.request(
            "GET", self._v0(f"/instances/{instance_id}/"), params={"owner": "me"}
        )
        raw = data.get("instances") if isinstance(data, dict) else None
        if isinstance(raw, list):  # tolerate a list-shaped answer
            raw = raw[0] if raw else None
        return parse_instance(raw) if isinstance(raw, dict) else None

    def list_instances(self) -> list[Instance]:
        """Every instance on the account (``/api/v1/instances/``, 25 a page)."""
        out: list[Instance] = []
        token: str | None = None
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            params: dict[str, Any] = {
                "select_cols": dumps_query(["*"]),
                "order_by": dumps_query([{"col": "id", "dir": "asc"}]),
                "limit": LIST_PAGE,
            }
            if token:
                params["after_token"] = token
            data = self.http.request("GET", "/api/v1/instances/", params=params) or {}
            out.extend(
                parse_instance(r) for r in data.get("instances") or [] if isinstance(r, dict)
            )
            token = next_page_token(data.get("next_token"), seen)
            if token is None:
                return out
        raise ProviderError(
            NAME, f"the instance list did not end after {MAX_PAGES} pages; try again later"
        )

    def destroy_instance(self, instance_id: str) -> None:
        """Destroy (never stop: stopped instances keep billing storage). Gone already is fine."""
        try:
            self.http.request("DELETE", self._v0(f"/instances/{instance_id}/"), json_body={})
        except NotFound:
            return

    def close(self) -> None:
        self.http.close()
