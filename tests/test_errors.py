"""SPEC section 4: bad input gets the right exception, and a failed call changes no state."""

import numpy as np
import pytest

import fastsarnn as fs
from _helpers import make_model, make_x, max_err, tol

D, H = 4, 6


def snapshot(st):
    return {k: (None if getattr(st, k) is None else getattr(st, k).copy())
            for k in ("hist", "keys", "h", "c", "positions")}


def assert_same(st, snap):
    for k, v in snap.items():
        a = getattr(st, k)
        if v is None:
            assert a is None
        else:
            assert a.shape == v.shape and np.array_equal(a, v), k


@pytest.fixture
def primed():
    model = make_model(score="kq", D=D, H=H, Ha=3)
    st = model.init_state(2, capacity=2)
    model.forward(make_x(2, 3, D), state=st, backend="numpy")
    return model, st


FORWARD_CASES = [
    ("x rank 1", dict(x=np.zeros(D)), ValueError,
     rf"x must have shape \(T, {D}\) or \(B, T, {D}\); got shape \({D},\)"),
    ("x rank 4", dict(x=np.zeros((1, 2, 3, D))), ValueError,
     rf"got shape \(1, 2, 3, {D}\)"),
    ("x wrong D", dict(x=np.zeros((2, 3, D + 1))), ValueError,
     rf"D = {D}\); got shape \(2, 3, {D + 1}\)"),
    ("x batch vs state", dict(x=np.zeros((3, 3, D))), ValueError,
     "state has batch size 2; the input has batch size 3"),
    ("x complex", dict(x=np.zeros((2, 3, D), complex)), TypeError, "complex"),
    ("x object", dict(x=np.zeros((2, 3, D), object)), TypeError, "object"),
    ("x bool", dict(x=np.zeros((2, 3, D), bool)), TypeError, "bool"),
    ("x string", dict(x=np.full((2, 3, D), "a")), TypeError, "string"),
    ("x nan", dict(x=np.where(np.arange(D) == 2, np.nan, np.zeros((2, 3, D)))), ValueError,
     r"x\[0, 0, 2\]"),
    ("x inf", dict(x=np.pad(np.full((1, 1, 1), np.inf), ((1, 0), (2, 0), (3, 0)))),
     ValueError, r"x\[1, 2, 3\]"),
    ("lengths float", dict(lengths=np.array([1.0, 2.0])), TypeError, "integer"),
    ("lengths bool", dict(lengths=np.array([True, False])), TypeError, "integer"),
    ("lengths shape", dict(lengths=np.array([1, 2, 3])), ValueError,
     r"lengths must have shape \(2,\).*; got shape \(3,\)"),
    ("lengths rank", dict(lengths=np.array([[1, 2]])), ValueError,
     r"lengths must have shape \(2,\).*; got shape \(1, 2\)"),
    ("lengths > T", dict(lengths=np.array([1, 4])), ValueError, r"lengths\[1\] = 4"),
    ("lengths < 0", dict(lengths=np.array([-1, 2])), ValueError, r"lengths\[0\] = -1"),
    ("backend unknown", dict(backend="fortran"), ValueError, "expected one of"),
    ("num_threads 0", dict(num_threads=0), ValueError, ">= 1"),
]


@pytest.mark.parametrize("case", FORWARD_CASES, ids=lambda c: c[0])
def test_forward_errors_leave_state_unchanged(backend, primed, case):
    _, kwargs, exc, match = case
    model, st = primed
    kwargs = dict(kwargs)
    x = kwargs.pop("x", make_x(2, 3, D))
    kwargs.setdefault("backend", backend)
    snap = snapshot(st)
    with pytest.raises(exc, match=match):
        model.forward(x, state=st, return_attention=True, **kwargs)
    assert_same(st, snap)


