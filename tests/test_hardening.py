"""Hardening: extreme values, long sequences, guard regions around every buffer a kernel
writes, a valgrind run of the C kernels, and endless streams with bounded memory."""

import os
import shutil
import subprocess

import numpy as np
import pytest

import fastsarnn as fs
from fastsarnn import _registry
from _helpers import make_model, make_x, max_err, reference

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)


# -- extreme values --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_huge_scores_do_not_overflow_the_softmax(backend, dtype):
    """W_s scaled so that scores reach ~1e30: outputs stay finite; float64 equals the
    reference, float32 contexts are convex combinations of the attended states."""
    base = make_model(score="general", D=4, H=6, dtype="float64", seed=3)
    P = dict(base.params)
    P["W_s"] = P["W_s"] * 1e30
    model = fs.SelfAttentionRNN(**P, score="general", dtype=dtype)
    x = make_x(2, 10, 4)
    out = model.forward(x, return_attention=True, backend=backend)
    for a in out[:3]:
        assert np.isfinite(a).all()
    scores = np.abs(np.einsum("bth,bh->bt", out.h.astype(np.float64),
                              out.h[:, -1].astype(np.float64) @ P["W_s"].T))
    assert scores.max() > 1e28
    if dtype == "float64":
        ref = reference(model, x, return_attention=True)
        assert max_err(out.c, ref.c) <= 1e-10 and max_err(out.attention, ref.attention) <= 1e-10
    att = out.attention.astype(np.float64)
    assert np.all(att >= 0) and np.allclose(att.sum(-1), 1.0, atol=1e-5)
    for t in range(10):
        lo = out.h[:, : t + 1].min(axis=1) - 1e-6
        hi = out.h[:, : t + 1].max(axis=1) + 1e-6
        assert np.all(out.c[:, t] >= lo) and np.all(out.c[:, t] <= hi)


@pytest.mark.parametrize("score,window", [("dot", None), ("dot", 10), ("kq", 10),
                                          ("additive", None)])
def test_history_slots_never_attended_are_never_read(backend, score, window):
    """After a first step, NaN in every later slot of the history and keys: the slots a
    forward writes are the only ones it may read (a kernel that loads a few rows past the
    last attended position and gives them weight 0 would still turn 0 * NaN into NaN)."""
    model = make_model(score=score, window=window, D=4, H=8, Ha=6, dtype="float64")
    x = make_x(2, 7, 4)
    st = model.init_state(2, capacity=16)
    model.forward(x[:, :1], state=st, backend=backend)
    st.hist[:, 1:] = np.nan
    if st.keys is not None:
        st.keys[:, 1:] = np.nan
    out = model.forward(x[:, 1:], state=st, return_attention=True, backend=backend)
    ref = reference(model, x, return_attention=True)
    assert max_err(out.c, ref.c[:, 1:]) <= 1e-10
    assert max_err(out.attention, ref.attention[:, 1:]) <= 1e-10


def test_long_sequence_without_window_on_c():
    if not fs.backends()["c"].available:
        pytest.skip("C backend unavailable")
    model = make_model(D=3, H=8, dtype="float64")
    T = 20_000
    x = make_x(1, T, 3)
    out = model.forward(x, return_attention=False, backend="c")
    assert np.isfinite(out.c).all()
    # the equations, checked at sampled steps from the returned states (O(t H) per sample)
    P = model.params
    for t in (0, 1, 999, 12_345, T - 1):
        c_prev = out.c[0, t - 1] if t else np.zeros(8)
        pre = P["W_x"] @ x[0, t] + P["W_c"] @ c_prev + P["b"]
        assert max_err(out.h[0, t], np.tanh(pre)) <= 1e-12
        hs = out.h[0, : t + 1]
        e = hs @ out.h[0, t]
        a = np.exp(e - e.max())
        a /= a.sum()
        assert max_err(out.c[0, t], a @ hs) <= 1e-10


# -- guard regions ---------------------------------------------------------------------------
SENTINEL = {np.dtype(np.float32): np.float32(-1234.5), np.dtype(np.float64): -1234.5,
            np.dtype(np.int64): -777, np.dtype(np.uint8): 0xA5}
PAD = 37


def guarded(shape, dtype, fill=0):
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    buf = np.full(n + 2 * PAD, SENTINEL[dtype], dtype=dtype)
    inner = buf[PAD: PAD + n].reshape(shape)
    inner[...] = fill
    return buf, inner


def intact(buf, n):
    s = SENTINEL[buf.dtype]
    return bool(np.all(buf[:PAD] == s) and np.all(buf[PAD + n:] == s))


@pytest.mark.parametrize("score,window", [("dot", None), ("kq", 3), ("additive", None),
                                          ("general", 1)])
