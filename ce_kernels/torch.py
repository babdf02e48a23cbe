"""A drop-in for ``torch.nn.functional.cross_entropy`` on CPU tensors.

The loss and its gradient are computed together in the forward pass by the
fused kernel, through zero-copy NumPy views of the tensors; backward only
scales the stored gradient. PyTorch is optional for ce_kernels: this module
is the only one that imports it.

>>> import torch, ce_kernels.torch as ckt                     # doctest: +SKIP
>>> loss = ckt.cross_entropy(logits, target)                  # doctest: +SKIP
>>> loss.backward()                                           # doctest: +SKIP
"""
from __future__ import annotations

from typing import Optional

import numpy as np

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised without torch
    raise ImportError(
        "ce_kernels.torch needs PyTorch (pip install torch); the rest of ce_kernels works "
        "without it"
    ) from exc

from . import _api
from . import _validation as v

__all__ = ["cross_entropy", "CrossEntropyFunction"]

_SUPPORTED = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _bfloat16_numpy_dtype() -> np.dtype:
    try:
        import ml_dtypes
    except ImportError:
        raise TypeError("bfloat16 tensors need the ml_dtypes package (pip install ml_dtypes) "
                        "to be viewed as NumPy arrays") from None
    return np.dtype(ml_dtypes.bfloat16)


def _as_numpy(t: "torch.Tensor") -> np.ndarray:
    """A NumPy view of a CPU tensor (bfloat16 through its bit pattern)."""
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(_bfloat16_numpy_dtype())
    return t.numpy()


def _check_tensor(name: str, t: "torch.Tensor") -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} is on {t.device}; ce_kernels computes on the CPU only "
                         f"(move it with .cpu(), or use torch.nn.functional.cross_entropy)")


class CrossEntropyFunction(torch.autograd.Function):
    """Autograd function: forward computes loss and gradient in one pass;
    backward multiplies the stored gradient by the incoming one."""

    @staticmethod
    def forward(ctx, logits, target, weight, ignore_index, reduction, label_smoothing,
                z_loss, softcap, needs_grad):
        # logits here are (..., C), class axis last (moved by cross_entropy)
        x = _as_numpy(logits.detach())
        t = _as_numpy(target.detach())
        w = None if weight is None else _as_numpy(weight.detach()).astype(x.dtype, copy=False)
        options = dict(weight=w, ignore_index=ignore_index, reduction=reduction,
                       label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap)
        if needs_grad:
            loss, grad = _api.cross_entropy_with_grad(x, t, **options)
            ctx.save_for_backward(torch.from_numpy(np.asarray(grad).view(np.int16))
                                  .view(torch.bfloat16) if logits.dtype == torch.bfloat16
                                  else torch.from_numpy(grad))
        else:
            loss = _api.cross_entropy(x, t, **options)
        ctx.reduction = reduction
        out = torch.from_numpy(np.asarray(loss))
        # losses of half-precision logits come back in the input dtype, as PyTorch
        return out.to(logits.dtype) if out.dtype != logits.dtype else out

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        if grad_output.dim() == 0 and grad_output.item() == 1.0:
            return grad, None, None, None, None, None, None, None, None  # loss.backward()
        if ctx.reduction == "none":
            g = grad * grad_output.unsqueeze(-1).to(grad.dtype)
        else:
            g = grad * grad_output.to(grad.dtype)
        return g, None, None, None, None, None, None, None, None


def cross_entropy(input: "torch.Tensor", target: "torch.Tensor",
                  weight: Optional["torch.Tensor"] = None, ignore_index: int = -100,
                  reduction: str = "mean", label_smoothing: float = 0.0, *,
                  z_loss: float = 0.0, softcap: Optional[float] = None) -> "torch.Tensor":
    """``torch.nn.functional.cross_entropy`` computed by ce_kernels.

    Same signature and semantics (for inputs of more than two dimensions the
    class dimension is dim 1), plus ``z_loss`` and ``softcap`` as in
    :func:`ce_kernels.cross_entropy`. CPU tensors of float32, float64,
    float16 or bfloat16 (bfloat16 needs ``ml_dtypes``). The gradient with
    respect to ``input`` is computed in the forward pass; gradients with
    respect to ``target`` and ``weight`` are not supported.

    Raises
    ------
    ValueError
        A CUDA (or other non-CPU) tensor, or a target that requires grad.
    TypeError
        An unsupported dtype.
    """
    _check_tensor("input", input)
    _check_tensor("target", target)
    if weight is not None:
        _check_tensor("weight", weight)
    if input.dtype not in _SUPPORTED:
        raise TypeError(f"input has dtype {input.dtype}; supported: float32, float64, float16, "
                        f"bfloat16")
    if target.requires_grad:
        raise ValueError("gradients with respect to target are not supported by "
                         "ce_kernels.torch.cross_entropy")
    if weight is not None and weight.requires_grad:
        raise ValueError("gradients with respect to weight are not supported by "
                         "ce_kernels.torch.cross_entropy")
    x = input
    soft = target.is_floating_point()
    if x.dim() > 2:  # PyTorch's layout (N, C, d1, ...) -> ours (N, d1, ..., C)
        x = x.movedim(1, -1)
        if soft:
            target = target.movedim(1, -1)
    x = x.contiguous() if x.dtype == torch.bfloat16 else x
    target = target.contiguous() if target.dtype == torch.bfloat16 else target
    if soft and target.dtype != x.dtype:
        target = target.to(x.dtype)
    needs_grad = torch.is_grad_enabled() and input.requires_grad
    return CrossEntropyFunction.apply(x, target, weight, ignore_index, reduction,
                                      label_smoothing, z_loss, softcap, needs_grad)
