"""Parity with torch.nn.functional.cross_entropy when PyTorch is installed
(it is an optional oracle, never a dependency)."""
import numpy as np
import pytest

import ce_kernels as ck

torch = pytest.importorskip("torch")
F = torch.nn.functional


def torch_loss_and_grad(logits, target, weight, reduction, smoothing, ignore_index=-100):
    """PyTorch with the class axis moved to dim 1, as it expects."""
    x = torch.tensor(np.moveaxis(logits, -1, 1) if logits.ndim > 2 else logits, requires_grad=True)
    if target.dtype.kind == "f":
        t = torch.tensor(np.moveaxis(target, -1, 1) if target.ndim > 2 else target)
    else:
        t = torch.tensor(target.astype(np.int64))
    w = None if weight is None else torch.tensor(weight)
    loss = F.cross_entropy(x, t, weight=w, reduction=reduction, label_smoothing=smoothing,
                           ignore_index=ignore_index)
    loss.sum().backward()
    grad = x.grad.numpy()
    if logits.ndim > 2:
        grad = np.moveaxis(grad, 1, -1)
    return loss.detach().numpy(), grad


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(8, 13), (2, 3, 300), (4, 33000)], ids=str)
@pytest.mark.parametrize("kind", ["index", "soft"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_pytorch(rng, dtype, shape, kind, weighted, smoothing, reduction):
    logits = (rng.standard_normal(shape) * 2).astype(dtype)
    if kind == "index":
        target = rng.integers(0, shape[-1], shape[:-1])
        target.reshape(-1)[::3] = -100
    else:
        raw = rng.random(shape).astype(dtype)
        target = raw / raw.sum(-1, keepdims=True)
    weight = (rng.random(shape[-1]) + 0.5).astype(dtype) if weighted else None
    expected, expected_grad = torch_loss_and_grad(logits, target, weight, reduction, smoothing)
    loss, grad = ck.cross_entropy_with_grad(logits, target, weight=weight, reduction=reduction,
                                            label_smoothing=smoothing)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(loss, expected, **tol)
    np.testing.assert_allclose(grad, expected_grad, **tol)


def test_unbatched_input_matches_pytorch(rng):
    logits = rng.standard_normal(10)
    expected, expected_grad = torch_loss_and_grad(logits, np.array(4), None, "mean", 0.0)
    loss, grad = ck.cross_entropy_with_grad(logits, np.array(4))
    np.testing.assert_allclose(loss, expected, rtol=1e-13)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-13)
