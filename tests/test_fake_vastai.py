"""Tests of the Vast.ai emulator (gpushopper/sandbox/vastai.py), over real loopback HTTP."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from gpushopper.sandbox.vastai import (
    DEFAULT_API_KEY,
    VastEmulator,
    marketing_gpu_name,
)
from tests.fakes.emulators import FakeClock, RecordingBackend

AUTH_ERROR = {"success": False, "error": "auth_error", "msg": "Invalid user key"}
OSTRIS = "Ostris AI Toolkit"
PUBKEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA a@test"
PUBKEY_B = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB b@test"


class Api:
    """Tiny client: base URL + bearer key; query dicts/lists are JSON-encoded like vastai's."""

    def __init__(self, emu: VastEmulator, key: str | None = DEFAULT_API_KEY) -> None:
        self.emu = emu
        self.key = key
        self.session = requests.Session()

    def call(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
        timeout: float = 5.0,
        **kw: Any,
    ) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        enc = None
        if params is not None:
            enc = {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}
        return self.session.request(
            method,
            self.emu.url + path,
            params=enc,
            json=json_body,
            headers=headers,
            timeout=timeout,
            **kw,
        )

    def search(self, query: dict[str, Any]) -> list[dict[str, Any]]:
        resp = self.call("POST", "/api/v0/bundles/", json_body=query)
        assert resp.status_code == 200, resp.text
        assert resp.headers["Content-Type"] == "application/json"
        return list(resp.json()["offers"])

    def create(self, offer_id: int, **body: Any) -> requests.Response:
        body.setdefault("image", "vastai/base-image:cuda-12.8.1-auto")
        body.setdefault("env", {})
        body.setdefault("disk", 20)
        return self.call("PUT", f"/api/v0/asks/{offer_id}/", json_body=body)

    def show(self, iid: int) -> dict[str, Any] | None:
        resp = self.call("GET", f"/api/v0/instances/{iid}/")
        assert resp.status_code == 200, resp.text
        inst: dict[str, Any] | None = resp.json()["instances"]
        return inst

    def get(self, iid: int) -> dict[str, Any]:
        inst = self.show(iid)
        assert inst is not None, f"instance {iid} not visible"
        return inst


@pytest.fixture
def api(vast_emulator: VastEmulator) -> Iterator[Api]:  # noqa: F811
    client = Api(vast_emulator)
    yield client
    client.session.close()


def _emu(api: Api) -> VastEmulator:
    return api.emu


def _cheapest(api: Api, **filters: Any) -> dict[str, Any]:
    return api.search({**filters, "order": [["dph_total", "asc"]], "limit": 1})[0]


# ------------------------------------------------------------------------------------- auth


def test_auth_header_and_query_param(api: Api) -> None:
    emu = _emu(api)
    assert api.call("GET", "/api/v0/users/current/").status_code == 200
    resp = requests.get(emu.url + "/api/v0/users/current/", params={"api_key": emu.api_key})
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/json"
    user = resp.json()
    for fld in ("id", "email", "username", "balance", "credit", "can_pay", "has_billing"):
        assert fld in user
    assert emu.api_key not in resp.text and "api_key" not in user


def test_auth_errors_401_and_404(api: Api) -> None:
    emu = _emu(api)
    for client in (Api(emu, key=None), Api(emu, key="wrong")):
        resp = client.call("POST", "/api/v0/bundles/", json_body={})
        assert resp.status_code == 401
        assert resp.json() == AUTH_ERROR
        assert resp.headers["Content-Type"] == "application/json"
    emu.auth_error_status = 404
    resp = Api(emu, key="wrong").call("GET", "/api/v0/users/current")
    assert resp.status_code == 404 and resp.json() == AUTH_ERROR
    assert emu.requests[-1]["auth_ok"] is False
    assert emu.requests[-2]["auth_ok"] is False


def test_trailing_slash_optional_and_unknown_path(api: Api) -> None:
    assert api.call("GET", "/api/v0/users/current").status_code == 200
    assert api.call("GET", "/api/v0/users/current/").status_code == 200
    assert api.call("POST", "/api/v0/bundles", json_body={}).status_code == 200
    resp = api.call("GET", "/api/v0/nope/")
    assert resp.status_code == 404 and resp.json()["success"] is False
    assert api.call("PATCH", "/api/v0/bundles/", json_body={}).status_code == 405


# ------------------------------------------------------------------------------------ search


def test_default_offers_shape_and_implicit_rentable(api: Api) -> None:
    emu = _emu(api)
    offers = api.search({})
    assert len(offers) == len(emu.offers) >= 10
    names = [o["gpu_name"] for o in offers]
    assert names.count("RTX 4090") == 3
    assert {"RTX 3090", "RTX A6000", "A100 SXM4", "H100 SXM"} <= set(names)
    assert any(o["reliability"] == 0.80 for o in offers)
    assert any(o["verification"] == "unverified" for o in offers)
    assert any(o["cuda_max_good"] == 11.8 for o in offers)
    assert any(o["num_gpus"] == 2 for o in offers)
    four = next(o for o in offers if o["gpu_name"] == "RTX 4090")
    expected = (
        "id machine_id host_id gpu_ram gpu_total_ram cpu_cores cpu_cores_effective cpu_ram "
        "cpu_name disk_space dph_base dph_total storage_cost storage_total_cost reliability "
        "reliability2 cuda_max_good driver_version compute_cap geolocation verification "
        "rentable rented inet_down inet_up dlperf dlperf_per_dphtotal total_flops "
        "direct_port_count public_ipaddr score static_ip duration end_date"
    )
    for fld in expected.split():
        assert fld in four, fld
    assert four["gpu_ram"] == 24564 and four["compute_cap"] == 890
    # Default order is score descending.
    scores = [o["score"] for o in offers]
    assert scores == sorted(scores, reverse=True)
    hidden = emu.add_offer(rentable=False)
    ids = {o["id"] for o in api.search({})}
    assert hidden["id"] not in ids
    assert hidden["id"] in {o["id"] for o in api.search({"rentable": {"eq": False}})}


