"""``fastsarnn bench``: the SPEC section 6 suite over every available backend, the NumPy
reference and the installed peers.

Each runner's result is first checked against the float64 reference, then it is timed
``repeat`` times after one untimed warm-up (compilation, caches, graph capture). Each
configuration's table is printed as soon as it is measured; the progress line estimates the
remaining time from the runs measured so far; figures that the spread of the runs or the
machine's load make unreliable are flagged in the table and in the JSON.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

from .. import __version__, _config, _registry, _sysinfo
from ..model import SelfAttentionRNN
from . import peers as _peers


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
    #: Run by default only where a GPU backend or peer is present (huge for a CPU).
    gpu_scale: bool = False


CONFIGS = {
    "S": Config("S", 1, 1024, 64, 128),
    "M": Config("M", 32, 512, 64, 256),
    "L": Config("L", 1, 16384, 64, 128, window=256),
    "step": Config("step", 1, 1024, 64, 128, step=True),
    "XL": Config("XL", 1024, 512, 64, 256, gpu_scale=True),
}
QUICK = {
    "S": Config("S", 1, 96, 16, 32),
    "M": Config("M", 4, 48, 16, 32),
    "L": Config("L", 1, 256, 16, 32, window=16),
    "step": Config("step", 1, 48, 16, 32, step=True),
    "XL": Config("XL", 64, 48, 16, 32, gpu_scale=True),
}
#: Backends timed a second time with device arrays in and out (runner name -> backend): the
#: input is uploaded once before the timing and the outputs stay on the device, so the
#: time leaves out the copies of NumPy in/out over the bus (PCIe) and the host's work on
#: NumPy arrays, and includes what a call on device arrays does (the finiteness check of
#: ``x`` on the device, new zeroed output arrays there); ``forward`` only (``step`` takes
#: NumPy ``x_t``).
DEVICE_RUNNERS = {"cuda-device": "cuda"}
#: Runners that use a GPU: their presence adds the GPU-scale configurations by default.
GPU_RUNNERS = ("cuda", "cuda-device", "torch-cuda", "torch-cuda-graph")
#: Runners not timed by default on GPU-scale configurations (minutes per run on a CPU): the
#: NumPy reference (its float64 run still checks every result there) and the CPU peers.
SKIPPED_AT_GPU_SCALE = ("numpy", "torch", "jax")
#: Seconds slept before each runner so that other runtimes' idle workers go to sleep.
SETTLE_S = 0.2


class NotApplicable(Exception):
    """A runner that cannot run a configuration by design (e.g. a CUDA graph and per-token
    stepping)."""


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


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure_sgemm(n: int = 1024, min_runs: int | None = None,
                  min_seconds: float | None = None) -> dict:
    """This machine's float32 matrix-product rate through NumPy (all cores).

    Two untimed warm-up products, then at least ``min_runs`` timed ones and at least
    ``min_seconds`` of them; the rate is that of the fastest run (the least disturbed).
    Returns ``{"gflops", "n", "runs", "best_s", "median_s"}``.
    """
    min_runs = _config.BENCH_SGEMM_MIN_RUNS if min_runs is None else min_runs
    min_seconds = _config.BENCH_SGEMM_MIN_SECONDS if min_seconds is None else min_seconds
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    out = np.empty((n, n), np.float32)
    for _ in range(2):
        np.matmul(a, b, out=out)
    times = []
    t_start = time.perf_counter()
    while len(times) < min_runs or (time.perf_counter() - t_start < min_seconds
                                    and len(times) < 50 * min_runs):
        times.append(_timed(lambda: np.matmul(a, b, out=out)))
    best = min(times)
    return {"gflops": 2 * n ** 3 / best / 1e9, "n": n, "runs": len(times), "best_s": best,
            "median_s": statistics.median(times)}


def single_thread_blas():
    """BLAS limited to one thread (threadpoolctl), so that no idle BLAS worker keeps spinning
    on a core that the next timed kernel needs (OpenBLAS workers spin for a while after each
    multithreaded product). Used for the reference runs; no-op without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def with_single_thread_blas(run):
    """``run`` wrapped in :func:`single_thread_blas`."""
    def wrapped():
        with single_thread_blas():
            return run()
    return wrapped


