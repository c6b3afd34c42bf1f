"""Warp shuffles on the CUDA simulator, so that the kernels' GPU reduce path runs in CI.

The simulator has no warp intrinsics, so on it the backend reduces across a warp through
shared memory, and the shuffle version that a GPU runs (and the smaller scratch layout
that goes with it) would run nowhere but on a GPU. :func:`warp_shuffles` gives the
simulator's ``cuda`` module a ``shfl_xor_sync`` for one test, with the semantics a GPU
documents where the kernels rely on them, and stricter where a GPU is lenient or leaves the
result undefined:

* lane ``thread_id % 32`` of warp ``thread_id // 32`` gets the ``value`` of lane
  ``lane ^ lane_mask``;
* every lane named in ``mask`` must call it (a lane that does not arrive within
  ``timeout`` seconds fails the launch instead of hanging it), with the same ``mask``;
* the calling lane, and the lane it reads, must be in ``mask`` and in the block (a GPU
  returns the caller's own value for a source lane past the warp, and lets lanes that
  have exited be named in ``mask``: refused here).

It relies on the simulator's internals (numba-cuda's ``numba.cuda.simulator.kernelapi``),
checked on entry.
"""

import threading

WARP = 32


def warp_shuffles(monkeypatch, timeout=60.0):
    """Patch the CUDA simulator (for the rest of the test) with a ``shfl_xor_sync``;
    returns a dict counting the shuffles made (``"calls"``)."""
    from numba.cuda.simulator import kernelapi as KA

    assert hasattr(KA, "FakeCUDAModule"), "numba-cuda's simulator moved: update this helper"
    assert not hasattr(KA.FakeCUDAModule, "shfl_xor_sync"), \
        "the simulator has warp shuffles of its own now: use them"
    lock = threading.Lock()
    rendezvous = {}     # (launch's module, block, warp, mask) -> [barrier, {lane: value}]
    stats = {"calls": 0}

    def shfl_xor_sync(self, mask, value, lane_mask):
        t = threading.current_thread()
        nthreads = self.blockDim.x * self.blockDim.y * self.blockDim.z
        lane, warp = t.thread_id % WARP, t.thread_id // WARP
        in_block = min(WARP, nthreads - warp * WARP)   # lanes this warp has
        mask = int(mask)
        if not mask >> lane & 1:
            raise AssertionError(f"shfl_xor_sync: lane {lane} is not in its mask {mask:#x}")
        if mask >> in_block:
            raise AssertionError(f"shfl_xor_sync: mask {mask:#x} names lanes past the "
                                 f"{in_block} of this warp")
        src = lane ^ int(lane_mask)
        if not (src < WARP and mask >> src & 1):
            raise AssertionError(f"shfl_xor_sync: lane {lane} reads lane {src}, which is not "
                                 f"in the mask {mask:#x} (undefined on a GPU)")
        key = (id(self), tuple(t.blockIdx), warp, mask)     # self: this launch's module
        with lock:
            stats["calls"] += 1
            if key not in rendezvous:
                rendezvous[key] = [threading.Barrier(bin(mask).count("1"), timeout=timeout), {}]
            barrier, posted = rendezvous[key]
        posted[lane] = value
        try:
            barrier.wait()          # every lane of the mask has posted its value
            got = posted[src]
            barrier.wait()          # ... and read its source: the slots may be reused
        except threading.BrokenBarrierError:
            with lock:
                rendezvous.pop(key, None)       # a later launch starts afresh
            raise AssertionError(f"shfl_xor_sync: not every lane of mask {mask:#x} of warp "
                                 f"{warp}, block {tuple(t.blockIdx)} reached the shuffle "
                                 f"within {timeout} s (divergent lanes)") from None
        return got

    monkeypatch.setattr(KA.FakeCUDAModule, "shfl_xor_sync", shfl_xor_sync, raising=False)
    return stats