def test_nan_in_padding_is_allowed_and_check_finite_off(backend):
    model = make_model(D=D, H=H)
    x = make_x(2, 3, D)
    x[1, 2] = np.nan
    out = model.forward(x, lengths=np.array([3, 2]), backend=backend)
    assert np.isfinite(out.h).all()
    with pytest.raises(ValueError, match=r"x\[1, 2, 0\]"):
        model.forward(x, backend=backend)
    out = model.forward(x, backend=backend, check_finite=False)  # unspecified, but no crash
    assert out.h.shape == (2, 3, H)


def test_float64_overflow_when_cast_to_float32_is_caught(backend):
    model = make_model(D=D, H=H, dtype="float32")
    x = make_x(1, 2, D)
    x[0, 1, 3] = 1e300
    with pytest.raises(ValueError, match=r"x\[0, 1, 3\]"):
        model.forward(x, backend=backend)


def test_step_checks_x_t_after_the_cast_and_check_finite_off_skips_it(backend):
    """A float64 x_t that overflows float32 is caught (finiteness is checked after the
    cast); check_finite=False skips the check: the result is unspecified, the call runs."""
    model = make_model(D=D, H=H, dtype="float32")
    st = model.init_state(2)
    x = make_x(2, 1, D)[:, 0]
    x[1, 3] = 1e300
    with pytest.raises(ValueError, match=r"x_t\[1, 3\]"):
        model.step(x, st, backend=backend)
    assert st.positions.tolist() == [0, 0]
    x[1, 3] = np.nan
    h, c = model.step(x, st, backend=backend, check_finite=False)
    assert h.shape == (2, H) and st.positions.tolist() == [1, 1]


def test_unsigned_lengths_are_integers(backend):
    model = make_model(D=D, H=H)
    x = make_x(2, 4, D)
    got = model.forward(x, lengths=np.array([4, 2], dtype=np.uint16), backend=backend)
    want = model.forward(x, lengths=np.array([4, 2]), backend=backend)
    assert np.array_equal(got.h, want.h) and np.all(got.h[1, 2:] == 0)


def test_two_dimensional_lengths_must_be_an_int(backend):
    model = make_model(D=D, H=H)
    with pytest.raises(TypeError, match="integer"):
        model.forward(make_x(1, 3, D)[0], lengths=2.0, backend=backend)
    with pytest.raises(ValueError, match=r"outside \[0, 3\]"):
        model.forward(make_x(1, 3, D)[0], lengths=4, backend=backend)


def test_state_of_another_model_or_batch(backend, primed):
    model, st = primed
    other = make_model(score="kq", D=D, H=H, Ha=3)
    snap = snapshot(st)
    with pytest.raises(ValueError, match="another model"):
        other.forward(make_x(2, 3, D), state=st, backend=backend)
    with pytest.raises(ValueError, match="another model"):
        other.step(make_x(2, 1, D)[:, 0], st, backend=backend)
    with pytest.raises(ValueError, match="batch size"):
        model.step(make_x(3, 1, D)[:, 0], st, backend=backend)
    with pytest.raises(TypeError, match="State"):
        model.forward(make_x(2, 3, D), state={"h": 0}, backend=backend)
    assert_same(st, snap)


_READ_ONLY = np.zeros((2, H))
_READ_ONLY.flags.writeable = False
_POOL = np.zeros((2, 2, H))      # out buffers made of views of one array

