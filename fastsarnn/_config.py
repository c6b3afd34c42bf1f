"""Every tunable of fastsarnn in one place: tolerances, fastmath flags, block sizes.

Tests and users may patch these module attributes (for example a tiny CUDA block size so
that small inputs span several blocks); kernels read them at call time or at compile time,
as each attribute says.
"""

#: Attention score functions, in the order of their integer codes passed to kernels.
SCORES = ("dot", "scaled_dot", "general", "kq", "additive")
#: Recurrences, in the order of their integer codes.
RECURRENCES = ("c", "hc")
#: Model dtypes.
DTYPES = ("float32", "float64")

#: Max abs error of any backend against the float64 reference (SPEC section 3).
TOLERANCE = {"float64": 1e-10, "float32": 2e-5}

#: History capacity of a fresh state without a window (doubles as needed).
DEFAULT_CAPACITY = 64

#: Order in which ``"auto"`` tries backends.
AUTO_ORDER = ("c", "numba", "numpy")

#: Environment variables read by fastsarnn.
ENV_BACKEND = "FASTSARNN_BACKEND"
#: Set to 1 to force the C backend's generic (non-AVX2) kernels at import time.
ENV_C_GENERIC = "FASTSARNN_C_GENERIC"

#: LLVM fast-math flags of the Numba kernels. Deliberately not ``fastmath=True``: that adds
#: ``nnan``/``ninf`` and lets LLVM assume no NaN or inf, which the softmax must not rely on.
NUMBA_FASTMATH = frozenset({"contract", "reassoc", "arcp", "nsz"})
#: Bytes of history (states plus keys) one attention chunk of the Numba kernel covers: a chunk
#: is scored, exponentiated and summed while its rows stay in L1 (read at every call).
NUMBA_ATTEND_CHUNK_BYTES = 32768

#: Threads per CUDA block (a power of two, >= 2); read at every launch.
CUDA_BLOCK_SIZE = 128
