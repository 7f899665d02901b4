"""Vast.ai adapter: query translation and parsing as pure functions (inline JSON), then a
few calls over real HTTP to the emulator."""

from __future__ import annotations

import json

import pytest

from gpushopper.model.errors import AuthFailed, ProviderError, RateLimited
from gpushopper.model.models import OfferQuery
from gpushopper.providers.vastai import (
    VastAI,
    VastAIConfig,
    build_search,
    classify,
    parse_offer,
    parse_template,
)
from gpushopper.sandbox.vastai import VastEmulator

# One bundles row as the API answers it (reference §2.3), trimmed to what matters.
ROW = json.loads(
    """
{
  "id": 4242001, "ask_contract_id": 4242001, "machine_id": 15501, "host_id": 9001,
  "gpu_name": "RTX 4090", "num_gpus": 2, "gpu_ram": 24564, "gpu_total_ram": 49128,
  "cpu_cores": 32, "cpu_cores_effective": 16.0, "cpu_ram": 64400,
  "disk_space": 250.5, "dph_base": 0.8, "storage_cost": 0.15,
  "storage_total_cost": 0.0066667, "dph_total": 0.8066667,
  "inet_down": 900.0, "inet_up": 600.0, "reliability": 0.9934, "reliability2": 0.9934,
  "dlperf": 67.0, "total_flops": 165.2, "cuda_max_good": 12.8,
  "driver_version": "570.124.04", "geolocation": "California, US",
  "verification": "verified", "rentable": true, "rented": false
}
"""
)


# -- query translation ---------------------------------------------------------------------
def test_empty_query_sends_only_defaults_cheapest_first_priced_for_the_disk():
    body = build_search(OfferQuery(disk_gb=32), limit=300)
    assert body == {
        "rentable": {"eq": True},
        "rented": {"eq": False},
        "order": [["dph_total", "asc"]],
        "type": "on-demand",
        "allocated_storage": 32.0,
        "limit": 300,
        "disk_space": {"gte": 32},
    }


def test_every_filter_is_sent_server_side_in_vast_units():
    query = OfferQuery(
        min_vram_gb=24,
        num_gpus=2,
        max_price=0.75,
        min_reliability=0.98,
        min_cuda=12.4,
        min_disk_gb=100,
        countries=["us", "CA", "US"],
        disk_gb=50,
        verified=True,
    )
    body = build_search(query)
    assert body["gpu_ram"] == {"gte": 24000}  # MB
    assert body["num_gpus"] == {"eq": 2}
    assert body["dph_total"] == {"lte": 0.75}
    assert body["reliability"] == {"gte": 0.98}
    assert body["cuda_max_good"] == {"gte": 12.4}
    assert body["disk_space"] == {"gte": 100}  # the larger of --min-disk and --disk
    assert body["geolocation"] == {"in": ["CA", "US"]}
    assert body["verified"] == {"eq": True}
    assert body["rentable"] == {"eq": True}
    assert body["allocated_storage"] == 50.0


def test_disk_asked_for_is_a_floor_on_host_disk_when_larger_than_min_disk():
    assert build_search(OfferQuery(disk_gb=200, min_disk_gb=100))["disk_space"] == {"gte": 200}


def test_fractional_vram_converts_exactly():
    assert build_search(OfferQuery(min_vram_gb=23.5))["gpu_ram"] == {"gte": 23500}


@pytest.mark.parametrize(
    ("sort", "order"),
    [
        ("price", [["dph_total", "asc"]]),
        ("reliability", [["reliability", "desc"]]),
        ("vram", [["gpu_total_ram", "desc"]]),  # all GPUs' VRAM, as we rank
        ("perf-per-dollar", [["dlperf_per_dphtotal", "desc"]]),
    ],
)
def test_sort_becomes_server_order(sort, order):
    assert build_search(OfferQuery(sort=sort))["order"] == order


