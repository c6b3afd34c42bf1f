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

    def _step(self, proj_t, h, c, hist, keys, t):
        """One step from the projected input: update, append (and key), attend."""
        torch, P, W = self.torch, self.P, self.model.window
        pre = proj_t + c @ P["W_c"].T
        if "W_h" in P:
            pre = pre + h @ P["W_h"].T
        h = torch.tanh(pre)
        hist[:, t] = h
        if keys is not None:
            keys[:, t] = h @ P["W_k"].T
        lo = 0 if W is None else max(0, t - W + 1)
        return h, self._attend(hist, keys, lo, t, h)

    def forward(self, x: np.ndarray):
        """(B, T, D) -> (h, c) as NumPy arrays (B, T, H)."""
        torch, P, m = self.torch, self.P, self.model
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
                h, c = self._step(proj[:, t], h, c, hist, keys, t)
                out_c[:, t] = c
            if self.device != "cpu":
                torch.cuda.synchronize()
            return hist.cpu().numpy(), out_c.cpu().numpy()

    def stepper(self, batch: int, steps: int):
        """A per-token loop: returns ``step(x_t) -> (h_t, c_t)`` with its own history."""
        torch, P, m = self.torch, self.P, self.model
        H = m.hidden_size
        hist = torch.zeros(batch, steps, H, dtype=self.dtype)
        keys = torch.zeros(batch, steps, m.attention_size, dtype=self.dtype) \
            if m.attention_size else None
        st = {"t": 0, "h": torch.zeros(batch, H, dtype=self.dtype),
              "c": torch.zeros(batch, H, dtype=self.dtype)}

        def step(x_t):
            with torch.inference_mode():
                t = st["t"]
                proj_t = torch.from_numpy(x_t) @ P["W_x"].T + P["b"]
                h, c = self._step(proj_t, st["h"], st["c"], hist, keys, t)
                st["h"], st["c"], st["t"] = h, c, t + 1
                return h.numpy(), c.numpy()

        return step


def jax_available() -> bool:
    try:
        import jax  # noqa: F401
    except ImportError:
        return False
    return True


class JaxScan:
    """SPEC section 1 as a jitted ``jax.lax.scan`` over time (batched over sequences).

    The history is a preallocated ``(B, T, H)`` carry; each step scores a fixed-size slice of
    it (all T rows, or the ``window`` rows ending at t) under a mask, as JAX needs static
    shapes.
    """

    def __init__(self, model):
        import jax
        import jax.numpy as jnp
        if model.dtype == np.float64:
            jax.config.update("jax_enable_x64", True)
        self.jax, self.jnp, self.model = jax, jnp, model
        self.P = {k: jnp.asarray(np.array(v)) for k, v in model.params.items()}
        self._forward = jax.jit(self._scan)
        self._step = jax.jit(self._body)

    def _body(self, carry, inp):
        jnp, P, m = self.jnp, self.P, self.model
        hist, keys, h, c = carry
        t, p_t = inp
        T = hist.shape[1]
        pre = p_t + c @ P["W_c"].T
        if "W_h" in P:
            pre = pre + h @ P["W_h"].T
        h = jnp.tanh(pre)
        hist = hist.at[:, t].set(h)
        if keys is not None:
            keys = keys.at[:, t].set(h @ P["W_k"].T)
        W = m.window if (m.window is not None and m.window < T) else T
        start = jnp.clip(t - W + 1, 0, T - W) if W < T else 0
        rows = self.jax.lax.dynamic_slice_in_dim(hist, start, W, axis=1)
        pos = start + jnp.arange(W)
        mask = (pos <= t) & (pos > t - (m.window or T + 1))
        if m.score in ("kq", "additive"):
            krows = self.jax.lax.dynamic_slice_in_dim(keys, start, W, axis=1)
            q = h @ P["W_q"].T
            if m.score == "kq":
                e = jnp.einsum("bwa,ba->bw", krows, q)
            else:
                e = jnp.tanh(krows + q[:, None]) @ P["v"]
        else:
            q = h @ P["W_s"].T if m.score == "general" else h
            e = jnp.einsum("bwh,bh->bw", rows, q)
            if m.score == "scaled_dot":
                e = e / np.sqrt(m.hidden_size)
        e = jnp.where(mask[None], e, -jnp.inf)
        a = self.jax.nn.softmax(e, axis=1)
        c = jnp.einsum("bw,bwh->bh", a, rows)
        return (hist, keys, h, c), (h, c)

    def _init(self, B, T):
        jnp, m = self.jnp, self.model
        dt = m.dtype
        H = m.hidden_size
        keys = jnp.zeros((B, T, m.attention_size), dt) if m.attention_size else None
        return (jnp.zeros((B, T, H), dt), keys, jnp.zeros((B, H), dt), jnp.zeros((B, H), dt))

    def _scan(self, x):
        jnp, P = self.jnp, self.P
        B, T, _ = x.shape
        proj = x @ P["W_x"].T + P["b"]
        _, (hs, cs) = self.jax.lax.scan(self._body, self._init(B, T),
                                        (jnp.arange(T), jnp.swapaxes(proj, 0, 1)))
        return jnp.swapaxes(hs, 0, 1), jnp.swapaxes(cs, 0, 1)

    def forward(self, x: np.ndarray):
        h, c = self._forward(self.jnp.asarray(x))
        return np.asarray(h.block_until_ready()), np.asarray(c)

    def stepper(self, batch: int, steps: int):
        """Per-token: one jitted step call per token (the history carried between calls)."""
        P = self.P
        state = {"carry": self._init(batch, steps), "t": 0}

        def step(x_t):
            p_t = self.jnp.asarray(x_t) @ P["W_x"].T + P["b"]
            state["carry"], (h, c) = self._step(state["carry"], (state["t"], p_t))
            state["t"] += 1
            return np.asarray(h), np.asarray(c)

        return step
