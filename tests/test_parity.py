"""Every backend against the float64 NumPy reference, within SPEC section 3 tolerances.

Written once, parametrised over backends by the ``backend`` fixture.
"""

import numpy as np
import pytest

from _helpers import RECURRENCES, SCORES, make_model, make_x, max_err, reference, tol

B, T, D, H = 3, 11, 5, 8


def assert_parity(model, got, ref):
    t = tol(model)
    for name in ("h", "c", "attention", "h_last", "c_last"):
        a, b = getattr(got, name), getattr(ref, name)
        if b is None:
            assert a is None
            continue
        assert a.dtype == model.dtype, name
        err = max_err(a, b)
        assert err <= t, f"{name}: max abs error {err:.3g} > {t:g}"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("ragged", [False, True])
@pytest.mark.parametrize("window", [None, 1, 4])
@pytest.mark.parametrize("recurrence", RECURRENCES)
@pytest.mark.parametrize("score", SCORES)
def test_forward_matches_reference(backend, score, recurrence, window, ragged, dtype):
    model = make_model(score=score, recurrence=recurrence, window=window, dtype=dtype, D=D, H=H,
                       Ha=6)
    x = make_x(B, T, D)
    lengths = np.array([T, 0, 5]) if ragged else None
    got = model.forward(x, lengths=lengths, return_attention=True, backend=backend)
    assert_parity(model, got, reference(model, x, lengths=lengths, return_attention=True))
    # Without attention output the states are the same (up to rounding of another code path).
    plain = model.forward(x, lengths=lengths, backend=backend)
    assert plain.attention is None
    assert max_err(plain.h, got.h) <= tol(model) and max_err(plain.c, got.c) <= tol(model)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_two_dimensional_input(backend, dtype):
    model = make_model(dtype=dtype, D=D, H=H)
    x = make_x(1, T, D)[0]
    got = model.forward(x, lengths=7, return_attention=True, backend=backend)
    ref = reference(model, x, lengths=7, return_attention=True)
    assert got.h.shape == (T, H) and got.attention.shape == (T, T) and got.h_last.shape == (H,)
    assert_parity(model, got, ref)


def test_integer_and_half_inputs_are_cast(backend):
    model = make_model(dtype="float32", D=D, H=H)
    for x in (np.arange(2 * 4 * D).reshape(2, 4, D) % 3 - 1,
              make_x(2, 4, D).astype(np.float16),
              (np.arange(2 * 4 * D).reshape(2, 4, D) % 2).astype(np.uint8)):
        got = model.forward(x, backend=backend)
        assert got.h.dtype == np.float32
        assert_parity(model, got, reference(model, x))


@pytest.mark.parametrize("score", ["dot", "kq"])
def test_empty_inputs(backend, score):
    """T = 0 returns empty outputs and leaves every buffer of the state as it was; B = 0 is
    allowed in forward and step."""
    model = make_model(score=score, D=D, H=H, Ha=5)
    st = model.init_state(2)
    model.forward(make_x(2, 3, D), state=st, backend=backend)
    before = st.copy()
    out = model.forward(np.zeros((2, 0, D)), state=st, return_attention=True, backend=backend)
    assert out.h.shape == (2, 0, H) and out.attention.shape == (2, 0, 3)
    for name in ("hist", "keys", "h", "c", "positions"):
        a, b = getattr(st, name), getattr(before, name)
        assert (a is None) == (b is None) and (a is None or np.array_equal(a, b)), name
    np.testing.assert_array_equal(out.h_last, before.h)
    np.testing.assert_array_equal(out.c_last, before.c)
    out = model.forward(np.zeros((0, 4, D)), backend=backend, return_attention=True)
    assert out.h.shape == (0, 4, H) and out.h_last.shape == (0, H)
    empty = model.init_state(0)
    h, c = model.step(np.zeros((0, D)), empty, backend=backend)
    assert h.shape == c.shape == (0, H) and empty.positions.shape == (0,)


