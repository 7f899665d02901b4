"""``gpu-shopper provision``: rent the best offer, verify it, hand off SSH."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from gpushopper.cli import App, pass_app
from gpushopper.cli.filters import (
    SORTS,
    bench_estimator,
    bounded,
    build_query,
    filter_args,
    filter_options,
    offer_cache,
    workload_option,
)
from gpushopper.cli.output import info, json_option, print_kv, render, warn
from gpushopper.cli.params import DURATION, HOURS, OFFER_ID
from gpushopper.cli.views import print_session
from gpushopper.model.units import format_duration

if TYPE_CHECKING:
    from gpushopper.core.request import Choice
    from gpushopper.model.session import Session


def make_provisioner(app: App) -> Any:
    from gpushopper.core.deadline import deadline_script_for
    from gpushopper.core.provisioner import Provisioner

    return Provisioner(
        store=app.store,
        keys_dir=app.paths.keys_dir,
        ssh_config_path=app.paths.ssh_config_file,
        provider_factory=app.provider,
        clock=app.clock,
        mono=app.mono,
        sleep=app.sleep,
        log=info,
        health=app.store.read().get("offer_health", {}),
        deadline_script=lambda provider, record: deadline_script_for(app, provider, record),
        on_rented=lambda offer: offer_cache(app).mark_taken(offer.id),
        estimate=bench_estimator(app),
    )


@click.command(
    epilog="""Examples:

\b
  gpu-shopper provision --profile flux-lora --hours 3
  gpu-shopper provision vastai:1000001 --image pytorch/pytorch --yes --json
  gpu-shopper provision --gpu 4090 --max-price 0.5 --auto-retry 2 --dry-run
