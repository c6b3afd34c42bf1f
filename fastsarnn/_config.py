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

#: History capacity of a fresh state (doubles as needed; with a window, up to the window).
DEFAULT_CAPACITY = 64

#: Order in which ``"auto"`` tries backends.
AUTO_ORDER = ("c", "numba", "numpy")

#: Environment variables read by fastsarnn.
ENV_BACKEND = "FASTSARNN_BACKEND"
#: Set to 1 to force the C backend's generic (non-AVX2) kernels at import time (the same as
#: FASTSARNN_C_ISA=generic).
ENV_C_GENERIC = "FASTSARNN_C_GENERIC"
#: C kernel variant at import time: "generic", "avx2", "avx512" or "auto" (the default);
#: a variant the CPU cannot run makes the C backend unavailable, saying why.
ENV_C_ISA = "FASTSARNN_C_ISA"

#: C backend, one stream on several threads: split a step's attended positions over the
#: team from this many positions on, in chunks of at least C_SPLIT_CHUNK_MIN positions.
C_SPLIT_MIN_POSITIONS = 256
C_SPLIT_CHUNK_MIN = 64
#: Guard of that split on a busy machine: the rest of a call runs serially once a wait for a
#: helper thread exceeds C_SPLIT_STALL_NS; and each calling thread measures split and serial
#: steps (time per attended position), runs the faster, and probes the other every
#: C_SPLIT_PROBE_PERIOD steps (or one-token calls).
C_SPLIT_STALL_NS = 50_000
C_SPLIT_PROBE_PERIOD = 256

#: LLVM fast-math flags of the Numba kernels. Deliberately not ``fastmath=True``: that adds
#: ``nnan``/``ninf`` and lets LLVM assume no NaN or inf, which the softmax must not rely on.
NUMBA_FASTMATH = frozenset({"contract", "reassoc", "arcp", "nsz"})
#: Bytes of history (states plus keys) one attention chunk of the Numba kernel covers: a chunk
#: is scored, exponentiated and summed while its rows stay in L1 (read at every call).
NUMBA_ATTEND_CHUNK_BYTES = 32768