def make_problem(cfg: Config):
    """The model and input of a configuration (SPEC section 6)."""
    model = SelfAttentionRNN.random(cfg.D, cfg.H, score=cfg.score, recurrence=cfg.recurrence,
                                    window=cfg.window, dtype=cfg.dtype, seed=0)
    x = np.random.default_rng(1).standard_normal((cfg.B, cfg.T, cfg.D)).astype(cfg.dtype)
    return model, x


def runner(cfg: Config, model, x, who: str):
    """A zero-argument callable that runs ``cfg`` once with ``who`` and returns (h, c).

    Raises :class:`NotApplicable` where ``who`` cannot run ``cfg`` by design.
    """
    if who in _peers.PEER_NAMES:
        loop = _peers.make_peer(who, model)
        if not cfg.step:
            return lambda: loop.forward(x)
        if not getattr(loop, "supports_step", True):
            raise NotApplicable(f"{who} replays whole sequences; no per-token stepping")

        def run_peer_steps():
            step = loop.stepper(cfg.B, cfg.T)
            outs = [step(x[:, t]) for t in range(cfg.T)]
            return np.stack([o[0] for o in outs], 1), np.stack([o[1] for o in outs], 1)
        return run_peer_steps
    if who in DEVICE_RUNNERS:
        return _device_runner(cfg, model, x, DEVICE_RUNNERS[who])
    if not cfg.step:
        def run_forward():
            out = model.forward(x, backend=who)
            return out.h, out.c
        return with_single_thread_blas(run_forward) if who == "numpy" else run_forward

    def run_steps():
        st = model.init_state(cfg.B)
        hs = np.empty((cfg.B, cfg.T, cfg.H), model.dtype)
        cs = np.empty_like(hs)
        for t in range(cfg.T):
            hs[:, t], cs[:, t] = model.step(x[:, t], st, backend=who)
        return hs, cs
    if who == "numpy":
        return with_single_thread_blas(run_steps)
    return run_steps


def _device_runner(cfg, model, x, backend):
    """``forward`` on device arrays: ``x`` uploaded once, here; each run returns the
    outputs as device arrays (``np.asarray`` copies them to the host, for the check)."""
    if cfg.step:
        raise NotApplicable("device arrays in and out: forward only (step takes NumPy x_t)")
    be = _registry._load(backend)
    d_x = be.to_device(np.ascontiguousarray(x, dtype=model.dtype))

    def run_on_device():
        out = model.forward(d_x, backend=backend)    # returns once the kernels finished
        return out.h, out.c
    return run_on_device


def available_runners(backends=None):
    """Names to benchmark: available backends (never silently dropping an explicit one),
    then the NumPy reference, then the peers that can run here."""
    info = _registry.backends()
    if backends:
        for b in backends:
            if b in DEVICE_RUNNERS:
                backend = DEVICE_RUNNERS[b]
                if not info[backend].available:
                    raise _registry.BackendUnavailableError(
                        f"{b!r} runs backend {backend!r}, which is unavailable: "
                        f"{info[backend].reason}")
            elif b in _peers.PEER_NAMES:
                ok, reason = _peers.peer_available(b)
                if not ok:
                    raise _registry.BackendUnavailableError(f"peer {b!r} cannot run: {reason}")
            elif not info[b].available:
                raise _registry.BackendUnavailableError(
                    f"backend {b!r} is unavailable: {info[b].reason}")
        return list(backends)
    names = [n for n in ("c", "numba", "cuda") if info[n].available]
    names += [d for d, b in DEVICE_RUNNERS.items() if info[b].available] + ["numpy"]
    return names + [p for p in _peers.PEER_NAMES if _peers.peer_available(p)[0]]


def default_configs(names, quick: bool = False) -> list:
    """The configurations run when none is asked for: GPU-scale ones only with a GPU runner."""
    base = QUICK if quick else CONFIGS
    gpu = any(n in GPU_RUNNERS for n in names)
    return [c for c in base.values() if gpu or not c.gpu_scale]


