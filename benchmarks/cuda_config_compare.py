"""Time the ``"cuda"`` backend under several values of one ``fastsarnn._config`` setting.

By default the setting is ``CUDA_SPLIT_PARTS`` (each sequence split over 1, 2, 4, 8, 16
blocks and ``"auto"``, the plan's choice); ``--setting NAME=V1,V2,...`` names another
(for example ``CUDA_MATVEC_WORDS=4,8,16,32`` or ``CUDA_ROWS_PER_WARP=2,4,8``; integers
or strings, as the setting takes them). For the benchmark configurations S, step, L (one
sequence), M (32 sequences: "auto" splits them into 2 parts on an H100/H200) and, when
named, XL (1024 sequences), runs each value, checks every result against the float64
NumPy reference (the contract's tolerance; L, 16384 steps, and XL, whose reference takes
a minute, are compared among the values only) and against the first value's, then times each (best of ``--repeat`` warm runs; compilation and warm-up
excluded) and prints one line per configuration, with the split the last launch used.
Needs a GPU for the split (the simulator never splits on "auto"). Usage:
``python benchmarks/cuda_config_compare.py [--setting NAME=V1,V2] [--repeat 3]
[--config S ...] [--quick] [--block N]``.
"""

import argparse
import os
import sys
import time

import numpy as np

SPLIT = "CUDA_SPLIT_PARTS"
DEFAULT_SETTING = f"{SPLIT}=1,2,4,8,16,auto"


def parse_setting(text):
    """``"NAME=V1,V2"`` -> (NAME, [values]): integers and ``True``/``False`` where they
    parse as such, else strings."""
    name, _, values = text.partition("=")
    if not name.startswith("CUDA_") or not values:
        raise argparse.ArgumentTypeError(f"expected CUDA_NAME=V1,V2,...; got {text!r}")
    named = {"True": True, "False": False}
    return name, [int(v) if v.lstrip("-").isdigit() else named.get(v, v)
                  for v in values.split(",")]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", type=parse_setting, default=parse_setting(DEFAULT_SETTING),
                    help=f"NAME=V1,V2,... (default {DEFAULT_SETTING})")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--config", action="append", choices=("S", "step", "L", "M", "XL"))
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
    setting, values = args.setting
    if not hasattr(_config, setting):
        print(f"fastsarnn._config has no setting {setting}")
        return 1
    default = getattr(_config, setting)
    print(f"# {be.describe()}; fastsarnn from {os.path.dirname(fs.__file__)}; {setting} in "
          f"{values} (default {default!r}); "
          f"CUDA_SPLIT_MIN_POSITIONS={_config.CUDA_SPLIT_MIN_POSITIONS}")
    failures = 0
    for name in args.config or ["S", "step", "M", "L"]:
        cfg = (suite.QUICK if args.quick else suite.CONFIGS)[name]
        model, x = suite.make_problem(cfg)
        # the contract's check: float64 math (L, 16384 steps, is compared among the values)
        ref = (model.astype("float64").forward(x.astype(np.float64), backend="numpy").h
               if name not in ("L", "XL") else None)
        results, times = {}, {}
        for value in values:
            setattr(_config, setting, value)
            run = suite.runner(cfg, model, x, "cuda")
            try:
                results[value] = run()[0]             # compiles, warms up
            except Exception as exc:
                failures += 1
                print(f"FAIL {name}: {setting}={value!r}: {type(exc).__name__}: {exc}")
                continue
            finally:
                setattr(_config, setting, default)
            plan = be.last_launch()
            if setting == SPLIT and value != "auto" and plan["parts"] != value:
                failures += 1
                print(f"FAIL {name}: {value} parts forced, the launch ran {plan['parts']}")
            setattr(_config, setting, value)
            best = float("inf")
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                run()
                best = min(best, time.perf_counter() - t0)
            setattr(_config, setting, default)
            times[value] = best
        if len(results) < len(values):
            continue
        first = results[values[0]]
        tol = _config.TOLERANCE[cfg.dtype]
        # each float32 result is within tol of the float64 math: two differ by up to 2 tol
        err = max(float(np.max(np.abs(results[v] - first))) for v in results)
        err_ref = (max(float(np.max(np.abs(results[v] - ref))) for v in results)
                   if ref is not None else float("nan"))
        ok = err <= 2 * tol and (ref is None or err_ref <= tol)
        failures += not ok
        cells = " ".join(f"{v}: {times[v] * 1e3:.2f}" for v in values)
        print(f"{'ok  ' if ok else 'FAIL'} {name} (ms by {setting}) {cells} | the last ran "
              f"{plan['parts']} parts on {plan['blocks_per_sequence']} blocks | max |value - "
              f"{values[0]}| {err:.1e}, max |value - float64 numpy| {err_ref:.1e}",
              flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