STEP_CASES = [
    ("x_t rank 3", dict(x=np.zeros((2, 1, D))), ValueError,
     rf"x_t must have shape \(2, {D}\) .*; got shape \(2, 1, {D}\)"),
    ("x_t wrong D", dict(x=np.zeros((2, D + 1))), ValueError,
     rf"x_t must have shape \(2, {D}\) .*; got shape \(2, {D + 1}\)"),
    ("x_t 1-D with batch 2", dict(x=np.zeros(D)), ValueError,
     "state has batch size 2; the input has batch size 1"),
    ("x_t complex", dict(x=np.zeros((2, D), complex)), TypeError, "complex"),
    ("x_t nan", dict(x=np.where(np.arange(D) == 1, np.nan, np.zeros((2, D)))), ValueError,
     r"x_t\[0, 1\]"),
    ("active shape", dict(active=np.ones(3, bool)), ValueError,
     r"active must have shape \(2,\); got shape \(3,\)"),
    ("active dtype", dict(active=np.ones(2, int)), TypeError, "boolean"),
    ("backend unknown", dict(backend="gpu"), ValueError, "expected one of"),
    ("out a list", dict(out=[np.zeros((2, H)), np.zeros((2, H))]), TypeError,
     r"out must be a tuple \(h_buf, c_buf\) of two arrays; got list"),
    ("out one array", dict(out=(np.zeros((2, H)),)), TypeError, "tuple"),
    ("out not an array", dict(out=(np.zeros((2, H)).tolist(), np.zeros((2, H)))), TypeError,
     r"out\[0\] \(h_buf\) must be a NumPy array; got list"),
    ("out dtype", dict(out=(np.zeros((2, H)), np.zeros((2, H), np.float32))), TypeError,
     r"out\[1\] \(c_buf\) must have the model dtype float64; got float32"),
    ("out shape", dict(out=(np.zeros((2, H + 1)), np.zeros((2, H)))), ValueError,
     rf"out\[0\] \(h_buf\) must have shape \(2, {H}\); got shape \(2, {H + 1}\)"),
    ("out strided", dict(out=(np.zeros((2, H)), np.zeros((2, 2 * H))[:, ::2])), ValueError,
     "C-contiguous and writeable"),
    ("out read-only", dict(out=(np.zeros((2, H)), _READ_ONLY)), ValueError,
     "C-contiguous and writeable"),
    ("out the same array twice", dict(out=(_POOL[0], _POOL[0])), ValueError,
     r"out\[0\] and out\[1\] must not overlap"),
    ("out overlapping views", dict(out=(_POOL.reshape(-1)[:2 * H].reshape(2, H),
                                        _POOL.reshape(-1)[H:3 * H].reshape(2, H))),
     ValueError, "must not overlap"),
    # views whose base does not own its memory (as_strided's): NumPy's overlap test decides
    ("out overlapping strided views", dict(out=(
        np.lib.stride_tricks.as_strided(_POOL, (2, H), (8 * H, 8))[:],
        np.lib.stride_tricks.as_strided(_POOL[0, 1], (2, H), (8 * H, 8))[:])),
     ValueError, "must not overlap"),
]


@pytest.mark.parametrize("case", STEP_CASES, ids=lambda c: c[0])
def test_step_errors_leave_state_unchanged(backend, primed, case):
    _, kwargs, exc, match = case
    model, st = primed
    kwargs = dict(kwargs)
    x = kwargs.pop("x", make_x(2, 1, D)[:, 0])
    kwargs.setdefault("backend", backend)
    snap = snapshot(st)
    with pytest.raises(exc, match=match):
        model.step(x, st, **kwargs)
    assert_same(st, snap)


@pytest.mark.parametrize("method", ["forward", "step"])
@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("batch", [1, 2])
def test_state_positions_out_of_range_are_refused_and_change_nothing(backend, batch, window,
                                                                      method):
    """state.positions is public and writable. A negative position (or one past
    INT64_MAX / 4) is refused before anything changes: the history keeps its capacity
    (full here, so a step would grow it) and out= buffers keep their values. The stream
    first takes steps, so that a step would repeat a prepared launch where a backend
    has one."""
    model = make_model(window=window, D=D, H=H)
    st = model.init_state(batch, capacity=2)
    model.forward(make_x(batch, 2, D), state=st, backend=backend)
    for t in range(2):
        model.step(make_x(batch, 1, D, seed=t)[:, 0], st, backend=backend)
    out = (np.full((batch, H), 7.0), np.full((batch, H), 7.0))
    for bad in (-3, 2 ** 61):
        st.positions[batch - 1] = bad
        snap = snapshot(st)
        with pytest.raises(ValueError, match=rf"state.positions must lie in \[0, {2 ** 61 - 1}"
                                             rf"\] .*; got {bad} in row {batch - 1}"):
            if method == "forward":
                model.forward(make_x(batch, 3, D), state=st, backend=backend)
            else:
                model.step(make_x(batch, 1, D)[:, 0], st, backend=backend, out=out,
                           active=np.ones(batch, bool))
        assert_same(st, snap)
        assert np.all(out[0] == 7.0) and np.all(out[1] == 7.0)