def runners_for(cfg: Config, names, explicit: bool = False) -> list:
    """The runners timed on ``cfg``: at GPU scale, unless the runners were named explicitly,
    not those of :data:`SKIPPED_AT_GPU_SCALE`."""
    if cfg.gpu_scale and not explicit:
        return [n for n in names if n not in SKIPPED_AT_GPU_SCALE]
    return list(names)


def _kind(who):
    return "peer" if who in _peers.PEER_NAMES else (
        "reference" if who == "numpy" else "backend")


class Estimate:
    """Remaining time of the suite, from the runs measured so far.

    A runner part-way through a configuration is priced at the median of its own runs there;
    unmeasured work at the seconds per useful FLOP its runner showed on its latest
    configuration of the same kind (whole sequences or per-token stepping; failing that,
    the other kind, or the mean rate of the measured runners).
    """

    def __init__(self, plan, repeat):
        self.repeat = repeat
        self.flops = {cfg.name: useful_flops(cfg) for cfg, _ in plan}
        self.step = {cfg.name: cfg.step for cfg, _ in plan}
        self.left = {(cfg.name, who): repeat + 1 for cfg, names in plan for who in names}
        self.ref_left = {cfg.name for cfg, _ in plan}
        self.times = {}
        self.rate = {}
        self.ref_rate = None

    def ran(self, cfg_name, who, seconds):
        self.left[(cfg_name, who)] -= 1
        times = self.times.setdefault((cfg_name, who), [])
        times.append(seconds)
        self.rate[(who, self.step[cfg_name])] = min(times) / self.flops[cfg_name]

    def skipped(self, cfg_name, who):
        self.left[(cfg_name, who)] = 0

    def reference_done(self, cfg_name, seconds):
        self.ref_left.discard(cfg_name)
        self.ref_rate = seconds / self.flops[cfg_name]

    def _rate(self, who, step):
        for key in ((who, step), (who, not step)):
            if key in self.rate:
                return self.rate[key]
        same = [r for (w, s), r in self.rate.items() if s == step]
        return sum(same) / len(same) if same else None

    def remaining_s(self):
        """Seconds left, or None while nothing comparable has been measured yet."""
        total = 0.0
        for (cfg_name, who), n in self.left.items():
            if n <= 0:
                continue
            own = self.times.get((cfg_name, who))
            if own:
                total += n * statistics.median(own)
                continue
            r = self._rate(who, self.step[cfg_name])
            if r is None:
                return None
            total += n * r * self.flops[cfg_name] + SETTLE_S
        for cfg_name in self.ref_left:
            if self.ref_rate is None:
                return None
            total += self.ref_rate * self.flops[cfg_name]
        return total


def _fmt_s(s):
    if s is None:
        return "estimating"
    s = int(round(s))
    return f"{s // 60}:{s % 60:02d}"


class Progress:
    """A progress bar on stderr (tqdm when installed, else one line per runner) showing runs
    done and the remaining time from :class:`Estimate`; tables go to stdout as they come."""

    def __init__(self, total_runs, enabled=True):
        self.bar = None
        self.enabled = enabled
        self.t0 = time.perf_counter()
        if enabled:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total_runs, desc="fastsarnn bench", unit="run",
                                file=sys.stderr, dynamic_ncols=True,
                                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/"
                                           "{total_fmt} runs [{elapsed}{postfix}]")
            except ImportError:
                self.bar = None
        self.total, self.done = total_runs, 0

    def update(self, n, label, remaining):
        self.done += n
        msg = f"{label}, about {_fmt_s(remaining)} left" if remaining is not None \
            else f"{label}, estimating time left"
        if self.bar is not None:
            self.bar.set_postfix_str(msg, refresh=False)
            self.bar.update(n)
        elif self.enabled:
            print(f"fastsarnn bench: {self.done}/{self.total} runs, {msg}", file=sys.stderr,
                  flush=True)

    def write(self, text):
        if self.bar is not None:
            self.bar.write(text, file=sys.stdout)
        else:
            print(text)
        sys.stdout.flush()

    def close(self):
        if self.bar is not None:
            self.bar.close()


