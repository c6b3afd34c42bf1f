"""Several Python threads calling the kernels at once (each with its own state)."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from _helpers import make_model, make_x, max_err


def test_concurrent_forward_equals_serial(backend):
    model = make_model(score="kq", window=5, D=6, H=16, Ha=8, dtype="float32")
    xs = [make_x(3, 40, 6, seed=s) for s in range(8)]
    serial = [model.forward(x, backend=backend).c for x in xs]

    def run(i):
        st = model.init_state(3)
        a = model.forward(xs[i][:, :25], state=st, backend=backend)
        b = model.forward(xs[i][:, 25:], state=st, backend=backend)
        return np.concatenate([a.c, b.c], axis=1)

    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            results = list(pool.map(run, range(len(xs))))
            for got, want in zip(results, serial):
                assert max_err(got, want) <= 1e-6