def random_chunks(rng, total):
    sizes = []
    while sum(sizes) < total:
        sizes.append(int(min(rng.integers(1, 6), total - sum(sizes))))
    return sizes


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("score", ["dot", "kq", "additive"])
def test_chunked_streaming_equals_whole_forward(backend, score, window, dtype):
    """Random mixes of step and forward(state=...) that cross capacity doubling (capacity 2)
    and the ring buffer's wrap (window 3) equal one whole forward."""
    model = make_model(score=score, recurrence="hc", window=window, dtype=dtype, D=D, H=H, Ha=4)
    Bs, Ts = 2, 15
    x = make_x(Bs, Ts, D)
    ref = reference(model, x, return_attention=True)
    rng = np.random.default_rng(7)
    for _ in range(3):
        st = model.init_state(Bs, capacity=2)
        hs, cs, atts = [], [], []
        t = 0
        for n in random_chunks(rng, Ts):
            if n == 1 and rng.random() < 0.5:
                h_t, c_t = model.step(x[:, t], st, backend=backend)
                hs.append(h_t[:, None]); cs.append(c_t[:, None])
                atts.append(None)
            else:
                out = model.forward(x[:, t: t + n], state=st, return_attention=True,
                                    backend=backend)
                hs.append(out.h); cs.append(out.c)
                assert out.attention.shape == (Bs, n, t + n)
                atts.append((t, out.attention))
            t += n
            assert st.t == t
        t_ = tol(model)
        assert max_err(np.concatenate(hs, 1), ref.h) <= t_
        assert max_err(np.concatenate(cs, 1), ref.c) <= t_
        for item in atts:
            if item is not None:
                t0, a = item
                assert max_err(a, ref.attention[:, t0: t0 + a.shape[1], : a.shape[2]]) <= t_
        assert max_err(st.h, ref.h_last) <= t_ and max_err(st.c, ref.c_last) <= t_


@pytest.mark.parametrize("active_pattern", [
    [[1, 1, 1], [1, 0, 1], [0, 0, 1], [1, 1, 0], [1, 0, 1], [1, 1, 1]],
    [[1], [0], [1], [1], [0], [1]],        # a stream of one
], ids=["three-streams", "one-stream"])
def test_step_with_active_rows(backend, active_pattern):
    B = len(active_pattern[0])
    model = make_model(score="general", D=D, H=H)
    x = make_x(B, 6, D)
    st = model.init_state(B, capacity=1)
    streams = [[] for _ in range(B)]
    for t, act in enumerate(active_pattern):
        act = np.array(act, dtype=bool)
        h_t, c_t = model.step(x[:, t], st, active=act, backend=backend)
        for b in range(B):
            if act[b]:
                streams[b].append(h_t[b])
            else:
                assert np.all(h_t[b] == 0) and np.all(c_t[b] == 0)
    assert st.positions.tolist() == [sum(r[b] for r in active_pattern) for b in range(B)]
    # each stream equals the reference run over exactly the inputs it consumed
    for b in range(B):
        consumed = x[b, [t for t, r in enumerate(active_pattern) if r[b]]]
        ref = reference(model, consumed)
        assert max_err(np.array(streams[b]), ref.h) <= tol(model)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("layout", ["two-arrays", "one-array", "one-stream"])
