"""Settings from flags, the environment, ``.env``, the TOML config file and defaults.

Precedence (highest first): flag > environment > ``.env`` in the working directory >
config file > the official Vast.ai CLI key file (``vastai.api_key`` only) > default.
Flags are applied by the commands; this module resolves everything below them.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from gpushopper.model.errors import ConfigError
from gpushopper.model.lazyre import LazyPattern
from gpushopper.model.models import SORTS
from gpushopper.model.redact import mask, register_secret
from gpushopper.model.units import UNIT_HINT, parse_duration
from gpushopper.providers.registry import PROVIDERS
from gpushopper.state.atomic import atomic_write_text
from gpushopper.state.paths import Paths, vastai_cli_key_file

if TYPE_CHECKING:
    # A setting's value is one of the kinds below (text, number, flag, list of names, a
    # duration as typed); read from TOML, the environment or a flag it is a JSONValue until
    # coerce() has checked it against its kind, and only per key is its type known.
    from gpushopper.model.jsontypes import JSONObject, JSONValue

    Default = str | int | float | list[str] | None

CONFIG_LOCK_TIMEOUT_S = 30.0


class Setting(NamedTuple):  # a NamedTuple: a frozen dataclass costs ~0.7 ms at import
    key: str
    kind: str  # str | int | float | bool | list | duration | duration_or_zero | secret | path | url
    default: Default = None
    env: tuple[str, ...] = ()
    help: str = ""

    @property
    def secret(self) -> bool:
        return self.kind == "secret"

    @property
    def masked(self) -> bool:
        """Shown masked and redacted everywhere: secrets, and URLs that carry a token."""
        return self.secret or self.key in MASKED_URLS

    def env_names(self) -> tuple[str, ...]:
        generic = "GPU_SHOPPER_" + self.key.replace(".", "_").upper()
        return (*self.env, generic) if generic not in self.env else self.env


# URLs whose path is a credential (Slack-style hooks carry their token in the URL).
MASKED_URLS = frozenset({"alerts.webhook_url"})

SETTINGS: dict[str, Setting] = {
    s.key: s
    for s in [
        Setting(
            "vastai.api_key", "secret", None, ("VASTAI_API_KEY", "VAST_API_KEY"), "Vast.ai API key"
        ),
        Setting(
            "vastai.preferred_gpus", "list", [], ("VASTAI_PREFERRED_GPUS",), "GPU names tried first"
        ),
        Setting(
            "vastai.max_price",
            "float",
            None,
            ("VASTAI_MAX_BID_PER_HOUR",),
            "Vast.ai price cap, USD/h",
        ),
        Setting(
            "vastai.ssh_key_path",
            "path",
            None,
            ("VASTAI_SSH_KEY_PATH",),
            "use this key instead of a per-session one",
        ),
        Setting(
            "vastai.api_url",
            "url",
            "https://console.vast.ai",
            ("VASTAI_API_URL",),
            "Vast.ai API base",
        ),
        Setting(
            "vastai.ssh_user", "str", "root", ("VASTAI_SSH_USER",), "SSH login user on Vast.ai"
        ),
        Setting(
            "tensordock.api_token",
            "secret",
            None,
            ("TENSORDOCK_API_TOKEN",),
            "TensorDock v2 bearer token",
        ),
        Setting(
            "tensordock.auth_id",
            "secret",
            None,
            ("TENSORDOCK_AUTH_ID",),
            "TensorDock authorization id (legacy API)",
        ),
        Setting(
            "tensordock.api_url",
            "url",
            "https://dashboard.tensordock.com/api/v2",
            ("TENSORDOCK_API_URL",),
            "TensorDock API base",
        ),
        Setting(
            "tensordock.ssh_user",
            "str",
            "user",
            ("TENSORDOCK_SSH_USER",),
            "SSH login user on TensorDock VMs",
        ),
        Setting(
            "tensordock.image",
            "str",
            "ubuntu2404_ml_pytorch",
            ("TENSORDOCK_IMAGE",),
            "default VM image",
        ),
        Setting(
            "tensordock.vcpus_per_gpu", "int", 8, (), "vCPUs asked for per GPU (rounded to even)"
        ),
        Setting("tensordock.ram_gb_per_gpu", "int", 32, (), "RAM (GB) asked for per GPU"),
        Setting("defaults.disk_gb", "int", 32, (), "disk for new instances, GB"),
        Setting("defaults.hours", "duration", "2h", (), "reservation length"),
        Setting("defaults.min_reliability", "float", 0.95, (), "reliability floor, 0-1"),
        Setting("defaults.max_price", "float", None, (), "price cap, USD/h"),
        Setting("defaults.providers", "list", list(PROVIDERS), (), "providers to shop"),
        Setting("defaults.consumer", "str", None, (), "who the rental is for (cost reports)"),
        Setting(
            "defaults.cache_ttl",
            "duration_or_zero",
            "60s",
            (),
            "how long inventory answers are reused",
        ),
        Setting(
            "defaults.http_timeout",
            "float",
            30.0,
            (),
            "provider call timeout, s (per read; a whole call ends within 3x)",
        ),
        Setting("defaults.http_retries", "int", 4, (), "attempts for idempotent provider calls"),
        Setting(
            "defaults.http_backoff",
            "float",
            0.5,
            (),
            "first retry delay, seconds (doubles each time)",
        ),
        Setting("safety.hard_max_hours", "float", 12.0, (), "hard maximum per session, hours"),
        Setting(
            "safety.provision_timeout",
            "duration",
            "15m",
            (),
            "boot timeout; when set, it always wins over the measured one",
        ),
        Setting(
            "safety.provision_timeout_max",
            "duration",
            "30m",
            (),
            "most a measured boot timeout may be (90th percentile of 5+ boots x 1.5)",
        ),
        Setting(
            "safety.warn_before",
            "duration_or_zero",
            "10m",
            (),
            "warn this long before a reservation ends",
        ),
        Setting(
            "safety.deadline_grace",
            "duration_or_zero",
            "15m",
            (),
            "on-instance switch fires this long after the reservation",
        ),
        Setting("safety.monthly_budget_usd", "float", None, (), "monthly budget, USD"),
        Setting(
            "alerts.webhook_url",
            "url",
            None,
            ("GPU_SHOPPER_WEBHOOK_URL",),
            "JSON POST target for alerts",
        ),
    ]
}

DURATION_KINDS = ("duration", "duration_or_zero")

# Options a [profiles.NAME] table may hold, with their types.
PROFILE_KEYS: dict[str, str] = {
    "providers": "list",
    "gpu": "list",
    "min_vram_gb": "float",
    "num_gpus": "int",
    "max_price": "float",
    "min_reliability": "float",
    "min_cuda": "float",
    "min_disk_gb": "float",
    "country": "list",
    "disk_gb": "int",
    "template": "str",
    "image": "str",
    "sort": "str",
    "limit": "int",
    "hours": "duration",
    "consumer": "str",
    "auto_retry": "int",
    "timeout": "duration",
    "ssh_key": "path",
    "verified": "bool",
}

BUILTIN_PROFILES: dict[str, dict[str, str | int | float]] = {
    "flux-lora": {
        "min_vram_gb": 24,
        "disk_gb": 32,
        "min_reliability": 0.98,
        "template": "Ostris AI Toolkit",
        "timeout": "20m",
    },
}


# Allowed ranges: (low, high, low is exclusive). Settings and profile options alike;
# checked when a value is set and whenever it is read (a file edited by hand counts).
RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "vastai.max_price": (0, 1000, True),
    "tensordock.vcpus_per_gpu": (2, 256, False),
    "tensordock.ram_gb_per_gpu": (1, 4096, False),
    "defaults.disk_gb": (1, 100_000, False),
    "defaults.min_reliability": (0, 1, False),
    "defaults.max_price": (0, 1000, True),
    "defaults.http_timeout": (0, 600, True),
    "defaults.http_retries": (1, 20, False),
    "defaults.http_backoff": (0, 60, False),
    "safety.hard_max_hours": (0, 744, True),
    "safety.monthly_budget_usd": (0, None, True),
    "min_vram_gb": (0, 10_000, False),
    "num_gpus": (1, 64, False),
    "max_price": (0, 1000, True),
    "min_reliability": (0, 1, False),
    "min_cuda": (0, 100, False),
    "min_disk_gb": (0, 100_000, False),
    "disk_gb": (1, 100_000, False),
    "limit": (1, 100_000, False),
    "auto_retry": (0, 100, False),
}
CHOICES: dict[str, tuple[str, ...]] = {
    "defaults.providers": PROVIDERS,
    "providers": PROVIDERS,
    "sort": SORTS,
}
_USER_RE = LazyPattern(r"[a-z_][a-z0-9_-]{0,31}")
_CONTROL_RE = LazyPattern(r"[\x00-\x1f\x7f]")


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def check_range(option: str, kind: str, value: JSONValue, where: str) -> None:
    """Refuse a value outside what ``option`` can mean (``where`` names it in the error)."""
    if value is None:
        return
    problem: str | None = None
    if kind in ("int", "float"):
        if not math.isfinite(value):
            problem = f"{value} is not a finite number"
        elif option in RANGES:
            low, high, open_low = RANGES[option]
            if low is not None and (value <= low if open_low else value < low):
                problem = (
                    f"must be {'more than' if open_low else 'at least'} {_number_text(low)}, "
                    f"not {_number_text(value)}"
                )
            elif high is not None and value > high:
                problem = f"must be at most {_number_text(high)}, not {_number_text(value)}"
    elif kind in DURATION_KINDS:
        try:  # units required; nan, inf, negative and (for most) zero refused
            parse_duration(value, allow_zero=kind == "duration_or_zero")
        except ValueError as exc:
            problem = str(exc)
    elif kind == "list" and option in CHOICES:
        unknown = [v for v in value if v not in CHOICES[option]]
        if unknown:
            problem = f"unknown {unknown[0]!r} (choose from {', '.join(CHOICES[option])})"
    elif kind in ("str", "path", "secret", "url") and isinstance(value, str):
        if _CONTROL_RE.search(value):
            problem = "contains a control character"
        elif option.endswith("ssh_user") and not _USER_RE.fullmatch(value):
            problem = f"{value!r} is not a login name ([a-z_][a-z0-9_-]*)"
        elif option in CHOICES and value not in CHOICES[option]:
            problem = f"unknown {value!r} (choose from {', '.join(CHOICES[option])})"
        elif kind == "url" and value:
            from urllib.parse import urlsplit

            try:
                host = urlsplit(value).hostname
            except ValueError:
                host = None
            if not host or any(c.isspace() for c in value):
                problem = "is not a URL with a host"
    if problem is not None:
        raise ConfigError(f"invalid value for {where}: {problem}")


def mask_setting(setting: Setting, value: str) -> str:
    """How a masked setting is shown: ``****abcd`` for keys, scheme and host for URLs."""
    register_secret(value)
    if setting.kind == "url":
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(value)
        except ValueError:
            return mask(value)
        if parts.scheme and parts.hostname:
            return f"{parts.scheme}://{parts.hostname}/****"
    return mask(value)


def coerce(kind: str, value: JSONValue, key: str) -> JSONValue:
    """Turn ``value`` (from TOML, the environment or the command line) into ``kind``."""
    if value is None:
        return None
    try:
        if kind in ("str", "secret", "path", "url"):
            if not isinstance(value, str):
                raise ValueError(f"expected text, got {type(value).__name__}")
            if kind == "url" and value and not value.startswith(("http://", "https://")):
                raise ValueError(f"{value!r} is not an http(s) URL")
            return value
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError("expected an integer")
            if isinstance(value, int):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str):
                return int(value.strip())
            raise ValueError("expected an integer")
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError("expected a number")
            if isinstance(value, (int, float)):
                return float(value)
            if isinstance(value, str):
                return float(value.strip())
            raise ValueError("expected a number")
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if kind == "list":
            if isinstance(value, str):
                return [part.strip() for part in value.split(",") if part.strip()]
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return list(value)
            raise ValueError("expected a comma-separated list")
        if kind in DURATION_KINDS:
            # A bare number is refused: "900" once meant 900 hours.
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise ValueError(f"expected a duration such as 15m ({UNIT_HINT})")
            parse_duration(value, allow_zero=kind == "duration_or_zero")
            return value
    except ValueError as exc:
        detail = str(exc)
        if "invalid literal" in detail or "could not convert" in detail:
            detail = f"{value!r} is not {'an integer' if kind == 'int' else 'a number'}"
        raise ConfigError(f"invalid value for {key}: {detail}") from None
    raise ConfigError(f"invalid value for {key}: unsupported type {kind}")


def _parse_typed(kind: str, raw: str, key: str) -> JSONValue:
    """Parse text typed on the command line into the setting's type."""
    return coerce(kind, raw, key)


