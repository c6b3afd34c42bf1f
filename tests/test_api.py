"""The public API around the kernels: registry, selection, state, save/load, CLI, install."""

import importlib.metadata
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastsarnn as fs
from _helpers import RECURRENCES, SCORES, make_model, make_x, max_err, reference, tol


def test_backends_lists_every_backend_with_a_reason_when_unavailable():
    info = fs.backends()
    assert list(info) == ["numpy", "numba", "c", "cuda"]
    assert info["numpy"] == fs.BackendInfo(True, None)
    for name, bi in info.items():
        assert isinstance(bi, fs.BackendInfo)
        assert bi.available == (bi.reason is None), name
    assert issubclass(fs.BackendUnavailableError, RuntimeError)


def test_selection_precedence(monkeypatch):
    monkeypatch.delenv("FASTSARNN_BACKEND", raising=False)
    _spy_backends(monkeypatch, ["cuda"])
    fs.set_backend(None)
    auto = fs.get_backend()
    assert auto in ("c", "numba", "numpy") and auto != "cuda"
    monkeypatch.setenv("FASTSARNN_BACKEND", "numpy")
    assert fs.get_backend() == "numpy"
    try:
        fs.set_backend("cuda")                   # set_backend beats the environment
        assert fs.get_backend() == "cuda"
        with fs.use_backend("numba"):            # use_backend beats set_backend
            assert fs.get_backend() == "numba"
            assert fs.get_backend("c") == "c"    # the argument beats everything
            with fs.use_backend("auto"):
                assert fs.get_backend() == auto
            assert fs.get_backend() == "numba"
        assert fs.get_backend() == "cuda"
    finally:
        fs.set_backend(None)
    assert fs.get_backend() == "numpy"
    monkeypatch.setenv("FASTSARNN_BACKEND", "nope")
    with pytest.raises(ValueError, match="FASTSARNN_BACKEND"):
        fs.get_backend()
    for bad in ("nope", 3):
        with pytest.raises(ValueError, match="expected one of"):
            fs.set_backend(bad)
        with pytest.raises(ValueError, match="expected one of"):
            with fs.use_backend(bad):
                pass


def _spy_backends(monkeypatch, names):
    """Stand the NumPy reference in for each backend of ``names``, each recording in the
    returned list that it computed (so a test can tell which backend a call ran)."""
    import types
    from fastsarnn import _registry
    from fastsarnn.backends import numpy_ref
    ran = []
    for name in names:
        spy = types.ModuleType(f"spy_{name}")
        spy.__dict__.update({k: v for k, v in vars(numpy_ref).items() if k[:2] != "__"})
        spy.NAME = name
        spy.forward = lambda *a, _n=name, **k: (ran.append(_n), numpy_ref.forward(*a, **k))
        spy.step = lambda *a, _n=name, **k: (ran.append(_n), numpy_ref.step(*a, **k))
        monkeypatch.setitem(_registry._loaded, name, spy)
    return ran


def test_auto_tries_c_then_numba_then_numpy_and_never_cuda(monkeypatch):
    from fastsarnn import _registry
    monkeypatch.delenv("FASTSARNN_BACKEND", raising=False)
    _spy_backends(monkeypatch, ["c", "numba", "numpy", "cuda"])
    fs.set_backend(None)
    assert fs.get_backend() == "c"
    for name, then in (("c", "numba"), ("numba", "numpy")):
        monkeypatch.setitem(_registry._loaded, name, _registry._UnavailableBackend(name, "no"))
        assert fs.get_backend() == then


def test_the_selected_backend_is_the_one_that_computes(monkeypatch):
    """Each way of choosing reaches forward and step, not only get_backend()."""
    monkeypatch.delenv("FASTSARNN_BACKEND", raising=False)
    ran = _spy_backends(monkeypatch, ["c", "numba", "numpy", "cuda"])
    m = make_model()
    x = make_x(1, 2, 5)

    def computed_on(**kwargs):
        ran.clear()
        m.forward(x, **kwargs)
        m.step(x[:, 0], m.init_state(1), **kwargs)
        assert len(ran) == 2 and ran[0] == ran[1], ran
        return ran[0]

    fs.set_backend(None)
    assert computed_on() == "c"                                   # auto
    monkeypatch.setenv("FASTSARNN_BACKEND", "numba")
    assert computed_on() == "numba"                               # the environment
    try:
        fs.set_backend("cuda")
        assert computed_on() == "cuda"                            # set_backend
        with fs.use_backend("numpy"):
            assert computed_on() == "numpy"                       # use_backend
            assert computed_on(backend="c") == "c"                # the argument
    finally:
        fs.set_backend(None)
    assert computed_on() == "numba"


