"""Where one token of ``model.step`` on the ``"cuda"`` backend spends its time (GPU).

Runs the bench's ``step`` configuration (B=1, D=64, H=128, score dot, float32): checks the
stepped outputs against the float64 NumPy reference, then prints the wall time per token,
the host's share by function (``cProfile``, sorted by own time; the profiler inflates
every figure, so read them as proportions) and, for scale, the time of an empty
``cuda.synchronize()``. Usage: ``python benchmarks/cuda_step_profile.py [--tokens 1024]``.
"""

import argparse
import cProfile
import pstats
import time

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1024)
    args = ap.parse_args(argv)

    import fastsarnn as fs
    from fastsarnn import _config
    from fastsarnn.bench import suite

    info = fs.backends()["cuda"]
    if not info.available:
        print(f"cuda unavailable: {info.reason}")
        return 1
    cfg = suite.CONFIGS["step"]
    model, x = suite.make_problem(cfg)
    T = min(args.tokens, x.shape[1])
    ref = model.astype("float64").forward(x[:, :T].astype(np.float64), backend="numpy")

    def stream(t0, t1, st):
        for t in range(t0, t1):
            model.step(x[:, t], st, backend="cuda")

    st = model.init_state(1)
    hs = [model.step(x[:, t], st, backend="cuda")[0].copy() for t in range(T)]
    err = float(np.max(np.abs(np.stack(hs, 1) - ref.h)))
    ok = err <= _config.TOLERANCE[cfg.dtype]
    print(f"step B=1 H={cfg.H} D={cfg.D}: {T} tokens, max |h - float64 numpy| {err:.1e} "
          f"({'ok' if ok else 'FAIL'})")
    st = model.init_state(1)
    t = time.perf_counter()
    stream(0, T, st)
    wall = time.perf_counter() - t
    print(f"wall: {wall * 1e3:.2f} ms for {T} tokens, {wall / T * 1e6:.1f} us per token")

    from numba import cuda
    t = time.perf_counter()
    for _ in range(1000):
        cuda.synchronize()
    print(f"empty cuda.synchronize(): {(time.perf_counter() - t) * 1e3:.1f} us per call")

    st = model.init_state(1)
    prof = cProfile.Profile()
    prof.enable()
    stream(0, T, st)
    prof.disable()
    stats = pstats.Stats(prof)
    stats.sort_stats("tottime").print_stats(14)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
