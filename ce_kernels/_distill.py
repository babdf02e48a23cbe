"""Distillation losses between a student's and a teacher's logits: the KL
divergence in either direction and the generalised Jensen-Shannon
divergence, at a temperature, fused with the softmaxes. Validation and
documentation here; arithmetic in ``src/ce_distill.c`` and
``src/ce_distill_template.h``.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Optional

import numpy as np

from . import _core
from . import _threads
from . import _validation as v
from ._rows import ieee_divide, result_scalar

__all__ = [
    "distill_kl",
    "distill_kl_with_grad",
    "distill_jsd",
    "distill_jsd_with_grad",
]

_REDUCTIONS = ("batchmean", "sum", "mean", "none")
_DIRECTIONS = {"forward": _core.DISTILL_FORWARD, "reverse": _core.DISTILL_REVERSE}


def _real_option(value: Any, name: str, ok, requirement: str) -> float:
    """``value`` as a float satisfying ``ok``; TypeError for a non-number,
    ValueError otherwise, both saying it must be ``requirement``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {requirement}, got {value!r}")
    x = float(value)
    if not ok(x):
        raise ValueError(f"{name} must be {requirement}, got {value!r}")
    return x


def _check_temperature(temperature: Any) -> float:
    return _real_option(temperature, "temperature", lambda x: x > 0 and math.isfinite(x),
                        "a positive finite number")


def _check_beta(beta: Any) -> float:
    return _real_option(beta, "beta", lambda x: 0.0 <= x <= 1.0, "a number in [0, 1]")


def _check_distill_reduction(reduction: Any) -> str:
    if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(map(repr, _REDUCTIONS))}, "
                         f"got {reduction!r}")
    return reduction


def _logit_pair(student_logits: Any, teacher_logits: Any):
    """Both operands as arrays of one supported dtype and one shape."""
    s = v.as_float_array(student_logits, "student_logits", allow_half=True)
    t = v.as_float_array(teacher_logits, "teacher_logits", allow_half=True)
    if s.shape != t.shape:
        raise ValueError(f"student_logits and teacher_logits must have the same shape, "
                         f"got {s.shape} and {t.shape}")
    if v.native(s.dtype) != v.native(t.dtype):
        raise TypeError(
            f"student_logits and teacher_logits must have the same dtype, got {s.dtype} and "
            f"{t.dtype}; convert the teacher with teacher_logits.astype(student_logits.dtype)")
    if s.shape[-1] == 0:
        raise ValueError("logits must have at least one class (their last axis has length 0)")
    return s, t


def _row_targets(target: Any, batch_shape, ignore_index: int) -> Optional[np.ndarray]:
    """``target`` as flat int64, one per row (only compared with
    ``ignore_index``), or None."""
    if target is None:
        return None
    t = v.as_array(target, "target", "iu", "integer class indices (or None)")
    if t.shape != batch_shape:
        raise ValueError(f"target has shape {t.shape}, expected {batch_shape} "
                         f"(logits.shape[:-1])")
    if t.dtype == np.uint64 and t.size and int(t.max()) >= 2**63:
        # beyond int64 a target never equals ignore_index: keep it counted
        t = np.where(t >= 2**63, ignore_index + 1 if ignore_index < 2**63 - 1 else 0, t)
    return v.kernel_contiguous(t.reshape(-1), np.int64)