#: Threads per CUDA block of the sequence kernel (a power of two in [2, 1024]; 8 warps:
#: the warps split each step's attended positions); read at every launch. The kernel is
#: compiled with this as its launch bound, so registers per thread are capped at
#: 65536 / CUDA_BLOCK_SIZE: 256 allows 255, and ptxas (sm_90) uses 233 for H = 256 in
#: float32 (the split kernel 217) without spilling; 512 would cap them at 128 and spill.
CUDA_BLOCK_SIZE = 256
#: Attended positions a warp of the CUDA kernel scores per round (rows in flight per warp,
#: at most; compile-time constant of the kernel). Read at launch.
CUDA_ROWS_PER_WARP = 8
#: 32-bit registers a lane of the CUDA kernel gives the history rows of a round (it loads
#: the rows once, all in flight together, and keeps them for the scores and the weighted
#: sum): fewer rows per round where CUDA_ROWS_PER_WARP rows would not fit (H = 256 in
#: float32: 4 rows), so that wide and float64 models do not spill. Read at launch.
CUDA_ROW_CACHE_WORDS = 32
#: 32-bit registers a thread of the CUDA sequence kernel gives the weights it has in flight
#: in a matrix-vector product (W_c c, W_h h, W_s h, W_k h, W_q h, a step's W_x x): it
#: issues that many weight loads (float64: half as many) before their multiply-adds, so a
#: product of H terms costs H / loads round trips to the cache, not one per few terms (the
#: compiler alone unrolls by 4: 64 round trips per step at H = 256). Compile-time constant
#: of the kernel; read at launch.
CUDA_MATVEC_WORDS = 16
#: Blocks of the CUDA sequence kernel each SM must be able to hold at once: the second
#: figure of the kernel's launch bound, so registers per thread are capped at
#: min(255, 65536 / (CUDA_MIN_BLOCKS_PER_SM * threads per block)). 1 (the default) lets
#: a block of 256 threads use up to 255, and one block runs per SM; 2 caps them at 128
#: (ptxas, sm_90, float32, bytes of spill stores and loads per thread: the kernel of the
#: scores without keys 32 at H = 128, 512 at H = 256; the keyed one 540 and 928) in
#: exchange for two blocks per SM where there are more sequences than SMs (batch 1024);
#: unmeasured on a GPU. An integer in [1, 8]; compile-time constant of the
#: kernel, read at launch.
CUDA_MIN_BLOCKS_PER_SM = 1
#: Whether a warp of the CUDA sequence kernel loads the history rows of its next round of
#: the attention before it reduces the current round's scores (software pipelining: the
#: loads' round trip to the cache overlaps the reduction, the softmax and the weighted
#: sum, instead of following them), at the cost of a second set of row registers per lane
#: (up to CUDA_ROW_CACHE_WORDS) and of the rows' slots. Only the kernel of the scores
#: without keys (dot, scaled_dot, general) built for one block per SM does: the keyed one
#: would spill at H = 256 (sm_90), and under CUDA_MIN_BLOCKS_PER_SM > 1 registers are
#: short and the other blocks hide the latency. Off, provisionally: on an H200
#: (docs/BENCHMARKS.md, 2026-11-28; NumPy in and out, the prefetching value timed first)
#: M ran 25.3 and 27.1 ms with it against 19.7 and 18.5 ms without it, and S 14.00
#: against 14.01 ms (with CUDA_SPLIT_PRODUCTS on, M the other way round: 21.0 against
#: 28.5 ms). True or False; compile-time constant of the kernel, read at launch.
CUDA_PREFETCH_ROWS = False
#: CUDA, few sequences with long histories: split each step's attended positions into this
#: many parts, one block each, all blocks of a sequence in one cooperative launch (a grid
#: barrier per step). "auto": on a GPU, as many parts as leave every part at least
#: CUDA_SPLIT_MIN_POSITIONS positions at the last step, while all blocks fit on the SMs
#: at once; 1 (one block per sequence) on the simulator. An integer >= 1 forces the count
#: (1: never split; where fewer blocks fit, each takes several parts, and where fewer than
#: two per sequence fit, there is no split). Ignored where CUDA_SEQUENCES_PER_BLOCK > 1
#: (the packed kernel never splits). Read at launch.
CUDA_SPLIT_PARTS = "auto"
CUDA_SPLIT_MIN_POSITIONS = 256
#: The same for ``step`` (one token per launch), where a split costs a whole cooperative
#: launch and grid barrier per token: measured on an H200 (docs/BENCHMARKS.md), the step
#: configuration (1024 positions) ran 103 ms on one block and 116-134 ms split, while one
#: block attended about 25 positions per microsecond; 1024 per part splits a step from
#: 2048 attended positions on (not measured that far).
CUDA_SPLIT_STEP_MIN_POSITIONS = 1024
#: CUDA, a sequence split over several blocks: whether its blocks share out the outputs of
#: h_t's matrix-vector products (each block computes H / blocks of them, with as many
#: more threads on each, and reads the rest back from the history row after a second grid
#: barrier per step) instead of each computing all of h_t. It divides the products'
#: dependent round trips to L2 per step by up to the blocks per sequence (down to one),
#: at a grid barrier's cost. Unmeasured on a GPU. True or False; compile-time constant of
#: the split kernel, read at launch.
CUDA_SPLIT_PRODUCTS = False
#: CUDA, many sequences: 1 (the default) runs each sequence on a block of its own (the
#: kernel above); an integer S in [2, 32] runs S sequences per block instead, one warp each
#: (a warp of min(CUDA_BLOCK_SIZE, 32) lanes, so blocks of that many times S threads):
#: each warp attends over its own sequence's history alone (no merge across warps), and
#: the block's threads share the matrix-vector products, each weight loaded once for the S
#: sequences. For batches of more sequences than SMs (XL: 1024 sequences, 132 SMs), where
#: one block per sequence runs in waves and reads every weight once per sequence and
#: step. Never splits a sequence over blocks. At H = 256 in float32, S <= 8 keeps every
#: array in registers (sm_90, benchmarks/cuda_compile_check.py); S = 16 (128 registers a
#: thread) spills. Unmeasured on a GPU. Read at launch.
CUDA_SEQUENCES_PER_BLOCK = 1
#: CUDA: keep compiled sequence kernels in Numba's on-disk cache (numba-cuda's
#: ``cache=True``: the ``__pycache__`` beside fastsarnn's sources, or NUMBA_CACHE_DIR), so a
#: new process loads a kernel it compiled before (seconds per kernel variant otherwise).
#: An entry is keyed by the kernel's code, its compile-time constants and the GPU's compute
#: capability, and dropped when the source file changes. Off until a GPU run confirms that
#: cached kernels load and launch (benchmarks/cuda_cold_start.py; the simulator has no
#: cache). True or False; read when a process first builds a kernel variant.
CUDA_DISK_CACHE = False
#: CUDA, NumPy arrays in and out of ``forward``: the bytes of each pinned (page-locked) host
#: buffer through which x goes to the device and the outputs come back, in chunks of this
#: size (arrays of one chunk or less are copied by the driver). The DMA of one chunk
#: overlaps the host's copies of other chunks between the user's arrays and the pinned
#: buffers, at most CUDA_STAGING_THREADS of them at once
#: (:mod:`fastsarnn.backends._cuda_staging`). A model keeps threads + 2 such buffers for
#: each of the latest 4 (size, threads) pairs that staged a copy. 0: the driver's own
#: copies from and to the user's (pageable) arrays; on the H200 machine of
#: docs/BENCHMARKS.md (2026-11-28) ``forward`` on NumPy arrays took 394 ms more than on
#: device arrays at XL, for about 1.2 GB moved. Off until a GPU run compares the two (the
#: settings part of benchmarks/gpu_check.sh, on NumPy arrays). 0 or an integer >= 64;
#: read at every call.
CUDA_STAGING_BYTES = 0
#: Host copies of a call's staging in flight at once (threads of a pool the process
#: shares): "auto" (one core fewer than the process may use, at most 8, at least 1) or an
#: integer >= 1; a call's ``num_threads`` overrides it; never more than the cores the
#: process may use. Read at every call.
CUDA_STAGING_THREADS = "auto"
#: Shared memory a block of the sequence kernel may use (bytes; 48 KiB needs no opt-in).
#: Wider models first get smaller blocks, then a global-memory scratch. Read at launch.
CUDA_SHARED_BYTES = 48 * 1024
#: Warp all-reduce of the CUDA kernels: "auto" (shuffles on a GPU, the shared-memory
#: version on the simulator, which has no warp intrinsics), True (on the simulator only
#: once shuffles were given to it, as tests/_cuda_shuffles.py does) or False. Read at launch.
CUDA_WARP_SHUFFLES = "auto"

#: ``fastsarnn bench``: a runner's figures are flagged as noisy when median/min exceeds this.
BENCH_NOISY_SPREAD = 1.5
#: ``fastsarnn bench``: the machine counts as busy when the 1-minute load average per core
#: exceeds this before the suite starts (another process is using the cores), or exceeds
#: ``BENCH_BUSY_LOAD_PER_CORE + 1`` while it runs (more runnable threads than cores).
BENCH_BUSY_LOAD_PER_CORE = 0.5
#: ``fastsarnn bench``: the SGEMM baseline is the best of at least this many warm products
#: and at least ``BENCH_SGEMM_MIN_SECONDS`` of them.
BENCH_SGEMM_MIN_RUNS = 10
BENCH_SGEMM_MIN_SECONDS = 0.3
