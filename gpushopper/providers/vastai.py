"""Vast.ai adapter: offer search, templates and instances over the REST API.

Facts from shared/reference/vastai.md: ``/api/v0`` for most calls, ``/api/v1/instances/``
for the paginated list, Bearer auth, ``gpu_ram``/``cpu_ram`` in MB, ``storage_cost`` per
GB-month, ``dph_total`` already priced for ``allocated_storage``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gpushopper.model.errors import AuthFailed, NotFound, ProviderError, RateLimited, Unavailable
from gpushopper.model.jsontypes import JSONObject, JSONValue
from gpushopper.model.models import (
    Instance,
    LaunchSpec,
    Offer,
    OfferQuery,
    Template,
    known_gpu,
    primary_key,
    rank_offers,
)
from gpushopper.providers.base import HttpClient, HttpConfig, SettingsReader, dumps_query
from gpushopper.providers.common import (
    ApiCall,
    checked_instance_id,
    country_code,
    integer,
    num,
    rows_of,
)
from gpushopper.providers.registry import offer_id_ok, vastai_config

NAME = "vastai"
# Every call this adapter makes (docs/api-coverage.md is generated from it).
_BOOT = ("provision",)
_ENDS = ("sessions done", "shutdown", "watch", "cleanup-orphans", "provision (a failed boot)")
API_CALLS: tuple[ApiCall, ...] = (
    ApiCall("GET", "/api/v0/users/current/", "check the key; the account's name", ("doctor",)),
    ApiCall(
        "POST",
        "/api/v0/bundles/",
        "search offers with every filter, ordered server-side; look one offer up",
        ("inventory", "provision", "templates catalog"),
        "not in the Postman collection: the search the vastai CLI and console send "
        "(PUT /api/v0/search/asks/ is its twin)",
    ),
    ApiCall("GET", "/api/v0/template/", "search templates; resolve one", ("templates", *_BOOT)),
    ApiCall("PUT", "/api/v0/asks/:id/", "create an instance from an offer", _BOOT),
    ApiCall("POST", "/api/v0/instances/:id/ssh/", "attach the session's SSH key", _BOOT),
    ApiCall(
        "GET",
        "/api/v0/instances/:id/",
        "one instance: status, SSH host and port",
        ("provision", "sessions done", "watch", "cleanup-orphans"),
    ),
    ApiCall(
        "GET",
        "/api/v1/instances/",
        "every instance of the account, paged",
        ("watch", "cleanup-orphans", "sessions done", "provision"),
        "not in the Postman collection: the paged listing (GET /api/v0/instances/ is its "
        "unpaged twin)",
    ),
    ApiCall(
        "DELETE",
        "/api/v0/instances/:id/",
        "destroy an instance (then confirmed gone)",
        _ENDS,
        "also sent from the instance itself by the on-instance deadline",
    ),
    ApiCall(
        "PUT",
        "/api/v0/instances/request_logs/:id/",
        "ask for the container's log (last N lines)",
        ("sessions logs",),
        "answers a result_url; the log is then fetched from it with a plain GET (no key "
        "sent, https only, no redirects, 8 MiB at most), retried until it is ready",
    ),
)
LIST_PAGE = 25
LOG_POLLS = 30  # result_url is fetched until it answers 200: 30 tries, 0.3 s apart (the CLI's)
LOG_POLL_S = 0.3
MAX_LOG_BYTES = 8 << 20
LOG_FETCH_MAX_S = 120.0  # a result_url slow to answer or dripping bytes is cut off
MAX_PAGES = 200  # 5000 instances: far past any account this tool serves
MAX_ONSTART = 4096  # args + args_str + onstart, characters (create_instance.yaml)

# The server orders (and cuts at ``limit``) by the same quantity we rank by; total VRAM
# across the GPUs, like our ``vram`` ranking, is ``gpu_total_ram``.
SORT_ORDER = {
    "price": [["dph_total", "asc"]],
    "reliability": [["reliability", "desc"]],
    "vram": [["gpu_total_ram", "desc"]],
    "perf-per-dollar": [["dlperf_per_dphtotal", "desc"]],
}
# How far our rounded figures may stray from the server's sort value (in our rank units:
# $/h, reliability, GB in total, perf per $; perf also 1e-4 of itself, from the price's
# rounding), so a cut at ``limit`` is judged safely.
SORT_SLACK = {"price": 1e-6, "reliability": 1e-4, "vram": 1.0, "perf-per-dollar": 0.01}
FIRST_PAGE = 1000  # rows asked for first when every match is wanted
MAX_ROWS = 256_000  # stop widening past this many rows (a market far beyond today's)

# Vast.ai's own gpu_name spellings (the marketplace's filter list), plus the bare forms
# some answers use. A loose name the user types is sent as every spelling it means.
GPU_NAMES = (
    "A10", "A100 PCIE", "A100 SXM4", "A100X", "A40", "A800 PCIE", "B200", "GH200 SXM",
    "GTX 1050", "GTX 1050 Ti", "GTX 1060", "GTX 1070", "GTX 1070 Ti", "GTX 1080",
    "GTX 1080 Ti", "GTX 1660", "GTX 1660 S", "GTX 1660 Ti", "H100 NVL", "H100 PCIE",
    "H100 SXM", "H200", "H200 NVL", "L4", "L40", "L40S", "Q RTX 4000", "Q RTX 6000",
    "Q RTX 8000", "RTX 2060", "RTX 2060S", "RTX 2070", "RTX 2070S", "RTX 2080",
    "RTX 2080 Ti", "RTX 2080S", "RTX 3050", "RTX 3060", "RTX 3060 Ti", "RTX 3060 laptop",
    "RTX 3070", "RTX 3070 Ti", "RTX 3070 laptop", "RTX 3080", "RTX 3080 Ti", "RTX 3090",
    "RTX 3090 Ti", "RTX 4060", "RTX 4060 Ti", "RTX 4070", "RTX 4070 Ti", "RTX 4070S",
    "RTX 4070S Ti", "RTX 4080", "RTX 4080S", "RTX 4090", "RTX 4090D", "RTX 5060",
    "RTX 5060 Ti", "RTX 5070", "RTX 5070 Ti", "RTX 5080", "RTX 5090", "RTX 4000Ada",
    "RTX 4500Ada", "RTX 5000Ada", "RTX 5880Ada", "RTX 6000Ada", "RTX A2000", "RTX A4000",
    "RTX A4500", "RTX A5000", "RTX A6000", "RTX PRO 4000", "RTX PRO 4500", "RTX PRO 5000",
    "RTX PRO 6000 S", "RTX PRO 6000 WS", "Tesla K80", "Tesla P100", "Tesla P4",
    "Tesla P40", "Tesla T4", "Tesla V100", "T4", "V100", "P100", "P40", "K80",
    "Titan RTX", "Titan V", "Titan Xp",
)  # fmt: skip


def gpu_names_for(wanted: list[str]) -> list[str]:
    """Every Vast.ai spelling the loose names mean, plus each name as typed (``_`` read as
    a space, as the official CLI does), so a card missing from GPU_NAMES is still asked for."""
    out: set[str] = set()
    for name in wanted:
        out.update(known_gpu(name, GPU_NAMES))
        typed = " ".join(name.replace("_", " ").split())
        if typed:
            out.add(typed)
    return sorted(out)


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


def classify(status: int, body: JSONValue, text: str) -> ProviderError | None:
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


def next_page_token(token: JSONValue, seen: set[str]) -> str | None:
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
def build_search(query: OfferQuery, limit: int = FIRST_PAGE) -> JSONObject:
    """Translate an OfferQuery into the ``POST /bundles/`` body: every filter the server
    applies (reference section 2.2), ordered by the query's sort, at most ``limit`` rows."""
    q: JSONObject = {"rentable": {"eq": True}, "rented": {"eq": False}}
    if query.gpus:
        q["gpu_name"] = {"in": gpu_names_for(query.gpus)}
    if query.min_vram_gb is not None:
        q["gpu_ram"] = {"gte": round(query.min_vram_gb * 1000, 3)}  # MB, as the CLI sends
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


