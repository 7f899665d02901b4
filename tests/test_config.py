"""Settings: precedence, masking, validation, file mode, the Vast CLI key-file fallback."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from gpushopper.model.errors import ConfigError
from gpushopper.state.config import Settings
from gpushopper.state.paths import resolve_paths


def settings() -> Settings:
    import os

    return Settings(paths=resolve_paths(), environ=dict(os.environ), cwd=Path.cwd())


def test_default_then_file_then_dotenv_then_env(gs, monkeypatch, isolated_home):
    assert settings().get("defaults.disk_gb") == 32
    assert settings().source("defaults.disk_gb") == "default"

    assert gs("config set defaults.disk_gb 40").exit_code == 0
    assert settings().get("defaults.disk_gb") == 40
    assert settings().source("defaults.disk_gb") == "file"

    Path(".env").write_text("GPU_SHOPPER_DEFAULTS_DISK_GB=50\n")
    assert settings().get("defaults.disk_gb") == 50
    assert settings().source("defaults.disk_gb") == ".env:GPU_SHOPPER_DEFAULTS_DISK_GB"

    monkeypatch.setenv("GPU_SHOPPER_DEFAULTS_DISK_GB", "60")
    assert settings().get("defaults.disk_gb") == 60
    assert settings().source("defaults.disk_gb").startswith("env:")


def test_cli_md_environment_names(monkeypatch):
    monkeypatch.setenv("VASTAI_MAX_BID_PER_HOUR", "0.75")
    monkeypatch.setenv("VASTAI_PREFERRED_GPUS", "RTX 4090, RTX 3090")
    monkeypatch.setenv("TENSORDOCK_API_URL", "http://127.0.0.1:9/api/v2")
    s = settings()
    assert s.get("vastai.max_price") == 0.75
    assert s.get("vastai.preferred_gpus") == ["RTX 4090", "RTX 3090"]
    assert s.get("tensordock.api_url") == "http://127.0.0.1:9/api/v2"


def test_vast_api_key_alias_and_official_keyfile(monkeypatch, isolated_home, tmp_path):
    keyfile = tmp_path / "user-home" / ".config" / "vastai" / "vast_api_key"
    keyfile.parent.mkdir(parents=True)
    keyfile.write_text("keyfile-secret-1234\n")
    assert settings().get("vastai.api_key") == "keyfile-secret-1234"
    assert settings().source("vastai.api_key") == "vastai-cli-keyfile"
    monkeypatch.setenv("VAST_API_KEY", "alias-secret-5678")
    assert settings().get("vastai.api_key") == "alias-secret-5678"
    monkeypatch.setenv("VASTAI_API_KEY", "primary-secret-9999")
    assert settings().get("vastai.api_key") == "primary-secret-9999"


def test_durations_come_back_in_seconds():
    s = settings()
    assert s.get("defaults.hours") == 7200
    assert s.get("safety.provision_timeout") == 900


def test_config_list_masks_secrets_and_shows_sources(gs, monkeypatch):
    monkeypatch.setenv("VASTAI_API_KEY", "vk-super-secret-abcd")
    monkeypatch.setenv("TENSORDOCK_API_TOKEN", "td-token-very-secret-wxyz")
    result = gs("config list --json")
    assert result.exit_code == 0, result.stderr
    rows = {r["key"]: r for r in result.json()}
    assert rows["vastai.api_key"]["value"] == "****abcd"
    assert rows["vastai.api_key"]["source"] == "env:VASTAI_API_KEY"
    assert rows["tensordock.api_token"]["value"] == "****wxyz"
    assert rows["defaults.disk_gb"]["source"] == "default"
    table = gs("config list")
    assert "****abcd" in table.stdout
    for text in (result.stdout, result.stderr, table.stdout, table.stderr):
        assert "vk-super-secret-abcd" not in text
        assert "td-token-very-secret-wxyz" not in text


def test_config_get_masks_secret(gs, monkeypatch):
    monkeypatch.setenv("VASTAI_API_KEY", "vk-super-secret-abcd")
    result = gs("config get vastai.api_key")
    assert result.stdout.strip() == "****abcd"


@pytest.mark.parametrize(
    "args, needle",
    [
        ("config set no.such.key 1", "no.such.key"),
        ("config set defaults.disk_gb lots", "defaults.disk_gb"),
        ("config set defaults.hours forever", "defaults.hours"),
        ("config set defaults.min_reliability high", "defaults.min_reliability"),
        ("config set vastai.api_url ftp://x", "vastai.api_url"),
        ("config set profiles.mine.colour blue", "colour"),
        ("config get nope", "nope"),
    ],
)
def test_bad_key_or_value_exits_2_naming_it(gs, args, needle, isolated_home):
    result = gs(args)
    assert result.exit_code == 2
    assert needle in result.stderr
    assert result.stderr.startswith("Error: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
    assert not (isolated_home / "config.toml").exists()


def test_config_file_is_0600_and_secret_not_echoed(gs, isolated_home):
    result = gs("config set vastai.api_key set-by-hand-secret-9876")
    assert result.exit_code == 0
    mode = stat.S_IMODE((isolated_home / "config.toml").stat().st_mode)
    assert mode == 0o600
    assert "set-by-hand-secret-9876" not in result.stdout + result.stderr
    assert "****9876" in result.stderr


def test_set_unset_roundtrip_and_profiles(gs):
    assert gs("config set profiles.big.min_vram_gb 48").exit_code == 0
    assert gs("config set defaults.providers vastai").exit_code == 0
    s = settings()
    assert s.profile("big") == {"min_vram_gb": 48.0}
    assert s.get("defaults.providers") == ["vastai"]
    assert s.profile("flux-lora")["min_vram_gb"] == 24
    assert gs("config unset defaults.providers").exit_code == 0
    assert settings().get("defaults.providers") == ["vastai", "tensordock"]
    with pytest.raises(ConfigError, match="unknown profile"):
        settings().profile("nope")


def test_wrong_type_in_file_names_key_and_file(gs, isolated_home):
    (isolated_home / "config.toml").write_text('[defaults]\ndisk_gb = "huge"\n')
    result = gs("config get defaults.disk_gb")
    assert result.exit_code == 2
    assert "defaults.disk_gb" in result.stderr and "config.toml" in result.stderr


def test_broken_toml_is_exit_2_naming_file(gs, isolated_home):
    (isolated_home / "config.toml").write_text("[defaults\n")
    result = gs("config list")
    assert result.exit_code == 2
    assert "config.toml" in result.stderr


def test_config_path_json(gs, isolated_home):
    data = gs("config path --json").json()
    assert data["state_file"] == str(isolated_home / "state.json")
    assert data["config_file"] == str(isolated_home / "config.toml")


def test_flag_beats_env_dotenv_and_file_in_a_real_command(gs, vast, monkeypatch):
    """--disk (flag) > GPU_SHOPPER_DEFAULTS_DISK_GB (env) > .env > config file, as sent to Vast.ai."""

    def sent_storage() -> float:
        body = [r for r in vast.requests if r["method"] == "POST" and "bundles" in r["path"]][-1][
            "json"
        ]
        return body["allocated_storage"]

    assert gs("config set defaults.disk_gb 40").exit_code == 0
    gs("inventory --provider vastai --refresh --json")
    assert sent_storage() == 40
    Path(".env").write_text("GPU_SHOPPER_DEFAULTS_DISK_GB=45\n")
    gs("inventory --provider vastai --refresh --json")
    assert sent_storage() == 45
    monkeypatch.setenv("GPU_SHOPPER_DEFAULTS_DISK_GB", "50")
    gs("inventory --provider vastai --refresh --json")
    assert sent_storage() == 50
    gs("inventory --provider vastai --refresh --disk 60 --json")
    assert sent_storage() == 60


def test_provider_auth_error_never_shows_the_key(gs, vast, monkeypatch):
    monkeypatch.setenv("VASTAI_API_KEY", "wrong-key-but-secret-7777")
    result = gs("inventory --provider vastai --refresh --json")
    assert result.exit_code == 1
    assert "Invalid user key" in result.stderr
    assert result.json()["error"]["type"] == "auth"  # the provider's own typed error
    assert "wrong-key-but-secret-7777" not in result.stdout + result.stderr
