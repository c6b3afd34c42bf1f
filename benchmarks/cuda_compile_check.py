"""Compile every CUDA kernel of fastsarnn to PTX for a GPU target, on a machine without a GPU.

The CUDA simulator runs the kernels as Python, so it never types or compiles them; this
script runs Numba's real CUDA compiler (type inference, NVVM) on every kernel variant
(float32/float64, shuffles/shared-memory warp reduce, shared/global scratch,
one or several blocks per sequence) and reports any float64 arithmetic left in the
float32 kernel, local memory in it (per-lane arrays must live in registers) and a grid
barrier anywhere but in the split kernel, that each kernel built as ``CUDA_DISK_CACHE =
True`` builds it gets numba-cuda's on-disk cache, and checks that a prepared launch (what
``step`` uses) hands cuda.core exactly what numba-cuda's own launch does; where ``ptxas`` is on
the PATH (a CUDA toolkit), it also assembles each kernel and checks that its registers fit
a block of the launch bound (65536 per block) and that the float32 kernels a GPU runs by
default (shuffles, shared scratch) spill nothing; other spills are reported, as are those
of that default kernel built for two blocks per SM (``CUDA_MIN_BLOCKS_PER_SM = 2``), whose
launch bound and register cap it checks, and the packed kernel (4 and 8 sequences per
block, ``CUDA_SEQUENCES_PER_BLOCK``) as a GPU runs it, which must not spill in float32
either (more sequences per block do spill at H = 256). It needs NVVM,
which the CUDA wheels bring, for example (about 320 MB, into a scratch folder):

    pip install --target /tmp/cu13 --no-deps nvidia-nvvm==13.5.37 nvidia-cuda-nvrtc==13.5.37 \
        nvidia-cuda-runtime==13.5.37
    LD_LIBRARY_PATH=/tmp/cu13/nvidia/cu13/lib PYTHONPATH=/tmp/cu13 \
        python benchmarks/cuda_compile_check.py [--cc 9.0]
"""

import argparse
import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time


def _ptxas_usage(ptxas, ptx, cc):
    """(registers per thread, bytes spilled) that ptxas reports for the PTX's kernel
    (compiled as relocatable code, ``-c``: the split kernel calls into cudadevrt)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        for attempt in range(2):
            with open(src, "w") as f:
                f.write(ptx)
            out = subprocess.run([ptxas, f"-arch=sm_{cc[0]}{cc[1]}", "-v", "-c", src, "-o",
                                  os.path.join(tmp, "kernel.cubin")],
                                 capture_output=True, text=True)
            info = out.stderr + out.stdout
            older = re.search(r"current version is '([\d.]+)'", info)
            if out.returncode == 0 or not older or attempt:
                break
            # an older ptxas than the NVVM that wrote the PTX: same instructions, lower .version
            ptx = re.sub(r"^\.version [\d.]+", f".version {older.group(1)}", ptx, flags=re.M)
        if out.returncode != 0:
            raise RuntimeError(f"ptxas failed: {info.strip()[-500:]}")
    used = re.findall(r"Used (\d+) registers", info)
    if not used:
        raise RuntimeError(f"no register count in ptxas -v output: {info.strip()[-500:]}")
    regs = max(int(v) for v in used)
    spill = sum(int(v) for v in re.findall(r"(\d+) bytes spill (?:stores|loads)", info))
    return regs, spill


def _compile(cuda, kern, sig, cc, bound, name):
    """``(PTX, "compiled in ...")`` of ``kern`` for ``sig`` and the launch bound ``bound``;
    ``(None, "")`` where it fails, said as a FAIL line."""
    t0 = time.perf_counter()
    try:
        ptx, _ = cuda.compile_ptx(kern.py_func, sig, cc=cc, launch_bounds=bound)
    except Exception as exc:
        print(f"FAIL {name}: {type(exc).__name__}: {exc}")
        return None, ""
    return ptx, f"compiled in {time.perf_counter() - t0:.1f} s"


def _float64_and_local(ptx):
    """``(f64, extra, local)``: the float64 instructions of the PTX, those of them other
    than the conversions of the one-off constant 1/sqrt(H), and its local-memory accesses
    (per-lane arrays of a float32 kernel compiled for its sizes belong in registers)."""
    f64 = [ln.split()[0] for ln in ptx.splitlines()
           if re.match(r"\s*[a-z]", ln) and ".f64" in ln.split()[0]]
    extra = [op for op in f64 if not op.startswith(("cvt.", "sqrt.", "rcp."))]
    return f64, extra, len(re.findall(r"\b(?:ld|st)\.local", ptx))


def _packed(ptr, params):
    """The bytes of each kernel parameter in a packed parameter array (``void**``): a
    ctypes value's size, 1 byte of a bool, 8 of an int (numba-cuda passes both kinds)."""
    import ctypes
    slots = ctypes.cast(ptr, ctypes.POINTER(ctypes.c_void_p))
    return [ctypes.string_at(slots[i], 1 if type(v) is bool else
                             8 if type(v) is int else ctypes.sizeof(v))
            for i, v in enumerate(params)]