def test_loose_gpu_names_are_sent_as_one_in_list_of_vast_spellings():
    body = build_search(OfferQuery(gpus=["4090", "h100"]))
    names = body["gpu_name"]["in"]
    assert {"RTX 4090", "H100 SXM", "H100 PCIE", "H100 NVL"} <= set(names)
    assert "RTX 4090D" not in names and "RTX 4090 Ti" not in names
    assert list(body["gpu_name"]) == ["in"]


def test_a_gpu_name_nobody_knows_is_still_sent_as_typed():
    assert build_search(OfferQuery(gpus=["RTX_9999"]))["gpu_name"] == {"in": ["RTX 9999"]}


# -- parsing -------------------------------------------------------------------------------
def test_parse_full_row_into_common_units():
    offer = parse_offer(ROW)
    assert offer.id == "vastai:4242001"
    assert offer.provider == "vastai"
    assert offer.gpu_name == "RTX 4090"
    assert offer.num_gpus == 2
    assert offer.vram_gb == 24.6  # per GPU, MB -> GB
    assert offer.price_per_hour == pytest.approx(0.8066667)
    assert offer.reliability == 0.9934
    assert offer.cuda_version == 12.8
    assert offer.disk_gb == 250.5
    assert offer.cpu_cores == 16.0  # the cores you get, not the machine's
    assert offer.ram_gb == 64.4
    assert offer.country == "US"
    assert offer.location == "California, US"
    assert offer.inet_down_mbps == 900.0
    assert offer.verified is True
    assert offer.machine_id == "15501"
    assert offer.driver_version == "570.124.04"
    assert offer.dlperf == 67.0
    assert offer.total_flops == 165.2
    assert offer.perf_per_dollar == pytest.approx(67.0 / 0.8066667, abs=1e-3)
    assert offer.extra["ask_id"] == 4242001


def test_missing_fields_are_none_never_guessed():
    offer = parse_offer({"id": 7})
    data = offer.to_json()
    assert data["id"] == "vastai:7"
    for key in (
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
        "machine_id",
        "driver_version",
        "dlperf",
        "total_flops",
        "perf_per_dollar",
    ):
        assert data[key] is None, key


def test_null_fields_are_none():
    row = {k: None for k in ROW}
    row["id"] = 8
    offer = parse_offer(row)
    assert offer.gpu_name is None
    assert offer.vram_gb is None
    assert offer.price_per_hour is None
    assert offer.reliability is None
    assert offer.cuda_version is None
    assert offer.country is None
    assert offer.verified is None
    assert offer.perf_per_dollar is None


def test_numbers_sent_as_strings_are_read():
    offer = parse_offer(
        {
            "id": 9,
            "gpu_ram": "81920",
            "dph_total": "1.25",
            "reliability": "0.99",
            "cuda_max_good": "12.6",
            "num_gpus": "4",
        }
    )
    assert (offer.vram_gb, offer.price_per_hour, offer.reliability) == (81.9, 1.25, 0.99)
    assert (offer.cuda_version, offer.num_gpus) == (12.6, 4)


def test_garbage_numbers_are_none():
    offer = parse_offer({"id": 10, "gpu_ram": "lots", "dph_total": "", "reliability": True})
    assert (offer.vram_gb, offer.price_per_hour, offer.reliability) == (None, None, None)


def test_price_falls_back_to_base_plus_storage_when_total_missing():
    offer = parse_offer({"id": 11, "dph_base": 0.5, "storage_total_cost": 0.02})
    assert offer.price_per_hour == pytest.approx(0.52)
    # half a price is no price
    assert parse_offer({"id": 12, "dph_base": 0.5}).price_per_hour is None


def test_reliability_falls_back_to_reliability2():
    assert parse_offer({"id": 13, "reliability2": 0.97}).reliability == 0.97


@pytest.mark.parametrize(
    ("fields", "verified"),
    [
        ({"verification": "verified"}, True),
        ({"verification": "unverified"}, False),
        ({"verification": "deverified"}, False),
        ({"verified": True}, True),
        ({"verified": False}, False),
        ({}, None),
    ],
)
def test_verification(fields, verified):
    assert parse_offer({"id": 14, **fields}).verified is verified


