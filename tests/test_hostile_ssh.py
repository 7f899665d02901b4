"""Issue 9, item 4: what a provider sends about SSH is data, never ssh_config syntax."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpushopper.core.sessions import render_ssh_config, ssh_command
from gpushopper.core.validate import ssh_host_problem, ssh_port_problem, ssh_user_problem
from gpushopper.model.session import SessionRecords
from tests.fakes.records import read_state

HOSTILE_HOSTS = [
    "127.0.0.1\n  ProxyCommand touch pwned",
    "127.0.0.1\r\nProxyCommand touch pwned",
    "-oProxyCommand=touch pwned",
    "host name",
    'a"b',
    "127.0.0.1;touch pwned",
    "",
    "x" * 300,
]


@pytest.mark.parametrize("host", HOSTILE_HOSTS)
def test_hostile_hosts_are_refused(host):
    assert ssh_host_problem(host) is not None


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "ssh4.vast.ai", "node-1.example.com"])
def test_real_hosts_pass(host):
    assert ssh_host_problem(host) is None


@pytest.mark.parametrize("port", [0, 65536, -1, "22", True, 22.0, None])
def test_bad_ports_are_refused(port):
    assert ssh_port_problem(port) is not None


@pytest.mark.parametrize("user", ["Root", "-oX", "a b", "root\n", "", "x" * 40, "r;id"])
def test_bad_users_are_refused(user):
    assert ssh_user_problem(user) is not None


def _record(**ssh):
    base = {"host": "127.0.0.1", "port": 22, "user": "root", "key_path": "/k", "known_hosts": "/kh"}
    base.update(ssh)
    return {"status": "running", "provider": "vastai", "ssh": base}


def test_ssh_config_never_carries_a_hostile_value():
    records = {
        "aaa111": _record(host="127.0.0.1\n  ProxyCommand touch pwned"),
        "bbb222": _record(user="root\n  ProxyCommand touch pwned"),
        "ccc333": _record(key_path='/k"\n  ProxyCommand touch pwned'),
        "ddd444": _record(),
    }
    sessions = SessionRecords.split(records).valid
    text = render_ssh_config(sessions)
    assert "ProxyCommand" not in text
    assert "Host gpu-ddd444" in text
    assert "Host gpu-aaa111" not in text
    assert ssh_command(sessions["aaa111"]) is None
    assert ssh_command(sessions["ddd444"]) is not None


@pytest.mark.parametrize(
    "field, value",
    [
        ("ssh_host", "127.0.0.1\n  ProxyCommand touch {pwned}"),
        ("ssh_port", 70000),
    ],
)
def test_provider_sending_a_hostile_ssh_host_is_a_failed_boot(
    vast, gs, isolated_home, monkeypatch, tmp_path, field, value
):
    """Over real HTTP from the emulator: the instance is destroyed, the offer charged with
    the failure, and nothing reaches ssh_config."""
    from gpushopper.sandbox.vastai import VastEmulator

    pwned = tmp_path / "pwned"
    real = VastEmulator._bring_up_ssh

    def hostile(self, iid, rec, meta):
        ok = real(self, iid, rec, meta)
        if ok:
            shown = value.format(pwned=pwned) if isinstance(value, str) else value
            rec[field] = shown
            if field == "ssh_host":
                rec["public_ipaddr"] = shown
            else:
                rec["ports"] = {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(value)}]}
        return ok

    monkeypatch.setattr(VastEmulator, "_bring_up_ssh", hostile)
    result = gs("provision --provider vastai --gpu 4090 --yes --json")
    assert result.exit_code == 1, result.stdout + result.stderr
    assert "unusable SSH details" in result.stderr
    assert len(result.stderr.strip().splitlines()[-1:]) == 1
    assert vast.live_instances() == []
    state = read_state(isolated_home)
    (failed,) = state["sessions"].values()
    assert failed["status"] == "failed"
    assert "unusable SSH details" in failed["end_reason"]
    assert any(v.get("failures") == 1 for v in state["offer_health"].values())
    ssh_config = Path(isolated_home / "ssh_config")
    if ssh_config.exists():
        assert "ProxyCommand" not in ssh_config.read_text()
    assert not pwned.exists()
