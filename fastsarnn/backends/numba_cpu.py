"""The ``"numba"`` backend: the hot loop as Numba ``@njit`` kernels.

Three levels, as in the C backend: ``_run_sequence`` is the serial kernel for one sequence;
``_run_row`` is the body both batch drivers share (check-free: the drivers check every size
first), and ``_forward_parallel`` / ``_forward_serial`` only loop it over the batch
(``prange`` or ``range``; never a parallel region inside one step); ``forward`` / ``step``
are the thin wrappers, and ``prepare_step`` a step whose unchanging arguments are made once
per set of state buffers (as the C backend's).

Score, recurrence, window and attention layout are runtime arguments, so each driver
compiles once per dtype (and ``cache=True`` keeps that across processes). Absent weights are
passed as empty arrays of the model dtype, so every call has the same types and layouts.

``exp`` and ``tanh`` are inlined branch-free polynomial forms (:func:`_exp_nonpos`,
:func:`_tanh`) instead of libm calls, so the loops that apply them vectorise; float32
stays float32 throughout (every constant is typed).

A single stream (B = 1) runs on one core. The C backend splits each step's attended
positions over a persistent helper pool (atomics, futex waits); here the only
synchronisation is a parallel region's fork/join (Numba has no CPU atomics or barriers for a persistent team), which measured
3-7 us per launch on the 2-core Xeon when quiet and 50 us to 5 ms when busy, against 9-15 us
of work per step of config S: one launch per step would never beat the serial loop.

Threading: Numba's own layer choice is respected (``NUMBA_THREADING_LAYER`` or
``numba.config.THREADING_LAYER``, else Numba's default order). :func:`availability` runs a
tiny parallel kernel once and reports the error when no layer loads; when the layer that
loaded is not safe for concurrent launches (``workqueue``), parallel launches are serialised
with a lock.
"""

import math
import threading

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from .. import _config

NAME = "numba"

_FM = set(_config.NUMBA_FASTMATH)
#: exp and tanh keep their evaluation order (no ``reassoc``: it would fold the split ln 2 and
#: the expm1 form back into cancelling sums); FMA contraction only adds accuracy.
_FM_EXACT = _FM & {"contract", "nsz"}
_JIT = dict(fastmath=_FM, cache=True, nogil=True, error_model="numpy", boundscheck=False)
#: Rows per block: the eight accumulators of _score_chunk and the eight weights of
#: _attend_run are written out, so this is structure, not a tunable.
_BLOCK = 8

# Score and recurrence codes, named from the one list in _config (frozen into the kernels).
_DOT = _config.SCORES.index("dot")
_SCALED_DOT = _config.SCORES.index("scaled_dot")
_GENERAL = _config.SCORES.index("general")
_KQ = _config.SCORES.index("kq")
_ADDITIVE = _config.SCORES.index("additive")
_REC_HC = _config.RECURRENCES.index("hc")

#: Layers that Numba documents as safe for launches from several threads at once.
_THREADSAFE_LAYERS = ("tbb", "omp")


# -- threading layer ----------------------------------------------------------------------
@njit(parallel=True, cache=True)
def _probe_parallel(out):
    for i in prange(out.shape[0]):
        out[i] = i + 1


_probe_lock = threading.Lock()
_probe_result = None          # (ok, reason), once probed
_launch_lock = None           # a Lock when the loaded layer is not thread-safe


def _probe():
    """Run a tiny parallel kernel once: (True, None), or (False, why no layer loads)."""
    global _probe_result, _launch_lock
    if _probe_result is None:
        with _probe_lock:
            if _probe_result is None:
                try:
                    out = np.zeros(4, dtype=np.int64)
                    _probe_parallel(out)
                    if not np.array_equal(out, np.arange(1, 5)):
                        raise RuntimeError(f"the probe kernel returned {out.tolist()}")
                    layer = numba.threading_layer()
                    if layer not in _THREADSAFE_LAYERS:
                        _launch_lock = threading.Lock()
                    _probe_result = (True, None)
                except Exception as exc:   # no layer can load: say which one and why
                    msg = " ".join(str(exc).split())
                    _probe_result = (False, (
                        f"Numba's threading layer {numba.config.THREADING_LAYER!r} cannot load "
                        f"({type(exc).__name__}: {msg})"))
    return _probe_result


