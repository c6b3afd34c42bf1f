"""Helpers shared by the test modules (tests/ is on sys.path under pytest)."""

import numpy as np

import fastsarnn as fs
from fastsarnn import _config

SCORES = _config.SCORES
RECURRENCES = _config.RECURRENCES


def make_model(score="dot", recurrence="c", window=None, dtype="float64", D=5, H=8, Ha=None,
               seed=0):
    if score not in ("kq", "additive"):
        Ha = None
    return fs.SelfAttentionRNN.random(D, H, score=score, recurrence=recurrence,
                                      attention_size=Ha, window=window, dtype=dtype, seed=seed)


def make_x(B, T, D, seed=1, dtype="float64"):
    return np.random.default_rng(seed).standard_normal((B, T, D)).astype(dtype)


def reference(model, x, **kwargs):
    """The float64 NumPy reference for ``model`` on ``x`` (cast to the model dtype first)."""
    x = np.asarray(x).astype(model.dtype).astype(np.float64)
    return model.astype("float64").forward(x, backend="numpy", **kwargs)


def max_err(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def tol(model):
    return _config.TOLERANCE[model.dtype.name]
