"""Copies between ``forward``'s NumPy arrays and the device, through pinned staging buffers.

A copy between a NumPy array (pageable memory) and the device is, by default, the driver's
own: one host thread moves each piece between the user's array and a pinned buffer of the
driver's, and the DMA engine moves it on. When the output is a new array, that thread also
takes a page fault per page on first touch. On the H200 machine of docs/BENCHMARKS.md
(2026-11-28), ``forward`` on NumPy arrays took 394 ms longer than on device arrays at XL,
and 11.8 ms longer at M. At XL that is about 1.2 GB moved, about 3 GB/s if the copies were
all of the difference (it also holds the host's other work on NumPy arrays).

:class:`Staging` cuts each array into chunks of ``CUDA_STAGING_BYTES`` and keeps ``K``
pinned buffers (slots). Chunk ``i`` goes through slot ``i mod K``. The DMA of a chunk runs
on one copy stream, while host threads copy other chunks between the slots and the user's
array, at most ``threads`` of a call's copies at once. So the DMA overlaps the host's
copies, and the host's copies (and their page faults) run on several cores.

Invariants:

- A host thread reads a slot only after the event recorded behind that slot's DMA to the
  host has completed.
- A slot is written again only after the host's copy out of it has finished, or after
  the DMA that read it has completed.
- While the calling thread waits for a chunk's DMA, the next chunk's DMA is already
  queued behind it.
- At most ``threads`` host copies of a call are submitted and not yet joined, the oldest
  joined first.
- Every call returns only when all its copies are done: the stream is synchronised and
  every host copy joined, also when one of them fails.
"""

import collections
import concurrent.futures
import threading

import numpy as np

from .. import _config
from .._sysinfo import usable_cores

#: The smallest chunk: larger than any element (float64, int64), so a slot always holds one.
MIN_CHUNK_BYTES = 64

_POOL = None
_POOL_LOCK = threading.Lock()


def chunk_bytes():
    """``_config.CUDA_STAGING_BYTES``, checked: 0 (no staging) or an integer >=
    :data:`MIN_CHUNK_BYTES`."""
    n = _config.CUDA_STAGING_BYTES
    if (not isinstance(n, int) or isinstance(n, bool) or n < 0
            or 0 < n < MIN_CHUNK_BYTES):
        raise ValueError(f"fastsarnn._config.CUDA_STAGING_BYTES must be 0 or an integer >= "
                         f"{MIN_CHUNK_BYTES}; got {n!r}")
    return n


def threads(num_threads=None):
    """Host threads of a call's staged copies: the call's ``num_threads`` where given, else
    ``_config.CUDA_STAGING_THREADS`` (``"auto"``: one core fewer than the process may use,
    at most 8, at least 1: the calling thread waits on the GPU, and the driver may spin
    while it does); never more than the cores the process may use."""
    cores = usable_cores()
    if num_threads is not None:
        return max(1, min(int(num_threads), cores))
    n = _config.CUDA_STAGING_THREADS
    if n == "auto":
        return max(1, min(8, cores - 1))
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"fastsarnn._config.CUDA_STAGING_THREADS must be 'auto' or an "
                         f"integer >= 1; got {n!r}")
    return min(n, cores)


def pool(n):
    """The process's pool of host threads for the staged copies, of at least ``n`` threads.

    One pool serves every call; each call bounds its own copies in flight (``Staging``'s
    ``threads``). A call that asks for more threads than the pool has replaces it by a
    larger one; calls still holding the old pool finish on it, and its threads exit once
    it is no longer referenced.
    """
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL[1] < n:
            _POOL = (concurrent.futures.ThreadPoolExecutor(
                n, thread_name_prefix="fastsarnn-staging"), n)
        return _POOL[0]