def availability():
    return _probe()


def describe():
    ok, _ = _probe()
    layer = numba.threading_layer() if ok else "none"
    serial = ", launches serialised (layer not thread-safe)" if _launch_lock else ""
    return (f"numba {numba.__version__}, threads: {numba.config.NUMBA_NUM_THREADS}, "
            f"threading layer: {layer}{serial}")


# -- exp and tanh without libm calls (so that loops over them vectorise) ------------------
@intrinsic
def _float_from_bits(typingctx, bits):
    """The float whose IEEE-754 bit pattern is ``bits`` (int32 -> float32, int64 -> float64)."""
    if bits == types.int32:
        sig = types.float32(bits)
    elif bits == types.int64:
        sig = types.float64(bits)
    else:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(signature.return_type))

    return sig, codegen


def _exp_parts(x):
    """(s, q) with exp(x) = s (1 + q) for x <= 0; pure-Python stub, compiled by overload."""
    raise NotImplementedError


# exp(x) for x in [lo, 0]: n = round(x / ln 2), r = x - n ln 2 in [-ln2/2, ln2/2] (ln 2 split
# hi + lo so that n ln2_hi is exact), exp(r) - 1 by its Taylor series (truncation error
# below 1e-8 relative in float32 with degree 7, 1e-17 in float64 with degree 13), and 2^n
# built from its exponent bits. x below lo (exp(lo) ~ the smallest normal) is clamped.
_F32 = np.float32
_E32 = dict(lo=_F32(-87.0), log2e=_F32(1.4426950408889634), ln2hi=_F32(0.693145751953125),
            ln2lo=_F32(1.428606765330187e-06), bias=_F32(127.0), bias_half=_F32(127.5),
            mant=_F32(8388608.0), one=_F32(1.0),
            c=tuple(_F32(1.0 / math.factorial(k)) for k in range(1, 8)))
_E64 = dict(lo=-708.0, log2e=1.4426950408889634, ln2hi=0.6931471803691238,
            ln2lo=1.9082149292705877e-10, bias=1023.0, bias_half=1023.5,
            mant=4503599627370496.0, one=1.0,
            c=tuple(1.0 / math.factorial(k) for k in range(1, 14)))


@overload(_exp_parts, jit_options=dict(fastmath=_FM_EXACT, error_model="numpy"))
def _exp_parts_impl(x):
    if x == types.float32:
        lo, log2e, ln2hi, ln2lo = _E32["lo"], _E32["log2e"], _E32["ln2hi"], _E32["ln2lo"]
        bias, bias_half, mant = _E32["bias"], _E32["bias_half"], _E32["mant"]
        c1, c2, c3, c4, c5, c6, c7 = _E32["c"]

        def impl(x):
            x = x if x > lo else lo
            n = _F32(np.int32(x * log2e + bias_half)) - bias     # round(x / ln 2), <= 0
            r = (x - n * ln2hi) - n * ln2lo
            q = r * (c1 + r * (c2 + r * (c3 + r * (c4 + r * (c5 + r * (c6 + r * c7))))))
            s = _float_from_bits(np.int32((n + bias) * mant))     # 2^n
            return s, q
        return impl
    if x == types.float64:
        lo, log2e, ln2hi, ln2lo = _E64["lo"], _E64["log2e"], _E64["ln2hi"], _E64["ln2lo"]
        bias, bias_half, mant = _E64["bias"], _E64["bias_half"], _E64["mant"]
        c = _E64["c"]
        c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13 = c

        def impl(x):
            x = x if x > lo else lo
            n = float(np.int32(x * log2e + bias_half)) - bias
            r = (x - n * ln2hi) - n * ln2lo
            q = r * (c1 + r * (c2 + r * (c3 + r * (c4 + r * (c5 + r * (c6 + r * (c7 + r * (
                c8 + r * (c9 + r * (c10 + r * (c11 + r * (c12 + r * c13))))))))))))
            s = _float_from_bits(np.int64((n + bias) * mant))
            return s, q
        return impl
    return None


