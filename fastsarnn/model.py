"""The model: ``SelfAttentionRNN`` validates, casts, allocates and dispatches to a backend."""

from __future__ import annotations

import json
from typing import NamedTuple, Optional

import numpy as np

from . import _config, _registry, _validate
from .state import State

PARAM_NAMES = ("W_x", "W_c", "b", "W_h", "W_s", "W_k", "W_q", "v")
_FORMAT_VERSION = 1


class Output(NamedTuple):
    """Result of :meth:`SelfAttentionRNN.forward`."""

    h: np.ndarray
    c: np.ndarray
    attention: Optional[np.ndarray]
    h_last: np.ndarray
    c_last: np.ndarray


class KernelParams:
    """What a backend kernel needs of a model: weights (empty arrays for absent ones, so
    kernels have one signature), integer codes and sizes, and a per-backend cache."""

    __slots__ = ("W_x", "W_c", "b", "W_h", "W_s", "W_k", "W_q", "v", "score", "score_code",
                 "recurrence", "recurrence_code", "window", "D", "H", "Ha", "dtype", "cache")

    def __init__(self, params: dict, score, recurrence, window, dtype):
        empty2 = np.zeros((0, 0), dtype=dtype)
        empty1 = np.zeros(0, dtype=dtype)
        for name in PARAM_NAMES:
            default = empty1 if name in ("b", "v") else empty2
            setattr(self, name, params.get(name, default))
        self.score = score
        self.score_code = _config.SCORES.index(score)
        self.recurrence = recurrence
        self.recurrence_code = _config.RECURRENCES.index(recurrence)
        self.window = window
        self.H, self.D = params["W_x"].shape
        self.Ha = params["W_k"].shape[0] if "W_k" in params else 0
        self.dtype = np.dtype(dtype)
        self.cache = {}


def _required_params(score: str, recurrence: str) -> tuple:
    names = ["W_x", "W_c", "b"]
    if recurrence == "hc":
        names.append("W_h")
    if score == "general":
        names.append("W_s")
    if score in ("kq", "additive"):
        names += ["W_k", "W_q"]
    if score == "additive":
        names.append("v")
    return tuple(names)


def _rebuild(params, score, window, dtype):
    return SelfAttentionRNN(**params, score=score, window=window, dtype=dtype)


