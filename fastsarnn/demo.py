"""The recall demo: a model that reads back a token flagged far back in its input.

Task: a sequence of ``T`` random tokens from ``K`` symbols; one token in the first part
carries a *marker* (an extra input channel), and the label is that flagged token. At the last
step the model must name it. A plain (Elman) RNN has to carry it through ~30 steps of distractors; the
self-attention model can look straight back at it, and its attention row shows where.

Shipped models (``fastsarnn/data``) are trained by ``examples/train_recall.py``; each file
holds the fastsarnn weights, a linear readout on the last context ``c_T``, and the task's
configuration.
"""

from __future__ import annotations

import json
import os

import numpy as np

from .model import PARAM_NAMES, SelfAttentionRNN

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
TASK = {"K": 4, "T": 40, "marker_lo": 2, "marker_hi": 12}
SYMBOLS = "ABCDEFGHIJ"


def make_recall_task(n: int, seed: int, K: int = TASK["K"], T: int = TASK["T"],
                     marker_lo: int = TASK["marker_lo"], marker_hi: int = TASK["marker_hi"]):
    """``n`` examples: one-hot token inputs ``(n, T, K + 1)`` whose channel K marks the
    flagged position, labels ``(n,)`` (the flagged token), marker positions ``(n,)`` and
    token ids ``(n, T)``."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, K, size=(n, T))
    marker = rng.integers(marker_lo, marker_hi + 1, size=n)
    labels = tokens[np.arange(n), marker]
    x = np.zeros((n, T, K + 1), dtype=np.float32)
    x[np.arange(n)[:, None], np.arange(T)[None], tokens] = 1.0
    x[np.arange(n), marker, K] = 1.0
    return x, labels, marker, tokens


def save_classifier(path, model: SelfAttentionRNN, readout_W, readout_b, info: dict):
    config = {"score": model.score, "window": model.window, "dtype": model.dtype.name,
              "task": TASK, **info}
    arrays = {k: v for k, v in model.params.items()}
    with open(path, "wb") as f:
        np.savez_compressed(f, __config__=np.array(json.dumps(config)),
                            readout_W=np.asarray(readout_W, np.float32),
                            readout_b=np.asarray(readout_b, np.float32), **arrays)


def load_classifier(name_or_path):
    """``(model, readout_W, readout_b, config)`` from a shipped name or a path."""
    path = name_or_path if os.path.sep in str(name_or_path) else os.path.join(
        DATA_DIR, f"{name_or_path}.npz")
    with np.load(path, allow_pickle=False) as data:
        config = json.loads(str(data["__config__"]))
        params = {k: data[k] for k in PARAM_NAMES if k in data.files}
        W, b = data["readout_W"], data["readout_b"]
    model = SelfAttentionRNN(**params, score=config["score"], window=config["window"],
                             dtype=config["dtype"])
    return model, W, b, config


def evaluate(model, W, b, x, labels, backend=None, return_attention=False):
    """Accuracy of the readout on the last context, and the forward output."""
    out = model.forward(x, backend=backend, return_attention=return_attention)
    logits = out.c[:, -1] @ W.T + b
    return float(np.mean(logits.argmax(1) == labels)), out


def heat_map(attention_row_matrix, tokens, marker, rows=None) -> str:
    """A character heat map of attention (rows: steps, columns: positions)."""
    shades = " .:-=+*#%@"
    T = attention_row_matrix.shape[0]
    rows = range(T) if rows is None else rows
    label = "".join(SYMBOLS[t] for t in tokens)
    lines = ["      " + label + "   (inputs)"]
    for r in rows:
        a = attention_row_matrix[r]
        line = "".join(shades[min(len(shades) - 1, int(v * (len(shades) - 1) + 0.5))]
                       for v in a[:T])
        lines.append(f"t={r:<3} {line}")
    lines.append("      " + " " * marker + "^ marked token (the label)")
    return "\n".join(lines)


def compact_to_dense(attention, positions):
    """A compact attention matrix ``(steps, window)`` with its ``positions`` as a dense
    ``(steps, last - first + 1)`` one over the positions it spans; returns ``(dense,
    first)`` (column ``j`` of ``dense`` is position ``first + j``)."""
    att = np.asarray(attention, dtype=np.float64)
    pos = np.asarray(positions)
    if pos.shape != att.shape:
        raise ValueError(f"positions must have the shape of attention {att.shape}; got "
                         f"{pos.shape}")
    used = pos >= 0
    if not used.any():
        return np.zeros((att.shape[0], 0)), 0
    first, last = int(pos[used].min()), int(pos[used].max())
    dense = np.zeros((att.shape[0], last - first + 1))
    rows = np.broadcast_to(np.arange(att.shape[0])[:, None], att.shape)
    dense[rows[used], pos[used] - first] = att[used]
    return dense, first


def plot_attention(attention, tokens=None, ax=None, title=None, positions=None):
    """A matplotlib heat map of one sequence's attention; returns the figure.

    Parameters
    ----------
    attention : array (T, P) or (T, window)
        Rows: steps. Dense layout (``return_attention=True``): column = attended position.
        Compact layout (``return_attention="window"``): pass ``positions`` too.
    tokens : sequence of str, optional
        Labels for the positions (and steps), from position 0 (dense) or from the first
        position the compact rows span.
    positions : array (T, window) of int, optional
        ``Output.attention_positions`` of the same sequence: the compact layout is drawn at
        the absolute positions it refers to.
    """
    import matplotlib
    if ax is None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    att = np.asarray(attention, dtype=np.float64)
    if att.ndim != 2:
        raise ValueError(f"attention must be 2-D (steps, positions); got shape {att.shape}")
    first = 0
    if positions is not None:
        att, first = compact_to_dense(att, positions)
    if ax is None:
        fig, ax = plt.subplots(figsize=(min(14, max(4, att.shape[1] * 0.18 + 2)),
                                        min(10, max(3, att.shape[0] * 0.18 + 1.5))))
    else:
        fig = ax.figure
    im = ax.imshow(att, cmap="viridis", aspect="auto", vmin=0.0,
                   vmax=max(att.max(initial=0.0), 1e-12),
                   extent=(first - 0.5, first + att.shape[1] - 0.5, att.shape[0] - 0.5, -0.5))
    ax.set_xlabel("attended position")
    ax.set_ylabel("step")
    if tokens is not None:
        ax.set_xticks(range(first, first + len(tokens)), list(tokens), fontsize=7)
        ax.set_yticks(range(min(len(tokens), att.shape[0])),
                      list(tokens)[: att.shape[0]], fontsize=7)
    if title:
        ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.04)
    return fig


def run(n=500, seed=2024, backend=None, plot=None, out=None) -> dict:
    """Evaluate the shipped attention model and plain-RNN baseline on fresh examples."""
    import sys
    out = out or sys.stdout
    x, labels, marker, tokens = make_recall_task(n, seed)
    attn_model, W, b, _ = load_classifier("recall_attention")
    plain_model, Wp, bp, _ = load_classifier("recall_plain")
    acc, res = evaluate(attn_model, W, b, x, labels, backend, return_attention=True)
    acc_plain, _ = evaluate(plain_model, Wp, bp, x, labels, backend)
    final = res.attention[:, -1]                      # (n, T): the last step's attention
    idx = np.arange(n)
    on_target = final[idx, marker]
    print(f"task: {n} fresh sequences of {TASK['T']} tokens from {TASK['K']} symbols; the "
          f"label is the marked token, {TASK['T'] - 1 - TASK['marker_hi']}-"
          f"{TASK['T'] - 1 - TASK['marker_lo']} steps back (seed {seed})", file=out)
    print(f"self-attention RNN  accuracy: {acc:.3f}", file=out)
    print(f"plain RNN (window=1) accuracy: {acc_plain:.3f}   (chance {1 / TASK['K']:.3f})",
          file=out)
    print(f"mean attention of the final step on the marked token: {on_target.mean():.3f}",
          file=out)
    ex = 0
    print("\nattention of example 0 (rows: every 3rd step and the last; darker = more):",
          file=out)
    rows = list(range(0, TASK["T"] - 1, 3)) + [TASK["T"] - 1]
    print(heat_map(res.attention[ex], tokens[ex], int(marker[ex]), rows), file=out)
    if plot:
        names = [SYMBOLS[t] + ("*" if i == marker[ex] else "") for i, t in enumerate(tokens[ex])]
        fig = plot_attention(res.attention[ex], names,
                             title=f"label {SYMBOLS[labels[ex]]}: marker at {marker[ex]}")
        fig.savefig(plot, dpi=110, bbox_inches="tight")
        print(f"\nheat map written to {plot}", file=out)
    return {"accuracy": acc, "accuracy_plain": acc_plain,
            "attention_on_target": float(on_target.mean())}
