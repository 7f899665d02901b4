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
