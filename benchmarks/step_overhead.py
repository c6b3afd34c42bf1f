"""What ``model.step`` costs per token on top of its kernel call, on a CPU backend.

The bench's ``step`` model (B=1, D=64, H=128, score dot, float32) steps one token at
position ``--position`` (default 0) again and again: the stream consumes that many tokens
of the bench's input first, and its position is reset before each call, so every call does
the same work (the update and an attention over position + 1 positions; h and c carry
over from the call before, which changes values, not work). Timed, per call:
the backend's prepared kernel call alone, then ``model.step`` without ``out=``, with
``out=`` buffers, with ``out=`` and ``check_finite=False``, and with ``out=`` but without
``backend=`` (the backend chosen from the settings). The difference to the kernel call is the Python of the
model layer. Before timing, each variant's output is checked against the float64 NumPy
reference. Best of ``--repeats`` loops of ``--calls`` calls, in microseconds; pin it to a
core for steady figures (``taskset -c 0``).

    python benchmarks/step_overhead.py [--backend c] [--position 0] [--calls 20000]
                                       [--repeats 7]
"""

import argparse
import time

import numpy as np

import fastsarnn as fs
from fastsarnn import _config, _registry
from fastsarnn.bench import suite


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="c", choices=["c", "numba", "numpy"])
    ap.add_argument("--position", type=int, default=0,
                    help="tokens consumed before the timed one (at most 1023)")
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)

    model, x = suite.make_problem(suite.CONFIGS["step"])
    P = args.position
    if not 0 <= P < x.shape[1]:
        ap.error(f"--position must lie in [0, {x.shape[1] - 1}]; got {P}")
    x_t = np.ascontiguousarray(x[0, P])
    be = _registry.resolve(args.backend)
    st = model.init_state(1, capacity=P + 1)
    model.forward(x[0, :P], state=st, backend="numpy")
    start = st.copy()                    # the stream after P tokens
    pos = st._positions                  # reset to P before every call
    out = (np.zeros(model.hidden_size, model.dtype), np.zeros(model.hidden_size, model.dtype))
    act = np.ones(1, dtype=np.bool_)
    run = model._prepared_step(be, st)
    name = args.backend
    variants = {
        "kernel call alone": lambda: run(x_t, act, st, out[0], out[1], None),
        "model.step": lambda: model.step(x_t, st, backend=name),
        "model.step, out=": lambda: model.step(x_t, st, backend=name, out=out),
        "model.step, out=, check_finite=False":
            lambda: model.step(x_t, st, backend=name, out=out, check_finite=False),
        "model.step, out=, no backend= (settings)": lambda: model.step(x_t, st, out=out),
    }
    ref = model.astype("float64").forward(x[0, :P + 1].astype(np.float64), backend="numpy")
    tol = _config.TOLERANCE[model.dtype.name]
    for label, call in variants.items():
        for buf in ("hist", "h", "c", "positions"):
            getattr(st, buf)[...] = getattr(start, buf)
        got = call()
        h = out[0] if got is None else got[0]
        err = float(np.max(np.abs(h - ref.h[P])))
        if not err <= tol:
            raise SystemExit(f"{label}: max abs error {err:.3g} > {tol:g}; nothing timed")

    def best_us(call):
        best = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            for _ in range(args.calls):
                pos[0] = P
                call()
            best = min(best, time.perf_counter() - t)
        return best / args.calls * 1e6

    empty = best_us(lambda: None)        # the loop and the reset
    times = {label: best_us(call) - empty for label, call in variants.items()}
    kernel = times["kernel call alone"]
    print(f"model.step per token at position {P}, backend {name!r} (the auto choice now: "
          f"{fs.get_backend()!r}); best of {args.repeats} x {args.calls} calls, us")
    for label, us in times.items():
        extra = ("" if label == "kernel call alone" else
                 f"  (+{us - kernel:.2f} over the kernel call)")
        print(f"  {label:40s} {us:6.2f}{extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
