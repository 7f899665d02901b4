"""The benchmark file's query index: kept in step with every write, never trusted over
the file (a stale, damaged or foreign index is rebuilt from it)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gpushopper.model.errors import StateError
from gpushopper.state.benchstore import ROW_KEYS, BenchStore


def record(value: float, gpu: str = "RTX 4090") -> dict:
    return {
        "workload": "mm",
        "metric": "tflops",
        "value": value,
        "unit": "TFLOPS",
        "higher_is_better": True,
        "valid": True,
        "offer": {"provider": "vastai", "gpu_name": gpu, "price_per_hour": 0.5},
        "hardware": {"gpu_name": "NVIDIA " + gpu},
        "extra_metrics": {"peak_vram_mb": 1000},
        "created_at": "2026-12-01T00:00:00Z",
    }


@pytest.fixture
def store(tmp_path: Path) -> BenchStore:
    store = BenchStore(tmp_path / "benchmarks.json")
    store.put("results", "r-000001", record(1.0))
    store.put("results", "r-000002", record(2.0, gpu="A100"))
    return store


def values(store: BenchStore) -> list:
    return store.table().col("value")


def test_every_write_keeps_the_index_in_step(store):
    assert store.index_path.exists()
    assert oct(os.stat(store.index_path).st_mode & 0o777) == "0o600"
    table = store.table()
    assert table.n == 2 and table.col("value") == [1.0, 2.0]
    row = table.row(1)
    assert list(row) == list(ROW_KEYS)
    assert row["id"] == "r-000002" and row["gpu_name"] == "A100"
    assert row["measured_gpu"] == "NVIDIA A100" and row["peak_vram_mb"] == 1000
    store.delete("results", "r-000001")
    assert values(store) == [2.0]


def test_a_file_changed_behind_the_index_is_read_from_the_file(store):
    data = json.loads(store.path.read_text())
    data["results"]["r-000001"]["value"] = 42.0  # an edit by hand: the index is now stale
    store.path.write_text(json.dumps(data))
    assert values(store) == [42.0, 2.0]
    assert values(store) == [42.0, 2.0]  # and the index was rewritten to match


@pytest.mark.parametrize(
    "damage",
    [
        b"",
        b"{not json\n",
        b'{"version": 2}\n',
        b"[]\n" * 3,
    ],
)
def test_a_damaged_index_is_rebuilt(store, damage):
    store.index_path.write_bytes(damage)
    assert values(store) == [1.0, 2.0]
    assert store.table().row(0)["id"] == "r-000001"


def test_a_cut_short_index_is_rebuilt(store):
    raw = store.index_path.read_bytes()
    store.index_path.write_bytes(raw[: len(raw) // 2])
    # the identity still matches, but the index is cut: it is rebuilt, or its rows fall back
    assert values(store) == [1.0, 2.0]
    assert [store.table().row(i)["id"] for i in range(2)] == ["r-000001", "r-000002"]


def test_a_bad_row_line_falls_back_to_the_columns(store):
    lines = store.index_path.read_bytes().split(b"\n")
    # the last row line, the same length (the index still matches) but not ROW_KEYS long
    lines[-2] = b"[" + b" " * (len(lines[-2]) - 2) + b"]"
    store.index_path.write_bytes(b"\n".join(lines))
    table = store.table()
    assert table.row(1)["id"] == "r-000002"  # from the columns
    assert table.row(0)["id"] == "r-000001"


def test_a_damaged_benchmark_file_is_reported_not_hidden_by_the_index(store):
    store.path.write_text("{damaged")
    with pytest.raises(StateError, match="damaged"):
        store.table()


def test_no_file_is_no_results(tmp_path: Path):
    assert BenchStore(tmp_path / "benchmarks.json").table().n == 0


def test_nested_values_never_reach_a_row(store):
    bad = record(3.0)
    bad["offer"]["gpu_name"] = {"nested": "object"}
    store.put("results", "r-000003", bad)
    assert store.table().row(2)["gpu_name"] is None


def test_many_rows_are_read_at_once_and_the_same(tmp_path: Path):
    """``rows()`` of many results reads all row lines in one piece: the same rows as one
    by one, and a damaged line still falls back to the columns."""
    store = BenchStore(tmp_path / "benchmarks.json")
    with store.transaction() as data:
        for i in range(100):
            data["results"][f"r-{i:06d}"] = record(float(i), gpu=f"GPU {i % 7}")
    table = store.table()
    one_by_one = [table.row(i) for i in range(100)]
    assert table._all_lines() is not None  # the bulk path is the one taken
    assert store.table().rows(range(100)) == one_by_one
    assert store.table().rows([99, 3]) == [one_by_one[99], one_by_one[3]]
    lines = store.index_path.read_bytes().split(b"\n")
    lines[-2] = b"[" + b" " * (len(lines[-2]) - 2) + b"]"  # same length, not a row
    store.index_path.write_bytes(b"\n".join(lines))
    damaged = store.table()
    assert damaged._all_lines() is not None
    assert damaged.rows(range(100)) == one_by_one  # that row from the columns
    lines[-2] = b"[1,2" + b" " * (len(lines[-2]) - 4)  # no longer JSON: line by line
    store.index_path.write_bytes(b"\n".join(lines))
    assert store.table()._all_lines() is None
    assert store.table().rows(range(100)) == one_by_one


def test_a_nested_value_in_an_edited_row_line_reads_as_none(store):
    raw = store.index_path.read_bytes()
    body_start = raw.index(b"\n") + 1
    last = raw.rindex(b'"RTX 4090"', body_start)  # in the first row line (the columns precede)
    assert raw.count(b'"RTX 4090"') >= 2
    edited = raw[:last] + b'{"a":"bc"}' + raw[last + len(b'"RTX 4090"') :]
    store.index_path.write_bytes(edited)
    table = store.table()
    assert table.row(0)["gpu_name"] is None
    assert table.rows(range(2))[0]["gpu_name"] is None
