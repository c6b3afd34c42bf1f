"""The Numba backend on its own: its exp/tanh, compact attention, the kernels' own size
checks, the two batch drivers, and how it treats Numba's threading layer."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastsarnn as fs
from _helpers import make_model, make_x

pytestmark = pytest.mark.skipif(not fs.backends()["numba"].available,
                                reason=f"numba backend unavailable: "
                                       f"{fs.backends()['numba'].reason}")


def _nc():
    from fastsarnn.backends import numba_cpu
    return numba_cpu


# -- exp and tanh -------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, ulps", [("float32", 4), ("float64", 4)])
def test_inlined_exp_and_tanh_are_accurate_to_a_few_ulps(dtype, ulps):
    """The kernels' branch-free exp (x <= 0) and tanh against NumPy in float64."""
    from numba import njit
    nc = _nc()

    @njit
    def apply(x, e, t):
        for i in range(x.shape[0]):
            e[i] = nc._exp_nonpos(x[i])
            t[i] = nc._tanh(x[i])

    dt = np.dtype(dtype)
    eps = np.finfo(dt).eps
    neg = np.concatenate([-np.geomspace(1e-30, 80.0, 20001), [0.0]]).astype(dt)
    x = np.concatenate([neg, -neg, np.linspace(-12, 12, 20001).astype(dt)])
    e, t = np.empty_like(x), np.empty_like(x)
    apply(x, e, t)
    x64 = x.astype(np.float64)
    ok = x <= 0
    rel_exp = np.abs(e[ok] - np.exp(x64[ok])) / np.exp(x64[ok])
    assert rel_exp.max() <= ulps * eps, rel_exp.max()
    ref_t = np.tanh(x64)
    rel_tanh = np.abs(t - ref_t) / np.maximum(np.abs(ref_t), np.finfo(dt).tiny)
    assert rel_tanh.max() <= ulps * eps, (rel_tanh.max(), x[rel_tanh.argmax()])
    assert np.all(np.abs(t) <= 1) and np.array_equal(np.sign(t), np.sign(x))


# -- compact attention --------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("score", ["dot", "additive"])
def test_compact_attention_equals_the_dense_rows(dtype, score):
    """compact_attention=True: column k of row r is the dense column first + k, zeros after
    the attended ones; across chunk boundaries, the ring-buffer wrap and ragged lengths."""
    nc = _nc()
    W = 5
    model = make_model(score=score, window=W, D=3, H=6, Ha=4, dtype=dtype)
    p = model._kernel
    x = make_x(3, 9, 3, dtype=dtype)
    lengths = np.array([9, 4, 0], dtype=np.int64)
    dense_state, compact_state = model.init_state(3), model.init_state(3)
    first_part = make_x(3, 3, 3, seed=7, dtype=dtype)  # start mid-stream: positions 3, 3, 3
    model.forward(first_part, state=dense_state, backend="numba")
    model.forward(first_part, state=compact_state, backend="numba")
    t0 = 3
    B, T, H = 3, 9, 6
    dense = np.zeros((B, T, t0 + T), dtype=dtype)
    compact = np.zeros((B, T, W), dtype=dtype)
    outs = [np.zeros((B, T, H), dtype=dtype) for _ in range(4)]
    nc.forward(p, x, lengths, dense_state, outs[0], outs[1], dense, None)
    nc.forward(p, x, lengths, compact_state, outs[2], outs[3], compact, None,
               compact_attention=True)
    assert np.array_equal(outs[0], outs[2]) and np.array_equal(outs[1], outs[3])
    for b in range(B):
        for r in range(T):
            if r >= lengths[b]:
                assert not compact[b, r].any()
                continue
            pos = t0 + r
            first = max(0, pos - W + 1)
            n = pos - first + 1
            assert np.array_equal(compact[b, r, :n], dense[b, r, first:pos + 1])
            assert not compact[b, r, n:].any()
            assert abs(compact[b, r].sum() - 1) < 1e-5


# -- the kernels' own size checks -----------------------------------------------------------
def _direct_args(score="kq", window=None, B=2, T=4):
    model = make_model(score=score, window=window, recurrence="hc", D=3, H=5, Ha=4,
                       dtype="float32")
    st = model.init_state(B, capacity=T)
    x = make_x(B, T, 3, dtype="float32")
    return dict(p=model._kernel, x=x, lengths=np.full(B, T, dtype=np.int64), state=st,
                out_h=np.zeros((B, T, 5), np.float32), out_c=np.zeros((B, T, 5), np.float32),
                out_attn=np.zeros((B, T, T), np.float32))


