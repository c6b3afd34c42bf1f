"""Backends: one module each, one set of kernel entry points.

``fastsarnn.backends`` is this subpackage, and calling it, ``fastsarnn.backends()``, returns
every backend name -> :class:`~fastsarnn.BackendInfo` (SPEC section 3): one name, one thing.

Every backend module exposes

``availability() -> (bool, reason)``
    Whether it can run here.
``forward(p, x, lengths, state, out_h, out_c, out_attn, num_threads)``
    ``p`` is the model's :class:`~fastsarnn.model.KernelParams`; ``x (B, T, D)`` is
    C-contiguous in the model dtype; ``lengths`` int64 ``(B,)`` in ``[0, T]``; ``state`` a
    :class:`~fastsarnn.state.State` whose capacity already fits every new position (with
    ``p.window`` set, ``capacity == p.window``; a windowed state whose history is still
    shorter than its window comes with the model's unwindowed ``p``: nothing has wrapped);
    ``out_h``, ``out_c`` zeros ``(B, T, H)``; ``out_attn`` zeros ``(B, T, ncols)`` or
    ``None``. Writes the outputs and advances the state; allocates nothing the caller sees.
``step(p, x, active, state, out_h, out_c, num_threads)``
    One step: ``x (B, D)``, ``active`` bool ``(B,)``, ``out_h``/``out_c`` zeros ``(B, H)``.

All input checks live in :mod:`fastsarnn.model`; compiled kernels re-check the sizes they
are handed so that no argument can make them read or write out of bounds.
"""

import sys as _sys
import types as _types


class _BackendsPackage(_types.ModuleType):
    """The subpackage, callable: ``fastsarnn.backends()`` lists the backends."""

    def __call__(self) -> dict:
        """Every backend name -> ``BackendInfo(available, reason)``."""
        from .._registry import backends
        return backends()


_sys.modules[__name__].__class__ = _BackendsPackage