def test_nan_in_inactive_row_is_allowed(backend, primed):
    model, st = primed
    x = make_x(2, 1, D)[:, 0]
    x[1] = np.inf
    h, _ = model.step(x, st, active=np.array([True, False]), backend=backend)
    assert np.isfinite(h).all() and st.positions.tolist() == [4, 3]


@pytest.mark.parametrize("shape", ["(D,)", "(1, D)"])
def test_nan_in_an_inactive_single_row_is_allowed_whatever_its_shape(backend, shape):
    # SPEC 2 and 4: only active rows are checked; x_t of shape (D,) is the one row of a
    # batch-1 state, so active=[False] must exempt it exactly as it does shape (1, D).
    model = make_model(score="kq", D=D, H=H, Ha=3)
    st = model.init_state(1)
    model.step(make_x(1, 1, D)[0, 0], st, backend=backend)
    snap = snapshot(st)
    x = np.full(D, np.nan) if shape == "(D,)" else np.full((1, D), np.nan)
    h, c = model.step(x, st, active=np.array([False]), backend=backend)
    assert h.shape == c.shape == x.shape[:-1] + (H,)
    assert not h.any() and not c.any()
    assert_same(st, snap)
    # an active row is still checked, naming the position in x_t's own shape
    with pytest.raises(ValueError, match=r"x_t\[0\]" if shape == "(D,)" else r"x_t\[0, 0\]"):
        model.step(x, st, active=np.array([True]), backend=backend)
    assert_same(st, snap)


W = {"W_x": np.zeros((H, D)), "W_c": np.zeros((H, H)), "b": np.zeros(H)}
CONSTRUCTOR_CASES = [
    ("W_x rank", dict(W, W_x=np.zeros(H)), ValueError, "W_x must have shape"),
    ("W_c shape", dict(W, W_c=np.zeros((H, H + 1))), ValueError,
     r"W_c must have shape \(6, 6\); got shape \(6, 7\)"),
    ("b shape", dict(W, b=np.zeros(H + 1)), ValueError, r"b must have shape \(6,\)"),
    ("W_h shape", dict(W, W_h=np.zeros((H, 2))), ValueError, "W_h"),
    ("W_c complex", dict(W, W_c=np.zeros((H, H), complex)), TypeError, "complex"),
    ("b object", dict(W, b=np.array([None] * H)), TypeError, "object"),
    ("b string", dict(W, b=["x"] * H), TypeError, "string"),
    ("weight nan", dict(W, W_c=np.where(np.eye(H) > 0, np.nan, 0.0)), ValueError,
     r"W_c\[0, 0\] = nan is not finite; expected finite weights$"),
    ("weight inf after cast", dict(W, b=np.full(H, 1e300)), ValueError,
     r"b\[0\] = inf is not finite; expected finite weights$"),
    ("unknown score", dict(W, score="cosine"), ValueError, "expected one of"),
    ("unknown dtype", dict(W, dtype="float16"), ValueError, "float32"),
    ("window 0", dict(W, window=0), ValueError,
     "window must be None or an integer >= 1; got 0"),
    ("window float", dict(W, window=2.0), ValueError,
     "window must be None or an integer >= 1; got 2.0"),
    ("window bool", dict(W, window=True), ValueError,
     "window must be None or an integer >= 1; got True"),
    ("general without W_s", dict(W, score="general"), ValueError, "W_s is required"),
    ("kq without W_q", dict(W, score="kq", W_k=np.zeros((3, H))), ValueError, "W_q is required"),
    ("additive without v", dict(W, score="additive", W_k=np.zeros((3, H)),
                                W_q=np.zeros((3, H))), ValueError, "v is required"),
    ("extra W_s for dot", dict(W, W_s=np.zeros((H, H))), ValueError, "not used"),
    ("extra v for kq", dict(W, score="kq", W_k=np.zeros((3, H)), W_q=np.zeros((3, H)),
                            v=np.zeros(3)), ValueError, "not used"),
    ("W_q shape vs W_k", dict(W, score="kq", W_k=np.zeros((3, H)), W_q=np.zeros((2, H))),
     ValueError, r"W_q must have shape \(3, 6\)"),
]


