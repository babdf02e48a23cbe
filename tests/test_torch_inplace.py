"""cross_entropy(..., inplace_backward=True): the gradient written over the
logits. Checked against PyTorch's own cross_entropy (values and gradients
reaching the parameters upstream), and for the loud failures the option
promises instead of wrong gradients."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
import ce_kernels.torch as ckt  # noqa: E402


def _model_step(loss_fn, dtype=torch.float32, reduction="mean", **options):
    """Gradients of an output layer's weight and input through a loss of its
    logits; fresh tensors from a fixed seed each call."""
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(24, 16, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    head = torch.randn(300, 16, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    target = torch.randint(0, 300, (24,), generator=g)
    target[::5] = -100
    logits = hidden @ head.T
    loss = loss_fn(logits, target, reduction=reduction, **options)
    upstream = torch.linspace(0.5, 2.0, 24, dtype=loss.dtype) if reduction == "none" else 3.0
    (loss * upstream).sum().backward()
    return loss.detach(), hidden.grad, head.grad, logits


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("options", [{}, {"label_smoothing": 0.1},
                                     {"weight": torch.linspace(0.5, 1.5, 300)}])
def test_gradients_reaching_the_model_equal_pytorchs(reduction, options):
    loss, d_hidden, d_head, logits = _model_step(ckt.cross_entropy, reduction=reduction,
                                                 inplace_backward=True, **options)
    ref_loss, ref_hidden, ref_head, ref_logits = _model_step(F.cross_entropy,
                                                             reduction=reduction, **options)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(d_hidden, ref_hidden, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d_head, ref_head, rtol=1e-5, atol=1e-6)
    assert not torch.equal(logits, ref_logits)  # the logits' memory now holds the gradient


def test_same_numbers_as_the_functional_path_bitwise():
    for_sure = _model_step(ckt.cross_entropy, inplace_backward=True, z_loss=1e-3, softcap=30.0)
    functional = _model_step(ckt.cross_entropy, z_loss=1e-3, softcap=30.0)
    for a, b in zip(for_sure[:3], functional[:3]):
        assert torch.equal(a, b)


def test_the_logits_hold_the_unscaled_gradient_after_the_forward_pass():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 40, generator=g).requires_grad_()
    t = torch.tensor([0, 3, 39, 7, 7])
    logits = x * 1.0
    expected = torch.softmax(logits.detach().double(), -1)
    expected[torch.arange(5), t] -= 1
    ckt.cross_entropy(logits, t, reduction="sum", inplace_backward=True)
    torch.testing.assert_close(logits.detach().double(), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(dtype):
    loss, d_hidden, d_head, _ = _model_step(ckt.cross_entropy, dtype=dtype,
                                            inplace_backward=True)
    ref_loss, ref_hidden, ref_head, _ = _model_step(F.cross_entropy, dtype=dtype)
    torch.testing.assert_close(loss.float(), ref_loss.float(), rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(d_hidden.float(), ref_hidden.float(), rtol=5e-2, atol=5e-3)
    torch.testing.assert_close(d_head.float(), ref_head.float(), rtol=5e-2, atol=5e-3)


def test_class_dimension_one_inputs():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 7, 4, generator=g, requires_grad=True)
    t = torch.randint(0, 7, (3, 4), generator=g)
    ckt.cross_entropy(x * 2.0, t, inplace_backward=True).backward()
    ours = x.grad.clone()
    x.grad = None
    F.cross_entropy(x * 2.0, t).backward()
    torch.testing.assert_close(ours, x.grad, rtol=1e-6, atol=1e-7)


def test_a_leaf_that_requires_grad_is_refused():
    x = torch.randn(4, 10, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf"):
        ckt.cross_entropy(x, torch.zeros(4, dtype=torch.long), inplace_backward=True)
    with pytest.raises(RuntimeError, match="leaf"):
        ckt.cross_entropy(x[:, :5], torch.zeros(4, dtype=torch.long), inplace_backward=True)
    assert torch.isfinite(x).all()


def test_logits_another_operation_saved_fail_loudly_in_backward():
    x = torch.randn(4, 10, requires_grad=True)
    logits = x * 1.0
    other = (logits ** 2).sum()       # pow saves logits for its backward
    loss = ckt.cross_entropy(logits, torch.zeros(4, dtype=torch.long), inplace_backward=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (loss + other).backward()


def test_backward_twice_and_double_backward_raise():
    x = torch.randn(4, 10, requires_grad=True)
    loss = ckt.cross_entropy(x * 1.0, torch.zeros(4, dtype=torch.long), inplace_backward=True)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="once"):
        loss.backward()
    loss = ckt.cross_entropy(x * 1.0, torch.zeros(4, dtype=torch.long), inplace_backward=True)
    with pytest.raises(RuntimeError):
        (g,) = torch.autograd.grad(loss, x, create_graph=True)
        g.sum().backward()


def test_without_grad_the_logits_are_untouched():
    x = torch.randn(4, 10)
    before = x.clone()
    loss = ckt.cross_entropy(x, torch.zeros(4, dtype=torch.long), inplace_backward=True)
    assert torch.equal(x, before)
    torch.testing.assert_close(loss, F.cross_entropy(before, torch.zeros(4, dtype=torch.long)))


def test_extras_are_taken_before_the_logits_are_overwritten():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 9, generator=g, requires_grad=True)
    t = torch.randint(0, 9, (6,), generator=g)
    logits = x * 1.0
    expected_predicted = logits.detach().argmax(-1)
    out = ckt.cross_entropy(logits, t, z_loss=1e-2, return_z_loss=True,
                            return_predicted_tokens=True, inplace_backward=True)
    assert torch.equal(out.predicted_tokens, expected_predicted)
    expected_z = 1e-2 * (torch.logsumexp(x.detach().double(), -1) ** 2).mean()
    torch.testing.assert_close(out.z_loss.double(), expected_z, rtol=1e-6, atol=0)


def test_module_option_and_compile_fall_back_to_the_functional_operator():
    loss_fn = ckt.CrossEntropyLoss(inplace_backward=True)
    loss, d_hidden, d_head, _ = _model_step(lambda a, b, **k: loss_fn(a, b))
    ref = _model_step(F.cross_entropy)
    torch.testing.assert_close(loss, ref[0])
    torch.testing.assert_close(d_head, ref[2], rtol=1e-5, atol=1e-6)
    compiled = torch.compile(lambda a, b: ckt.cross_entropy(a @ a.T, b, inplace_backward=True),
                             fullgraph=True, backend="eager")
    a = torch.randn(6, 6, requires_grad=True)
    t = torch.arange(6)
    compiled(a, t).backward()
    ours = a.grad.clone()
    a.grad = None
    F.cross_entropy(a @ a.T, t).backward()
    torch.testing.assert_close(ours, a.grad, rtol=1e-5, atol=1e-6)