def run_config(cfg: Config, names, repeat: int, sgemm: float | None = None, progress=None,
               estimate=None):
    """Records (one per runner that applies) for one configuration."""
    model, x = make_problem(cfg)
    t0 = time.perf_counter()
    with single_thread_blas():
        ref = model.astype("float64").forward(x.astype(np.float64), backend="numpy")
    if estimate is not None:
        estimate.reference_done(cfg.name, time.perf_counter() - t0)
    flops = useful_flops(cfg, model.attention_size)
    tol = _config.TOLERANCE[cfg.dtype]
    records = []
    for who in names:
        label = f"{cfg.name}/{who}"
        try:
            run = runner(cfg, model, x, who)
        except NotApplicable as exc:
            if estimate is not None:
                estimate.skipped(cfg.name, who)
            if progress is not None:
                progress.update(repeat, label, estimate and estimate.remaining_s())
            records.append({"config": cfg.name, "backend": who, "kind": _kind(who),
                            "skipped": str(exc)})
            continue
        time.sleep(SETTLE_S)
        t_warm = time.perf_counter()
        h, c = run()                       # warm-up (JIT, caches, graph capture) and parity
        h, c = np.asarray(h), np.asarray(c)    # a device runner's outputs: to the host
        warm_s = time.perf_counter() - t_warm
        if estimate is not None:
            estimate.ran(cfg.name, who, warm_s)
        err = max(float(np.max(np.abs(h - ref.h))), float(np.max(np.abs(c - ref.c))))
        times = []
        for _ in range(repeat):
            times.append(_timed(run))
            if estimate is not None:
                estimate.ran(cfg.name, who, times[-1])
            if progress is not None:
                progress.update(1, label, estimate and estimate.remaining_s())
        med, best = statistics.median(times), min(times)
        spread = med / best
        records.append({
            "config": cfg.name, "backend": who, "kind": _kind(who),
            "B": cfg.B, "T": cfg.T, "D": cfg.D, "H": cfg.H, "window": cfg.window,
            "score": cfg.score, "recurrence": cfg.recurrence, "dtype": cfg.dtype,
            "step": cfg.step, "repeat": repeat, "warmup_s": warm_s, "times_s": times,
            "median_s": med, "min_s": best, "spread": spread,
            "noisy": repeat >= 2 and spread > _config.BENCH_NOISY_SPREAD,
            "load_per_core": _sysinfo.load_per_core(),
            "gflops": flops / best / 1e9, "pct_sgemm": None, "pct_sgemm_capped": False,
            "history_gbps": history_bytes(cfg, model.dtype.itemsize) / best / 1e9,
            "max_abs_err": err, "tolerance": tol, "within_tolerance": err <= tol,
        })
    timed = [r for r in records if "skipped" not in r]
    by = {r["backend"]: r for r in timed}
    for r in timed:
        r["speedup_vs_numpy"] = (by["numpy"]["min_s"] / r["min_s"]) if "numpy" in by else None
        r["speedup_vs_torch"] = (by["torch"]["min_s"] / r["min_s"]) if "torch" in by else None
    if sgemm:
        set_sgemm(records, sgemm)
    return records


def set_sgemm(records, sgemm: float) -> None:
    """Fill ``pct_sgemm``: percent of this host's NumPy SGEMM rate, capped at 100
    (``pct_sgemm_capped`` then says the baseline was measured below what a CPU kernel
    reached: a disturbed run). None for the GPU runners (:data:`GPU_RUNNERS`): the CPU's
    matrix-product rate is no ceiling for a GPU, and their GFLOP/s stand alone."""
    for r in records:
        if "skipped" in r:
            continue
        if r["backend"] in GPU_RUNNERS:
            r["pct_sgemm"], r["pct_sgemm_capped"] = None, False
            continue
        raw = 100.0 * r["gflops"] / sgemm
        r["pct_sgemm"] = min(raw, 100.0)
        r["pct_sgemm_capped"] = raw > 100.0


