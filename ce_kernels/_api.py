"""The public functions: validation, conversion, defaults and documentation.

The arithmetic happens in C (``src/``) through the bridge in ``_core.pyx``.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional, Tuple

import numpy as np

from . import _core
from . import _sharded
from . import _threads
from . import _validation as v

__all__ = [
    "TokenStats",
    "token_stats",
    "cross_entropy",
    "cross_entropy_with_grad",
    "log_softmax",
    "softmax",
    "logsumexp",
]


class _Targets:
    """Targets in the form the kernels take, plus the mean's denominator."""

    def __init__(self, hard: Optional[np.ndarray], soft: Optional[np.ndarray], mean_denominator: float):
        self.hard = hard
        self.soft = soft
        self.mean_denominator = mean_denominator


def _prepare_targets(target: Any, logits: np.ndarray, weight: Optional[np.ndarray],
                     ignore_index: int) -> _Targets:
    if isinstance(target, np.ndarray) and v.is_half(target.dtype):
        t = target        # half-precision probabilities (bfloat16 has kind "V")
    else:
        t = v.as_array(target, "target", "iuf",
                       "integer class indices or float probabilities")
    batch_shape, n_classes = logits.shape[:-1], logits.shape[-1]
    if t.dtype.kind in "iu":
        hard, denominator = v.hard_targets(t, batch_shape, n_classes, ignore_index, weight)
        return _Targets(hard, None, denominator)
    soft = v.soft_targets(t, logits.shape, v.native(logits.dtype))
    return _Targets(None, soft, float(soft.shape[0]))


def _loss_call(logits: Any, target: Any, weight: Any, ignore_index: Any, reduction: Any,
               label_smoothing: Any, num_threads: Any, want_grad: bool,
               grad_output: Any = None, out: Any = None, z_loss: Any = 0.0, softcap: Any = None):
    x = v.as_float_array(logits, "logits", allow_half=True)
    reduction = v.check_reduction(reduction)
    smoothing = v.check_label_smoothing(label_smoothing)
    ignore_index = v.check_ignore_index(ignore_index)
    z = v.check_z_loss(z_loss) if z_loss != 0.0 else 0.0
    n_threads = _threads.resolve(num_threads)
    dtype = v.native(x.dtype)
    cap = v.check_softcap(softcap, dtype)
    n_classes = x.shape[-1]
    if n_classes == 0:
        raise ValueError("logits must have at least one class (its last axis has length 0)")
    w = None if weight is None else v.class_weights(weight, n_classes, dtype)
    targets = _prepare_targets(target, x, w, ignore_index)
    batch_shape = x.shape[:-1]

    scale, row_scale = 1.0, None
    grad = None
    if want_grad:
        scale, row_scale = v.grad_output_rows(grad_output, reduction, batch_shape)
        if reduction == "mean":
            # IEEE division as PyTorch: a zero total weight over positions
            # that are not ignored gives NaN gradients there; ignored rows
            # stay exactly 0 whatever the scale.
            scale = _ieee_divide(scale, targets.mean_denominator)
        grad = v.KernelOutput(out, x.shape, dtype, {"logits": x, "target": target, "weight": weight,
                                                    "grad_output": grad_output}, in_place="logits")

    rows = v.rows_view(x)
    row_loss = np.empty(rows.shape[0], dtype=np.float64)
    _core.run(
        _core.MODE_LOSS_GRAD if want_grad else _core.MODE_LOSS, v.dtype_code(dtype), rows,
        out=grad.rows if grad else None, target=targets.hard, ignore_index=ignore_index,
        soft=targets.soft, weight=w,
        weight_sum=float(np.sum(w, dtype=np.float64)) if w is not None else None,
        smoothing=smoothing, grad_scale=scale, row_scale=row_scale, row_out=row_loss,
        n_threads=n_threads, z_loss=z, softcap=cap,
    )
    loss = _reduce(row_loss, reduction, targets.mean_denominator, batch_shape,
                   v.result_dtype(dtype))
    return (loss, grad.finish()) if want_grad else loss


