"""Cross-entropy over a vocabulary split into shards (tensor parallelism).

Each shard of the logits gives a few float64 statistics per row
(:func:`row_stats`); merged in a fixed order (:func:`merge_row_stats`) they
are those of the whole vocabulary, and give the loss
(:func:`loss_from_row_stats`) and each row's log-sum-exp, from which every
shard computes its own part of the gradient without seeing the others
(:func:`cross_entropy_with_grad` with ``lse=``). The merging is the row
driver's own merge of chunk statistics, in C, and does not depend on the
grouping: shards cut at chunk boundaries give bitwise the unsharded loss.
"""
from __future__ import annotations

import operator
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np

from . import _core
from . import _validation as v
from ._rows import Problem, Targets

__all__ = ["RowStats", "row_stats", "merge_row_stats", "loss_from_row_stats"]

#: Number of float64 values per row in :attr:`RowStats.data`.
N_FIELDS = len(_core.ROW_STATS_FIELDS)


class RowStats:
    """Statistics of the rows of logits over a range of the vocabulary.

    Attributes
    ----------
    data : ndarray of float64, shape (rows, 17)
        Per row, in this order (also ``fields``): ``max``, the largest
        (soft-capped) logit; ``sumexp``, the sum of ``exp(x - max)``;
        ``lin`` and ``wsum``, with label smoothing, ``sum w_j (max - x_j)``
        and ``sum w_j`` (else 0); ``target_logit``, ``target_weight`` and
        ``target_found`` (1 or 0), of the target when it falls in the range;
        ``argmax``, the global class id of the first largest logit (with
        soft-capping, shards whose capped maxima tie are taken in order). Every
        sum is of non-negative terms. Then the exact form the merge works on
        (``frame``, ``frame_exp2``, ``sum_hi``, ``sum_lo``, ``lin_hi``,
        ``lin_lo``, ``wsum_lo``, ``wshift_hi``, ``wshift_lo``): sums of
        exponentials measured from ``exp(frame)``, ``frame`` a multiple of
        ln 2, and every sum kept as a pair of doubles, so that shards merge
        exactly in any grouping; shards cut at the row driver's chunk
        boundaries merge to bitwise the unsharded statistics and loss. This
        array is what processes exchange: 136 bytes per row, whatever the
        vocabulary size.
    batch_shape : tuple of int
        ``logits.shape[:-1]``.
    vocab_start, n_classes : int
        The classes covered: ``[vocab_start, vocab_start + n_classes)``.
    vocab_size : int
        Classes in the whole vocabulary.
    label_smoothing, softcap, weight_sum : float
        The options the statistics were taken with (``softcap`` 0 for none;
        ``weight_sum`` is the sum of all class weights, ``vocab_size``
        without weights).
    result_dtype : numpy.dtype
        The dtype of the loss (that of the logits; float32 for half precision).
    """

    fields = _core.ROW_STATS_FIELDS

    def __init__(self, data: np.ndarray, batch_shape: Tuple[int, ...], vocab_start: int,
                 n_classes: int, vocab_size: int, label_smoothing: float, softcap: float,
                 weight_sum: float, result_dtype: np.dtype):
        self.data = data
        self.batch_shape = tuple(batch_shape)
        self.vocab_start = vocab_start
        self.n_classes = n_classes
        self.vocab_size = vocab_size
        self.label_smoothing = label_smoothing
        self.softcap = softcap
        self.weight_sum = weight_sum
        self.result_dtype = np.dtype(result_dtype)

    def field(self, name: str) -> np.ndarray:
        """One field for every row, of shape ``batch_shape``."""
        return self.data[:, self.fields.index(name)].reshape(self.batch_shape)

    @property
    def lse(self) -> np.ndarray:
        """The log-sum-exp of each row over the classes covered (float64)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.field("max") + np.log(self.field("sumexp"))

    def like(self, data: np.ndarray, vocab_start: int, n_classes: int) -> "RowStats":
        """The statistics ``data`` of the same rows, taken with the same
        options over classes ``[vocab_start, vocab_start + n_classes)``: the
        record of another process's shard, as received from it."""
        data = np.asarray(data, dtype=np.float64)
        if data.shape != self.data.shape:
            raise ValueError(f"row statistics of shape {data.shape}, expected {self.data.shape}")
        return RowStats(v.kernel_contiguous(data), self.batch_shape, vocab_start, n_classes,
                        self.vocab_size, self.label_smoothing, self.softcap, self.weight_sum,
                        self.result_dtype)

    def _options(self) -> tuple:
        return (self.batch_shape, self.vocab_size, self.label_smoothing, self.softcap,
                self.weight_sum, self.result_dtype)

    def __repr__(self) -> str:
        return (f"RowStats(rows={self.data.shape[0]}, classes=[{self.vocab_start}, "
                f"{self.vocab_start + self.n_classes}) of {self.vocab_size})")