def test_use_backend_is_context_local(monkeypatch):
    """Two asyncio tasks on one thread each see their own use_backend choice."""
    import asyncio
    monkeypatch.delenv("FASTSARNN_BACKEND", raising=False)
    _spy_backends(monkeypatch, ["cuda"])

    async def task(name, entered, go):
        with fs.use_backend(name):
            entered.set()
            await go.wait()
            return fs.get_backend()

    async def main():
        entered = [asyncio.Event(), asyncio.Event()]
        go = asyncio.Event()
        tasks = [asyncio.create_task(task(n, e, go))
                 for n, e in zip(("numpy", "cuda"), entered)]
        for e in entered:
            await e.wait()           # both choices made before either reads its own
        go.set()
        return await asyncio.gather(*tasks)

    assert asyncio.run(main()) == ["numpy", "cuda"]
    assert fs.get_backend() == fs.get_backend("auto")      # the choices ended with the tasks


def test_use_backend_is_thread_local(monkeypatch):
    monkeypatch.delenv("FASTSARNN_BACKEND", raising=False)
    _spy_backends(monkeypatch, ["cuda"])
    seen = {}
    inside = threading.Event()
    release = threading.Event()

    def worker():
        with fs.use_backend("numpy"):
            seen["worker"] = fs.get_backend()
            inside.set()
            release.wait(5)

    t = threading.Thread(target=worker)
    with fs.use_backend("cuda"):
        t.start()
        inside.wait(5)
        seen["main"] = fs.get_backend()
        release.set()
        t.join()
    assert seen == {"worker": "numpy", "main": "cuda"}


def test_explicit_choice_never_falls_back(monkeypatch):
    from fastsarnn import _registry
    monkeypatch.setitem(_registry._loaded, "numba",
                        _registry._UnavailableBackend("numba", "test says no"))
    m = make_model()
    with pytest.raises(fs.BackendUnavailableError, match="test says no"):
        m.forward(make_x(1, 2, 5), backend="numba")
    with pytest.raises(fs.BackendUnavailableError, match="test says no"):
        with fs.use_backend("numba"):            # the choice itself fails, at once
            pass
    monkeypatch.setenv("FASTSARNN_BACKEND", "numba")   # read at the call: fails there
    for call in (lambda: m.forward(make_x(1, 2, 5)),
                 lambda: m.step(make_x(1, 1, 5)[:, 0], m.init_state(1))):
        with pytest.raises(fs.BackendUnavailableError, match="test says no"):
            call()


@pytest.mark.parametrize("dtype, window", [("float32", 5), ("float64", None)])
@pytest.mark.parametrize("recurrence", RECURRENCES)
@pytest.mark.parametrize("score", SCORES)
def test_save_load_round_trip_is_exact(tmp_path, score, recurrence, dtype, window):
    m = make_model(score=score, recurrence=recurrence, window=window, dtype=dtype, Ha=3)
    path = tmp_path / "model.npz"
    m.save(path)
    m2 = fs.SelfAttentionRNN.load(path)
    assert (m2.score, m2.recurrence, m2.window, m2.dtype, m2.attention_size) == (
        m.score, m.recurrence, m.window, m.dtype, m.attention_size)
    assert m2.params.keys() == m.params.keys()
    for k, v in m.params.items():
        assert m2.params[k].dtype == v.dtype and np.array_equal(m2.params[k], v), k
    x = make_x(2, 6, 5)
    assert np.array_equal(m.forward(x, backend="numpy").c, m2.forward(x, backend="numpy").c)
    path2 = tmp_path / "noext"
    m.save(path2)
    assert fs.SelfAttentionRNN.load(path2).window == window


