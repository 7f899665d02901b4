"""Benchmark workloads: what runs on the instance, and how its answer is read back.

Every workload is an ordinary job command (``core/jobs.py``) wrapped in a few shell lines
that first record the hardware (``nvidia-smi`` query and its banner, for the CUDA version)
under ``out/`` and export ``GPU_SHOPPER_RESULT``, the file the workload writes its one
JSON object to. ``out/`` comes home like every job's results; :func:`read_outcome` then
validates what arrived, strictly, before anything of it reaches a record.

Built-ins are versioned (``gpu-matmul@1``): a result records the version, and a changed
measurement gets a new one. A custom workload is a plain NAME with ``--command CMD``.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from gpushopper.core.bench.records import MAX_BACKEND
from gpushopper.model.errors import UsageError
from gpushopper.model.jsontypes import JSONObject, JSONValue
from gpushopper.model.session import Session

SCRIPTS = Path(__file__).resolve().parent / "scripts"
RESULT_FILE = "gs-result.json"
HARDWARE_FILE = "gs-hardware.csv"
SMI_FILE = "gs-nvidia-smi.txt"
HARDWARE_QUERY = "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader"
MAX_RESULT_BYTES = 64 * 1024

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
METRIC_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.%/-]{0,63}")
UNIT_RE = re.compile(r"[A-Za-z0-9$%/()._ -]{1,32}")
PLAIN_RE = re.compile(rf"[A-Za-z0-9 +@:;,._()/-]{{1,{MAX_BACKEND}}}")  # the store's limit
RESULT_KEYS = {"metric", "value", "unit", "higher_is_better"}
OPTIONAL_KEYS = {"extra_metrics", "device", "backend"}

# name -> (version, {param: (environment name, default)})
BUILTINS: dict[str, tuple[int, dict[str, tuple[str, str]]]] = {
    "gpu-matmul": (1, {"seconds": ("GS_BENCH_SECONDS", "3")}),
    "transfer": (1, {"mb": ("GS_BENCH_MB", "100")}),
    "cold-start": (1, {}),
    "llm-throughput": (
        1,
        {
            "base_url": ("GS_LLM_BASE_URL", "http://127.0.0.1:8000/v1"),
            "model": ("GS_LLM_MODEL", ""),
            "concurrency": ("GS_LLM_CONCURRENCY", "8"),
            "requests": ("GS_LLM_REQUESTS", "32"),
            "max_tokens": ("GS_LLM_MAX_TOKENS", "256"),
            "prompt": ("GS_LLM_PROMPT", ""),
            "server_cmd": ("GS_LLM_SERVER_CMD", ""),
            "wait_s": ("GS_LLM_WAIT_S", "900"),
        },
    ),
    "flux-lora": (
        1,
        {
            "steps": ("GS_FLUX_STEPS", "10"),
            "toolkit": ("GS_FLUX_TOOLKIT", "/app/ai-toolkit"),
            "workdir": ("", "examples/flux-lora"),
        },
    ),
}
NUMERIC_PARAMS = {"seconds", "mb", "concurrency", "requests", "max_tokens", "wait_s", "steps"}

# What the instance runs before the workload itself (in the job's working directory).
PRELUDE = f"""export GPU_SHOPPER_RESULT="$PWD/out/{RESULT_FILE}"
mkdir -p out
if command -v nvidia-smi >/dev/null 2>&1; then
  {HARDWARE_QUERY} > out/{HARDWARE_FILE} 2>/dev/null
  nvidia-smi 2>/dev/null | head -n 20 > out/{SMI_FILE}
