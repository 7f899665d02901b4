"""Where things live on disk. ``GPU_SHOPPER_HOME`` puts everything in one folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

APP_NAME = "gpu-shopper"


class Paths(NamedTuple):  # a NamedTuple: a frozen dataclass costs ~0.7 ms at import
    config_dir: Path
    data_dir: Path
    cache_dir: Path

    @property
    def config_file(self) -> Path:
        return self.config_dir / "config.toml"

    @property
    def state_file(self) -> Path:
        return self.data_dir / "state.json"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def journal_file(self) -> Path:
        return self.data_dir / "journal.jsonl"

    @property
    def ssh_config_file(self) -> Path:
        """Include-able OpenSSH config with one ``Host gpu-<session>`` block per session."""
        return self.data_dir / "ssh_config"

    @property
    def bench_file(self) -> Path:
        """Benchmark results, runs and schedules (``state/benchstore.py``)."""
        return self.data_dir / "benchmarks.json"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "watch.pid"


def resolve_paths(environ: dict[str, str] | None = None) -> Paths:
    """Platformdirs locations, or all under ``GPU_SHOPPER_HOME`` when it is set."""
    env = os.environ if environ is None else environ
    home = env.get("GPU_SHOPPER_HOME")
    if home:
        root = Path(home).expanduser()
        return Paths(config_dir=root, data_dir=root, cache_dir=root / "cache")
    import platformdirs

    return Paths(
        config_dir=Path(platformdirs.user_config_dir(APP_NAME)),
        data_dir=Path(platformdirs.user_data_dir(APP_NAME)),
        cache_dir=Path(platformdirs.user_cache_dir(APP_NAME)),
    )


def vastai_cli_key_file(environ: dict[str, str] | None = None) -> Path:
    """The official Vast.ai CLI's key file (read as a fallback for the API key)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", str(Path.home()))) / ".config")
    return Path(base) / "vastai" / "vast_api_key"