def test_properties_and_params_are_read_only():
    m = fs.SelfAttentionRNN.random(3, 4, score="additive", attention_size=2, seed=1,
                                   recurrence="hc", window=7, dtype="float64")
    assert (m.input_size, m.hidden_size, m.attention_size) == (3, 4, 2)
    assert (m.score, m.recurrence, m.window, m.dtype) == ("additive", "hc", 7, np.float64)
    assert list(m.params) == ["W_x", "W_c", "b", "W_h", "W_k", "W_q", "v"]
    with pytest.raises(ValueError):
        m.params["W_x"][0, 0] = 1.0
    assert make_model().attention_size is None
    assert make_model().recurrence == "c" and make_model(recurrence="hc").recurrence == "hc"


@pytest.mark.parametrize("recurrence", RECURRENCES)
@pytest.mark.parametrize("score", SCORES)
def test_random_draws_every_parameter_in_the_documented_order(score, recurrence):
    """SPEC: i.i.d. U(-1/sqrt(H), 1/sqrt(H)) in float64 from default_rng(seed), in the order
    W_x, W_c, b, W_h, W_s, W_k, W_q, v (absent ones skipped); Ha defaults to H."""
    D_, H_ = 3, 4
    m = fs.SelfAttentionRNN.random(D_, H_, score=score, recurrence=recurrence, seed=7,
                                   dtype="float64")
    shapes = {"W_x": (H_, D_), "W_c": (H_, H_), "b": (H_,), "W_h": (H_, H_), "W_s": (H_, H_),
              "W_k": (H_, H_), "W_q": (H_, H_), "v": (H_,)}
    present = {"W_h": recurrence == "hc", "W_s": score == "general",
               "W_k": score in ("kq", "additive"), "W_q": score in ("kq", "additive"),
               "v": score == "additive"}
    order = [n for n in shapes if present.get(n, True)]
    assert list(m.params) == order
    assert m.attention_size == (H_ if score in ("kq", "additive") else None)
    rng = np.random.default_rng(7)
    k = 1 / np.sqrt(H_)
    for name in order:
        np.testing.assert_array_equal(m.params[name], rng.uniform(-k, k, size=shapes[name]),
                                      err_msg=name)


def test_init_state_defaults_to_one_stream():
    st = make_model().init_state()
    assert st.batch_size == 1 and st.positions.tolist() == [0]


def test_random_follows_the_documented_draw():
    m = fs.SelfAttentionRNN.random(3, 4, score="general", seed=5, dtype="float64")
    rng = np.random.default_rng(5)
    k = 1 / np.sqrt(4)
    for name, shape in (("W_x", (4, 3)), ("W_c", (4, 4)), ("b", (4,)), ("W_s", (4, 4))):
        np.testing.assert_array_equal(m.params[name], rng.uniform(-k, k, size=shape))
    m32 = fs.SelfAttentionRNN.random(3, 4, score="general", seed=5)
    assert m32.dtype == np.float32
    np.testing.assert_array_equal(m32.params["W_s"], m.params["W_s"].astype(np.float32))


def test_constructor_copies_weights():
    W_x = np.ones((2, 3))
    m = fs.SelfAttentionRNN(W_x, np.zeros((2, 2)), np.zeros(2), dtype="float64")
    W_x[0, 0] = 5.0
    assert m.params["W_x"][0, 0] == 1.0


def test_history_growth_and_ring_buffer_bound_memory():
    m = make_model()
    st = m.init_state(1, capacity=3)
    m.forward(make_x(1, 10, 5), state=st, backend="numpy")
    assert st.capacity == 12                      # 3 -> 6 -> 12: doubling
    mw = make_model(window=4)
    st = mw.init_state(2, capacity=100)
    for i in range(30):
        mw.step(make_x(2, 1, 5, seed=i)[:, 0], st, backend="numpy")
    assert st.hist.shape == (2, 4, 8) and st.t == 30
    # position p lives in slot p % window
    ref = reference(mw, np.concatenate([make_x(2, 1, 5, seed=i) for i in range(30)], 1))
    for p in range(26, 30):
        assert max_err(st.hist[:, p % 4], ref.h[:, p]) <= 1e-12


