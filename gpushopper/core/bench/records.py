"""Benchmark result records: the one validator every result passes before it is stored
(``benchmark submit`` today, the runner's own measurements too), cost per unit of work,
and the import of the seed service's result JSON.

A record that reaches the benchmark file is plain data: known keys only, finite numbers in
range, short strings without control characters, booleans that really are booleans.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from datetime import datetime

from gpushopper.model.errors import UsageError
from gpushopper.model.jsontypes import JSONObject, JSONValue

# Patterns, compiled on first use (a query needs only the first; compiling all costs 1 ms).
WORKLOAD_RE = r"[A-Za-z0-9][A-Za-z0-9._:/+-]{0,79}"
METRIC_RE = r"[A-Za-z0-9][A-Za-z0-9_./%-]{0,63}"
PROVIDER_RE = r"[a-z0-9][a-z0-9_-]{0,31}"
RUN_ID_RE = r"b-[0-9a-f]{6,32}"
_CONTROL = r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200b-\u200f\u202a-\u202e]"


def _full(pattern: str, text: str) -> bool:
    return re.fullmatch(pattern, text) is not None  # re caches compiled patterns


SOURCES = ("run", "submit", "seed")
DEVICES = ("gpu", "cpu")
MAX_VALUE = 1e15  # no measurement of ours is bigger; a bigger one is a unit mistake
MAX_PRICE = 1000.0  # USD/h: more than any rentable machine
MAX_EXTRA = 32  # extra metrics per result
MAX_TEXT = 200
MAX_BACKEND = 80  # what parse_result (workloads.PLAIN_RE) lets a workload's result say
VERSION_MAX = 9999

TOP_KEYS = {
    "id", "workload", "workload_name", "workload_version", "metric", "value", "unit",
    "higher_is_better", "extra_metrics", "backend", "hardware", "offer", "timings", "cost_usd",
    "cost_per_unit", "valid", "invalid_reasons", "run_id", "entry", "job_id", "session_id",
    "source", "created_at",
}  # fmt: skip
REQUIRED = ("workload", "metric", "value", "unit", "higher_is_better")
HARDWARE_KEYS = {"gpu_name", "gpu_count", "vram_mb", "driver", "cuda", "device"}
OFFER_KEYS = {
    "provider", "offer_id", "machine_id", "gpu_name", "gpu_count", "price_per_hour", "dlperf",
}  # fmt: skip


def per_unit(higher_is_better: bool) -> Callable[[float, float], float]:
    """The one cost formula, as ``f(price, value)``: ``price / value`` when more is better
    (TFLOPS, tokens/s), ``price * value`` when less is (seconds per step). The queries
    apply it to thousands of checked rows at once; cost_per_unit checks one."""
    return operator.truediv if higher_is_better else operator.mul


def cost_per_unit(
    price_per_hour: JSONValue, value: JSONValue, higher_is_better: bool
) -> float | None:
    """USD per hour per unit of work (see per_unit). None when unknown."""
    if not _number(price_per_hour) or not _number(value) or price_per_hour < 0 or value <= 0:
        return None
    return per_unit(higher_is_better)(price_per_hour, value)


def split_workload(workload: str) -> tuple[str, int | None]:
    """``gpu-matmul@1`` -> (``gpu-matmul``, 1); a custom ``NAME`` -> (NAME, None)."""
    name, at, version = workload.partition("@")
    if not _full(WORKLOAD_RE, name):
        raise UsageError(
            f"workload name {workload[:60]!r} must be letters, digits and ._:/+- "
            "(at most 80), optionally followed by @VERSION"
        )
    if not at:
        return name, None
    # ASCII digits only: str.isdigit() also passes "²", which int() refuses (a traceback)
    if not (version.isascii() and version.isdigit()) or not 1 <= int(version) <= VERSION_MAX:
        raise UsageError(f"workload version in {workload[:60]!r} must be a number 1-{VERSION_MAX}")
    return name, int(version)


# -- the validator ------------------------------------------------------------------------------
class _Check:
    """Field checks that name the offending key: ``results[2].offer.price_per_hour: ...``."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, key: str, why: str) -> UsageError:
        return UsageError(f"{self.where}{key}: {why}")

    def text(
        self, key: str, value: JSONValue, *, optional: bool = True, max_len: int = MAX_TEXT
    ) -> JSONValue:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise self.fail(key, f"must be a string, not {_kind(value)}")
        value = str(value)
        if not value.strip() or len(value) > max_len:
            raise self.fail(key, f"must be 1-{max_len} characters")
        if re.search(_CONTROL, value):
            raise self.fail(key, "must not hold control characters")
        return value

    def number(
        self,
        key: str,
        value: JSONValue,
        *,
        low: float,
        high: float,
        low_open: bool = False,
        optional: bool = True,
        integer: bool = False,
    ) -> JSONValue:
        if value is None and optional:
            return None
        if not _number(value):
            raise self.fail(key, f"must be a finite number, not {_kind(value)}")
        if integer and float(value) != int(value):
            raise self.fail(key, "must be a whole number")
        if value < low or (low_open and value == low) or value > high:
            bound = "above" if low_open else "at least"
            raise self.fail(key, f"{value!r} is out of range ({bound} {low:g}, at most {high:g})")
        return int(value) if integer else float(value)

    def flag(self, key: str, value: JSONValue) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, not {_kind(value)}")
        return value

    def obj(self, key: str, value: JSONValue, known: set[str] | None) -> JSONObject:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(key, f"must be an object, not {_kind(value)}")
        if known is not None:
            unknown = sorted(str(k) for k in value if k not in known)
            if unknown:
                raise self.fail(f"{key}.{unknown[0][:40]}", "is not a known field")
        return value