def test_filters_with_numeric_strings_and_units(api: Api) -> None:
    got = api.search(
        {
            "gpu_ram": {"gte": 24000.0},
            "reliability": {"gt": "0.98"},
            "num_gpus": {"eq": "1"},
            "cuda_max_good": {"gte": "12.8"},
            "verified": {"eq": True},
            "external": {"eq": False},
            "rented": {"eq": False},
            "no_such_field": {"eq": "ignored"},
        }
    )
    assert got, "expected matches"
    for offer in got:
        assert offer["gpu_ram"] >= 24000 and offer["reliability"] > 0.98
        assert offer["num_gpus"] == 1 and offer["cuda_max_good"] >= 12.8
        assert offer["verification"] == "verified"
    assert not any(o["reliability"] == 0.80 for o in got)
    # cpu_ram in MB, disk_space in GB, duration in seconds
    big = api.search({"cpu_ram": {"gte": 200000.0}})
    assert {o["gpu_name"] for o in big} == {"A100 SXM4", "H100 SXM"}
    assert all(o["disk_space"] >= 400 for o in api.search({"disk_space": {"gte": "400"}}))
    assert api.search({"duration": {"gte": 86400.0 * 7}})
    # underscores become spaces; neq / in / notin
    assert {o["gpu_name"] for o in api.search({"gpu_name": {"eq": "RTX_4090"}})} == {"RTX 4090"}
    assert "RTX 4090" not in {o["gpu_name"] for o in api.search({"gpu_name": {"neq": "RTX 4090"}})}
    two = api.search({"gpu_name": {"in": ["RTX 3090", "H100 SXM"]}})
    assert {o["gpu_name"] for o in two} == {"RTX 3090", "H100 SXM"}
    assert api.search({"num_gpus": {"in": ["2"]}})[0]["num_gpus"] == 2
    # driver_version sent by the CLI as an int
    drv = api.search({"driver_version": {"gte": 570000000}})
    assert drv and all(int(o["driver_version"].split(".")[0]) >= 570 for o in drv)
    # unverified offers are matched by verified=false
    assert {o["verification"] for o in api.search({"verified": {"eq": "false"}})} == {"unverified"}


def test_geolocation_country_codes(api: Api) -> None:
    us_ca = api.search({"geolocation": {"in": ["US", "CA"]}})
    assert us_ca and all(o["geolocation"][-2:] in ("US", "CA") for o in us_ca)
    not_us = api.search({"geolocation": {"notin": ["US"]}})
    assert not_us and all(not o["geolocation"].endswith("US") for o in not_us)
    assert {o["geolocation"] for o in api.search({"geolocation": {"eq": "DE"}})} == {"Germany, DE"}
    assert len(us_ca) + len(not_us) - len(api.search({"geolocation": {"eq": "CA"}})) == len(
        api.search({})
    )


def test_order_limit_and_type(api: Api) -> None:
    asc = api.search({"order": [["dph_total", "asc"]]})
    prices = [o["dph_total"] for o in asc]
    assert prices == sorted(prices)
    desc = api.search({"order": [["num_gpus", "desc"], ["dph_total", "asc"]], "limit": 3})
    assert len(desc) == 3 and desc[0]["num_gpus"] == 2
    assert desc[1]["dph_total"] <= desc[2]["dph_total"]
    assert len(api.search({"limit": "2"})) == 2
    for kind in ("on-demand", "ondemand", "bid", "reserved"):
        assert api.search({"type": kind, "limit": 1})
    bad = api.call("POST", "/api/v0/bundles/", json_body={"type": "sometimes"})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_args"


def test_allocated_storage_pricing(api: Api) -> None:
    emu = _emu(api)
    offer = emu.add_offer(gpu_name="RTX 4090", dph_base=0.2, storage_cost=0.18)
    by_id = {"id": {"eq": offer["id"]}}
    default = api.search(by_id)[0]
    assert default["storage_total_cost"] == pytest.approx(0.18 * 8 / 720)
    assert default["dph_total"] == pytest.approx(0.2 + 0.18 * 8 / 720)
    fifty = api.search({**by_id, "allocated_storage": 50})[0]
    assert fifty["storage_total_cost"] == pytest.approx(0.18 * 50 / 720)
    assert fifty["dph_total"] == pytest.approx(0.2 + 0.18 * 50 / 720)
    # filters on dph_total use the computed value: 0.2125 at 50 GiB, 0.225 at 100 GiB
    assert api.search({**by_id, "dph_total": {"lt": 0.22}, "allocated_storage": "50"})
    assert not api.search({**by_id, "dph_total": {"lt": 0.22}, "allocated_storage": 100})
    # the stored offer is untouched by the search-time pricing
    assert emu.offers[offer["id"]]["storage_total_cost"] == pytest.approx(0.18 * 8 / 720)


def test_malformed_filter_is_ignored_and_bad_json_rejected(api: Api) -> None:
    assert len(api.search({"gpu_ram": 24000})) == len(api.search({}))
    resp = api.session.post(
        api.emu.url + "/api/v0/bundles/",
        data=b"{not json",
        headers={"Authorization": f"Bearer {api.key}", "Content-Type": "application/json"},
    )
    assert resp.status_code == 400 and resp.json()["success"] is False


