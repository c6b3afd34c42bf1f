"""The benchmark peers (PyTorch eager loop, JAX scan) compute the same model."""

import numpy as np
import pytest

from fastsarnn.peers import JaxScan, TorchLoop, jax_available, torch_available
from _helpers import RECURRENCES, SCORES, make_model, make_x, max_err, reference

PEERS = [pytest.param(TorchLoop, marks=pytest.mark.skipif(not torch_available(),
                                                          reason="torch not installed")),
         pytest.param(JaxScan, marks=pytest.mark.skipif(not jax_available(),
                                                        reason="jax not installed"))]


@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("recurrence", RECURRENCES)
@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("peer", PEERS)
def test_peer_matches_reference(peer, score, recurrence, window):
    model = make_model(score=score, recurrence=recurrence, window=window, dtype="float32",
                       D=4, H=8, Ha=5)
    x = make_x(2, 9, 4).astype(np.float32)
    ref = reference(model, x)
    loop = peer(model)
    h, c = loop.forward(x)
    assert max_err(h, ref.h) <= 2e-5 and max_err(c, ref.c) <= 2e-5
    step = loop.stepper(2, 9)
    hs = np.stack([step(x[:, t])[0] for t in range(9)], 1)
    assert max_err(hs, ref.h) <= 2e-5
