"""One stream on the C backend: effect of splitting each step's attended positions over the
OpenMP team, by threshold (``fastsarnn.backends.c_ext.set_split_min``).

    python benchmarks/split_threshold.py
"""

import time

import numpy as np

import fastsarnn as fs
from fastsarnn import bench
from fastsarnn.backends import c_ext


def best_forward(model, x, repeat=7):
    model.forward(x, backend="c")
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        model.forward(x, backend="c")
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def best_steps(model, x, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        st = model.init_state(1)
        t0 = time.perf_counter()
        for t in range(x.shape[1]):
            model.step(x[:, t], st, backend="c")
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main():
    problems = {n: bench.make_problem(bench.CONFIGS[n]) for n in ("S", "L", "step")}
    old = c_ext.set_split_min(256)
    print(f"fastsarnn {fs.__version__}, C kernels {c_ext.isa()}; min ms")
    print(f"{'split from':<18}{'S':>9}{'L':>9}{'step':>9}")
    try:
        for split in (10 ** 9, 512, 256, 128):
            c_ext.set_split_min(split)
            s = best_forward(*problems["S"])
            l_ = best_forward(*problems["L"])
            st = best_steps(*problems["step"])
            label = "never" if split == 10 ** 9 else str(split)
            print(f"{label:<18}{s:>9.2f}{l_:>9.2f}{st:>9.2f}")
    finally:
        c_ext.set_split_min(old)


if __name__ == "__main__":
    main()