def parse_offer(raw: JSONObject) -> Offer:
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
    return Offer(
        id=f"{NAME}:{raw.get('id')}",
        provider=NAME,
        gpu_name=_text(raw.get("gpu_name")),
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
        machine_id=_text(raw.get("machine_id")),
        driver_version=_text(raw.get("driver_version")),
        dlperf=dlperf,
        total_flops=flops,
        perf_per_dollar=perf,
        max_disk_gb=num(raw.get("disk_space")),
        extra={"ask_id": raw.get("id"), "host_id": raw.get("host_id")},
    )


def _text(value: JSONValue) -> str | None:
    """A non-empty string from an answer, else None (numbers are text too)."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def parse_template(raw: JSONObject) -> Template:
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


def parse_instance(raw: JSONObject) -> Instance:
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
        image=raw.get("image_uuid"),
        disk_gb=num(raw.get("disk_space")),
        ports=_open_ports(ports or {}),
    )


def _open_ports(ports: JSONObject) -> list[JSONObject]:
    """``{"8675/tcp": [{"HostIp": ..., "HostPort": "40321"}]}`` as mappings, SSH's aside
    (Instance drops any that is not two ports and a protocol)."""
    out = []
    for key, binds in ports.items():
        inner, _, protocol = str(key).partition("/")
        if inner == "22" or not isinstance(binds, list) or not binds:
            continue
        first = binds[0] if isinstance(binds[0], dict) else {}
        out.append(
            {
                "internal": integer(inner),
                "external": integer(first.get("HostPort")),
                "protocol": protocol or "tcp",
            }
        )
    return out


def env_from_docker_flags(text: str | None) -> dict[str, str]:
    """A template's Docker-flag env string (``-e A=1 -p 80:80``) as the create ``env`` dict."""
    import shlex

    out: dict[str, str] = {}
    if not text:
        return out
    try:
        tokens = shlex.split(text)
    except ValueError as exc:  # the template's own text: a typed error, never a crash
        raise ProviderError(
            NAME, f"the template's env {text!r:.80} cannot be read: {exc}"
        ) from None
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