def _reduce(row_loss: np.ndarray, reduction: str, denominator: float,
            batch_shape: Tuple[int, ...], dtype: np.dtype):
    # a loss beyond the result dtype's range is inf, as IEEE rounding gives, not a warning
    with np.errstate(over="ignore"):
        if reduction == "none":
            return row_loss.astype(dtype).reshape(batch_shape)
        total = float(row_loss.sum())
        if reduction == "sum":
            return dtype.type(total)
        return dtype.type(_ieee_divide(total, denominator))


def _ieee_divide(a: float, b: float) -> float:
    """a / b with IEEE semantics (x / 0 is +-inf, 0 / 0 is NaN), not an exception."""
    if b != 0:
        return a / b
    if a == 0 or math.isnan(a):
        return math.nan
    return math.copysign(math.inf, a) * math.copysign(1.0, b)


def cross_entropy(logits: Any, target: Any, *, weight: Any = None, ignore_index: int = -100,
                  reduction: str = "mean", label_smoothing: float = 0.0,
                  z_loss: float = 0.0, softcap: Optional[float] = None,
                  num_threads: Optional[int] = None):
    """Softmax cross-entropy between logits and targets.

    Semantics follow ``torch.nn.functional.cross_entropy`` option by option,
    with the class axis last (``(..., V)``, the language-model layout).

    Parameters
    ----------
    logits : array_like of float32, float64, float16 or bfloat16, shape (..., V)
        Unnormalised scores. Any layout and byte order; copied only when the
        last axis is not contiguous or the byte order is not native.
        Half-precision logits (``ml_dtypes.bfloat16`` for bfloat16) are
        read as they are and computed in float32.
    target : array_like
        Either integer class indices of shape ``logits.shape[:-1]`` (any
        integer dtype), or probabilities of shape ``logits.shape`` (float;
        "soft targets").
    weight : array_like of shape (V,), optional
        Weight per class. With class indices the mean divides by the summed
        weight of the positions not ignored; with soft targets by the number
        of positions, as PyTorch does.
    ignore_index : int, default -100
        Class-index targets equal to this contribute 0 loss and 0 gradient
        and are left out of the mean. Not used with soft targets.
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"none"`` returns one loss per position, of shape ``logits.shape[:-1]``.
    label_smoothing : float in [0, 1], default 0.0
        Mixes the target with the uniform distribution:
        ``(1 - eps) * target + eps / V``.
    z_loss : float >= 0, default 0.0
        Adds ``z_loss * logsumexp(logits)**2`` to the loss of every position
        that is not ignored (the auxiliary loss of PaLM); reduced like the
        main loss (unweighted per position, same mean denominator).
    softcap : float > 0, optional
        Replaces the logits by ``softcap * tanh(logits / softcap)`` before
        the softmax (as in Gemma 2), on the fly; the gradient goes through it.
    num_threads : int, optional
        Threads to use. ``None`` means the value of :func:`set_num_threads`
        if set, else what OpenMP would use (``OMP_NUM_THREADS``,
        threadpoolctl). Results do not depend on it.

    Returns
    -------
    loss : numpy scalar or ndarray
        In the dtype of ``logits`` (float32 for half-precision logits);
        computed internally in float64 per row.
        A mean over zero positions (all ignored, or an empty batch) is NaN;
        a sum over none is 0.

    Raises
    ------
    TypeError
        Non-float, complex or non-numeric logits; targets neither integer
        nor float.
    ValueError
        Shapes that do not match, 0-d logits, no classes, an unknown
        reduction, ``label_smoothing`` outside [0, 1], ``num_threads < 1``.
    IndexError
        A class index outside ``[0, V)`` that is not ``ignore_index``; the
        message gives its position and value.

    Notes
    -----
    Stable for any finite logits and for ``-inf`` (masked) entries as long
    as the target's logit is finite. With soft targets, classes whose
    target weight is 0 contribute 0 even where the logit is ``-inf``.
    Nothing of the size of ``logits`` is allocated.

    Examples
    --------
    >>> import numpy as np, ce_kernels as ck
    >>> logits = np.array([[2.0, 1.0, 0.1]], dtype=np.float32)
    >>> round(float(ck.cross_entropy(logits, np.array([0]))), 6)
    0.41703
    """
    if (weight is None and reduction == "mean" and label_smoothing == 0.0 and z_loss == 0.0
            and softcap is None and type(logits) is np.ndarray and type(target) is np.ndarray):
        loss = _small_mean_loss(logits, target, ignore_index, num_threads)
        if loss is not None:
            return loss
    return _loss_call(logits, target, weight, ignore_index, reduction, label_smoothing,
                      num_threads, want_grad=False, z_loss=z_loss, softcap=softcap)


