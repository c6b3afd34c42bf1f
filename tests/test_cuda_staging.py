"""The staged host<->device copies of the CUDA backend (fastsarnn.backends._cuda_staging).

The pipeline's order is checked here with stand-ins that need no GPU and no numba-cuda: a
stream that defers every copy until an event behind it, or the stream, is synchronised
(as a GPU's DMA engine may), and a pool that runs a host copy only when its result is
asked for. A missing wait then reads or overwrites a slot at the wrong time and changes
the copied values. tests/test_cuda.py runs the backend's forward through the real
staging (on the simulator, or a GPU).
"""

import concurrent.futures

import numpy as np
import pytest

from fastsarnn import _config
from fastsarnn.backends import _cuda_staging
from fastsarnn.backends._cuda_staging import Staging


class DeferredStream:
    """Copies queue up and run in order, only when something waits for them. ``behind``
    logs, at each wait for an event, how many copies were queued behind that event."""

    def __init__(self):
        self.queue = []
        self.behind = []

    def run_until(self, marker=None):
        while self.queue:
            op = self.queue.pop(0)
            if op is marker:
                return
            if callable(op):
                op()

    def synchronize(self):
        self.run_until()


class DeferredEvent:
    def record(self, stream):
        self.stream = stream
        stream.queue.append(self)

    def synchronize(self):
        if self in self.stream.queue:
            q = self.stream.queue
            self.stream.behind.append(sum(callable(op) for op in q[q.index(self) + 1:]))
            self.stream.run_until(self)


class DeviceStandIn:
    """A 'device' array: NumPy memory whose copies go through a deferred stream."""

    def __init__(self, arr):
        self.arr = arr
        self.shape, self.dtype = arr.shape, arr.dtype

    def reshape(self, *shape):
        return DeviceStandIn(self.arr.reshape(*shape))

    def __getitem__(self, idx):
        return DeviceStandIn(self.arr[idx])

    def copy_to_host(self, ary, stream):
        assert ary.shape == self.shape and ary.dtype == self.dtype
        src = self.arr
        stream.queue.append(lambda: np.copyto(ary, src))    # reads the device when run

    def copy_to_device(self, ary, stream):
        assert ary.shape == self.shape and ary.dtype == self.dtype
        dst = self.arr
        stream.queue.append(lambda: np.copyto(dst, ary))    # reads the slot when run


class LazyFuture:
    def __init__(self, fn, args):
        self.fn, self.args, self.done = fn, args, False

    def result(self):
        if not self.done:
            self.done = True
            self.fn(*self.args)


class LazyPool:
    """Runs a submitted copy only when its result is asked for (a host thread that lags);
    the ``fail``-th copy submitted (counting from 0) raises instead."""

    def __init__(self, fail=None):
        self.submitted = []
        self.fail = fail
        self.most_in_flight = 0     # submitted and not yet joined, at the most

    def submit(self, fn, *args):
        if len(self.submitted) == self.fail:
            def fn(*_):
                raise OSError("a host copy failed")
        self.submitted.append(LazyFuture(fn, args))
        self.most_in_flight = max(self.most_in_flight,
                                  sum(not f.done for f in self.submitted))
        return self.submitted[-1]


def make_staging(chunk, slots, threads=1):
    return Staging(chunk, [np.zeros(chunk, np.uint8) for _ in range(slots)], DeferredStream(),
                   [DeferredEvent() for _ in range(slots)], threads)


@pytest.fixture(params=["lazy", "threads"])
def workers(request):
    if request.param == "lazy":
        yield LazyPool()
    else:
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            yield pool


def arrays(rng, shapes, dtypes):
    return [rng.standard_normal(s).astype(d) for s, d in zip(shapes, dtypes)]


# chunks of 12 bytes (3 float32 or 1 float64 element), 8 bytes (2 or 1) and 4096 (every
# array in one): partial last chunks, chunks of one element, an empty array
CASES = [(12, 2, 1), (12, 3, 1), (12, 4, 2), (8, 5, 3), (8, 3, 4), (4096, 2, 1)]
SHAPES = [(2, 5, 3), (7,), (0, 4), (1, 1, 11)]
DTYPES = [np.float32, np.float64, np.float32, np.float64]


