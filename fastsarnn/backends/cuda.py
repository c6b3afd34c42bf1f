"""The ``"cuda"`` backend: a persistent Numba CUDA decode kernel, a block per sequence.

A ``forward`` is two launches: the input projection ``W_x x_t + b`` for every valid step,
in parallel (one thread per output element, written into ``out_h``), then the sequence
kernel, where block ``b`` runs sequence ``b`` through all its steps. A ``step`` is one
launch (the projection done inside it). Per step the block

1. updates the state: ``h_t = tanh(pre_t + W_c c_{t-1} [+ W_h h_{t-1}])`` (in a step,
   ``tanh(b + W_c c_{t-1} [+ W_h h_{t-1}] + W_x x_t)``), the matrix-vector products split
   over the block: an output's terms (the products' ``k`` ranges laid end to end) form
   parts, a thread per output ``j`` and part ``g`` (weights stored transposed, so
   neighbouring threads read neighbouring words; a thread issues ``CUDA_MATVEC_WORDS``
   loads of its part before their multiply-adds, so a part costs one round trip to the
   cache per that many terms); with one part per output (``H`` more than half the block)
   and no ``W_h h``, a thread adds its own part and no barrier separates the products
   from ``h_t``;
2. forms the key and the query (``W_k h_t``, ``W_q h_t``, ``W_s h_t``) the same way;
3. attends in the FlashDecoding pattern: the attended positions form groups of ``G``,
   warp ``w`` owns groups ``w, w + NW, ...`` (a group per round, its ``G`` rows loaded
   together; in the kernel of the scores without keys, during the round before:
   ``CUDA_PREFETCH_ROWS``); its lanes own dimensions (history rows read per warp,
   coalesced), a warp all-reduce gives the scores, and each warp keeps an online softmax
   (running max ``m``, sum ``l``, weighted accumulator of ``H`` values in registers);
4. merges the warps' partials: ``M = max_w m_w``, ``l = sum_w l_w e^(m_w - M)``,
   ``c_t = sum_w acc_w e^(m_w - M) / l``.

``h_{t-1}``, ``c_{t-1}``, the query and the partials live in shared memory (or, when a
model is too wide for it, in a global scratch buffer with the same layout). Arithmetic is
in the model dtype; the running max makes every exponent ``<= 0`` and never forms
``inf - inf`` for finite scores.

Warp all-reduce: one helper (:func:`_make_warp_allsum`), built with shuffles on a GPU and
with a shared-memory version on the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, which has no
warp intrinsics), chosen once by :data:`fastsarnn._config.CUDA_WARP_SHUFFLES`; the rest of
the kernel is the same code in both.

Compiled variants (:func:`_sequence_kernel`): the sizes that fix a lane's share of ``h``
and of the query, the dtype, the flavours above, the launch bound, and the score family:
the scores with a key cache (``kq``, ``additive``) get a kernel of their own, so that the
attention loop of the others (``dot``, ``scaled_dot``, ``general``) holds no key loads and
needs fewer registers.

State on the device: the history and keys stay on the device between calls (the
:class:`~fastsarnn.state.State` owns the protocol: it uploads when the host copy changed and
downloads when the host copy is read); ``h``, ``c`` and ``positions`` are moved into mapped
(pinned, device-addressable) host memory on first use, so the kernel reads and writes the
very arrays the user sees: writes to them between calls are honoured without a copy.

NumPy arrays in and out of ``forward`` go through the model's device workspace: the
driver's copies of pageable memory by default, or, with ``_config.CUDA_STAGING_BYTES``,
in chunks through pinned buffers, the DMA overlapping host copies on several threads
(:mod:`fastsarnn.backends._cuda_staging`).

Host time per launch: numba-cuda turns every argument into kernel parameters at every
launch (microseconds per array), which ``step`` would pay per token. So the weights travel
as one packed buffer (:func:`_weight_layout`), launch configurations are made once
(:func:`_configured`), and a step stream's launches with unchanged arguments reuse
parameters made once (:func:`_run`, :func:`_prepare`; on a GPU only).

Few sequences, long histories (at most half as many sequences as SMs, at least
``2 * CUDA_SPLIT_MIN_POSITIONS`` positions): ``_config.CUDA_SPLIT_PARTS``
splits each step's attended positions into ``P`` parts, one block each, all in one
cooperative launch (the FlashDecoding split). Every block of a sequence computes the same
``h_t`` and query, reduces its part to a partial ``(acc, m, l)`` in global memory, waits at
a grid barrier (one per step), and merges all ``P`` partials in the same order; so every
block holds bitwise the same ``c_t``. With ``_config.CUDA_SPLIT_PRODUCTS`` the blocks of a
sequence instead share out the outputs of ``h_t``'s products and exchange them through the
history row at a second grid barrier per step. On the simulator, which runs cooperative
grids of one block, one block per sequence takes all ``P`` parts: the same partial and
merge code.

Many sequences (``_config.CUDA_SEQUENCES_PER_BLOCK = S > 1``; default 1, the kernel above):
the packed kernel runs ``S`` sequences per block, one warp each (:func:`packed_geometry`).
Its threads compute the outputs of every sequence's products together, each weight loaded
once for the ``S`` sequences (their vectors broadcast from shared memory); warp ``m`` then
attends over sequence ``m``'s positions alone, in rounds of ``G`` with the same scores and
online softmax (``score_group``, ``softmax_round``), so ``c_t = acc / l`` needs no merge.
It never splits a sequence.
"""

import functools
import math
import operator
import os
import threading
import warnings
from importlib import metadata

import numpy as np

from .. import _config, _validate
from . import _cuda_staging

NAME = "cuda"
DEVICE = True
ACCEPTS_DEVICE_ARRAYS = True
WARP = 32


def _import_numba_cuda_array_support():
    """Import numba-cuda's NumPy array support with ``np.row_stack`` present.

    numba-cuda (0.30) registers ``overload(np.row_stack)`` when ``numba.cuda.np.arrayobj``
    is first imported (at the first kernel compilation); NumPy 2.5 removed ``row_stack``
    (it was an alias of ``vstack``), so that import fails with ``AttributeError``. The alias
    is put back for the import only and removed again, so NumPy itself is left as it was.
    """
    added = not hasattr(np, "row_stack")
    if added:
        np.row_stack = np.vstack
    try:
        import numba.cuda.np.arrayobj  # noqa: F401  (registers its overloads)
    except ModuleNotFoundError:   # another layout (Numba's bundled numba.cuda): nothing to do
        pass
    finally:
        if added:
            del np.row_stack


try:
    metadata.version("numba-cuda")
except metadata.PackageNotFoundError:
    _IMPORT_ERROR = "numba-cuda is not installed (pip install 'fastsarnn[cuda]')"
else:
    _IMPORT_ERROR = None

if _IMPORT_ERROR is None:
    import numba
    from numba import cuda

    _import_numba_cuda_array_support()
    SIMULATOR = bool(getattr(numba.config, "ENABLE_CUDASIM", 0)) or \
        os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


# -- the warp all-reduce: shuffles on a GPU, shared memory on the simulator ----------------
def use_shuffles():
    """Whether the kernels reduce across a warp with shuffles (the one place this is chosen).

    ``_config.CUDA_WARP_SHUFFLES``: ``"auto"`` (shuffles on a GPU, the shared-memory version
    on the simulator), ``True`` or ``False``.
    """
    choice = _config.CUDA_WARP_SHUFFLES
    if choice == "auto":
        return not SIMULATOR
    if choice is True and SIMULATOR and not _simulator_has_shuffles():
        raise ValueError("fastsarnn._config.CUDA_WARP_SHUFFLES=True needs a GPU: the CUDA "
                         "simulator has no warp shuffles; use 'auto' or False")
    if choice not in (True, False):
        raise ValueError(f"fastsarnn._config.CUDA_WARP_SHUFFLES must be 'auto', True or "
                         f"False; got {choice!r}")
    return choice


def _simulator_has_shuffles():
    """Whether the simulator's ``cuda`` module has ``shfl_xor_sync`` (numba-cuda's has
    none; the tests give it one, tests/_cuda_shuffles.py, to run the GPU path)."""
    global _FAKE_CUDA_MODULE
    if _FAKE_CUDA_MODULE is None:    # imported once: a step's launch plan asks per token
        from numba.cuda.simulator import kernelapi
        _FAKE_CUDA_MODULE = kernelapi.FakeCUDAModule
    return hasattr(_FAKE_CUDA_MODULE, "shfl_xor_sync")


_FAKE_CUDA_MODULE = None


def _make_warp_allsum(shuffles, G):
    """``warp_allsum(vals, lane, width, buf, o_red, tid)``: replaces each of the ``G``
    values of ``vals`` (a per-thread array) by its sum over the ``width`` lanes of the
    calling warp; every lane gets bitwise the same sums.

    Every thread of the block must call it the same number of times (the shared-memory
    version synchronises the block; the shuffle version needs every lane of the warp).
    The shared-memory version uses ``buf[o_red + g * blockDim + tid]``. A warp of
    ``width < 32`` lanes is threads ``tid - lane .. tid - lane + width - 1``, aligned to
    ``width`` within a hardware warp (the shuffles' mask names those lanes).
    """
    if shuffles:
        @cuda.jit(device=True)
        def warp_allsum(vals, lane, width, buf, o_red, tid):
            mask = (0xFFFFFFFF if width == WARP
                    else ((1 << width) - 1) << ((tid - lane) % WARP))
            for g in range(G):
                val = vals[g]
                off = width // 2
                while off > 0:   # butterfly: a + b == b + a, so every lane ends equal
                    val += cuda.shfl_xor_sync(mask, val, off)
                    off //= 2
                vals[g] = val
    else:
        @cuda.jit(device=True)
        def warp_allsum(vals, lane, width, buf, o_red, tid):
            nt = cuda.blockDim.x
            for g in range(G):
                buf[o_red + g * nt + tid] = vals[g]
            cuda.syncthreads()
            for g in range(G):
                base = o_red + g * nt + tid - lane
                s = buf[base]
                for k in range(1, width):   # same order on every lane
                    s += buf[base + k]
                vals[g] = s
            cuda.syncthreads()
    return warp_allsum


def rows_per_warp():
    """G, the attended positions a warp scores per round (``_config.CUDA_ROWS_PER_WARP``)."""
    G = _config.CUDA_ROWS_PER_WARP
    if not isinstance(G, int) or not 1 <= G <= 32:
        raise ValueError(f"fastsarnn._config.CUDA_ROWS_PER_WARP must be an integer in "
                         f"[1, 32]; got {G!r}")
    return G


