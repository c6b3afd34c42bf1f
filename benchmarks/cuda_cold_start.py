"""A fresh process's first ``"cuda"`` forward: compiling the kernels, or loading them from
Numba's on-disk cache (``_config.CUDA_DISK_CACHE``).

Runs one child process per row, in turn, all with the same empty ``NUMBA_CACHE_DIR``: the
cache off (every kernel compiled), the cache on with nothing in it (compiled, then
stored), and the cache on again (loaded). Each child builds the bench's configuration
(``--config``, S by default), times its first ``forward`` (the backend's availability
probe included: it compiles and runs a tiny kernel) and a second, warm one, and checks
the result against the float64 NumPy reference (the contract's tolerance). Needs a GPU
for meaningful figures; on the simulator (``--quick --block 4``) the script runs, and no
kernel is compiled or cached. Usage: ``python benchmarks/cuda_cold_start.py [--config S]``.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROWS = (("cache off", False), ("cache on, empty", True), ("cache on, filled", True))


def child(args):
    """One fresh process's timings, printed as one JSON line."""
    t0 = time.perf_counter()
    import numpy as np
    from fastsarnn import _config
    from fastsarnn.bench import suite

    _config.CUDA_DISK_CACHE = args.cache == "on"
    if args.block:
        _config.CUDA_BLOCK_SIZE = args.block
    cfg = (suite.QUICK if args.quick else suite.CONFIGS)[args.config]
    model, x = suite.make_problem(cfg)
    t1 = time.perf_counter()
    first = model.forward(x, backend="cuda").h
    t2 = time.perf_counter()
    model.forward(x, backend="cuda")
    t3 = time.perf_counter()
    ref = model.astype("float64").forward(x.astype(np.float64), backend="numpy").h
    err = float(np.max(np.abs(first - ref)))
    print(json.dumps({"import_s": t1 - t0, "first_s": t2 - t1, "warm_s": t3 - t2,
                      "err": err, "ok": err <= _config.TOLERANCE[cfg.dtype]}))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="S", choices=("S", "M", "L", "step", "XL"))
    ap.add_argument("--quick", action="store_true",
                    help="the small configurations of `fastsarnn bench --quick`")
    ap.add_argument("--block", type=int, help="threads per block (e.g. 4 on the simulator)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cache", choices=("on", "off"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return 0
    failures = 0
    with tempfile.TemporaryDirectory(prefix="fastsarnn-numba-cache-") as cache_dir:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
        print(f"# config {args.config}{' (quick)' if args.quick else ''}; NUMBA_CACHE_DIR "
              f"{cache_dir}, empty at first")
        for label, on in ROWS:
            cmd = [sys.executable, os.path.abspath(__file__), "--child", "--config",
                   args.config, "--cache", "on" if on else "off"]
            cmd += ["--quick"] if args.quick else []
            cmd += ["--block", str(args.block)] if args.block else []
            out = subprocess.run(cmd, env=env, capture_output=True, text=True)
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
            if out.returncode or not lines:
                failures += 1
                print(f"FAIL {label}: exit {out.returncode}\n{out.stderr[-2000:]}")
                continue
            r = json.loads(lines[-1])
            failures += not r["ok"]
            files = sum(len(f) for _, _, f in os.walk(cache_dir))
            print(f"{'ok  ' if r['ok'] else 'FAIL'} {label:17s} first forward "
                  f"{r['first_s']:7.2f} s, warm {r['warm_s'] * 1e3:9.2f} ms, import "
                  f"{r['import_s']:5.2f} s, max |h - float64 numpy| {r['err']:.1e}; "
                  f"{files} files in the cache dir after it", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