@pytest.mark.parametrize(
    ("geo", "country"),
    [
        ("California, US", "US"),
        ("Quebec, CA", "CA"),
        ("DE", "DE"),
        ("Germany", "DE"),
        ("Atlantis", None),
        ("", None),
        (None, None),
        (1840, None),
    ],
)
def test_country_code_from_geolocation(geo, country):
    assert parse_offer({"id": 15, "geolocation": geo}).country == country


def test_perf_per_dollar_uses_dlperf_then_flops_and_needs_a_price():
    assert parse_offer({"id": 16, "dph_total": 2.0, "dlperf": 10}).perf_per_dollar == 5.0
    assert parse_offer({"id": 17, "dph_total": 2.0, "total_flops": 80}).perf_per_dollar == 40.0
    assert parse_offer({"id": 18, "dph_total": 0, "dlperf": 10}).perf_per_dollar is None
    assert parse_offer({"id": 19, "dlperf": 10}).perf_per_dollar is None


def test_parse_template_with_cuda_requirement():
    template = parse_template(
        {
            "id": 310001,
            "hash_id": "e800c772fb70",
            "name": "Ostris AI Toolkit",
            "image": "vastai/ostris-ai-toolkit",
            "tag": "latest-cuda-12.9",
            "env": "-p 18675:8675 -e WORKSPACE=/workspace",
            "extra_filters": {"cuda_max_good": {"gte": 12.8}},
            "recommended_disk_space": 32,
            "use_ssh": True,
            "runtype": "ssh",
            "desc": "FLUX LoRA",
        }
    )
    assert template.id == "e800c772fb70"
    assert template.image == "vastai/ostris-ai-toolkit:latest-cuda-12.9"
    assert template.min_cuda == 12.8
    assert template.requirements == {"cuda_max_good": {"gte": 12.8}}
    assert template.recommended_disk_gb == 32
    assert template.env == "-p 18675:8675 -e WORKSPACE=/workspace"


def test_parse_template_with_gaps():
    template = parse_template({"id": 5, "name": None, "extra_filters": None, "env": {"A": "1"}})
    assert template.id == "5"
    assert template.name == ""
    assert template.min_cuda is None
    assert template.requirements == {}
    assert template.env is None
    assert template.image is None


def test_classify_auth_error_on_404_and_search_quota():
    bad_key = classify(
        404, {"success": False, "error": "auth_error", "msg": "Invalid user key"}, ""
    )
    assert isinstance(bad_key, AuthFailed)
    quota = classify(429, {"error": "search_quota_exceeded", "msg": "daily quota"}, "")
    assert isinstance(quota, RateLimited)
    assert quota.retry_after == float("inf")  # not worth retrying today
    soft = classify(200, {"success": False, "error": "invalid_args", "msg": "bad"}, "")
    assert isinstance(soft, ProviderError)
    assert classify(200, {"offers": []}, "") is None


# -- over HTTP, against the emulator -------------------------------------------------------
@pytest.fixture
def emu():
    with VastEmulator() as emulator:
        emulator.seed_default_offers()
        yield emulator


def client(emu: VastEmulator, sleeps: list[float] | None = None, **kw) -> VastAI:
    config = VastAIConfig(emu.api_key, emu.url, **kw)
    return VastAI(config, sleep=(sleeps if sleeps is not None else []).append)


def test_search_posts_bundles_and_prices_for_the_disk(emu):
    offers = client(emu).search_offers(OfferQuery(gpus=["4090"], disk_gb=72), limit=50)
    sent = [r for r in emu.requests if r["path"] == "/api/v0/bundles/"]
    assert len(sent) == 1 and sent[0]["method"] == "POST"
    assert sent[0]["json"]["allocated_storage"] == 72.0
    by_id = {o.id: o for o in offers}
    # dph_total = dph_base + storage_cost ($/GB/month) * disk / 720 h
    assert by_id["vastai:1000001"].price_per_hour == pytest.approx(0.40 + 0.15 * 72 / 720)
    prices = [o.price_per_hour for o in offers]
    assert prices == sorted(prices)


