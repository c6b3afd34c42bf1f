"""The host's Python per token of ``model.step`` on the ``"cuda"`` backend, without a GPU.

Runs the bench's ``step`` model (B=1, D=64, H=128, score dot, float32) on the CUDA
simulator with every kernel launch replaced by a no-op, so what is timed is fastsarnn's own
per-token work on the host: the model layer's checks, the backend's launch plan, state
bookkeeping and copies (not numba-cuda's launch, the driver or the GPU; on a GPU those come
on top, see ``cuda_step_profile.py``). Prints the best and the median of ``--batches``
batches of ``--tokens`` tokens. ``--prepared`` takes the path a GPU takes from a stream's
third token on: launches prepared once and repeated by ``_launch_again`` (on the simulator
through a stand-in CUDA context and a launcher that does nothing), instead of the
simulator's own path through ``_launch`` at every token. Usage: ``python
benchmarks/cuda_step_host.py [--prepared]``.
"""

import argparse
import os
import statistics
import time

os.environ["NUMBA_ENABLE_CUDASIM"] = "1"     # before numba is imported

import numpy as np  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--batches", type=int, default=5)
    ap.add_argument("--prepared", action="store_true",
                    help="the GPU's path: prepared launches repeated by _launch_again")
    args = ap.parse_args(argv)

    from fastsarnn.backends import cuda as be
    from fastsarnn.bench import suite

    model, x = suite.make_problem(suite.CONFIGS["step"])
    x = np.ascontiguousarray(x[:, :64])
    st = model.init_state(1)
    if args.prepared:       # as on a GPU: the second token prepares, the third repeats
        class StandInContext:
            device = None

            def synchronize(self):
                pass

        ctx = StandInContext()
        be._PREPARE_LAUNCHES, be._PREPARED_ERROR = True, None
        be._current_context = lambda: ctx
        be._prepare = lambda *a: (lambda: None)     # the prepared launcher: no kernel
        for t in range(3):
            model.step(x[:, t], st, backend="cuda")
        repeated = []
        again = be._launch_again
        def counted(*a):
            ran = again(*a)
            repeated.append(ran)
            return ran
        be._launch_again = counted
    else:
        model.step(x[:, 0], st, backend="cuda")       # one real (simulated) launch
        be._run = lambda *a, **k: None                # no kernel runs from here on
    # from here no kernel runs: positions stay where they are and the state keeps its size
    be._configured = lambda *a, **k: (lambda *b: None)
    per_token = []
    for _ in range(args.batches):
        t = time.perf_counter()
        for i in range(args.tokens):
            model.step(x[:, i % 64], st, backend="cuda")
        per_token.append((time.perf_counter() - t) / args.tokens * 1e6)
    path = "prepared launches repeated" if args.prepared else "launches stubbed"
    print(f"host Python per step token ({path}, simulator): best "
          f"{min(per_token):.1f} us, median {statistics.median(per_token):.1f} us "
          f"({args.batches} x {args.tokens} tokens)")
    if args.prepared and sum(repeated) != args.batches * args.tokens:
        print(f"error: {sum(repeated)} of {args.batches * args.tokens} tokens repeated "
              f"the prepared launch")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
