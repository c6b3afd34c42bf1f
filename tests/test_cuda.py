"""What is particular to the CUDA backend (runs on a GPU, or on the simulator with
NUMBA_ENABLE_CUDASIM=1): device arrays in and out, the state's device copy kept consistent
with CPU backends, and the block size from the config."""

import os

import numpy as np
import pytest

import fastsarnn as fs
from fastsarnn import _config
from fastsarnn._validate import is_device_array
from _helpers import make_model, make_x, max_err, reference, tol

_INFO = fs.backends()["cuda"]
_REQUIRED = "cuda" in os.environ.get("FASTSARNN_REQUIRE_BACKENDS", "")


@pytest.fixture(autouse=True)
def cuda_ready(monkeypatch):
    if not _INFO.available:
        if _REQUIRED:
            pytest.fail(f"cuda required but unavailable: {_INFO.reason}")
        pytest.skip(f"cuda unavailable: {_INFO.reason}")
    monkeypatch.setattr(_config, "CUDA_BLOCK_SIZE",
                        int(os.environ.get("FASTSARNN_TEST_CUDA_BLOCK", "4")))


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


def test_bad_block_size_is_refused(monkeypatch):
    monkeypatch.setattr(_config, "CUDA_BLOCK_SIZE", 6)
    model = make_model(D=5, H=6)
    st = model.init_state(1)
    with pytest.raises(ValueError, match="power of two"):
        model.forward(make_x(1, 2, 5), state=st, backend="cuda")