@pytest.mark.parametrize("direction", ["download", "upload"])
@pytest.mark.parametrize("chunk, slots, threads", CASES)
def test_every_chunk_arrives_whole(direction, chunk, slots, threads, workers):
    """A download's host copy reads a slot only after the chunk's DMA into it; an upload
    refills a slot only after the DMA that read it: with copies deferred until waited
    for, and host copies that lag, either mistake changes the values."""
    rng = np.random.default_rng(0)
    src = arrays(rng, SHAPES, DTYPES)
    dst = [np.full_like(a, np.nan) for a in src]
    st = make_staging(chunk, slots, threads)
    if direction == "download":
        st.download([(DeviceStandIn(a), b) for a, b in zip(src, dst)], workers)
    else:
        st.upload([(DeviceStandIn(b), a) for a, b in zip(src, dst)], workers)
    for a, b in zip(src, dst):
        np.testing.assert_array_equal(b, a)
    assert st.stream.queue == []


@pytest.mark.parametrize("direction", ["download", "upload"])
@pytest.mark.parametrize("threads", [1, 3, 5])
def test_a_call_has_at_most_its_threads_host_copies_in_flight(direction, threads):
    """``threads`` bounds a call's host copies (submitted to the shared pool and not yet
    joined), whatever the pool's size and the slots, and the bound is reached: the copies
    do run side by side."""
    src = np.arange(100, dtype=np.float32)          # 25 chunks of 16 bytes
    dst = np.zeros_like(src)
    st = make_staging(16, threads + 2, threads)
    pool = LazyPool()
    if direction == "download":
        st.download([(DeviceStandIn(src), dst)], pool)
    else:
        st.upload([(DeviceStandIn(dst), src)], pool)
    np.testing.assert_array_equal(dst, src)
    assert pool.most_in_flight == threads


@pytest.mark.parametrize("direction", ["download", "upload"])
def test_the_next_dma_is_queued_while_the_host_waits_for_one(direction):
    """The point of the pipeline: whenever the calling thread waits for a chunk's DMA,
    another chunk's DMA is already queued behind it, so the DMA engine never waits for
    the host (a pipeline that waits right after each DMA passes the value tests)."""
    rng = np.random.default_rng(3)
    src = rng.standard_normal(40).astype(np.float32)      # 10 chunks of 16 bytes
    dst = np.zeros_like(src)
    st = make_staging(16, 3)
    if direction == "download":
        st.download([(DeviceStandIn(src), dst)], LazyPool())
    else:
        st.upload([(DeviceStandIn(dst), src)], LazyPool())
        src, dst = dst, src
    np.testing.assert_array_equal(dst, src)
    # a download waits for each of the 10 chunks' DMA, and only the last has none behind
    # it; an upload (1 thread: 1 chunk filled ahead) waits before refilling a slot that a
    # DMA read, for chunks K .. 9: the DMA of chunk i - 2, with chunks i - 1 and i queued
    expected = [1] * 9 + [0] if direction == "download" else [2] * 7
    assert st.stream.behind == expected


@pytest.mark.parametrize("direction", ["download", "upload"])
@pytest.mark.parametrize("fail", [0, 3, 9])
def test_a_failed_host_copy_is_raised_once_every_copy_is_done(direction, fail):
    """A host copy that fails (the first, one in the middle, the last) is raised, never
    swallowed, and only once every other DMA and host copy of the call is done."""
    src = np.arange(40, dtype=np.float32)
    dst = np.zeros_like(src)
    st = make_staging(16, 3)
    pool = LazyPool(fail=fail)
    with pytest.raises(OSError, match="a host copy failed"):
        if direction == "download":
            st.download([(DeviceStandIn(src), dst)], pool)
        else:
            st.upload([(DeviceStandIn(dst), src)], pool)
    assert st.stream.queue == []
    assert all(f.done for f in pool.submitted)