def test_outputs_are_not_views_of_the_state():
    m = make_model()
    st = m.init_state(1)
    out = m.forward(make_x(1, 3, 5), state=st, backend="numpy")
    h = m.step(make_x(1, 1, 5)[:, 0], st, backend="numpy")[0]
    for a in (out.h, out.c, out.h_last, out.c_last, h):
        for buf in (st.hist, st.h, st.c):
            assert not np.shares_memory(a, buf)


def test_state_copy_is_independent_and_t_tracks_positions():
    m = make_model()
    st = m.init_state(2)
    assert st.t == 0 and st.positions.dtype == np.int64
    m.forward(make_x(2, 4, 5), state=st, lengths=np.array([4, 2]), backend="numpy")
    assert st.positions.tolist() == [4, 2] and st.t == 4
    cp = st.copy()
    x_next = make_x(2, 2, 5, seed=3)
    orig = m.forward(x_next, state=st, backend="numpy")
    assert cp.positions.tolist() == [4, 2] and st.positions.tolist() == [6, 4]
    # the copy continues exactly as the original did (outputs and state), and advancing it
    # leaves the original alone
    after = {k: getattr(st, k).copy() for k in ("hist", "h", "c", "positions")}
    again = m.forward(x_next, state=cp, backend="numpy")
    for a, b in zip(again, orig):
        assert np.array_equal(a, b)
    for k, v in after.items():
        assert np.array_equal(getattr(cp, k), v) and np.array_equal(getattr(st, k), v), k
    st.reset()
    assert st.t == 0 and not st.h.any() and not st.hist.any()
    with pytest.raises(ValueError, match="another model"):
        make_model().forward(make_x(2, 1, 5), state=cp)
    # every buffer of a copy is its own: a copy that takes other input leaves the original's
    # history and keys alone (replaying the same input above would not tell)
    mk = make_model(score="kq", Ha=3)
    sk = mk.init_state(2)
    mk.forward(make_x(2, 3, 5), state=sk, backend="numpy")
    snap = {k: getattr(sk, k).copy() for k in ("hist", "keys", "h", "c", "positions")}
    mk.forward(make_x(2, 3, 5, seed=9), state=sk.copy(), backend="numpy")
    for k, v in snap.items():
        assert np.array_equal(getattr(sk, k), v), k


def test_call_is_forward():
    m = make_model()
    x = make_x(2, 3, 5)
    assert np.array_equal(m(x, backend="numpy").h, m.forward(x, backend="numpy").h)


