"""Time the ``"cuda"`` backend with each sequence split over 1, 2, 4, ... blocks.

For the benchmark configurations S, step, L (one sequence) and M (32 sequences: "auto"
splits them into 2 parts on an H100/H200),
runs ``fastsarnn._config.CUDA_SPLIT_PARTS`` = 1 (one block per sequence), 2, 4, 8, 16 and
``"auto"`` (the plan's choice), checks every result against the float64 NumPy reference
(the contract's tolerance), then times each
(best of ``--repeat`` warm runs; compilation and warm-up excluded) and prints one line per
configuration, with the plan "auto" used. Needs a GPU (the simulator never splits on
"auto"). Usage: ``python benchmarks/cuda_split_compare.py [--repeat 3] [--config S ...]
[--quick] [--block N]``.
"""

import argparse
import sys
import time

import numpy as np

PARTS = (1, 2, 4, 8, 16, "auto")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--config", action="append", choices=("S", "step", "L", "M"))
    ap.add_argument("--quick", action="store_true",
                    help="the small configurations of `fastsarnn bench --quick`")
    ap.add_argument("--block", type=int, help="threads per block (default: "
                    "_config.CUDA_BLOCK_SIZE; e.g. 4 to try the script on the simulator)")
    args = ap.parse_args(argv)

    import fastsarnn as fs
    from fastsarnn import _config
    from fastsarnn.backends import cuda as be
    from fastsarnn.bench import suite

    if args.block:
        _config.CUDA_BLOCK_SIZE = args.block
    info = fs.backends()["cuda"]
    if not info.available:
        print(f"cuda unavailable: {info.reason}")
        return 1
    print(f"# {be.describe()}; CUDA_SPLIT_MIN_POSITIONS={_config.CUDA_SPLIT_MIN_POSITIONS}")
    failures = 0
    for name in args.config or ["S", "step", "M", "L"]:
        cfg = (suite.QUICK if args.quick else suite.CONFIGS)[name]
        model, x = suite.make_problem(cfg)
        # the contract's check: float64 math (L, 16384 steps, is compared among parts only)
        ref = (model.astype("float64").forward(x.astype(np.float64), backend="numpy").h
               if name != "L" else None)
        results, times = {}, {}
        for parts in PARTS:
            _config.CUDA_SPLIT_PARTS = parts
            run = suite.runner(cfg, model, x, "cuda")
            try:
                results[parts] = run()[0]             # compiles, warms up
            except Exception as exc:
                failures += 1
                print(f"FAIL {name}: CUDA_SPLIT_PARTS={parts!r}: {type(exc).__name__}: {exc}")
                continue
            if parts == "auto":
                plan = be.last_launch()
            elif be.last_launch()["parts"] != parts:
                failures += 1
                print(f"FAIL {name}: {parts} parts forced, the launch ran "
                      f"{be.last_launch()['parts']}")
            best = float("inf")
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                run()
                best = min(best, time.perf_counter() - t0)
            times[parts] = best
        _config.CUDA_SPLIT_PARTS = "auto"
        if 1 not in results or "auto" not in results:
            continue
        tol = _config.TOLERANCE[cfg.dtype]
        # each float32 result is within tol of the float64 math: two differ by up to 2 tol
        err = max(float(np.max(np.abs(results[p] - results[1]))) for p in results)
        err_ref = (max(float(np.max(np.abs(results[p] - ref))) for p in results)
                   if ref is not None else float("nan"))
        ok = err <= 2 * tol and (ref is None or err_ref <= tol)
        failures += not ok
        cells = " ".join(f"{p}: {times[p] * 1e3:.2f}" for p in PARTS if p in times)
        print(f"{'ok  ' if ok else 'FAIL'} {name} (ms by parts) {cells} | auto ran "
              f"{plan['parts']} parts on {plan['blocks_per_sequence']} blocks | max |parts - "
              f"one block| {err:.1e}, max |parts - float64 numpy| {err_ref:.1e}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