def rows_in_flight(G, HPL, dtype):
    """The rows a warp of the sequence kernel holds per round: ``G`` (at most), fewer where
    a lane's share of them, ``rows * HPL`` elements, would exceed
    ``_config.CUDA_ROW_CACHE_WORDS`` 32-bit registers (at least one row)."""
    words = np.dtype(dtype).itemsize // 4
    return max(1, min(int(G), int(_config.CUDA_ROW_CACHE_WORDS) // (int(HPL) * words)))


def weights_in_flight(dtype):
    """The weight loads a thread of the sequence kernel issues together in a
    matrix-vector product: ``_config.CUDA_MATVEC_WORDS`` 32-bit registers' worth (at
    least one)."""
    words = _config.CUDA_MATVEC_WORDS
    if type(words) is not int or not 1 <= words <= 128:
        raise ValueError(f"fastsarnn._config.CUDA_MATVEC_WORDS must be an integer in "
                         f"[1, 128]; got {words!r}")
    return max(1, words // (np.dtype(dtype).itemsize // 4))


def blocks_per_sm():
    """``_config.CUDA_MIN_BLOCKS_PER_SM``, checked: the blocks of the sequence kernel an SM
    must hold at once (its launch bound's second figure)."""
    mb = _config.CUDA_MIN_BLOCKS_PER_SM
    if type(mb) is not int or not 1 <= mb <= 8:
        raise ValueError(f"fastsarnn._config.CUDA_MIN_BLOCKS_PER_SM must be an integer in "
                         f"[1, 8]; got {mb!r}")
    return mb


def sequences_per_block():
    """``_config.CUDA_SEQUENCES_PER_BLOCK``, checked: 1 (a block per sequence) or the
    sequences a block of the packed kernel runs, one warp each."""
    sb = _config.CUDA_SEQUENCES_PER_BLOCK
    if type(sb) is not int or not 1 <= sb <= 32:
        raise ValueError(f"fastsarnn._config.CUDA_SEQUENCES_PER_BLOCK must be an integer in "
                         f"[1, 32]; got {sb!r}")
    return sb


def _flag(name):
    """``_config.<name>``, checked to be True or False (not merely truthy)."""
    choice = getattr(_config, name)
    if choice is not True and choice is not False:
        raise ValueError(f"fastsarnn._config.{name} must be True or False; got {choice!r}")
    return choice


def prefetch_rows():
    """``_config.CUDA_PREFETCH_ROWS``, checked: whether a warp loads its next round's
    history rows before it reduces the current round."""
    return _flag("CUDA_PREFETCH_ROWS")


def split_products():
    """``_config.CUDA_SPLIT_PRODUCTS``, checked: whether the blocks of a split sequence
    share out the outputs of ``h_t``'s products (a second grid barrier per step)."""
    return _flag("CUDA_SPLIT_PRODUCTS")


def disk_cache():
    """``_config.CUDA_DISK_CACHE``, checked: whether compiled sequence kernels go to
    Numba's on-disk cache."""
    return _flag("CUDA_DISK_CACHE")


def block_size():
    """``_config.CUDA_BLOCK_SIZE``, checked: a power of two in [2, 1024]."""
    nt = _config.CUDA_BLOCK_SIZE
    if not isinstance(nt, int) or nt < 2 or nt > 1024 or nt & (nt - 1):
        raise ValueError(f"fastsarnn._config.CUDA_BLOCK_SIZE must be a power of two in "
                         f"[2, 1024]; got {nt!r}")
    return nt


def block_geometry(H, Ha, D, dtype, shuffles, G):
    """(threads per block, scratch elements, scratch in global memory?) for a model.

    Threads: ``_config.CUDA_BLOCK_SIZE``, halved (not below a warp) while the shared
    scratch exceeds ``_config.CUDA_SHARED_BYTES``; if it still does, the scratch goes to a
    global buffer of the same layout.
    """
    nt = block_size()
    itemsize = np.dtype(dtype).itemsize
    limit = int(_config.CUDA_SHARED_BYTES)
    while True:
        n = scratch_elements(H, Ha, D, nt, shuffles, G)
        if n * itemsize <= limit or nt <= WARP:
            break
        nt //= 2
    return nt, n, n * itemsize > limit


def packed_geometry(H, Ha, D, dtype, shuffles, G, SB):
    """(threads per block, scratch elements, scratch in global memory?) of the packed
    kernel, ``SB`` sequences per block: a warp of ``min(CUDA_BLOCK_SIZE, 32)`` lanes per
    sequence; its scratch in shared memory unless, with the ``2 * SB`` lengths and
    positions beside it, it exceeds ``_config.CUDA_SHARED_BYTES``."""
    nt = min(block_size(), WARP) * SB      # at most 32 * 32 = 1024
    n = packed_scratch_elements(H, Ha, D, nt, shuffles, G, SB)
    return nt, n, n * np.dtype(dtype).itemsize + 16 * SB > int(_config.CUDA_SHARED_BYTES)


def packed_scratch_elements(H, Ha, D, nt, shuffles, G, SB):
    """Scratch layout of a block of the packed kernel (the kernel computes the same
    offsets): per sequence ``h`` (H), ``c`` (H), ``q`` (max(H, Ha)), ``x_t`` (D), the sums
    of ``h_t`` (H); then, without shuffles, the warp-reduce slots (G*nt)."""
    return SB * (3 * H + max(H, Ha) + D) + (0 if shuffles else G * nt)


def scratch_elements(H, Ha, D, nt, shuffles, G):
    """Scratch layout of one block (the kernel computes the same offsets):
    h (H), c (H), q (max(H, Ha)), x_t (D), per-warp accumulators (NW*H), m (NW), l (NW),
    matrix-vector partials (2*max(nt, H, Ha)), and without shuffles the warp-reduce slots
    (G*nt)."""
    nw = nt // min(nt, WARP)
    return (2 * H + max(H, Ha) + D + nw * H + 2 * nw + 2 * max(nt, H, Ha)
            + (0 if shuffles else G * nt))


def _weight_layout(D, H, Ha):
    """Offsets of ``W_x^T`` (D x H), ``W_c^T``, ``W_h^T``, ``W_s^T`` (H x H each), ``W_k^T``,
    ``W_q^T`` (H x Ha each), ``b`` (H) and ``v`` (Ha) in the packed weight buffer, which
    holds ``o_v + Ha`` elements; a weight the model lacks keeps its (zero) place. One
    buffer instead of eight arrays: each array argument of a launch costs the host
    microseconds in numba-cuda's argument marshalling, paid per token by ``step``."""
    o_wx = 0
    o_wc = o_wx + D * H
    o_wh = o_wc + H * H
    o_ws = o_wh + H * H
    o_wk = o_ws + H * H
    o_wq = o_wk + H * Ha
    o_b = o_wq + H * Ha
    o_v = o_b + H
    return o_wx, o_wc, o_wh, o_ws, o_wk, o_wq, o_b, o_v


if _IMPORT_ERROR is None:
    weight_layout = cuda.jit(device=True)(_weight_layout)


def sequence_signature(dtype_name):
    """Numba types of the sequence kernel's arguments, in order (what a launch passes: the
    packed weights and their sizes, codes and flags, then the arrays; C-contiguous)."""
    from numba import types as t
    f = t.float32 if dtype_name == "float32" else t.float64
    A1, A2, A3, A4 = (t.Array(f, n, "C") for n in (1, 2, 3, 4))
    I1, i8, flag = t.Array(t.int64, 1, "C"), t.int64, t.boolean
    return (A1, i8, i8, i8,                     # wts, D, H, Ha
            i8, i8, i8, flag,                   # score, recurrence, window, inline_proj
            A3, I1, A3, A3,                     # x, lengths, hist, keys
            A2, A2, I1,                         # hs, cs, positions
            A3, A3, A3, flag, flag,             # out_h, out_c, attn, want_attn, compact
            A4, i8, A2)                         # parts, P, scratch


_KERNELS = {}
_KERNELS_BY_ARGS = {}      # the same kernels by _sequence_kernel's arguments
_KERNEL_LOCK = threading.Lock()
#: dtype names by type code (``np.dtype.name`` takes microseconds, paid per token by ``step``)
_DTYPE_NAMES = {"f": "float32", "d": "float64"}


def _sequence_kernel(dtype, shuffles, global_scratch, G, split, H, Ha, nt, MV, MB=1,
                     keyed=False, prefetch=False, split_products=False, packed=1):
    """The sequence kernel for a dtype, warp-reduce flavour, scratch placement, G (capped
    by :func:`rows_in_flight`), whether it splits a sequence's positions over several
    blocks (a cooperative kernel), the block
    size ``nt`` (its launch bound: the compiler keeps registers within what ``nt`` threads
    may use) and a lane's share of ``h`` and of the query, ``ceil(H / W)`` and
    ``ceil(max(H, Ha) / W)`` with ``W = min(nt, 32)``: sizes known when the kernel is
    compiled, so that those per-lane arrays live in registers (models whose sizes give the
    same shares share a kernel), ``MV``, the weight loads in flight per thread
    (:func:`weights_in_flight`), ``MB``, the blocks an SM must hold at once
    (:func:`blocks_per_sm`), and ``keyed``: the kernel of the scores with a key cache
    (``kq``, ``additive``), or of those without (``dot``, ``scaled_dot``, ``general``),
    whose attention loop then has no key loads and needs fewer registers, and
    ``prefetch``: whether a warp loads its next round's rows during the current round
    (:func:`prefetch_rows`), and ``split_products``: whether the blocks of a split
    sequence each compute a slice of ``h_t`` (:func:`split_products`; only with
    ``split``), and ``packed``: 1, or the sequences a block of the packed kernel runs, one
    warp of ``nt // packed`` lanes each (:func:`sequences_per_block`; not with ``split``
    nor ``prefetch``); whether it goes to Numba's on-disk cache is read from
    ``_config.CUDA_DISK_CACHE`` (:func:`disk_cache`) when it is built."""
    # by the arguments as given (a launch's look-up, paid per token by step): equal
    # arguments derive the same key below
    args = (dtype, shuffles, global_scratch, G, split, H, Ha, nt, MV, MB, keyed, prefetch,
            split_products, packed, _config.CUDA_ROW_CACHE_WORDS, _config.CUDA_DISK_CACHE)
    kern = _KERNELS_BY_ARGS.get(args)
    if kern is not None:
        return kern
    nt = int(nt)
    packed = int(packed)
    if packed > 1 and (split or prefetch or nt % packed):
        raise ValueError(f"the packed kernel ({packed} sequences per block of {nt} threads) "
                         f"takes a whole warp per sequence, and neither splits sequences "
                         f"nor loads rows a round ahead; got split={split!r}, "
                         f"prefetch={prefetch!r}")
    W = nt // packed if packed > 1 else min(nt, WARP)
    HPL = -(-int(H) // W)
    key = (_DTYPE_NAMES[np.dtype(dtype).char], shuffles, global_scratch,
           rows_in_flight(G, HPL, dtype),
           bool(split), nt, HPL, -(-max(int(H), int(Ha)) // W), int(MV), int(MB),
           bool(keyed), bool(prefetch), bool(split_products) and bool(split),
           disk_cache(), packed)
    with _KERNEL_LOCK:
        kern = _KERNELS.get(key)
        if kern is None:
            kern = _KERNELS[key] = _build_sequence_kernel(*key)
        if len(_KERNELS_BY_ARGS) >= 1024:     # argument spellings of the same kernels
            _KERNELS_BY_ARGS.clear()
        _KERNELS_BY_ARGS[args] = kern
    return kern


def _build_sequence_kernel(dtype_name, shuffles, global_scratch, G, split, nt, HPL, QPL,
                           MV=None, MB=1, keyed=False, prefetch=False, split_products=False,
                           cache=False, packed=1):
    tp = numba.float32 if dtype_name == "float32" else numba.float64
    MV = weights_in_flight(dtype_name) if MV is None else int(MV)
    warp_allsum = _make_warp_allsum(shuffles, G)
    # compile-time constants: the branches of the other flavour fold away, loops over a
    # lane's dimensions have a fixed count
    SPLIT = bool(split)
    KEYED = bool(keyed)     # scores with keys (kq, additive): only such models launch it
    PREFETCH = bool(prefetch)   # the next round's rows loaded during this round's reduction
    # SPLIT only: each block of a sequence computes its own slice of h_t's outputs, and
    # all read h_t back from the history row after a grid barrier
    SPLIT_PRODUCTS = bool(split_products) and SPLIT
    # the packed kernel: SB sequences per block, one warp of nt // SB lanes each
    SB = int(packed)
    PACKED = SB > 1
    W_C = int(nt) // SB if PACKED else min(int(nt), WARP)
    # the packed kernel's block lengths and positions (a constant for the compiler: an
    # expression would be typed as a run-time integer)
    META = 2 * SB
    # the launch bound (not on the simulator, whose jit has no such option): without it the
    # compiler may use more registers per thread than a block of nt threads can have
    # (65536 per block), and the launch fails; with MB > 1 blocks per SM, a tighter cap
    bound = int(nt) if int(MB) == 1 else (int(nt), int(MB))
    kernel_options = {} if SIMULATOR else {"launch_bounds": bound}
    if cache and not SIMULATOR:     # numba-cuda's on-disk cache (the simulator has none)
        kernel_options["cache"] = True
    # The launch bound's figures, read by the kernel below only so that they are among the
    # values of its closure: numba-cuda's on-disk cache keys an entry by the kernel's code,
    # its closure's values and the signature, not by its options, so kernels built for two
    # bounds (block sizes, blocks per SM) with equal closures would share an entry.
    LAUNCH_BOUND = (int(nt), int(MB))
    HPL = int(HPL)      # a lane's dimensions of h (lane + k*W, k < HPL): HPL*W >= H
    QPL = int(QPL)      # ... of the query (H or Ha): QPL*W >= max(H, Ha)
    ROWS = G * HPL      # a lane's share of the G history rows a warp holds per round
    # indices of the hot loads are cast to unsigned: they are never negative, and a signed
    # index costs every load a negative-index wraparound in 64-bit arithmetic
    U = numba.uint64

    if SPLIT:   # only the split kernel may name the grid: that makes a launch cooperative
        @cuda.jit(device=True)
        def grid_sync():
            cuda.cg.this_grid().sync()
    else:
        @cuda.jit(device=True)
        def grid_sync():
            pass

    @cuda.jit(device=True)
    def column_dot(s, wts, o_w, ld, j, vec, o_vec, k0, k1):
        """``s + sum_{k0 <= k < k1} wts[o_w + k*ld + j] * vec[o_vec + k]``, added in the
        order of ``k``. The weights come ``MV`` at a time, their loads all issued before
        their multiply-adds: one round trip to the cache per ``MV`` terms. ``wts`` holds
        matrices transposed, so threads of neighbouring ``j`` read neighbouring words.
        Indices are cast to unsigned (they are never negative), so that no
        negative-index wraparound is computed per load."""
        zero = tp(0.0)
        wv = cuda.local.array(MV, tp)
        cv = cuda.local.array(MV, tp)
        k = k0
        while k + MV <= k1:          # whole rounds: MV consecutive k, no clamping
            base = o_w + k * ld + j
            for u in range(MV):
                wv[u] = wts[U(base + u * ld)]
                cv[u] = vec[U(o_vec + k + u)]
            for u in range(MV):
                s += wv[u] * cv[u]
            k += MV
        if k < k1:                   # the last k1 - k < MV terms: indices clamped to k1 - 1
            for u in range(MV):
                kk = k + u
                if kk > k1 - 1:
                    kk = k1 - 1
                wv[u] = wts[U(o_w + kk * ld + j)]
                cv[u] = vec[U(o_vec + kk)]
            for u in range(MV):     # a select, not a branch: no load sinks into one
                w = wv[u] if k + u < k1 else zero
                s += w * cv[u]
        return s

    @cuda.jit(device=True)
    def column_dots(s, wts, o_w, ld, j, vec, o_vec, stride, k0, k1):
        """``s[m] += sum_{k0 <= k < k1} wts[o_w + k*ld + j] * vec[o_vec + m*stride + k]``
        for the ``SB`` sequences ``m`` of a packed block, added in the order of ``k``: each
        weight is loaded once for all ``SB`` (``MV`` loads in flight, as
        :func:`column_dot`), the vectors' elements are the same for every thread (a
        broadcast from shared memory)."""
        zero = tp(0.0)
        wv = cuda.local.array(MV, tp)
        k = k0
        while k + MV <= k1:          # whole rounds: MV consecutive k, no clamping
            base = o_w + k * ld + j
            for u in range(MV):
                wv[u] = wts[U(base + u * ld)]
            for u in range(MV):
                for m in range(SB):
                    s[m] += wv[u] * vec[U(o_vec + m * stride + k + u)]
            k += MV
        if k < k1:                   # the last k1 - k < MV terms: indices clamped to k1 - 1
            for u in range(MV):
                kk = k + u
                if kk > k1 - 1:
                    kk = k1 - 1
                wv[u] = wts[U(o_w + kk * ld + j)]
            for u in range(MV):     # a select, not a branch: no load sinks into one
                kk = k + u
                w = wv[u] if kk < k1 else zero
                if kk > k1 - 1:
                    kk = k1 - 1
                for m in range(SB):
                    s[m] += w * vec[U(o_vec + m * stride + kk)]

    @cuda.jit(device=True)
    def score_group(e_grp, keys, b, slots, rows, q_r, v_r, lane, kdim, additive):
        """``e_grp[g]``: this lane's share of the score of the round's position ``g``, over
        its dimensions ``a = lane + k*W``: ``q[a] * row[a]`` (dot, scaled_dot, general: the
        row from ``rows``), ``q[a] * key[a]`` (kq), ``v[a] * tanh(key[a] + q[a])``
        (additive; keys read from the key cache). ``q_r`` (and ``v_r``) are 0 past
        ``kdim``, so the clamped terms add 0."""
        W = W_C
        for g in range(G):
            part = tp(0.0)
            if additive:
                krow = keys[b, U(slots[g])]
                for k in range(QPL):
                    a = lane + k * W
                    if a > kdim - 1:
                        a = kdim - 1
                    part += v_r[k] * math.tanh(krow[U(a)] + q_r[k])
            elif KEYED:
                krow = keys[b, U(slots[g])]
                for k in range(QPL):
                    a = lane + k * W
                    if a > kdim - 1:
                        a = kdim - 1
                    part += krow[U(a)] * q_r[k]
            else:           # kdim = H: the query's dims past H are 0
                for k in range(HPL):
                    part += rows[g * HPL + k] * q_r[k]
            e_grp[g] = part

    @cuda.jit(device=True)
    def softmax_round(e_grp, cnt, m, l, acc_r, rows, attn, b, r, i0, col0, want_attn, lane):
        """One round of a warp's online softmax, its ``cnt <= G`` positions' scores in
        ``e_grp`` (every lane the same): lane 0 stores the raw scores (columns ``col0 +
        i0 + g``; normalised once the step's ``M`` and ``l`` are known), then ``M' = max(m,
        scores)``, ``l' = l e^(m - M') + sum_g e^(s_g - M')``, ``acc' = acc e^(m - M') +
        sum_g e^(s_g - M') row_g``; returns ``(M', l')``. Every exponent is ``<= 0``
        (``e^-inf = 0`` for the first round). Loops over all G (a constant count, unrolled:
        ``e_grp`` and ``rows`` stay in registers), positions past ``cnt`` masked."""
        zero = tp(0.0)
        if want_attn and lane == 0:
            for g in range(G):
                if g < cnt:
                    attn[b, r, col0 + i0 + g] = e_grp[g]
        m_new = m
        for g in range(G):
            if g < cnt and e_grp[g] > m_new:
                m_new = e_grp[g]
        scale = math.exp(m - m_new)
        l = l * scale
        for g in range(G):
            e_grp[g] = math.exp(e_grp[g] - m_new) if g < cnt else zero
            l += e_grp[g]
        for k in range(HPL):     # rows past cnt have weight 0
            acc = acc_r[k] * scale
            for g in range(G):
                acc += e_grp[g] * rows[g * HPL + k]
            acc_r[k] = acc
        return m_new, l

    @cuda.jit(device=True)
    def load_group(hist, b, i0, hi, first_slot, span, H, lane, slots, rows):
        """The slots of attended positions ``i0 .. i0 + G - 1`` (``i0 < hi``) and this
        lane's dimensions of their history rows: ``rows[g*HPL + k] = hist[b, slots[g],
        lane + k*W]``. Positions past ``hi - 1`` repeat row ``hi - 1`` (their weights are
        0), so every load is valid and none waits on a branch: the ``G * HPL`` loads of a
        lane are in flight together. The slot of position ``i`` is ``first_slot + i``,
        less ``span`` once it reaches ``span``. Only the last ``k`` can pass ``H - 1``
        (``(HPL - 1) * W < H <= HPL * W``): clamped to it (those lanes' sums are never
        stored)."""
        W = W_C
        s0 = first_slot + i0
        if s0 >= span:
            s0 -= span
        if i0 + G <= hi and s0 + G <= span:   # the common case: G slots in a row
            for g in range(G):
                slots[g] = s0 + g
        else:
            for g in range(G):
                i = i0 + g
                if i > hi - 1:
                    i = hi - 1
                sl = first_slot + i
                if sl >= span:
                    sl -= span
                slots[g] = sl
        for g in range(G):
            row = hist[b, U(slots[g])]      # read through the row's view
            for k in range(HPL):
                d = lane + k * W
                if k == HPL - 1 and d > H - 1:
                    d = H - 1
                rows[g * HPL + k] = row[U(d)]

    @cuda.jit(device=True)
    def run_sequence(b, bx, nbx, wts, D, H, Ha, score,
                     recurrence, window, inline_proj, x, lengths, hist, keys, hs, cs,
                     positions, out_h, out_c, attn, want_attn, compact, parts, P, buf):
        """Sequence ``b`` for ``lengths[b]`` steps (module docstring); this block is part
        ``bx`` of the ``nbx`` blocks of the sequence (1 unless SPLIT).

        Invariant at the top of step r: ``buf[o_h:o_h+H]``, ``buf[o_c:o_c+H]`` hold
        ``h_{t-1}``, ``c_{t-1}``; history (and key) slots of every position before ``p``
        that is still attended are written.

        SPLIT: the step's attended positions form ``P`` equal parts; this block takes
        parts ``bx, bx + nbx, ...``, reduces each to a partial ``(acc, m, l)`` in
        ``parts[r % 2, b, q]``, and after the grid barrier every block of the sequence
        merges all ``P`` partials in the same order, so all hold bitwise the same ``c_t``
        (and compute the same ``h_{t+1}``). Each block writes the history/key row of ``p``
        itself (identical values) before it attends; block 0 alone writes the outputs.
        Partials alternate between two buffers, so the next step's writes never meet a
        block still merging this step's; one barrier per step suffices.

        SPLIT_PRODUCTS: block ``bx`` computes only outputs ``bx * HB .. (bx + 1) * HB - 1``
        of ``h_t`` (``HB = ceil(H / nbx)``, each with ``NT // HB`` parts, 1 where
        ``HB >= NT``) and writes them to the history row of ``p``; after a second grid
        barrier every block reads the whole row back into ``buf[o_h:o_h+H]``, so all
        again hold the same ``h_t``.
        """
        tid = cuda.threadIdx.x
        NT = cuda.blockDim.x
        W = W_C                 # min(NT, 32): launched with the block size it was built for
        lane = tid % W
        warp = tid // W
        NW = NT // W
        o_wx, o_wc, o_wh, o_ws, o_wk, o_wq, o_b, o_v = weight_layout(D, H, Ha)
        keyed = KEYED                       # score >= 3
        additive = KEYED and score == 4
        kdim = Ha if keyed else H
        PW = NT
        if H > PW:
            PW = H
        if Ha > PW:
            PW = Ha
        o_h = 0
        o_c = H
        o_q = 2 * H
        o_x = o_q + (Ha if Ha > H else H)
        o_acc = o_x + D
        o_m = o_acc + NW * H
        o_l = o_m + NW
        o_part = o_l + NW
        o_red = o_part + 2 * PW
        zero = tp(0.0)
        neg_inf = tp(-math.inf)
        e_grp = cuda.local.array(G, tp)
        slots = cuda.local.array(G, numba.int64)
        rows = cuda.local.array(ROWS, tp)      # the group's history rows, this lane's dims
        slots_n = cuda.local.array(G if PREFETCH else 1, numba.int64)   # the next group's
        rows_n = cuda.local.array(ROWS if PREFETCH else 1, tp)
        acc_r = cuda.local.array(HPL, tp)      # this lane's dims lane + k*W of the warp's acc
        q_r = cuda.local.array(QPL, tp)        # ... of the query
        v_r = cuda.local.array(QPL, tp)        # ... of v (additive score), 0 past Ha
        inv_sqrt_h = tp(1.0 / math.sqrt(H))
        writer = bx == 0              # the block that writes outputs and the final state
        # The state (and a step's first x_t) in mapped host memory: a thread's first
        # element of h, c and x_t is loaded into a register (indices clamped, so the loads
        # need no branch) before any is stored, as a store waits for its load and a warp
        # issues in order: the three cross the bus together, one round trip per launch.
        L = lengths[b]
        pos0 = positions[b]
        j0 = U(tid if tid < H else H - 1)
        h0 = hs[b, j0]
        c0 = cs[b, j0]
        has_x = inline_proj and x.shape[1] > 0   # later steps' x_t: in the time loop
        x0 = zero
        if has_x:
            x0 = x[b, 0, U(tid if tid < D else D - 1)]
        for k in range(QPL):          # v is the same at every step: loaded once
            a = lane + k * W
            v_r[k] = wts[o_v + a] if (additive and a < kdim) else zero
        if tid < H:
            buf[o_h + tid] = h0
            buf[o_c + tid] = c0
        if has_x and tid < D:
            buf[o_x + tid] = x0
        for j in range(tid + NT, H, NT):      # models wider than the block
            buf[o_h + j] = hs[b, j]
            buf[o_c + j] = cs[b, j]
        if has_x:
            for k in range(tid + NT, D, NT):
                buf[o_x + k] = x[b, 0, k]
        cuda.syncthreads()
        # the outputs j_lo <= j < j_hi of h_t this block computes: HB of them, all H but
        # in a split kernel that splits the products (then j_lo may pass H - 1: none)
        if SPLIT_PRODUCTS:
            HB = (H + nbx - 1) // nbx
            j_lo = bx * HB
        else:
            HB = H
            j_lo = 0
        j_hi = min(H, j_lo + HB)
        # (1)'s terms of an output: the products' k ranges end to end, W_c c over [0, H),
        # then W_h h over [H, 2H) (recurrence hc), then W_x x_t over the next D
        # (projection inline): KS parts of ``chunk`` terms each
        KS = NT // HB if HB < NT else 1          # parts of the k range per output
        o_kh = H                                 # where W_h's terms begin
        o_kx = 2 * H if recurrence == 1 else H   # ... W_x's
        KT = o_kx + D if inline_proj else o_kx
        chunk = (KT + KS - 1) // KS
        KQ = NT // kdim if kdim < NT else 1      # parts of the k range, key/query
        chunkq = (H + KQ - 1) // KQ
        # SPLIT: every block runs T steps (a barrier per step), idle past its length
        nsteps = x.shape[1] if SPLIT else L
        for r in range(nsteps):
            p = pos0 + r
            slot = p % window if window > 0 else p
            first = p - window + 1 if (window > 0 and p - window + 1 > 0) else 0
            n = p - first + 1
            # the slot of attended position first + i: first_slot + i, less span once it
            # reaches span (i < n <= window), so the attention loop needs no division
            span = window if window > 0 else p + 1
            first_slot = first % window if window > 0 else first
            if r < L:
                if inline_proj:
                    if r > 0:     # step 0's x_t came with h and c
                        for k in range(tid, D, NT):
                            buf[o_x + k] = x[b, r, k]
                        cuda.syncthreads()      # (1) reads all of x_t
                    # b: loaded now, in flight during (1)
                    pre = wts[o_b + j_lo + tid] if j_lo + tid < j_hi else zero
                else:     # W_x x_t + b, projected: loaded now, in flight during (1)
                    pre = out_h[b, r, j_lo + tid] if j_lo + tid < j_hi else zero
                # (1) partial g of output j: the terms of h_t's products in
                # [g * chunk, (g + 1) * chunk) of the k ranges laid end to end
                for idx in range(tid, KS * HB, NT):
                    g = idx // HB
                    j = j_lo + idx - g * HB
                    if j < j_hi:
                        k0 = g * chunk
                        k1 = min(KT, k0 + chunk)
                        s = zero
                        if k0 < o_kh:
                            s = column_dot(s, wts, o_wc, H, j, buf, o_c, k0, min(k1, o_kh))
                        if recurrence == 1 and k0 < o_kx and k1 > o_kh:
                            s = column_dot(s, wts, o_wh, H, j, buf, o_h,
                                           max(k0, o_kh) - o_kh, min(k1, o_kx) - o_kh)
                        if inline_proj and k1 > o_kx:
                            s = column_dot(s, wts, o_wx, H, j, buf, o_x,
                                           max(k0, o_kx) - o_kx, k1 - o_kx)
                        buf[o_part + idx] = s
                # one part per output: a thread sums only the partial it stored, and only
                # W_h h reads h, which the sums below overwrite
                if KS > 1 or recurrence == 1:
                    cuda.syncthreads()
                for j in range(j_lo + tid, j_hi, NT):
                    jj = j - j_lo
                    if inline_proj:
                        s = pre if jj == tid else wts[o_b + j]
                    else:
                        s = pre if jj == tid else out_h[b, r, j]
                    for g in range(KS):
                        s += buf[o_part + g * HB + jj]
                    hv = math.tanh(s)
                    if not SPLIT_PRODUCTS:  # else: read back from the history row below
                        buf[o_h + j] = hv
                    if not SPLIT:     # SPLIT: after the barrier (others read out_h[b, r])
                        out_h[b, r, j] = hv
                    hist[b, slot, j] = hv
                cuda.syncthreads()
            if SPLIT_PRODUCTS:
                grid_sync()     # every block's slice of h_t is in the history row
            if r < L:
                if SPLIT_PRODUCTS:
                    for j in range(tid, H, NT):
                        buf[o_h + j] = hist[b, slot, j]
                    cuda.syncthreads()
                # (2) query (and key, appended to the key cache)
                if score >= 2:
                    for idx in range(tid, KQ * kdim, NT):
                        g = idx // kdim
                        a = idx - g * kdim
                        k1 = min(H, (g + 1) * chunkq)
                        sk = zero
                        if keyed:
                            sk = column_dot(zero, wts, o_wk, Ha, a, buf, o_h, g * chunkq, k1)
                            sq = column_dot(zero, wts, o_wq, Ha, a, buf, o_h, g * chunkq, k1)
                        else:
                            sq = column_dot(zero, wts, o_ws, H, a, buf, o_h, g * chunkq, k1)
                        buf[o_part + idx] = sq
                        buf[o_part + PW + idx] = sk
                    cuda.syncthreads()
                    for a in range(tid, kdim, NT):
                        sq = zero
                        sk = zero
                        for g in range(KQ):
                            sq += buf[o_part + g * kdim + a]
                            sk += buf[o_part + PW + g * kdim + a]
                        buf[o_q + a] = sq
                        if keyed:
                            keys[b, slot, a] = sk
                    cuda.syncthreads()
                    for k in range(QPL):
                        a = lane + k * W
                        q_r[k] = buf[o_q + a] if a < kdim else zero
                else:   # the query is h_t (scaled): read from h, no barrier of its own
                    q_scale = inv_sqrt_h if score == 1 else tp(1.0)
                    for k in range(QPL):
                        a = lane + k * W
                        q_r[k] = buf[o_h + a] * q_scale if a < H else zero
                # (3) attention over positions [lo, hi) of each part this block owns (one
                # part, all n positions, unless SPLIT): warp w takes groups of G positions,
                # group it*NW + w holding lo + (it*NW + w)*G + g, g < G (G rows in flight
                # per warp); lanes own dimensions; an online softmax per warp.
                cs_len = (n + P - 1) // P if SPLIT else n
                for q in range(bx, P if SPLIT else 1, nbx):
                    lo = q * cs_len
                    hi = min(n, lo + cs_len)
                    for k in range(HPL):
                        acc_r[k] = zero
                    m = neg_inf
                    l = zero
                    cnt_pos = hi - lo if hi > lo else 0
                    if PREFETCH and lo + warp * G < hi:    # round 0's group
                        load_group(hist, b, lo + warp * G, hi, first_slot, span, H, lane,
                                   slots, rows)
                    for it in range((cnt_pos + NW * G - 1) // (NW * G)):   # same on all
                        i0 = lo + (it * NW + warp) * G
                        if i0 < hi:
                            if not PREFETCH:     # this round's group, loaded now
                                load_group(hist, b, i0, hi, first_slot, span, H, lane,
                                           slots, rows)
                            score_group(e_grp, keys, b, slots, rows, q_r, v_r, lane, kdim,
                                        additive)
                        else:
                            for g in range(G):
                                e_grp[g] = zero
                        if PREFETCH and i0 + NW * G < hi:
                            # the next round's group: its loads in flight during this
                            # round's reduction, softmax and weighted sum
                            load_group(hist, b, i0 + NW * G, hi, first_slot, span, H, lane,
                                       slots_n, rows_n)
                        warp_allsum(e_grp, lane, W, buf, o_red, tid)
                        if i0 < hi:     # raw scores normalised in (4)
                            m, l = softmax_round(e_grp, min(G, hi - i0), m, l, acc_r, rows,
                                                 attn, b, r, i0, 0 if compact else first,
                                                 want_attn, lane)
                        if PREFETCH:     # the next round's group becomes this one's
                            for u in range(ROWS):
                                rows[u] = rows_n[u]
                            for g in range(G):
                                slots[g] = slots_n[g]
                    for k in range(HPL):
                        d = lane + k * W
                        if d < H:
                            buf[o_acc + warp * H + d] = acc_r[k]
                    if lane == 0:
                        buf[o_m + warp] = m
                        buf[o_l + warp] = l
                    cuda.syncthreads()
                    # (4) merge the warps: M = max m_w, l = sum l_w e^(m_w - M); a warp
                    # with no position has m_w = -inf and adds nothing
                    M = buf[o_m]
                    for w in range(1, NW):
                        if buf[o_m + w] > M:
                            M = buf[o_m + w]
                    # SPLIT: the part's partial (sum_w acc_w e^(m_w - M), M, l), an empty
                    # part (0, -inf, 0); else c_t = sum_w acc_w e^(m_w - M) / l (n >= 1)
                    filled = hi > lo
                    lsum = zero
                    if filled:
                        for w in range(NW):
                            lsum += buf[o_l + w] * math.exp(buf[o_m + w] - M)
                    inv_l = tp(1.0) / lsum if not SPLIT else zero
                    slotp = r % 2
                    for j in range(tid, H, NT):
                        acc = zero
                        if filled:
                            for w in range(NW):
                                acc += buf[o_acc + w * H + j] * math.exp(buf[o_m + w] - M)
                        if SPLIT:
                            parts[slotp, b, q, j] = acc
                        else:
                            cv = acc * inv_l
                            buf[o_c + j] = cv
                            out_c[b, r, j] = cv
                    if SPLIT:
                        if tid == 0:
                            parts[slotp, b, q, H] = M if filled else neg_inf
                            parts[slotp, b, q, H + 1] = lsum
                    elif want_attn:
                        for i in range(tid, n, NT):
                            col = i if compact else first + i
                            attn[b, r, col] = math.exp(attn[b, r, col] - M) * inv_l
                    cuda.syncthreads()      # o_acc, o_m, o_l are reused by the next part
            if SPLIT:
                grid_sync()      # every part of every sequence has written its partial
                if r < L:
                    # (5) merge the parts, in the same order on every block of sequence b:
                    # M = max m_q, l = sum l_q e^(m_q - M), c_t = sum acc_q e^(m_q - M) / l
                    slotp = r % 2
                    M = parts[slotp, b, 0, H]
                    for q in range(1, P):
                        if parts[slotp, b, q, H] > M:
                            M = parts[slotp, b, q, H]
                    lsum = zero
                    for q in range(P):
                        lsum += parts[slotp, b, q, H + 1] * math.exp(parts[slotp, b, q, H] - M)
                    inv_l = tp(1.0) / lsum
                    for j in range(tid, H, NT):
                        acc = zero
                        for q in range(P):
                            acc += parts[slotp, b, q, j] * math.exp(parts[slotp, b, q, H] - M)
                        cv = acc * inv_l
                        buf[o_c + j] = cv
                        if writer:
                            out_c[b, r, j] = cv
                            out_h[b, r, j] = buf[o_h + j]
                    if want_attn:             # the raw scores of this block's parts
                        for q in range(bx, P, nbx):
                            lo = q * cs_len
                            hi = min(n, lo + cs_len)
                            for i in range(lo + tid, hi, NT):
                                col = i if compact else first + i
                                attn[b, r, col] = math.exp(attn[b, r, col] - M) * inv_l
                    cuda.syncthreads()
        if L > 0 and writer:
            for j in range(tid, H, NT):
                hs[b, j] = buf[o_h + j]
                cs[b, j] = buf[o_c + j]
            if tid == 0:
                positions[b] = pos0 + L

    @cuda.jit(device=True)
    def run_block(blk, wts, D, H, Ha, score, recurrence, window, inline_proj, x, lengths,
                  hist, keys, hs, cs, positions, out_h, out_c, attn, want_attn, compact, buf,
                  meta):
        """The packed kernel's block ``blk``: sequences ``b = blk * SB + m``, ``m < SB``
        (those past the batch have length 0), through ``max_m lengths[b]`` steps; warp
        ``m`` attends for sequence ``m``, and the block's threads share the products.

        Invariant at the top of step r: ``buf[m*SS : m*SS + H]``, ``buf[m*SS + H :
        m*SS + 2H]`` hold ``h_{t-1}``, ``c_{t-1}`` of sequence ``m`` (its state where
        ``r`` is past its length); history (and key) slots of every position before its
        ``p`` that is still attended are written. ``meta[m]``, ``meta[SB + m]``: its
        length and first position.

        Per step: (1) thread ``tid`` computes outputs ``j = tid + u * NT`` of every
        sequence's ``h_t`` (``W_c c [+ W_h h] [+ W_x x_t] + pre``), each weight loaded once
        for the ``SB`` sequences; (2) the query and key likewise; (3) warp ``m`` attends
        over sequence ``m``'s positions in rounds of ``G`` (lanes own dimensions, an online
        softmax in registers: ``c_t = acc / l``, no merge across warps). Every thread runs
        the same rounds, the most any sequence of the block needs (the shared-memory warp
        reduce synchronises the block).
        """
        tid = cuda.threadIdx.x
        NT = cuda.blockDim.x
        W = W_C
        lane = tid % W
        warp = tid // W
        B = x.shape[0]
        o_wx, o_wc, o_wh, o_ws, o_wk, o_wq, o_b, o_v = weight_layout(D, H, Ha)
        keyed = KEYED
        additive = KEYED and score == 4
        kdim = Ha if keyed else H
        QD = Ha if Ha > H else H
        SS = 3 * H + QD + D          # a sequence's scratch: h, c, q, x_t, h_t's sums
        o_c = H
        o_q = 2 * H
        o_x = 2 * H + QD
        o_s = o_x + D
        o_red = SB * SS
        zero = tp(0.0)
        neg_inf = tp(-math.inf)
        e_grp = cuda.local.array(G, tp)
        slots = cuda.local.array(G, numba.int64)
        rows = cuda.local.array(ROWS, tp)
        acc_r = cuda.local.array(HPL, tp)
        q_r = cuda.local.array(QPL, tp)
        v_r = cuda.local.array(QPL, tp)
        # a thread's sums of one output for the SB sequences (indices constant once the
        # loops over m are unrolled: registers, not local memory)
        s_h = cuda.local.array(SB, tp)           # (1) h_t's
        s_q = cuda.local.array(SB, tp)           # (2) the query's ...
        s_k = cuda.local.array(SB, tp)           # ... and the key's
        inv_sqrt_h = tp(1.0 / math.sqrt(H))
        b0 = blk * SB
        if tid < SB:
            bm = b0 + tid
            meta[tid] = lengths[bm] if bm < B else 0
            meta[SB + tid] = positions[bm] if bm < B else 0
        for k in range(QPL):          # v is the same at every step: loaded once
            a = lane + k * W
            v_r[k] = wts[o_v + a] if (additive and a < kdim) else zero
        # the state (and step 0's x_t) of every sequence, zeros past the batch
        has_x = inline_proj and x.shape[1] > 0
        for m in range(SB):
            bm = b0 + m
            for j in range(tid, H, NT):
                buf[m * SS + j] = hs[bm, j] if bm < B else zero
                buf[m * SS + o_c + j] = cs[bm, j] if bm < B else zero
            for k in range(tid, D, NT):
                buf[m * SS + o_x + k] = x[bm, 0, k] if (has_x and bm < B) else zero
        cuda.syncthreads()
        nsteps = 0
        for m in range(SB):
            if meta[m] > nsteps:
                nsteps = meta[m]
        b = b0 + warp                 # this warp's sequence (past the batch: length 0)
        L = meta[warp]
        pos0 = meta[SB + warp]
        for r in range(nsteps):
            if inline_proj and r > 0:     # step 0's x_t came with h and c
                for m in range(SB):
                    if r < meta[m]:
                        for k in range(tid, D, NT):
                            buf[m * SS + o_x + k] = x[b0 + m, r, k]
                cuda.syncthreads()          # (1) reads all of x_t
            # (1) h_t of every sequence: outputs j = tid + u*NT, their sums kept in the
            # scratch; with W_h h (recurrence hc) stored as h_t once every thread has read h
            # (else at once: the products read only c and x_t)
            for j0 in range(0, H, NT):
                j = j0 + tid
                # threads past H compute a copy of output H - 1 (never stored), without
                # its projection, which out_h holds until the thread of H - 1 stores h_t
                jc = j if j < H else H - 1
                for m in range(SB):
                    if inline_proj:
                        s_h[m] = wts[o_b + jc]
                    else:
                        s_h[m] = (out_h[b0 + m, r, j] if (j < H and r < meta[m])
                                  else zero)
                column_dots(s_h, wts, o_wc, H, jc, buf, o_c, SS, 0, H)
                if recurrence == 1:
                    column_dots(s_h, wts, o_wh, H, jc, buf, 0, SS, 0, H)
                if inline_proj:
                    column_dots(s_h, wts, o_wx, H, jc, buf, o_x, SS, 0, D)
                if j < H:
                    for m in range(SB):
                        if r < meta[m]:
                            buf[m * SS + o_s + j] = s_h[m]
            if recurrence == 1:
                cuda.syncthreads()          # W_h h read h, which the stores below overwrite
            for j in range(tid, H, NT):     # the outputs this thread summed
                for m in range(SB):
                    if r < meta[m]:
                        p_m = meta[SB + m] + r
                        hv = math.tanh(buf[m * SS + o_s + j])
                        buf[m * SS + j] = hv
                        out_h[b0 + m, r, j] = hv
                        hist[b0 + m, p_m % window if window > 0 else p_m, j] = hv
            cuda.syncthreads()
            p = pos0 + r
            first = p - window + 1 if (window > 0 and p - window + 1 > 0) else 0
            n = p - first + 1 if r < L else 0     # 0: this warp's sequence has ended
            span = window if window > 0 else p + 1
            first_slot = first % window if window > 0 else first
            # (2) query (and key, appended to the key cache) of every sequence
            if score >= 2:
                for a0 in range(0, kdim, NT):
                    a = a0 + tid
                    ac = a if a < kdim else kdim - 1
                    for m in range(SB):
                        s_q[m] = zero
                        s_k[m] = zero
                    if keyed:
                        column_dots(s_k, wts, o_wk, Ha, ac, buf, 0, SS, 0, H)
                        column_dots(s_q, wts, o_wq, Ha, ac, buf, 0, SS, 0, H)
                    else:
                        column_dots(s_q, wts, o_ws, H, ac, buf, 0, SS, 0, H)
                    if a < kdim:
                        for m in range(SB):
                            if r < meta[m]:
                                buf[m * SS + o_q + a] = s_q[m]
                                if keyed:
                                    p_m = meta[SB + m] + r
                                    keys[b0 + m, p_m % window if window > 0 else p_m,
                                         a] = s_k[m]
                cuda.syncthreads()
                for k in range(QPL):
                    a = lane + k * W
                    q_r[k] = buf[warp * SS + o_q + a] if (n > 0 and a < kdim) else zero
            else:   # the query is h_t (scaled)
                q_scale = inv_sqrt_h if score == 1 else tp(1.0)
                for k in range(QPL):
                    a = lane + k * W
                    q_r[k] = buf[warp * SS + a] * q_scale if a < H else zero
            # (3) this warp's sequence: positions in rounds of G, the block's most rounds
            rounds = 0
            for m in range(SB):
                if r < meta[m]:
                    p_m = meta[SB + m] + r
                    n_m = p_m + 1 if (window <= 0 or p_m + 1 < window) else window
                    if n_m > rounds:
                        rounds = n_m
            rounds = (rounds + G - 1) // G
            for k in range(HPL):
                acc_r[k] = zero
            m_run = neg_inf
            l = zero
            for it in range(rounds):
                i0 = it * G
                if i0 < n:
                    load_group(hist, b, i0, n, first_slot, span, H, lane, slots, rows)
                    score_group(e_grp, keys, b, slots, rows, q_r, v_r, lane, kdim, additive)
                else:
                    for g in range(G):
                        e_grp[g] = zero
                warp_allsum(e_grp, lane, W, buf, o_red, tid)
                if i0 < n:      # raw scores normalised below
                    m_run, l = softmax_round(e_grp, min(G, n - i0), m_run, l, acc_r, rows,
                                             attn, b, r, i0, 0 if compact else first,
                                             want_attn, lane)
            inv_l = tp(1.0) / l if n > 0 else zero
            if n > 0:
                for k in range(HPL):
                    d = lane + k * W
                    if d < H:
                        cv = acc_r[k] * inv_l
                        buf[warp * SS + o_c + d] = cv
                        out_c[b, r, d] = cv
            cuda.syncthreads()      # c_t of every sequence, and lane 0's raw scores
            if want_attn and n > 0:
                for i in range(lane, n, W):
                    col = i if compact else first + i
                    attn[b, r, col] = math.exp(attn[b, r, col] - m_run) * inv_l
        for m in range(SB):
            if meta[m] > 0:
                for j in range(tid, H, NT):
                    hs[b0 + m, j] = buf[m * SS + j]
                    cs[b0 + m, j] = buf[m * SS + o_c + j]
        if tid < SB and meta[tid] > 0:
            positions[b0 + tid] = meta[SB + tid] + meta[tid]

    if SPLIT:     # grid (blocks per sequence, sequences)
        @cuda.jit(device=True)
        def block_coords():
            return cuda.blockIdx.y, cuda.blockIdx.x, cuda.gridDim.x
    else:         # grid (sequences,)
        @cuda.jit(device=True)
        def block_coords():
            return cuda.blockIdx.x, 0, 1

    # a block's scratch: its row of the global buffer, or the launch's dynamic shared memory
    # (a constant: the other branch is pruned; a device function cannot return shared memory)
    GLOBAL_SCRATCH = bool(global_scratch)

    if PACKED:
        @cuda.jit(**kernel_options)
        def sequence_kernel(wts, D, H, Ha, score, recurrence,
                            window, inline_proj, x, lengths, hist, keys, hs, cs, positions,
                            out_h, out_c, attn, want_attn, compact, parts, P, scratch):
            if LAUNCH_BOUND[0] < 1:    # never: ties the kernel's cache entry to its bound
                return
            blk = cuda.blockIdx.x
            meta = cuda.shared.array(META, numba.int64)
            if GLOBAL_SCRATCH:
                buf = scratch[blk]
            else:
                buf = cuda.shared.array(0, tp)
            run_block(blk, wts, D, H, Ha, score, recurrence, window, inline_proj, x,
                      lengths, hist, keys, hs, cs, positions, out_h, out_c, attn,
                      want_attn, compact, buf, meta)
    else:
        @cuda.jit(**kernel_options)
        def sequence_kernel(wts, D, H, Ha, score, recurrence,
                            window, inline_proj, x, lengths, hist, keys, hs, cs, positions,
                            out_h, out_c, attn, want_attn, compact, parts, P, scratch):
            if LAUNCH_BOUND[0] < 1:    # never: ties the kernel's cache entry to its bound
                return
            b, bx, nbx = block_coords()
            # the grid is exactly (nbx, B) when SPLIT: every block reaches the grid barrier
            if b < x.shape[0]:
                if GLOBAL_SCRATCH:
                    buf = scratch[b * nbx + bx]
                else:
                    buf = cuda.shared.array(0, tp)
                run_sequence(b, bx, nbx, wts, D, H, Ha, score,
                             recurrence, window, inline_proj, x, lengths, hist, keys, hs, cs,
                             positions, out_h, out_c, attn, want_attn, compact, parts, P,
                             buf)
    return sequence_kernel


if _IMPORT_ERROR is None:
    @cuda.jit
    def _project_kernel(wts, D, Ha, x, lengths, out_h, out_c):
        """out_h[b, t] = W_x x[b, t] + b for t < lengths[b]; out_h, out_c = 0 elsewhere.

        One thread per (b, t, j); neighbouring threads read neighbouring words of W_x^T.
        """
        i = cuda.grid(1)
        B, T, H = out_h.shape
        o_wx, o_wc, o_wh, o_ws, o_wk, o_wq, o_b, o_v = weight_layout(D, H, Ha)
        if (i < B * T * H and x.shape[0] == B and x.shape[1] == T and x.shape[2] == D
                and wts.shape[0] == o_v + Ha):
            j = i % H
            t = (i // H) % T
            b = i // (H * T)
            if t < lengths[b]:
                s = wts[o_b + j]
                for k in range(D):
                    s += wts[o_wx + k * H + j] * x[b, t, k]
                out_h[b, t, j] = s
            else:
                out_h[b, t, j] = 0
                out_c[b, t, j] = 0

    @cuda.jit
    def _fill_zero_kernel(flat):
        i = cuda.grid(1)
        if i < flat.shape[0]:
            flat[i] = 0

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

    @cuda.jit
    def _probe_kernel(out):
        i = cuda.grid(1)
        if i < out.shape[0]:
            out[i] = 2 * i + 1


# -- launch configurations ----------------------------------------------------------------
_CONFIG_LOCK = threading.Lock()
_CONFIGS = {}


def _occupancy_config():
    """numba-cuda's configuration module as its dispatcher reads it, whose
    ``CUDA_LOW_OCCUPANCY_WARNINGS`` decides the low-occupancy warning when a launch
    configuration is made (None on the simulator, which does not warn)."""
    if SIMULATOR:
        return None
    import numba.cuda.dispatcher as dispatcher
    return getattr(dispatcher, "config", None)


def _configured(kern, grid, block, shared=0):
    """``kern[grid, block, 0, shared]``, made once per key and reused by every launch.

    One block per sequence is this backend's design (a persistent kernel per sequence; a
    one-token step or a small batch runs a few blocks), and the small data-parallel kernels
    get small grids for small inputs: numba-cuda's warning for grids under 128 blocks would
    reach every user of a batch under 128, with nothing for them to change. So numba-cuda's
    ``CUDA_LOW_OCCUPANCY_WARNINGS`` is off while fastsarnn makes a configuration (under a
    lock, once per key; the warnings machinery is not touched, other warnings pass). Reusing
    the configuration also saves making one per launch. The simulator configures the kernel
    object itself and returns it: that is never kept.
    """
    key = (kern, grid, block, shared)
    conf = _CONFIGS.get(key)
    if conf is None:
        with _CONFIG_LOCK:
            cfg = _occupancy_config()
            before = getattr(cfg, "CUDA_LOW_OCCUPANCY_WARNINGS", None)
            if before:
                cfg.CUDA_LOW_OCCUPANCY_WARNINGS = 0
            try:
                conf = kern[grid, block, 0, shared]
            finally:
                if before:
                    cfg.CUDA_LOW_OCCUPANCY_WARNINGS = before
            if conf is not kern:
                if len(_CONFIGS) >= 1024:     # grids vary with input sizes: stay bounded
                    _CONFIGS.clear()
                _CONFIGS[key] = conf
    return conf


#: Prepared launches (:func:`_run`): on a GPU; the simulator launches through numba-cuda.
_PREPARE_LAUNCHES = _IMPORT_ERROR is None and not SIMULATOR
#: Why prepared launches are off for this process, once preparing failed.
_PREPARED_ERROR = None


def _current_context():
    """numba-cuda's context of the calling thread, made current as numba-cuda's own launch
    does (``get_cufunc``): cuda.core's ``launch`` on the default stream needs one, and a
    prepared launch is only valid in the context it was prepared in."""
    from numba.cuda.cudadrv import devices
    return devices.get_context()


def _launch_api():
    """cuda.core's ``launch``/``LaunchConfig`` and numba-cuda's helpers, as numba-cuda's own
    ``_Kernel.launch`` uses them (imported on first use: a GPU only)."""
    from cuda.core import LaunchConfig, launch
    from numba.cuda._compat import CUDA_CORE_GE_1_0
    from numba.cuda.cudadrv.driver import _to_core_stream
    from numba.cuda.errors import normalize_kernel_dimensions
    coop = "is_cooperative" if CUDA_CORE_GE_1_0 else "cooperative_launch"
    return launch, LaunchConfig, coop, _to_core_stream, normalize_kernel_dimensions


def _prepare(kern, grid, block, shared, args):
    """A zero-argument callable that launches ``kern`` with ``args`` as numba-cuda would,
    with the kernel parameters made once (numba-cuda's ``_prepare_args``, ~5 us of host
    time per array argument, here paid once instead of per launch); or None where that
    cannot be done exactly (no compiled overload of exactly these types, a debug kernel,
    an argument that needs copying back)."""
    launch, LaunchConfig, coop, to_stream, normalize = _launch_api()
    overload = kern.overloads.get(tuple(kern.typeof_pyval(a) for a in args))
    if overload is None or getattr(overload, "debug", False):
        return None
    stream = to_stream(0)
    params, writeback = [], []
    for ty, val in zip(overload.argument_types, args):
        overload._prepare_args(ty, val, stream, writeback, params)
    if writeback:
        return None
    griddim, blockdim = normalize(grid, block)
    config = LaunchConfig(grid=griddim, block=blockdim, shmem_size=shared,
                          **{coop: overload.cooperative})
    kernel = overload._codelibrary.get_cufunc().kernel
    through_core = functools.partial(launch, stream, config, kernel, *params)
    if overload.cooperative:
        return through_core
    return _direct_or_core(kernel, griddim, blockdim, shared, stream, params, through_core)


#: Why prepared launches go through cuda.core's ``launch`` for this process, once a direct
#: driver launch failed or could not be made (:class:`_DirectLaunch`).
_DIRECT_ERROR = None


def _direct_failed(why):
    """Remember (and say once) that direct launches do not work here."""
    global _DIRECT_ERROR
    _DIRECT_ERROR = why
    warnings.warn(f"fastsarnn cuda backend: direct kernel launches do not work here "
                  f"({why}); prepared launches go through cuda.core's launch",
                  RuntimeWarning, stacklevel=5)


def _direct_or_core(kernel, griddim, blockdim, shared, stream, params, through_core):
    """A :class:`_DirectLaunch`, or ``through_core`` where one cannot be made here (the
    driver binding or cuda.core's kernel not as expected), saying why once."""
    if _DIRECT_ERROR is None:
        try:
            return _DirectLaunch(kernel, griddim, blockdim, shared, stream, params,
                                 through_core)
        except Exception as exc:
            _direct_failed(f"{type(exc).__name__}: {exc}")
    return through_core


def _param_holder(params):
    """cuda.core's packing of kernel parameters (what its ``launch`` makes per call)."""
    try:
        from cuda.core._kernel_arg_handler import ParamHolder
    except ImportError:      # cuda.core before 0.4
        from cuda.core.experimental._kernel_arg_handler import ParamHolder
    return ParamHolder(params)


class _DirectLaunch:
    """A prepared launch of a one-block-per-sequence kernel straight through the driver's
    ``cuLaunchKernel``, with the kernel parameters packed once.

    cuda.core's ``launch`` packs the parameters anew at every call (its ``ParamHolder``:
    about 9 us for the sequence kernel's 137, paid per token by ``step``); the driver copies
    them at each launch, so one packing serves every launch with the same arguments. The
    same stream, kernel, grid, block and shared memory as cuda.core's launch; the packed
    parameters and the objects they were packed from are held here. Should a direct launch
    fail (an error code or an exception from the binding: nothing was launched), the launch
    goes through cuda.core (``through_core``); if that succeeds, the direct path is what
    failed, and every later launch in the process goes through cuda.core too, with one
    warning; if it fails as well (an error of the context, not of the path), its error is
    raised and the direct path stays.
    """

    def __init__(self, kernel, griddim, blockdim, shared, stream, params, through_core):
        from cuda.bindings import driver
        self._launch_kernel = driver.cuLaunchKernel
        self._success = driver.CUresult.CUDA_SUCCESS
        self.params = params
        self.holder = _param_holder(params)
        # the binding's own handle types, made once (it would make them from ints per call)
        self.call = (driver.CUfunction(int(kernel.handle)), *griddim, *blockdim, int(shared),
                     driver.CUstream(int(stream.handle)), int(self.holder.ptr), 0)
        self.through_core = through_core

    def __call__(self):
        if _DIRECT_ERROR is not None:
            self.through_core()
            return
        try:
            err, = self._launch_kernel(*self.call)
            if err == self._success:
                return
            why = f"cuLaunchKernel returned {err!r}"
        except Exception as exc:     # the binding not as expected: nothing launched
            why = f"{type(exc).__name__}: {exc}"
        self.through_core()          # raises where the launch cannot be made at all
        _direct_failed(why)


def _launch_key(kern, grid, block, shared, args):
    """What a prepared launch must match: the kernel, its configuration, the identity of
    every array argument and the value of every int/bool one (about 1.5 us for the step's
    23 arguments here; a scalar of another type counts by identity, so only the very same
    object matches)."""
    return (id(kern), grid, block, shared,
            [a if type(a) is int or type(a) is bool else id(a) for a in args])


def _run(kern, grid, block, shared, args, slot=None, ctx=None):
    """Launch ``kern[grid, block, 0, shared](*args)``.

    ``slot`` (a dict a caller keeps, such as a state's step stage) remembers its latest
    launch: once the very same argument objects and values come twice in a row, in the
    same CUDA context (the tokens of a ``step`` stream, until a buffer is reallocated or
    the split plan changes), their kernel parameters are made once (:func:`_prepare`) and
    later launches with them skip numba-cuda's argument marshalling. The arguments and the
    context are held with the parameters, so an unchanged ``id`` is the same object with
    the same device pointer; arguments that change at every call are never prepared. On
    the simulator, and for good once preparing failed (saying why once), every launch goes
    through numba-cuda. ``ctx``: the calling thread's current CUDA context, where the
    caller has looked it up already. Returns the prepared launcher for this launch's
    arguments (made by this launch, after it ran through numba-cuda, or by an earlier
    one), or None.
    """
    global _PREPARED_ERROR
    if slot is None or not _PREPARE_LAUNCHES or _PREPARED_ERROR is not None:
        _configured(kern, grid, block, shared)(*args)
        return
    if ctx is None:     # the caller's, else the one current in this thread
        ctx = _current_context()
    key = _launch_key(kern, grid, block, shared, args) + (id(ctx),)
    got = slot.get("prepared")            # (key, arguments held, launcher, tried)
    if got is not None and got[0] == key and got[2] is not None:
        got[2]()
        return got[2]
    _configured(kern, grid, block, shared)(*args)     # compiles on first use
    if got is None or got[0] != key:      # new arguments: prepare if they come again
        slot["prepared"] = (key, (kern, args, ctx), None, False)
        return
    if got[3]:                            # tried: these arguments cannot be prepared
        return
    try:
        launcher = _prepare(kern, grid, block, shared, args)
    except Exception as exc:     # numba-cuda or cuda.core internals not as expected
        _PREPARED_ERROR = f"{type(exc).__name__}: {exc}"
        slot.pop("prepared", None)
        warnings.warn(f"fastsarnn cuda backend: cannot prepare kernel launches here "
                      f"({_PREPARED_ERROR}); each launch goes through numba-cuda",
                      RuntimeWarning, stacklevel=3)
        return
    slot["prepared"] = (key, (kern, args, ctx), launcher, True)
    return launcher


# -- availability: a tiny kernel must compile and run in this process ----------------------
_PROBE = None


def availability():
    """``(True, None)`` once a tiny kernel compiled and ran here (cached), else the reason."""
    global _PROBE
    if _IMPORT_ERROR is not None:
        return False, _IMPORT_ERROR
    if _PROBE is None:
        _PROBE = _probe()
    return _PROBE


def _probe():
    try:
        if not SIMULATOR and not cuda.is_available():
            return False, ("no usable CUDA GPU or driver (numba.cuda.is_available() is "
                           "False); set NUMBA_ENABLE_CUDASIM=1 for the simulator")
        out = cuda.device_array(4, dtype=np.int64)
        _configured(_probe_kernel, 1, 4)(out)
        got = out.copy_to_host()
        if got.tolist() != [1, 3, 5, 7]:
            return False, f"a test kernel ran but returned {got.tolist()}, not [1, 3, 5, 7]"
    except Exception as exc:   # driver, toolkit or numba-cuda/NumPy incompatibility
        return False, f"a test kernel failed to compile or run: {type(exc).__name__}: {exc}"
    return True, None


def describe():
    if SIMULATOR:
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


def _fill_zero(arr):
    n = arr.size
    if n:
        threads = 256
        _configured(_fill_zero_kernel, (n + threads - 1) // threads, threads)(arr.reshape(n))


def zeros(shape, dtype):
    """A new device array of zeros (allocated on the device, filled by a kernel)."""
    arr = cuda.device_array(shape, dtype=dtype)
    _fill_zero(arr)
    return arr


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
    _configured(_nonfinite_kernel, (size + threads - 1) // threads, threads)(
        x, cuda.to_device(lengths), flag)
    i = int(flag.copy_to_host()[0])
    if i >= size:
        return None
    return tuple(int(k) for k in np.unravel_index(i, (B, T, D)))


# -- buffers: weights (per model), workspace (per model), state (per state) ----------------
def _mapped(shape, dtype):
    """(host view, kernel argument) of pinned host memory the device addresses directly.

    On the simulator a NumPy array is both (the simulator copies kernel arguments in and
    back, which a kernel cannot tell from mapped memory).
    """
    if SIMULATOR:
        arr = np.zeros(shape, dtype=dtype)
        return arr, arr
    m = cuda.mapped_array(shape, dtype=dtype)
    host = _host_view(m)
    host[...] = 0
    return host, m


def _host_view(mapped):
    """A plain NumPy view of a mapped array's host memory (it keeps the mapped array alive).

    ``mapped.view(np.ndarray)`` would not do: a mapped array is a device array first, and
    the device array's ``view(dtype)`` reinterprets the dtype and returns a device array.
    """
    return np.ndarray.view(mapped, np.ndarray)


def _device_weights(p):
    """Weights on the device, matrices transposed (``W^T[k, j]``: coalesced by ``j``)."""
    got = p.cache.get(NAME)
    if got is None:
        with _KERNEL_LOCK:
            got = p.cache.get(NAME)
            if got is None:
                got = p.cache[NAME] = _upload_weights(p)
    return got


def _upload_weights(p):
    """The packed weights on the device (matrices transposed; :func:`_weight_layout`), the
    sizes the kernels take with them, the model's lock and workspace."""
    D, H, Ha = p.D, p.H, (p.Ha or 1)
    offsets = _weight_layout(D, H, Ha)
    packed = np.zeros(offsets[-1] + Ha, dtype=p.dtype)
    for name, off in zip(("W_x", "W_c", "W_h", "W_s", "W_k", "W_q", "b", "v"), offsets):
        arr = getattr(p, name)
        if arr.size:
            flat = arr.T.ravel() if arr.ndim == 2 else arr
            packed[off:off + flat.size] = flat
    got = {"wts": cuda.to_device(packed), "sizes": (D, H, Ha)}
    got["lock"] = threading.Lock()     # one launch sequence at a time per workspace
    got["work"] = {}
    got["none"] = cuda.device_array((1, 1, 1), dtype=p.dtype)     # absent buffers
    got["none2"] = cuda.device_array((1, 1), dtype=p.dtype)
    got["none4"] = cuda.device_array((1, 1, 1, 1), dtype=p.dtype)
    return got


def _workspace(w, name, shape, dtype):
    """A device array of ``shape`` from the model's workspace buffer ``name``, grown
    geometrically (no device allocation once it is large enough)."""
    n = int(np.prod(shape, dtype=np.int64))
    buf = w["work"].get(name)
    if buf is None or buf.size < n:
        size = max(n, 2 * (0 if buf is None else buf.size), 1)
        buf = w["work"][name] = cuda.device_array(size, dtype=dtype)
    # the same view object per shape while the buffer stays (a stable launch argument for
    # _run, also when states of several batch sizes take turns)
    owner, views = w["work"].get((name, "views"), (None, None))
    if owner is not buf or len(views) >= 64:
        owner, views = w["work"][(name, "views")] = (buf, {})
    view = views.get(tuple(shape))
    if view is None:
        view = views[tuple(shape)] = buf[:n].reshape(shape)
    return view


def _mapped_workspace(w, name, shape, dtype):
    """(host view, kernel argument) of mapped memory of exactly ``shape``, kept per shape
    (small buffers only: a mapped array is never sliced, its views lose the device
    pointer)."""
    key = (name, tuple(shape))
    got = w["work"].get(key)
    if got is None:
        got = w["work"][key] = _mapped(shape, dtype)
    return got


def _upload(dev, host):
    dev.copy_to_device(host)


def _download(dev, host):
    dev.copy_to_host(host)


def _device_state(state, w, dtype):
    """The state's device buffers ``(hist, keys or None, (h, c, positions))``.

    History and keys: the state's device copy, kept current by the state's protocol
    (:meth:`~fastsarnn.state.State._device_history`). ``h``, ``c``, ``positions``: moved
    once into mapped host memory (values kept; the state's attributes then name the mapped
    arrays), so the kernel reads and writes what the user sees. A scratch state (made by
    ``forward`` for one call) uses the model's reusable workspace instead.
    """
    if state._scratch:
        B, H = state._h.shape
        hist = _workspace(w, "hist", state._hist.shape, dtype)
        keys = (None if state._keys is None else
                _workspace(w, "keys", state._keys.shape, dtype))
        (h, h_arg), (c, c_arg), (pos, pos_arg) = (
            _mapped_workspace(w, "h", (B, H), dtype), _mapped_workspace(w, "c", (B, H), dtype),
            _mapped_workspace(w, "positions", (B,), np.int64))
        for arr in (h, c, pos):
            arr[...] = 0
        state._h, state._c, state._positions = h, c, pos
        return hist, keys, (h_arg, c_arg, pos_arg)
    hist, keys = state._device_history(NAME, zeros, _upload, _download)
    small = state._cache.get(NAME)
    if small is not None:      # the mapped arrays still named by the state's attributes
        h, c, pos = small["keep"]
        if h is state._h and c is state._c and pos is state._positions:
            return hist, keys, small["args"]
    # first launch, or the user replaced one of them: (new) mapped arrays, values kept
    B, H = state._h.shape
    h, h_arg = _mapped((B, H), dtype)
    c, c_arg = _mapped((B, H), dtype)
    pos, pos_arg = _mapped((B,), np.int64)
    h[...] = state._h
    c[...] = state._c
    pos[...] = state._positions
    state._h, state._c, state._positions = h, c, pos
    args = (h_arg, c_arg, pos_arg)     # the same object at every later call
    state._cache[NAME] = {"args": args, "keep": (h, c, pos)}
    return hist, keys, args


def split_parts():
    """``_config.CUDA_SPLIT_PARTS``, checked: ``"auto"`` or an integer >= 1."""
    P = _config.CUDA_SPLIT_PARTS
    if P != "auto" and (not isinstance(P, int) or isinstance(P, bool) or P < 1):
        raise ValueError(f"fastsarnn._config.CUDA_SPLIT_PARTS must be 'auto' or an integer "
                         f">= 1; got {P!r}")
    return P


_COOP_LIMITS = {}
#: Why the split (cooperative) kernel cannot run in this process, once it failed to build
#: or launch under CUDA_SPLIT_PARTS="auto" (a forced count raises instead).
_SPLIT_ERROR = None
_LAST_LAUNCH = threading.local()


def last_launch():
    """The plan of the calling thread's latest sequence-kernel launch: ``{"parts": P,
    "blocks_per_sequence": nbx, "threads": nt, "global_scratch": bool,
    "sequences_per_block": SB}`` (``{}`` before the first)."""
    return dict(getattr(_LAST_LAUNCH, "plan", {}))


def _cooperative_limit(kern, args_fn, nt, shared_bytes, device=None):
    """Blocks of ``kern`` that fit on the current GPU at once: the most a cooperative
    launch may have. The first call per kernel, block and device compiles and links the
    kernel for the arguments ``args_fn()``; later calls (every token of a stream) are a
    dictionary lookup."""
    key = (id(kern), nt, shared_bytes,
           (device if device is not None else cuda.get_current_device()).id)
    got = _COOP_LIMITS.get(key)
    if got is None:
        compiled = kern.compile(tuple(kern.typeof_pyval(a) for a in args_fn()))
        got = _COOP_LIMITS[key] = int(compiled.max_cooperative_grid_blocks(nt, shared_bytes))
    return got


def _split_failed(exc):
    """Remember (and say once) that the split kernel cannot run here."""
    global _SPLIT_ERROR
    _SPLIT_ERROR = f"{type(exc).__name__}: {exc}"
    warnings.warn(f"fastsarnn cuda backend: the kernel that splits a sequence over several "
                  f"blocks cannot run here ({_SPLIT_ERROR}); every sequence runs on one "
                  f"block", RuntimeWarning, stacklevel=3)


def _auto_parts(B, n_last, step, device=None):
    """The parts ``CUDA_SPLIT_PARTS="auto"`` asks for, before the cooperative limit (below
    2: one block per sequence); see :func:`_split_plan`."""
    if SIMULATOR or _SPLIT_ERROR is not None:
        return 1
    dev = device if device is not None else cuda.get_current_device()
    if not getattr(dev, "COOPERATIVE_LAUNCH", 1):
        return 1
    min_pos = max(1, int(_config.CUDA_SPLIT_STEP_MIN_POSITIONS if step
                         else _config.CUDA_SPLIT_MIN_POSITIONS))
    return min(n_last // min_pos, dev.MULTIPROCESSOR_COUNT // B)


def _split_plan(B, n_last, kernel_for, args_for, nt, shared_bytes, step=False, device=None):
    """``(P, blocks per sequence)``: the parts a sequence's attended positions are split
    into and the blocks that share them (each takes parts ``bx, bx + nbx, ...``).

    ``_config.CUDA_SPLIT_PARTS="auto"``: on a GPU that supports cooperative launches, split
    when every part gets at least ``_config.CUDA_SPLIT_MIN_POSITIONS`` positions at the last
    step (``CUDA_SPLIT_STEP_MIN_POSITIONS`` for a ``step``, one token per launch) and at
    least two blocks per sequence fit on the GPU at once (one block per part); never on the
    simulator, which runs blocks one after another; once the split kernel failed to build
    here (e.g. no cudadevrt), never again, with a warning. An integer forces ``P``: on a
    GPU, with as many blocks per sequence as fit (at least two, else no split), errors
    raised; on the simulator one block per sequence takes all ``P`` parts (the same partial
    and merge code). ``(1, 1)``: the one-block-per-sequence kernel.
    ``kernel_for(P)`` and ``args_for(P)`` give the kernel and its arguments for ``P`` parts
    (the arguments are made only when the kernel's cooperative limit is not known yet).
    """
    choice = split_parts()
    P = _auto_parts(B, n_last, step, device) if choice == "auto" else choice
    if P < 2:
        return 1, 1
    if SIMULATOR:
        return P, 1
    try:    # compiles and links the cooperative kernel (it needs CUDA's cudadevrt library)
        limit = _cooperative_limit(kernel_for(P), lambda: args_for(P), nt, shared_bytes,
                                   device=device)
    except Exception as exc:
        if choice != "auto":
            raise
        _split_failed(exc)
        return 1, 1
    nbx = min(P, limit // B)
    if nbx < 2:
        return 1, 1
    return (nbx, nbx) if choice == "auto" else (P, nbx)


#: The ``_config`` settings a launch plan (:func:`_launch_plan`) is derived from.
_PLAN_SETTINGS = operator.attrgetter(
    "CUDA_WARP_SHUFFLES", "CUDA_ROWS_PER_WARP", "CUDA_MATVEC_WORDS", "CUDA_ROW_CACHE_WORDS",
    "CUDA_BLOCK_SIZE", "CUDA_SHARED_BYTES", "CUDA_SPLIT_PARTS", "CUDA_MIN_BLOCKS_PER_SM",
    "CUDA_PREFETCH_ROWS", "CUDA_SPLIT_PRODUCTS", "CUDA_DISK_CACHE",
    "CUDA_SEQUENCES_PER_BLOCK")
_PLANS = {}


def _plan_key(p):
    """What a launch plan of ``p`` is derived from: the settings of ``_PLAN_SETTINGS``, the
    simulator's flavour, each setting's type (``True`` is not ``1``), ``p``'s sizes and
    dtype (in this order: :func:`_settings_unchanged` reads the first two)."""
    settings = _PLAN_SETTINGS(_config)
    return (settings, SIMULATOR and _simulator_has_shuffles(), tuple(map(type, settings)),
            SIMULATOR, p.H, p.Ha, p.D, p.dtype.char)


def _settings_unchanged(key):
    """Whether the settings ``_config`` holds are the very objects of the plan key ``key``
    (:func:`_plan_key`), and the simulator's flavour is the same: for the same ``p``, the
    same key, tested faster (the same object has the same value and type; a setting
    assigned a new but equal object fails the test, and the caller makes a new key)."""
    return (all(map(operator.is_, _PLAN_SETTINGS(_config), key[0]))
            and key[1] == (SIMULATOR and _simulator_has_shuffles()))


def _launch_plan(p, key=None):
    """``(shuffles, G, MV, MB, PF, SP, SB, nt, nscratch, global_scratch)`` of a model under
    the current settings, checked (:func:`use_shuffles`, :func:`rows_per_warp`,
    :func:`weights_in_flight`, :func:`blocks_per_sm`, :func:`prefetch_rows`,
    :func:`split_products`, :func:`sequences_per_block`, :func:`disk_cache`,
    :func:`split_parts`, :func:`block_geometry` or, with several sequences per block,
    :func:`packed_geometry`).

    Made once per model sizes and settings, then a dictionary look-up: ``step`` pays it per
    token. The key (``key``: :func:`_plan_key`, where the caller made it) holds each
    setting with its type, so a setting changed to a bad value is checked again; an
    unhashable one is never cached.
    """
    if key is None:
        key = _plan_key(p)
    try:
        got = _PLANS.get(key)
    except TypeError:     # an unhashable setting: the checks below say what is wrong
        key, got = None, None
    if got is None:
        shuffles = use_shuffles()
        G = rows_per_warp()
        MV = weights_in_flight(p.dtype)
        MB = blocks_per_sm()
        PF = prefetch_rows()
        SP = split_products()
        SB = sequences_per_block()
        disk_cache()
        split_parts()
        got = (shuffles, G, MV, MB, PF, SP, SB,
               *(packed_geometry(p.H, p.Ha, p.D, p.dtype, shuffles, G, SB) if SB > 1
                 else block_geometry(p.H, p.Ha, p.D, p.dtype, shuffles, G)))
        if key is not None:
            if len(_PLANS) >= 256:
                _PLANS.clear()
            _PLANS[key] = got
    return got


def _latest_position(pos):
    """The latest position of any sequence, 0 for none (for one sequence, a step's common
    case, a scalar read)."""
    B = pos.shape[0]
    return (int(pos[0]) if B == 1 else int(pos.max())) if B else 0


def _attended_at_last_step(p, last, T):
    """The positions the last of ``T`` steps from position ``last`` attends: ``last + T``,
    at most the window."""
    n = last + T
    return n if p.window is None else min(n, int(p.window))


def _launch(p, w, d_x, lens, d_len, state, d_out_h, d_out_c, d_attn, compact, inline,
            slot=None):
    """Checks, then the projection (unless ``inline``) and the sequence kernel (launched
    through :func:`_run` with ``slot``). A step's ``slot`` also keeps what
    :func:`_launch_again` needs to repeat a one-block launch."""
    if slot is not None:
        slot.pop("again", None)
    B, T, D = d_x.shape
    H = p.H
    plan_key = _plan_key(p)
    shuffles, G, MV, MB, PF, SP, SB, nt, nscratch, global_scratch = _launch_plan(p, plan_key)
    # the sizes every index of the kernels relies on
    if (d_out_h.shape != (B, T, H) or d_out_c.shape != (B, T, H) or D != p.D
            or d_len.shape != (B,) or state.batch_size != B):
        raise ValueError(f"cuda kernel: inconsistent shapes x {d_x.shape}, out_h "
                         f"{d_out_h.shape}, out_c {d_out_c.shape}, lengths {d_len.shape}, "
                         f"state batch {state.batch_size}, model D={p.D} H={H}")
    pos = state.positions
    last = _latest_position(pos)
    if B:
        # every index the kernels derive from a length or a position stays in bounds
        lo, hi = ((int(lens[0]),) * 2 if B == 1 else (int(lens.min()), int(lens.max())))
        if lo < 0 or hi > T:
            raise ValueError(f"cuda kernel: lengths must lie in [0, {T}]; got values from "
                             f"{lo} to {hi}")
        first = int(pos[0]) if B == 1 else int(pos.min())
        if first < 0 or last > _validate.MAX_POSITION:
            raise ValueError(f"cuda kernel: state positions must lie in "
                             f"[0, {_validate.MAX_POSITION}]; "
                             f"got values from {first} to {last}")
    if p.window is None and B and (int(pos[0]) + int(lens[0]) if B == 1
                                   else int((pos + lens).max())) > state.capacity:
        raise ValueError("cuda kernel: the state's capacity does not fit the new positions")
    want = d_attn is not None
    if want:
        ncol = int(p.window) if compact else last + T
        # dense: at least the columns written (a windowed state below its window runs the
        # unwindowed kernel into a buffer of `window` columns); compact: exactly `window`
        if (d_attn.shape[:2] != (B, T)
                or (d_attn.shape[2] != ncol if compact else d_attn.shape[2] < ncol)):
            raise ValueError(f"cuda kernel: attention buffer has shape {d_attn.shape}; "
                             f"expected {(B, T, ncol)}" + ("" if compact else
                                                            " or more columns"))
    else:
        d_attn = w["none"]
    hist, dev_keys, small = _device_state(state, w, p.dtype)
    h_arg, c_arg, pos_arg = small
    keys = w["none"] if dev_keys is None else dev_keys
    shared_bytes = 0 if global_scratch else nscratch * np.dtype(p.dtype).itemsize
    n_last = _attended_at_last_step(p, last, T) if B else 0

    keyed = p.score_code >= 3
    # a second set of rows: not where registers are short (the keyed kernel, and one
    # built for several blocks per SM, where the other blocks hide the loads' latency),
    # nor in the packed kernel (SB sequences per block, which never splits)
    prefetch = PF and not keyed and MB == 1 and SB == 1
    nblocks = -(-B // SB)     # a block per sequence (SB = 1), or per SB sequences

    def kernel_for(P):
        return _sequence_kernel(p.dtype, shuffles, global_scratch, G, P > 1, H, p.Ha, nt, MV,
                                MB, keyed, prefetch, SP and P > 1, SB)

    def args_for(P, nbx=1):
        parts = (_workspace(w, "parts", (2, B, P, H + 2), p.dtype) if P > 1
                 else w["none4"])
        scratch = (_workspace(w, "scratch", (nblocks * nbx, nscratch), p.dtype)
                   if global_scratch else w["none2"])
        return (w["wts"], *w["sizes"],
                p.score_code, p.recurrence_code, p.window or 0, inline, d_x, d_len, hist,
                keys, h_arg, c_arg, pos_arg, d_out_h, d_out_c, d_attn, want, compact, parts,
                P, scratch)

    # the calling thread's CUDA context, looked up once per call (each look-up costs
    # microseconds, paid per token by step); the simulator has none
    ctx = None if SIMULATOR else _current_context()
    P, nbx = (1, 1) if SB > 1 else _split_plan(
        B, n_last, kernel_for, args_for, nt, shared_bytes, step=inline,
        device=None if ctx is None else ctx.device)
    kern, args = kernel_for(P), args_for(P, nbx)
    if not inline:
        n = B * T * H
        threads = 256
        _configured(_project_kernel, (n + threads - 1) // threads, threads)(
            w["wts"], D, w["sizes"][2], d_x, d_len, d_out_h, d_out_c)
    if P > 1:
        try:
            _run(kern, (nbx, B), nt, shared_bytes, args, slot, ctx)
        except Exception as exc:   # the cooperative launch refused: nothing ran
            if split_parts() != "auto":
                raise
            _split_failed(exc)
            P, nbx = 1, 1
            kern, args = kernel_for(P), args_for(P, nbx)
    launcher = None
    if P == 1:
        launcher = _run(kern, nblocks, nt, shared_bytes, args, slot, ctx)
    if ctx is None:
        cuda.synchronize()
    else:
        ctx.synchronize()     # what cuda.synchronize() does, without a second look-up
    plan = _LAST_LAUNCH.plan = dict(parts=P, blocks_per_sequence=nbx, threads=nt,
                                    global_scratch=global_scratch, sequences_per_block=SB)
    if slot is not None and P == 1 and not state._scratch:
        if launcher is None and not _PREPARE_LAUNCHES:    # the simulator: as _run launches
            launcher = functools.partial(_launch_unprepared, kern, nblocks, nt, shared_bytes,
                                         args)
        if launcher is not None:    # on a GPU: once the launch is prepared
            run_ctx = ctx if ctx is not None or not _PREPARE_LAUNCHES else _current_context()
            slot["again"] = (p, plan_key, run_ctx, hist, small, launcher, plan)
    if state._scratch:
        # The mapped h/c/positions are the model's shared workspace: give the one-call state
        # its own copies while the workspace lock is held, so that a concurrent call on the
        # same model cannot overwrite them before the caller reads h_last / c_last.
        state._h, state._c, state._positions = (
            state._h.copy(), state._c.copy(), state._positions.copy())
    else:
        state._device_wrote(NAME)


def _launch_unprepared(kern, grid, block, shared, args):
    """``kern[grid, block, 0, shared](*args)`` through numba-cuda, as :func:`_run` launches
    where launches are not prepared."""
    _configured(kern, grid, block, shared)(*args)


def _launch_again(p, w, state, slot):
    """Repeat the latest launch :func:`_launch` made for the step ``slot``, where nothing it
    was made from has changed; ``True`` once it ran (and was waited for), ``False`` where
    it did nothing and the step takes :func:`_launch`.

    A ``step`` token's arguments are the same objects as its stream's previous token's (its
    x_t and active flags are copied into the slot's mapped buffers): what may change is
    checked here, and the rest of :func:`_launch` (the checks of sizes and buffers, the
    kernel's look-up, its arguments and their identities) is skipped. Checked: the kernel
    parameters ``p`` (the model picks them by the state's capacity), the settings of the
    launch plan (:func:`_settings_unchanged`), the calling thread's CUDA context, the state's
    capacity for the new positions, one block per sequence at the new positions
    (:func:`_auto_parts`; a split step takes :func:`_launch`), and the state's device
    buffers, which :func:`_device_state` brings up to date first (the history uploaded if
    the host wrote it; ``h``, ``c``, ``positions`` moved to new mapped memory if replaced).
    Only a state of the user's (not a one-call scratch state) has a slot.
    """
    again = slot.get("again")
    if again is None or _PREPARED_ERROR is not None:    # then every launch: numba-cuda's
        return False
    q, plan_key, ctx0, hist0, small0, launcher, plan = again
    if q is not p or not _settings_unchanged(plan_key):
        return False
    # the context a prepared launch was made in, looked up as _run does
    ctx = _current_context() if _PREPARE_LAUNCHES else None
    if ctx is not ctx0:
        return False
    pos = state.positions
    B = pos.shape[0]
    last = _latest_position(pos)
    if p.window is None and last + 1 > state.capacity:
        return False
    if B and ((last if B == 1 else int(pos.min())) < 0 or last > _validate.MAX_POSITION):
        return False               # _launch says what is wrong
    if plan["sequences_per_block"] == 1:   # the packed kernel never splits
        n_last = _attended_at_last_step(p, last, 1)
        parts = split_parts()     # checked when the plan was made: a key of equal settings
        if parts == "auto":
            parts = _auto_parts(B, n_last, True, None if SIMULATOR else ctx.device)
        if parts > 1:
            return False
    hist, _, small = _device_state(state, w, p.dtype)    # keys: made with the history
    if hist is not hist0 or small is not small0:
        return False
    launcher()
    if SIMULATOR:
        cuda.synchronize()
    else:
        ctx.synchronize()
    _LAST_LAUNCH.plan = plan
    state._device_wrote(NAME)
    return True


def forward(p, x, lengths, state, out_h, out_c, out_attn, num_threads=None,
            compact_attention=False):
    """Backend ``forward`` (see :mod:`fastsarnn.backends`): device arrays are used in
    place; host arrays go through the model's device workspace (no allocation once grown).
    """
    w = _device_weights(p)
    with w["lock"]:
        B, T, D = x.shape
        len_host, len_arg = _mapped_workspace(w, "lengths", (B,), np.int64)
        len_host[...] = lengths
        if is_device_array(out_h):   # device in, device out: write in place
            _launch(p, w, x, lengths, len_arg, state, out_h, out_c, out_attn, compact_attention,
                    False)
            return
        staging = _staging_plan(num_threads)     # settings checked before anything moves
        d_x = _workspace(w, "x", (B, T, D), p.dtype)
        _copy(w, staging, "upload", [(d_x, x)])
        d_h = _workspace(w, "out_h", out_h.shape, p.dtype)
        d_c = _workspace(w, "out_c", out_c.shape, p.dtype)
        d_attn = None
        if out_attn is not None:
            d_attn = _workspace(w, "attn", out_attn.shape, p.dtype)
            _fill_zero(d_attn)
        _launch(p, w, d_x, lengths, len_arg, state, d_h, d_c, d_attn, compact_attention, False)
        outs = [(d_h, out_h), (d_c, out_c)]
        if out_attn is not None:
            outs.append((d_attn, out_attn))
        _copy(w, staging, "download", outs)


def _staging_plan(num_threads):
    """``(chunk bytes, threads)`` of a call's staged copies, or None where
    ``_config.CUDA_STAGING_BYTES`` is 0 (the driver's own copies); the settings checked."""
    chunk = _cuda_staging.chunk_bytes()
    if not chunk:
        return None
    return chunk, _cuda_staging.threads(num_threads)


def _staging(w, chunk, threads):
    """The model's :class:`~fastsarnn.backends._cuda_staging.Staging` for ``(chunk,
    threads)``, made on first use. The workspace keeps those of the latest
    ``_STAGINGS_KEPT`` pairs used (the least recently used dropped before a new one is
    made), so that settings timed in turn allocate no pinned memory in a timed call."""
    kept = w["work"].setdefault("staging", {})
    got = kept.pop((chunk, threads), None)
    if got is None:
        while len(kept) >= _STAGINGS_KEPT:
            kept.pop(next(iter(kept)))
        got = _cuda_staging.Staging.pinned(chunk, threads)
    kept[(chunk, threads)] = got       # now the most recently used
    return got


#: Sets of staging buffers a model keeps (one per chunk size and thread count).
_STAGINGS_KEPT = 4


def _copy(w, plan, direction, pairs):
    """Copy ``(device, host)`` pairs: ``"upload"`` host to device, ``"download"`` back.
    Arrays larger than a chunk of the staging ``plan`` (:func:`_staging_plan`) go through
    the model's pinned staging buffers (made then); the others, and all where ``plan`` is
    None, by the driver's copies of pageable memory (an array of one chunk or less has no
    copy to overlap with)."""
    staged = []
    for dev, host in pairs:
        if plan is not None and host.nbytes > plan[0]:
            staged.append((dev, host))
        elif direction == "upload":
            dev.copy_to_device(host)
        else:
            dev.copy_to_host(host)
    if staged:
        chunk, threads = plan
        getattr(_staging(w, chunk, threads), direction)(staged, _cuda_staging.pool(threads))


def step(p, x, active, state, out_h, out_c, num_threads=None):
    """One launch per token: x_t and ``active`` go through mapped (pinned) host buffers
    owned by the state, the projection runs inside the kernel, h_t and c_t come back in
    the state's mapped ``h``/``c``."""
    w = _device_weights(p)
    with w["lock"]:
        B, D = x.shape
        stage = state._cache.get(NAME + ":step")
        if stage is None or stage["x"][0].shape != (B, 1, D):
            x_stage = _mapped((B, 1, D), p.dtype)
            stage = state._cache[NAME + ":step"] = {
                "x": x_stage, "x_t": x_stage[0].reshape(B, D),
                "len": _mapped((B,), np.int64),
                "h": cuda.device_array((B, 1, p.H), dtype=p.dtype),
                "c": cuda.device_array((B, 1, p.H), dtype=p.dtype)}
        np.copyto(stage["x_t"], x)       # the host view of the mapped x, as (B, D)
        np.copyto(stage["len"][0], active)
        if not _launch_again(p, w, state, stage):
            _launch(p, w, stage["x"][1], stage["len"][0], stage["len"][1], state, stage["h"],
                    stage["c"], None, False, True, slot=stage)
    if B == 1:      # a stream of one: a plain copy (the model zeroed an inactive row's)
        if active[0]:
            np.copyto(out_h, state.h)
            np.copyto(out_c, state.c)
    else:
        rows = active[:, None]
        np.copyto(out_h, state.h, where=rows)
        np.copyto(out_c, state.c, where=rows)