@pytest.mark.parametrize("case", CONSTRUCTOR_CASES, ids=lambda c: c[0])
def test_constructor_errors(case):
    _, kwargs, exc, match = case
    with pytest.raises(exc, match=match):
        fs.SelfAttentionRNN(**kwargs)


def test_random_and_state_argument_errors():
    with pytest.raises(ValueError, match="recurrence"):
        fs.SelfAttentionRNN.random(3, 4, recurrence="lstm")
    with pytest.raises(ValueError, match="attention_size"):
        fs.SelfAttentionRNN.random(3, 4, attention_size=5)
    with pytest.raises(ValueError, match=">= 1"):
        fs.SelfAttentionRNN.random(0, 4)
    with pytest.raises(TypeError, match="integer"):
        fs.SelfAttentionRNN.random(3, 4.5)
    m = make_model(D=D, H=H)
    with pytest.raises(ValueError, match=">= 0"):
        m.init_state(-1)
    with pytest.raises(ValueError, match=">= 1"):
        m.init_state(1, capacity=0)
    st = m.init_state(2)
    with pytest.raises(ValueError, match=r"rows must be row indices in \[0, 2\)"):
        st.reset(rows=[5])


def test_known_but_unavailable_backend_raises(monkeypatch):
    from fastsarnn import _registry
    monkeypatch.setitem(_registry._loaded, "c", _registry._UnavailableBackend("c", "not built"))
    assert fs.backends()["c"] == fs.BackendInfo(False, "not built")
    m = make_model(D=D, H=H)
    with pytest.raises(fs.BackendUnavailableError, match="not built"):
        m.forward(make_x(1, 2, D), backend="c")
    with pytest.raises(RuntimeError):
        m.step(make_x(1, 1, D)[:, 0], m.init_state(1), backend="c")


# -- return_attention values ---------------------------------------------------------------

def test_return_attention_values_are_checked(backend):
    import fastsarnn as fs
    model = fs.SelfAttentionRNN.random(3, 4, seed=0)
    x = np.zeros((2, 3))
    st = model.init_state(1)
    with pytest.raises(ValueError, match="window=None.*False, True, 'dense'"):
        model.forward(x, state=st, return_attention="window", backend=backend)
    for bad in ("compact", "Dense", 2, None, "yes"):
        with pytest.raises(ValueError, match="return_attention must be one of"):
            model.forward(x, state=st, return_attention=bad, backend=backend)
    assert st.positions[0] == 0                        # the failed calls changed nothing
    out = model.forward(x, return_attention="dense", backend=backend)
    assert out.attention.shape == (2, 2) and out.attention_positions is None


def test_output_unpacks_into_five_fields():
    import fastsarnn as fs
    model = fs.SelfAttentionRNN.random(3, 4, window=2, seed=0)
    out = model.forward(np.zeros((2, 4, 3)), return_attention="window", backend="numpy")
    h, c, attention, h_last, c_last = out
    assert attention is out.attention and len(out) == 5
    assert out.attention_positions.shape == (2, 4, 2)
    again = out._replace(h=None)
    assert again.h is None and again.attention_positions is out.attention_positions
    import pickle
    back = pickle.loads(pickle.dumps(out))
    assert np.array_equal(back.attention_positions, out.attention_positions)