def _small_mean_loss(x: np.ndarray, t: np.ndarray, ignore_index: Any, num_threads: Any):
    """The common tiny call (a few rows, class indices, mean, no options)
    without the general path's conversions; None when it does not apply."""
    if not (x.ndim == 2 and 0 < x.shape[0] < 8 and x.shape[1] > 0 and x.dtype.char in "fd"
            and x.flags.c_contiguous and x.flags.aligned and x.dtype.isnative
            and t.shape == (x.shape[0],) and t.dtype.char in "lq" and t.itemsize == 8
            and t.flags.c_contiguous and t.flags.aligned and t.dtype.isnative
            and type(ignore_index) is int
            and -(2**63) <= ignore_index < 2**63):
        return None
    loss = _core.small_mean_loss(x, t, ignore_index, v.dtype_code(x.dtype),
                                 _threads.resolve(num_threads))
    if loss is None:
        return None
    if abs(loss) > _FLOAT32_MAX:  # rounds to inf (as IEEE does), without a warning
        with np.errstate(over="ignore"):
            return x.dtype.type(loss)
    return x.dtype.type(loss)


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def cross_entropy_with_grad(logits: Any, target: Any, *, weight: Any = None,
                            ignore_index: int = -100, reduction: str = "mean",
                            label_smoothing: float = 0.0, z_loss: float = 0.0,
                            softcap: Optional[float] = None, grad_output: Any = None,
                            out: Optional[np.ndarray] = None,
                            num_threads: Optional[int] = None, lse: Any = None,
                            vocab_start: int = 0, vocab_size: Optional[int] = None):
    """Cross-entropy and its gradient with respect to the logits, in one pass.

    Takes the arguments of :func:`cross_entropy`, plus:

    Parameters
    ----------
    grad_output : float or array_like, optional
        The upstream gradient. For ``"mean"`` and ``"sum"`` a scalar; for
        ``"none"`` an array broadcastable to ``logits.shape[:-1]``: the
        gradient returned is that of ``sum(loss * grad_output)``. Defaults
        to ones.
    out : ndarray, optional
        Where to write the gradient: same shape and dtype as the logits (in
        native byte order). It may be ``logits`` itself, in which case the
        gradient overwrites the logits and nothing of their size is
        allocated. It must not otherwise overlap an input.
    lse : array_like of float, shape ``logits.shape[:-1]``, optional
        Vocabulary parallelism: ``logits`` is then the shard of classes
        ``[vocab_start, vocab_start + V_shard)`` of a vocabulary of
        ``vocab_size``, targets are global class ids, ``weight`` holds the
        weights of all ``vocab_size`` classes, and ``lse`` is each row's
        log-sum-exp over the whole vocabulary (``merge_row_stats(...).lse``).
        The shard's gradient needs nothing else: the same as the matching
        columns of the unsharded gradient, whatever the split.
    vocab_start : int, default 0
        With ``lse``: global class id of the shard's first column.
    vocab_size : int, optional
        With ``lse``: classes in the whole vocabulary (default
        ``vocab_start + V_shard``).

    Returns
    -------
    loss : numpy scalar or ndarray
        As :func:`cross_entropy`; None with ``lse`` (the loss needs every
        shard: see :func:`loss_from_row_stats`).
    grad : ndarray
        ``d loss / d logits``, same shape and dtype as ``logits`` (half
        precision too); ``out`` when given. Ignored positions have a
        gradient of exactly 0.

    Examples
    --------
    >>> import numpy as np, ce_kernels as ck
    >>> logits = np.array([[0.0, 0.0]])
    >>> loss, grad = ck.cross_entropy_with_grad(logits, np.array([1]))
    >>> grad
    array([[ 0.5, -0.5]])
    """
    if lse is not None:
        return None, _sharded.shard_grad(
            logits, target, lse, vocab_start=vocab_start, vocab_size=vocab_size, weight=weight,
            ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
            z_loss=z_loss, softcap=softcap, grad_output=grad_output, out=out,
            num_threads=num_threads)
    if vocab_start != 0 or vocab_size is not None:
        raise ValueError("vocab_start and vocab_size describe a shard, whose gradient needs lse")
    return _loss_call(logits, target, weight, ignore_index, reduction, label_smoothing,
                      num_threads, want_grad=True, grad_output=grad_output, out=out,
                      z_loss=z_loss, softcap=softcap)


