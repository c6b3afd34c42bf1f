"""One stream on the C backend: effect of splitting each step's attended positions over the
helper pool, by threshold (``fastsarnn.backends.c_ext.set_split_min``).

    python benchmarks/split_threshold.py

Every configuration's result is checked against the float64 reference (within
``fastsarnn._config.TOLERANCE``) at every threshold before it is timed; a wrong result stops
the script.
"""

import sys
import time

import numpy as np

import fastsarnn as fs
from fastsarnn import _config, bench
from fastsarnn.backends import c_ext


def checked_runner(cfg, model, x, ref, label):
    """``bench.runner`` for the C backend, after checking its result against ``ref``."""
    run = bench.runner(cfg, model, x, "c")
    h, c = run()                          # warm-up and parity check
    err = max(float(np.max(np.abs(h - ref.h))), float(np.max(np.abs(c - ref.c))))
    tol = _config.TOLERANCE[cfg.dtype]
    if not err <= tol:                    # NaN fails too
        sys.exit(f"config {cfg.name}, split from {label}: max abs error {err:.3g} vs the "
                 f"float64 reference exceeds the tolerance {tol:g}; not timing a wrong result")
    return run


def best_ms(run, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def main():
    names = ("S", "L", "step")
    problems = {n: bench.make_problem(bench.CONFIGS[n]) for n in names}
    refs = {n: m.astype("float64").forward(x.astype(np.float64), backend="numpy")
            for n, (m, x) in problems.items()}
    repeats = {"S": 7, "L": 7, "step": 3}
    old = c_ext.set_split_min(256)
    print(f"fastsarnn {fs.__version__}, C kernels {c_ext.isa()}; min ms (each result checked "
          f"against the float64 reference first)")
    print(f"{'split from':<18}{'S':>9}{'L':>9}{'step':>9}")
    try:
        for split in (10 ** 9, 512, 256, 128):
            c_ext.set_split_min(split)
            label = "never" if split == 10 ** 9 else str(split)
            ms = [best_ms(checked_runner(bench.CONFIGS[n], *problems[n], refs[n], label),
                          repeats[n]) for n in names]
            print(f"{label:<18}" + "".join(f"{v:>9.2f}" for v in ms))
    finally:
        c_ext.set_split_min(old)


if __name__ == "__main__":
    main()