def test_a_failed_copy_leaves_no_copy_running():
    """A pair that does not match raises, once every DMA and host copy it started is done
    (none may write into a buffer after the call)."""
    rng = np.random.default_rng(2)
    good = rng.standard_normal((3, 4)).astype(np.float32)
    host = np.zeros_like(good)
    st = make_staging(8, 2)
    pool = LazyPool()
    bad = (DeviceStandIn(np.zeros((2, 2), np.float32)), np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"device array \(2, 2\) float32 and a host array "
                                         r"\(2, 3\) float32"):
        st.download([(DeviceStandIn(good), host), bad], pool)
    assert st.stream.queue == []
    assert pool.submitted and all(f.done for f in pool.submitted)
    np.testing.assert_array_equal(host.ravel()[:4], good.ravel()[:4])   # chunks handed over


def test_staging_checks_its_slots():
    st = make_staging(4, 2)
    with pytest.raises(ValueError, match=r"chunks of 4 bytes cannot hold an element of "
                                         r"float64 \(8 bytes\)"):
        st.download([(DeviceStandIn(np.zeros(3)), np.zeros(3))], LazyPool())
    with pytest.raises(ValueError, match="at least 2 slots"):
        make_staging(8, 1)
    with pytest.raises(ValueError, match="must hold 16 bytes each; got"):
        Staging(16, [np.zeros(8, np.uint8)] * 2, DeferredStream(), [DeferredEvent()] * 2, 1)
    with pytest.raises(ValueError, match="at least 1 thread; got 0"):
        make_staging(8, 2, 0)
    st = make_staging(8, 2)
    with pytest.raises(ValueError, match="C-contiguous"):
        st.download([(DeviceStandIn(np.zeros((3, 4))), np.zeros((4, 3)).T)], LazyPool())


@pytest.mark.parametrize("value", [-1, 1, 63, 1.5, True, "4096"])
def test_bad_staging_bytes_are_named(monkeypatch, value):
    monkeypatch.setattr(_config, "CUDA_STAGING_BYTES", value)
    with pytest.raises(ValueError, match=rf"CUDA_STAGING_BYTES must be 0 or an integer >= "
                                         rf"64; got {value!r}"):
        _cuda_staging.chunk_bytes()
    for value in (0, 64, 1 << 22):
        monkeypatch.setattr(_config, "CUDA_STAGING_BYTES", value)
        assert _cuda_staging.chunk_bytes() == value


@pytest.mark.parametrize("value", [0, -2, 2.0, False, "many"])
def test_bad_staging_threads_are_named(monkeypatch, value):
    monkeypatch.setattr(_config, "CUDA_STAGING_THREADS", value)
    with pytest.raises(ValueError, match="CUDA_STAGING_THREADS must be 'auto' or an integer"):
        _cuda_staging.threads()


def test_staging_threads(monkeypatch):
    monkeypatch.setattr(_cuda_staging, "usable_cores", lambda: 16)
    monkeypatch.setattr(_config, "CUDA_STAGING_THREADS", 3)
    assert _cuda_staging.threads() == 3
    assert _cuda_staging.threads(5) == 5          # the call's num_threads wins
    assert _cuda_staging.threads(1000) == 16      # never more than the cores
    monkeypatch.setattr(_config, "CUDA_STAGING_THREADS", 40)
    assert _cuda_staging.threads() == 16
    monkeypatch.setattr(_config, "CUDA_STAGING_THREADS", "auto")
    assert _cuda_staging.threads() == 8
    for cores, auto in [(4, 3), (2, 1), (1, 1)]:     # a core left to the caller
        monkeypatch.setattr(_cuda_staging, "usable_cores", lambda c=cores: c)
        assert _cuda_staging.threads() == auto


def test_one_pool_grown_as_needed(monkeypatch):
    monkeypatch.setattr(_cuda_staging, "_POOL", None)
    two = _cuda_staging.pool(2)
    assert _cuda_staging.pool(1) is two and _cuda_staging.pool(2) is two
    four = _cuda_staging.pool(4)
    assert four is not two and _cuda_staging.pool(3) is four
    assert list(four.map(abs, [-1, -2, -3, -4])) == [1, 2, 3, 4]
    two.shutdown()
    four.shutdown()