def _distill_call(mode: int, beta: float, student_logits: Any, teacher_logits: Any,
                  temperature: Any, target: Any, ignore_index: Any, reduction: Any,
                  num_threads: Any, want_grad: bool, out: Any = None):
    s, t = _logit_pair(student_logits, teacher_logits)
    temp = _check_temperature(temperature)
    reduction = _check_distill_reduction(reduction)
    ignore_index = v.check_ignore_index(ignore_index)
    n_threads = _threads.resolve(num_threads)
    batch_shape = s.shape[:-1]
    hard = _row_targets(target, batch_shape, ignore_index)
    dtype = v.native(s.dtype)
    s_rows, t_rows = v.rows_view(s), v.rows_view(t)
    n_rows, n_classes = s_rows.shape
    counted = n_rows if hard is None else int(np.count_nonzero(hard != ignore_index))
    denominator = {"batchmean": counted, "mean": counted * n_classes}.get(reduction, 1)
    grad = None
    if want_grad:
        grad = v.KernelOutput(out, s.shape, dtype,
                              {"student_logits": s, "teacher_logits": t, "target": target},
                              in_place="student_logits")
    row_loss = np.empty(n_rows, dtype=np.float64)
    _core.distill_run(mode, v.dtype_code(dtype), s_rows, t_rows, temperature=temp, beta=beta,
                      target=hard, ignore_index=ignore_index, row_out=row_loss,
                      grad=None if grad is None else grad.rows,
                      grad_scale=ieee_divide(1.0, denominator), n_threads=n_threads)
    result = v.result_dtype(dtype)
    if reduction == "none":
        with np.errstate(over="ignore"):
            loss = row_loss.astype(result).reshape(batch_shape)
    else:
        loss = result_scalar(ieee_divide(float(row_loss.sum()), denominator), result)
    return (loss, grad.finish()) if want_grad else loss


def _kl_mode(direction: Any) -> int:
    if not isinstance(direction, str) or direction not in _DIRECTIONS:
        raise ValueError(f"direction must be 'forward' or 'reverse', got {direction!r}")
    return _DIRECTIONS[direction]


def _jsd_mode(beta: Any):
    """(kernel mode, beta): the endpoints are the two KL directions."""
    b = _check_beta(beta)
    if b == 0.0:
        return _core.DISTILL_FORWARD, b
    if b == 1.0:
        return _core.DISTILL_REVERSE, b
    return _core.DISTILL_JSD, b


