"""The model: ``SelfAttentionRNN`` validates, casts, allocates and dispatches to a backend."""

from __future__ import annotations

import functools
import json
import math
from typing import NamedTuple, Optional

import numpy as np

from . import _config, _registry, _validate
from .state import State

PARAM_NAMES = ("W_x", "W_c", "b", "W_h", "W_s", "W_k", "W_q", "v")
_FORMAT_VERSION = 1


class _OutputFields(NamedTuple):
    h: np.ndarray
    c: np.ndarray
    attention: Optional[np.ndarray]
    h_last: np.ndarray
    c_last: np.ndarray


class Output(_OutputFields):
    """Result of :meth:`SelfAttentionRNN.forward`.

    Unpacks as ``h, c, attention, h_last, c_last`` (five fields, as always);
    ``attention_positions`` is an attribute only: ``None``, or with
    ``return_attention="window"`` the ``(B, T, window)`` int64 absolute position of each
    column of ``attention`` (-1 where unused).
    """

    attention_positions: Optional[np.ndarray] = None

    def __new__(cls, h, c, attention, h_last, c_last, attention_positions=None):
        self = super().__new__(cls, h, c, attention, h_last, c_last)
        self.attention_positions = attention_positions
        return self

    def _replace(self, **kwargs):
        positions = kwargs.pop("attention_positions", self.attention_positions)
        return Output(*super()._replace(**kwargs), attention_positions=positions)


#: Accepted values of ``forward(return_attention=...)``.
RETURN_ATTENTION = (False, True, "dense", "window")


def _attention_mode(value, window):
    """None (no attention), "dense" or "window" for a ``return_attention`` value."""
    if isinstance(value, (bool, np.bool_)):
        return "dense" if value else None
    if isinstance(value, str) and value in ("dense", "window"):
        if value == "window" and window is None:
            raise ValueError("return_attention='window' needs a model with a window; this "
                             "model has window=None (valid here: False, True, 'dense')")
        return value
    raise ValueError(f"return_attention must be one of {list(RETURN_ATTENTION)}; got "
                     f"{value!r}")


def window_positions(positions_before, lengths, T, window):
    """``(B, T, window)`` int64: absolute position of each compact attention column.

    Row ``r`` of sequence ``b`` (valid when ``r < lengths[b]``) is the step at position
    ``p = positions_before[b] + r``; its column ``k`` holds position ``first + k`` for
    ``first = max(0, p - window + 1)`` and ``k <= p - first``; every other entry is -1.
    """
    p = positions_before[:, None].astype(np.int64) + np.arange(T, dtype=np.int64)[None]
    first = np.maximum(0, p - window + 1)
    cols = first[:, :, None] + np.arange(window, dtype=np.int64)[None, None]
    valid = (cols <= p[:, :, None]) & (np.arange(T)[None, :] < lengths[:, None])[:, :, None]
    return np.where(valid, cols, np.int64(-1))


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


_CONFIG_KEYS = ("format", "score", "window", "dtype", "recurrence")


def _not_a_model_file(path, found: str) -> ValueError:
    return ValueError(f"{str(path)!r} is not a model: expected a fastsarnn model file written "
                      f"by SelfAttentionRNN.save (an .npz archive of a __config__ JSON entry "
                      f"and the parameter arrays); found {found}")


