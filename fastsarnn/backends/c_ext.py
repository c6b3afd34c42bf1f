"""The ``"c"`` backend: a thin wrapper over the cffi extension built from ``csrc/``.

Pointers into the model's weights are prepared once per model, pointers into a state's
buffers once per buffer set, so ``model.step`` costs one C call. cffi releases the GIL
during the call; the kernel checks its own arguments and returns an error code.
"""

import os

import numpy as np

from .. import _config

NAME = "c"

try:
    from .. import _csarnn
except ImportError as exc:  # not built: say why, from the build log when there is one
    _csarnn = None
    _err_file = os.path.join(os.path.dirname(os.path.dirname(__file__)),
                             "_csarnn_build_error.txt")
    if os.path.exists(_err_file):
        with open(_err_file) as f:
            last = [ln for ln in f.read().strip().splitlines() if ln.strip()][-1:]
        _REASON = f"the C extension failed to build at install time: {' '.join(last)}"
    else:
        _REASON = f"the C extension fastsarnn._csarnn is not importable ({exc})"
else:
    ffi, lib = _csarnn.ffi, _csarnn.lib
    if os.environ.get(_config.ENV_C_GENERIC, "") not in ("", "0"):
        lib.sarnn_force_generic(1)


def availability():
    if _csarnn is None:
        return False, _REASON
    return True, None


def describe():
    return (f"kernels: {'avx2+fma' if lib.sarnn_isa() else 'generic x86-64'}, "
            f"openmp threads: {lib.sarnn_max_threads()}, "
            f"sanitizers: {'on' if lib.sarnn_sanitized() else 'off'}")


def isa():
    """``"avx2"`` or ``"generic"``: the kernel variant that runs."""
    return "avx2" if lib.sarnn_isa() else "generic"


def set_split_min(n: int) -> int:
    """Attended positions from which one stream splits a step over threads; returns the old
    value (tests lower it to exercise the split path on small inputs)."""
    return int(lib.sarnn_set_split_min(int(n)))


def sanitized():
    """Whether the extension was built with ASan + UBSan."""
    return bool(lib.sarnn_sanitized())


def _ptr(arr):
    return ffi.from_buffer(arr) if arr.size else ffi.NULL


def _model_struct(p):
    got = p.cache.get(NAME)
    if got is None:
        m = ffi.new("sarnn_model *")
        m.D, m.H, m.Ha = p.D, p.H, p.Ha
        m.score, m.recurrence = p.score_code, p.recurrence_code
        m.dtype = 0 if p.dtype == np.float32 else 1
        m.window = p.window or 0
        keep = []
        for name in ("W_x", "W_c", "b", "W_h", "W_s", "W_k", "W_q", "v"):
            buf = _ptr(getattr(p, name))
            keep.append(buf)
            setattr(m, name, buf)
        got = p.cache[NAME] = (m, keep)
    return got[0]


def _state_struct(st):
    bufs = (st.hist, st.keys, st.h, st.c, st.positions)
    got = st._cache.get(NAME)
    if got is not None:
        old = got[0]
        if (old[0] is bufs[0] and old[1] is bufs[1] and old[2] is bufs[2] and old[3] is bufs[3]
                and old[4] is bufs[4]):
            return got[1]
    s = ffi.new("sarnn_state *")
    s.batch, s.capacity = st.hist.shape[0], st.hist.shape[1]
    keep = [_ptr(st.hist), ffi.NULL if st.keys is None else _ptr(st.keys), _ptr(st.h),
            _ptr(st.c), ffi.from_buffer("int64_t[]", st.positions)]
    s.hist, s.keys, s.h, s.c, s.positions = keep
    st._cache[NAME] = (bufs, s, keep)
    return s


def _check(rc):
    if rc:
        raise ValueError(f"C kernel rejected its arguments (code {rc}): "
                         f"{ffi.string(lib.sarnn_error_message(rc)).decode()}")


def forward(p, x, lengths, state, out_h, out_c, out_attn, num_threads=None):
    B, T = x.shape[0], x.shape[1]
    attn_ptr = ffi.NULL if out_attn is None else ffi.from_buffer(out_attn)
    cols = 0 if out_attn is None else out_attn.shape[2]
    _check(lib.sarnn_forward(_model_struct(p), _state_struct(state), ffi.from_buffer(x), B, T,
                             ffi.from_buffer("int64_t[]", lengths), ffi.from_buffer(out_h),
                             ffi.from_buffer(out_c), attn_ptr, cols, num_threads or 0))


def step(p, x, active, state, out_h, out_c, num_threads=None):
    _check(lib.sarnn_step(_model_struct(p), _state_struct(state), ffi.from_buffer(x),
                          x.shape[0], ffi.from_buffer("uint8_t[]", active.view(np.uint8)),
                          ffi.from_buffer(out_h), ffi.from_buffer(out_c), num_threads or 0))
