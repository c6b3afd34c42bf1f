"""The ``"numba"`` backend: the hot loop as Numba ``@njit`` kernels.

Three levels, as in the C backend: ``_run_sequence`` is the serial kernel for one sequence;
``_forward_parallel`` / ``_forward_serial`` drive it over the batch (``prange``, never a
parallel region inside one step); ``forward`` / ``step`` are the thin wrappers.

Score, recurrence, window and attention output are runtime arguments, so each driver
compiles once per dtype (and ``cache=True`` keeps that across processes). Absent weights are
passed as empty arrays of the model dtype, so every call has the same types and layouts.
"""

import math
import os

import numba
import numpy as np
from numba import njit, prange

from .. import _config

NAME = "numba"

if "NUMBA_THREADING_LAYER" not in os.environ:
    # A layer that is safe when several Python threads launch kernels at once.
    numba.config.THREADING_LAYER = _config.NUMBA_THREADING_LAYER

_FM = set(_config.NUMBA_FASTMATH)
_JIT = dict(fastmath=_FM, cache=True, nogil=True, error_model="numpy", boundscheck=False)
_BLOCK = 8


def availability():
    return True, None


def describe():
    return (f"numba {numba.__version__}, threads: {numba.config.NUMBA_NUM_THREADS}, "
            f"threading layer: {numba.config.THREADING_LAYER}")


@njit(**_JIT)
def _project(out_h, W_x, bias, x, length):
    """out_h[r, :] = W_x x[r, :] + b for r < length, four steps per row of W_x."""
    H, D = W_x.shape
    r = 0
    while r + 4 <= length:
        for j in range(H):
            s0 = s1 = s2 = s3 = out_h.dtype.type(0)
            for k in range(D):
                w = W_x[j, k]
                s0 += w * x[r, k]
                s1 += w * x[r + 1, k]
                s2 += w * x[r + 2, k]
                s3 += w * x[r + 3, k]
            out_h[r, j] = s0 + bias[j]
            out_h[r + 1, j] = s1 + bias[j]
            out_h[r + 2, j] = s2 + bias[j]
            out_h[r + 3, j] = s3 + bias[j]
        r += 4
    while r < length:
        for j in range(H):
            s = out_h.dtype.type(0)
            for k in range(D):
                s += W_x[j, k] * x[r, k]
            out_h[r, j] = s + bias[j]
        r += 1


@njit(**_JIT)
def _gemv_acc(y, A, xv):
    """y[j] += A[j, :] . xv, four rows per pass."""
    rows, n = A.shape
    j = 0
    while j + 4 <= rows:
        s0 = s1 = s2 = s3 = y.dtype.type(0)
        for k in range(n):
            xk = xv[k]
            s0 += A[j, k] * xk
            s1 += A[j + 1, k] * xk
            s2 += A[j + 2, k] * xk
            s3 += A[j + 3, k] * xk
        y[j] += s0
        y[j + 1] += s1
        y[j + 2] += s2
        y[j + 3] += s3
        j += 4
    while j < rows:
        s = y.dtype.type(0)
        for k in range(n):
            s += A[j, k] * xv[k]
        y[j] += s
        j += 1


