"""The public functions: validation, conversion, defaults and documentation.

The arithmetic happens in C (``src/``) through the bridge in ``_core.pyx``.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from . import _core
from . import _sharded
from . import _threads
from . import _validation as v
from ._rows import Problem, RowExtras, TokenStats, result_scalar

__all__ = [
    "TokenStats",
    "token_stats",
    "cross_entropy",
    "cross_entropy_with_grad",
    "log_softmax",
    "softmax",
    "logsumexp",
]


def _loss_call(logits: Any, target: Any, weight: Any, ignore_index: Any, reduction: Any,
               label_smoothing: Any, num_threads: Any, want_grad: bool,
               grad_output: Any = None, out: Any = None, z_loss: Any = 0.0, softcap: Any = None,
               extras: Optional[RowExtras] = None):
    """The public loss functions; ``extras`` (flat, one entry per position)
    also receives each row's log-sum-exp and argmax from the same pass."""
    x = v.as_float_array(logits, "logits", allow_half=True)
    problem = Problem(x.dtype, x.shape[-1], weight=weight, ignore_index=ignore_index,
                      reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss,
                      softcap=softcap, num_threads=num_threads)
    batch_shape = x.shape[:-1]
    targets = problem.targets(target, batch_shape)
    rows = v.rows_view(x)
    row_loss = np.empty(rows.shape[0], dtype=np.float64)
    if want_grad:
        scale, row_scale = problem.grad_scales(grad_output, batch_shape, targets)
        grad = v.KernelOutput(out, x.shape, problem.dtype,
                              {"logits": x, "target": target, "weight": weight,
                               "grad_output": grad_output}, in_place="logits")
        problem.loss_grad_rows(rows, targets, grad.rows, row_loss, scale, row_scale, extras)
    else:
        problem.loss_rows(rows, targets, row_loss, extras)
    loss = problem.reduce(row_loss, targets, batch_shape)
    return (loss, grad.finish()) if want_grad else loss


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
    return result_scalar(loss, x.dtype)


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
    x = v.as_float_array(logits, "logits", allow_half=True)
    problem = Problem(x.dtype, x.shape[-1], ignore_index=ignore_index, num_threads=num_threads)
    t = v.as_array(target, "target", "iu", "integer class indices")
    targets = problem.targets(t, x.shape[:-1])
    flat = problem.token_stats_rows(v.rows_view(x), targets)
    return problem.shaped_stats(flat, x.shape[:-1])
