"""What users would pick instead of fastsarnn, written as a careful user writes it.

The PyTorch eager loop of SPEC section 6: the input projection of every step hoisted into
one matrix product, the history preallocated, inference mode, one ``torch`` op per formula
step. Used by the benchmarks (speed-ups are quoted against it) and checked against the
reference like any backend.
"""

from __future__ import annotations

import numpy as np


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


class TorchLoop:
    """SPEC section 1 as a PyTorch eager loop over time (batched over sequences)."""

    def __init__(self, model, device="cpu"):
        import torch
        self.torch = torch
        self.model = model
        self.device = device
        dt = torch.float32 if model.dtype == np.float32 else torch.float64
        self.dtype = dt
        self.P = {k: torch.from_numpy(np.array(v)).to(device=device, dtype=dt)
                  for k, v in model.params.items()}

    def _attend(self, hist, keys, lo, t, h):
        """Scores, softmax and context over history rows lo..t for states h (B, H)."""
        torch, P, score = self.torch, self.P, self.model.score
        Hs = hist[:, lo: t + 1]                                    # (B, n, H)
        if score == "dot":
            e = torch.bmm(Hs, h.unsqueeze(2)).squeeze(2)
        elif score == "scaled_dot":
            e = torch.bmm(Hs, h.unsqueeze(2)).squeeze(2) / (self.model.hidden_size ** 0.5)
        elif score == "general":
            e = torch.bmm(Hs, (h @ P["W_s"].T).unsqueeze(2)).squeeze(2)
        elif score == "kq":
            e = torch.bmm(keys[:, lo: t + 1], (h @ P["W_q"].T).unsqueeze(2)).squeeze(2)
        else:
            e = torch.tanh(keys[:, lo: t + 1] + (h @ P["W_q"].T).unsqueeze(1)) @ P["v"]
        a = torch.softmax(e, dim=1)
        return torch.bmm(a.unsqueeze(1), Hs).squeeze(1)

    def forward(self, x: np.ndarray):
        """(B, T, D) -> (h, c) as NumPy arrays (B, T, H)."""
        torch, P, m = self.torch, self.P, self.model
        W = m.window
        with torch.inference_mode():
            X = torch.from_numpy(np.ascontiguousarray(x)).to(self.device, self.dtype)
            B, T, _ = X.shape
            H = m.hidden_size
            proj = X @ P["W_x"].T + P["b"]                          # hoisted: all steps
            hist = torch.zeros(B, T, H, dtype=self.dtype, device=self.device)
            keys = (torch.zeros(B, T, m.attention_size, dtype=self.dtype, device=self.device)
                    if m.attention_size else None)
            out_c = torch.empty(B, T, H, dtype=self.dtype, device=self.device)
            h = torch.zeros(B, H, dtype=self.dtype, device=self.device)
            c = torch.zeros(B, H, dtype=self.dtype, device=self.device)
            for t in range(T):
                pre = proj[:, t] + c @ P["W_c"].T
                if "W_h" in P:
                    pre = pre + h @ P["W_h"].T
                h = torch.tanh(pre)
                hist[:, t] = h
                if keys is not None:
                    keys[:, t] = h @ P["W_k"].T
                lo = 0 if W is None else max(0, t - W + 1)
                c = self._attend(hist, keys, lo, t, h)
                out_c[:, t] = c
            if self.device != "cpu":
                torch.cuda.synchronize()
            return hist.cpu().numpy(), out_c.cpu().numpy()

    def stepper(self, batch: int, steps: int):
        """A per-token loop: returns ``step(x_t) -> (h_t, c_t)`` with its own history."""
        torch, P, m = self.torch, self.P, self.model
        H, W = m.hidden_size, m.window
        hist = torch.zeros(batch, steps, H, dtype=self.dtype)
        keys = torch.zeros(batch, steps, m.attention_size, dtype=self.dtype) \
            if m.attention_size else None
        st = {"t": 0, "h": torch.zeros(batch, H, dtype=self.dtype),
              "c": torch.zeros(batch, H, dtype=self.dtype)}

        def step(x_t):
            with torch.inference_mode():
                t = st["t"]
                xt = torch.from_numpy(x_t)
                pre = xt @ P["W_x"].T + P["b"] + st["c"] @ P["W_c"].T
                if "W_h" in P:
                    pre = pre + st["h"] @ P["W_h"].T
                h = torch.tanh(pre)
                hist[:, t] = h
                if keys is not None:
                    keys[:, t] = h @ P["W_k"].T
                lo = 0 if W is None else max(0, t - W + 1)
                c = self._attend(hist, keys, lo, t, h)
                st["h"], st["c"], st["t"] = h, c, t + 1
                return h.numpy(), c.numpy()

        return step
