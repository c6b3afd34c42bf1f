"""What is particular to the CUDA backend (runs on a GPU, or on the simulator with
NUMBA_ENABLE_CUDASIM=1): device arrays in and out, the state's device copy kept consistent
with user writes and CPU backends, no device allocation per call, compact attention, the
warp reduce helper, the scratch placements, the block sizes, the packed kernel (several
sequences per block), availability and the NumPy 2.5 compatibility step."""

import inspect
import os
import subprocess
import sys

import numpy as np
import pytest

import fastsarnn as fs
from fastsarnn import _config

try:   # a module global, so that the simulator can swap it inside the test's kernel
    from numba import cuda
except ImportError:
    cuda = None
from fastsarnn._validate import is_device_array
from _helpers import make_model, make_x, max_err, reference, tol

_INFO = fs.backends()["cuda"]
_REQUIRED = "cuda" in os.environ.get("FASTSARNN_REQUIRE_BACKENDS", "")
#: The block size the package ships with (the autouse fixture below shrinks it for tests).
PRODUCTION_BLOCK = _config.CUDA_BLOCK_SIZE


@pytest.fixture(autouse=True)
def cuda_ready(monkeypatch):
    if not _INFO.available:
        if _REQUIRED:
            pytest.fail(f"cuda required but unavailable: {_INFO.reason}")
        pytest.skip(f"cuda unavailable: {_INFO.reason}")
    monkeypatch.setattr(_config, "CUDA_BLOCK_SIZE",
                        int(os.environ.get("FASTSARNN_TEST_CUDA_BLOCK", "4")))


def _be():
    from fastsarnn.backends import cuda as be
    return be


class _StandInContext:
    """For numba-cuda's context of the calling thread: an object of its own identity (a
    prepared launch is tied to one), with what ``_launch`` and ``_launch_again`` use of a
    context: the device (the real one on a GPU; none on the simulator, which never asks)
    and ``synchronize``."""

    def __init__(self, be):
        self.device = None if be.SIMULATOR else be._current_context().device

    def synchronize(self):
        cuda.synchronize()


def _launches_prepared_by(monkeypatch, be, prepare, context=None):
    """Launches prepared as on a GPU, by ``prepare`` (for _prepare, which needs one), in the
    CUDA context ``context()`` (by default one stand-in context throughout)."""
    one = _StandInContext(be)
    monkeypatch.setattr(be, "_PREPARE_LAUNCHES", True)
    monkeypatch.setattr(be, "_PREPARED_ERROR", None)
    monkeypatch.setattr(be, "_prepare", prepare)
    monkeypatch.setattr(be, "_current_context", context or (lambda: one))


def _stand_in_prepare(be, made):
    """For _prepare, which needs a GPU (cuda.core's launch): a launcher through numba-cuda
    with the arguments it was made for, as a prepared launch would use them."""
    def prepare(kern, grid, block, shared, args):
        made.append(args)

        def launcher():
            launcher.used += 1
            be._configured(kern, grid, block, shared)(*args)
        launcher.used = 0
        prepare.launchers.append(launcher)
        return launcher
    prepare.launchers = []
    return prepare


# -- device arrays ---------------------------------------------------------------------------
def test_device_arrays_in_device_arrays_out():
    from numba import cuda
    model = make_model(score="kq", D=5, H=6, Ha=3, dtype="float32")
    x = make_x(2, 5, 5).astype(np.float32)
    out = model.forward(cuda.to_device(x), return_attention=True, backend="cuda")
    for a in (out.h, out.c, out.attention, out.h_last):
        assert is_device_array(a)
    ref = reference(model, x, return_attention=True)
    assert max_err(out.h.copy_to_host(), ref.h) <= tol(model)
    assert max_err(out.attention.copy_to_host(), ref.attention) <= tol(model)
    assert max_err(out.c_last.copy_to_host(), ref.c_last) <= tol(model)


def test_the_bench_times_cuda_on_device_arrays_as_well():
    """``cuda-device``: the bench's runner of the cuda backend with device arrays in and out
    (the input uploaded once, the outputs left on the device); checked like every runner,
    forward only, listed after ``cuda`` wherever cuda runs."""
    import dataclasses
    from fastsarnn import bench
    names = bench.available_runners()
    assert names.index("cuda-device") == names.index("cuda") + 1
    assert bench.available_runners(["cuda-device"]) == ["cuda-device"]
    cfg = bench.Config("tiny", 2, 7, 5, 6)
    recs = bench.run_config(cfg, ["cuda", "cuda-device"], repeat=1)
    assert [r["backend"] for r in recs] == ["cuda", "cuda-device"]
    assert all(r["within_tolerance"] and r["kind"] == "backend" for r in recs), recs
    model, x = bench.make_problem(cfg)
    seen = []
    forward = model.forward

    def recording(x_in, **kwargs):
        seen.append(x_in)
        return forward(x_in, **kwargs)

    model.forward = recording
    run = bench.runner(cfg, model, x, "cuda-device")
    h, c = run()
    run()
    # uploaded once, when the runner was made: every run gets that device array
    assert len(seen) == 2 and seen[0] is seen[1] and is_device_array(seen[0])
    assert is_device_array(h) and is_device_array(c)
    assert max_err(np.asarray(h), reference(model, x).h) <= tol(model)
    with pytest.raises(bench.NotApplicable, match="forward only"):
        bench.runner(dataclasses.replace(cfg, step=True), model, x, "cuda-device")
    # a GPU runner: it brings the GPU-scale configuration and names the device
    assert "XL" in [c.name for c in bench.default_configs(["cuda-device", "numpy"])]
    assert bench.suite.gpu_name(["cuda-device"]) == _be().describe()


def test_device_arrays_stream_with_a_state_and_lengths():
    from numba import cuda
    model = make_model(score="additive", window=3, D=5, H=6, Ha=4, dtype="float32")
    x = make_x(2, 7, 5).astype(np.float32)
    lengths = np.array([4, 2])
    st = model.init_state(2)
    a = model.forward(cuda.to_device(np.ascontiguousarray(x[:, :4])), lengths=lengths,
                      state=st, backend="cuda")
    b = model.forward(cuda.to_device(np.ascontiguousarray(x[:, 4:])), state=st,
                      return_attention=True, backend="cuda")
    assert is_device_array(b.attention) and st.positions.tolist() == [7, 5]
    ref0 = reference(model, x[:1])
    ref1 = reference(model, np.concatenate([x[1:, :2], x[1:, 4:]], 1))
    h0 = np.concatenate([a.h.copy_to_host()[0], b.h.copy_to_host()[0]])
    h1 = np.concatenate([a.h.copy_to_host()[1, :2], b.h.copy_to_host()[1]])
    assert max_err(h0, ref0.h[0]) <= tol(model) and max_err(h1, ref1.h[0]) <= tol(model)
    assert np.all(a.h.copy_to_host()[1, 2:] == 0)          # past lengths: zeros


def test_device_input_checks():
    from numba import cuda
    model = make_model(D=5, H=6, dtype="float32")
    with pytest.raises(TypeError, match="float32"):
        model.forward(cuda.to_device(make_x(1, 3, 5)), backend="cuda")       # float64
    bad = make_x(2, 3, 5).astype(np.float32)
    bad[1, 2, 4] = np.nan
    with pytest.raises(ValueError, match=r"x\[1, 2, 4\]"):
        model.forward(cuda.to_device(bad), backend="cuda")
    model.forward(cuda.to_device(bad), lengths=np.array([3, 2]), backend="cuda")  # padding
    with pytest.raises(TypeError, match="device array"):
        model.forward(cuda.to_device(bad), backend="numpy")


# -- the state: device copy, user writes, CPU backends -----------------------------------------
def test_state_moves_between_cuda_and_cpu_backends():
    model = make_model(score="additive", window=3, D=5, H=6, Ha=4)
    x = make_x(2, 9, 5)
    ref = reference(model, x)
    st = model.init_state(2)
    hs = [model.forward(x[:, :3], state=st, backend="cuda").h]
    h, _ = model.step(x[:, 3], st, backend="cuda")           # history stays on the device
    hs.append(h[:, None])
    hs.append(model.forward(x[:, 4:6], state=st, backend="numpy").h)   # host gets it back
    hs.append(model.forward(x[:, 6:8], state=st, backend="cuda").h)    # re-uploaded
    cp = st.copy()                                                      # synced copy
    hs.append(model.forward(x[:, 8:], state=st, backend="cuda").h)
    assert max_err(np.concatenate(hs, 1), ref.h) <= tol(model)
    last = model.forward(x[:, 8:], state=cp, backend="numpy").h
    assert max_err(last, ref.h[:, 8:]) <= tol(model)


def test_alternating_cuda_and_numpy_steps_stay_consistent():
    model = make_model(score="kq", recurrence="hc", D=5, H=6, Ha=3)
    x = make_x(2, 8, 5)
    ref = reference(model, x)
    st = model.init_state(2, capacity=2)             # grows on both sides
    hs = []
    for t in range(8):                               # numpy first: cuda takes h, c over
        h, _ = model.step(x[:, t], st, backend="cuda" if t % 2 else "numpy")
        hs.append(h)
    assert max_err(np.stack(hs, 1), ref.h) <= tol(model)
    assert st.capacity == 8


def test_reading_the_history_after_cuda_gives_the_device_values():
    model = make_model(score="kq", D=5, H=6, Ha=3)
    x = make_x(2, 5, 5)
    st, st_ref = model.init_state(2), model.init_state(2)
    model.forward(x, state=st, backend="cuda")
    model.forward(x, state=st_ref, backend="numpy")
    for name in ("hist", "keys", "h", "c", "positions"):
        assert max_err(getattr(st, name), getattr(st_ref, name)) <= tol(model), name


@pytest.mark.parametrize("then", ["cuda", "numpy"])
@pytest.mark.parametrize("how", ["in place", "replaced"])
@pytest.mark.parametrize("window", [None, 4])
def test_user_writes_to_the_state_between_cuda_calls_are_seen(window, how, then):
    """Restore another stream's saved state into the public arrays of a state that has a
    device copy (written in place, or hist/keys replaced by new arrays): the next CUDA call
    continues that stream, not the one on the device."""
    model = make_model(score="kq", recurrence="hc", window=window, D=5, H=6, Ha=3)
    x = make_x(2, 10, 5)
    y = make_x(2, 6, 5, seed=5)
    st = model.init_state(2, capacity=16)
    model.forward(x[:, :6], state=st, backend="cuda")         # device copy now newer
    saved = model.init_state(2, capacity=16)
    model.forward(y, state=saved, backend="numpy")             # the stream to restore
    if how == "in place":
        st.hist[...] = saved.hist
        st.keys[...] = saved.keys
    else:
        st.hist, st.keys = saved.hist.copy(), saved.keys.copy()
    st.h[...] = saved.h
    st.c[...] = saved.c
    st.positions[...] = saved.positions
    got = model.forward(x[:, 6:], state=st, backend=then)
    want = reference(model, np.concatenate([y, x[:, 6:]], 1)).h[:, 6:]
    assert max_err(got.h, want) <= tol(model)


def test_history_replacement_must_keep_shape_and_dtype():
    model = make_model(D=5, H=6)
    st = model.init_state(1, capacity=4)
    model.forward(make_x(1, 2, 5), state=st, backend="cuda")
    with pytest.raises(ValueError, match=r"shape \(1, 4, 6\)"):
        st.hist = np.zeros((1, 8, 6))
    with pytest.raises(ValueError, match="None"):
        st.keys = np.zeros((1, 4, 6))
    assert st.hist.shape == (1, 4, 6) and np.any(st.hist[0, :2] != 0)


