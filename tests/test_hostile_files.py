"""Issue 9, items 6-9 and 11: no lost setting, no followed link, no silent reset."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gpushopper.model.errors import StateError
from gpushopper.state.atomic import atomic_write_text
from gpushopper.state.store import StateStore


# -- 6. concurrent config set ----------------------------------------------------------------
def test_concurrent_config_sets_all_land(isolated_home):
    """Separate processes, each setting its own profile option: none may be lost."""
    n = 24
    script = (
        "import sys; from gpushopper.cli import cli; from gpushopper.cli.output import run; "
        "sys.exit(run(cli, ['config', 'set', f'profiles.p{sys.argv[1]}.limit', sys.argv[1]]))"
    )
    env = dict(os.environ)
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(i + 1)], env=env) for i in range(n)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0] * n
    profiles = _read_toml(isolated_home / "config.toml")["profiles"]
    assert {name: p["limit"] for name, p in profiles.items()} == {
        f"p{i}": i for i in range(1, n + 1)
    }
    assert stat.S_IMODE((isolated_home / "config.toml").stat().st_mode) == 0o600


def _read_toml(path: Path) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    return tomllib.loads(path.read_text())


# -- 7. links and modes ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["state.json", "journal.jsonl"])
def test_a_symlinked_state_or_journal_is_refused_and_its_target_untouched(
    gs, isolated_home, tmp_path, name
):
    target = tmp_path / "victim.txt"
    target.write_text("precious\n")
    (isolated_home / name).symlink_to(target)
    result = gs("provision vastai:1 --yes --json")
    assert result.exit_code == 1, result.stderr
    assert "symbolic link" in result.stderr
    assert target.read_text() == "precious\n"
    assert (isolated_home / name).is_symlink()


def test_a_dangling_state_link_is_refused_not_read_as_no_state(gs, isolated_home, tmp_path):
    (isolated_home / "state.json").symlink_to(tmp_path / "nowhere.json")
    store = StateStore(isolated_home / "state.json")
    with pytest.raises(StateError, match="symbolic link"):
        store.install_id()
    assert not (tmp_path / "nowhere.json").exists()
    result = gs("sessions list --json")
    assert result.exit_code == 1 and "symbolic link" in result.stderr


def test_a_state_without_install_id_takes_its_sessions_id_not_a_new_one(isolated_home):
    path = isolated_home / "state.json"
    path.write_text(
        json.dumps(
            {"schema_version": 1, "sessions": {"s1": {"id": "s1", "install_id": "cafe0001"}}}
        )
    )
    assert StateStore(path).install_id() == "cafe0001"


def test_a_planted_pidfile_link_is_refused_and_its_target_untouched(isolated_home, tmp_path):
    from gpushopper.state.pidlock import PidLock

    target = tmp_path / "bashrc"
    target.write_text("keep me\n")
    (isolated_home / "watch.pid").symlink_to(target)
    with pytest.raises(StateError, match="symbolic link"):
        PidLock(isolated_home / "watch.pid").acquire()
    assert target.read_text() == "keep me\n"


def test_journal_append_never_follows_a_link(tmp_path):
    from gpushopper.core.journal import append

    target = tmp_path / "target"
    target.write_text("")
    link = tmp_path / "journal.jsonl"
    link.symlink_to(target)
    with pytest.raises(OSError):
        append(link, {"op": "create_instance"})
    assert target.read_text() == ""


def test_folders_are_0700_and_files_0600_under_umask_000(tmp_path):
    """A fresh home under umask 000: nothing another local user could plant links in."""
    home = tmp_path / "fresh" / "home"
    script = (
        "import os, sys; os.umask(0); "
        "from gpushopper.state.store import StateStore; "
        "from pathlib import Path; "
        "s = StateStore(Path(sys.argv[1]) / 'state.json'); s.install_id(); "
        "from gpushopper.core.journal import append; "
        "append(Path(sys.argv[1]) / 'journal.jsonl', {'op': 'x'})"
    )
    subprocess.run([sys.executable, "-c", script, str(home)], check=True)
    for folder in (home, home.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    for name in ("state.json", "state.json.lock", "journal.jsonl"):
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o600, name


# -- 8. stale temporaries --------------------------------------------------------------------
def test_stale_temporaries_of_our_naming_are_removed_at_the_next_write(isolated_home):
    path = isolated_home / "state.json"
    StateStore(path).install_id()
    leftovers = [isolated_home / f".state.json.k1ll{i}d.tmp" for i in range(5)]
    for leftover in leftovers:
        leftover.write_bytes(b"x" * 1024)
    other = isolated_home / ".unrelated.tmp"
    other.write_text("not ours")
    with StateStore(path).transaction() as state:
        state["offer_health"]["x"] = {}
    assert [p for p in leftovers if p.exists()] == []
    assert other.exists()


def test_unlocked_writes_keep_a_fresh_temporary_but_remove_old_ones(tmp_path):
    target = tmp_path / "ssh_config"
    fresh = tmp_path / ".ssh_config.fresh1.tmp"
    old = tmp_path / ".ssh_config.old111.tmp"
    fresh.write_text("a writer may still be here")
    old.write_text("killed long ago")
    os.utime(old, (1, 1))
    atomic_write_text(target, "x")
    assert fresh.exists() and not old.exists()


# -- 9. damaged state ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content",
    [
        json.dumps({"schema_version": -1, "sessions": {}}),
        json.dumps({"schema_version": True}),
        json.dumps({"sessions": [{"id": ["not", "hashable"]}]}),
        json.dumps({"sessions": [7, "x", {"id": "a"}], "offer_health": []}),
        json.dumps({"schema_version": 1, "sessions": 3}),
        json.dumps({"schema_version": 1, "sessions": [], "install_id": 5}),
        "[" * 100_000 + "]" * 100_000,
        '{"a":' * 50_000 + "1" + "}" * 50_000,
    ],
    ids=[
        "minus1",
        "bool",
        "v0-bad-id",
        "v0-health-list",
        "sessions-int",
        "id-int",
        "deep-list",
        "deep-obj",
    ],
)
def test_damaged_state_is_the_clear_backup_error(gs, isolated_home, content):
    # One bad record inside a good ``sessions`` object is not damage: it is reported and
    # skipped so every other session is still enforced (test_accidents covers that).
    path = isolated_home / "state.json"
    path.write_text(content)
    result = gs("sessions list --json")
    assert result.exit_code == 1, result.stderr
    error = result.json()["error"]
    assert error["type"] == "state"
    assert "is damaged" in error["message"] and "copied to" in error["message"]
    assert "internal" not in result.stderr and "Traceback" not in result.stderr
    assert path.read_text() == content  # never reset
    backups = list(isolated_home.glob("state.json.corrupt-*"))
    assert backups and backups[0].read_text() == content


# -- 11. settings: ranges on set and on read; negative numbers; metrics parents --------------
@pytest.mark.parametrize(
    "key, value, needle",
    [
        ("safety.hard_max_hours", "inf", "finite"),
        ("safety.hard_max_hours", "nan", "finite"),
        ("safety.hard_max_hours", "-1", "more than 0"),
        ("defaults.min_reliability", "7", "at most 1"),
        ("defaults.min_reliability", "-0.5", "at least 0"),
        ("defaults.disk_gb", "-1", "at least 1"),
        ("defaults.disk_gb", "0", "at least 1"),
        ("defaults.http_retries", "0", "at least 1"),
        ("defaults.http_timeout", "0", "more than 0"),
        ("defaults.max_price", "-2", "more than 0"),
        ("defaults.providers", "vastai,aws", "unknown 'aws'"),
        ("vastai.ssh_user", "root -oProxyCommand=x", "login name"),
        ("vastai.api_url", "http://", "URL with a host"),
        ("profiles.big.min_reliability", "2", "at most 1"),
        ("profiles.big.num_gpus", "-3", "at least 1"),
        ("profiles.big.sort", "cheapest", "unknown 'cheapest'"),
        ("profiles.big.hours", "0s", "longer than zero"),
    ],
)
def test_config_set_refuses_out_of_range_values(gs, isolated_home, key, value, needle):
    result = gs(["config", "set", key, value])
    assert result.exit_code == 2, result.stdout + result.stderr
    assert needle in result.stderr, result.stderr
    assert "No such option" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (isolated_home / "config.toml").exists()


def test_out_of_range_values_in_the_file_are_refused_when_read(gs, isolated_home, monkeypatch):
    (isolated_home / "config.toml").write_text("[safety]\nhard_max_hours = inf\n")
    result = gs("provision vastai:1 --yes")
    assert result.exit_code == 2
    assert "safety.hard_max_hours" in result.stderr and "finite" in result.stderr
    (isolated_home / "config.toml").write_text("[defaults]\nmin_reliability = 7\n")
    result = gs("inventory --json")
    assert result.exit_code == 2
    assert "defaults.min_reliability" in result.stderr
    (isolated_home / "config.toml").unlink()
    monkeypatch.setenv("VASTAI_API_KEY", "dummy-key-1234")
    monkeypatch.setenv("VASTAI_API_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("GPU_SHOPPER_DEFAULTS_HTTP_RETRIES", "-4")
    result = gs("inventory --json")
    assert result.exit_code == 2 and "GPU_SHOPPER_DEFAULTS_HTTP_RETRIES" in result.stderr


def test_metrics_file_does_not_create_parent_folders(gs, tmp_path):
    target = tmp_path / "no" / "such" / "dir" / "gs.prom"
    result = gs(f"watch --once --metrics-file {target}")
    assert result.exit_code == 2, result.stderr
    assert "folder" in result.stderr
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("planted", ["answer", "taken.json", "vastai.rate-limited"])
def test_offer_cache_files_are_read_without_following_a_planted_link(tmp_path, planted):
    """A link planted in the offer cache is a miss, never read; the next write replaces
    the link, not its target."""
    from datetime import datetime, timezone

    from gpushopper.core.inventory import OfferCache

    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    cache = OfferCache(tmp_path / "cache", 60, lambda: now)
    cache.put("vastai", "k", [])
    assert stat.S_IMODE((tmp_path / "cache" / "offers").stat().st_mode) == 0o700
    name = cache._path("vastai", "k").name if planted == "answer" else planted
    # The planted target holds a valid answer (offer taken, rate limit now), so a read
    # that follows the link would show.
    target = tmp_path / "elsewhere.json"
    good = (tmp_path / "cache" / "offers" / cache._path("vastai", "k").name).read_text()
    target.write_text(
        good if planted == "answer" else json.dumps({"vastai:1": "2026-01-02T00:00:00Z"})
    )
    before = target.read_text()
    link = tmp_path / "cache" / "offers" / name
    link.unlink(missing_ok=True)
    link.symlink_to(target)
    assert cache._read(link) is None
    if planted == "answer":
        assert cache.get("vastai", "k") is None
        cache.put("vastai", "k", [])
    elif planted == "taken.json":
        cache.mark_taken("vastai:2")
    else:
        cache.note_rate_limited("vastai")
    assert not link.is_symlink()
    assert target.read_text() == before