def _check_index(value: Any, name: str) -> int:
    try:
        index = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
    if index < 0:
        raise ValueError(f"{name} must be >= 0, got {index}")
    return index


def _shard_range(vocab_start: Any, vocab_size: Any, n_cols: int) -> Tuple[int, int]:
    """(vocab_start, vocab_size) checked against a shard of n_cols classes."""
    start = _check_index(vocab_start, "vocab_start")
    size = start + n_cols if vocab_size is None else _check_index(vocab_size, "vocab_size")
    if n_cols == 0:
        raise ValueError("logits must have at least one class (its last axis has length 0)")
    if start + n_cols > size:
        raise ValueError(
            f"the shard's classes [{start}, {start + n_cols}) exceed vocab_size ({size})")
    return start, size


class _Shard:
    """One shard's logits, its problem (options checked once, class weights
    of the whole vocabulary) and its targets (global class ids, checked)."""

    def __init__(self, logits: Any, target: Any, vocab_start: Any, vocab_size: Any,
                 weight: Any, ignore_index: Any, **options: Any):
        self.x = v.as_float_array(logits, "logits", allow_half=True)
        if self.x.ndim == 0:
            raise ValueError("logits must have at least one dimension (the classes)")
        self.batch_shape = self.x.shape[:-1]
        self.start, self.size = _shard_range(vocab_start, vocab_size, self.x.shape[-1])
        self.problem = Problem(self.x.dtype, self.size, weight=weight, ignore_index=ignore_index,
                               **options)
        t = v.as_array(target, "target", "iu", "integer class indices (global class ids)")
        self.targets = self.problem.targets(t, self.batch_shape)
        sum_all = self.problem.weight_sum
        self.weight_sum = float(self.size) if sum_all is None else sum_all

    @property
    def n_rows(self) -> int:
        return self.targets.hard.shape[0]

    def run(self, mode: int, **outputs: Any) -> None:
        p = self.problem
        _core.run(mode, p.code, v.rows_view(self.x), target=self.targets.hard,
                  ignore_index=p.ignore_index, weight=p.weight, weight_sum=self.weight_sum,
                  smoothing=p.smoothing, z_loss=p.z_loss, softcap=p.softcap,
                  n_threads=p.n_threads, vocab_start=self.start, vocab_size=self.size, **outputs)


