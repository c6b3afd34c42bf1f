"""What is particular to the C backend: ISA dispatch, sanitizer build flag, its own argument
checks (called directly, bypassing the model's), and an install without a compiler."""

import os
import subprocess
import sys

import numpy as np
import pytest

import fastsarnn as fs
from _helpers import make_model, make_x, max_err, reference, tol

pytestmark = pytest.mark.skipif(
    not fs.backends()["c"].available and "c" not in os.environ.get(
        "FASTSARNN_REQUIRE_BACKENDS", ""),
    reason=f"C backend unavailable: {fs.backends()['c'].reason}")


@pytest.fixture(scope="module")
def c_ext():
    info = fs.backends()["c"]
    if not info.available:
        pytest.fail(f"C backend required but unavailable: {info.reason}")
    from fastsarnn.backends import c_ext
    return c_ext


def test_isa_dispatch_and_generic_override(c_ext, tmp_path):
    expect = "generic" if os.environ.get("FASTSARNN_C_GENERIC", "") not in ("", "0") else None
    if expect:
        assert c_ext.isa() == "generic"
    code = ("import numpy as np, fastsarnn as fs\n"
            "from fastsarnn.backends import c_ext\n"
            "m = fs.SelfAttentionRNN.random(5, 16, score='additive', seed=0)\n"
            "x = np.random.default_rng(1).standard_normal((3, 20, 5))\n"
            "print(c_ext.isa()); print(repr(m.forward(x, backend='c').c.tobytes().hex()))\n")
    env = dict(os.environ, FASTSARNN_C_GENERIC="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "generic"
    generic_c = np.frombuffer(bytes.fromhex(eval(out.stdout.splitlines()[1])), np.float32)
    m = fs.SelfAttentionRNN.random(5, 16, score="additive", seed=0)
    x = np.random.default_rng(1).standard_normal((3, 20, 5))
    ref = reference(m, x).c.ravel()
    assert max_err(generic_c, ref) <= tol(m)


def test_sanitizer_flag_matches_the_build(c_ext):
    want = os.environ.get("FASTSARNN_EXPECT_SANITIZED")
    if want is not None:
        assert c_ext.sanitized() == (want == "1")
    else:
        assert c_ext.sanitized() in (True, False)


def _raw_call(c_ext, model, st, x, lengths, attn=None, **override):
    """sarnn_forward with the model's own structs, some fields overridden."""
    ffi, lib = c_ext.ffi, c_ext.lib
    m = ffi.new("sarnn_model *", c_ext._model_struct(model._kernel)[0])
    s = ffi.new("sarnn_state *", c_ext._state_struct(st)[0])
    for k, v in override.items():
        target, field = (m, k[2:]) if k.startswith("m_") else (s, k[2:])
        setattr(target, field, v)
    B, T = x.shape[:2]
    out = np.zeros((B, T, model.hidden_size), model.dtype)
    out2 = np.zeros_like(out)
    return lib.sarnn_forward(m, s, ffi.from_buffer(x), B, T,
                             ffi.from_buffer("int64_t[]", lengths), ffi.from_buffer(out),
                             ffi.from_buffer(out2),
                             ffi.NULL if attn is None else ffi.from_buffer(attn),
                             0 if attn is None else attn.shape[2], 0)


def test_kernel_checks_its_own_arguments(c_ext):
    ffi = c_ext.ffi
    model = make_model(score="kq", D=4, H=6, Ha=3, dtype="float32")
    st = model.init_state(2, capacity=4)
    x = make_x(2, 3, 4).astype(np.float32)
    ok = np.array([3, 3], np.int64)
    assert _raw_call(c_ext, model, st, x, ok) == 0
    st = model.init_state(2, capacity=4)
    before = [a.copy() for a in (st.hist, st.h, st.positions)]
    cases = {
        "capacity too small": dict(s_capacity=2),
        "batch mismatch": dict(s_batch=3),
        "null hist": dict(s_hist=ffi.NULL),
        "null keys for kq": dict(s_keys=ffi.NULL),
        "bad score": dict(m_score=9),
        "bad dtype": dict(m_dtype=7),
        "missing W_q": dict(m_W_q=ffi.NULL),
        "H zero": dict(m_H=0),
        "negative window": dict(m_window=-1),
        "window vs capacity": dict(m_window=3),
    }
    for name, override in cases.items():
        rc = _raw_call(c_ext, model, st, x, ok, **override)
        assert rc != 0, name
        assert ffi.string(c_ext.lib.sarnn_error_message(rc)) != b"ok"
    assert _raw_call(c_ext, model, st, x, np.array([4, 0], np.int64)) != 0   # length > T
    assert _raw_call(c_ext, model, st, x, np.array([-1, 0], np.int64)) != 0
    small_attn = np.zeros((2, 3, 2), np.float32)
    assert _raw_call(c_ext, model, st, x, ok, attn=small_attn) != 0         # too few columns
    st.positions[1] = -5
    assert _raw_call(c_ext, model, st, x, ok) != 0
    st.positions[1] = 0
    for a, b in zip((st.hist, st.h, st.positions), before):
        assert np.array_equal(a, b)                 # rejected calls wrote nothing


def test_kernel_error_becomes_value_error(c_ext, monkeypatch):
    model = make_model(D=4, H=6)
    st = model.init_state(1, capacity=2)
    monkeypatch.setattr(st, "_ensure_capacity", lambda needed: None)   # a model-layer bug
    with pytest.raises(ValueError, match="capacity"):
        model.forward(make_x(1, 5, 4), state=st, backend="c")
    assert st.positions.tolist() == [0]


@pytest.mark.skipif(os.environ.get("FASTSARNN_SKIP_SLOW_INSTALL") == "1",
                    reason="FASTSARNN_SKIP_SLOW_INSTALL=1")
def test_install_without_a_compiler_still_works(tmp_path):
    """A failed C build must not abort pip install; backends() then says why."""
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
    src = tmp_path / "src"
    subprocess.run(["git", "-C", root, "ls-files", "-z"], check=True, capture_output=True)
    files = subprocess.run(["git", "-C", root, "ls-files"], check=True, capture_output=True,
                           text=True).stdout.split()
    for f in files:
        dst = src / f
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(open(os.path.join(root, f), "rb").read())
    target = tmp_path / "site"
    env = dict(os.environ, CC="/bin/false", LDSHARED="/bin/false")
    res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                          "--no-build-isolation", "--target", str(target), str(src)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    code = ("import fastsarnn as fs, numpy as np; i = fs.backends()['c']; "
            "print(i.available); print(i.reason); "
            "print(fs.SelfAttentionRNN.random(2, 3).forward(np.ones((4, 2))).h.shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(target)), timeout=120,
                         cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "False"
    assert "failed to build" in lines[1]
    assert lines[2] == "(4, 3)"


@pytest.mark.parametrize("score,window", [("dot", None), ("kq", 3), ("additive", None),
                                          ("scaled_dot", 5), ("general", 1)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_one_stream_split_over_threads(c_ext, score, window, dtype):
    """Batch 1 on 2 threads splits each step's attended positions: same numbers, for forward
    (with attention), streaming chunks and step, whatever the split threshold."""
    model = make_model(score=score, recurrence="hc", window=window, D=4, H=7, Ha=5,
                       dtype=dtype)
    x = make_x(1, 13, 4)
    ref = reference(model, x, return_attention=True)
    old = c_ext.set_split_min(1)
    try:
        for split_min in (1, 2, 5):
            c_ext.set_split_min(split_min)
            got = model.forward(x, return_attention=True, backend="c", num_threads=2)
            assert max_err(got.c, ref.c) <= tol(model)
            assert max_err(got.attention, ref.attention) <= tol(model)
            st = model.init_state(1, capacity=1)
            a = model.forward(x[:, :6], state=st, backend="c", num_threads=2).c
            b = np.stack([model.step(x[:, t], st, backend="c")[1] for t in range(6, 13)], 1)
            assert max_err(np.concatenate([a, b], 1), ref.c) <= tol(model)
            assert st.positions.tolist() == [13]
    finally:
        c_ext.set_split_min(old)
    assert old == c_ext.set_split_min(old)
