"""A race check for CUDA-simulator launches: what ``compute-sanitizer --tool racecheck``
does on a GPU, for shared and global memory, on the simulator CI runs.

The simulator runs a Python thread per CUDA thread, and Python switches threads rarely, so
a kernel that reads what another thread writes without a barrier between them mostly gets
the value it wanted there and a wrong one on a GPU. :func:`race_check` records, for one
test, every element access the simulator's kernels make to shared memory
(``cuda.shared.array``) and to array arguments, with the thread that made it and the
barriers that thread had passed, and reports

* two accesses to one element by two threads that no barrier orders (threads of one block
  between the same two ``syncthreads``, or threads of two blocks between the same two grid
  barriers, ``cuda.cg.this_grid().sync()``; a launch without one has all its blocks
  unordered) whose outcome can depend on their order: two writes of different values; a
  write and a read, unless the read sees the same value either way (the write stored
  what the element held and the read saw it, or the reader's block had stored that value
  before: the split kernel's blocks each write the same history row);
* a read of shared memory that nothing in the block wrote before it in the launch (a GPU
  leaves shared memory uninitialised; here each block gets its own, filled with NaN).

Not recorded: atomics (``cuda.atomic.*``), writes of more than one element at once,
local arrays (a thread's own). An element is the address of its first byte, so views of
one buffer with different dtypes are not matched.

It relies on the simulator's internals (numba-cuda's ``numba.cuda.simulator.kernel``,
``kernelapi`` and ``cudadrv.devicearray``), checked on entry; it composes with
``tests/_cuda_blocks.py`` (blocks that run at once) and ``tests/_cuda_shuffles.py``.
"""

import sys
import threading
from collections import defaultdict

import numpy as np


class RaceReport:
    """What one test's launches did: ``races`` (messages, at most ``limit``), ``accesses``
    (element accesses recorded) and ``launches`` (kernel launches checked)."""

    def __init__(self, limit):
        self.races = []
        self.accesses = 0
        self.launches = 0
        self.limit = limit

    def add(self, message):
        if len(self.races) < self.limit and message not in self.races:
            self.races.append(message)


class _Access:
    """One element access: ``who`` (block, thread id), ``epoch`` (barriers its thread had
    passed), ``seq`` (its place in that thread's accesses), ``value`` (the bytes read or
    written), ``old`` (a write: the bytes it replaced; None for a read)."""
    __slots__ = ("who", "epoch", "seq", "value", "old", "ary", "idx")

    def __init__(self, who, epoch, seq, value, old, ary, idx):
        self.who, self.epoch, self.seq = who, epoch, seq
        self.value, self.old, self.ary, self.idx = value, old, ary, idx

    @property
    def write(self):
        return self.old is not None


