"""The cross-entropy family beyond the softmax loss: entropy, cross-entropy
between distributions, KL divergence, binary (sigmoid) cross-entropy,
sigmoid and log-sigmoid. Validation and documentation here; arithmetic in
``src/ce_family.c`` and ``src/ce_family_template.h``.

Every function accepts float32, float64, float16 and bfloat16 inputs;
half-precision inputs are computed in float32 (sums in float64) and give
float32 losses and statistics.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Tuple

import numpy as np

from . import _core
from . import _threads
from . import _validation as v

__all__ = [
    "entropy",
    "cross_entropy_probs",
    "kl_divergence",
    "binary_cross_entropy",
    "binary_cross_entropy_with_grad",
    "binary_cross_entropy_probs",
    "sigmoid",
    "log_sigmoid",
]


# ---- distributions ------------------------------------------------------------

def _log_base(base: Any) -> float:
    """The divisor turning nats into units of ``base`` (1 for nats)."""
    if base is None:
        return 1.0
    if isinstance(base, bool) or not isinstance(base, numbers.Real):
        raise TypeError(f"base must be a positive number other than 1, or None, got {base!r}")
    b = float(base)
    if not (b > 0 and b != 1 and math.isfinite(b)):
        raise ValueError(f"base must be a positive number other than 1, or None, got {base!r}")
    return math.log(b)


def _distribution_rows(arr: np.ndarray, axis: int, dtype: np.dtype) -> np.ndarray:
    return v.rows_view(np.moveaxis(arr.astype(dtype, copy=False), axis, -1))


def _epsilon(dtype: np.dtype) -> float:
    """Machine epsilon of a supported dtype (bfloat16 included)."""
    return 2.0 ** -7 if v.is_bfloat16(dtype) else float(np.finfo(dtype).eps)


def _common_dtype(arrays) -> np.ndarray:
    """The dtype the kernel reads all of ``arrays`` in: their own if they
    share one, else the promotion of their compute types."""
    dtypes = {v.native(a.dtype) for a in arrays}
    if len(dtypes) == 1:
        return dtypes.pop()
    return np.result_type(*[v.compute_dtype(d) for d in dtypes])


def _check_distribution(name: str, rows_sum: np.ndarray, negative: np.ndarray,
                        batch_shape: Tuple[int, ...], dtype: np.dtype) -> None:
    """Raise ValueError naming the first row that is not a distribution."""
    tol = math.sqrt(_epsilon(dtype))
    bad = negative.astype(bool) | ~(np.abs(rows_sum - 1.0) <= tol)
    if bad.any():
        flat = int(np.argmax(bad))
        where = [int(i) for i in np.unravel_index(flat, batch_shape)] if batch_shape else []
        if negative[flat]:
            reason = "has a negative entry"
        else:
            reason = f"sums to {float(rows_sum[flat])!r}, not 1 (tolerance {tol:.1e})"
        raise ValueError(
            f"{name} is not a probability distribution along the axis: row {where} {reason}; "
            f"pass validate=False to skip this check"
        )


def _distribution_call(mode: int, p: Any, q: Any, base: Any, axis: Any, validate: bool,
                       num_threads: Any):
    P = v.as_float_array(p, "p", allow_half=True)
    arrays = [P]
    if q is not None:
        Q = v.as_float_array(q, "q", allow_half=True)
        if Q.shape != P.shape:
            raise ValueError(f"p and q must have the same shape, got {P.shape} and {Q.shape}")
        arrays.append(Q)
    ax = v.check_axis(axis, P.ndim)
    divisor = _log_base(base)
    n_threads = _threads.resolve(num_threads)
    dtype = _common_dtype(arrays)
    batch_shape = P.shape[:ax] + P.shape[ax + 1:]
    p_rows = _distribution_rows(P, ax, dtype)
    q_rows = _distribution_rows(Q, ax, dtype) if q is not None else None
    n_rows = p_rows.shape[0]
    out = np.empty(n_rows, dtype=np.float64)

    def row_checks(rows):
        """(row sums, negative-entry flags) for a validated operand, else Nones."""
        if not validate or rows is None:
            return None, None
        return np.empty(n_rows), np.empty(n_rows, dtype=np.uint8)

    (p_sum, p_neg), (q_sum, q_neg) = row_checks(p_rows), row_checks(q_rows)
    _core.dist_run(mode, v.dtype_code(dtype), p_rows, q_rows, row_out=out, p_sum=p_sum,
                   q_sum=q_sum, p_negative=p_neg, q_negative=q_neg, n_threads=n_threads)
    if validate:
        # each operand is held to the precision it was given in: a float32
        # distribution sums to 1 only within float32's rounding
        _check_distribution("p", p_sum, p_neg, batch_shape, v.native(P.dtype))
        if q_rows is not None:
            _check_distribution("q", q_sum, q_neg, batch_shape, v.native(Q.dtype))
    result = (out / divisor).astype(v.result_dtype(dtype)).reshape(batch_shape)
    return result[()] if result.ndim == 0 else result


def entropy(p: Any, *, base: Optional[float] = None, axis: int = -1, validate: bool = True,
            num_threads: Optional[int] = None):
    """Shannon entropy ``H(p) = -sum p log p`` along ``axis``.

    Parameters
    ----------
    p : array_like of float32, float64, float16 or bfloat16
        Probabilities along ``axis``.
    base : float, optional
        Logarithm base: ``None`` for nats, ``2`` for bits; any positive number
        other than 1.
    axis : int, default -1
        The axis holding each distribution; the result has the other axes.
    validate : bool, default True
        Check that every row is a distribution (no negative entry, sum 1
        within the square root of the dtype's epsilon); ``False`` skips it.
    num_threads : int, optional
        As for :func:`cross_entropy`.

    Returns
    -------
    numpy scalar or ndarray
        In the dtype of ``p`` (float32 for half precision). ``0 * log 0``
        counts as 0.

    Raises
    ------
    ValueError
        A row that is not a distribution (the message names it), a bad
        ``base`` or ``axis``.

    Examples
    --------
    >>> import ce_kernels as ck
    >>> round(float(ck.entropy([0.5, 0.5], base=2)), 12)
    1.0
    """
    return _distribution_call(_core.DIST_ENTROPY, p, None, base, axis, validate, num_threads)


def cross_entropy_probs(p: Any, q: Any, *, base: Optional[float] = None, axis: int = -1,
                        validate: bool = True, num_threads: Optional[int] = None):
    """Cross-entropy between distributions ``H(p, q) = -sum p log q``.

    ``p`` is the true distribution, ``q`` the predicted one; both of the same
    shape, reduced along ``axis``. ``0 * log q`` counts as 0 (even for
    ``q = 0``); ``p > 0`` where ``q = 0`` gives ``inf`` (nothing is clipped).
    Other parameters as :func:`entropy`.

    Examples
    --------
    >>> import ce_kernels as ck
    >>> round(float(ck.cross_entropy_probs([0.9, 0.1], [0.8, 0.2], base=2)), 3)
    0.522
    """
    return _distribution_call(_core.DIST_CROSS_ENTROPY, p, q, base, axis, validate, num_threads)


def kl_divergence(p: Any, q: Any, *, base: Optional[float] = None, axis: int = -1,
                  validate: bool = True, num_threads: Optional[int] = None):
    """Kullback-Leibler divergence ``D_KL(p || q) = sum p log(p / q)``.

    Equal to ``cross_entropy_probs(p, q) - entropy(p)``, but summed directly
    term by term so that nearly equal distributions do not cancel.
    ``0 * log(0 / q) = 0``; ``p > 0`` where ``q = 0`` gives ``inf``. Other
    parameters as :func:`entropy`.

    Examples
    --------
    >>> import ce_kernels as ck
    >>> float(ck.kl_divergence([0.5, 0.5], [0.5, 0.5]))
    0.0
    """
    return _distribution_call(_core.DIST_KL, p, q, base, axis, validate, num_threads)


# ---- binary cross-entropy -----------------------------------------------------

def _elementwise_rows(arr: np.ndarray) -> np.ndarray:
    """2-D rows of an array of any dimension (0-d becomes 1 x 1)."""
    return v.rows_view(arr.reshape(1, 1) if arr.ndim == 0 else arr)


def _broadcast_rows(value: Any, name: str, shape: Tuple[int, ...], dtype: np.dtype) -> Optional[np.ndarray]:
    """``value`` broadcast to ``shape`` as a 2-D (rows, last axis) view,
    zero strides allowed (copied only if the broadcast cannot be viewed so)."""
    if value is None:
        return None
    arr = v.as_array(value, name, "fiu", "a real numeric array")
    try:
        full = np.broadcast_to(arr.astype(dtype, copy=False), shape)
    except ValueError:
        raise ValueError(f"{name} of shape {arr.shape} does not broadcast to the input shape {shape}") from None
    n_cols = shape[-1] if shape else 1
    n_rows = math.prod(shape[:-1]) if shape else 1
    rows = full.reshape(n_rows, n_cols)
    if not (rows.dtype.isnative and rows.flags.aligned):
        rows = v.kernel_contiguous(rows)
    return rows


def _bce_inputs(x: Any, target: Any, x_name: str):
    """(x, target in the compute type, dtype of x): targets are never
    rounded below float32."""
    X = v.as_float_array(x, x_name, allow_half=True) if np.ndim(x) > 0 else _as_float_scalar(x, x_name)
    dtype = v.native(X.dtype)
    T = v.as_array(target, "target", "fiubV", "numeric")
    if T.shape != X.shape:
        raise ValueError(f"target has shape {T.shape}, expected the shape of {x_name} {X.shape}")
    return X, T.astype(v.compute_dtype(dtype), copy=False), dtype


def _as_float_scalar(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if v.is_half(arr.dtype):
        return arr
    if arr.dtype.kind != "f" or v.native(arr.dtype) not in v.SUPPORTED_DTYPES:
        return v.as_float_array(np.atleast_1d(arr), name).reshape(())
    return arr


def _bce_call(mode: int, x: Any, target: Any, weight: Any, pos_weight: Any, reduction: Any,
              num_threads: Any, want_grad: bool, grad_output: Any = None, out: Any = None,
              x_name: str = "logits"):
    X, T, dtype = _bce_inputs(x, target, x_name)
    reduction = v.check_reduction(reduction)
    n_threads = _threads.resolve(num_threads)
    shape = X.shape
    x_rows, t_rows = _elementwise_rows(X), _elementwise_rows(T)
    aux = v.compute_dtype(dtype)   # targets, weights and losses
    w_rows = _broadcast_rows(weight, "weight", shape, aux)
    pw_rows = _broadcast_rows(pos_weight, "pos_weight", shape, aux)
    if mode == _core.BCE_PROBS:
        bad = ~((X >= 0) & (X <= 1))
        if bad.any():
            flat = int(np.argmax(bad.reshape(-1)))
            where = [int(i) for i in np.unravel_index(flat, shape)] if shape else []
            raise ValueError(
                f"probs{where} = {float(X.reshape(-1)[flat])!r} is outside [0, 1]; "
                f"binary_cross_entropy_probs takes probabilities (use binary_cross_entropy for logits)")

    grad = g_rows = None
    scale = 1.0
    if want_grad:
        if reduction == "none":
            g_rows = _broadcast_rows(1.0 if grad_output is None else grad_output, "grad_output",
                                     shape, np.dtype(np.float64))
        else:
            scale, _ = v.grad_output_rows(grad_output, reduction, shape)
            if reduction == "mean":
                scale = scale / X.size if X.size else math.nan
        grad = v.KernelOutput(out, shape, dtype, {"logits": X, "target": target, "weight": weight,
                                                  "pos_weight": pos_weight,
                                                  "grad_output": grad_output}, in_place="logits")

    elem = np.empty(x_rows.shape, dtype=aux) if reduction == "none" else None
    row_sums = np.empty(x_rows.shape[0], dtype=np.float64) if reduction != "none" else None
    _core.bce_run(mode, v.dtype_code(dtype), x_rows, t_rows, weight=w_rows, pos_weight=pw_rows,
                  grad_output=g_rows, grad_scale=scale, elem_out=elem, row_out=row_sums,
                  grad=grad.rows if grad else None, n_threads=n_threads)

    if reduction == "none":
        loss = elem.reshape(shape)
    else:
        total = float(row_sums.sum())
        if reduction == "mean":
            total = total / X.size if X.size else math.nan
        loss = aux.type(total)
    return (loss, grad.finish()) if want_grad else loss


def binary_cross_entropy(logits: Any, target: Any, *, weight: Any = None, pos_weight: Any = None,
                         reduction: str = "mean", num_threads: Optional[int] = None):
    """Binary cross-entropy on logits (``torch.nn.functional.binary_cross_entropy_with_logits``).

    ``loss = -w * [pw * y * log sigmoid(x) + (1 - y) * log(1 - sigmoid(x))]``,
    computed as ``w * [(1 - y) x + (1 + (pw - 1) y) * softplus(-x)]`` so that
    logits of any size (±1e4 and beyond) stay finite and exact.

    Parameters
    ----------
    logits : array_like of float32, float64, float16 or bfloat16, any shape
    target : array_like, same shape
        Targets in [0, 1] (not checked, as PyTorch); kept in float32 at
        least.
    weight : array_like, optional
        Broadcast to the shape of ``logits`` (e.g. one weight per sample).
    pos_weight : array_like, optional
        Weight of the positive term, broadcast over the last axis (one per
        class) or to the full shape.
    reduction : {"mean", "sum", "none"}
        ``"mean"`` divides by the number of elements.
    num_threads : int, optional
        As for :func:`cross_entropy`.

    Returns
    -------
    numpy scalar or ndarray
        In the dtype of ``logits`` (float32 for half precision).
    """
    return _bce_call(_core.BCE_LOGITS, logits, target, weight, pos_weight, reduction,
                     num_threads, want_grad=False)


def binary_cross_entropy_with_grad(logits: Any, target: Any, *, weight: Any = None,
                                   pos_weight: Any = None, reduction: str = "mean",
                                   grad_output: Any = None, out: Optional[np.ndarray] = None,
                                   num_threads: Optional[int] = None):
    """:func:`binary_cross_entropy` and its gradient with respect to the
    logits, from the same pass: ``w * [(1 - y) - (1 + (pw - 1) y) * sigmoid(-x)]``
    times the reduction's scale.

    ``grad_output`` is a scalar for ``"mean"``/``"sum"`` and broadcasts to the
    input for ``"none"``; ``out`` (same shape and dtype, may be ``logits``)
    receives the gradient. Returns ``(loss, grad)``.
    """
    return _bce_call(_core.BCE_LOGITS, logits, target, weight, pos_weight, reduction,
                     num_threads, want_grad=True, grad_output=grad_output, out=out)


def binary_cross_entropy_probs(probs: Any, target: Any, *, weight: Any = None,
                               reduction: str = "mean", num_threads: Optional[int] = None):
    """Binary cross-entropy on probabilities (``torch.nn.functional.binary_cross_entropy``).

    ``loss = -w * [y * log p + (1 - y) * log(1 - p)]`` with each log clamped
    at -100 as PyTorch does, so ``p = 0`` or ``1`` gives a finite loss.

    Raises
    ------
    ValueError
        A probability outside [0, 1] (or NaN); the message gives its position.
    """
    return _bce_call(_core.BCE_PROBS, probs, target, weight, None, reduction, num_threads,
                     want_grad=False, x_name="probs")


# ---- sigmoid ------------------------------------------------------------------

def _elementwise(mode: int, x: Any, out: Any):
    X = v.as_float_array(x, "x", allow_half=True) if np.ndim(x) > 0 else _as_float_scalar(x, "x")
    dtype = v.native(X.dtype)
    src = v.kernel_contiguous(X, dtype)
    if out is None:
        result = np.empty(X.shape, dtype=dtype)
    else:
        result = v.output_array(out, X.shape, dtype)
        v.check_no_overlap(result, {"x": X}, in_place="x")
    writable = result.flags.c_contiguous and result.flags.aligned
    dst = result if writable else np.empty(X.shape, dtype=dtype)
    _core.sigmoid_run(mode, v.dtype_code(dtype), src, dst, n_threads=_threads.resolve(None))
    if dst is not result:
        result[...] = dst
    return result[()] if result.ndim == 0 and out is None else result


def sigmoid(x: Any, out: Optional[np.ndarray] = None):
    """Logistic sigmoid ``1 / (1 + exp(-x))``, stable for any x.

    ``out`` (same shape and dtype) may be ``x`` itself.
    """
    return _elementwise(_core.SIGMOID, x, out)


def log_sigmoid(x: Any, out: Optional[np.ndarray] = None):
    """``log(sigmoid(x)) = -log(1 + exp(-x))``, stable for any x
    (``log_sigmoid(-1e4) == -1e4``, ``log_sigmoid(1e4) == -0.0``)."""
    return _elementwise(_core.LOG_SIGMOID, x, out)
