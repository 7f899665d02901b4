"""``gpu-shopper run`` and ``gpu-shopper jobs``: one job from start to finish."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from gpushopper.cli import App, pass_app
from gpushopper.cli.filters import (
    SORTS,
    bounded,
    build_query,
    filter_args,
    filter_options,
    workload_option,
)
from gpushopper.cli.output import Table, info, json_option, render
from gpushopper.cli.params import DURATION, HOURS, JOB_ID, OFFER_ID, DashCommand, after_dash
from gpushopper.model.errors import UsageError


def _split_pair(raw: str, flag: str) -> tuple[str, str | None]:
    from gpushopper.remote.transfer import check_path

    left, sep, right = raw.partition(":")
    check_path(left, flag)
    if sep:
        check_path(right, flag)
    return left, (right if sep else None)


def _spec(app: App, opts: dict[str, Any], command: tuple[str, ...]) -> Any:
    from gpushopper.core.jobs import JobSpec
    from gpushopper.core.request import read_secret_env
    from gpushopper.remote.jobwrap import check_env_name

    if not command:
        raise UsageError("give the command to run after '--', e.g. -- python train.py")
    workdir = opts["workdir"]
    if workdir is not None and not Path(workdir).is_dir():
        raise UsageError(f"--workdir {workdir}: no such folder")
    uploads = []
    for raw in opts["upload"]:
        local, remote = _split_pair(raw, "--upload")
        if not Path(local).expanduser().exists():
            raise UsageError(f"--upload {local}: no such file or folder")
        uploads.append((local, remote or Path(local).name))
    downloads = [_split_pair(raw, "--download") for raw in opts["download"]]
    env: dict[str, str] = {}
    for raw in opts["env"]:
        name, sep, value = raw.partition("=")
        if not sep:
            raise UsageError(f"--env {raw[:80]!r}: write it as NAME=VALUE")
        check_env_name(name)
        env[name] = value
    env.update(read_secret_env(opts["secret_env"], os.environ))
    secrets = list(opts["secret_env"])
    return JobSpec(
        command=list(command),
        workdir=workdir,
        excludes=list(opts["exclude"]),
        uploads=uploads,
        downloads=downloads,
        env=env,
        secret_names=secrets,
        out_dir=opts["out"],
        max_duration_s=opts["max_duration"],
        stall_timeout_s=opts["stall_timeout"],
        keep_on_failure_s=opts["keep_on_failure"],
        detach=opts["detach"],
        remote_root=app.environ.get("GPU_SHOPPER_JOBS_REMOTE_ROOT") or "gpu-shopper-jobs",
    )


def _emitter(as_json: bool) -> Any:
    stream = sys.stderr if as_json else sys.stdout

    def emit(data: bytes) -> None:
        buffer = getattr(stream, "buffer", None)
        if buffer is not None:
            buffer.write(data)
        else:
            stream.write(data.decode(errors="replace"))
        stream.flush()

    return emit


def _job_pairs(view: dict[str, Any], job: dict[str, Any]) -> list[tuple[str, Any]]:
    """A finished job for people: what ran, what it cost, where its outputs are."""
    pairs = [
        ("job", view["id"]),
        ("status", view["status"]),
        ("exit code", view["exit_code"]),
        ("session", view["session_id"]),
        ("gpu", view["gpu_name"]),
        ("cost", f"${view['cost_usd']:.4f}" if view.get("cost_usd") is not None else None),
        ("outputs", job.get("out_dir")),
        ("log", view["log_path"]),
        ("destroyed", "yes (confirmed)" if view["teardown"].get("confirmed") else "NO"),
    ]
    for row in view["artifacts"][:20]:
        pairs.append(("artifact", f"{row['local']} ({row['bytes']} bytes, {row['sha256'][:16]})"))
    if view.get("error"):
        pairs.append(("error", view["error"]))
    return pairs


def _report(job: dict[str, Any], code: int, as_json: bool) -> int:
    from gpushopper.core.jobs import public_job

    view = public_job(job)
    render(as_json, view, pairs=lambda doc: _job_pairs(doc, job))
    if code != 0 and view.get("error") and job.get("failure_stage") != "running":
        info(f"Error: {view['error']}")
    return code


@click.command(
    cls=DashCommand,
    epilog="""Examples:

\b
  gpu-shopper run --gpu 4090 --workdir . --max-duration 1h -- python train.py
  gpu-shopper run --profile flux-lora --workdir examples/flux-lora --secret-env HF_TOKEN \\
      --max-duration 2h -- python /app/ai-toolkit/run.py config.yaml
