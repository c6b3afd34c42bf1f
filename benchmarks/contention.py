"""One stream (config S) on the C backend beside busy processes, and the per-token path.

For 0, N and 2N busy-loop processes (N = cores): the default ``forward`` (all threads, the
single-stream split with its fallback guard) against ``num_threads=1``, interleaved, worst
and median of ``--runs`` runs each, and how often the guard fell back. Then the step path:
``config step`` tokens through ``model.step`` (with ``out=`` buffers, and without) against
one ``forward`` over the same tokens, min of ``--runs``. Every result is checked against the
float64 NumPy reference before anything is timed.

    python benchmarks/contention.py [--runs 7] [--loads 0,N,2N]
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np

import fastsarnn as fs
from fastsarnn import bench
from fastsarnn.backends import c_ext


def _busy(n):
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def _stop(procs):
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def _check(name, got, want, tol):
    err = float(np.max(np.abs(np.asarray(got, np.float64) - want)))
    if not err <= tol:
        raise SystemExit(f"{name}: max abs error {err:.3g} > {tol:g}; not timing it")


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def steps_with_out(model, x):
    st = model.init_state(1)
    H = model.hidden_size
    hs = np.empty((x.shape[1], H), model.dtype)
    cs = np.empty((x.shape[1], H), model.dtype)
    for t in range(x.shape[1]):
        model.step(x[0, t], st, backend="c", out=(hs[t], cs[t]))
    return hs, cs


def steps_plain(model, x):
    st = model.init_state(1)
    return np.stack([model.step(x[0, t], st, backend="c")[1] for t in range(x.shape[1])])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--loads", default="0,N,2N", help="busy processes, e.g. 0,N,2N or 0,2,4")
    args = ap.parse_args(argv)
    cores = os.cpu_count() or 1
    loads = [int(s.replace("2N", str(2 * cores)).replace("N", str(cores)))
             for s in args.loads.split(",")]
    tol = fs._config.TOLERANCE["float32"]

    model, x = bench.make_problem(bench.CONFIGS["S"])
    ref = model.astype("float64").forward(x.astype(np.float64), backend="numpy")
    _check("S default", model.forward(x, backend="c").c, ref.c, tol)
    _check("S num_threads=1", model.forward(x, backend="c", num_threads=1).c, ref.c, tol)
    print(f"fastsarnn {fs.__version__}; C kernels {c_ext.isa()}; {cores} cores; "
          f"config S (B=1, T={x.shape[1]}, D={x.shape[2]}, H={model.hidden_size}); "
          f"{args.runs} runs each, ms")
    print(f"{'busy procs':>10} | {'default worst':>13} {'median':>8} | {'1 thread worst':>14} "
          f"{'median':>8} | {'worst ratio':>11} {'median ratio':>12} | fallbacks")
    for n in loads:
        procs = _busy(n)
        try:
            time.sleep(0.3)
            dflt, one, falls = [], [], 0
            for _ in range(args.runs):
                dflt.append(_timed(lambda: model.forward(x, backend="c")))
                falls += c_ext.last_call_stats()["fallback_step"] >= 0
                one.append(_timed(lambda: model.forward(x, backend="c", num_threads=1)))
            _check("S default under load", model.forward(x, backend="c").c, ref.c, tol)
        finally:
            _stop(procs)
        dw, dm, ow, om = max(dflt), statistics.median(dflt), max(one), statistics.median(one)
        print(f"{n:>10} | {dw:>13.2f} {dm:>8.2f} | {ow:>14.2f} {om:>8.2f} | "
              f"{dw / ow:>11.2f} {dm / om:>12.2f} | {falls}/{args.runs}")

    model, x = bench.make_problem(bench.CONFIGS["step"])
    ref = model.astype("float64").forward(x.astype(np.float64), backend="numpy")
    _check("step path (out=)", steps_with_out(model, x)[1], ref.c[0], tol)
    _check("step path", steps_plain(model, x), ref.c[0], tol)
    fwd = min(_timed(lambda: model.forward(x, backend="c")) for _ in range(args.runs))
    with_out = min(_timed(lambda: steps_with_out(model, x)) for _ in range(args.runs))
    plain = min(_timed(lambda: steps_plain(model, x)) for _ in range(args.runs))
    T = x.shape[1]
    print(f"\nstep path, config step (T={T}), idle, min of {args.runs}, ms:")
    print(f"  one forward over the tokens        {fwd:8.2f}")
    print(f"  {T} x model.step(..., out=...)    {with_out:8.2f}  ({with_out / fwd:.2f}x forward)")
    print(f"  {T} x model.step(...)             {plain:8.2f}  ({plain / fwd:.2f}x forward)")


if __name__ == "__main__":
    main()
