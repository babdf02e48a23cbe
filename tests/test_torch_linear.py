"""The PyTorch fused linear layer + cross-entropy against
F.cross_entropy(F.linear(...)): values and the three gradients, gradcheck."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import reference as ref  # noqa: E402
from ce_kernels._torch_linear import linear_cross_entropy  # noqa: E402

N, D, V = 29, 16, 45
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=2e-5, atol=2e-6)}


def inputs(dtype, batch=(N,), bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(batch + (D,), generator=g, dtype=torch.float64).to(dtype)
    w = (0.4 * torch.randn(V, D, generator=g, dtype=torch.float64)).to(dtype)
    b = torch.randn(V, generator=g, dtype=torch.float64).to(dtype) if bias else None
    t = torch.randint(0, V, batch, generator=g)
    t.view(-1)[::4] = -100
    return h, w, b, t


def ours_and_torch(h, w, b, t, upstream, **options):
    """(loss, gradients) of ours and of the unfused PyTorch expression."""
    results = []
    for fn in (linear_cross_entropy,
               lambda *a, **k: F.cross_entropy(F.linear(a[0], a[1], a[3]).movedim(-1, 1),
                                               a[2], **k)):
        leaves = [x.detach().clone().requires_grad_() for x in (h, w) + ((b,) if b is not None
                                                                    else ())]
        loss = fn(leaves[0], leaves[1], t, leaves[2] if b is not None else None, **options)
        grads = torch.autograd.grad(loss, leaves, upstream(loss))
        results.append((loss.detach(), grads))
    return results


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_functional(dtype, reduction, bias):
    h, w, b, t = inputs(dtype, batch=(3, 7), bias=bias)

    def upstream(loss):
        g = torch.Generator().manual_seed(1)
        return torch.rand(loss.shape, generator=g, dtype=loss.dtype) + 0.5

    (loss, grads), (expected, expected_grads) = ours_and_torch(
        h, w, b, t, upstream, reduction=reduction, label_smoothing=0.1)
    assert loss.dtype == dtype and loss.shape == expected.shape
    torch.testing.assert_close(loss, expected, **TOL[dtype])
    for got, want in zip(grads, expected_grads):
        assert got.dtype == want.dtype and got.shape == want.shape
        torch.testing.assert_close(got, want, **TOL[dtype])


def test_bfloat16_uses_torch_products():
    """bfloat16: the products in bfloat16 as F.linear rounds them; the loss
    in float32 from those logits."""
    h, w, b, t = inputs(torch.bfloat16)
    (loss, grads), _ = ours_and_torch(h, w, b, t, lambda loss: torch.ones_like(loss))
    logits = F.linear(h, w, b).float()
    expected = F.cross_entropy(logits, t)
    assert loss.dtype == torch.float32
    # F.linear rounds the product and the bias once, the chunks each: an
    # ulp of bfloat16 (2**-8) at most per logit
    torch.testing.assert_close(loss, expected, rtol=2e-3, atol=1e-3)
    leaves = [x.float().requires_grad_() for x in (h, w, b)]
    full = F.cross_entropy(F.linear(*leaves), t)
    for got, want in zip(grads, torch.autograd.grad(full, leaves)):
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want, rtol=3e-2, atol=3e-3)


def test_z_loss_and_softcap_against_reference():
    h, w, b, t = inputs(torch.float64)
    o = dict(z_loss=1e-2, softcap=3.0, label_smoothing=0.05)
    leaves = [x.clone().requires_grad_() for x in (h, w, b)]
    loss = linear_cross_entropy(leaves[0], leaves[1], t, leaves[2], **o)
    loss.backward()
    args = [x.numpy() for x in (h, w, t, b)]
    np.testing.assert_allclose(loss.item(), ref.linear_cross_entropy(*args, **o), rtol=1e-12)
    for leaf, want in zip(leaves, ref.linear_cross_entropy_grads(*args, **o)):
        np.testing.assert_allclose(leaf.grad.numpy(), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck(reduction):
    h, w, b, t = inputs(torch.float64, batch=(5,))
    h, w, b = h[:, :3].clone(), w[:6, :3].clone(), b[:6].clone()
    t = t % 6
    t[2] = -100
    leaves = [x.requires_grad_() for x in (h, w, b)]
    assert torch.autograd.gradcheck(
        lambda h_, w_, b_: linear_cross_entropy(h_, w_, t, b_, reduction=reduction,
                                                label_smoothing=0.1, z_loss=0.01, softcap=2.0),
        leaves)


def test_only_some_inputs_need_gradients():
    h, w, b, t = inputs(torch.float32)
    h.requires_grad_()
    loss = linear_cross_entropy(h, w, t, b)
    (d_h,) = torch.autograd.grad(loss, [h])
    expected = torch.autograd.grad(F.cross_entropy(F.linear(h, w, b), t), [h])[0]
    torch.testing.assert_close(d_h, expected, **TOL[torch.float32])
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(h, w, t, b),
                                   F.cross_entropy(F.linear(h, w, b), t), **TOL[torch.float32])


def test_errors():
    from ce_kernels.torch import InputError, InputTypeError
    h, w, b, t = inputs(torch.float32)
    with pytest.raises(InputTypeError, match="weight has dtype"):
        linear_cross_entropy(h, w.double(), t, b)
    with pytest.raises(InputError, match="second axis must match"):
        linear_cross_entropy(h, w[:, :-1], t, b)
    with pytest.raises(InputError, match="reduction"):
        linear_cross_entropy(h, w, t, b, reduction="avg")
    with pytest.raises(IndexError, match="out of range"):
        linear_cross_entropy(h, w, t + V, b)
    with pytest.raises(InputTypeError, match="must be a torch.Tensor"):
        linear_cross_entropy(h.numpy(), w, t, b)
