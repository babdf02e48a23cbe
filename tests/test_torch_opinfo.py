"""ce_kernels.torch against PyTorch's own losses, in the manner of PyTorch's
OpInfo and module tests: every option, every dtype, K-dimensional inputs,
empty and all-ignored batches, through forward, backward and double
backward. Expected values come from torch.nn.functional (installed) or from
plain PyTorch operations written out here, never from ce_kernels."""
import itertools

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
import ce_kernels.torch as ckt  # noqa: E402

HALF = (torch.float16, torch.bfloat16)


def tol(dtype):
    if dtype == torch.float64:
        return dict(rtol=1e-10, atol=1e-12)
    return dict(rtol=1e-5, atol=1e-6)


def make_case(shape, kind, dtype, seed=0, ignore_every=3):
    """(logits, target, n_classes) in PyTorch's layout (class dim 1)."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2).to(dtype)
    n_classes = shape[1] if len(shape) > 1 else shape[0]
    batch = ((shape[0],) + tuple(shape[2:])) if len(shape) > 1 else ()
    if kind == "index":
        target = torch.randint(0, n_classes, batch, generator=g)
        if target.dim() and ignore_every:
            target.view(-1)[::ignore_every] = -100
    else:
        target = torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64),
                               dim=1 if len(shape) > 1 else 0).to(dtype)
    return x, target, n_classes


def loss_and_grad(fn, x, target, **options):
    leaf = x.detach().clone().requires_grad_(True)
    loss = fn(leaf, target, **options)
    loss.sum().backward()
    return loss.detach(), leaf.grad


# PyTorch's reference with z_loss and softcap written out in its own operations
def torch_reference(x, target, weight=None, ignore_index=-100, reduction="mean",
                    label_smoothing=0.0, z_loss=0.0, softcap=None):
    y = x if softcap is None else softcap * torch.tanh(x / softcap)
    loss = F.cross_entropy(y, target, weight=weight, ignore_index=ignore_index,
                           reduction=reduction, label_smoothing=label_smoothing)
    if not z_loss:
        return loss
    lse = torch.logsumexp(y, dim=1 if y.dim() > 1 else 0)
    if target.is_floating_point():
        per_row = z_loss * lse ** 2
        denominator = per_row.numel()
    else:
        keep = target != ignore_index
        per_row = torch.where(keep, z_loss * lse ** 2, torch.zeros_like(lse))
        safe = torch.where(keep, target, torch.zeros_like(target))
        w = torch.ones(y.shape[1 if y.dim() > 1 else 0], dtype=y.dtype) if weight is None else weight
        denominator = (w[safe] * keep).sum()
    if reduction == "none":
        return loss + per_row
    if reduction == "sum":
        return loss + per_row.sum()
    return loss + per_row.sum() / denominator


SHAPES = [(5, 7), (7,), (3, 6, 4), (2, 5, 3, 2)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind", ["index", "soft"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("options", [
    dict(),
    dict(weighted=True),
    dict(label_smoothing=0.3),
    dict(weighted=True, label_smoothing=0.1),
    dict(z_loss=0.01),
    dict(softcap=2.5),
    dict(weighted=True, label_smoothing=0.2, z_loss=0.02, softcap=3.0),
], ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "plain")
def test_forward_backward_match_pytorch(dtype, shape, kind, reduction, options):
    options = dict(options)
    x, target, n_classes = make_case(shape, kind, dtype)
    if options.pop("weighted", False):
        options["weight"] = torch.linspace(0.5, 1.5, n_classes, dtype=dtype)
    ours, our_grad = loss_and_grad(ckt.cross_entropy, x, target, reduction=reduction, **options)
    theirs, their_grad = loss_and_grad(torch_reference, x, target, reduction=reduction, **options)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, **tol(dtype))
    torch.testing.assert_close(our_grad, their_grad, **tol(dtype))


@pytest.mark.parametrize("kind", ["index", "soft"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("options", [
    dict(weighted=True, label_smoothing=0.2),
    dict(z_loss=0.05),
    dict(softcap=2.0),
    dict(weighted=True, label_smoothing=0.1, z_loss=0.03, softcap=1.5),
], ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_gradcheck_and_gradgradcheck_float64(kind, reduction, options):
    options = dict(options)
    x, target, n_classes = make_case((4, 5, 3), kind, torch.float64, seed=4)
    if options.pop("weighted", False):
        options["weight"] = torch.linspace(0.5, 1.5, n_classes, dtype=torch.float64)
    x.requires_grad_(True)

    def f(z):
        return ckt.cross_entropy(z, target, reduction=reduction, **options)

    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


@pytest.mark.parametrize("kind", ["index", "soft"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("options", [
    dict(), dict(weighted=True, label_smoothing=0.2), dict(z_loss=0.05, softcap=2.0),
], ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "plain")
def test_hessian_vector_product_matches_pytorch(kind, reduction, options):
    """Double backward (create_graph=True) equals PyTorch's own."""
    options = dict(options)
    x, target, n_classes = make_case((6, 9), kind, torch.float64, seed=5)
    if options.pop("weighted", False):
        options["weight"] = torch.linspace(0.5, 1.5, n_classes, dtype=torch.float64)
    g = torch.Generator().manual_seed(6)
    vec = torch.randn(x.shape, generator=g, dtype=torch.float64)
    results = []
    for fn in (ckt.cross_entropy, torch_reference):
        leaf = x.detach().clone().requires_grad_(True)
        loss = fn(leaf, target, reduction=reduction, **options)
        upstream = torch.linspace(0.5, 2.0, loss.numel(), dtype=torch.float64).reshape(loss.shape)
        (grad,) = torch.autograd.grad(loss, leaf, upstream, create_graph=True)
        (hvp,) = torch.autograd.grad((grad * vec).sum(), leaf)
        results.append((grad.detach(), hvp))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-11, atol=1e-13)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("kind", ["index", "soft"])
