"""doctor: exit 0 only when nothing failed."""

from __future__ import annotations


def test_doctor_all_good_with_both_providers(gs, vast, tensordock):
    result = gs("doctor --json")
    assert result.exit_code == 0, result.stdout
    checks = {c["check"]: c for c in result.json()["checks"]}
    assert checks["vastai reachable"]["status"] == "ok"
    assert "authenticated" in checks["vastai reachable"]["detail"]
    assert checks["tensordock reachable"]["status"] == "ok"
    assert checks["ssh include"]["status"] == "warn"
    assert "Include" in checks["ssh include"]["detail"]


def test_doctor_fails_without_any_credentials(gs):
    result = gs("doctor --json")
    assert result.exit_code == 1
    checks = {c["check"]: c for c in result.json()["checks"]}
    assert checks["providers"]["status"] == "fail"
    assert checks["vastai credentials"]["status"] == "skip"


def test_doctor_reports_unreachable_and_bad_key(gs, vast, tensordock, monkeypatch):
    monkeypatch.setenv("VASTAI_API_KEY", "not-the-right-key-1234")
    monkeypatch.setenv("TENSORDOCK_API_URL", "http://127.0.0.1:9/api/v2")
    monkeypatch.setenv("GPU_SHOPPER_DEFAULTS_HTTP_RETRIES", "1")
    monkeypatch.setenv("COLUMNS", "200")  # a wide terminal: whole cells, one line each
    result = gs("doctor --json")
    assert result.exit_code == 1
    checks = {c["check"]: c for c in result.json()["checks"]}
    assert checks["vastai reachable"]["status"] == "fail"
    assert "Invalid user key" in checks["vastai reachable"]["detail"]
    assert "not-the-right-key-1234" not in result.stdout
    assert checks["tensordock reachable"]["status"] == "fail"
    table = gs("doctor")
    assert "vastai reachable" in table.stdout


def test_doctor_sees_our_include_line(gs, vast, isolated_home, tmp_path):
    ssh_dir = tmp_path / "user-home" / ".ssh"
    ssh_dir.mkdir()
    (ssh_dir / "config").write_text(f"Include {isolated_home / 'ssh_config'}\n")
    checks = {c["check"]: c for c in gs("doctor --json").json()["checks"]}
    assert checks["ssh include"]["status"] == "ok"


# -- the checks themselves, in core (no network: the provider factory is passed in) -------------


class _Reachable:
    def __init__(self, answer=None, error=None):
        self.answer, self.error = answer, error

    def check(self):
        if self.error:
            raise self.error
        return self.answer


def _core(home, environ=None):
    from gpushopper.state.config import Settings
    from gpushopper.state.paths import resolve_paths
    from gpushopper.state.store import StateStore

    env = {"GPU_SHOPPER_HOME": str(home), **(environ or {})}
    paths = resolve_paths(env)
    return Settings(paths=paths, environ=env), paths, StateStore(paths.state_file)


def test_no_provider_with_credentials_fails_the_report_and_skips_each(tmp_path):
    from gpushopper.core.doctor import provider_checks
    from gpushopper.model.errors import MissingCredentials

    def none(name):
        raise MissingCredentials(name, "NO_KEY")

    checks = provider_checks(none)
    assert [c.status for c in checks] == ["skip", "skip", "fail"]
    assert checks[-1].name == "providers" and "no provider has credentials" in checks[-1].detail


def test_one_reachable_provider_is_enough_and_a_failing_one_fails(tmp_path):
    from gpushopper.core.doctor import Report, provider_checks
    from gpushopper.model.errors import MissingCredentials, ProviderError

    def factory(name):
        if name == "vastai":
            return _Reachable("authenticated as someone")
        raise MissingCredentials(name, "NO_KEY")

    checks = provider_checks(factory)
    assert [(c.name, c.status) for c in checks] == [
        ("vastai credentials", "ok"),
        ("vastai reachable", "ok"),
        ("tensordock credentials", "skip"),
    ]
    assert Report(checks).ok
    broken = provider_checks(
        lambda name: _Reachable(error=ProviderError(name, "HTTP 401: bad key"))
    )
    assert [c.status for c in broken] == ["ok", "fail", "ok", "fail"]
    assert not Report(broken).ok and broken[1].detail.endswith("HTTP 401: bad key")