# --------------------------------------------------------------------------------- templates


def test_template_search(api: Api) -> None:
    emu = _emu(api)
    resp = api.call("GET", "/api/v0/template/", params={"select_filters": {"name": {"eq": OSTRIS}}})
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "application/json"
    body = resp.json()
    assert body["success"] is True and body["templates_found"] == 1
    tpl = body["templates"][0]
    assert tpl["image"] == "vastai/ostris-ai-toolkit" and "cuda-12.9" in tpl["tag"]
    assert isinstance(tpl["env"], str) and "-p 18675:8675" in tpl["env"]
    assert tpl["runtype"] == "ssh" and tpl["use_ssh"] is True and tpl["ssh_direct"] is True
    assert tpl["extra_filters"] == {"cuda_max_good": {"gte": 12.8}}
    assert tpl["recommended_disk_space"] == 32 and tpl["recommended"] is True
    assert isinstance(tpl["id"], int) and int(tpl["hash_id"], 16) >= 0
    by_hash = api.call(
        "GET", "/api/v0/template/", params={"select_filters": {"hash_id": {"eq": tpl["hash_id"]}}}
    ).json()
    assert [t["name"] for t in by_hash["templates"]] == [OSTRIS]
    both = api.call(
        "GET",
        "/api/v0/template/",
        params={
            "select_filters": {"image": {"in": ["vastai/pytorch", "vastai/base-image"]}},
            "select_cols": ["name", "hash_id"],
            "order_by": [{"col": "name", "dir": "desc"}],
        },
    ).json()
    assert [t["name"] for t in both["templates"]] == ["PyTorch (Vast)", "NVIDIA CUDA"]
    assert set(both["templates"][0]) == {"id", "name", "hash_id"}
    emu.add_template(name="Mine", image="me/img", use_ssh=False, recommended=False)
    flt = {"use_ssh": {"eq": "false"}, "recommended": {"eq": False}}
    mine = api.call("GET", "/api/v0/template/", params={"select_filters": flt}).json()
    assert [t["name"] for t in mine["templates"]] == ["Mine"]
    none = api.call("GET", "/api/v0/template/", params={"select_filters": {"name": {"neq": "x"}}})
    assert none.json()["templates_found"] == len(emu.templates)


# ------------------------------------------------------------------------------------ create


def test_create_validation_errors(api: Api) -> None:
    offer = _cheapest(api, gpu_name={"eq": "RTX 4090"})
    oid = offer["id"]
    resp = api.create(oid, env="-e A=1")
    assert resp.status_code == 400
    assert resp.json() == {
        "success": False,
        "error": "invalid_args",
        "msg": "invalid env type: env must be a dict",
    }
    resp = api.create(999)
    assert resp.status_code == 404
    assert resp.json()["error"] == "no_such_ask" and resp.json()["success"] is False
    assert (
        resp.json()["msg"]
        == "error 404/3603: no_such_ask Instance type by id 999 is not available."
    )
    for body, err in (
        ({"label": "x" * 257}, "invalid_args"),
        ({"onstart": "a" * 4000, "args_str": "b" * 97}, "invalid_args"),
        ({"disk": 7}, "invalid_args"),
        ({"image": None}, "invalid_args"),
        ({"image": None, "template_hash_id": "deadbeef"}, "invalid_args"),
        ({"price": 500}, "invalid_price"),
    ):
        resp = api.create(oid, **body)
        assert resp.status_code == 400, body
        assert resp.json()["error"] == err and resp.json()["success"] is False
    assert _emu(api).live_instances() == []
    ok = api.create(oid, label="x" * 256, onstart="a" * 4000, args_str="b" * 96, disk=8)
    assert ok.status_code == 200, ok.text


def test_create_success_record_and_offer_rented(api: Api) -> None:
    emu = _emu(api)
    offer = _cheapest(api, gpu_name={"eq": "RTX 4090"}, verified={"eq": True})
    resp = api.create(
        offer["id"],
        image="vastai/base-image:cuda-12.8.1-auto",
        env={"HF_TOKEN": "hf_x", "-p 8080:8080": "1"},
        label="gpushopper:abc:run1",
        onstart="echo hi",
        disk=40,
        runtype="ssh_direc ssh_proxy",
    )
    assert resp.status_code == 200
    body = resp.json()
    assert body["success"] is True and isinstance(body["new_contract"], int)
    assert isinstance(body["instance_api_key"], str) and len(body["instance_api_key"]) >= 32
    iid = body["new_contract"]
    record = emu.instances[iid]
    assert record["instance_api_key"] == body["instance_api_key"]
    assert record["actual_status"] is None  # nothing polled yet
    inst = api.show(iid)
    assert inst is not None
    assert inst["id"] == iid and inst["label"] == "gpushopper:abc:run1"
    assert inst["image_uuid"] == "vastai/base-image:cuda-12.8.1-auto"
    assert inst["image_runtype"] == "ssh_direc ssh_proxy"
    assert ["HF_TOKEN", "hf_x"] in inst["extra_env"] and ["-p 8080:8080", "1"] in inst["env"]
    assert inst["onstart"] == "echo hi" and inst["disk_space"] == 40
    assert inst["gpu_name"] == "RTX 4090" and inst["num_gpus"] == 1 and inst["gpu_ram"] == 24564
    assert inst["machine_id"] == offer["machine_id"] and inst["host_id"] == offer["host_id"]
    assert inst["geolocation"] == offer["geolocation"]
    assert inst["dph_base"] == offer["dph_base"]
    assert inst["dph_total"] == pytest.approx(offer["dph_base"] + offer["storage_cost"] * 40 / 720)
    assert inst["storage_cost"] == offer["storage_cost"]
    assert abs(inst["start_date"] - time.time()) < 60
    assert inst["actual_status"] == "running"
    assert inst["intended_status"] == "running" and inst["cur_state"] == "running"
    assert inst["template_hash_id"] is None and "success" in inst["status_msg"]
    assert "instance_api_key" not in inst and "authorized_keys" not in inst
    # the offer is gone from search and cannot be rented twice
    assert offer["id"] not in {o["id"] for o in api.search({})}
    again = api.create(offer["id"])
    assert again.status_code == 404 and again.json()["error"] == "no_such_ask"