@pytest.mark.parametrize("weight_dtype", ["none", "float32", "same"])
@pytest.mark.parametrize("extra", [dict(), dict(label_smoothing=0.1), dict(z_loss=1e-3),
                                   dict(softcap=4.0)], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_half_precision_with_every_option(dtype, kind, weight_dtype, extra, reduction):
    """Half-precision logits with class weights (float32 or half), soft
    targets (float32) and every option: the result is the float32 result of
    the same (upcast) values, rounded once."""
    if dtype == torch.bfloat16:
        pytest.importorskip("ml_dtypes")
    x, target, n_classes = make_case((6, 40), kind, torch.float32, seed=7)
    x = x.to(dtype)
    weight = None
    if weight_dtype != "none":
        weight = torch.linspace(0.5, 1.5, n_classes)
        if weight_dtype == "same":
            weight = weight.to(dtype)
    options = dict(weight=weight, reduction=reduction, **extra)
    ours, our_grad = loss_and_grad(ckt.cross_entropy, x, target, **options)
    weight32 = None if weight is None else weight.float()
    ref, ref_grad = loss_and_grad(torch_reference, x.float(), target,
                                  **dict(options, weight=weight32))
    assert ours.dtype == dtype and our_grad.dtype == dtype
    torch.testing.assert_close(ours, ref.to(dtype))
    torch.testing.assert_close(our_grad.float(), ref_grad.to(dtype).float(),
                               rtol=torch.finfo(dtype).eps, atol=1e-6)


@pytest.mark.parametrize("dtype", HALF)
def test_half_precision_matches_pytorch_half(dtype):
    """Where PyTorch computes in half precision itself (weight of the same
    dtype), the two agree within its default tolerances for the dtype."""
    if dtype == torch.bfloat16:
        pytest.importorskip("ml_dtypes")
    x, target, n_classes = make_case((8, 64), "index", dtype, seed=8)
    weight = torch.linspace(0.5, 1.5, n_classes).to(dtype)
    ours, our_grad = loss_and_grad(ckt.cross_entropy, x, target, weight=weight,
                                   label_smoothing=0.1)
    theirs, their_grad = loss_and_grad(F.cross_entropy, x, target, weight=weight,
                                       label_smoothing=0.1)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(our_grad, their_grad, rtol=4 * torch.finfo(dtype).eps, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(0, 5), (3, 5, 0), (0, 5, 2)], ids=str)
