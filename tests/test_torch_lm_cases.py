"""Language-model cases of the kind Liger Kernel's cross-entropy tests use:
(B, T, V) logits flattened to rows, logits scaled small and large, a third
of the positions ignored (with -100 and with ordinary class ids as
ignore_index), label smoothing with ignored positions, soft-capping, the
z-loss returned on its own, class weights, a loss that is not the last
operation before backward, and bfloat16 computed in float32. Expected
values from PyTorch's own operations."""
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
import ce_kernels.torch as ckt  # noqa: E402
from test_torch_opinfo import torch_reference  # noqa: E402

SHAPES = [(2, 67, 4099), (1, 16, 32000), (3, 5, 1000)]


def lm_case(shape, scalar, dtype, ignore_index=-100, seed=0):
    batch, seq, vocab = shape
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch * seq, vocab, generator=g) * scalar).to(dtype)
    target = torch.randint(0, vocab, (batch * seq,), generator=g)
    ignored = torch.randperm(batch * seq, generator=g)[: batch * seq // 3]
    target[ignored] = ignore_index
    return logits, target


def run(fn, logits, target, upstream=1.0, **options):
    leaf = logits.detach().clone().requires_grad_(True)
    out = fn(leaf, target, **options)
    loss = out[0] if isinstance(out, tuple) else out
    (loss * upstream).sum().backward()
    return out, leaf.grad


def expected_tolerance(dtype):
    return dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else {}


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("scalar", [0.1, 1.0, 10.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_correctness(shape, scalar, dtype, reduction):
    if dtype == torch.bfloat16:
        pytest.importorskip("ml_dtypes")
    logits, target = lm_case(shape, scalar, dtype)
    ours, our_grad = run(ckt.cross_entropy, logits, target, reduction=reduction)
    # computed in float32 on the same values, rounded once to the dtype
    ref, ref_grad = run(F.cross_entropy, logits.float(), target, reduction=reduction)
    torch.testing.assert_close(ours, ref.to(dtype), **expected_tolerance(dtype))
    torch.testing.assert_close(our_grad, ref_grad.to(dtype), **expected_tolerance(dtype))


@pytest.mark.parametrize("ignore_index", [-100, 2, 42])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_ignore_index_label_smoothing_weights(ignore_index, label_smoothing, weighted,
                                              reduction):
    logits, target = lm_case((2, 67, 4099), 1.0, torch.float32, ignore_index=ignore_index)
    weight = torch.rand(4099, generator=torch.Generator().manual_seed(1)) + 0.5 if weighted else None
    options = dict(ignore_index=ignore_index, label_smoothing=label_smoothing, weight=weight,
                   reduction=reduction)
    ours, our_grad = run(ckt.cross_entropy, logits, target, **options)
    theirs, their_grad = run(F.cross_entropy, logits, target, **options)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(our_grad, their_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_softcap_and_z_loss_returned(dtype, reduction):
    if dtype == torch.bfloat16:
        pytest.importorskip("ml_dtypes")
    logits, target = lm_case((2, 67, 4099), 10.0, dtype)
    options = dict(reduction=reduction, z_loss=1e-4, softcap=30.0, label_smoothing=0.1)
    ours, our_grad = run(ckt.cross_entropy, logits, target, return_z_loss=True, **options)
    # in float64, so that the z-loss part is not lost to cancellation
    ref, ref_grad = run(torch_reference, logits.double(), target, **options)
    without_z = torch_reference(logits.double(), target, **dict(options, z_loss=0.0))
    torch.testing.assert_close(ours.loss, ref.to(dtype), **expected_tolerance(dtype))
    torch.testing.assert_close(ours.z_loss, (ref - without_z).to(dtype),
                               **expected_tolerance(dtype))
    torch.testing.assert_close(our_grad, ref_grad.to(dtype), **expected_tolerance(dtype))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_not_last_layer(reduction):
    """The loss goes through more operations before backward."""
    logits, target = lm_case((3, 5, 1000), 1.0, torch.float32)
    ours, our_grad = run(ckt.cross_entropy, logits, target, upstream=3.0, reduction=reduction)
    theirs, their_grad = run(F.cross_entropy, logits, target, upstream=3.0, reduction=reduction)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(our_grad, their_grad)


def test_bfloat16_is_computed_in_float32():
    """A case where rounding intermediates to bfloat16 would show: large
    vocabulary, large logits; the loss equals the float32 loss of the same
    values rounded once."""
    pytest.importorskip("ml_dtypes")
    logits, target = lm_case((1, 16, 32000), 10.0, torch.bfloat16)
    ours = ckt.cross_entropy(logits, target, reduction="none")
    expected = F.cross_entropy(logits.float(), target, reduction="none").to(torch.bfloat16)
    assert torch.equal(ours, expected)