def test_create_from_template_merges_env(api: Api) -> None:
    emu = _emu(api)
    tpl = next(t for t in emu.templates if t["name"] == OSTRIS)
    offer = _cheapest(api, cuda_max_good={"gte": 12.8}, gpu_ram={"gte": 24000.0})
    resp = api.call(
        "PUT",
        f"/api/v0/asks/{offer['id']}/",
        json_body={"template_hash_id": tpl["hash_id"], "env": {"WORKSPACE": "/data", "X": "1"}},
    )
    assert resp.status_code == 200, resp.text
    inst = api.show(resp.json()["new_contract"])
    assert inst is not None
    assert inst["image_uuid"] == f"vastai/ostris-ai-toolkit:{tpl['tag']}"
    env = dict(map(tuple, inst["extra_env"]))
    assert env == {"-p 18675:8675": "1", "WORKSPACE": "/data", "X": "1"}
    assert inst["template_hash_id"] == tpl["hash_id"] and inst["image_runtype"] == "ssh"
    assert inst["disk_space"] == 32  # template's recommended disk


def test_disk_capped_at_offer_disk(api: Api) -> None:
    offer = _emu(api).add_offer(disk_space=60.0)
    iid = api.create(offer["id"], disk=500).json()["new_contract"]
    inst = api.show(iid)
    assert inst is not None and inst["disk_space"] == 60.0


# ------------------------------------------------------------------------------- list / show


def test_v1_paging_60_instances(api: Api) -> None:
    emu = _emu(api)
    for i in range(60):
        emu.create_instance_directly(label=f"job-{i % 3}")
    seen: list[int] = []
    token: str | None = None
    pages = []
    while True:
        params: dict[str, Any] = {"select_filters": {}, "order_by": [{"col": "id", "dir": "asc"}]}
        if token:
            params["after_token"] = token
        resp = api.call("GET", "/api/v1/instances/", params=params)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["success"] is True and body["total_instances"] == 60
        assert body["instances_found"] == len(body["instances"])
        pages.append(len(body["instances"]))
        seen.extend(i["id"] for i in body["instances"])
        token = body["next_token"]
        if token is None:
            break
    assert pages == [25, 25, 10]
    assert seen == sorted(seen) and len(set(seen)) == 60
    assert all("instance_api_key" not in i for i in body["instances"])
    assert body["label_counts"] == {"job-0": 20, "job-1": 20, "job-2": 20}


def test_v1_limits_filters_and_bad_token(api: Api) -> None:
    emu = _emu(api)
    made = [emu.create_instance_directly(label=f"l{i}") for i in range(30)]
    emu.create_instance_directly(label="sleepy", status="loading")

    def page(**params: Any) -> dict[str, Any]:
        resp = api.call("GET", "/api/v1/instances/", params=params)
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    assert page()["instances_found"] == 25
    assert page(limit=100)["instances_found"] == 25
    assert page(limit=0)["instances_found"] == 5
    assert page(limit=-3)["instances_found"] == 5
    assert page(limit=7)["instances_found"] == 7
    one = page(select_filters={"label": {"eq": "l3"}})
    assert [i["id"] for i in one["instances"]] == [made[3]["id"]]
    some = page(select_filters={"label": {"in": ["l1", "l2", "nope"]}})
    assert some["total_instances"] == 2
    loading = page(select_filters={"actual_status": {"eq": "loading"}})
    assert [i["label"] for i in loading["instances"]] == ["sleepy"]
    assert page(select_filters={"actual_status": {"neq": "running"}})["total_instances"] == 1
    assert page(select_filters={"id": {"eq": made[0]["id"]}})["total_instances"] == 1
    newest = page(order_by=[{"col": "id", "dir": "desc"}], limit=1)["instances"][0]
    assert newest["label"] == "sleepy"
    bad = api.call("GET", "/api/v1/instances/", params={"after_token": "garbage!!"})
    assert bad.status_code == 400
    assert bad.json()["error"] == "invalid_token" and bad.json()["success"] is False
    computed = api.call(
        "GET", "/api/v1/instances/", params={"select_filters": {"dph_total": {"lt": 1}}}
    )
    assert computed.status_code == 400


def test_v0_list_is_deprecated(api: Api) -> None:
    resp = api.call("GET", "/api/v0/instances/", params={"owner": "me"})
    assert resp.status_code == 410
    assert resp.json() == {
        "success": False,
        "error": "deprecated_endpoint",
        "msg": "/api/v0/instances/ is deprecated. Use /api/v1/instances/ instead.",
    }