def test_user_write_to_h_alone_is_seen_by_step():
    model = make_model(recurrence="hc", D=5, H=6)
    x = make_x(1, 3, 5)
    st = model.init_state(1)
    model.step(x[:, 0], st, backend="cuda")
    st_np = st.copy()
    st.h[0, 2] += 0.5                                 # the recurrence reads h_{t-1}
    st_np.h[0, 2] += 0.5
    got, _ = model.step(x[:, 1], st, backend="cuda")
    want, _ = model.step(x[:, 1], st_np, backend="numpy")
    assert max_err(got, want) <= tol(model)


def test_reset_after_cuda_clears_the_device_copy():
    model = make_model(D=5, H=6)
    x = make_x(1, 6, 5)
    st = model.init_state(1)
    model.forward(x[:, :4], state=st, backend="cuda")
    st.reset()
    got = model.forward(x[:, 4:], state=st, backend="cuda")
    assert max_err(got.h, reference(model, x[:, 4:]).h) <= tol(model)
    assert np.all(st.hist[0, 2:] == 0)                 # nothing stale past the positions


def _record_calls(monkeypatch, module, *names):
    """The names of ``module``'s functions ``names`` called from now on, in order (each
    still does what it did)."""
    calls = []
    for name in names:
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _r=real, _n=name, **k:
                            calls.append(_n) or _r(*a, **k))
    return calls


@pytest.mark.parametrize("staging", [0, 64], ids=["driver-copies", "staged"])
def test_no_device_allocation_per_call(monkeypatch, staging):
    """Once the buffers are grown, step and forward allocate nothing on the device (nor
    pinned host memory, streams or events for the staged copies)."""
    from numba import cuda
    monkeypatch.setattr(_config, "CUDA_STAGING_BYTES", staging)
    model = make_model(score="general", D=5, H=6)
    x = make_x(2, 12, 5)
    st = model.init_state(2, capacity=16)
    model.step(x[:, 0], st, backend="cuda")
    model.forward(x[:, 1:3], state=st, backend="cuda")
    model.forward(x[:, 1:3], backend="cuda")          # scratch state: model's workspace
    calls = _record_calls(monkeypatch, cuda, "device_array", "to_device", "mapped_array",
                          "pinned_array", "stream", "event")
    for t in range(3, 6):
        model.step(x[:, t], st, backend="cuda")
    model.forward(x[:, 6:8], state=st, backend="cuda")
    model.forward(x[:, 1:3], backend="cuda")
    assert calls == []
    monkeypatch.undo()
    ref = reference(model, x[:, :8])
    assert max_err(st.h, ref.h_last) <= tol(model)


def _spy_on_staging(monkeypatch):
    """Elements each direction moves through the staging (fastsarnn.backends._cuda_staging)."""
    from fastsarnn.backends import _cuda_staging
    moved = {"upload": 0, "download": 0}
    for direction in moved:
        real = getattr(_cuda_staging.Staging, direction)

        def spy(self, pairs, workers, _real=real, _d=direction):
            moved[_d] += sum(h.size for _, h in pairs)
            return _real(self, pairs, workers)
        monkeypatch.setattr(_cuda_staging.Staging, direction, spy)
    return moved


@pytest.mark.parametrize("chunk,threads", [(64, 1), (88, 2), (1 << 20, 2)])
def test_forward_through_pinned_staging(monkeypatch, chunk, threads):
    """NumPy arrays in and out through the staged copies: chunks of 8 and 11 float64
    elements (every array ends in a partial chunk), and one larger than every array (then
    the driver copies them all, and no pinned memory is made). The outputs, the attention
    and a state carried into a second call match the reference; the copies did go through
    the staging; a call's num_threads has a staging of its own."""
    from fastsarnn.backends import _cuda_staging
    monkeypatch.setattr(_config, "CUDA_STAGING_BYTES", chunk)
    monkeypatch.setattr(_config, "CUDA_STAGING_THREADS", threads)
    monkeypatch.setattr(_cuda_staging, "usable_cores", lambda: 4)
    moved = _spy_on_staging(monkeypatch)
    model = make_model(score="kq", D=5, H=6, Ha=3)
    x = make_x(3, 9, 5)
    lengths = np.array([7, 3, 0])
    st = model.init_state(3)
    got = model.forward(x[:, :7], lengths=lengths, state=st, return_attention=True,
                        backend="cuda")
    again = model.forward(x[:, 7:], state=st, backend="cuda", num_threads=3)
    ref_st = model.init_state(3)      # the model is float64: the reference's own dtype
    ref = model.forward(x[:, :7], lengths=lengths, state=ref_st, return_attention=True,
                        backend="numpy")
    ref_again = model.forward(x[:, 7:], state=ref_st, backend="numpy")
    for a, b in [(got.h, ref.h), (got.c, ref.c), (got.attention, ref.attention),
                 (again.h, ref_again.h), (again.c, ref_again.c), (st.h, ref_st.h)]:
        assert max_err(a, b) <= tol(model)
    kept = model._kernel.cache["cuda"]["work"].get("staging", {})
    if chunk > 8 * got.attention.size:      # larger than any array: none staged
        assert moved == {"upload": 0, "download": 0} and kept == {}
        return
    # x up twice; h, c (and the attention once) down
    assert moved == {"upload": x.size, "download": 2 * (3 * 9 * 6) + got.attention.size}
    assert sorted(kept) == [(chunk, threads), (chunk, 3)]       # 3: the call's num_threads
    for (_, n), staging in kept.items():
        assert staging.chunk == chunk and staging.threads == n and len(staging.buffers) == n + 2


def test_an_array_of_one_chunk_is_copied_by_the_driver(monkeypatch):
    """The staging takes arrays larger than a chunk; one of exactly a chunk goes by the
    driver's copy, and still arrives."""
    x = make_x(2, 3, 5)                       # 240 bytes
    monkeypatch.setattr(_config, "CUDA_STAGING_BYTES", x.nbytes)
    moved = _spy_on_staging(monkeypatch)
    model = make_model(D=5, H=6)              # outputs: 288 bytes each
    got = model.forward(x, backend="cuda")
    ref = reference(model, x)
    assert max_err(got.h, ref.h) <= tol(model) and max_err(got.c, ref.c) <= tol(model)
    assert moved == {"upload": 0, "download": 2 * got.h.size}


def test_staging_buffers_are_kept_per_chunk_and_threads(monkeypatch):
    """Settings timed in turn (benchmarks/cuda_config_compare.py) find their pinned buffers
    kept: no pinned memory, stream or event is made in a call after each value's first;
    a model keeps the latest _STAGINGS_KEPT sets, and drops the least recently used."""
    from numba import cuda

    from fastsarnn.backends import _cuda_staging
    be = _be()
    monkeypatch.setattr(_cuda_staging, "usable_cores", lambda: 8)
    model = make_model(D=5, H=6)
    x = make_x(2, 9, 5)
    values = [(64, 1), (128, 1), (64, 2), (0, 1), (96, 3)]
    for chunk, threads in values:       # first calls: made
        monkeypatch.setattr(_config, "CUDA_STAGING_BYTES", chunk)
        model.forward(x, backend="cuda", num_threads=threads)
    calls = _record_calls(monkeypatch, cuda, "pinned_array", "stream", "event")
    for _ in range(2):
        for chunk, threads in values:
            monkeypatch.setattr(_config, "CUDA_STAGING_BYTES", chunk)
            got = model.forward(x, backend="cuda", num_threads=threads)
            assert max_err(got.h, reference(model, x).h) <= tol(model)
    assert calls == []
    kept = model._kernel.cache["cuda"]["work"]["staging"]
    assert list(kept) == [(64, 1), (128, 1), (64, 2), (96, 3)]
    monkeypatch.setattr(_config, "CUDA_STAGING_BYTES", 64)
    model.forward(x, backend="cuda", num_threads=1)       # (64, 1) used again: the latest
    assert list(kept) == [(128, 1), (64, 2), (96, 3), (64, 1)]
    monkeypatch.setattr(_config, "CUDA_STAGING_BYTES", 256)
    model.forward(x, backend="cuda", num_threads=1)       # a fifth: (128, 1) goes
    assert list(kept) == [(64, 2), (96, 3), (64, 1), (256, 1)]
    monkeypatch.setattr(be, "_STAGINGS_KEPT", 2)
    monkeypatch.setattr(_config, "CUDA_STAGING_BYTES", 512)
    model.forward(x, backend="cuda", num_threads=1)
    assert list(kept) == [(256, 1), (512, 1)]


def test_device_history_grows_with_the_state():
    model = make_model(D=5, H=6)
    x = make_x(1, 9, 5)
    st = model.init_state(1, capacity=2)
    for t in range(9):
        model.step(x[:, t], st, backend="cuda")
    assert st.capacity == 16 and st._device["hist"].shape == (1, 16, 6)
    assert max_err(st.h, reference(model, x).h_last) <= tol(model)


def test_kernel_launch_checks_its_arguments():
    be = _be()
    model = make_model(D=5, H=6)
    st = model.init_state(2, capacity=4)
    x = make_x(2, 6, 5)
    out = np.zeros((2, 6, 6))
    with pytest.raises(ValueError, match="capacity"):
        be.forward(model._kernel, x, np.array([6, 6]), st, out, out.copy(), None)
    with pytest.raises(ValueError, match="inconsistent shapes"):
        be.forward(model._kernel, x, np.array([3, 3]), st, out[:, :5], out, None)
    # lengths outside [0, T] would index x and the outputs past their ends
    for lengths in ([-2, 3], [3, 7]):
        with pytest.raises(ValueError, match=r"lengths must lie in \[0, 6\]; got values "
                                             rf"from {min(lengths)} to {max(lengths)}"):
            be.forward(model._kernel, x, np.array(lengths), st, out, out.copy(), None)
    # a negative position (or one so large that position + steps overflows) would index
    # the history before its start
    for positions in ([0, -1], [2 ** 61, 0]):
        st.positions[...] = positions
        with pytest.raises(ValueError, match=rf"positions must lie in \[0, {2 ** 61 - 1}\]; "
                                             rf"got values from {min(positions)} to "
                                             rf"{max(positions)}"):
            be.forward(model._kernel, x, np.array([1, 1]), st, out, out.copy(), None)
    st.positions[...] = 0
    assert np.all(st.hist == 0) and np.all(st.h == 0) and np.all(out == 0)
    # a step that would repeat its stream's prepared launch checks the positions too
    st1 = model.init_state(1)
    for t in range(3):
        model.step(x[:1, t], st1, backend="cuda")
    before = (st1.h.copy(), st1.hist.copy())
    st1.positions[0] = -1
    h1, c1 = np.zeros((1, 6)), np.zeros((1, 6))
    with pytest.raises(ValueError, match=r"positions must lie in \[0, "):
        be.step(model._kernel_for(st1), x[:1, 3], np.ones(1, bool), st1, h1, c1)
    assert np.array_equal(st1.h, before[0]) and np.array_equal(st1.hist, before[1])


