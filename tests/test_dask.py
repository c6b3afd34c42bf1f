"""Batch inference on a real dask.distributed LocalCluster (2 worker processes)."""

import os
import signal
import time

import numpy as np
import pytest

import fastsarnn as fs
from _helpers import make_model, make_x, max_err

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
fsd = pytest.importorskip("fastsarnn.dask")

CPU_BACKENDS = [n for n in ("numpy", "numba", "c") if fs.backends()[n].available]


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=40)
    cl = distributed.Client(cluster)
    # warm the workers (imports, Numba cache) outside the timed/killed computations
    cl.run(lambda: __import__("fastsarnn").backends())
    yield cl
    cl.close()
    cluster.close()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("chunks", [(9,), (1,) * 9, (2, 4, 3)], ids=["one", "ones", "mixed"])
def test_cluster_equals_single_process(client, backend, chunks):
    model = make_model(score="kq", recurrence="hc", window=4, D=5, H=8, Ha=6, dtype="float32")
    x = make_x(9, 12, 5).astype(np.float32)
    lengths = np.array([12, 0, 5, 12, 1, 7, 12, 3, 9])
    want = model.forward(x, lengths=lengths, return_attention=True, backend=backend)
    out = fsd.forward(model, da.from_array(x, chunks=(chunks, -1, -1)), lengths=lengths,
                      backend=backend, return_attention=True)
    assert out.h.chunks[0] == chunks and out.attention.chunks[0] == chunks
    got = client.gather(client.compute(list(out)))
    for name, a, b in zip(out._fields, got, want):
        assert a.dtype == b.dtype and max_err(a, b) == 0.0, name


def test_model_is_one_key_shared_by_every_block():
    model = make_model(D=5, H=8)
    x = da.from_array(make_x(8, 4, 5), chunks=(1, -1, -1))
    out = fsd.forward(model, x)
    graph = dict(out.h.__dask_graph__())
    keys = fsd.model_keys(out.h)
    assert len(keys) == 1
    users = [k for k, task in graph.items() if keys[0] in getattr(task, "dependencies", ())]
    assert len(users) == 8               # one block task per chunk, all on the same key


def test_rechunks_other_axes_with_a_clear_message():
    model = make_model(D=5, H=8)
    x = make_x(4, 6, 5)
    with pytest.warns(UserWarning, match="batch axis only"):
        out = fsd.forward(model, da.from_array(x, chunks=(2, 3, 5)))
    assert max_err(out.h.compute(), model.forward(x).h) == 0.0


def test_bad_input():
    model = make_model(D=5, H=8)
    with pytest.raises(TypeError, match="dask"):
        fsd.forward(model, make_x(2, 3, 5))
    with pytest.raises(ValueError, match="shape"):
        fsd.forward(model, da.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="lengths"):
        fsd.forward(model, da.zeros((2, 3, 5)), lengths=np.array([1, 4]))
    with pytest.raises(ValueError, match="expected one of"):
        fsd.forward(model, da.zeros((2, 3, 5)), backend="fortran")


def test_kernel_threads_times_dask_threads_fit_the_cores(client):
    threads = client.run(fsd.kernel_threads)
    nthreads = client.nthreads()
    cores = len(os.sched_getaffinity(0))
    for addr, kt in threads.items():
        assert kt >= 1 and kt * nthreads[addr] <= max(cores, nthreads[addr])


def test_killed_worker_is_retried_and_result_is_right(client):
    """Kill one worker process while it computes a block: Dask reschedules, result is right."""
    model = make_model(D=5, H=32, dtype="float64")
    x = make_x(8, 1500, 5)
    want = model.forward(x, backend="numpy").h
    out = fsd.forward(model, da.from_array(x, chunks=(1, -1, -1)), backend="numpy")
    fut = client.compute(out.h)
    deadline = time.time() + 60
    victim = None
    while time.time() < deadline and victim is None:
        busy = [w for w, tasks in client.processing().items() if tasks]
        if busy:
            victim = busy[0]
        else:
            time.sleep(0.05)
    assert victim is not None, "no block started"
    pid = client.run(os.getpid, workers=[victim])[victim]
    assert not fut.done()                 # the kill lands mid-computation
    os.kill(pid, signal.SIGKILL)
    got = fut.result(timeout=300)
    assert victim not in client.scheduler_info()["workers"]   # it really died
    assert max_err(got, want) <= 1e-12