def test_info_command_lists_every_backend(tmp_path):
    res = subprocess.run([sys.executable, "-m", "fastsarnn", "info"], capture_output=True,
                         text=True, timeout=120, cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr
    for name in ("numpy", "numba", "c", "cuda"):
        assert f"  {name} " in res.stdout
    assert "cores" in res.stdout and "simd" in res.stdout


def test_imported_package_is_the_installed_one():
    """Tests must exercise what pip installed, not the source tree beside them."""
    dist = importlib.metadata.distribution("fastsarnn")
    assert dist.version == fs.__version__
    files = {str(f) for f in dist.files or ()}
    how = ("install the package (pip install \".[test]\", not editable) and run the pytest "
           "script from the repository root, not python -m pytest")
    assert "fastsarnn/__init__.py" in files, f"fastsarnn is not installed as files; {how}"
    installed = os.path.realpath(dist.locate_file("fastsarnn/__init__.py"))
    assert os.path.realpath(fs.__file__) == installed, (
        f"imported {fs.__file__}, installed {installed}; {how}")
    src_pkg = os.path.realpath(os.path.join(os.path.dirname(__file__), os.pardir,
                                            "fastsarnn", "__init__.py"))
    assert os.path.realpath(fs.__file__) != src_pkg, how


# -- a window longer than the stream costs what the stream needs ------------------------------
def test_huge_window_costs_what_the_sequence_needs(backend):
    """window=10**12 on 3 steps: no terabyte ring buffer; the same numbers as no window
    (every position is attended either way)."""
    mw = make_model(window=10**12, dtype="float64")
    m = make_model(dtype="float64")
    x = make_x(2, 3, 5)
    got = mw.forward(x, return_attention=True, backend=backend)
    want = m.forward(x, return_attention=True, backend=backend)
    for a, b in zip(got, want):
        assert max_err(a, b) == 0.0
    st, st_plain = mw.init_state(2), m.init_state(2)
    assert st.capacity == fs._config.DEFAULT_CAPACITY
    for t in range(3):
        mw.step(x[:, t], st, backend=backend)
        m.step(x[:, t], st_plain, backend=backend)
    # streaming with the huge window is streaming without one, bit for bit; a step and a
    # forward may differ in the order of their sums (the contract's tolerance)
    assert max_err(st.h, st_plain.h) == 0.0 and max_err(st.c, st_plain.c) == 0.0
    assert max_err(st.h, want.h_last) <= tol(m) and max_err(st.c, want.c_last) <= tol(m)


@pytest.mark.parametrize("window", [5, 8, 10**12])
def test_windowed_history_grows_to_the_window_then_wraps(backend, window):
    """A windowed state starts at min(capacity, window), doubles as the stream grows, stops
    at window and becomes a ring buffer; position p lives in slot p % window throughout."""
    m = make_model(score="kq", recurrence="hc", window=window, Ha=3, dtype="float64")
    T = 21
    x = make_x(2, T, 5)
    ref = reference(m, x, return_attention=True)
    st = m.init_state(2, capacity=2)
    caps = [st.capacity]
    t = 0
    for n in (1, 2, 1, 4, 1, 5, 7):            # steps and chunks, crossing every doubling
        if n == 1:
            h, c = m.step(x[:, t], st, backend=backend)
            assert max_err(h, ref.h[:, t]) <= 1e-12 and max_err(c, ref.c[:, t]) <= 1e-12
        else:
            out = m.forward(x[:, t:t + n], state=st, return_attention=True, backend=backend)
            assert max_err(out.h, ref.h[:, t:t + n]) <= 1e-12
            assert max_err(out.attention, ref.attention[:, t:t + n, :t + n]) <= 1e-12
        t += n
        caps.append(st.capacity)
        assert st.capacity == min(window, max(2, 1 << (t - 1).bit_length()))
        hist = st.copy().hist                   # (a device backend syncs the copy)
        for p in range(max(0, t - window), t):         # every attended position, in its slot
            assert max_err(hist[:, p % window], ref.h[:, p]) <= 1e-12
    assert t == T and caps == sorted(caps) and caps[-1] == min(window, 32)


def test_init_state_capacity_with_a_window():
    m = make_model(window=6)
    assert m.init_state(1).capacity == 6                  # min(DEFAULT_CAPACITY, window)
    assert m.init_state(1, capacity=4).capacity == 4      # grows up to the window
    assert m.init_state(1, capacity=100).capacity == 6    # never more than the window
    assert make_model(window=10**12).init_state(3).hist.shape == (
        3, fs._config.DEFAULT_CAPACITY, 8)


def test_backends_is_one_thing_the_subpackage_that_lists_backends_when_called():
    """``fastsarnn.backends`` names one object: the subpackage of backend modules, which
    called as ``fs.backends()`` returns the SPEC's dict."""
    code = (
        "import sys\n"
        "import fastsarnn.backends as b\n"
        "import fastsarnn as fs\n"
        "from fastsarnn import backends as c\n"
        "assert b is sys.modules['fastsarnn.backends'] is fs.backends is c, (b, fs.backends)\n"
        "info = b()\n"
        "assert list(info) == ['numpy', 'numba', 'c', 'cuda'], info\n"
        "assert all(isinstance(v, fs.BackendInfo) for v in info.values())\n"
        "assert fs.backends() == info\n"
        "import fastsarnn.backends.numpy_ref\n"
        "assert fs.backends.numpy_ref is sys.modules['fastsarnn.backends.numpy_ref']\n"
        "assert fs.backends is sys.modules['fastsarnn.backends']   # still, after a load\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]
