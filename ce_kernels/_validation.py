"""Argument checking and conversion for the public API.

Everything the C kernels assume is established here, before the GIL is
released: dtypes, shapes, ranges, layouts and aliasing. Errors name the
argument and, for targets, the first offending position and value.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Tuple

import numpy as np

from . import _core

SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
HALF_DTYPE_NAMES = ("float16", "bfloat16")
REDUCTIONS = ("mean", "sum", "none")


def is_bfloat16(dtype: np.dtype) -> bool:
    """The ml_dtypes bfloat16 NumPy dtype (recognised without importing ml_dtypes)."""
    return dtype.kind == "V" and dtype.itemsize == 2 and dtype.name == "bfloat16"


def is_half(dtype: np.dtype) -> bool:
    return dtype.char == "e" or is_bfloat16(dtype)


def native(dtype: np.dtype) -> np.dtype:
    """``dtype`` in native byte order."""
    return dtype if dtype.isnative else dtype.newbyteorder("=")


def dtype_code(dtype: np.dtype) -> int:
    """The kernels' code for a (native) supported dtype."""
    char = dtype.char
    if char == "f":
        return _core.DTYPE_FLOAT32
    if char == "d":
        return _core.DTYPE_FLOAT64
    if char == "e":
        return _core.DTYPE_FLOAT16
    return _core.DTYPE_BFLOAT16


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """The kernels' arithmetic type for logits of ``dtype``, also the type
    weights and soft targets are kept in: float32 for half precision."""
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def result_dtype(dtype: np.dtype) -> np.dtype:
    """Losses and statistics: float32 for half-precision inputs."""
    return np.dtype(np.float32) if is_half(dtype) else dtype


def as_array(value: Any, name: str, kinds: str, description: str) -> np.ndarray:
    """``value`` as an ndarray whose dtype kind is one of ``kinds``; a
    TypeError naming ``name`` and ``description`` otherwise."""
    try:
        arr = np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name} must be {description}: {exc}") from None
    if arr.dtype.kind not in kinds:
        raise TypeError(f"{name} must be {description}, got dtype {arr.dtype}")
    return arr


def as_float_array(value: Any, name: str, allow_half: bool = False) -> np.ndarray:
    """``value`` as a float32/float64 ndarray with at least one dimension
    (also float16 and bfloat16 when ``allow_half``)."""
    try:
        arr = np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name} must be array-like of floats: {exc}") from None
    if allow_half and is_half(arr.dtype):
        if arr.ndim == 0:
            raise ValueError(f"{name} must have at least one dimension (the class axis), got a 0-d array")
        return arr
    kind = arr.dtype.kind
    if kind == "c":
        raise TypeError(f"{name} must be real floating point, got complex dtype {arr.dtype}")
    if kind in "biu":
        raise TypeError(
            f"{name} must be a floating-point array (float32 or float64), got {arr.dtype}; "
            f"convert it with {name}.astype(np.float32)"
        )
    if kind != "f":
        raise TypeError(f"{name} must be a numeric floating-point array, got dtype {arr.dtype}")
    if native(arr.dtype) not in SUPPORTED_DTYPES:
        supported = "float32, float64, float16 and bfloat16" if allow_half else "float32 and float64"
        raise TypeError(f"{name} has dtype {arr.dtype}; supported dtypes are {supported}")
    if arr.ndim == 0:
        raise ValueError(f"{name} must have at least one dimension (the class axis), got a 0-d array")
    return arr


def kernel_contiguous(arr: Any, dtype: Optional[np.dtype] = None) -> np.ndarray:
    """``arr`` (converted to ``dtype`` if given) as a C-contiguous, aligned
    array in native byte order, the form in which the kernels read flat
    operands; copied only when it is not already so. (``np.ascontiguousarray``
    alone keeps a contiguous view at an unaligned address, which C may not
    read as typed elements.)"""
    a = np.asarray(arr, dtype=dtype)
    if not a.dtype.isnative:
        a = a.astype(native(a.dtype))
    if a.flags.c_contiguous and a.flags.aligned:
        return a
    return np.array(a, order="C", copy=True)


def rows_view(arr: np.ndarray) -> np.ndarray:
    """A 2-D (rows, last axis) array the kernels accept: native byte order,
    aligned, last axis contiguous. A view of ``arr`` whenever possible."""
    if arr.ndim == 2 and arr.flags.c_contiguous and arr.flags.aligned and arr.dtype.isnative:
        return arr
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    n_cols = arr.shape[-1]
    n_rows = math.prod(arr.shape[:-1])
    rows = arr.reshape(n_rows, n_cols)
    if not kernel_layout_ok(rows):
        rows = kernel_contiguous(rows)
    return rows


def kernel_layout_ok(rows: np.ndarray) -> bool:
    """True if a 2-D array can be handed to the kernels without copying."""
    itemsize = rows.dtype.itemsize
    return (
        rows.dtype.isnative
        and rows.flags.aligned
        and (rows.shape[1] <= 1 or rows.strides[1] == itemsize)
        and rows.strides[0] % itemsize == 0
    )