def _models_sharing_weights():
    """Four models with the same weights that differ in score, window or dtype only."""
    base = make_model(score="dot", D=5, H=8, dtype="float32")
    W = base.params
    return {
        "dot": base,
        "scaled_dot": fs.SelfAttentionRNN(**W, score="scaled_dot"),
        "dot window=2": fs.SelfAttentionRNN(**W, score="dot", window=2),
        "dot float64": fs.SelfAttentionRNN(**W, score="dot", dtype="float64"),
        "dot hc": fs.SelfAttentionRNN(**W, W_h=np.eye(8, dtype=np.float32) * 0.5),
    }


@pytest.mark.parametrize("scheduler", ["distributed", "sync", "threads"])
def test_models_sharing_weights_are_not_mixed_up(client, scheduler):
    """Every input that changes the result is in the model's graph key: models that share
    their weights, computed in one dask.compute, each give their own local forward."""
    import dask
    models = _models_sharing_weights()
    x = make_x(6, 7, 5)
    dx = da.from_array(x, chunks=((2, 4), -1, -1))
    outs = {name: fsd.forward(m, dx, backend="numpy", return_attention=True)
            for name, m in models.items()}
    if scheduler == "distributed":
        got = dask.compute(outs)[0]                  # the client is the default scheduler
    else:
        got = dask.compute(outs, scheduler=scheduler)[0]
    for name, m in models.items():
        want = m.forward(x, backend="numpy", return_attention=True)
        for field, a, b in zip(want._fields, got[name], want):
            assert a.dtype == b.dtype and max_err(a, b) == 0.0, (name, field)
    keys = {name: fsd.model_keys(o.h)[0] for name, o in outs.items()}
    assert len(set(keys.values())) == len(models), keys


def test_block_keys_follow_the_model_and_the_inputs():
    """Same model and input: same keys (Dask shares the work); any change: new keys."""
    m = make_model(D=5, H=8)
    x = da.from_array(make_x(4, 3, 5), chunks=(2, -1, -1))
    def keys(out):      # the keys this forward added on top of x's own graph
        return set(dict(out.h.__dask_graph__())) - set(dict(x.__dask_graph__()))
    same = fs.SelfAttentionRNN(**m.params, dtype=m.dtype)
    assert keys(fsd.forward(m, x)) == keys(fsd.forward(same, x))
    other = fs.SelfAttentionRNN(**m.params, window=3, dtype=m.dtype)
    assert not keys(fsd.forward(m, x)) & keys(fsd.forward(other, x))
    lens = np.array([3, 1, 2, 0])
    assert keys(fsd.forward(m, x)) != keys(fsd.forward(m, x, lengths=lens))


def test_compact_window_attention_matches_local_forward():
    """return_attention="window": blocks declared (nb, T, window), values and positions equal
    to the local forward's compact layout (sync scheduler: no cluster needed)."""
    import dask
    model = make_model(score="dot", window=3, D=5, H=8, dtype="float64")
    x = make_x(5, 7, 5)
    lengths = np.array([7, 0, 4, 7, 2])
    out = fsd.forward(model, da.from_array(x, chunks=((2, 3), -1, -1)), lengths=lengths,
                      backend="numpy", return_attention="window")
    assert out.attention.shape == (5, 7, 3) and out.attention_positions.shape == (5, 7, 3)
    attn, pos = dask.compute(out.attention, out.attention_positions, scheduler="sync")
    want = model.forward(x, lengths=lengths, backend="numpy", return_attention="window")
    assert attn.shape == want.attention.shape and max_err(attn, want.attention) == 0.0
    assert np.array_equal(pos, want.attention_positions)