@pytest.mark.parametrize("kind", ["index", "soft"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_batches(dtype, shape, kind, reduction):
    x, target, _ = make_case(shape, kind, dtype)
    ours, our_grad = loss_and_grad(ckt.cross_entropy, x, target, reduction=reduction)
    theirs, their_grad = loss_and_grad(F.cross_entropy, x, target, reduction=reduction)
    assert ours.shape == theirs.shape and our_grad.shape == their_grad.shape
    torch.testing.assert_close(ours, theirs, equal_nan=True)
    torch.testing.assert_close(our_grad, their_grad, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64] + list(HALF))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_all_ignored(dtype, reduction, weighted):
    if dtype == torch.bfloat16:
        pytest.importorskip("ml_dtypes")
    x, _, n_classes = make_case((4, 6), "index", dtype)
    target = torch.full((4,), 3)
    weight = torch.linspace(0.5, 1.5, n_classes, dtype=dtype) if weighted else None
    ours, our_grad = loss_and_grad(ckt.cross_entropy, x, target, weight=weight,
                                   reduction=reduction, ignore_index=3)
    theirs, their_grad = loss_and_grad(F.cross_entropy, x, target, weight=weight,
                                       reduction=reduction, ignore_index=3)
    torch.testing.assert_close(ours, theirs, equal_nan=True)
    torch.testing.assert_close(our_grad, their_grad, equal_nan=True)
    assert torch.count_nonzero(our_grad) == 0


@pytest.mark.parametrize("ignore_index", [-100, 0, 4, -1])
def test_ignore_index_values(ignore_index):
    x, _, n_classes = make_case((9, 5), "index", torch.float64)
    target = torch.tensor([0, 4, 1, -1, 4, 0, 2, 3, -100])
    target = torch.where((target < 0) & (target != ignore_index), torch.tensor(2), target)
    ours, our_grad = loss_and_grad(ckt.cross_entropy, x, target, ignore_index=ignore_index,
                                   label_smoothing=0.1)
    theirs, their_grad = loss_and_grad(F.cross_entropy, x, target, ignore_index=ignore_index,
                                       label_smoothing=0.1)
    torch.testing.assert_close(ours, theirs, **tol(torch.float64))
    torch.testing.assert_close(our_grad, their_grad, **tol(torch.float64))


def test_non_contiguous_and_uint8_targets():
    x, target, _ = make_case((6, 10), "index", torch.float32, ignore_every=0)
    wide = torch.randn(10, 12)[:, :6].t()          # a transposed, strided (6, 10) view
    for logits in (x.t().contiguous().t(), wide):
        ours, our_grad = loss_and_grad(ckt.cross_entropy, logits, target.to(torch.uint8))
        theirs, their_grad = loss_and_grad(F.cross_entropy, logits, target)
        torch.testing.assert_close(ours, theirs)
        torch.testing.assert_close(our_grad, their_grad)


def test_legacy_size_average_and_reduce():
    x, target, _ = make_case((5, 4), "index", torch.float64)
    for size_average, reduce in itertools.product([None, True, False], [None, True, False]):
        kw = dict(size_average=size_average, reduce=reduce)
        with pytest.warns(UserWarning) if (size_average, reduce) != (None, None) else _nothing():
            ours = ckt.cross_entropy(x, target, **kw)
        with pytest.warns(UserWarning) if (size_average, reduce) != (None, None) else _nothing():
            theirs = F.cross_entropy(x, target, **kw)
        torch.testing.assert_close(ours, theirs)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_positional_arguments_follow_pytorch():
    """weight, size_average, ignore_index, reduce, reduction, label_smoothing
    in PyTorch's order."""
    x, target, n_classes = make_case((5, 4), "index", torch.float64, ignore_every=2)
    target[target == -100] = 1     # ignored below through ignore_index=1
    target[0] = 2
    w = torch.linspace(0.5, 1.5, n_classes, dtype=torch.float64)
    args = (w, None, 1, None, "sum", 0.25)
    torch.testing.assert_close(ckt.cross_entropy(x, target, *args),
                               F.cross_entropy(x, target, *args))


# ---- errors as PyTorch raises them ---------------------------------------------

X = torch.randn(3, 5)
BAD_CALLS = {
    "label_smoothing above 1": (X, torch.tensor([1, 2, 3]), dict(label_smoothing=1.5)),
    "weight of the wrong size": (X, torch.tensor([1, 2, 3]), dict(weight=torch.ones(4))),
    "target batch too short": (X, torch.tensor([1, 2]), {}),
    "target of the wrong rank": (X, torch.tensor([[1, 2, 3]]), {}),
    "probabilities of the wrong shape": (X, torch.rand(3, 4), {}),
    "probabilities of the wrong batch": (X, torch.rand(2, 5), {}),
    "ignore_index with probabilities": (X, torch.rand(3, 5), dict(ignore_index=1)),
    "class index out of range": (X, torch.tensor([1, 2, 7]), {}),
    "negative class index": (X, torch.tensor([1, -2, 0]), {}),
    "unknown reduction": (X, torch.tensor([1, 2, 3]), dict(reduction="avg")),
    "integer logits": (X.int(), torch.tensor([1, 2, 3]), {}),
    "0-d input": (torch.tensor(1.0), torch.tensor(0), {}),
    "K-dim target mismatch": (torch.randn(2, 5, 3), torch.zeros(2, 4, dtype=torch.long), {}),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_errors_are_caught_as_pytorchs(name):
    x, target, options = BAD_CALLS[name]
    with pytest.raises(Exception) as theirs:
        F.cross_entropy(x, target, **options)
    expected = type(theirs.value)
    if expected is NotImplementedError:  # PyTorch's "not implemented for 'Int'"
        expected = RuntimeError
    with pytest.raises(expected):
        ckt.cross_entropy(x, target, **options)


def test_negative_ignore_index_with_probabilities_is_accepted_as_pytorch():
    x, target, _ = make_case((3, 5), "soft", torch.float64)
    torch.testing.assert_close(ckt.cross_entropy(x, target, ignore_index=-5),
                               F.cross_entropy(x, target, ignore_index=-5))


def test_errors_are_also_value_errors():
    with pytest.raises(ValueError):
        ckt.cross_entropy(X, torch.tensor([1, 2, 3]), label_smoothing=1.5)
    with pytest.raises(TypeError):
        ckt.cross_entropy(X.int(), torch.tensor([1, 2, 3]))
    assert issubclass(ckt.InputError, RuntimeError) and issubclass(ckt.InputError, ValueError)
    assert issubclass(ckt.InputTypeError, RuntimeError) and issubclass(ckt.InputTypeError, TypeError)


def test_non_cpu_tensors_name_the_device():
    with pytest.raises(ValueError, match="meta"):
        ckt.cross_entropy(torch.empty(2, 3, device="meta"), torch.zeros(2, dtype=torch.long))
    with pytest.raises(RuntimeError, match="meta"):
        ckt.cross_entropy(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long, device="meta"))
    with pytest.raises(RuntimeError, match="meta"):
        ckt.binary_cross_entropy_with_logits(torch.empty(2, 3, device="meta"), torch.zeros(2, 3))


def test_gradient_for_target_or_weight_is_refused_loudly():
    x = torch.randn(2, 3, requires_grad=True)
    with pytest.raises(RuntimeError, match="target"):
        ckt.cross_entropy(x, torch.full((2, 3), 1 / 3, requires_grad=True))
    with pytest.raises(RuntimeError, match="weight"):
        ckt.cross_entropy(x, torch.tensor([0, 1]), weight=torch.ones(3, requires_grad=True))


# ---- extras --------------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_return_z_loss_and_token_accuracy(reduction, weighted):
    x, target, n_classes = make_case((12, 9), "index", torch.float64, seed=9)
    x[2, target[2]] += 10.0       # make some predictions right
    weight = torch.linspace(0.5, 1.5, n_classes, dtype=torch.float64) if weighted else None
    out = ckt.cross_entropy(x, target, weight=weight, reduction=reduction, z_loss=0.01,
                            return_z_loss=True, return_token_accuracy=True,
                            return_predicted_tokens=True)
    assert isinstance(out, ckt.CrossEntropyOutput)
    full = torch_reference(x, target, weight=weight, reduction=reduction, z_loss=0.01)
    main = torch_reference(x, target, weight=weight, reduction=reduction)
    torch.testing.assert_close(out.loss, full, **tol(torch.float64))
    torch.testing.assert_close(out.z_loss, full - main, **tol(torch.float64))
    predicted = x.argmax(1)
    keep = target != -100
    torch.testing.assert_close(out.predicted_tokens, predicted)
    expected_accuracy = ((predicted == target) & keep).sum() / keep.sum()
    torch.testing.assert_close(out.token_accuracy, expected_accuracy.float())
    assert 0 < out.token_accuracy < 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extras_come_from_the_loss_pass(dtype, monkeypatch):
    """One kernel call gives the loss, the gradient, each position's
    log-sum-exp (the z-loss part) and argmax: no PyTorch reduction over the
    logits runs beside it."""
    from ce_kernels._rows import Problem

    g = torch.Generator().manual_seed(11)
    x = (torch.randn(3, 50, 4, generator=g, dtype=torch.float64) * 4).to(dtype)
    target = torch.randint(0, 50, (3, 4), generator=g)
    target[1, 2] = -100
    expected_lse = torch.logsumexp(30.0 * torch.tanh(x.double() / 30.0), 1)
    expected_predicted = x.double().argmax(1)
    calls = []
    original = Problem.loss_grad_rows
    monkeypatch.setattr(Problem, "loss_grad_rows",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    for name in ("logsumexp", "argmax"):
        monkeypatch.setattr(torch, name, lambda *a, **k: pytest.fail("a second pass"))
        monkeypatch.setattr(torch.Tensor, name, lambda *a, **k: pytest.fail("a second pass"))
    out = ckt.cross_entropy(x.requires_grad_(), target, z_loss=1e-3, softcap=30.0,
                            return_z_loss=True, return_token_accuracy=True,
                            return_predicted_tokens=True)
    monkeypatch.undo()
    assert calls == [1]
    keep = target != -100
    expected_z = 1e-3 * (expected_lse[keep] ** 2).sum() / keep.sum()
    torch.testing.assert_close(out.z_loss.double(), expected_z, rtol=1e-5 if dtype ==
                               torch.float32 else 1e-2, atol=0)
    torch.testing.assert_close(out.predicted_tokens, expected_predicted)
    expected_accuracy = ((expected_predicted == target) & keep).sum() / keep.sum()
    torch.testing.assert_close(out.token_accuracy, expected_accuracy.float())


def test_extras_off_return_a_plain_tensor_and_module_extras():
    x, target, _ = make_case((4, 5), "index", torch.float32)
    assert isinstance(ckt.cross_entropy(x, target), torch.Tensor)
    loss_fn = ckt.CrossEntropyLoss(z_loss=1e-3, return_z_loss=True)
    loss, z_part, accuracy, predicted = loss_fn(x, target)
    assert accuracy is None and predicted is None
    torch.testing.assert_close(loss, torch_reference(x, target, z_loss=1e-3))
    torch.testing.assert_close(loss - z_part, F.cross_entropy(x, target))


# ---- modules -------------------------------------------------------------------

def test_cross_entropy_loss_module_is_a_drop_in():
    x, target, n_classes = make_case((6, 5, 2), "index", torch.float64)
    weight = torch.linspace(0.5, 1.5, n_classes, dtype=torch.float64)
    ours = ckt.CrossEntropyLoss(weight, None, 1, None, "sum", 0.1)
    theirs = torch.nn.CrossEntropyLoss(weight, None, 1, None, "sum", 0.1)
    assert isinstance(ours, torch.nn.CrossEntropyLoss)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    target[target == -100] = 1
    a, ga = loss_and_grad(lambda z, t: ours(z, t), x, target)
    b, gb = loss_and_grad(lambda z, t: theirs(z, t), x, target)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(ga, gb)
    assert "weight" in dict(ours.named_buffers())


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bce_with_logits_module(reduction):
    g = torch.Generator().manual_seed(10)
    x = torch.randn(4, 6, generator=g, dtype=torch.float64)
    y = torch.rand(4, 6, generator=g, dtype=torch.float64)
    w = torch.rand(4, 1, generator=g, dtype=torch.float64)
    pw = torch.rand(6, generator=g, dtype=torch.float64) * 3
    ours = ckt.BCEWithLogitsLoss(w, reduction=reduction, pos_weight=pw)
    theirs = torch.nn.BCEWithLogitsLoss(w, reduction=reduction, pos_weight=pw)
    assert isinstance(ours, torch.nn.BCEWithLogitsLoss)
    a, ga = loss_and_grad(lambda z, t: ours(z, t), x, y)
    b, gb = loss_and_grad(lambda z, t: theirs(z, t), x, y)
    torch.testing.assert_close(a, b, **tol(torch.float64))
    torch.testing.assert_close(ga, gb, **tol(torch.float64))


# ---- binary cross-entropy with logits --------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64] + list(HALF))
@pytest.mark.parametrize("shape", [(7, 4), (3, 2, 5), (6,), (0, 3)], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weights", ["none", "weight", "pos_weight", "both"])
def test_bce_with_logits_matches_pytorch(dtype, shape, reduction, weights):
    g = torch.Generator().manual_seed(11)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(dtype)
    y = torch.rand(shape, generator=g, dtype=torch.float64).to(dtype)
    last = shape[-1]
    weight = (torch.rand(last, generator=g, dtype=torch.float64) + 0.5).to(dtype) \
        if weights in ("weight", "both") else None
    pos_weight = (torch.rand(last, generator=g, dtype=torch.float64) * 3).to(dtype) \
        if weights in ("pos_weight", "both") else None
    options = dict(weight=weight, pos_weight=pos_weight, reduction=reduction)
    ours, our_grad = loss_and_grad(ckt.binary_cross_entropy_with_logits, x, y, **options)
    if dtype in HALF:
        # the float32 result of the same values, rounded once
        up = {k: (None if t is None or isinstance(t, str) else t.float()) if k != "reduction"
              else t for k, t in options.items()}
        theirs, their_grad = loss_and_grad(F.binary_cross_entropy_with_logits, x.float(),
                                           y.float(), **up)
        theirs, their_grad = theirs.to(dtype), their_grad.to(dtype)
        t = dict(rtol=torch.finfo(dtype).eps, atol=1e-5)
    else:
        theirs, their_grad = loss_and_grad(F.binary_cross_entropy_with_logits, x, y, **options)
        t = tol(dtype)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, equal_nan=True, **t)
    torch.testing.assert_close(our_grad, their_grad, equal_nan=True, **t)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bce_gradgradcheck_and_pytorch_hvp(reduction):
    g = torch.Generator().manual_seed(12)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.rand(5, 3, generator=g, dtype=torch.float64)
    w = torch.rand(5, 1, generator=g, dtype=torch.float64) + 0.5
    pw = torch.rand(3, generator=g, dtype=torch.float64) * 2

    def f(z):
        return ckt.binary_cross_entropy_with_logits(z, y, w, reduction=reduction, pos_weight=pw)

    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))
    vec = torch.randn(5, 3, generator=g, dtype=torch.float64)
    hvps = []
    for fn in (f, lambda z: F.binary_cross_entropy_with_logits(z, y, w, reduction=reduction,
                                                                pos_weight=pw)):
        (grad,) = torch.autograd.grad(fn(x).sum(), x, create_graph=True)
        hvps.append(torch.autograd.grad((grad * vec).sum(), x)[0])
    torch.testing.assert_close(hvps[0], hvps[1], rtol=1e-10, atol=1e-12)


