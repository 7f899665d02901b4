"""gpu-matmul@1 on the instance: dense matmul TFLOPS (fp16, bf16) and memory bandwidth.

PyTorch with CUDA when the image has it; numpy on the CPU otherwise (pure Python when even
numpy is missing), recorded as ``device: cpu``. Writes one JSON object to
$GPU_SHOPPER_RESULT. Standard library only, besides the optional torch / numpy.
"""

import json
import os
import sys
import time

SECONDS = float(os.environ.get("GS_BENCH_SECONDS") or 3.0)


def timed(fn, seconds):
    """Runs of fn() for about ``seconds`` (at least 2 after a warm-up): the best time of one."""
    fn()
    best = None
    end = time.perf_counter() + seconds
    runs = 0
    while runs < 2 or time.perf_counter() < end:
        t0 = time.perf_counter()
        fn()
        took = time.perf_counter() - t0
        best = took if best is None else min(best, took)
        runs += 1
    return max(best or 0.0, 1e-9)


def with_torch():
    import torch

    if not torch.cuda.is_available():
        return None
    n = 8192
    figures = {}
    for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n, device="cuda", dtype=dtype)
        b = torch.randn(n, n, device="cuda", dtype=dtype)

        def mm(a=a, b=b):
            a @ b
            torch.cuda.synchronize()

        figures["tflops_" + name] = 2 * n**3 / timed(mm, SECONDS / 3) / 1e12
    size = 1 << 28  # 256 Mi floats = 1 GiB
    src = torch.empty(size, device="cuda", dtype=torch.float32)
    dst = torch.empty_like(src)

    def copy():
        dst.copy_(src)
        torch.cuda.synchronize()

    figures["membw_gbs"] = 2 * src.numel() * 4 / timed(copy, SECONDS / 3) / 1e9
    return {"device": "gpu", "backend": "torch " + torch.__version__, "figures": figures}


def with_numpy():
    import numpy as np

    n = 1024
    figures = {}
    for name, dtype in (("fp32", np.float32),):
        a = np.random.rand(n, n).astype(dtype)
        b = np.random.rand(n, n).astype(dtype)
        figures["tflops_" + name] = 2 * n**3 / timed(lambda a=a, b=b: a @ b, SECONDS / 2) / 1e12
    src = np.ones(1 << 24, dtype=np.float32)  # 64 MiB
    dst = np.empty_like(src)
    figures["membw_gbs"] = 2 * src.nbytes / timed(lambda: np.copyto(dst, src), SECONDS / 2) / 1e9
    return {"device": "cpu", "backend": "numpy " + np.__version__, "figures": figures}


def with_python():
    n = 48
    a = [[float(i * n + j) for j in range(n)] for i in range(n)]
    b = [[float(j * n + i) for j in range(n)] for i in range(n)]
    bt = list(zip(*b))  # noqa: B905 - Python 3.8 images have no strict=

    def mm():
        return [[sum(x * y for x, y in zip(row, col)) for col in bt] for row in a]  # noqa: B905

    src = bytearray(1 << 24)

    def copy():
        bytes(src)

    return {
        "device": "cpu",
        "backend": "python",
        "figures": {
            "tflops_fp64": 2 * n**3 / timed(mm, SECONDS / 2) / 1e12,
            "membw_gbs": 2 * len(src) / timed(copy, SECONDS / 4) / 1e9,
        },
    }


def main():
    found = None
    for attempt in (with_torch, with_numpy):
        try:
            found = attempt()
        except ImportError:
            found = None
        if found:
            break
    if not found:
        found = with_python()
    figures = found["figures"]
    metric = (
        "tflops_bf16"
        if "tflops_bf16" in figures
        else sorted(k for k in figures if k.startswith("tflops_"))[0]
    )
    result = {
        "metric": metric,
        "value": figures[metric],
        "unit": "TFLOPS",
        "higher_is_better": True,
        "extra_metrics": {k: v for k, v in figures.items() if k != metric},
        "device": found["device"],
        "backend": found["backend"],
    }
    with open(os.environ["GPU_SHOPPER_RESULT"], "w") as handle:
        json.dump(result, handle)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