def distill_kl(student_logits: Any, teacher_logits: Any, *, temperature: float = 1.0,
               direction: str = "forward", ignore_index: int = -100, target: Any = None,
               reduction: str = "batchmean", num_threads: Optional[int] = None):
    """KL divergence between the teacher's and the student's softmax, for
    knowledge distillation, in one pass over both logits.

    With ``p_s = softmax(student_logits / T)`` and ``p_t =
    softmax(teacher_logits / T)`` along the last axis, each row's loss is
    ``T**2 * KL(p_t || p_s)`` (``direction="forward"``, the usual
    distillation loss) or ``T**2 * KL(p_s || p_t)`` (``"reverse"``). The
    factor ``T**2`` keeps the gradient's scale independent of ``T``, as is
    conventional. The same as PyTorch's ``F.kl_div(F.log_softmax(s / T,
    -1), F.log_softmax(t / T, -1), log_target=True, reduction=...) * T**2``
    for the forward direction, without any array of the size of the logits.

    Parameters
    ----------
    student_logits : array_like of float32, float64, float16 or bfloat16, shape (..., V)
        The student's unnormalised scores. Any layout; half precision is
        read as it is and computed in float32 (sums in float64).
    teacher_logits : array_like, same shape and dtype as ``student_logits``
        The teacher's scores. The dtypes must match (a TypeError says how
        to convert): nothing is converted behind the caller's back.
    temperature : float > 0, default 1.0
        Both logits are divided by it before the softmax.
    direction : {"forward", "reverse"}, default "forward"
        ``"forward"``: KL(teacher || student); ``"reverse"``: KL(student ||
        teacher).
    ignore_index : int, default -100
        With ``target``, rows whose target equals it count 0 and are left
        out of the means.
    target : array_like of int, shape ``logits.shape[:-1]``, optional
        Only compared with ``ignore_index`` (any other value counts the
        row), so the padding of a language-model batch can be skipped.
    reduction : {"batchmean", "sum", "mean", "none"}, default "batchmean"
        ``"batchmean"``: sum over rows / number of counted rows (PyTorch's
        recommended ``kl_div`` reduction); ``"mean"``: sum / (counted rows
        * V), as ``kl_div``'s ``"mean"`` divides by the element count;
        ``"sum"``; ``"none"``: one loss per row, 0 for ignored rows. A
        mean over no counted rows is NaN (0 / 0, as PyTorch); a sum is 0.
    num_threads : int, optional
        As :func:`cross_entropy`; results do not depend on it.

    Returns
    -------
    loss : numpy scalar or ndarray
        In the dtype of the logits (float32 for half precision), computed
        per row in float64.

    Raises
    ------
    TypeError
        Non-float logits, student and teacher of different dtypes, a
        non-integer ``target``, a non-numeric ``temperature``.
    ValueError
        Shapes that differ, no classes, a ``temperature`` that is not
        positive and finite, an unknown ``direction`` or ``reduction``, a
        ``target`` of the wrong shape.

    Notes
    -----
    ``-inf`` logits mask classes: where the teacher's probability is 0 the
    forward term is 0 (whatever the student's logit); a class the student
    gives probability 0 (``-inf``) where the teacher does not makes the
    forward loss ``inf`` (and the reverse loss likewise with the roles
    swapped). A row whose student or teacher logits are all ``-inf`` or
    hold ``+inf`` or NaN has a NaN loss. Large logits (``1e4``) do not
    overflow: every exponential is measured from its row's maximum.

    Examples
    --------
    >>> import numpy as np, ce_kernels as ck
    >>> student = np.array([[0.0, 0.0]])
    >>> teacher = np.log([[3.0, 1.0]])      # p_t = (0.75, 0.25)
    >>> round(float(ck.distill_kl(student, teacher)), 6)   # 0.75 ln 1.5 + 0.25 ln 0.5
    0.130812
    """
    return _distill_call(_kl_mode(direction), 0.5, student_logits, teacher_logits, temperature,
                         target, ignore_index, reduction, num_threads, want_grad=False)


def distill_kl_with_grad(student_logits: Any, teacher_logits: Any, *, temperature: float = 1.0,
                         direction: str = "forward", ignore_index: int = -100,
                         target: Any = None, reduction: str = "batchmean",
                         out: Optional[np.ndarray] = None, num_threads: Optional[int] = None):
    """:func:`distill_kl` and its gradient with respect to the student's
    logits, from the same pass.

    Takes the arguments of :func:`distill_kl`, plus:

    Parameters
    ----------
    out : ndarray, optional
        Where to write the gradient: the shape and dtype of
        ``student_logits`` (native byte order). It may be
        ``student_logits`` itself (the gradient overwrites them, and
        nothing of their size is allocated); it must not otherwise overlap
        an input.

    Returns
    -------
    loss : numpy scalar or ndarray
        As :func:`distill_kl`.
    grad : ndarray
        ``d loss / d student_logits`` (of the reduced loss; of the sum of
        the losses for ``"none"``), in the dtype of the logits: forward
        ``T * (p_s - p_t)``, reverse ``T * p_s * (log p_s - log p_t - KL)``,
        divided by the reduction's denominator. Ignored rows get exactly 0.

    Examples
    --------
    >>> import numpy as np, ce_kernels as ck
    >>> loss, grad = ck.distill_kl_with_grad(np.array([[0.0, 0.0]]), np.log([[3.0, 1.0]]))
    >>> grad                                # p_s - p_t
    array([[-0.25,  0.25]])
    """
    return _distill_call(_kl_mode(direction), 0.5, student_logits, teacher_logits, temperature,
                         target, ignore_index, reduction, num_threads, want_grad=True, out=out)


