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


# -- issue 14: get shows the source, profiles are listed, set warns about the environment ----
def test_config_get_prints_the_value_on_stdout_and_its_source_on_stderr(gs, monkeypatch):
    result = gs("config get defaults.hours")
    assert result.stdout == "2h\n" and "from default" in result.stderr
    monkeypatch.setenv("GPU_SHOPPER_DEFAULTS_HOURS", "3h")
    result = gs("config get defaults.hours")
    assert result.stdout == "3h\n"
    assert "environment variable GPU_SHOPPER_DEFAULTS_HOURS" in result.stderr
    assert gs("config get defaults.hours --json").json() == {
        "key": "defaults.hours",
        "value": "3h",
        "source": "env:GPU_SHOPPER_DEFAULTS_HOURS",
    }


def test_config_list_and_get_show_profiles_the_built_in_one_included(gs):
    assert gs("config set profiles.flux-lora.disk_gb 80").exit_code == 0
    assert gs("config set profiles.big.min_vram_gb 48").exit_code == 0
    rows = {r["key"]: r for r in gs("config list --json").json()}
    assert rows["profiles.flux-lora.template"] == {
        "key": "profiles.flux-lora.template",
        "value": "Ostris AI Toolkit",
        "source": "built-in",
        "secret": False,
    }
    assert rows["profiles.flux-lora.disk_gb"]["value"] == 80
    assert rows["profiles.flux-lora.disk_gb"]["source"] == "file"
    assert rows["profiles.big.min_vram_gb"]["value"] == 48
    assert "profiles.flux-lora.min_vram_gb" in gs("config list").stdout
    every = gs("config get 'profiles.flux-lora.*' --json").json()
    assert {r["key"] for r in every} == {
        "profiles.flux-lora." + k
        for k in ("min_vram_gb", "disk_gb", "min_reliability", "template", "timeout")
    }
    assert gs("config get profiles.flux-lora --json").json() == every
    one = gs("config get profiles.flux-lora.disk_gb")
    assert one.stdout == "80\n" and str(gs("config path").stdout.strip()) in one.stderr
    short = gs("config get profiles.flux-lora.disk --json").json()  # a unique prefix, read-only
    assert short == {"key": "profiles.flux-lora.disk_gb", "value": 80, "source": "file"}
    unset = gs("config get profiles.flux-lora.gpu --json").json()
    assert unset == {"key": "profiles.flux-lora.gpu", "value": None, "source": "default"}
    assert gs("config get 'safety.*' --json").json()[0]["key"].startswith("safety.")


@pytest.mark.parametrize(
    "key, says",
    [
        ("profiles.nope.disk_gb", "unknown profile 'nope'"),
        ("profiles.flux-lora.min", "did you mean profiles.flux-lora.min_cuda or"),
        ("profiles.flux-lora.colour", "known: "),
        ("'nothing.*'", "no setting matches"),
    ],
)
def test_config_get_of_an_unknown_profile_or_option_is_exit_2(gs, key, says):
    result = gs(f"config get {key}")
    assert result.exit_code == 2 and says in result.stderr


def test_config_set_warns_when_the_environment_overrides_it(gs, monkeypatch, isolated_home):
    monkeypatch.setenv("GPU_SHOPPER_DEFAULTS_DISK_GB", "50")
    result = gs("config set defaults.disk_gb 80")
    assert result.exit_code == 0
    assert "Warning: environment variable GPU_SHOPPER_DEFAULTS_DISK_GB overrides" in result.stderr
    assert "80" in (isolated_home / "config.toml").read_text()
    monkeypatch.setenv("VASTAI_API_KEY", "env-key-secret-1111")
    secret = gs("config set vastai.api_key file-key-secret-2222")
    assert "environment variable VASTAI_API_KEY overrides" in secret.stderr
    assert "secret-1111" not in secret.stderr and "secret-2222" not in secret.stderr
    monkeypatch.delenv("GPU_SHOPPER_DEFAULTS_DISK_GB")
    assert "Warning" not in gs("config set defaults.disk_gb 81").stderr


def test_help_names_the_configured_hard_maximum(gs, monkeypatch):
    assert "12h hard maximum" in gs("sessions extend --help").stdout
    monkeypatch.setenv("GPU_SHOPPER_SAFETY_HARD_MAX_HOURS", "6")
    assert "6h hard maximum" in gs("sessions extend --help").stdout
    assert "6h hard" in gs("sessions --help").stdout
    assert "12-hour" not in gs("sessions extend --help").stdout
