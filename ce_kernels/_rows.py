"""The rows-level seam: a cross-entropy problem validated once, run on blocks of rows.

The public functions (``cross_entropy``, ``token_stats``, the file scorer,
the fused linear layer) all reach the kernels through this module. A
:class:`Problem` holds the options of one call, checked and converted
once; a :class:`Targets` holds the targets of the whole batch, checked
once, and hands out row ranges of them. The methods of :class:`Problem`
then run already-validated 2-D rows (any block of them, in any order),
so a caller that streams or chunks its rows validates nothing per chunk.

Rows handed to the methods are 2-D arrays the kernels read as they are:
native byte order, aligned, a contiguous last axis of length
``n_classes``, in the problem's dtype (``v.rows_view`` makes them).
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional, Tuple

import numpy as np

from . import _core
from . import _threads
from . import _validation as v


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


class Targets:
    """Targets of a batch in the form the kernels take: flat int64 class
    indices (``hard``) or 2-D probability rows in the compute dtype
    (``soft``), and the denominator of the mean over the whole batch.

    Built checked by :meth:`Problem.targets`; the constructor itself checks
    nothing (for callers whose ids are already checked)."""

    __slots__ = ("hard", "soft", "mean_denominator")

    def __init__(self, hard: Optional[np.ndarray], soft: Optional[np.ndarray],
                 mean_denominator: float):
        self.hard = hard
        self.soft = soft
        self.mean_denominator = mean_denominator

    def rows(self, start: int, stop: int) -> "Targets":
        """The targets of rows ``[start, stop)``; the mean's denominator
        stays that of the whole batch."""
        return Targets(None if self.hard is None else self.hard[start:stop],
                       None if self.soft is None else self.soft[start:stop],
                       self.mean_denominator)

    def take(self, index: np.ndarray) -> "Targets":
        """The targets of the rows ``index`` (int64 positions), in that order."""
        return Targets(None if self.hard is None else self.hard[index],
                       None if self.soft is None else self.soft[index],
                       self.mean_denominator)


class Problem:
    """The options of a cross-entropy call over logits of ``dtype`` with
    ``n_classes`` classes, checked and converted once: class weights in
    the compute dtype and their sum, ``ignore_index``, ``reduction``,
    label smoothing, z-loss, softcap (0.0 for none) and thread count.

    Raises the errors of the public functions (TypeError, ValueError)
    naming the argument (the class weights as ``weight_name``) and its
    value."""

    __slots__ = ("dtype", "code", "n_classes", "weight", "weight_sum", "ignore_index",
                 "reduction", "smoothing", "z_loss", "softcap", "n_threads")

    def __init__(self, dtype: np.dtype, n_classes: int, *, weight: Any = None,
                 ignore_index: Any = -100, reduction: Any = "mean", label_smoothing: Any = 0.0,
                 z_loss: Any = 0.0, softcap: Any = None, num_threads: Any = None,
                 weight_name: str = "weight"):
        self.reduction = v.check_reduction(reduction)
        self.smoothing = v.check_label_smoothing(label_smoothing)
        self.ignore_index = v.check_ignore_index(ignore_index)
        self.z_loss = v.check_z_loss(z_loss) if z_loss != 0.0 else 0.0
        self.n_threads = _threads.resolve(num_threads)
        self.dtype = dtype = v.native(dtype)
        self.code = v.dtype_code(dtype)
        self.softcap = v.check_softcap(softcap, dtype)
        if n_classes == 0:
            raise ValueError("logits must have at least one class (its last axis has length 0)")
        self.n_classes = n_classes
        if weight is None:
            self.weight, self.weight_sum = None, None
        else:
            self.weight = v.class_weights(weight, n_classes, dtype, weight_name)
            self.weight_sum = float(np.sum(self.weight, dtype=np.float64))

    # ---- validation of the batch ----------------------------------------------------

    def targets(self, target: Any, batch_shape: Tuple[int, ...]) -> Targets:
        """``target`` checked against a batch of shape ``batch_shape``:
        integer class indices of that shape (range-checked, the mean's
        denominator is the summed weight of the positions not ignored) or
        probabilities of shape ``batch_shape + (n_classes,)`` (the mean
        divides by the number of positions)."""
        if isinstance(target, np.ndarray) and v.is_half(target.dtype):
            t = target        # half-precision probabilities (bfloat16 has kind "V")
        else:
            t = v.as_array(target, "target", "iuf",
                           "integer class indices or float probabilities")
        if t.dtype.kind in "iu":
            hard, denominator = v.hard_targets(t, batch_shape, self.n_classes,
                                               self.ignore_index, self.weight)
            return Targets(hard, None, denominator)
        soft = v.soft_targets(t, batch_shape + (self.n_classes,), self.dtype)
        return Targets(None, soft, float(soft.shape[0]))

    def grad_scales(self, grad_output: Any, batch_shape: Tuple[int, ...],
                    targets: Targets) -> Tuple[float, Optional[np.ndarray]]:
        """(scalar multiplier of every row's gradient, float64 multipliers
        per row or None) for the upstream gradient ``grad_output``, the
        mean's division included."""
        scale, row_scale = v.grad_output_rows(grad_output, self.reduction, batch_shape)
        if self.reduction == "mean":
            # IEEE division as PyTorch: a zero total weight over positions
            # that are not ignored gives NaN gradients there; ignored rows
            # stay exactly 0 whatever the scale.
            scale = ieee_divide(scale, targets.mean_denominator)
        return scale, row_scale

    # ---- the kernels on validated rows ----------------------------------------------

    def loss_rows(self, rows: np.ndarray, targets: Targets, row_out: np.ndarray) -> None:
        """The loss of each row (float64, unreduced) into ``row_out``."""
        self._run(_core.MODE_LOSS, rows, targets, None, row_out, 1.0, None)

    def loss_grad_rows(self, rows: np.ndarray, targets: Targets, out: np.ndarray,
                       row_out: np.ndarray, grad_scale: float = 1.0,
                       row_scale: Optional[np.ndarray] = None) -> None:
        """The loss of each row into ``row_out`` and its gradient, times
        ``grad_scale`` (and ``row_scale[i]`` for row i), into ``out`` (rows
        of the same shape; it may be ``rows`` itself)."""
        self._run(_core.MODE_LOSS_GRAD, rows, targets, out, row_out, grad_scale, row_scale)

    def _run(self, mode: int, rows: np.ndarray, targets: Targets, out: Optional[np.ndarray],
             row_out: np.ndarray, grad_scale: float, row_scale: Optional[np.ndarray]) -> None:
        _core.run(mode, self.code, rows, out=out, target=targets.hard,
                  ignore_index=self.ignore_index, soft=targets.soft, weight=self.weight,
                  weight_sum=self.weight_sum, smoothing=self.smoothing, grad_scale=grad_scale,
                  row_scale=row_scale, row_out=row_out, n_threads=self.n_threads,
                  z_loss=self.z_loss, softcap=self.softcap)

    def token_stats_rows(self, rows: np.ndarray, targets: Targets) -> TokenStats:
        """NLL, argmax, correctness and entropy of each row, with hard
        targets; NLL and entropy in float64. The loss options (class
        weights, smoothing, z-loss, softcap) do not apply."""
        n = rows.shape[0]
        nll, ent = np.empty(n), np.empty(n)
        predicted = np.empty(n, dtype=np.int64)
        hard = targets.hard
        _core.run(_core.MODE_TOKEN_STATS, self.code, rows, target=hard,
                  ignore_index=self.ignore_index, row_out=nll, n_threads=self.n_threads,
                  row_entropy=ent, row_argmax=predicted)
        correct = (predicted == hard) & (hard != self.ignore_index)
        return TokenStats(nll, predicted, correct, ent)

    # ---- results ----------------------------------------------------------------------

    def reduce(self, row_loss: np.ndarray, targets: Targets, batch_shape: Tuple[int, ...]):
        """The per-row losses reduced as the problem asks, in the result
        dtype (float32 for half precision)."""
        dtype = v.result_dtype(self.dtype)
        if self.reduction == "none":
            # a loss beyond the result dtype's range is inf, as IEEE rounding gives
            with np.errstate(over="ignore"):
                return row_loss.astype(dtype).reshape(batch_shape)
        total = float(row_loss.sum())
        if self.reduction == "mean":
            total = ieee_divide(total, targets.mean_denominator)
        return result_scalar(total, dtype)

    def shaped_stats(self, flat: TokenStats, batch_shape: Tuple[int, ...]) -> TokenStats:
        """Per-row statistics reshaped to the batch, NLL and entropy in the
        result dtype."""
        out_dtype = v.result_dtype(self.dtype)
        return TokenStats(flat.nll.astype(out_dtype).reshape(batch_shape),
                          flat.predicted.reshape(batch_shape),
                          flat.correct.reshape(batch_shape),
                          flat.entropy.astype(out_dtype).reshape(batch_shape))


def ieee_divide(a: float, b: float) -> float:
    """a / b with IEEE semantics (x / 0 is +-inf, 0 / 0 is NaN), not an exception."""
    if b != 0:
        return a / b
    if a == 0 or math.isnan(a):
        return math.nan
    return math.copysign(math.inf, a) * math.copysign(1.0, b)


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def result_scalar(value: float, dtype: np.dtype):
    """``value`` as a NumPy scalar of ``dtype``; beyond its range it is inf,
    as IEEE rounding gives, without a warning."""
    if abs(value) <= _FLOAT32_MAX:
        return dtype.type(value)
    with np.errstate(over="ignore"):
        return dtype.type(value)