def _shrink(name, axis):
    def edit(a):
        arr = a[name]
        shape = list(arr.shape)
        shape[axis] -= 1
        a[name] = np.zeros(shape, arr.dtype)
    return edit


def _state_shrink(name, axis):
    def edit(a):
        arr = getattr(a["state"], name)
        shape = list(arr.shape)
        shape[axis] -= 1
        # Past the public setter (which refuses another shape): the kernel's own checks
        # are what is tested, against a state whose buffers no longer fit.
        attr = "_" + name if name in ("hist", "keys", "h", "c", "positions") else name
        setattr(a["state"], attr, np.zeros(shape, arr.dtype))
    return edit


def _set(name, value):
    def edit(a):
        a[name] = value
    return edit


BAD_ARGS = {
    "x batch": _shrink("x", 0),
    "x input size": _shrink("x", 2),
    "out_h steps": _shrink("out_h", 1),
    "out_c hidden": _shrink("out_c", 2),
    "out_attn columns": _shrink("out_attn", 2),
    "out_attn rows": _shrink("out_attn", 1),
    "lengths batch": _set("lengths", np.full(1, 4, dtype=np.int64)),
    "lengths above T": _set("lengths", np.array([4, 5], dtype=np.int64)),
    "lengths negative": _set("lengths", np.array([-1, 4], dtype=np.int64)),
    "history capacity": _state_shrink("hist", 1),
    "history hidden": _state_shrink("hist", 2),
    "keys capacity": _state_shrink("keys", 1),
    "keys size": _state_shrink("keys", 2),
    "state h": _state_shrink("h", 1),
    "state c rows": _state_shrink("c", 0),
    "positions rows": _state_shrink("positions", 0),
    "x dtype": lambda a: a.update(x=a["x"].astype(np.float64)),
    "x rank": lambda a: a.update(x=a["x"][0]),
    "x layout": lambda a: a.update(x=np.asfortranarray(a["x"])),
}


@pytest.mark.parametrize("case", sorted(BAD_ARGS))
def test_direct_kernel_call_with_mismatched_arrays_raises_and_touches_nothing(case):
    nc = _nc()
    a = _direct_args()
    a["state"].positions[:] = 0
    BAD_ARGS[case](a)
    st = a["state"]
    before = [None if arr is None else arr.copy()
              for arr in (st.hist, st.keys, st.h, st.c, st.positions)]
    outs_before = [a[k].copy() for k in ("out_h", "out_c", "out_attn")]
    with pytest.raises(ValueError, match="numba kernel rejected its arguments"):
        nc.forward(a["p"], a["x"], a["lengths"], st, a["out_h"], a["out_c"], a["out_attn"],
                   None)
    for old, new in zip(before, (st.hist, st.keys, st.h, st.c, st.positions)):
        assert np.array_equal(old, new)
    for old, k in zip(outs_before, ("out_h", "out_c", "out_attn")):
        assert np.array_equal(old, a[k])


def test_direct_kernel_call_checks_a_ring_buffer_and_positions():
    nc = _nc()
    # window 3 with a 2-slot buffer: fine for positions 0-1, out of bounds from position 2 on
    a = _direct_args(score="dot", window=3, T=2)
    st = a["state"]
    st.hist = np.zeros((2, 2, 5), np.float32)
    a["out_attn"] = None
    nc.forward(a["p"], a["x"], a["lengths"], st, a["out_h"], a["out_c"], None, None)
    assert st.positions.tolist() == [2, 2]
    with pytest.raises(ValueError, match="capacity: .*expected 3, got 2"):
        nc.forward(a["p"], a["x"], a["lengths"], st, a["out_h"], a["out_c"], None, None)
    st.positions[:] = [-1, 0]
    with pytest.raises(ValueError, match="positions"):
        nc.forward(a["p"], a["x"], a["lengths"], st, a["out_h"], a["out_c"], None, None)
    # compact attention needs a window
    b = _direct_args(score="dot")
    with pytest.raises(ValueError, match="compact attention needs a window"):
        nc.forward(b["p"], b["x"], b["lengths"], b["state"], b["out_h"], b["out_c"],
                   b["out_attn"], None, compact_attention=True)