@njit(fastmath=_FM_EXACT, error_model="numpy", cache=True)
def _exp_nonpos(x):
    """exp(x) for x <= 0 (the softmax's e_i - max); NaN gives an unspecified finite value."""
    s, q = _exp_parts(x)
    return s + s * q


@njit(fastmath=_FM_EXACT, error_model="numpy", cache=True)
def _tanh(x):
    """tanh(x) = -expm1(-2|x|) / (2 + expm1(-2|x|)), signed; relative accuracy near 0
    because expm1 = s q + (s - 1) is exactly q when |x| < ln2/4."""
    a = abs(x)
    s, q = _exp_parts(-(a + a))
    em1 = s * q + (s - _one_like(s))
    t = -em1 / (_two_like(s) + em1)
    return t if x >= 0 else -t


def _one_like(x):
    raise NotImplementedError


def _two_like(x):
    raise NotImplementedError


@overload(_one_like)
def _one_like_impl(x):
    one = _F32(1.0) if x == types.float32 else 1.0
    return lambda x: one


@overload(_two_like)
def _two_like_impl(x):
    two = _F32(2.0) if x == types.float32 else 2.0
    return lambda x: two


# -- kernels ------------------------------------------------------------------------------
@njit(**_JIT)
def _project(out_h, W_x, bias, x, length):
    """out_h[r, :] = W_x x[r, :] + b for r < length, four steps per row of W_x."""
    H, D = W_x.shape
    zero = out_h.dtype.type(0)
    r = 0
    while r + 4 <= length:
        for j in range(H):
            s0 = s1 = s2 = s3 = zero
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
            s = zero
            for k in range(D):
                s += W_x[j, k] * x[r, k]
            out_h[r, j] = s + bias[j]
        r += 1


@njit(**_JIT)
def _gemv_acc(y, A, xv):
    """y[j] += A[j, :] . xv, four rows per pass (four independent reductions)."""
    rows, n = A.shape
    zero = y.dtype.type(0)
    j = 0
    while j + 4 <= rows:
        s0 = s1 = s2 = s3 = zero
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
        s = zero
        for k in range(n):
            s += A[j, k] * xv[k]
        y[j] += s
        j += 1


@njit(**_JIT)
def _score_chunk(score, krows, start, nr, q, v, e):
    """e[i] = score of history slot start + i against q, for i < nr; returns max_i e[i].

    Dot-product scores go eight rows at a time: eight independent reductions in one pass
    over q, so the FMA chains overlap and q is read once per column.
    """
    kdim = krows.shape[1]
    zero = e.dtype.type(0)
    i = 0
    if score != _ADDITIVE:
        while i + _BLOCK <= nr:
            base = start + i
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
            e[i] = s0
            e[i + 1] = s1
            e[i + 2] = s2
            e[i + 3] = s3
            e[i + 4] = s4
            e[i + 5] = s5
            e[i + 6] = s6
            e[i + 7] = s7
            i += _BLOCK
    while i < nr:
        s = zero
        if score == _ADDITIVE:  # e_i = v . tanh(k_i + q)
            for a in range(kdim):
                s += v[a] * _tanh(krows[start + i, a] + q[a])
        else:
            for k in range(kdim):
                s += krows[start + i, k] * q[k]
        e[i] = s
        i += 1
    # max over the chunk: eight running maxima, then a tree (short dependency chains)
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = e[0]
    i = 0
    while i + _BLOCK <= nr:
        m0 = e[i] if e[i] > m0 else m0
        m1 = e[i + 1] if e[i + 1] > m1 else m1
        m2 = e[i + 2] if e[i + 2] > m2 else m2
        m3 = e[i + 3] if e[i + 3] > m3 else m3
        m4 = e[i + 4] if e[i + 4] > m4 else m4
        m5 = e[i + 5] if e[i + 5] > m5 else m5
        m6 = e[i + 6] if e[i + 6] > m6 else m6
        m7 = e[i + 7] if e[i + 7] > m7 else m7
        i += _BLOCK
    while i < nr:
        m0 = e[i] if e[i] > m0 else m0
        i += 1
    m0 = m1 if m1 > m0 else m0
    m2 = m3 if m3 > m2 else m2
    m4 = m5 if m5 > m4 else m4
    m6 = m7 if m7 > m6 else m6
    m0 = m2 if m2 > m0 else m0
    m4 = m6 if m6 > m4 else m4
    return m4 if m4 > m0 else m0


