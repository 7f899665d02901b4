"""``gpu-shopper benchmark``: measured price-performance, stored and asked about.

The queries (list, show, submit, best, cheapest, compare, recommendations) and schedules
live here; ``run``, ``status`` and ``cancel`` come from ``cli/benchmark_run.py``. Nothing
heavy is imported until a command runs.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from gpushopper.cli import App, pass_app
from gpushopper.cli.output import Table, info, json_option, print_kv, print_table, render
from gpushopper.cli.params import DashCommand

LIST_LIMIT = 20  # rows by default, table and --json alike (--limit 0: all)
MAX_SUBMIT_BYTES = 256 * 1024 * 1024


def _store(app: App) -> Any:
    from gpushopper.state.benchstore import BenchStore

    return BenchStore(app.paths.bench_file)


def _num(value: Any, digits: int = 4) -> str | None:
    if value is None:
        return None
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _money(value: Any) -> str | None:
    return None if value is None else f"{value:.3f}"


def _when(text: Any) -> str | None:
    return text[:16].replace("T", " ") if isinstance(text, str) else None


class _BenchGroup(click.Group):
    """``run``, ``status`` and ``cancel`` live in cli/benchmark_run.py, loaded only when one
    of them (or the group's help) is asked for: a query never imports the provisioning side."""

    RUN_SIDE = ("run", "status", "cancel")

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.RUN_SIDE})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in self.RUN_SIDE:
            from gpushopper.cli.benchmark_run import COMMANDS

            command = next((c for c in COMMANDS if c.name == cmd_name), None)
        return command


@click.group(
    cls=_BenchGroup,
    epilog="""Examples:

\b
  gpu-shopper benchmark run --workload gpu-matmul@1 --gpu 4090 --gpu a100 --max-budget 5
  gpu-shopper benchmark cheapest --workload gpu-matmul@1 --live
  gpu-shopper benchmark list --workload gpu-matmul --json | jq '.[0].cost_per_unit'
  gpu-shopper benchmark submit results.json
  gpu-shopper benchmark schedule add nightly --cron '0 3 * * *' --max-budget 5 \\
      -- --workload gpu-matmul@1 --gpu 4090
""",
)
def benchmark() -> None:
    """Measure GPUs with a workload, and rank them by cost per unit of work.

    "Cheapest" per hour is not cheapest per job: a slow cheap GPU can cost more per unit
    of work than a fast dear one. Results are stored under the data folder; queries
    rank the valid ones, with cost per unit recomputed from each offer's price.
    """


# -- list / show ---------------------------------------------------------------------------------
def _with_cost(record: dict[str, Any], price: Any) -> dict[str, Any]:
    """The record with ``cost_per_unit`` recomputed from its price and value (none for
    an invalid result: it is never ranked)."""
    from gpushopper.core.bench.records import cost_per_unit

    higher = record.get("higher_is_better")
    cost = cost_per_unit(price, record.get("value"), higher) if isinstance(higher, bool) else None
    return {**record, "cost_per_unit": cost}


def _result_json(record: dict[str, Any]) -> dict[str, Any]:
    offer = record.get("offer")
    return _with_cost(record, offer.get("price_per_hour") if isinstance(offer, dict) else None)


def _limit_option(default: int, what: str) -> Any:
    return click.option(
        "--limit",
        type=click.IntRange(min=0),
        default=default,
        show_default=True,
        metavar="N",
        help=f"Show at most N {what} (0 = all), in the table and in --json.",
    )


def _cut_note(shown: int, total: int, what: str) -> None:
    if shown < total:
        info(f"Note: {shown} of {total} {what} shown (--limit 0 shows all)")


@benchmark.command(
    "list",
    epilog="""Examples:

\b
  gpu-shopper benchmark list --workload gpu-matmul@1 --gpu 4090
  gpu-shopper benchmark list --provider vastai --limit 0 --json
""",
)
@click.option("--workload", metavar="NAME", help="Only this workload (NAME@V, or NAME: newest).")
@click.option("--gpu", "gpus", multiple=True, metavar="NAME", help="Only this GPU (repeatable).")
@click.option(
    "--provider",
    "providers",
    multiple=True,
    metavar="NAME",
    help="Only this provider (repeatable).",
)
@_limit_option(LIST_LIMIT, "results, newest first")
@json_option
@pass_app
def list_results(
    app: App,
    workload: str | None,
    gpus: tuple[str, ...],
    providers: tuple[str, ...],
    limit: int,
    as_json: bool,
) -> None:
    """Stored results, newest first, invalid ones included (VALID no).

    --json gives each result's flat row (what the queries rank by) with its cost per unit;
    'benchmark show ID --json' gives the whole record.
    """
    from gpushopper.core.bench.queries import select

    if providers:  # checked here: the registry is not loaded for a plain list
        from gpushopper.model.errors import UsageError
        from gpushopper.providers.registry import PROVIDERS

        for name in providers:
            if name not in PROVIDERS:
                raise UsageError(f"unknown provider {name!r} (choose from {', '.join(PROVIDERS)})")
    table = _store(app).table()
    picked = select(table, workload, gpus, providers)
    shown = table.rows(picked[:limit] if limit else picked)
    rows = [_with_cost(r, r["price_per_hour"]) for r in shown]
    render(as_json, rows, table=RESULTS_TABLE)
    _cut_note(len(rows), len(picked), "results")


