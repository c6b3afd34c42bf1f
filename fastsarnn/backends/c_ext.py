"""The ``"c"`` backend: a thin wrapper over the cffi extension built from ``csrc/``.

Pointers into the model's weights are prepared once per model, pointers into a state's
buffers once per buffer set (``prepare_step``), so ``model.step`` costs one C call. cffi releases the GIL
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

#: Kernel variants, in the order of the C enum sarnn_isa_code.
ISAS = ("generic", "avx2", "avx512")
_ISA_ERROR = None


def _isa_code(name):
    if name == "auto":
        return lib.SARNN_ISA_AUTO
    if name not in ISAS:
        raise ValueError(f"unknown C kernel variant {name!r}; expected one of "
                         f"{['auto', *ISAS]}")
    return getattr(lib, "SARNN_ISA_" + name.upper())


def supported_isas():
    """The kernel variants this CPU can run, e.g. ``("generic", "avx2", "avx512")``."""
    return tuple(n for n in ISAS if lib.sarnn_isa_supported(_isa_code(n)))


def set_isa(name):
    """Force the kernel variant ``name`` (``"generic"``, ``"avx2"``, ``"avx512"``) for the
    whole process, or ``"auto"`` for the fastest this CPU runs; returns the previous one.

    Raises ``ValueError`` for an unknown name or a variant this CPU cannot run."""
    code = _isa_code(name)
    old = isa()
    if lib.sarnn_set_isa(code) != 0:
        raise ValueError(f"C kernel variant {name!r} cannot run on this CPU; it supports "
                         f"{list(supported_isas())}")
    return old


def isa():
    """The kernel variant that runs: ``"generic"``, ``"avx2"`` or ``"avx512"``."""
    return ISAS[lib.sarnn_isa()]


def _apply_environment():
    """FASTSARNN_C_ISA (or the older FASTSARNN_C_GENERIC=1) chooses the variant at import;
    a variant this CPU cannot run makes the backend unavailable, saying why."""
    want = os.environ.get(_config.ENV_C_ISA, "").strip().lower()
    if not want and os.environ.get(_config.ENV_C_GENERIC, "") not in ("", "0"):
        want = "generic"
    if want:
        try:
            set_isa(want)
        except ValueError as exc:
            return f"${_config.ENV_C_ISA}={want!r}: {exc}"
    lib.sarnn_set_split_min(_config.C_SPLIT_MIN_POSITIONS)
    lib.sarnn_set_split_guard(_config.C_SPLIT_CHUNK_MIN, _config.C_SPLIT_STALL_NS,
                              _config.C_SPLIT_PROBE_PERIOD)
    return None


if _csarnn is not None:
    _ISA_ERROR = _apply_environment()


def availability():
    if _csarnn is None:
        return False, _REASON
    if _ISA_ERROR is not None:
        return False, _ISA_ERROR
    return True, None


def describe():
    return (f"kernels: {isa()} (this CPU runs {', '.join(supported_isas())}), "
            f"openmp threads: {lib.sarnn_max_threads()}, "
            f"sanitizers: {'on' if lib.sarnn_sanitized() else 'off'}")


def set_split_min(n: int) -> int:
    """Attended positions from which one stream splits a step over threads; returns the old
    value (tests lower it to exercise the split path on small inputs)."""
    return int(lib.sarnn_set_split_min(int(n)))


def set_split_guard(chunk_min=0, stall_ns=0, probe_period=0):
    """Chunk size and guard of the single-stream split (values < 1: unchanged; defaults in
    ``fastsarnn._config``, C_SPLIT_*); restarts this thread's split/serial measurements."""
    lib.sarnn_set_split_guard(int(chunk_min), int(stall_ns), int(probe_period))


_CHOICES = {"measure": "SARNN_SPLIT_MEASURE", "never": "SARNN_SPLIT_NEVER",
            "always": "SARNN_SPLIT_ALWAYS"}
_split_choice = "measure"


def set_split_choice(choice):
    """How one stream on several threads decides to split an eligible step: ``"measure"``
    (the default: the faster of split and serial, as measured by the calling thread),
    ``"always"`` or ``"never"``; returns the previous choice."""
    global _split_choice
    if choice not in _CHOICES:
        raise ValueError(f"unknown split choice {choice!r}; expected one of {list(_CHOICES)}")
    _check(lib.sarnn_set_split_choice(getattr(lib, _CHOICES[choice])))
    old, _split_choice = _split_choice, choice
    return old


def last_call_stats():
    """What this thread's last C call did with a single stream: ``steps``,
    ``steps_split`` (offered to helper threads), ``steps_helped`` (a helper contributed),
    ``chunks_by_helpers``, ``fallback_step`` (step from which the call ran serially because
    the split stopped paying; -1: never)."""
    st = ffi.new("sarnn_call_stats *")
    lib.sarnn_last_call_stats(st)
    return {k: int(getattr(st, k)) for k in ("steps", "steps_split", "steps_helped",
                                             "chunks_by_helpers", "fallback_step")}


