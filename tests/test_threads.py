"""Several Python threads calling the kernels at once (each with its own state)."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

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


def test_numba_num_threads_is_honoured_and_restored():
    import fastsarnn as fs
    if not fs.backends()["numba"].available:
        pytest.skip("numba backend unavailable")
    import numba
    from fastsarnn.backends import numba_cpu
    model = make_model(D=4, H=8, dtype="float32")
    x = make_x(4, 5, 4)
    before = numba.get_num_threads()
    seen = []
    real = numba_cpu._forward_parallel

    class Spy:
        def __call__(self, *args):
            seen.append(numba.get_num_threads())
            return real(*args)

    try:
        numba_cpu._forward_parallel = Spy()
        model.forward(x, backend="numba", num_threads=1)     # serial driver, no change
        model.forward(x, backend="numba", num_threads=2)
    finally:
        numba_cpu._forward_parallel = real
    assert seen == [min(2, numba.config.NUMBA_NUM_THREADS)]
    assert numba.get_num_threads() == before