RESULTS_TABLE = Table(
    ["RESULT", "WORKLOAD", "GPU", "PROVIDER", "VALUE", "$/h", "$/H PER UNIT", "VALID", "WHEN"],
    lambda r: (
        r["id"],
        r["workload"],
        r["gpu_name"] or r["measured_gpu"],
        r["provider"],
        f"{_num(r['value'])} {r['unit'] or ''}".strip(),
        _money(r["price_per_hour"]),
        _num(r["cost_per_unit"]),
        "yes" if r["valid"] is True else "no",
        _when(r["created_at"]),
    ),
    empty="No benchmark results (see 'gpu-shopper benchmark run' and 'benchmark submit').",
)


@benchmark.command("show", epilog="Example: gpu-shopper benchmark show r-1a2b --json")
@click.argument("ident", metavar="ID")
@json_option
@pass_app
def show(app: App, ident: str, as_json: bool) -> None:
    """One result (r-...) or run (b-...); a unique prefix of the id is enough."""
    from gpushopper.core.bench.queries import resolve_id

    data = _store(app).read()
    results = {k: v for k, v in data["results"].items() if isinstance(v, dict)}
    runs = {k: v for k, v in data["runs"].items() if isinstance(v, dict)}
    pool = results if ident.startswith("r-") else runs if ident.startswith("b-") else None
    ids = list(pool) if pool is not None else [*results, *runs]
    found = resolve_id(ids, ident, "result or run")
    if found in results:
        render(as_json, _result_json(results[found]), pairs=_flat)
    else:
        render(as_json, runs[found], text=_print_run)


def _print_run(run: dict[str, Any]) -> None:
    pairs = [(k, v) for k, v in run.items() if k not in ("entries", "owner", "budget", "args")]
    budget: dict[str, Any] = run["budget"] if isinstance(run.get("budget"), dict) else {}
    pairs += [(f"budget.{k}", v) for k, v in budget.items()]
    pairs.append(("args", " ".join(str(a) for a in run.get("args") or [])))
    print_kv(pairs)
    entries = [e for e in run.get("entries") or [] if isinstance(e, dict)]
    print_table(
        ["ENTRY", "OFFER", "STATUS", "RESULT", "FAILED AT", "ATTEMPTS"],
        [
            (
                e.get("key"),
                e.get("offer_id"),
                e.get("status"),
                e.get("result_id"),
                e.get("failure_stage"),
                len(e.get("attempts") or []),
            )
            for e in entries
        ],
        empty="No entries.",
    )


def _flat(record: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = []
    for key, value in record.items():
        if isinstance(value, dict):
            pairs += _flat(value, f"{prefix}{key}.")
        elif isinstance(value, list):
            pairs.append((f"{prefix}{key}", ", ".join(str(v) for v in value)))
        else:
            pairs.append((f"{prefix}{key}", value))
    return pairs


# -- submit --------------------------------------------------------------------------------------
@benchmark.command(
    "submit",
    epilog="""Examples:

\b
  gpu-shopper benchmark submit result.json
  cat seed-results.json | gpu-shopper benchmark submit -
""",
)
@click.argument("source", metavar="FILE|-")
@json_option
@pass_app
def submit(app: App, source: str, as_json: bool) -> None:
    """Import results: our JSON (one object or a list) or the seed service's result JSON.

    Every result is checked (required keys, units, ranges, finite numbers); if any is
    wrong nothing is imported. Each gets a new id; cost per unit is recomputed.
    """
    import json

    from gpushopper.core.bench.records import assign_id, parse_submission
    from gpushopper.model.errors import UsageError

    raw = _read_source(source)

    def refuse(token: str) -> None:
        raise ValueError(f"{token} is not a JSON number")

    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=refuse)
    except RecursionError:
        raise UsageError(f"{source}: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{source}: not valid JSON ({exc})") from None
    records = parse_submission(doc, now=app.clock())
    stored = []
    with _store(app).transaction() as data:
        for record in records:
            record = assign_id(record, data["results"])
            data["results"][record["id"]] = record
            stored.append(record)
    render(as_json, stored, text=_print_imported)


