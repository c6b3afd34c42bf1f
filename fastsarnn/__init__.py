"""fastsarnn: fast inference for a Simple RNN with self-attention over its own history.

>>> import fastsarnn as fs
>>> model = fs.SelfAttentionRNN.random(64, 128, seed=0)
>>> out = model.forward(x)             # x: (B, T, 64) or (T, 64)
"""

# ``fastsarnn.backends`` is the subpackage of backend modules; it is callable:
# ``fastsarnn.backends()`` returns the dict of BackendInfo (fastsarnn/backends/__init__.py).
from . import backends
from ._registry import (BackendInfo, BackendUnavailableError, get_backend, set_backend,
                        use_backend)
from .model import Output, SelfAttentionRNN
from .state import State


def plot_attention(attention, tokens=None, **kwargs):
    """A matplotlib heat map of one sequence's attention ``(steps, positions)``; returns the
    figure (see :func:`fastsarnn.demo.plot_attention`)."""
    from .demo import plot_attention as _plot
    return _plot(attention, tokens, **kwargs)

__version__ = "0.1.0"

__all__ = [
    "SelfAttentionRNN", "Output", "State", "BackendInfo", "BackendUnavailableError",
    "backends", "get_backend", "set_backend", "use_backend", "plot_attention", "__version__",
]