def validate_result(
    raw: JSONValue, *, where: str = "", now: datetime, source: str = "submit"
) -> JSONObject:
    """A clean result record from ``raw``, or a UsageError naming the first bad field.

    Ids are not taken from the input (``assign_id`` gives one); ``cost_per_unit`` is
    recomputed from the offer's price and the value, never trusted. The fields are
    checked in the order of the record (so the first bad one is the one named), each
    part by its own step below.
    """
    from gpushopper.model.units import iso

    check = _Check(where)
    record = _known_fields(check, raw)
    measured = _measurement(check, record)
    extra = _figures(
        check, "extra_metrics", record.get("extra_metrics"), noun="metric", most=MAX_EXTRA
    )
    hardware = _hardware(check, record.get("hardware"))
    offer = _offer(check, record.get("offer"))
    timings = _figures(check, "timings", record.get("timings"), noun="timing", low=0, high=1e7)
    valid, reasons = _validity(check, record)
    src, run_id, created = _origin(check, record, source, now)
    return {
        **measured,
        "extra_metrics": extra,
        "backend": check.text("backend", record.get("backend"), max_len=MAX_BACKEND),
        "hardware": hardware,
        "offer": offer,
        "timings": timings,
        "cost_usd": check.number("cost_usd", record.get("cost_usd"), low=0, high=1e6),
        "cost_per_unit": cost_per_unit(
            offer["price_per_hour"], measured["value"], measured["higher_is_better"]
        ),
        "valid": valid,
        "invalid_reasons": reasons,
        "run_id": run_id,
        "entry": check.text("entry", record.get("entry"), max_len=120),
        "job_id": check.text("job_id", record.get("job_id"), max_len=40),
        "session_id": check.text("session_id", record.get("session_id"), max_len=40),
        "source": src,
        "created_at": iso(created),
    }


def _known_fields(check: _Check, raw: JSONValue) -> JSONObject:
    """``raw`` as an object of known fields, the required ones present."""
    if not isinstance(raw, dict):
        raise UsageError(f"{check.where or 'result'}: must be an object, not {_kind(raw)}")
    unknown = sorted(str(k) for k in raw if k not in TOP_KEYS)
    if unknown:
        raise check.fail(unknown[0][:40], "is not a known field")
    missing = [k for k in REQUIRED if raw.get(k) is None]
    if missing:
        raise check.fail(missing[0], "is required")
    return raw


def _measurement(check: _Check, record: JSONObject) -> JSONObject:
    """What was measured: the workload (and its name and version), metric, value, unit
    and direction, in the record's order."""
    workload = check.text("workload", record["workload"], optional=False, max_len=90)
    try:
        name, version = split_workload(workload)
    except UsageError as exc:
        raise check.fail("workload", str(exc)) from None
    metric = check.text("metric", record["metric"], optional=False, max_len=64)
    if not _full(METRIC_RE, metric):
        raise check.fail("metric", "must be letters, digits and _./%- (at most 64)")
    value = check.number(
        "value", record["value"], low=0, high=MAX_VALUE, low_open=True, optional=False
    )
    return {
        "workload": workload,
        "workload_name": name,
        "workload_version": version,
        "metric": metric,
        "value": value,
        "unit": check.text("unit", record["unit"], optional=False, max_len=32),
        "higher_is_better": check.flag("higher_is_better", record["higher_is_better"]),
    }