# -- the kernel's variants -----------------------------------------------------------------------
def test_compact_attention_equals_the_dense_row_slice():
    be = _be()
    model = make_model(score="additive", window=3, D=5, H=6, Ha=4)
    x = make_x(2, 7, 5)
    lengths = np.array([7, 5])

    def run(compact, cols):
        st = model.init_state(2)
        st.positions[...] = [2, 0]
        out_h, out_c = np.zeros((2, 7, 6)), np.zeros((2, 7, 6))
        attn = np.zeros((2, 7, cols))
        be.forward(model._kernel, x, lengths, st, out_h, out_c, attn,
                   compact_attention=compact)
        return attn

    dense, compact = run(False, 9), run(True, 3)
    for b, t0 in ((0, 2), (1, 0)):
        for r in range(lengths[b]):
            p = t0 + r
            first = max(0, p - 2)
            n = p - first + 1
            assert np.array_equal(compact[b, r, :n], dense[b, r, first: p + 1])
            assert np.all(compact[b, r, n:] == 0)
    assert np.all(compact[1, 5:] == 0)


def test_global_scratch_matches_shared(monkeypatch):
    """A model too wide for shared memory runs with its scratch in global memory."""
    be = _be()
    monkeypatch.setattr(_config, "CUDA_SHARED_BYTES", 0)
    model = make_model(score="kq", recurrence="hc", window=3, D=5, H=6, Ha=4)
    assert be.block_geometry(6, 4, 5, model.dtype, be.use_shuffles(),
                             be.rows_per_warp())[2]
    x = make_x(2, 6, 5)
    out = model.forward(x, return_attention=True, backend="cuda")
    ref = reference(model, x, return_attention=True)
    assert max_err(out.c, ref.c) <= tol(model)
    assert max_err(out.attention, ref.attention) <= tol(model)


@pytest.mark.parametrize("prefetch", [True, False], ids=["prefetch", "no-prefetch"])
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("window", [None, 5])
def test_rows_per_warp(monkeypatch, rows, window, prefetch):
    """G rows per round: groups of whole positions in consecutive slots, groups cut by the
    last position, and (with a window, once the ring wraps) groups across the ring's end;
    each round's rows loaded during the round before (CUDA_PREFETCH_ROWS) or in it."""
    monkeypatch.setattr(_config, "CUDA_ROWS_PER_WARP", rows)
    monkeypatch.setattr(_config, "CUDA_PREFETCH_ROWS", prefetch)
    _forward_with_attention_exact(make_model(score="dot", window=window, D=5, H=6),
                                  make_x(1, 12, 5))


def _forward_with_attention_exact(model, x):
    """``forward`` of ``x`` on cuda: ``c`` and the attention weights against the
    reference."""
    out = model.forward(x, return_attention=True, backend="cuda")
    ref = reference(model, x, return_attention=True)
    assert max_err(out.c, ref.c) <= tol(model)
    assert max_err(out.attention, ref.attention) <= tol(model)


@pytest.mark.parametrize("prefetch", [True, False], ids=["prefetch", "no-prefetch"])
@pytest.mark.parametrize("window", [None, 7])
def test_rounds_of_several_warps(monkeypatch, window, prefetch):
    """64 threads (two warps) with 2 rows per round: a round of the block takes 4
    positions, so a warp's next group starts 4 positions on (not 2), over 16 steps (up to
    4 rounds; with a window of 7, groups across the ring's end); loaded a round ahead or
    in the round."""
    monkeypatch.setattr(_config, "CUDA_BLOCK_SIZE", 64)
    monkeypatch.setattr(_config, "CUDA_ROWS_PER_WARP", 2)
    monkeypatch.setattr(_config, "CUDA_PREFETCH_ROWS", prefetch)
    _forward_with_attention_exact(make_model(score="dot", window=window, D=5, H=6),
                                  make_x(1, 16, 5))


@pytest.mark.parametrize("prefetch", [True, False], ids=["prefetch", "no-prefetch"])
@pytest.mark.parametrize("block", [4, PRODUCTION_BLOCK])
def test_wider_models_rounds_past_the_ring_end_and_a_clamped_last_share(monkeypatch, block,
                                                                         prefetch):
    """H = 40, Ha = 37 (several dimensions per lane, the last share clamped, also at the
    production block size), a window of 10 over 25 steps with 3 rows per round (rounds of
    consecutive slots after the ring wrapped, and rounds across its end), float32 with
    the default weight loads in flight (whole and partial rounds of the products at a
    block of 4), rows loaded a round ahead or not (CUDA_PREFETCH_ROWS: the dot kernel's
    choice; the keyed one loads them in the round; several rounds at a block of 4, one
    at the production size): every score family against the reference."""
    monkeypatch.setattr(_config, "CUDA_BLOCK_SIZE", block)
    monkeypatch.setattr(_config, "CUDA_PREFETCH_ROWS", prefetch)
    monkeypatch.setattr(_config, "CUDA_ROWS_PER_WARP", 3)
    x = make_x(1, 25, 5)
    for score in ("dot", "kq", "additive"):
        _forward_with_attention_exact(
            make_model(score=score, window=10, dtype="float32", D=5, H=40, Ha=37), x)


@pytest.mark.parametrize("dtype,rows", [("float32", 2), ("float64", 1)])
def test_rows_capped_by_the_registers_for_them(monkeypatch, dtype, rows):
    """Where a lane's share of CUDA_ROWS_PER_WARP rows exceeds CUDA_ROW_CACHE_WORDS
    registers, a round takes fewer rows (H=8 on 4-thread warps: 2 dimensions per lane, 4
    words hold 2 float32 rows or 1 float64 row); the results stay exact, every score family
    (keyed, with a window, and its attention weights)."""
    monkeypatch.setattr(_config, "CUDA_ROWS_PER_WARP", 8)
    be = _be()
    kernel_args = (np.dtype(dtype), False, False, 8, False, 8, 5, 4, 16)
    wide = be._sequence_kernel(*kernel_args)
    monkeypatch.setattr(_config, "CUDA_ROW_CACHE_WORDS", 4)
    assert be.rows_in_flight(8, 2, dtype) == rows
    # the same arguments now give the kernel with the capped rows (G=8 -> rows)
    capped = be._sequence_kernel(*kernel_args)
    assert capped is not wide
    assert capped is be._KERNELS[(dtype, False, False, rows, False, 4, 2, 2, 16, 1, False,
                                  False, False, False, 1)]
    for score, window in (("dot", None), ("kq", 3), ("additive", None)):
        model = make_model(score=score, window=window, dtype=dtype, D=5, H=8, Ha=5)
        x = make_x(2, 7, 5)
        out = model.forward(x, return_attention=True, backend="cuda")
        ref = reference(model, x, return_attention=True)
        assert max_err(out.h, ref.h) <= tol(model)
        assert max_err(out.attention, ref.attention) <= tol(model)


def test_each_kernel_variant_has_its_own_disk_cache_key():
    """numba-cuda's on-disk cache (CUDA_DISK_CACHE) keys an entry by the kernel's code and
    its closure's values, not by its options: two variants of the sequence kernel, the
    launch bound's block size or blocks per SM included, must get different keys (else a
    process would load the other variant's compiled code), and one variant built twice
    the same key (else the cache would never hit)."""
    import types
    from numba.cuda.core.caching import Cache
    be = _be()
    codegen = types.SimpleNamespace(magic_tuple=lambda: ("sm_90",))
    base = dict(dtype_name="float32", shuffles=True, global_scratch=False, G=8, split=False,
                nt=256, HPL=4, QPL=4, MV=16, MB=1, keyed=False, prefetch=True,
                split_products=False)

    def key(**changes):
        kern = be._build_sequence_kernel(**dict(base, **changes))
        return Cache._index_key(types.SimpleNamespace(_py_func=kern.py_func), (), codegen)

    assert key() == key()
    keys = [key(), key(MB=2), key(nt=512), key(nt=64), key(dtype_name="float64"),
            key(shuffles=False), key(global_scratch=True), key(G=4), key(split=True),
            key(split=True, split_products=True), key(HPL=8), key(QPL=8), key(MV=8),
            key(keyed=True), key(prefetch=False), key(prefetch=False, packed=8),
            key(prefetch=False, packed=4)]
    assert len(set(keys)) == len(keys)


def test_blocks_per_sm_is_compiled_into_the_kernel(monkeypatch):
    """CUDA_MIN_BLOCKS_PER_SM = 2 builds a kernel of its own, whose launch bound (on a
    GPU; the simulator has none) asks for two blocks per SM, and which loads a round's
    rows in the round (CUDA_PREFETCH_ROWS left aside); forward and step exact."""
    be = _be()
    for cache in ("_KERNELS", "_KERNELS_BY_ARGS", "_PLANS"):    # built here, even on a rerun
        monkeypatch.setattr(be, cache, {})
    built = []
    real = be._build_sequence_kernel
    monkeypatch.setattr(be, "_build_sequence_kernel",
                        lambda *key: built.append(key) or real(*key))
    monkeypatch.setattr(_config, "CUDA_MIN_BLOCKS_PER_SM", 2)
    _forward_then_step_exact(make_model(score="general", recurrence="hc", D=5, H=7))
    given = [inspect.signature(real).bind(*key).arguments for key in built]
    # two blocks per SM: 128 registers a thread, none to spare for prefetched rows
    assert given and all(a["MB"] == 2 and not a["prefetch"] for a in given)
    if not be.SIMULATOR:
        nt = be.last_launch()["threads"]
        assert be._KERNELS[built[0]].targetoptions["launch_bounds"] == (nt, 2)


def test_each_score_family_runs_its_own_kernel(monkeypatch):
    """The scores without a key cache (dot, scaled_dot, general) launch the kernel built
    without the key loads (fewer registers on a GPU), which loads a round's history rows
    during the round before (CUDA_PREFETCH_ROWS, unless it is False), kq and additive the
    keyed one, which loads them in the round; a forward and a step of each are exact."""
    be = _be()
    launched = []
    real = be._sequence_kernel

    def recording(*args):
        given = inspect.signature(real).bind(*args).arguments
        launched.append((given.get("keyed", False), given.get("prefetch", False)))
        return real(*args)

    monkeypatch.setattr(be, "_sequence_kernel", recording)
    for prefetch in (True, False):
        monkeypatch.setattr(_config, "CUDA_PREFETCH_ROWS", prefetch)
        for score in ("dot", "scaled_dot", "general", "kq", "additive"):
            launched.clear()
            _forward_then_step_exact(make_model(score=score, D=5, H=7, Ha=4))
            keyed = score in ("kq", "additive")
            assert launched and set(launched) == {(keyed, prefetch and not keyed)}, score


@pytest.mark.parametrize("dtype,loads", [("float32", 4), ("float64", 2)])
def test_matrix_vector_products_in_whole_rounds_and_a_last_partial_one(monkeypatch, dtype,
                                                                        loads):
    """CUDA_MATVEC_WORDS = 4: a thread loads 4 float32 (2 float64) weights per round, so
    the products of H = 7 terms (W_c c, W_h h, W_s h, W_k h, W_q h) and the step's W_x x of
    D = 5 terms take whole rounds and a last, partial round (float64's W_c c of H = 6
    terms only whole ones); exact for every weight matrix, in forward and in step."""
    monkeypatch.setattr(_config, "CUDA_MATVEC_WORDS", 4)
    assert _be().weights_in_flight(dtype) == loads
    for score, H in (("general", 7), ("kq", 7), ("additive", 6)):
        _forward_then_step_exact(make_model(score=score, recurrence="hc", dtype=dtype, D=5,
                                            H=H, Ha=5))