def config_notes(records) -> list:
    """Warnings about one configuration's figures (noise, load, capped percentages)."""
    notes = []
    timed = [r for r in records if "skipped" not in r]
    noisy = [r for r in timed if r["noisy"]]
    if noisy:
        notes.append("noisy: median/min above {:g} for {} -- another process probably "
                     "competed for the cores; these figures are unreliable".format(
                         _config.BENCH_NOISY_SPREAD,
                         ", ".join(f"{r['backend']} ({r['spread']:.1f}x)" for r in noisy)))
    loads = [r["load_per_core"] for r in timed if r["load_per_core"] is not None]
    if loads and max(loads) > _config.BENCH_BUSY_LOAD_PER_CORE + 1:
        notes.append(f"busy: load average {max(loads):.1f} per core while this "
                     "configuration ran (more runnable threads than cores)")
    capped = [r["backend"] for r in timed if r["pct_sgemm_capped"]]
    if capped:
        notes.append(f"%SGEMM capped at 100 for {', '.join(capped)}: the SGEMM baseline was "
                     "measured low (disturbed), so percentages of it are unreliable")
    for r in records:
        if "skipped" in r:
            notes.append(f"{r['backend']}: not run ({r['skipped']})")
    return notes


def format_table(records) -> str:
    """A plain-text table per configuration, each followed by its warnings."""
    lines = []
    for cfg_name in dict.fromkeys(r["config"] for r in records):
        rows = [r for r in records if r["config"] == cfg_name]
        timed = [r for r in rows if "skipped" not in r]
        if not timed:
            lines.append(f"\n{cfg_name}: nothing ran")
            lines += [f"  note: {n}" for n in config_notes(rows)]
            continue
        r0 = timed[0]
        what = "model.step per token" if r0["step"] else "forward"
        wn = max(8, max(len(r["backend"]) for r in timed) + 1)
        lines.append(f"\n{cfg_name}: B={r0['B']} T={r0['T']} D={r0['D']} H={r0['H']} "
                     f"window={r0['window']} score={r0['score']} {r0['dtype']} ({what}); "
                     f"min of {r0['repeat']} run{'s' if r0['repeat'] != 1 else ''}")
        lines.append(f"  {'backend':<{wn}}{'median ms':>11}{'min ms':>10}{'spread':>8}"
                     f"{'x numpy':>9}{'x torch':>9}{'GFLOP/s':>9}{'%SGEMM':>8}{'max err':>10}"
                     "  ok")
        for r in timed:
            def f(v, fmt):
                width = fmt.lstrip(">").split(".")[0]
                return format(v, fmt) if v is not None else format("-", ">" + width)
            pct = ">100" if r["pct_sgemm_capped"] else None
            pct = format(pct, ">8") if pct else f(r["pct_sgemm"], ">8.1f")
            spread = f"{r['spread']:.2f}" + ("!" if r["noisy"] else " ")
            lines.append(
                f"  {r['backend']:<{wn}}{r['median_s'] * 1e3:>11.2f}{r['min_s'] * 1e3:>10.2f}"
                f"{spread:>8}{f(r['speedup_vs_numpy'], '>9.1f')}"
                f"{f(r['speedup_vs_torch'], '>9.1f')}{r['gflops']:>9.2f}{pct}"
                f"{r['max_abs_err']:>10.1e}  {'yes' if r['within_tolerance'] else 'NO'}")
        lines += [f"  note: {n}" for n in config_notes(rows)]
    return "\n".join(lines)


def scaling_sweep(names, quick: bool, repeat: int = 3):
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
            out.append({"backend": who, "T": T, "window": window, "H": H, "D": D,
                        "min_s": min(_timed(run) for _ in range(repeat))})
    return out


def gpu_name(names=()) -> str | None:
    """The GPU the GPU runners use (PyTorch's device name, else the CUDA backend's)."""
    name = _peers.gpu_name() if any(n.startswith("torch-cuda") for n in names) or not names \
        else None
    if name is None and ("cuda" in names or "cuda-device" in names):
        describe = getattr(_registry._load("cuda"), "describe", None)
        name = describe() if describe else "CUDA device"
    return name


def machine_info(names=()) -> dict:
    return {"cpu": _sysinfo.cpu_info(), "gpu": gpu_name(names),
            "python": platform.python_version(), "numpy": np.__version__,
            "fastsarnn": __version__, "platform": platform.platform()}


