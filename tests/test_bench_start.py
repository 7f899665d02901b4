"""What ``benchmark run`` decides around the runner (core/bench/start.py): the flag
combinations it refuses, the scratch folder, and a run that ends before anything is rented
(a "no", a signal, a failing plan) recorded as abandoned, never executed."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from gpushopper.core.bench import start
from gpushopper.model.errors import UsageError


def check(**given):
    flags = {
        "workload": "gpu-matmul",
        "offers": (),
        "gpus": (),
        "workdir": None,
        "secret_names": (),
        "environ": {},
        **given,
    }
    return start.check_flags(**flags)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"offers": ("vastai:1",), "gpus": ("4090",)}, "give --offer or --gpu, not both"),
        ({"offers": ("nimbus:1",)}, "nimbus"),
        ({"workdir": "/no/such/folder"}, "--workdir /no/such/folder: no such folder"),
        ({"workload": "flux-lora@1"}, "flux-lora needs --secret-env HF_TOKEN"),
        ({"secret_names": ("HF_TOKEN",), "environ": {"HF_TOKEN": ""}}, "HF_TOKEN is not set"),
    ],
)
def test_what_cannot_run_is_refused_before_anything_is_recorded(given, message):
    with pytest.raises(UsageError, match=message):
        check(**given)


def test_the_secrets_come_back_and_flux_lora_runs_with_its_token(tmp_path):
    env = {"HF_TOKEN": "hf_x", "OTHER": "o"}
    assert check(workload="flux-lora", secret_names=("HF_TOKEN",), environ=env) == {
        "HF_TOKEN": "hf_x"
    }
    assert check(offers=("vastai:1",), workdir=str(tmp_path)) == {}


def test_the_scratch_folder_is_removed_even_when_the_run_fails(tmp_path):
    data = tmp_path / "data"
    with pytest.raises(RuntimeError), start.scratch(data) as folder:
        (folder / "f").write_text("x")
        assert folder.parent == data and folder.name.startswith("bench-")
        raise RuntimeError("boom")
    assert list(data.iterdir()) == []


class Entry:
    def __init__(self, key, status):
        self.record = {"key": key, "status": status}


class Runner:
    def __init__(self, plan_error=None):
        self.calls: list[str] = []
        self.plan_error = plan_error
        self.entries: list[Entry] = []
        self.abandoned: list[BaseException] = []

    def create(self, options):
        self.calls.append("create")
        return {"id": "b1"}

    def plan(self, options):
        self.calls.append("plan")
        if self.plan_error is not None:
            raise self.plan_error
        self.entries = [Entry("a", "pending"), Entry("b", "cached"), Entry("c", "pending")]

    def abandon(self, exc):
        self.calls.append("abandon")
        self.abandoned.append(exc)

    def execute(self, options):
        self.calls.append("execute")
        return {"id": "b1", "status": "succeeded"}, 0


@dataclass
class Options:  # stands in for RunOptions: start() hands the plan a copy
    max_budget: float = 1.0


def run(runner, confirm=lambda r: None):
    told: list = []
    out = start.start(runner, Options(), created=told.append, confirm=confirm)
    return out, told


def test_the_record_comes_first_then_the_plan_the_question_and_the_run():
    runner = Runner()
    asked: list = []
    (record, code), told = run(runner, confirm=lambda r: asked.append(start.pending_keys(r)))
    assert told == [{"id": "b1"}] and asked == [["a", "c"]]
    assert runner.calls == ["create", "plan", "execute"] and code == 0


@pytest.mark.parametrize("where", ["plan", "confirm"])
@pytest.mark.parametrize("error", [KeyboardInterrupt(), UsageError("bad plan")])
def test_a_run_stopped_before_renting_is_abandoned_and_never_executed(where, error):
    runner = Runner(plan_error=error if where == "plan" else None)

    def confirm(r):
        raise error

    with pytest.raises(type(error)):
        run(runner, confirm=confirm if where == "confirm" else (lambda r: None))
    assert runner.calls[-1] == "abandon" and "execute" not in runner.calls
    assert runner.abandoned == [error]
