"""``gpu-shopper config``: list, get, set, unset, path."""

from __future__ import annotations

import sys
from typing import Any

import click

from gpushopper.cli import App, pass_app
from gpushopper.cli.output import Table, info, json_option, render, warn


def _show(value: Any) -> str:
    if value is None or value == [] or value == "":
        return "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


@click.group(epilog="Example: gpu-shopper config set defaults.disk_gb 50")
def config() -> None:
    """Show and change settings (flag > environment > .env > config file > default)."""


@config.command(
    "list",
    epilog="Example: gpu-shopper config list --json | jq '.[] | select(.source != \"default\")'",
)
@json_option
@pass_app
def config_list(app: App, as_json: bool) -> None:
    """Every setting and profile option (the built-in flux-lora included), its value
    (secrets masked) and where it came from."""
    _print_rows(app.settings.listing(), as_json)


@config.command(
    "get",
    epilog="""Examples:

\b
  gpu-shopper config get defaults.hours
  gpu-shopper config get profiles.flux-lora.disk_gb
  gpu-shopper config get 'profiles.flux-lora.*'      (every option of the profile)
  gpu-shopper config get 'safety.*' --json""",
)
@click.argument("key")
@json_option
@pass_app
def config_get(app: App, key: str, as_json: bool) -> None:
    """One setting's value (secrets masked) on stdout, and where it came from on stderr.

    KEY may be a pattern ('safety.*'), or a profile ('profiles.flux-lora'): every match is
    shown as 'config list' shows it. Profiles include the built-in flux-lora.
    """
    from gpushopper.model.errors import ConfigError
    from gpushopper.state.config import describe_source, mask_setting

    settings = app.settings
    pattern = key + ".*" if key.startswith("profiles.") and key.count(".") == 1 else key
    if any(c in pattern for c in "*?["):
        from fnmatch import fnmatchcase

        rows = [r for r in settings.listing() if fnmatchcase(r["key"], pattern)]
        if not rows:
            raise ConfigError(f"no setting matches {key!r} (see 'gpu-shopper config list')")
        _print_rows(rows, as_json)
        return
    if key.startswith("profiles."):
        row = settings.profile_option(key)
        key, value, source = row["key"], row["value"], row["source"]
    else:
        spec = settings.spec(key)
        value, source = settings.raw(key)
        settings.get(key)  # validates type and range, registers secrets
        if spec.masked and value:
            value = mask_setting(spec, str(value))

    def value_and_source(row: dict[str, Any]) -> None:
        click.echo(_show(row["value"]))
        info(f"({row['key']} from {describe_source(row['source'], app.paths)})")

    render(as_json, {"key": key, "value": value, "source": source}, text=value_and_source)


ROWS_TABLE = Table(["KEY", "VALUE", "SOURCE"], lambda r: (r["key"], _show(r["value"]), r["source"]))


def _print_rows(rows: list[dict[str, Any]], as_json: bool) -> None:
    render(as_json, rows, table=ROWS_TABLE)


@config.command(
    "set",
    # A negative number is a value, not an option: it reaches validation and gets a clear
    # "must be at least ..." instead of click's "No such option '-1'".
    context_settings={"ignore_unknown_options": True},
    epilog="""Examples:

\b
  gpu-shopper config set vastai.api_key -        (reads the key from stdin)
  gpu-shopper config set vastai.api_key          (prompts for it, without echo)
  gpu-shopper config set profiles.big.min_vram_gb 48""",
)
@click.argument("key")
@click.argument("value", required=False)
@json_option
@pass_app
def config_set(app: App, key: str, value: str | None, as_json: bool) -> None:
    """Store KEY = VALUE in the config file (written with mode 0600).

    VALUE '-' reads it from stdin; with no VALUE on a terminal you are prompted (without
    echo for keys). Either way a key never appears on the command line, where every local
    user can read it (/proc/PID/cmdline).
    """
    from gpushopper.model.errors import UsageError
    from gpushopper.state.config import SETTINGS, mask_setting

    spec = SETTINGS.get(key)
    masked = spec is not None and spec.masked
    if value == "-":
        value = sys.stdin.readline()
        if not value:
            raise UsageError(f"config set {key} -: nothing on stdin")
        value = value.rstrip("\r\n")
    elif value is None:
        if not sys.stdin.isatty():
            raise UsageError(f"config set {key} needs a VALUE, or '-' to read it from stdin")
        value = click.prompt(key, hide_input=masked, err=True)
    if masked:
        value = value.strip()
    stored = app.settings.set(key, value)
    shown = mask_setting(spec, str(stored)) if spec is not None and masked and stored else stored
    _warn_if_overridden(app, key)
    render(
        as_json,
        {"key": key, "value": shown, "file": str(app.paths.config_file)},
        text=lambda d: info(f"Set {key} = {_show(d['value'])} in {d['file']}"),
    )


def _warn_if_overridden(app: App, key: str) -> None:
    """The value just written is not the one in force while the environment (or .env)
    sets this key: say so, naming the variable, never its value."""
    if key.startswith("profiles."):
        return
    from gpushopper.state.config import Settings, describe_source

    _, source = Settings(paths=app.paths, environ=app.environ).raw(key)
    if source.startswith(("env:", ".env:")):
        warn(
            f"{describe_source(source, app.paths)} overrides {key}: the value just set "
            "applies only once it is unset"
        )


@config.command("unset", epilog="Example: gpu-shopper config unset vastai.max_price")
@click.argument("key")
@json_option
@pass_app
def config_unset(app: App, key: str, as_json: bool) -> None:
    """Remove KEY from the config file (its default or environment value applies again)."""
    removed = app.settings.unset(key)
    render(
        as_json,
        {"key": key, "removed": removed},
        text=lambda _: info(
            f"Removed {key}" if removed else f"{key} was not set in the config file"
        ),
    )


@config.command("path", epilog="Example: gpu-shopper config path --json | jq -r .state_file")
@json_option
@pass_app
def config_path(app: App, as_json: bool) -> None:
    """Where the config file, state, keys and cache live."""
    paths = app.paths
    data = {
        "config_file": str(paths.config_file),
        "state_file": str(paths.state_file),
        "data_dir": str(paths.data_dir),
        "keys_dir": str(paths.keys_dir),
        "cache_dir": str(paths.cache_dir),
        "ssh_config": str(paths.ssh_config_file),
    }
    render(as_json, data, text=lambda d: click.echo(d["config_file"]))