@njit(**_JIT)
def _attend_run(score, krows, vals, start, n, q, v, acc, m, l, started, e, attn_row, col,
                want_attn):
    """Fold history slots start .. start+n-1 into the online softmax (m, l, acc).

    Invariant over the rows seen so far: m = max e_i, l = sum exp(e_i - m),
    acc = sum exp(e_i - m) vals[i]; ``started`` once any row was seen (m starts from the
    first score, never from -inf). The rows go in chunks of len(e) (sized to stay in L1):
    score the chunk, fold its max into m, exponentiate it in one vectorised loop, then add
    it to acc eight rows at a time while the rows are still in L1. Raw scores go to
    attn_row[col .. col+n-1] if want_attn. Returns the new (m, l, started).
    """
    H = vals.shape[1]
    chunk = e.shape[0]
    zero = acc.dtype.type(0)
    for c0 in range(0, n, chunk):
        nr = min(chunk, n - c0)
        base = start + c0
        cm = _score_chunk(score, krows, base, nr, q, v, e)
        if want_attn:
            for i in range(nr):
                attn_row[col + c0 + i] = e[i]
        if not started:
            m = cm
            l = zero
            started = True
        elif cm > m:  # new running max: rescale what was summed so far
            scale = _exp_nonpos(m - cm)
            l *= scale
            for k in range(H):
                acc[k] *= scale
            m = cm
        ls = zero
        for i in range(nr):       # p_i = exp(e_i - m), in place
            pi = _exp_nonpos(e[i] - m)
            e[i] = pi
            ls += pi
        l += ls
        i = 0
        while i + _BLOCK <= nr:
            r = base + i
            p0, p1, p2, p3 = e[i], e[i + 1], e[i + 2], e[i + 3]
            p4, p5, p6, p7 = e[i + 4], e[i + 5], e[i + 6], e[i + 7]
            for k in range(H):
                acc[k] += ((p0 * vals[r, k] + p1 * vals[r + 1, k])
                           + (p2 * vals[r + 2, k] + p3 * vals[r + 3, k])) + (
                              (p4 * vals[r + 4, k] + p5 * vals[r + 5, k])
                              + (p6 * vals[r + 6, k] + p7 * vals[r + 7, k]))
            i += _BLOCK
        while i < nr:
            pi = e[i]
            for k in range(H):
                acc[k] += pi * vals[base + i, k]
            i += 1
    return m, l, started