def writable_rows(out: np.ndarray) -> Tuple[np.ndarray, bool]:
    """(2-D rows for the kernels to write, whether they are a view of ``out``).
    When they are not, the caller copies them back into ``out``."""
    if out.ndim == 0:
        return np.empty((1, 1), dtype=out.dtype), False
    n_cols = out.shape[-1]
    n_rows = math.prod(out.shape[:-1])
    try:
        rows = out.view()
        rows.shape = (n_rows, n_cols)  # raises instead of copying
    except AttributeError:
        return np.empty((n_rows, n_cols), dtype=out.dtype), False
    if kernel_layout_ok(rows):
        return rows, True
    return np.empty((n_rows, n_cols), dtype=out.dtype), False


class KernelOutput:
    """An array returned to the caller (``out`` when given, checked, else
    new) and the 2-D rows the kernels write: a view of it along ``axis``
    when its layout allows, else scratch that :meth:`finish` copies back.
    ``out`` may be the input named ``in_place`` (exactly, element for
    element) and must not overlap any other of ``inputs``."""

    def __init__(self, out: Any, shape: Tuple[int, ...], dtype: np.dtype, inputs: dict,
                 in_place: Optional[str], axis: int = -1):
        if out is None:
            self.array = np.empty(shape, dtype=dtype)
        else:
            self.array = output_array(out, shape, dtype)
            check_no_overlap(self.array, inputs, in_place)
        last = self.array.ndim - 1
        moves = self.array.ndim and axis % self.array.ndim != last
        self._moved = np.moveaxis(self.array, axis, -1) if moves else self.array
        self.rows, self._is_view = writable_rows(self._moved)

    def finish(self) -> np.ndarray:
        if not self._is_view:
            self._moved[...] = self.rows.reshape(self._moved.shape)
        return self.array


def check_reduction(reduction: Any) -> str:
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def check_label_smoothing(label_smoothing: Any) -> float:
    if type(label_smoothing) is float and 0.0 <= label_smoothing <= 1.0:
        return label_smoothing  # the common case, without the slower ABC checks
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real):
        raise TypeError(f"label_smoothing must be a float in [0, 1], got {label_smoothing!r}")
    value = float(label_smoothing)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    return value


def check_z_loss(z_loss: Any) -> float:
    if isinstance(z_loss, bool) or not isinstance(z_loss, numbers.Real):
        raise TypeError(f"z_loss must be a non-negative float, got {z_loss!r}")
    value = float(z_loss)
    if not (value >= 0.0 and math.isfinite(value)):
        raise ValueError(f"z_loss must be a finite number >= 0, got {z_loss!r}")
    return value


def check_softcap(softcap: Any, dtype: np.dtype = np.dtype(np.float64)) -> float:
    """0.0 for no soft-capping, else the validated positive cap for logits
    of ``dtype``: at least the smallest normal number of the type the
    kernels compute in, whose reciprocal they take (below it, it overflows)."""
    if softcap is None:
        return 0.0
    if isinstance(softcap, bool) or not isinstance(softcap, numbers.Real):
        raise TypeError(f"softcap must be None or a positive float, got {softcap!r}")
    value = float(softcap)
    if not (value > 0.0 and math.isfinite(value)):
        raise ValueError(f"softcap must be None or a finite number > 0, got {softcap!r}")
    smallest = float(np.finfo(compute_dtype(dtype)).tiny)
    if value < smallest:
        raise ValueError(
            f"softcap must be at least {smallest!r} (the smallest normal "
            f"{compute_dtype(dtype).name}) for {dtype.name} logits, got {softcap!r}")
    return value


def check_ignore_index(ignore_index: Any) -> int:
    if type(ignore_index) is int and -(2**63) <= ignore_index < 2**63:
        return ignore_index  # the common case, without the slower ABC checks
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index must be an integer, got {ignore_index!r}")
    value = int(ignore_index)
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"ignore_index must fit in 64 bits, got {value}")
    return value


def check_num_threads(num_threads: Any) -> int:
    """0 for "OpenMP's default", else the validated positive count."""
    if num_threads is None:
        return 0
    if isinstance(num_threads, bool) or not isinstance(num_threads, numbers.Integral):
        raise TypeError(f"num_threads must be a positive integer or None, got {num_threads!r}")
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    return min(int(num_threads), 2**31 - 1)


def check_axis(axis: Any, ndim: int) -> int:
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"axis must be an integer, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of bounds for an array of dimension {ndim}")
    return int(axis) % ndim


def hard_targets(target: np.ndarray, batch_shape: Tuple[int, ...], n_classes: int,
                 ignore_index: int, weight: Optional[np.ndarray]) -> Tuple[np.ndarray, float]:
    """Integer class targets as a flat int64 array, range-checked, and the
    denominator of the mean (summed weight of the positions not ignored)."""
    if target.shape != batch_shape:
        raise ValueError(
            f"target has shape {target.shape}, expected {batch_shape} (logits.shape[:-1]) "
            f"for class indices"
        )
    if target.dtype == np.uint64 and target.size and int(target.max()) >= 2**63:
        flat = int(np.argmax(target.reshape(-1) >= 2**63))
        _raise_bad_target(target, flat, batch_shape, n_classes, ignore_index)
    flat_targets = kernel_contiguous(target.reshape(-1), np.int64)
    if weight is not None and weight.dtype not in SUPPORTED_DTYPES:
        weight = weight.astype(np.float32)  # the scan reads float32 or float64
    bad, _, denominator = _core.check_targets(flat_targets, n_classes, ignore_index, weight)
    if bad >= 0:
        _raise_bad_target(target, bad, batch_shape, n_classes, ignore_index)
    return flat_targets, denominator


