"""Run a CUDA-simulator launch with all its blocks at once (tests of the split kernel).

The simulator runs a launch one block after another, shares one dynamic shared-memory
buffer among them and implements the grid barrier as the block's barrier, since it runs
cooperative grids of one block only. That cannot run a kernel whose blocks wait for one
another. :func:`concurrent_blocks` patches three pieces of the simulator for one test:

* ``BlockManager.run`` starts each block in its own Python thread and, at the launch's last
  block, waits for all of them (re-raising the first error);
* the grid barrier (``cuda.cg.this_grid().sync()``) waits for every thread of every block;
  a kernel whose threads reach it unequally times out instead of hanging;
* shared memory (``cuda.shared.array``) is the block's own, filled with NaN (a GPU leaves
  it uninitialised: a read before a write shows).

So the blocks of a sequence run concurrently, exchange partials through global memory and
meet at a real grid barrier, as on a GPU. It relies on the simulator's internals
(numba-cuda's ``numba.cuda.simulator.kernel`` and ``kernelapi``), checked on entry.
"""

import sys
import threading

import numpy as np


def concurrent_blocks(monkeypatch, timeout=120.0):
    """Patch the CUDA simulator (for the rest of the test) to run launches' blocks at once.
    Returns a dict whose ``"grid_barriers"`` counts the grid barriers the launches of
    several blocks have passed (each once, however many threads met there)."""
    from numba.cuda.simulator import kernel as K, kernelapi as KA

    for owner, name in ((K, "BlockManager"), (KA, "GridGroup"), (KA, "FakeCUDAShared")):
        assert hasattr(owner, name), f"numba-cuda's simulator has no {name}: update this helper"
    assert not getattr(K.FakeCUDAKernel.__call__, "race_check", False), \
        "install concurrent_blocks before race_check (it wraps the grid barrier and memory)"
    base = K.BlockManager
    launch = {"threads": [], "errors": [], "barrier": None}
    counts = {"grid_barriers": 0}
    lock = threading.Lock()

    class ConcurrentBlockManager(base):
        def run(self, grid_point, *args):
            grid = tuple(int(n) for n in self._grid_dim)
            if int(np.prod(grid)) == 1:
                return base.run(self, grid_point, *args)
            if not launch["threads"]:       # the launch's first block
                nthreads = int(np.prod(grid)) * int(np.prod(self._block_dim))
                launch["barrier"] = threading.Barrier(nthreads, timeout=timeout)
                launch["errors"] = []

            def block():
                try:
                    base.run(self, grid_point, *args)
                except BaseException as exc:    # noqa: B036 (reported after the join)
                    launch["errors"].append(exc)
                    launch["barrier"].abort()

            t = threading.Thread(target=block, daemon=True)
            t.start()
            launch["threads"].append(t)
            if tuple(int(v) for v in grid_point) == tuple(n - 1 for n in grid):
                for t in launch["threads"]:
                    t.join()
                launch["threads"], launch["barrier"] = [], None
                if launch["errors"]:
                    raise launch["errors"][0]

    grid_sync = KA.GridGroup.sync

    def sync(self):
        barrier = launch["barrier"]
        if barrier is None:                 # a one-block launch: the block's barrier
            return grid_sync(self)
        if barrier.wait() == 0:             # one thread of those released
            with lock:
                counts["grid_barriers"] += 1

    shared_array = KA.FakeCUDAShared.array

    def array(self, shape, dtype, alignment=None):
        if shape == 0 and launch["barrier"] is None:    # one block at a time
            return shared_array(self, shape, dtype, alignment)
        with lock:
            store = self.__dict__.setdefault("_per_block", {})
        return block_shared_array(store, lock, shared_array, self, shape, dtype, alignment,
                                  sys._getframe(1))

    monkeypatch.setattr(K, "BlockManager", ConcurrentBlockManager)
    monkeypatch.setattr(KA.GridGroup, "sync", sync)
    monkeypatch.setattr(KA.FakeCUDAShared, "array", array)
    return counts


def block_shared_array(store, lock, shared_array, shared, shape, dtype, alignment, caller):
    """The calling block's own shared array, NaN-filled where it can be (a GPU's is
    uninitialised), kept in ``store`` per block and, for a static array, per line that
    declares it (``caller``, the kernel's frame: the simulator keys static arrays by the
    line that calls it, which a wrapper would make one line for all)."""
    if shape == 0:
        like = shared_array(shared, shape, dtype, alignment)    # its dtype and size checks
        key = (tuple(threading.current_thread().blockIdx), None)
    else:
        try:
            dt = np.dtype(dtype)
        except TypeError:       # a Numba type: float64, int32, ...
            dt = np.dtype(str(dtype))
        like = np.empty(shape, dt)
        key = (tuple(threading.current_thread().blockIdx),
               caller.f_code.co_filename, caller.f_lineno)
    with lock:
        if key not in store:
            store[key] = (np.full_like(like, np.nan) if like.dtype.kind in "fc"
                          else np.zeros_like(like))
        return store[key]
