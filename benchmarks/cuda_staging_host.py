"""The host's side of the CUDA backend's staged copies, timed without a GPU.

``fastsarnn.backends._cuda_staging.Staging.download`` moves XL's outputs (h and c, 1024 x
512 x 256 float32 each: 1 GiB) into new NumPy arrays, as ``forward`` does. The pinned
slots are plain host buffers here (written once, so their pages are real memory), and the
DMA costs nothing: each chunk is "copied to the host" instantly and moves nothing. So this
times only what the host does: the chunking in Python, and the host threads copying from
the slots into the new arrays (with their page faults). Where the staged copy reads a slot
from the cache, a real DMA may have left it in memory instead. For comparison, it also
times a copy of the same bytes on one thread from a 4 MiB buffer into the new arrays:
about the host's share of the driver's pageable copy, which goes through small pinned
buffers of its own on one thread. Usage: ``python benchmarks/cuda_staging_host.py [--threads 1 2 ...]
[--chunk-mib 1 4 16 ...] [--repeat 3]``.
"""

import argparse
import concurrent.futures
import os
import time

import numpy as np

from fastsarnn.backends._cuda_staging import Staging


class _NoStream:
    def synchronize(self):
        pass


class _NoEvent:
    def record(self, stream):
        pass

    def synchronize(self):
        pass


class _DeviceStandIn:
    """A 'device' array whose DMA to the host takes no time (and moves nothing)."""

    def __init__(self, arr):
        self.arr, self.shape, self.dtype = arr, arr.shape, arr.dtype

    def reshape(self, n):
        return _DeviceStandIn(self.arr.reshape(n))

    def __getitem__(self, idx):
        return _DeviceStandIn(self.arr[idx])

    def copy_to_host(self, ary, stream):
        pass


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    ap.add_argument("--chunk-mib", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    n = 1024 * 512 * 256
    nbytes = 2 * n * 4
    dev = [_DeviceStandIn(np.ones(n, np.float32)) for _ in range(2)]
    print(f"# {os.cpu_count()} cores; h and c of XL, {nbytes / 2**30:.0f} GiB, into new arrays")
    bounce = np.full(1 << 20, 1.0, np.float32)       # 4 MiB
    best = float("inf")
    for _ in range(args.repeat):
        outs = [np.zeros(n, np.float32) for _ in range(2)]
        t0 = time.perf_counter()
        for o in outs:
            for a in range(0, n, bounce.size):
                np.copyto(o[a:a + bounce.size], bounce)
        best = min(best, time.perf_counter() - t0)
    print(f"one thread from a 4 MiB buffer: {best * 1e3:.0f} ms "
          f"({nbytes / best / 1e9:.1f} GB/s)")
    for threads in args.threads:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            for mib in args.chunk_mib:
                chunk = mib << 20
                slots = threads + 2         # as the backend makes them
                st = Staging(chunk, [np.full(chunk, 1, np.uint8) for _ in range(slots)],
                             _NoStream(), [_NoEvent() for _ in range(slots)])
                best = float("inf")
                for _ in range(args.repeat):
                    outs = [np.zeros(n, np.float32) for _ in range(2)]
                    t0 = time.perf_counter()
                    st.download(list(zip(dev, outs)), pool)
                    best = min(best, time.perf_counter() - t0)
                print(f"staged, {threads} threads, chunks of {mib} MiB: {best * 1e3:.0f} ms "
                      f"({nbytes / best / 1e9:.1f} GB/s)")


if __name__ == "__main__":
    main()
