"""Smoke test of ``benchmarks/gpu_perf.py`` on CPU at the smallest sizes (no compile).

No ``__init__.py`` here on purpose: a package ``tests/benchmarks`` would be imported as
``benchmarks`` and shadow the repository's ``benchmarks`` package.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # plain `pytest` does not put the working directory on sys.path
    sys.path.insert(0, str(ROOT))

from benchmarks import gpu_perf  # noqa: E402

TINY = {
    "medical": {
        "data": {"size": 16},
        "model": {"channels": [8, 16], "attention_levels": [False, False]},
    },
    "pde": {
        "data": {"nt": 8, "train_nx": [16], "eval_nx": [16]},
        "model": {"channels": [8, 16], "attention_levels": [False, False]},
    },
}


def test_gpu_perf_cpu_smoke():
    r = gpu_perf.run_benchmark(
        ["medical", "pde"],
        "cpu",
        compile=False,
        warmup=1,
        iters=1,
        repeats=1,
        sample_repeats=1,
        train_batch=2,
        sample_batch=2,
        sample_steps=2,
        overrides=TINY,
        log=lambda _: None,
    )
    assert r["device_kind"] == "cpu" and r["peak_tflops"] is None
    assert r["bars"] == {"medical": gpu_perf.CPU_BAR, "pde": gpu_perf.CPU_BAR}
    for d in ("medical", "pde"):
        res = r["domains"][d]
        assert res["attention"]["present"]  # MONAI's middle block
        assert res["flops"]["train_step"] > res["flops"]["sampling_nfe"] > 0
        assert res["nfe"] == 2
        for mode in gpu_perf.MODES:
            m = res["modes"][mode]
            assert "error" not in m, m.get("error")
            assert m["samples_per_s"] > 0 and m["sampling_latency_s"] > 0
            assert m["train_tflops"] > 0 and m["sampling_tflops"] > 0
            assert m["peak_tflops"] is None and m["train_utilisation"] is None
            assert not m["compiled"]
        assert res["modes"]["fast"]["flash_attention_blocks"] >= 1
        assert res["speedup"]["train"] > 0 and res["speedup"]["sampling"] > 0


def test_peak_table():
    assert gpu_perf.peak_tflops("NVIDIA H100 80GB HBM3") == {"bf16": 989.0, "fp32": 67.0}
    assert gpu_perf.peak_tflops("NVIDIA H100 PCIe")["bf16"] == 756.0
    assert gpu_perf.peak_tflops("NVIDIA H200") == {"bf16": 989.0, "fp32": 67.0}
    assert gpu_perf.peak_tflops("NVIDIA A100-SXM4-80GB") == {"bf16": 312.0, "fp32": 19.5}
    assert gpu_perf.peak_tflops("Tesla T4") is None
    assert gpu_perf.peak_tflops(None) is None