def settings() -> dict:
    """Every setting of :mod:`fastsarnn._config` (its upper-case names but those naming
    environment variables) as it is now, as JSON values: the settings the figures were
    measured with. Sets become sorted lists, NumPy scalars numbers, and anything JSON cannot
    hold its ``repr``."""
    out = {}
    for name in sorted(vars(_config)):
        if not name.isupper() or name.startswith("ENV_"):
            continue
        value = getattr(_config, name)
        if isinstance(value, (set, frozenset)):
            value = sorted(value, key=repr)
        elif isinstance(value, np.generic):
            value = value.item()
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            value = repr(value)
        out[name] = value
    return out


def add_arguments(p):
    """The ``fastsarnn bench`` options."""
    p.add_argument("--config", action="append", choices=list(CONFIGS),
                   help="configuration to run (repeatable; default: S, M, L, step, and XL "
                        "when a GPU backend or peer is present)")
    p.add_argument("--backends", help="comma list of backends/peers (default: every "
                   "available backend, cuda also as cuda-device (device arrays in and "
                   "out, forward only), numpy and the peers that can run here: "
                   f"{', '.join(_peers.PEER_NAMES)})")
    p.add_argument("--repeat", type=int, default=5,
                   help="timed runs per runner after one warm-up; the table shows the "
                        "minimum and the median (default 5)")
    p.add_argument("--batch", type=int)
    p.add_argument("--seq-len", type=int)
    p.add_argument("--input-size", type=int)
    p.add_argument("--hidden-size", type=int)
    p.add_argument("--score", choices=_config.SCORES)
    p.add_argument("--recurrence", choices=_config.RECURRENCES)
    p.add_argument("--window", type=int)
    p.add_argument("--dtype", choices=_config.DTYPES)
    p.add_argument("--quick", action="store_true", help="small sizes (CI smoke)")
    p.add_argument("--json", metavar="FILE", help="write one record per config x runner")
    p.add_argument("--plot", metavar="FILE.png", help="write time plots (matplotlib)")
    p.add_argument("--no-progress", action="store_true")


def _configs_from_args(args, parser, names):
    base = QUICK if args.quick else CONFIGS
    custom = {k: getattr(args, k) for k in ("batch", "seq_len", "input_size", "hidden_size",
                                             "score", "recurrence", "window", "dtype")
              if getattr(args, k) is not None}
    for k in ("batch", "seq_len", "input_size", "hidden_size", "window"):
        if k in custom and custom[k] < 1:
            parser.error(f"--{k.replace('_', '-')} must be >= 1; got {custom[k]}")
    cfgs = [base[n] for n in dict.fromkeys(args.config)] if args.config else \
        default_configs(names, args.quick)
    if custom:
        ren = {"batch": "B", "seq_len": "T", "input_size": "D", "hidden_size": "H"}
        cfgs = [dataclasses.replace(c, **{ren.get(k, k): v for k, v in custom.items()})
                for c in cfgs]
    return cfgs


