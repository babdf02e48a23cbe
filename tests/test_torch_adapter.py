"""ce_kernels.torch: a drop-in for torch.nn.functional.cross_entropy."""
import subprocess
import sys
import tempfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
import ce_kernels.torch as ckt  # noqa: E402

OUTSIDE_SOURCE_TREE = tempfile.gettempdir()


def both(x, target, **options):
    """(loss, grad) from ce_kernels.torch and from PyTorch on the same tensor."""
    results = []
    for fn in (ckt.cross_entropy, F.cross_entropy):
        leaf = x.detach().clone().requires_grad_(True)
        loss = fn(leaf, target, **options)
        loss.sum().backward()
        results.append((loss.detach(), leaf.grad))
    return results


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(6, 11), (2, 7, 3), (3, 5, 2, 4), (9,)], ids=str)
@pytest.mark.parametrize("kind", ["index", "soft"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_pytorch(dtype, shape, kind, weighted, smoothing, reduction):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=dtype) * 2
    n_classes = shape[1] if len(shape) > 1 else shape[0]
    batch = (shape[0],) + shape[2:] if len(shape) > 1 else ()
    if kind == "index":
        target = torch.randint(0, n_classes, batch, generator=g)
        if target.dim():
            target.view(-1)[::3] = -100
    else:
        target = torch.softmax(torch.randn(shape, generator=g, dtype=dtype), dim=1 if len(shape) > 1 else 0)
    weight = torch.rand(n_classes, generator=g, dtype=dtype) + 0.5 if weighted else None
    (ours, our_grad), (theirs, their_grad) = both(x, target, weight=weight, reduction=reduction,
                                                  label_smoothing=smoothing)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-11, atol=1e-13)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, **tol)
    torch.testing.assert_close(our_grad, their_grad, **tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_tensors(dtype):
    if dtype == torch.bfloat16:
        pytest.importorskip("ml_dtypes")
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(8, 1000, generator=g) * 2).to(dtype)
    target = torch.randint(0, 1000, (8,), generator=g)
    (ours, our_grad), (theirs, their_grad) = both(x, target)
    assert ours.dtype == dtype and our_grad.dtype == dtype
    torch.testing.assert_close(ours, theirs)          # PyTorch's default tolerances for dtype
    # PyTorch rounds intermediates to the half type; ours is the float32
    # gradient of the same values rounded once, so compare with that ...
    (_, grad32), _ = both(x.float(), target)
    torch.testing.assert_close(our_grad, grad32.to(dtype), rtol=0, atol=0)
    # ... and with PyTorch's own half-precision gradient within a few of its ulps
    torch.testing.assert_close(our_grad.float(), their_grad.float(),
                               rtol=4 * torch.finfo(dtype).eps, atol=1e-5)


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 6, (4, 3), generator=g)
    weight = torch.rand(6, generator=g, dtype=torch.float64) + 0.5
    for reduction in ("mean", "sum", "none"):
        assert torch.autograd.gradcheck(
            lambda z: ckt.cross_entropy(z, target, weight=weight, reduction=reduction,
                                        label_smoothing=0.1, z_loss=1e-2, softcap=3.0), (x,))


def test_training_loop_follows_the_same_curve():
    """A linear classifier trained with either loss has the same loss curve."""
    g = torch.Generator().manual_seed(3)
    features = torch.randn(256, 20, generator=g, dtype=torch.float64)
    labels = (features @ torch.randn(20, 5, generator=g, dtype=torch.float64)).argmax(1)
    curves = []
    for loss_fn in (ckt.cross_entropy, F.cross_entropy):
        torch.manual_seed(0)
        model = torch.nn.Linear(20, 5).double()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        curve = []
        for _ in range(30):
            opt.zero_grad()
            loss = loss_fn(model(features), labels, label_smoothing=0.05)
            loss.backward()
            opt.step()
            curve.append(loss.item())
        curves.append(curve)
    np.testing.assert_allclose(curves[0], curves[1], rtol=1e-10)
    assert curves[0][-1] < curves[0][0] * 0.5


def test_non_cpu_tensor_is_rejected():
    x = torch.empty(2, 3, device="meta")
    with pytest.raises(ValueError, match="CPU only"):
        ckt.cross_entropy(x, torch.zeros(2, dtype=torch.long))


def test_unsupported_dtype_and_target_grad():
    with pytest.raises(TypeError, match="dtype"):
        ckt.cross_entropy(torch.zeros(2, 3, dtype=torch.int32), torch.zeros(2, dtype=torch.long))
    soft = torch.full((2, 3), 1 / 3, requires_grad=True)
    with pytest.raises(ValueError, match="target"):
        ckt.cross_entropy(torch.zeros(2, 3), soft)


def test_importing_ce_kernels_does_not_import_torch():
    code = "import sys, ce_kernels; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=OUTSIDE_SOURCE_TREE, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("module", ["ce_kernels.torch", "ce_kernels.distributed"])
def test_helpful_import_error_without_torch(module):
    code = ("import sys; sys.modules['torch'] = None\n"
            f"try:\n    import {module}\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=OUTSIDE_SOURCE_TREE, check=True)
    assert f"{module} needs PyTorch" in out.stdout