def _shape(value: JSONValue) -> str:
    """A short description of an unexpected answer, for error messages."""
    text = "null" if value is None else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- the client ------------------------------------------------------------------------------
@dataclass(frozen=True)
class VastAIConfig:
    """What a Vast.ai client is built from; the registry reads it from the settings
    (``registry.vastai_config``). The key never appears in its repr."""

    api_key: str = field(repr=False)
    api_url: str = "https://console.vast.ai"
    ssh_user: str = "root"
    max_price: float | None = None  # $/h: every search is capped here (vastai.max_price)
    http: HttpConfig = HttpConfig()


class VastAI:
    """Vast.ai over HTTP, built from a :class:`VastAIConfig` (the CLI: :meth:`from_settings`)."""

    NAME = NAME

    def __init__(
        self, config: VastAIConfig, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.api_url = config.api_url.rstrip("/")
        self.ssh_user = config.ssh_user
        self.max_price = config.max_price
        self.http = HttpClient(
            NAME,
            self.api_url,
            headers={"Authorization": f"Bearer {config.api_key}"},
            secrets=[config.api_key],
            read_timeout=config.http.timeout,
            max_attempts=config.http.retries,
            backoff_base=config.http.backoff,
            sleep=sleep,
            classify=classify,
        )

    @classmethod
    def from_settings(cls, settings: SettingsReader) -> VastAI:
        """The client the settings describe (MissingCredentials without a key)."""
        return cls(vastai_config(settings))

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
    def search_offers(self, query: OfferQuery, limit: int | None = None) -> list[Offer]:
        """The ``limit`` best matches for ``query.sort`` (every match when None), best first.

        The server filters, orders and cuts at the number of rows asked for. Rows past the
        last one returned rank no better than it, so the returned offers that rank strictly
        better (less the rounding slack) are complete; while fewer than ``limit`` of them are
        certain, the question is asked again for four times as many rows.
        """
        if self.max_price is not None and (
            query.max_price is None or query.max_price > self.max_price
        ):
            from dataclasses import replace

            query = replace(query, max_price=self.max_price)
        sort = query.sort if query.sort in SORT_ORDER else "price"
        rows_wanted = FIRST_PAGE if limit is None else max(1, limit + max(8, limit // 4))
        while True:
            offers, full = self._search_page(query, rows_wanted)
            if not full or rows_wanted >= MAX_ROWS:
                ranked = rank_offers(offers, sort)
                return ranked if limit is None else ranked[:limit]
            last = primary_key(offers[-1], sort)
            cut = last - SORT_SLACK[sort] - (1e-4 * abs(last) if sort == "perf-per-dollar" else 0)
            certain = rank_offers([o for o in offers if primary_key(o, sort) < cut], sort)
            if limit is not None and len(certain) >= limit:
                return certain[:limit]
            rows_wanted = min(MAX_ROWS, rows_wanted * 4)

    def _search_page(self, query: OfferQuery, rows: int) -> tuple[list[Offer], bool]:
        """One ``POST /bundles/`` for at most ``rows`` rows, in the server's order; and
        whether the answer was full (more may exist)."""
        body = build_search(query, limit=rows)
        data = self.http.request("POST", self._v0("/bundles/"), json_body=body, idempotent=True)
        raw = data.get("offers") if isinstance(data, dict) else None
        if not isinstance(raw, list):
            raise ProviderError(NAME, "offer search answered without an 'offers' list")
        # An offer's id goes into the create's URL (PUT /asks/ID/): one the user could not
        # type ("12/../13", "5#x") is no offer.
        parsed = (parse_offer(r) for r in raw if isinstance(r, dict))
        offers = [o for o in parsed if offer_id_ok(o.id, NAME)]
        return offers, len(raw) >= rows and bool(offers)

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
        filters: JSONObject = {}
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
        attempts: list[JSONObject] = []
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
        body: JSONObject = {
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
        return checked_instance_id(contract, NAME, "the create answer's new_contract")

    def attach_ssh_key(self, instance_id: str, public_key: str) -> None:
        checked_instance_id(instance_id, NAME, "the instance to give a key")
        self.http.request(
            "POST",
            self._v0(f"/instances/{instance_id}/ssh/"),
            json_body={"ssh_key": public_key.strip()},
            idempotent=True,
        )

    def get_instance(self, instance_id: str) -> Instance | None:
        """The instance, or None when Vast.ai answers that it does not exist
        (``{"instances": null}``). Any other shape is an error, never "gone"."""
        checked_instance_id(instance_id, NAME, "the instance to look up")
        data = self.http.request(
            "GET", self._v0(f"/instances/{instance_id}/"), params={"owner": "me"}
        )
        if not isinstance(data, dict) or "instances" not in data:
            raise Unavailable(
                NAME,
                f"instance {instance_id} answered without an 'instances' field: {_shape(data)}",
            )
        raw = data["instances"]
        if isinstance(raw, list):  # tolerate a list-shaped answer
            if len(raw) > 1:
                raise Unavailable(NAME, f"instance {instance_id} answered {len(raw)} instances")
            raw = raw[0] if raw else None
        if raw is None:
            return None
        if not isinstance(raw, dict) or raw.get("id") is None:
            raise Unavailable(NAME, f"instance {instance_id} answered {_shape(raw)}")
        if str(raw["id"]) != str(instance_id):
            raise Unavailable(
                NAME, f"asked for instance {instance_id}, the answer is instance {raw['id']}"
            )
        return parse_instance(raw)

    def list_instances(self) -> list[Instance]:
        """Every instance on the account (``/api/v1/instances/``, 25 a page).

        Believed only when every page is well-formed: a page that is not an object with an
        ``instances`` list of rows that each have an id (``{}``, ``[]``, ``null``, ...) is
        an error, never "no instances" (that once closed every running session)."""
        out: list[Instance] = []
        token: str | None = None
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            params: JSONObject = {
                "select_cols": dumps_query(["*"]),
                "order_by": dumps_query([{"col": "id", "dir": "asc"}]),
                "limit": LIST_PAGE,
            }
            if token:
                params["after_token"] = token
            data = self.http.request("GET", "/api/v1/instances/", params=params)
            rows = data.get("instances") if isinstance(data, dict) else None
            if not isinstance(rows, list):
                raise Unavailable(
                    NAME, f"instance list answered without an 'instances' list: {_shape(data)}"
                )
            for row in rows:
                if not isinstance(row, dict) or row.get("id") in (None, ""):
                    raise Unavailable(NAME, f"instance list has a row without an id: {_shape(row)}")
                checked_instance_id(row["id"], NAME, "an instance list row's id")
                out.append(parse_instance(row))
            found = data.get("instances_found")
            if isinstance(found, int) and not isinstance(found, bool) and found != len(rows):
                raise Unavailable(
                    NAME, f"instance list page says {found} instances but holds {len(rows)}"
                )
            raw_token = data.get("next_token")
            if raw_token is not None and not isinstance(raw_token, str):
                raise Unavailable(NAME, f"instance list has a next_token of {_shape(raw_token)}")
            token = next_page_token(raw_token, seen)
            if token is None:
                return out
        raise ProviderError(
            NAME, f"the instance list did not end after {MAX_PAGES} pages; try again later"
        )

    def destroy_instance(self, instance_id: str) -> None:
        """Destroy (never stop: stopped instances keep billing storage). Gone already is fine."""
        checked_instance_id(instance_id, NAME, "the instance to destroy")
        try:
            self.http.request("DELETE", self._v0(f"/instances/{instance_id}/"), json_body={})
        except NotFound:
            return

    def instance_logs(self, instance_id: str, tail: int | None = None) -> str:
        """The container's log (its last ``tail`` lines), as text. Vast.ai answers the
        request with a ``result_url``; that URL is checked (https, or http on loopback when
        the API itself is on loopback: the emulator), then fetched without the API key."""
        checked_instance_id(instance_id, NAME, "the instance")
        body = {"tail": str(tail)} if tail else {}
        data = self.http.request(
            "PUT",
            self._v0(f"/instances/request_logs/{instance_id}/"),
            json_body=body,
            idempotent=True,
        )
        if not isinstance(data, dict):
            raise ProviderError(NAME, "request_logs answered with a wrong shape (not an object)")
        if data.get("success") is False:
            raise ProviderError(
                NAME, f"request_logs failed: {data.get('msg') or data.get('error')}"
            )
        url = checked_log_url(data.get("result_url"), self.http.base_url)
        return fetch_log(url, self.http.sleep)

    def close(self) -> None:
        self.http.close()


_LOOPBACK = ("localhost", "::1")


def _is_loopback(host: str | None) -> bool:
    import ipaddress

    if not host:
        return False
    if host.lower() in _LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def checked_log_url(value: JSONValue, api_base: str) -> str:
    """The ``result_url`` of request_logs, refused unless it is a plain https URL (or http
    on loopback while the API itself is on loopback: the emulator): no credentials in it,
    no control characters, no other scheme."""
    from urllib.parse import urlsplit

    # Shown without its query: a presigned URL's signature is a credential to the log.
    shown = repr(value.split("?", 1)[0] if isinstance(value, str) else value)[:160]
    if not isinstance(value, str) or not value or len(value) > 2048:
        raise ProviderError(NAME, f"request_logs sent no usable result_url: {shown}")
    if any(ord(c) <= 32 or ord(c) == 127 for c in value):
        raise ProviderError(
            NAME, f"request_logs sent a result_url with spaces or controls: {shown}"
        )
    try:
        parts = urlsplit(value)
        host = parts.hostname
        parts.port  # noqa: B018 - a bad port raises here
    except ValueError:
        raise ProviderError(NAME, f"request_logs sent a malformed result_url: {shown}") from None
    if parts.username is not None or parts.password is not None or not host:
        raise ProviderError(
            NAME, f"request_logs sent a result_url with no host or credentials: {shown}"
        )
    if parts.scheme == "https":
        return value
    if parts.scheme == "http" and _is_loopback(host) and _is_loopback(urlsplit(api_base).hostname):
        return value
    raise ProviderError(NAME, f"request_logs sent a result_url that is not https: {shown}")


def fetch_log(url: str, sleep: Callable[[float], None]) -> str:
    """GET ``url`` (no credentials, no redirects) until it answers 200, at most
    ``LOG_POLLS`` times; the body as text, its last ``MAX_LOG_BYTES`` at most."""
    import requests

    last = "no answer"
    started = time.monotonic()
    with requests.Session() as session:
        session.trust_env = False  # no proxy or netrc credentials travel to a third party
        for attempt in range(LOG_POLLS):
            if attempt:
                # Each try may take its whole read timeout: 30 slow 404s are 15 minutes, so
                # the bound covers the polling too, not only the download.
                if time.monotonic() - started > LOG_FETCH_MAX_S:
                    raise Unavailable(
                        NAME,
                        f"the log was not ready at its result_url within "
                        f"{LOG_FETCH_MAX_S:g}s ({last}); try again later",
                    )
                sleep(LOG_POLL_S)
            try:
                with session.get(url, timeout=(5, 30), stream=True, allow_redirects=False) as reply:
                    if reply.status_code != 200:
                        last = f"HTTP {reply.status_code}"
                        continue
                    kept = bytearray()
                    for chunk in reply.iter_content(1 << 16):
                        if time.monotonic() - started > LOG_FETCH_MAX_S:
                            raise Unavailable(NAME, "the log download took too long; try --tail")
                        kept += chunk
                        if len(kept) > 2 * MAX_LOG_BYTES:
                            del kept[: len(kept) - MAX_LOG_BYTES]
                    return bytes(kept[-MAX_LOG_BYTES:]).decode("utf-8", errors="replace")
            except requests.RequestException as exc:
                last = type(exc).__name__
    raise Unavailable(
        NAME, f"the log was not ready at its result_url after {LOG_POLLS} tries ({last})"
    )