def _forward_then_step_exact(model):
    """Two sequences of a model with D = 5: ``forward`` over 4 steps, then one ``step``;
    both exact against the reference."""
    x = make_x(2, 5, 5)
    st = model.init_state(2)
    out = model.forward(x[:, :4], state=st, backend="cuda")
    h, c = model.step(x[:, 4], st, backend="cuda")
    ref = reference(model, x)
    assert max_err(out.h, ref.h[:, :4]) <= tol(model)
    assert max_err(out.c, ref.c[:, :4]) <= tol(model)
    assert max_err(h, ref.h[:, 4]) <= tol(model)
    assert max_err(c, ref.c[:, 4]) <= tol(model)


def _project_inside_the_kernel(monkeypatch):
    """Every launch of the sequence kernel projects ``W_x x_t + b`` itself, as a step's
    does, also in a forward over several steps (whose outputs past a sequence's length
    are zeroed first, as the projection kernel zeroes them)."""
    be = _be()
    real = be._launch

    def launch_inline(p, w, d_x, lens, d_len, state, d_out_h, d_out_c, d_attn, compact,
                      inline, slot=None):
        if not inline:
            be._fill_zero(d_out_h)
            be._fill_zero(d_out_c)
        real(p, w, d_x, lens, d_len, state, d_out_h, d_out_c, d_attn, compact, True, slot)
    monkeypatch.setattr(be, "_launch", launch_inline)


@pytest.mark.parametrize("parts", [1, 2])
def test_projection_inside_the_kernel_over_several_steps(monkeypatch, parts):
    """The kernel's own projection of ``W_x x_t + b`` (a step's; the first x_t is read
    with h and c before the first barrier, later ones in the time loop), run here by
    ``forward`` over 5 steps with lengths and a state carried over, on one block and
    split in 2 parts (on the simulator one block takes both parts; on a GPU two blocks
    do): every score family against the reference."""
    be = _be()
    monkeypatch.setattr(_config, "CUDA_SPLIT_PARTS", parts)
    _project_inside_the_kernel(monkeypatch)
    x = make_x(2, 8, 5)
    lengths = np.array([5, 3])
    for score in ("dot", "general", "kq", "additive"):
        model = make_model(score=score, recurrence="hc", D=5, H=6, Ha=4)
        st = model.init_state(2)
        model.forward(x[:, :3], state=st, backend="cuda")
        out = model.forward(x[:, 3:], lengths=lengths, state=st, backend="cuda")
        assert be.last_launch()["parts"] == parts
        ref = reference(model, x)
        for b, n in enumerate(lengths):
            assert max_err(out.h[b, :n], ref.h[b, 3:3 + n]) <= tol(model)
            assert max_err(out.c[b, :n], ref.c[b, 3:3 + n]) <= tol(model)


def test_steps_and_forwards_plan_their_split_apart(monkeypatch):
    """``step`` asks the split plan for a step (CUDA_SPLIT_STEP_MIN_POSITIONS), ``forward``
    for a forward."""
    be = _be()
    asked = []
    real = be._split_plan

    def plan(*args, **kw):
        asked.append(kw.get("step"))
        return real(*args, **kw)

    monkeypatch.setattr(be, "_split_plan", plan)
    model = make_model(score="dot", D=5, H=6)
    st = model.init_state(1)
    model.forward(make_x(1, 3, 5), state=st, backend="cuda")
    model.step(make_x(1, 1, 5)[:, 0], st, backend="cuda")
    assert asked == [False, True]


def test_production_block_size(monkeypatch):
    """The shipped block size (several warps of 32 lanes) on a small problem, every score
    family: dot-like, keyed, additive; a window; float32."""
    monkeypatch.setattr(_config, "CUDA_BLOCK_SIZE", PRODUCTION_BLOCK)
    be = _be()
    nt = be.block_geometry(6, 4, 3, np.float32, be.use_shuffles(), be.rows_per_warp())[0]
    assert nt == PRODUCTION_BLOCK and nt >= 64      # at least two warps
    x = make_x(2, 4, 3)
    for score, window in (("general", None), ("additive", 2)):
        model = make_model(score=score, recurrence="hc", window=window, D=3, H=6, Ha=4,
                           dtype="float32")
        st = model.init_state(2)
        a = model.forward(x[:, :3], state=st, return_attention=True, backend="cuda")
        h, _ = model.step(x[:, 3], st, backend="cuda")
        ref = reference(model, x, return_attention=True)
        assert max_err(a.attention, ref.attention[:, :3, :3]) <= tol(model)
        assert max_err(h, ref.h[:, 3]) <= tol(model)


def _stream_matches_numpy(model, parts=1, blocks=1):
    """Stream two sequences (lengths, forward, step, forward; dense or compact attention)
    with the cuda backend and the NumPy reference; the launches must have used ``parts``
    parts on ``blocks`` blocks per sequence."""
    be = _be()
    x = make_x(2, 9, 5)
    lengths = np.array([5, 3])
    compact = model.window is not None
    outs = {}
    for backend in ("cuda", "numpy"):
        st = model.init_state(2)
        a = model.forward(x[:, :5], lengths=lengths, state=st, return_attention=True,
                          backend=backend)
        h, _ = model.step(x[:, 5], st, backend=backend)
        b = model.forward(x[:, 6:], state=st, return_attention="window" if compact else True,
                          backend=backend)
        if backend == "cuda":
            launch = be.last_launch()
            assert (launch["parts"], launch["blocks_per_sequence"]) == (parts, blocks)
        outs[backend] = (a.h, a.c, a.attention, h, b.h, b.c, b.attention, st.h, st.c,
                         st.hist, st.positions)
    for got, want in zip(outs["cuda"], outs["numpy"]):
        assert max_err(got, want) <= tol(model)
    assert outs["cuda"][-1].tolist() == [9, 7]


# -- several sequences per block (the packed kernel: CUDA_SEQUENCES_PER_BLOCK) -----------------
def _packed(monkeypatch, per_block, shared=True):
    """Run ``per_block`` sequences per block (scratch in shared or global memory);
    returns the block size a launch must then have: a warp of the test's lanes each."""
    monkeypatch.setattr(_config, "CUDA_SEQUENCES_PER_BLOCK", per_block)
    if not shared:
        monkeypatch.setattr(_config, "CUDA_SHARED_BYTES", 0)
    return min(_config.CUDA_BLOCK_SIZE, 32) * per_block


def _assert_packed_launch(per_block, threads, shared=True):
    launch = _be().last_launch()
    assert launch["sequences_per_block"] == per_block
    assert launch["threads"] == threads
    assert (launch["parts"], launch["blocks_per_sequence"]) == (1, 1)
    assert launch["global_scratch"] == (not shared)


@pytest.mark.parametrize("per_block", [2, 3])
@pytest.mark.parametrize("score,recurrence,window", [
    ("dot", "c", None), ("scaled_dot", "hc", 3), ("general", "c", 4),
    ("kq", "hc", None), ("additive", "c", 3)])
def test_several_sequences_per_block_match_the_reference(monkeypatch, score, recurrence,
                                                         window, per_block):
    """Two sequences of lengths 5 and 3 in one block (and, with 3 per block, a warp
    whose sequence is past the batch): every score, both recurrences, windows, streaming
    (forward, step, forward), dense and compact attention."""
    threads = _packed(monkeypatch, per_block)
    model = make_model(score=score, recurrence=recurrence, window=window, D=5, H=6, Ha=4)
    _stream_matches_numpy(model)
    _assert_packed_launch(per_block, threads)


@pytest.mark.parametrize("per_block,shared,score,recurrence,H,Ha,inline", [
    (2, True, "kq", "hc", 6, 3, False), (4, True, "kq", "hc", 6, 3, False),
    (2, False, "kq", "hc", 6, 3, False), (2, True, "kq", "hc", 11, 3, False),
    (2, True, "general", "c", 11, None, False), (2, True, "kq", "c", 6, 11, False),
    (2, True, "kq", "hc", 6, 3, True), (3, True, "general", "c", 11, None, True)],
    ids=["2", "4", "2-global_scratch", "2-H11", "2-general-c-H11", "2-kq-c-Ha11",
         "2-projected_inside", "3-general-c-H11-projected_inside"])
def test_packed_blocks_with_lengths_and_a_partial_last_block(monkeypatch, per_block, shared,
                                                             score, recurrence, H, Ha,
                                                             inline):
    """Five sequences of lengths 7, 3, 0, 5, 1 (one that does not run, blocks whose
    sequences end at different steps, a last block with sequences past the batch),
    forward with attention, three steps (the third repeats the second's launch,
    _launch_again, once the second prepared it; launches prepared as on a GPU by a stand-in
    on the simulator and on a GPU alike), a forward: outputs, state and history against
    the reference; with
    H = 11 (or Ha = 11), more outputs of h_t (of the key and query) than a block of 4-lane
    warps has threads (a thread computes several), for both recurrences; and with the
    forwards' projection made inside the kernel, as a step's is (later steps' x_t read
    in the time loop)."""
    threads = _packed(monkeypatch, per_block, shared)
    be = _be()
    _launches_prepared_by(monkeypatch, be, _stand_in_prepare(be, []))
    step_launches = []
    launch = be._launch

    def counting(*args, **kwargs):
        slot = kwargs.get("slot", args[11] if len(args) > 11 else None)
        if slot is not None:      # a step's (a forward has none)
            step_launches.append(1)
        return launch(*args, **kwargs)

    monkeypatch.setattr(be, "_launch", counting)
    if inline:
        _project_inside_the_kernel(monkeypatch)
    model = make_model(score=score, recurrence=recurrence, window=4, D=5, H=H, Ha=Ha)
    x = make_x(5, 12, 5)
    lengths = np.array([7, 3, 0, 5, 1])
    outs = {}
    for backend in ("cuda", "numpy"):
        st = model.init_state(5)
        a = model.forward(x[:, :7], lengths=lengths, state=st, return_attention=True,
                          backend=backend)
        steps = [model.step(x[:, 7 + i], st, backend=backend) for i in range(3)]
        b = model.forward(x[:, 10:], state=st, return_attention="window", backend=backend)
        outs[backend] = (a.h, a.c, a.attention, *[v for hc in steps for v in hc], b.h, b.c,
                         b.attention, st.h, st.c, st.hist, st.positions)
        if backend == "cuda":
            _assert_packed_launch(per_block, threads, shared)
            assert len(step_launches) == 2
    for got, want in zip(outs["cuda"], outs["numpy"]):
        assert max_err(got, want) <= tol(model)
    assert outs["cuda"][-1].tolist() == [12, 8, 5, 10, 6]


@pytest.mark.parametrize("shuffles", [False, True], ids=["shared_reduce", "shuffles"])
def test_packed_blocks_at_the_production_block_size(monkeypatch, shuffles):
    """Warps of 32 lanes, three sequences per block (96 threads), float32: forward and
    step against the reference; with the shared-memory warp reduce and with shuffles
    (on the simulator, tests/_cuda_shuffles.py's)."""
    if shuffles:
        if _be().SIMULATOR:
            from _cuda_shuffles import warp_shuffles
            warp_shuffles(monkeypatch)
        monkeypatch.setattr(_config, "CUDA_WARP_SHUFFLES", True)
    else:
        monkeypatch.setattr(_config, "CUDA_WARP_SHUFFLES", False)
    monkeypatch.setattr(_config, "CUDA_BLOCK_SIZE", PRODUCTION_BLOCK)
    threads = _packed(monkeypatch, 3)
    assert threads == 96
    model = make_model(score="additive", recurrence="hc", window=3, D=5, H=7, Ha=4,
                       dtype="float32")
    _forward_then_step_exact(model)
    _assert_packed_launch(3, threads)


