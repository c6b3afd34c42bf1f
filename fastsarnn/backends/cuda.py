"""The ``"cuda"`` backend: a persistent Numba CUDA kernel, one launch per ``forward``.

A thread block owns a sequence and loops over time inside the kernel, synchronising within
the block between the phases of a step; weights are read from global memory (L2-resident at
these sizes), the history lives in device memory, and every reduction (softmax max and sum)
is a tree in shared memory, so the kernel also runs on the CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``), which has no warp intrinsics.

The state keeps device copies of its history between calls: after a launch only
``positions``, ``h`` and ``c`` come back to the host (small); ``hist``/``keys`` are copied back
only when a CPU backend, ``copy`` or ``reset`` needs them.
"""

import math
from importlib import metadata

import numpy as np

from .. import _config, _validate

NAME = "cuda"
DEVICE = True
ACCEPTS_DEVICE_ARRAYS = True
MAX_BLOCK = 1024            # shared reduction buffer; CUDA_BLOCK_SIZE must not exceed it

try:
    metadata.version("numba-cuda")
except metadata.PackageNotFoundError:
    _IMPORT_ERROR = "numba-cuda is not installed (pip install 'fastsarnn[cuda]')"
else:
    _IMPORT_ERROR = None

if _IMPORT_ERROR is None:
    import numba
    from numba import cuda

    @cuda.jit
    def _forward_kernel(W_x, W_c, bias, W_h, W_s, W_k, W_q, v, score, recurrence, window,
                        x, lengths, hist, keys, hs, cs, positions, out_h, out_c, attn,
                        want_attn, qbuf, ebuf):
        """Block b runs sequence b for lengths[b] steps (SPEC section 1).

        Phases of a step, separated by __syncthreads: (1) thread j computes h_t[j] and
        appends it; (2) keys k_t = W_k h_t and the query; (3) thread i scores attended
        positions i, i + blockDim, ...; a shared-memory tree gives m = max e; (4) the same
        threads form exp(e_i - m) and a tree gives l; (5) thread j sums c_t[j]. Invariant at
        the top of step r: out_h[b, r-1] / out_c[b, r-1] (or hs / cs when r = 0) hold
        h_{t-1}, c_{t-1}, and history slots of every attended position are written.
        """
        red = cuda.shared.array(MAX_BLOCK, numba.float64)
        b = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        nthr = cuda.blockDim.x
        if b >= x.shape[0]:
            return
        H = W_x.shape[0]
        D = W_x.shape[1]
        Ha = W_k.shape[0]
        keyed = score >= 3
        kdim = Ha if keyed else H
        L = lengths[b]
        pos0 = positions[b]
        inv_sqrt_h = 1.0 / math.sqrt(H)
        for r in range(L):
            p = pos0 + r
            slot = p % window if window > 0 else p
            # (1) h_t = tanh(W_x x_t + b + W_c c_{t-1} [+ W_h h_{t-1}]), appended
            for j in range(tid, H, nthr):
                s = bias[j]
                for k in range(D):
                    s += W_x[j, k] * x[b, r, k]
                for k in range(H):
                    s += W_c[j, k] * (cs[b, k] if r == 0 else out_c[b, r - 1, k])
                if recurrence == 1:
                    for k in range(H):
                        s += W_h[j, k] * (hs[b, k] if r == 0 else out_h[b, r - 1, k])
                hv = math.tanh(s)
                out_h[b, r, j] = hv
                hist[b, slot, j] = hv
            cuda.syncthreads()
            # (2) key and query
            for a in range(tid, kdim, nthr):
                if keyed:
                    sk = W_k[a, 0] * 0
                    sq = W_q[a, 0] * 0
                    for k in range(H):
                        hk = out_h[b, r, k]
                        sk += W_k[a, k] * hk
                        sq += W_q[a, k] * hk
                    keys[b, slot, a] = sk
                    qbuf[b, a] = sq
                elif score == 2:
                    sq = W_s[a, 0] * 0
                    for k in range(H):
                        sq += W_s[a, k] * out_h[b, r, k]
                    qbuf[b, a] = sq
                elif score == 1:
                    qbuf[b, a] = out_h[b, r, a] * inv_sqrt_h
                else:
                    qbuf[b, a] = out_h[b, r, a]
            cuda.syncthreads()
            # (3) scores of S_t = {first .. p}; block max
            first = p - window + 1 if (window > 0 and p - window + 1 > 0) else 0
            n = p - first + 1
            local_max = -math.inf
            for i in range(tid, n, nthr):
                pi = first + i
                sl = pi % window if window > 0 else pi
                e = qbuf[b, 0] * 0
                if score == 4:
                    for a in range(Ha):
                        e += v[a] * math.tanh(keys[b, sl, a] + qbuf[b, a])
                elif keyed:
                    for a in range(Ha):
                        e += keys[b, sl, a] * qbuf[b, a]
                else:
                    for k in range(H):
                        e += hist[b, sl, k] * qbuf[b, k]
                ebuf[b, i] = e
                if e > local_max:
                    local_max = e
            red[tid] = local_max
            cuda.syncthreads()
            step = nthr // 2
            while step > 0:
                if tid < step and red[tid + step] > red[tid]:
                    red[tid] = red[tid + step]
                cuda.syncthreads()
                step //= 2
            m = red[0]
            cuda.syncthreads()
            # (4) numerators and their sum l
            local_sum = 0.0
            for i in range(tid, n, nthr):
                ex = math.exp(ebuf[b, i] - m)
                ebuf[b, i] = ex
                local_sum += ex
            red[tid] = local_sum
            cuda.syncthreads()
            step = nthr // 2
            while step > 0:
                if tid < step:
                    red[tid] += red[tid + step]
                cuda.syncthreads()
                step //= 2
            inv_l = 1.0 / red[0]
            # (5) c_t[j] = sum_i alpha_i h_i[j]; attention row
            for j in range(tid, H, nthr):
                acc = 0.0
                for i in range(n):
                    pi = first + i
                    sl = pi % window if window > 0 else pi
                    acc += ebuf[b, i] * hist[b, sl, j]
                out_c[b, r, j] = acc * inv_l
            if want_attn:
                for i in range(tid, n, nthr):
                    attn[b, r, first + i] = ebuf[b, i] * inv_l
            cuda.syncthreads()
        if L > 0:
            for j in range(tid, H, nthr):
                hs[b, j] = out_h[b, L - 1, j]
                cs[b, j] = out_c[b, L - 1, j]
            if tid == 0:
                positions[b] = pos0 + L

    @cuda.jit
    def _nonfinite_kernel(x, lengths, first_bad):
        """first_bad[0] = min flat index of a non-finite x[b, t, d] with t < lengths[b]."""
        i = cuda.grid(1)
        B, T, D = x.shape
        if i < B * T * D:
            b = i // (T * D)
            t = (i // D) % T
            if t < lengths[b] and not math.isfinite(x[b, t, i % D]):
                cuda.atomic.min(first_bad, 0, i)


def availability():
    if _IMPORT_ERROR is not None:
        return False, _IMPORT_ERROR
    try:
        ok = cuda.is_available()
    except Exception as exc:  # driver problems surface here
        return False, f"CUDA driver error: {exc}"
    if not ok:
        return False, ("no usable CUDA GPU or driver (numba.cuda.is_available() is False); "
                       "set NUMBA_ENABLE_CUDASIM=1 for the simulator")
    return True, None


def describe():
    if cuda.simulator_enabled if hasattr(cuda, "simulator_enabled") else False:
        return "CUDA simulator (NUMBA_ENABLE_CUDASIM=1)"
    try:
        dev = cuda.get_current_device()
        return f"GPU: {dev.name.decode() if isinstance(dev.name, bytes) else dev.name}"
    except Exception:
        return "CUDA"


# -- device-array adapters used by the model -----------------------------------------------
def is_device_array(x):
    return _validate.is_device_array(x)


def as_device_array(x):
    if type(x).__name__ in _validate.NUMBA_DEVICE_ARRAY_TYPES:
        return x
    return cuda.as_cuda_array(x)


def contiguous(x):
    if x.is_c_contiguous():
        return x
    raise ValueError("device input x must be C-contiguous")


def zeros(shape, dtype):
    return cuda.to_device(np.zeros(shape, dtype=dtype))


def to_device(arr):
    return cuda.to_device(arr)


def first_nonfinite(x, lengths):
    """Index (b, t, d) of the first non-finite valid element of a device array, or None."""
    B, T, D = x.shape
    size = B * T * D
    if size == 0:
        return None
    flag = cuda.to_device(np.array([size], dtype=np.int64))
    threads = 128
    _nonfinite_kernel[(size + threads - 1) // threads, threads](x, cuda.to_device(lengths),
                                                                flag)
    i = int(flag.copy_to_host()[0])
    if i >= size:
        return None
    return tuple(int(k) for k in np.unravel_index(i, (B, T, D)))


# -- weights and state on the device ---------------------------------------------------------
def _device_weights(p):
    got = p.cache.get(NAME)
    if got is None:
        dummy = np.zeros((1, 1), dtype=p.dtype)
        got = {}
        for name in ("W_x", "W_c", "b", "W_h", "W_s", "W_k", "W_q", "v"):
            arr = getattr(p, name)
            if arr.size == 0:
                arr = dummy if arr.ndim == 2 else dummy[0]
            got[name] = cuda.to_device(np.ascontiguousarray(arr))
        p.cache[NAME] = got
    return got


def _sync_host(state):
    dev = state._cache.get(NAME)
    if dev is not None and dev["device_newer"]:
        dev["hist"].copy_to_host(state.hist)
        if state.keys is not None:
            dev["keys"].copy_to_host(state.keys)
        dev["device_newer"] = False


def _device_state(state, dtype):
    """Device copies of the state's buffers, uploaded when the host changed since."""
    dev = state._cache.get(NAME)
    if (dev is None or dev["host_version"] != state._host_version
            or dev["hist"].shape != state.hist.shape):
        keys = state.keys if state.keys is not None else np.zeros(
            (state.batch_size, 1, 1), dtype=dtype)
        dev = {"hist": cuda.to_device(state.hist), "keys": cuda.to_device(keys),
               "h": cuda.to_device(state.h), "c": cuda.to_device(state.c),
               "positions": cuda.to_device(state.positions),
               "host_version": state._host_version, "device_newer": False}
        state._cache[NAME] = dev
        state._cache["sync_host"] = _sync_host
    return dev


def _launch(p, d_x, lengths, state, d_out_h, d_out_c, d_attn):
    B = d_x.shape[0]
    w = _device_weights(p)
    dev = _device_state(state, p.dtype)
    block = int(_config.CUDA_BLOCK_SIZE)
    if block < 2 or block > MAX_BLOCK or block & (block - 1):
        raise ValueError(f"fastsarnn._config.CUDA_BLOCK_SIZE must be a power of two in "
                         f"[2, {MAX_BLOCK}]; got {block}")
    n_max = int(p.window) if p.window else int((state.positions + lengths).max())
    qbuf = cuda.device_array((B, max(p.H, p.Ha)), dtype=p.dtype)
    ebuf = cuda.device_array((B, max(n_max, 1)), dtype=p.dtype)
    want = d_attn is not None
    if not want:
        d_attn = cuda.device_array((B, 1, 1), dtype=p.dtype)
    _forward_kernel[B, block](w["W_x"], w["W_c"], w["b"], w["W_h"], w["W_s"], w["W_k"],
                              w["W_q"], w["v"], p.score_code, p.recurrence_code,
                              p.window or 0, d_x, cuda.to_device(lengths), dev["hist"],
                              dev["keys"], dev["h"], dev["c"], dev["positions"], d_out_h,
                              d_out_c, d_attn, want, qbuf, ebuf)
    # small state parts back to the host; the history stays on the device
    dev["positions"].copy_to_host(state.positions)
    dev["h"].copy_to_host(state.h)
    dev["c"].copy_to_host(state.c)
    dev["device_newer"] = True


def forward(p, x, lengths, state, out_h, out_c, out_attn, num_threads=None):
    if is_device_array(out_h):   # device in, device out: write in place
        _launch(p, x, lengths, state, out_h, out_c, out_attn)
        return
    d_h, d_c = cuda.to_device(out_h), cuda.to_device(out_c)
    d_attn = None if out_attn is None else cuda.to_device(out_attn)
    _launch(p, cuda.to_device(x), lengths, state, d_h, d_c, d_attn)
    d_h.copy_to_host(out_h)
    d_c.copy_to_host(out_c)
    if out_attn is not None:
        d_attn.copy_to_host(out_attn)


def step(p, x, active, state, out_h, out_c, num_threads=None):
    B = x.shape[0]
    forward(p, x.reshape(B, 1, x.shape[1]), active.astype(np.int64), state,
            out_h.reshape(B, 1, out_h.shape[1]), out_c.reshape(B, 1, out_c.shape[1]), None)