def test_each_server_side_filter_narrows_the_answer(emu):
    vast = client(emu)
    everything = {o.id for o in vast.search_offers(OfferQuery(disk_gb=8))}
    cases = {
        "vram": (OfferQuery(disk_gb=8, min_vram_gb=48), lambda o: o.vram_gb >= 48),
        "cuda": (OfferQuery(disk_gb=8, min_cuda=12.8), lambda o: o.cuda_version >= 12.8),
        "price": (OfferQuery(disk_gb=8, max_price=0.3), lambda o: o.price_per_hour <= 0.3),
        "rel": (OfferQuery(disk_gb=8, min_reliability=0.99), lambda o: o.reliability >= 0.99),
        "disk": (OfferQuery(disk_gb=8, min_disk_gb=500), lambda o: o.disk_gb >= 500),
        "cc": (OfferQuery(disk_gb=8, countries=["DE", "CA"]), lambda o: o.country in {"DE", "CA"}),
        "ver": (OfferQuery(disk_gb=8, verified=True), lambda o: o.verified),
        "num": (OfferQuery(disk_gb=8, num_gpus=2), lambda o: o.num_gpus == 2),
    }
    for name, (query, ok) in cases.items():
        got = vast.search_offers(query)
        assert got, name
        assert all(ok(o) for o in got), name
        assert {o.id for o in got} < everything, name


def test_max_price_setting_caps_the_search(emu):
    offers = client(emu, max_price=0.3).search_offers(OfferQuery(max_price=5.0))
    assert offers and all(o.price_per_hour <= 0.3 for o in offers)
    assert emu.requests[-1]["json"]["dph_total"] == {"lte": 0.3}


def test_rate_limit_is_retried_then_answered(emu):
    emu.rate_limit_next(times=2)
    sleeps: list[float] = []
    offers = client(emu, sleeps).search_offers(OfferQuery())
    assert offers
    statuses = [r["status"] for r in emu.requests]
    assert statuses == [429, 429, 200]
    assert len(sleeps) == 2


def test_bad_key_is_an_auth_failure_with_the_key_redacted(emu):
    vast = VastAI(VastAIConfig("wrong-key-123456", emu.url), sleep=lambda s: None)
    with pytest.raises(AuthFailed) as caught:
        vast.search_offers(OfferQuery())
    assert "wrong-key-123456" not in str(caught.value)


def test_get_offer_refetches_one_offer_for_a_disk(emu):
    offer = client(emu).get_offer("1000002", 100)
    assert offer is not None and offer.id == "vastai:1000002"
    assert offer.price_per_hour == pytest.approx(0.36 + 0.15 * 100 / 720)
    assert client(emu).get_offer("999", 32) is None


@pytest.mark.parametrize("body", [{}, {"success": True}, {"offers": None}, {"offers": {}}])
def test_an_offer_or_template_answer_without_its_list_is_an_error_not_none(emu, body):
    # Read as "none", the offer given by id would be "not available any more" (exit 2) and
    # the template "unknown": the answer says nothing of either.
    emu.fail_next("POST", r"/bundles/", status=200, body=body)
    with pytest.raises(ProviderError, match="wrong shape"):
        client(emu).get_offer("1000002", 32)
    templates = {("templates" if k == "offers" else k): v for k, v in body.items()}
    emu.fail_next("GET", r"/template/", status=200, body=templates)
    with pytest.raises(ProviderError, match="wrong shape"):
        client(emu).list_templates()


def test_templates_by_name_hash_and_id(emu):
    vast = client(emu)
    names = [t.name for t in vast.list_templates()]
    assert "Ostris AI Toolkit" in names
    assert [t.name for t in vast.list_templates(name="toolkit")] == ["Ostris AI Toolkit"]
    ostris = vast.get_template("Ostris AI Toolkit")
    assert ostris is not None and ostris.min_cuda == 12.8
    assert vast.get_template(ostris.hash_id).name == "Ostris AI Toolkit"
    raw_id = next(t["id"] for t in emu.templates if t["name"] == "Ostris AI Toolkit")
    assert vast.get_template(str(raw_id)).hash_id == ostris.hash_id
    assert vast.get_template("no such template") is None


