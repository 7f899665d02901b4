"""The request rules, in core, on a fixed clock (core/request.py, core/query.py,
core/rules.extend_session, core/costs.cost_report): flag > profile > setting > default for
every field provision, run and benchmark run merge, and for every offer filter; where the boot timeout came from; the hard maximum; --secret-env;
the budget warning's arithmetic."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from gpushopper.core import request, rules
from gpushopper.core.costs import budget_warning, cost_report
from gpushopper.core.provisioner import Candidate
from gpushopper.core.query import QueryFlags, offer_query
from gpushopper.model.errors import NoSuchItem, UsageError
from gpushopper.model.models import Offer, OfferQuery
from gpushopper.model.session import Session
from gpushopper.model.units import iso
from gpushopper.state.config import Settings
from gpushopper.state.paths import resolve_paths
from gpushopper.state.store import StateStore
from tests.test_stats import record as boot_record

NOW = datetime(2026, 11, 15, 12, 0, tzinfo=timezone.utc)
H = 3600.0


def settings(tmp_path: Path, **env: str) -> Settings:
    """Real settings over an empty home; ``env`` sets GPU_SHOPPER_* (or a setting's own
    variable) exactly as a user would."""
    home = {"GPU_SHOPPER_HOME": str(tmp_path)}
    return Settings(paths=resolve_paths(home), environ={**home, **env}, cwd=tmp_path)


def build(tmp_path, flags=None, profile=None, purpose=request.Purpose.RENTAL, **env):
    return request.build(
        settings(tmp_path, **env),
        OfferQuery(),
        profile or {},
        flags or request.Flags(),
        purpose,
    )


# -- flag > profile > setting > default, field by field ----------------------------------------
# (request field, Flags field, flag value, profile key and value, setting variable and value,
#  the value the setting gives, the default)
FIELDS = [
    ("hours_s", "hours_s", 3 * H, ("hours", 4 * H), ("GPU_SHOPPER_DEFAULTS_HOURS", "5h"), 5 * H, 2 * H),
    ("consumer", "consumer", "alice", ("consumer", "bob"), ("GPU_SHOPPER_DEFAULTS_CONSUMER", "carol"), "carol", None),
    ("ssh_key", "ssh_key", "/k/flag", ("ssh_key", "/k/profile"), ("VASTAI_SSH_KEY_PATH", "/k/setting"), "/k/setting", None),
    ("timeout_s", "timeout_s", 120.0, ("timeout", 240.0), ("GPU_SHOPPER_SAFETY_PROVISION_TIMEOUT", "6m"), 360.0, 900.0),
    ("image", "image", "img/flag", ("image", "img/profile"), None, None, None),
    ("auto_retry", "auto_retry", 2, ("auto_retry", 3), None, None, 0),
]  # fmt: skip


@pytest.mark.parametrize(
    ("field", "flag_name", "flag", "prof", "setting", "from_setting", "default"),
    FIELDS,
    ids=[f[0] for f in FIELDS],
)
def test_flag_beats_profile_beats_setting_beats_default(
    tmp_path, field, flag_name, flag, prof, setting, from_setting, default
):
    env = dict([setting]) if setting else {}
    profile = dict([prof])

    def value(flags, profile, env):
        return getattr(build(tmp_path, flags, profile, **env).request, field)

    assert value(request.Flags(**{flag_name: flag}), profile, env) == flag
    assert value(request.Flags(), profile, env) == prof[1]
    if setting:
        assert value(request.Flags(), {}, env) == from_setting
    assert value(request.Flags(), {}, {}) == default


def test_an_auto_retry_of_zero_on_the_flag_still_beats_the_profile(tmp_path):
    built = build(tmp_path, request.Flags(auto_retry=0), {"auto_retry": 3})
    assert built.request.auto_retry == 0


def test_the_rest_of_the_request_comes_from_the_flags_and_settings(tmp_path):
    query = OfferQuery(template="pytorch")
    built = request.build(
        settings(tmp_path, VASTAI_PREFERRED_GPUS="RTX 4090, RTX 3090"),
        query,
        {},
        request.Flags(offer_id="vastai:1", verify=False, override=True),
    )
    req = built.request
    assert (req.query, req.template, req.offer_id) == (query, "pytorch", "vastai:1")
    assert (req.verify, req.override, req.hard_max_s) == (False, True, 12 * H)
    assert req.preferred_gpus == ["RTX 4090", "RTX 3090"]


# -- where the boot timeout came from -----------------------------------------------------------
@pytest.mark.parametrize(
    ("flag", "profile", "env", "expected"),
    [
        (120.0, {"timeout": 240.0}, {"GPU_SHOPPER_SAFETY_PROVISION_TIMEOUT": "6m"}, (120.0, "--timeout flag")),
        (None, {"timeout": 240.0}, {"GPU_SHOPPER_SAFETY_PROVISION_TIMEOUT": "6m"}, (240.0, "profile")),
        (None, {}, {"GPU_SHOPPER_SAFETY_PROVISION_TIMEOUT": "6m"}, (360.0, "safety.provision_timeout setting")),
        (None, {}, {}, None),
    ],
    ids=["flag", "profile", "setting", "unset"],
)  # fmt: skip
def test_the_explicit_timeout_names_its_source(tmp_path, flag, profile, env, expected):
    built = build(tmp_path, request.Flags(timeout_s=flag), profile, **env)
    assert built.explicit_timeout == expected


def offer(provider: str, n: int, price: float = 0.5, reliability: float | None = 0.99) -> Offer:
    return Offer(
        f"{provider}:{n}", provider, "RTX 4090", 1, price_per_hour=price, reliability=reliability
    )


def candidates(*offers: Offer) -> list[Candidate]:
    return [Candidate(provider=None, offer=o, template=None) for o in offers]  # type: ignore[arg-type]


class Provisioner:
    def __init__(self, *offers: Offer, notes=()):
        self.offers, self.notes, self.asked = offers, list(notes), []

    def candidates(self, req):
        self.asked.append(req)
        return candidates(*self.offers), self.notes


class Store:
    def __init__(self, records=(), readable=True):
        self.records, self.readable = list(records), readable

    def sessions(self):
        assert self.readable, "the state file was read although a timeout was set"
        return {r["id"]: Session.from_record(r) for r in self.records}


def test_the_measured_timeout_per_provider_is_set_on_the_request(tmp_path):
    boots = [boot_record(i, template=None, boot_s=400.0) for i in range(5)]
    for r in boots:
        r["image"] = "img"
    built = build(tmp_path, request.Flags(image="img"))
    prov = Provisioner(offer("vastai", 1), offer("tensordock", 2), offer("vastai", 3))
    choice = request.choose(prov, built, Store(boots), settings(tmp_path))
    assert choice.timeouts["vastai"].source == "measured"
    assert choice.timeouts["tensordock"].source == "default"
    assert "0 recorded boots of tensordock/img" in choice.timeouts["tensordock"].reason
    assert choice.timeout is choice.timeouts["vastai"]
    assert built.request.timeout_by_provider == {
        "vastai": choice.timeouts["vastai"].seconds,
        "tensordock": 900.0,
    }


def test_an_explicit_timeout_wins_for_every_provider_and_reads_no_boots(tmp_path):
    built = build(tmp_path, request.Flags(timeout_s=120.0))
    prov = Provisioner(offer("vastai", 1), offer("tensordock", 2))
    choice = request.choose(prov, built, Store(readable=False), settings(tmp_path))
    assert {c.source for c in choice.timeouts.values()} == {"--timeout flag"}
    assert built.request.timeout_by_provider == {"vastai": 120.0, "tensordock": 120.0}


def test_an_offer_named_below_the_reliability_floor_is_warned_about(tmp_path):
    built = request.build(
        settings(tmp_path), OfferQuery(min_reliability=0.9), {}, request.Flags(offer_id="vastai:1")
    )
    choice = request.choose(
        Provisioner(offer("vastai", 1, reliability=0.5)), built, Store(), settings(tmp_path)
    )
    assert "reliability 0.500, below the floor 0.9" in choice.floor_warning


def test_the_dry_run_plan_on_a_fixed_clock(tmp_path):
    built = build(tmp_path, request.Flags(hours_s=3 * H, auto_retry=1, image="img"))
    offers = [offer("vastai", n, price=0.5) for n in range(1, 9)]
    choice = request.choose(Provisioner(*offers), built, Store(), settings(tmp_path))
    assert choice.projected_usd == 1.5
    plan = choice.dry_run_plan(NOW)
    assert plan["projected_cost_usd"] == 1.5 and plan["hours"] == 3.0
    assert plan["reservation_ends_at"] == iso(NOW + timedelta(hours=3))
    assert plan["hard_max_at"] == iso(NOW + timedelta(hours=12))
    assert plan["alternatives"] == ["vastai:2", "vastai:3", "vastai:4", "vastai:5"]  # 1 + 3
    assert plan["timeout"]["source"] == "default" and plan["image"] == "img"


# -- the hard maximum, through the shared builder -----------------------------------------------
def test_a_reservation_past_the_hard_maximum_is_refused_unless_overridden(tmp_path):
    with pytest.raises(UsageError, match=r"--hours 13h is past the 12h hard maximum"):
        build(tmp_path, request.Flags(hours_s=13 * H))
    with pytest.raises(UsageError, match="past the 12h hard maximum"):
        build(tmp_path, profile={"hours": 13 * H})  # a profile's hours too
    with pytest.raises(UsageError, match="past the 12h hard maximum"):
        build(tmp_path, GPU_SHOPPER_DEFAULTS_HOURS="13h")  # and the setting's
    assert build(tmp_path, request.Flags(hours_s=12 * H)).request.hours_s == 12 * H
    assert build(tmp_path, request.Flags(hours_s=13 * H, override=True)).request.override
    raised = build(tmp_path, request.Flags(hours_s=13 * H), GPU_SHOPPER_SAFETY_HARD_MAX_HOURS="24")
    assert raised.request.hard_max_s == 24 * H


def test_a_job_refuses_only_an_explicit_hours_and_caps_the_rest(tmp_path):
    job = request.Purpose.JOB
    with pytest.raises(UsageError, match="past the 12h hard maximum"):
        build(tmp_path, request.Flags(hours_s=13 * H, override=True), purpose=job)
    capped = build(tmp_path, profile={"hours": 13 * H}, purpose=job).request
    assert capped.hours_s == 12 * H
    follows = build(tmp_path, request.Flags(job_duration_s=H), {"hours": 5 * H}, job).request
    assert follows.hours_s == H + 30 * 60  # --max-duration plus the margin
    assert (
        build(tmp_path, request.Flags(hours_s=H, job_duration_s=4 * H), purpose=job).request.hours_s
        == H
    )
    assert build(tmp_path, profile={"hours": 5 * H}, purpose=job).request.hours_s == 5 * H


def test_a_benchmark_request_leaves_the_reservation_and_retries_to_each_attempt(tmp_path):
    bench = build(
        tmp_path,
        request.Flags(image="img"),
        {"hours": 100 * H, "auto_retry": 5, "consumer": "bob"},
        request.Purpose.BENCH,
        VASTAI_PREFERRED_GPUS="RTX 4090",
    ).request
    assert (bench.hours_s, bench.auto_retry, bench.preferred_gpus) == (2 * H, 0, [])
    assert (bench.image, bench.consumer) == ("img", "bob")


# -- --secret-env ---------------------------------------------------------------------------------
def test_secret_env_reads_each_name_from_the_environment():
    environ = {"HF_TOKEN": "hf_abc", "WANDB_KEY": "w1"}
    assert request.read_secret_env(["WANDB_KEY", "HF_TOKEN"], environ) == {
        "WANDB_KEY": "w1",
        "HF_TOKEN": "hf_abc",
    }


@pytest.mark.parametrize("environ", [{}, {"MISSING": ""}], ids=["unset", "empty"])
def test_a_missing_secret_names_the_variable_and_never_a_value(environ):
    environ = {**environ, "HF_TOKEN": "hf_s3cr3t_value"}
    with pytest.raises(UsageError) as caught:
        request.read_secret_env(["HF_TOKEN", "MISSING"], environ)
    message = str(caught.value)
    assert message == "--secret-env MISSING: MISSING is not set in this environment"
    assert "hf_s3cr3t_value" not in message


def test_a_secret_env_that_is_no_variable_name_is_refused():
    with pytest.raises(UsageError, match="is not an environment variable name"):
        request.read_secret_env(["HF-TOKEN"], {"HF-TOKEN": "x"})


# -- the budget warning's arithmetic ------------------------------------------------------------
def spent(hours: float, price: float = 1.0, start: datetime = NOW - timedelta(hours=20)):
    return {
        "id": "s0",
        "status": "ended",
        "provider": "vastai",
        "price_per_hour": price,
        "billing_started_at": iso(start),
        "ended_at": iso(start + timedelta(hours=hours)),
    }


def test_the_budget_warning_adds_this_months_spend_to_the_projected_cost(tmp_path):
    # $6 this month, plus 4h of last month's session that ran into it (the 20h before are
    # October's and do not count): $10 spent.
    october = datetime(2026, 10, 31, 4, 0, tzinfo=timezone.utc)
    records = [Session.from_record(spent(6.0)), Session.from_record(spent(24.0, start=october))]
    built = build(tmp_path, request.Flags(hours_s=4 * H))
    prov = Provisioner(offer("vastai", 1, price=0.5))
    choice = request.choose(prov, built, Store(), settings(tmp_path))
    assert choice.projected_usd == 2.0
    assert budget_warning(records, choice.projected_usd, NOW, 12.0) is None  # exactly: fine
    message = budget_warning(records, choice.projected_usd, NOW, 11.99)
    assert message == (
        "this month's spend $10.00 plus this rental's $2.00 would pass the $11.99 budget "
        "(safety.monthly_budget_usd)"
    )
    assert budget_warning(records, 1e9, NOW, None) is None


def test_the_choice_warns_past_the_budget_setting_and_reads_no_session_without_one(tmp_path):
    records = [Session.from_record(spent(6.0))]
    built = build(tmp_path, request.Flags(hours_s=4 * H))
    choice = request.choose(
        Provisioner(offer("vastai", 1, price=0.5)), built, Store(), settings(tmp_path)
    )
    read: list[int] = []

    def sessions():
        read.append(1)
        return records

    assert choice.budget_warning(settings(tmp_path), sessions, NOW) is None
    assert read == []  # no budget: the state is never read (nor its broken records named)
    budget = settings(tmp_path, GPU_SHOPPER_SAFETY_MONTHLY_BUDGET_USD="8")
    assert choice.budget_warning(budget, sessions, NOW) is None  # $6 + $2 = $8: not past it
    budget = settings(tmp_path, GPU_SHOPPER_SAFETY_MONTHLY_BUDGET_USD="7.99")
    assert choice.budget_warning(budget, sessions, NOW) == (
        "this month's spend $6.00 plus this rental's $2.00 would pass the $7.99 budget "
        "(safety.monthly_budget_usd)"
    )


class Renting(Provisioner):
    """A provisioner whose provision answers a session (or raises) and records undo."""

    def __init__(self, *offers, fail=None):
        super().__init__(*offers)
        self.fail, self.undone = fail, []

    def provision(self, req, candidates):
        if self.fail:
            raise self.fail
        return Session.from_record({"id": "abc123", "status": "running", "provider": "vastai"})

    def undo(self, session, exc):
        self.undone.append((session.id, exc))
        return UsageError("undone")


def test_a_hand_off_that_reaches_no_one_destroys_the_new_session(tmp_path):
    built = build(tmp_path)
    prov = Renting(offer("vastai", 1))
    choice = request.choose(prov, built, Store(), settings(tmp_path))
    shown: list[str] = []
    assert request.rent(prov, choice, lambda s: shown.append(s.id)).id == "abc123"
    assert shown == ["abc123"] and prov.undone == []

    def closed_pipe(session):
        raise KeyboardInterrupt

    try:
        request.rent(prov, choice, closed_pipe)
    except KeyboardInterrupt:
        pytest.fail("the interruption escaped the hand-off: the new session was left running")
    except UsageError as exc:
        assert str(exc) == "undone"  # the error undo returns is the one raised
    else:
        pytest.fail("a hand-off that reached no one passed for a rental")
    assert [sid for sid, _ in prov.undone] == ["abc123"]


def test_a_hand_off_that_crashes_destroys_the_new_session(tmp_path):
    # a bug printing the session: nobody was handed it, so it is not left billing
    built = build(tmp_path)
    prov = Renting(offer("vastai", 1))
    choice = request.choose(prov, built, Store(), settings(tmp_path))

    def crash(session):
        raise ValueError("bad value in the view")

    with pytest.raises(UsageError, match="undone"):
        request.rent(prov, choice, crash)
    ((sid, exc),) = prov.undone
    assert sid == "abc123" and isinstance(exc, ValueError)


def test_an_interrupted_provision_is_not_undone_here(tmp_path):
    # each attempt cleans up after itself; there is no session to undo
    built = build(tmp_path)
    prov = Renting(offer("vastai", 1), fail=KeyboardInterrupt())
    choice = request.choose(prov, built, Store(), settings(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        request.rent(prov, choice, lambda s: None)
    assert prov.undone == []


# -- sessions extend on the store ---------------------------------------------------------------
def test_extend_session_writes_the_new_end_and_says_when_an_override_moved_the_maximum(tmp_path):
    store = StateStore(tmp_path / "state.json")
    store.put_session(
        Session.from_record(
            {
                "id": "a1b2c3",
                "status": "running",
                "provider": "vastai",
                "created_at": iso(NOW - timedelta(hours=10)),
                "reservation_ends_at": iso(NOW + timedelta(hours=1)),
                "hard_max_at": iso(NOW + timedelta(hours=2)),
            }
        )
    )
    host = SimpleNamespace(store=store, settings=settings(tmp_path), clock=lambda: NOW)
    said: list[str] = []
    updated = rules.extend_session(host, "a1b2c3", H, False, NOW, said.append)
    assert updated.reservation_ends_at == (NOW + timedelta(hours=2)) and said == []
    with pytest.raises(UsageError, match="past the hard maximum"):
        rules.extend_session(host, "a1b2c3", 1, False, NOW, said.append)
    assert store.get_session("a1b2c3").recorded("reservation_ends_at") == iso(
        NOW + timedelta(hours=2)
    )
    rules.extend_session(host, "a1b2c3", H, True, NOW, said.append)
    moved = iso(NOW + timedelta(hours=3))
    assert said == [f"Override recorded: hard maximum moved to {moved}"]
    assert store.get_session("a1b2c3").recorded("hard_max_at") == moved
    with pytest.raises(NoSuchItem, match="no session 'ffffff'"):
        rules.extend_session(host, "ffffff", H, False, NOW, said.append)


def test_two_extends_at_once_each_keep_their_time_and_their_override(tmp_path):
    """The rule runs on the session as it stands under the lock: an extend from another
    shell between our read and our write is built upon, not overwritten."""
    path = tmp_path / "state.json"

    class RacingStore(StateStore):
        raced = False

        def get_session(self, session_id):
            session = super().get_session(session_id)
            if not self.raced:  # another shell's extend lands right after our first read
                self.raced = True
                other = SimpleNamespace(store=StateStore(path), settings=made, clock=lambda: NOW)
                rules.extend_session(other, session_id, 2 * H, True, NOW, lambda line: None)
            return session

    made = settings(tmp_path)
    store = RacingStore(path)
    store.put_session(
        Session.from_record(
            {
                "id": "a1b2c3",
                "status": "running",
                "provider": "vastai",
                "created_at": iso(NOW - timedelta(hours=10)),
                "reservation_ends_at": iso(NOW + timedelta(hours=1)),
                "hard_max_at": iso(NOW + timedelta(hours=2)),
            }
        )
    )
    host = SimpleNamespace(store=store, settings=made, clock=lambda: NOW)
    said: list[str] = []
    rules.extend_session(host, "a1b2c3", 2 * H, True, NOW, said.append)
    after = StateStore(path).get_session("a1b2c3")
    assert after.recorded("reservation_ends_at") == iso(NOW + timedelta(hours=5))
    assert [o["hard_max_at"] for o in after.rest["overrides"]] == [
        iso(NOW + timedelta(hours=3)),
        iso(NOW + timedelta(hours=5)),
    ]
    assert said == [f"Override recorded: hard maximum moved to {iso(NOW + timedelta(hours=5))}"]


# -- costs: the filter and the total ------------------------------------------------------------
def test_cost_report_filters_then_totals():
    def rec(sid, consumer, provider, created, hours):
        return {
            **spent(hours, start=created),
            "id": sid,
            "consumer": consumer,
            "provider": provider,
            "created_at": iso(created),
            "status": "ended",
        }

    records = [
        Session.from_record(r)
        for r in (
            rec("s1", "alice", "vastai", NOW - timedelta(days=3), 2.0),
            rec("s2", "bob", "tensordock", NOW - timedelta(days=1), 1.0),
            rec("s3", "alice", "tensordock", NOW - timedelta(hours=5), 0.5),
        )
    ]
    every = cost_report(records, NOW)
    assert [r["session_id"] for r in every.rows] == ["s1", "s2", "s3"] and every.total == 3.5
    assert cost_report(records, NOW, consumer="alice").total == 2.5
    assert cost_report(records, NOW, provider="tensordock").total == 1.5
    since = cost_report(records, NOW, since=NOW - timedelta(days=2))
    assert [r["session_id"] for r in since.rows] == ["s2", "s3"]
    assert cost_report(records, NOW, session_id="s2", consumer="alice").rows == []
    with pytest.raises(NoSuchItem, match="no session 's9'"):
        cost_report(records, NOW, session_id="s9")


# -- the offer query: flag > profile > setting > default, filter by filter ---------------------
def query_settings(tmp_path: Path, profile: str = "", **env: str) -> Settings:
    """Settings whose config file holds ``[profiles.mine]`` with these TOML lines."""
    made = settings(tmp_path, **env)
    made.paths.config_file.parent.mkdir(parents=True, exist_ok=True)
    made.paths.config_file.write_text(f"[profiles.mine]\n{profile}", encoding="utf-8")
    return made


# (OfferQuery field, QueryFlags field and value, profile TOML line and value, setting and
#  the value it gives, the default)
QUERY_FIELDS = [
    ("providers", "providers", ("tensordock",), ('providers = ["vastai"]', ["vastai"]), ("GPU_SHOPPER_DEFAULTS_PROVIDERS", "tensordock", ["tensordock"]), ["vastai", "tensordock"]),
    ("max_price", "max_price", 0.4, ("max_price = 0.6", 0.6), ("GPU_SHOPPER_DEFAULTS_MAX_PRICE", "0.8", 0.8), None),
    ("min_reliability", "min_reliability", 0.9, ("min_reliability = 0.99", 0.99), ("GPU_SHOPPER_DEFAULTS_MIN_RELIABILITY", "0.97", 0.97), 0.95),
    ("disk_gb", "disk", 50, ("disk_gb = 60", 60.0), ("GPU_SHOPPER_DEFAULTS_DISK_GB", "70", 70.0), 32.0),
    ("gpus", "gpus", ("RTX 4090",), ('gpu = ["RTX 3090"]', ["RTX 3090"]), None, []),
    ("countries", "countries", ("de",), ('country = ["fr"]', ["FR"]), None, []),
    ("min_vram_gb", "min_vram", 24.0, ("min_vram_gb = 48", 48), None, None),
    ("num_gpus", "num_gpus", 2, ("num_gpus = 4", 4), None, None),
    ("sort", "sort", "reliability", ('sort = "vram"', "vram"), None, "price"),
    ("template", "template", "flag-tpl", ('template = "profile-tpl"', "profile-tpl"), None, None),
    ("verified", "verified_only", True, ("verified = false", False), None, None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("field", "flag_name", "flag", "prof", "setting", "default"),
    QUERY_FIELDS,
    ids=[f[0] for f in QUERY_FIELDS],
)
def test_each_offer_filter_is_flag_then_profile_then_setting_then_default(
    tmp_path, field, flag_name, flag, prof, setting, default
):
    env = {setting[0]: setting[1]} if setting else {}

    def value(flags, line, env):
        made = query_settings(tmp_path, line + "\n", **env)
        query, _ = offer_query(made, QueryFlags(profile="mine", **flags))
        return getattr(query, field)

    expected_flag = [c.upper() for c in flag] if field == "countries" else flag
    assert value({flag_name: flag}, prof[0], env) == (
        list(expected_flag) if isinstance(flag, tuple) else expected_flag
    )
    assert value({}, prof[0], env) == prof[1]
    if setting:
        assert value({}, "", env) == setting[2]
    assert value({}, "", {}) == default


def test_the_applied_profile_comes_back_and_none_without_the_flag(tmp_path):
    made = query_settings(tmp_path, "max_price = 0.6\n")
    query, prof = offer_query(made, QueryFlags(profile="mine"))
    assert prof == {"max_price": 0.6}
    query, prof = offer_query(made, QueryFlags())
    assert prof == {} and query.max_price is None
    _, built_in = offer_query(made, QueryFlags(profile="flux-lora"))
    assert built_in["template"] == "Ostris AI Toolkit"


def test_a_workload_ranks_by_price_performance_and_refuses_another_sort(tmp_path):
    made = settings(tmp_path)
    query, _ = offer_query(made, QueryFlags(workload="gpu-matmul"))
    assert query.sort == "perf-per-dollar" and query.workload == "gpu-matmul"
    with pytest.raises(UsageError, match="use it with --sort perf-per-dollar, not --sort price"):
        offer_query(made, QueryFlags(workload="gpu-matmul", sort="price"))


@pytest.mark.parametrize(
    ("flags", "line", "message"),
    [
        ({"countries": ("USA",)}, "", "--country takes a two-letter code"),
        # (click's choices and the profile's own checks stop these first; core checks too)
        ({"providers": ("nimbus",)}, "", "unknown provider 'nimbus'"),
        ({"sort": "vibes"}, "", "unknown sort 'vibes'"),
    ],
)
def test_a_bad_filter_from_a_flag_or_a_profile_is_a_usage_error(tmp_path, flags, line, message):
    made = query_settings(tmp_path, line + "\n")
    with pytest.raises(UsageError, match=message):
        offer_query(made, QueryFlags(profile="mine", **flags))


def test_a_rental_request_loads_no_job_runner(tmp_path):
    """provision (and its dry run) builds its request without core/jobs, run's runner."""
    import subprocess
    import sys

    code = (
        "import sys; from gpushopper.core import request; "
        "from gpushopper.model.models import OfferQuery; "
        "from tests.test_request import settings; from pathlib import Path; "
        f"s = settings(Path({str(tmp_path)!r})); "
        "request.build(s, OfferQuery(), {}, request.Flags(), request.Purpose.BENCH); "
        "request.build(s, OfferQuery(), {}, request.Flags()); "
        "print('gpushopper.core.jobs' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
