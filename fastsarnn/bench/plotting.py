"""``fastsarnn bench --plot``: time per configuration, and time against T with reference
slopes, so that what is measured can be compared with the O(T) and O(T^2) expectations."""

from __future__ import annotations

import numpy as np


def fitted_slope(Ts, times, last=3) -> float:
    """Least-squares slope of log(time) against log(T) over the ``last`` largest T."""
    lt, ly = np.log(np.asarray(Ts[-last:], float)), np.log(np.asarray(times[-last:], float))
    return float(np.polyfit(lt, ly, 1)[0])


def plot(records, sweep, path):
    """Write the two-panel figure to ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, NullLocator

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    timed = [r for r in records if "skipped" not in r]
    cfgs = list(dict.fromkeys(r["config"] for r in timed))
    whos = list(dict.fromkeys(r["backend"] for r in timed))
    width = 0.8 / max(len(whos), 1)
    for i, who in enumerate(whos):
        vals = [next((r["min_s"] * 1e3 for r in timed
                      if r["config"] == c and r["backend"] == who), np.nan) for c in cfgs]
        ax1.bar(np.arange(len(cfgs)) + i * width, vals, width, label=who)
    ax1.set_xticks(np.arange(len(cfgs)) + width * (len(whos) - 1) / 2, cfgs)
    ax1.set_yscale("log")
    ax1.set_ylabel("time (ms, log scale; min of the timed runs)")
    ax1.set_title("time per configuration and runner")
    ax1.legend(fontsize=8, ncol=2)

    colors = {}
    for window in dict.fromkeys(s["window"] for s in sweep):
        pts = [s for s in sweep if s["window"] == window]
        Ts = [p["T"] for p in pts]
        ms = [p["min_s"] * 1e3 for p in pts]
        slope = fitted_slope(Ts, ms) if len(Ts) >= 2 else float("nan")
        line, = ax2.plot(Ts, ms, "o-", lw=2,
                         label=f"measured, window={window}: time ~ T^{slope:.2f} "
                               f"(fit over the largest T)")
        colors[window] = line.get_color()
        # Expected slope through the largest measured point.
        expected = 2 if window is None else 1
        Tr = np.array([Ts[0], Ts[-1]], float)
        ax2.plot(Tr, ms[-1] * (Tr / Ts[-1]) ** expected, "--", color=colors[window], lw=1,
                 label=f"reference O(T^{expected})" + (" (no window)" if window is None
                                                        else f" (window={window})"))
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    if sweep:
        Ts = sorted({s["T"] for s in sweep})
        ax2.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(Ts))
        ax2.xaxis.set_major_formatter(matplotlib.ticker.FixedFormatter([str(t) for t in Ts]))
        ax2.xaxis.set_minor_locator(NullLocator())
        ax2.xaxis.set_minor_formatter(NullFormatter())
        ax2.yaxis.set_minor_formatter(NullFormatter())
        s0 = sweep[0]
        ax2.set_title(f"time against sequence length ({s0['backend']}, B=1, "
                      f"H={s0.get('H', '?')})")
    ax2.set_xlabel("T (steps)")
    ax2.set_ylabel("time (ms, log scale)")
    ax2.legend(fontsize=7.5, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
