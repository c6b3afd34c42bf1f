"""The NumPy reference against cases worked by hand."""

import math

import numpy as np
import pytest

import fastsarnn as fs
from _helpers import SCORES, make_model, make_x


def test_first_context_is_first_state():
    for score in SCORES:
        m = make_model(score=score)
        out = m.forward(make_x(2, 4, 5), backend="numpy")
        np.testing.assert_array_equal(out.c[:, 0], out.h[:, 0])


def test_two_steps_worked_on_paper():
    # D = H = 1: every matrix is a number, so the SPEC's five steps can be written out.
    a, w, beta = 0.5, -0.3, 0.1
    x1, x2 = 1.0, 2.0
    h1 = math.tanh(a * x1 + beta)
    c1 = h1                                        # softmax over one score is 1
    h2 = math.tanh(a * x2 + w * c1 + beta)
    e1, e2 = h1 * h2, h2 * h2                      # dot scores against h2
    a1 = math.exp(e1) / (math.exp(e1) + math.exp(e2))
    a2 = 1.0 - a1
    c2 = a1 * h1 + a2 * h2
    m = fs.SelfAttentionRNN([[a]], [[w]], [beta], dtype="float64")
    out = m.forward(np.array([[x1], [x2]]), return_attention=True, backend="numpy")
    np.testing.assert_allclose(out.h[:, 0], [h1, h2], rtol=0, atol=1e-15)
    np.testing.assert_allclose(out.c[:, 0], [c1, c2], rtol=0, atol=1e-15)
    np.testing.assert_allclose(out.attention, [[1.0, 0.0], [a1, a2]], rtol=0, atol=1e-15)


def test_hc_recurrence_worked_on_paper():
    a, w, u, beta = 0.7, 0.2, -0.4, 0.0
    x1, x2 = -1.0, 0.5
    h1 = math.tanh(a * x1)
    c1 = h1
    h2 = math.tanh(a * x2 + u * h1 + w * c1 + beta)
    out = fs.SelfAttentionRNN([[a]], [[w]], [beta], W_h=[[u]], dtype="float64").forward(
        np.array([[x1], [x2]]), backend="numpy")
    np.testing.assert_allclose(out.h[:, 0], [h1, h2], atol=1e-15)


@pytest.mark.parametrize("score", SCORES)
def test_window_one_gives_context_equal_state(score):
    m = make_model(score=score, window=1)
    out = m.forward(make_x(2, 9, 5), backend="numpy", return_attention=True)
    np.testing.assert_array_equal(out.c, out.h)
    assert np.all(out.attention.sum(-1) == 1)


def test_equal_states_give_uniform_attention():
    # W_x = 0 and b constant: every h_t = tanh(b + W_c c), and with W_c = 0 all are equal.
    H = 4
    m = fs.SelfAttentionRNN(np.zeros((H, 3)), np.zeros((H, H)), np.full(H, 0.3),
                            dtype="float64")
    out = m.forward(make_x(1, 6, 3)[0], return_attention=True, backend="numpy")
    for t in range(6):
        np.testing.assert_allclose(out.attention[t, : t + 1], 1.0 / (t + 1), atol=1e-15)


@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("score", SCORES)
def test_attention_rows_are_distributions_inside_the_window(score, window):
    m = make_model(score=score, window=window)
    T = 10
    att = m.forward(make_x(2, T, 5), backend="numpy", return_attention=True).attention
    np.testing.assert_allclose(att.sum(-1), 1.0, atol=1e-12)
    for t in range(T):
        first = 0 if window is None else max(0, t - window + 1)
        assert np.all(att[:, t, :first] == 0)      # outside the window
        assert np.all(att[:, t, t + 1:] == 0)      # the future
        assert np.all(att[:, t, first: t + 1] > 0)
