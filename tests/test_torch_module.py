"""fastsarnn.torch: the PyTorch module agrees with fastsarnn, converts exactly, trains."""

import subprocess
import sys

import numpy as np
import pytest

import fastsarnn as fs
from _helpers import RECURRENCES, SCORES, make_model, make_x, max_err

torch = pytest.importorskip("torch")
fst = pytest.importorskip("fastsarnn.torch")


@pytest.mark.parametrize("window", [None, 2])
@pytest.mark.parametrize("recurrence", RECURRENCES)
@pytest.mark.parametrize("score", SCORES)
def test_module_agrees_with_fastsarnn_in_float64(score, recurrence, window):
    model = make_model(score=score, recurrence=recurrence, window=window, D=4, H=6, Ha=5)
    module = fst.SelfAttentionRNN.from_fastsarnn(model)
    x = make_x(3, 8, 4)
    lengths = np.array([8, 3, 0])
    ref = model.forward(x, lengths=lengths, return_attention=True, backend="numpy")
    h, c, att = module._forward_torch(torch.from_numpy(x), torch.from_numpy(lengths),
                                      return_attention=True)
    assert max_err(h.detach().numpy(), ref.h) <= 1e-10
    assert max_err(c.detach().numpy(), ref.c) <= 1e-10
    assert max_err(att.detach().numpy(), ref.attention) <= 1e-10


@pytest.mark.parametrize("score", ["general", "additive"])
def test_round_trip_is_exact(score):
    module = fst.SelfAttentionRNN(5, 7, score=score, recurrence="hc", window=3,
                                  dtype=torch.float32)
    model = module.to_fastsarnn()
    assert (model.score, model.recurrence, model.window) == (score, "hc", 3)
    back = fst.SelfAttentionRNN.from_fastsarnn(model)
    for k, v in module.state_dict().items():
        if k != "_extra_state":
            assert torch.equal(v, back.state_dict()[k]), k
    from_sd = fs.SelfAttentionRNN.from_torch(module.state_dict())
    for k, v in model.params.items():
        assert np.array_equal(v, from_sd.params[k]), k
    assert fs.SelfAttentionRNN.from_torch(module).window == 3


def test_state_dict_carries_the_configuration(tmp_path):
    module = fst.SelfAttentionRNN(3, 4, score="kq", attention_size=2, window=5)
    path = tmp_path / "m.pt"
    torch.save(module.state_dict(), path)
    model = fs.SelfAttentionRNN.from_torch(torch.load(path, weights_only=False))
    assert (model.score, model.window, model.attention_size) == ("kq", 5, 2)
    other = fst.SelfAttentionRNN(3, 4, score="dot")
    with pytest.raises(Exception):
        other.load_state_dict(module.state_dict())


def _count_kernel_calls(monkeypatch, name):
    """Wrap backend ``name``'s forward kernel; returns the list of calls it records."""
    from fastsarnn import _registry
    mod = _registry.resolve(name)
    calls = []
    real = mod.forward

    def counting(*args, **kwargs):
        calls.append(args[1].shape)
        return real(*args, **kwargs)
    monkeypatch.setattr(mod, "forward", counting)
    return calls


def test_fast_inference_path_uses_the_kernels(monkeypatch):
    module = fst.SelfAttentionRNN(4, 8, score="scaled_dot", window=4).eval()
    x = torch.from_numpy(make_x(2, 9, 4).astype(np.float32))
    with torch.no_grad():
        plain_h, plain_c = module(x)
    name = "numba" if fs.backends()["numba"].available else "numpy"
    calls = _count_kernel_calls(monkeypatch, name)
    torch_path = []
    real_torch = module._forward_torch
    monkeypatch.setattr(module, "_forward_torch",
                        lambda *a, **k: torch_path.append(1) or real_torch(*a, **k))
    module.backend = name
    with torch.no_grad():
        fast_h, fast_c = module(x, lengths=[9, 9])
    assert calls == [(2, 9, 4)] and torch_path == []    # the kernel ran, autograd did not
    assert fast_h.dtype == torch.float32 and not fast_h.requires_grad
    assert max_err(fast_c.numpy(), plain_c.numpy()) <= 2e-5
    module.train()
    h, _ = module(x)                  # training mode: autograd path even with a backend set
    assert h.requires_grad and torch_path == [1] and len(calls) == 1


def test_inference_model_is_rebuilt_only_when_a_parameter_changes(monkeypatch):
    module = fst.SelfAttentionRNN(3, 5, score="kq", window=3).eval()
    module.backend = "numpy"
    builds = []
    real = fst.SelfAttentionRNN.to_fastsarnn
    monkeypatch.setattr(fst.SelfAttentionRNN, "to_fastsarnn",
                        lambda self: builds.append(1) or real(self))
    x = torch.from_numpy(make_x(2, 6, 3).astype(np.float32))
    with torch.inference_mode():
        h1, _ = module(x)
        h2, _ = module(x)
    assert len(builds) == 1 and torch.equal(h1, h2)
    with torch.no_grad():
        module.W_c.mul_(0.5)                      # in place: an optimizer step does this
    with torch.inference_mode():
        h3, _ = module(x)
    assert len(builds) == 2 and not torch.equal(h1, h3)
    ref = module.to_fastsarnn().forward(x.numpy(), backend="numpy")
    assert max_err(h3.numpy(), ref.h) == 0.0
    module.load_state_dict(fst.SelfAttentionRNN(3, 5, score="kq", window=3).state_dict())
    with torch.inference_mode():
        module(x)
    assert len(builds) == 4                       # (the check above built once more)
    module.double()                               # new storage and dtype
    with torch.inference_mode():
        h5, _ = module(x.double())
    assert len(builds) == 5 and h5.dtype == torch.float64


def test_repr_shows_the_configuration():
    module = fst.SelfAttentionRNN(3, 5, score="kq", attention_size=2, window=7)
    module.backend = "numpy"
    text = repr(module)
    for part in ("input_size=3", "hidden_size=5", "attention_size=2", "score='kq'",
                 "window=7", "recurrence='c'", "backend='numpy'"):
        assert part in text, text


def test_invalid_backend_is_rejected_when_set():
    module = fst.SelfAttentionRNN(3, 5)
    with pytest.raises(ValueError, match="expected one of"):
        module.backend = "fortran"
    assert module.backend is None                 # unchanged
    if not fs.backends()["cuda"].available:
        with pytest.raises(fs.BackendUnavailableError):
            module.backend = "cuda"
    module.backend = "numpy"
    module.backend = None
    assert module.backend is None


def test_training_reduces_the_loss():
    torch.manual_seed(0)
    module = fst.SelfAttentionRNN(3, 8, score="kq", attention_size=4)
    readout = torch.nn.Linear(8, 2)
    opt = torch.optim.Adam(list(module.parameters()) + list(readout.parameters()), lr=0.05)
    x = torch.randn(32, 6, 3)
    y = (x[:, 0, 0] > 0).long()
    losses = []
    for _ in range(15):
        _, c = module(x)
        loss = torch.nn.functional.cross_entropy(readout(c[:, -1]), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_importing_fastsarnn_does_not_import_torch(tmp_path):
    code = "import sys, fastsarnn; fastsarnn.backends(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=str(tmp_path), timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