def test_ties_at_the_cut_are_resolved_by_asking_for_more(emu):
    # 30 offers of one reliability, inserted dearest first: the server returns the first
    # rows it holds, so the cheapest of the tie lie past the first answer.
    for i in range(30):
        emu.add_offer(gpu_name="RTX 4090", reliability=0.9901, dph_base=round(2.0 - i * 0.05, 2))
    query = OfferQuery(sort="reliability", min_reliability=0.99, max_price=2.5, gpus=["4090"])
    offers = client(emu).search_offers(query, limit=2)
    tied = sorted((o for o in client(emu).search_offers(query) if o.reliability == 0.9901),
                  key=lambda o: o.price_per_hour)  # fmt: skip
    best = [o for o in client(emu).search_offers(query) if o.reliability > 0.9901]
    assert [o.id for o in offers] == [
        o.id for o in (sorted(best, key=lambda o: -o.reliability) + tied)[:2]
    ]


def test_rounding_in_our_vram_figures_cannot_hide_the_best_offer(emu):
    # Vast orders by gpu_total_ram (MB); we rank by GB rounded per GPU x count. 8 x 2x12049 MB
    # (24.0 GB to us) come before 1x24070 MB (24.1 GB) in Vast's order, after it in ours.
    emu.offers.clear()
    emu.add_offer(gpu_name="RTX 3090", num_gpus=1, gpu_ram=24099, dph_base=0.9)
    for _ in range(8):
        emu.add_offer(gpu_name="RTX 3060", num_gpus=2, gpu_ram=12049, dph_base=0.3)
    cheaper = emu.add_offer(gpu_name="RTX 3090", num_gpus=1, gpu_ram=24070, dph_base=0.2)
    [top] = client(emu).search_offers(OfferQuery(sort="vram"), limit=1)
    assert top.id == f"vastai:{cheaper['id']}"  # 24.1 GB like the first, and cheaper


# -- the instance list and show are believed only when well-formed ----------------------------
@pytest.mark.parametrize(
    "body",
    [
        {},
        [],
        "null",
        {"success": True},  # no instances key
        {"success": True, "instances": {"id": 1}},  # the wrong shape
        {"success": True, "instances": [{"label": "no id"}]},  # a row without an id
        {"success": True, "instances": ["x"]},
        {"success": True, "instances_found": 3, "instances": [], "next_token": None},  # partial
        {"success": True, "instances": [], "next_token": 7},
    ],
    ids=[
        "empty-object",
        "empty-array",
        "null",
        "no-key",
        "object",
        "row-without-id",
        "row-not-object",
        "count-mismatch",
        "bad-token",
    ],
)
def test_a_malformed_instance_list_is_an_error_never_no_instances(emu, body):
    from gpushopper.model.errors import Unavailable

    emu.create_instance_directly(label="gpu-shopper:aaaa1111:a00001")
    emu.fail_next("GET", r"/api/v1/instances", status=200, body=body)
    with pytest.raises(Unavailable, match="instance list"):
        client(emu).list_instances()
    assert len(client(emu).list_instances()) == 1  # and the real answer parses


def test_an_empty_well_formed_list_is_believed(emu):
    assert client(emu).list_instances() == []


@pytest.mark.parametrize(
    "body", [{}, [], {"instances": "x"}, {"instances": {"label": "no id"}}, {"success": True}]
)
def test_a_malformed_show_is_an_error_never_gone(emu, body):
    from gpushopper.model.errors import Unavailable

    inst = emu.create_instance_directly(label="x")
    emu.fail_next("GET", rf"/api/v0/instances/{inst['id']}/", status=200, body=body)
    with pytest.raises(Unavailable):
        client(emu).get_instance(str(inst["id"]))


def test_gone_is_the_documented_null_and_nothing_else(emu):
    inst = emu.create_instance_directly(label="x")
    c = client(emu)
    assert c.get_instance(str(inst["id"])) is not None
    c.destroy_instance(str(inst["id"]))
    assert c.get_instance(str(inst["id"])) is None  # {"instances": null}