fi
"""


@dataclass
class Workload:
    name: str
    version: int | None
    inner: str  # the shell the workload runs, after the prelude
    env: dict[str, str] = field(default_factory=dict)
    uploads: list[tuple[str, str]] = field(default_factory=list)
    workdir: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    command_text: str | None = None  # the custom --command, as given

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}" if self.version is not None else self.name

    def command(self) -> list[str]:
        return ["sh", "-c", PRELUDE + self.inner]


def split_name(text: str) -> tuple[str, int | None]:
    """``gpu-matmul@1`` -> (gpu-matmul, 1); ``gpu-matmul`` -> (gpu-matmul, its version);
    a custom NAME -> (NAME, None). Bad names are a UsageError."""
    name, sep, version = text.partition("@")
    if not NAME_RE.fullmatch(name):
        raise UsageError(
            f"--workload {text[:80]!r}: a name is letters, digits, '.', '_' or '-' "
            "(at most 64), e.g. gpu-matmul@1 or my-train-step"
        )
    if name not in BUILTINS:
        if sep:
            raise UsageError(
                f"--workload {text[:80]!r}: only built-in workloads have versions "
                f"({', '.join(sorted(BUILTINS))})"
            )
        return name, None
    current = BUILTINS[name][0]
    if sep and version != str(current):
        raise UsageError(f"--workload {text[:80]!r}: {name} has version {current} only")
    return name, current


def parse_params(raw: tuple[str, ...] | list[str], name: str) -> dict[str, str]:
    known = BUILTINS.get(name, (0, {}))[1]
    out: dict[str, str] = {}
    for item in raw:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--param {item[:80]!r}: write it as KEY=VALUE")
        if key not in known:
            choices = ", ".join(sorted(known)) or "none"
            raise UsageError(f"--param {key[:40]!r}: {name} takes {choices}")
        if len(value) > 500 or any(ord(c) < 32 for c in value):
            raise UsageError(f"--param {key}: at most 500 characters, no control characters")
        if key in NUMERIC_PARAMS:
            try:
                number = float(value)
            except ValueError:
                number = -1.0
            if not math.isfinite(number) or number <= 0:
                raise UsageError(f"--param {key}={value[:40]!r}: a positive number")
        out[key] = value
    return out


def resolve(
    text: str,
    command: str | None,
    params: tuple[str, ...] | list[str] = (),
    workdir: str | None = None,
    scratch: Path | None = None,
) -> Workload:
    """The workload for ``--workload TEXT [--command CMD] [--param K=V]... [--workdir DIR]``.

    ``scratch`` is a private folder for what the workload makes locally (transfer's payload).
    """
    name, version = split_name(text)
    chosen = parse_params(params, name)
    if version is None:
        if not command or not command.strip():
            raise UsageError(
                f"--workload {name} is not a built-in ({', '.join(sorted(BUILTINS))}): "
                "give its --command CMD"
            )
        if "\x00" in command:
            raise UsageError("--command: no NUL characters")
        return Workload(name, None, command, workdir=workdir, command_text=command)
    if command:
        raise UsageError(f"--workload {name} is built in: it takes no --command")
    defaults = BUILTINS[name][1]
    env = {
        var: chosen.get(key, default)
        for key, (var, default) in defaults.items()
        if var and chosen.get(key, default)
    }
    uploads = [(str(SCRIPTS), "gs-bench")]
    if name == "gpu-matmul":
        inner = "python3 gs-bench/matmul.py"
    elif name == "llm-throughput":
        inner = "python3 gs-bench/llm.py"
    elif name == "flux-lora":
        workdir = chosen.get("workdir") or workdir or defaults["workdir"][1]
        if not (Path(workdir) / "config.yaml").is_file():
            raise UsageError(
                f"flux-lora: {workdir}/config.yaml not found (run it from the repository, "
                "or give --param workdir=examples/flux-lora)"
            )
        if not os.environ.get("HF_TOKEN"):
            raise UsageError("flux-lora needs --secret-env HF_TOKEN (FLUX.1-dev is gated)")
        inner = "python3 gs-bench/flux.py"
    elif name == "transfer":
        megabytes = float(env["GS_BENCH_MB"])
        payload = make_payload(scratch, megabytes)
        uploads = [(str(payload), "gs-payload.bin")]
        inner = "cp gs-payload.bin out/gs-payload.bin"
    else:  # cold-start: the figures are the job's own timings
        uploads = []
        inner = "true"
    return Workload(name, version, inner, env=env, uploads=uploads, workdir=workdir, params=chosen)


def make_payload(scratch: Path | None, megabytes: float) -> Path:
    if scratch is None:
        raise UsageError("transfer needs a scratch folder")
    scratch.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = scratch / "gs-payload.bin"
    remaining = int(megabytes * 1e6)
    with path.open("wb") as handle:
        while remaining > 0:
            chunk = min(remaining, 1 << 20)
            handle.write(os.urandom(chunk))
            remaining -= chunk
    return path


# -- reading the answer ---------------------------------------------------------------------
class ResultInvalid(ValueError):
    """What the workload wrote is not a result (failure_stage ``parse``)."""


def _number(value: JSONValue) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _reject_constant(name: str) -> NoReturn:
    raise ResultInvalid(f"{name} is not a number")


def parse_result(text: str) -> JSONObject:
    """One JSON object {"metric", "value", "unit", "higher_is_better"} (plus, optionally,
    extra_metrics, device and backend), checked strictly."""
    if len(text.encode(errors="replace")) > MAX_RESULT_BYTES:
        raise ResultInvalid(f"the result file is over {MAX_RESULT_BYTES // 1024} KB")
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except ResultInvalid:
        raise
    except ValueError as exc:
        raise ResultInvalid(f"the result file is not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ResultInvalid("the result file holds no JSON object")
    missing = sorted(RESULT_KEYS - set(doc))
    if missing:
        raise ResultInvalid(f"the result lacks {', '.join(missing)}")
    unknown = sorted(set(doc) - RESULT_KEYS - OPTIONAL_KEYS)
    if unknown:
        raise ResultInvalid(f"the result has unknown keys: {', '.join(k[:40] for k in unknown)}")
    if not isinstance(doc["metric"], str) or not METRIC_RE.fullmatch(doc["metric"]):
        raise ResultInvalid("metric: a short plain name (letters, digits, _ . % / -)")
    if not _number(doc["value"]) or abs(doc["value"]) > 1e15:
        raise ResultInvalid("value: a finite number")
    if not isinstance(doc["unit"], str) or not UNIT_RE.fullmatch(doc["unit"]):
        raise ResultInvalid("unit: a short plain text (at most 32 characters)")
    if not isinstance(doc["higher_is_better"], bool):
        raise ResultInvalid("higher_is_better: true or false")
    out = {k: doc[k] for k in ("metric", "unit", "higher_is_better")}
    out["value"] = float(doc["value"])
    extra = doc.get("extra_metrics", {})
    if not isinstance(extra, dict) or len(extra) > 32:
        raise ResultInvalid("extra_metrics: an object of at most 32 numbers")
    for key, value in extra.items():
        if not METRIC_RE.fullmatch(key) or not _number(value) or abs(value) > 1e15:
            raise ResultInvalid(f"extra_metrics: {key[:40]!r} is not a plain name and a number")
    out["extra_metrics"] = {k: float(v) for k, v in extra.items()}
    device = doc.get("device")
    if device is not None and device not in ("cpu", "gpu"):
        raise ResultInvalid("device: cpu or gpu")
    out["device"] = device
    backend = doc.get("backend")
    if backend is not None and (not isinstance(backend, str) or not PLAIN_RE.fullmatch(backend)):
        raise ResultInvalid("backend: a short plain text")
    out["backend"] = backend
    return out


def parse_hardware(query: str | None, banner: str | None) -> JSONObject:
    """The measured hardware from ``nvidia-smi --query-gpu=... --format=csv,noheader`` and
    the plain ``nvidia-smi`` banner (CUDA version); every field null without nvidia-smi."""
    rows = []
    for line in (query or "").strip().splitlines()[:64]:
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 3:
            continue
        name = "".join(c for c in parts[0] if c.isprintable()).strip()[:80]
        if not name:
            continue  # a row naming no GPU measured none
        mib = re.match(r"\d{1,9}(?!\d)", parts[1])  # a longer figure is no size (nor an int)
        driver = parts[2] if re.fullmatch(r"[0-9][0-9.]{0,20}", parts[2]) else None
        rows.append((name, int(mib.group()) if mib else None, driver))
    cuda = re.search(r"CUDA Version:\s*([0-9]{1,3}\.[0-9]{1,3})", banner or "")
    return {
        "gpu_name": rows[0][0] if rows else None,
        "gpu_names": sorted({r[0] for r in rows}),
        "gpu_count": len(rows) if rows else None,
        "vram_mb": rows[0][1] if rows else None,
        "driver": rows[0][2] if rows else None,
        "cuda": cuda.group(1) if cuda else None,
        "device": "gpu" if rows else "cpu",
    }


def _read_small(path: Path) -> str | None:
    """A file the job brought home, refused when it is a link or too large."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(MAX_RESULT_BYTES + 1)
    return data.decode(errors="replace")


def read_outcome(
    workload: Workload, out_dir: Path, job: JSONObject, session: Session | None
) -> tuple[JSONObject, JSONObject]:
    """(the measurement, the hardware) of a job that ran; ResultInvalid when the workload's
    answer is missing or malformed."""
    hardware = parse_hardware(_read_small(out_dir / HARDWARE_FILE), _read_small(out_dir / SMI_FILE))
    timings = job.get("timings") or {}
    if workload.name == "cold-start":
        boot = session.timings if session is not None else {}
        ready = timings.get("provision_s")
        if not isinstance(ready, (int, float)) or not _number(ready):
            raise ResultInvalid("the job recorded no provisioning time")
        extra = {
            k: float(boot[k])
            for k in ("create_call_s", "time_to_running_s", "time_to_ssh_s")
            if _number(boot.get(k))
        }
        found = _measured("time_to_ready_s", float(ready), "s", False, extra)
    elif workload.name == "transfer":
        megabytes = float(workload.env.get("GS_BENCH_MB") or 0)
        up, down = timings.get("upload_s"), timings.get("download_s")
        if not isinstance(up, (int, float)) or not isinstance(down, (int, float)):
            raise ResultInvalid("the job recorded no transfer times")
        if not (_number(up) and _number(down)) or up <= 0 or down <= 0:
            raise ResultInvalid("the job recorded no transfer times")
        (out_dir / "gs-payload.bin").unlink(missing_ok=True)  # it made its trip
        found = _measured(
            "upload_mbs",
            megabytes / up,
            "MB/s",
            True,
            {"download_mbs": megabytes / down, "megabytes": megabytes},
        )
    else:
        text = _read_small(out_dir / RESULT_FILE)
        if text is None:
            raise ResultInvalid("the workload wrote no result to $GPU_SHOPPER_RESULT")
        found = parse_result(text)
    if found.get("device"):
        hardware["device"] = found["device"]
    return found, hardware


def _measured(
    metric: str, value: float, unit: str, higher: bool, extra: dict[str, float]
) -> JSONObject:
    return {
        "metric": metric,
        "value": value,
        "unit": unit,
        "higher_is_better": higher,
        "extra_metrics": extra,
        "device": None,
        "backend": None,
    }


def invalid_reasons(
    workload: Workload, found: JSONObject, hardware: JSONObject, advertised: str | None
) -> list[str]:
    """Why a result must not rank: the measured GPU is not the advertised one, the
    measurement did not run its full length, or too many requests failed."""
    from gpushopper.model.models import gpu_matches

    reasons = []
    names = hardware.get("gpu_names") or []
    if not names:
        reasons.append("no nvidia-smi on the instance: the GPU was not measured")
    elif advertised:
        wrong = sorted(n for n in names if not gpu_matches(advertised, n))
        if wrong:
            reasons.append(f"measured GPU {', '.join(wrong)}, advertised {advertised}")
    extra = found.get("extra_metrics") or {}
    if "error_rate" in extra and extra["error_rate"] >= 0.1:
        reasons.append(f"error rate {extra['error_rate']:.0%} (10% or more)")
    if "steps_wanted" in extra and extra.get("steps_done", 0) < extra["steps_wanted"]:
        reasons.append("the measurement did not run its full length")
    return reasons