def test_step_out_buffers_are_written_and_returned(backend, layout, dtype):
    """step(out=(h_buf, c_buf)) writes the step's outputs into the buffers and returns them,
    whatever they held (inactive rows give 0): the same numbers as the call without out=.
    The buffers may be views of one array where they do not overlap."""
    Bs = 1 if layout == "one-stream" else 3
    model = make_model(score="kq", window=3, D=D, H=H, Ha=5, dtype=dtype)
    x = make_x(Bs, 6, D)
    st, plain = model.init_state(Bs, capacity=1), model.init_state(Bs, capacity=1)
    shape = (H,) if layout == "one-stream" else (Bs, H)
    if layout == "one-array":
        pool = np.empty((2,) + shape, dtype)
        out = (pool[0], pool[1])
    else:
        out = (np.empty(shape, dtype), np.empty(shape, dtype))
    for t in range(6):
        act = None if t % 3 == 0 else np.arange(Bs) % 2 == t % 2
        for buf in out:
            buf.fill(np.nan)                     # stale content must not show through
        x_t = x[0, t] if layout == "one-stream" else x[:, t]
        h, c = model.step(x_t, st, active=act, out=out, backend=backend)
        want_h, want_c = model.step(x_t, plain, active=act, backend=backend)
        assert h is out[0] and c is out[1]
        np.testing.assert_array_equal(h, want_h)
        np.testing.assert_array_equal(c, want_c)
    np.testing.assert_array_equal(st.positions, plain.positions)
    np.testing.assert_array_equal(st.h, plain.h)
    np.testing.assert_array_equal(st.c, plain.c)


@pytest.mark.parametrize("streams", [1, 3])
def test_a_step_stream_sees_every_change_between_tokens(backend, streams):
    """What a backend may prepare once per set of state buffers (the C and Numba steps do)
    must still take each token's input, active flags and output buffers (new arrays, or
    the same arrays written in place), and see the state's buffers grown, replaced, reset
    or written in place: token by token, the same as a twin stream on the NumPy reference
    under the same changes. One stream (1-D input and outputs, one thread) or three."""
    model = make_model(score="kq", recurrence="hc", window=4, D=D, H=H, Ha=5,
                       dtype="float64")
    x = make_x(streams, 12, D)
    st, twin = model.init_state(streams, capacity=1), model.init_state(streams, capacity=1)
    shape = (H,) if streams == 1 else (streams, H)
    outs = [(np.empty(shape), np.empty(shape)) for _ in range(2)]
    mask = np.ones(streams, dtype=bool)             # one array, changed in place
    x_in = np.empty(x[:, 0].shape)                  # likewise
    for t in range(12):
        mask[...] = [t % 2 == 0, True, t % 3 != 0][:streams] if t % 4 else True
        if t == 5:                      # replaced (same values): the new arrays are used
            for s in (st, twin):
                s.h = s.h.copy()
                s.positions = s.positions.copy()
        if t == 6:                      # written in place
            for s in (st, twin):
                s.c[...] *= 0.5
        if t == 8:                      # a row starts over
            for s in (st, twin):
                s.reset(rows=[streams - 1])
        if t % 2:
            x_t = np.array(x[:, t])     # a new input array
        else:
            x_in[...] = x[:, t]         # the same array, new values
            x_t = x_in
        if streams == 1:
            x_t = x_t[0]
        out = outs[t % 2] if t % 3 else None
        got = model.step(x_t, st, active=mask, out=out, backend=backend,
                         num_threads=1 if streams == 1 else None)
        want = model.step(x_t, twin, active=mask, backend="numpy")
        for g, w in zip(got, want):
            assert max_err(g, w) <= tol(model), t
        assert st.positions.tolist() == twin.positions.tolist(), t
    assert max_err(st.h, twin.h) <= tol(model) and max_err(st.c, twin.c) <= tol(model)


def test_state_from_reference_continues_on_backend(backend):
    """The state layout is shared: a stream may switch backend between calls."""
    model = make_model(score="kq", window=4, D=D, H=H, Ha=5, dtype="float32")
    x = make_x(2, 12, D)
    st = model.init_state(2)
    a = model.forward(x[:, :7], state=st, backend="numpy")
    b = model.forward(x[:, 7:], state=st, backend=backend)
    c = model.forward(x[:, 7:9], state=model.init_state(2), backend=backend)  # fresh: differs
    ref = reference(model, x)
    assert max_err(np.concatenate([a.h, b.h], 1), ref.h) <= tol(model)
    assert max_err(c.h, ref.h[:, 7:9]) > tol(model)


