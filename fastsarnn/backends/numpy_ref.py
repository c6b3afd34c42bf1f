"""The reference backend: SPEC section 1 in plain NumPy, one step at a time.

Readable first; it is the oracle every other backend is checked against. It computes in the
model dtype (a float64 model gives the float64 reference).
"""

import numpy as np

NAME = "numpy"


def availability():
    return True, None


def _scores(p, H_S, K_S, h_t):
    """Step 3: scores e_i of the attended states ``H_S`` (keys ``K_S``) against ``h_t``."""
    if p.score == "dot":
        return H_S @ h_t
    if p.score == "scaled_dot":
        return H_S @ h_t / np.sqrt(p.H)
    if p.score == "general":
        return H_S @ (p.W_s @ h_t)
    if p.score == "kq":
        q_t = p.W_q @ h_t
        return K_S @ q_t
    if p.score == "additive":
        q_t = p.W_q @ h_t
        return np.tanh(K_S + q_t) @ p.v
    raise AssertionError(p.score)


def _one_step(p, x_t, b, state, out_h, out_c, out_attn, r, compact=False):
    """Steps 1-5 for sequence ``b``; writes outputs row ``r`` and advances the state.

    Attention row: dense, column = absolute position; or compact, column ``k`` = the k-th
    oldest attended position (``first + k``)."""
    pos = int(state.positions[b])  # 0-based position of this step
    # 1. state update
    pre = p.W_x @ x_t + p.W_c @ state.c[b] + p.b
    if p.recurrence == "hc":
        pre = pre + p.W_h @ state.h[b]
    h_t = np.tanh(pre)
    # 2. append h_t (and its key) to the history
    slot = pos % p.window if p.window is not None else pos
    state.hist[b, slot] = h_t
    if state.keys is not None:
        state.keys[b, slot] = p.W_k @ h_t
    # 3. scores over S_t: positions max(0, pos - window + 1) ... pos
    first = max(0, pos - p.window + 1) if p.window is not None else 0
    attended = np.arange(first, pos + 1)
    slots = attended % p.window if p.window is not None else attended
    H_S = state.hist[b, slots]
    K_S = state.keys[b, slots] if state.keys is not None else None
    e = _scores(p, H_S, K_S, h_t)
    # 4. alpha = softmax(e), max-subtracted
    a = np.exp(e - e.max())
    alpha = a / a.sum()
    # 5. context c_t = sum_i alpha_i h_i
    c_t = alpha @ H_S
    state.h[b] = h_t
    state.c[b] = c_t
    state.positions[b] = pos + 1
    out_h[b, r] = h_t
    out_c[b, r] = c_t
    if out_attn is not None:
        if compact:
            out_attn[b, r, : attended.size] = alpha
        else:
            out_attn[b, r, attended] = alpha


def forward(p, x, lengths, state, out_h, out_c, out_attn, num_threads=None,
            compact_attention=False):
    """Whole sequences: sequence ``b`` runs its first ``lengths[b]`` steps.

    ``compact_attention``: ``out_attn`` is ``(B, T, window)`` and row r holds the weights of
    positions ``first .. p`` in columns ``0 .. p - first`` (SPEC section 2)."""
    for b in range(x.shape[0]):
        for r in range(int(lengths[b])):
            _one_step(p, x[b, r], b, state, out_h, out_c, out_attn, r, compact_attention)


def step(p, x, active, state, out_h, out_c, num_threads=None):
    """One step for every active row."""
    for b in range(x.shape[0]):
        if active[b]:
            _one_step(p, x[b], b, state, out_h[:, None], out_c[:, None], None, 0)