def sanitized():
    """Whether the extension was built with ASan + UBSan."""
    return bool(lib.sarnn_sanitized())


def testing():
    """Whether the extension was built with the test hooks (``-DSARNN_TESTING``)."""
    return bool(lib.sarnn_testing())


def _ptr(arr):
    return ffi.from_buffer(arr) if arr.size else ffi.NULL


def _model_struct(p):
    got = p.cache.get(NAME)
    if got is None:
        m = ffi.new("sarnn_model *")
        m.D, m.H, m.Ha = p.D, p.H, p.Ha
        m.score, m.recurrence = p.score_code, p.recurrence_code
        m.dtype = lib.SARNN_FLOAT32 if p.dtype == np.float32 else lib.SARNN_FLOAT64
        m.window = p.window or 0
        keep = []
        for name in ("W_x", "W_c", "b", "W_h", "W_s", "W_k", "W_q", "v"):
            buf = _ptr(getattr(p, name))
            keep.append(buf)
            setattr(m, name, buf)
        got = p.cache[NAME] = (m, keep)
    return got[0]


def _state_struct(st):
    bufs = (st._hist, st._keys, st.h, st.c, st.positions)
    got = st._cache.get(NAME)
    if got is not None:
        old = got[0]
        if (old[0] is bufs[0] and old[1] is bufs[1] and old[2] is bufs[2] and old[3] is bufs[3]
                and old[4] is bufs[4]):
            return got[1]
    s = ffi.new("sarnn_state *")
    s.batch, s.capacity = st._hist.shape[0], st._hist.shape[1]
    keep = [_ptr(st._hist), ffi.NULL if st._keys is None else _ptr(st._keys), _ptr(st.h),
            _ptr(st.c), ffi.from_buffer("int64_t[]", st.positions)]
    s.hist, s.keys, s.h, s.c, s.positions = keep
    st._cache[NAME] = (bufs, s, keep)
    return s


def _check(rc):
    if rc:
        raise ValueError(f"C kernel rejected its arguments (code {rc}): "
                         f"{ffi.string(lib.sarnn_error_message(rc)).decode()}")


def forward(p, x, lengths, state, out_h, out_c, out_attn, num_threads=None,
            compact_attention=False):
    B, T = x.shape[0], x.shape[1]
    attn_ptr = ffi.NULL if out_attn is None else ffi.from_buffer(out_attn)
    cols = 0 if out_attn is None else out_attn.shape[2]
    _check(lib.sarnn_forward(_model_struct(p), _state_struct(state), ffi.from_buffer(x), B, T,
                             ffi.from_buffer("int64_t[]", lengths), ffi.from_buffer(out_h),
                             ffi.from_buffer(out_c), attn_ptr, cols,
                             1 if compact_attention else 0, num_threads or 0))


class _StepCall:
    """sarnn_step prepared for one (model, state buffers) pair: the structs and the pointers
    of the last active flags and output buffers are reused while the same arrays come."""

    __slots__ = ("m", "s", "keep", "act", "act_ptr", "oh", "oh_ptr", "oc", "oc_ptr")

    def __init__(self, p, state):
        self.m = _model_struct(p)
        self.s = _state_struct(state)
        self.keep = state._cache[NAME]      # keeps the state's buffer pointers alive
        self.act = self.oh = self.oc = None

    def __call__(self, x, active, state, out_h, out_c, num_threads):
        if active is not self.act:
            self.act_ptr = ffi.from_buffer("uint8_t[]", active.view(np.uint8))
            self.act = active
        if out_h is not self.oh:
            self.oh_ptr = ffi.from_buffer(out_h)
            self.oh = out_h
        if out_c is not self.oc:
            self.oc_ptr = ffi.from_buffer(out_c)
            self.oc = out_c
        rc = lib.sarnn_step(self.m, self.s, ffi.from_buffer(x), self.s.batch, self.act_ptr,
                            self.oh_ptr, self.oc_ptr, num_threads or 0)
        if rc:
            _check(rc)


def prepare_step(p, state):
    """A callable ``run(x, active, state, out_h, out_c, num_threads)`` for ``state``'s
    current buffers (the model layer asks again when they change); x and the outputs are
    ``(B, .)`` arrays, or 1-D when B = 1."""
    return _StepCall(p, state)


def step(p, x, active, state, out_h, out_c, num_threads=None):
    _check(lib.sarnn_step(_model_struct(p), _state_struct(state), ffi.from_buffer(x),
                          x.shape[0], ffi.from_buffer("uint8_t[]", active.view(np.uint8)),
                          ffi.from_buffer(out_h), ffi.from_buffer(out_c), num_threads or 0))