def test_show_unknown_and_destroyed_is_null(api: Api) -> None:
    resp = api.call("GET", "/api/v0/instances/123/", params={"owner": "me"})
    assert resp.status_code == 200 and resp.json() == {"instances": None}
    iid = api.create(_cheapest(api)["id"]).json()["new_contract"]
    assert api.show(iid) is not None
    assert api.call("DELETE", f"/api/v0/instances/{iid}/", json_body={}).json() == {"success": True}
    assert api.show(iid) is None
    assert _emu(api).live_instances() == []
    assert _emu(api).instances[iid]["destroyed"] is True


def test_label_stop_start_and_unknown(api: Api) -> None:
    emu = _emu(api)
    offer = _cheapest(api)
    iid = api.create(offer["id"]).json()["new_contract"]
    resp = api.call("PUT", f"/api/v0/instances/{iid}/", json_body={"label": "renamed"})
    assert resp.json() == {"success": True, "msg": f"label for {iid} set to 'renamed'"}
    assert api.get(iid)["label"] == "renamed"
    long = api.call("PUT", f"/api/v0/instances/{iid}/", json_body={"label": "y" * 1025})
    assert long.status_code == 400 and long.json()["error"] == "label_too_long"
    stop = api.call("PUT", f"/api/v0/instances/{iid}/", json_body={"state": "stopped"})
    assert stop.json()["success"] is True
    inst = api.show(iid)
    assert inst is not None and inst["actual_status"] == "stopped"
    assert inst["intended_status"] == "stopped" and inst["ports"] == {}
    start = api.call("PUT", f"/api/v0/instances/{iid}/", json_body={"state": "running"})
    assert start.json()["success"] is True
    assert api.get(iid)["actual_status"] == "running"
    bad = api.call("PUT", f"/api/v0/instances/{iid}/", json_body={"state": "flying"})
    assert bad.status_code == 400
    missing = api.call("PUT", "/api/v0/instances/42/", json_body={"label": "x"})
    assert missing.status_code == 404 and missing.json()["error"] == "no_such_instance"
    gone = api.call("DELETE", "/api/v0/instances/42/")
    assert gone.status_code == 404
    assert gone.json() == {"success": False, "error": "not_found", "msg": "Instance 42 not found"}
    assert emu.live_instances()[0]["id"] == iid


def test_destroy_frees_the_offer(api: Api) -> None:
    offer = _cheapest(api)
    iid = api.create(offer["id"]).json()["new_contract"]
    assert offer["id"] not in {o["id"] for o in api.search({})}
    api.call("DELETE", f"/api/v0/instances/{iid}/")
    assert offer["id"] in {o["id"] for o in api.search({})}


# ---------------------------------------------------------------------------- state machine


@pytest.fixture
def clocked() -> Iterator[tuple[VastEmulator, FakeClock, Api]]:
    clock = FakeClock()
    emu = VastEmulator(clock=clock)
    emu.seed_default_offers()
    emu.start()
    client = Api(emu)
    try:
        yield emu, clock, client
    finally:
        client.session.close()
        emu.stop()


def test_state_machine_with_fake_clock(clocked: tuple[VastEmulator, FakeClock, Api]) -> None:
    emu, clock, api = clocked
    emu.boot = {"mode": "ok", "loading_after": 10.0, "running_after": 60.0}
    iid = api.create(_cheapest(api)["id"]).json()["new_contract"]
    start_epoch = api.get(iid)["start_date"]
    seen = []
    for step in (0, 5, 5, 30, 19, 1, 100):
        clock.advance(step)
        inst = api.get(iid)
        seen.append(inst["actual_status"])
        if inst["actual_status"] != "running":
            assert inst["ssh_port"] is None and inst["ports"] == {}
    assert seen == [None, None, "loading", "loading", "loading", "running", "running"]
    assert inst["ssh_host"] == "127.0.0.1" and inst["public_ipaddr"] == "127.0.0.1"
    port = inst["ssh_port"]
    assert inst["ports"] == {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(port)}]}
    with socket.socket() as sock, pytest.raises(OSError):  # nothing listens there
        sock.settimeout(1)
        sock.connect(("127.0.0.1", port))
    # stop -> stopped; start -> boots again through loading
    api.call("PUT", f"/api/v0/instances/{iid}/", json_body={"state": "stopped"})
    assert api.get(iid)["actual_status"] == "stopped"
    clock.advance(1000)
    assert api.get(iid)["actual_status"] == "stopped"
    api.call("PUT", f"/api/v0/instances/{iid}/", json_body={"state": "running"})
    clock.advance(20)
    assert api.get(iid)["actual_status"] == "loading"
    clock.advance(40)
    assert api.get(iid)["actual_status"] == "running"
    assert api.get(iid)["start_date"] == start_epoch
    # creation time follows the fake clock too
    iid2 = api.create(_cheapest(api)["id"]).json()["new_contract"]
    assert api.get(iid2)["start_date"] == pytest.approx(start_epoch + 1060)


def test_boot_modes_per_offer(clocked: tuple[VastEmulator, FakeClock, Api]) -> None:
    emu, clock, api = clocked
    boot = {"loading_after": 1.0, "running_after": 10.0}
    exited = emu.add_offer(boot={"mode": "exited", **boot})
    stuck = emu.add_offer(boot={"mode": "stuck_loading", **boot})
    unknown = emu.add_offer(boot={"mode": "unknown", **boot})
    normal = emu.add_offer()
    ids = {
        name: api.create(offer["id"]).json()["new_contract"]
        for name, offer in (("exited", exited), ("stuck", stuck), ("unknown", unknown))
    }
    ids["ok"] = api.create(normal["id"]).json()["new_contract"]

    def statuses() -> dict[str, Any]:
        return {name: api.get(iid)["actual_status"] for name, iid in ids.items()}

    assert statuses() == {"exited": None, "stuck": None, "unknown": None, "ok": "running"}
    clock.advance(5)
    assert statuses() == {
        "exited": "loading",
        "stuck": "loading",
        "unknown": "loading",
        "ok": "running",
    }
    clock.advance(3600)
    assert statuses() == {
        "exited": "exited",
        "stuck": "loading",
        "unknown": "unknown",
        "ok": "running",
    }
    assert api.get(ids["exited"])["status_msg"].startswith("Error")
    emu.force_status(ids["ok"], "offline")
    assert api.get(ids["ok"])["actual_status"] == "offline"


