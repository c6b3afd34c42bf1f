"""fastsarnn: fast inference for a Simple RNN with self-attention over its own history.

>>> import fastsarnn as fs
>>> model = fs.SelfAttentionRNN.random(64, 128, seed=0)
>>> out = model.forward(x)             # x: (B, T, 64) or (T, 64)
"""

import os as _os
import warnings as _warnings


class SourceTreeWarning(UserWarning):
    """fastsarnn was imported from a source checkout whose C extension was not built."""


def _warn_if_unbuilt_source_tree():
    """Warn (once: at import) when this package is a repository checkout without the built
    C extension, typically Python started in the repository root: the installed package is
    shadowed, ``"c"`` is unavailable and ``"auto"`` quietly picks another backend."""
    here = _os.path.dirname(_os.path.abspath(__file__))
    root = _os.path.dirname(here)
    if not (_os.path.isfile(_os.path.join(root, "pyproject.toml"))
            and _os.path.isdir(_os.path.join(root, "csrc"))):
        return                                 # an installed package: nothing to say
    if any(f.startswith("_csarnn") and f.endswith((".so", ".pyd")) for f in _os.listdir(here)):
        return                                 # an editable install: the extension is built
    if _os.path.isfile(_os.path.join(here, "_csarnn_build_error.txt")):
        state = "failed to build (fastsarnn info shows the error; fix csrc/, then rebuild)"
    else:
        state = "was never built"
    _warnings.warn(
        f"fastsarnn is imported from the source tree {here}, where the C extension {state}: "
        "the 'c' backend is unavailable and 'auto' picks another one. Install the "
        "checkout with 'pip install -e .' (editable; rerun it after changing csrc/) or "
        "'pip install .', or start Python outside the repository root.",
        SourceTreeWarning, stacklevel=3)


_warn_if_unbuilt_source_tree()

# ``fastsarnn.backends`` is the subpackage of backend modules; it is callable:
# ``fastsarnn.backends()`` returns the dict of BackendInfo (fastsarnn/backends/__init__.py).
from . import backends
from ._registry import (BackendInfo, BackendUnavailableError, get_backend, set_backend,
                        use_backend)
from .model import Output, SelfAttentionRNN
from .state import State


def plot_attention(attention, tokens=None, *, positions=None, **kwargs):
    """A matplotlib heat map of one sequence's attention; returns the figure.

    ``attention`` is dense ``(steps, positions)`` (``return_attention=True``), or compact
    ``(steps, window)`` (``return_attention="window"``) with ``positions`` its
    ``attention_positions`` (see :func:`fastsarnn.demo.plot_attention`)."""
    from .demo import plot_attention as _plot
    return _plot(attention, tokens, positions=positions, **kwargs)

__version__ = "0.1.0"

__all__ = [
    "SelfAttentionRNN", "Output", "State", "BackendInfo", "BackendUnavailableError",
    "backends", "get_backend", "set_backend", "use_backend", "plot_attention", "__version__",
    "SourceTreeWarning",
]
