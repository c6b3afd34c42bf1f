"""Fuzz the public API with bad input. Run as a script (in a subprocess, so that a crash of
the process is caught as a failure):

    python tests/fuzz_api.py BACKEND ITERATIONS SEED

Each call must either give the right answer (the same call on the float64 NumPy reference,
from the same state, within the contract's tolerance ``_config.TOLERANCE``; NaN or inf where
the reference is finite is wrong) or raise ValueError / TypeError (SPEC section 4), and a
failed call must leave the state unchanged.
Prints a summary; exits 1 on the first violation.
"""

import sys
import traceback

import numpy as np

import fastsarnn as fs
from fastsarnn import _config

SCORES = ("dot", "scaled_dot", "general", "kq", "additive")
DTYPES = [np.float16, np.float32, np.float64, np.int8, np.int64, np.uint16, np.bool_,
          np.complex64, object, "U3"]


def snapshot(st):
    return [None if a is None else a.copy() for a in (st.hist, st.keys, st.h, st.c,
                                                      st.positions)]


def same(st, snap):
    for a, b in zip((st.hist, st.keys, st.h, st.c, st.positions), snap):
        if (a is None) != (b is None) or (a is not None and (a.shape != b.shape
                                                             or not np.array_equal(a, b))):
            return False
    return True


def mutate_x(rng, x):
    kind = rng.integers(0, 9)
    if kind == 0:
        dt = DTYPES[rng.integers(len(DTYPES))]
        try:
            return x.astype(dt), f"dtype {dt}"
        except (TypeError, ValueError):
            return x.astype(object), "object"
    if kind == 1:
        return x[..., None], "rank +1"
    if kind == 2:
        return x.reshape(-1)[: max(1, x.size // 2)], "rank 1"
    if kind == 3:
        return x[..., :-1] if x.shape[-1] > 1 else np.concatenate([x, x], -1), "wrong D"
    if kind == 4 and x.size:
        y = x.copy()
        y.flat[rng.integers(y.size)] = [np.nan, np.inf, -np.inf][rng.integers(3)]
        return y, "non-finite"
    if kind == 5:
        y = np.repeat(x, 2, axis=-1)[..., ::2]
        return y, "non-contiguous"
    if kind == 6:
        y = x.copy()
        y.setflags(write=False)
        return y, "read-only"
    if kind == 7:
        return np.asfortranarray(x), "fortran order"
    return x, "valid"


def mutate_lengths(rng, B, T):
    kind = rng.integers(0, 7)
    if kind == 0:
        return None, "none"
    if kind == 1:
        return rng.integers(0, T + 1, size=B).astype(np.float64), "float lengths"
    if kind == 2:
        return rng.integers(0, T + 1, size=B + 1), "wrong size"
    if kind == 3:
        return rng.integers(-3, T + 4, size=B), "out of range"
    if kind == 4:
        return rng.integers(0, T + 1, size=(B, 1)), "rank 2"
    return rng.integers(0, T + 1, size=B), "valid"


def close(a, b, dtype):
    """``a`` (a backend's output) equals ``b`` (the float64 reference) within the contract's
    tolerance for ``dtype``; a NaN or inf in ``a`` where ``b`` is finite is never close."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return False
    finite = np.isfinite(b)
    if not np.array_equal(a[~finite], b[~finite], equal_nan=True):
        return False
    return bool(np.all(np.abs(a[finite] - b[finite]) <= _config.TOLERANCE[np.dtype(dtype).name]))


def reference_from(model, state):
    """The float64 model and a float64 copy of ``state`` (a state of ``model``)."""
    m64 = model.astype("float64")
    st64 = m64.init_state(state.batch_size, capacity=state.capacity)
    for name in ("hist", "keys", "h", "c", "positions"):
        src = getattr(state, name)
        if src is not None:
            getattr(st64, name)[...] = src
    return m64, st64


def main(backend, iterations, seed):
    rng = np.random.default_rng(seed)
    stats = {"ok": 0, "rejected": 0, "checked": 0}
    for it in range(iterations):
        score = SCORES[rng.integers(len(SCORES))]
        dtype = ["float32", "float64"][rng.integers(2)]
        window = [None, 1, 3][rng.integers(3)]
        D, H = int(rng.integers(1, 5)), int(rng.integers(1, 6))
        model = fs.SelfAttentionRNN.random(D, H, score=score, window=window, dtype=dtype,
                                           recurrence=["c", "hc"][rng.integers(2)], seed=it)
        other = fs.SelfAttentionRNN.random(D, H, score=score, window=window, dtype=dtype,
                                           seed=it + 1)
        B, T = int(rng.integers(0, 4)), int(rng.integers(0, 6))
        st = model.init_state(B, capacity=int(rng.integers(1, 4)))
        model.forward(rng.standard_normal((B, 2, D)), state=st, backend="numpy")
        x, what_x = mutate_x(rng, rng.standard_normal((B, T, D)))
        lengths, what_l = mutate_lengths(rng, B, T)
        use_step = rng.random() < 0.3
        state = st if rng.random() < 0.85 else (other.init_state(B) if rng.random() < 0.5
                                                else model.init_state(B + 1))
        check_finite = rng.random() < 0.9
        snap = snapshot(st)
        ref_state = st.copy()
        desc = (f"iter {it}: {backend} score={score} {dtype} window={window} B={B} T={T} "
                f"x:{what_x} lengths:{what_l} step={use_step} check_finite={check_finite}")
        try:
            if use_step:
                xt = x[:, 0] if (getattr(x, "ndim", 0) == 3 and x.shape[1]) else x
                active = None if rng.random() < 0.5 else rng.random(B) < 0.5
                got = model.step(xt, state, active=active, backend=backend,
                                 check_finite=check_finite)
            else:
                got = model.forward(x, lengths=lengths, state=state, backend=backend,
                                     check_finite=check_finite, return_attention=True)
        except (ValueError, TypeError):
            stats["rejected"] += 1
            if state is st and not same(st, snap):
                print("FAIL: a rejected call changed the state;", desc)
                return 1
            continue
        except Exception:
            print("FAIL: unexpected exception;", desc)
            traceback.print_exc()
            return 1
        stats["ok"] += 1
        finite_input = np.isfinite(np.asarray(x, dtype=np.float64)).all() if \
            np.asarray(x).dtype.kind in "iuf" else False
        if state is st and finite_input and check_finite:
            # right answer: the same call on the float64 reference, from the same state, on
            # the input as the model sees it (cast to the model dtype)
            ref_model, ref64 = reference_from(model, ref_state)
            if use_step:
                x64 = np.asarray(xt).astype(model.dtype).astype(np.float64)
                want = ref_model.step(x64, ref64, active=active, backend="numpy")
            else:
                x64 = np.asarray(x).astype(model.dtype).astype(np.float64)
                want = ref_model.forward(x64, lengths=lengths, state=ref64,
                                         backend="numpy", return_attention=True)
            pairs = zip(got, want)
            stats["checked"] += 1
            for a, b in pairs:
                if (a is None) != (b is None) or (a is not None and not close(a, b, dtype)):
                    print("FAIL: wrong answer;", desc)
                    return 1
    print(f"fuzz {backend}: {stats['ok']} accepted ({stats['checked']} answers checked "
          f"against the float64 reference), {stats['rejected']} rejected, {iterations} calls")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
