"""Drop-ins for PyTorch's softmax and sigmoid losses on CPU tensors.

``cross_entropy`` and ``binary_cross_entropy_with_logits`` (and the modules
``CrossEntropyLoss`` and ``BCEWithLogitsLoss``) compute the loss and its
gradient in one pass of the fused kernels, through zero-copy NumPy views of
the tensors. They are registered as PyTorch custom operators
(``torch.ops.ce_kernels.*``) with fake implementations, an autograd formula
that is itself differentiable (exact second derivatives) and a vmap rule, so
they work under ``torch.compile(fullgraph=True)``, ``torch.func.grad`` and
``torch.func.vmap``. ``linear_cross_entropy`` is the fused linear layer +
cross-entropy (``ce_kernels._torch_linear``). PyTorch is optional for
ce_kernels: only this module and those it names (``ce_kernels.distributed``
for vocabulary-parallel training) import it.

>>> import torch, ce_kernels.torch as ckt                     # doctest: +SKIP
>>> loss = ckt.cross_entropy(logits, target)                  # doctest: +SKIP
>>> loss.backward()                                           # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, NamedTuple, Optional, Tuple

import numpy as np

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised without torch
    raise ImportError(
        "ce_kernels.torch needs PyTorch (pip install torch); the rest of ce_kernels works "
        "without it"
    ) from exc

from torch import Tensor

from . import _api
from . import _family
from . import _validation as v
from ._rows import RowExtras
from ._torch_linear import linear_cross_entropy

__all__ = [
    "cross_entropy",
    "binary_cross_entropy_with_logits",
    "kl_div",
    "CrossEntropyLoss",
    "BCEWithLogitsLoss",
    "KLDivLoss",
    "CrossEntropyOutput",
    "InputError",
    "InputTypeError",
    "patch_transformers",
    "unpatch_transformers",
    "linear_cross_entropy",
]

_SUPPORTED = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_HALF = (torch.float16, torch.bfloat16)
_REDUCTIONS = ("mean", "sum", "none")


# ---- errors -------------------------------------------------------------------

class InputError(ValueError, RuntimeError):
    """A bad argument. Both a ``ValueError`` (as ce_kernels raises) and a
    ``RuntimeError`` (as PyTorch raises for most bad loss arguments), so
    code written for either catches it."""


class InputTypeError(TypeError, RuntimeError):
    """An argument of an unsupported type or dtype (PyTorch raises
    ``RuntimeError`` for these)."""


@contextlib.contextmanager
def _torch_errors():
    """Re-raise ce_kernels' ValueError/TypeError as the classes above;
    IndexError (a class index out of range) is what PyTorch raises too."""
    try:
        yield
    except (InputError, InputTypeError):
        raise
    except ValueError as exc:
        raise InputError(str(exc)) from None
    except TypeError as exc:
        raise InputTypeError(str(exc)) from None


def _check_tensor(name: str, t: Any) -> None:
    if not isinstance(t, torch.Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise InputError(f"{name} is on {t.device}; ce_kernels computes on the CPU only "
                         f"(move it with .cpu(), or use the torch.nn.functional loss)")


def _check_reduction(reduction: Any, size_average: Any = None, reduce: Any = None,
                     allowed: Tuple[str, ...] = _REDUCTIONS) -> str:
    if size_average is not None or reduce is not None:
        # the deprecated pair, resolved as PyTorch resolves it
        from torch.nn import _reduction
        reduction = _reduction.legacy_get_string(size_average, reduce)
    if not isinstance(reduction, str) or reduction not in allowed:
        raise InputError(f"{reduction} is not a valid value for reduction "
                         f"(expected one of {allowed})")
    return reduction


def _no_grad_needed(name: str, t: Optional[Tensor], fn: str) -> None:
    if t is not None and t.requires_grad:
        raise InputError(f"gradients with respect to {name} are not supported by "
                         f"ce_kernels.torch.{fn}; pass {name}.detach() (or use the "
                         f"torch.nn.functional loss)")


# ---- NumPy views --------------------------------------------------------------

def _bfloat16_numpy_dtype() -> np.dtype:
    try:
        import ml_dtypes
    except ImportError:
        raise InputTypeError("bfloat16 tensors need the ml_dtypes package (pip install "
                             "ml_dtypes) to be viewed as NumPy arrays") from None
    return np.dtype(ml_dtypes.bfloat16)


def _as_numpy(t: Tensor) -> np.ndarray:
    """A NumPy view of a CPU tensor (bfloat16 through its bit pattern)."""
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(_bfloat16_numpy_dtype())
    return t.numpy()


def _loss_dtype(dtype: torch.dtype) -> torch.dtype:
    """What the kernels return losses in: float32 for half precision."""
    return torch.float32 if dtype in _HALF else dtype


def _grad_buffer(shape, dtype: torch.dtype) -> Tensor:
    """A new C-contiguous tensor for the gradient, allocated by NumPy.

    NumPy asks the kernel for transparent huge pages on large allocations
    (``madvise(MADV_HUGEPAGE)``); PyTorch's CPU allocator does not. The
    gradient is written once, so first-touch page faults dominate its cost:
    on a 2048 x 32000 float32 buffer (with transparent huge pages on
    ``madvise``), writing NumPy's memory took about a quarter of the time of
    writing ``torch.empty``'s."""
    if dtype == torch.bfloat16:
        return torch.from_numpy(np.empty(shape, dtype=np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.empty(shape, dtype=_NUMPY_DTYPES[dtype]))


_NUMPY_DTYPES = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}


# ---- softmax cross-entropy: the operator --------------------------------------