# -- one sequence's positions split over several blocks (a cooperative kernel) ----------------
@pytest.mark.parametrize("parts,products", [(2, False), (3, False), (3, True)],
                         ids=["2parts", "3parts", "3parts-split_products"])
@pytest.mark.parametrize("score,recurrence,window", [
    ("dot", "c", None), ("scaled_dot", "hc", 3), ("general", "c", 4),
    ("kq", "hc", None), ("additive", "c", 3)])
def test_split_over_blocks_matches_the_reference(monkeypatch, score, recurrence, window,
                                                 parts, products):
    """Forced parts (on the simulator one block per sequence takes all of them; on a GPU,
    one block per part): every score, lengths, streaming, dense and compact attention;
    early steps attend fewer positions than there are parts (empty parts); the blocks
    computing all of h_t or a slice each (CUDA_SPLIT_PRODUCTS)."""
    monkeypatch.setattr(_config, "CUDA_SPLIT_PARTS", parts)
    monkeypatch.setattr(_config, "CUDA_SPLIT_PRODUCTS", products)
    model = make_model(score=score, recurrence=recurrence, window=window, D=5, H=6, Ha=4)
    _stream_matches_numpy(model, parts, 1 if _be().SIMULATOR else parts)


@pytest.mark.parametrize("score,recurrence,window,parts,blocks,shared,products,H", [
    ("dot", "c", None, 2, 2, True, False, 6), ("kq", "hc", 3, 3, 2, True, False, 6),
    ("additive", "c", 4, 3, 3, False, False, 6), ("dot", "c", None, 2, 2, True, True, 6),
    ("kq", "hc", 3, 3, 2, True, True, 6), ("additive", "c", 4, 3, 3, False, True, 6),
    ("scaled_dot", "hc", None, 7, 7, True, True, 6),
    ("general", "hc", None, 2, 2, True, True, 10)])
def test_split_blocks_running_concurrently(monkeypatch, score, recurrence, window, parts,
                                           blocks, shared, products, H):
    """Several blocks per sequence, all running at once and meeting at a real grid barrier
    (the simulator patched by tests/_cuda_blocks.py): blocks that share parts, partials
    exchanged through global memory, per-block scratch in shared or global memory; with
    CUDA_SPLIT_PRODUCTS, each block's slice of h_t exchanged through the history row (7
    blocks for H = 6: one computes none; 2 for H = 10: a thread of a 4-thread block
    computes two outputs of its block's 5)."""
    be = _be()
    if not be.SIMULATOR:
        pytest.skip("simulator harness; on a GPU test_split_over_blocks_matches_the_"
                    "reference runs one block per part")
    from _cuda_blocks import concurrent_blocks
    counts = concurrent_blocks(monkeypatch)
    monkeypatch.setattr(be, "_split_plan", lambda *args, **kw: (parts, blocks))
    monkeypatch.setattr(_config, "CUDA_SPLIT_PRODUCTS", products)
    if not shared:
        monkeypatch.setattr(_config, "CUDA_SHARED_BYTES", 0)
    model = make_model(score=score, recurrence=recurrence, window=window, D=5, H=H, Ha=4)
    _stream_matches_numpy(model, parts, blocks)
    assert be.last_launch()["global_scratch"] == (not shared)
    # the 9 steps of the stream's split launches: a grid barrier each, two when the blocks
    # share out h_t's products
    assert counts["grid_barriers"] == 9 * (2 if products else 1)


def test_split_at_the_production_block_size_and_global_scratch(monkeypatch):
    monkeypatch.setattr(_config, "CUDA_SPLIT_PARTS", 2)
    model = make_model(score="additive", recurrence="hc", D=3, H=6, Ha=4, dtype="float32")
    x = make_x(2, 5, 3).astype(np.float32)
    ref = reference(model, x, return_attention=True)
    for block, shared in ((PRODUCTION_BLOCK, _config.CUDA_SHARED_BYTES), (4, 0)):
        monkeypatch.setattr(_config, "CUDA_BLOCK_SIZE", block)
        monkeypatch.setattr(_config, "CUDA_SHARED_BYTES", shared)
        out = model.forward(x, return_attention=True, backend="cuda")
        launch = _be().last_launch()
        assert launch["parts"] == 2 and launch["global_scratch"] == (shared == 0)
        assert max_err(out.c, ref.c) <= tol(model)
        assert max_err(out.attention, ref.attention) <= tol(model)


def test_split_plan(monkeypatch):
    """How many parts and blocks per sequence a launch gets."""
    be = _be()
    if not be.SIMULATOR:
        pytest.skip("the simulator's plan (a GPU's depends on its SMs)")
    unused = lambda P: pytest.fail("the simulator needs no occupancy query")   # noqa: E731
    assert be._split_plan(1, 4096, unused, unused, 4, 0) == (1, 1)   # auto: never here
    monkeypatch.setattr(_config, "CUDA_SPLIT_PARTS", 1)
    assert be._split_plan(1, 4096, unused, unused, 4, 0) == (1, 1)
    monkeypatch.setattr(_config, "CUDA_SPLIT_PARTS", 5)
    assert be._split_plan(3, 2, unused, unused, 4, 0) == (5, 1)  # one block takes all five


@pytest.mark.parametrize("bad", [0, -2, 2.5, True, "many"])
def test_bad_split_parts_are_refused(monkeypatch, bad):
    model = make_model(D=5, H=6)
    st = model.init_state(1)
    monkeypatch.setattr(_config, "CUDA_SPLIT_PARTS", bad)
    with pytest.raises(ValueError, match="CUDA_SPLIT_PARTS"):
        model.forward(make_x(1, 2, 5), state=st, backend="cuda")
    assert st.positions.tolist() == [0]


def test_split_plan_on_a_gpu(monkeypatch):
    """The GPU side of the plan, with the device's SM count and the cooperative-launch
    limit stubbed: one block per part while all fit; a kernel that cannot be built (no
    cudadevrt) falls back to one block per sequence with a warning, once."""
    be = _be()

    class Device:
        MULTIPROCESSOR_COUNT = 132
        COOPERATIVE_LAUNCH = 1
        id = 0

    limit = {"blocks": 264}

    def cooperative_limit(kern, args_fn, nt, shared_bytes, device=None):
        if limit["blocks"] is None:
            raise RuntimeError("cudadevrt not found")
        return limit["blocks"]

    monkeypatch.setattr(be, "SIMULATOR", False)
    monkeypatch.setattr(be.cuda, "get_current_device", lambda: Device())
    monkeypatch.setattr(be, "_cooperative_limit", cooperative_limit)
    monkeypatch.setattr(be, "_SPLIT_ERROR", None)
    monkeypatch.setattr(_config, "CUDA_SPLIT_MIN_POSITIONS", 256)
    plan = lambda B, n: be._split_plan(B, n, lambda P: None, lambda P: (), 256, 0)  # noqa: E731
    assert plan(1, 1024) == (4, 4)          # 1024 positions: four parts of 256
    assert plan(1, 511) == (1, 1)           # too short to split
    monkeypatch.setattr(_config, "CUDA_SPLIT_STEP_MIN_POSITIONS", 1024)

    def step_plan(B, n):
        return be._split_plan(B, n, lambda P: None, lambda P: (), 256, 0, step=True)

    assert step_plan(1, 1024) == (1, 1)     # a step: 1024 positions per part at least
    assert step_plan(1, 4096) == (4, 4)
    assert plan(100, 4096) == (1, 1)        # more sequences than SMs / 2
    limit["blocks"] = 80
    assert plan(40, 4096) == (2, 2)         # three parts wanted, two blocks each fit
    Device.COOPERATIVE_LAUNCH = 0
    assert plan(1, 4096) == (1, 1)          # no cooperative launches on this device
    Device.COOPERATIVE_LAUNCH = 1
    monkeypatch.setattr(_config, "CUDA_SPLIT_PARTS", 5)
    limit["blocks"] = 6
    assert plan(3, 8) == (5, 2)             # forced: two blocks share five parts
    limit["blocks"] = 3
    assert plan(3, 8) == (1, 1)             # one block per sequence: no split
    limit["blocks"] = None
    with pytest.raises(RuntimeError, match="cudadevrt"):
        plan(1, 4096)                       # forced: the error, not a fallback
    monkeypatch.setattr(_config, "CUDA_SPLIT_PARTS", "auto")
    with pytest.warns(RuntimeWarning, match="cudadevrt not found"):
        assert plan(1, 4096) == (1, 1)
    limit["blocks"] = 264
    assert plan(1, 4096) == (1, 1)          # remembered: not retried
    assert "cudadevrt" in be._SPLIT_ERROR


@pytest.mark.parametrize("choice", ["auto", 2])
def test_a_refused_split_launch(monkeypatch, choice):
    """A cooperative launch the driver refuses (too many blocks, MPS limits): under "auto"
    the call runs one block per sequence, warns once and never splits again; a forced
    count raises the error and leaves the state as it was."""
    be = _be()
    real = be._sequence_kernel

    class Refused:
        def __getitem__(self, config):
            def launch(*args):
                raise RuntimeError("CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE")
            return launch

    monkeypatch.setattr(be, "_sequence_kernel", lambda *key: Refused() if key[4]
                        else real(*key))
    monkeypatch.setattr(be, "_split_plan", lambda *args, **kw: (2, 2))
    monkeypatch.setattr(be, "_SPLIT_ERROR", None)
    monkeypatch.setattr(_config, "CUDA_SPLIT_PARTS", choice)
    model = make_model(score="kq", D=5, H=6, Ha=3)
    x = make_x(2, 4, 5)
    st = model.init_state(2)
    if choice == "auto":
        with pytest.warns(RuntimeWarning, match="COOPERATIVE_LAUNCH_TOO_LARGE"):
            out = model.forward(x, state=st, backend="cuda")
        assert be.last_launch()["parts"] == 1 and "TOO_LARGE" in be._SPLIT_ERROR
        assert max_err(out.h, reference(model, x).h) <= tol(model)
    else:
        with pytest.raises(RuntimeError, match="TOO_LARGE"):
            model.forward(x, state=st, backend="cuda")
        assert st.positions.tolist() == [0, 0] and not st.h.any() and not st.hist.any()
        assert be._SPLIT_ERROR is None


