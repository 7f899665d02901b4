"""TensorDock adapter: hostnodes to offers as a pure function (inline JSON), the price built
from its components, then a few calls over real HTTP to the emulator."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gpushopper.model.errors import AuthFailed, NotFound, ProviderError, RateLimited
from gpushopper.model.models import OfferQuery
from gpushopper.providers.base import HttpConfig
from gpushopper.providers.tensordock import (
    TensorDock,
    TensorDockConfig,
    classify,
    display_name,
    even_down,
    parse_hostnodes,
    plan_resources,
    price_of,
    vram_from_v0name,
)
from gpushopper.sandbox.tensordock import TensorDockEmulator

# A GET /hostnodes answer with one H100 node, priced like the v2 docs' example (§2.1/2.2).
HOSTNODES = json.loads(
    """
{"data": {"hostnodes": [{
  "id": "node-h100", "location_id": "loc-austin", "engine": "kvm",
  "uptime_percentage": 99.9,
  "available_resources": {
    "gpus": [{"v0Name": "h100-sxm5-80gb", "availableCount": 8, "price_per_hr": 2.2}],
    "vcpu_count": 128, "ram_gb": 1024, "storage_gb": 8000,
    "max_vcpus_per_gpu": 16, "max_ram_per_gpu": 64,
    "available_ports": [20000, 20001], "has_public_ip_available": true
  },
  "pricing": {"per_vcpu_hr": 0.003, "per_gb_ram_hr": 0.002, "per_gb_storage_hr": 0.00005},
  "location": {"uuid": "loc-austin", "city": "Austin", "stateprovince": "Texas",
               "country": "United States", "network_speed_gbps": 10, "tier": 4}
}]}}
"""
)


def node(**changes: Any) -> dict[str, Any]:
    """The H100 node with top-level or ``available_resources`` fields changed."""
    raw = json.loads(json.dumps(HOSTNODES["data"]["hostnodes"][0]))
    for key, value in changes.items():
        if key in raw["available_resources"]:
            raw["available_resources"][key] = value
        else:
            raw[key] = value
    return raw


def offers_of(*nodes: dict[str, Any], **query: Any):
    return parse_hostnodes({"data": {"hostnodes": list(nodes)}}, OfferQuery(**query))


# -- pure parsing and arithmetic -----------------------------------------------------------
def test_one_offer_per_node_and_model_in_common_units():
    [offer] = parse_hostnodes(HOSTNODES, OfferQuery(disk_gb=32), vcpus_per_gpu=16, ram_per_gpu=64)
    assert offer.id == "tensordock:node-h100:h100-sxm5-80gb"
    assert offer.provider == "tensordock"
    assert offer.gpu_name == "H100 SXM5"
    assert offer.num_gpus == 1
    assert offer.vram_gb == 80.0
    # the docs' worked example: 2.2 + 16 x 0.003 + 64 x 0.002 + 100 x 0.00005 = 2.381
    assert offer.price_per_hour == pytest.approx(2.381)
    assert offer.reliability == 0.999  # uptime 99.9 %
    assert offer.cuda_version is None  # unknown until boot
    assert offer.verified is None
    assert offer.disk_gb == 8000
    assert (offer.cpu_cores, offer.ram_gb) == (16, 64)
    assert offer.country == "US"
    assert offer.location == "Austin, Texas, United States"
    assert offer.inet_down_mbps == 10000
    assert offer.extra["hostnode_id"] == "node-h100"
    assert offer.extra["v0name"] == "h100-sxm5-80gb"
    assert offer.extra["storage_gb"] == 100


def test_price_is_gpu_times_count_plus_vcpu_ram_and_storage():
    plan = {"vcpu_count": 16, "ram_gb": 64, "storage_gb": 100}
    pricing = {"per_vcpu_hr": 0.003, "per_gb_ram_hr": 0.002, "per_gb_storage_hr": 0.00005}
    assert price_of(2.2, 1, pricing, plan) == pytest.approx(2.381)
    assert price_of(0.4, 2, pricing, plan) == pytest.approx(0.8 + 0.048 + 0.128 + 0.005)
    assert price_of(0.4, 1, {"per_vcpu_hr": 0.003}, plan) is None  # half a price is none


def test_storage_minimum_is_priced_and_larger_disks_cost_more():
    [small] = offers_of(node(), disk_gb=32)
    [big] = offers_of(node(), disk_gb=250)
    assert small.extra["storage_gb"] == 100  # v2 create minimum
    assert big.extra["storage_gb"] == 250
    assert big.price_per_hour - small.price_per_hour == pytest.approx(150 * 0.00005)


def test_vcpus_are_even_and_capped_by_the_host():
    plan = plan_resources(node(max_vcpus_per_gpu=7, max_ram_per_gpu=20), 1, 32)
    # 20 GB allowed by the host -> 16, the largest RAM size TensorDock is known to accept
    assert plan == {"vcpu_count": 6, "ram_gb": 16, "storage_gb": 100}
    plan = plan_resources(node(vcpu_count=5), 2, 32)
    assert plan is not None and plan["vcpu_count"] == 4
    assert even_down(9) == 8 and even_down(8) == 8


def test_ram_is_rounded_down_to_an_accepted_size():
    from gpushopper.providers.tensordock import allowed_ram

    assert [allowed_ram(x) for x in (1, 2, 9, 20, 32, 33, 100, 1000)] == [
        0,
        2,
        8,
        16,
        32,
        32,
        96,
        512,
    ]


def test_more_gpus_scale_the_plan_and_the_price():
    [one] = offers_of(node(), disk_gb=32)
    [two] = offers_of(node(), disk_gb=32, num_gpus=2)
    assert two.num_gpus == 2
    assert (two.cpu_cores, two.ram_gb) == (16, 64)
    assert two.price_per_hour == pytest.approx(2 * 2.2 + 16 * 0.003 + 64 * 0.002 + 100 * 0.00005)
    assert two.price_per_hour > one.price_per_hour


def test_nodes_that_cannot_host_the_request_give_no_offer():
    assert offers_of(node(has_public_ip_available=False)) == []  # no dedicated IP, no SSH
    assert offers_of(node(gpus=[{"v0Name": "h100-sxm5-80gb", "availableCount": 0}])) == []
    assert offers_of(node(), num_gpus=9) == []
    assert offers_of(node(storage_gb=50), disk_gb=32) == []  # below the 100 GB minimum
    assert offers_of(node(vcpu_count=1)) == []
    assert offers_of(node(gpus=[{"v0Name": "h100-sxm5-80gb", "availableCount": 1}])) == []


def test_missing_or_null_fields_become_none():
    sparse = {
        "id": "sparse",
        "uptime_percentage": None,
        "available_resources": {
            "gpus": [{"v0Name": "mystery-card", "availableCount": 1, "price_per_hr": 0.3}],
            "storage_gb": None,
        },
        "pricing": None,
        "location": None,
    }
    [offer] = parse_hostnodes({"data": {"hostnodes": [sparse]}}, OfferQuery())
    data = offer.to_json()
    for key in (
        "price_per_hour",
        "reliability",
        "vram_gb",
        "country",
        "location",
        "disk_gb",
        "inet_down_mbps",
        "cuda_version",
        "verified",
    ):
        assert data[key] is None, key
    assert data["gpu_name"] == "MYSTERY-CARD"


@pytest.mark.parametrize(
    "answer",
    [
        {},
        {"data": {}},
        {"data": {"hostnodes": None}},
        {"data": {"hostnodes": [None, 3, {"no": "id"}]}},
        [],
        None,
        {"data": {"hostnodes": [{"id": "x", "available_resources": None}]}},
        {"data": {"hostnodes": [{"id": "x", "available_resources": {"gpus": [None, "x"]}}]}},
    ],
)
def test_odd_shapes_give_no_offers_instead_of_crashing(answer):
    assert parse_hostnodes(answer, OfferQuery()) == []


def test_client_side_filters():
    nodes = [
        node(id="cheap-us"),
        {
            **node(id="de-4090"),
            "location": {"country": "Germany", "city": "Frankfurt"},
            "uptime_percentage": 95.0,
        },
    ]
    nodes[1]["available_resources"]["gpus"] = [
        {"v0Name": "geforcertx4090-pcie-24gb", "availableCount": 2, "price_per_hr": 0.4}
    ]
    assert [o.id.split(":")[1] for o in offers_of(*nodes, gpus=["rtx 4090"])] == ["de-4090"]
    assert [o.id.split(":")[1] for o in offers_of(*nodes, min_vram_gb=48)] == ["cheap-us"]
    assert [o.id.split(":")[1] for o in offers_of(*nodes, countries=["de"])] == ["de-4090"]
    assert [o.id.split(":")[1] for o in offers_of(*nodes, countries=["NL"])] == []
    assert [o.id.split(":")[1] for o in offers_of(*nodes, max_price=1.0)] == ["de-4090"]
    assert [o.id.split(":")[1] for o in offers_of(*nodes, min_reliability=0.99)] == ["cheap-us"]
    assert [o.id.split(":")[1] for o in offers_of(*nodes, min_disk_gb=9000)] == []
    # CUDA is unknown before boot: it passes here and is checked over SSH later
    assert len(offers_of(*nodes, min_cuda=12.8)) == 2


@pytest.mark.parametrize(
    ("v0name", "pretty", "vram"),
    [
        ("geforcertx4090-pcie-24gb", "RTX 4090", 24.0),
        ("geforcertx3080ti-pcie-12gb", "RTX 3080 Ti", 12.0),
        ("rtxa6000-pcie-48gb", "RTX A6000", 48.0),
        ("rtx6000ada-pcie-48gb", "RTX 6000 Ada", 48.0),
        ("h100-sxm5-80gb", "H100 SXM5", 80.0),
        ("a100-pcie-80gb", "A100", 80.0),
        ("quadrortx4000-pcie-8gb", "RTX 4000", 8.0),
    ],
)
def test_model_slugs(v0name, pretty, vram):
    assert display_name(v0name) == pretty
    assert vram_from_v0name(v0name) == vram


def test_vram_unknown_without_a_size():
    assert vram_from_v0name("mystery") is None
    assert vram_from_v0name(None) is None


def test_errors_inside_http_200_bodies_are_errors():
    assert isinstance(classify(200, {"error": "Unauthorized", "status": 401}, ""), AuthFailed)
    assert isinstance(classify(200, {"error": "gone", "status": 404}, ""), NotFound)
    assert isinstance(classify(200, {"error": "slow down", "status": 429}, ""), RateLimited)
    stockout = classify(200, {"error": "No available nodes found", "status": 400}, "")
    assert isinstance(stockout, ProviderError) and "No available nodes" in str(stockout)
    assert classify(200, {"data": {"hostnodes": []}}, "") is None


# -- over HTTP, against the emulator -------------------------------------------------------
@pytest.fixture
def emu():
    with TensorDockEmulator() as emulator:
        emulator.seed_default()
        yield emulator


def client(emu: TensorDockEmulator, sleeps: list[float] | None = None) -> TensorDock:
    config = TensorDockConfig(emu.api_token, emu.url)
    return TensorDock(config, sleep=(sleeps if sleeps is not None else []).append)


def test_search_reads_hostnodes_and_prices_each_offer(emu):
    offers = client(emu).search_offers(OfferQuery(disk_gb=32))
    assert [r["path"] for r in emu.requests] == ["/hostnodes"]
    assert emu.requests[0]["headers"]["Authorization"] == f"Bearer {emu.api_token}"
    dallas = next(o for o in offers if o.location == "Dallas, Texas, United States")
    assert dallas.gpu_name == "RTX 4090"
    assert dallas.price_per_hour == pytest.approx(0.40 + 8 * 0.003 + 32 * 0.002 + 100 * 0.00005)
    # Toronto has no public IP and London no free GPU: neither is offered
    assert {o.country for o in offers} == {"US", "DE", "NL"}


def test_get_offer_refetches_one_hostnode(emu):
    td = client(emu)
    first = td.search_offers(OfferQuery())[0]
    native = first.id.split(":", 1)[1]
    again = td.get_offer(native, 200)
    assert again is not None and again.id == first.id
    assert again.price_per_hour == pytest.approx(first.price_per_hour + 100 * 0.00005)
    assert td.get_offer("no-such-node:geforcertx4090-pcie-24gb", 32) is None


@pytest.mark.parametrize(
    "body",
    [{}, {"data": None}, {"data": []}, {"data": "x"}],
    ids=["empty", "null-data", "list-data", "text-data"],
)
def test_get_offer_answer_of_the_wrong_shape_is_an_error_not_gone(emu, body):
    td = client(emu)
    native = td.search_offers(OfferQuery())[0].id.split(":", 1)[1]
    emu.fail_next("GET", r"/hostnodes/.+", status=200, body=body)
    with pytest.raises(ProviderError, match="wrong shape"):
        td.get_offer(native, 32)


def test_get_offer_answered_with_another_hostnode_is_refused(emu):
    td = client(emu)
    offers = td.search_offers(OfferQuery())
    mine, other = offers[0], next(o for o in offers if o.machine_id != offers[0].machine_id)
    answer = {"data": {**emu._public_hostnode(emu.hostnodes[other.machine_id])}}
    emu.fail_next("GET", r"/hostnodes/.+", status=200, body=answer)
    with pytest.raises(ProviderError, match="the answer is"):
        td.get_offer(mine.id.split(":", 1)[1], 32)


def test_rate_limit_is_retried_then_answered(emu):
    emu.rate_limit_next(times=1)
    sleeps: list[float] = []
    assert client(emu, sleeps).search_offers(OfferQuery())
    assert [r["path"] for r in emu.requests] == ["/hostnodes", "/hostnodes"]
    assert len(sleeps) == 1


def test_error_in_a_200_body_is_raised(emu):
    emu.error_in_200_next("GET", "/hostnodes", "Service paused for maintenance", status=503)
    with pytest.raises(ProviderError, match="maintenance"):
        config = TensorDockConfig(emu.api_token, emu.url, http=HttpConfig(retries=1))
        TensorDock(config).search_offers(OfferQuery())


def test_bad_token_is_an_auth_failure(emu):
    with pytest.raises(AuthFailed):
        TensorDock(TensorDockConfig("wrong-token", emu.url)).search_offers(OfferQuery())


def test_os_images_are_the_templates():
    td = TensorDock(TensorDockConfig("images-test-token-1234", "http://127.0.0.1:9"))  # no HTTP
    slugs = [t.id for t in td.list_templates()]
    assert "ubuntu2404_ml_pytorch" in slugs and "ubuntu2404" in slugs
    bare = td.get_template("ubuntu2404")
    assert bare is not None and bare.requirements == {"nvidia_driver": False}
    assert [t.id for t in td.list_templates(name="tensorflow")] == ["ubuntu2404_ml_tensorflow"]
    assert td.get_template("windows10") is None


# -- the instance list and show are believed only when well-formed ----------------------------
@pytest.mark.parametrize(
    "data",
    [
        {},
        [],
        None,
        {"data": 3},
        {"data": {}},
        {"data": {"instances": None}},
        {"data": {"instances": [{"name": "no id"}]}},
        {"data": ["not an object"]},
    ],
    ids=[
        "empty-object",
        "empty-array",
        "null",
        "wrong-shape",
        "no-instances",
        "null-list",
        "row-without-id",
        "row-not-object",
    ],
)
def test_a_malformed_instance_list_is_an_error_never_no_instances(data):
    from gpushopper.model.errors import Unavailable
    from gpushopper.providers.tensordock import parse_instance_list

    with pytest.raises(Unavailable, match="instance list"):
        parse_instance_list(data)


@pytest.mark.parametrize("shape", ["documented", "flat", "nested"])
def test_the_three_documented_list_shapes_are_read(emu, shape):
    emu.create_instance_directly(name="gpu-shopper:aaaa1111:a00001")
    emu.list_shape = shape
    (inst,) = client(emu).list_instances()
    assert inst.label == "gpu-shopper:aaaa1111:a00001"
    emu.clear_faults()


def test_an_empty_well_formed_list_is_believed(emu):
    assert client(emu).list_instances() == []


@pytest.mark.parametrize("body", [{}, "[]", "null", {"data": "x"}])
def test_a_malformed_show_is_an_error_never_gone(emu, body):
    from gpushopper.model.errors import Unavailable

    rec = emu.create_instance_directly(name="x")
    emu.fail_next("GET", rf"/instances/{rec['id']}$", status=200, body=body)
    with pytest.raises(Unavailable):
        client(emu).get_instance(rec["id"])


def test_gone_is_a_404(emu):
    rec = emu.create_instance_directly(name="x")
    td = client(emu)
    assert td.get_instance(rec["id"]) is not None
    td.destroy_instance(rec["id"])
    assert td.get_instance(rec["id"]) is None


@pytest.mark.parametrize("bad", ["a/../b", "ab#cd", "x?y", 7.5, ["id"]], ids=repr)
def test_an_instance_id_that_is_not_one_path_segment_is_an_error(emu, bad):
    """As for Vast.ai: ``a/../b`` would be sent as ``b``, ``ab#cd`` as ``ab`` (a 404 read as
    "already gone"). List rows, create answers and the ids asked about are checked first."""
    from gpushopper.model.errors import Unavailable
    from gpushopper.model.models import LaunchSpec

    td = client(emu)
    row = {"id": bad, "name": "gpu-shopper:aaaa1111:a00001", "status": "running"}
    emu.fail_next("GET", r"/instances$", status=200, body={"data": {"instances": [row]}})
    with pytest.raises(Unavailable, match="not an instance id"):
        td.list_instances()
    offer = td.search_offers(OfferQuery())[0]
    emu.fail_next("POST", r"/instances$", status=200, body={"data": {"id": bad}})
    spec = LaunchSpec(offer=offer, label="gpu-shopper:aaaa1111:a00001", public_key="k", disk_gb=10)
    with pytest.raises(ProviderError, match="not an instance id"):
        td.create_instance(spec)
    if isinstance(bad, str):
        seen = len(emu.requests)
        for call in (td.get_instance, td.destroy_instance):
            with pytest.raises(Unavailable, match="not an instance id"):
                call(bad)
        assert len(emu.requests) == seen  # refused before anything was sent


@pytest.mark.parametrize(
    "node_id", ["../instances/x", "node#frag", "node?q=1", "a/b", " ", "x:y", 1.5]
)
def test_a_hostnode_id_that_is_no_offer_id_gives_no_offer(node_id):
    """The id becomes the offer id, then a URL path (GET /hostnodes/ID) and the create's
    hostnode: one that split_offer_id would refuse from the user is refused from the API."""
    answer = json.loads(json.dumps(HOSTNODES))
    good = answer["data"]["hostnodes"][0]
    answer["data"]["hostnodes"].insert(0, {**good, "id": node_id})
    offers = parse_hostnodes(answer, OfferQuery(disk_gb=100))
    assert [o.id for o in offers] == ["tensordock:node-h100:h100-sxm5-80gb"]
