"""Tests of the TensorDock v2 emulator (gpushopper/sandbox/tensordock.py), over real loopback HTTP."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from gpushopper.sandbox.tensordock import (
    TensorDockEmulator,
    extract_public_keys,
)
from gpushopper.sandbox.vastai import VastEmulator
from tests.fakes.emulators import FakeClock, RecordingBackend

TOKEN = "td-test-token"
KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeyAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA a@test"
KEY_B = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeyBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB b@test"
KEY_C = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCkeyCCCCCCCCCCCCCCCCCCCCCCC+/= c@test"
KEY_D = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYDDDD="


@pytest.fixture
def make_emu() -> Iterator[Callable[..., TensorDockEmulator]]:
    started: list[TensorDockEmulator] = []

    def make(**kw: Any) -> TensorDockEmulator:
        emu = TensorDockEmulator(**kw)
        emu.seed_default()
        emu.start()
        started.append(emu)
        return emu

    yield make
    for emu in started:
        emu.stop()


def call(
    emu: TensorDockEmulator, method: str, path: str, token: str | None = TOKEN, **kw: Any
) -> requests.Response:
    headers = {"Accept": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    kw.setdefault("timeout", 5)
    return requests.request(method, emu.url + path, headers=headers, **kw)


def node_by(emu: TensorDockEmulator, gpu: str, city: str) -> dict[str, Any]:
    return next(
        n
        for n in emu.hostnodes.values()
        if n["location"]["city"] == city
        and any(g["v0Name"] == gpu for g in n["available_resources"]["gpus"])
    )


def dallas_4090(emu: TensorDockEmulator) -> dict[str, Any]:
    return node_by(emu, "geforcertx4090-pcie-24gb", "Dallas")


def create_body(hostnode_id: str | None = None, **attrs: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "gpu-shopper:inst:sess",
        "type": "virtualmachine",
        "image": "ubuntu2404",
        "resources": {
            "vcpu_count": 8,
            "ram_gb": 32,
            "storage_gb": 100,
            "gpus": {"geforcertx4090-pcie-24gb": {"count": 1}},
        },
        "ssh_key": KEY_A,
    }
    if hostnode_id:
        base["hostnode_id"] = hostnode_id
    base.update(attrs)
    base = {k: v for k, v in base.items() if v is not None}
    return {"data": {"type": "virtualmachine", "attributes": base}}


def create(emu: TensorDockEmulator, body: dict[str, Any]) -> requests.Response:
    return call(emu, "POST", "/instances", json=body)


def create_ok(emu: TensorDockEmulator, node: dict[str, Any] | None = None, **attrs: Any) -> str:
    r = create(emu, create_body((node or dallas_4090(emu))["id"], **attrs))
    assert r.status_code == 200, r.text
    assert "error" not in r.json()
    return r.json()["data"]["id"]


def get(emu: TensorDockEmulator, iid: str) -> dict[str, Any]:
    r = call(emu, "GET", f"/instances/{iid}")
    assert r.status_code == 200, r.text
    return r.json()


# ---------------------------------------------------------------- auth and inventory


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/locations"),
        ("GET", "/hostnodes"),
        ("GET", "/instances"),
        ("POST", "/instances"),
        ("DELETE", "/instances/x"),
    ],
)
@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_auth_required_everywhere(tensordock_emulator, method, path, token):  # noqa: F811
    r = call(tensordock_emulator, method, path, token=token, json={})
    assert r.status_code == 401
    assert r.json() == {"error": "Unauthorized: invalid or missing API token", "status": 401}
    assert tensordock_emulator.requests[-1]["auth_ok"] is False
    assert tensordock_emulator.requests[-1]["path"] == path


def test_custom_token_and_url(make_emu):
    emu = make_emu(api_token="secret-xyz")
    assert emu.url.startswith("http://127.0.0.1:") and emu.url.endswith("/api/v2")
    assert call(emu, "GET", "/locations").status_code == 401
    assert call(emu, "GET", "/locations", token="secret-xyz").status_code == 200
    assert emu.requests[-1]["auth_ok"] is True


def test_unknown_path_and_method(tensordock_emulator):  # noqa: F811
    assert call(tensordock_emulator, "GET", "/nope").status_code == 404
    r = call(tensordock_emulator, "PUT", "/locations")
    assert r.status_code == 405 and r.json()["status"] == 405


def test_locations_shape(tensordock_emulator):  # noqa: F811
    r = call(tensordock_emulator, "GET", "/locations")
    assert r.status_code == 200
    locations = r.json()["data"]["locations"]
    assert {loc["city"] for loc in locations} >= {"Dallas", "Frankfurt", "Austin", "Toronto"}
    for loc in locations:
        assert set(loc) == {"id", "city", "stateprovince", "country", "tier", "gpus"}
        assert isinstance(loc["gpus"], list)
        for g in loc["gpus"]:
            assert set(g) == {
                "v0Name",
                "displayName",
                "max_count",
                "price_per_hr",
                "resources",
                "pricing",
                "network_features",
            }
            assert set(g["resources"]) == {"max_vcpus", "max_ram_gb", "max_storage_gb"}
            assert set(g["pricing"]) == {"per_vcpu_hr", "per_gb_ram_hr", "per_gb_storage_hr"}
            assert set(g["network_features"]) == {
                "dedicated_ip_available",
                "port_forwarding_available",
                "network_storage_available",
            }
            assert g["max_count"] > 0
    dallas = next(loc for loc in locations if loc["city"] == "Dallas")
    assert dallas["tier"] == 3 and dallas["country"] == "United States"
    by_name = {g["v0Name"]: g for g in dallas["gpus"]}
    assert set(by_name) == {"geforcertx4090-pcie-24gb", "rtxa6000-pcie-48gb"}  # grouped
    g4090 = by_name["geforcertx4090-pcie-24gb"]
    assert g4090["displayName"] == "NVIDIA GeForce RTX 4090 PCIe 24GB"
    assert g4090["price_per_hr"] == 0.40 and g4090["max_count"] == 4
    assert g4090["pricing"]["per_gb_storage_hr"] == 0.00005
    toronto = next(loc for loc in locations if loc["city"] == "Toronto")
    assert toronto["gpus"][0]["network_features"]["dedicated_ip_available"] is False
    london = next(loc for loc in locations if loc["city"] == "London")
    assert london["gpus"] == []  # sold out


def test_hostnodes_shape_and_single(tensordock_emulator):  # noqa: F811
    r = call(tensordock_emulator, "GET", "/hostnodes?gpu=whatever&location=x&status=available")
    assert r.status_code == 200
    nodes = r.json()["data"]["hostnodes"]
    assert len(nodes) == 8  # filters ignored, sold-out listed
    assert tensordock_emulator.requests[-1]["query"] == {
        "gpu": "whatever",
        "location": "x",
        "status": "available",
    }
    for n in nodes:
        assert set(n) == {
            "id",
            "location_id",
            "engine",
            "uptime_percentage",
            "available_resources",
            "pricing",
            "location",
        }
        ar = n["available_resources"]
        assert {
            "gpus",
            "vcpu_count",
            "ram_gb",
            "storage_gb",
            "max_vcpus_per_gpu",
            "max_ram_per_gpu",
            "available_ports",
            "has_public_ip_available",
        } <= set(ar)
        for g in ar["gpus"]:
            assert set(g) == {"v0Name", "availableCount", "price_per_hr"}
        assert set(n["location"]) == {
            "uuid",
            "city",
            "stateprovince",
            "country",
            "has_network_storage",
            "network_speed_gbps",
            "network_speed_upload_gbps",
            "organization",
            "organizationName",
            "tier",
        }
        assert n["location"]["uuid"] == n["location_id"]
        assert 0 <= n["uptime_percentage"] <= 100
    assert any(g["availableCount"] == 0 for n in nodes for g in n["available_resources"]["gpus"])
    assert any(not n["available_resources"]["has_public_ip_available"] for n in nodes)
    assert any(n["uptime_percentage"] == 92.0 for n in nodes)
    names = {g["v0Name"] for n in nodes for g in n["available_resources"]["gpus"]}
    assert {"h100-sxm5-80gb", "a100-pcie-80gb", "rtxa6000-pcie-48gb"} <= names

    one = call(tensordock_emulator, "GET", f"/hostnodes/{nodes[0]['id']}")
    assert one.status_code == 200 and one.json()["data"] == nodes[0]
    missing = call(tensordock_emulator, "GET", "/hostnodes/does-not-exist")
    assert missing.status_code == 404
    assert missing.json() == {"error": "Hostnode not found", "status": 404}


def test_generate_hostnodes_is_reproducible():
    a, b = TensorDockEmulator(), TensorDockEmulator()
    na, nb = a.generate_hostnodes(20, seed=7), b.generate_hostnodes(20, seed=7)
    assert len(na) == 20 and [n["id"] for n in na] == [n["id"] for n in nb]
    assert na[3]["available_resources"] == nb[3]["available_resources"]
    assert a.generate_hostnodes(5, seed=8)[0]["id"] != na[0]["id"]


# ---------------------------------------------------------------- create validation


def _with_resources(**changes: Any) -> dict[str, Any]:
    res = {
        "vcpu_count": 8,
        "ram_gb": 32,
        "storage_gb": 100,
        "gpus": {"geforcertx4090-pcie-24gb": {"count": 1}},
    }
    res.update(changes)
    return res


@pytest.mark.parametrize(
    "attrs,message",
    [
        ({"resources": _with_resources(vcpu_count=7)}, "vCPU count must be even"),
        ({"resources": _with_resources(storage_gb=99)}, "Storage must be at least 100 GB"),
        ({"resources": _with_resources(ram_gb=0)}, "RAM must be greater than 0 GB"),
        (
            {"resources": _with_resources(gpus={"geforcertx4090-pcie-24gb": {"count": 0}})},
            "GPU count for geforcertx4090-pcie-24gb must be at least 1",
        ),
        ({"ssh_key_id": "abc"}, "Provide either ssh_key or ssh_key_id, not both"),
        ({"ssh_key": ""}, "SSH key required"),
        ({"name": ""}, "Instance name is required"),
        ({"image": None}, "Image is required"),
        ({"location_id": "loc"}, "Specify either location_id or hostnode_id, not both"),
        (
            {"cloud_init": {"write_files": [{"path": "/x", "content": "eA==", "encoding": "b64"}]}},
            "cloud_init.write_files: the 'encoding' field is not supported",
        ),
        ({"resources": _with_resources(vcpu_count=40)}, "vCPU count exceeds the maximum of 16"),
    ],
)
def test_create_validation_400(tensordock_emulator, attrs, message):  # noqa: F811
    emu = tensordock_emulator
    node = dallas_4090(emu)
    r = create(emu, create_body(node["id"], **attrs))
    assert r.status_code == 400, r.text
    assert r.json()["status"] == 400
    assert r.json()["error"].startswith(message)
    assert emu.instances == {}
    assert node["available_resources"]["gpus"][0]["availableCount"] == 4


def test_odd_vcpu_exact_body(tensordock_emulator):  # noqa: F811
    body = create_body(
        dallas_4090(tensordock_emulator)["id"], resources=_with_resources(vcpu_count=3)
    )
    r = create(tensordock_emulator, body)
    assert (r.status_code, r.json()) == (400, {"error": "vCPU count must be even", "status": 400})


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": "x"},
        {"data": {"type": "virtualmachine"}},
        {"data": {"type": "server", "attributes": {}}},
    ],
)
def test_create_requires_envelope(tensordock_emulator, body):  # noqa: F811
    r = create(tensordock_emulator, body)
    assert r.status_code == 400 and r.json()["status"] == 400


def test_create_invalid_json(tensordock_emulator):  # noqa: F811
    r = call(tensordock_emulator, "POST", "/instances", data=b"{not json")
    assert r.status_code == 400 and r.json()["error"] == "Invalid JSON body"


def test_create_needs_placement(tensordock_emulator):  # noqa: F811
    r = create(tensordock_emulator, create_body(None))
    assert r.status_code == 400 and "location_id or hostnode_id" in r.json()["error"]
    r = create(tensordock_emulator, create_body("no-such-node"))
    assert (r.status_code, r.json()["error"]) == (404, "Hostnode not found")


def test_create_insufficient_balance(tensordock_emulator):  # noqa: F811
    tensordock_emulator.balance = 0.5
    r = create(tensordock_emulator, create_body(dallas_4090(tensordock_emulator)["id"]))
    assert r.status_code == 400
    assert "insufficient balance" in r.json()["error"]
    assert tensordock_emulator.instances == {}


def test_stockout_is_error_inside_200(tensordock_emulator):  # noqa: F811
    emu = tensordock_emulator
    body = create_body(
        dallas_4090(emu)["id"],
        resources=_with_resources(gpus={"geforcertx4090-pcie-24gb": {"count": 5}}, vcpu_count=16),
    )
    r = create(emu, body)
    assert r.status_code == 200
    assert r.json() == {"error": "No available nodes found", "status": 400}
    sold_out = node_by(emu, "geforcertx3090-pcie-24gb", "London")
    r = create(
        emu,
        create_body(
            sold_out["id"],
            resources=_with_resources(gpus={"geforcertx3090-pcie-24gb": {"count": 1}}, ram_gb=8),
        ),
    )
    assert (r.status_code, r.json()["error"]) == (200, "No available nodes found")
    emu.stockout_http_status = 400
    r = create(emu, body)
    assert r.status_code == 400 and r.json() == {"error": "No available nodes found", "status": 400}
    assert emu.instances == {}


def test_stockout_on_vcpu_and_ram(tensordock_emulator):  # noqa: F811
    emu = tensordock_emulator
    node = node_by(emu, "h100-sxm5-80gb", "Austin")
    node["available_resources"]["vcpu_count"] = 4
    gpus = {"h100-sxm5-80gb": {"count": 1}}
    r = create(emu, create_body(node["id"], resources=_with_resources(gpus=gpus)))
    assert (r.status_code, r.json()["error"]) == (200, "No available nodes found")
    node["available_resources"]["vcpu_count"] = 128
    node["available_resources"]["ram_gb"] = 16
    r = create(emu, create_body(node["id"], resources=_with_resources(gpus=gpus)))
    assert (r.status_code, r.json()["error"]) == (200, "No available nodes found")


def test_dedicated_ip_and_ports(tensordock_emulator):  # noqa: F811
    emu = tensordock_emulator
    toronto = node_by(emu, "geforcertx4090-pcie-24gb", "Toronto")
    r = create(emu, create_body(toronto["id"], useDedicatedIp=True))
    assert (r.status_code, r.json()) == (
        200,
        {"error": "No available public IPs on hostnode", "status": 400},
    )
    node = dallas_4090(emu)
    free = node["available_resources"]["available_ports"][0]
    r = create(
        emu, create_body(node["id"], port_forwards=[{"internal_port": 22, "external_port": 1}])
    )
    assert r.status_code == 400 and r.json()["error"] == "Port 1 is not available on this hostnode"
    iid = create_ok(emu, node, port_forwards=[{"internal_port": 8888, "external_port": free}])
    assert free not in node["available_resources"]["available_ports"]
    inst = get(emu, iid)
    assert {"internal_port": 8888, "external_port": free} in inst["portForwards"]
    call(emu, "DELETE", f"/instances/{iid}")
    assert free in node["available_resources"]["available_ports"]


def test_ssh_key_id_secret(tensordock_emulator):  # noqa: F811
    emu = tensordock_emulator
    secret = emu.add_ssh_key_secret(KEY_B)
    iid = create_ok(emu, ssh_key=None, ssh_key_id=secret)
    assert emu.instances[iid]["authorized_keys"] == [KEY_B]
    r = create(emu, create_body(dallas_4090(emu)["id"], ssh_key=None, ssh_key_id="unknown"))
    assert (r.status_code, r.json()["error"]) == (404, "SSH key not found")


# ---------------------------------------------------------------- create success, list, get


def test_create_success_and_stock_accounting(tensordock_emulator):  # noqa: F811
    emu = tensordock_emulator
    node = dallas_4090(emu)
    r = create(emu, create_body(node["id"]))
    assert r.status_code == 200
    data = r.json()["data"]
    assert data["type"] == "virtualmachine" and data["status"] == "starting"
    assert data["name"] == "gpu-shopper:inst:sess"
    ar = node["available_resources"]
    assert ar["gpus"][0]["availableCount"] == 3
    assert (ar["vcpu_count"], ar["ram_gb"], ar["storage_gb"]) == (56, 224, 1900)
    rec = emu.instances[data["id"]]
    assert rec["hostnode_id"] == node["id"] and rec["location_id"] == node["location_id"]
    assert rec["resources"]["gpus"] == {"geforcertx4090-pcie-24gb": {"count": 1}}
    assert rec["authorized_keys"] == [KEY_A]
    hn = call(emu, "GET", f"/hostnodes/{node['id']}").json()["data"]
    assert hn["available_resources"]["gpus"][0]["availableCount"] == 3

    emu.create_http_status = 201
    r = create(emu, create_body(node["id"], name="second"))
    assert r.status_code == 201 and r.json()["data"]["name"] == "second"


def test_location_deploy_picks_node_with_stock(tensordock_emulator):  # noqa: F811
    emu = tensordock_emulator
    dallas = dallas_4090(emu)
    a6000 = node_by(emu, "rtxa6000-pcie-48gb", "Dallas")
    gpus = {"rtxa6000-pcie-48gb": {"count": 2}}
    body = create_body(
        None, location_id=dallas["location_id"], resources=_with_resources(gpus=gpus)
    )
    r = create(emu, body)
    assert r.status_code == 200, r.text
    assert emu.instances[r.json()["data"]["id"]]["hostnode_id"] == a6000["id"]
    assert a6000["available_resources"]["gpus"][0]["availableCount"] == 2
    no_gpu = create_body(
        None, location_id=dallas["location_id"], resources=_with_resources(gpus={})
    )
    r = create(emu, no_gpu)
    assert r.status_code == 400 and "At least one GPU" in r.json()["error"]
    r = create(emu, create_body(None, location_id="nowhere"))
    assert (r.status_code, r.json()["error"]) == (404, "Location not found")
    gpus = {"h100-sxm5-80gb": {"count": 1}}
    body = create_body(
        None, location_id=dallas["location_id"], resources=_with_resources(gpus=gpus)
    )
    assert create(emu, body).json() == {"error": "No available nodes found", "status": 400}


def test_list_shapes(tensordock_emulator):  # noqa: F811
    emu = tensordock_emulator
    iid = create_ok(emu)
    r = call(emu, "GET", "/instances").json()
    assert r == {
        "data": {
            "instances": [
                {
                    "type": "virtualmachine",
                    "id": iid,
                    "attributes": {"name": "gpu-shopper:inst:sess", "status": "running"},
                }
            ]
        }
    }
    emu.list_shape = "flat"
    r = call(emu, "GET", "/instances").json()
    assert r == {
        "data": [
            {
                "type": "virtualmachine",
                "id": iid,
                "name": "gpu-shopper:inst:sess",
                "status": "running",
            }
        ]
    }
    emu.list_shape = "nested"
    r = call(emu, "GET", "/instances").json()
    items = r["data"]["attributes"]["instances"]
    assert items[0]["id"] == iid and items[0]["attributes"]["status"] == "running"


def test_get_shapes_and_rate(tensordock_emulator):  # noqa: F811
    emu = tensordock_emulator
    h100 = node_by(emu, "h100-sxm5-80gb", "Austin")
    gpus = {"h100-sxm5-80gb": {"count": 1}}
    iid = create_ok(emu, h100, resources=_with_resources(gpus=gpus, vcpu_count=16, ram_gb=64))
    inst = get(emu, iid)
    assert inst["type"] == "virtualmachine" and inst["id"] == iid
    assert inst["status"] == "running"
    assert inst["rateHourly"] == pytest.approx(2.381)  # the §2.5 worked example
    assert inst["resources"] == {
        "vcpu_count": 16,
        "ram_gb": 64,
        "storage_gb": 100,
        "gpus": {"h100-sxm5-80gb": {"count": 1, "v0Name": "h100-sxm5-80gb"}},
    }
    assert inst["hostnode_id"] == h100["id"] and inst["location_id"] == h100["location_id"]
    assert inst["ipAddress"] == "127.0.0.1"
    assert inst["portForwards"][0]["internal_port"] == 22
    emu.get_shape = "wrapped"
    assert get(emu, iid) == {"data": inst}


def test_no_backend_port_refuses_connections(tensordock_emulator):  # noqa: F811
    inst = get(tensordock_emulator, create_ok(tensordock_emulator))
    port = inst["portForwards"][0]["external_port"]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_create_instance_directly_is_listed(tensordock_emulator):  # noqa: F811
    emu = tensordock_emulator
    rec = emu.create_instance_directly(name="foreign", status="stopped")
    rec2 = emu.create_instance_directly(name="odd", status="StoppedDisassociated")
    listed = call(emu, "GET", "/instances").json()["data"]["instances"]
    status = {i["id"]: i["attributes"]["status"] for i in listed}
    assert status == {rec["id"]: "stopped", rec2["id"]: "StoppedDisassociated"}
    assert {r["id"] for r in emu.live_instances()} == {rec["id"], rec2["id"]}


# ---------------------------------------------------------------- status machine


def test_status_machine_with_fake_clock(make_emu):
    clock = FakeClock()
    emu = make_emu(clock=clock)
    emu.boot = {"mode": "ok", "running_after": 30.0}
    iid = create_ok(emu)
    first = get(emu, iid)
    assert first["status"] == "starting" and first["ipAddress"] is None
    assert first["portForwards"] == []
    clock.advance(29.9)
    assert get(emu, iid)["status"] == "starting"
    clock.advance(0.2)
    assert get(emu, iid)["status"] == "running"
    assert emu.instance_status(iid) == "running"

    r = call(emu, "POST", f"/instances/{iid}/start")
    assert (r.status_code, r.json()) == (
        409,
        {"error": "Instance is already running", "status": 409},
    )

    r = call(emu, "POST", f"/instances/{iid}/stop")
    assert r.status_code == 200
    assert r.json() == {
        "data": {"type": "instance", "id": iid, "attributes": {"status": "stopping"}}
    }
    assert get(emu, iid)["status"] == "stopped"
    assert call(emu, "POST", f"/instances/{iid}/stop").status_code == 409

    emu.status_case = "title"
    assert get(emu, iid)["status"] == "Stopped"
    r = call(emu, "POST", f"/instances/{iid}/start")
    assert r.json()["data"]["attributes"]["status"] == "Starting"
    assert get(emu, iid)["status"] == "Starting"
    clock.advance(30)
    assert get(emu, iid)["status"] == "Running"
    items = call(emu, "GET", "/instances").json()["data"]["instances"]
    assert items[0]["attributes"]["status"] == "Running"

    emu.power_off(iid)
    assert get(emu, iid)["status"] == "Stopped"


def test_boot_modes(make_emu):
    clock = FakeClock()
    emu = make_emu(clock=clock)
    emu.boot = {"mode": "stuck_starting", "running_after": 0.0}
    stuck = create_ok(emu)
    clock.advance(3600)
    assert get(emu, stuck)["status"] == "starting"

    h100 = node_by(emu, "h100-sxm5-80gb", "Austin")
    h100["_boot"] = {"mode": "stopped", "running_after": 10.0}  # what add_hostnode(boot=) sets
    gpus = {"h100-sxm5-80gb": {"count": 1}}
    flaky = create_ok(emu, h100, resources=_with_resources(gpus=gpus))
    assert get(emu, flaky)["status"] == "starting"
    clock.advance(10)
    assert get(emu, flaky)["status"] == "running"
    assert get(emu, flaky)["status"] == "stopped"
    assert emu.instances[flaky]["status"] == "stopped"

    node = emu.add_hostnode(city="Reno", stateprovince="Nevada", boot={"mode": "ok"})
    emu.boot = {"mode": "stuck_starting"}
    assert get(emu, create_ok(emu, node))["status"] == "running"


def test_stopped_mode_running_for(make_emu):
    clock = FakeClock()
    emu = make_emu(clock=clock)
    emu.boot = {"mode": "stopped", "running_after": 0.0, "running_for": 5.0}
    iid = create_ok(emu)
    assert get(emu, iid)["status"] == "running"
    clock.advance(4)
    assert get(emu, iid)["status"] == "running"
    clock.advance(1)
    assert get(emu, iid)["status"] == "stopped"


# ---------------------------------------------------------------- delete


def test_delete_and_404(tensordock_emulator):  # noqa: F811
    emu = tensordock_emulator
    node = dallas_4090(emu)
    iid = create_ok(emu)
    r = call(emu, "DELETE", f"/instances/{iid}")
    assert r.status_code == 200
    assert r.json() == {
        "data": {"type": "success", "attributes": {"message": "Instance deleted successfully"}}
    }
    assert node["available_resources"]["gpus"][0]["availableCount"] == 4
    assert node["available_resources"]["vcpu_count"] == 64
    not_found = {"error": "Instance not found", "status": 404}
    for method, path in [
        ("GET", f"/instances/{iid}"),
        ("DELETE", f"/instances/{iid}"),
        ("POST", f"/instances/{iid}/start"),
        ("POST", f"/instances/{iid}/stop"),
        ("GET", "/instances/never-existed"),
    ]:
        r = call(emu, method, path)
        assert (r.status_code, r.json()) == (404, not_found), (method, path)
    assert call(emu, "GET", "/instances").json() == {"data": {"instances": []}}
    assert emu.live_instances() == []
    assert emu.instances[iid]["status"] == "deleted" and emu.instances[iid]["deleted"]


# ---------------------------------------------------------------- faults


def test_fail_next_variants(tensordock_emulator):  # noqa: F811
    emu = tensordock_emulator
    emu.fail_next("GET", r"^/locations$", status=503, times=2, retry_after=7)
    for _ in range(2):
        r = call(emu, "GET", "/locations")
        assert r.status_code == 503 and r.headers["Retry-After"] == "7"
        assert r.json() == {"error": "Service Unavailable", "status": 503}
    assert call(emu, "GET", "/locations").status_code == 200
    assert call(emu, "GET", "/hostnodes").status_code == 200

    emu.fail_next("GET", "/hostnodes", status=502, body="<html>Bad gateway</html>")
    r = call(emu, "GET", "/hostnodes")
    assert r.status_code == 502 and r.text == "<html>Bad gateway</html>"
    assert r.headers["Content-Type"].startswith("text/html")

    emu.fail_next("*", "hostnodes", status=500, body={"message": "boom"})
    r = call(emu, "GET", "/hostnodes")
    assert (r.status_code, r.json()) == (500, {"message": "boom"})

    emu.fail_next("GET", "/api/v2/instances", status=200, malformed=True)
    r = call(emu, "GET", "/instances")
    assert r.status_code == 200
    with pytest.raises(ValueError):
        r.json()
    assert call(emu, "GET", "/instances").status_code == 200


def test_fail_next_delay_causes_client_timeout(tensordock_emulator):  # noqa: F811
    emu = tensordock_emulator
    emu.fail_next("GET", "/locations", status=500, delay=2.0)
    with pytest.raises(requests.exceptions.ReadTimeout):
        call(emu, "GET", "/locations", timeout=0.3)
    emu.slow_next("GET", "/locations", delay=0.3)
    t0 = time.monotonic()
    assert call(emu, "GET", "/locations").status_code == 200
    assert time.monotonic() - t0 >= 0.3


def test_latency(tensordock_emulator):  # noqa: F811
    tensordock_emulator.latency = 0.25
    t0 = time.monotonic()
    assert call(tensordock_emulator, "GET", "/hostnodes").status_code == 200
    assert time.monotonic() - t0 >= 0.25


def test_error_in_200_next(tensordock_emulator):  # noqa: F811
    emu = tensordock_emulator
    emu.error_in_200_next("POST", r"^/instances$", "Hostnode unavailable")
    r = create(emu, create_body(dallas_4090(emu)["id"]))
    assert (r.status_code, r.json()) == (200, {"error": "Hostnode unavailable", "status": 400})
    assert emu.instances == {}
    assert create(emu, create_body(dallas_4090(emu)["id"])).json()["data"]["status"] == "starting"


def test_rate_limit_next(tensordock_emulator):  # noqa: F811
    emu = tensordock_emulator
    emu.rate_limit_next(times=2, retry_after=3)
    for path in ("/locations", "/instances"):
        r = call(emu, "GET", path)
        assert (r.status_code, r.json()) == (429, {"error": "Too many requests", "status": 429})
        assert r.headers["Retry-After"] == "3"
    assert call(emu, "GET", "/locations").status_code == 200


def test_rate_limit_window(make_emu):
    clock = FakeClock()
    emu = make_emu(clock=clock)
    emu.rate_limit_per_minute = 3
    codes = [call(emu, "GET", "/hostnodes").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    clock.advance(61)
    r = call(emu, "GET", "/hostnodes")
    assert r.status_code == 200 and r.headers["X-RateLimit-Remaining"] == "2"


def test_create_error_after_create(tensordock_emulator):  # noqa: F811
    emu = tensordock_emulator
    emu.create_error_after_create = True
    r = create(emu, create_body(dallas_4090(emu)["id"], name="gpu-shopper:i:s1"))
    assert r.status_code == 500
    live = emu.live_instances()
    assert [i["name"] for i in live] == ["gpu-shopper:i:s1"]
    listed = call(emu, "GET", "/instances").json()["data"]["instances"]
    assert listed[0]["attributes"]["name"] == "gpu-shopper:i:s1"


def test_destroy_fail_times(tensordock_emulator):  # noqa: F811
    emu = tensordock_emulator
    iid = create_ok(emu)
    emu.destroy_fail_times = 2
    assert call(emu, "DELETE", f"/instances/{iid}").status_code == 500
    assert call(emu, "DELETE", f"/instances/{iid}").status_code == 500
    assert get(emu, iid)["status"] == "running"
    assert call(emu, "DELETE", f"/instances/{iid}").status_code == 200
    assert call(emu, "GET", f"/instances/{iid}").status_code == 404


# ---------------------------------------------------------------- keys and cloud-init


def test_cloud_init_keys_extracted(tensordock_emulator):  # noqa: F811
    emu = tensordock_emulator
    cloud_init = {
        "runcmd": [
            "mkdir -p /root/.ssh /home/user/.ssh",
            f"echo '{KEY_B}' >> /root/.ssh/authorized_keys",
            f"echo '{KEY_B}' >> /home/user/.ssh/authorized_keys",
            ["sh", "-c", f'echo "{KEY_D}" >> /root/.ssh/authorized_keys'],
            f"echo '{KEY_A}' > /tmp/not-a-key-file",
        ],
        "write_files": [
            {"path": "/home/user/.ssh/authorized_keys", "content": f"# keys\n{KEY_C}\n"},
            {"path": "/etc/motd", "content": KEY_A},
        ],
        "packages": ["htop"],
        "package_update": True,
    }
    iid = create_ok(emu, ssh_key=KEY_A, cloud_init=cloud_init)
    rec = emu.instances[iid]
    assert rec["authorized_keys"] == [KEY_A, KEY_B, KEY_D, KEY_C]
    assert rec["cloud_init"] == cloud_init
    assert rec["attributes"]["cloud_init"] == cloud_init


def test_drop_ssh_key_field(tensordock_emulator):  # noqa: F811
    emu = tensordock_emulator
    emu.drop_ssh_key_field = True
    iid = create_ok(emu, ssh_key=KEY_A)
    assert emu.instances[iid]["authorized_keys"] == []
    runcmd = [f"echo '{KEY_B}' >> /home/user/.ssh/authorized_keys"]
    iid = create_ok(emu, ssh_key=KEY_A, cloud_init={"runcmd": runcmd})
    assert emu.instances[iid]["authorized_keys"] == [KEY_B]


def test_extract_public_keys():
    text = f'echo "{KEY_A}" | tee -a ~/.ssh/authorized_keys; echo {KEY_C.split(" c@")[0]} >> f'
    assert extract_public_keys(text) == [KEY_A, KEY_C.split(" c@")[0]]


# ---------------------------------------------------------------- SSH backend hook


def test_backend_hook_lifecycle(make_emu):
    clock = FakeClock()
    backend = RecordingBackend(first_port=42200)
    emu = make_emu(clock=clock, ssh_backend=backend)
    emu.boot = {"mode": "ok", "running_after": 5.0}
    runcmd = [f"echo '{KEY_B}' >> /root/.ssh/authorized_keys"]
    iid = create_ok(emu, useDedicatedIp=True, cloud_init={"runcmd": runcmd})
    key = f"tensordock:{iid}"
    assert get(emu, iid)["ipAddress"] is None
    assert backend.calls == []
    clock.advance(5)
    inst = get(emu, iid)
    assert backend.calls == [
        (
            "start",
            key,
            [KEY_A, KEY_B],
            {
                "name": "NVIDIA GeForce RTX 4090 PCIe 24GB",
                "count": 1,
                "memory_mib": 24 * 1024,
                "driver_version": "550.54.15",
                "cuda_version": "12.4",
                "disk_total_gb": 100,
                "disk_free_gb": 90,
            },
        )
    ]
    assert inst["ipAddress"] == "127.0.0.1"
    assert inst["portForwards"] == [{"internal_port": 22, "external_port": 42201}]
    get(emu, iid)
    call(emu, "GET", "/instances")
    assert backend.names() == ["start"]  # started once

    emu.set_authorized_keys(iid, [KEY_C])
    assert backend.calls[-1] == ("set_keys", key, [KEY_C])

    call(emu, "POST", f"/instances/{iid}/stop")
    assert backend.calls[-1] == ("stop", key)
    call(emu, "POST", f"/instances/{iid}/start")
    clock.advance(5)
    assert get(emu, iid)["portForwards"][0]["external_port"] == 42202
    assert backend.names() == ["start", "set_keys", "stop", "start"]

    emu.power_off(iid)
    assert backend.names()[-1] == "stop"
    call(emu, "POST", f"/instances/{iid}/start")
    clock.advance(5)
    get(emu, iid)
    assert call(emu, "DELETE", f"/instances/{iid}").status_code == 200
    assert backend.names() == ["start", "set_keys", "stop", "start", "stop", "start", "stop"]


def test_backend_real_gpu_override_and_stop_on_shutdown():
    backend = RecordingBackend(first_port=42200)
    emu = TensorDockEmulator(ssh_backend=backend)
    node = emu.add_hostnode(
        gpu="h100-sxm5-80gb", gpu_count=2, real_gpu={"driver_version": None, "cuda_version": None}
    )
    with emu:
        gpus = {"h100-sxm5-80gb": {"count": 2}}
        res = _with_resources(gpus=gpus, vcpu_count=16, storage_gb=200)
        iid = create_ok(emu, node, resources=res)
        get(emu, iid)
        facts = backend.calls[0][3]
        assert facts["driver_version"] is None and facts["cuda_version"] is None
        assert facts["name"] == "NVIDIA H100 SXM5 80GB" and facts["count"] == 2
        assert facts["memory_mib"] == 80 * 1024 and facts["disk_free_gb"] == 190
    assert backend.calls[-1] == ("stop", f"tensordock:{iid}")


def test_backend_failure_is_500_and_retried(make_emu):
    class Broken(RecordingBackend):
        fail = True

        def start(self, instance_key, authorized_keys, gpu):
            if self.fail:
                self.fail = False
                raise RuntimeError("sshd did not come up")
            return super().start(instance_key, authorized_keys, gpu)

    emu = make_emu(ssh_backend=Broken())
    iid = create_ok(emu)
    r = call(emu, "GET", f"/instances/{iid}")
    assert r.status_code == 500 and "sshd did not come up" in r.json()["error"]
    assert get(emu, iid)["ipAddress"] == "127.0.0.1"


def test_requests_are_recorded(tensordock_emulator):  # noqa: F811
    emu = tensordock_emulator
    body = create_body(dallas_4090(emu)["id"])
    create(emu, body)
    rec = emu.requests[-1]
    assert rec["method"] == "POST" and rec["path"] == "/instances"
    assert rec["json"] == body and rec["auth_ok"] is True
    assert rec["headers"]["Authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize("make", [TensorDockEmulator, VastEmulator])
def test_a_stopped_emulator_answers_nothing_even_on_a_kept_alive_connection(make):
    """Both markets share one server (gpushopper/sandbox/base.py): stop closes open
    connections, so a client cannot go on talking to a market that is gone."""
    import http.client

    emu = make().start()
    conn = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=5)
    try:
        conn.request("GET", "/")
        conn.getresponse().read()  # kept alive: HTTP/1.1
        emu.stop()
        with pytest.raises((OSError, http.client.HTTPException)):
            conn.request("GET", "/")
            conn.getresponse().read()
    finally:
        conn.close()
        emu.stop()
