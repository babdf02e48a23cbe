"""Vocabulary-parallel cross-entropy over MPI, with NumPy arrays.

Each process of a communicator holds the logits of one shard of the
vocabulary (in rank order, unless ``vocab_start`` says otherwise) and the
same targets (global class ids). One collective exchanges 136 bytes per row
and process (``BYTES_PER_ROW``), never the logits; every process then
holds the same loss, and computes the gradient of its own shard alone.

Needs ``mpi4py`` and an MPI library (the ``mpich`` wheel will do:
``pip install ce_kernels[distributed]``). Run with, for example::

    mpiexec -n 2 python train.py
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from . import _api
from . import _sharded

__all__ = ["BYTES_PER_ROW", "vocab_parallel_cross_entropy",
           "vocab_parallel_cross_entropy_with_grad"]

BYTES_PER_ROW = _sharded.BYTES_PER_ROW


def _world() -> Any:
    try:
        from mpi4py import MPI
    except ImportError:
        raise ImportError("ce_kernels.mpi needs mpi4py and an MPI library: "
                          "pip install ce_kernels[distributed]") from None
    return MPI.COMM_WORLD


def _merged(logits_shard, target, comm, vocab_start, vocab_size, weight, ignore_index,
            label_smoothing, softcap, num_threads):
    comm = _world() if comm is None else comm

    def gather_rows(data: np.ndarray):
        everyone = np.empty((comm.Get_size(),) + data.shape, dtype=np.float64)
        comm.Allgather(data, everyone)
        return list(everyone)

    return _sharded.gathered_row_stats(
        logits_shard, target, rank=comm.Get_rank(), gather_objects=comm.allgather,
        gather_rows=gather_rows, vocab_start=vocab_start, vocab_size=vocab_size, weight=weight,
        ignore_index=ignore_index, label_smoothing=label_smoothing, softcap=softcap,
        num_threads=num_threads)


def vocab_parallel_cross_entropy_with_grad(
        logits_shard: Any, target: Any, *, comm: Any = None, vocab_start: Optional[int] = None,
        vocab_size: Optional[int] = None, weight: Any = None, ignore_index: int = -100,
        reduction: str = "mean", label_smoothing: float = 0.0, z_loss: float = 0.0,
        softcap: Optional[float] = None, grad_output: Any = None,
        num_threads: Optional[int] = None) -> Tuple[Any, np.ndarray]:
    """The cross-entropy of logits whose vocabulary is split over the
    processes of ``comm``, and the gradient of this process's shard.

    A collective call: every process of ``comm`` calls it, with the same
    targets and options.

    Parameters
    ----------
    logits_shard : array_like of float32, float64, float16 or bfloat16, shape (..., V_shard)
        This process's classes of the logits.
    target : array_like of int, shape ``logits_shard.shape[:-1]``
        Global class ids, the same on every process.
    comm : mpi4py.MPI.Comm, optional
        Defaults to ``MPI.COMM_WORLD``.
    vocab_start : int, optional
        Global class id of this shard's first column; by default the shards
        follow each other in rank order. Give it on every process or none.
    vocab_size : int, optional
        Classes in all; by default the sum of the shards' widths.
    weight : array_like of shape (vocab_size,), optional
        Weights of all classes (the same on every process).
    ignore_index, reduction, label_smoothing, z_loss, softcap, grad_output, num_threads
        As in :func:`ce_kernels.cross_entropy_with_grad`.

    Returns
    -------
    loss : numpy scalar or ndarray
        The same on every process: that of :func:`ce_kernels.cross_entropy`
        on the whole logits.
    grad : ndarray
        ``d loss / d logits_shard``, of the shape and dtype of the shard.

    Raises
    ------
    ValueError, IndexError, TypeError
        As :func:`ce_kernels.row_stats`; an error on one process is raised
        on every process (a RuntimeError naming its rank on the others).
    """
    layout, merged = _merged(logits_shard, target, comm, vocab_start, vocab_size, weight,
                             ignore_index, label_smoothing, softcap, num_threads)
    loss = _sharded.loss_from_row_stats(merged, target, ignore_index=ignore_index,
                                        reduction=reduction, z_loss=z_loss)
    _, grad = _api.cross_entropy_with_grad(
        logits_shard, target, lse=merged.lse, vocab_start=layout.vocab_start,
        vocab_size=layout.vocab_size, weight=weight, ignore_index=ignore_index,
        reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
        grad_output=grad_output, num_threads=num_threads)
    return loss, grad


def vocab_parallel_cross_entropy(
        logits_shard: Any, target: Any, *, comm: Any = None, vocab_start: Optional[int] = None,
        vocab_size: Optional[int] = None, weight: Any = None, ignore_index: int = -100,
        reduction: str = "mean", label_smoothing: float = 0.0, z_loss: float = 0.0,
        softcap: Optional[float] = None, num_threads: Optional[int] = None) -> Any:
    """The loss of :func:`vocab_parallel_cross_entropy_with_grad`, without
    the gradient (a collective call).

    Examples
    --------
    Under ``mpiexec -n 2``, each process holding half of 1000 classes::

        from mpi4py import MPI
        from ce_kernels.mpi import vocab_parallel_cross_entropy
        rank = MPI.COMM_WORLD.Get_rank()
        loss = vocab_parallel_cross_entropy(logits[:, 500 * rank:500 * (rank + 1)], target)
    """
    _, merged = _merged(logits_shard, target, comm, vocab_start, vocab_size, weight,
                        ignore_index, label_smoothing, softcap, num_threads)
    return _sharded.loss_from_row_stats(merged, target, ignore_index=ignore_index,
                                        reduction=reduction, z_loss=z_loss)
