"""Additive partial sums of an evaluation, merged exactly.

Scoring a set of logits in blocks (chunks of one file, row ranges of a job
array, files of a shard set, Dask tasks) gives one partial per block;
merging the partials gives the summary ``ce-kernels eval`` prints. The sums
of per-token NLL and entropy are kept exactly, as integers in units of
2**-40 (each token's value rounded to that unit first, the same whichever
block holds it), so the summary is bitwise the same whatever the blocking
and the order of the partials.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Iterable, Optional

import numpy as np

from . import _validation as v
from ._rows import Problem, TokenStats

__all__ = ["eval_partial", "eval_merge"]

#: Marks a partial (and its version) in JSON files.
FORMAT = "ce_kernels.eval_partial/1"
UNIT_BITS = 40
_UNIT = float(2**UNIT_BITS)
# Values of at most this magnitude (in units) split exactly into two
# halves of 31 bits, whose int64 sums cannot overflow below 2**32 tokens.
_SPLIT = float(2**31)
_FAST_LIMIT = float(2**62)
_COUNTERS = ("positions", "tokens", "ignored", "correct")
_SUMS = ("nll_sum", "entropy_sum")


def exact_sum(values: np.ndarray) -> Dict[str, int]:
    """The sum of float64 ``values`` as an exact integer number of units of
    2**-40 (each value rounded to the unit, half to even), with NaN and
    infinities counted apart."""
    finite = np.isfinite(values)
    nan = int(np.count_nonzero(np.isnan(values)))
    pos_inf = int(np.count_nonzero(values == np.inf))
    neg_inf = values.size - int(np.count_nonzero(finite)) - nan - pos_inf
    scaled = np.rint(values[finite] * _UNIT)            # exact: a power of 2, then integers
    fast = np.abs(scaled) < _FAST_LIMIT
    part = scaled[fast]
    high = np.floor(part / _SPLIT)
    low = part - high * _SPLIT                          # both exact, |.| < 2**31
    units = int(high.astype(np.int64).sum()) * 2**31 + int(low.astype(np.int64).sum())
    units += sum(int(x) for x in scaled[~fast])         # huge values, rare: Python ints
    return {"units": units, "nan": nan, "+inf": pos_inf, "-inf": neg_inf}


def _add_sums(a: Dict[str, int], b: Dict[str, int]) -> Dict[str, int]:
    return {key: a[key] + b[key] for key in a}


def empty_partial(vocab: int) -> Dict[str, Any]:
    zero = {"units": 0, "nan": 0, "+inf": 0, "-inf": 0}
    return {"format": FORMAT, "vocab": vocab, **{k: 0 for k in _COUNTERS},
            **{k: dict(zero) for k in _SUMS}}


def add_block(partial: Dict[str, Any], target: np.ndarray, stats: TokenStats,
              ignore_index: int) -> None:
    """Add the token statistics of one block of rows (flat int64 targets)."""
    counted = target != ignore_index
    n_counted = int(np.count_nonzero(counted))
    partial["positions"] += int(target.size)
    partial["tokens"] += n_counted
    partial["ignored"] += int(target.size) - n_counted
    partial["correct"] += int(np.count_nonzero(stats.correct))
    partial["nll_sum"] = _add_sums(partial["nll_sum"], exact_sum(stats.nll[counted]))
    partial["entropy_sum"] = _add_sums(partial["entropy_sum"], exact_sum(stats.entropy[counted]))


def eval_partial(logits_block: Any, targets_block: Any, *, ignore_index: int = -100,
                 num_threads: Optional[int] = None) -> Dict[str, Any]:
    """Additive partial sums of scoring one block of positions.

    Parameters
    ----------
    logits_block : array_like of float, shape (..., V)
    targets_block : array_like of int, shape ``logits_block.shape[:-1]``
        Token ids in ``[0, V)`` or ``ignore_index``.
    ignore_index : int, default -100
    num_threads : int, optional

    Returns
    -------
    dict
        JSON-serialisable: ``positions``, ``tokens`` (scored), ``ignored``,
        ``correct`` (top-1) and the exact sums ``nll_sum`` and
        ``entropy_sum`` over scored positions (integers in units of 2**-40,
        plus counts of NaN and infinities), with ``vocab`` and ``format``.
        Merge partials with :func:`eval_merge`.

    Examples
    --------
    >>> import numpy as np, ce_kernels as ck
    >>> x = np.random.default_rng(0).standard_normal((10, 5))
    >>> t = np.arange(10) % 5
    >>> parts = [ck.eval_partial(x[:3], t[:3]), ck.eval_partial(x[3:], t[3:])]
    >>> ck.eval_merge(parts) == ck.eval_merge([ck.eval_partial(x, t)])
    True
    """
    x = v.as_float_array(logits_block, "logits", allow_half=True)
    problem = Problem(x.dtype, x.shape[-1] if x.ndim else 0, ignore_index=ignore_index,
                      num_threads=num_threads)
    t = v.as_array(targets_block, "target", "iu", "integer class indices")
    targets = problem.targets(t, x.shape[:-1])
    partial = empty_partial(problem.n_classes)
    add_block(partial, targets.hard, problem.token_stats_rows(v.rows_view(x), targets),
              problem.ignore_index)
    return partial


def _check_partial(p: Any, i: int) -> Dict[str, Any]:
    if not isinstance(p, dict) or p.get("format") != FORMAT:
        raise ValueError(f"partials[{i}] is not an evaluation partial (format {FORMAT!r})")
    for key in ("vocab",) + _COUNTERS:
        if type(p.get(key)) is not int or p[key] < 0:
            raise ValueError(f"partials[{i}][{key!r}] must be a non-negative integer, "
                             f"got {p.get(key)!r}")
    for key in _SUMS:
        s = p.get(key)
        if not isinstance(s, dict) or set(s) != {"units", "nan", "+inf", "-inf"} or \
                any(type(x) is not int for x in s.values()):
            raise ValueError(f"partials[{i}][{key!r}] must hold integer units, nan, +inf, -inf")
    if p["tokens"] + p["ignored"] != p["positions"] or p["correct"] > p["tokens"]:
        raise ValueError(f"partials[{i}] does not add up: tokens + ignored != positions, or "
                         f"more correct than tokens")
    return p


def _mean(s: Dict[str, int], count: int) -> float:
    if count == 0 or s["nan"] or (s["+inf"] and s["-inf"]):
        return math.nan
    if s["+inf"]:
        return math.inf
    if s["-inf"]:
        return -math.inf
    return s["units"] / (count * 2**UNIT_BITS)      # one correctly rounded division


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def eval_merge(partials: Iterable[Dict[str, Any]]) -> Dict[str, Any]:
    """The evaluation summary of the union of blocks, from their partials.

    Exact: the same bits for any blocking of the same positions, in any order.

    Parameters
    ----------
    partials : iterable of dict
        From :func:`eval_partial` (or ``ce-kernels eval --partial``), of the
        same vocabulary.

    Returns
    -------
    dict
        ``tokens``, ``ignored``, ``positions``, ``vocab``, ``nll`` (mean,
        nats), ``bits_per_token``, ``perplexity``, ``accuracy`` and
        ``entropy`` (mean, nats), as ``ce-kernels eval`` reports them; NaN
        means over no token.

    Raises
    ------
    ValueError
        No partials, a malformed one, or partials of different vocabularies.
    """
    parts = [_check_partial(p, i) for i, p in enumerate(partials)]
    if not parts:
        raise ValueError("eval_merge needs at least one partial")
    vocab = parts[0]["vocab"]
    for i, p in enumerate(parts):
        if p["vocab"] != vocab:
            raise ValueError(f"partials[{i}] has a vocabulary of {p['vocab']}, partials[0] "
                             f"of {vocab}")
    total = empty_partial(vocab)
    for p in parts:
        for key in _COUNTERS:
            total[key] += p[key]
        for key in _SUMS:
            total[key] = _add_sums(total[key], p[key])
    scored = total["tokens"]
    nll = _mean(total["nll_sum"], scored)
    return {
        "tokens": scored,
        "ignored": total["ignored"],
        "nll": nll,
        "bits_per_token": nll / math.log(2) if scored else math.nan,
        "perplexity": _exp(nll),
        "accuracy": total["correct"] / scored if scored else math.nan,
        "entropy": _mean(total["entropy_sum"], scored),
        "vocab": vocab,
        "positions": total["positions"],
    }
