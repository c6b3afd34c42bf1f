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
        self.hist = np.zeros((batch_size, cap, hidden_size), dtype=dtype)
        self.keys = (
            np.zeros((batch_size, cap, attention_size), dtype=dtype) if attention_size else None
        )
        self.h = np.zeros((batch_size, hidden_size), dtype=dtype)
        self.c = np.zeros((batch_size, hidden_size), dtype=dtype)
        self.positions = np.zeros(batch_size, dtype=np.int64)
        #: Per-backend scratch (prepared pointers, device copies); dropped by ``copy``.
        self._cache: dict = {}
        #: Bumped whenever host buffers change, so device copies know they are stale.
        self._host_version = 0

    # -- public --------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.h.shape[0]

    @property
    def capacity(self) -> int:
        return self.hist.shape[1]

    @property
    def t(self) -> int:
        """Steps consumed by the longest stream: ``int(positions.max())`` (0 when empty).

        ``positions``, ``h`` and ``c`` on the host are always current (a device backend
        copies them back after each call); only ``hist``/``keys`` may live on the device.
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
        self.hist[sel] = 0
        if self.keys is not None:
            self.keys[sel] = 0
        self._host_changed()

    def copy(self) -> "State":
        """An independent copy (same owner model)."""
        self._sync_host()
        new = State.__new__(State)
        new._owner = self._owner
        new._window = self._window
        for name in ("hist", "keys", "h", "c", "positions"):
            arr = getattr(self, name)
            setattr(new, name, None if arr is None else arr.copy())
        new._cache = {}
        new._host_version = 0
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
        for name in ("hist", "keys"):   # allocate both before replacing either
            old = getattr(self, name)
            if old is not None:
                grown[name] = np.zeros((old.shape[0], cap, old.shape[2]), dtype=old.dtype)
                grown[name][:, : old.shape[1]] = old
        for name, new in grown.items():
            setattr(self, name, new)
        self._host_changed()

    def _sync_host(self) -> None:
        """Bring host buffers up to date when a device backend holds newer values."""
        sync = self._cache.get("sync_host")
        if sync is not None:
            sync(self)

    def _host_changed(self) -> None:
        """Host buffers changed (a CPU kernel, reset, growth): device copies are stale."""
        self._host_version += 1