# -- load: a file that is not a saved model --------------------------------------------------
def _write(path, kind):
    if kind == "npz with pickled objects":
        with open(path, "wb") as f:
            np.savez(f, __config__=np.array('{"score": "dot"}'), W_x=np.array([{}], object))
    elif kind == "pickled config":
        with open(path, "wb") as f:
            np.savez(f, __config__=np.array([{"score": "dot"}], dtype=object))
    elif kind == "text file":
        path.write_text("W_x = [[1, 2]]\n")
    elif kind == "binary file":
        path.write_bytes(b"\x00\x01\x02garbage" * 8)
    elif kind == "empty file":
        path.write_bytes(b"")
    elif kind == "npy file":
        with open(path, "wb") as f:
            np.save(f, np.zeros((2, 3)))
    elif kind == "damaged npz":
        make_model().save(path)
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "npz without config":
        with open(path, "wb") as f:
            np.savez(f, W_x=np.zeros((2, 3)))
    elif kind == "config not json":
        with open(path, "wb") as f:
            np.savez(f, __config__=np.array("{score: dot"))
    elif kind == "config missing keys":
        with open(path, "wb") as f:
            np.savez(f, __config__=np.array('{"format": 1, "score": "dot"}'))
    elif kind == "unknown recurrence":
        p = make_model().params
        with open(path, "wb") as f:
            np.savez(f, __config__=np.array('{"format": 1, "score": "dot", "window": null, '
                                            '"dtype": "float64", "recurrence": "lstm"}'),
                     W_x=p["W_x"], W_c=p["W_c"], b=p["b"])
    elif kind == "newer format":
        with open(path, "wb") as f:
            np.savez(f, __config__=np.array('{"format": 99, "score": "dot", "window": null, '
                                            '"dtype": "float32", "recurrence": "c"}'))


LOAD_CASES = {
    "npz with pickled objects": r"entry 'W_x' holds pickled Python objects",
    "pickled config": r"entry '__config__' holds pickled Python objects",
    "text file": r"found a text file beginning 'W_x = \[\[1, 2\]\]",
    "binary file": r"found a binary file beginning b'\\x00\\x01\\x02garb",
    "empty file": "found an empty file",
    "npy file": r"found a single NumPy array \(\.npy\) of shape \(2, 3\)",
    "damaged npz": "found a damaged zip archive",
    "npz without config": r"found an \.npz archive without a __config__ entry \(entries: \['W_x'\]\)",
    "config not json": "found a __config__ entry that is not JSON",
    "config missing keys": r"__config__ lacks \['dtype', 'recurrence', 'window'\]",
    "newer format": "format 99",
    "unknown recurrence": r"recurrence='lstm'; expected one of \['c', 'hc'\]",
}


@pytest.mark.parametrize("kind", list(LOAD_CASES))
def test_load_says_what_file_was_expected_and_what_was_found(tmp_path, kind):
    path = tmp_path / "model.npz"
    _write(path, kind)
    with pytest.raises(ValueError) as info:
        fs.SelfAttentionRNN.load(path)
    msg = str(info.value)
    assert "expected a fastsarnn model file written by SelfAttentionRNN.save" in msg
    assert str(path) in msg
    import re
    assert re.search(LOAD_CASES[kind], msg), msg
    assert "allow_pickle" not in msg and "pickled (object) data" not in msg


def test_load_of_a_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        fs.SelfAttentionRNN.load(tmp_path / "nothing.npz")


# -- ragged nested lists ----------------------------------------------------------------------
@pytest.mark.parametrize("ragged, depth", [
    ([[0.0] * D, [0.0] * (D - 1)], 1),
    ([[[0.0] * D] * 3, [[0.0] * D] * 2], 1),
    ([[[0.0] * D] * 3, [[0.0] * D, [0.0] * D, [0.0] * (D + 1)]], 2),
], ids=["2-D", "3-D steps", "3-D inner"])
def test_ragged_nested_list_says_what_x_must_be(ragged, depth):
    m = make_model(D=D, H=H)
    with pytest.raises(ValueError) as info:
        m.forward(ragged)
    msg = str(info.value)
    assert f"x must have shape (T, {D}) or (B, T, {D})" in msg, msg
    assert f"got a ragged nested sequence (its lengths differ at depth {depth}" in msg, msg
    assert "inhomogeneous" not in msg
    st = m.init_state(2)
    with pytest.raises(ValueError, match=rf"x_t must have shape \(2, {D}\); got a ragged"):
        m.step([[0.0] * D, [0.0] * (D - 1)], st)
    assert st.t == 0