def _print_imported(stored: list[dict[str, Any]]) -> None:
    for record in stored:
        info(f"Imported {record['id']}: {record['workload']} {record['value']:g} {record['unit']}")
    click.echo(" ".join(r["id"] for r in stored))


def _read_source(source: str) -> bytes:
    from gpushopper.model.errors import UsageError

    if source == "-":
        data = sys.stdin.buffer.read(MAX_SUBMIT_BYTES + 1)
    else:
        try:
            with open(source, "rb") as handle:
                data = handle.read(MAX_SUBMIT_BYTES + 1)
        except OSError as exc:
            raise UsageError(f"cannot read {source}: {exc.strerror or exc}") from None
    if len(data) > MAX_SUBMIT_BYTES:
        raise UsageError(f"{source} is over {MAX_SUBMIT_BYTES // 2**20} MiB")
    return data


# -- best / cheapest / compare / recommendations -------------------------------------------------
def _ranked(app: App, workload: str) -> Any:
    from gpushopper.core.bench.queries import ranked_results

    ranked = ranked_results(_store(app).table(), workload)
    for note in ranked.notes:
        info(f"Note: {note}")
    return ranked


def _live(app: App, ranked: Any) -> Any:
    """The cheapest current reliable offer per GPU model and count, over the providers."""
    from gpushopper.cli.filters import build_query
    from gpushopper.cli.inventory import report_providers, run_search
    from gpushopper.core.bench.queries import cheapest_live, live_models

    names = tuple(dict.fromkeys(name for name, _ in live_models(ranked)))
    if not names:
        return {}
    query, _ = build_query(app, gpus=names, sort="price")
    result = run_search(app, query, refresh=False, include_unhealthy=False, as_json=True)
    report_providers(result)
    return cheapest_live(result.offers)


QUERY_LIMIT = 20  # rows of best/cheapest by default


def _query_options(func: Any) -> Any:
    func = json_option(func)
    func = _limit_option(QUERY_LIMIT, "rows")(func)
    func = click.option(
        "--live", is_flag=True, help="Re-price with the cheapest current offer of each GPU."
    )(func)
    func = click.option("--workload", required=True, metavar="NAME", help="The workload.")(func)
    return func


def _value(row: dict[str, Any], key: str = "value") -> str:
    return f"{_num(row[key])} {row.get('unit') or ''}".strip()


def _result_table(live: bool, title: str) -> Table:
    columns = ["RESULT", "GPU", "#", "PROVIDER", "VALUE", "$/h", "$/H PER UNIT"]
    if live:
        columns += ["LIVE $/h", "LIVE $/H PER UNIT", "LIVE OFFER"]

    def row_of(r: dict[str, Any]) -> tuple[Any, ...]:
        row: tuple[Any, ...] = (
            r["result_id"],
            r["gpu_name"],
            r["gpu_count"],
            r["provider"],
            _value(r),
            _money(r["price_per_hour"]),
            _num(r["cost_per_unit"]),
        )
        if live:
            row += (
                _money(r["live_price_per_hour"]),
                _num(r["live_cost_per_unit"]),
                r["live_offer_id"],
            )
        return row

    return Table(columns, row_of, title=title)


def _ask(
    app: App, workload: str, live: bool, limit: int, question: Any, per_result: bool = True
) -> tuple[Any, list[dict[str, Any]]]:
    ranked = _ranked(app, workload)
    prices = _live(app, ranked) if live else None
    rows = question(ranked, prices, limit or None)
    if per_result:
        _cut_note(len(rows), len(ranked.rows), "results")
    return ranked, rows


@benchmark.command(
    "cheapest",
    epilog="Example: gpu-shopper benchmark cheapest --workload gpu-matmul@1 --live --json",
)
@_query_options
@pass_app
def cheapest(app: App, workload: str, live: bool, limit: int, as_json: bool) -> None:
    """Results by cost per unit of work, cheapest first (price / value when more is better,
    price x value when less is); --live prices each GPU at its cheapest offer now."""
    from gpushopper.core.bench import queries

    ranked, rows = _ask(app, workload, live, limit, queries.cheapest)
    title = f"{workload}: {ranked.metric}, cheapest per unit first"
    render(as_json, rows, table=_result_table(live, title))


