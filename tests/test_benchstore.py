"""The benchmark file keeps the state file's discipline: locked, atomic, never reset."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from gpushopper.model.errors import StateError
from gpushopper.state.benchstore import BenchStore


def test_round_trip_and_mode(tmp_path: Path) -> None:
    store = BenchStore(tmp_path / "benchmarks.json")
    assert store.results() == {} and store.runs() == {} and store.schedules() == {}
    rid = store.new_id("results", "r")
    store.put("results", rid, {"id": rid, "value": 1.5})
    assert store.get("results", rid) == {"id": rid, "value": 1.5}
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert store.delete("results", rid) and not store.delete("results", rid)


@pytest.mark.parametrize(
    "content",
    ["{not json", "[]", '{"results": []}', '{"schema_version": "x"}', '{"runs": 3}'],
)
def test_damaged_file_is_never_reset(tmp_path: Path, content: str) -> None:
    path = tmp_path / "benchmarks.json"
    path.write_text(content)
    store = BenchStore(path)
    with pytest.raises(StateError, match="benchmark file .* is damaged"):
        store.results()
    with pytest.raises(StateError):
        store.put("results", "r-1", {"id": "r-1"})
    assert path.read_text() == content
    assert list(tmp_path.glob("benchmarks.json.corrupt-*"))


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "benchmarks.json"
    path.write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(StateError, match="newer than this"):
        BenchStore(path).runs()


def test_linked_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_text("{}")
    (tmp_path / "benchmarks.json").symlink_to(target)
    with pytest.raises(StateError):
        BenchStore(tmp_path / "benchmarks.json").results()