def _check_prepared_launch(be, cc, sizes):
    """A prepared launch (``backends.cuda._prepare``, what ``step`` uses on a GPU after its
    second token) must launch exactly what numba-cuda's own launch does: the same stream,
    grid, block, shared memory, kernel and parameters. Both run here with cuda.core's
    ``launch``/``LaunchConfig`` and the driver's ``cuLaunchKernel`` recording instead of
    reaching a driver, on stand-in device arrays (``cuda_launch_cost.py``): the split
    (cooperative) float32 kernel through cuda.core's launch, the one-block kernel straight
    through ``cuLaunchKernel``, whose packed parameters must equal, byte for byte, what
    cuda.core packs from numba-cuda's, and, once a direct launch failed in the process,
    through cuda.core's launch. Returns the failures."""
    import types as pytypes
    import cuda.core
    from cuda.bindings import driver
    import numba.cuda.dispatcher as dispatcher
    from numba.cuda import codegen
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from cuda_launch_cost import _stand_ins

    class Context:     # what the code library asks for its target
        device = pytypes.SimpleNamespace(compute_capability=cc, id=0)

    class Config:
        def __init__(self, **fields):
            self.fields = fields

    calls, direct = [], []
    codegen.devices = pytypes.SimpleNamespace(get_context=lambda *a: Context())
    dispatcher._Kernel.bind = lambda self: None        # linking needs a driver
    dispatcher.launch = cuda.core.launch = lambda *a: calls.append(a)
    dispatcher.LaunchConfig = cuda.core.LaunchConfig = Config
    driver.cuLaunchKernel = lambda *a: direct.append(a) or (driver.CUresult.CUDA_SUCCESS,)
    kernel = pytypes.SimpleNamespace(handle=0x1234)    # int(handle): the driver's CUkernel

    def value(v):      # ctypes scalars compare by identity
        return (type(v).__name__, v.value) if hasattr(v, "_type_") else v

    failures = 0
    nt, hpl, qpl = sizes
    for split, grid in ((False, 2), (True, (2, 2))):
        kern = be._build_sequence_kernel("float32", True, False,
                                         be.rows_in_flight(be.rows_per_warp(), hpl, "float32"),
                                         split, nt, hpl, qpl)
        sig = be.sequence_signature("float32")
        overload = kern.compile(sig)
        overload._codelibrary.get_cufunc = lambda: pytypes.SimpleNamespace(kernel=kernel)
        args = tuple(v for _, v in _stand_ins(sig, {1: (128,), 2: (2, 128), 3: (2, 1, 128),
                                                    4: (2, 2, 2, 130)}))
        calls.clear()
        direct.clear()
        kern[grid, nt, 0, 1024](*args)                      # numba-cuda's launch
        launcher = be._prepare(kern, grid, nt, 1024, args)  # the prepared one
        launcher()
        (s1, c1, k1, *p1) = calls[0]
        if split:
            (s2, c2, k2, *p2), = calls[1:]
            same = (not direct and s1.handle == s2.handle and c1.fields == c2.fields
                    and k1 == k2 and [value(v) for v in p1] == [value(v) for v in p2])
            how = "cuda.core's launch"
        else:
            (f, gx, gy, gz, bx, by, bz, shmem, stream, ptr, extra), = direct
            reference = be._param_holder(p1)          # what cuda.core would pack
            same = (len(calls) == 1 and int(f) == int(k1.handle)
                    and (gx, gy, gz) == tuple(c1.fields["grid"])
                    and (bx, by, bz) == tuple(c1.fields["block"])
                    and shmem == c1.fields["shmem_size"] and int(stream) == int(s1.handle)
                    and extra == 0 and not c1.fields.get("is_cooperative", False)
                    and len(launcher.params) == len(p1)     # before reading that many
                    and _packed(ptr, p1) == _packed(reference.ptr, p1))
            # once a direct launch failed in the process, prepared launches use cuda.core
            be._DIRECT_ERROR = "a direct launch failed (simulated)"
            calls.clear()
            be._prepare(kern, grid, nt, 1024, args)()
            be._DIRECT_ERROR = None
            same = same and len(calls) == 1 and len(direct) == 1
            how = "cuLaunchKernel, parameters packed once"
        failures += not same
        print(f"{'ok  ' if same else 'FAIL'} prepared launch, split={split} ({how}): "
              f"{len(p1)} parameters, config {c1.fields}"
              + ("" if same else f"; numba-cuda: {c1.fields} {p1}, prepared: {calls[1:]} "
                                 f"{direct}"))
    return failures


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cc", default="9.0", help="compute capability to compile for")
    ap.add_argument("--sizes", type=int, nargs=3, default=None,
                    metavar=("NT", "HPL", "QPL"), help="the sizes a kernel is compiled for: "
                    "threads per block, a lane's share of h and of the query (default: "
                    "_config.CUDA_BLOCK_SIZE, and the shares of H = 256)")
    args = ap.parse_args(argv)
    cc = tuple(int(v) for v in args.cc.split("."))

    from numba import cuda, types as t
    import numba.cuda.dispatcher as dispatcher
    from fastsarnn.backends import cuda as be

    class TargetDevice:   # device functions ask the current device for its target
        compute_capability = cc

    dispatcher.get_current_device = lambda: TargetDevice()
    if args.sizes is None:
        nt = be._config.CUDA_BLOCK_SIZE
        share = -(-256 // min(nt, be.WARP))
        args.sizes = (nt, share, share)
    nt = args.sizes[0]
    ptxas = shutil.which("ptxas")
    print(f"# sm_{cc[0]}{cc[1]}, block {nt} threads (launch bound), shares {args.sizes[1:]}; "
          f"ptxas: {ptxas or 'not found (registers and spills unchecked)'}")
    failures = 0
    for dtype in ("float32", "float64"):
        f = t.float32 if dtype == "float32" else t.float64
        A1, A3 = t.Array(f, 1, "C"), t.Array(f, 3, "C")
        I1 = t.Array(t.int64, 1, "C")
        seq_sig = be.sequence_signature(dtype)
        # every flavour as the keyed kernel (kq, additive: the most registers); what a GPU
        # runs (shuffles, shared scratch) also as the kernel of the scores without keys,
        # which loads a round's rows during the round before unless CUDA_PREFETCH_ROWS is
        # False (as _launch chooses)
        # and that split kernel with the blocks sharing out h_t's products
        # (CUDA_SPLIT_PRODUCTS)
        variants = [(*v, True, False) for v in itertools.product((True, False), (False, True),
                                                                 (False, True))]
        variants += [(True, False, split, False, False) for split in (False, True)]
        variants += [(True, False, True, False, True)]
        for shuffles, global_scratch, split, keyed, products in variants:
            prefetch = be.prefetch_rows() and not keyed
            name = (f"sequence {dtype} shuffles={shuffles} global_scratch={global_scratch}"
                    f" split={split} keyed={keyed} prefetch={prefetch}"
                    + (" split_products=True" if products else ""))
            rows = be.rows_in_flight(be.rows_per_warp(), args.sizes[1], dtype)   # as launched
            kern = be._build_sequence_kernel(dtype, shuffles, global_scratch, rows, split,
                                             *args.sizes, keyed=keyed, prefetch=prefetch,
                                             split_products=products, cache=True)
            bound = kern.targetoptions.get("launch_bounds")
            if bound != nt:     # the kernel itself must carry it (compile_ptx is told below)
                failures += 1
                print(f"FAIL {name}: the kernel's launch bound is {bound!r}, not {nt}")
            # built as CUDA_DISK_CACHE = True builds it: numba-cuda's on-disk cache takes
            # the kernel with its options (a NullCache where it refuses)
            if type(getattr(kern, "_cache", None)).__name__ != "CUDACache":
                failures += 1
                print(f"FAIL {name}: no on-disk cache for a kernel built with cache=True")
            ptx, timing = _compile(cuda, kern, seq_sig, cc, nt, name)
            if ptx is None:
                failures += 1
                continue
            f64, extra, local = _float64_and_local(ptx)
            # only the split kernel may synchronise the grid (a cooperative launch)
            grid_sync = "cudaCG" in ptx
            # its call sites: one grid barrier per step, a second where the blocks share
            # out h_t's products
            grid_calls = len(re.findall(r"\bcudaCGSynchronize\s*,", ptx))
            # per-lane arrays (scores, slots, accumulator, query) in registers: a float32
            # kernel compiled for its sizes needs no local memory (float64 ones may, past
            # LLVM's unrolling budget: reported)
            ok = dtype == "float64" or (not extra and not local)
            ok = ok and grid_sync == split and grid_calls == (2 if products else int(split))
            regs = ""
            if ptxas:   # what the GPU will run: registers within the block's budget, spills
                t0 = time.perf_counter()
                nregs, spill = _ptxas_usage(ptxas, ptx, cc)
                timing += f", ptxas {time.perf_counter() - t0:.1f} s"
                fits = nregs * nt <= 65536
                # what a GPU runs for float32 (shuffles, shared scratch) must not spill;
                # the rest (the simulator's reduce, models too wide for shared memory,
                # float64) is reported
                gpu_default = dtype == "float32" and shuffles and not global_scratch
                ok = ok and fits and not (gpu_default and spill)
                regs = f", {nregs} registers x {nt} threads, {spill} bytes spilled"
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {name}: {len(ptx)} bytes of PTX, "
                  f"shfl={'shfl.sync' in ptx}, grid barriers={grid_calls}, local memory "
                  f"accesses={local}{regs}, f64 ops={sorted(set(f64))[:4]}; {timing}")
        if dtype == "float32" and ptxas:
            # CUDA_MIN_BLOCKS_PER_SM = 2: the kernel a GPU runs by default, capped for two
            # blocks per SM (its spills are reported: the setting trades them for occupancy)
            rows = be.rows_in_flight(be.rows_per_warp(), args.sizes[1], dtype)
            for keyed in (True, False):     # no prefetched rows at MB > 1 (_launch)
                kern = be._build_sequence_kernel(dtype, True, False, rows, False, *args.sizes,
                                                 MB=2, keyed=keyed, prefetch=False)
                bound = kern.targetoptions.get("launch_bounds")
                ptx, _ = cuda.compile_ptx(kern.py_func, seq_sig, cc=cc,
                                          launch_bounds=(nt, 2))
                nregs, spill = _ptxas_usage(ptxas, ptx, cc)
                ok = bound == (nt, 2) and nregs * nt * 2 <= 65536
                failures += not ok
                print(f"{'ok  ' if ok else 'FAIL'} sequence {dtype} keyed={keyed} "
                      f"prefetch=False, two blocks "
                      f"per SM: launch bound {bound}, {nregs} registers x {nt} threads x 2 "
                      f"blocks, {spill} bytes spilled")
        # the packed kernel (CUDA_SEQUENCES_PER_BLOCK): SB sequences per block, a warp of
        # 32 lanes each, as a GPU runs it (shuffles, shared scratch), keyed or not; the
        # float32 one must keep its per-lane and per-sequence arrays in registers
        hpl, qpl = args.sizes[1:]
        rows = be.rows_in_flight(be.rows_per_warp(), hpl, dtype)
        for SB, keyed in itertools.product((4, 8), (False, True)):
            pnt = be.WARP * SB
            name = f"packed {dtype} {SB} sequences per block keyed={keyed}"
            kern = be._build_sequence_kernel(dtype, True, False, rows, False, pnt, hpl, qpl,
                                             keyed=keyed, prefetch=False, packed=SB)
            bound = kern.targetoptions.get("launch_bounds")
            ptx, timing = _compile(cuda, kern, seq_sig, cc, pnt, name)
            if ptx is None:
                failures += 1
                continue
            f64, extra, local = _float64_and_local(ptx)
            ok = bound == pnt and "cudaCG" not in ptx and (
                dtype == "float64" or (not extra and not local))
            regs = ""
            if ptxas:
                nregs, spill = _ptxas_usage(ptxas, ptx, cc)
                ok = ok and nregs * pnt <= 65536 and (dtype == "float64" or not spill)
                regs = f", {nregs} registers x {pnt} threads, {spill} bytes spilled"
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {name}: launch bound {bound}, local memory "
                  f"accesses={local}{regs}, f64 ops={sorted(set(f64))[:4]}; {timing}")
        small = ((be._project_kernel, (A1, t.int64, t.int64, A3, I1, A3, A3)),
                 (be._fill_zero_kernel, (A1,)), (be._nonfinite_kernel, (A3, I1, I1)))
        for kern, sig in small:
            cuda.compile_ptx(kern.py_func, sig, cc=cc)
            print(f"ok   {kern.py_func.__name__} {dtype}")
    cuda.compile_ptx(be._probe_kernel.py_func, (t.Array(t.int64, 1, "C"),), cc=cc)
    print("ok   _probe_kernel")
    failures += _check_prepared_launch(be, cc, args.sizes)
    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
