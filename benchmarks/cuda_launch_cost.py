"""Host-side cost of one launch of the CUDA sequence kernel, measured without a GPU.

Before a launch reaches the driver, numba-cuda turns every argument into kernel parameters
(``_Kernel._prepare_args``: an array becomes 5 + 2 * ndim of them) and cuda.core packs
those into the driver's parameter buffer (``ParamHolder``). Both run on the CPU, per
launch; ``model.step`` pays them once per token. This script runs that same numba-cuda and
cuda.core code on stand-in device arrays (shaped like the step's: B=1, H=128, one token;
their device pointer is never dereferenced) for the kernel's real argument list
(:func:`fastsarnn.backends.cuda.sequence_signature`) and, for comparison, for the list as
it was before the weights were packed (8 weight arrays instead of 1 buffer and 3 sizes),
and for a prepared launch (``backends.cuda._run``: a key of the arguments replaces the
marshalling from a step stream's third token on; the one-block kernel's then goes to the
driver's ``cuLaunchKernel`` with the parameters packed once, so without a ParamHolder per
launch).

    python benchmarks/cuda_launch_cost.py [--runs 20000]

It needs numba-cuda (its cuda.core dependency brings ParamHolder), no GPU and no CUDA
toolkit. The driver's own launch and the synchronisation come on top (GPU only).
"""

import argparse
import time

import numpy as np


def _stand_ins(signature, sizes):
    """(numba type, value) pairs for a signature: device arrays on a fake pointer, ints."""
    from numba import types as t
    from numba.cuda.cudadrv import devicearray, driver

    pairs = []
    for ty in signature:
        if isinstance(ty, t.Array):
            dt = np.dtype(str(ty.dtype))
            shape = sizes[ty.ndim]
            strides = np.empty(shape, dt).strides
            mem = driver.MemoryPointer(None, 0x100000, size=int(np.prod(shape)) * dt.itemsize)
            pairs.append((ty, devicearray.DeviceNDArray(shape, strides, dt, gpu_data=mem)))
        elif ty == t.boolean:
            pairs.append((ty, True))
        else:
            pairs.append((ty, 3))
    return pairs


def _per_launch_us(pairs, runs):
    """(params, marshalling us, ParamHolder us) per launch, best of five batches."""
    import numba.cuda.dispatcher as dispatcher
    try:
        from cuda.core._kernel_arg_handler import ParamHolder
    except ImportError:       # older cuda.core
        from cuda.core.experimental._kernel_arg_handler import ParamHolder

    kernel = dispatcher._Kernel.__new__(dispatcher._Kernel)   # only _prepare_args is used
    kernel.extensions = []

    def marshal():
        params = []
        for ty, val in pairs:
            kernel._prepare_args(ty, val, 0, [], params)
        return params

    params = marshal()
    best_m = best_p = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(runs):
            marshal()
        t1 = time.perf_counter()
        for _ in range(runs):
            ParamHolder(params)
        t2 = time.perf_counter()
        best_m = min(best_m, (t1 - t0) / runs * 1e6)
        best_p = min(best_p, (t2 - t1) / runs * 1e6)
    return len(params), best_m, best_p


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20000, help="launches per timed batch")
    args = ap.parse_args(argv)

    from numba import types as t
    from fastsarnn import _sysinfo
    from fastsarnn.backends import cuda as be

    sizes = {1: (128,), 2: (1, 128), 3: (1, 1, 128), 4: (1, 1, 1, 1)}   # step: B=1, T=1
    now = be.sequence_signature("float32")
    A1, A2 = t.Array(t.float32, 1, "C"), t.Array(t.float32, 2, "C")
    weights_apart = (A2, A2, A1, A2, A2, A2, A2, A1)    # W_x, W_c, b, W_h, W_s, W_k, W_q, v
    before = weights_apart + now[4:]
    cpu = _sysinfo.cpu_info()
    print(f"# {cpu['model']} ({cpu['cores']} cores, {' '.join(cpu['simd'])}); numba-cuda's "
          f"_prepare_args and cuda.core's ParamHolder on stand-in device arrays, best of 5 x "
          f"{args.runs} launches")
    print(f"{'argument list':<34} {'arrays':>6} {'params':>6} {'marshal us':>10} "
          f"{'ParamHolder us':>14} {'total us':>8}")
    for label, sig in (("before (8 weight arrays)", before), ("now (packed weights)", now)):
        pairs = _stand_ins(sig, sizes)
        n_arrays = sum(isinstance(ty, t.Array) for ty, _ in pairs)
        n_params, marshal_us, holder_us = _per_launch_us(pairs, args.runs)
        print(f"{label:<34} {n_arrays:>6} {n_params:>6} {marshal_us:>10.1f} "
              f"{holder_us:>14.1f} {marshal_us + holder_us:>8.1f}")
    # a prepared launch (step, from its third token): the key of the arguments instead of
    # the marshalling (backends.cuda._run), then the same ParamHolder
    values = tuple(v for _, v in pairs)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(args.runs):
            be._launch_key(be, 2, 256, 0, values)
        best = min(best, (time.perf_counter() - t0) / args.runs * 1e6)
    print(f"{'now, prepared, through cuda.core':<34} {n_arrays:>6} {n_params:>6} "
          f"{best:>10.1f} {holder_us:>14.1f} {best + holder_us:>8.1f}")
    # the one-block kernel's prepared launch goes to cuLaunchKernel with the parameters
    # packed once (backends.cuda._DirectLaunch): no ParamHolder per launch (the driver
    # binding's own cost, which needs a driver, is not in these figures)
    print(f"{'now, prepared, direct (one block)':<34} {n_arrays:>6} {n_params:>6} "
          f"{best:>10.1f} {0.0:>14.1f} {best:>8.1f}")


if __name__ == "__main__":
    main()