def row_stats(logits_shard: Any, target: Any, *, vocab_start: int = 0,
              vocab_size: Optional[int] = None, weight: Any = None, ignore_index: int = -100,
              label_smoothing: float = 0.0, softcap: Optional[float] = None,
              num_threads: Optional[int] = None) -> RowStats:
    """Per-row statistics of the logits of one shard of the vocabulary.

    Parameters
    ----------
    logits_shard : array_like of float32, float64, float16 or bfloat16, shape (..., V_shard)
        The logits of classes ``[vocab_start, vocab_start + V_shard)``.
    target : array_like of int, shape ``logits_shard.shape[:-1]``
        Global class ids in ``[0, vocab_size)``, or ``ignore_index``.
    vocab_start : int, default 0
        Global class id of the shard's first column.
    vocab_size : int, optional
        Classes in the whole vocabulary; defaults to ``vocab_start + V_shard``.
    weight : array_like of shape (vocab_size,), optional
        Weights of all classes (the shard reads its slice).
    ignore_index : int, default -100
    label_smoothing : float in [0, 1], default 0.0
        As in :func:`cross_entropy`; the sums it needs are taken only when > 0.
    softcap : float > 0, optional
        As in :func:`cross_entropy`.
    num_threads : int, optional

    Returns
    -------
    RowStats
        For every row, ignored ones included. Merge the shards' statistics
        with :func:`merge_row_stats`.

    Raises
    ------
    ValueError
        The shard does not fit in ``vocab_size``, bad shapes or options.
    IndexError
        A target outside ``[0, vocab_size)`` that is not ``ignore_index``.

    Examples
    --------
    >>> import numpy as np, ce_kernels as ck
    >>> x = np.array([[2.0, 1.0, 0.1, -1.0]])
    >>> t = np.array([0])
    >>> parts = [ck.row_stats(x[:, :2], t, vocab_size=4),
    ...          ck.row_stats(x[:, 2:], t, vocab_start=2, vocab_size=4)]
    >>> merged = ck.merge_row_stats(parts)
    >>> bool(np.isclose(ck.loss_from_row_stats(merged, t), ck.cross_entropy(x, t)))
    True
    """
    shard = _Shard(logits_shard, target, vocab_start, vocab_size, weight, ignore_index,
                   label_smoothing=label_smoothing, softcap=softcap, num_threads=num_threads)
    data = np.zeros((shard.n_rows, N_FIELDS), dtype=np.float64)
    if shard.n_rows:
        shard.run(_core.MODE_ROW_STATS, row_stats=data)
    p = shard.problem
    return RowStats(data, shard.batch_shape, shard.start, shard.x.shape[-1], shard.size,
                    p.smoothing, p.softcap, shard.weight_sum, v.result_dtype(p.dtype))


def merge_row_stats(stats: Sequence[RowStats]) -> RowStats:
    """The statistics of the union of disjoint shards, merged in list order.

    The result depends only on the statistics and their order (not on
    threads or timing): pass the shards in the same order everywhere, for
    instance by rank, to get the same bits everywhere.

    Parameters
    ----------
    stats : sequence of RowStats
        Of the same rows, taken with the same options, over classes that do
        not overlap.

    Returns
    -------
    RowStats
        Covering ``[min vocab_start, ...)`` and the total of the classes.

    Raises
    ------
    TypeError
        An element is not a :class:`RowStats`.
    ValueError
        No statistics, statistics of other rows or options, or overlapping shards.
    """
    parts = list(stats)
    if not parts:
        raise ValueError("merge_row_stats needs at least one RowStats")
    for i, s in enumerate(parts):
        if not isinstance(s, RowStats):
            raise TypeError(f"stats[{i}] is a {type(s).__name__}, not a RowStats")
        if s._options() != parts[0]._options():
            raise ValueError(
                f"stats[{i}] does not describe the same rows with the same options as "
                f"stats[0] (rows, vocab_size, label_smoothing, softcap, weights, dtype)")
    ranges = sorted((s.vocab_start, s.vocab_start + s.n_classes, i) for i, s in enumerate(parts))
    for (_, end, i), (start, _, j) in zip(ranges, ranges[1:]):
        if start < end:
            raise ValueError(f"stats[{i}] and stats[{j}] cover overlapping classes")
    first = parts[0]
    merged = np.empty_like(first.data)
    if merged.shape[0]:
        _core.merge_row_stats(np.stack([s.data for s in parts]), merged)
    return RowStats(merged, first.batch_shape, ranges[0][0], sum(s.n_classes for s in parts),
                    first.vocab_size, first.label_smoothing, first.softcap, first.weight_sum,
                    first.result_dtype)