def test_create_instance_directly_for_orphans(api: Api) -> None:
    emu = _emu(api)
    orphan = emu.create_instance_directly(label="gpushopper:other-install:x")
    stopped = emu.create_instance_directly(label="old", status="stopped")
    assert orphan["instance_api_key"] and orphan["actual_status"] == "running"
    assert stopped["actual_status"] == "stopped"
    labels = {
        i["label"]: i["actual_status"]
        for i in api.call("GET", "/api/v1/instances/").json()["instances"]
    }
    assert labels == {"gpushopper:other-install:x": "running", "old": "stopped"}
    assert {i["id"] for i in emu.live_instances()} == {orphan["id"], stopped["id"]}


# ------------------------------------------------------------------------------------ faults


def test_fail_next_status_body_times_retry_after(api: Api) -> None:
    emu = _emu(api)
    emu.fail_next("POST", r"/bundles/?$", status=503, times=2, retry_after=3)
    for _ in range(2):
        resp = api.call("POST", "/api/v0/bundles/", json_body={})
        assert resp.status_code == 503 and resp.headers["Retry-After"] == "3"
    assert api.call("POST", "/api/v0/bundles/", json_body={}).status_code == 200
    emu.fail_next("GET", r"/users/current", status=500, body={"success": False, "error": "boom"})
    resp = api.call("GET", "/api/v0/users/current/")
    assert resp.status_code == 500 and resp.json() == {"success": False, "error": "boom"}
    emu.fail_next("GET", r"/users/current", status=502, body="bad gateway")
    resp = api.call("GET", "/api/v0/users/current/")
    assert resp.status_code == 502 and resp.text == "bad gateway"
    assert resp.headers["Content-Type"].startswith("text/plain")
    emu.fail_next("PUT", r"/asks/", status=500)
    resp = api.create(_cheapest(api)["id"])
    assert resp.status_code == 500 and resp.json()["error"] == "server_error"
    assert emu.live_instances() == []  # a fault has no side effect
    # method mismatch does not consume the fault
    emu.fail_next("DELETE", r"/instances/", status=500)
    assert api.call("GET", "/api/v0/users/current/").status_code == 200
    assert emu.requests[-1].get("fault") is None
    emu.clear_faults()


def test_fault_delay_and_malformed(api: Api) -> None:
    emu = _emu(api)
    emu.fail_next("GET", r"/users/current", status=200, body={"ok": True}, delay=0.3)
    with pytest.raises(requests.exceptions.ReadTimeout):
        api.call("GET", "/api/v0/users/current/", timeout=0.05)
    emu.fail_next(None, r"/bundles", malformed=True)
    resp = api.call("POST", "/api/v0/bundles/", json_body={})
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "application/json"
    with pytest.raises(ValueError):
        resp.json()
    assert api.call("POST", "/api/v0/bundles/", json_body={}).json()["offers"]


def test_rate_limit_and_latency(api: Api) -> None:
    emu = _emu(api)
    emu.rate_limit_next(times=2, retry_after=1)
    for _ in range(2):
        resp = api.call("GET", "/api/v0/users/current/")
        assert resp.status_code == 429
        assert resp.text == "API requests too frequent endpoint threshold=2.0"
        assert resp.headers["Content-Type"].startswith("text/plain")
        assert resp.headers["Retry-After"] == "1"
    emu.rate_limit_next()
    resp = api.call("POST", "/api/v0/bundles/", json_body={})
    assert resp.status_code == 429 and "Retry-After" not in resp.headers
    assert api.call("GET", "/api/v0/users/current/").status_code == 200
    emu.latency = 0.15
    began = time.monotonic()
    assert api.call("GET", "/api/v0/users/current/").status_code == 200
    assert time.monotonic() - began >= 0.15
    emu.latency = 0.0


def test_create_error_after_create_leaves_instance(api: Api) -> None:
    emu = _emu(api)
    emu.create_error_after_create = True
    offer = _cheapest(api)
    resp = api.create(offer["id"], label="intent-123")
    assert resp.status_code == 500
    assert resp.json() == {
        "success": False,
        "error": "server_error",
        "msg": "Internal server error",
    }
    emu.create_error_after_create = False
    found = api.call(
        "GET", "/api/v1/instances/", params={"select_filters": {"label": {"eq": "intent-123"}}}
    ).json()
    assert found["total_instances"] == 1
    assert found["instances"][0]["gpu_name"] == offer["gpu_name"]


def test_destroy_fail_times(api: Api) -> None:
    emu = _emu(api)
    iid = api.create(_cheapest(api)["id"]).json()["new_contract"]
    emu.destroy_fail_times = 2
    for _ in range(2):
        assert api.call("DELETE", f"/api/v0/instances/{iid}/").status_code == 500
        assert api.show(iid) is not None
    assert api.call("DELETE", f"/api/v0/instances/{iid}/").json() == {"success": True}
    assert api.show(iid) is None


# ------------------------------------------------------------------------ instance-scoped key