def _file_start(path) -> str:
    """What the first bytes of ``path`` look like, for error messages."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except (OSError, TypeError):
        return "a file NumPy cannot read as .npz or .npy"
    if not head:
        return "an empty file"
    if head.startswith(b"PK"):
        return "a damaged zip archive"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(ch.isprintable() or ch in "\t\r\n" for ch in text):
        return f"a text file beginning {text!r}"
    return f"a binary file beginning {head[:12]!r}"


def _read_model_file(path):
    """(config dict, parameter arrays) of a file written by ``save``; ``ValueError`` saying
    what was found otherwise. Nothing is unpickled (``allow_pickle=False``)."""
    import zipfile
    try:
        data = np.load(path, allow_pickle=False)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except (ValueError, EOFError, OSError, zipfile.BadZipFile):
        raise _not_a_model_file(path, _file_start(path)) from None
    if isinstance(data, np.ndarray):
        raise _not_a_model_file(path, f"a single NumPy array (.npy) of shape "
                                f"{_validate.shape_str(data.shape)}, dtype {data.dtype}")
    with data:
        if "__config__" not in data.files:
            raise _not_a_model_file(path, f"an .npz archive without a __config__ entry "
                                    f"(entries: {sorted(data.files)})")
        entries = {}
        for name in data.files:
            try:
                entries[name] = data[name]
            except ValueError:     # object arrays: refusing to unpickle them
                raise _not_a_model_file(path, f"entry {name!r} holds pickled Python "
                                        "objects (not loaded)") from None
            except (EOFError, OSError, zipfile.BadZipFile):
                raise _not_a_model_file(path, "a damaged zip archive") from None
    raw = entries.pop("__config__")
    try:
        config = json.loads(str(raw[()])) if raw.dtype.kind == "U" and raw.ndim == 0 else None
    except json.JSONDecodeError:
        config = None
    if not isinstance(config, dict):
        raise _not_a_model_file(path, "a __config__ entry that is not JSON of the model's "
                                f"configuration (a {raw.dtype} array of shape "
                                f"{_validate.shape_str(raw.shape)})")
    missing = sorted(set(_CONFIG_KEYS) - set(config))
    if missing:
        raise _not_a_model_file(path, f"__config__ lacks {missing}")
    if config["format"] != _FORMAT_VERSION:
        raise _not_a_model_file(path, f"file format {config['format']!r} (this fastsarnn "
                                f"reads format {_FORMAT_VERSION}; a newer version wrote it?)")
    if config["recurrence"] not in _config.RECURRENCES:
        raise _not_a_model_file(path, f"__config__ recurrence={config['recurrence']!r}; "
                                f"expected one of {list(_config.RECURRENCES)}")
    return config, entries


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
            _validate.first_nonfinite(name, arr, weight=True)
            arr.flags.writeable = False
            params[name] = arr
        self._params = params
        self._score = score
        self._recurrence = recurrence
        self._window = window
        self._dtype = dt
        self._D, self._H, self._Ha = D, H, Ha
        self._kernel = KernelParams(params, score, recurrence, window, dt)
        #: The same model without a window, for states whose history is still shorter
        #: than the window (see _kernel_for).
        self._kernel_unwrapped = (None if window is None else
                                  KernelParams(params, score, recurrence, None, dt))

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
        (exact weights; the configuration travels in the state dict).

        Needs no import of torch here: tensors are read through their ``numpy()`` method,
        so :mod:`fastsarnn.model` never depends on :mod:`fastsarnn.torch`.
        """
        sd = module_or_state_dict
        if callable(getattr(sd, "state_dict", None)):
            sd = sd.state_dict()
        extra = sd.get("_extra_state") if hasattr(sd, "get") else None
        if not isinstance(extra, dict):
            raise ValueError("state dict has no '_extra_state' (score, window, recurrence); "
                             "save it from a fastsarnn.torch.SelfAttentionRNN")
        if extra.get("score") not in _config.SCORES:
            raise ValueError(f"unknown score {extra.get('score')!r} in state dict; expected "
                             f"one of {list(_config.SCORES)}")
        params = {k: np.asarray(sd[k].detach().cpu().numpy()) for k in PARAM_NAMES if k in sd}
        dtype = "float64" if params["W_x"].dtype == np.float64 else "float32"
        return cls(**params, score=extra["score"], window=extra["window"], dtype=dtype)

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
        """Read a model written by :meth:`save`.

        Raises ``ValueError`` saying what was found when ``path`` is not such a file
        (never unpickles anything); ``FileNotFoundError`` when it does not exist.
        """
        config, arrays = _read_model_file(path)
        unknown = set(arrays) - set(PARAM_NAMES)
        if unknown:
            raise ValueError(f"unknown parameters in {str(path)!r}: {sorted(unknown)}")
        if (config["recurrence"] == "hc") != ("W_h" in arrays):
            raise _not_a_model_file(path, f"__config__ says recurrence="
                                    f"{config['recurrence']!r} but the parameters are "
                                    f"{sorted(arrays)}")
        return cls(**arrays, score=config["score"], window=config["window"],
                   dtype=config["dtype"])

    def __reduce__(self):
        # Pickle the weights and configuration only (not the backends' prepared pointers):
        # what Dask sends to its workers, once.
        return (_rebuild, (self._params, self._score, self._window, self._dtype.name))

    def __dask_tokenize__(self):
        # Dask's name for the model: every input that changes its results, weights by value.
        return ("fastsarnn.SelfAttentionRNN", self._score, self._recurrence, self._window,
                self._dtype.name, sorted(self._params.items()))

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

        ``capacity`` (default 64) is the initial history length; it doubles as the streams
        grow. With a window it starts at ``min(capacity, window)`` and stops at ``window``
        (a ring buffer from then on): a window longer than the stream costs only what the
        stream needs.
        """
        B = _validate.integer("batch_size", batch_size, minimum=0)
        cap = _validate.integer("capacity", capacity, minimum=1, allow_none=True)
        if cap is None:
            cap = _config.DEFAULT_CAPACITY
        return State(self, B, self._H, self._Ha, self._window, self._dtype, cap)

    def _kernel_for(self, state: State) -> KernelParams:
        """What the kernels run for ``state`` (whose capacity already fits the call).

        A windowed state whose history has not grown to ``window`` slots holds positions
        ``p < capacity < window``: none has wrapped (slot ``p % window == p``) and every step
        attends all positions so far (``p - window + 1 <= 0``), exactly as without a window.
        The kernels then run the unwindowed model on the growing buffer; they see either
        ``capacity == window`` or no window, never a partial ring.
        """
        if self._kernel_unwrapped is None or state.capacity == self._window:
            return self._kernel
        return self._kernel_unwrapped

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
            Inputs; integer and float arrays are cast silently to the model dtype, as
            ``np.asarray(x, dtype=model.dtype)`` does (float64 ``x`` on a float32 model is
            rounded to float32, without a warning; values beyond float32's range become inf
            and are reported by ``check_finite``).
        lengths : int or array of int, optional
            Valid steps per sequence (an int for 2-D ``x``); later steps give zeros.
        state : State, optional
            Continue from (and advance) this state.
        return_attention : {False, True, "dense", "window"}
            ``True``/``"dense"``: also return attention rows ``(B, T, t0 + T)``, column =
            absolute position. ``"window"`` (models with a window only): the compact
            ``(B, T, window)`` layout, oldest attended position first, with
            ``out.attention_positions`` saying which position each column is.
        backend : str, optional
            ``"numpy"``, ``"numba"``, ``"c"``, ``"cuda"`` or ``"auto"``.
        num_threads : int, optional
            Threads for the batch (default: all cores).
        check_finite : bool
            Check valid input positions for NaN and inf.

        Returns
        -------
        Output
            ``(h, c, attention, h_last, c_last)``, plus ``attention_positions``.
        """
        mode = _attention_mode(return_attention, self._window)
        be = _registry.resolve(backend)
        on_device = getattr(be, "ACCEPTS_DEVICE_ARRAYS", False) and be.is_device_array(x)
        if on_device:   # device arrays in, device arrays out (backend "cuda")
            x = be.as_device_array(x)
            if x.dtype != self._dtype:
                raise TypeError(f"device input x must already have the model dtype "
                                f"{self._dtype.name}; got {x.dtype}")
        else:
            x = _validate.real_array("x", x, f"(T, {self._D}) or (B, T, {self._D})")
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
        if state is not None and B:
            pos = state._positions
            _validate.positions(pos, int(pos.min()), int(pos.max()))
        # -- all checks passed: from here on nothing may fail for the user's input --------
        device = getattr(be, "DEVICE", False)
        st = state if state is not None else self.init_state(B, capacity=max(T, 1))
        st._scratch = state is None
        if not device:
            st._sync_host()
        t0 = int(st.positions.max()) if B else 0
        positions = None
        if mode == "window":
            positions = window_positions(st.positions, lens, T, self._window)
        if B and T:
            st._ensure_capacity(int((st.positions + lens).max()))
        H = self._H
        zeros = be.zeros if on_device else np.zeros
        out_h = zeros((B, T, H), dtype=self._dtype)
        out_c = zeros((B, T, H), dtype=self._dtype)
        attn = None if mode is None else zeros(
            (B, T, self._window if mode == "window" else t0 + T), dtype=self._dtype)
        if B and T:
            kernel = self._kernel_for(st)
            # A windowed state still shorter than its window runs the unwindowed kernel
            # (_kernel_for): nothing is dropped yet, so its dense columns (positions
            # 0 .. t0+T-1 < window) are already the compact layout.
            if mode == "window" and kernel.window is not None:
                be.forward(kernel, xc, lens, st, out_h, out_c, attn, nt,
                           compact_attention=True)
            else:
                be.forward(kernel, xc, lens, st, out_h, out_c, attn, nt)
            if not device:
                st._host_changed()
        h_last, c_last = st.h.copy(), st.c.copy()
        if on_device:
            h_last, c_last = be.to_device(h_last), be.to_device(c_last)
            if positions is not None:
                positions = be.to_device(positions)
        if two_d:
            return Output(out_h[0], out_c[0], None if attn is None else attn[0],
                          h_last[0], c_last[0],
                          None if positions is None else positions[0])
        return Output(out_h, out_c, attn, h_last, c_last, positions)

    __call__ = forward

    def step(self, x_t, state, *, active=None, backend=None, check_finite=True, out=None,
             num_threads=None):
        """Advance ``state`` by one input per stream.

        Parameters
        ----------
        x_t : array_like
            ``(B, D)``, or ``(D,)`` for a state of batch size 1; cast silently to the model
            dtype, as in :meth:`forward`.
        state : State
            The streams' state (advanced in place).
        active : array of bool, optional
            ``(B,)``: inactive rows return zeros and do not advance.
        backend : str, optional
            As for :meth:`forward`.
        check_finite : bool
            Check the active rows of ``x_t`` for NaN and inf.
        out : tuple of two ndarray, optional
            ``(h_buf, c_buf)``, C-contiguous, writeable, of the output shape and the model
            dtype, sharing memory with neither each other nor the state's buffers: written
            and returned instead of new arrays (NumPy's ``out=``).
        num_threads : int, optional
            Threads (default: all cores).

        Returns
        -------
        h_t, c_t : ndarray
            ``(B, H)`` (or ``(H,)``); the arrays of ``out`` when given.
        """
        be = _registry.resolve(backend)
        if not isinstance(state, State):
            raise TypeError(f"state must be a fastsarnn State; got {type(state).__name__}")
        dt = self._dtype
        ready = type(x_t) is np.ndarray and x_t.dtype == dt and x_t.flags.c_contiguous
        B = state._h.shape[0]      # state.batch_size (attributes, not properties: per token)
        x = x_t if ready else _validate.real_array("x_t", x_t, self._step_shape_text(B))
        one_d = x.ndim == 1
        if x.shape != ((self._D,) if one_d else (B, self._D)):
            exp = self._step_shape_text(B)
            raise ValueError(f"x_t must have shape {exp} (state batch size {B}, input size "
                             f"D = {self._D}); got shape {_validate.shape_str(x.shape)}")
        if state._owner is not self or (one_d and B != 1):
            self._check_state(state, 1 if one_d else B)   # raises: other model, batch size
        if num_threads is not None:
            num_threads = _validate.num_threads(num_threads)
        cache = state._cache
        if active is None:
            act = cache.get("all_active")
            if act is None or act.shape[0] != B:
                act = cache["all_active"] = np.ones(B, dtype=np.bool_)
        else:
            act = np.asarray(active)
            if act.dtype.kind != "b":
                raise TypeError(f"active must be a boolean array of shape ({B},); got dtype "
                                f"{act.dtype}")
            if one_d and act.ndim == 0:
                act = act.reshape(1)
            _validate.expect_shape("active", act, (B,))
            act = np.ascontiguousarray(act)
        H = self._H
        if out is not None:
            out_h, out_c = self._check_step_out(out, (H,) if one_d else (B, H), state)
        if not ready:
            x = _validate.cast(x, dt)
        # A finite sum of squares proves every value finite; otherwise look closely (the
        # sum may only have overflowed, or the non-finite value sit in an inactive row).
        if check_finite and x.size and not math.isfinite(x.dot(x) if one_d else np.vdot(x, x)):
            if not np.isfinite(x).all():
                _validate.first_nonfinite("x_t", x, act if one_d else act[:, None])
        if B:
            pos = state._positions
            if B == 1:
                first = last = int(pos[0])
            else:
                first, last = int(pos.min()), int(pos.max())
            if first < 0 or last > _validate.MAX_POSITION:
                _validate.positions(pos, first, last)
        # -- all checks passed: from here on nothing may fail for the user's input --------
        device = be.__dict__.get("DEVICE", False)
        if not device:
            state._sync_host()
        if B and last + 1 > state._hist.shape[1]:      # state.capacity
            state._ensure_capacity(last + 1)
        if out is None:
            out_h = np.zeros((H,) if one_d else (B, H), dtype=dt)
            out_c = np.zeros((H,) if one_d else (B, H), dtype=dt)
        elif active is not None:
            out_h[...] = 0     # inactive rows give 0
            out_c[...] = 0
        if B:
            self._prepared_step(be, state)(x, act, state, out_h, out_c, num_threads)
            if not device:
                state._host_changed()
        return out_h, out_c

    def _step_shape_text(self, B):
        """The shapes ``x_t`` may have, for messages."""
        return f"({B}, {self._D})" + (f" or ({self._D},)" if B == 1 else "")

    def _check_step_out(self, out, shape, state):
        """``out=`` of :meth:`step`: two C-contiguous, writeable arrays of ``shape`` in the
        model dtype, overlapping neither each other nor any buffer of ``state`` (the step
        reads and writes those after it zeroes the outputs of inactive rows)."""
        if type(out) is tuple and len(out) == 2:
            oh, oc = out
            if (type(oh) is np.ndarray and type(oc) is np.ndarray and oh.shape == shape
                    and oc.shape == shape and oh.dtype == self._dtype
                    and oc.dtype == self._dtype):
                fh, fc = oh.flags, oc.flags
                if fh.c_contiguous and fc.c_contiguous and fh.writeable and fc.writeable:
                    # Memory of different arrays that own theirs cannot overlap: the
                    # per-token case needs no overlap computation.
                    a, b = _memory_owner(oh), _memory_owner(oc)
                    owners = _state_memory_owners(state)
                    if a is not None and b is not None and a is not b and owners is not None:
                        for o in owners:
                            if o is a or o is b:
                                break
                        else:
                            return oh, oc
        # Not the common case: check everything, and say what is wrong.
        if not isinstance(out, tuple) or len(out) != 2:
            raise TypeError(f"out must be a tuple (h_buf, c_buf) of two arrays; got "
                            f"{type(out).__name__}")
        for name, buf in zip(("out[0] (h_buf)", "out[1] (c_buf)"), out):
            if type(buf) is not np.ndarray:
                raise TypeError(f"{name} must be a NumPy array; got {type(buf).__name__}")
            if buf.dtype != self._dtype:
                raise TypeError(f"{name} must have the model dtype {self._dtype.name}; got "
                                f"{buf.dtype}")
            if buf.shape != shape:
                raise ValueError(f"{name} must have shape {_validate.shape_str(shape)}; got "
                                 f"shape {_validate.shape_str(buf.shape)}")
            if not (buf.flags.c_contiguous and buf.flags.writeable):
                raise ValueError(f"{name} must be C-contiguous and writeable")
        oh, oc = out
        if np.shares_memory(oh, oc):
            raise ValueError("out[0] and out[1] must not overlap")
        for buf in (state._h, state._c, state._hist, state._keys, state._positions):
            if buf is not None and (np.may_share_memory(oh, buf)
                                    or np.may_share_memory(oc, buf)):
                raise ValueError("out buffers must not share memory with state.h, state.c, "
                                 "state.hist, state.keys or state.positions (the step reads "
                                 "and writes them); pass arrays of their own")
        return oh, oc

    def _prepared_step(self, be, state):
        """``run(x, active, state, out_h, out_c, num_threads)`` (x and outputs ``(B, .)``, or
        1-D for B = 1) for this backend and the state's current buffers; prepared once
        (backends with ``prepare_step``) and reused while the buffers stay the same."""
        key = ("step", be.NAME)
        bufs = (state._hist, state._keys, state._h, state._c, state._positions)
        got = state._cache.get(key)
        if got is not None:
            old = got[0]
            if (old[0] is bufs[0] and old[1] is bufs[1] and old[2] is bufs[2]
                    and old[3] is bufs[3] and old[4] is bufs[4]):
                return got[1]
        # The kernel depends on the state's capacity (_kernel_for), which changes only with
        # its buffers: the prepared call stays valid while the buffers do.
        kernel = self._kernel_for(state)
        prepare = getattr(be, "prepare_step", None)
        if prepare is not None:
            run = prepare(kernel, state)
        else:
            run = functools.partial(_step_2d, be.step, kernel)
        state._cache[key] = (bufs, run)
        return run


