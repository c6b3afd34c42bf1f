"""An equation check that shares no code with any backend.

Given the returned h, c and attention, verify step by step that they satisfy SPEC section 1:
the update from x_t and the returned c_{t-1} (and h_{t-1}), the softmax of the scores of the
returned states, the weighted sum. Run on every backend's output, the oracle's included.
"""

import numpy as np
import pytest

from _helpers import RECURRENCES, SCORES, make_model, make_x


def check_equations(model, x, lengths, out, atol):
    P = {k: v.astype(np.float64) for k, v in model.params.items()}
    x = x.astype(model.dtype).astype(np.float64)
    h, c, att = (np.asarray(a, dtype=np.float64) for a in (out.h, out.c, out.attention))
    H = model.hidden_size
    W = model.window
    for bi in range(x.shape[0]):
        for t in range(int(lengths[bi])):
            c_prev = c[bi, t - 1] if t else np.zeros(H)
            pre = P["W_x"] @ x[bi, t] + P["W_c"] @ c_prev + P["b"]
            if "W_h" in P:
                pre += P["W_h"] @ (h[bi, t - 1] if t else np.zeros(H))
            assert np.max(np.abs(h[bi, t] - np.tanh(pre))) <= atol, ("update", bi, t)
            first = 0 if W is None else max(0, t - W + 1)
            hs = h[bi, first: t + 1]
            ht = h[bi, t]
            if model.score == "dot":
                e = np.array([hi.dot(ht) for hi in hs])
            elif model.score == "scaled_dot":
                e = np.array([hi.dot(ht) for hi in hs]) / np.sqrt(H)
            elif model.score == "general":
                e = np.array([hi.dot(P["W_s"] @ ht) for hi in hs])
            elif model.score == "kq":
                e = np.array([(P["W_k"] @ hi).dot(P["W_q"] @ ht) for hi in hs])
            else:
                e = np.array([P["v"].dot(np.tanh(P["W_k"] @ hi + P["W_q"] @ ht)) for hi in hs])
            alpha = np.exp(e - e.max())
            alpha /= alpha.sum()
            row = att[bi, t]
            assert np.max(np.abs(row[first: t + 1] - alpha)) <= atol, ("softmax", bi, t)
            assert np.all(row[:first] == 0) and np.all(row[t + 1:] == 0), ("support", bi, t)
            assert np.max(np.abs(c[bi, t] - alpha @ hs)) <= atol, ("context", bi, t)
        assert np.all(h[bi, lengths[bi]:] == 0) and np.all(c[bi, lengths[bi]:] == 0)
        assert np.all(att[bi, lengths[bi]:] == 0)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("window", [None, 2])
@pytest.mark.parametrize("recurrence", RECURRENCES)
@pytest.mark.parametrize("score", SCORES)
def test_outputs_satisfy_the_model_equations(backend, score, recurrence, window, dtype):
    model = make_model(score=score, recurrence=recurrence, window=window, dtype=dtype, Ha=6)
    x = make_x(3, 7, 5)
    lengths = np.array([7, 0, 4])
    out = model.forward(x, lengths=lengths, return_attention=True, backend=backend)
    check_equations(model, x, lengths, out, atol=1e-10 if dtype == "float64" else 1e-5)
