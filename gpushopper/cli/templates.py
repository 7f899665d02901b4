"""``gpu-shopper templates`` and ``offer-health``."""

from __future__ import annotations

from typing import Any

import click

from gpushopper.cli import App, pass_app
from gpushopper.cli.output import Table, info, json_option, print_table, render, warn
from gpushopper.model.errors import (
    GpuShopperError,
    MissingCredentials,
    NoProviderConfigured,
    NoSuchItem,
)
from gpushopper.providers.registry import PROVIDERS

#: --provider (repeatable) for each templates command: one definition, one help line.
provider_option = click.option(
    "--provider",
    "providers",
    multiple=True,
    type=click.Choice(PROVIDERS),
    help="Only this provider.",
)


def _providers(app: App, chosen: tuple[str, ...]) -> list[Any]:
    names = list(chosen) or list(app.settings.get("defaults.providers"))
    clients = []
    for name in names:
        try:
            clients.append(app.provider(name))
        except MissingCredentials as exc:
            info(f"Note: skipped {exc}")
    if not clients:
        raise NoProviderConfigured()
    return clients


@click.group(
    invoke_without_command=True,
    epilog="""Examples:

\b
  gpu-shopper templates --name "AI Toolkit"
  gpu-shopper templates --provider tensordock --json
""",
)
@provider_option
@click.option("--name", metavar="TEXT", help="Name contains TEXT (case-insensitive).")
@click.option("--use-ssh", is_flag=True, help="Only templates that start an SSH server.")
@json_option
@pass_app
@click.pass_context
def templates(
    ctx: click.Context,
    app: App,
    providers: tuple[str, ...],
    name: str | None,
    use_ssh: bool,
    as_json: bool,
) -> None:
    """Launch templates: Vast.ai templates and TensorDock OS images."""
    if ctx.invoked_subcommand is not None:
        return
    found: list[Any] = []
    errors: list[GpuShopperError] = []
    clients = _providers(app, providers)
    for client in clients:
        try:
            found.extend(client.list_templates(name=name, use_ssh=True if use_ssh else None))
        except GpuShopperError as exc:
            errors.append(exc)
    if errors and len(errors) == len(clients):  # one line: the provider's own message
        if len(errors) == 1:
            raise errors[0]
        raise GpuShopperError(
            "no provider answered the template search: " + "; ".join(str(e) for e in errors)
        )
    for error in errors:
        warn(str(error))
    table = Table(
        ["ID", "PROVIDER", "NAME", "IMAGE", "MIN CUDA", "DISK GB"],
        rows=lambda _: [
            (t.id, t.provider, t.name, t.image, t.min_cuda, t.recommended_disk_gb) for t in found
        ],
        empty="No templates match.",
    )
    render(as_json, [t.to_json() for t in found], table=table)


@templates.command("show", epilog="Example: gpu-shopper templates show 'Ostris AI Toolkit' --json")
@click.argument("ident", metavar="ID")
@provider_option
@json_option
@pass_app
def templates_show(app: App, ident: str, providers: tuple[str, ...], as_json: bool) -> None:
    """One template by hash id, id or exact name."""
    for client in _providers(app, providers):
        template = client.get_template(ident)
        if template is not None:
            render(as_json, template.to_json(), pairs=dict.items)
            return
    raise NoSuchItem(f"no template {ident!r} (try 'gpu-shopper templates --name ...')")


@click.command("offer-health", epilog="Example: gpu-shopper offer-health --json")
@json_option
@pass_app
def offer_health(app: App, as_json: bool) -> None:
    """Boot failures recorded per offer and machine, and which are suppressed."""
    from gpushopper.model.units import parse_iso

    now = app.clock()
    rows = []
    for key, entry in sorted(app.store.read().get("offer_health", {}).items()):
        until = parse_iso(entry.get("suppressed_until"))
        rows.append(
            {
                "key": key,
                "failures": entry.get("failures", 0),
                "last_failure_at": entry.get("last_failure_at"),
                "last_reason": entry.get("last_reason"),
                "suppressed_until": entry.get("suppressed_until"),
                "suppressed": bool(until and until > now),
            }
        )
    table = Table(
        ["OFFER / MACHINE", "FAILURES", "LAST", "SUPPRESSED UNTIL", "REASON"],
        lambda r: (
            r["key"],
            r["failures"],
            r["last_failure_at"],
            r["suppressed_until"] if r["suppressed"] else None,
            r["last_reason"],
        ),
        empty="No failures recorded.",
    )
    render(as_json, rows, table=table)


@templates.command(
    "catalog",
    epilog="""Examples:

\b
  gpu-shopper templates catalog
  gpu-shopper templates catalog --workload flux-lora --provider vastai --json
""",
)
@click.option(
    "--workload",
    default="flux-lora",
    show_default=True,
    metavar="PROFILE",
    help="The workload: a profile holding its needs (built in: flux-lora).",
)
@provider_option
@click.option("--refresh", is_flag=True, help="Ask the providers again instead of using the cache.")
@json_option
@pass_app
def templates_catalog(
    app: App, workload: str, providers: tuple[str, ...], refresh: bool, as_json: bool
) -> None:
    """Templates (TensorDock: images) that can run a workload, with the GPU models that
    fit it and the market's cheapest and median hourly rate for a reliable offer of each.

    A template fits when it starts SSH and has an NVIDIA driver; the market is asked for
    offers with the workload's VRAM, GPU count and reliability floor, priced for the
    template's recommended disk (or the workload's, when larger). Rows marked * are the
    workload's own template.
    """
    from gpushopper.cli.filters import build_query, offer_cache
    from gpushopper.core import catalog
    from gpushopper.core.inventory import search

    query, profile = build_query(app, providers=providers, profile=workload)
    needs = catalog.needs_of(workload, query, profile)
    listed: dict[str, list[Any]] = {}
    errors: dict[str, str] = {}
    for client in _providers(app, tuple(query.providers)):
        try:
            listed[client.NAME] = client.list_templates()
        except GpuShopperError as exc:
            errors[client.NAME] = str(exc)
    if not listed:
        raise GpuShopperError(
            "no provider answered the template search: " + "; ".join(errors.values())
        )
    health = app.store.read().get("offer_health", {})
    cache = offer_cache(app)

    def ask(asked: Any) -> tuple[list[Any], dict[str, str]]:
        result = search(
            asked, app.provider, cache=cache, refresh=refresh, health=health, now=app.clock
        )
        return result.offers, result.errors

    doc = catalog.build(needs, query, listed, ask, errors)
    for name, message in doc["errors"].items():
        warn(f"{name} failed ({message.removeprefix(f'{name}: ')})")

    def for_people(doc: Any) -> None:
        info(
            f"Workload {workload}: {needs.num_gpus} GPU(s) of at least {needs.min_vram_gb} GB "
            f"VRAM, reliability >= {needs.min_reliability}, {needs.disk_gb:g} GB disk at least; "
            "USD per hour in total, disk included"
        )
        print_table(
            catalog.TABLE_COLUMNS,
            catalog.table_rows(doc),
            empty="No template can run this workload.",
        )
        for row in doc["left_out"]:
            info(f"Left out {row['provider']} {row['name']}: {row['reason']}")

    render(as_json, doc, text=for_people)
