"""Backend registry and selection.

Selection, strongest first: the call's ``backend=`` argument; ``with use_backend(name)``
(context-local); ``set_backend(name)``; the environment variable ``FASTSARNN_BACKEND``;
``"auto"`` (the first available of :data:`fastsarnn._config.AUTO_ORDER`).
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
import threading
from typing import NamedTuple

from . import _config

#: Backend name -> module implementing it (imported lazily, on first use).
BACKEND_MODULES = {
    "numpy": "fastsarnn.backends.numpy_ref",
    "numba": "fastsarnn.backends.numba_cpu",
    "c": "fastsarnn.backends.c_ext",
    "cuda": "fastsarnn.backends.cuda",
}
_CHOICES = tuple(BACKEND_MODULES) + ("auto",)


class BackendUnavailableError(RuntimeError):
    """A known backend cannot run here (not built, dependency missing, no GPU)."""


class BackendInfo(NamedTuple):
    """Whether a backend can run here, and if not, why."""

    available: bool
    reason: str | None


class _UnavailableBackend:
    """Stands in for a backend that cannot run; every kernel raises with the reason."""

    def __init__(self, name: str, reason: str):
        self.NAME = name
        self.reason = reason

    def _raise(self, *args, **kwargs):
        raise BackendUnavailableError(f"backend {self.NAME!r} is unavailable: {self.reason}")

    forward = step = _raise


_loaded: dict = {}
_load_lock = threading.Lock()
_global_choice: str | None = None
_context_choice: contextvars.ContextVar = contextvars.ContextVar(
    "fastsarnn_backend", default=None
)


def _check_name(name, what="backend"):
    if not isinstance(name, str) or name not in _CHOICES:
        raise ValueError(f"unknown {what} {name!r}; expected one of {list(_CHOICES)}")
    return name


def _load(name: str):
    """The backend module, or an :class:`_UnavailableBackend` that explains why not."""
    mod = _loaded.get(name)
    if mod is not None:
        return mod
    with _load_lock:
        mod = _loaded.get(name)
        if mod is None:
            try:
                mod = importlib.import_module(BACKEND_MODULES[name])
                ok, reason = mod.availability()
                if not ok:
                    mod = _UnavailableBackend(name, reason)
            except Exception as exc:  # missing dependency, broken build: say why
                mod = _UnavailableBackend(name, f"{type(exc).__name__}: {exc}")
            _loaded[name] = mod
    return mod


def backends() -> dict:
    """Every backend name -> :class:`BackendInfo` (``available``, ``reason``)."""
    out = {}
    for name in BACKEND_MODULES:
        mod = _load(name)
        if isinstance(mod, _UnavailableBackend):
            out[name] = BackendInfo(False, mod.reason)
        else:
            out[name] = BackendInfo(True, None)
    return out


def _check_runnable(name: str) -> str:
    """``name`` itself; raises :class:`BackendUnavailableError` at once when it is a known
    backend that cannot run here (so a choice fails where it is made, not at a later call)."""
    if name != "auto":
        mod = _load(name)
        if isinstance(mod, _UnavailableBackend):
            mod._raise()
    return name


def set_backend(name: str | None) -> None:
    """Set the process-wide default backend (``None`` or ``"auto"`` restores automatic choice).

    Raises ``ValueError`` for an unknown name and :class:`BackendUnavailableError` for a
    backend that cannot run here; the previous setting then stays.
    """
    global _global_choice
    _global_choice = None if name is None else _check_runnable(_check_name(name))


@contextlib.contextmanager
def use_backend(name: str):
    """Use backend ``name`` inside a ``with`` block (context- and thread-local).

    Like :func:`set_backend`, an unknown name or a backend that cannot run here raises when
    the block is entered. (``$FASTSARNN_BACKEND`` is read at each call instead; a backend
    named there that cannot run raises at the first forward or step.)
    """
    token = _context_choice.set(_check_runnable(_check_name(name)))
    try:
        yield
    finally:
        _context_choice.reset(token)


def _requested(backend=None) -> str:
    """The requested name, before ``"auto"`` is resolved: the argument, else the context's
    choice, else :func:`set_backend`'s, else ``$FASTSARNN_BACKEND``, else ``"auto"``.
    Raises ``ValueError`` for an unknown name."""
    if backend is not None:
        return _check_name(backend)
    for choice in (_context_choice.get(), _global_choice):
        if choice is not None:
            return choice
    env = os.environ.get(_config.ENV_BACKEND)
    if env:
        return _check_name(env, f"backend in ${_config.ENV_BACKEND}")
    return "auto"


def _pick(backend=None) -> str:
    """The one place a backend name is chosen: :func:`_requested`, with ``"auto"`` replaced
    by the first available of ``AUTO_ORDER`` (``"numpy"`` if none is). An explicit name is
    returned as is, available or not, and its module is not loaded here."""
    name = _requested(backend)
    if name != "auto":
        return name
    for cand in _config.AUTO_ORDER:
        if type(_load(cand)) is not _UnavailableBackend:
            return cand
    return "numpy"


def get_backend(backend: str | None = None) -> str:
    """Name of the backend the current setting (or ``backend``) resolves to."""
    return _pick(backend)


def resolve(backend: str | None = None):
    """The backend module for this call; raises if an explicit choice cannot run.

    The per-token path calls this once per step: :func:`_pick` chooses the name, then the
    loaded module is looked up (a dict hit after the first call). A name given here whose
    module is loaded and can run is returned at once (only checked names are loaded).
    """
    if type(backend) is str:
        mod = _loaded.get(backend)
        if mod is not None and type(mod) is not _UnavailableBackend:
            return mod
    mod = _load(_pick(backend))
    if type(mod) is _UnavailableBackend:
        mod._raise()
    return mod