def test_a_show_answering_another_instance_is_an_error(emu):
    from gpushopper.model.errors import Unavailable

    a = emu.create_instance_directly(label="a")
    b = emu.create_instance_directly(label="b")
    row = {k: v for k, v in b.items() if k not in ("authorized_keys", "instance_api_key")}
    emu.fail_next("GET", rf"/api/v0/instances/{a['id']}/", status=200, body={"instances": row})
    with pytest.raises(Unavailable, match="the answer is instance"):
        client(emu).get_instance(str(a["id"]))


# -- an instance id reaches URL paths: one plain segment or an error --------------------------
BAD_IDS = ["5/../6", "ab#cd", "7?owner=me", " 5", "..", True, 5.0, {"id": 5}]


@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
def test_an_instance_id_that_is_not_one_path_segment_is_an_error(emu, bad):
    """``5/../6`` would be sent as ``6`` (someone else's instance destroyed) and ``ab#cd``
    as ``ab`` (a 404 read as "already gone"): list rows, create answers and the ids we are
    asked to show or destroy are checked before any URL is built."""
    from gpushopper.model.errors import Unavailable
    from gpushopper.model.models import LaunchSpec

    other = emu.create_instance_directly(label="someone else's")
    c = client(emu)
    row = {"id": bad, "label": "gpu-shopper:aaaa1111:a00001", "actual_status": "running"}
    emu.fail_next("GET", r"/api/v1/instances", status=200, body={"instances": [row]})
    with pytest.raises(Unavailable, match="not an instance id"):
        c.list_instances()
    if not isinstance(bad, str):
        return
    seen = len(emu.requests)
    for call in (c.get_instance, c.destroy_instance):
        with pytest.raises(Unavailable, match="not an instance id"):
            call(bad)
    assert len(emu.requests) == seen  # refused before anything was sent
    offer = parse_offer(ROW)
    emu.fail_next("PUT", r"/asks/", status=200, body={"success": True, "new_contract": bad})
    spec = LaunchSpec(offer=offer, label="gpu-shopper:aaaa1111:a00001", public_key="k", disk_gb=10)
    with pytest.raises(ProviderError, match="not an instance id"):
        c.create_instance(spec)
    assert c.get_instance(str(other["id"])) is not None  # still there


def test_a_template_env_that_is_not_shell_words_is_a_provider_error():
    """The env string is the template's (the provider's) text: an unclosed quote was a
    ValueError, an internal crash in the middle of provisioning."""
    from gpushopper.providers.vastai import env_from_docker_flags

    assert env_from_docker_flags('-e A=1 -e "B=two words"') == {"A": "1", "B": "two words"}
    with pytest.raises(ProviderError, match="cannot be read"):
        env_from_docker_flags('-e "A=1')


def test_text_fields_of_another_type_are_none_never_lists_in_the_json():
    """CLI.md: ``gpu_name`` is a string or null; a list or an object from the server must
    not reach ``inventory --json``, the session record or the health keys."""
    odd = parse_offer(
        {**ROW, "gpu_name": ["RTX 4090"], "driver_version": {"v": 1}, "machine_id": [1]}
    )
    assert (odd.gpu_name, odd.driver_version, odd.machine_id) == (None, None, None)
    same = parse_offer(ROW)
    assert (same.gpu_name, same.driver_version, same.machine_id) == (
        "RTX 4090",
        "570.124.04",
        "15501",
    )


@pytest.mark.parametrize("bad", ["12/../13", "5#x", "7?owner=me", 12.5, -3, "", True, "²"])
def test_an_offer_whose_id_is_no_ask_id_is_dropped_from_the_search(emu, bad):
    """The ask id goes into the create's URL (PUT /asks/ID/): "12/../13" would be sent as
    another path. An offer whose id the user could not type is no offer."""
    good = next(iter(emu.offers.values()))
    rows = [{**good, "id": bad}, good]
    emu.fail_next("POST", r"/bundles/", status=200, body={"offers": rows})
    offers = client(emu).search_offers(OfferQuery(disk_gb=32), limit=5)
    assert [o.id for o in offers] == [f"vastai:{good['id']}"]
