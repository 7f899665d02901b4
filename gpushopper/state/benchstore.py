"""Benchmark records: results, runs and schedules, in their own locked JSON file.

The same discipline as the state file (``StateStore``): a file lock shared by every
process, atomic fsynced replaces, a damaged file reported and backed up, never reset.
A separate file so that 10,000 stored results never slow a session command down.

Layout (``schema_version`` 1)::

    {"schema_version": 1,
     "results":   {RESULT_ID: {...}},   # one measurement of one offer
     "runs":      {RUN_ID: {...}},      # one `benchmark run`, its budget and entries
     "schedules": {NAME: {...}}}        # `benchmark schedule add`
"""

from __future__ import annotations

import os
from typing import Any

from gpushopper.state.store import StateStore, _Damaged

BENCH_SCHEMA_VERSION = 1
SECTIONS = ("results", "runs", "schedules")


def empty_bench() -> dict[str, Any]:
    return {"schema_version": BENCH_SCHEMA_VERSION, **{name: {} for name in SECTIONS}}


class BenchStore(StateStore):
    """``paths.data_dir / "benchmarks.json"``; every section is an object keyed by id."""

    what = "benchmark file"
    schema_version = BENCH_SCHEMA_VERSION

    def _empty(self) -> dict[str, Any]:
        return empty_bench()

    def _upgrade(self, data: dict[str, Any]) -> dict[str, Any]:
        version = data.get("schema_version", BENCH_SCHEMA_VERSION)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise _Damaged(f"invalid schema_version {version!r}")
        if version > BENCH_SCHEMA_VERSION:
            from gpushopper.model.errors import StateError

            raise StateError(
                f"{self.what} {self.path} has schema version {version}, newer than this "
                f"gpu-shopper understands ({BENCH_SCHEMA_VERSION}); upgrade gpu-shopper"
            )
        for name in SECTIONS:
            data.setdefault(name, {})
            if not isinstance(data[name], dict):
                raise _Damaged(f"{name!r} is {type(data[name]).__name__}, not an object")
        return data

    def install_id(self) -> str:  # pragma: no cover - the state file owns the install id
        raise NotImplementedError("the install id lives in the state file")

    # -- sections ---------------------------------------------------------------------------
    def section(self, name: str) -> dict[str, dict[str, Any]]:
        """A snapshot of one section (records that are not objects are skipped)."""
        items = self.read()[name]
        return {k: v for k, v in items.items() if isinstance(v, dict)}

    def put(self, name: str, key: str, record: dict[str, Any]) -> None:
        with self.transaction() as data:
            data[name][key] = record

    def get(self, name: str, key: str) -> dict[str, Any] | None:
        record = self.read()[name].get(key)
        return record if isinstance(record, dict) else None

    def delete(self, name: str, key: str) -> bool:
        with self.transaction() as data:
            return data[name].pop(key, None) is not None

    def new_id(self, name: str, prefix: str) -> str:
        """``PREFIX-<6 hex>`` unused in section ``name`` (e.g. ``r-1a2b3c``, ``b-...``)."""
        existing = self.read()[name]
        while True:
            candidate = f"{prefix}-{os.urandom(3).hex()}"
            if candidate not in existing:
                return candidate

    # -- shortcuts --------------------------------------------------------------------------
    def results(self) -> dict[str, dict[str, Any]]:
        return self.section("results")

    def runs(self) -> dict[str, dict[str, Any]]:
        return self.section("runs")

    def schedules(self) -> dict[str, dict[str, Any]]:
        return self.section("schedules")