def race_check(monkeypatch, limit=20):
    """Patch the CUDA simulator (for the rest of the test) to record its kernels' memory
    accesses and report races after each launch; returns the :class:`RaceReport` it fills.

    Each simulated thread appends its accesses to a log of its own (no lock on the hot
    path: a lock there makes the simulator's threads queue behind one another); a write
    reads the old value, stores and reads the new one under one lock. The logs are checked
    when the launch has finished. Install it after ``tests/_cuda_blocks.py``.
    """
    from numba.cuda.simulator import kernel as K, kernelapi as KA
    from numba.cuda.simulator.cudadrv import devicearray as DA

    for owner, name in ((K, "BlockThread"), (K, "FakeCUDAKernel"), (KA, "GridGroup"),
                        (KA, "FakeCUDAShared"), (KA, "FakeCUDAAtomic"),
                        (DA, "FakeCUDAArray")):
        assert hasattr(owner, name), f"numba-cuda's simulator has no {name}: update this helper"
    report = RaceReport(limit)
    write_lock = threading.Lock()
    # this launch: the threads' logs of (element, grid epoch, _Access), an element being
    # (block, address) in shared memory and (None, address) in global memory; the shared
    # arrays by (block, declaring line) and their address ranges
    launch = {"logs": [], "shared": [], "arrays": {}}

    def log_of():
        t = threading.current_thread()
        if not hasattr(t, "thread_id") or getattr(t, "_rc_atomic", False):
            return None, None
        log = getattr(t, "_rc_log", None)
        if log is None:
            log = t._rc_log = []
            launch["logs"].append(log)          # list.append: atomic
        return t, log

    def element_of(t, ary, idx):
        index = idx if isinstance(idx, tuple) else (idx,)
        address = ary.__array_interface__["data"][0] + sum(
            (int(i) % n) * s for i, n, s in zip(index, ary.shape, ary.strides))
        shared = any(lo <= address < hi for lo, hi in launch["shared"])
        return (tuple(t.blockIdx) if shared else None, address)

    def record(t, log, ary, idx, value, old):
        log.append((element_of(t, ary, idx), getattr(t, "_rc_grid", 0),
                    _Access((tuple(t.blockIdx), t.thread_id), getattr(t, "_rc_epoch", 0),
                            len(log), value, old, ary, idx)))

    getitem, setitem = DA.FakeCUDAArray.__getitem__, DA.FakeCUDAArray.__setitem__

    def tracked_getitem(self, idx):
        got = getitem(self, idx)
        if not isinstance(got, DA.FakeCUDAArray):
            t, log = log_of()
            if log is not None:
                record(t, log, self._ary, idx, np.asarray(got).tobytes(), None)
        return got

    def tracked_setitem(self, idx, val):
        t, log = log_of()
        if log is None or not _is_element(idx, self._ary.ndim):
            return setitem(self, idx, val)
        with write_lock:
            old = self._ary[idx].tobytes()
            setitem(self, idx, val)
            new = self._ary[idx].tobytes()
        record(t, log, self._ary, idx, new, old)

    syncthreads = K.BlockThread.syncthreads

    def counted_syncthreads(self):
        syncthreads(self)
        self._rc_epoch = getattr(self, "_rc_epoch", 0) + 1

    grid_sync = KA.GridGroup.sync       # whatever is installed (tests/_cuda_blocks.py)

    def counted_grid_sync(self):
        grid_sync(self)
        t = threading.current_thread()
        t._rc_grid = getattr(t, "_rc_grid", 0) + 1
        t._rc_epoch = getattr(t, "_rc_epoch", 0) + 1

    shared_array = KA.FakeCUDAShared.array

    def tracked_shared_array(self, shape, dtype, alignment=None):
        """A fresh NaN-filled array per block (a GPU's shared memory is the block's own and
        uninitialised; the simulator gives every block one zeroed buffer, in which a write
        of a value left by the previous block would look like no change), the dynamic one
        per block, a static one per block and line of the kernel that declared it."""
        from _cuda_blocks import block_shared_array
        ary = block_shared_array(launch["arrays"], write_lock, shared_array, self, shape,
                                 dtype, alignment, sys._getframe(1))
        start = ary.__array_interface__["data"][0]
        with write_lock:
            if (start, start + ary.nbytes) not in launch["shared"]:
                launch["shared"].append((start, start + ary.nbytes))
        return DA.FakeCUDAArray(ary)

    call = K.FakeCUDAKernel.__call__

    def checked_call(self, *args):
        if self._device or K._kernel_context:
            return call(self, *args)
        launch.update(logs=[], shared=[], arrays={})
        try:
            return call(self, *args)
        finally:
            report.launches += 1
            report.accesses += sum(len(log) for log in launch["logs"])
            _check(getattr(self.fn, "__name__", "kernel"), launch["logs"], report)
            launch["logs"] = []

    checked_call.race_check = True     # tests/_cuda_blocks.py must come first

    def atomic(method):
        def not_recorded(self, *args):
            t = threading.current_thread()
            t._rc_atomic = True
            try:
                return method(self, *args)
            finally:
                t._rc_atomic = False
        return not_recorded

    for name in dir(KA.FakeCUDAAtomic):
        if not name.startswith("_") and callable(getattr(KA.FakeCUDAAtomic, name)):
            monkeypatch.setattr(KA.FakeCUDAAtomic, name,
                                atomic(getattr(KA.FakeCUDAAtomic, name)))
    monkeypatch.setattr(DA.FakeCUDAArray, "__getitem__", tracked_getitem)
    monkeypatch.setattr(DA.FakeCUDAArray, "__setitem__", tracked_setitem)
    monkeypatch.setattr(K.BlockThread, "syncthreads", counted_syncthreads)
    monkeypatch.setattr(KA.GridGroup, "sync", counted_grid_sync)
    monkeypatch.setattr(KA.FakeCUDAShared, "array", tracked_shared_array)
    monkeypatch.setattr(K.FakeCUDAKernel, "__call__", checked_call)
    return report