""",
)
@click.argument("offer_id", type=OFFER_ID, required=False)
@filter_options
@click.option("--image", metavar="IMAGE", help="Container or OS image to boot.")
@click.option("--workdir", metavar="DIR", help="Folder uploaded as the job's working directory.")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Leave matching files out.")
@click.option("--upload", multiple=True, metavar="LOCAL[:REMOTE]", help="Extra file to upload.")
@click.option("--download", multiple=True, metavar="REMOTE[:LOCAL]", help="Extra path to collect.")
@click.option("--env", multiple=True, metavar="K=V", help="Environment for the command.")
@click.option(
    "--secret-env", multiple=True, metavar="NAME", help="Pass $NAME from here, via a 0600 file."
)
@click.option("--out", metavar="DIR", help="Where results land (default ./gpu-shopper-runs/JOB).")
@click.option("--max-duration", type=DURATION, metavar="DUR", help="Stop the command after DUR.")
@click.option("--stall-timeout", type=DURATION, metavar="DUR", help="Stop it after DUR silent.")
@click.option("--hours", type=HOURS, metavar="DUR", help="Reservation (default max-duration+30m).")
@click.option(
    "--keep-on-failure", type=DURATION, metavar="DUR", help="On failure keep the instance DUR."
)
@click.option(
    "--auto-retry", type=bounded("auto_retry", True), metavar="N", help="Offers to retry."
)
@click.option("--sort", type=click.Choice(SORTS), help="How to pick the best offer.")
@workload_option
@click.option("--detach", is_flag=True, help="Start the command and return; see 'jobs attach'.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@json_option
@pass_app
def run(app: App, offer_id: str | None, **opts: Any) -> int:
    """Rent, upload, run COMMAND detached on the instance, stream its output, bring the
    results home and destroy the instance: on success, failure, timeout or a signal.

    Exit status: the command's own code once it ran and the teardown is confirmed; 124 when
    --max-duration or --stall-timeout stopped it; 1 when the tool failed before it ran;
    3 when the teardown could not be confirmed; 128+N after signal N (collected, destroyed).
    """
    from gpushopper.core import interrupts

    command = after_dash()
    with interrupts.destroy_on_signals():
        return _run(app, offer_id, command, opts)


def _run(app: App, offer_id: str | None, command: tuple[str, ...], opts: dict[str, Any]) -> int:
    from gpushopper.cli.provision import ask_to_rent, make_provisioner, tell_choice
    from gpushopper.core import jobstart, request
    from gpushopper.core.jobs import JobRunner, public_job
    from gpushopper.core.runtime import Runtime
    from gpushopper.providers.registry import split_offer_id

    if offer_id is not None:
        split_offer_id(offer_id)
    spec = _spec(app, opts, command)
    query, profile = build_query(
        app, **filter_args(opts), sort=opts["sort"], workload=opts["workload"]
    )
    flags = request.Flags(
        offer_id=offer_id, image=opts["image"], hours_s=opts["hours"], auto_retry=opts["auto_retry"]
    )
    built = jobstart.job_request(app.settings, query, profile, spec, flags)
    runner = JobRunner(app, runtime=Runtime.of(app, log=info), emit=_emitter(opts["as_json"]))
    job = runner.create(spec)  # the record comes first
    info(f"Job {job['id']}: {' '.join(spec.command)[:200]}")

    provision = jobstart.rental(
        make_provisioner(app),
        built,
        app.store,
        app.settings,
        say=tell_choice,
        confirm=lambda choice: ask_to_rent(
            choice, as_json=opts["as_json"], yes=opts["yes"], up_to=True
        ),
    )
    done = jobstart.run_job(runner, spec, job, provision)
    if done.declined:
        info("Nothing rented.")
        return 0
    if done.detached:
        render(
            opts["as_json"],
            public_job(done.job),
            pairs=lambda doc: [("job", doc["id"]), ("status", "running (detached)")],
        )
        return 0
    return _report(done.job, done.exit_code, opts["as_json"])


# -- jobs ---------------------------------------------------------------------------------------
@click.group(
    invoke_without_command=True,
    epilog="""Examples:

\b
  gpu-shopper jobs
  gpu-shopper jobs show j1a2b3 --json
  gpu-shopper jobs attach j1a2b3
""",
)
@click.option("--all", "show_all", is_flag=True, help="Include finished jobs.")
@json_option
@click.pass_context
def jobs(ctx: click.Context, show_all: bool, as_json: bool) -> None:
    """Jobs started by 'gpu-shopper run': list, show, logs, attach, cancel."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(jobs_list, show_all=show_all, as_json=as_json)


