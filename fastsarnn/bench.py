"""``fastsarnn bench``: the SPEC section 6 suite over every available backend, the NumPy
reference and the installed peers, with a table, JSON and plots.

Each run first checks its result against the float64 reference, then times; compilation and
warm-up stay out of the timed runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

from . import __version__, _config, _registry
from .model import SelfAttentionRNN


@dataclasses.dataclass(frozen=True)
class Config:
    """One benchmark configuration (SPEC section 6)."""

    name: str
    B: int
    T: int
    D: int
    H: int
    window: int | None = None
    step: bool = False
    score: str = "dot"
    recurrence: str = "c"
    dtype: str = "float32"


CONFIGS = {
    "S": Config("S", 1, 1024, 64, 128),
    "M": Config("M", 32, 512, 64, 256),
    "L": Config("L", 1, 16384, 64, 128, window=256),
    "step": Config("step", 1, 1024, 64, 128, step=True),
}
QUICK = {
    "S": Config("S", 1, 96, 16, 32),
    "M": Config("M", 4, 48, 16, 32),
    "L": Config("L", 1, 256, 16, 32, window=16),
    "step": Config("step", 1, 48, 16, 32, step=True),
}


def useful_flops(cfg: Config, Ha: int | None = None) -> float:
    """SPEC section 6's count of useful FLOPs (multiply and add count 2)."""
    H, D = cfg.H, cfg.D
    Ha = Ha or H
    N = cfg.B * cfg.T
    n = cfg.B * sum(min(t + 1, cfg.window or t + 1) for t in range(cfg.T))
    f = N * 2 * H * (D + H) + 4 * H * n
    if cfg.recurrence == "hc":
        f += N * 2 * H * H
    if cfg.score == "general":
        f += N * 2 * H * H
    if cfg.score in ("kq", "additive"):
        f += N * 4 * Ha * H
    if cfg.score == "additive":
        f += 3 * Ha * n
    return float(f)


def history_bytes(cfg: Config, itemsize: int) -> float:
    """Bytes of attended history read (each attended state once per step)."""
    n = cfg.B * sum(min(t + 1, cfg.window or t + 1) for t in range(cfg.T))
    return float(n * cfg.H * itemsize)


def measure_sgemm(n: int = 1024, repeat: int = 5) -> float:
    """This machine's float32 matrix-product rate through NumPy, in GFLOP/s."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeat))
    return 2 * n ** 3 / best / 1e9


def _single_thread_blas():
    """BLAS limited to one thread (threadpoolctl), so that no idle BLAS worker keeps spinning
    on a core that the next timed kernel needs (OpenBLAS workers spin for a while after each
    multithreaded product). Used for the reference runs; no-op without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        import contextlib
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def make_problem(cfg: Config):
    model = SelfAttentionRNN.random(cfg.D, cfg.H, score=cfg.score, recurrence=cfg.recurrence,
                                    window=cfg.window, dtype=cfg.dtype, seed=0)
    x = np.random.default_rng(1).standard_normal((cfg.B, cfg.T, cfg.D)).astype(cfg.dtype)
    return model, x


def runner(cfg: Config, model, x, who: str):
    """A zero-argument callable that runs ``cfg`` once with ``who`` and returns (h, c)."""
    if who in ("torch", "jax"):
        from .peers import JaxScan, TorchLoop
        loop = TorchLoop(model) if who == "torch" else JaxScan(model)
        if not cfg.step:
            return lambda: loop.forward(x)

        def run_peer_steps():
            step = loop.stepper(cfg.B, cfg.T)
            outs = [step(x[:, t]) for t in range(cfg.T)]
            return np.stack([o[0] for o in outs], 1), np.stack([o[1] for o in outs], 1)
        return run_peer_steps
    if not cfg.step:
        def run_forward():
            out = model.forward(x, backend=who)
            return out.h, out.c
        return run_forward

    def run_steps():
        st = model.init_state(cfg.B)
        hs = np.empty((cfg.B, cfg.T, cfg.H), model.dtype)
        cs = np.empty_like(hs)
        for t in range(cfg.T):
            hs[:, t], cs[:, t] = model.step(x[:, t], st, backend=who)
        return hs, cs
    return run_steps


def _with_single_thread_blas(run):
    def wrapped():
        with _single_thread_blas():
            return run()
    return wrapped


def available_runners(backends=None):
    """Names to benchmark: available backends (never silently dropping an explicit one),
    then the peers that are installed."""
    from .peers import jax_available, torch_available
    info = _registry.backends()
    peers = {"torch": torch_available, "jax": jax_available}
    if backends:
        for b in backends:
            if b in peers:
                if not peers[b]():
                    raise _registry.BackendUnavailableError(
                        f"peer {b!r} is not installed (pip install {b})")
            elif not info[b].available:
                raise _registry.BackendUnavailableError(
                    f"backend {b!r} is unavailable: {info[b].reason}")
        return list(backends)
    names = [n for n in ("c", "numba", "cuda") if info[n].available] + ["numpy"]
    return names + [p for p, ok in peers.items() if ok()]