def _check(kernel, logs, report):
    """Report the races and uninitialised shared reads in one launch's access logs.

    Two accesses to an element that no barrier orders race when the outcome can depend
    on their order: two writes of different values; a write and a read, unless the read
    sees the written value either way: the write stored the value the element already
    held and the read saw that value, or the reader's block stored that same value in a
    write ordered before the read (the split kernel's blocks each write the same row).
    """
    groups = defaultdict(list)          # (element, grid epoch) -> accesses
    shared = defaultdict(list)          # shared element -> accesses
    for log in logs:
        for element, grid, acc in log:
            groups[element, grid].append(acc)
            if element[0] is not None:
                shared[element].append(acc)
    for element, accs in shared.items():
        _check_initialised(kernel, element, accs, report)
    for (element, _), accs in groups.items():
        writes = [a for a in accs if a.write]
        if not writes:
            continue
        by_epoch, by_block = defaultdict(list), defaultdict(list)
        for a in accs:
            by_epoch[a.who[0], a.epoch].append(a)
            by_block[a.who[0]].append(a)
        for w in writes:
            # unordered with w: its block's other threads between the same two barriers;
            # every thread of another block (the group is one grid epoch)
            others = [a for a in by_epoch[w.who[0], w.epoch] if a.who != w.who]
            for block, lst in by_block.items():
                if block != w.who[0]:
                    others.extend(lst)
            for a in others:
                if a.write:
                    if a.value != w.value and (a.who, a.seq) < (w.who, w.seq):  # once a pair
                        report.add(_message(kernel, "write-write", element, w, a))
                elif not (w.old == w.value == a.value
                          or _block_stored_before(writes, a, w.value)):
                    report.add(_message(kernel, "read-write", element, w, a))


def _block_stored_before(writes, read, value):
    """Whether a write of ``value`` by the reader's block is ordered before ``read``: by
    its own thread earlier, or by its block before a barrier the reader passed."""
    return any(x.value == value and x.who[0] == read.who[0]
               and ((x.who == read.who and x.seq < read.seq) or x.epoch < read.epoch)
               for x in writes)


def _check_initialised(kernel, element, accs, report):
    """Shared memory: every read comes after a write of the block that a barrier orders
    before it (the epochs count grid barriers too), or after a write of its own thread."""
    first_epoch = min((a.epoch for a in accs if a.write), default=None)
    first_own = {}
    for a in accs:
        if a.write and a.seq < first_own.get(a.who, a.seq + 1):
            first_own[a.who] = a.seq
    for a in accs:
        if not a.write and not ((first_epoch is not None and first_epoch < a.epoch)
                                    or first_own.get(a.who, a.seq) < a.seq):
            report.add(f"{kernel}: thread {a.who} reads {_where(element, a)}, which nothing "
                       f"in its block wrote before in this launch (uninitialised)")
            return


def _where(element, a):
    space = "global" if element[0] is None else "shared"
    return (f"{space} {a.ary.dtype}{list(a.ary.shape)}"
            f"[{', '.join(str(int(i)) for i in np.atleast_1d(a.idx))}]")


def _message(kernel, kind, element, w, a):
    return (f"{kernel}: {kind} race on {_where(element, w)}: thread {w.who} (after "
            f"{w.epoch} barriers) writes, thread {a.who} (after {a.epoch}) "
            f"{'writes' if a.write else 'reads'} it, no barrier between them")


def _is_element(idx, ndim):
    """Whether ``idx`` names one element of an array of ``ndim`` dimensions."""
    idx = idx if isinstance(idx, tuple) else (idx,)
    return len(idx) == ndim and all(isinstance(i, (int, np.integer)) for i in idx)