@njit(**_JIT)
def _run_sequence(W_x, W_c, bias, W_h, W_s, W_k, W_q, v, score, recurrence, window,
                  hist, keys, hs, cs, pos0, x, length, out_h, out_c, attn, want_attn,
                  compact, chunk):
    """SPEC section 1 for one sequence, ``length`` steps from position ``pos0``.

    hist/keys: this sequence's history (slot p % window, or p); hs/cs: its last h and c,
    overwritten with each new h_t, c_t; out_h first holds the input projection. Attention
    row r: column = absolute position, or (``compact``) position - first attended.
    """
    H = W_x.shape[0]
    Ha = W_k.shape[0]
    keyed = score == _KQ or score == _ADDITIVE
    kdim = Ha if keyed else H
    dt = out_h.dtype.type
    zero = dt(0)
    q = np.zeros(max(H, Ha), dtype=out_h.dtype)   # per sequence, outside the time loop
    acc = np.zeros(H, dtype=out_h.dtype)
    e = np.zeros(chunk, dtype=out_h.dtype)
    inv_sqrt_h = dt(1.0 / math.sqrt(H))
    krows = keys if keyed else hist
    _project(out_h, W_x, bias, x, length)
    for r in range(length):
        pos = pos0 + r
        h_t = out_h[r]
        # 1. h_t = tanh(W_x x_t + b + W_c c_{t-1} [+ W_h h_{t-1}])
        _gemv_acc(h_t, W_c, cs)
        if recurrence == _REC_HC:
            _gemv_acc(h_t, W_h, hs)
        for j in range(H):
            h_t[j] = _tanh(h_t[j])
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
        if score == _DOT:
            for j in range(H):
                q[j] = h_t[j]
        elif score == _SCALED_DOT:
            for j in range(H):
                q[j] = h_t[j] * inv_sqrt_h
        else:
            for a in range(kdim):
                q[a] = 0
            _gemv_acc(q[:kdim], W_s if score == _GENERAL else W_q, h_t)
        # 3-5. one fused pass over S_t = {first .. pos}
        first = max(0, pos - window + 1) if window > 0 else 0
        n = pos - first + 1
        col = 0 if compact else first
        for k in range(H):
            acc[k] = 0
        m = zero
        l = zero
        started = False
        attn_row = attn[r] if want_attn else q
        if window > 0:  # ring buffer: slots first % window .. window-1, then 0 ..
            s0 = first % window
            n1 = min(n, window - s0)
            m, l, started = _attend_run(score, krows, hist, s0, n1, q, v, acc, m, l, started,
                                        e, attn_row, col, want_attn)
            if n1 < n:
                m, l, started = _attend_run(score, krows, hist, 0, n - n1, q, v, acc, m, l,
                                            started, e, attn_row, col + n1, want_attn)
        else:
            m, l, started = _attend_run(score, krows, hist, first, n, q, v, acc, m, l, started,
                                        e, attn_row, col, want_attn)
        # 5. c_t = acc / l
        inv_l = dt(1.0) / l
        for k in range(H):
            c = acc[k] * inv_l
            out_c[r, k] = c
            cs[k] = c
        if want_attn:
            for i in range(col, col + n):
                attn_row[i] = _exp_nonpos(attn_row[i] - m) * inv_l


#: What each nonzero code of :func:`_check_sizes` means (its expected and got follow).
_SIZE_ERRORS = (
    None,
    "x: batch size of every other array (lengths, state rows, outputs)",
    "x: input size D = W_x.shape[1]",
    "W_c/b: hidden size H = W_x.shape[0]",
    "W_h: (H, H) rows for recurrence 'hc'",
    "W_s: (H, H) rows for score 'general'",
    "W_k/W_q: (Ha, H) with Ha >= 1 for a keyed score",
    "v: (Ha,) for score 'additive'",
    "state: hidden size H of hist, h and c",
    "state keys: (B, capacity, Ha)",
    "out_h/out_c: shape (B, T, H)",
    "lengths: each in [0, T]",
    "state.positions: each >= 0",
    "state capacity: slots for every new position",
    "out_attn: T rows",
    "out_attn: columns for every attended position",
    "score/recurrence code, window >= 0 (compact attention needs a window), chunk >= 1",
    "W_c/W_h/W_s: columns H",
)