def run_config(cfg: Config, names, repeat: int, sgemm: float | None = None, progress=None):
    """Records (one per runner) for one configuration."""
    model, x = make_problem(cfg)
    with _single_thread_blas():
        ref = model.astype("float64").forward(x.astype(np.float64), backend="numpy")
    flops = useful_flops(cfg, model.attention_size)
    records = []
    for who in names:
        run = runner(cfg, model, x, who)
        if who == "numpy":
            run = _with_single_thread_blas(run)
        time.sleep(0.2)                    # let other runtimes' idle workers go to sleep
        h, c = run()                       # warm-up (JIT compile, caches) and parity check
        err = max(float(np.max(np.abs(h - ref.h))), float(np.max(np.abs(c - ref.c))))
        reps = repeat if who != "numpy" else max(1, min(repeat, 2))
        times = []
        for _ in range(reps):
            times.append(_timed(run))
            if progress is not None:
                progress.update(1)
        if progress is not None and reps < repeat:
            progress.update(repeat - reps)
        med = statistics.median(times)
        rec = {
            "config": cfg.name, "backend": who,
            "kind": "peer" if who in ("torch", "jax") else (
                "reference" if who == "numpy" else "backend"),
            "B": cfg.B, "T": cfg.T, "D": cfg.D, "H": cfg.H, "window": cfg.window,
            "score": cfg.score, "recurrence": cfg.recurrence, "dtype": cfg.dtype,
            "step": cfg.step, "repeat": reps, "times_s": times, "median_s": med,
            "min_s": min(times), "gflops": flops / min(times) / 1e9,
            "pct_sgemm": (100.0 * flops / min(times) / 1e9 / sgemm) if sgemm else None,
            "history_gbps": history_bytes(cfg, model.dtype.itemsize) / min(times) / 1e9,
            "max_abs_err": err, "tolerance": _config.TOLERANCE[cfg.dtype],
            "within_tolerance": err <= _config.TOLERANCE[cfg.dtype],
        }
        records.append(rec)
    by = {r["backend"]: r for r in records}
    for r in records:
        r["speedup_vs_numpy"] = (by["numpy"]["min_s"] / r["min_s"]) if "numpy" in by else None
        r["speedup_vs_torch"] = (by["torch"]["min_s"] / r["min_s"]) if "torch" in by else None
    return records


def format_table(records) -> str:
    """A plain-text table per configuration."""
    lines = []
    for cfg_name in dict.fromkeys(r["config"] for r in records):
        rows = [r for r in records if r["config"] == cfg_name]
        r0 = rows[0]
        what = "model.step per token" if r0["step"] else "forward"
        lines.append(f"\n{cfg_name}: B={r0['B']} T={r0['T']} D={r0['D']} H={r0['H']} "
                     f"window={r0['window']} score={r0['score']} {r0['dtype']} ({what})")
        lines.append(f"  {'backend':<8}{'median ms':>11}{'min ms':>10}{'x numpy':>9}"
                     f"{'x torch':>9}{'GFLOP/s':>9}{'%SGEMM':>8}{'max err':>10}  ok")
        for r in rows:
            def f(v, fmt):
                width = fmt.lstrip(">").split(".")[0]
                return format(v, fmt) if v is not None else format("-", ">" + width)
            lines.append(
                f"  {r['backend']:<8}{r['median_s'] * 1e3:>11.2f}{r['min_s'] * 1e3:>10.2f}"
                f"{f(r['speedup_vs_numpy'], '>9.1f')}{f(r['speedup_vs_torch'], '>9.1f')}"
                f"{r['gflops']:>9.2f}{f(r['pct_sgemm'], '>8.1f')}{r['max_abs_err']:>10.1e}  "
                f"{'yes' if r['within_tolerance'] else 'NO'}")
    return "\n".join(lines)


def scaling_sweep(names, quick: bool):
    """Time against T without a window (O(T^2)) and with one (O(T*window))."""
    who = names[0]
    Ts = [64, 128, 256, 512] if quick else [512, 1024, 2048, 4096, 8192]
    H, D, W = (32, 16, 16) if quick else (128, 64, 256)
    out = []
    for window in (None, W):
        for T in Ts:
            cfg = Config(f"sweep-T{T}-W{window}", 1, T, D, H, window=window)
            model, x = make_problem(cfg)
            run = runner(cfg, model, x, who)
            run()
            out.append({"backend": who, "T": T, "window": window,
                        "min_s": min(_timed(run) for _ in range(2))})
    return out


