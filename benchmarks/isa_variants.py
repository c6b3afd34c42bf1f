"""The C backend's kernel variants side by side (generic, AVX2+FMA, AVX-512) on the SPEC
configurations, interleaved run by run so that a noisy machine hits each variant alike;
min and median of ``--runs`` timed runs. Results are checked against the float64 NumPy
reference before anything is timed.

    python benchmarks/isa_variants.py [--runs 5] [--configs S,M,L,step]
"""

import argparse
import statistics
import time

import numpy as np

import fastsarnn as fs
from fastsarnn import bench
from fastsarnn.backends import c_ext


def _run(cfg, model, x):
    if not cfg.step:
        return model.forward(x, backend="c").c
    st = model.init_state(cfg.B)
    cs = np.empty((cfg.B, cfg.T, model.hidden_size), model.dtype)
    hs = np.empty_like(cs)
    for t in range(cfg.T):
        model.step(x[:, t], st, backend="c", out=(hs[:, t], cs[:, t]))
    return cs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--configs", default="S,M,L,step")
    args = ap.parse_args(argv)
    isas = c_ext.supported_isas()
    old = c_ext.isa()
    print(f"fastsarnn {fs.__version__}; variants {', '.join(isas)}; min / median ms of "
          f"{args.runs}")
    print(f"{'config':<7}" + "".join(f"{i:>22}" for i in isas))
    try:
        for name in args.configs.split(","):
            cfg = bench.CONFIGS[name]
            model, x = bench.make_problem(cfg)
            ref = model.astype("float64").forward(x.astype(np.float64), backend="numpy")
            for isa in isas:
                c_ext.set_isa(isa)
                err = float(np.max(np.abs(_run(cfg, model, x) - ref.c)))
                assert err <= fs._config.TOLERANCE["float32"], (name, isa, err)
            times = {i: [] for i in isas}
            for _ in range(args.runs):
                for isa in isas:
                    c_ext.set_isa(isa)
                    t0 = time.perf_counter()
                    _run(cfg, model, x)
                    times[isa].append((time.perf_counter() - t0) * 1e3)
            print(f"{name:<7}" + "".join(
                f"{min(times[i]):>12.2f} / {statistics.median(times[i]):>7.2f}" for i in isas))
    finally:
        c_ext.set_isa(old)


if __name__ == "__main__":
    main()
