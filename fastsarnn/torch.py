"""Train in PyTorch, serve with fastsarnn.

``fastsarnn.torch.SelfAttentionRNN`` is a ``torch.nn.Module`` implementing SPEC section 1
exactly (batch-first, ``lengths``, every score and recurrence, ``window``), trainable with
autograd. Its parameter names are the SPEC's; its state dict carries the configuration (score,
window, recurrence) as extra state, so ``fastsarnn.SelfAttentionRNN.from_torch(state_dict)``
needs nothing else. In eval mode under ``torch.no_grad()``/``inference_mode()``, setting
``module.backend`` (e.g. ``"c"``) runs the forward through fastsarnn's compiled kernels.

The step formulas live here once, as :func:`update_state` and :func:`attend`: the module
trains with them and the benchmark's PyTorch peers (:mod:`fastsarnn.bench.peers`) time them.

Importing :mod:`fastsarnn` does not import torch; importing this module does. This module
depends on :mod:`fastsarnn.model`, never the other way round.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from . import _registry
from .model import SelfAttentionRNN as _NumpyModel

__all__ = ["SelfAttentionRNN", "attend", "update_state", "model_from_state_dict"]


def update_state(proj_t, h, c, P):
    """SPEC step 1 from the projected input ``proj_t = W_x x_t + b``: ``(B, H)`` -> ``h_t``.

    ``P`` maps parameter names to tensors; ``W_h`` present means recurrence ``"hc"``.
    """
    pre = proj_t + c @ P["W_c"].T
    W_h = P.get("W_h")
    if W_h is not None:
        pre = pre + h @ W_h.T
    return torch.tanh(pre)


def attend(score, Hs, Ks, h, P, hidden_size):
    """SPEC steps 3-5 for states ``h (B, H)`` over the attended states ``Hs (B, n, H)``
    (their keys ``Ks (B, n, Ha)`` for ``kq``/``additive``): returns ``(c_t, alpha)``."""
    if score == "dot":
        e = torch.bmm(Hs, h.unsqueeze(2)).squeeze(2)
    elif score == "scaled_dot":
        e = torch.bmm(Hs, h.unsqueeze(2)).squeeze(2) / math.sqrt(hidden_size)
    elif score == "general":
        e = torch.bmm(Hs, (h @ P["W_s"].T).unsqueeze(2)).squeeze(2)
    elif score == "kq":
        e = torch.bmm(Ks, (h @ P["W_q"].T).unsqueeze(2)).squeeze(2)
    elif score == "additive":
        e = torch.tanh(Ks + (h @ P["W_q"].T).unsqueeze(1)) @ P["v"]
    else:
        raise ValueError(f"unknown score {score!r}")
    alpha = torch.softmax(e, dim=1)
    return torch.bmm(alpha.unsqueeze(1), Hs).squeeze(1), alpha


class SelfAttentionRNN(nn.Module):
    """SPEC section 1 as a PyTorch module.

    Parameters
    ----------
    input_size, hidden_size : int
        D and H.
    score : str
        ``"dot"``, ``"scaled_dot"``, ``"general"``, ``"kq"`` or ``"additive"``.
    recurrence : {"c", "hc"}
    attention_size : int, optional
        Ha for ``kq``/``additive`` (default H).
    window : int, optional
        Attend over the last ``window`` states only.
    dtype : torch.dtype
        Parameter dtype (default float32).
    """

    def __init__(self, input_size, hidden_size, *, score="dot", recurrence="c",
                 attention_size=None, window=None, dtype=torch.float32):
        super().__init__()
        ref = _NumpyModel.random(input_size, hidden_size, score=score, recurrence=recurrence,
                                 attention_size=attention_size, window=window,
                                 dtype="float64", seed=0)
        self.score, self.recurrence, self.window = score, recurrence, window
        self.input_size, self.hidden_size = input_size, hidden_size
        self.attention_size = ref.attention_size
        bound = 1.0 / math.sqrt(hidden_size)
        for name, arr in ref.params.items():
            p = nn.Parameter(torch.empty(arr.shape, dtype=dtype))
            nn.init.uniform_(p, -bound, bound)
            self.register_parameter(name, p)
        self._backend = None
        self._cached = None         # (parameter versions, fastsarnn model)

    @property
    def backend(self):
        """fastsarnn backend for inference (eval mode, no grad, CPU tensors); ``None``: plain
        PyTorch. Checked when set: an unknown name is a ``ValueError``, a backend that cannot
        run here a :class:`fastsarnn.BackendUnavailableError`."""
        return self._backend

    @backend.setter
    def backend(self, name):
        if name is not None:
            _registry.resolve(name)          # raises for unknown or unavailable names
        self._backend = name

    def extra_repr(self):
        ha = f", attention_size={self.attention_size}" if self.attention_size else ""
        return (f"input_size={self.input_size}, hidden_size={self.hidden_size}{ha}, "
                f"score={self.score!r}, recurrence={self.recurrence!r}, window={self.window}, "
                f"dtype={self.W_x.dtype}, backend={self._backend!r}")

    # -- configuration travels with the state dict -----------------------------------------
    def get_extra_state(self):
        return {"score": self.score, "recurrence": self.recurrence, "window": self.window,
                "input_size": self.input_size, "hidden_size": self.hidden_size,
                "attention_size": self.attention_size}

    def set_extra_state(self, state):
        for k in ("score", "recurrence", "window", "attention_size"):
            if state[k] != getattr(self, k):
                raise ValueError(f"state dict has {k}={state[k]!r}; this module has "
                                 f"{getattr(self, k)!r}")

    # -- conversions ---------------------------------------------------------------------------
    @classmethod
    def from_fastsarnn(cls, model: _NumpyModel) -> "SelfAttentionRNN":
        """A module with ``model``'s configuration and (exactly) its weights."""
        dtype = torch.float64 if model.dtype == np.float64 else torch.float32
        mod = cls(model.input_size, model.hidden_size, score=model.score,
                  recurrence=model.recurrence, attention_size=model.attention_size,
                  window=model.window, dtype=dtype)
        with torch.no_grad():
            for name, arr in model.params.items():
                getattr(mod, name).copy_(torch.from_numpy(np.array(arr)))
        return mod

    def to_fastsarnn(self) -> _NumpyModel:
        """The fastsarnn model with this module's weights (exactly)."""
        return model_from_state_dict(self.state_dict())

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, lengths=None):
        """``x (B, T, D)`` -> ``(h, c)``, each ``(B, T, H)``; zeros past ``lengths``."""
        if (self.backend is not None and not self.training and not torch.is_grad_enabled()
                and x.device.type == "cpu"):
            return self._forward_fastsarnn(x, lengths)
        return self._forward_torch(x, lengths)

    def _parameter_versions(self):
        """What identifies the current weights: each parameter's storage, dtype, shape and
        in-place version counter (bumped by optimizers, ``copy_``, ``load_state_dict``)."""
        return tuple((name, p.data_ptr(), p.dtype, tuple(p.shape), p._version)
                     for name, p in self._parameters.items())

    def fastsarnn_model(self) -> _NumpyModel:
        """The fastsarnn model used for inference, rebuilt only when a parameter changed."""
        key = self._parameter_versions()
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, self.to_fastsarnn())
        return self._cached[1]

    def _forward_fastsarnn(self, x, lengths):
        model = self.fastsarnn_model()
        lens = None if lengths is None else np.asarray(torch.as_tensor(lengths).cpu(),
                                                       dtype=np.int64)
        out = model.forward(x.detach().numpy(), lengths=lens, backend=self.backend)
        return torch.from_numpy(out.h), torch.from_numpy(out.c)

    def _forward_torch(self, x, lengths=None, return_attention=False):
        B, T, _ = x.shape
        H = self.hidden_size
        x = x.to(self.W_x.dtype)
        valid = torch.ones(B, T, dtype=torch.bool, device=x.device) if lengths is None else (
            torch.arange(T, device=x.device)[None] < torch.as_tensor(lengths,
                                                                     device=x.device)[:, None])
        P = self._parameters
        proj = x @ self.W_x.T + self.b
        h = x.new_zeros(B, H)
        c = x.new_zeros(B, H)
        hist, keys, hs, cs, atts = [], [], [], [], []
        for t in range(T):
            h_new = update_state(proj[:, t], h, c, P)
            hist.append(h_new)
            if self.score in ("kq", "additive"):
                keys.append(h_new @ self.W_k.T)
            first = 0 if self.window is None else max(0, t - self.window + 1)
            c_new, alpha = attend(self.score, torch.stack(hist[first:], 1),
                                  torch.stack(keys[first:], 1) if keys else None, h_new, P,
                                  H)
            m = valid[:, t: t + 1].to(x.dtype)
            hs.append(h_new * m)
            cs.append(c_new * m)
            if return_attention:
                row = x.new_zeros(B, T)
                row[:, first: t + 1] = alpha
                atts.append(row * m)
            # sequences past their length keep their state (no advance)
            h = torch.where(valid[:, t: t + 1], h_new, h)
            c = torch.where(valid[:, t: t + 1], c_new, c)
        h_out = torch.stack(hs, 1) if hs else x.new_zeros(B, 0, H)
        c_out = torch.stack(cs, 1) if cs else x.new_zeros(B, 0, H)
        if return_attention:
            return h_out, c_out, (torch.stack(atts, 1) if atts else x.new_zeros(B, 0, 0))
        return h_out, c_out


def model_from_state_dict(module_or_state_dict) -> _NumpyModel:
    """A fastsarnn model from a module or its state dict (configuration included); the same
    as :meth:`fastsarnn.SelfAttentionRNN.from_torch`."""
    return _NumpyModel.from_torch(module_or_state_dict)