def _figures(
    check: _Check,
    key: str,
    value: JSONValue,
    *,
    noun: str,
    low: float = -MAX_VALUE,
    high: float = MAX_VALUE,
    most: int | None = None,
) -> JSONObject:
    """An object of named figures (``extra_metrics``, ``timings``): at most ``most`` of
    them, each name a metric-like name, each figure a number in [low, high]."""
    given = check.obj(key, value, None)
    if most is not None and len(given) > most:
        raise check.fail(key, f"at most {most} figures")
    figures = {}
    for name, figure in given.items():
        if not isinstance(name, str) or not _full(METRIC_RE, name):
            raise check.fail(key, f"{str(name)[:40]!r} is not a {noun} name")
        figures[name] = check.number(f"{key}.{name}", figure, low=low, high=high)
    return figures


def _hardware(check: _Check, value: JSONValue) -> JSONObject:
    """What the machine said it is (all optional)."""
    given = check.obj("hardware", value, HARDWARE_KEYS)
    device = given.get("device")
    if device is not None and device not in DEVICES:
        raise check.fail("hardware.device", f"must be one of {', '.join(DEVICES)}")
    return {
        "gpu_name": check.text("hardware.gpu_name", given.get("gpu_name"), max_len=80),
        "gpu_count": check.number(
            "hardware.gpu_count", given.get("gpu_count"), low=0, high=64, integer=True
        ),
        "vram_mb": check.number(
            "hardware.vram_mb", given.get("vram_mb"), low=0, high=10_000_000, integer=True
        ),
        "driver": check.text("hardware.driver", given.get("driver"), max_len=40),
        "cuda": check.text("hardware.cuda", given.get("cuda"), max_len=40),
        "device": device,
    }


def _offer(check: _Check, value: JSONValue) -> JSONObject:
    """The offer that was rented (all optional): its price makes the cost per unit."""
    given = check.obj("offer", value, OFFER_KEYS)
    provider = check.text("offer.provider", given.get("provider"), max_len=32)
    if provider is not None and not _full(PROVIDER_RE, provider):
        raise check.fail("offer.provider", "must be a provider name such as vastai")
    return {
        "provider": provider,
        "offer_id": check.text("offer.offer_id", given.get("offer_id"), max_len=100),
        "machine_id": check.text("offer.machine_id", given.get("machine_id"), max_len=100),
        "gpu_name": check.text("offer.gpu_name", given.get("gpu_name"), max_len=80),
        "gpu_count": check.number(
            "offer.gpu_count", given.get("gpu_count"), low=1, high=64, integer=True
        ),
        "price_per_hour": check.number(
            "offer.price_per_hour", given.get("price_per_hour"), low=0, high=MAX_PRICE
        ),
        "dlperf": check.number("offer.dlperf", given.get("dlperf"), low=0, high=MAX_VALUE),
    }


def _validity(check: _Check, record: JSONObject) -> tuple[bool, list[JSONValue]]:
    """(valid, invalid_reasons): valid unless said otherwise; reasons only when invalid."""
    valid = True if record.get("valid") is None else check.flag("valid", record["valid"])
    given = record.get("invalid_reasons") or []
    if not isinstance(given, list) or len(given) > 20:
        raise check.fail("invalid_reasons", "must be a list of at most 20 strings")
    reasons = [check.text(f"invalid_reasons[{i}]", r, optional=False) for i, r in enumerate(given)]
    if reasons and valid:
        raise check.fail("valid", "is true while invalid_reasons are given")
    return valid, reasons


def _origin(
    check: _Check, record: JSONObject, source: str, now: datetime
) -> tuple[str, JSONValue, datetime]:
    """(source, run_id, created_at): where the result came from and when (``now`` when
    the record does not say)."""
    from gpushopper.model.units import parse_iso

    src = record.get("source") or source
    if src not in SOURCES:
        raise check.fail("source", f"must be one of {', '.join(SOURCES)}")
    run_id = check.text("run_id", record.get("run_id"), max_len=40)
    if run_id is not None and not _full(RUN_ID_RE, run_id):
        raise check.fail("run_id", "must be a run id such as b-1a2b3c")
    created_text = record.get("created_at")
    if created_text is None:
        return src, run_id, now
    text = check.text("created_at", created_text, optional=False, max_len=40)
    try:
        parsed = parse_iso(text)  # the checked text: a bare number is text too, not a time
    except ValueError:
        parsed = None
    if parsed is None:
        raise check.fail("created_at", "must be an ISO 8601 time such as 2026-12-01T14:00:00Z")
    return src, run_id, parsed


def assign_id(record: JSONObject, taken: JSONValue) -> JSONObject:
    """The record with a fresh ``r-xxxxxx`` id not in ``taken`` (first in its keys)."""
    import os

    while True:
        rid = f"r-{os.urandom(3).hex()}"
        if rid not in taken:
            return {"id": rid, **{k: v for k, v in record.items() if k != "id"}}


