"""Input checks shared by every backend (SPEC section 4). Kernels never see unchecked input."""

from __future__ import annotations

import numbers
import operator

import numpy as np

_BAD_KINDS = {
    "b": "bool", "c": "complex", "O": "object", "U": "string", "S": "bytes",
    "V": "structured/void", "M": "datetime", "m": "timedelta",
}


#: Device array types of Numba (and of its CUDA simulator, which has no
#: ``__cuda_array_interface__``).
NUMBA_DEVICE_ARRAY_TYPES = ("FakeCUDAArray", "DeviceNDArray")


def is_device_array(value) -> bool:
    """A GPU array: anything exposing ``__cuda_array_interface__`` (Numba, CuPy, torch) or
    the CUDA simulator's stand-in for one."""
    if isinstance(value, np.ndarray):
        return False
    return (hasattr(value, "__cuda_array_interface__")
            or type(value).__name__ in NUMBA_DEVICE_ARRAY_TYPES)


def _is_sequence(value) -> bool:
    return isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.ndim > 0)


def ragged(value) -> str | None:
    """How a nested sequence fails to be rectangular (``None`` if it does not)."""
    level, depth = [value], 0
    while level:
        seqs = [v for v in level if _is_sequence(v)]
        if not seqs:
            return None
        if len(seqs) != len(level):
            return f"it mixes numbers and sequences at depth {depth}"
        lens = sorted({len(v) for v in seqs})
        if len(lens) > 1:
            return f"its lengths differ at depth {depth}: {lens}"
        level, depth = [item for v in seqs for item in v], depth + 1
    return None


def real_array(name: str, value, expected: str | None = None) -> np.ndarray:
    """``value`` as an ndarray of integer, unsigned or float dtype, else ``TypeError``.

    A ragged nested sequence is a ``ValueError`` that says what ``name`` must be
    (``expected``, a shape such as ``"(T, 4) or (B, T, 4)"``) and where it is ragged.
    """
    if is_device_array(value):
        raise TypeError(
            f"{name} is a device array; only backend='cuda' accepts device arrays, "
            "use a NumPy array for CPU backends"
        )
    try:
        arr = np.asarray(value)
    except ValueError:
        why = ragged(value)
        if why is None:
            raise
        must = f"have shape {expected}" if expected else "be a rectangular array"
        raise ValueError(f"{name} must {must}; got a ragged nested sequence ({why})") from None
    kind = arr.dtype.kind
    if kind not in "iuf":
        raise TypeError(
            f"{name} must be a real array (integer, unsigned or float16/32/64); "
            f"got dtype {arr.dtype} ({_BAD_KINDS.get(kind, kind)})"
        )
    return arr


def cast(arr: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """C-contiguous copy-if-needed of ``arr`` in ``dtype`` (overflow to inf is left to
    :func:`check_finite`)."""
    if arr.dtype == dtype and arr.flags.c_contiguous:
        return arr
    with np.errstate(over="ignore", invalid="ignore"):
        return np.ascontiguousarray(arr, dtype=dtype)


def first_nonfinite(name: str, arr: np.ndarray, mask=None, weight=False):
    """Raise ``ValueError`` naming the first non-finite element of ``arr`` (where ``mask``);
    ``weight``: ``arr`` is a model weight, which is always checked (an input's check can be
    turned off, and the message says how)."""
    bad = ~np.isfinite(arr)
    if mask is not None:
        bad &= mask
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        expected = ("expected finite weights" if weight else
                    "expected finite values (pass check_finite=False to skip this check "
                    "for inputs)")
        raise ValueError(f"{name}[{', '.join(map(str, idx))}] = {arr[idx]} is not finite; "
                         f"{expected}")


def shape_str(shape) -> str:
    """``(3,)``, ``(2, 4)``: a shape as Python writes a tuple."""
    return str(tuple(int(s) if not isinstance(s, str) else s for s in shape))


def expect_shape(name: str, arr: np.ndarray, expected: tuple, meaning: str = "") -> None:
    if arr.shape != tuple(expected):
        extra = f" {meaning}" if meaning else ""
        raise ValueError(
            f"{name} must have shape {shape_str(expected)}{extra}; got shape {shape_str(arr.shape)}"
        )


def integer(name: str, value, minimum: int | None = None, allow_none: bool = False):
    """A Python int from an integer-like ``value`` (bools rejected)."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        try:
            if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iu":
                value = value.item()
            else:
                raise TypeError
        except TypeError:
            raise TypeError(f"{name} must be an integer; got {value!r} ({type(value).__name__})") from None
    value = operator.index(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value}")
    return value


def window(value):
    """``None`` or an integer >= 1; ``ValueError`` otherwise (SPEC section 4)."""
    if value is None:
        return None
    ok = isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
    if not ok or value < 1:
        raise ValueError(f"window must be None or an integer >= 1; got {value!r}")
    return int(value)


def choice(name: str, value, valid) -> str:
    if not isinstance(value, str) or value not in valid:
        raise ValueError(f"unknown {name} {value!r}; expected one of {list(valid)}")
    return value


def lengths(value, batch: int, steps: int, two_d: bool) -> np.ndarray:
    """Validated int64 lengths of shape (batch,), each in [0, steps]."""
    if value is None:
        return np.full(batch, steps, dtype=np.int64)
    if two_d:
        n = integer("lengths (for 2-D x, an integer)", value)
        arr = np.array([n], dtype=np.int64)
    else:
        arr = np.asarray(value)
        if arr.dtype.kind not in "iu":
            raise TypeError(
                f"lengths must be an integer array of shape ({batch},); got dtype {arr.dtype}"
            )
        expect_shape("lengths", arr, (batch,), "(one length per sequence)")
        if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
            raise ValueError(f"lengths must lie in [0, {steps}]; got {arr.max()}")
        arr = arr.astype(np.int64)
    bad = np.flatnonzero((arr < 0) | (arr > steps))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"lengths[{i}] = {int(arr[i])} is outside [0, {steps}] (T = {steps})")
    return arr


#: The largest state position a call accepts (INT64_MAX / 4, as the C kernels check): a
#: position plus a call's steps, or plus a window, never overflows a 64-bit index.
MAX_POSITION = (2 ** 63 - 1) // 4


def positions(pos: np.ndarray, first: int, last: int) -> None:
    """A state's ``positions`` (steps each stream has consumed, public and writable) with
    their smallest and largest value: ``ValueError`` naming a row outside
    ``[0, MAX_POSITION]``."""
    if first < 0 or last > MAX_POSITION:
        b = int(np.argmin(pos)) if first < 0 else int(np.argmax(pos))
        raise ValueError(f"state.positions must lie in [0, {MAX_POSITION}] (the steps each "
                         f"stream has consumed); got {int(pos[b])} in row {b}")


def num_threads(value):
    if value is None:
        return None
    return integer("num_threads", value, minimum=1)