def loss_from_row_stats(stats: RowStats, target: Any, *, ignore_index: int = -100,
                        reduction: str = "mean", z_loss: float = 0.0):
    """The cross-entropy of the whole vocabulary from its merged statistics.

    The same as :func:`cross_entropy` on the unsharded logits with the
    options the statistics were taken with (weights, label smoothing,
    soft-capping).

    Parameters
    ----------
    stats : RowStats
        Covering the whole vocabulary (:func:`merge_row_stats` of every shard).
    target : array_like of int
        The global class ids given to :func:`row_stats`.
    ignore_index : int, default -100
    reduction : {"mean", "sum", "none"}, default "mean"
    z_loss : float >= 0, default 0.0

    Returns
    -------
    loss : numpy scalar or ndarray
        In ``RowStats.result_dtype``.

    Raises
    ------
    ValueError
        Statistics that do not cover the whole vocabulary, or a row whose
        target no shard held.
    """
    if not isinstance(stats, RowStats):
        raise TypeError(f"stats must be a RowStats, got {type(stats).__name__}")
    if stats.n_classes != stats.vocab_size:
        raise ValueError(
            f"stats cover {stats.n_classes} of {stats.vocab_size} classes: merge the "
            f"statistics of every shard first")
    problem = Problem(stats.result_dtype, stats.vocab_size, ignore_index=ignore_index,
                      reduction=reduction, z_loss=z_loss)
    t = v.as_array(target, "target", "iu", "integer class indices (global class ids)")
    flat = problem.targets(t, stats.batch_shape).hard
    found = stats.data[:, stats.fields.index("target_found")]
    counted = flat != problem.ignore_index
    missing = np.flatnonzero(counted & (found != 1))
    if missing.size:
        r = int(missing[0])
        raise ValueError(
            f"row {r}: its target {int(flat[r])} was found in {found[r]:g} shards, not 1")
    row_loss = np.empty(flat.shape[0], dtype=np.float64)
    if row_loss.size:
        _core.finish_row_stats(stats.data, flat, ignore_index=problem.ignore_index,
                               weight_sum=stats.weight_sum, smoothing=stats.label_smoothing,
                               z_loss=problem.z_loss, vocab_size=stats.vocab_size,
                               row_out=row_loss)
    # the mean's denominator: the targets' weights summed in row order, as
    # the unsharded call sums them
    weights = np.where(counted, stats.data[:, stats.fields.index("target_weight")], 0.0)
    denominator = float(np.cumsum(weights)[-1]) if weights.size else 0.0
    return problem.reduce(row_loss, Targets(flat, None, denominator), stats.batch_shape)


def shard_grad(logits_shard: Any, target: Any, lse: Any, *, vocab_start: int = 0,
               vocab_size: Optional[int] = None, weight: Any = None, ignore_index: int = -100,
               reduction: str = "mean", label_smoothing: float = 0.0, z_loss: float = 0.0,
               softcap: Optional[float] = None, grad_output: Any = None,
               out: Optional[np.ndarray] = None, num_threads: Optional[int] = None) -> np.ndarray:
    """The gradient of one shard from each row's global log-sum-exp: the
    work of :func:`cross_entropy_with_grad` when given ``lse``."""
    shard = _Shard(logits_shard, target, vocab_start, vocab_size, weight, ignore_index,
                   reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss,
                   softcap=softcap, num_threads=num_threads)
    row_lse = v.as_array(lse, "lse", "fiu", "the log-sum-exp of every row")
    if row_lse.shape != shard.batch_shape:
        raise ValueError(
            f"lse has shape {row_lse.shape}, expected {shard.batch_shape} (logits.shape[:-1])")
    row_lse = v.kernel_contiguous(row_lse.reshape(-1), np.float64)
    scale, row_scale = shard.problem.grad_scales(grad_output, shard.batch_shape, shard.targets)
    grad = v.KernelOutput(out, shard.x.shape, shard.problem.dtype,
                          {"logits": shard.x, "target": target, "weight": weight,
                           "grad_output": grad_output, "lse": lse}, in_place="logits")
    if shard.n_rows:
        shard.run(_core.MODE_GRAD_FROM_LSE, out=grad.rows, lse_in=row_lse, grad_scale=scale,
                  row_scale=row_scale)
    return grad.finish()


# ---- what the engines share ---------------------------------------------------------