@njit(**_JIT)
def _check_sizes(W_x, W_c, bias, W_h, W_s, W_k, W_q, v, score, recurrence, window, x, lengths,
                 hist, keys, hs, cs, positions, out_h, out_c, attn, want_attn, compact, chunk):
    """Every size the kernels index with, checked before anything is written:
    (0, 0, 0), or (code, expected, got) for the first mismatch (codes in _SIZE_ERRORS)."""
    B, T, D = x.shape
    H = W_x.shape[0]
    Ha = W_k.shape[0]
    keyed = score == _KQ or score == _ADDITIVE
    if not (0 <= score <= _ADDITIVE and 0 <= recurrence <= _REC_HC and window >= 0
            and chunk >= 1 and not (compact and want_attn and window == 0)):
        return 16, 0, 0
    for n in (lengths.shape[0], hist.shape[0], hs.shape[0], cs.shape[0], positions.shape[0],
              out_h.shape[0], out_c.shape[0]):
        if n != B:
            return 1, B, n
    if keyed and keys.shape[0] != B:
        return 1, B, keys.shape[0]
    if want_attn and attn.shape[0] != B:
        return 1, B, attn.shape[0]
    if W_x.shape[1] != D:
        return 2, W_x.shape[1], D
    for n in (W_c.shape[0], bias.shape[0]):
        if n != H:
            return 3, H, n
    if W_c.shape[1] != H:
        return 17, H, W_c.shape[1]
    if recurrence == _REC_HC:
        if W_h.shape[0] != H:
            return 4, H, W_h.shape[0]
        if W_h.shape[1] != H:
            return 17, H, W_h.shape[1]
    if score == _GENERAL:
        if W_s.shape[0] != H:
            return 5, H, W_s.shape[0]
        if W_s.shape[1] != H:
            return 17, H, W_s.shape[1]
    if keyed:
        if Ha < 1:
            return 6, 1, Ha
        if W_q.shape[0] != Ha:
            return 6, Ha, W_q.shape[0]
        for n in (W_k.shape[1], W_q.shape[1]):
            if n != H:
                return 6, H, n
        if score == _ADDITIVE and v.shape[0] != Ha:
            return 7, Ha, v.shape[0]
        if keys.shape[2] != Ha:
            return 9, Ha, keys.shape[2]
        if keys.shape[1] != hist.shape[1]:
            return 9, hist.shape[1], keys.shape[1]
    for n in (hist.shape[2], hs.shape[1], cs.shape[1]):
        if n != H:
            return 8, H, n
    for arr in (out_h, out_c):
        if arr.shape[1] != T:
            return 10, T, arr.shape[1]
        if arr.shape[2] != H:
            return 10, H, arr.shape[2]
    if want_attn and attn.shape[1] != T:
        return 14, T, attn.shape[1]
    cap = hist.shape[1]
    for b in range(B):
        n = lengths[b]
        if n < 0 or n > T:
            return 11, T, n
        if positions[b] < 0:
            return 12, 0, positions[b]
        if n == 0:
            continue
        end = positions[b] + n          # one past the last new position
        slots = min(end, window) if window > 0 else end
        if slots > cap:
            return 13, slots, cap
        if want_attn:
            cols = slots if compact else end
            if attn.shape[2] < cols:
                return 15, cols, attn.shape[2]
    return 0, 0, 0


@njit(**_JIT)
def _run_row(W_x, W_c, bias, W_h, W_s, W_k, W_q, v, score, recurrence, window, x, lengths,
             hist, keys, hs, cs, positions, out_h, out_c, attn, want_attn, compact, chunk, b):
    """The body both batch drivers share: row ``b`` of the batch, then its position."""
    if lengths[b] > 0:
        _run_sequence(W_x, W_c, bias, W_h, W_s, W_k, W_q, v, score, recurrence, window,
                      hist[b], keys[b], hs[b], cs[b], positions[b], x[b], lengths[b],
                      out_h[b], out_c[b], attn[b], want_attn, compact, chunk)
        positions[b] += lengths[b]


@njit(parallel=True, **_JIT)
def _forward_parallel(W_x, W_c, bias, W_h, W_s, W_k, W_q, v, score, recurrence, window,
                      x, lengths, hist, keys, hs, cs, positions, out_h, out_c, attn, want_attn,
                      compact, chunk):
    bad = _check_sizes(W_x, W_c, bias, W_h, W_s, W_k, W_q, v, score, recurrence, window, x,
                       lengths, hist, keys, hs, cs, positions, out_h, out_c, attn, want_attn,
                       compact, chunk)
    if bad[0] != 0:
        return bad
    for b in prange(x.shape[0]):
        _run_row(W_x, W_c, bias, W_h, W_s, W_k, W_q, v, score, recurrence, window, x, lengths,
                 hist, keys, hs, cs, positions, out_h, out_c, attn, want_attn, compact, chunk,
                 b)
    return bad


