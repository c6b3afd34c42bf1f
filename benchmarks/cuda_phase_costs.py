"""Where a step of the ``"cuda"`` kernel spends its time, from timings of model variants.

The sequence kernel runs a fixed part per step (the matrix-vector products, ``tanh``, the
barriers, the warps' merge) and an attention part that grows with the attended positions.
Their costs follow from runs that differ in one thing, all with the same compiled kernel
(window, recurrence and a score without keys are launch arguments) on one block per
sequence (``CUDA_SPLIT_PARTS`` is set to ``--parts``, 1 by default: under "auto" the variants
would split differently, a window of 1 never):

- ``window=1``: one attended position per step, so the time per step is the fixed part
  (and that one position);
- the benchmark configuration itself: the attention part is the difference, per step and
  per attended position;
- ``recurrence="hc"``: one more H x H product per step (``W_h h``);
- ``score="general"``: one more H x H product (``W_s h``) and the query's barriers;
- ``step`` (per-token ``model.step``, one launch each) with and without ``window=1``: what a
  token costs beyond a step of ``forward`` (host, launch, synchronisation).

Each variant's output is first checked against the float64 NumPy reference (the contract's
tolerance), then timed: best of ``--repeat`` warm runs, compilation and warm-up excluded.
Needs a GPU for meaningful figures (``--quick --block 4`` runs the script on the simulator).
Usage: ``python benchmarks/cuda_phase_costs.py [--config S --config M] [--repeat 3]``.
"""

import argparse
import dataclasses
import os
import time

import numpy as np


def variants(cfg):
    """(label, configuration) pairs timed for ``cfg``."""
    rep = dataclasses.replace
    out = [("base", cfg), ("window=1", rep(cfg, window=1)),
           ("recurrence=hc", rep(cfg, recurrence="hc")),
           ("score=general", rep(cfg, score="general"))]
    if cfg.B == 1:     # per-token stepping, the bench's step configuration at these sizes
        out += [("step", rep(cfg, step=True)), ("step window=1", rep(cfg, step=True, window=1))]
    return out


def attended(cfg):
    """Positions one sequence attends over the run: sum over steps t < T of
    min(t + 1, window) (the sequences of a batch run side by side, one block each)."""
    t = np.arange(cfg.T, dtype=np.int64) + 1
    if cfg.window is not None:
        t = np.minimum(t, cfg.window)
    return int(t.sum())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", action="append", choices=("S", "M"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true",
                    help="the small configurations of `fastsarnn bench --quick`")
    ap.add_argument("--block", type=int, help="threads per block (default: "
                    "_config.CUDA_BLOCK_SIZE; e.g. 4 to try the script on the simulator)")
    ap.add_argument("--parts", type=int, default=1, help="CUDA_SPLIT_PARTS for every "
                    "variant (default 1: one block per sequence)")
    args = ap.parse_args(argv)

    import fastsarnn as fs
    from fastsarnn import _config
    from fastsarnn.backends import cuda as be
    from fastsarnn.bench import suite

    if args.block:
        _config.CUDA_BLOCK_SIZE = args.block
    _config.CUDA_SPLIT_PARTS = args.parts
    info = fs.backends()["cuda"]
    if not info.available:
        print(f"cuda unavailable: {info.reason}")
        return 1
    print(f"# {be.describe()}; fastsarnn from {os.path.dirname(fs.__file__)}; "
          f"block {_config.CUDA_BLOCK_SIZE}, CUDA_MATVEC_WORDS={_config.CUDA_MATVEC_WORDS}, "
          f"CUDA_ROWS_PER_WARP={_config.CUDA_ROWS_PER_WARP}, "
          f"CUDA_SPLIT_PARTS={_config.CUDA_SPLIT_PARTS!r}")
    failures = 0
    for name in args.config or ["S", "M"]:
        cfg = (suite.QUICK if args.quick else suite.CONFIGS)[name]
        us = {}     # label -> microseconds per step (per token for the step variants)
        parts = {}  # label -> the split its last launch ran
        for label, var in variants(cfg):
            model, x = suite.make_problem(var)
            ref = model.astype("float64").forward(x.astype(np.float64), backend="numpy").h
            run = suite.runner(var, model, x, "cuda")
            err = float(np.max(np.abs(run()[0] - ref)))     # compiles, warms up
            if not err <= _config.TOLERANCE[var.dtype]:
                print(f"{name} {label}: max |h - float64 numpy| {err:.1e} FAILS the "
                      f"tolerance; not timed")
                failures += 1
                continue
            best = float("inf")
            for _ in range(args.repeat):
                t = time.perf_counter()
                run()
                best = min(best, time.perf_counter() - t)
            us[label] = best / var.T * 1e6
            plan = be.last_launch()
            parts[label] = plan.get("parts", 1)
            print(f"{name} {label:<15} {best * 1e3:9.2f} ms  {us[label]:8.2f} us per step  "
                  f"(max err {err:.1e}; {plan.get('parts', 1)} part(s), "
                  f"{plan.get('threads')} threads)")
        if len(set(parts.values())) > 1:   # a forced count a GPU cannot fit, for one
            print(f"{name}: the variants ran different splits {parts}; no derived figures")
            continue
        print(f"{name} (B={cfg.B}, T={cfg.T}, D={cfg.D}, H={cfg.H}), per step of one launch:")
        if "base" in us and "window=1" in us:
            extra = attended(cfg) - attended(dataclasses.replace(cfg, window=1))
            att = us["base"] - us["window=1"]
            print(f"  {'fixed part (window=1: one position)':<40}{us['window=1']:8.2f} us")
            print(f"  {'attention, mean over the steps':<40}{att:8.2f} us "
                  f"({att * 1e3 * cfg.T / extra:.2f} ns per attended position)")
        for label, what in (("recurrence=hc", "one H x H product (W_h h)"),
                            ("score=general", "W_s h and the query (general score)")):
            if "base" in us and label in us:
                print(f"  {what:<40}{us[label] - us['base']:8.2f} us")
        for label, against in (("step", "base"), ("step window=1", "window=1")):
            if label in us and against in us:
                print(f"  a token of {label!r} beyond a step of forward ({against}): "
                      f"{us[label] - us[against]:8.2f} us ({us[label]:.2f} us per token)")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