# -- the seed service's result JSON -------------------------------------------------------------
def is_seed(raw: JSONValue) -> bool:
    """The seed's ``BenchmarkResult`` (cloud-gpu-shopper, internal/benchmark/models.go):
    a ``results`` object with ``avg_tokens_per_second`` and a ``hardware.gpu_name``."""
    return (
        isinstance(raw, dict)
        and isinstance(raw.get("results"), dict)
        and "avg_tokens_per_second" in raw["results"]
        and isinstance(raw.get("hardware"), dict)
    )


def from_seed(raw: JSONObject, *, where: str, now: datetime) -> JSONObject:
    """Our record for one seed result: workload ``ollama/MODEL``, metric ``tokens_per_s``
    (the seed's ``avg_tokens_per_second``), its price per hour and GPU; valid when its error
    rate is under 10%. Everything then passes :func:`validate_result`."""
    check = _Check(where)
    hardware = check.obj("hardware", raw.get("hardware"), None)
    model = check.obj("model", raw.get("model"), None)
    results = check.obj("results", raw.get("results"), None)
    stats = check.obj("gpu_stats", raw.get("gpu_stats"), None)
    model_name = check.text("model.name", model.get("name"), optional=False, max_len=70)
    if not _full(WORKLOAD_RE, f"ollama/{model_name}"):
        raise check.fail("model.name", "must be letters, digits and ._:/+-")
    tps = check.number(
        "results.avg_tokens_per_second",
        results.get("avg_tokens_per_second"),
        low=0,
        high=MAX_VALUE,
        low_open=True,
        optional=False,
    )
    error_rate = check.number("results.error_rate", results.get("error_rate"), low=0, high=1)
    price = check.number("price_per_hour", raw.get("price_per_hour"), low=0, high=MAX_PRICE)
    if price == 0:
        price = None  # the seed writes 0 for "not known"
    provider = raw.get("provider")
    if isinstance(provider, str):
        provider = provider.strip().lower().replace(".", "").replace(" ", "") or None
    extra: JSONObject = {}
    for ours, theirs, block in (
        ("p50_tokens_per_s", "p50_tokens_per_second", results),
        ("avg_ttft_ms", "avg_ttft_ms", results),
        ("error_rate", "error_rate", results),
        ("total_tokens", "total_tokens", results),
        ("duration_s", "duration_seconds", results),
        ("peak_vram_mb", "max_memory_used_mib", stats),
    ):
        figure = block.get(theirs)
        if _number(figure) and figure:
            extra[ours] = figure
    reasons = []
    if error_rate is not None and error_rate >= 0.1:
        reasons.append(f"error rate {error_rate:.0%} (10% or more)")
    gpu_name = hardware.get("gpu_name")
    record = {
        "workload": f"ollama/{model_name}",
        "metric": "tokens_per_s",
        "value": tps,
        "unit": "tokens/s",
        "higher_is_better": True,
        "extra_metrics": extra,
        "hardware": {
            "gpu_name": gpu_name,
            "gpu_count": hardware.get("gpu_count") or None,
            "vram_mb": hardware.get("gpu_memory_mib") or None,
            "driver": hardware.get("driver_version") or None,
            "cuda": hardware.get("cuda_version") or None,
            "device": "gpu",
        },
        "offer": {
            "provider": provider,
            "gpu_name": gpu_name,
            "gpu_count": hardware.get("gpu_count") or None,
            "price_per_hour": price,
        },
        "valid": not reasons,
        "invalid_reasons": reasons,
        "source": "seed",
    }
    stamp = raw.get("timestamp")
    if isinstance(stamp, str) and stamp and not stamp.startswith("0001-"):
        record["created_at"] = stamp
    return validate_result(record, where=where, now=now, source="seed")


def parse_submission(doc: JSONValue, *, now: datetime) -> list[JSONObject]:
    """Every result in a submitted document (one object, a list, or the seed's shape),
    validated; the first bad one raises and nothing is imported."""
    if isinstance(doc, dict) and isinstance(doc.get("benchmarks"), list):
        doc = doc["benchmarks"]  # the seed's list answer
    items = doc if isinstance(doc, list) else [doc]
    if not items:
        raise UsageError("the file holds no results (an empty list)")
    if len(items) > 100_000:
        raise UsageError(f"{len(items)} results in one file; submit at most 100000 at a time")
    out = []
    for i, item in enumerate(items):
        where = f"result {i + 1}: " if isinstance(doc, list) else ""
        if is_seed(item):
            out.append(from_seed(item, where=where, now=now))
        else:
            out.append(validate_result(item, where=where, now=now, source="submit"))
    return out


def _number(value: JSONValue) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too big for a float: no measurement of ours
        return False


def _kind(value: JSONValue) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (int, float)):
        return f"{value!r}"
    if isinstance(value, dict):
        return "an object"
    return "a list" if isinstance(value, list) else type(value).__name__
