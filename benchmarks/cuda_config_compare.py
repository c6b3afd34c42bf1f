"""Time the ``"cuda"`` backend under several values of one ``fastsarnn._config`` setting.

By default the setting is ``CUDA_SPLIT_PARTS`` (each sequence split over 1, 2, 4, 8, 16
blocks and ``"auto"``, the plan's choice); ``--setting NAME=V1,V2,...`` names another
(for example ``CUDA_MATVEC_WORDS=4,8,16,32`` or ``CUDA_ROWS_PER_WARP=2,4,8``; integers
or strings, as the setting takes them). For the benchmark configurations S, step, L (one
sequence), M (32 sequences: "auto" splits them into 2 parts on an H100/H200) and, when
named, XL (1024 sequences), runs each value, checks every result against the float64
NumPy reference (the contract's tolerance; L, 16384 steps, and XL, whose reference takes
a minute, are compared among the values only) and against the first value's, then times
each (best of ``--repeat`` warm runs; compilation and warm-up excluded; the values timed
in turn, round after round, each round starting one value later, so that none gains by
its place) and prints one line per configuration, with the split the last value's launch
used.
Needs a GPU for the split (the simulator never splits on "auto"). Usage:
``python benchmarks/cuda_config_compare.py [--setting NAME=V1,V2] [--repeat 3]
[--config S ...] [--quick] [--block N] [--device-arrays]`` (``--device-arrays``: forward
on device arrays, the kernels' own time without the bus; step still takes NumPy x_t).

Settings that only make sense together go in one ``--setting``, joined by ``+``, with as
many values each; the i-th values form the i-th variant. For example
``CUDA_BLOCK_SIZE=256,512+CUDA_MATVEC_WORDS=16,8`` times (256 threads, 16 words) against
(512 threads, 8 words): a block twice as wide leaves each thread half the registers.
"""

import argparse
import os
import sys
import time

import numpy as np

SPLIT = "CUDA_SPLIT_PARTS"
PACKED = "CUDA_SEQUENCES_PER_BLOCK"
DEFAULT_SETTING = f"{SPLIT}=1,2,4,8,16,auto"


def parse_setting(text):
    """``"NAME=V1,V2[+NAME2=W1,W2...]"`` -> ((NAME, NAME2, ...), [(V1, W1, ...), (V2, W2,
    ...)]): the variants, each a value per name; integers and ``True``/``False`` where
    they parse as such, else strings."""
    named = {"True": True, "False": False}
    names, columns = [], []
    for part in text.split("+"):
        name, _, values = part.partition("=")
        if not name.startswith("CUDA_") or not values or name in names:
            raise argparse.ArgumentTypeError(
                f"expected CUDA_NAME=V1,V2,... (several joined by +, each named once); "
                f"got {text!r}")
        names.append(name)
        columns.append([int(v) if v.lstrip("-").isdigit() else named.get(v, v)
                        for v in values.split(",")])
    if len({len(c) for c in columns}) != 1:
        raise argparse.ArgumentTypeError(
            f"settings joined by + need as many values each; got "
            f"{[len(c) for c in columns]} in {text!r}")
    variants = list(zip(*columns))
    # each variant timed once, and told apart from the others (True == 1 in Python, so
    # 1 and True are one variant too)
    if len(set(variants)) != len(variants):
        raise argparse.ArgumentTypeError(f"each variant must differ from the others; got "
                                         f"{[_label(v) for v in variants]} in {text!r}")
    return tuple(names), variants


