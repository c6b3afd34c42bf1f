"""The host's Python per token of ``model.step`` on the ``"cuda"`` backend, without a GPU.

Runs the bench's ``step`` model (B=1, D=64, H=128, score dot, float32) on the CUDA
simulator with every kernel launch replaced by a no-op, so what is timed is fastsarnn's own
per-token work on the host: the model layer's checks, the backend's launch plan, state
bookkeeping and copies (not numba-cuda's launch, the driver or the GPU; on a GPU those come
on top, see ``cuda_step_profile.py``). Prints the best and the median of ``--batches``
batches of ``--tokens`` tokens. Usage: ``python benchmarks/cuda_step_host.py``.
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
    args = ap.parse_args(argv)

    from fastsarnn.backends import cuda as be
    from fastsarnn.bench import suite

    model, x = suite.make_problem(suite.CONFIGS["step"])
    x = np.ascontiguousarray(x[:, :64])
    st = model.init_state(1)
    model.step(x[:, 0], st, backend="cuda")           # one real (simulated) launch
    # from here no kernel runs: positions stay where they are and the state keeps its size
    be._run = lambda *a, **k: None                    # no kernel runs from here on
    be._configured = lambda *a, **k: (lambda *b: None)
    per_token = []
    for _ in range(args.batches):
        t = time.perf_counter()
        for i in range(args.tokens):
            model.step(x[:, i % 64], st, backend="cuda")
        per_token.append((time.perf_counter() - t) / args.tokens * 1e6)
    print(f"host Python per step token (launches stubbed, simulator): best "
          f"{min(per_token):.1f} us, median {statistics.median(per_token):.1f} us "
          f"({args.batches} x {args.tokens} tokens)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
