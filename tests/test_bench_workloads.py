"""Benchmark workloads: strict result parsing, the hardware record, the built-in scripts'
arithmetic (llm-throughput against a tiny local OpenAI-compatible server, flux-lora's
command and progress parsing), and transfer@1 / cold-start@1 end to end."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gpushopper.core.bench import workloads
from gpushopper.core.bench.runner import budget_allows
from gpushopper.core.bench.workloads import ResultInvalid, parse_hardware, parse_result
from gpushopper.model.errors import UsageError

SCRIPTS = workloads.SCRIPTS
REPO = Path(__file__).resolve().parents[1]


def script(name: str):
    spec = importlib.util.spec_from_file_location(f"gs_bench_{name}", SCRIPTS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the budget rule ---------------------------------------------------------------------------
def test_budget_counts_spent_committed_and_the_new_attempt():
    assert budget_allows(1.0, 0.0, 0.0, 1.0)
    assert not budget_allows(1.0, 0.01, 0.0, 1.0)  # failed attempts' money counts
    assert not budget_allows(1.0, 0.0, 0.5, 0.6)  # so do running ones' commitments
    assert budget_allows(1.0, 0.2, 0.3, 0.5)


# -- the result file -----------------------------------------------------------------------------
GOOD = {"metric": "steps_per_s", "value": 3, "unit": "steps/s", "higher_is_better": True}


def test_a_good_result_parses():
    found = parse_result(json.dumps(GOOD))
    assert found["value"] == 3.0 and isinstance(found["value"], float)
    assert found["extra_metrics"] == {} and found["device"] is None


@pytest.mark.parametrize(
    "change",
    [
        {"value": "3"},
        {"value": True},
        {"value": 1e300 * 10},
        {"value": None},
        {"higher_is_better": "yes"},
        {"higher_is_better": 1},
        {"metric": ""},
        {"metric": "x" * 65},
        {"metric": "rm -rf /; echo"},
        {"metric": "a\nb"},
        {"unit": "\x1b[31mred"},
        {"unit": "u" * 33},
        {"surprise": 1},
        {"extra_metrics": {"ok": "1"}},
        {"extra_metrics": {"bad key": 1}},
        {"extra_metrics": [1]},
        {"device": "tpu"},
        {"backend": "\x00"},
    ],
)
def test_a_malformed_result_is_refused(change):
    doc = {**GOOD, **change}
    with pytest.raises(ResultInvalid):
        parse_result(json.dumps(doc))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        "not json",
        '{"metric": "m", "value": NaN, "unit": "u", "higher_is_better": true}',
        '{"metric": "m", "value": Infinity, "unit": "u", "higher_is_better": true}',
        '{"metric": "m", "unit": "u", "higher_is_better": true}',
        json.dumps({**GOOD, "backend": "b" * 100}),
        " " * (70 * 1024),
    ],
)
def test_what_is_not_one_plain_object_is_refused(text):
    with pytest.raises(ResultInvalid):
        parse_result(text)


def test_hardware_from_nvidia_smi_and_without_it():
    found = parse_hardware(
        "NVIDIA H100 80GB HBM3, 81559 MiB, 550.54.15\nNVIDIA H100 80GB HBM3, 81559 MiB, 550.54.15\n",
        "| NVIDIA-SMI 550.54.15    Driver Version: 550.54.15    CUDA Version: 12.4     |",
    )
    assert found["gpu_name"] == "NVIDIA H100 80GB HBM3" and found["gpu_count"] == 2
    assert found["vram_mb"] == 81559 and found["driver"] == "550.54.15"
    assert found["cuda"] == "12.4" and found["device"] == "gpu"
    empty = parse_hardware(None, None)
    assert {k: v for k, v in empty.items() if k not in ("gpu_names", "device")} == {
        "gpu_name": None, "gpu_count": None, "vram_mb": None, "driver": None, "cuda": None,
    }  # fmt: skip
    assert empty["device"] == "cpu"


def test_nvidia_smi_rows_that_are_no_gpu_or_no_size_are_not_taken_as_measured():
    """What the instance's nvidia-smi printed is the provider's: a row naming no GPU is none,
    a size too long to be one is unknown (and never an exception that ends the entry)."""
    found = parse_hardware(" , 80000 MiB, 535.1\nH100, " + "9" * 5000 + " MiB, 535.1\n", None)
    assert found["gpu_names"] == ["H100"] and found["gpu_count"] == 1
    assert found["vram_mb"] is None and found["driver"] == "535.1"
    assert parse_hardware("\t\x07, 1 MiB, 1\n", None)["device"] == "cpu"


def test_workload_names_and_versions():
    assert workloads.split_name("gpu-matmul") == ("gpu-matmul", 1)
    assert workloads.split_name("gpu-matmul@1") == ("gpu-matmul", 1)
    assert workloads.split_name("my-step") == ("my-step", None)
    for bad in ("gpu-matmul@2", "my-step@1", "-x", "a b", "x" * 65, ""):
        with pytest.raises(UsageError):
            workloads.split_name(bad)


def test_throughput_is_output_tokens_over_wall_time_not_the_mean_of_request_rates():
    llm = script("llm")
    records = [
        {"ok": True, "output_tokens": 100, "ttft_s": 0.5},
        {"ok": True, "output_tokens": 300, "ttft_s": 0.2},
        {"ok": False, "output_tokens": 0, "ttft_s": None},
        {"ok": True, "output_tokens": 200, "ttft_s": 0.9},
    ]
    found = llm.summarize(records, 10.0)
    assert found["tokens_per_s"] == 60.0  # 600 tokens / 10 s
    assert found["error_rate"] == 0.25 and found["errors"] == 1 and found["requests"] == 4
    assert found["ttft_p50_s"] == 0.5 and found["ttft_max_s"] == 0.9


class _FakeLLM(BaseHTTPRequestHandler):
    tokens = 5
    delay = 0.02
    fail_every = 0  # every Nth completion answers 500
    usage = True
    model = "tiny-model"  # the id GET /v1/models answers
    count = 0
    lock = threading.Lock()

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        body = json.dumps({"data": [{"id": _FakeLLM.model}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        request = json.loads(self.rfile.read(length))
        assert request["stream"] is True and request["model"] == _FakeLLM.model
        with _FakeLLM.lock:
            _FakeLLM.count += 1
            number = _FakeLLM.count
        if self.fail_every and number % self.fail_every == 0:
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        time.sleep(self.delay * 5)  # the time to the first token
        for i in range(self.tokens):
            chunk = {"choices": [{"delta": {"content": f"t{i} "}}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
            time.sleep(self.delay)
        if self.usage:
            final = {"choices": [], "usage": {"completion_tokens": self.tokens}}
            self.wfile.write(f"data: {json.dumps(final)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


@pytest.fixture
def fake_llm():
    _FakeLLM.count, _FakeLLM.fail_every, _FakeLLM.usage = 0, 0, True
    _FakeLLM.model = "tiny-model"
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeLLM)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def _run_llm(tmp_path: Path, base_url: str, **settings: str) -> dict:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "GPU_SHOPPER_RESULT": str(out / "r.json"),
        "GS_LLM_BASE_URL": base_url,
        "GS_LLM_CONCURRENCY": "4",
        "GS_LLM_REQUESTS": "8",
        "GS_LLM_MAX_TOKENS": "5",
        "GS_LLM_WAIT_S": "10",
        **settings,
    }
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "llm.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return parse_result((out / "r.json").read_text())


@pytest.mark.parametrize("usage", [True, False])
def test_the_llm_script_against_a_tiny_streaming_server(tmp_path, fake_llm, usage):
    _FakeLLM.usage = usage  # without usage the streamed content chunks are counted
    found = _run_llm(tmp_path, fake_llm)
    extra = found["extra_metrics"]
    assert found["metric"] == "tokens_per_s" and found["higher_is_better"] is True
    assert extra["output_tokens"] == 40 and extra["requests"] == 8 and extra["error_rate"] == 0
    assert found["value"] == pytest.approx(extra["output_tokens"] / extra["wall_s"])
    # TTFT comes from the first streamed token, not the whole answer
    assert 0.09 <= extra["ttft_p50_s"] < extra["wall_s"] / 2
    # two rounds of 4 concurrent requests, each about 0.2 s: the wall time, not a sum
    assert extra["wall_s"] < 8 * 0.2


def test_llm_errors_make_the_result_invalid(tmp_path, fake_llm):
    _FakeLLM.fail_every = 4
    found = _run_llm(tmp_path, fake_llm)
    assert found["extra_metrics"]["error_rate"] == 0.25
    wl = workloads.Workload("llm-throughput", 1, "")
    hardware = parse_hardware("NVIDIA H100 80GB HBM3, 81559 MiB, 550.54.15", "")
    reasons = workloads.invalid_reasons(wl, found, hardware, "H100")
    assert reasons == ["error rate 25% (10% or more)"]


# -- flux-lora@1 ---------------------------------------------------------------------------------
def test_flux_config_and_progress_parsing():
    flux = script("flux")
    config = (REPO / "examples" / "flux-lora" / "config.yaml").read_text()
    out = flux.bench_config(config, 7)
    assert "        steps: 7" in out and "steps: 300" not in out
    assert "save_every: 1000000" in out
    log = (
        "gs_flux_lora:   0%|          | 0/7 [00:00<?, ?it/s]\r"
        "gs_flux_lora:  43%|####      | 3/7 [00:09<00:12,  3.10s/it, lr: 1.0e-04 loss: 4.1e-01]\r"
        "gs_flux_lora: 100%|##########| 7/7 [00:21<00:00,  2.95s/it, lr: 1.0e-04 loss: 3.9e-01]\n"
    )
    assert flux.seconds_per_step(log) == (2.95, 7)
    assert flux.seconds_per_step("step 2/7 [00:01<00:02, 1.25it/s]") == (0.8, 2)
    assert flux.seconds_per_step("no progress here") is None
    assert flux.command("/app/ai-toolkit", "c.yaml")[1:] == ["/app/ai-toolkit/run.py", "c.yaml"]


def test_flux_workload_assembles_its_job(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    wl = workloads.resolve("flux-lora", None, ["steps=4"])
    assert wl.key == "flux-lora@1" and wl.workdir == "examples/flux-lora"
    assert wl.env["GS_FLUX_STEPS"] == "4" and wl.env["GS_FLUX_TOOLKIT"] == "/app/ai-toolkit"
    assert wl.command()[:2] == ["sh", "-c"] and wl.command()[2].endswith("gs-bench/flux.py")
    assert (str(SCRIPTS), "gs-bench") in wl.uploads
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="config.yaml"):
        workloads.resolve("flux-lora", None, [])


def test_flux_script_end_to_end_with_a_stand_in_toolkit(tmp_path):
    toolkit = tmp_path / "toolkit"
    toolkit.mkdir()
    (toolkit / "run.py").write_text(
        "import sys\n"
        "text = open(sys.argv[1]).read()\n"
        "assert 'steps: 3' in text\n"
        "for i in range(1, 4):\n"
        "    sys.stdout.write(f'gs: {i}/3 [00:0{i}<00:00,  1.50s/it]\\r')\n"
    )
    work = tmp_path / "work"
    (work / "out").mkdir(parents=True)
    (work / "config.yaml").write_text((REPO / "examples/flux-lora/config.yaml").read_text())
    env = {**os.environ, "GS_FLUX_STEPS": "3", "GS_FLUX_TOOLKIT": str(toolkit),
           "GPU_SHOPPER_RESULT": str(work / "out" / "r.json")}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "flux.py")], cwd=work, env=env, capture_output=True
    )
    assert proc.returncode == 0, proc.stdout
    found = parse_result((work / "out" / "r.json").read_text())
    assert found["metric"] == "s_per_step" and found["value"] == 1.5
    assert found["higher_is_better"] is False
    assert found["extra_metrics"] == {"steps_done": 3.0, "steps_wanted": 3.0}


# -- gpu-matmul@1's script where it runs --------------------------------------------------------
def test_matmul_script_gives_positive_figures_here(tmp_path):
    env = {**os.environ, "GPU_SHOPPER_RESULT": str(tmp_path / "r.json"), "GS_BENCH_SECONDS": "0.3"}
    proc = subprocess.run([sys.executable, str(SCRIPTS / "matmul.py")], env=env, timeout=60)
    assert proc.returncode == 0
    found = parse_result((tmp_path / "r.json").read_text())
    assert found["value"] > 0 and math.isfinite(found["value"])
    assert found["device"] in ("cpu", "gpu")


# -- transfer@1 and cold-start@1 from the job's own timings ---------------------------------------
def test_transfer_and_cold_start_measure_from_the_job(gs, vast, isolated_home):
    from gpushopper.state.benchstore import BenchStore

    vast.offers.clear()
    offer = vast.add_offer(gpu_name="RTX 4090", dph_base=0.25)
    base = ["--offer", f"vastai:{offer['id']}", "--max-budget", "1", "--yes", "--json"]
    moved = gs(["benchmark", "run", "--workload", "transfer", "--param", "mb=2", *base])
    assert moved.exit_code == 0, moved.stderr
    started = gs(["benchmark", "run", "--workload", "cold-start@1", *base])
    assert started.exit_code == 0, started.stderr
    found = {
        r["workload"]: r for r in BenchStore(isolated_home / "benchmarks.json").results().values()
    }
    transfer = found["transfer@1"]
    assert transfer["metric"] == "upload_mbs" and transfer["value"] > 0
    assert transfer["extra_metrics"]["download_mbs"] > 0 and transfer["cost_usd"] > 0
    (entry,) = moved.json()["entries"]
    job_out = Path(state_job_out(isolated_home, entry["attempts"][0]["job_id"]))
    assert not (job_out / "gs-payload.bin").exists()  # the payload does not stay on disk
    cold = found["cold-start@1"]
    assert cold["metric"] == "time_to_ready_s" and cold["value"] > 0
    assert cold["higher_is_better"] is False
    assert cold["extra_metrics"]["time_to_ssh_s"] > 0
    assert vast.live_instances() == []


def state_job_out(home: Path, job_id: str) -> str:
    from tests.fakes.records import read_state

    return read_state(home)["jobs"][job_id]["out_dir"]


FAKE_TORCH = '''
"""A stand-in for torch with CUDA (no GPU here): the script's torch path, on tiny arrays."""
__version__ = "0.0-fake"
float16, bfloat16, float32 = "float16", "bfloat16", "float32"


