"""pytest-benchmark suites for the SPEC section 6 configurations.

    pytest benchmarks --benchmark-only                      # full sizes
    FASTSARNN_BENCH_QUICK=1 pytest benchmarks --benchmark-only   # small sizes

Grouped by configuration, parametrised over every available backend, the NumPy reference and
the installed peers. Each benchmark first checks its result against the float64 reference,
then times; the warm-up run (JIT compilation included) is not timed.
"""

import functools
import os

import numpy as np
import pytest

from fastsarnn import _config, bench

CONFIGS = bench.QUICK if os.environ.get("FASTSARNN_BENCH_QUICK") else bench.CONFIGS
RUNNERS = bench.available_runners()


@functools.lru_cache(maxsize=None)
def reference(name):
    model, x = bench.make_problem(CONFIGS[name])
    with bench._single_thread_blas():
        return model.astype("float64").forward(x.astype(np.float64), backend="numpy")


@pytest.mark.parametrize("who", RUNNERS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_config(benchmark, name, who):
    cfg = CONFIGS[name]
    benchmark.group = f"{name}: B={cfg.B} T={cfg.T} D={cfg.D} H={cfg.H} window={cfg.window}"
    model, x = bench.make_problem(cfg)
    run = bench.runner(cfg, model, x, who)
    if who == "numpy":
        run = bench._with_single_thread_blas(run)
    h, c = run()
    ref = reference(name)
    err = max(float(np.max(np.abs(h - ref.h))), float(np.max(np.abs(c - ref.c))))
    assert err <= _config.TOLERANCE[cfg.dtype], f"{who} on {name}: error {err:.3g}"
    rounds = 1 if who in ("numpy", "torch") and not os.environ.get("FASTSARNN_BENCH_QUICK") \
        else 5
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=0)
    flops = bench.useful_flops(cfg, model.attention_size)
    benchmark.extra_info.update(max_abs_err=err,
                                gflops=flops / benchmark.stats.stats.min / 1e9)