class ShardLayout:
    """Where each process's shard lies in the vocabulary, from what every
    process said of its own (:meth:`describe`, gathered in rank order), so
    that every process checks the same facts and raises the same error
    rather than wait for a collective the others never join."""

    def __init__(self, described: Sequence[Sequence[int]], rank: int):
        rows = {int(d[0]) for d in described}
        if len(rows) != 1:
            raise ValueError(f"every process must pass the same rows; numbers of rows by "
                             f"rank: {[int(d[0]) for d in described]}")
        self.widths = [int(d[1]) for d in described]
        given = [int(d[2]) for d in described]
        if all(g < 0 for g in given):
            self.starts = [sum(self.widths[:k]) for k in range(len(self.widths))]
        elif all(g >= 0 for g in given):
            self.starts = given
        else:
            raise ValueError("vocab_start must be given on every process or on none")
        sizes = {int(d[3]) for d in described if int(d[3]) >= 0}
        if len(sizes) > 1:
            raise ValueError(f"processes disagree on vocab_size: {sorted(sizes)}")
        self.vocab_size = sizes.pop() if sizes else sum(self.widths)
        if sum(self.widths) != self.vocab_size:
            raise ValueError(f"the shards hold {sum(self.widths)} classes in all (by rank: "
                             f"{self.widths}), not vocab_size ({self.vocab_size})")
        self.rank = rank

    @staticmethod
    def describe(n_rows: int, n_cols: int, vocab_start: Optional[int],
                 vocab_size: Optional[int]) -> Tuple[int, int, int, int]:
        """This process's shard as 4 integers (-1: not given)."""
        start = -1 if vocab_start is None else _check_index(vocab_start, "vocab_start")
        size = -1 if vocab_size is None else _check_index(vocab_size, "vocab_size")
        return (n_rows, n_cols, start, size)

    @property
    def vocab_start(self) -> int:
        return self.starts[self.rank]

    def merge(self, mine: RowStats, gathered: Sequence[np.ndarray]) -> RowStats:
        """Every process's statistics (gathered in rank order, this one's
        own included) merged in rank order."""
        return merge_row_stats([
            mine if k == self.rank else mine.like(data, self.starts[k], self.widths[k])
            for k, data in enumerate(gathered)])


#: Bytes each process sends per row: one float64 RowStats record.
BYTES_PER_ROW = 8 * N_FIELDS


def gathered_row_stats(logits_shard: Any, target: Any, *, rank: int,
                       gather_objects: Callable[[Any], List[Any]],
                       gather_rows: Callable[[np.ndarray], Sequence[np.ndarray]],
                       vocab_start: Optional[int] = None, vocab_size: Optional[int] = None,
                       **options: Any) -> Tuple[ShardLayout, RowStats]:
    """The statistics of the whole vocabulary, each process holding one
    shard: the engines' common forward pass.

    ``gather_objects(obj)`` returns every process's small Python object in
    rank order; ``gather_rows(array)`` every process's float64 (rows, 8)
    array in rank order (the one collective that grows with the rows).
    ``options`` go to :func:`row_stats`. An error on any process (a bad
    target, say) is raised on every process, before the statistics are
    exchanged, so that none waits for the others forever.
    """
    shape = np.shape(logits_shard)
    if len(shape) == 0:
        raise ValueError("logits must have at least one dimension (the classes)")
    n_rows = int(np.prod(shape[:-1], dtype=np.int64))
    layout = ShardLayout(gather_objects(ShardLayout.describe(n_rows, shape[-1], vocab_start,
                                                             vocab_size)), rank)
    stats, failure = None, None
    try:
        stats = row_stats(logits_shard, target, vocab_start=layout.vocab_start,
                          vocab_size=layout.vocab_size, **options)
    except Exception as exc:  # re-raised below, once every process knows
        failure = exc
    failures = gather_objects(None if failure is None else f"{type(failure).__name__}: {failure}")
    if failure is not None:
        raise failure
    for k, message in enumerate(failures):
        if message is not None:
            raise RuntimeError(f"vocabulary-parallel cross-entropy failed on rank {k}: {message}")
    return layout, layout.merge(stats, gather_rows(stats.data))