def test_the_report_is_ok_with_warnings_and_skips_but_not_one_fail():
    from gpushopper.core.doctor import Check, Report

    calm = Report([Check("a", "ok", "x"), Check("b", "warn", "y"), Check("c", "skip", "z")])
    assert calm.ok
    assert calm.to_json() == {
        "ok": True,
        "checks": [
            {"check": "a", "status": "ok", "detail": "x"},
            {"check": "b", "status": "warn", "detail": "y"},
            {"check": "c", "status": "skip", "detail": "z"},
        ],
    }
    assert not Report([*calm.checks, Check("d", "fail", "w")]).ok


def test_an_unwritable_home_fails_and_says_what_to_do(tmp_path):
    from gpushopper.core.doctor import writable_check

    (tmp_path / "a-file").write_text("")
    _, paths, _ = _core(tmp_path / "a-file" / "home")
    check = writable_check(paths)
    assert check.status == "fail" and "GPU_SHOPPER_HOME" in check.detail
    _, paths, _ = _core(tmp_path / "home")
    assert writable_check(paths).status == "ok"
    assert list((tmp_path / "home").iterdir()) == []  # the probe is gone


def test_a_bad_setting_and_a_broken_state_file_fail(tmp_path):
    from gpushopper.core.doctor import config_check, state_check

    settings, paths, store = _core(tmp_path / "home", {"GPU_SHOPPER_DEFAULTS_HTTP_RETRIES": "x"})
    assert config_check(settings, paths).status == "fail"
    settings, paths, store = _core(tmp_path / "home")
    assert config_check(settings, paths).detail.endswith("(not created yet)")
    assert state_check(store, paths).detail.endswith("(not created yet)")
    paths.data_dir.mkdir(parents=True, exist_ok=True)
    paths.state_file.write_text("{not json")
    assert state_check(store, paths).status == "fail"


def test_the_safety_net_is_a_running_watch_or_an_uncommented_cron_sweep(tmp_path):
    from gpushopper.core.doctor import safety_net_check, sweep_lines
    from gpushopper.state.pidlock import PidLock

    _, paths, _ = _core(tmp_path / "home")
    paths.data_dir.mkdir(parents=True)
    assert safety_net_check(paths, lambda: None).status == "warn"
    assert "crontab -l is not available" in safety_net_check(paths, lambda: None).detail
    assert "no crontab line runs" in safety_net_check(paths, lambda: []).detail
    crontab = "# */5 * * * * gpu-shopper cleanup-orphans\n*/5 * * * * gpu-shopper watch --once\n"
    lines = sweep_lines(crontab)
    assert lines == ["*/5 * * * * gpu-shopper watch --once"]
    net = safety_net_check(paths, lambda: lines)
    assert net.status == "ok" and net.detail == "cron sweep: */5 * * * * gpu-shopper watch --once"
    lock = PidLock(paths.pid_file)
    lock.acquire()
    try:
        net = safety_net_check(paths, lambda: None)
        assert net.status == "ok" and "watch is running for this home (pid " in net.detail
    finally:
        lock.release()


def test_the_ssh_include_check_reads_the_users_config(tmp_path):
    from gpushopper.core.doctor import ssh_include_check

    _, paths, _ = _core(tmp_path / "home")
    user = tmp_path / "user"
    check = ssh_include_check(paths, user)
    assert check.status == "warn" and check.detail.endswith(f"Include {paths.ssh_config_file}")
    (user / ".ssh").mkdir(parents=True)
    (user / ".ssh" / "config").write_text(f"Include {paths.ssh_config_file}\n")
    assert ssh_include_check(paths, user).status == "ok"