def run_cli(args, parser) -> int:
    """``fastsarnn bench``: run, print tables as they come, write JSON and plot."""
    if args.repeat < 1:
        parser.error(f"--repeat must be >= 1; got {args.repeat}")
    for opt, path in (("--json", args.json), ("--plot", args.plot)):
        folder = os.path.dirname(os.path.abspath(path)) if path else None
        if folder and not os.path.isdir(folder):
            parser.error(f"{opt} {path}: folder {folder} does not exist")
    req = None
    if args.backends:
        req = [b.strip() for b in args.backends.split(",") if b.strip()]
        valid = (list(_registry.BACKEND_MODULES) + list(DEVICE_RUNNERS)
                 + list(_peers.PEER_NAMES))
        bad = [b for b in req if b not in valid]
        if bad:
            parser.error(f"unknown backend(s) {bad}; expected names from {valid}")
    try:
        names = available_runners(req)
    except _registry.BackendUnavailableError as exc:
        parser.error(str(exc))
    cfgs = _configs_from_args(args, parser, names)
    plan = [(cfg, runners_for(cfg, names, explicit=req is not None)) for cfg in cfgs]
    warnings = []
    load_before = _sysinfo.load_per_core()
    if load_before is not None and load_before > _config.BENCH_BUSY_LOAD_PER_CORE:
        warnings.append(f"the machine was busy before the benchmark started (load average "
                        f"{load_before:.2f} per core): times are likely inflated and noisy")
    sgemm0 = measure_sgemm(256 if args.quick else 1024)
    time.sleep(SETTLE_S * 2)                     # let the BLAS workers go idle
    machine = machine_info(names)
    cpu = machine["cpu"]
    print(f"machine: {cpu['model']}, {cpu['cores']} cores"
          + (f"; GPU: {machine['gpu']}" if machine["gpu"] else "")
          + f"; NumPy SGEMM {sgemm0['gflops']:.1f} GFLOP/s (best of {sgemm0['runs']}, "
            f"n={sgemm0['n']})"
          + (f"; load {load_before:.2f} per core" if load_before is not None else ""))
    for w in warnings:
        print(f"warning: {w}")
    sys.stdout.flush()
    estimate = Estimate(plan, args.repeat)
    progress = Progress(sum(len(n) for _, n in plan) * args.repeat,
                        enabled=not args.no_progress)
    records = []
    try:
        for cfg, cfg_names in plan:
            t0 = time.perf_counter()
            recs = run_config(cfg, cfg_names, args.repeat, sgemm0["gflops"], progress,
                              estimate)
            records += recs
            progress.write(format_table(recs)
                           + f"\n  ({time.perf_counter() - t0:.1f} s for this configuration)")
    finally:
        progress.close()
    sgemm1 = measure_sgemm(256 if args.quick else 1024)
    sgemm = max(sgemm0["gflops"], sgemm1["gflops"])
    if sgemm0["gflops"] < sgemm / _config.BENCH_NOISY_SPREAD:
        warnings.append(f"SGEMM rate at the start ({sgemm0['gflops']:.1f} GFLOP/s) and at the "
                        f"end ({sgemm1['gflops']:.1f}) differ by more than "
                        f"{_config.BENCH_NOISY_SPREAD}x: the machine's speed changed during "
                        f"the run; the JSON uses {sgemm:.1f}")
        print(f"warning: {warnings[-1]}")
    set_sgemm(records, sgemm)
    timed = [r for r in records if "skipped" not in r]
    unreliable = [f"{r['config']}/{r['backend']}" for r in timed if r["noisy"]]
    if unreliable:
        warnings.append(f"noisy figures (median/min > {_config.BENCH_NOISY_SPREAD}): "
                        + ", ".join(unreliable))
    busy = sorted({r["config"] for r in timed if r["load_per_core"] is not None
                   and r["load_per_core"] > _config.BENCH_BUSY_LOAD_PER_CORE + 1})
    if busy:
        warnings.append("more runnable threads than cores while these configurations ran: "
                        + ", ".join(busy))
    if any(r["pct_sgemm_capped"] for r in timed):
        warnings.append("some %SGEMM figures were capped at 100: the SGEMM baseline was "
                        "disturbed")
    reliable = not warnings
    print("\nfigures look " + ("reliable (low spread, idle machine)" if reliable else
                               "UNRELIABLE: " + "; ".join(warnings)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "settings": settings(), "sgemm_gflops": sgemm,
                       "sgemm": {"start": sgemm0, "end": sgemm1},
                       "load_per_core_before": load_before, "reliable": reliable,
                       "warnings": warnings, "records": records}, f, indent=1)
    if args.plot:
        from .plotting import plot
        cpu_names = [n for n in names if n not in _peers.PEER_NAMES and n != "cuda"
                     and n not in DEVICE_RUNNERS]
        sweep = scaling_sweep(cpu_names or names, args.quick)
        plot(records, sweep, args.plot)
    bad = [r for r in timed if not r["within_tolerance"]]
    if bad:
        print(f"\nPARITY FAILURE: {[(r['config'], r['backend']) for r in bad]}")
        return 1
    return 0
