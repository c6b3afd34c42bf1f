"""The benchmark peers (PyTorch eager loop, its CUDA-graph form, JAX scan) compute the same
model, with the step formulas shared with fastsarnn.torch."""

import numpy as np
import pytest

from fastsarnn import bench
from fastsarnn.bench.peers import (JaxScan, TorchGraphLoop, TorchLoop, jax_available,
                                   peer_available, torch_available, torch_cuda_available)
from _helpers import RECURRENCES, SCORES, make_model, make_x, max_err, reference

needs_torch = pytest.mark.skipif(not torch_available(), reason="torch not installed")
PEERS = [pytest.param(TorchLoop, marks=needs_torch),
         pytest.param(TorchGraphLoop, marks=needs_torch),
         pytest.param(JaxScan, marks=pytest.mark.skipif(not jax_available(),
                                                        reason="jax not installed"))]


def make_peer(peer, model):
    # The graph peer on the CPU runs its static-buffer function instead of a graph replay.
    return peer(model, "cpu") if peer is TorchGraphLoop else peer(model)


@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("recurrence", RECURRENCES)
@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("peer", PEERS)
def test_peer_matches_reference(peer, score, recurrence, window):
    model = make_model(score=score, recurrence=recurrence, window=window, dtype="float32",
                       D=4, H=8, Ha=5)
    x = make_x(2, 9, 4).astype(np.float32)
    ref = reference(model, x)
    loop = make_peer(peer, model)
    h, c = loop.forward(x)
    assert max_err(h, ref.h) <= 2e-5 and max_err(c, ref.c) <= 2e-5
    if peer is TorchGraphLoop:
        return
    step = loop.stepper(2, 9)
    hs = np.stack([step(x[:, t])[0] for t in range(9)], 1)
    assert max_err(hs, ref.h) <= 2e-5


@needs_torch
def test_graph_peer_replays_with_fresh_state_and_recaptures_per_shape():
    model = make_model(score="kq", window=3, dtype="float32", D=4, H=8, Ha=5)
    loop = TorchGraphLoop(model, "cpu")
    x1 = make_x(2, 9, 4, seed=1).astype(np.float32)
    x2 = make_x(2, 9, 4, seed=2).astype(np.float32)
    h1, _ = loop.forward(x1)
    h2, c2 = loop.forward(x2)                # same shape: replayed, not captured again
    assert loop.captures == 1
    ref2 = reference(model, x2)
    assert max_err(h2, ref2.h) <= 2e-5 and max_err(c2, ref2.c) <= 2e-5
    h1b, _ = loop.forward(x1)
    assert np.array_equal(h1, h1b)           # no state leaks from one replay to the next
    x3 = make_x(3, 5, 4, seed=3).astype(np.float32)
    h3, _ = loop.forward(x3)
    assert loop.captures == 2 and max_err(h3, reference(model, x3).h) <= 2e-5
    with pytest.raises(NotImplementedError):
        loop.stepper(2, 9)
    cfg = bench.QUICK["step"]
    m, x = bench.make_problem(cfg)
    if torch_cuda_available():
        with pytest.raises(bench.NotApplicable):
            bench.runner(cfg, m, x, "torch-cuda-graph")


@needs_torch
def test_peers_use_the_modules_formulas(monkeypatch):
    import fastsarnn.torch as fst
    calls = []
    real = fst.attend
    monkeypatch.setattr(fst, "attend", lambda *a: calls.append(1) or real(*a))
    model = make_model(dtype="float32", D=4, H=8)
    TorchLoop(model).forward(make_x(1, 5, 4).astype(np.float32))
    assert len(calls) == 5


@needs_torch
@pytest.mark.parametrize("peer", [TorchLoop, TorchGraphLoop])
def test_torch_peers_project_every_step_in_one_product(peer):
    """SPEC section 6: the peer hoists the input projection, one matrix product of all
    steps' inputs with W_x, not one per step (which would make it a weaker peer)."""
    import torch
    from torch.overrides import TorchFunctionMode

    model = make_model(dtype="float32", D=4, H=8)
    loop = make_peer(peer, model)
    W_x = loop.P["W_x"]
    products = []

    class Products(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            if func in (torch.Tensor.__matmul__, torch.matmul, torch.Tensor.matmul) and any(
                    t.data_ptr() == W_x.data_ptr() for t in tensors):
                products.append(tuple(tensors[0].shape))
            return func(*args, **(kwargs or {}))

    x = make_x(2, 9, 4).astype(np.float32)
    with Products():
        h, _ = loop.forward(x)
    assert products == [(2, 9, 4)]
    assert max_err(h, reference(model, x).h) <= 2e-5


def test_gpu_peers_are_offered_only_with_cuda():
    names = bench.available_runners()
    for peer in ("torch-cuda", "torch-cuda-graph"):
        ok, reason = peer_available(peer)
        assert (peer in names) == ok == torch_cuda_available()
        if not ok:
            assert reason


@pytest.mark.skipif(not torch_cuda_available(), reason="PyTorch sees no CUDA device")
@pytest.mark.parametrize("peer", [TorchLoop, TorchGraphLoop])
def test_cuda_peers_match_reference(peer):
    model = make_model(score="dot", window=None, dtype="float32", D=4, H=8)
    x = make_x(3, 17, 4).astype(np.float32)
    ref = reference(model, x)
    h, c = peer(model, "cuda").forward(x)
    assert max_err(h, ref.h) <= 2e-5 and max_err(c, ref.c) <= 2e-5
