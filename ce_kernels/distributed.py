"""Vocabulary-parallel cross-entropy over ``torch.distributed``.

Each process of a group holds the logits of one shard of the vocabulary
(tensor parallelism, in rank order unless ``vocab_start`` says otherwise)
and the same targets (global class ids). The forward pass exchanges 64
bytes per row and process (``BYTES_PER_ROW``: the row statistics of
:func:`ce_kernels.row_stats`, never the logits) and merges them in rank
order, so every process holds the same loss, bit for bit; the backward
pass is local: each process computes its own shard's gradient from the
rows' log-sum-exp.

CPU tensors and the ``gloo`` backend; works under ``torchrun`` and
``torch.multiprocessing`` (spawn)::

    torchrun --nproc-per-node 2 train.py
"""
from __future__ import annotations

from typing import Any, List, Optional

import numpy as np

try:
    import torch
    import torch.distributed as dist
except ImportError as exc:  # pragma: no cover - exercised without torch
    raise ImportError(
        "ce_kernels.distributed needs PyTorch (pip install 'ce_kernels[distributed]'); the "
        "rest of ce_kernels works without it"
    ) from exc

from . import _api
from . import _sharded
from .torch import _as_numpy, _grad_buffer

__all__ = ["BYTES_PER_ROW", "vocab_parallel_cross_entropy"]

BYTES_PER_ROW = _sharded.BYTES_PER_ROW


def _gatherers(group: Any):
    world = dist.get_world_size(group)

    def gather_objects(obj: Any) -> List[Any]:
        everyone: List[Any] = [None] * world
        dist.all_gather_object(everyone, obj, group=group)
        return everyone

    def gather_rows(data: np.ndarray) -> List[np.ndarray]:
        mine = torch.from_numpy(data)
        everyone = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(everyone, mine, group=group)
        return [t.numpy() for t in everyone]

    return gather_objects, gather_rows


def _check_tensor(name: str, t: Any) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be on the CPU, got device {t.device}")


class _VocabParallelCrossEntropy(torch.autograd.Function):

    @staticmethod
    def forward(ctx, logits, target, weight, group, vocab_start, vocab_size, ignore_index,
                reduction, label_smoothing, z_loss, softcap):
        x = _as_numpy(logits.detach().contiguous())
        t = target.detach().numpy()
        w = None if weight is None else _as_numpy(weight.detach())
        gather_objects, gather_rows = _gatherers(group)
        layout, merged = _sharded.gathered_row_stats(
            x, t, rank=dist.get_rank(group), gather_objects=gather_objects,
            gather_rows=gather_rows, vocab_start=vocab_start, vocab_size=vocab_size, weight=w,
            ignore_index=ignore_index, label_smoothing=label_smoothing, softcap=softcap)
        loss = _sharded.loss_from_row_stats(merged, t, ignore_index=ignore_index,
                                            reduction=reduction, z_loss=z_loss)
        ctx.save_for_backward(logits, target, weight)
        ctx.lse = merged.lse
        ctx.options = dict(vocab_start=layout.vocab_start, vocab_size=layout.vocab_size,
                           ignore_index=ignore_index, reduction=reduction,
                           label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap)
        # in the logits' dtype, as torch.nn.functional.cross_entropy returns it
        return torch.from_numpy(np.asarray(loss)).to(logits.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        logits, target, weight = ctx.saved_tensors
        grad = _grad_buffer(logits.shape, logits.dtype)
        _api.cross_entropy_with_grad(
            _as_numpy(logits.detach()), target.numpy(), lse=ctx.lse,
            weight=None if weight is None else _as_numpy(weight.detach()),
            grad_output=grad_loss.detach().to(torch.float64).numpy(), out=_as_numpy(grad),
            **ctx.options)
        return (grad,) + (None,) * 10


def vocab_parallel_cross_entropy(logits_shard: torch.Tensor, target: torch.Tensor, *,
                                 group: Any = None, vocab_start: Optional[int] = None,
                                 vocab_size: Optional[int] = None,
                                 weight: Optional[torch.Tensor] = None, ignore_index: int = -100,
                                 reduction: str = "mean", label_smoothing: float = 0.0,
                                 z_loss: float = 0.0,
                                 softcap: Optional[float] = None) -> torch.Tensor:
    """Cross-entropy of logits whose vocabulary is split over a process group.

    A collective call: every process of ``group`` calls it with its own
    shard, the same targets and the same options. Differentiable with
    respect to ``logits_shard``; its backward pass needs no communication.

    Parameters
    ----------
    logits_shard : torch.Tensor of float32, float64 or bfloat16, shape (..., V_shard)
        This process's classes of the logits (CPU).
    target : torch.Tensor of int64, shape ``logits_shard.shape[:-1]``
        Global class ids, the same on every process.
    group : ProcessGroup, optional
        Defaults to the default (world) group.
    vocab_start : int, optional
        Global class id of this shard's first column; by default the shards
        follow each other in rank order. Give it on every process or none.
    vocab_size : int, optional
        Classes in all; by default the sum of the shards' widths.
    weight : torch.Tensor of shape (vocab_size,), optional
        Weights of all classes, the same on every process.
    ignore_index, reduction, label_smoothing, z_loss, softcap
        As in :func:`ce_kernels.torch.cross_entropy`.

    Returns
    -------
    torch.Tensor
        The loss of the whole vocabulary, identical on every process (a
        scalar, or per position with ``reduction="none"``), in the dtype of
        the logits as PyTorch gives it (computed in float64 per row).

    Raises
    ------
    TypeError, ValueError, IndexError
        Bad input; an error on one process is raised on every process (a
        RuntimeError naming its rank on the others), so none hangs.

    Examples
    --------
    Under ``torchrun --nproc-per-node 2``, each process holding half of 1000
    classes::

        import torch.distributed as dist
        from ce_kernels.distributed import vocab_parallel_cross_entropy
        dist.init_process_group("gloo")
        rank = dist.get_rank()
        shard = logits[:, 500 * rank:500 * (rank + 1)].detach().requires_grad_()
        loss = vocab_parallel_cross_entropy(shard, target)
        loss.backward()          # shard.grad: this process's columns only
    """
    _check_tensor("logits_shard", logits_shard)
    _check_tensor("target", target)
    if weight is not None:
        _check_tensor("weight", weight)
    if not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialized: call "
                           "torch.distributed.init_process_group first")
    return _VocabParallelCrossEntropy.apply(logits_shard, target, weight, group, vocab_start,
                                            vocab_size, ignore_index, reduction,
                                            label_smoothing, z_loss, softcap)
