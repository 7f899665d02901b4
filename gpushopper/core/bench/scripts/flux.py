"""flux-lora@1 on the instance: a few ai-toolkit steps of examples/flux-lora, timed.

Writes config-bench.yaml (the example with ``steps`` set to $GS_FLUX_STEPS, no saves), runs
``python $GS_FLUX_TOOLKIT/run.py config-bench.yaml`` and reads seconds per step from
ai-toolkit's progress bar (tqdm's ``s/it`` or ``it/s``). Standard library only.
"""

import json
import os
import re
import subprocess
import sys

RATE = re.compile(r"(\d+)/(\d+) \[[^\]]*?([0-9.]+)\s*(s/it|it/s)")


def bench_config(text, steps):
    """The example config with its step count replaced and checkpoints off."""
    text = re.sub(r"(?m)^(\s*)steps:\s*\d+", lambda m: f"{m.group(1)}steps: {steps}", text)
    text = re.sub(
        r"(?m)^(\s*)save_every:\s*\d+", lambda m: f"{m.group(1)}save_every: {10**6}", text
    )
    return text


def seconds_per_step(log):
    """(seconds per step, steps done) from the last progress figure in ``log``."""
    found = None
    for match in RATE.finditer(log):
        done, rate, unit = int(match.group(1)), float(match.group(3)), match.group(4)
        if rate <= 0:
            continue
        found = (rate if unit == "s/it" else 1.0 / rate, done)
    return found


def command(toolkit, config):
    return [sys.executable, os.path.join(toolkit, "run.py"), config]


def main():
    steps = int(os.environ.get("GS_FLUX_STEPS") or 10)
    toolkit = os.environ.get("GS_FLUX_TOOLKIT") or "/app/ai-toolkit"
    with open("config.yaml") as handle:
        text = bench_config(handle.read(), steps)
    with open("config-bench.yaml", "w") as handle:
        handle.write(text)
    proc = subprocess.run(
        command(toolkit, "config-bench.yaml"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        check=False,
    )
    log = proc.stdout.decode(errors="replace").replace("\r", "\n")
    sys.stdout.write(log[-20000:])
    found = seconds_per_step(log)
    if proc.returncode != 0 or found is None:
        print(f"ai-toolkit exited {proc.returncode}; no step timing found")
        return proc.returncode or 1
    per_step, done = found
    result = {
        "metric": "s_per_step",
        "value": per_step,
        "unit": "s",
        "higher_is_better": False,
        "extra_metrics": {"steps_done": done, "steps_wanted": steps},
        "device": "gpu",
        "backend": "ai-toolkit",
    }
    with open(os.environ["GPU_SHOPPER_RESULT"], "w") as handle:
        json.dump(result, handle)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
