"""``gpu-shopper benchmark run|status|cancel``: measure offers with a workload, on a budget.

The ``benchmark`` group (``cli/benchmark.py``) adds these through ``COMMANDS``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from gpushopper.cli import App, pass_app
from gpushopper.cli.filters import SORTS, Finite, build_query, filter_args, filter_options
from gpushopper.cli.output import info, json_option, print_kv, print_table, render
from gpushopper.cli.params import DURATION

CANCEL_WAIT_S = 300.0


class _ArgvCommand(click.Command):
    """Keeps the argv as given (the run record stores it; a schedule replays it)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["gs_argv"] = list(args)
        return super().parse_args(ctx, args)


def _bench(app: App) -> Any:
    from gpushopper.state.benchstore import BenchStore

    return BenchStore(app.paths.bench_file)


def _money(value: Any) -> str:
    return f"${value:.4f}" if isinstance(value, (int, float)) else ""


def _render(run: dict[str, Any], as_json: bool, bench: Any = None) -> None:
    render(as_json, run, text=lambda doc: _draw(doc, bench))


def _draw(run: dict[str, Any], bench: Any) -> None:
    """A run for people: one row per entry, then its budget and times."""
    results = bench.results() if bench is not None else {}
    rows = []
    for entry in run.get("entries") or []:
        result = results.get(entry.get("result_id") or "") or {}
        value = result.get("value")
        shown_value = f"{value:.4g} {result.get('unit', '')}".strip() if value is not None else ""
        rows.append(
            [
                entry.get("key"),
                entry.get("status"),
                entry.get("offer_id"),
                len(entry.get("attempts") or []),
                _money(sum(a.get("cost_usd") or 0.0 for a in entry.get("attempts") or [])),
                shown_value,
                entry.get("failure_stage") or "",
                (entry.get("reason") or "")[:60],
            ]
        )
    print_table(["entry", "status", "offer", "attempts", "cost", "value", "stage", "reason"], rows)
    budget = run.get("budget") or {}
    print_kv(
        [
            ("run", run.get("id")),
            ("workload", run.get("workload")),
            ("status", run.get("status")),
            ("spent", f"{_money(budget.get('spent'))} of ${budget.get('max', 0):.2f}"),
            ("committed", _money(budget.get("committed"))),
            ("created", run.get("created_at")),
            ("finished", run.get("finished_at")),
        ]
    )


@click.command(
    "run",
    cls=_ArgvCommand,
    epilog="""Examples:

\b
  gpu-shopper benchmark run --workload gpu-matmul --gpu 4090 --gpu 3090 --max-budget 2
  gpu-shopper benchmark run --workload my-step --command 'python step.py' \\
      --workdir . --offer vastai:123 --offer vastai:456 --max-budget 1 --yes --json
  gpu-shopper benchmark run --workload llm-throughput --gpu H100 --image vllm/vllm-openai \\
      --param server_cmd='vllm serve Qwen/Qwen2.5-7B-Instruct --port 8000' \\
      --param concurrency=16 --entry-timeout 45m --max-budget 5
""",
)
@click.option("--workload", "workload_name", required=True, metavar="NAME", help=(
    "gpu-matmul, transfer, cold-start, llm-throughput, flux-lora (optionally @1), "
    "or your own NAME with --command."))  # fmt: skip
