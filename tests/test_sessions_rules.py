"""What the ``sessions`` commands decide, in core (core/sessions.py), on a fixed clock:
which sessions a listing shows and in what order, the ENDS IN column, where a refresh
disagrees with the record, whose secrets a log masks, the ssh command line."""

from __future__ import annotations

from datetime import timedelta

import pytest

from gpushopper.core.sessions import (
    ends_in,
    job_secrets,
    public_view,
    refresh_view,
    session_views,
    ssh_argv,
)
from gpushopper.model.errors import ProviderError, SshError
from gpushopper.model.session import Session
from gpushopper.model.units import iso
from tests.fakes.provider import FakeProvider
from tests.fakes.records import T0, new_store, put, running

NOW = T0 + timedelta(hours=1)


def session(sid: str, **extra) -> Session:
    return Session.from_record(running(sid, "7", **extra))


def test_a_listing_hides_ended_sessions_unless_all_and_filters_by_consumer_oldest_first():
    rows = [
        session("b00002", created_at=iso(T0 + timedelta(minutes=5)), consumer="ann"),
        session("a00001", created_at=iso(T0), consumer="bob"),
        session(
            "c00003",
            status="ended",
            created_at=iso(T0 - timedelta(hours=3)),
            ended_at=iso(T0),
            consumer="ann",
        ),
    ]
    ids = lambda views: [v["id"] for v in views]  # noqa: E731
    assert ids(session_views(rows, NOW, show_all=False, consumer=None)) == ["a00001", "b00002"]
    assert ids(session_views(rows, NOW, show_all=True, consumer=None)) == [
        "c00003",
        "a00001",
        "b00002",
    ]
    assert ids(session_views(rows, NOW, show_all=True, consumer="ann")) == ["c00003", "b00002"]
    seen: list[str] = []
    session_views(rows, NOW, show_all=False, consumer=None, refresh=lambda s, v: seen.append(s.id))
    assert sorted(seen) == ["a00001", "b00002"]  # only the ones listed are refreshed


def test_ends_in_counts_down_on_the_clock_and_says_overdue_past_the_end():
    view = public_view(session("a00001", ends_s=7200), NOW)
    assert ends_in(view, NOW) == "1h"
    assert ends_in(view, NOW + timedelta(minutes=59, seconds=59)) == "1s"
    assert ends_in(view, NOW + timedelta(hours=1)) == "overdue"
    assert ends_in({**view, "status": "ended"}, NOW) is None
    assert ends_in({**view, "reservation_ends_at": None}, NOW) is None


def test_a_refresh_warns_when_the_provider_says_gone_or_cannot_be_asked():
    provider = FakeProvider()
    iid = provider.add("gpu-shopper:aaaa1111:a00001")
    record = Session.from_record(running("a00001", iid))
    view = public_view(record, NOW)
    assert refresh_view(record, view, lambda name: provider) is None
    assert view["provider_status"] == "running"
    gone = Session.from_record(running("a00002", "999"))
    view = public_view(gone, NOW)
    said = refresh_view(gone, view, lambda name: provider)
    assert view["provider_status"] == "gone"
    assert said == (
        "session a00002 is running here but vastai says gone (the provider has no such "
        "instance); 'gpu-shopper sessions done a00002' ends it"
    )

    def unreachable(name):
        raise ProviderError(name, "HTTP 503")

    view = public_view(record, NOW)
    said = refresh_view(record, view, unreachable)
    assert said is not None and said.startswith("session a00001: vastai could not be asked: ")
    assert view["provider_status"] == "unreachable"  # never taken for gone


def test_a_log_masks_the_secret_env_values_of_that_sessions_jobs_only(tmp_path):
    store = new_store(tmp_path)
    put(store, running("a00001", "7"))
    with store.transaction() as state:
        state["jobs"] = {
            "j1": {"session_id": "a00001", "secret_names": ["HF_TOKEN", "UNSET", 3]},
            "j2": {"session_id": "b00002", "secret_names": ["OTHER"]},
            "j3": "not a job",
        }
    env = {"HF_TOKEN": "hf_secret", "OTHER": "nope", "UNSET": ""}
    assert job_secrets(store, "a00001", env) == ["hf_secret"]
    assert job_secrets(store, "b00002", env) == ["nope"]


def test_the_ssh_argv_appends_the_command_and_refuses_a_session_with_no_endpoint(tmp_path):
    key = tmp_path / "key"
    record = session(
        "a00001", ssh={"host": "127.0.0.1", "port": 2222, "user": "root", "key_path": str(key)}
    )
    argv = ssh_argv(record, ["nvidia-smi", "-L"])
    assert argv[0] == "ssh" and argv[-3:] == ["root@127.0.0.1", "nvidia-smi", "-L"]
    assert argv[argv.index("-p") + 1] == "2222"
    with pytest.raises(SshError, match="session a00002 has no SSH endpoint"):
        ssh_argv(session("a00002"), [])