# -- state.reset(rows): one rule, stated by its message ----------------------------------------
@pytest.mark.parametrize("rows", [[-1], [0, -2], -1, [2], [0, 5]])
def test_reset_rows_outside_the_batch_are_rejected_and_change_nothing(primed, rows):
    _, st = primed
    snap = snapshot(st)
    with pytest.raises(ValueError, match=r"rows must be row indices in \[0, 2\) or a boolean "
                                         r"mask of shape \(2,\); got "):
        st.reset(rows=rows)
    assert_same(st, snap)


def test_reset_rows_accepts_indices_a_mask_or_nothing(primed):
    model, st = primed
    st.reset(rows=[])                                   # no rows: nothing changes
    assert st.positions.tolist() == [3, 3]
    st.reset(rows=np.array([False, True]))
    assert st.positions.tolist() == [3, 0] and not st.h[1].any() and st.h[0].any()
    model.forward(make_x(2, 1, D), state=st, backend="numpy")
    st.reset(rows=1)
    assert st.positions.tolist() == [4, 0]
    st.reset(rows=np.array([0], dtype=np.uint8))
    assert st.positions.tolist() == [0, 0] and not st.hist.any()
    with pytest.raises(TypeError, match="integer indices or a boolean mask"):
        st.reset(rows=[0.0])
    with pytest.raises(ValueError, match=r"rows \(boolean mask\) must have shape \(2,\)"):
        st.reset(rows=[True, False, True])
    with pytest.raises(ValueError, match="1-D"):
        st.reset(rows=[[0]])


def test_float64_input_to_a_float32_model_is_cast_silently_as_documented(backend):
    """Documented (forward/step docstrings, README): cast like np.asarray(x, dtype), no
    warning, the same result as casting first."""
    import warnings
    m = make_model(D=D, H=H, dtype="float32")
    x = make_x(2, 3, D) * (1 + 1e-12)                    # not representable in float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = m.forward(x, backend=backend)
        h, _ = m.step(x[:, 0], m.init_state(2), backend=backend)
    want = m.forward(np.asarray(x, dtype=np.float32), backend=backend)
    want_h, _ = m.step(np.asarray(x[:, 0], dtype=np.float32), m.init_state(2), backend=backend)
    assert got.h.dtype == np.float32 and np.array_equal(got.h, want.h)
    # a step equals a forward's step within the tolerance (SPEC), not always bit for bit:
    # a kernel may add a step's terms in another order (the cuda step projects x_t itself)
    assert h.dtype == np.float32 and np.array_equal(h, want_h)
    assert max_err(h, want.h[:, 0]) <= tol(m)
    assert "cast silently" in fs.SelfAttentionRNN.forward.__doc__
    assert "cast silently" in fs.SelfAttentionRNN.step.__doc__


# -- replacing a state buffer, and step's out= aliasing the state ----------------------------

