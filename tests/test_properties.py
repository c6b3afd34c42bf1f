"""Property tests (hypothesis): random sizes, scores, recurrences, windows, lengths and
chunkings; every backend equals the float64 reference within SPEC tolerance."""

import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastsarnn as fs
from _helpers import RECURRENCES, SCORES, max_err, reference, tol

SETTINGS = settings(max_examples=int(os.environ.get("FASTSARNN_HYPOTHESIS_EXAMPLES", "25")), deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@st.composite
def problems(draw):
    score = draw(st.sampled_from(SCORES))
    recurrence = draw(st.sampled_from(RECURRENCES))
    D = draw(st.integers(1, 6))
    H = draw(st.integers(1, 9))
    Ha = draw(st.integers(1, 5)) if score in ("kq", "additive") else None
    window = draw(st.one_of(st.none(), st.integers(1, 6)))
    dtype = draw(st.sampled_from(["float32", "float64"]))
    B = draw(st.integers(0, 3))
    T = draw(st.integers(0, 12))
    lengths = draw(st.lists(st.integers(0, T), min_size=B, max_size=B))
    cuts = sorted(set(draw(st.lists(st.integers(1, max(T - 1, 1)), max_size=3)))) if T > 1 \
        else []
    seed = draw(st.integers(0, 2 ** 16))
    model = fs.SelfAttentionRNN.random(D, H, score=score, recurrence=recurrence,
                                       attention_size=Ha, window=window, dtype=dtype,
                                       seed=seed)
    x = np.random.default_rng(seed + 1).standard_normal((B, T, D))
    return model, x, np.array(lengths, dtype=np.int64), cuts


@SETTINGS
@given(problems())
def test_whole_forward_matches_reference(backend, problem):
    model, x, lengths, _ = problem
    got = model.forward(x, lengths=lengths, return_attention=True, backend=backend)
    ref = reference(model, x, lengths=lengths, return_attention=True)
    for name in ("h", "c", "attention", "h_last", "c_last"):
        assert max_err(getattr(got, name), getattr(ref, name)) <= tol(model), name


@SETTINGS
@given(problems())
def test_any_chunking_matches_reference(backend, problem):
    model, x, lengths, cuts = problem
    B, T, _ = x.shape
    ref = reference(model, x, lengths=lengths)
    state = model.init_state(B, capacity=1)
    hs = []
    for lo, hi in zip([0] + cuts, cuts + [T]):
        chunk_len = np.clip(lengths - lo, 0, hi - lo)
        hs.append(model.forward(x[:, lo:hi], lengths=chunk_len, state=state,
                                backend=backend).h)
    got = np.concatenate(hs, axis=1) if hs else np.zeros((B, 0, model.hidden_size))
    assert max_err(got, ref.h) <= tol(model)
    assert max_err(state.c, ref.c_last) <= tol(model)
    assert state.positions.tolist() == lengths.tolist()
