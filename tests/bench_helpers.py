"""Helpers for the benchmark query tests: results written the way `submit` stores them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def result(
    value: float = 100.0,
    *,
    gpu: str = "RTX 4090",
    price: float | None = 0.5,
    provider: str = "vastai",
    workload: str = "mm",
    machine: str | None = None,
    offer_id: str | None = None,
    higher: bool = True,
    count: int = 1,
    **more: Any,
) -> dict[str, Any]:
    """One submittable result of ``workload`` (metric ``tflops``)."""
    return {
        "workload": workload,
        "metric": "tflops",
        "value": value,
        "unit": "TFLOPS" if higher else "s/step",
        "higher_is_better": higher,
        "offer": {
            "provider": provider,
            "offer_id": offer_id,
            "machine_id": machine,
            "gpu_name": gpu,
            "gpu_count": count,
            "price_per_hour": price,
        },
        **more,
    }


def submit(gs: Any, tmp_path: Path, records: Any, name: str = "results.json") -> list[str]:
    path = tmp_path / name
    path.write_text(json.dumps(records))
    out = gs(f"benchmark submit {path} --json")
    assert out.exit_code == 0, out.stderr
    return [r["id"] for r in out.json()]