@benchmark.command(
    "best", epilog="Example: gpu-shopper benchmark best --workload llm-throughput@1 --json"
)
@_query_options
@pass_app
def best(app: App, workload: str, live: bool, limit: int, as_json: bool) -> None:
    """Results by measured value, best first."""
    from gpushopper.core.bench import queries

    ranked, rows = _ask(app, workload, live, limit, queries.best)
    render(as_json, rows, table=_result_table(live, f"{workload}: {ranked.metric}, best first"))


@benchmark.command(
    "compare", epilog="Example: gpu-shopper benchmark compare --workload gpu-matmul@1"
)
@_query_options
@pass_app
def compare(app: App, workload: str, live: bool, limit: int, as_json: bool) -> None:
    """Each GPU model against the best: performance ratio (1.0 = best median value) and
    cost ratio (1.0 = lowest cost per unit)."""
    from gpushopper.core.bench import queries

    ranked, rows = _ask(app, workload, live, limit, queries.compare, per_result=False)
    key = "live_cost_per_unit" if live else "cost_per_unit"
    table = Table(
        ["GPU", "#", "N", "MEDIAN", "PERF x", "$/H PER UNIT", "COST x"],
        lambda r: (
            r["gpu_name"],
            r["gpu_count"],
            r["n"],
            _value(r, "median_value"),
            f"{r['perf_ratio']:.2f}",
            _num(r[key]),
            None if r["cost_ratio"] is None else f"{r['cost_ratio']:.2f}",
        ),
        title=f"{workload}: {ranked.metric} against the best",
    )
    render(as_json, rows, table=table)


@benchmark.command(
    "recommendations",
    epilog="Example: gpu-shopper benchmark recommendations --workload flux-lora@1 --live",
)
@_query_options
@pass_app
def recommendations(app: App, workload: str, live: bool, limit: int, as_json: bool) -> None:
    """What to rent: one row per GPU model and count, cheapest per unit of work first
    (median value, n, cost per unit, live cost per unit with --live, peak VRAM)."""
    from gpushopper.core.bench import queries

    ranked, rows = _ask(app, workload, live, limit, queries.recommendations, per_result=False)
    columns = ["GPU", "#", "N", "MEDIAN", "MEDIAN $/h", "$/H PER UNIT", "PEAK VRAM MB"]
    if live:
        columns += ["LIVE $/h", "LIVE $/H PER UNIT"]

    def row_of(r: dict[str, Any]) -> tuple[Any, ...]:
        row: tuple[Any, ...] = (
            r["gpu_name"],
            r["gpu_count"],
            r["n"],
            _value(r, "median_value"),
            _money(r["median_price_per_hour"]),
            _num(r["cost_per_unit"]),
            None if r["peak_vram_mb"] is None else f"{r['peak_vram_mb']:.0f}",
        )
        if live:
            row += (_money(r["live_price_per_hour"]), _num(r["live_cost_per_unit"]))
        return row

    title = f"{workload}: {ranked.metric}, what to rent"
    render(as_json, rows, table=Table(columns, row_of, title=title))


# -- schedules -----------------------------------------------------------------------------------
def _run_args() -> list[str]:
    from gpushopper.cli.params import after_dash

    return list(after_dash())


class _Budget(click.FloatRange):
    """USD above 0, at most 10,000, never nan or inf (cli/filters.Finite, without loading
    the inventory filters at start-up)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        import math

        out = super().convert(value, param, ctx)
        if not math.isfinite(out):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return out


def _budget_type() -> click.ParamType:
    return _Budget(min=0, min_open=True, max=10_000)


@benchmark.group(
    "schedule",
    epilog="""Examples:

\b
  gpu-shopper benchmark schedule add nightly --cron '0 3 * * *' --max-budget 5 \\
      -- --workload gpu-matmul@1 --gpu 4090
  gpu-shopper benchmark schedule list
  */10 * * * *  gpu-shopper benchmark schedule run-due     # in crontab
""",
)
def schedule() -> None:
    """Benchmark runs on a cron schedule (UTC), each bounded by its own budget."""


SCHEDULES_TABLE = Table(
    ["NAME", "CRON", "BUDGET $", "ON", "NEXT", "LAST", "LAST RUN", "RUN-ARGS"],
    lambda r: (
        r.get("name"),
        r.get("cron"),
        _money(r.get("max_budget")),
        "yes" if r.get("enabled") else "no",
        _when(r.get("next_due_at")),
        _when(r.get("last_fired_at")),
        r.get("last_run_id"),
        " ".join(str(a) for a in r.get("args") or []),
    ),
    empty="No schedules.",
)


@schedule.command(
    "add",
    cls=DashCommand,
    epilog="""Example:

\b
  gpu-shopper benchmark schedule add weekly --cron '0 6 * * mon' --max-budget 10 \\
      -- --workload llm-throughput@1 --gpu 4090 --gpu a100
""",
)
@click.argument("name")
@click.option("--cron", "expr", required=True, metavar="EXPR", help="Five-field cron, in UTC.")
@click.option(
    "--max-budget", required=True, type=_budget_type(), metavar="USD", help="Most one run spends."
)
@json_option
@pass_app
def schedule_add(app: App, name: str, expr: str, max_budget: float, as_json: bool) -> None:
    """Store a schedule; RUN-ARGS after '--' are what 'benchmark run' gets."""
    from gpushopper.core.bench import schedules

    record = schedules.view(
        schedules.add(_store(app), name, expr, max_budget, _run_args(), app.clock())
    )
    render(
        as_json,
        record,
        text=lambda r: info(
            f"Schedule {name}: '{r['cron']}', next at {_when(r['next_due_at'])} UTC"
        ),
    )


@schedule.command("list", epilog="Example: gpu-shopper benchmark schedule list --json")
@json_option
@pass_app
def schedule_list(app: App, as_json: bool) -> None:
    """Stored schedules and when each fires next."""
    from gpushopper.core.bench import schedules

    records = [schedules.view(r) for _, r in sorted(_store(app).schedules().items())]
    render(as_json, records, table=SCHEDULES_TABLE)


@schedule.command(
    "update",
    cls=DashCommand,
    epilog="Example: gpu-shopper benchmark schedule update nightly --cron '30 2 * * *' --disable",
)
@click.argument("name")
@click.option("--cron", "expr", metavar="EXPR", help="A new five-field cron, in UTC.")
@click.option("--max-budget", type=_budget_type(), metavar="USD", help="A new budget per run.")
@click.option("--enable/--disable", "enabled", default=None, help="Turn the schedule on or off.")
@json_option
@pass_app
def schedule_update(
    app: App,
    name: str,
    expr: str | None,
    max_budget: float | None,
    enabled: bool | None,
    as_json: bool,
) -> None:
    """Change a schedule; RUN-ARGS after '--' replace its run arguments."""
    from gpushopper.core.bench import schedules

    record = schedules.view(
        schedules.update(
            _store(app),
            name,
            app.clock(),
            expr=expr,
            max_budget=max_budget,
            args=_run_args() or None,
            enabled=enabled,
        )
    )
    render(
        as_json,
        record,
        text=lambda r: info(
            f"Schedule {name} updated; next at {_when(r['next_due_at']) or 'never (disabled)'}"
        ),
    )


@schedule.command("delete", epilog="Example: gpu-shopper benchmark schedule delete nightly")
@click.argument("name")
@json_option
@pass_app
def schedule_delete(app: App, name: str, as_json: bool) -> None:
    """Remove a schedule (its past runs and results stay)."""
    from gpushopper.core.bench import schedules

    schedules.delete(_store(app), name)
    render(as_json, {"deleted": name}, text=lambda _: info(f"Schedule {name} deleted"))


# Tests replace this with a fake; the default starts `python -m gpushopper benchmark run`.
RUNNER: Any = None


@schedule.command(
    "run-due",
    epilog="""Example (crontab):

\b
  */10 * * * *  gpu-shopper benchmark schedule run-due >> ~/bench-cron.log 2>&1
""",
)
@json_option
@pass_app
def schedule_run_due(app: App, as_json: bool) -> int:
    """Fire every enabled schedule whose time has come since its last firing (once each,
    however many times were missed). Safe to call often and concurrently.

    Exit status: 0 when every run fired exited 0 (or nothing was due), 1 otherwise.
    """
    from gpushopper.core.bench import schedules

    runner = RUNNER or schedules.subprocess_runner()
    lock = app.paths.bench_file.with_name(app.paths.bench_file.name + ".run-due.lock")
    firings = schedules.run_due(_store(app), lock, app.clock, runner, log=info)
    table = Table(
        ["SCHEDULE", "DUE", "RUN", "STATUS", "EXIT"],
        lambda f: (f["schedule"], _when(f["due_at"]), f["run_id"], f["status"], f["exit_code"]),
        empty="Nothing due.",
    )
    render(as_json, firings, table=table)
    for firing in firings:
        if firing["exit_code"] and firing["message"]:
            info(f"schedule {firing['schedule']}: {firing['message']}")
    return 1 if any(f["exit_code"] for f in firings) else 0