def describe_source(source: str, paths: Paths) -> str:
    """Where a value came from, in words (``config get``)."""
    if source == "built-in":
        return "built-in profile"
    return _describe(source, paths)


def _describe(source: str, paths: Paths) -> str:
    if source.startswith(("env:", ".env:")):
        kind, _, name = source.partition(":")
        return f"environment variable {name}" if kind == "env" else f"{name} in .env"
    if source == "file":
        return str(paths.config_file)
    if source == "vastai-cli-keyfile":
        return "the Vast.ai CLI key file"
    return source


@dataclass
class Settings:
    """Resolved settings. ``get`` returns typed values; durations come back in seconds."""

    paths: Paths
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    cwd: Path = field(default_factory=Path.cwd)
    _file: JSONObject | None = None
    _dotenv: dict[str, str] | None = None

    # -- layers ---------------------------------------------------------------------------
    def file_data(self) -> JSONObject:
        if self._file is None:
            path = self.paths.config_file
            if path.exists():
                if sys.version_info >= (3, 11):
                    import tomllib
                else:  # pragma: no cover - exercised on 3.10 only
                    import tomli as tomllib
                try:
                    self._file = tomllib.loads(path.read_text(encoding="utf-8"))
                except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                    raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
                except OSError as exc:
                    raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
            else:
                self._file = {}
        return self._file

    def dotenv_data(self) -> dict[str, str]:
        if self._dotenv is None:
            path = self.cwd / ".env"
            self._dotenv = {}
            if path.is_file():
                from dotenv import dotenv_values

                self._dotenv = {k: v for k, v in dotenv_values(path).items() if v is not None}
        return self._dotenv

    def _file_value(self, key: str) -> JSONValue:
        node: JSONValue = self.file_data()
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    def raw(self, key: str) -> tuple[JSONValue, str]:
        """The uncoerced value of ``key`` and where it came from.

        Credentials are stripped of surrounding whitespace wherever they are read (a key
        file saved with CRLF must not put ``\\r`` into an HTTP header), and one with a
        control character inside is refused, naming where it came from, never its value.
        """
        setting = self.spec(key)
        value, source = self._raw(key, setting)
        if setting.masked and isinstance(value, str):
            register_secret(value)  # the unstripped form too: it is what leaks
            value = value.strip()
            if any(ord(c) < 32 or ord(c) == 127 for c in value):
                raise ConfigError(
                    f"{key} (from {_describe(source, self.paths)}) contains a control "
                    "character; fix the value (it is not shown)"
                )
            if not value:
                return setting.default, "default"
        return value, source

    def _raw(self, key: str, setting: Setting) -> tuple[JSONValue, str]:
        for name in setting.env_names():
            if self.environ.get(name, "").strip():
                return self.environ[name], f"env:{name}"
        for name in setting.env_names():
            if self.dotenv_data().get(name, "").strip():
                return self.dotenv_data()[name], f".env:{name}"
        value = self._file_value(key)
        if value is not None:
            return value, "file"
        if key == "vastai.api_key":
            keyfile = vastai_cli_key_file(dict(self.environ))
            if keyfile.is_file():
                try:
                    text = keyfile.read_text(encoding="utf-8").strip()
                except (OSError, UnicodeDecodeError):
                    raise ConfigError(f"cannot read the Vast.ai CLI key file {keyfile}") from None
                if text:
                    return text, "vastai-cli-keyfile"
        return setting.default, "default"

    # -- public ---------------------------------------------------------------------------
    @staticmethod
    def spec(key: str) -> Setting:
        if key not in SETTINGS:
            raise ConfigError(f"unknown setting {key!r} (see 'gpu-shopper config list')")
        return SETTINGS[key]

    def get(self, key: str) -> JSONValue:
        setting = self.spec(key)
        value, source = self.raw(key)
        if source == "file":
            where = f"{key} in {self.paths.config_file}"
        elif source.startswith(("env:", ".env:")):
            where = f"{key} (from {source.split(':', 1)[1]})"
        else:
            where = key
        typed = coerce(setting.kind, value, where)
        if setting.masked and typed:
            register_secret(typed)
        check_range(key, setting.kind, typed, where)
        if setting.kind in DURATION_KINDS and typed is not None:
            return parse_duration(typed, allow_zero=setting.kind == "duration_or_zero")
        if setting.kind == "path" and typed:
            return str(Path(typed).expanduser())
        return typed

    def source(self, key: str) -> str:
        return self.raw(key)[1]

    def register_secrets(self) -> None:
        """Make every configured secret known to the redactor."""
        for key, setting in SETTINGS.items():
            if setting.masked:
                try:
                    value, _ = self.raw(key)
                except ConfigError:
                    continue
                if isinstance(value, str):
                    register_secret(value)

    def listing(self) -> list[JSONObject]:
        """Every setting with its (masked) value and source, for ``config list``."""
        rows = []
        self.file_data()  # a broken file is an error, not a list of invalid rows
        for key, setting in SETTINGS.items():
            try:
                value, source = self.raw(key)
            except ConfigError:
                rows.append(
                    {"key": key, "value": "(invalid)", "source": "?", "secret": setting.secret}
                )
                continue
            if setting.masked and value:
                value = mask_setting(setting, str(value))
            rows.append({"key": key, "value": value, "source": source, "secret": setting.secret})
        for name in self.profile_names():
            rows.extend(self.profile_rows(name))
        return rows

    def profile_names(self) -> list[str]:
        profiles = self.file_data().get("profiles", {})
        return sorted(set(BUILTIN_PROFILES) | set(profiles if isinstance(profiles, dict) else {}))

    def profile_rows(self, name: str) -> list[JSONObject]:
        """One profile's options as ``config list`` rows: each value as configured, from
        the config file or ``built-in`` (the shipped profiles, such as ``flux-lora``)."""
        profiles = self.file_data().get("profiles", {})
        mine = profiles.get(name) if isinstance(profiles, dict) else None
        mine = mine if isinstance(mine, dict) else {}
        if name not in self.profile_names():  # neither shipped nor in the config file
            raise ConfigError(
                f"unknown profile {name!r} (known: {', '.join(self.profile_names())})"
            )
        values = {
            **{k: (v, "built-in") for k, v in BUILTIN_PROFILES.get(name, {}).items()},
            **{k: (v, "file") for k, v in mine.items()},
        }
        rows = []
        for key in sorted(values):
            value, source = values[key]
            full = f"profiles.{name}.{key}"
            try:
                kind = PROFILE_KEYS.get(key)
                if kind is None:
                    raise ConfigError(f"{full} is not a known profile option")
                check_range(key, kind, coerce(kind, value, full), full)
            except ConfigError:
                value, source = "(invalid)", "?"
            rows.append({"key": full, "value": value, "source": source, "secret": False})
        return rows

    def profile_option(self, key: str) -> JSONObject:
        """``profiles.NAME.OPTION`` as one row (value ``None``, source ``default`` when the
        profile leaves it unset); an unknown profile or option is a ConfigError."""
        parts = key.split(".")
        if len(parts) != 3 or not parts[1]:
            raise ConfigError(f"profile settings look like profiles.NAME.OPTION, not {key!r}")
        option = parts[2]
        starts = [k for k in PROFILE_KEYS if k.startswith(option)] if option else []
        if option not in PROFILE_KEYS and len(starts) == 1:  # read-only: `disk` is disk_gb
            option = starts[0]
            key = f"profiles.{parts[1]}.{option}"
        if option not in PROFILE_KEYS:
            close = sorted(starts) or [k for k in sorted(PROFILE_KEYS) if option in k]
            hint = (
                "did you mean " + " or ".join(f"profiles.{parts[1]}.{k}" for k in close) + "?"
                if close
                else "known: " + ", ".join(sorted(PROFILE_KEYS))
            )
            raise ConfigError(f"unknown profile option {option!r} in {key!r} ({hint})")
        for row in self.profile_rows(parts[1]):
            if row["key"] == key:
                if row["source"] == "?":
                    self.profile(parts[1])  # raises, naming what is wrong
                return row
        return {"key": key, "value": None, "source": "default", "secret": False}

    def profile(self, name: str) -> JSONObject:
        """A profile from the config file, falling back to the built-in ones."""
        profiles = self.file_data().get("profiles", {})
        data: JSONObject | None = None
        if isinstance(profiles, dict) and isinstance(profiles.get(name), dict):
            data = dict(BUILTIN_PROFILES.get(name, {}))
            data.update(profiles[name])
        elif name in BUILTIN_PROFILES:
            data = dict(BUILTIN_PROFILES[name])
        if data is None:
            known = sorted(
                set(BUILTIN_PROFILES) | set(profiles if isinstance(profiles, dict) else {})
            )
            raise ConfigError(f"unknown profile {name!r} (known: {', '.join(known)})")
        out = {}
        for key, value in data.items():
            kind = PROFILE_KEYS.get(key)
            if kind is None:
                raise ConfigError(f"profiles.{name}.{key} is not a known profile option")
            typed = coerce(kind, value, f"profiles.{name}.{key}")
            check_range(key, kind, typed, f"profiles.{name}.{key}")
            out[key] = parse_duration(typed) if kind in DURATION_KINDS else typed
        return out

    # -- writing --------------------------------------------------------------------------
    @contextlib.contextmanager
    def _edit(self) -> Iterator[JSONObject]:
        """Lock the config file, read it afresh, let the caller change it, write it
        atomically (0600) if it changed. Concurrent ``config set`` calls all land."""
        import copy

        from filelock import Timeout

        from gpushopper.state.fs import LinkRefused, file_lock

        path = self.paths.config_file
        lock = path.with_name(path.name + ".lock")
        try:
            with file_lock(lock, CONFIG_LOCK_TIMEOUT_S):
                self._file = None  # what another process wrote while we waited counts
                before = self.file_data()
                data = copy.deepcopy(before)
                yield data
                if data != before:
                    import tomli_w

                    atomic_write_text(path, tomli_w.dumps(data), mode=0o600, stale_after=0)
                    self._file = data
        except Timeout:
            raise ConfigError(
                f"config file {path} is locked by another gpu-shopper process "
                f"(waited {CONFIG_LOCK_TIMEOUT_S:.0f}s); try again"
            ) from None
        except LinkRefused as exc:
            raise ConfigError(str(exc.strerror)) from None

    def set(self, key: str, raw_value: str) -> JSONValue:
        """Validate and store ``key = raw_value`` in the config file (written 0600)."""
        parts = key.split(".")
        if parts[0] == "profiles":
            if len(parts) != 3 or not parts[1]:
                raise ConfigError(f"profile settings look like profiles.NAME.OPTION, not {key!r}")
            kind = PROFILE_KEYS.get(parts[2])
            if kind is None:
                raise ConfigError(
                    f"unknown profile option {parts[2]!r} in {key!r} "
                    f"(known: {', '.join(sorted(PROFILE_KEYS))})"
                )
            option = parts[2]
        else:
            kind = self.spec(key).kind
            option = key
        value = _parse_typed(kind, raw_value, key)
        check_range(option, kind, value, key)
        with self._edit() as data:
            node = data
            for part in parts[:-1]:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = {}
                node[part] = child
                node = child
            node[parts[-1]] = value
        return value

    def unset(self, key: str) -> bool:
        parts = key.split(".")
        if parts[0] != "profiles":
            self.spec(key)
        with self._edit() as data:
            node: JSONValue = data
            for part in parts[:-1]:
                if not isinstance(node, dict) or not isinstance(node.get(part), dict):
                    return False
                node = node[part]
            if parts[-1] not in node:
                return False
            del node[parts[-1]]
        return True