def plot(records, sweep, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    cfgs = list(dict.fromkeys(r["config"] for r in records))
    whos = list(dict.fromkeys(r["backend"] for r in records))
    width = 0.8 / max(len(whos), 1)
    for i, who in enumerate(whos):
        vals = [next((r["min_s"] * 1e3 for r in records
                      if r["config"] == c and r["backend"] == who), np.nan) for c in cfgs]
        ax1.bar(np.arange(len(cfgs)) + i * width, vals, width, label=who)
    ax1.set_xticks(np.arange(len(cfgs)) + width * (len(whos) - 1) / 2, cfgs)
    ax1.set_yscale("log")
    ax1.set_ylabel("time (ms, log)")
    ax1.set_title("time per configuration and backend")
    ax1.legend()
    for window in dict.fromkeys(s["window"] for s in sweep):
        pts = [s for s in sweep if s["window"] == window]
        ax2.loglog([p["T"] for p in pts], [p["min_s"] * 1e3 for p in pts], "o-",
                   label=f"window={window} ({'O(T^2)' if window is None else 'O(T*window)'})")
    if sweep:
        ax2.set_title(f"time against sequence length ({sweep[0]['backend']} backend)")
    ax2.set_xlabel("T")
    ax2.set_ylabel("time (ms)")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def machine_info() -> dict:
    from .cli import cpu_info
    return {"cpu": cpu_info(), "python": platform.python_version(), "numpy": np.__version__,
            "fastsarnn": __version__, "platform": platform.platform()}


def add_arguments(p):
    p.add_argument("--config", action="append", choices=list(CONFIGS),
                   help="configuration to run (repeatable; default: all)")
    p.add_argument("--backends", help="comma list of backends/peers (default: every "
                   "available backend, numpy and installed peers)")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per backend (>= 1)")
    p.add_argument("--batch", type=int)
    p.add_argument("--seq-len", type=int)
    p.add_argument("--input-size", type=int)
    p.add_argument("--hidden-size", type=int)
    p.add_argument("--score", choices=_config.SCORES)
    p.add_argument("--recurrence", choices=_config.RECURRENCES)
    p.add_argument("--window", type=int)
    p.add_argument("--dtype", choices=_config.DTYPES)
    p.add_argument("--quick", action="store_true", help="small sizes (CI smoke)")
    p.add_argument("--json", metavar="FILE", help="write one record per config x backend")
    p.add_argument("--plot", metavar="FILE.png", help="write time plots (matplotlib)")
    p.add_argument("--no-progress", action="store_true")


def _configs_from_args(args, parser):
    base = QUICK if args.quick else CONFIGS
    custom = {k: getattr(args, k) for k in ("batch", "seq_len", "input_size", "hidden_size",
                                             "score", "recurrence", "window", "dtype")
              if getattr(args, k) is not None}
    for k in ("batch", "seq_len", "input_size", "hidden_size", "window"):
        if k in custom and custom[k] < 1:
            parser.error(f"--{k.replace('_', '-')} must be >= 1; got {custom[k]}")
    names = args.config or list(base)
    cfgs = [base[n] for n in names]
    if custom:
        ren = {"batch": "B", "seq_len": "T", "input_size": "D", "hidden_size": "H"}
        cfgs = [dataclasses.replace(c, **{ren.get(k, k): v for k, v in custom.items()})
                for c in cfgs]
    return cfgs


def run_cli(args, parser) -> int:
    if args.repeat < 1:
        parser.error(f"--repeat must be >= 1; got {args.repeat}")
    cfgs = _configs_from_args(args, parser)
    req = None
    if args.backends:
        req = [b.strip() for b in args.backends.split(",") if b.strip()]
        valid = list(_registry.BACKEND_MODULES) + ["torch", "jax"]
        bad = [b for b in req if b not in valid]
        if bad:
            parser.error(f"unknown backend(s) {bad}; expected names from {valid}")
    try:
        names = available_runners(req)
    except _registry.BackendUnavailableError as exc:
        parser.error(str(exc))
    total = len(cfgs) * len(names) * args.repeat
    progress = None
    if not args.no_progress:
        try:
            from tqdm import tqdm
            progress = tqdm(total=total, desc="fastsarnn bench", unit="run", file=sys.stderr)
        except ImportError:
            progress = None
    records = []
    for cfg in cfgs:
        if progress is not None:
            progress.set_postfix_str(cfg.name)
        records += run_config(cfg, names, args.repeat, None, progress)
    if progress is not None:
        progress.close()
    sgemm = measure_sgemm(256 if args.quick else 1024)   # last: its BLAS threads spin after
    for r in records:
        r["pct_sgemm"] = 100.0 * r["gflops"] / sgemm
    print(f"machine: {machine_info()['cpu']['model']}, {os.cpu_count()} cores; "
          f"NumPy SGEMM {sgemm:.1f} GFLOP/s")
    print(format_table(records))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_info(), "sgemm_gflops": sgemm,
                       "records": records}, f, indent=1)
    if args.plot:
        sweep = scaling_sweep([n for n in names if n not in ("torch", "jax")], args.quick)
        plot(records, sweep, args.plot)
    bad = [r for r in records if not r["within_tolerance"]]
    if bad:
        print(f"\nPARITY FAILURE: {[(r['config'], r['backend']) for r in bad]}")
        return 1
    return 0