@njit(**_JIT)
def _forward_serial(W_x, W_c, bias, W_h, W_s, W_k, W_q, v, score, recurrence, window,
                    x, lengths, hist, keys, hs, cs, positions, out_h, out_c, attn, want_attn,
                    compact, chunk):
    bad = _check_sizes(W_x, W_c, bias, W_h, W_s, W_k, W_q, v, score, recurrence, window, x,
                       lengths, hist, keys, hs, cs, positions, out_h, out_c, attn, want_attn,
                       compact, chunk)
    if bad[0] != 0:
        return bad
    for b in range(x.shape[0]):
        _run_row(W_x, W_c, bias, W_h, W_s, W_k, W_q, v, score, recurrence, window, x, lengths,
                 hist, keys, hs, cs, positions, out_h, out_c, attn, want_attn, compact, chunk,
                 b)
    return bad


# -- wrappers -----------------------------------------------------------------------------
def _empties(p, B):
    got = p.cache.get(("numba-empty", B))
    if got is None:
        got = p.cache[("numba-empty", B)] = np.zeros((B, 0, 0), dtype=p.dtype)
    return got


def _chunk_rows(p):
    """History rows per attention chunk: as many whole blocks as fit
    :data:`fastsarnn._config.NUMBA_ATTEND_CHUNK_BYTES` (states plus keys), at least one."""
    row_bytes = (p.H + p.Ha) * p.dtype.itemsize
    return max(_BLOCK, _config.NUMBA_ATTEND_CHUNK_BYTES // row_bytes // _BLOCK * _BLOCK)


def _raise_bad(bad):
    code, expected, got = bad
    if code:
        raise ValueError(f"numba kernel rejected its arguments: {_SIZE_ERRORS[code]}: "
                         f"expected {expected}, got {got}")


def _weights(p):
    """The kernels' leading arguments: the weights (absent ones empty) and the codes."""
    return (p.W_x, p.W_c, p.b, p.W_h, p.W_s, p.W_k, p.W_q, p.v, p.score_code,
            p.recurrence_code, p.window or 0)


def _run(p, x, lengths, st, out_h, out_c, out_attn, num_threads, compact):
    B = x.shape[0]
    keys = st.keys if st.keys is not None else _empties(p, B)
    want = out_attn is not None
    attn = out_attn if want else _empties(p, B)
    _launch((*_weights(p), x, lengths, st.hist, keys, st.h, st.c, st.positions, out_h,
             out_c, attn, want, compact, _chunk_rows(p)), B, num_threads)


def _launch(args, B, num_threads):
    """A driver over ``args``' B rows: the serial one for one row or one thread, else the
    parallel one (on ``num_threads`` threads, or Numba's count), one launch at a time where
    the threading layer needs it; a size the kernel refuses raises ValueError."""
    if B == 1 or num_threads == 1:
        _raise_bad(_forward_serial(*args))
        return
    lock = _launch_lock
    if lock is not None:
        lock.acquire()
    try:
        if num_threads is None:
            _raise_bad(_forward_parallel(*args))
            return
        before = numba.get_num_threads()   # thread-local in Numba; restored afterwards
        numba.set_num_threads(min(num_threads, numba.config.NUMBA_NUM_THREADS))
        try:
            _raise_bad(_forward_parallel(*args))
        finally:
            numba.set_num_threads(before)
    finally:
        if lock is not None:
            lock.release()


def _check_kinds(p, x, lengths, st, out_h, out_c, out_attn):
    """Ranks, dtypes and layouts (the sizes are the kernels' own check): ValueError, so
    that no argument reaches a kernel compiled for something else."""
    arrays = [("x", x, 3, p.dtype), ("lengths", lengths, 1, np.int64),
              ("state.hist", st.hist, 3, p.dtype), ("state.h", st.h, 2, p.dtype),
              ("state.c", st.c, 2, p.dtype), ("state.positions", st.positions, 1, np.int64),
              ("out_h", out_h, 3, p.dtype), ("out_c", out_c, 3, p.dtype)]
    if st.keys is not None:
        arrays.append(("state.keys", st.keys, 3, p.dtype))
    if out_attn is not None:
        arrays.append(("out_attn", out_attn, 3, p.dtype))
    for name, arr, ndim, dtype in arrays:
        if (not isinstance(arr, np.ndarray) or arr.ndim != ndim or arr.dtype != dtype
                or not arr.flags.c_contiguous):
            got = (f"{type(arr).__name__}" if not isinstance(arr, np.ndarray) else
                   f"{arr.ndim}-D {arr.dtype}"
                   f"{'' if arr.flags.c_contiguous else ' (not C-contiguous)'}")
            raise ValueError(f"numba kernel rejected its arguments: {name} must be a "
                             f"C-contiguous {ndim}-D {np.dtype(dtype).name} array; got {got}")


def forward(p, x, lengths, state, out_h, out_c, out_attn, num_threads=None,
            compact_attention=False):
    """Kernel entry point (see :mod:`fastsarnn.backends`); raises ValueError, touching
    nothing, when an array's rank, dtype, layout or size does not fit the model."""
    _check_kinds(p, x, lengths, state, out_h, out_c, out_attn)
    _run(p, x, lengths, state, out_h, out_c, out_attn, num_threads, bool(compact_attention))


def step(p, x, active, state, out_h, out_c, num_threads=None):
    """One step per row (``active`` rows); sizes checked by the kernel as in forward."""
    B = x.shape[0]
    _run(p, x.reshape(B, 1, x.shape[1]), active.astype(np.int64), state,
         out_h.reshape(B, 1, out_h.shape[1]), out_c.reshape(B, 1, out_c.shape[1]), None,
         num_threads, False)


class _StepCall:
    """:func:`step` prepared for one (model, state buffers) pair: the kernel's arguments
    that stay the same from token to token (weights, codes, the state's buffers) made once,
    the one-step views of the latest output buffers kept while the same arrays come, and
    the active flags copied into lengths of 0 or 1 kept here (the latest output buffers
    stay referenced until others come). Per token: x_t viewed as a one-step sequence, the
    attention chunk read from the settings, one kernel call (sizes checked by the kernel,
    as in :func:`step`). It steps the state it was prepared for: the ``state`` argument is
    the model layer's, which hands the same one."""

    __slots__ = ("p", "B", "head", "bufs", "empty", "lengths", "oh", "oh3", "oc", "oc3")

    def __init__(self, p, state):
        B = state._h.shape[0]
        self.p, self.B = p, B
        self.head = _weights(p)
        self.empty = _empties(p, B)
        keys = state._keys if state._keys is not None else self.empty
        self.bufs = (state._hist, keys, state._h, state._c, state._positions)
        self.lengths = np.zeros(B, dtype=np.int64)
        self.oh = self.oc = self.oh3 = self.oc3 = None

    def __call__(self, x, active, state, out_h, out_c, num_threads):
        B = self.B
        if out_h is not self.oh:
            self.oh3, self.oh = out_h.reshape(B, 1, out_h.shape[-1]), out_h
        if out_c is not self.oc:
            self.oc3, self.oc = out_c.reshape(B, 1, out_c.shape[-1]), out_c
        np.copyto(self.lengths, active)
        _launch((*self.head, x.reshape(B, 1, x.shape[-1]), self.lengths, *self.bufs,
                 self.oh3, self.oc3, self.empty, False, False, _chunk_rows(self.p)),
                B, num_threads)


def prepare_step(p, state):
    """A callable ``run(x, active, state, out_h, out_c, num_threads)`` for ``state``'s
    current buffers (the model layer asks again when they change); x and the outputs are
    ``(B, .)`` arrays, or 1-D when B = 1."""
    return _StepCall(p, state)