def test_kernels_write_nothing_outside_their_buffers(backend, score, window):
    if backend == "cuda":
        pytest.skip("device buffers are separate allocations")
    be = _registry.resolve(backend)
    model = make_model(score=score, recurrence="hc", window=window, D=4, H=6, Ha=5,
                       dtype="float32")
    p = model._kernel
    B, T = 3, 7
    st = model.init_state(B, capacity=T + 1)
    guards = {}
    for name in ("hist", "keys", "h", "c", "positions"):
        arr = getattr(st, name)
        if arr is None:
            continue
        buf, inner = guarded(arr.shape, arr.dtype)
        setattr(st, name, inner)
        guards[name] = (buf, inner.size)
    xb, x = guarded((B, T, 4), np.float32, make_x(B, T, 4))
    lb, lengths = guarded((B,), np.int64, np.array([7, 0, 4]))
    hb, out_h = guarded((B, T, 6), np.float32)
    cb, out_c = guarded((B, T, 6), np.float32)
    ab, attn = guarded((B, T, T), np.float32)
    be.forward(p, x, lengths, st, out_h, out_c, attn, None)
    sb, x1 = guarded((B, 4), np.float32, make_x(B, 1, 4)[:, 0])
    actb, active = guarded((B,), np.uint8, np.array([1, 0, 1], np.uint8))
    h1b, h1 = guarded((B, 6), np.float32)
    c1b, c1 = guarded((B, 6), np.float32)
    be.step(p, x1, active.view(np.bool_), st, h1, c1, None)
    for name, (buf, n) in guards.items():
        assert intact(buf, n), name
    for name, buf, arr in (("x", xb, x), ("lengths", lb, lengths), ("out_h", hb, out_h),
                           ("out_c", cb, out_c), ("attn", ab, attn), ("x_t", sb, x1),
                           ("active", actb, active), ("step h", h1b, h1), ("step c", c1b, c1)):
        assert intact(buf, arr.size), name
    assert st.positions.tolist() == [8, 0, 5]
    ref = reference(model, x, lengths=lengths, return_attention=True)
    assert max_err(out_c, ref.c) <= 2e-5 and max_err(attn, ref.attention) <= 2e-5


# -- valgrind ---------------------------------------------------------------------------------
@pytest.mark.skipif(not (shutil.which("valgrind") and shutil.which("gcc")),
                    reason="valgrind or gcc not installed")
def test_valgrind_memcheck_of_the_c_driver(tmp_path):
    exe = tmp_path / "driver"
    csrc = os.path.join(ROOT, "csrc")
    # With OpenMP (the batch driver over threads), the helper pool of the split single
    # stream, and the test hooks (allocation failures, a stalled helper). libgomp's idle
    # threads sleep (OMP_WAIT_POLICY=passive) so that valgrind's serialised threads progress.
    build = subprocess.run(
        ["gcc", "-O2", "-g", "-ffast-math", "-fopenmp", "-pthread", "-Wall", "-DSARNN_TESTING",
         f"-I{csrc}", os.path.join(csrc, "tests", "driver.c"), os.path.join(csrc, "sarnn.c"),
         "-lmvec", "-lm", "-o", str(exe)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run(
        ["valgrind", "-q", "--error-exitcode=99", "--leak-check=full",
         "--errors-for-leak-kinds=definite,indirect", "--show-leak-kinds=definite,indirect",
         str(exe)], capture_output=True, text=True, timeout=600,
        env=dict(os.environ, OMP_WAIT_POLICY="passive", OMP_NUM_THREADS="2"))
    assert run.returncode == 0, run.stdout + run.stderr
    assert " 0 failures, " in run.stdout and "testing hooks 1, threads 2" in run.stdout
    assert "ERROR SUMMARY" not in run.stderr or "0 errors" in run.stderr


# -- endless streams -----------------------------------------------------------------------------
def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_a_million_steps_with_a_window_keep_memory_flat():
    if not fs.backends()["c"].available:
        pytest.skip("C backend unavailable")
    model = make_model(D=4, H=8, window=16, dtype="float32")
    st = model.init_state(1)
    xs = make_x(1, 1000, 4).astype(np.float32)[0]
    for i in range(20_000):                   # warm up allocator and caches
        model.step(xs[i % 1000], st, backend="c")
    rss0 = _rss_bytes()
    for i in range(1_000_000):
        h, c = model.step(xs[i % 1000], st, backend="c")
    growth = _rss_bytes() - rss0
    assert st.t == 1_020_000 and st.hist.shape == (1, 16, 8)
    assert np.isfinite(c).all()
    assert growth < 4 * 1024 * 1024, f"resident memory grew by {growth / 1e6:.1f} MB"


# -- fuzz ------------------------------------------------------------------------------------------
def test_fuzz_public_api_in_a_subprocess(backend, tmp_path):
    """Random bad input on every backend: right answer or the SPEC exception, state unchanged
    after a failure, and the process never dies (a crash shows as a negative exit code)."""
    iterations = 60 if backend == "cuda" else 400
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz_api.py")
    env = dict(os.environ)
    res = subprocess.run([__import__("sys").executable, script, backend, str(iterations), "7"],
                         capture_output=True, text=True, timeout=900, cwd=str(tmp_path),
                         env=env)
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    assert f"{iterations} calls" in res.stdout
    checked = int(res.stdout.split(" answers checked")[0].rsplit("(", 1)[1])
    assert checked >= iterations // 10, res.stdout          # the answer check really ran


def test_fuzz_answer_check_fails_on_nan_or_beyond_the_contract_tolerance():
    """The fuzz's right-answer check uses the contract's tolerance (_config.TOLERANCE) against
    the float64 reference and rejects NaN or inf where the reference is finite."""
    import fuzz_api
    from fastsarnn import _config
    want = np.linspace(-1, 1, 12).reshape(3, 4)
    for dtype in ("float32", "float64"):
        tol = _config.TOLERANCE[dtype]
        assert fuzz_api.close(want.astype(dtype), want, dtype)
        assert fuzz_api.close(want + 0.5 * tol, want, dtype)
        assert not fuzz_api.close(want + 3 * tol, want, dtype)
        for bad in (np.nan, np.inf):
            got = want.copy()
            got[1, 2] = bad                       # partly non-finite output
            assert not fuzz_api.close(got.astype(dtype), want, dtype)
        assert not fuzz_api.close(np.full_like(want, np.nan), want, dtype)
