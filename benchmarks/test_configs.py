"""pytest-benchmark suites for the SPEC section 6 configurations.

    pytest benchmarks --benchmark-only                      # full sizes
    FASTSARNN_BENCH_QUICK=1 pytest benchmarks --benchmark-only   # small sizes

Grouped by configuration, parametrised over every available backend, the NumPy reference and
the installed peers, as ``fastsarnn bench`` runs them (the XL configuration only where a GPU
runner is present). Each benchmark first checks its result against the float64 reference,
then times 5 rounds, as ``fastsarnn bench`` does; the warm-up run (JIT compilation included)
is not timed.
"""

import functools
import os

import numpy as np
import pytest

from fastsarnn import _config, bench

RUNNERS = bench.available_runners()
CONFIGS = {c.name: c for c in bench.default_configs(
    RUNNERS, quick=bool(os.environ.get("FASTSARNN_BENCH_QUICK")))}


@functools.lru_cache(maxsize=None)
def reference(name):
    model, x = bench.make_problem(CONFIGS[name])
    with bench.single_thread_blas():
        return model.astype("float64").forward(x.astype(np.float64), backend="numpy")


@pytest.mark.parametrize("who", RUNNERS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_config(benchmark, name, who):
    cfg = CONFIGS[name]
    benchmark.group = f"{name}: B={cfg.B} T={cfg.T} D={cfg.D} H={cfg.H} window={cfg.window}"
    if who not in bench.runners_for(cfg, RUNNERS):
        pytest.skip(f"{who} is not timed on {name} (see fastsarnn.bench.runners_for)")
    model, x = bench.make_problem(cfg)
    try:
        run = bench.runner(cfg, model, x, who)
    except bench.NotApplicable as exc:
        pytest.skip(str(exc))
    h, c = run()
    ref = reference(name)
    err = max(float(np.max(np.abs(h - ref.h))), float(np.max(np.abs(c - ref.c))))
    assert err <= _config.TOLERANCE[cfg.dtype], f"{who} on {name}: error {err:.3g}"
    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=0)
    flops = bench.useful_flops(cfg, model.attention_size)
    benchmark.extra_info.update(max_abs_err=err,
                                gflops=flops / benchmark.stats.stats.min / 1e9)
