"""What users would pick instead of fastsarnn, written as a careful user writes it.

The PyTorch eager loop of SPEC section 6: the input projection of every step hoisted into
one matrix product, the history preallocated, inference mode, one ``torch`` op per formula
step (the formulas are :func:`fastsarnn.torch.update_state` and :func:`fastsarnn.torch.attend`,
shared with the trainable module). On a GPU the same loop runs eagerly (``torch-cuda``) and
captured once as a CUDA graph and replayed (``torch-cuda-graph``). The JAX peer is a jitted
``lax.scan``. Every peer is checked against the reference before it is timed.
"""

from __future__ import annotations

import numpy as np

#: Peer name -> (device, graph) for the PyTorch peers.
TORCH_PEERS = {"torch": ("cpu", False), "torch-cuda": ("cuda", False),
               "torch-cuda-graph": ("cuda", True)}
PEER_NAMES = tuple(TORCH_PEERS) + ("jax",)


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def torch_cuda_available() -> bool:
    """PyTorch is installed and sees a CUDA device."""
    if not torch_available():
        return False
    import torch
    return bool(torch.cuda.is_available())


def jax_available() -> bool:
    try:
        import jax  # noqa: F401
    except ImportError:
        return False
    return True


def peer_available(name: str) -> tuple:
    """``(available, reason)`` for a peer name."""
    if name == "jax":
        return (True, None) if jax_available() else (False, "jax is not installed (pip install jax)")
    if not torch_available():
        return False, "torch is not installed (see the README's install section)"
    if TORCH_PEERS[name][0] == "cuda" and not torch_cuda_available():
        return False, "PyTorch sees no CUDA device"
    return True, None


def gpu_name() -> str | None:
    """Name of the CUDA device PyTorch uses, or None."""
    if not torch_cuda_available():
        return None
    import torch
    return torch.cuda.get_device_name(torch.cuda.current_device())


class TorchLoop:
    """SPEC section 1 as a PyTorch eager loop over time (batched over sequences)."""

    def __init__(self, model, device="cpu"):
        import torch

        from ..torch import attend, update_state
        self.torch, self._attend, self._update = torch, attend, update_state
        self.model = model
        self.device = torch.device(device)
        dt = torch.float32 if model.dtype == np.float32 else torch.float64
        self.dtype = dt
        self.P = {k: torch.from_numpy(np.array(v)).to(device=self.device, dtype=dt)
                  for k, v in model.params.items()}

    def _step(self, proj_t, h, c, hist, keys, t):
        """One step from the projected input: update, append (and key), attend."""
        P, m = self.P, self.model
        h = self._update(proj_t, h, c, P)
        hist[:, t] = h
        if keys is not None:
            keys[:, t] = h @ P["W_k"].T
        lo = 0 if m.window is None else max(0, t - m.window + 1)
        c, _ = self._attend(m.score, hist[:, lo: t + 1],
                            None if keys is None else keys[:, lo: t + 1], h, P, m.hidden_size)
        return h, c

    def _loop(self, X):
        """The whole loop on a device tensor ``X (B, T, D)``; returns device (h, c)."""
        torch, P, m = self.torch, self.P, self.model
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
        return hist, out_c

    def _to_numpy(self, h, c):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)
        return h.cpu().numpy(), c.cpu().numpy()

    def forward(self, x: np.ndarray):
        """(B, T, D) -> (h, c) as NumPy arrays (B, T, H)."""
        torch = self.torch
        with torch.inference_mode():
            X = torch.from_numpy(np.ascontiguousarray(x)).to(self.device, self.dtype)
            return self._to_numpy(*self._loop(X))

    def stepper(self, batch: int, steps: int):
        """A per-token loop: returns ``step(x_t) -> (h_t, c_t)`` with its own history."""
        torch, P, m = self.torch, self.P, self.model
        H, dev, dt = m.hidden_size, self.device, self.dtype
        hist = torch.zeros(batch, steps, H, dtype=dt, device=dev)
        keys = torch.zeros(batch, steps, m.attention_size, dtype=dt, device=dev) \
            if m.attention_size else None
        st = {"t": 0, "h": torch.zeros(batch, H, dtype=dt, device=dev),
              "c": torch.zeros(batch, H, dtype=dt, device=dev)}

        def step(x_t):
            with torch.inference_mode():
                t = st["t"]
                proj_t = torch.from_numpy(np.ascontiguousarray(x_t)).to(dev, dt) @ P["W_x"].T \
                    + P["b"]
                h, c = self._step(proj_t, st["h"], st["c"], hist, keys, t)
                st["h"], st["c"], st["t"] = h, c, t + 1
                return self._to_numpy(h, c)

        return step


class TorchGraphLoop(TorchLoop):
    """:class:`TorchLoop` captured once per input shape as a CUDA graph and replayed.

    The loop runs on static buffers: the input is copied into a captured input tensor, the
    graph replays every kernel of the loop (slices and window bounds are fixed per shape),
    and the outputs are read from the tensors made during capture. On a CPU device (tests)
    the same static-buffer function is called instead of a graph replay, so the capture
    logic (buffers, re-capture on a new shape, fresh state per replay) is checked without
    a GPU.
    """

    supports_step = False       # a graph replays a whole fixed-shape sequence

    def __init__(self, model, device="cuda"):
        super().__init__(model, device)
        self._shape = None
        self._static_x = None
        self._outputs = None
        self._replay = None
        self.captures = 0

    def _capture(self, B, T):
        torch = self.torch
        self._static_x = torch.zeros(B, T, self.model.input_size, dtype=self.dtype,
                                     device=self.device)
        if self.device.type == "cuda":
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):          # warm-up outside the graph, as required
                self._loop(self._static_x)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._outputs = self._loop(self._static_x)
            self._replay = graph.replay
        else:
            def replay():
                self._outputs = self._loop(self._static_x)
            self._replay = replay
        self._shape = (B, T)
        self.captures += 1

    def forward(self, x: np.ndarray):
        """(B, T, D) -> (h, c) as NumPy arrays; captures on the first call per shape."""
        torch = self.torch
        B, T, _ = x.shape
        with torch.inference_mode():
            if self._shape != (B, T):
                self._capture(B, T)
            self._static_x.copy_(torch.from_numpy(np.ascontiguousarray(x)))
            self._replay()
            return self._to_numpy(*self._outputs)

    def stepper(self, batch, steps):
        raise NotImplementedError("torch-cuda-graph replays whole sequences; per-token "
                                  "stepping is the eager torch-cuda peer's")


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


def make_peer(name: str, model):
    """The peer object for ``name`` (one of :data:`PEER_NAMES`)."""
    if name == "jax":
        return JaxScan(model)
    device, graph = TORCH_PEERS[name]
    return (TorchGraphLoop if graph else TorchLoop)(model, device)
