"""What ``run`` decides around the job runner (core/jobs.py): the job's request (the rental
``provision`` would make, its reservation following ``--max-duration``, the free disk the
uploads need), the rental step the runner calls once the job record exists (choose, say,
ask, rent: a "no" rents nothing), and how the runner's outcome reads (declined, detached,
failed before the command ran, finished).

The command parses its flags, renders what this returns and prints; the rules are tested
here (tests/test_jobstart.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from gpushopper.core import request
from gpushopper.model.errors import Declined
from gpushopper.model.jsontypes import JSONMapping, JSONObject
from gpushopper.model.models import OfferQuery

if TYPE_CHECKING:
    from gpushopper.core.jobs import JobRunner, JobSpec
    from gpushopper.core.provisioner import Provisioner
    from gpushopper.model.session import Session
    from gpushopper.state.config import Settings
    from gpushopper.state.store import StateStore

# The uploads' size times this is the free disk asked of an offer (room for the unpacking).
UPLOAD_HEADROOM = 1.05


def upload_bytes(spec: JobSpec) -> int:
    """The bytes ``run`` uploads: the working directory (less its excludes) and each
    ``--upload``."""
    from gpushopper.remote.jobwrap import tree_bytes

    paths = ([spec.workdir] if spec.workdir else []) + [local for local, _ in spec.uploads]
    return sum(tree_bytes(Path(p).expanduser(), spec.excludes) for p in paths)


def min_disk_free_gb(nbytes: int) -> float | None:
    """The free disk (GB) an offer must report for these uploads; None for none."""
    return round(nbytes * UPLOAD_HEADROOM / 1e9, 3) if nbytes else None


def job_request(
    settings: Settings,
    query: OfferQuery,
    profile: JSONMapping,
    spec: JobSpec,
    flags: request.Flags,
) -> request.Built:
    """The request as ``provision`` builds it, for a job: the reservation follows the
    job's ``--max-duration`` (Purpose.JOB), and offers must have room for the uploads."""
    flags = replace(flags, job_duration_s=spec.max_duration_s)
    built = request.build(settings, query, profile, flags, request.Purpose.JOB)
    built.request.min_disk_free_gb = min_disk_free_gb(upload_bytes(spec))
    return built


def rental(
    provisioner: Provisioner,
    built: request.Built,
    store: StateStore,
    settings: Settings,
    *,
    say: Callable[[request.Choice], None],
    confirm: Callable[[request.Choice], bool],
) -> Callable[[Callable[[str], None]], Session]:
    """The rental step ``JobRunner.run`` calls with its stage callback: choose the offers,
    ``say`` what to know first (notes, the reliability warning), ask ``confirm`` and rent;
    a "no" raises Declined before anything is created."""

    def provision(on_stage: Callable[[str], None]) -> Session:
        built.request.on_stage = on_stage
        choice = request.choose(provisioner, built, store, settings)
        say(choice)
        if not confirm(choice):
            raise Declined("declined at the prompt: nothing rented")
        return provisioner.provision(built.request, choice.candidates)

    return provision


@dataclass
class Outcome:
    """How a job ended, as ``run`` reports it."""

    job: JSONObject
    exit_code: int
    declined: bool = False  # "n" at the prompt: nothing rented, not an error (exit 0)
    detached: bool = False  # --detach: the command runs on; 'jobs attach' picks it up


def run_job(
    runner: JobRunner,
    spec: JobSpec,
    job: JSONObject,
    provision: Callable[[Callable[[str], None]], Session],
) -> Outcome:
    """Run the job (the runner destroys what it rented on every outcome) and read how it
    ended: a failure before the command ran carries its job record and exit code."""
    from gpushopper.core.jobs import JobFailed

    try:
        record, code = runner.run(spec, job, provision)
    except JobFailed as exc:
        if isinstance(exc.cause, Declined):
            return Outcome(exc.job, 0, declined=True)
        return Outcome(exc.job, exc.exit_code)
    detached = spec.detach and code == 0 and record.get("status") == "running"
    return Outcome(record, code, detached=detached)
