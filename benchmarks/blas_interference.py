"""Does an idle-spinning BLAS pool steal cores from the kernels?

OpenBLAS workers keep spinning for a while after a multithreaded matrix product. fastsarnn's
C and Numba kernels do the input projection inside the compiled call (no NumPy product on the
path), so the only exposure is a product the *caller* ran just before. This script times the
M configuration (a) on an idle machine, (b) right after a multithreaded NumPy product, and
(c) right after the same product under ``threadpool_limits(1)``.

    python benchmarks/blas_interference.py [--backend c] [--repeat 7]
"""

import argparse
import statistics
import time

import numpy as np

import fastsarnn as fs
from fastsarnn import bench


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="c")
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits

    cfg = bench.CONFIGS["M"]
    model, x = bench.make_problem(cfg)
    a = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
    model.forward(x, backend=args.backend)

    def timed():
        t0 = time.perf_counter()
        model.forward(x, backend=args.backend)
        return time.perf_counter() - t0

    results = {"idle": [], "after multithreaded matmul": [], "after 1-thread matmul": []}
    for _ in range(args.repeat):
        time.sleep(0.5)
        results["idle"].append(timed())
        a @ a
        results["after multithreaded matmul"].append(timed())
        time.sleep(0.5)
        with threadpool_limits(limits=1, user_api="blas"):
            a @ a
        results["after 1-thread matmul"].append(timed())
    print(f"M config, backend {args.backend!r}, {fs.__version__}; median (min) of "
          f"{args.repeat} runs")
    for k, v in results.items():
        print(f"  {k:<28} {statistics.median(v) * 1e3:8.2f} ms ({min(v) * 1e3:.2f} ms)")


if __name__ == "__main__":
    main()