def _label(variant):
    """A variant's values as a column heading: ``16`` or ``512/8``."""
    return "/".join(str(v) for v in variant)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", type=parse_setting, default=parse_setting(DEFAULT_SETTING),
                    help=f"NAME=V1,V2,... or NAME=V1,V2+NAME2=W1,W2 (variants "
                    f"(V1, W1), (V2, W2)); default {DEFAULT_SETTING}")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--config", action="append", choices=("S", "step", "L", "M", "XL"))
    ap.add_argument("--quick", action="store_true",
                    help="the small configurations of `fastsarnn bench --quick`")
    ap.add_argument("--device-arrays", action="store_true",
                    help="time forward on device arrays (the bench's cuda-device: input "
                    "uploaded once, outputs left on the GPU), the kernels without the bus; "
                    "step still takes NumPy x_t")
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
    names, values = args.setting
    missing = [n for n in names if not hasattr(_config, n)]
    if missing:
        print(f"fastsarnn._config has no setting {', '.join(missing)}")
        return 1
    setting = "/".join(names)
    default = tuple(getattr(_config, n) for n in names)

    def apply(variant):
        for n, v in zip(names, variant):
            setattr(_config, n, v)

    print(f"# {be.describe()}; fastsarnn from {os.path.dirname(fs.__file__)}; "
          f"{'device' if args.device_arrays else 'NumPy'} arrays in and out; {setting} in "
          f"{[_label(v) for v in values]} (default {_label(default)}); "
          f"CUDA_SPLIT_MIN_POSITIONS={_config.CUDA_SPLIT_MIN_POSITIONS}")

    def who(cfg):
        """The bench's runner: cuda on NumPy arrays, or on device arrays where asked for
        (forward only)."""
        return "cuda-device" if args.device_arrays and not cfg.step else "cuda"

    failures = 0
    for name in args.config or ["S", "step", "M", "L"]:
        cfg = (suite.QUICK if args.quick else suite.CONFIGS)[name]
        model, x = suite.make_problem(cfg)
        # the contract's check: float64 math (L, 16384 steps, is compared among the values)
        ref = (model.astype("float64").forward(x.astype(np.float64), backend="numpy").h
               if name not in ("L", "XL") else None)
        results, plans, runs = {}, {}, {}
        for value in values:      # each value: compiled, warmed up, its result kept
            apply(value)
            try:
                run = suite.runner(cfg, model, x, who(cfg))
                results[value] = np.asarray(run()[0])     # device arrays: copied back
                plans[value] = be.last_launch()
                runs[value] = run
            except Exception as exc:
                failures += 1
                results.pop(value, None)
                print(f"FAIL {name}: {setting}={_label(value)}: {type(exc).__name__}: {exc}")
                continue
            finally:
                apply(default)
            plan = plans[value]
            forced = dict(zip(names, value)).get(SPLIT, "auto")
            if forced != "auto" and plan["parts"] != forced:
                failures += 1
                print(f"FAIL {name}: {forced} parts forced, the launch ran {plan['parts']}")
            packed = dict(zip(names, value)).get(PACKED)
            if packed is not None and plan["sequences_per_block"] != packed:
                failures += 1
                print(f"FAIL {name}: {packed} sequences per block asked for, the launch ran "
                      f"{plan['sequences_per_block']}")
        if len(runs) < len(values):     # a value failed: this configuration has no line
            continue
        # timed in rounds: each value once per round, a round starting one value later than
        # the one before, so that no value gains or loses by its place in the comparison
        # (clocks, caches and the host's memory drift while it runs; over a number of
        # rounds that is a multiple of the values', each takes each place equally often);
        # each value's best
        order = list(runs)
        times = dict.fromkeys(order, float("inf"))
        for i in range(args.repeat):
            k = i % len(order)          # every value ran its warm-up: order is not empty
            for value in order[k:] + order[:k]:
                if value not in runs:       # failed in an earlier round
                    continue
                apply(value)
                try:
                    t0 = time.perf_counter()
                    runs[value]()
                    times[value] = min(times[value], time.perf_counter() - t0)
                except Exception as exc:
                    failures += 1
                    results.pop(value, None)
                    del runs[value]
                    print(f"FAIL {name}: {setting}={_label(value)}: {type(exc).__name__}: "
                          f"{exc}")
                finally:
                    apply(default)
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
        cells = " ".join(f"{_label(v)}: {times[v] * 1e3:.2f}" for v in values)
        plan = plans[values[-1]]
        print(f"{'ok  ' if ok else 'FAIL'} {name} (ms by {setting}) {cells} | the last ran "
              f"{plan['parts']} parts on {plan['blocks_per_sequence']} blocks, "
              f"{plan['sequences_per_block']} sequences per block | max |value - "
              f"{_label(values[0])}| {err:.1e}, max |value - float64 numpy| {err_ref:.1e}",
              flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