def test_bad_config_is_refused(monkeypatch):
    """Also after a launch under good settings: the launch plan made from them is kept
    (_launch_plan) but remade, and checked, once a setting changes (True is not 1)."""
    model = make_model(D=5, H=6)
    monkeypatch.setattr(_config, "CUDA_MATVEC_WORDS", 1)
    for block in (4, 8):
        monkeypatch.setattr(_config, "CUDA_BLOCK_SIZE", block)
        model.forward(make_x(1, 2, 5), backend="cuda")
        assert _be().last_launch()["threads"] == block
    st = model.init_state(1)
    monkeypatch.setattr(_config, "CUDA_BLOCK_SIZE", 6)
    with pytest.raises(ValueError, match="power of two"):
        model.forward(make_x(1, 2, 5), state=st, backend="cuda")
    monkeypatch.setattr(_config, "CUDA_BLOCK_SIZE", 4)
    monkeypatch.setattr(_config, "CUDA_ROWS_PER_WARP", 0)
    with pytest.raises(ValueError, match="ROWS_PER_WARP"):
        model.forward(make_x(1, 2, 5), state=st, backend="cuda")
    monkeypatch.setattr(_config, "CUDA_ROWS_PER_WARP", 8)
    for words in (0, 2.0, True):
        monkeypatch.setattr(_config, "CUDA_MATVEC_WORDS", words)
        with pytest.raises(ValueError, match="MATVEC_WORDS"):
            model.forward(make_x(1, 2, 5), state=st, backend="cuda")
    monkeypatch.setattr(_config, "CUDA_MATVEC_WORDS", 16)
    model.forward(make_x(1, 2, 5), backend="cuda")    # the plan of these settings, kept
    assert _be()._launch_plan(model._kernel) is _be()._launch_plan(model._kernel)
    for blocks in (0, 9, 2.0, True):
        monkeypatch.setattr(_config, "CUDA_MIN_BLOCKS_PER_SM", blocks)
        with pytest.raises(ValueError, match="MIN_BLOCKS_PER_SM"):
            model.forward(make_x(1, 2, 5), state=st, backend="cuda")
    monkeypatch.setattr(_config, "CUDA_MIN_BLOCKS_PER_SM", 1)
    for prefetch in (1, 0, "yes", None):
        monkeypatch.setattr(_config, "CUDA_PREFETCH_ROWS", prefetch)
        with pytest.raises(ValueError, match="PREFETCH_ROWS"):
            model.forward(make_x(1, 2, 5), state=st, backend="cuda")
    monkeypatch.setattr(_config, "CUDA_PREFETCH_ROWS", True)
    for products in (1, 0, "yes", None):
        monkeypatch.setattr(_config, "CUDA_SPLIT_PRODUCTS", products)
        with pytest.raises(ValueError, match="SPLIT_PRODUCTS"):
            model.forward(make_x(1, 2, 5), state=st, backend="cuda")
    monkeypatch.setattr(_config, "CUDA_SPLIT_PRODUCTS", False)
    for cache in (1, 0, "yes", None):
        monkeypatch.setattr(_config, "CUDA_DISK_CACHE", cache)
        with pytest.raises(ValueError, match="DISK_CACHE"):
            model.forward(make_x(1, 2, 5), state=st, backend="cuda")
    monkeypatch.setattr(_config, "CUDA_DISK_CACHE", False)
    for per_block in (0, 33, 2.0, True, "2"):
        monkeypatch.setattr(_config, "CUDA_SEQUENCES_PER_BLOCK", per_block)
        with pytest.raises(ValueError, match="SEQUENCES_PER_BLOCK"):
            model.forward(make_x(1, 2, 5), state=st, backend="cuda")
    monkeypatch.setattr(_config, "CUDA_SEQUENCES_PER_BLOCK", 1)
    monkeypatch.setattr(_config, "CUDA_WARP_SHUFFLES", "sometimes")
    with pytest.raises(ValueError, match="WARP_SHUFFLES"):
        model.forward(make_x(1, 2, 5), state=st, backend="cuda")
    assert st.positions.tolist() == [0]