# -- the two drivers share one body ---------------------------------------------------------
@pytest.mark.parametrize("score", ["general", "kq"])
def test_serial_and_parallel_drivers_give_identical_results(score):
    """Both drivers run the same per-row body (only the loop over rows differs)."""
    model = make_model(score=score, window=4, recurrence="hc", D=3, H=7, Ha=5,
                       dtype="float64")
    x = make_x(4, 11, 3)
    lengths = np.array([11, 3, 0, 7])
    one = model.forward(x, lengths=lengths, return_attention=True, backend="numba",
                        num_threads=1)
    two = model.forward(x, lengths=lengths, return_attention=True, backend="numba",
                        num_threads=2)
    for a, b in zip(one, two):
        assert np.array_equal(a, b)


# -- threading layer ------------------------------------------------------------------------
def _run_python(code, env_extra, tmp_path):
    """Run ``code`` in a fresh interpreter on the fastsarnn this test process imported."""
    env = dict(os.environ)
    env.pop("NUMBA_THREADING_LAYER", None)
    env.update(env_extra)
    here = os.path.dirname(os.path.dirname(os.path.abspath(fs.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([here] + [p for p in [env.get("PYTHONPATH")] if p])
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


CONCURRENT = """
        from concurrent.futures import ThreadPoolExecutor
        import numpy as np
        model = fs.SelfAttentionRNN.random(4, 8, score="kq", window=5, seed=0)
        xs = [np.random.default_rng(s).standard_normal((3, 30, 4)) for s in range(8)]
        want = [model.forward(x, backend="numba", num_threads=1).c for x in xs]
        with ThreadPoolExecutor(4) as pool:
            for _ in range(3):
                got = list(pool.map(lambda x: model.forward(x, backend="numba").c, xs))
                assert all(np.array_equal(g, w) for g, w in zip(got, want))
"""


def test_a_threading_layer_chosen_by_environment_is_left_alone(tmp_path):
    """NUMBA_THREADING_LAYER=workqueue: fastsarnn runs on it (not omp), and since workqueue
    is not safe for concurrent launches, four threads calling at once still work."""
    out = _run_python("""
        import numba
        import fastsarnn as fs
        assert fs.backends()["numba"].available, fs.backends()["numba"]
    """ + CONCURRENT + """
        print(numba.config.THREADING_LAYER, numba.threading_layer())
        from fastsarnn.backends import numba_cpu
        print(numba_cpu._launch_lock is not None)
    """, {"NUMBA_THREADING_LAYER": "workqueue"}, tmp_path)
    assert out.split() == ["workqueue", "workqueue", "True"]


def test_a_threading_layer_chosen_in_numba_config_is_left_alone(tmp_path):
    out = _run_python("""
        import numba
        import numpy as np
        numba.config.THREADING_LAYER = "workqueue"
        import fastsarnn as fs
        from fastsarnn.backends import numba_cpu
        model = fs.SelfAttentionRNN.random(4, 8, seed=0)
        model.forward(np.zeros((3, 5, 4)), backend="numba")
        print(numba.config.THREADING_LAYER, numba.threading_layer())
    """, {}, tmp_path)
    assert out.split() == ["workqueue", "workqueue"]


def test_default_layer_is_not_forced_on_the_host_program(tmp_path):
    """Without a choice, importing the backend leaves Numba's setting at 'default'."""
    out = _run_python("""
        import numba
        import fastsarnn as fs
        from fastsarnn.backends import numba_cpu
        print(numba.config.THREADING_LAYER, fs.backends()["numba"].available)
    """, {}, tmp_path)
    assert out.split() == ["default", "True"]


def test_a_layer_that_cannot_load_makes_the_backend_unavailable(tmp_path):
    """NUMBA_THREADING_LAYER=tbb without TBB installed: 'numba' reports unavailable with
    the reason, an explicit use raises BackendUnavailableError, and auto passes it by."""
    try:
        import numba.np.ufunc.tbbpool  # noqa: F401
    except Exception:
        pass
    else:
        pytest.skip("TBB loads here, so the tbb layer is not a layer that cannot load")
    out = _run_python("""
        import fastsarnn as fs
        from fastsarnn import _config
        info = fs.backends()["numba"]
        assert not info.available
        assert "threading layer 'tbb' cannot load" in info.reason, info.reason
        _config.AUTO_ORDER = ("numba", "numpy")
        assert fs.get_backend() == "numpy", fs.get_backend()
        try:
            fs.SelfAttentionRNN.random(2, 3, seed=0).forward([[1.0, 2.0]], backend="numba")
        except fs.BackendUnavailableError as exc:
            assert "tbb" in str(exc)
        else:
            raise AssertionError("no BackendUnavailableError")
        print("ok")
    """, {"NUMBA_THREADING_LAYER": "tbb"}, tmp_path)
    assert out.split() == ["ok"]