@jobs.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include finished jobs.")
@json_option
@pass_app
def jobs_list(app: App, show_all: bool, as_json: bool) -> None:
    """List jobs (live ones; --all for every one)."""
    from gpushopper.core.jobs import FINAL, list_jobs, public_job

    rows = [public_job(j) for j in list_jobs(app.store) if show_all or j.get("status") not in FINAL]
    render(
        as_json,
        rows,
        table=Table(
            ["job", "status", "exit", "session", "gpu", "cost", "command"],
            lambda r: [
                r["id"],
                r["status"],
                r["exit_code"],
                r["session_id"],
                r["gpu_name"],
                f"${r['cost_usd']:.4f}" if r.get("cost_usd") is not None else "",
                " ".join(r.get("command") or [])[:40],
            ],
        ),
    )


@jobs.command("show")
@click.argument("job_id", type=JOB_ID)
@json_option
@pass_app
def jobs_show(app: App, job_id: str, as_json: bool) -> None:
    """One job: status, stage, exit code, artifacts, timings."""
    from gpushopper.core.jobs import get_job, public_job

    view = public_job(get_job(app.store, job_id))
    render(
        as_json,
        view,
        pairs=lambda doc: [(k, v) for k, v in doc.items() if not isinstance(v, (list, dict))],
    )


@jobs.command("logs")
@click.argument("job_id", type=JOB_ID)
@click.option("--follow", "-f", is_flag=True, help="Keep printing while the job runs.")
@pass_app
def jobs_logs(app: App, job_id: str, follow: bool) -> None:
    """The command's output as brought home (secrets redacted)."""
    from gpushopper.core.jobs import FINAL, get_job

    job = get_job(app.store, job_id)
    path = Path(job["log_path"])
    offset = 0
    while True:
        if path.exists():
            with path.open("rb") as handle:
                handle.seek(offset)
                data = handle.read()
            offset += len(data)
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        if not follow or get_job(app.store, job_id).get("status") in FINAL:
            return
        app.sleep(0.5)


def _session_for(app: App, job: dict[str, Any]) -> Any:
    from gpushopper.core.teardown import get_session_or_fail

    if not job.get("session_id"):
        raise UsageError(f"job {job['id']} has no session (it is {job.get('status')})")
    return get_session_or_fail(app.store, job["session_id"])


@jobs.command("attach")
@click.argument("job_id", type=JOB_ID)
@json_option
@pass_app
def jobs_attach(app: App, job_id: str, as_json: bool) -> int:
    """Pick a job up again (after --detach): stream, collect, destroy."""
    return _resume(app, job_id, as_json, cancel=False)


@jobs.command("cancel")
@click.argument("job_id", type=JOB_ID)
@json_option
@pass_app
def jobs_cancel(app: App, job_id: str, as_json: bool) -> int:
    """Stop a job's command, collect what it wrote, destroy the instance."""
    return _resume(app, job_id, as_json, cancel=True)


def _resume(app: App, job_id: str, as_json: bool, cancel: bool) -> int:
    """attach and cancel: pick a live job up from its record, then finish or cancel it."""
    from gpushopper.core import interrupts
    from gpushopper.core.jobs import FINAL, JobRunner, JobSpec, get_job
    from gpushopper.core.runtime import Runtime

    job = get_job(app.store, job_id)
    if job.get("status") in FINAL:
        raise UsageError(f"job {job_id} is {job['status']} already")
    secret_names = list(job.get("secret_names") or [])
    missing = [n for n in secret_names if not os.environ.get(n)]
    if missing and not cancel:  # its output would stream and land here unredacted
        raise UsageError(
            f"job {job_id} was given --secret-env {' '.join(missing)}: set it here too, so its "
            f"value is kept out of the output ('gpu-shopper jobs cancel {job_id}' needs none)"
        )
    session = _session_for(app, job)
    spec = JobSpec(
        command=job["command"],
        downloads=[(r, loc) for r, loc in job.get("downloads") or []],
        out_dir=job.get("out_dir"),
        max_duration_s=job.get("max_duration_s"),
        stall_timeout_s=job.get("stall_timeout_s"),
        keep_on_failure_s=None if cancel else job.get("keep_on_failure_s"),
        env={n: os.environ[n] for n in secret_names if os.environ.get(n)},
        secret_names=secret_names,
    )
    runner = JobRunner(app, runtime=Runtime.of(app, log=info), emit=_emitter(as_json))
    with interrupts.destroy_on_signals():
        if cancel:
            record, code = runner.cancel(spec, job_id, session)
        else:
            record, code = runner.carry_on(spec, job_id, session, fresh=False)
    return _report(record, code, as_json)