def _moved_rows(x: np.ndarray, axis: int) -> np.ndarray:
    return v.rows_view(np.moveaxis(x, axis, -1))


def _normalize_call(mode: int, x: Any, axis: Any, out: Any, name: str):
    arr = v.as_float_array(x, "x", allow_half=True)
    ax = v.check_axis(axis, arr.ndim)
    dtype = v.native(arr.dtype)
    result = v.KernelOutput(out, arr.shape, dtype, {"x": arr}, in_place="x", axis=ax)
    if arr.size == 0:
        return result.array
    _core.run(mode, v.dtype_code(dtype), _moved_rows(arr, ax), out=result.rows,
              n_threads=_threads.resolve(None))
    return result.finish()


def log_softmax(x: Any, axis: int = -1, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Logarithm of the softmax along ``axis``, computed stably.

    Parameters
    ----------
    x : array_like of float32, float64, float16 or bfloat16
    axis : int, default -1
    out : ndarray, optional
        Same shape and dtype as ``x``; may be ``x`` itself.

    Returns
    -------
    ndarray
        ``x - logsumexp(x, axis, keepdims=True)``, in the dtype of ``x``.
    """
    return _normalize_call(_core.MODE_LOG_SOFTMAX, x, axis, out, "log_softmax")


def softmax(x: Any, axis: int = -1, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Softmax along ``axis``, computed stably with one exponential per element.

    Parameters
    ----------
    x : array_like of float32, float64, float16 or bfloat16
    axis : int, default -1
    out : ndarray, optional
        Same shape and dtype as ``x``; may be ``x`` itself.

    Returns
    -------
    ndarray
        ``exp(x - logsumexp(x, axis, keepdims=True))``, in the dtype of ``x``.
    """
    return _normalize_call(_core.MODE_SOFTMAX, x, axis, out, "softmax")


def logsumexp(x: Any, axis: int = -1):
    """``log(sum(exp(x), axis))`` computed stably in one pass.

    Parameters
    ----------
    x : array_like of float32, float64, float16 or bfloat16
    axis : int, default -1

    Returns
    -------
    numpy scalar or ndarray
        Shape of ``x`` without ``axis``, dtype of ``x`` (float32 for half
        precision). An empty axis gives ``-inf``.
    """
    arr = v.as_float_array(x, "x", allow_half=True)
    ax = v.check_axis(axis, arr.ndim)
    dtype = v.native(arr.dtype)
    out_dtype = v.result_dtype(dtype)
    out_shape = arr.shape[:ax] + arr.shape[ax + 1:]
    if arr.shape[ax] == 0:
        result = np.full(out_shape, -np.inf, dtype=out_dtype)
    else:
        rows = _moved_rows(arr, ax)
        lse = np.empty(rows.shape[0], dtype=np.float64)
        _core.run(_core.MODE_LOGSUMEXP, v.dtype_code(dtype), rows, row_out=lse,
                  n_threads=_threads.resolve(None))
        result = lse.astype(out_dtype).reshape(out_shape)
    return result[()] if result.ndim == 0 else result


class TokenStats(NamedTuple):
    """Per-position statistics of :func:`token_stats`, each of shape
    ``logits.shape[:-1]``."""

    nll: np.ndarray
    """Negative log-likelihood of the target (nats; float64 for float64
    logits, else float32); NaN where the target is ``ignore_index``, so
    ``np.nanmean(nll)`` is the mean NLL."""
    predicted: np.ndarray
    """Index of the largest logit (int64; the first one on ties, as NumPy)."""
    correct: np.ndarray
    """``predicted == target`` (bool); False where the target is ignored."""
    entropy: np.ndarray
    """Entropy of the predicted distribution (nats, dtype as ``nll``)."""


def token_stats(logits: Any, target: Any, *, ignore_index: int = -100,
                num_threads: Optional[int] = None) -> TokenStats:
    """NLL, argmax prediction, correctness and entropy of every position, in
    one pass over each row of logits.

    Parameters
    ----------
    logits : array_like of float32, float64, float16 or bfloat16, shape (..., V)
    target : array_like of int, shape ``logits.shape[:-1]``
        Class indices; positions equal to ``ignore_index`` are flagged (NaN
        NLL, ``correct`` False), not dropped.
    ignore_index : int, default -100
    num_threads : int, optional

    Returns
    -------
    TokenStats
        ``(nll, predicted, correct, entropy)``. Perplexity is
        ``exp(np.nanmean(nll))``; accuracy ``correct.sum() / counted``.

    Examples
    --------
    >>> import numpy as np, ce_kernels as ck
    >>> stats = ck.token_stats(np.log([[0.7, 0.2, 0.1]]), np.array([1]))
    >>> int(stats.predicted[0]), bool(stats.correct[0])
    (0, False)
    """
    x, flat, _ = _flat_token_stats(logits, target, ignore_index, num_threads)
    shape = x.shape[:-1]
    out_dtype = v.result_dtype(v.native(x.dtype))
    return TokenStats(flat.nll.astype(out_dtype).reshape(shape), flat.predicted.reshape(shape),
                      flat.correct.reshape(shape), flat.entropy.astype(out_dtype).reshape(shape))


def _flat_token_stats(logits: Any, target: Any, ignore_index: Any, num_threads: Any):
    """(logits array, float64 token statistics of its rows, flat int64
    targets), validated as :func:`token_stats` validates."""
    x = v.as_float_array(logits, "logits", allow_half=True)
    ignore_index = v.check_ignore_index(ignore_index)
    n_threads = _threads.resolve(num_threads)
    if x.shape[-1] == 0:
        raise ValueError("logits must have at least one class (its last axis has length 0)")
    t = v.as_array(target, "target", "iu", "integer class indices")
    hard, _ = v.hard_targets(t, x.shape[:-1], x.shape[-1], ignore_index, None)
    flat = _token_stats_rows(v.rows_view(x), v.dtype_code(v.native(x.dtype)), hard,
                             ignore_index, n_threads)
    return x, flat, hard


def _token_stats_rows(rows: np.ndarray, dtype_code: int, hard: np.ndarray, ignore_index: int,
                      n_threads: int) -> TokenStats:
    """Token statistics of 2-D rows the kernels accept, with checked int64
    targets; float64 NLL and entropy, one entry per row."""
    n = rows.shape[0]
    nll, ent = np.empty(n), np.empty(n)
    predicted = np.empty(n, dtype=np.int64)
    _core.run(_core.MODE_TOKEN_STATS, dtype_code, rows, target=hard, ignore_index=ignore_index,
              row_out=nll, n_threads=n_threads, row_entropy=ent, row_argmax=predicted)
    correct = (predicted == hard) & (hard != ignore_index)
    return TokenStats(nll, predicted, correct, ent)
