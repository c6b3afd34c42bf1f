"""Train in PyTorch, serve with fastsarnn.

``fastsarnn.torch.SelfAttentionRNN`` is a ``torch.nn.Module`` implementing SPEC section 1
exactly (batch-first, ``lengths``, every score and recurrence, ``window``), trainable with
autograd. Its parameter names are the SPEC's; its state dict carries the configuration (score,
window, recurrence) as extra state, so ``fastsarnn.SelfAttentionRNN.from_torch(state_dict)``
needs nothing else. In eval mode under ``torch.no_grad()``/``inference_mode()``, setting
``module.backend`` (e.g. ``"c"``) runs the forward through fastsarnn's compiled kernels.

Importing :mod:`fastsarnn` does not import torch; importing this module does.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from . import _config
from .model import PARAM_NAMES
from .model import SelfAttentionRNN as _NumpyModel

__all__ = ["SelfAttentionRNN"]


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
        #: fastsarnn backend for inference (eval mode, no grad); None: plain PyTorch.
        self.backend = None

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

    def _forward_fastsarnn(self, x, lengths):
        model = self.to_fastsarnn()
        lens = None if lengths is None else np.asarray(torch.as_tensor(lengths).cpu(),
                                                       dtype=np.int64)
        out = model.forward(x.detach().numpy(), lengths=lens, backend=self.backend)
        return torch.from_numpy(out.h), torch.from_numpy(out.c)

    def attend(self, hist, keys, t, h):
        """Scores, softmax and context of step ``t`` over ``hist[:, first: t + 1]``."""
        first = 0 if self.window is None else max(0, t - self.window + 1)
        Hs = hist[:, first: t + 1]
        if self.score == "dot":
            e = torch.einsum("bnh,bh->bn", Hs, h)
        elif self.score == "scaled_dot":
            e = torch.einsum("bnh,bh->bn", Hs, h) / math.sqrt(self.hidden_size)
        elif self.score == "general":
            e = torch.einsum("bnh,bh->bn", Hs, h @ self.W_s.T)
        elif self.score == "kq":
            e = torch.einsum("bna,ba->bn", keys[:, first: t + 1], h @ self.W_q.T)
        else:
            e = torch.tanh(keys[:, first: t + 1] + (h @ self.W_q.T)[:, None]) @ self.v
        alpha = torch.softmax(e, dim=1)
        return torch.einsum("bn,bnh->bh", alpha, Hs), alpha, first

    def _forward_torch(self, x, lengths=None, return_attention=False):
        B, T, _ = x.shape
        H = self.hidden_size
        x = x.to(self.W_x.dtype)
        valid = torch.ones(B, T, dtype=torch.bool, device=x.device) if lengths is None else (
            torch.arange(T, device=x.device)[None] < torch.as_tensor(lengths,
                                                                     device=x.device)[:, None])
        proj = x @ self.W_x.T + self.b
        h = x.new_zeros(B, H)
        c = x.new_zeros(B, H)
        hist, keys, hs, cs, atts = [], [], [], [], []
        for t in range(T):
            pre = proj[:, t] + c @ self.W_c.T
            if self.recurrence == "hc":
                pre = pre + h @ self.W_h.T
            h_new = torch.tanh(pre)
            hist.append(h_new)
            if self.score in ("kq", "additive"):
                keys.append(h_new @ self.W_k.T)
            c_new, alpha, first = self.attend(torch.stack(hist, 1),
                                              torch.stack(keys, 1) if keys else None, t, h_new)
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
    """A fastsarnn model from a module or its state dict (configuration included)."""
    sd = module_or_state_dict
    if isinstance(sd, nn.Module):
        sd = sd.state_dict()
    extra = sd.get("_extra_state")
    if extra is None:
        raise ValueError("state dict has no '_extra_state' (score, window, recurrence); "
                         "save it from a fastsarnn.torch.SelfAttentionRNN")
    params = {k: sd[k].detach().cpu().numpy() for k in PARAM_NAMES if k in sd}
    dtype = "float64" if params["W_x"].dtype == np.float64 else "float32"
    if extra["score"] not in _config.SCORES:
        raise ValueError(f"unknown score {extra['score']!r} in state dict")
    return _NumpyModel(**params, score=extra["score"], window=extra["window"], dtype=dtype)
