"""What ``run`` decides around the job runner (core/jobstart.py): the job's request, the
rental step (a "no" at the prompt rents nothing), and how the runner's outcome reads."""

from __future__ import annotations

import pytest

from gpushopper.core import jobstart, request
from gpushopper.core.jobs import JobFailed, JobSpec
from gpushopper.model.errors import Declined, Unavailable, UsageError
from gpushopper.model.models import OfferQuery
from gpushopper.model.session import Session
from tests.test_request import H, Provisioner, Store, offer, settings


def test_the_uploads_need_their_size_plus_headroom_free_on_the_offer(tmp_path):
    work = tmp_path / "upload-src"
    work.mkdir()
    (work / "a.bin").write_bytes(b"x" * 1_000_000)
    (work / "skip.ckpt").write_bytes(b"x" * 5_000_000)
    extra = tmp_path / "extra.bin"
    extra.write_bytes(b"x" * 2_000_000)
    spec = JobSpec(
        ["true"], workdir=str(work), excludes=["*.ckpt"], uploads=[(str(extra), "extra.bin")]
    )
    assert jobstart.upload_bytes(spec) == 3_000_000
    assert jobstart.min_disk_free_gb(3_000_000) == 0.003  # 3.15 MB, rounded to the MB
    assert jobstart.min_disk_free_gb(0) is None
    assert jobstart.upload_bytes(JobSpec(["true"])) == 0


def test_a_jobs_reservation_follows_its_max_duration_and_asks_for_room(tmp_path):
    work = tmp_path / "upload-src"
    work.mkdir()
    (work / "a.bin").write_bytes(b"x" * 20_000_000)
    spec = JobSpec(["true"], workdir=str(work), max_duration_s=1 * H)
    built = jobstart.job_request(settings(tmp_path), OfferQuery(), {}, spec, request.Flags())
    assert built.request.hours_s == 1.5 * H  # max-duration plus the 30-minute margin
    assert built.request.min_disk_free_gb == 0.021  # 21 MB
    no_uploads = jobstart.job_request(
        settings(tmp_path), OfferQuery(), {}, JobSpec(["true"]), request.Flags()
    )
    assert no_uploads.request.min_disk_free_gb is None
    assert no_uploads.request.hours_s == 2 * H  # defaults.hours


def test_a_jobs_explicit_hours_past_the_hard_maximum_is_refused(tmp_path):
    with pytest.raises(UsageError):
        jobstart.job_request(
            settings(tmp_path), OfferQuery(), {}, JobSpec(["true"]), request.Flags(hours_s=13 * H)
        )


class Renting(Provisioner):
    def __init__(self, *offers):
        super().__init__(*offers, notes=["a note"])
        self.rented: list = []

    def provision(self, req, candidates):
        self.rented.append([c.offer.id for c in candidates])
        return Session.from_record({"id": "abc123", "status": "running", "provider": "vastai"})


def rental_step(tmp_path, answer):
    built = request.build(
        settings(tmp_path), OfferQuery(), {}, request.Flags(), request.Purpose.JOB
    )
    prov = Renting(offer("vastai", 1), offer("vastai", 2))
    said: list = []
    asked: list = []

    def confirm(choice):
        asked.append(choice.best.id)
        return answer

    step = jobstart.rental(
        prov, built, Store(), settings(tmp_path), say=said.append, confirm=confirm
    )
    return step, prov, built, said, asked


def test_a_no_at_the_prompt_rents_nothing(tmp_path):
    step, prov, built, said, asked = rental_step(tmp_path, answer=False)
    with pytest.raises(Declined, match="nothing rented"):
        step(lambda stage: None)
    assert asked == ["vastai:1"] and prov.rented == []
    assert [c.notes for c in said] == [["a note"]]  # what to know came before the question


def test_a_yes_rents_the_candidates_in_order_and_follows_the_stages(tmp_path):
    step, prov, built, said, asked = rental_step(tmp_path, answer=True)
    stages: list[str] = []
    session = step(stages.append)
    assert session.id == "abc123" and prov.rented == [["vastai:1", "vastai:2"]]
    built.request.on_stage("provisioning")
    assert stages == ["provisioning"]


class Runner:
    def __init__(self, result=None, raises=None):
        self.result, self.raises = result, raises

    def run(self, spec, job, provision):
        if self.raises is not None:
            raise self.raises
        return self.result


JOB = {"id": "j1", "status": "provisioning"}


def test_a_declined_job_is_not_a_failure():
    done = jobstart.run_job(
        Runner(raises=JobFailed(JOB, Declined("no"))), JobSpec(["x"]), JOB, None
    )
    assert (done.declined, done.exit_code, done.job) == (True, 0, JOB)


def test_a_job_that_failed_before_it_ran_carries_its_record_and_exit_code():
    cause = Unavailable("vastai", "HTTP 503")
    done = jobstart.run_job(Runner(raises=JobFailed(JOB, cause)), JobSpec(["x"]), JOB, None)
    assert (done.declined, done.detached, done.exit_code) == (False, False, 1)


@pytest.mark.parametrize(
    ("detach", "code", "status", "detached"),
    [
        (True, 0, "running", True),
        (True, 0, "succeeded", False),  # it finished before the detach
        (True, 3, "running", False),  # a teardown not confirmed is reported in full
        (False, 0, "running", False),
    ],
)
def test_only_a_detached_job_still_running_reads_as_detached(detach, code, status, detached):
    record = {"id": "j1", "status": status}
    done = jobstart.run_job(Runner(result=(record, code)), JobSpec(["x"], detach=detach), JOB, None)
    assert (done.detached, done.exit_code, done.job) == (detached, code, record)