def test_instance_key_only_controls_its_own_instance(api: Api) -> None:
    emu = _emu(api)
    offers = api.search({"order": [["dph_total", "asc"]], "limit": 2})
    mine = api.create(offers[0]["id"]).json()
    other = api.create(offers[1]["id"]).json()
    scoped = Api(emu, key=mine["instance_api_key"])
    iid, other_id = mine["new_contract"], other["new_contract"]
    assert scoped.get(iid)["id"] == iid
    relabel = scoped.call("PUT", f"/api/v0/instances/{iid}/", json_body={"label": "from-box"})
    assert relabel.status_code == 200
    for method, path in (
        ("GET", f"/api/v0/instances/{other_id}/"),
        ("DELETE", f"/api/v0/instances/{other_id}/"),
        ("POST", "/api/v0/bundles/"),
        ("GET", "/api/v1/instances/"),
        ("GET", "/api/v0/users/current/"),
        ("POST", f"/api/v0/instances/{iid}/ssh/"),
        ("PUT", f"/api/v0/asks/{offers[1]['id']}/"),
    ):
        resp = scoped.call(method, path, json_body={})
        assert resp.status_code == 401, (method, path)
        assert resp.json() == AUTH_ERROR
    # query-param form works too, like curl "...?api_key=$CONTAINER_API_KEY"
    resp = requests.delete(
        f"{emu.url}/api/v0/instances/{iid}/", params={"api_key": mine["instance_api_key"]}
    )
    assert resp.status_code == 200 and resp.json() == {"success": True}
    assert [i["id"] for i in emu.live_instances()] == [other_id]


# ------------------------------------------------------------------------------ ssh + backend


def test_ssh_backend_hook(clocked: tuple[VastEmulator, FakeClock, Api]) -> None:
    _, clock, _ = clocked
    backend = RecordingBackend()
    emu = VastEmulator(ssh_backend=backend, clock=clock)
    emu.boot = {"mode": "ok", "loading_after": 2.0, "running_after": 30.0}
    offer = emu.add_offer(gpu_name="RTX 4090", cuda_max_good=12.9, driver_version="575.57.08")
    liar = emu.add_offer(gpu_name="RTX 4090", cuda_max_good=12.9, real_gpu={"cuda_version": "12.8"})
    with emu:
        api = Api(emu)
        iid = api.create(offer["id"], disk=50).json()["new_contract"]
        attach = api.call("POST", f"/api/v0/instances/{iid}/ssh/", json_body={"ssh_key": PUBKEY_A})
        assert attach.status_code == 200 and attach.json()["success"] is True
        clock.advance(10)
        assert api.get(iid)["actual_status"] == "loading"
        assert backend.calls == []
        clock.advance(25)
        inst = api.show(iid)
        assert inst is not None and inst["actual_status"] == "running"
        kind, key, keys, gpu = backend.calls[0]
        assert (kind, key, keys) == ("start", f"vastai:{iid}", [PUBKEY_A])
        assert gpu == {
            "name": "NVIDIA GeForce RTX 4090",
            "count": 1,
            "memory_mib": 24564,
            "driver_version": "575.57.08",
            "cuda_version": "12.9",
            "disk_total_gb": 50,
            "disk_free_gb": 48,
        }
        port = backend.next_port
        assert inst["ssh_host"] == "127.0.0.1" and inst["ssh_port"] == port
        assert inst["public_ipaddr"] == "127.0.0.1"
        assert inst["ports"] == {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(port)}]}
        api.show(iid)
        assert backend.names() == ["start"]  # started once only
        # later keys -> set_keys; listing; detach -> set_keys
        api.call("POST", f"/api/v0/instances/{iid}/ssh/", json_body={"ssh_key": PUBKEY_B})
        assert backend.calls[-1] == ("set_keys", f"vastai:{iid}", [PUBKEY_A, PUBKEY_B])
        listed = api.call("GET", f"/api/v0/instances/{iid}/ssh/").json()
        keys_listed = json.loads(listed["ssh_keys"])
        assert [k["public_key"] for k in keys_listed] == [PUBKEY_A, PUBKEY_B]
        kid = keys_listed[0]["id"]
        detach = api.call("DELETE", f"/api/v0/instances/{iid}/ssh/{kid}/")
        assert detach.json()["success"] is True
        assert backend.calls[-1] == ("set_keys", f"vastai:{iid}", [PUBKEY_B])
        assert emu.instances[iid]["authorized_keys"] == [PUBKEY_B]
        bad = api.call("POST", f"/api/v0/instances/{iid}/ssh/", json_body={"ssh_key": "nope"})
        assert bad.status_code == 400
        # stop -> backend stop; restart -> start again
        api.call("PUT", f"/api/v0/instances/{iid}/", json_body={"state": "stopped"})
        api.show(iid)
        assert backend.calls[-1] == ("stop", f"vastai:{iid}")
        api.call("PUT", f"/api/v0/instances/{iid}/", json_body={"state": "running"})
        clock.advance(31)
        assert api.get(iid)["ssh_port"] == backend.next_port
        assert backend.names()[-1] == "start"
        # destroy -> stop
        api.call("DELETE", f"/api/v0/instances/{iid}/")
        assert backend.calls[-1] == ("stop", f"vastai:{iid}")
        # real_gpu overrides what the offer advertises
        lid = api.create(liar["id"], disk=20).json()["new_contract"]
        clock.advance(31)
        api.show(lid)
        start = [c for c in backend.calls if c[0] == "start" and c[1] == f"vastai:{lid}"][0]
        assert start[3]["cuda_version"] == "12.8" and start[3]["driver_version"] == "575.57.08"
        api.session.close()
    # emulator stop() stops what is still running
    assert backend.calls[-1] == ("stop", f"vastai:{lid}")


