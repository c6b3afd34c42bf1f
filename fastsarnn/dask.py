"""Batch inference on a Dask cluster: sequences are independent, so the batch axis is the
unit of distribution.

>>> from dask.distributed import Client, LocalCluster
>>> client = Client(LocalCluster(n_workers=2, threads_per_worker=1))
>>> import dask.array as da, fastsarnn.dask
>>> x = da.from_array(big_numpy_array, chunks=(1024, -1, -1))
>>> out = fastsarnn.dask.forward(model, x, lengths=lengths)
>>> h = out.h.compute()
"""

from __future__ import annotations

import warnings

import numpy as np

from . import _registry, _validate
from ._sysinfo import usable_cores
from .model import Output, SelfAttentionRNN, _attention_mode, window_positions


def kernel_threads() -> int:
    """Kernel threads for one block so that Dask threads x kernel threads <= cores."""
    dask_threads = None
    try:
        from distributed import get_worker
        dask_threads = get_worker().state.nthreads
    except (ImportError, ValueError, AttributeError):
        import dask
        dask_threads = dask.config.get("num_workers", None) or usable_cores()
    return max(1, usable_cores() // max(1, int(dask_threads)))


def _run_block(x_block, lengths_block, model, backend, return_attention, t0_cols):
    out = model.forward(np.ascontiguousarray(x_block), lengths=lengths_block, backend=backend,
                        return_attention=return_attention, num_threads=kernel_threads())
    return out.h, out.c, out.attention, out.h_last, out.c_last


def forward(model: SelfAttentionRNN, x, *, lengths=None, backend=None,
            return_attention=False) -> Output:
    """:meth:`SelfAttentionRNN.forward` over a Dask array chunked along the batch axis.

    Parameters
    ----------
    model : SelfAttentionRNN
        Sent to the workers once: one key in the graph, shared by every block.
    x : dask.array.Array
        ``(B, T, D)``; chunks along T or D are merged (with a warning).
    lengths : array of int, optional
        ``(B,)`` valid steps per sequence (NumPy; split like ``x``'s batch chunks).
    backend : str, optional
        Backend each block runs (default: the workers' automatic choice).
    return_attention : bool or {"dense", "window"}
        Also return attention: dense ``(B, T, T)``, or with ``"window"`` (models with a
        window) the compact ``(B, T, window)`` rows and ``attention_positions``.

    Returns
    -------
    Output
        Dask arrays, chunked along the batch axis like ``x``.
    """
    import dask
    import dask.array as da

    if not isinstance(model, SelfAttentionRNN):
        raise TypeError(f"model must be a fastsarnn SelfAttentionRNN; got {type(model).__name__}")
    if not isinstance(x, da.Array):
        raise TypeError(f"x must be a dask.array.Array; got {type(x).__name__} (use "
                        "model.forward for NumPy arrays)")
    if x.dtype.kind not in "iuf":
        raise TypeError(f"x must be a real array (integer or float); got dtype {x.dtype}")
    if x.ndim != 3 or x.shape[2] != model.input_size:
        raise ValueError(f"x must have shape (B, T, {model.input_size}); got shape "
                         f"{_validate.shape_str(x.shape)}")
    if backend is not None:
        _registry._check_name(backend)
    B, T, _ = x.shape
    lens = _validate.lengths(lengths, B, T, two_d=False)
    mode = _attention_mode(return_attention, model.window)
    if len(x.chunks[1]) > 1 or len(x.chunks[2]) > 1:
        warnings.warn(f"fastsarnn.dask.forward needs x chunked along the batch axis only; "
                      f"got chunks {x.chunks[1:]} along (T, D): rechunking to one chunk "
                      f"there (use x.rechunk({{1: -1, 2: -1}}) to avoid this)", stacklevel=2)
        x = x.rechunk({1: -1, 2: -1})
    H = model.hidden_size
    dt = model.dtype
    # The model's key names everything that changes its results (weights, score,
    # recurrence, window, dtype: SelfAttentionRNN.__dask_tokenize__), and each block's key
    # is derived from its real inputs (x block, lengths, model key, backend, attention).
    model_key = dask.delayed(model, pure=True,
                             name=f"fastsarnn-model-{dask.base.tokenize(model)}")
    blocks = x.to_delayed().ravel()
    outs = {k: [] for k in Output._fields}
    start = 0
    for blk, nb in zip(blocks, x.chunks[0]):
        res = dask.delayed(_run_block, pure=True, nout=5)(
            blk, lens[start:start + nb], model_key, backend, return_attention, T)
        start += nb
        outs["h"].append(da.from_delayed(res[0], (nb, T, H), dt))
        outs["c"].append(da.from_delayed(res[1], (nb, T, H), dt))
        if mode is not None:
            cols = model.window if mode == "window" else T
            outs["attention"].append(da.from_delayed(res[2], (nb, T, cols), dt))
        outs["h_last"].append(da.from_delayed(res[3], (nb, H), dt))
        outs["c_last"].append(da.from_delayed(res[4], (nb, H), dt))
    cat = {k: (da.concatenate(v, axis=0) if v else None) for k, v in outs.items()}
    positions = None
    if mode == "window":   # every sequence starts at position 0: known without computing
        positions = da.from_array(window_positions(np.zeros(B, np.int64), lens, T,
                                                   model.window),
                                  chunks=(x.chunks[0], T, model.window))
    return Output(**cat, attention_positions=positions)


def model_keys(arr) -> list:
    """Keys of the model in a result's graph (one, however many blocks)."""
    return [k for k in dict(arr.__dask_graph__()) if
            (k[0] if isinstance(k, tuple) else k).startswith("fastsarnn-model-")]