@click.option("--command", "command_text", metavar="CMD", help="Custom workload's shell command.")
@click.option("--offer", "offers", multiple=True, metavar="OFFER_ID", help="Exactly this offer.")
@filter_options
@click.option("--image", metavar="IMAGE", help="Container or OS image to boot.")
@click.option("--workdir", metavar="DIR", help="Folder uploaded as the working directory.")
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="K=V",
    help="A workload setting, e.g. mb=500 (transfer).",
)
@click.option(
    "--secret-env", multiple=True, metavar="NAME", help="Pass $NAME from here, via a 0600 file."
)
@click.option(
    "--max-budget",
    type=Finite(min=0, max=100000, min_open=True),
    metavar="USD",
    required=True,
    help="Spending cap for the run, failed attempts included.",
)
@click.option(
    "--parallel", type=click.IntRange(1, 16), default=1, metavar="N", help="Entries at once."
)
@click.option(
    "--entry-timeout",
    type=DURATION,
    default="30m",
    metavar="DUR",
    help="Longest one attempt's command may run (default 30m); budgets price x this.",
)
@click.option(
    "--attempts",
    type=click.IntRange(1, 10),
    default=2,
    metavar="N",
    help="Offers tried per entry (default 2); a taken offer (no_such_ask) uses none.",
)
@click.option("--sort", type=click.Choice(SORTS), help="How to pick the best offer of a kind.")
@click.option("--no-cache", is_flag=True, help="Measure again even with a recent valid result.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@json_option
@pass_app
def run(app: App, **opts: Any) -> int:
    """Measure a workload on offers: one entry per --offer, or per GPU model x provider
    (the best reliable offer of each); every attempt is an ordinary job, destroyed on
    every outcome, and no attempt starts beyond --max-budget.

    Exit status: 0 when every entry succeeded or was cached, 1 when any did not,
    3 when a teardown could not be confirmed, 128+N after signal N (all destroyed).
    """
    from gpushopper.core import interrupts

    argv = click.get_current_context().meta.get("gs_argv", [])
    with interrupts.destroy_on_signals():
        return _run(app, argv, opts)


def _run(app: App, argv: list[str], opts: dict[str, Any]) -> int:
    from gpushopper.cli.provision import make_provisioner
    from gpushopper.core import request
    from gpushopper.core.bench import start
    from gpushopper.core.bench.runner import BenchRunner
    from gpushopper.core.bench.workloads import resolve

    secret_env = start.check_flags(
        workload=opts["workload_name"],
        offers=opts["offers"],
        gpus=opts["gpus"],
        workdir=opts["workdir"],
        secret_names=opts["secret_env"],
        environ=os.environ,
    )
    query, profile = build_query(app, **filter_args(opts), sort=opts["sort"])
    with start.scratch(app.paths.data_dir) as scratch:
        workload = resolve(
            opts["workload_name"],
            opts["command_text"],
            opts["params"],
            workdir=opts["workdir"],
            scratch=scratch,
        )
        built = request.build(
            app.settings, query, profile, request.Flags(image=opts["image"]), request.Purpose.BENCH
        )
        bench_opts = _options(app, opts, workload, built.request, secret_env, argv)
        bench = _bench(app)
        runner = BenchRunner(app, bench, make_provisioner=make_provisioner, log=info)
        run_record, code = start.start(
            runner,
            bench_opts,
            created=lambda r: info(
                f"Benchmark run {r['id']}: {workload.key}, budget ${bench_opts.max_budget:.2f}"
            ),
            confirm=lambda runner: _confirm(runner, bench_opts.max_budget, opts),
        )
    _render(run_record, opts["as_json"], bench)
    return code


def _options(
    app: App, opts: dict[str, Any], workload: Any, req: Any, secret_env: dict[str, str], argv: Any
) -> Any:
    """The run's options from its flags (the runner's own names)."""
    from gpushopper.core.bench.runner import RunOptions

    return RunOptions(
        workload=workload,
        max_budget=float(opts["max_budget"]),
        request=req,
        offers=list(opts["offers"]),
        gpus=list(req.query.gpus),
        parallel=opts["parallel"],
        entry_timeout_s=float(opts["entry_timeout"]),
        attempts=opts["attempts"],
        no_cache=opts["no_cache"],
        secret_names=sorted(secret_env),
        secret_env=secret_env,
        args=argv,
        remote_root=app.environ.get("GPU_SHOPPER_JOBS_REMOTE_ROOT") or "gpu-shopper-jobs",
    )


def _confirm(runner: Any, budget: float, opts: dict[str, Any]) -> None:
    """Ask before spending, on a terminal without --yes or --json (a "no" aborts)."""
    from gpushopper.core.bench.start import pending_keys

    interactive = sys.stdin.isatty() and sys.stderr.isatty() and not opts["as_json"]
    if interactive and not opts["yes"]:
        keys = pending_keys(runner)
        click.confirm(
            f"Benchmark {len(keys)} entr{'y' if len(keys) == 1 else 'ies'} "
            f"({', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''}) for up to "
            f"${budget:.2f}?",
            abort=True,
            err=True,
        )


@click.command("status")
@click.argument("run_id", metavar="RUN")
@json_option
@pass_app
def status(app: App, run_id: str, as_json: bool) -> None:
    """One benchmark run: its entries, attempts, budget and status."""
    from gpushopper.core.bench.runner import RUN_FINAL, get_run
    from gpushopper.core.owner import GONE, owner_state

    bench = _bench(app)
    record = get_run(bench, run_id)
    if record.get("status") not in RUN_FINAL and owner_state(record.get("owner")) == GONE:
        info(
            f"Note: the process of run {run_id} is gone; 'gpu-shopper benchmark cancel "
            f"{run_id}' destroys what it left running"
        )
    _render(record, as_json, bench)


@click.command("cancel")
@click.argument("run_id", metavar="RUN")
@json_option
@pass_app
def cancel(app: App, run_id: str, as_json: bool) -> int:
    """Stop a benchmark run from another shell: its process tears every session down; when
    that process is gone, this command destroys the run's sessions itself.

    Exit status: 0 when the run is stopped (or was finished), 3 when a destroy could not
    be confirmed.
    """
    from gpushopper.core import interrupts
    from gpushopper.core.bench.runner import (
        RUN_FINAL,
        RunWatch,
        finish_abandoned,
        request_cancel,
    )
    from gpushopper.core.owner import ALIVE, GONE, owner_state

    bench = _bench(app)
    record = request_cancel(bench, run_id)
    code = 0
    if record.get("status") not in RUN_FINAL:
        state = owner_state(record.get("owner"))
        if state == ALIVE:
            info(f"Asked process {record['owner'].get('pid')} to stop run {run_id}; waiting")
            deadline = app.mono() + CANCEL_WAIT_S
            watch = RunWatch(bench, run_id)
            while app.mono() < deadline:
                record = watch.changed() or record
                if record.get("status") in RUN_FINAL:
                    break
                state = owner_state(record.get("owner"))
                if state != ALIVE:
                    break
                app.sleep(0.5)
        if record.get("status") not in RUN_FINAL and state == GONE:
            info(f"The process of run {run_id} is gone: destroying its sessions")
            with interrupts.destroy_on_signals():
                record, problems = finish_abandoned(app, bench, run_id, info)
            code = 3 if problems else 0
        elif record.get("status") not in RUN_FINAL:
            info(f"Run {run_id} is asked to stop; its process ({state} from here) tears it down")
    _render(record, as_json, bench)
    return code


COMMANDS = [run, status, cancel]