def test_backend_failure_marks_instance_exited() -> None:
    class Broken(RecordingBackend):
        def start(
            self, instance_key: str, authorized_keys: list[str], gpu: dict[str, Any]
        ) -> tuple[str, int]:
            raise RuntimeError("no sshd for you")

    emu = VastEmulator(ssh_backend=Broken())
    emu.add_offer()
    with emu:
        api = Api(emu)
        iid = api.create(next(iter(emu.offers))).json()["new_contract"]
        inst = api.show(iid)
        assert inst is not None and inst["actual_status"] == "exited"
        assert "no sshd" in inst["status_msg"] and emu.backend_errors
        api.session.close()


def test_account_keys_reach_new_instances(api: Api) -> None:
    emu = _emu(api)
    assert api.call("GET", "/api/v0/ssh/").json() == []
    added = api.call("POST", "/api/v0/ssh/", json_body={"ssh_key": PUBKEY_A}).json()
    assert added["success"] is True and added["key"]["public_key"] == PUBKEY_A
    listed = api.call("GET", "/api/v0/ssh/").json()
    assert [k["key"] for k in listed] == [PUBKEY_A]
    missing = api.call("POST", "/api/v0/ssh/", json_body={})
    assert missing.status_code == 400 and missing.json()["error"] == "no_ssh_key"
    iid = api.create(_cheapest(api)["id"]).json()["new_contract"]
    assert emu.instances[iid]["authorized_keys"] == [PUBKEY_A]
    assert api.call("DELETE", f"/api/v0/ssh/{added['key']['id']}/").json()["success"] is True
    assert api.call("GET", "/api/v0/ssh/").json() == []


# ------------------------------------------------------------------------------ misc surface


def test_requests_log(api: Api) -> None:
    emu = _emu(api)
    emu.requests.clear()
    api.call("GET", "/api/v1/instances/", params={"select_filters": {"label": {"eq": "a"}}})
    api.create(999, label="lbl")
    first, second = emu.requests
    assert first["method"] == "GET" and first["path"] == "/api/v1/instances/"
    assert json.loads(first["query"]["select_filters"]) == {"label": {"eq": "a"}}
    assert first["json"] is None and first["auth_ok"] is True and first["status"] == 200
    assert second["method"] == "PUT" and second["json"]["label"] == "lbl"
    assert second["status"] == 404


def test_marketing_names() -> None:
    assert marketing_gpu_name("RTX 4090") == "NVIDIA GeForce RTX 4090"
    assert marketing_gpu_name("RTX A6000") == "NVIDIA RTX A6000"
    assert marketing_gpu_name("H100 SXM") == "NVIDIA H100 80GB HBM3"
    assert marketing_gpu_name("RTX 2080 Ti") == "NVIDIA GeForce RTX 2080 Ti"
    assert marketing_gpu_name("Tesla V100") == "NVIDIA Tesla V100"


def test_generate_offers_many_quickly() -> None:
    emu = VastEmulator()
    began = time.monotonic()
    made = emu.generate_offers(20000, seed=7)
    assert len(made) == len(emu.offers) == 20000
    assert time.monotonic() - began < 10
    assert len({o["gpu_name"] for o in made}) > 5
    again = VastEmulator().generate_offers(50, seed=7)
    assert [o["dph_base"] for o in again] == [o["dph_base"] for o in made[:50]]
    with emu:
        api = Api(emu)
        began = time.monotonic()
        got = api.search(
            {
                "gpu_ram": {"gte": 24000.0},
                "verified": {"eq": True},
                "reliability": {"gt": "0.98"},
                "order": [["dph_total", "asc"]],
                "limit": 50,
            }
        )
        assert time.monotonic() - began < 5
        assert len(got) == 50
        prices = [o["dph_total"] for o in got]
        assert prices == sorted(prices)
        api.session.close()


def test_context_manager_and_url() -> None:
    emu = VastEmulator(api_key="k2")
    with pytest.raises(RuntimeError):
        _ = emu.url
    with emu:
        assert emu.url.startswith("http://127.0.0.1:") and not emu.url.endswith("/")
        resp = requests.get(
            emu.url + "/api/v0/users/current/", headers={"Authorization": "Bearer k2"}
        )
        assert resp.status_code == 200
    with pytest.raises(RuntimeError):
        _ = emu.url


@pytest.mark.parametrize("slow", ["fault delay", "latency"])
def test_stop_ends_a_handler_that_is_waiting_out_a_delay(slow: str) -> None:
    """A delayed answer waits on the emulator's stop event (sandbox/base.py), so ``stop()``
    leaves no handler thread asleep for the rest of the delay."""
    import threading

    def handlers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if "process_request" in t.name]

    before = set(handlers())
    emu = VastEmulator()
    emu.start()
    try:
        if slow == "latency":
            emu.latency = 60.0
        else:
            emu.fail_next("GET", r"/users/current", status=200, body={}, delay=60.0)
        with pytest.raises(requests.exceptions.ReadTimeout):
            requests.get(
                emu.url + "/api/v0/users/current/",
                headers={"Authorization": f"Bearer {emu.api_key}"},
                timeout=0.2,
            )
        assert [t for t in handlers() if t not in before]  # asleep in the delay
    finally:
        emu.stop()
    for thread in [t for t in handlers() if t not in before]:
        thread.join(timeout=5)
        assert not thread.is_alive()
