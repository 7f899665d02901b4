"""`benchmark submit` and the result validator: good files import, bad ones import nothing."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path

import pytest

from gpushopper.core.bench.records import (
    cost_per_unit,
    parse_submission,
    split_workload,
    validate_result,
)
from gpushopper.model.errors import UsageError
from gpushopper.state.benchstore import BenchStore
from tests.bench_helpers import result, submit

NOW = datetime(2026, 12, 1, 14, 0, tzinfo=timezone.utc)
SEED = Path(__file__).parent / "data" / "seed-benchmark-result.json"


def stored(home: Path) -> dict:
    return BenchStore(home / "benchmarks.json").results()


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("Error: "), stderr
    return lines[0]


def test_cost_per_unit_direction():
    assert cost_per_unit(2.0, 100.0, True) == pytest.approx(0.02)  # $/h per TFLOPS
    assert cost_per_unit(2.0, 3.0, False) == pytest.approx(6.0)  # $/h x seconds per step
    assert cost_per_unit(None, 3.0, True) is None
    assert cost_per_unit(1.0, 0, True) is None
    assert cost_per_unit(1.0, math.nan, True) is None


def test_workload_names_and_versions():
    assert split_workload("gpu-matmul@1") == ("gpu-matmul", 1)
    assert split_workload("my-train") == ("my-train", None)
    for bad in ("", "@1", "x@", "x@0", "x@one", "a b", "-x", "x\x1b[2J", "x@\u00b2", "x@\u0663"):
        with pytest.raises(UsageError):
            split_workload(bad)


def test_good_file_imports_with_new_ids_and_recomputed_cost(gs, tmp_path, isolated_home):
    record = result(200.0, price=1.0, cost_per_unit=999.0, id="r-000000")
    (rid,) = submit(gs, tmp_path, record)
    assert rid != "r-000000" and rid.startswith("r-")
    (saved,) = stored(isolated_home).values()
    assert saved["id"] == rid
    assert saved["cost_per_unit"] == pytest.approx(0.005)  # never the submitted 999
    assert saved["source"] == "submit" and saved["valid"] is True
    assert saved["workload_name"] == "mm" and saved["workload_version"] is None


def test_a_list_imports_in_one_go(gs, tmp_path, isolated_home):
    ids = submit(gs, tmp_path, [result(1.0), result(2.0, workload="gpu-matmul@1")])
    assert len(set(ids)) == 2 and set(stored(isolated_home)) == set(ids)
    versions = {r["workload_version"] for r in stored(isolated_home).values()}
    assert versions == {None, 1}


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"value": "fast"}, "value: must be a finite number"),
        ({"value": -3}, "value: -3 is out of range"),
        ({"value": 0}, "value: 0 is out of range"),
        ({"value": 1e300}, "value:"),
        ({"higher_is_better": 1}, "higher_is_better: must be true or false"),
        ({"higher_is_better": "true"}, "higher_is_better: must be true or false"),
        ({"unit": ""}, "unit: must be 1-32 characters"),
        ({"unit": "x" * 33}, "unit: must be 1-32 characters"),
        ({"unit": "TFLOPS\x1b[31m"}, "unit: must not hold control characters"),
        ({"metric": "tf lops"}, "metric: must be letters"),
        ({"workload": "a b"}, "workload:"),
        ({"workload": None}, "workload: is required"),
        ({"offer": {"price_per_hour": -1}}, "offer.price_per_hour: -1 is out of range"),
        ({"offer": {"price_per_hour": 5000}}, "offer.price_per_hour: 5000 is out of range"),
        ({"offer": {"price_per_hour": True}}, "offer.price_per_hour: must be a finite number"),
        ({"offer": {"gpu_count": 1.5}}, "offer.gpu_count: must be a whole number"),
        ({"offer": {"provider": "Vast AI!"}}, "offer.provider:"),
        ({"offer": {"colour": "red"}}, "offer.colour: is not a known field"),
        ({"offer": "vastai"}, "offer: must be an object"),
        ({"hardware": {"device": "tpu"}}, "hardware.device: must be one of gpu, cpu"),
        ({"extra_metrics": {"bw": "lots"}}, "extra_metrics.bw: must be a finite number"),
        ({"valid": "yes"}, "valid: must be true or false"),
        ({"invalid_reasons": ["gpu mismatch"]}, "valid: is true while invalid_reasons"),
        ({"created_at": "yesterday"}, "created_at: must be an ISO 8601 time"),
        ({"created_at": 64}, "created_at: must be an ISO 8601 time"),
        ({"source": "magic"}, "source: must be one of"),
        ({"run_id": "../../etc"}, "run_id: must be a run id"),
        ({"colour": "red"}, "colour: is not a known field"),
        ({"value": 10**400}, "value: must be a finite number"),
    ],
)
def test_bad_result_is_refused_with_one_line_and_exit_2(gs, tmp_path, isolated_home, change, says):
    bad = {**result(), **change}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([result(5.0), bad]))  # the good first one is not imported either
    out = gs(f"benchmark submit {path}")
    assert out.exit_code == 2
    line = one_error_line(out.stderr)
    assert "result 2: " in line and says in line, line
    assert stored(isolated_home) == {}
    assert out.stdout == ""


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "no results"),
        ('"text"', "must be an object"),
        ("[" * 100000 + "]" * 100000, "nested too deeply"),
        ('{"value": NaN}', "NaN is not a JSON number"),
        ('{"value": -Infinity}', "-Infinity is not a JSON number"),
    ],
)
def test_unreadable_documents_are_usage_errors(gs, tmp_path, isolated_home, content, says):
    path = tmp_path / "bad.json"
    path.write_text(content)
    out = gs(f"benchmark submit {path} --json")
    assert out.exit_code == 2
    assert says in out.json()["error"]["message"]
    assert stored(isolated_home) == {}


def test_missing_file_is_a_usage_error(gs, tmp_path):
    out = gs(f"benchmark submit {tmp_path / 'nope.json'}")
    assert out.exit_code == 2 and "cannot read" in one_error_line(out.stderr)


def test_stdin_submission(gs, isolated_home):
    out = gs("benchmark submit -", input=json.dumps(result(7.0)))
    assert out.exit_code == 0, out.stderr
    (rid,) = out.stdout.split()
    assert stored(isolated_home)[rid]["value"] == 7.0


def test_seed_result_imports_with_tokens_per_second_and_price(gs, isolated_home):
    out = gs(f"benchmark submit {SEED} --json")
    assert out.exit_code == 0, out.stderr
    (record,) = out.json()
    assert record["workload"] == "ollama/llama3.1:8b"
    assert record["metric"] == "tokens_per_s" and record["unit"] == "tokens/s"
    assert record["value"] == pytest.approx(160.7)
    assert record["offer"]["price_per_hour"] == pytest.approx(0.08)
    assert record["offer"]["provider"] == "vastai"
    assert record["offer"]["gpu_name"] == "NVIDIA GeForce RTX 3090"
    assert record["hardware"]["vram_mb"] == 24576 and record["hardware"]["cuda"] == "12.8"
    assert record["extra_metrics"]["peak_vram_mb"] == 6350
    assert record["source"] == "seed" and record["valid"] is True
    assert record["created_at"] == "2026-02-07T10:15:00Z"
    assert record["cost_per_unit"] == pytest.approx(0.08 / 160.7)
    listed = gs("benchmark list --workload ollama/llama3.1:8b --json").json()
    assert [r["id"] for r in listed] == [record["id"]]


def test_seed_result_with_many_errors_is_stored_invalid():
    doc = json.loads(SEED.read_text())
    doc["results"]["error_rate"] = 0.25
    (record,) = parse_submission([doc, doc][:1], now=NOW)
    assert record["valid"] is False and "error rate 25%" in record["invalid_reasons"][0]


def test_seed_result_needs_its_tokens_per_second():
    doc = json.loads(SEED.read_text())
    doc["results"]["avg_tokens_per_second"] = 0
    with pytest.raises(UsageError, match="avg_tokens_per_second"):
        parse_submission(doc, now=NOW)


def test_seed_list_answer_is_accepted():
    doc = json.loads(SEED.read_text())
    records = parse_submission({"benchmarks": [doc, doc]}, now=NOW)
    assert len(records) == 2


def test_validator_output_is_plain_and_complete():
    record = validate_result(result(3.0), now=NOW)
    assert record["created_at"] == "2026-12-01T14:00:00Z"
    assert set(record["hardware"]) == {
        "gpu_name",
        "gpu_count",
        "vram_mb",
        "driver",
        "cuda",
        "device",
    }
    assert record["invalid_reasons"] == [] and record["extra_metrics"] == {}
    again = validate_result(record, now=NOW)  # a stored record passes again, unchanged
    assert again == record


def test_of_many_bad_fields_the_one_named_is_the_first_in_the_records_order():
    """The validator's steps (what was measured, extra figures, hardware, offer, timings,
    validity, origin, then the loose texts) keep one order: fixing the named field names
    the next one."""
    bad = {
        "metric": "tf lops",
        "value": 0,
        "unit": "",
        "higher_is_better": 1,
        "extra_metrics": {"bw": "lots"},
        "hardware": {"device": "tpu"},
        "offer": {"gpu_count": 1.5},
        "timings": {"boot": -1},
        "valid": "yes",
        "invalid_reasons": "slow",
        "source": "magic",
        "run_id": "../x",
        "created_at": "yesterday",
        "backend": "\x1b[2J",
        "cost_usd": -1,
        "entry": "",
        "job_id": "",
        "session_id": "",
    }
    good = result()
    raw = {**good, **bad}
    named = []
    for key in bad:
        with pytest.raises(UsageError) as exc:
            validate_result(raw, where="results[3].", now=NOW)
        named.append(str(exc.value).split(":")[0])
        if key in good:
            raw[key] = good[key]
        else:
            del raw[key]
    assert named == [
        "results[3].metric",
        "results[3].value",
        "results[3].unit",
        "results[3].higher_is_better",
        "results[3].extra_metrics.bw",
        "results[3].hardware.device",
        "results[3].offer.gpu_count",
        "results[3].timings.boot",
        "results[3].valid",
        "results[3].invalid_reasons",
        "results[3].source",
        "results[3].run_id",
        "results[3].created_at",
        "results[3].backend",
        "results[3].cost_usd",
        "results[3].entry",
        "results[3].job_id",
        "results[3].session_id",
    ]
    assert validate_result(raw, now=NOW)["offer"] == {**good["offer"], "dlperf": None}