BCE_BAD = {
    "target shape": (torch.randn(3, 5), torch.rand(3, 4), {}),
    "weight shape": (torch.randn(3, 5), torch.rand(3, 5), dict(weight=torch.rand(4))),
    "pos_weight shape": (torch.randn(3, 5), torch.rand(3, 5), dict(pos_weight=torch.rand(4))),
    "reduction": (torch.randn(3, 5), torch.rand(3, 5), dict(reduction="x")),
}


@pytest.mark.parametrize("name", list(BCE_BAD))
def test_bce_errors_are_caught_as_pytorchs(name):
    x, y, options = BCE_BAD[name]
    with pytest.raises(Exception) as theirs:
        F.binary_cross_entropy_with_logits(x, y, **options)
    with pytest.raises(type(theirs.value)):
        ckt.binary_cross_entropy_with_logits(x, y, **options)


# ---- KL divergence ---------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")
@pytest.mark.parametrize("reduction", ["mean", "batchmean", "sum", "none"])
@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div_module_matches_pytorch(reduction, log_target):
    g = torch.Generator().manual_seed(13)
    x = torch.log_softmax(torch.randn(4, 6, generator=g, dtype=torch.float64), 1)
    p = torch.softmax(torch.randn(4, 6, generator=g, dtype=torch.float64), 1)
    p[0, 0] = 0.0                     # 0 log 0
    target = torch.log(p) if log_target else p
    ours = ckt.KLDivLoss(reduction=reduction, log_target=log_target)
    theirs = torch.nn.KLDivLoss(reduction=reduction, log_target=log_target)
    assert isinstance(ours, torch.nn.KLDivLoss)
    a, ga = loss_and_grad(lambda z, t: ours(z, t), x, target)
    b, gb = loss_and_grad(lambda z, t: theirs(z, t), x, target)
    torch.testing.assert_close(a, b, equal_nan=True)   # exp(-inf) * -inf is NaN in both
    torch.testing.assert_close(ga, gb, equal_nan=True)
    xr = x.detach().clone().requires_grad_(True)
    assert torch.autograd.gradgradcheck(lambda z: ckt.kl_div(z, target, reduction=reduction,
                                                             log_target=log_target), (xr,))


@pytest.mark.parametrize("fn, reference, target", [
    (ckt.cross_entropy, F.cross_entropy, torch.tensor([0, 1, 2, 3])),
    (ckt.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits,
     torch.rand(4, 5, generator=torch.Generator().manual_seed(14))),
], ids=["cross_entropy", "bce"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_backward_through_a_retained_graph_again(fn, reference, target, reduction):
    """loss.backward(retain_graph=True) three times accumulates three
    gradients, and in-place changes to .grad in between do not leak into
    the next backward."""
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(15))
    grads = []
    for f in (fn, reference):
        leaf = x.clone().requires_grad_(True)
        loss = f(leaf, target, reduction=reduction).sum()
        loss.backward(retain_graph=True)
        first = leaf.grad.clone()
        leaf.grad.mul_(0.5)                 # as gradient clipping would
        loss.backward(retain_graph=True)
        loss.backward()
        grads.append((first, leaf.grad))
    torch.testing.assert_close(grads[0], grads[1])