class _T:
    def __init__(self, n):
        self.n = n

    def __matmul__(self, other):
        return _T(self.n)

    def numel(self):
        return self.n

    def copy_(self, other):
        return self


class cuda:
    @staticmethod
    def is_available():
        return True

    @staticmethod
    def synchronize():
        pass


def randn(*shape, device=None, dtype=None):
    return _T(shape[0] * shape[1])


def empty(n, device=None, dtype=None):
    return _T(n)


def empty_like(t):
    return _T(t.n)
'''


def test_matmul_script_takes_the_torch_path_when_cuda_is_there(tmp_path):
    (tmp_path / "torch.py").write_text(FAKE_TORCH)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "GS_BENCH_SECONDS": "0.1",
           "GPU_SHOPPER_RESULT": str(tmp_path / "r.json")}  # fmt: skip
    proc = subprocess.run([sys.executable, str(SCRIPTS / "matmul.py")], env=env, timeout=60)
    assert proc.returncode == 0
    found = parse_result((tmp_path / "r.json").read_text())
    assert found["metric"] == "tflops_bf16" and found["device"] == "gpu"
    assert set(found["extra_metrics"]) == {"tflops_fp16", "membw_gbs"}
    assert found["backend"] == "torch 0.0-fake" and found["value"] > 0


def test_a_final_run_status_written_elsewhere_never_changes_back(tmp_path):
    """benchmark cancel (owner gone) wrote 'cancelled'; a late save of the owner keeps it,
    and a cancel requested elsewhere is never un-requested."""
    from types import SimpleNamespace

    from gpushopper.core.bench.runner import BenchRunner, RunOptions, request_cancel
    from gpushopper.model.units import utcnow
    from gpushopper.state.benchstore import BenchStore

    store = BenchStore(tmp_path / "benchmarks.json")
    runner = BenchRunner(
        SimpleNamespace(clock=utcnow), store, make_provisioner=lambda host: None, log=print
    )
    wl = workloads.Workload("my-step", None, "true")
    run = runner.create(RunOptions(workload=wl, max_budget=1.0, request=None))  # type: ignore[arg-type]
    assert store.get("runs", run["id"])["status"] == "pending"
    request_cancel(store, run["id"])
    with store.transaction() as data:
        data["runs"][run["id"]]["status"] = "cancelled"
    runner.run["status"] = "running"
    runner._save()
    saved = store.get("runs", run["id"])
    assert saved["status"] == "cancelled" and saved["cancel_requested"] is True
    done = request_cancel(store, run["id"])
    assert done["status"] == "cancelled"


def test_the_cancel_poll_reads_the_file_only_when_it_changed(tmp_path, monkeypatch):
    """Once a second the owner looks for cancel_requested: a stat while nothing changed,
    a read of the file once it did, and a cancel written elsewhere is still seen."""
    from types import SimpleNamespace

    from gpushopper.core.bench.runner import BenchRunner, RunOptions, request_cancel
    from gpushopper.model.units import utcnow
    from gpushopper.state.benchstore import BenchStore

    store = BenchStore(tmp_path / "benchmarks.json")
    runner = BenchRunner(
        SimpleNamespace(clock=utcnow), store, make_provisioner=lambda host: None, log=print
    )
    wl = workloads.Workload("my-step", None, "true")
    run = runner.create(RunOptions(workload=wl, max_budget=1.0, request=None))  # type: ignore[arg-type]
    reads = []
    real_read = store.read
    monkeypatch.setattr(store, "read", lambda: reads.append(1) or real_read())
    for _ in range(5):
        runner._poll_cancel()
    assert len(reads) == 1 and not runner.stop.cancelled
    request_cancel(store, run["id"])
    runner._poll_cancel()
    assert len(reads) == 2  # the file changed: read again
    assert runner.stop.cancelled and runner.run["cancel_requested"] is True


def test_llm_throughput_through_benchmark_run_with_dollars_per_million_tokens(
    gs, vast, isolated_home, fake_llm
):
    """The whole path: the script uploaded, its settings through the job's env file, the
    server (here: this test's, the fake instance being this machine) measured, $/M tokens."""
    from gpushopper.state.benchstore import BenchStore

    # A real model id: the script's backend text ("openai-compatible " + the id) must pass
    # the store's validator too, or a whole paid run ends failed at "parse".
    _FakeLLM.model = "meta-llama/Llama-3.1-8B-Instruct"
    vast.offers.clear()
    offer = vast.add_offer(gpu_name="RTX 4090", dph_base=0.25)
    result = gs(
        [
            "benchmark", "run", "--workload", "llm-throughput@1", "--offer", f"vastai:{offer['id']}",
            "--param", f"base_url={fake_llm}", "--param", "requests=4", "--param", "concurrency=2",
            "--param", "max_tokens=5", "--param", "prompt=say 'hi' & \"bye\"",
            "--max-budget", "1", "--yes", "--json",
        ]
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    (found,) = BenchStore(isolated_home / "benchmarks.json").results().values()
    extra = found["extra_metrics"]
    assert found["metric"] == "tokens_per_s" and found["value"] > 0 and found["valid"] is True
    assert extra["output_tokens"] == 20 and extra["error_rate"] == 0
    price = found["offer"]["price_per_hour"]
    assert extra["usd_per_mtok"] == pytest.approx(price / (found["value"] * 3600) * 1e6)
    assert found["backend"] == "openai-compatible meta-llama/Llama-3.1-8B-Instruct"
    assert vast.live_instances() == []


def test_an_abandoned_runs_damaged_records_are_reported_as_its_live_ones_would_be(tmp_path):
    """``benchmark cancel`` with the owner gone reports each damaged record of the run
    (never acts on it), judged as a valid one is: one that says it was destroyed (ended, or
    failed without a destroy error) holds nothing and is not a problem; a record that is
    not even an object is the run's only when an attempt names it."""
    from gpushopper.core.bench.runner import sessions_of_run
    from gpushopper.state.store import StateStore

    bad_time = {"provider": "vastai", "created_at": "yesterday", "instance_id": 7}
    records = {
        "a00001": {**bad_time, "status": "running"},
        "a00002": {**bad_time, "status": "ended"},
        "a00003": {**bad_time, "status": "failed"},
        "a00004": {**bad_time, "status": "failed", "error": "destroy failed: 500"},
        "a00005": {**bad_time, "status": "zombie"},
        "a00006": "not an object",
        "b00001": {**bad_time, "status": "running"},  # another run's
        "b00002": None,  # nobody names it
    }
    store = StateStore(tmp_path / "state.json")
    with store.transaction() as state:
        state["sessions"].update(records)
    named = ["a00001", "a00002", "a00003", "a00004", "a00005", "a00006"]
    run = {"entries": [{"attempts": [{"session_id": sid} for sid in named]}]}
    live, damaged = sessions_of_run(store, run)
    assert live == []
    assert sorted(d.id for d in damaged) == ["a00001", "a00004", "a00005", "a00006"]


def test_an_attempts_damaged_records_make_its_teardown_unconfirmed_unless_they_say_destroyed(
    tmp_path,
):
    """The attempt's damaged records: one that may still hold an instance leaves the
    teardown unconfirmed (exit 3); one that says it was destroyed does not (as before)."""
    from types import SimpleNamespace

    from gpushopper.core.bench.runner import BenchRunner
    from gpushopper.state.store import StateStore

    bad = {"provider": "vastai", "created_at": "yesterday", "offer_id": "vastai:1"}
    store = StateStore(tmp_path / "state.json")
    with store.transaction() as state:
        state["sessions"].update(
            {
                "a00001": {**bad, "status": "running"},
                "a00002": {**bad, "status": "ended"},
                "a00003": {**bad, "status": "failed"},
                "a00004": {**bad, "status": "failed", "error": "destroy failed: 500"},
                "a00005": {**bad, "status": "running", "offer_id": "vastai:2"},  # not ours
            }
        )
    me = SimpleNamespace(host=SimpleNamespace(store=store))
    mine, damaged = BenchRunner._attempt_sessions(me, {}, set(), "vastai:1")  # type: ignore[arg-type]
    assert mine == {} and sorted(damaged) == ["a00001", "a00004"]