class Staging:
    """``K`` >= 2 pinned slots of ``chunk`` bytes, an event per slot, one copy stream, and at
    most ``threads`` host copies in flight per call.

    ``buffers`` are 1-D uint8 arrays of at least ``chunk`` bytes; ``stream`` and ``events``
    follow numba-cuda's stream and event API (tests pass stand-ins that delay every copy
    until an event or the stream is synchronised).
    """

    def __init__(self, chunk, buffers, stream, events, threads):
        if len(buffers) < 2 or len(events) != len(buffers):
            raise ValueError(f"staging needs at least 2 slots and an event per slot; got "
                             f"{len(buffers)} slots and {len(events)} events")
        if chunk < 1 or any(b.nbytes < chunk for b in buffers):
            raise ValueError(f"staging slots must hold {chunk} bytes each; got "
                             f"{[b.nbytes for b in buffers]}")
        if threads < 1:
            raise ValueError(f"staging needs at least 1 thread; got {threads}")
        self.chunk = chunk
        self.buffers = buffers
        self.stream = stream
        self.events = events
        self.threads = threads

    @classmethod
    def pinned(cls, chunk, threads):
        """``threads + 2`` slots in pinned host memory (a chunk per thread being copied, the
        chunk whose DMA is in flight, and the one queued behind it), real events and a new
        stream."""
        from numba import cuda
        slots = threads + 2
        buffers = [cuda.pinned_array(chunk, dtype=np.uint8) for _ in range(slots)]
        try:
            events = [cuda.event(timing=False) for _ in range(slots)]
        except TypeError:       # the simulator's events take no arguments
            events = [cuda.event() for _ in range(slots)]
        return cls(chunk, buffers, cuda.stream(), events, threads)

    def _chunks(self, pairs):
        """``(device chunk, host chunk)`` views, ``chunk`` bytes at most, array by array."""
        for dev, host in pairs:
            if dev.shape != host.shape or dev.dtype != host.dtype:
                raise ValueError(f"staged copy between a device array {dev.shape} "
                                 f"{dev.dtype} and a host array {host.shape} {host.dtype}: "
                                 f"expected the same shape and dtype")
            if not host.flags.c_contiguous:
                raise ValueError("staged copy: the host array must be C-contiguous")
            if host.itemsize > self.chunk:
                raise ValueError(f"staged copy: chunks of {self.chunk} bytes cannot hold an "
                                 f"element of {host.dtype} ({host.itemsize} bytes)")
            n = host.size
            if n == 0:
                continue
            flat_dev, flat_host = dev.reshape(n), host.reshape(n)
            step = self.chunk // host.itemsize
            for a in range(0, n, step):
                b = min(a + step, n)
                yield flat_dev[a:b], flat_host[a:b]

    def _slot(self, k, like):
        """Slot ``k`` seen as an array of ``like``'s dtype and size."""
        return self.buffers[k][:like.nbytes].view(like.dtype)

    def download(self, pairs, workers):
        """Copy each device array of ``pairs`` into its host array (``(device, host)``)."""
        K = len(self.buffers)
        copies = _HostCopies(workers, self.threads, K)
        waiting = None            # (slot, staged, host chunk): DMA issued, not yet handed over
        try:
            for i, (dev, host) in enumerate(self._chunks(pairs)):
                k = i % K
                copies.join_slot(k)             # the slot's previous chunk is still read
                staged = self._slot(k, host)
                dev.copy_to_host(staged, stream=self.stream)
                self.events[k].record(self.stream)
                # the chunk before this one: its DMA is queued ahead of this one's
                if waiting is not None:
                    self._hand_over(waiting, copies)
                waiting = (k, staged, host)
            if waiting is not None:
                self._hand_over(waiting, copies)
                waiting = None
        finally:
            self._finish(copies)

    def _hand_over(self, waiting, copies):
        k, staged, host = waiting
        self.events[k].synchronize()     # the slot holds the chunk now
        copies.submit(k, host, staged)

    def upload(self, pairs, workers):
        """Copy each host array of ``pairs`` into its device array (``(device, host)``)."""
        chunks = list(self._chunks(pairs))
        K = len(self.buffers)
        copies = _HostCopies(workers, self.threads, K)
        sent = [False] * K        # a DMA out of the slot issued, not known to be done
        ahead = min(self.threads, K - 1)     # chunks filled ahead of the DMA
        filled = 0                # chunks submitted for filling so far

        def fill_up_to(last):
            nonlocal filled
            while filled <= min(last, len(chunks) - 1):
                k = filled % K
                if sent[k]:                      # a DMA still reads the slot
                    self.events[k].synchronize()
                    sent[k] = False
                host = chunks[filled][1]
                copies.submit(k, self._slot(k, host), host)
                filled += 1

        try:
            fill_up_to(ahead - 1)
            for i, (dev, host) in enumerate(chunks):
                k = i % K
                copies.join_slot(k)
                dev.copy_to_device(self._slot(k, host), stream=self.stream)
                self.events[k].record(self.stream)
                sent[k] = True
                fill_up_to(i + ahead)
        finally:
            self._finish(copies)

    def _finish(self, copies):
        """Wait for the stream and every host copy; the first failure is raised."""
        error = None
        try:
            self.stream.synchronize()
        except Exception as exc:     # still join the host copies before raising
            error = exc
        try:
            copies.join_all()
        except Exception as exc:
            error = error or exc
        if error is not None:
            raise error


class _HostCopies:
    """A call's host copies (``np.copyto``) on ``workers``: at most ``limit`` submitted and
    not joined (the oldest joined first), and the one using each of ``K`` slots."""

    def __init__(self, workers, limit, K):
        self.workers = workers
        self.limit = limit
        self.in_flight = collections.deque()
        self.by_slot = [None] * K

    def submit(self, k, dst, src):
        """Copy ``src`` into ``dst`` on a worker, as slot ``k``'s copy; the caller has
        joined the slot's previous copy (:meth:`join_slot`) before it touched the slot."""
        while len(self.in_flight) >= self.limit:
            self.in_flight.popleft().result()
        f = self.by_slot[k] = self.workers.submit(np.copyto, dst, src)
        self.in_flight.append(f)

    def join_slot(self, k):
        f = self.by_slot[k]
        if f is not None:
            self.by_slot[k] = None
            f.result()

    def join_all(self):
        """Join every copy still in flight; the first failure is raised after all."""
        error = None
        while self.in_flight:
            f = self.in_flight.popleft()
            try:
                f.result()
            except Exception as exc:
                error = error or exc
        self.by_slot = [None] * len(self.by_slot)
        if error is not None:
            raise error