@pytest.mark.parametrize("shuffles", [False, True], ids=["shared-reduce", "shuffles"])
def test_warp_allsum_gives_every_lane_the_same_sums(monkeypatch, shuffles):
    """Both reduce helpers: the shared-memory one, and the shuffle one (on the simulator
    with the shuffles of tests/_cuda_shuffles.py)."""
    be = _be()
    if shuffles and be.SIMULATOR:
        from _cuda_shuffles import warp_shuffles
        warp_shuffles(monkeypatch)
    allsum = be._make_warp_allsum(shuffles, 2)

    @cuda.jit
    def kern(vals, out):
        tid = cuda.threadIdx.x
        width = 32 if cuda.blockDim.x >= 32 else cuda.blockDim.x
        buf = cuda.shared.array(256, np.float64)
        e = cuda.local.array(2, np.float64)
        e[0] = vals[tid]
        e[1] = 2 * vals[tid]
        allsum(e, tid % width, width, buf, 0, tid)
        out[tid, 0] = e[0]
        out[tid, 1] = e[1]

    for nt in (4, 64):
        vals = np.random.default_rng(nt).standard_normal(nt)
        out = np.zeros((nt, 2))
        kern[1, nt](vals, out)
        width = min(nt, 32)
        for w in range(nt // width):
            seg = vals[w * width: (w + 1) * width]
            assert np.all(out[w * width: (w + 1) * width] == out[w * width])
            assert abs(out[w * width, 0] - seg.sum()) < 1e-12
            assert abs(out[w * width, 1] - 2 * seg.sum()) < 1e-12


# -- what the simulator alone does not show: the GPU's reduce path, races ---------------------
def _instrumented(monkeypatch, shuffles, blocks):
    """Race-check this test's simulator launches (tests/_cuda_races.py); ``blocks`` > 1:
    a launch's blocks run at once (tests/_cuda_blocks.py); ``shuffles``: the GPU's warp
    reduce, with shuffles given to the simulator (tests/_cuda_shuffles.py), instead of
    the shared-memory one. Returns the race report and the shuffle count."""
    if not _be().SIMULATOR:
        pytest.skip("simulator instrumentation; on a GPU the kernels themselves run "
                    "(races there: compute-sanitizer --tool racecheck)")
    from _cuda_blocks import concurrent_blocks
    from _cuda_races import race_check
    from _cuda_shuffles import warp_shuffles
    if blocks > 1:      # first: the race check wraps its grid barrier and shared memory
        concurrent_blocks(monkeypatch)
    shuffled = {"calls": 0}
    if shuffles:
        shuffled = warp_shuffles(monkeypatch)
        monkeypatch.setattr(_config, "CUDA_WARP_SHUFFLES", True)
    return race_check(monkeypatch), shuffled


def test_the_race_check_tells_a_race_from_ordered_and_harmless_accesses(monkeypatch):
    """The checker itself, on kernels whose answer is known: a missing barrier, blocks
    writing one element, a read of unwritten shared memory are reported; the same with a
    barrier, blocks writing one value, and atomics are not."""
    report, _ = _instrumented(monkeypatch, False, 1)

    @cuda.jit
    def neighbours(out, barrier):
        sh = cuda.shared.array(8, np.float64)
        i = cuda.threadIdx.x
        sh[i] = i
        if barrier:
            cuda.syncthreads()
        out[cuda.blockIdx.x, i] = sh[(i + 1) % cuda.blockDim.x]

    @cuda.jit
    def same_element(out, value_per_block):
        if cuda.threadIdx.x == 0:
            out[0] = cuda.blockIdx.x + 1 if value_per_block else 1
        cuda.atomic.add(out, 1, 1)

    @cuda.jit
    def unwritten(out):
        sh = cuda.shared.array(8, np.float64)
        out[cuda.threadIdx.x] = sh[cuda.threadIdx.x]

    @cuda.jit
    def two_arrays(out):
        a = cuda.shared.array(4, np.float64)
        b = cuda.shared.array(4, np.float64)
        a[cuda.threadIdx.x] = 1
        b[cuda.threadIdx.x] = 2
        out[cuda.threadIdx.x] = a[cuda.threadIdx.x]

    out = np.zeros((2, 4))
    neighbours[2, 4](out, True)
    same_element[3, 2](np.zeros(2), False)
    # 2 blocks x 4 threads x 3 accesses; 3 blocks' thread 0 writes once; atomics: none
    assert report.races == [] and report.launches == 2 and report.accesses == 2 * 4 * 3 + 3
    assert out[1].tolist() == [1, 2, 3, 0]
    neighbours[2, 4](out, False)
    assert any("read-write race on shared" in r for r in report.races), report.races
    report.races.clear()
    same_element[3, 2](np.zeros(2), True)
    assert report.races and all("write-write race on global" in r for r in report.races)
    report.races.clear()
    unwritten[1, 4](np.zeros(4))
    assert report.races and "uninitialised" in report.races[0]
    report.races.clear()
    two = np.zeros(4)
    two_arrays[1, 4](two)             # two static arrays stay two arrays
    assert two.tolist() == [1, 1, 1, 1] and report.races == []


@pytest.mark.parametrize("grid_barrier", [True, False])
def test_the_race_check_orders_blocks_by_the_grid_barrier(monkeypatch, grid_barrier):
    """Blocks running at once (tests/_cuda_blocks.py): each block writes the same row 0
    and reads it after its own barrier (harmless: the same values whichever block wrote
    last), then a row of its own, which the other block reads: ordered by a grid barrier,
    a race without one."""
    report, _ = _instrumented(monkeypatch, False, 2)

    @cuda.jit
    def rows(out, barrier):
        i = cuda.threadIdx.x
        out[0, i] = i + 1
        cuda.syncthreads()
        out[1 + cuda.blockIdx.x, i] = out[0, (i + 1) % 4] * (cuda.blockIdx.x + 1)
        if barrier:
            cuda.cg.this_grid().sync()
        out[3 + cuda.blockIdx.x, i] = out[2 - cuda.blockIdx.x, i]

    out = np.zeros((5, 4))
    rows[2, 4](out, grid_barrier)
    if grid_barrier:
        assert report.races == []
        assert out[3].tolist() == [4, 6, 8, 2] and out[4].tolist() == [2, 3, 4, 1]
    else:
        assert report.races and all("read-write race on global" in r
                                    and ("][1, " in r or "][2, " in r)
                                    for r in report.races), report.races


def test_the_simulator_shuffles_refuse_what_a_gpu_leaves_undefined(monkeypatch):
    be = _be()
    if not be.SIMULATOR:
        pytest.skip("the simulator's emulated shuffles")
    from _cuda_shuffles import warp_shuffles
    warp_shuffles(monkeypatch, timeout=5.0)

    @cuda.jit
    def shuffle(out, mask, offset):
        out[cuda.threadIdx.x] = cuda.shfl_xor_sync(mask, cuda.threadIdx.x * 10, offset)

    out = np.zeros(4, dtype=np.int64)
    shuffle[1, 4](out, 0xF, 1)
    assert out.tolist() == [10, 0, 30, 20]
    for mask, offset, why in ((0xFF, 1, "past the 4"), (0x3, 1, "not in its mask"),
                              (0xF, 4, "not in the mask")):
        with pytest.raises(AssertionError, match=why):
            shuffle[1, 4](out, mask, offset)


_RACE_CASES = [     # score, recurrence, window, parts, blocks per sequence, shared scratch,
    # blocks that share out h_t's products (CUDA_SPLIT_PRODUCTS)
    ("dot", "c", None, 1, 1, True, False), ("scaled_dot", "hc", 3, 1, 1, True, False),
    ("kq", "hc", 3, 1, 1, False, False), ("general", "c", 4, 2, 2, True, False),
    ("additive", "hc", None, 3, 2, False, False), ("general", "hc", 4, 2, 2, True, True)]


def _race_case_id(case):
    score, _, window, parts, blocks, shared, products = case
    return "-".join([score] + (["window"] if window else []) +
                    ([f"{parts}parts-{blocks}blocks"] if parts > 1 else []) +
                    ([] if shared else ["global_scratch"]) +
                    (["split_products"] if products else []))


@pytest.mark.parametrize("case,threads,shuffles", [
    *[pytest.param(c, 4, sh, id=f"{_race_case_id(c)}-4threads-{name}")
      for c in _RACE_CASES for sh, name in ((False, "shared_reduce"), (True, "shuffles"))],
    # several warps: a warp reads what another wrote (the shuffles' 32-lane masks:
    # test_warp_allsum_gives_every_lane_the_same_sums)
    pytest.param(("kq", "c", 3, 1, 1, True, False), 64, False, id="kq-window-64threads"),
    pytest.param(("additive", "hc", 4, 2, 2, True, False), 64, False,
                 id="additive-window-2parts-2blocks-64threads"),
    pytest.param(("dot", "c", None, 2, 2, True, False), 64, False,   # rows a round ahead
                 id="dot-2parts-2blocks-64threads"),
    pytest.param(("dot", "hc", None, 2, 2, True, True), 64, False,
                 id="dot-2parts-2blocks-split_products-64threads")])
def test_kernels_have_no_races(monkeypatch, case, threads, shuffles):
    """Every element access of every launch, with the barriers its thread had passed: no
    two accesses that no barrier orders have an outcome that depends on their order (two
    writes of different values, a read that could see another value), and no shared
    memory is read before the block wrote it. Streaming with lengths, a step,
    dense and compact attention; both warp reduces (with shuffles, the scratch layout a GPU
    gets); one warp and several; scratch in shared and global memory; the split kernel with
    its blocks running at once and meeting at the grid barrier."""
    score, recurrence, window, parts, blocks, shared, products = case
    report, shuffled = _instrumented(monkeypatch, shuffles, blocks)
    monkeypatch.setattr(_config, "CUDA_SPLIT_PRODUCTS", products)
    be = _be()
    monkeypatch.setattr(_config, "CUDA_BLOCK_SIZE", threads)
    if threads > 32:    # several warps: rounds of 2 rows, so that a warp takes several
        monkeypatch.setattr(_config, "CUDA_ROWS_PER_WARP", 2)
    if parts > 1:
        monkeypatch.setattr(be, "_split_plan", lambda *args, **kw: (parts, blocks))
    if not shared:
        monkeypatch.setattr(_config, "CUDA_SHARED_BYTES", 0)
    model = make_model(score=score, recurrence=recurrence, window=window, D=5, H=6, Ha=4)
    try:
        _stream_matches_numpy(model, parts, blocks)
    finally:        # a race is the cause to report, before any wrong value it gave
        assert not report.races, "\n".join(report.races)
    assert be.last_launch()["global_scratch"] == (not shared)
    assert be.last_launch()["threads"] == threads
    assert report.launches >= 4 and report.accesses > 1000, vars(report)
    assert (shuffled["calls"] > 0) == shuffles


@pytest.mark.parametrize("score,recurrence,window,shared,shuffles,per_block,H,Ha", [
    ("dot", "c", None, True, False, 2, 6, 4), ("scaled_dot", "hc", 3, True, True, 2, 6, 4),
    ("kq", "hc", 3, False, False, 2, 6, 4), ("additive", "c", None, True, True, 2, 6, 4),
    ("general", "hc", 4, False, True, 2, 6, 4), ("dot", "hc", None, True, False, 3, 6, 4),
    ("kq", "c", 3, True, True, 3, 6, 4), ("dot", "c", None, True, True, 10, 6, 4),
    ("kq", "hc", 4, True, False, 2, 11, 3), ("kq", "hc", 4, True, True, 2, 11, 3),
    ("general", "c", 4, True, False, 2, 11, None)])
def test_packed_kernel_has_no_races(monkeypatch, score, recurrence, window, shared,
                                    shuffles, per_block, H, Ha):
    """The packed kernel (two, three or ten sequences per block, warps of 4 lanes; with
    shuffles, the second warp's mask names lanes 4-7 of the hardware warp, and with ten,
    the ninth's lanes 0-3 of the second hardware warp; with more sequences per block than
    the batch's two, warps whose sequence is past the batch): no two accesses that no barrier orders depend
    on their order, no shared memory read before the block wrote it, through lengths, a
    step, dense and compact attention."""
    report, shuffled = _instrumented(monkeypatch, shuffles, 1)
    threads = _packed(monkeypatch, per_block, shared)
    model = make_model(score=score, recurrence=recurrence, window=window, D=5, H=H, Ha=Ha)
    try:
        _stream_matches_numpy(model)
    finally:
        assert not report.races, "\n".join(report.races)
    _assert_packed_launch(per_block, threads, shared)
    assert report.launches >= 4 and report.accesses > 1000, vars(report)
    assert (shuffled["calls"] > 0) == shuffles


@pytest.mark.parametrize("recurrence,threads,blocks", [
    ("c", 4, 1), ("c", 64, 1), ("hc", 64, 1), ("c", 4, 2), ("hc", 4, 2)])
def test_the_projection_inside_the_kernel_has_no_races(monkeypatch, recurrence, threads,
                                                       blocks):
    """Forwards over several steps with the kernel's own projection: each later step's
    ``x_t`` is stored to the scratch by some threads and read by the products of others
    (one part per output with 4 threads, several with 64); on 2 blocks per sequence
    running at once, which share out h_t's products (CUDA_SPLIT_PRODUCTS)."""
    report, _ = _instrumented(monkeypatch, False, blocks)
    monkeypatch.setattr(_config, "CUDA_BLOCK_SIZE", threads)
    _project_inside_the_kernel(monkeypatch)
    if blocks > 1:
        monkeypatch.setattr(_be(), "_split_plan", lambda *args, **kw: (blocks, blocks))
        monkeypatch.setattr(_config, "CUDA_SPLIT_PRODUCTS", True)
    model = make_model(score="dot", recurrence=recurrence, D=5, H=6)
    try:
        _stream_matches_numpy(model, blocks, blocks)
    finally:
        assert not report.races, "\n".join(report.races)
    assert report.launches >= 4 and report.accesses > 1000, vars(report)


def test_launch_configurations_are_made_once_without_the_low_occupancy_warning(monkeypatch):
    """numba-cuda warns when a launch configuration of fewer than 128 blocks is made (a GPU
    only: the simulator does not), unless its CUDA_LOW_OCCUPANCY_WARNINGS is off; one
    block per sequence is this backend's design, so that switch is off while its own
    configurations are made (once per key) and restored after; other warnings pass."""
    import types
    import warnings
    be = _be()
    numba_config = types.SimpleNamespace(CUDA_LOW_OCCUPANCY_WARNINGS=1)
    monkeypatch.setattr(be, "_occupancy_config", lambda: numba_config)

    class Kernel:      # stands in for a dispatcher: warns as numba-cuda does on a GPU
        made = 0

        def __init__(self, extra=None):
            self.extra = extra

        def __getitem__(self, config):
            Kernel.made += 1
            if numba_config.CUDA_LOW_OCCUPANCY_WARNINGS:
                warnings.warn(f"Grid size {config[0]} will likely result in GPU "
                              f"under-utilization due to low occupancy.", RuntimeWarning)
            if self.extra:
                warnings.warn(self.extra, RuntimeWarning)
            return ("configured", config)

    kern = Kernel()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = be._configured(kern, 2, 256, 1024)
        assert be._configured(kern, 2, 256, 1024) is first
    assert first == ("configured", (2, 256, 0, 1024)) and Kernel.made == 1
    assert numba_config.CUDA_LOW_OCCUPANCY_WARNINGS == 1          # restored
    with pytest.warns(RuntimeWarning, match="something else"):
        be._configured(Kernel("something else"), 1, 32)

    class SelfConfiguring(Kernel):   # the simulator's kernels configure themselves
        def __getitem__(self, config):
            super().__getitem__(config)
            self.config = config
            return self

    kern = SelfConfiguring()
    assert be._configured(kern, 2, 4).config == (2, 4, 0, 0)
    be._configured(kern, 3, 4)
    assert be._configured(kern, 2, 4).config == (2, 4, 0, 0)    # configured again


@pytest.mark.parametrize("capacity,prepared", [(16, 1), (4, 3)])
def test_step_launches_are_prepared_once_per_set_of_buffers(monkeypatch, capacity, prepared):
    """On a GPU, a step stream's launches with unchanged arguments skip numba-cuda's argument
    marshalling: parameters made once, at the second launch with those arguments. With a
    stand-in for _prepare: one preparation per set of buffers (the history reallocated as
    the state grows from capacity 4: 4 -> 8 -> 16 makes new arguments), every later token
    through it, and results equal the reference (a stale launch would use the old history)."""
    be = _be()
    made = []
    prepare = _stand_in_prepare(be, made)
    _launches_prepared_by(monkeypatch, be, prepare)      # one context throughout
    model = make_model(score="kq", recurrence="hc", window=None, D=5, H=6, Ha=3)
    x = make_x(2, 12, 5)
    st = model.init_state(2, capacity=capacity)
    hs = [model.step(x[:, t], st, backend="cuda")[0].copy() for t in range(12)]
    assert max_err(np.stack(hs, 1), reference(model, x).h) <= tol(model)
    assert len(made) == prepared
    # a token is either new arguments, the preparing launch, or a prepared launch
    assert sum(f.used for f in prepare.launchers) == 12 - 2 * prepared


def test_a_prepared_step_launch_is_not_used_in_another_context(monkeypatch):
    """A prepared launch holds one context's kernel and pointers: a thread whose current
    context is another (another device) launches through numba-cuda and prepares anew."""
    be = _be()
    made = []
    prepare = _stand_in_prepare(be, made)
    context = [_StandInContext(be)]
    _launches_prepared_by(monkeypatch, be, prepare, context=lambda: context[0])
    model = make_model(score="dot", D=5, H=6)
    x = make_x(1, 8, 5)
    st = model.init_state(1, capacity=16)
    hs = []
    for t in range(8):
        if t == 4:
            context[0] = _StandInContext(be)
        hs.append(model.step(x[:, t], st, backend="cuda")[0].copy())
    assert max_err(np.stack(hs, 1), reference(model, x).h) <= tol(model)
    assert len(made) == 2 and [f.used for f in prepare.launchers] == [2, 2]


@pytest.mark.parametrize("prepared", [True, False], ids=["prepared", "unprepared"])
@pytest.mark.parametrize("score", ["dot", "kq"])     # without keys, with keys
def test_a_step_repeats_the_last_launch_only_while_nothing_it_was_made_from_changed(
        monkeypatch, score, prepared):
    """A step token whose launch would be made from the same objects as the previous
    token's repeats that launch (_launch_again) without going through _launch; anything
    that changes them sends the token through _launch: another setting, a grown history,
    a replaced ``state.h``, a failed call, a split of the positions over several blocks
    (its plan made at every token). In-place writes to the state, a CPU backend's
    step in between and inactive rows are honoured on the repeated launch. Every token is
    compared with a twin state stepped by the NumPy reference under the same writes.

    ``prepared``: launches prepared as on a GPU (a stand-in for _prepare) on the simulator
    and on a GPU alike: a launch is repeated once its arguments were prepared, at the
    second launch with them, so the token after one with new arguments goes through
    _launch as well. Unprepared: the simulator's own launches, repeated from the token
    after the first (a GPU always prepares)."""
    be = _be()
    if prepared:
        _launches_prepared_by(monkeypatch, be, _stand_in_prepare(be, []))
    elif not be.SIMULATOR:
        pytest.skip("a GPU prepares every repeated launch (the simulator's path)")
    block = _config.CUDA_BLOCK_SIZE      # the tests' (FASTSARNN_TEST_CUDA_BLOCK)
    full = []
    launch = be._launch

    def counting(*args, **kwargs):
        if kwargs.get("slot") is not None:      # a step's (a forward has none)
            full.append(t)
        return launch(*args, **kwargs)

    monkeypatch.setattr(be, "_launch", counting)
    model = make_model(score=score, recurrence="hc", window=None, D=5, H=6,
                       Ha=3 if score == "kq" else None)
    x = make_x(2, 17, 5)
    st, twin = model.init_state(2, capacity=6), model.init_state(2, capacity=6)
    auto_parts = be._auto_parts
    for t in range(17):
        active = None
        if t == 3:      # a CPU backend's step on the device state: it reaches the host
            for s in (st, twin):
                model.step(x[:, t], s, backend="numpy")
            continue
        if t == 5:
            monkeypatch.setattr(_config, "CUDA_ROWS_PER_WARP", 2)
        if t == 7:      # another launch in between, of 8 threads a block
            monkeypatch.setattr(_config, "CUDA_BLOCK_SIZE", 8 if block != 8 else 4)
            model.forward(x[:1, :2], backend="cuda")
            monkeypatch.setattr(_config, "CUDA_BLOCK_SIZE", block)
        if t == 8:      # replaced: the kernel must read and write the new arrays
            for s in (st, twin):
                s.h = s.h * 0.5
        if t == 9:      # written in place
            for s in (st, twin):
                s.c[...] *= 0.5
        if t == 10:
            active = np.array([True, False])
        if t == 11:     # the history written on the host: uploaded before the launch
            for s in (st, twin):
                s.hist[:, 1] += 0.25
        if t == 12:     # a failed call keeps no launch to repeat and changes no position,
            # h or c (the model grows the history before the backend refuses)
            monkeypatch.setattr(_config, "CUDA_MATVEC_WORDS", 0)
            with pytest.raises(ValueError, match="MATVEC_WORDS"):
                model.step(x[:, t], st, backend="cuda")
            assert st.positions.tolist() == twin.positions.tolist()
            assert max_err(st.h, twin.h) <= tol(model) and max_err(st.c, twin.c) <= tol(model)
            monkeypatch.setattr(_config, "CUDA_MATVEC_WORDS", 16)
        if t == 13:     # "auto" asks for 2 parts (on a GPU: positions past 2048)
            monkeypatch.setattr(be, "_auto_parts", lambda *args: 2)
        if t == 15:
            monkeypatch.setattr(be, "_auto_parts", auto_parts)
        got = model.step(x[:, t], st, active=active, backend="cuda")
        want = model.step(x[:, t], twin, active=active, backend="numpy")
        for g, w_ in zip(got, want):
            assert max_err(g, w_) <= tol(model), t
        assert st.positions.tolist() == twin.positions.tolist()
        assert be.last_launch() == {"parts": 2 if t in (13, 14) else 1, "threads": block,
                                    "blocks_per_sequence": 1, "global_scratch": False,
                                    "sequences_per_block": 1}, t
    n = twin.t
    assert max_err(st.hist[:, :n], twin.hist[:, :n]) <= tol(model)
    # new arguments at 0: the first; 5: another setting; 6: the history grows (capacity
    # 6 -> 12); 8: h replaced; 12: the failed call (the history grows to 24 in it) and the
    # token after it; 13, 14: split in two parts (never repeated); 15: one block again.
    # Prepared, each of 0, 6, 8, 12 and 15 is followed by the token that prepares its
    # launch (1, 7, 9, 13: split anyway, 16); 5's arguments change again at 6.
    assert full == ([0, 1, 5, 6, 7, 8, 9, 12, 12, 13, 14, 15, 16] if prepared
                    else [0, 5, 6, 8, 12, 12, 13, 14, 15])


def test_once_preparing_failed_no_prepared_launch_is_repeated(monkeypatch):
    """Once preparing failed somewhere in the process, every launch goes through
    numba-cuda, as the warning says: also a stream that holds a prepared launch to repeat."""
    be = _be()
    prepare = _stand_in_prepare(be, [])
    _launches_prepared_by(monkeypatch, be, prepare)
    model = make_model(score="dot", D=5, H=6)
    x = make_x(1, 8, 5)
    st = model.init_state(1, capacity=16)
    hs = [model.step(x[:, t], st, backend="cuda")[0].copy() for t in range(5)]
    used = prepare.launchers[0].used
    assert used == 3        # tokens 3, 4 and 5, each repeated by _launch_again
    monkeypatch.setattr(be, "_PREPARED_ERROR", "AttributeError: another stream's")
    hs += [model.step(x[:, t], st, backend="cuda")[0].copy() for t in range(5, 8)]
    assert prepare.launchers[0].used == used and len(prepare.launchers) == 1
    assert max_err(np.stack(hs, 1), reference(model, x).h) <= tol(model)


def test_a_failure_to_prepare_launches_warns_once_and_steps_go_on(monkeypatch):
    be = _be()
    tries = []

    def broken(*args):
        tries.append(1)
        raise AttributeError("'_Kernel' object has no attribute '_prepare_args'")

    _launches_prepared_by(monkeypatch, be, broken)
    model = make_model(score="dot", D=5, H=6)
    x = make_x(1, 6, 5)
    st = model.init_state(1)
    with pytest.warns(RuntimeWarning, match="cannot prepare kernel launches") as rec:
        hs = [model.step(x[:, t], st, backend="cuda")[0].copy() for t in range(6)]
    assert len(rec) == 1 and tries == [1] and "_prepare_args" in be._PREPARED_ERROR
    assert max_err(np.stack(hs, 1), reference(model, x).h) <= tol(model)


def test_a_direct_launch_packs_once_and_falls_back_to_cuda_core(monkeypatch):
    """A prepared one-block launch goes straight to the driver's cuLaunchKernel with the
    parameters packed once (the packing itself, and that it equals cuda.core's, is checked
    by benchmarks/cuda_compile_check.py). Should the driver return an error or the binding
    raise, nothing was launched: the launch goes through cuda.core, and once that works,
    every later one of any prepared launch does too, with one warning; where cuda.core's
    launch fails as well, its error is raised and the direct path stays."""
    be = _be()
    pytest.importorskip("cuda.bindings")
    from cuda.bindings import driver
    import types
    packed, driver_calls, core_calls = [], [], []
    answer = [(driver.CUresult.CUDA_SUCCESS,)]

    def launch_kernel(*args):
        driver_calls.append(tuple(int(a) for a in args))
        if isinstance(answer[0], Exception):
            raise answer[0]
        return answer[0]

    def through_core():
        core_calls.append(1)
        if core_fails:
            raise RuntimeError("CUDA_ERROR_ILLEGAL_ADDRESS")

    monkeypatch.setattr(be, "_DIRECT_ERROR", None)
    monkeypatch.setattr(be, "_param_holder", lambda params: packed.append(params) or
                        types.SimpleNamespace(ptr=4096))
    monkeypatch.setattr(driver, "cuLaunchKernel", launch_kernel)
    kernel = types.SimpleNamespace(handle=0x1234)
    stream = types.SimpleNamespace(handle=0)

    def direct():
        return be._DirectLaunch(kernel, (3, 1, 1), (256, 1, 1), 1024, stream, ["p0", "p1"],
                                through_core)
    core_fails = False
    first = direct()
    first()
    first()
    assert packed == [["p0", "p1"]] and not core_calls
    assert driver_calls == [(0x1234, 3, 1, 1, 256, 1, 1, 1024, 0, 4096, 0)] * 2
    # an error cuda.core's launch meets too: raised, the direct path stays on
    answer[0] = (driver.CUresult.CUDA_ERROR_ILLEGAL_ADDRESS,)
    core_fails = True
    with pytest.raises(RuntimeError, match="ILLEGAL_ADDRESS"):
        first()
    assert be._DIRECT_ERROR is None and len(driver_calls) == 3 and core_calls == [1]
    # an error of the direct path alone: cuda.core launches, for good, one warning
    answer[0] = (driver.CUresult.CUDA_ERROR_INVALID_HANDLE,)
    core_fails = False
    with pytest.warns(RuntimeWarning, match="INVALID_HANDLE") as rec:
        first()
        first()
        direct()()
    assert len(rec) == 1 and "INVALID_HANDLE" in be._DIRECT_ERROR
    assert len(driver_calls) == 4 and core_calls == [1] * 4
    monkeypatch.setattr(be, "_DIRECT_ERROR", None)     # a binding that raises
    answer[0] = TypeError("f: expected CUfunction")
    with pytest.warns(RuntimeWarning, match="CUfunction"):
        direct()()
    assert len(driver_calls) == 5 and core_calls == [1] * 5
    # a kernel object without the handle expected: no direct launch is made, cuda.core's
    # prepared one serves
    monkeypatch.setattr(be, "_DIRECT_ERROR", None)
    with pytest.warns(RuntimeWarning, match="handle"):
        got = be._direct_or_core(object(), (3, 1, 1), (256, 1, 1), 1024, stream, [],
                                 through_core)
    assert got is through_core and "handle" in be._DIRECT_ERROR
    assert be._direct_or_core(kernel, (3, 1, 1), (256, 1, 1), 1024, stream, [],
                              through_core) is through_core      # for good


# -- availability and the NumPy 2.5 compatibility step ------------------------------------------
def test_availability_needs_a_kernel_that_ran(monkeypatch):
    be = _be()
    assert be.availability() == (True, None)

    class Broken:
        def __getitem__(self, config):
            def launch(*args):
                raise AttributeError("module 'numpy' has no attribute 'row_stack'")
            return launch

    monkeypatch.setattr(be, "_probe_kernel", Broken())
    ok, reason = be._probe()
    assert not ok and "row_stack" in reason and "AttributeError" in reason


_ROW_STACK_CHECK = r"""
import sys, warnings
warnings.simplefilter("ignore")
import numpy as np
if hasattr(np, "row_stack"):
    del np.row_stack                      # as in NumPy >= 2.5
if sys.argv[1] == "control":
    from numba import cuda
    try:
        import numba.cuda.np.arrayobj
    except ModuleNotFoundError:
        print("LAYOUT")
    except AttributeError as exc:
        print("FAILS", exc)
    else:
        print("IMPORTS")
else:
    import fastsarnn as fs
    info = fs.backends()["cuda"]
    assert "numba.cuda.np.arrayobj" in sys.modules or "numba.cuda" in sys.modules
    assert not hasattr(np, "row_stack"), "the alias must not outlive the import"
    print("AVAILABLE" if info.available else "UNAVAILABLE " + str(info.reason))
"""


def test_backend_works_without_numpy_row_stack():
    """numba-cuda 0.30 names np.row_stack (removed in NumPy 2.5): simulate its absence."""
    def run(mode):
        r = subprocess.run([sys.executable, "-c", _ROW_STACK_CHECK, mode],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip().splitlines()[-1]

    control = run("control")
    if control == "LAYOUT":
        pytest.skip("this numba.cuda has no numba.cuda.np.arrayobj (not numba-cuda's layout)")
    assert control.startswith("FAILS"), control       # the failure the step prevents
    assert run("fixed") == "AVAILABLE"


_MAPPED_VIEW_CHECK = r"""
import numpy as np
from numba.cuda.cudadrv import devicearray
from fastsarnn.backends import cuda as be
buf = np.zeros((2, 3))
mapped = np.ndarray.view(buf, type=devicearray.MappedNDArray)   # as cuda.mapped_array makes it
host = be._host_view(mapped)
host[...] = 7.0
host[1, 2] = 5.0
assert type(host) is np.ndarray, type(host)
assert buf[1, 2] == 5.0 and (buf == 7.0).sum() == 5, buf
print("OK")
"""


def test_host_view_of_mapped_memory():
    """The host side of a mapped (pinned, device-addressable) buffer is a plain NumPy view of
    it. Checked on numba-cuda's real MappedNDArray class, in a process without the simulator
    (whose mapped arrays are NumPy arrays): ``mapped.view(np.ndarray)`` is the device array's
    dtype view, which failed every host write on a real GPU (and fails this test)."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    r = subprocess.run([sys.executable, "-c", _MAPPED_VIEW_CHECK], capture_output=True,
                       text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "OK"
