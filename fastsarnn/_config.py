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
#: Threading layer requested for Numba's parallel kernels (thread-safe for concurrent calls),
#: unless the user set NUMBA_THREADING_LAYER.
NUMBA_THREADING_LAYER = "omp"

#: Threads per CUDA block of the sequence kernel (a power of two in [2, 1024]; 16 warps:
#: the warps split each step's attended positions); read at every launch.
CUDA_BLOCK_SIZE = 512
#: Attended positions a warp of the CUDA kernel scores per round (rows in flight per warp;
#: compile-time constant of the kernel). Read at launch.
CUDA_ROWS_PER_WARP = 8
#: Shared memory a block of the sequence kernel may use (bytes; 48 KiB needs no opt-in).
#: Wider models first get smaller blocks, then a global-memory scratch. Read at launch.
CUDA_SHARED_BYTES = 48 * 1024
#: Warp all-reduce of the CUDA kernels: "auto" (shuffles on a GPU, the shared-memory
#: version on the simulator, which has no warp intrinsics), True or False. Read at launch.
CUDA_WARP_SHUFFLES = "auto"