@njit(**_JIT)
def _attend_run(score, krows, vals, start, n, q, v, acc, online, e, p, attn_row, col0,
                want_attn):
    """Fold history slots start .. start+n-1 into the online softmax.

    Invariant over the rows seen so far: online[0] = m = max e_i,
    online[1] = l = sum exp(e_i - m), acc = sum exp(e_i - m) vals[i]; online[2] = 1 once
    any row was seen (m starts from the first score, never from -inf).
    """
    kdim = krows.shape[1]
    H = vals.shape[1]
    m = online[0]
    l = online[1]
    zero = acc.dtype.type(0)
    for i0 in range(0, n, _BLOCK):
        nb = min(_BLOCK, n - i0)
        base = start + i0
        if score == 4:  # additive: e_i = v . tanh(k_i + q)
            for i in range(nb):
                s = zero
                for a in range(kdim):
                    s += v[a] * math.tanh(krows[base + i, a] + q[a])
                e[i] = s
        elif nb == _BLOCK:
            s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = zero
            for k in range(kdim):
                qk = q[k]
                s0 += krows[base, k] * qk
                s1 += krows[base + 1, k] * qk
                s2 += krows[base + 2, k] * qk
                s3 += krows[base + 3, k] * qk
                s4 += krows[base + 4, k] * qk
                s5 += krows[base + 5, k] * qk
                s6 += krows[base + 6, k] * qk
                s7 += krows[base + 7, k] * qk
            e[0] = s0
            e[1] = s1
            e[2] = s2
            e[3] = s3
            e[4] = s4
            e[5] = s5
            e[6] = s6
            e[7] = s7
        else:
            for i in range(nb):
                s = zero
                for k in range(kdim):
                    s += krows[base + i, k] * q[k]
                e[i] = s
        if want_attn:
            for i in range(nb):
                attn_row[col0 + i0 + i] = e[i]
        bm = e[0]
        for i in range(1, nb):
            if e[i] > bm:
                bm = e[i]
        if online[2] == 0:
            m = bm
            l = zero
            online[2] = 1
        elif bm > m:  # new running max: rescale what was summed so far
            scale = math.exp(m - bm)
            l *= scale
            for k in range(H):
                acc[k] *= scale
            m = bm
        for i in range(nb):
            p[i] = math.exp(e[i] - m)
            l += p[i]
        if nb == _BLOCK:
            p0, p1, p2, p3, p4, p5, p6, p7 = p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]
            for k in range(H):
                acc[k] += ((p0 * vals[base, k] + p1 * vals[base + 1, k])
                           + (p2 * vals[base + 2, k] + p3 * vals[base + 3, k])) + (
                              (p4 * vals[base + 4, k] + p5 * vals[base + 5, k])
                              + (p6 * vals[base + 6, k] + p7 * vals[base + 7, k]))
        else:
            for i in range(nb):
                pi = p[i]
                for k in range(H):
                    acc[k] += pi * vals[base + i, k]
    online[0] = m
    online[1] = l


@njit(**_JIT)
def _run_sequence(W_x, W_c, bias, W_h, W_s, W_k, W_q, v, score, recurrence, window,
                  hist, keys, hs, cs, pos0, x, length, out_h, out_c, attn, want_attn):
    """SPEC section 1 for one sequence, ``length`` steps from position ``pos0``.

    hist/keys: this sequence's history (slot p % window, or p); hs/cs: its last h and c,
    overwritten with each new h_t, c_t; out_h first holds the input projection.
    """
    H = W_x.shape[0]
    Ha = W_k.shape[0]
    keyed = score >= 3
    kdim = Ha if keyed else H
    dt = out_h.dtype.type
    q = np.zeros(max(H, Ha), dtype=out_h.dtype)   # per sequence, outside the time loop
    acc = np.zeros(H, dtype=out_h.dtype)
    online = np.zeros(3, dtype=out_h.dtype)
    e = np.zeros(_BLOCK, dtype=out_h.dtype)
    p = np.zeros(_BLOCK, dtype=out_h.dtype)
    inv_sqrt_h = dt(1.0 / math.sqrt(H))
    krows = keys if keyed else hist
    _project(out_h, W_x, bias, x, length)
    for r in range(length):
        pos = pos0 + r
        h_t = out_h[r]
        # 1. h_t = tanh(W_x x_t + b + W_c c_{t-1} [+ W_h h_{t-1}])
        _gemv_acc(h_t, W_c, cs)
        if recurrence == 1:
            _gemv_acc(h_t, W_h, hs)
        for j in range(H):
            h_t[j] = math.tanh(h_t[j])
        # 2. append h_t (and k_t = W_k h_t) at slot pos % window, or pos
        slot = pos % window if window > 0 else pos
        for j in range(H):
            hist[slot, j] = h_t[j]
            hs[j] = h_t[j]
        if keyed:
            for a in range(Ha):
                keys[slot, a] = 0
            _gemv_acc(keys[slot], W_k, h_t)
        # 3. query
        if score == 0:
            for j in range(H):
                q[j] = h_t[j]
        elif score == 1:
            for j in range(H):
                q[j] = h_t[j] * inv_sqrt_h
        else:
            for a in range(kdim):
                q[a] = 0
            _gemv_acc(q[:kdim], W_s if score == 2 else W_q, h_t)
        # 3-5. one fused pass over S_t = {first .. pos}
        first = max(0, pos - window + 1) if window > 0 else 0
        n = pos - first + 1
        for k in range(H):
            acc[k] = 0
        online[0] = 0
        online[1] = 0
        online[2] = 0
        attn_row = attn[r] if want_attn else attn[0] if attn.shape[0] else q
        if window > 0:  # ring buffer: slots first % window .. window-1, then 0 ..
            s0 = first % window
            n1 = min(n, window - s0)
            _attend_run(score, krows, hist, s0, n1, q, v, acc, online, e, p, attn_row, first,
                        want_attn)
            if n1 < n:
                _attend_run(score, krows, hist, 0, n - n1, q, v, acc, online, e, p, attn_row,
                            first + n1, want_attn)
        else:
            _attend_run(score, krows, hist, first, n, q, v, acc, online, e, p, attn_row,
                        first, want_attn)
        # 5. c_t = acc / l
        inv_l = dt(1.0) / online[1]
        for k in range(H):
            c = acc[k] * inv_l
            out_c[r, k] = c
            cs[k] = c
        if want_attn:
            m = online[0]
            for i in range(first, pos + 1):
                attn_row[i] = math.exp(attn_row[i] - m) * inv_l


