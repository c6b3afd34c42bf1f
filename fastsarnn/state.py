"""Streaming state: the history buffers every backend reads and writes (SPEC section 2)."""

from __future__ import annotations

import numpy as np

from . import _validate


class State:
    """History and last outputs of a batch of streams, owned by one model.

    Buffers (NumPy, the same layout for every backend): ``hist (B, cap, H)``,
    ``keys (B, cap, Ha)`` (``kq``/``additive`` only, else ``None``), ``h (B, H)``,
    ``c (B, H)``, ``positions (B,)``. Position ``p`` (0-based) lives in slot
    ``p % window`` with a window, else in slot ``p``. ``cap`` doubles as the stream grows;
    with a window it stops at ``window`` (a ring buffer from then on), so a window longer
    than the stream costs only what the stream needs. While ``cap < window`` no position
    has wrapped (``positions <= cap < window``, so ``p % window == p``).
    """

    def __init__(self, owner, batch_size, hidden_size, attention_size, window, dtype, capacity):
        self._owner = owner
        self._window = window
        cap = max(int(capacity), 1)
        if window is not None:
            cap = min(cap, window)
        self._hist = np.zeros((batch_size, cap, hidden_size), dtype=dtype)
        self._keys = (
            np.zeros((batch_size, cap, attention_size), dtype=dtype) if attention_size else None
        )
        self._h = np.zeros((batch_size, hidden_size), dtype=dtype)
        self._c = np.zeros((batch_size, hidden_size), dtype=dtype)
        self._positions = np.zeros(batch_size, dtype=np.int64)
        #: Per-backend scratch (prepared pointers, staging buffers); dropped by ``copy``.
        self._cache: dict = {}
        #: Made by ``forward`` for one call and then dropped: a device backend may back it
        #: with reusable buffers instead of a device copy of its own.
        self._scratch = False
        self._init_device_protocol()

    def _init_device_protocol(self):
        #: Device copy of hist/keys: {"backend", "hist", "keys", "download"} or None.
        self._device = None
        #: The host hist/keys may hold values the device copy lacks (read or written).
        self._host_newer = True
        #: The device copy holds values the host hist/keys lack.
        self._device_newer = False

    # -- the history: host arrays, synchronised with a device copy on access ---------------
    @property
    def hist(self) -> np.ndarray:
        """History ``(B, cap, H)``. Reading the attribute brings it up to date from a device
        copy and marks it as possibly written (the next device call uploads it)."""
        return self._host_access()[0]

    @property
    def keys(self):
        """Key cache ``(B, cap, Ha)`` (``kq``/``additive``), else ``None``; synchronised
        like :attr:`hist`."""
        return self._host_access()[1]

    @hist.setter
    def hist(self, value):
        self._replace("hist", value)

    @keys.setter
    def keys(self, value):
        self._replace("keys", value)

    # h, c and positions: host arrays the kernels read and write in place (a device backend
    # keeps them in mapped host memory). Replacing one is checked like hist/keys, so that no
    # kernel is handed a buffer of another shape, dtype or layout.
    h = property(lambda self: self._h, lambda self, v: self._replace("h", v),
                 doc="Last state ``h_t`` per stream ``(B, H)``.")
    c = property(lambda self: self._c, lambda self, v: self._replace("c", v),
                 doc="Last context ``c_t`` per stream ``(B, H)``.")
    positions = property(lambda self: self._positions,
                         lambda self, v: self._replace("positions", v),
                         doc="Steps each stream has consumed, int64 ``(B,)``.")

    def _replace(self, name, value):
        """Put another host array of the same shape and dtype, C-contiguous and writeable, in
        place of a state buffer (for ``hist``/``keys`` its values become the newest, whatever
        a device copy holds). To restore values, assigning into the buffer
        (``state.h[...] = saved``) works as well."""
        old = getattr(self, "_" + name)
        ok = (old is not None and isinstance(value, np.ndarray) and value.shape == old.shape
              and value.dtype == old.dtype)
        if not ok or not (value.flags.c_contiguous and value.flags.writeable):
            want = "None" if old is None else (f"a C-contiguous, writeable array of shape "
                                               f"{old.shape}, dtype {old.dtype}")
            got = (f"shape {value.shape}, dtype {value.dtype}, "
                   f"{'C-contiguous' if value.flags.c_contiguous else 'not C-contiguous'}, "
                   f"{'writeable' if value.flags.writeable else 'read-only'}"
                   if isinstance(value, np.ndarray) else type(value).__name__)
            raise ValueError(f"state.{name} must stay {want}; got {got}")
        setattr(self, "_" + name, value)
        if name in ("hist", "keys"):
            self._device_newer = False
            self._host_newer = True

    def _host_access(self):
        self._sync_host()
        self._host_newer = True
        return self._hist, self._keys

    # -- public --------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.h.shape[0]

    @property
    def capacity(self) -> int:
        return self._hist.shape[1]

    @property
    def t(self) -> int:
        """Steps consumed by the longest stream: ``int(positions.max())`` (0 when empty).

        ``positions``, ``h`` and ``c`` on the host are always current (the CUDA backend keeps
        them in mapped host memory that its kernel reads and writes directly); only
        ``hist``/``keys`` have a device copy.
        """
        return int(self.positions.max()) if self.positions.size else 0

    def reset(self, rows=None) -> None:
        """Start over, for all rows or only ``rows``: row indices in ``[0, batch_size)``
        (an int or a 1-D sequence; negative indices are rejected, not counted from the
        end) or a boolean mask of shape ``(batch_size,)``. A rejected call changes nothing."""
        B = self.batch_size
        rule = f"rows must be row indices in [0, {B}) or a boolean mask of shape ({B},)"
        if rows is None:
            sel = slice(None)
        else:
            arr = np.asarray(rows)
            if arr.size == 0 and arr.ndim == 1:
                return                                    # no rows: nothing to reset
            if arr.dtype.kind == "b":
                _validate.expect_shape("rows (boolean mask)", arr, (B,))
            elif arr.dtype.kind in "iu":
                if arr.ndim > 1:
                    raise ValueError(f"{rule}; got a {arr.ndim}-D array of shape "
                                     f"{_validate.shape_str(arr.shape)} (indices must be 1-D)")
                bad = arr[(arr < 0) | (arr >= B)]
                if bad.size:
                    raise ValueError(f"{rule}; got {arr.tolist()} ({bad.ravel()[0]} is outside)")
            else:
                raise TypeError(f"rows must be integer indices or a boolean mask; got dtype "
                                f"{arr.dtype}")
            sel = arr
        self._sync_host()
        self.positions[sel] = 0
        self.h[sel] = 0
        self.c[sel] = 0
        self._hist[sel] = 0
        if self._keys is not None:
            self._keys[sel] = 0
        self._host_changed()

    def copy(self) -> "State":
        """An independent copy (same owner model)."""
        self._sync_host()
        new = State.__new__(State)
        new._owner = self._owner
        new._window = self._window
        for name in ("_hist", "_keys", "_h", "_c", "_positions"):
            arr = getattr(self, name)
            setattr(new, name, None if arr is None else np.array(arr))
        new._cache = {}
        new._scratch = False
        new._init_device_protocol()
        return new

    def __repr__(self):
        return (
            f"State(batch_size={self.batch_size}, capacity={self.capacity}, "
            f"positions={self.positions.tolist()})"
        )

    # -- used by the model ---------------------------------------------------------------
    def _ensure_capacity(self, needed: int) -> None:
        """Grow (amortised doubling) so that positions < ``needed`` fit, or, with a window,
        up to ``window`` entries (a full ring buffer holds every attended position).

        Below ``window`` no position has wrapped yet (slot ``p % window == p``), so copying
        the old slots to the same indices keeps every position where the layout puts it.
        """
        if needed <= self.capacity or self.capacity == self._window:
            return
        self._sync_host()
        cap = self.capacity
        while cap < needed:
            cap *= 2
        if self._window is not None:
            cap = min(cap, self._window)
        grown = {}
        for name in ("_hist", "_keys"):   # allocate both before replacing either
            old = getattr(self, name)
            if old is not None:
                grown[name] = np.zeros((old.shape[0], cap, old.shape[2]), dtype=old.dtype)
                grown[name][:, : old.shape[1]] = old
        for name, new in grown.items():
            setattr(self, name, new)
        self._host_changed()

    # -- host/device synchronisation: the one owner of the protocol ------------------------
    # Invariant: whichever side holds the newest hist/keys is flagged (_host_newer,
    # _device_newer; never both, since a device call first uploads host changes). h, c and
    # positions are always current on the host (see ``t``).
    def _device_history(self, backend, alloc, upload, download):
        """Device arrays ``(hist, keys or None)`` of ``backend``, current for a launch.

        ``alloc(shape, dtype)`` makes a device array; ``upload(dev, host)`` and
        ``download(dev, host)`` copy whole arrays. The device copy is (re)allocated when the
        host buffers changed shape (they grow geometrically, so does the device copy), and
        uploaded when the host side changed (a fresh copy of a state with no stored
        position excepted).
        """
        dev = self._device
        if dev is not None and dev["backend"] != backend:
            self._sync_host()
            dev = None
        fresh = dev is None or dev["hist"].shape != self._hist.shape
        if fresh:   # alloc gives zeros
            dev = self._device = {
                "backend": backend, "download": download,
                "hist": alloc(self._hist.shape, self._hist.dtype),
                "keys": None if self._keys is None else alloc(self._keys.shape,
                                                              self._keys.dtype)}
            self._host_newer = True
        if self._host_newer:
            # a fresh device copy of a state with no stored position needs no upload:
            # every slot a kernel reads is written by that kernel first
            if not fresh or (self.positions.size and self.positions.max() > 0):
                upload(dev["hist"], self._hist)
                if self._keys is not None:
                    upload(dev["keys"], self._keys)
            self._host_newer = False
        return dev["hist"], dev["keys"]

    def _device_wrote(self, backend):
        """A launch of ``backend`` wrote the device history: the host copy is stale."""
        self._device_newer = True

    def _sync_host(self) -> None:
        """Bring the host hist/keys up to date when the device copy holds newer values."""
        if self._device_newer:
            dev = self._device
            dev["download"](dev["hist"], self._hist)
            if self._keys is not None:
                dev["download"](dev["keys"], self._keys)
            self._device_newer = False

    def _host_changed(self) -> None:
        """Host buffers changed (a CPU kernel, reset, growth): the device copy is stale."""
        self._host_newer = True