class SelfAttentionRNN:
    """Simple RNN with self-attention over its own history (SPEC section 1).

    Parameters
    ----------
    W_x, W_c, b : array_like
        Input weights ``(H, D)``, context weights ``(H, H)``, bias ``(H,)``.
    W_h : array_like, optional
        Recurrent weights ``(H, H)``; given means ``recurrence="hc"``.
    score : {"dot", "scaled_dot", "general", "kq", "additive"}
        Attention score.
    W_s, W_k, W_q, v : array_like, optional
        Score parameters: ``W_s (H, H)`` for ``general``; ``W_k, W_q (Ha, H)`` for ``kq``
        and ``additive``; ``v (Ha,)`` for ``additive``.
    window : int, optional
        Attend over the last ``window`` states only (``None``: all of them).
    dtype : {"float32", "float64"}
        Dtype of the weights and of every computation.
    """

    def __init__(self, W_x, W_c, b, *, W_h=None, score="dot", W_s=None, W_k=None, W_q=None,
                 v=None, window=None, dtype="float32"):
        score = _validate.choice("score", score, _config.SCORES)
        try:
            dt = np.dtype(dtype)
        except TypeError:
            dt = None
        if dt is None or dt.name not in _config.DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; expected one of {list(_config.DTYPES)}")
        window = _validate.window(window)
        given = {"W_x": W_x, "W_c": W_c, "b": b, "W_h": W_h, "W_s": W_s, "W_k": W_k,
                 "W_q": W_q, "v": v}
        recurrence = "hc" if W_h is not None else "c"
        required = _required_params(score, recurrence)
        for name in ("W_x", "W_c", "b") + tuple(n for n in required if n not in ("W_x", "W_c", "b")):
            if given[name] is None:
                raise ValueError(f"parameter {name} is required for score={score!r}, "
                                 f"recurrence={recurrence!r}; got None")
        for name, val in given.items():
            if val is not None and name not in required:
                raise ValueError(
                    f"parameter {name} is not used by score={score!r}, recurrence="
                    f"{recurrence!r} (expected parameters: {list(required)}); got an array"
                )
        params = {}
        for name in required:
            params[name] = _validate.real_array(name, given[name])
        W_x = params["W_x"]
        if W_x.ndim != 2 or min(W_x.shape) < 1:
            raise ValueError(f"W_x must have shape (H, D) with H, D >= 1; got shape "
                             f"{_validate.shape_str(W_x.shape)}")
        H, D = W_x.shape
        Ha = None
        if "W_k" in params:
            W_k = params["W_k"]
            if W_k.ndim != 2 or W_k.shape[0] < 1:
                raise ValueError(f"W_k must have shape (Ha, {H}) with Ha >= 1; got shape "
                                 f"{_validate.shape_str(W_k.shape)}")
            Ha = W_k.shape[0]
        shapes = {"W_x": (H, D), "W_c": (H, H), "b": (H,), "W_h": (H, H), "W_s": (H, H),
                  "W_k": (Ha, H), "W_q": (Ha, H), "v": (Ha,)}
        for name, arr in params.items():
            _validate.expect_shape(name, arr, shapes[name])
            arr = _validate.cast(arr, dt)
            if arr is given[name]:
                arr = arr.copy()
            _validate.first_nonfinite(name, arr)
            arr.flags.writeable = False
            params[name] = arr
        self._params = params
        self._score = score
        self._recurrence = recurrence
        self._window = window
        self._dtype = dt
        self._D, self._H, self._Ha = D, H, Ha
        self._kernel = KernelParams(params, score, recurrence, window, dt)

    # -- construction --------------------------------------------------------------------
    @classmethod
    def random(cls, input_size, hidden_size, *, score="dot", recurrence="c",
               attention_size=None, window=None, dtype="float32", seed=None):
        """A model with every parameter i.i.d. ``U(-1/sqrt(H), 1/sqrt(H))`` (PyTorch's RNN
        convention), drawn in float64 from ``numpy.random.default_rng(seed)`` in the order
        ``W_x, W_c, b, W_h, W_s, W_k, W_q, v`` (absent ones skipped), then cast."""
        D = _validate.integer("input_size", input_size, minimum=1)
        H = _validate.integer("hidden_size", hidden_size, minimum=1)
        score = _validate.choice("score", score, _config.SCORES)
        recurrence = _validate.choice("recurrence", recurrence, _config.RECURRENCES)
        if score in ("kq", "additive"):
            Ha = H if attention_size is None else _validate.integer(
                "attention_size", attention_size, minimum=1)
        elif attention_size is not None:
            raise ValueError(f"attention_size is only used by score 'kq' or 'additive'; "
                             f"got attention_size={attention_size!r} with score={score!r}")
        else:
            Ha = None
        shapes = {"W_x": (H, D), "W_c": (H, H), "b": (H,), "W_h": (H, H), "W_s": (H, H),
                  "W_k": (Ha, H), "W_q": (Ha, H), "v": (Ha,)}
        rng = np.random.default_rng(seed)
        bound = 1.0 / np.sqrt(H)
        drawn = {name: rng.uniform(-bound, bound, size=shapes[name])
                 for name in PARAM_NAMES if name in _required_params(score, recurrence)}
        return cls(**drawn, score=score, window=window, dtype=dtype)

    @classmethod
    def from_torch(cls, module_or_state_dict) -> "SelfAttentionRNN":
        """A model from a :class:`fastsarnn.torch.SelfAttentionRNN` or its state dict
        (exact weights; the configuration travels in the state dict)."""
        from .torch import model_from_state_dict
        return model_from_state_dict(module_or_state_dict)

    def astype(self, dtype) -> "SelfAttentionRNN":
        """The same model with its weights cast to ``dtype``."""
        return SelfAttentionRNN(**self._params, score=self._score, window=self._window,
                                dtype=dtype)

    def save(self, path) -> None:
        """Write weights and configuration to ``path`` (``.npz``), bit-exact."""
        config = {"format": _FORMAT_VERSION, "score": self._score, "window": self._window,
                  "dtype": self._dtype.name, "recurrence": self._recurrence}
        with open(path, "wb") as f:
            np.savez(f, __config__=np.array(json.dumps(config)), **self._params)

    @classmethod
    def load(cls, path) -> "SelfAttentionRNN":
        """Read a model written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as data:
            if "__config__" not in data.files:
                raise ValueError(f"{path!r} is not a fastsarnn model file (no __config__ entry)")
            config = json.loads(str(data["__config__"]))
            arrays = {name: data[name] for name in data.files if name != "__config__"}
        unknown = set(arrays) - set(PARAM_NAMES)
        if unknown:
            raise ValueError(f"unknown parameters in {path!r}: {sorted(unknown)}")
        return cls(**arrays, score=config["score"], window=config["window"],
                   dtype=config["dtype"])

    def __reduce__(self):
        # Pickle the weights and configuration only (not the backends' prepared pointers):
        # what Dask sends to its workers, once.
        return (_rebuild, (self._params, self._score, self._window, self._dtype.name))

    # -- properties ----------------------------------------------------------------------
    input_size = property(lambda self: self._D, doc="D, the input size.")
    hidden_size = property(lambda self: self._H, doc="H, the hidden size.")
    attention_size = property(lambda self: self._Ha, doc="Ha (None unless kq/additive).")
    score = property(lambda self: self._score, doc="The score function.")
    recurrence = property(lambda self: self._recurrence, doc='"hc" iff W_h was given.')
    window = property(lambda self: self._window, doc="Attention window (None: unbounded).")
    dtype = property(lambda self: self._dtype, doc="The model dtype.")

    @property
    def params(self) -> dict:
        """Parameter name -> read-only array (present parameters only)."""
        return dict(self._params)

    def __repr__(self):
        return (f"SelfAttentionRNN(input_size={self._D}, hidden_size={self._H}, "
                f"score={self._score!r}, recurrence={self._recurrence!r}, "
                f"attention_size={self._Ha}, window={self._window}, dtype={self._dtype.name!r})")

    # -- state ---------------------------------------------------------------------------
    def init_state(self, batch_size=1, *, capacity=None) -> State:
        """A fresh streaming state for ``batch_size`` streams.

        ``capacity`` is the initial history length without a window (it doubles as needed);
        with a window the history is a ring buffer of exactly ``window`` entries.
        """
        B = _validate.integer("batch_size", batch_size, minimum=0)
        cap = _validate.integer("capacity", capacity, minimum=1, allow_none=True)
        if cap is None:
            cap = _config.DEFAULT_CAPACITY
        return State(self, B, self._H, self._Ha, self._window, self._dtype, cap)

    def _check_state(self, state, batch: int) -> State:
        if not isinstance(state, State):
            raise TypeError(f"state must be a fastsarnn State; got {type(state).__name__}")
        if state._owner is not self:
            raise ValueError("state belongs to another model; make one with this model's "
                             "init_state()")
        if state.batch_size != batch:
            raise ValueError(f"state has batch size {state.batch_size}; the input has batch "
                             f"size {batch}")
        return state

    # -- inference -----------------------------------------------------------------------
    def forward(self, x, *, lengths=None, state=None, return_attention=False, backend=None,
                num_threads=None, check_finite=True) -> Output:
        """Run the model over ``x`` of shape ``(T, D)`` or ``(B, T, D)``.

        Parameters
        ----------
        x : array_like
            Inputs; integer and float arrays are cast to the model dtype.
        lengths : int or array of int, optional
            Valid steps per sequence (an int for 2-D ``x``); later steps give zeros.
        state : State, optional
            Continue from (and advance) this state.
        return_attention : bool
            Also return attention rows ``(B, T, t0 + T)``.
        backend : str, optional
            ``"numpy"``, ``"numba"``, ``"c"``, ``"cuda"`` or ``"auto"``.
        num_threads : int, optional
            Threads for the batch (default: all cores).
        check_finite : bool
            Check valid input positions for NaN and inf.

        Returns
        -------
        Output
            ``(h, c, attention, h_last, c_last)``.
        """
        be = _registry.resolve(backend)
        on_device = getattr(be, "ACCEPTS_DEVICE_ARRAYS", False) and be.is_device_array(x)
        if on_device:   # device arrays in, device arrays out (backend "cuda")
            x = be.as_device_array(x)
            if x.dtype != self._dtype:
                raise TypeError(f"device input x must already have the model dtype "
                                f"{self._dtype.name}; got {x.dtype}")
        else:
            x = _validate.real_array("x", x)
        if x.ndim not in (2, 3):
            raise ValueError(f"x must have shape (T, {self._D}) or (B, T, {self._D}); got "
                             f"shape {_validate.shape_str(x.shape)}")
        two_d = x.ndim == 2
        B, T, D = (1,) + tuple(x.shape) if two_d else tuple(x.shape)
        if D != self._D:
            raise ValueError(f"x must have shape (..., T, {self._D}) (input size "
                             f"D = {self._D}); got shape {_validate.shape_str(x.shape)}")
        lens = _validate.lengths(lengths, B, T, two_d)
        nt = _validate.num_threads(num_threads)
        if state is not None:
            self._check_state(state, B)
        if on_device:
            xc = be.contiguous(x).reshape(B, T, D)
            if check_finite:
                bad = be.first_nonfinite(xc, lens)
                if bad is not None:
                    idx = bad[1:] if two_d else bad
                    raise ValueError(f"x[{', '.join(map(str, idx))}] is not finite; expected "
                                     "finite values (pass check_finite=False to skip)")
        else:
            xc = _validate.cast(x.reshape(B, T, D), self._dtype)
            if check_finite and not np.isfinite(xc).all():
                mask = (np.arange(T)[None, :] < lens[:, None])[:, :, None]
                _validate.first_nonfinite("x", xc if not two_d else xc[0],
                                          mask if not two_d else mask[0])
        # -- all checks passed: from here on nothing may fail for the user's input --------
        device = getattr(be, "DEVICE", False)
        st = state if state is not None else self.init_state(B, capacity=max(T, 1))
        st._scratch = state is None
        if not device:
            st._sync_host()
        t0 = int(st.positions.max()) if B else 0
        if B and T:
            st._ensure_capacity(int((st.positions + lens).max()))
        H = self._H
        zeros = be.zeros if on_device else np.zeros
        out_h = zeros((B, T, H), dtype=self._dtype)
        out_c = zeros((B, T, H), dtype=self._dtype)
        attn = zeros((B, T, t0 + T), dtype=self._dtype) if return_attention else None
        if B and T:
            be.forward(self._kernel, xc, lens, st, out_h, out_c, attn, nt)
            if not device:
                st._host_changed()
        h_last, c_last = st.h.copy(), st.c.copy()
        if on_device:
            h_last, c_last = be.to_device(h_last), be.to_device(c_last)
        if two_d:
            return Output(out_h[0], out_c[0], None if attn is None else attn[0],
                          h_last[0], c_last[0])
        return Output(out_h, out_c, attn, h_last, c_last)

    __call__ = forward

    def step(self, x_t, state, *, active=None, backend=None, check_finite=True):
        """Advance ``state`` by one input per stream.

        Parameters
        ----------
        x_t : array_like
            ``(B, D)``, or ``(D,)`` for a state of batch size 1.
        state : State
            The streams' state (advanced in place).
        active : array of bool, optional
            ``(B,)``: inactive rows return zeros and do not advance.

        Returns
        -------
        h_t, c_t : ndarray
            ``(B, H)`` (or ``(H,)``).
        """
        be = _registry.resolve(backend)
        x = _validate.real_array("x_t", x_t)
        if not isinstance(state, State):
            raise TypeError(f"state must be a fastsarnn State; got {type(state).__name__}")
        B = state.batch_size
        one_d = x.ndim == 1
        if x.shape != ((self._D,) if one_d else (B, self._D)):
            exp = f"({B}, {self._D})" + (f" or ({self._D},)" if B == 1 else "")
            raise ValueError(f"x_t must have shape {exp} (state batch size {B}, input size "
                             f"D = {self._D}); got shape {_validate.shape_str(x.shape)}")
        x2 = x[None] if one_d else x
        self._check_state(state, x2.shape[0])
        if active is None:
            act = state._cache.get("all_active")
            if act is None or act.shape[0] != B:
                act = state._cache["all_active"] = np.ones(B, dtype=np.bool_)
        else:
            act = np.asarray(active)
            if act.dtype.kind != "b":
                raise TypeError(f"active must be a boolean array of shape ({B},); got dtype "
                                f"{act.dtype}")
            if one_d and act.ndim == 0:
                act = act.reshape(1)
            _validate.expect_shape("active", act, (B,))
            act = np.ascontiguousarray(act)
        xc = _validate.cast(x2, self._dtype)
        if check_finite and not np.isfinite(xc).all():
            _validate.first_nonfinite("x_t", xc if not one_d else xc[0],
                                      act[:, None] if not one_d else None)
        device = getattr(be, "DEVICE", False)
        if not device:
            state._sync_host()
        if B and self._window is None:
            need = (int(state.positions[0]) if B == 1 else int(state.positions.max())) + 1
            if need > state.capacity:
                state._ensure_capacity(need)
        out_h = np.zeros((B, self._H), dtype=self._dtype)
        out_c = np.zeros((B, self._H), dtype=self._dtype)
        if B:
            be.step(self._kernel, xc, act, state, out_h, out_c, None)
            if not device:
                state._host_changed()
        if one_d:
            return out_h[0], out_c[0]
        return out_h, out_c