@njit(parallel=True, **_JIT)
def _forward_parallel(W_x, W_c, bias, W_h, W_s, W_k, W_q, v, score, recurrence, window,
                      x, lengths, hist, keys, hs, cs, positions, out_h, out_c, attn, want_attn):
    for b in prange(x.shape[0]):
        if lengths[b] > 0:
            _run_sequence(W_x, W_c, bias, W_h, W_s, W_k, W_q, v, score, recurrence, window,
                          hist[b], keys[b], hs[b], cs[b], positions[b], x[b], lengths[b],
                          out_h[b], out_c[b], attn[b], want_attn)
            positions[b] += lengths[b]


@njit(**_JIT)
def _forward_serial(W_x, W_c, bias, W_h, W_s, W_k, W_q, v, score, recurrence, window,
                    x, lengths, hist, keys, hs, cs, positions, out_h, out_c, attn, want_attn):
    for b in range(x.shape[0]):
        if lengths[b] > 0:
            _run_sequence(W_x, W_c, bias, W_h, W_s, W_k, W_q, v, score, recurrence, window,
                          hist[b], keys[b], hs[b], cs[b], positions[b], x[b], lengths[b],
                          out_h[b], out_c[b], attn[b], want_attn)
            positions[b] += lengths[b]


def _empties(p, B):
    got = p.cache.get(("numba-empty", B))
    if got is None:
        got = p.cache[("numba-empty", B)] = np.zeros((B, 0, 0), dtype=p.dtype)
    return got


def _run(p, x, lengths, st, out_h, out_c, out_attn, num_threads):
    B = x.shape[0]
    keys = st.keys if st.keys is not None else _empties(p, B)
    want = out_attn is not None
    attn = out_attn if want else _empties(p, B)
    args = (p.W_x, p.W_c, p.b, p.W_h, p.W_s, p.W_k, p.W_q, p.v, p.score_code,
            p.recurrence_code, p.window or 0, x, lengths, st.hist, keys, st.h, st.c,
            st.positions, out_h, out_c, attn, want)
    if B == 1 or num_threads == 1:
        _forward_serial(*args)
        return
    if num_threads is None:
        _forward_parallel(*args)
        return
    before = numba.get_num_threads()   # thread-local in Numba; restored afterwards
    numba.set_num_threads(min(num_threads, numba.config.NUMBA_NUM_THREADS))
    try:
        _forward_parallel(*args)
    finally:
        numba.set_num_threads(before)


def forward(p, x, lengths, state, out_h, out_c, out_attn, num_threads=None):
    _run(p, x, lengths, state, out_h, out_c, out_attn, num_threads)


def step(p, x, active, state, out_h, out_c, num_threads=None):
    B = x.shape[0]
    _run(p, x.reshape(B, 1, x.shape[1]), active.astype(np.int64), state,
         out_h.reshape(B, 1, out_h.shape[1]), out_c.reshape(B, 1, out_c.shape[1]), None,
         num_threads)