""",
)
@click.argument("offer_id", type=OFFER_ID, required=False)
@filter_options
@click.option(
    "--image", metavar="IMAGE", help="Container (Vast.ai) or OS image (TensorDock) to boot."
)
@click.option(
    "--hours",
    type=HOURS,
    metavar="DURATION",
    help="Reservation, e.g. 90m, 2h or 3 (hours) (default 2h).",
)
@click.option("--consumer", metavar="NAME", help="Who this rental is for (cost reports).")
@click.option(
    "--auto-retry",
    type=bounded("auto_retry", True),
    metavar="N",
    help="On a failed boot, try up to N more offers.",
)
@click.option(
    "--ssh-key",
    type=click.Path(dir_okay=False),
    metavar="PATH",
    help="Use this private key instead of a new per-session key.",
)
@click.option(
    "--timeout",
    type=DURATION,
    metavar="DURATION",
    help="Boot timeout with a unit, e.g. 25m (default 15m; heavy images take minutes).",
)
@click.option(
    "--no-verify", is_flag=True, help="Skip the SSH check of GPUs, driver, CUDA and disk."
)
@click.option(
    "--sort", type=click.Choice(SORTS), help="How to pick the best offer (default price)."
)
@workload_option
@click.option(
    "--override", is_flag=True, help="Allow a reservation past the hard maximum (recorded)."
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Show what would be rented and the projected cost; create nothing.",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@json_option
@pass_app
def provision(app: App, offer_id: str | None, **opts: Any) -> None:
    """Rent an offer (the given one, or the best for the filters), wait until it runs,
    check its GPUs over SSH and print a ready-to-paste ssh command.

    The session is recorded before anything is created; a failed boot is destroyed and
    never left running. Until the hand-off is printed, Ctrl-C, SIGTERM, SIGHUP (a closed
    terminal) or a closed output pipe destroys what was created, confirms it is gone and
    exits 128 + the signal (130 for Ctrl-C, 141 for a closed pipe).
    """
    from gpushopper.core import interrupts

    with interrupts.destroy_on_signals():
        _provision(app, offer_id, **opts)


def prompting() -> bool:
    """May we ask? Only when a person is at both ends (stdin and stderr are terminals)."""
    return sys.stdin.isatty() and sys.stderr.isatty()


def confirm_rent(question: str, *, as_json: bool, yes: bool) -> bool:
    """Ask before renting, on a terminal without --yes or --json; False when the answer is
    no (not an error: nothing was rented). Ctrl-C or end of input at the prompt is an
    interruption, as anywhere."""
    if yes or as_json or not prompting():
        return True
    return click.confirm(question, default=False, err=True)


def tell_choice(choice: Choice) -> None:
    """What to know before the question (provision and run): the search's notes and the
    reliability-floor warning, on stderr."""
    for note in choice.notes:
        info(f"Note: {note}")
    if choice.floor_warning:
        warn(choice.floor_warning)


def ask_to_rent(choice: Choice, *, as_json: bool, yes: bool, up_to: bool = False) -> bool:
    """The rent question for the chosen offer (``up_to``: a job may end sooner)."""
    best, hours = choice.best, choice.built.request.hours_s
    return confirm_rent(
        f"Rent {best.id} ({best.gpu_name} x{best.num_gpus}) at ${choice.price:.3f}/h "
        f"for {'up to ' if up_to else ''}{format_duration(hours)} "
        f"(about ${choice.projected_usd:.2f})?",
        as_json=as_json,
        yes=yes,
    )


def _print_plan(choice: Choice, plan: dict[str, Any]) -> None:
    """The dry run for people (key: value lines), and that nothing was created."""
    best, timeout = choice.best, choice.timeout
    print_kv(
        [
            (
                "would rent",
                f"{best.id} ({best.gpu_name} x{best.num_gpus}, {best.location or best.country})",
            ),
            ("price", f"${choice.price:.3f}/h"),
            (
                "reservation",
                f"{format_duration(choice.built.request.hours_s)} "
                f"(ends {plan['reservation_ends_at']})",
            ),
            ("projected cost", f"${plan['projected_cost_usd']:.2f}"),
            ("alternatives", ", ".join(plan["alternatives"]) or None),
            ("boot timeout", f"{format_duration(timeout.seconds)} ({timeout.reason})"),
        ]
    )
    info("Dry run: nothing was created.")


def _provision(app: App, offer_id: str | None, **opts: Any) -> None:
    from gpushopper.core import request
    from gpushopper.providers.registry import split_offer_id

    if offer_id is not None:
        split_offer_id(offer_id)  # "" (an unset $OFFER) must never mean "the best offer"
    query, profile = build_query(
        app, **filter_args(opts), sort=opts["sort"], workload=opts["workload"]
    )
    built = request.build(
        app.settings,
        query,
        profile,
        request.Flags(
            offer_id=offer_id,
            image=opts["image"],
            hours_s=opts["hours"],
            consumer=opts["consumer"],
            auto_retry=opts["auto_retry"],
            ssh_key=opts["ssh_key"],
            timeout_s=opts["timeout"],
            verify=not opts["no_verify"],
            override=opts["override"],
        ),
    )
    provisioner = make_provisioner(app)
    choice = request.choose(provisioner, built, app.store, app.settings)
    tell_choice(choice)
    if opts["dry_run"]:
        plan = choice.dry_run_plan(app.clock())
        render(opts["as_json"], plan, text=lambda doc: _print_plan(choice, doc))
        return
    over_budget = choice.budget_warning(app.settings, lambda: app.sessions().values(), app.clock())
    if over_budget:
        warn(over_budget)
    if not ask_to_rent(choice, as_json=opts["as_json"], yes=opts["yes"]):
        info("Nothing rented.")
        return

    from gpushopper.cli.output import flush_output
    from gpushopper.core.sessions import public_view

    def hand_off(session: Session) -> None:
        render(opts["as_json"], public_view(session, app.clock()), text=print_session)
        flush_output()

    request.rent(provisioner, choice, hand_off)
    from gpushopper.cli.watch import watch_note

    info(watch_note(app))