def _raise_bad_target(target, flat, batch_shape, n_classes, ignore_index):
    position = [int(i) for i in np.unravel_index(flat, batch_shape)] if batch_shape else []
    value = int(target.reshape(-1)[flat])
    raise IndexError(
        f"target{position} = {value} is out of range: class indices must be in "
        f"[0, {n_classes}) or equal ignore_index ({ignore_index})"
    )


def soft_targets(target: np.ndarray, logits_shape: Tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Probability targets as 2-D rows in the compute dtype of logits of
    ``dtype`` (float32 for half precision: targets are never rounded to
    half precision)."""
    dtype = compute_dtype(dtype)
    if target.shape != logits_shape:
        raise ValueError(
            f"soft (probability) targets must have the shape of logits {logits_shape}, "
            f"got {target.shape}; for class indices pass an integer array of shape "
            f"{logits_shape[:-1]}"
        )
    if target.dtype != dtype:
        target = target.astype(dtype)
    return rows_view(target)


def class_weights(weight: Any, n_classes: int, dtype: np.dtype,
                  name: str = "weight") -> np.ndarray:
    """Class weights in the compute dtype of logits of ``dtype`` (float32
    for half precision; half-precision weights are accepted and widened);
    errors name the argument ``name``."""
    w = np.asarray(weight) if isinstance(weight, np.ndarray) and is_half(weight.dtype) else \
        as_array(weight, name, "fiu", "a real numeric array")
    if w.shape != (n_classes,):
        raise ValueError(f"{name} must have shape ({n_classes},) (one per class), got {w.shape}")
    return kernel_contiguous(w.astype(compute_dtype(dtype), copy=False))


def output_array(out: Any, shape: Tuple[int, ...], dtype: np.dtype, name: str = "out") -> np.ndarray:
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != shape:
        raise ValueError(f"{name} has shape {out.shape}, expected {shape}")
    if out.dtype != dtype:
        raise ValueError(f"{name} has dtype {out.dtype}, expected {dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    if overlaps_itself(out):
        raise ValueError(
            f"{name} has elements that share memory (a broadcast or as_strided view, strides "
            f"{out.strides}); each output element needs memory of its own")
    return out


def overlaps_itself(a: np.ndarray) -> bool:
    """True if distinct elements of ``a`` may share memory: with its axes
    ordered by stride, each stride must step over everything the smaller
    axes span. (A few interleaved layouts that do not overlap fail this
    too; no real output array has one.)"""
    if a.size <= 1:
        return False
    span = a.itemsize
    for stride, length in sorted((abs(st), n) for st, n in zip(a.strides, a.shape) if n > 1):
        if stride < span:
            return True
        span += stride * (length - 1)
    return False


def is_same_array_memory(a: np.ndarray, b: np.ndarray) -> bool:
    """True if a and b address exactly the same elements in the same order."""
    return (
        a.shape == b.shape
        and a.strides == b.strides
        and a.dtype == b.dtype
        and a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
    )


def check_no_overlap(out: np.ndarray, others: dict, in_place: Optional[str],
                     name: str = "out") -> None:
    """``out`` may be the input named ``in_place`` itself (the same elements
    in the same order) but must not overlap anything else: an input that is
    the same array under another name (the logits also passed as soft
    targets, say) would be read while it is overwritten."""
    for other_name, other in others.items():
        if other is None or not isinstance(other, np.ndarray):
            continue
        if not np.may_share_memory(out, other):
            continue
        if other_name == in_place and is_same_array_memory(out, other):
            continue
        allowed = f"{name} may be {in_place} itself (in place) but" if in_place else name
        raise ValueError(f"{name} overlaps {other_name}; {allowed} must not overlap any other input")


def grad_output_rows(grad_output: Any, reduction: str, batch_shape: Tuple[int, ...]):
    """(scalar multiplier, per-row float64 multipliers or None)."""
    if grad_output is None:
        return 1.0, None
    try:
        g = np.asarray(grad_output, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"grad_output must be numeric: {exc}") from None
    if reduction != "none":
        if g.size != 1:
            raise ValueError(
                f"grad_output must be a scalar for reduction={reduction!r}, got shape {g.shape}"
            )
        return float(g.reshape(())), None
    try:
        g = np.broadcast_to(g, batch_shape)
    except ValueError:
        raise ValueError(
            f"grad_output of shape {g.shape} does not broadcast to the loss shape {batch_shape}"
        ) from None
    return 1.0, kernel_contiguous(g.reshape(-1))