@pytest.mark.parametrize("name", ["h", "c", "positions", "hist", "keys"])
def test_replacing_a_state_buffer_is_checked(backend, name):
    """A replaced buffer must keep shape, dtype, C order and be writeable: the kernels take
    its pointer (a float64 h on a float32 C state gave silently wrong results; a read-only
    memory map crashed the process)."""
    import fastsarnn as fs
    model = fs.SelfAttentionRNN.random(3, 4, score="kq", recurrence="hc", seed=0)
    st = model.init_state(2)
    model.step(np.ones((2, 3)), st, backend=backend)
    old = getattr(st, name)
    before = {n: np.array(getattr(st, n)) for n in ("h", "c", "positions", "hist", "keys")}
    wrong_dtype = old.astype(np.float64 if old.dtype != np.float64 else np.float32)
    smaller = np.zeros(old.shape[:-1] + (old.shape[-1] - 1,), old.dtype)
    read_only = old.copy()
    read_only.flags.writeable = False
    strided = np.zeros(old.shape[:-1] + (2 * old.shape[-1],), old.dtype)[..., ::2]
    for bad in (wrong_dtype, smaller, read_only, strided, old.tolist()):
        with pytest.raises(ValueError, match=f"state.{name} must stay"):
            setattr(st, name, bad)
    for n, arr in before.items():                     # rejected: nothing changed
        assert np.array_equal(getattr(st, n), arr)
    # a good replacement is what the next call uses
    ref = model.init_state(2)
    model.step(np.ones((2, 3)), ref, backend="numpy")
    setattr(ref, name, np.array(getattr(ref, name)))
    setattr(st, name, np.array(before[name]))
    h1, _ = model.step(np.full((2, 3), 0.5), st, backend=backend)
    h2, _ = model.step(np.full((2, 3), 0.5), ref, backend="numpy")
    assert max_err(h1, h2) <= 1e-5


def test_step_out_may_not_alias_the_state(backend):
    """out= buffers sharing memory with a buffer of the state are refused: h and c (the
    step reads them after zeroing inactive rows' outputs), the history and the keys (it
    writes them, and reads them in the attention)."""
    import fastsarnn as fs
    model = fs.SelfAttentionRNN.random(3, 4, score="kq", attention_size=4, seed=0)
    st = model.init_state(2)
    model.step(np.ones((2, 3)), st, backend=backend)
    own = np.zeros((2, 4), np.float32)
    cases = [(st.h, own), (own, st.c), (st.c, own.copy()), (own, st.h[0:2]),
             (st.hist[0, :2], own), (own, st.keys[1, 2:4])]
    before = snapshot(st)
    for out in cases:
        with pytest.raises(ValueError, match="must not share memory with state"):
            model.step(np.ones((2, 3)), st, out=out, active=np.array([True, False]),
                       backend=backend)
    assert_same(st, before)
    # the check follows a state buffer the user replaced since the last call
    out = (np.zeros((2, 4), np.float32), np.zeros((2, 4), np.float32))
    model.step(np.ones((2, 3)), st, out=out, backend=backend)
    st.h = out[1]
    with pytest.raises(ValueError, match="must not share memory with state"):
        model.step(np.ones((2, 3)), st, out=out, backend=backend)


def test_step_out_may_be_views_of_an_array_the_state_uses_where_they_do_not_overlap(backend):
    """Overlap is what is refused, not a shared owner: state.h, state.c and both out
    buffers may be rows of one user array. (The CUDA backend then moves h and c into
    mapped memory of its own, so after a step state.h names another array.)"""
    import fastsarnn as fs
    model = fs.SelfAttentionRNN.random(3, 4, seed=0)
    st, ref = model.init_state(2), model.init_state(2)
    pool = np.zeros((4, 2, 4), np.float32)
    st.h, st.c = pool[0], pool[1]
    with pytest.raises(ValueError, match="must not share memory with state"):
        model.step(np.ones((2, 3)), st, out=(pool[2], pool[1]), backend=backend)
    assert not pool.any() and st.positions.tolist() == [0, 0]
    out = (pool[2], pool[3])
    for t in range(3):
        h, c = model.step(np.full((2, 3), t - 1.0), st, out=out, backend=backend)
        want_h, want_c = model.step(np.full((2, 3), t - 1.0), ref, backend=backend)
        assert h is out[0] and c is out[1]
        assert np.array_equal(h, want_h) and np.array_equal(c, want_c)
        assert np.array_equal(st.h, ref.h) and np.array_equal(st.c, ref.c)
