"""Issue 9: generated garbage against every parser of provider answers and every option.

Properties: a parser returns or raises a provider error (never anything else); a command
given garbage exits 0, 1 (provider) or 2 (usage) with exactly one ``Error:`` line and no
traceback; ``--json`` output stays one JSON document. ``RUNS`` counts generated inputs
(printed at the end of the session by ``test_zz_report_generated_input_count``).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpushopper.model.errors import ProviderError

RUNS: Counter[str] = Counter()

# Field names the parsers look at, so garbage lands where it hurts.
FIELDS = [
    "id",
    "gpu_name",
    "gpu_ram",
    "cpu_ram",
    "dph_total",
    "dph_base",
    "storage_total_cost",
    "reliability",
    "reliability2",
    "verification",
    "verified",
    "dlperf",
    "total_flops",
    "geolocation",
    "cpu_cores_effective",
    "cpu_cores",
    "driver_version",
    "machine_id",
    "num_gpus",
    "cuda_max_good",
    "disk_space",
    "inet_down",
    "host_id",
    "actual_status",
    "ports",
    "22/tcp",
    "HostPort",
    "public_ipaddr",
    "ssh_host",
    "ssh_port",
    "image_runtype",
    "label",
    "start_date",
    "status_msg",
    "intended_status",
    "extra_filters",
    "gte",
    "image",
    "tag",
    "hash_id",
    "name",
    "desc",
    "use_ssh",
    "runtype",
    "recommended_disk_space",
    "env",
    "onstart",
    "templates",
    "offers",
    "instances",
    "next_token",
    "data",
    "hostnodes",
    "available_resources",
    "has_public_ip_available",
    "location",
    "uptime_percentage",
    "gpus",
    "v0Name",
    "availableCount",
    "price_per_hr",
    "pricing",
    "per_vcpu_hr",
    "per_gb_ram_hr",
    "per_gb_storage_hr",
    "vcpu_count",
    "ram_gb",
    "storage_gb",
    "max_vcpus",
    "city",
    "country",
    "attributes",
    "status",
    "ipAddress",
    "portForwards",
    "internal_port",
    "external_port",
    "resources",
    "count",
    "rateHourly",
    "hostnode_id",
    "error",
    "msg",
    "message",
    "detail",
    "errors",
    "title",
    "success",
    "location_id",
    "uuid",
    "tier",
    "network_speed_gbps",
    "displayName",
    "max_ram_gb",
    "max_storage_gb",
    "max_vcpus_per_gpu",
    "max_ram_per_gpu",
    "stateprovince",
]

NASTY_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40
) | st.sampled_from(
    [
        "",
        " ",
        "\r\n",
        "127.0.0.1\n  ProxyCommand touch pwned",
        "nan",
        "inf",
        "-1",
        "1e999",
        "<html><title>x</title></html>",
        "running",
        "vastai:1",
        "gpu-shopper:abcd:ef01",
    ]
)
NUMBERS = (
    st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([10**400, -(10**400), 0, 1, 22, 65536])
)
SCALARS = st.none() | st.booleans() | NUMBERS | NASTY_TEXT
JSONISH = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FIELDS) | NASTY_TEXT, inner, max_size=6)
    ),
    max_leaves=25,
)
OBJECTS = st.dictionaries(st.sampled_from(FIELDS), JSONISH, max_size=12)

# Real-looking answers: garbage is grafted at every depth, so deep paths get hit too.
VAST_OFFER = {
    "id": 1000001,
    "gpu_name": "RTX 4090",
    "num_gpus": 1,
    "gpu_ram": 24564,
    "cpu_ram": 64000,
    "dph_total": 0.41,
    "dph_base": 0.4,
    "storage_total_cost": 0.01,
    "reliability": 0.99,
    "verification": "verified",
    "dlperf": 80.1,
    "total_flops": 82.0,
    "geolocation": "California, US",
    "cpu_cores_effective": 16,
    "driver_version": "550.1",
    "machine_id": 7,
    "cuda_max_good": 12.4,
    "disk_space": 200,
    "inet_down": 900,
    "host_id": 3,
}
VAST_TEMPLATE = {
    "id": 5,
    "hash_id": "abc",
    "name": "PyTorch",
    "image": "pytorch/pytorch",
    "tag": "latest",
    "desc": "d",
    "use_ssh": True,
    "runtype": "ssh",
    "recommended_disk_space": 40,
    "extra_filters": {"cuda_max_good": {"gte": 12.1}},
    "env": "-e A=1 -p 80:80",
    "onstart": "echo hi",
}
VAST_INSTANCE = {
    "id": 42,
    "label": "gpu-shopper:abcd1234:ef0123",
    "actual_status": "running",
    "ports": {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": "40022"}]},
    "public_ipaddr": "203.0.113.5",
    "ssh_host": "ssh4.vast.ai",
    "ssh_port": 30022,
    "image_runtype": "ssh",
    "dph_total": 0.4,
    "gpu_name": "RTX 4090",
    "num_gpus": 1,
    "start_date": 1700000000.0,
    "status_msg": "ok",
    "intended_status": "running",
}
TD_HOSTNODES = {
    "data": {
        "hostnodes": [
            {
                "id": "node-1",
                "location_id": "loc",
                "uptime_percentage": 99.5,
                "location": {
                    "city": "X",
                    "stateprovince": "Y",
                    "country": "United States",
                    "network_speed_gbps": 10,
                    "tier": 3,
                    "uuid": "u",
                },
                "pricing": {
                    "per_vcpu_hr": 0.003,
                    "per_gb_ram_hr": 0.002,
                    "per_gb_storage_hr": 0.0001,
                },
                "available_resources": {
                    "has_public_ip_available": True,
                    "vcpu_count": 64,
                    "ram_gb": 256,
                    "storage_gb": 2000,
                    "max_vcpus_per_gpu": 16,
                    "max_ram_per_gpu": 64,
                    "gpus": [
                        {
                            "v0Name": "geforcertx4090-pcie-24gb",
                            "availableCount": 4,
                            "price_per_hr": 0.35,
                            "displayName": "RTX 4090",
                        }
                    ],
                },
            }
        ]
    }
}
TD_INSTANCE = {
    "data": {
        "id": "vm-1",
        "type": "virtualmachine",
        "attributes": {
            "name": "gpu-shopper:abcd1234:ef0123",
            "status": "running",
            "ipAddress": "198.51.100.7",
            "portForwards": [{"internal_port": 22, "external_port": 20022}],
            "resources": {"gpus": {"geforcertx4090-pcie-24gb": {"count": 1}}},
            "rateHourly": 0.5,
            "hostnode_id": "node-1",
        },
    }
}


def shaped(sample: Any) -> st.SearchStrategy[Any]:
    """``sample`` with any subtree possibly replaced by garbage (mostly kept)."""
    if isinstance(sample, dict):
        keep: st.SearchStrategy[Any] = st.fixed_dictionaries(
            {}, optional={k: shaped(v) for k, v in sample.items()}
        )
    elif isinstance(sample, list):
        keep = st.lists(shaped(sample[0]), max_size=3) if sample else st.just([])
    else:
        keep = st.just(sample)
    return st.one_of(keep, keep, keep, JSONISH)


QUICK = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
    derandomize=True,  # the same inputs every run: a red test is reproducible
)


def _parsers() -> dict[str, Any]:
    from gpushopper.model.models import OfferQuery
    from gpushopper.providers import base, common, tensordock, vastai

    query = OfferQuery()
    return {
        # object-taking parsers (their callers hand them dicts)
        "vastai.parse_offer": (vastai.parse_offer, VAST_OFFER),
        "vastai.parse_template": (vastai.parse_template, VAST_TEMPLATE),
        "vastai.parse_instance": (vastai.parse_instance, VAST_INSTANCE),
        "tensordock.parse_instance": (tensordock.parse_instance, TD_INSTANCE),
        "tensordock.plan_resources": (
            lambda d: tensordock.plan_resources(d, 1, 32),
            TD_HOSTNODES["data"]["hostnodes"][0],
        ),
        # whole answers, any shape
        "tensordock.parse_hostnodes": (
            lambda d: tensordock.parse_hostnodes(d, query),
            TD_HOSTNODES,
        ),
        "tensordock.parse_instance_list": (
            tensordock.parse_instance_list,
            {"data": [TD_INSTANCE["data"]]},
        ),
        "vastai.parse_instance_page": (
            lambda d: (
                [vastai.parse_instance(r) for r in d["instances"]]
                if isinstance(d, dict)
                and isinstance(d.get("instances"), list)
                and all(isinstance(r, dict) for r in d["instances"])
                else None
            ),
            {"instances": [VAST_INSTANCE], "next_token": "t"},
        ),
        "vastai.classify": (lambda d: vastai.classify(200, d, ""), False),
        "vastai.classify_4xx": (lambda d: vastai.classify(404, d, ""), False),
        "tensordock.classify": (lambda d: tensordock.classify(200, d, ""), False),
        "base.error_text": (base.error_text, False),
        "common.num": (common.num, False),
        "common.integer": (common.integer, False),
        "common.country_code": (
            lambda d: common.country_code(d) if isinstance(d, str) else None,
            False,
        ),
        "common.rows_of": (lambda d: common.rows_of(d, "templates", "vastai", "x"), False),
        "vastai.next_page_token": (lambda d: vastai.next_page_token(d, set()), False),
    }


PARSERS = _parsers()


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_parsers_survive_garbage(name):
    func, sample = PARSERS[name]
    if sample is False:
        strategy = JSONISH
    elif isinstance(sample, dict) and not name.endswith(("hostnodes", "list", "page")):
        strategy = st.one_of(shaped(sample), OBJECTS).filter(lambda d: isinstance(d, dict))
    else:
        strategy = shaped(sample)

    @QUICK
    @given(strategy)
    def check(data: Any) -> None:
        RUNS[f"parser:{name}"] += 1
        try:
            func(data)
        except ProviderError:
            pass

    check()


# -- provider answers end to end: the emulator sends garbage over real HTTP -----------------
ANSWER_TARGETS = [
    ("GET", r"/template/", "templates --provider vastai --json"),
    ("POST", r"/bundles/", "inventory --provider vastai --json --refresh"),
    ("GET", r"/users/current", "doctor --json"),
    ("POST", r"/bundles/", "inventory show vastai:1000001 --json"),
    ("GET", r"/api/v1/instances", "cleanup-orphans --json"),
]


def _assert_clean(result: Any, allowed: tuple[int, ...], as_json: bool = True) -> None:
    text = result.stdout + result.stderr
    assert result.exit_code in allowed, text
    assert "Traceback" not in text
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) <= 1, result.stderr
    doc = json.loads(result.stdout) if as_json and result.stdout.strip() else None
    failed = isinstance(doc, dict) and "error" in doc
    if failed:
        assert doc["error"]["type"] != "internal", doc
        assert len(errors) == 1, result.stderr
    if result.exit_code in (1, 2) and not isinstance(doc, (dict, list)):
        assert len(errors) == 1, result.stderr  # no report on stdout: the error line says why
    if result.exit_code == 0:
        assert errors == [], result.stderr


def _garbage_reaches(
    emulator: Any, gs: Any, method: str, path: str, command: str, bodies: Any, label: str
) -> None:
    """Every body drawn from ``bodies``, answered with HTTP 200 to ``method path``, ends
    ``command`` cleanly; and at least one of them reached it (a non-zero exit)."""

    @settings(QUICK, max_examples=40)
    @given(bodies)
    def check(body: Any) -> None:
        RUNS[f"answer:{label}{command.split(' --')[0]}"] += 1
        emulator.clear_faults()
        emulator.fail_next(method, path, status=200, body=body, times=50)
        result = gs(command)
        emulator.clear_faults()
        _assert_clean(result, (0, 1, 3))
        codes.add(result.exit_code)

    codes: set[int] = set()
    check()
    assert codes - {0}, "the garbage never reached the command: is the fault path right?"


@pytest.mark.parametrize("method, path, command", ANSWER_TARGETS)
def test_garbage_answers_are_provider_errors_never_crashes(vast, gs, method, path, command):
    _garbage_reaches(vast, gs, method, path, command, JSONISH, "")


TD_TARGETS = [
    (
        "GET",
        r"^/api/v2/hostnodes$",
        "inventory --provider tensordock --json --refresh",
        TD_HOSTNODES,
    ),
    ("GET", r"^/api/v2/instances$", "cleanup-orphans --json", {"data": [TD_INSTANCE["data"]]}),
    ("GET", r"^/api/v2/locations", "doctor --json", {"data": {"locations": [{"id": "x"}]}}),
]


@pytest.mark.parametrize("method, path, command, sample", TD_TARGETS)
def test_garbage_tensordock_answers_are_provider_errors(
    tensordock, gs, monkeypatch, method, path, command, sample
):
    monkeypatch.delenv("VASTAI_API_KEY", raising=False)
    _garbage_reaches(tensordock, gs, method, path, command, shaped(sample), "tensordock ")


# -- every command's options -----------------------------------------------------------------
def _option_cases() -> list[tuple[str, str, bool]]:
    """(command path, option or '<arg:N>', is_flag) for every command in the tree."""
    import click

    from gpushopper.cli import COMMANDS, cli

    ctx = click.Context(cli)
    cases: list[tuple[str, str, bool]] = []
    seen: set[str] = set()

    def walk(path: str, command: click.Command) -> None:
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                if sub is not None:
                    walk(f"{path} {name}".strip(), sub)
            if not command.invoke_without_command:
                return
        if path in seen:
            return
        seen.add(path)
        for param in command.params:
            if isinstance(param, click.Option):
                if param.is_flag or param.name in ("as_json",):
                    continue
                cases.append((path, param.opts[0], False))
            else:
                cases.append((path, f"<arg:{param.name}>", False))

    for name in COMMANDS:
        walk(name, cli.get_command(ctx, name))  # type: ignore[arg-type]
    return cases


OPTION_CASES = _option_cases()
OPTION_EXAMPLES = 20
OPTION_VALUES = st.one_of(
    st.sampled_from(
        [
            "",
            " ",
            "nan",
            "inf",
            "-inf",
            "-1",
            "0",
            "1e9",
            "1e999",
            "-0",
            "x" * 5000,
            "a\nb",
            "\r",
            "--json",
            "-",
            "vastai:",
            "::",
            "../../etc/passwd",
            "1h30",
            "2h",
            "gpu-shopper:x:y",
            "\x1b[31m",
        ]
    ),
    NASTY_TEXT.filter(lambda s: "\x00" not in s),
    NUMBERS.map(str),
)
SAFE_SUFFIX = {"watch": ["--once"], "provision": ["--dry-run"], "cleanup-orphans": []}


def _argv(path: str, target: str, value: str, arguments: list[str]) -> list[str]:
    argv = path.split()
    if target.startswith("<arg:"):
        argv += [value, *arguments[1:]] if arguments else [value]
    else:
        argv += [*arguments, target, value]
    return argv + SAFE_SUFFIX.get(argv[0], []) + ["--json"]


def _placeholder_arguments(path: str) -> list[str]:
    """Plausible positional arguments, so an option's value is what gets tested."""
    return {
        "config get": ["defaults.hours"],
        "config set": ["defaults.disk_gb", "40"],
        "config unset": ["defaults.disk_gb"],
        "inventory show": ["vastai:1000001"],
        "inventory compatible-templates": ["vastai:1000001"],
        "sessions show": ["abc123"],
        "sessions extend": ["abc123"],
        "sessions done": ["abc123"],
        "sessions ssh": ["abc123"],
        "sessions inspect": ["abc123"],
        "shutdown": ["abc123"],
        "templates show": ["x"],
        "transfer upload": ["abc123", "a", "/b"],
        "transfer download": ["abc123", "/a", "b"],
    }.get(path, [])


@pytest.mark.parametrize(
    "path, target, _flag",
    OPTION_CASES,
    ids=lambda v: str(v),
)
def test_garbage_option_values_are_usage_errors_never_crashes(vast, gs, path, target, _flag):
    arguments = _placeholder_arguments(path)

    @settings(QUICK, max_examples=OPTION_EXAMPLES)
    @given(OPTION_VALUES)
    def check(value: str) -> None:
        RUNS[f"option:{path} {target}"] += 1
        result = gs(_argv(path, target, value, arguments))
        _assert_clean(result, (0, 1, 2, 3))

    check()


def test_zz_report_generated_input_count(capsys):
    total = sum(RUNS.values())
    by_kind = Counter()
    for key, count in RUNS.items():
        by_kind[key.split(":", 1)[0]] += count
    with capsys.disabled():
        print(f"\n[property tests] {total} generated inputs: {dict(by_kind)}")
    assert total > 0 or not RUNS