def test_reset_rows_starts_a_new_stream(backend):
    model = make_model(D=D, H=H)
    x = make_x(2, 8, D)
    st = model.init_state(2)
    model.forward(x[:, :5], state=st, backend=backend)
    st.reset(rows=[1])
    assert st.positions.tolist() == [5, 0]
    out = model.forward(x[:, 5:], state=st, backend=backend)
    ref_row0 = reference(model, x[:1])
    ref_row1 = reference(model, x[1:, 5:])
    assert max_err(out.h[0], ref_row0.h[0, 5:]) <= tol(model)
    assert max_err(out.h[1], ref_row1.h[0]) <= tol(model)


@pytest.mark.parametrize("num_threads", [1, 2])
def test_num_threads(backend, num_threads):
    model = make_model(D=D, H=H, dtype="float32")
    x = make_x(5, 6, D)
    got = model.forward(x, backend=backend, num_threads=num_threads)
    assert max_err(got.c, reference(model, x).c) <= tol(model)


# -- compact windowed attention (return_attention="window") --------------------------------

def dense_to_compact(dense, positions):
    """The compact layout computed from the dense one and the positions (-1: zero)."""
    cols = np.where(positions >= 0, positions, 0)
    return np.where(positions >= 0, np.take_along_axis(dense, cols, axis=2), 0)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("window", [1, 3, 20])
@pytest.mark.parametrize("score", SCORES)
def test_compact_attention_matches_dense(backend, score, window, dtype):
    model = make_model(score=score, recurrence="hc", window=window, dtype=dtype, D=D, H=H,
                       Ha=6)
    x = make_x(B, T, D)
    lengths = np.array([T, 0, 5])
    st_c, st_d = model.init_state(B), model.init_state(B)
    for chunk in (slice(0, 4), slice(4, T)):        # a stream: t0 > 0 in the second chunk
        xc = x[:, chunk]
        lens = np.clip(lengths - chunk.start, 0, xc.shape[1])
        comp = model.forward(xc, lengths=lens, state=st_c, return_attention="window",
                             backend=backend)
        dense = model.forward(xc, lengths=lens, state=st_d, return_attention=True,
                              backend=backend)
        pos = comp.attention_positions
        assert comp.attention.shape == (B, xc.shape[1], window)
        assert comp.attention.dtype == model.dtype
        assert pos.shape == comp.attention.shape and pos.dtype == np.int64
        want = dense_to_compact(dense.attention, pos)
        assert max_err(comp.attention, want) <= tol(model)
        # every weight of the dense row is in the compact one (nothing outside the window)
        assert np.allclose(comp.attention.sum(2), dense.attention.sum(2), atol=1e-5)
        assert max_err(comp.h, dense.h) <= tol(model)
        # positions: oldest first, consecutive, ending at the step's own position, -1 past
        for b in range(B):
            for r in range(xc.shape[1]):
                row = pos[b, r]
                if r >= lens[b]:
                    assert (row == -1).all() and (comp.attention[b, r] == 0).all()
                    continue
                p = int(st_c.positions[b]) - int(lens[b]) + r
                first = max(0, p - window + 1)
                n = p - first + 1
                assert list(row[:n]) == list(range(first, p + 1)) and (row[n:] == -1).all()
    ref = reference(model, x, lengths=lengths, return_attention="window")
    full = model.forward(x, lengths=lengths, return_attention="window", backend=backend)
    assert max_err(full.attention, ref.attention) <= tol(model)
    assert np.array_equal(full.attention_positions, ref.attention_positions)


def test_compact_attention_two_dimensional_input(backend):
    model = make_model(window=4, D=D, H=H)
    x = make_x(1, T, D)[0]
    out = model.forward(x, lengths=7, return_attention="window", backend=backend)
    assert out.attention.shape == (T, 4) and out.attention_positions.shape == (T, 4)
    assert list(out.attention_positions[6]) == [3, 4, 5, 6]
    assert list(out.attention_positions[1]) == [0, 1, -1, -1]
    assert (out.attention_positions[7:] == -1).all()