def _loss_options(weight: Optional[Tensor], ignore_index: int, reduction: str,
                  label_smoothing: float, z_loss: float, softcap: float) -> dict:
    """The operator's options as the NumPy loss functions take them."""
    return dict(weight=None if weight is None else _as_numpy(weight), ignore_index=ignore_index,
                reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss,
                softcap=softcap if softcap > 0 else None)


@torch.library.custom_op("ce_kernels::cross_entropy", mutates_args=())
def _ce_op(logits: Tensor, target: Tensor, weight: Optional[Tensor], ignore_index: int,
           reduction: str, label_smoothing: float, z_loss: float, softcap: float,
           want_grad: bool, want_row_stats: bool = False
           ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(loss, d sum(loss) / d logits, row log-sum-exp, row argmax) with the
    class axis last. The gradient is empty when ``want_grad`` is False; the
    log-sum-exp (float64) and argmax (int64) of every position, from the
    same pass, are empty when ``want_row_stats`` is False. ``softcap`` 0
    means none. Losses of half-precision logits are float32."""
    x = _as_numpy(logits)
    options = _loss_options(weight, ignore_index, reduction, label_smoothing, z_loss, softcap)
    batch_shape = tuple(logits.shape[:-1])
    extras = RowExtras.empty(math.prod(batch_shape)) if want_row_stats else None
    with _torch_errors():
        if want_grad:
            grad = _grad_buffer(logits.shape, logits.dtype)
            loss, _ = _api._loss_call(x, _as_numpy(target), want_grad=True,
                                      out=_as_numpy(grad), extras=extras, num_threads=None,
                                      **options)
        else:
            grad = logits.new_empty((0,))
            loss = _api._loss_call(x, _as_numpy(target), want_grad=False, extras=extras,
                                   num_threads=None, **options)
    if extras is None:
        lse, argmax = logits.new_empty((0,), dtype=torch.float64), \
            logits.new_empty((0,), dtype=torch.int64)
    else:
        lse = torch.from_numpy(extras.lse).reshape(batch_shape)
        argmax = torch.from_numpy(extras.argmax).reshape(batch_shape)
    return torch.from_numpy(np.array(loss, copy=True)), grad, lse, argmax


@_ce_op.register_fake
def _ce_fake(logits, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap,
             want_grad, want_row_stats=False):
    shape = logits.shape[:-1] if reduction == "none" else ()
    loss = logits.new_empty(shape, dtype=_loss_dtype(logits.dtype))
    grad = logits.new_empty(logits.shape if want_grad else (0,))
    row_shape = logits.shape[:-1] if want_row_stats else (0,)
    return (loss, grad, logits.new_empty(row_shape, dtype=torch.float64),
            logits.new_empty(row_shape, dtype=torch.int64))


def _ce_setup_context(ctx, inputs, output):
    logits, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap = inputs[:8]
    grad = output[1]
    # The gradient output is unused in a first backward; without this,
    # autograd would fill a logits-sized tensor of zeros for it.
    ctx.set_materialize_grads(False)
    _keep_gradient(ctx, (logits, target, weight), grad, output[2:])
    ctx.options = (ignore_index, reduction, label_smoothing, z_loss, softcap)
    ctx.save_for_forward(logits, target, weight, grad)


def _ce_jvp(ctx, logits_t, *_):
    """Forward mode (torch.func.jvp, jacfwd, hessian): the loss moves by
    grad . t (per row for "none") and the gradient by H t."""
    logits, target, weight, grad = ctx.saved_tensors
    ignore_index, reduction, label_smoothing, z_loss, softcap = ctx.options
    if logits_t is None:
        return None, None
    with_grad = grad.numel() == logits.numel() or logits.numel() == 0
    if not with_grad:            # called without want_grad: the gradient output is empty
        grad = _ce_op(logits, target, weight, ignore_index, reduction, label_smoothing,
                      z_loss, softcap, True, False)[1]
    product = grad.to(_loss_dtype(grad.dtype)) * logits_t.to(_loss_dtype(grad.dtype))
    loss_t = product.sum(-1) if reduction == "none" else product.sum()
    if not with_grad:
        return loss_t, logits_t.new_zeros((0,)), None, None
    grad_t = _ce_hvp(logits, target, weight, ignore_index, reduction, label_smoothing, z_loss,
                     softcap, logits_t)
    return loss_t, grad_t, None, None


def _keep_gradient(ctx, tensors, grad: Tensor, row_stats=()) -> None:
    """Save the inputs backward needs, and the forward's gradient; mark the
    per-row statistics (reported detached) non-differentiable.

    In eager mode the gradient is kept as a plain attribute, not a saved
    tensor: ``loss.backward()`` then hands the buffer itself to autograd
    (nothing copied) and forgets it, and a later backward through a
    retained graph computes it again, so no one writes over a gradient that
    is still needed. Traced (torch.compile) and transformed (torch.func)
    calls save it as usual; they never hand it over."""
    compiling = torch.compiler.is_compiling()
    plain = (not compiling and type(grad) is torch.Tensor
             and not torch._C._functorch.is_functorch_wrapped_tensor(grad))
    ctx.plain = plain
    if plain:
        ctx.save_for_backward(*tensors)
        ctx.grad = grad.detach()     # detached: no reference cycle through grad_fn
    else:
        ctx.save_for_backward(*tensors, grad)
    if compiling:
        # A traced backward receives a (zero) tangent for every
        # differentiable output and would compute the Hessian-vector product
        # of it; compiled graphs do not support double backward anyway.
        ctx.mark_non_differentiable(grad, *row_stats)
    elif row_stats:
        ctx.mark_non_differentiable(*row_stats)


def _first_order(ctx, saved, g_loss: Tensor, reduction: str, recompute) -> Tensor:
    """``grad * g_loss``: the gradient of the loss with respect to the logits.

    ``recompute(differentiable)`` gives the gradient again from the saved
    inputs; with ``differentiable`` it comes from the autograd function
    applied again, so that create_graph=True yields a gradient that is
    itself differentiable (its backward is the Hessian-vector product)."""
    if not ctx.plain:
        return _scale(saved[-1], g_loss, reduction)
    if torch.is_grad_enabled():
        return _scale(recompute(True), g_loss, reduction)
    grad = ctx.grad
    if grad is None:                 # handed over by an earlier backward
        grad = recompute(False)
    if reduction in ("mean", "sum") and _is_one(g_loss):
        ctx.grad = None
        return grad
    return _scale(grad, g_loss, reduction)


def _is_one(g: Tensor) -> bool:
    """True when ``g`` is a plain (not traced, not transformed) tensor equal
    to 1, the upstream gradient of ``loss.backward()``."""
    # Tensor subclasses (fake, functional tensors of a trace) and functorch
    # wrappers have no value to test; the check is then skipped.
    if (torch.compiler.is_compiling() or torch.is_grad_enabled() or g.dim() != 0
            or type(g) is not torch.Tensor or torch._C._functorch.is_functorch_wrapped_tensor(g)):
        return False
    return bool(g == 1)


def _scale(grad: Tensor, g_loss: Tensor, reduction: str) -> Tensor:
    """``grad`` times the upstream gradient of the loss: a scalar for "mean"
    and "sum", one per row for "none", one per element for "elementwise"."""
    if reduction == "none":
        g_loss = g_loss.unsqueeze(-1)
    elif reduction == "elementwise":
        pass
    elif _is_one(g_loss):
        return grad
    if grad.dtype != g_loss.dtype:
        # half-precision gradient: scale in float32, round once
        return (grad.to(g_loss.dtype) * g_loss).to(grad.dtype)
    return grad * g_loss


def _ce_backward(ctx, g_loss, g_grad, *_row_stats):
    saved = ctx.saved_tensors
    logits, target, weight = saved[:3]
    ignore_index, reduction, label_smoothing, z_loss, softcap = ctx.options
    result = None
    if g_loss is not None:
        def recompute(differentiable):
            fn = _cross_entropy_function().apply if differentiable else _ce_op
            return fn(logits, target, weight, ignore_index, reduction, label_smoothing, z_loss,
                      softcap, True, False)[1]

        result = _first_order(ctx, saved, g_loss, reduction, recompute)
    if g_grad is not None and not torch.compiler.is_compiling():
        # Second order: the gradient output was used (double backward).
        # Traced, it is non-differentiable (see _keep_gradient) and its
        # tangent a zero the trace fills in.
        h = _ce_hvp(logits, target, weight, ignore_index, reduction, label_smoothing, z_loss,
                    softcap, g_grad)
        result = h if result is None else result + h
    return result, None, None, None, None, None, None, None, None, None


def _ce_hvp(x: Tensor, target: Tensor, weight: Optional[Tensor], ignore_index: int,
            reduction: str, label_smoothing: float, z_loss: float, softcap: float,
            vec: Tensor) -> Tensor:
    """The Hessian of the loss (as the op's gradient output defines it)
    applied to ``vec``, row by row, in differentiable PyTorch operations.

    Per row, with y the (soft-capped) logits, p = softmax(y), c the weighted
    smoothed target distribution and a = sum(c): the gradient is
    a p - c (+ 2 z lse p) and its Jacobian applied to u is
    a (p u - p (p.u)) (+ 2 z (p (p.u) + lse (p u - p (p.u)))). Soft-capping
    y = s tanh(x / s) adds the chain rule: J H J v + g_y y'' v."""
    dtype = _loss_dtype(x.dtype)
    xf, u = x.to(dtype), vec.to(dtype)
    n_classes = x.shape[-1]
    if softcap > 0:
        th = torch.tanh(xf / softcap)
        y, jac = softcap * th, 1 - th * th
        u = u * jac
    else:
        y = xf
    lse = torch.logsumexp(y, -1, keepdim=True)
    p = torch.exp(y - lse)
    w = (torch.ones(n_classes, dtype=dtype) if weight is None else weight.to(dtype))
    eps = label_smoothing
    if target.is_floating_point():
        q = target.to(dtype)
        if eps:
            q = (1 - eps) * q + eps / n_classes
        c = w * q
        counted = torch.ones(x.shape[:-1] + (1,), dtype=dtype)
        denominator = math.prod(x.shape[:-1])
    else:
        keep = target != ignore_index
        safe = torch.where(keep, target, torch.zeros_like(target)).long()
        counted = keep.unsqueeze(-1).to(dtype)
        one_hot = torch.nn.functional.one_hot(safe, n_classes).to(dtype)
        c = ((1 - eps) * one_hot + eps / n_classes) * w * counted
        denominator = (w[safe] * counted.squeeze(-1)).sum()
    a = c.sum(-1, keepdim=True)
    pu = (p * u).sum(-1, keepdim=True)
    centred = p * u - p * pu
    hv = a * centred
    if z_loss:
        hv = hv + 2 * z_loss * counted * (p * pu + lse * centred)
    if softcap > 0:
        g_y = a * p - c
        if z_loss:
            g_y = g_y + 2 * z_loss * counted * lse * p
        # d2y/dx2 = -2 tanh(x/s) (1 - tanh^2) / s
        hv = jac * hv + g_y * (-2.0 / softcap) * th * jac * vec.to(dtype)
    if reduction == "mean":
        hv = hv / denominator
        if not target.is_floating_point():
            # ignored rows stay exactly 0, as the gradient, even when the
            # denominator is 0 (all ignored)
            hv = torch.where(counted > 0, hv, torch.zeros_like(hv))
    return hv.to(x.dtype)


_ce_op.register_autograd(_ce_backward, setup_context=_ce_setup_context)


class _CrossEntropy(torch.autograd.Function):
    """The operator with the same formula as a setup_context-style autograd
    function, the form torch.func transforms (grad, vmap, jacrev) accept;
    the public functions call this."""

    generate_vmap_rule = True

    @staticmethod
    def forward(logits, target, weight, ignore_index, reduction, label_smoothing, z_loss,
                softcap, want_grad, want_row_stats):
        return _ce_op(logits, target, weight, ignore_index, reduction, label_smoothing, z_loss,
                      softcap, want_grad, want_row_stats)

    setup_context = staticmethod(_ce_setup_context)
    backward = staticmethod(_ce_backward)


class _CrossEntropyForwardAD(_CrossEntropy):
    """With forward mode (jvp) too; torch.compile cannot trace a custom
    jvp, so compiled code uses :class:`_CrossEntropy`."""

    jvp = staticmethod(_ce_jvp)


def _cross_entropy_function():
    return _CrossEntropy if torch.compiler.is_compiling() else _CrossEntropyForwardAD


@_ce_op.register_vmap
def _ce_vmap(info, in_dims, logits, target, weight, *options):
    """One call per vmapped slice: the kernels take a batch of rows but a
    reduction per slice, so slices are computed one by one and stacked."""
    slices = []
    tensors = (logits, target, weight)
    for b in range(info.batch_size):
        args = [t if d is None else t.select(d, b) for t, d in zip(tensors, in_dims[:3])]
        slices.append(_ce_op(*args, *options))
    if not slices:
        raise InputError("ce_kernels.torch: vmap over a dimension of size 0 is not supported")
    return tuple(torch.stack(outputs) for outputs in zip(*slices)), (0, 0, 0, 0)


class _CrossEntropyInPlace(torch.autograd.Function):
    """Eager only: the gradient is written over the logits in the forward
    pass, so no tensor of their size is allocated (the memory of a
    language model's largest activation is reused for its gradient).

    The logits' version counter is bumped, so an operation that saved them
    for its own backward fails loudly there instead of using gradients as
    logits. The gradient is handed over once: a second backward through the
    same graph, and double backward, raise."""

    @staticmethod
    def forward(ctx, logits, target, weight, ignore_index, reduction, label_smoothing, z_loss,
                softcap, want_row_stats):
        x = _as_numpy(logits)
        batch_shape = tuple(logits.shape[:-1])
        extras = RowExtras.empty(math.prod(batch_shape), want_row_stats, want_row_stats)
        with _torch_errors():
            loss, _ = _api._loss_call(
                x, _as_numpy(target), want_grad=True, out=x, extras=extras, num_threads=None,
                **_loss_options(weight, ignore_index, reduction, label_smoothing, z_loss,
                                softcap))
        torch.autograd.graph.increment_version(logits)
        ctx.grad = logits.detach()
        ctx.reduction = reduction
        row_lse, argmax = (torch.from_numpy(a).reshape(batch_shape) if a is not None else None
                           for a in extras)
        if row_lse is not None:
            ctx.mark_non_differentiable(row_lse, argmax)
        return torch.from_numpy(np.array(loss, copy=True)), row_lse, argmax

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_loss, *_row_stats):
        grad, ctx.grad = ctx.grad, None
        if grad is None:
            raise RuntimeError("ce_kernels.torch.cross_entropy(inplace_backward=True) hands its "
                               "gradient over once: backward through the same loss twice "
                               "(retain_graph=True) is not supported; use "
                               "inplace_backward=False")
        return (_scale_in_place(grad, g_loss, ctx.reduction),
                None, None, None, None, None, None, None, None)


def _scale_in_place(grad: Tensor, g_loss: Tensor, reduction: str) -> Tensor:
    """``grad * g_loss`` in ``grad``'s own memory (see :func:`_scale`)."""
    if reduction == "none":
        g_loss = g_loss.unsqueeze(-1)
    elif _is_one(g_loss):
        return grad
    if grad.dtype != g_loss.dtype:
        return grad.copy_(grad.to(g_loss.dtype) * g_loss)
    return grad.mul_(g_loss)


def _writes_in_place(input: Tensor, logits: Tensor) -> bool:
    """Whether the gradient may go over ``logits`` (the class-last view of
    ``input``); refuses, as PyTorch's in-place operations do, the memory of
    a leaf that requires grad."""
    if (torch.compiler.is_compiling() or type(logits) is not torch.Tensor
            or torch._C._functorch.is_functorch_wrapped_tensor(logits)):
        return False                 # traced or transformed: the functional operator
    base = input if input._base is None else input._base
    if base.is_leaf and base.requires_grad:
        raise InputError("inplace_backward=True would overwrite a leaf tensor that requires "
                         "grad; pass the output of an operation (such as the output layer's "
                         "product), or use inplace_backward=False")
    return True


# ---- softmax cross-entropy: the functional ------------------------------------

class CrossEntropyOutput(NamedTuple):
    """What :func:`cross_entropy` returns when an extra output is asked for;
    fields not asked for are None."""

    loss: Tensor
    """The loss, as without the extras (z-loss included)."""
    z_loss: Optional[Tensor]
    """The z-loss part of ``loss`` (reduced the same way), without gradient."""
    token_accuracy: Optional[Tensor]
    """Share of counted positions whose largest logit is the target (float32
    scalar; NaN when none is counted)."""
    predicted_tokens: Optional[Tensor]
    """Index of the largest logit of every position (int64, the target's shape)."""


def _ce_arguments(input: Tensor, target: Tensor, weight: Optional[Tensor], ignore_index: Any,
                  label_smoothing: Any, z_loss: Any, softcap: Any):
    """Checks with PyTorch's exception types; returns the checked options."""
    _check_tensor("input", input)
    _check_tensor("target", target)
    if weight is not None:
        _check_tensor("weight", weight)
    if input.dtype not in _SUPPORTED:
        raise InputTypeError(f"input has dtype {input.dtype}; supported: float32, float64, "
                             f"float16, bfloat16")
    if input.dim() == 0:
        raise InputError("input must have at least one dimension (the classes), got a 0-d tensor")
    _no_grad_needed("target", target, "cross_entropy")
    _no_grad_needed("weight", weight, "cross_entropy")
    n_classes = input.shape[1] if input.dim() > 1 else input.shape[0]
    with _torch_errors():
        ignore_index = v.check_ignore_index(ignore_index)
        label_smoothing = v.check_label_smoothing(label_smoothing)
        z_loss = v.check_z_loss(z_loss)
        softcap = v.check_softcap(softcap, np.dtype(np.float64 if input.dtype == torch.float64
                                                    else np.float32))
    if target.is_floating_point():
        if tuple(target.shape) != tuple(input.shape):
            raise InputError(f"probability targets must have the shape of input "
                             f"{tuple(input.shape)}, got {tuple(target.shape)}")
        if ignore_index >= 0:
            raise InputError("ignore_index is not supported for floating point target "
                             "(probabilities)")
    elif target.dtype in (torch.bool, torch.complex64, torch.complex128) or target.is_complex():
        raise InputTypeError(f"target must be integer class indices or float probabilities, "
                             f"got dtype {target.dtype}")
    else:
        expected = (input.shape[0],) + tuple(input.shape[2:]) if input.dim() > 1 else ()
        if tuple(target.shape) != expected:
            raise InputError(f"target has shape {tuple(target.shape)}, expected {expected} "
                             f"for class indices of input of shape {tuple(input.shape)}")
    if weight is not None:
        if weight.dim() != 1 or weight.shape[0] != n_classes:
            raise InputError(f"weight must have one entry per class ({n_classes}), got a "
                             f"tensor of shape {tuple(weight.shape)}")
        if not weight.is_floating_point():
            raise InputTypeError(f"weight must be floating point, got {weight.dtype}")
    return ignore_index, label_smoothing, z_loss, softcap


def _class_last(input: Tensor, target: Tensor, weight: Optional[Tensor]):
    """(logits, target, weight) as the operator takes them: class axis last,
    soft targets and weights in the compute dtype (float32 for half)."""
    x = input.movedim(1, -1) if input.dim() > 2 else input
    compute = _loss_dtype(input.dtype)
    t = target
    if t.is_floating_point():
        t = t.movedim(1, -1) if input.dim() > 2 else t
        t = t.to(compute)
    w = None if weight is None else weight.to(compute)
    return x, t, w


def cross_entropy(input: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                  size_average: Optional[bool] = None, ignore_index: int = -100,
                  reduce: Optional[bool] = None, reduction: str = "mean",
                  label_smoothing: float = 0.0, *, z_loss: float = 0.0,
                  softcap: Optional[float] = None, return_z_loss: bool = False,
                  return_token_accuracy: bool = False, return_predicted_tokens: bool = False,
                  inplace_backward: bool = False):
    """``torch.nn.functional.cross_entropy`` computed by ce_kernels.

    Same signature and semantics (class dimension 1 for inputs of more than
    two dimensions), plus ``z_loss`` and ``softcap`` as in
    :func:`ce_kernels.cross_entropy`. CPU tensors of float32, float64,
    float16 or bfloat16 (bfloat16 needs ``ml_dtypes``); for half precision,
    weights and probability targets are used in float32 and the loss is
    returned in the input's dtype, as PyTorch does. The gradient with
    respect to ``input`` is computed in the forward pass; second derivatives
    are exact. Gradients with respect to ``target`` and ``weight`` are not
    supported.

    Extras (Liger Kernel's names): ``return_z_loss`` adds the z-loss part of
    the loss; ``return_token_accuracy`` the share of counted positions whose
    largest logit is the target; ``return_predicted_tokens`` those argmax
    indices. With any of them the result is a :class:`CrossEntropyOutput`.

    ``inplace_backward=True`` writes the gradient over ``input`` during the
    forward pass instead of into a new tensor: no memory of the logits'
    size is allocated, and forward+backward runs about twice as fast on
    large inputs (a new tensor's pages are faulted in as they are first
    written). ``input`` then holds the gradient, so it must be a tensor
    nothing else reads afterwards (typically the output layer's product;
    operations that saved it for their backward raise there, through
    PyTorch's version counter). Backward may run once, without
    ``create_graph``. Under ``torch.compile``, ``torch.func`` or
    ``torch.no_grad`` the option has no effect.

    Raises
    ------
    InputError (ValueError and RuntimeError)
        A non-CPU tensor, shapes that do not match, a bad option, a target
        or weight that requires grad, ignore_index >= 0 with probabilities.
    InputTypeError (TypeError and RuntimeError)
        An unsupported dtype.
    IndexError
        A class index out of range, as PyTorch.
    """
    ignore_index, label_smoothing, z_loss, cap = _ce_arguments(
        input, target, weight, ignore_index, label_smoothing, z_loss, softcap)
    reduction = _check_reduction(reduction, size_average, reduce)
    x, t, w = _class_last(input, target, weight)
    want_stats = return_z_loss or return_token_accuracy or return_predicted_tokens
    if return_token_accuracy and t.is_floating_point():
        raise InputError("return_token_accuracy needs class-index targets")
    want_grad = torch.is_grad_enabled() and input.requires_grad
    if want_grad and inplace_backward and _writes_in_place(input, x):
        loss, row_lse, predicted = _CrossEntropyInPlace.apply(
            x, t, w, ignore_index, reduction, label_smoothing, z_loss, cap, want_stats)
    else:
        loss, _, row_lse, predicted = _cross_entropy_function().apply(
            x, t, w, ignore_index, reduction, label_smoothing, z_loss, cap, want_grad, want_stats)
    if loss.dtype != input.dtype:
        loss = loss.to(input.dtype)  # PyTorch returns half-precision losses
    if not want_stats:
        return loss
    z_part = (_z_loss_part(row_lse, t, w, ignore_index, reduction, z_loss).to(loss.dtype)
              if return_z_loss else None)
    accuracy = _token_accuracy(predicted, t, ignore_index) if return_token_accuracy else None
    return CrossEntropyOutput(loss, z_part, accuracy,
                              predicted if return_predicted_tokens else None)


def _token_accuracy(predicted: Tensor, t: Tensor, ignore_index: int) -> Tensor:
    """Share of the counted positions whose argmax is the target (float32)."""
    keep = t != ignore_index
    return ((predicted == t) & keep).sum().float() / keep.sum().float()


def _z_loss_part(row_lse: Tensor, t: Tensor, w: Optional[Tensor], ignore_index: int,
                 reduction: str, z_loss: float) -> Tensor:
    """z * lse^2 per counted position, reduced as the loss, from the
    log-sum-exp the loss pass gave (float64)."""
    per_row = z_loss * row_lse ** 2
    if t.is_floating_point():
        denominator = per_row.new_tensor(float(per_row.numel()))
    else:
        keep = t != ignore_index
        per_row = torch.where(keep, per_row, torch.zeros_like(per_row))
        safe = torch.where(keep, t, torch.zeros_like(t)).long()
        w_t = torch.ones_like(per_row) if w is None else w.to(per_row.dtype)[safe]
        denominator = (w_t * keep).sum()
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return per_row.sum()
    return per_row.sum() / denominator


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    """``torch.nn.CrossEntropyLoss`` computed by ce_kernels (a subclass of
    it, same constructor and buffers), plus the keyword-only options of
    :func:`cross_entropy`: ``z_loss``, ``softcap``, ``return_z_loss``,
    ``return_token_accuracy``, ``return_predicted_tokens``, ``inplace_backward``."""

    def __init__(self, weight: Optional[Tensor] = None, size_average=None, ignore_index: int = -100,
                 reduce=None, reduction: str = "mean", label_smoothing: float = 0.0, *,
                 z_loss: float = 0.0, softcap: Optional[float] = None,
                 return_z_loss: bool = False, return_token_accuracy: bool = False,
                 return_predicted_tokens: bool = False, inplace_backward: bool = False) -> None:
        super().__init__(weight, size_average, ignore_index, reduce, reduction, label_smoothing)
        self.z_loss = z_loss
        self.softcap = softcap
        self.return_z_loss = return_z_loss
        self.return_token_accuracy = return_token_accuracy
        self.return_predicted_tokens = return_predicted_tokens
        self.inplace_backward = inplace_backward

    def forward(self, input: Tensor, target: Tensor):
        return cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                             reduction=self.reduction, label_smoothing=self.label_smoothing,
                             z_loss=self.z_loss, softcap=self.softcap,
                             return_z_loss=self.return_z_loss,
                             return_token_accuracy=self.return_token_accuracy,
                             return_predicted_tokens=self.return_predicted_tokens,
                             inplace_backward=self.inplace_backward)


# ---- binary cross-entropy with logits -----------------------------------------

@torch.library.custom_op("ce_kernels::binary_cross_entropy_with_logits", mutates_args=())
def _bce_op(logits: Tensor, target: Tensor, weight: Optional[Tensor], pos_weight: Optional[Tensor],
            reduction: str, want_grad: bool) -> Tuple[Tensor, Tensor]:
    """(loss, d sum(loss) / d logits); the gradient is empty when
    ``want_grad`` is False. Half-precision logits are computed in float32
    (target and weights given in float32), the loss returned in float32 and
    the gradient in their dtype."""
    options = dict(weight=None if weight is None else weight.numpy(),
                   pos_weight=None if pos_weight is None else pos_weight.numpy(),
                   reduction=reduction)
    with _torch_errors():
        if want_grad:
            grad = _grad_buffer(logits.shape, logits.dtype)
            loss, _ = _family.binary_cross_entropy_with_grad(_as_numpy(logits), target.numpy(),
                                                             out=_as_numpy(grad), **options)
        else:
            grad = logits.new_empty((0,))
            loss = _family.binary_cross_entropy(_as_numpy(logits), target.numpy(), **options)
    return torch.from_numpy(np.array(loss, copy=True)), grad


@_bce_op.register_fake
def _bce_fake(logits, target, weight, pos_weight, reduction, want_grad):
    loss = logits.new_empty(logits.shape if reduction == "none" else (),
                            dtype=_loss_dtype(logits.dtype))
    return loss, logits.new_empty(logits.shape if want_grad else (0,))


def _bce_setup_context(ctx, inputs, output):
    logits, target, weight, pos_weight, reduction, _ = inputs
    ctx.set_materialize_grads(False)
    _keep_gradient(ctx, (logits, target, weight, pos_weight), output[1])
    ctx.reduction = reduction
    ctx.save_for_forward(logits, target, weight, pos_weight, output[1])


def _bce_backward(ctx, g_loss, g_grad):
    saved = ctx.saved_tensors
    logits, target, weight, pos_weight = saved[:4]
    result = None
    if g_loss is not None:
        def recompute(differentiable):
            fn = (_BinaryCrossEntropy if torch.compiler.is_compiling() else
                  _BinaryCrossEntropyForwardAD).apply if differentiable else _bce_op
            return fn(logits, target, weight, pos_weight, ctx.reduction, True)[1]

        # "none": the upstream gradient has the shape of the input
        elementwise = "elementwise" if ctx.reduction == "none" else "sum"
        result = _first_order(ctx, saved, g_loss, elementwise, recompute)
    if g_grad is not None and not torch.compiler.is_compiling():
        h = _bce_hvp(logits, target, weight, pos_weight, ctx.reduction, g_grad)
        result = h if result is None else result + h
    return result, None, None, None, None, None


def _bce_hvp(logits, target, weight, pos_weight, reduction, vec):
    """The (diagonal) Hessian of binary cross-entropy applied to ``vec``:
    d2/dx2 of w [(1 - y) x + (1 + (pw - 1) y) softplus(-x)]
    = w (1 + (pw - 1) y) sigmoid(x) sigmoid(-x)."""
    s = torch.sigmoid(logits.to(_loss_dtype(logits.dtype)))
    curvature = s * (1 - s)
    if pos_weight is not None:
        curvature = curvature * (1 + (pos_weight - 1) * target)
    if weight is not None:
        curvature = curvature * weight
    h = curvature * vec.to(curvature.dtype)
    if reduction == "mean":
        h = h / logits.numel()
    return h.to(logits.dtype)


def _bce_jvp(ctx, logits_t, *_):
    """Forward mode: the loss moves by grad . t, the gradient by H t."""
    logits, target, weight, pos_weight, grad = ctx.saved_tensors
    if logits_t is None:
        return None, None
    with_grad = grad.numel() == logits.numel() or logits.numel() == 0
    if not with_grad:
        grad = _bce_op(logits, target, weight, pos_weight, ctx.reduction, True)[1]
    compute = _loss_dtype(grad.dtype)
    product = grad.to(compute) * logits_t.to(compute)
    loss_t = product if ctx.reduction == "none" else product.sum()
    if not with_grad:
        return loss_t, logits_t.new_zeros((0,))
    return loss_t, _bce_hvp(logits, target, weight, pos_weight, ctx.reduction, logits_t)


_bce_op.register_autograd(_bce_backward, setup_context=_bce_setup_context)


class _BinaryCrossEntropy(torch.autograd.Function):
    """As :class:`_CrossEntropy`, for binary cross-entropy."""

    generate_vmap_rule = True

    @staticmethod
    def forward(logits, target, weight, pos_weight, reduction, want_grad):
        return _bce_op(logits, target, weight, pos_weight, reduction, want_grad)

    setup_context = staticmethod(_bce_setup_context)
    backward = staticmethod(_bce_backward)


class _BinaryCrossEntropyForwardAD(_BinaryCrossEntropy):
    """As :class:`_CrossEntropyForwardAD`."""

    jvp = staticmethod(_bce_jvp)


@_bce_op.register_vmap
def _bce_vmap(info, in_dims, logits, target, weight, pos_weight, reduction, want_grad):
    losses, grads = [], []
    tensors = (logits, target, weight, pos_weight)
    for b in range(info.batch_size):
        args = [t if d is None else t.select(d, b) for t, d in zip(tensors, in_dims[:4])]
        loss, grad = _bce_op(*args, reduction, want_grad)
        losses.append(loss)
        grads.append(grad)
    if not losses:
        raise InputError("ce_kernels.torch: vmap over a dimension of size 0 is not supported")
    return (torch.stack(losses), torch.stack(grads)), (0, 0)


def binary_cross_entropy_with_logits(input: Tensor, target: Tensor,
                                     weight: Optional[Tensor] = None,
                                     size_average: Optional[bool] = None,
                                     reduce: Optional[bool] = None, reduction: str = "mean",
                                     pos_weight: Optional[Tensor] = None) -> Tensor:
    """``torch.nn.functional.binary_cross_entropy_with_logits`` computed by
    ce_kernels: same signature and semantics, loss and gradient in one pass,
    exact second derivatives. ``weight`` and ``pos_weight`` broadcast to the
    input as in PyTorch. Half-precision inputs are read as they are and
    computed in float32 (target and weights in float32), the loss and
    gradient returned in the input's dtype. Gradients with respect to
    ``target``, ``weight`` and ``pos_weight`` are not supported."""
    _check_tensor("input", input)
    _check_tensor("target", target)
    for name, t in (("weight", weight), ("pos_weight", pos_weight)):
        if t is not None:
            _check_tensor(name, t)
            _no_grad_needed(name, t, "binary_cross_entropy_with_logits")
    _no_grad_needed("target", target, "binary_cross_entropy_with_logits")
    if input.dtype not in _SUPPORTED:
        raise InputTypeError(f"input has dtype {input.dtype}; supported: float32, float64, "
                             f"float16, bfloat16")
    reduction = _check_reduction(reduction, size_average, reduce)
    if tuple(target.shape) != tuple(input.shape):
        raise InputError(f"Target size ({tuple(target.shape)}) must be the same as input size "
                         f"({tuple(input.shape)})")
    for name, t in (("weight", weight), ("pos_weight", pos_weight)):
        if t is not None:
            try:
                torch.broadcast_shapes(t.shape, input.shape)
            except RuntimeError:
                raise InputError(f"{name} of shape {tuple(t.shape)} does not broadcast to the "
                                 f"input shape {tuple(input.shape)}") from None
    compute = _loss_dtype(input.dtype)
    x = input
    t = target.to(compute)
    w = None if weight is None else weight.to(compute)
    pw = None if pos_weight is None else pos_weight.to(compute)
    want_grad = torch.is_grad_enabled() and input.requires_grad
    fn = _BinaryCrossEntropy if torch.compiler.is_compiling() else _BinaryCrossEntropyForwardAD
    loss, _ = fn.apply(x, t, w, pw, reduction, want_grad)
    return loss.to(input.dtype) if loss.dtype != input.dtype else loss


class BCEWithLogitsLoss(torch.nn.BCEWithLogitsLoss):
    """``torch.nn.BCEWithLogitsLoss`` computed by ce_kernels (a subclass of
    it: same constructor, ``weight`` and ``pos_weight`` buffers)."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return binary_cross_entropy_with_logits(input, target, self.weight,
                                                reduction=self.reduction,
                                                pos_weight=self.pos_weight)


# ---- KL divergence ------------------------------------------------------------

def kl_div(input: Tensor, target: Tensor, size_average: Optional[bool] = None,
           reduce: Optional[bool] = None, reduction: str = "mean",
           log_target: bool = False) -> Tensor:
    """``torch.nn.functional.kl_div``: ``target * (log target - input)``
    elementwise, ``input`` being log-probabilities.

    This loss is elementwise, with no softmax to fuse: after the checks
    (with this module's exception types) it is PyTorch's own function, so
    it is exactly PyTorch's, differentiable to any order and traceable by
    ``torch.compile``. It is here so that the family's functions and
    modules come from one place. For the divergence between distributions
    given as probabilities see :func:`ce_kernels.kl_divergence`.
    """
    _check_tensor("input", input)
    _check_tensor("target", target)
    reduction = _check_reduction(reduction, size_average, reduce,
                                 allowed=("mean", "batchmean", "sum", "none"))
    if input.dtype not in _SUPPORTED:
        raise InputTypeError(f"input has dtype {input.dtype}; supported: float32, float64, "
                             f"float16, bfloat16")
    try:
        torch.broadcast_shapes(input.shape, target.shape)
    except RuntimeError:
        raise InputError(f"target of shape {tuple(target.shape)} does not broadcast to the "
                         f"input shape {tuple(input.shape)}") from None
    return torch.nn.functional.kl_div(input, target, reduction=reduction, log_target=log_target)


class KLDivLoss(torch.nn.KLDivLoss):
    """``torch.nn.KLDivLoss`` through :func:`kl_div` (a subclass of it)."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return kl_div(input, target, reduction=self.reduction, log_target=self.log_target)


# ---- Hugging Face Transformers ------------------------------------------------

def _causal_lm_loss(logits: Tensor, labels: Tensor, vocab_size: int,
                    num_items_in_batch: Optional[Tensor] = None, ignore_index: int = -100,
                    shift_labels: Optional[Tensor] = None, **kwargs) -> Tensor:
    """Transformers' causal-LM loss (``ForCausalLM`` in its loss mapping)
    computed by ce_kernels: position t is scored against label t + 1, the
    mean is over labels that are not ``ignore_index`` (or the sum divided by
    ``num_items_in_batch``). Half-precision logits are read as they are; the
    loss is float32 and the gradient that of float32 logits rounded once,
    as the stock function's upcast gives."""
    if shift_labels is None:
        labels = torch.nn.functional.pad(labels, (0, 1), value=ignore_index)
        shift_labels = labels[..., 1:]
    x = logits.reshape(-1, vocab_size)
    t = shift_labels.reshape(-1).to(logits.device)
    reduction = "sum" if num_items_in_batch is not None else "mean"
    ignore_index, _, _, _ = _ce_arguments(x, t, None, ignore_index, 0.0, 0.0, None)
    want_grad = torch.is_grad_enabled() and x.requires_grad
    loss = _cross_entropy_function().apply(x, t, None, ignore_index, reduction, 0.0, 0.0,
                                           0.0, want_grad, False)[0]
    if reduction == "sum":
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(loss.device)
        loss = loss / num_items_in_batch
    return loss


_ORIGINAL_LOSSES: dict = {}


def patch_transformers(model: Any = None) -> None:
    """Make Transformers' causal language models compute their training loss
    (``model(..., labels=...)``) with ce_kernels.

    With ``model``, only that model is changed (through its
    ``loss_function`` attribute); without, every causal LM whose
    ``loss_type`` is ``"ForCausalLM"`` (Transformers' loss mapping entry).
    Nothing in ``torch.nn.functional`` is touched. :func:`unpatch_transformers`
    undoes it."""
    if model is not None:
        loss_type = getattr(model, "loss_type", None)
        if loss_type not in (None, "ForCausalLM"):
            raise InputError(f"patch_transformers replaces the causal-LM loss; this model's "
                             f"loss is {loss_type!r} ({type(model).__name__})")
        model.loss_function = _causal_lm_loss
        return
    from transformers.loss import loss_utils
    if "ForCausalLM" not in _ORIGINAL_LOSSES:
        _ORIGINAL_LOSSES["ForCausalLM"] = loss_utils.LOSS_MAPPING["ForCausalLM"]
    loss_utils.LOSS_MAPPING["ForCausalLM"] = _causal_lm_loss


def unpatch_transformers(model: Any = None) -> None:
    """Undo :func:`patch_transformers` (for ``model``, or the global one)."""
    if model is not None:
        if getattr(model, "_loss_function", None) is _causal_lm_loss:
            del model._loss_function
        return
    if "ForCausalLM" in _ORIGINAL_LOSSES:
        from transformers.loss import loss_utils
        loss_utils.LOSS_MAPPING["ForCausalLM"] = _ORIGINAL_LOSSES.pop("ForCausalLM")
