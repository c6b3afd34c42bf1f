"""The host's side of the CUDA backend's staged copies, timed without a GPU.

``fastsarnn.backends._cuda_staging.Staging.download`` moves XL's outputs (h and c, 1024 x
512 x 256 float32 each: 1 GiB) into new NumPy arrays, as ``forward`` does. The pinned
slots are plain host buffers here (written once, so their pages are real memory), and the
DMA costs nothing: each chunk is "copied to the host" instantly and moves nothing. So this
times only what the host does. For each chunk size and thread count it prints three rows:

- ``no pipeline``: one thread copying the same chunks from the same slots in turn, into
  new arrays (the host's copies with the same memory footprint, without the pipeline);
- ``staged``: the pipeline with its host copies on the threads;
- ``pipeline alone``: the pipeline with host copies that do nothing (its own cost: the
  chunks' Python, the hand-offs).

Where the staged copy reads a slot from the cache, a real DMA may have left it in memory
instead. Usage: ``python benchmarks/cuda_staging_host.py [--threads 1 2 ...]
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


class _NoCopies:
    """A pool whose copies do nothing (done at once)."""

    def submit(self, fn, *args):
        f = concurrent.futures.Future()
        f.set_result(None)
        return f


def _best(fn, repeat, n):
    """Best time of ``fn(outs)`` over ``repeat`` runs, each into two new arrays of ``n``."""
    best = float("inf")
    for _ in range(repeat):
        outs = [np.zeros(n, np.float32) for _ in range(2)]
        t0 = time.perf_counter()
        fn(outs)
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    ap.add_argument("--chunk-mib", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    n = 1024 * 512 * 256
    nbytes = 2 * n * 4
    dev = [_DeviceStandIn(np.ones(n, np.float32)) for _ in range(2)]
    print(f"# {os.cpu_count()} cores; h and c of XL, {nbytes / 2**30:.0f} GiB, into new "
          f"arrays; ms, best of {args.repeat}")

    def report(label, seconds):
        print(f"{label}: {seconds * 1e3:.0f} ms ({nbytes / seconds / 1e9:.1f} GB/s)")

    for threads in args.threads:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            for mib in args.chunk_mib:
                chunk = mib << 20
                slots = [np.full(chunk, 1, np.uint8) for _ in range(threads + 2)]
                st = Staging(chunk, slots, _NoStream(), [_NoEvent() for _ in slots],
                             threads)
                step = chunk // 4

                def plain(outs):
                    i = 0
                    for o in outs:
                        for a in range(0, n, step):
                            b = min(a + step, n)
                            np.copyto(o[a:b], slots[i % len(slots)][:4 * (b - a)]
                                      .view(np.float32))
                            i += 1

                what = f"{threads} threads, chunks of {mib} MiB"
                report(f"no pipeline, {what}", _best(plain, args.repeat, n))
                report(f"staged, {what}", _best(
                    lambda outs: st.download(list(zip(dev, outs)), pool), args.repeat, n))
                report(f"pipeline alone, {what}", _best(
                    lambda outs: st.download(list(zip(dev, outs)), _NoCopies()),
                    args.repeat, n))


if __name__ == "__main__":
    main()