def _memory_owner(a):
    """The ndarray that owns ``a``'s memory (``a`` itself, or the base of a view), or None
    where that is not a plain ndarray owning its data (a buffer of another kind)."""
    r = a if a.base is None else a.base
    return r if type(r) is np.ndarray and r.flags.owndata else None


def _state_memory_owners(state):
    """The arrays that own the memory of ``state``'s buffers (h, c, hist, keys, positions),
    or None where one is not a plain ndarray owning its data; found once per set of
    buffers (an array's owner never changes) and kept in the state's cache."""
    bufs = (state._h, state._c, state._hist, state._keys, state._positions)
    got = state._cache.get("memory_owners")
    if got is not None:
        old = got[0]
        if (old[0] is bufs[0] and old[1] is bufs[1] and old[2] is bufs[2]
                and old[3] is bufs[3] and old[4] is bufs[4]):
            return got[1]
    owners = tuple(_memory_owner(a) for a in bufs if a is not None)
    if any(o is None for o in owners):
        owners = None
    state._cache["memory_owners"] = (bufs, owners)
    return owners


def _step_2d(step, kernel, x, act, state, out_h, out_c, num_threads):
    """A backend's ``step`` with 1-D x and outputs (batch size 1) as ``(1, .)`` views."""
    if x.ndim == 1:
        x, out_h, out_c = x.reshape(1, -1), out_h.reshape(1, -1), out_c.reshape(1, -1)
    step(kernel, x, act, state, out_h, out_c, num_threads)
