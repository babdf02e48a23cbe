"""The fused linear layer + cross-entropy for PyTorch tensors.

The products run on ``torch.matmul`` (so bfloat16 and float16 use
PyTorch's fast CPU paths), the loss and its gradient with the fused kernel
in place on each chunk's logits, through the same chunk driver as
:func:`ce_kernels.linear_cross_entropy_with_grad`. The gradients of
``input``, ``weight`` and ``bias`` are computed in the forward pass (the
chunk's logits are gone after it) and scaled by the upstream gradient in
the backward pass; with ``reduction="none"`` the backward pass runs the
chunks again with the upstream gradient of each row.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from . import linear as _linear
from ._rows import Targets

__all__ = ["linear_cross_entropy"]

_HALF = (torch.float16, torch.bfloat16)


class TorchProducts:
    """The matrix products of the chunks with ``torch.matmul``, into
    buffers allocated once (the interface of ``linear.NumpyProducts``).
    The weight gradient of half-precision layers accumulates in float32."""

    def __init__(self, weight: Tensor, bias: Optional[Tensor], rows: int):
        self.weight, self.bias = weight, bias
        n_classes, width = weight.shape
        self.logits_buffer = weight.new_empty((rows, n_classes))
        self._hidden_buffer = weight.new_empty((rows, width))
        self._grad_buffer = weight.new_empty((rows, width))
        slab_rows = max(1, _linear.SLAB_BYTES // (width * weight.element_size()))
        self._slab = weight.new_empty((min(slab_rows, n_classes), width)) \
            if weight.dtype in _HALF else None

    def logits(self, h: Tensor) -> Tensor:
        out = self.logits_buffer[:h.shape[0]]
        torch.matmul(h, self.weight.T, out=out)
        if self.bias is not None:
            out.add_(self.bias)
        return out

    @staticmethod
    def kernel_rows(logits: Tensor) -> np.ndarray:
        from .torch import _as_numpy
        return _as_numpy(logits)

    def gather(self, rows: Tensor, index: np.ndarray) -> Tensor:
        return torch.index_select(rows, 0, torch.from_numpy(index),
                                  out=self._hidden_buffer[:index.size])

    def grad_scratch(self, n: int) -> Tensor:
        return self._grad_buffer[:n]

    @staticmethod
    def scatter(dest: Tensor, index: np.ndarray, rows: Tensor) -> None:
        dest.index_copy_(0, torch.from_numpy(index), rows)

    @staticmethod
    def zero(a: Tensor) -> None:
        a.zero_()

    def grad_hidden(self, g: Tensor, out: Tensor) -> None:
        torch.matmul(g, self.weight, out=out)

    def grad_weight(self, g: Tensor, h: Tensor, d_weight: Tensor, first: bool) -> None:
        """``d_weight (+)= g.T @ h``: one product of the BLAS accumulating
        in place, or for half precision, slabs rounded once and added to the
        float32 accumulator."""
        if self._slab is None:
            if first:
                torch.matmul(g.T, h, out=d_weight)
            else:
                d_weight.addmm_(g.T, h)
            return
        if first:
            d_weight.zero_()
        step = self._slab.shape[0]
        for start in range(0, d_weight.shape[0], step):
            stop = min(start + step, d_weight.shape[0])
            slab = self._slab[:stop - start]
            torch.matmul(g[:, start:stop].T, h, out=slab)
            d_weight[start:stop].add_(slab)

    @staticmethod
    def grad_bias(g: Tensor, d_bias: np.ndarray) -> None:
        d_bias += g.sum(0, dtype=torch.float64).numpy()


class _Call:
    """One call's checked inputs: the rows of ``input``, the layer, the
    problem and the targets, and the row count of a chunk."""

    def __init__(self, input: Tensor, weight: Tensor, target: Tensor, bias: Optional[Tensor],
                 ignore_index: Any, reduction: Any, label_smoothing: Any, z_loss: Any,
                 softcap: Any):
        from .torch import _as_numpy, _check_reduction, _check_tensor
        for name, t in (("input", input), ("weight", weight), ("target", target),
                        ("bias", bias)):
            if t is not None:
                _check_tensor(name, t)
        reduction = _check_reduction(reduction)
        for name, t in (("weight", weight), ("bias", bias)):
            if t is not None and t.dtype != input.dtype:
                raise TypeError(f"{name} has dtype {t.dtype} but input has {input.dtype}")
        layer = _linear.Layer(_as_numpy(input.detach()), _as_numpy(weight.detach()),
                              None if bias is None else _as_numpy(bias.detach()),
                              allow_half=True)
        self.problem = _linear.layer_problem(layer, None, ignore_index, reduction,
                                             label_smoothing, z_loss, softcap, None)
        self.targets: Targets = _linear.layer_targets(self.problem, _as_numpy(target), layer)
        self.batch_shape = layer.batch_shape
        self.hidden = input.detach().reshape(-1, weight.shape[1]).contiguous()
        self.weight = weight.detach().contiguous()
        self.bias = None if bias is None else bias.detach().contiguous()
        self.rows = _linear.chunk_rows_for(None, weight.shape[0], weight.element_size())

    def run(self, want_grad: bool, row_scale: Optional[np.ndarray] = None):
        """(per-row losses, and with ``want_grad`` the gradients
        ``(d_input rows, d_weight, d_bias)`` of the loss times the mean's
        scale and ``row_scale``)."""
        n_rows = self.hidden.shape[0]
        products = TorchProducts(self.weight, self.bias, min(self.rows, max(n_rows, 1)))
        row_loss = np.empty(n_rows)
        grads = None
        if want_grad:
            scale, _ = self.problem.grad_scales(None, self.batch_shape, self.targets)
            accumulate = torch.float32 if self.weight.dtype in _HALF else self.weight.dtype
            grads = _linear.Grads(torch.empty_like(self.hidden),
                                  torch.empty(self.weight.shape, dtype=accumulate),
                                  None if self.bias is None else np.zeros(self.weight.shape[0]),
                                  scale, row_scale)
        _linear.run_chunks(products, self.problem, self.targets, self.hidden, self.rows,
                           row_loss, grads)
        return row_loss, grads

    def loss(self, row_loss: np.ndarray) -> Tensor:
        return torch.from_numpy(np.array(self.problem.reduce(row_loss, self.targets,
                                                             self.batch_shape), copy=True))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, weight, bias, target, ignore_index, reduction, label_smoothing,
                z_loss, softcap):
        call = _Call(input, weight, target, bias, ignore_index, reduction, label_smoothing,
                     z_loss, softcap)
        want_grad = any(ctx.needs_input_grad[:3])
        eager = want_grad and call.problem.reduction != "none"
        row_loss, grads = call.run(eager)
        ctx.call, ctx.grads = call, grads
        ctx.shapes = (input.shape, weight.dtype)
        return call.loss(row_loss)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_loss):
        call, grads = ctx.call, ctx.grads
        input_shape, dtype = ctx.shapes
        if grads is None:           # "none": the chunks again, scaled row by row
            row_scale = np.ascontiguousarray(
                g_loss.detach().to(torch.float64).reshape(-1).numpy())
            _, grads = call.run(True, row_scale)
            factor = None
        else:
            factor = g_loss.detach().to(torch.float32 if dtype in _HALF else dtype)
        d_input = _scaled(grads.hidden, factor, dtype).reshape(input_shape)
        d_weight = _scaled(grads.weight, factor, dtype)
        d_bias = None if grads.bias is None else \
            _scaled(torch.from_numpy(grads.bias), factor, dtype)
        needs = ctx.needs_input_grad
        return (d_input if needs[0] else None, d_weight if needs[1] else None,
                d_bias if needs[2] else None, None, None, None, None, None, None)


def _scaled(grad: Tensor, factor: Optional[Tensor], dtype: torch.dtype) -> Tensor:
    """``grad * factor`` in ``dtype`` (rounded once), without a multiply
    when ``factor`` is absent or 1."""
    if factor is not None and not bool(factor == 1):
        grad = grad * factor.to(grad.dtype)
    return grad if grad.dtype == dtype else grad.to(dtype)


def linear_cross_entropy(input: Tensor, weight: Tensor, target: Tensor,
                         bias: Optional[Tensor] = None, ignore_index: int = -100,
                         reduction: str = "mean", label_smoothing: float = 0.0, *,
                         z_loss: float = 0.0, softcap: Optional[float] = None) -> Tensor:
    """``F.cross_entropy(F.linear(input, weight, bias), target, ...)`` without
    the logits: the fused linear layer + cross-entropy on CPU tensors.

    Parameters
    ----------
    input : Tensor of float32, float64, float16 or bfloat16, shape (..., D)
        Hidden states.
    weight : Tensor, shape (V, D)
        The output layer's weight, dtype of ``input``.
    target : Tensor
        Class indices of shape ``input.shape[:-1]``, or probabilities of
        shape ``input.shape[:-1] + (V,)``.
    bias : Tensor of shape (V,), optional
    ignore_index, reduction, label_smoothing
        As in ``torch.nn.functional.cross_entropy``.
    z_loss, softcap
        As in :func:`ce_kernels.torch.cross_entropy`.

    Returns
    -------
    Tensor
        The loss, float32 for half-precision inputs. Differentiable with
        respect to ``input``, ``weight`` and ``bias`` (first order).

    Notes
    -----
    Only one chunk of logits (256 MB by default) exists at a time. The
    gradients are computed during the forward pass and held until the
    backward pass (except for ``reduction="none"``, which runs the chunks
    again in the backward pass).

    Examples
    --------
    >>> import torch, ce_kernels.torch as ckt                       # doctest: +SKIP
    >>> loss = ckt.linear_cross_entropy(hidden, lm_head.weight, labels)  # doctest: +SKIP
    >>> loss.backward()                                             # doctest: +SKIP
    """
    from .torch import _torch_errors
    with _torch_errors():
        return _LinearCrossEntropy.apply(input, weight, bias, target, ignore_index, reduction,
                                         label_smoothing, z_loss, softcap)