def distill_jsd(student_logits: Any, teacher_logits: Any, *, beta: float = 0.5,
                temperature: float = 1.0, target: Any = None, ignore_index: int = -100,
                reduction: str = "batchmean", num_threads: Optional[int] = None):
    """Generalised Jensen-Shannon divergence between the teacher's and the
    student's softmax (on-policy distillation of language models), fused
    with both softmaxes.

    With ``p_s``, ``p_t`` as in :func:`distill_kl` and the mixture ``m =
    beta * p_t + (1 - beta) * p_s``, each row's loss is ``T**2 * (beta *
    KL(p_t || m) + (1 - beta) * KL(p_s || m))``, scaled by ``T**2`` as
    :func:`distill_kl` is. At the endpoints the mixture formula degenerates
    to 0, so they are defined as the two KL divergences instead: ``beta =
    0`` gives ``KL(p_t || p_s)`` (forward) and ``beta = 1`` gives ``KL(p_s
    || p_t)`` (reverse), exactly :func:`distill_kl` with that direction.

    Parameters
    ----------
    student_logits, teacher_logits : array_like, shape (..., V)
        As :func:`distill_kl`.
    beta : float in [0, 1], default 0.5
        The teacher's weight in the mixture; 0.5 is the symmetric
        Jensen-Shannon divergence (at most ``log 2 * T**2``).
    temperature, target, ignore_index, reduction, num_threads
        As :func:`distill_kl`.

    Returns
    -------
    loss : numpy scalar or ndarray
        As :func:`distill_kl`.

    Raises
    ------
    TypeError, ValueError
        As :func:`distill_kl`; ValueError for ``beta`` outside [0, 1].

    Notes
    -----
    The mixture's logarithm is taken as a log-sum-exp of the two
    log-probabilities, so classes of tiny probability keep their precision;
    classes with ``-inf`` in both logits contribute 0. A pass over each
    row finds both log-sum-exps, a second (from cache) the divergence.

    Examples
    --------
    >>> import numpy as np, ce_kernels as ck
    >>> student = np.log([[0.5, 0.5]])
    >>> teacher = np.log([[1.0, 1e-300]])   # almost one-hot
    >>> round(float(ck.distill_jsd(student, teacher)), 6)   # m = (0.75, 0.25): 0.75 ln(4/3)
    0.215762
    """
    mode, b = _jsd_mode(beta)
    return _distill_call(mode, b, student_logits, teacher_logits, temperature, target,
                         ignore_index, reduction, num_threads, want_grad=False)


def distill_jsd_with_grad(student_logits: Any, teacher_logits: Any, *, beta: float = 0.5,
                          temperature: float = 1.0, target: Any = None,
                          ignore_index: int = -100, reduction: str = "batchmean",
                          out: Optional[np.ndarray] = None, num_threads: Optional[int] = None):
    """:func:`distill_jsd` and its gradient with respect to the student's
    logits, from the same pass.

    Takes the arguments of :func:`distill_jsd`, plus ``out`` as
    :func:`distill_kl_with_grad`.

    Returns
    -------
    loss : numpy scalar or ndarray
        As :func:`distill_jsd`.
    grad : ndarray
        ``d loss / d student_logits`` in the dtype of the logits: for ``0 <
        beta < 1``, ``(1 - beta) * T * p_s * (log(p_s / m) - KL(p_s || m))``
        per row, divided by the reduction's denominator (at the endpoints,
        the gradient of the matching KL). Ignored rows get exactly 0.

    Examples
    --------
    >>> import numpy as np, ce_kernels as ck
    >>> loss, grad = ck.distill_jsd_with_grad(np.log([[0.5, 0.5]]), np.log([[1.0, 1e-300]]))
    >>> np.round(grad, 6)                   # -+ln(3) / 8
    array([[-0.137327,  0.137327]])
    """
    mode, b = _jsd_mode(beta)
    return _distill_call(mode, b, student_logits, teacher_logits, temperature, target,
                         ignore_index, reduction, num_threads, want_grad=True, out=out)
