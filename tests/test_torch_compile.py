"""ce_kernels.torch as part of PyTorch's machinery: the custom operators'
registrations (torch.library.opcheck), torch.func transforms, and
torch.compile(fullgraph=True) with the same losses and gradients as eager
PyTorch."""
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
import ce_kernels.torch as ckt  # noqa: E402
from torch.func import grad, jacrev, vmap  # noqa: E402

HALF = (torch.float16, torch.bfloat16)


def sample(shape=(6, 5), dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype)
    target = torch.randint(0, shape[1], (shape[0],) + tuple(shape[2:]), generator=g)
    target.view(-1)[::4] = -100
    return x, target


# ---- registrations ---------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("soft", [False, True])
def test_cross_entropy_operator_passes_opcheck(reduction, soft):
    x, target = sample()
    if soft:
        target = torch.softmax(torch.randn(6, 5, dtype=torch.float64), 1)
    weight = torch.linspace(0.5, 1.5, 5, dtype=torch.float64)
    x.requires_grad_(True)
    torch.library.opcheck(torch.ops.ce_kernels.cross_entropy.default,
                          (x, target, weight, -100, reduction, 0.1, 0.01, 3.0, True))
    torch.library.opcheck(torch.ops.ce_kernels.cross_entropy.default,
                          (x.detach(), target, None, -100, reduction, 0.0, 0.0, 0.0, False))
    # with the per-position log-sum-exp and argmax of the same pass
    torch.library.opcheck(torch.ops.ce_kernels.cross_entropy.default,
                          (x, target, weight, -100, reduction, 0.1, 0.01, 3.0, True, True))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_bce_operator_passes_opcheck(reduction):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.rand(4, 3, generator=g, dtype=torch.float64)
    torch.library.opcheck(torch.ops.ce_kernels.binary_cross_entropy_with_logits.default,
                          (x, y, torch.rand(4, 1, dtype=torch.float64),
                           torch.rand(3, dtype=torch.float64), reduction, True))


def test_operator_called_directly_is_differentiable_twice():
    """The operator's registered autograd formula (not only the wrapper)."""
    x, target = sample()
    x.requires_grad_(True)

    def f(z):
        return torch.ops.ce_kernels.cross_entropy(z, target, None, -100, "sum", 0.1, 0.0,
                                                  0.0, True)[0]

    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


# ---- torch.func ------------------------------------------------------------------

def test_func_grad_and_grad_of_grad():
    x, target = sample()
    ours = grad(lambda z: ckt.cross_entropy(z, target, label_smoothing=0.1))(x)
    theirs = grad(lambda z: F.cross_entropy(z, target, label_smoothing=0.1))(x)
    torch.testing.assert_close(ours, theirs)

    def curvature(fn):
        return grad(lambda z: grad(lambda y: fn(y, target))(z).pow(2).sum())(x)

    torch.testing.assert_close(curvature(ckt.cross_entropy), curvature(F.cross_entropy))


def test_func_vmap_and_per_sample_gradients():
    g = torch.Generator().manual_seed(2)
    xb = torch.randn(3, 4, 7, generator=g, dtype=torch.float64)
    tb = torch.randint(0, 7, (3, 4), generator=g)
    tb[1, 2] = -100
    torch.testing.assert_close(vmap(ckt.cross_entropy)(xb, tb), vmap(F.cross_entropy)(xb, tb))
    torch.testing.assert_close(vmap(grad(ckt.cross_entropy))(xb, tb),
                               vmap(grad(F.cross_entropy))(xb, tb))
    # the same target for every slice (in_dims None)
    torch.testing.assert_close(vmap(ckt.cross_entropy, in_dims=(0, None))(xb, tb[0]),
                               vmap(F.cross_entropy, in_dims=(0, None))(xb, tb[0]))
    y = torch.rand(3, 4, 7, generator=g, dtype=torch.float64)
    torch.testing.assert_close(vmap(grad(ckt.binary_cross_entropy_with_logits))(xb, y),
                               vmap(grad(F.binary_cross_entropy_with_logits))(xb, y))


def test_func_jacrev_of_per_position_losses():
    x, target = sample((4, 5))
    ours = jacrev(lambda z: ckt.cross_entropy(z, target, reduction="none", z_loss=0.1))(x)
    theirs = jacrev(lambda z: F.cross_entropy(z, target, reduction="none")
                    + 0.1 * torch.where(target != -100, torch.logsumexp(z, 1) ** 2, 0.0))(x)
    torch.testing.assert_close(ours, theirs)


# ---- torch.compile -----------------------------------------------------------------

class TinyLM(torch.nn.Module):
    def __init__(self, vocab=11, width=8):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.head = torch.nn.Linear(width, vocab)

    def forward(self, tokens):
        return self.head(torch.tanh(self.embed(tokens)))      # (B, T, V)


def train(loss_fn, dtype, compile_backend=None, steps=3, **options):
    """Losses and final parameters of a few SGD steps of TinyLM."""
    torch.manual_seed(0)
    model = TinyLM().to(dtype)
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 11, (3, 6), generator=g)
    labels = torch.randint(0, 11, (3, 6), generator=g)
    labels[:, -2:] = -100

    def step(tokens, labels):
        logits = model(tokens)
        return loss_fn(logits.transpose(1, 2), labels, **options)

    if compile_backend:
        torch._dynamo.reset()
        step = torch.compile(step, backend=compile_backend, fullgraph=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = step(tokens, labels)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return torch.stack(losses), [p.detach() for p in model.parameters()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64] + list(HALF))
def test_compiled_training_matches_eager_pytorch(dtype):
    """fullgraph=True: a graph break at our loss would raise. aot_eager
    traces forward and backward through the operators as inductor does,
    without its code generation (which the next test exercises)."""
    if dtype == torch.bfloat16:
        pytest.importorskip("ml_dtypes")
    weight = torch.linspace(0.5, 1.5, 11, dtype=dtype)
    options = dict(weight=weight, label_smoothing=0.1)
    ours, our_params = train(ckt.cross_entropy, dtype, "aot_eager", **options)
    eager, eager_params = train(ckt.cross_entropy, dtype, None, **options)
    torch.testing.assert_close(ours, eager, rtol=0, atol=0)
    for a, b in zip(our_params, eager_params):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    reference = F.cross_entropy
    if dtype in HALF:
        # ce_kernels computes half precision in float32 and rounds once:
        # PyTorch's float32 loss of the upcast logits
        def reference(z, t, weight, **o):
            return F.cross_entropy(z.float(), t, weight=weight.float(), **o).to(z.dtype)
    theirs, their_params = train(reference, dtype, None, **options)
    tol = {} if dtype in HALF else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours, theirs, **tol)
    for a, b in zip(our_params, their_params):
        torch.testing.assert_close(a, b, **tol)


def test_compiled_with_inductor_matches_eager_pytorch():
    ours, our_params = train(ckt.cross_entropy, torch.float32, "inductor",
                             label_smoothing=0.05, reduction="sum")
    theirs, their_params = train(F.cross_entropy, torch.float32, None,
                                 label_smoothing=0.05, reduction="sum")
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    for a, b in zip(our_params, their_params):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_compiled_module_and_bce():
    torch._dynamo.reset()
    loss_fn = ckt.BCEWithLogitsLoss(pos_weight=torch.full((5,), 2.0))
    reference = torch.nn.BCEWithLogitsLoss(pos_weight=torch.full((5,), 2.0))
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 5, generator=g)
    y = torch.rand(4, 5, generator=g)
    compiled = torch.compile(lambda z: loss_fn(z, y), backend="aot_eager", fullgraph=True)
    results = []
    for fn in (compiled, lambda z: reference(z, y)):
        leaf = x.clone().requires_grad_(True)
        loss = fn(leaf)
        loss.backward()
        results.append((loss.detach(), leaf.grad))
    torch.testing.assert_close(results[0], results[1])


def test_compiled_token_extras():
    torch._dynamo.reset()
    x, target = sample((6, 5), torch.float32)
    fn = torch.compile(lambda z: ckt.cross_entropy(z, target, z_loss=1e-2, return_z_loss=True,
                                                   return_token_accuracy=True),
                       backend="aot_eager", fullgraph=True)
    compiled = fn(x)
    eager = ckt.cross_entropy(x, target, z_loss=1e-2, return_z_loss=True,
                              return_token_accuracy=True)
    for a, b in zip(compiled, eager):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b)
    torch.testing.assert_close(compiled.loss - compiled.z_loss, F.cross_entropy(x, target))


def _grid_case(name):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 6, 3, generator=g, dtype=torch.float64)
    hard = torch.randint(0, 6, (4, 3), generator=g)
    hard[0, 0] = -100
    soft = torch.softmax(torch.randn(4, 6, 3, generator=g, dtype=torch.float64), 1)
    weight = torch.linspace(0.5, 1.5, 6, dtype=torch.float64)
    cases = {
        "plain 2-d": (x[:, :, 0], hard[:, 0], {}),
        "K-dim weights smoothing": (x, hard, dict(weight=weight, label_smoothing=0.2)),
        "K-dim probabilities": (x, soft, dict(label_smoothing=0.1)),
        "sum with ignore_index 2": (x, torch.where(hard == -100, 2, hard),
                                    dict(ignore_index=2, reduction="sum")),
        "none": (x, hard, dict(weight=weight, reduction="none")),
        "unbatched": (x[0, :, 0], hard[1, 1], {}),
        "empty batch": (x[:0], hard[:0], dict(weight=weight)),
        "all ignored": (x, torch.full((4, 3), -100), {}),
    }
    return cases[name]


@pytest.mark.parametrize("name", ["plain 2-d", "K-dim weights smoothing", "K-dim probabilities",
                                  "sum with ignore_index 2", "none", "unbatched", "empty batch",
                                  "all ignored"])
def test_option_grid_eager_double_backward_and_compiled(name):
    """Each case through forward, backward, double backward (eager) and
    forward and backward compiled with fullgraph=True, against PyTorch."""
    x, target, options = _grid_case(name)
    g = torch.Generator().manual_seed(6)
    vec = torch.randn(x.shape, generator=g, dtype=x.dtype)
    results = []
    for fn in (ckt.cross_entropy, F.cross_entropy):
        leaf = x.clone().requires_grad_(True)
        loss = fn(leaf, target, **options)
        (grad,) = torch.autograd.grad(loss.sum(), leaf, create_graph=True)
        if grad.requires_grad:
            (hvp,) = torch.autograd.grad((grad * vec).sum(), leaf, allow_unused=True)
        else:
            hvp = None
        results.append((loss.detach(), grad.detach(),
                        torch.zeros_like(x) if hvp is None else hvp))
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, equal_nan=True)

    torch._dynamo.reset()
    compiled = torch.compile(lambda z: ckt.cross_entropy(z, target, **options).sum(),
                             backend="aot_eager", fullgraph=True)
    leaf = x.clone().requires_grad_(True)
    loss = compiled(leaf)
    loss.backward()
    torch.testing.assert_close(loss.detach(), results[1][0].sum(), equal_nan=True)
    torch.testing.assert_close(leaf.grad, results[1][1], equal_nan=True)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_forward_mode_jvp_jacfwd_and_hessian(reduction):
    x, target = sample((4, 5))
    weight = torch.linspace(0.5, 1.5, 5, dtype=torch.float64)
    vec = torch.randn(4, 5, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    options = dict(weight=weight, label_smoothing=0.1, reduction=reduction)
    ours = torch.func.jvp(lambda z: ckt.cross_entropy(z, target, **options), (x,), (vec,))
    theirs = torch.func.jvp(lambda z: F.cross_entropy(z, target, **options), (x,), (vec,))
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(
        torch.func.hessian(lambda z: ckt.cross_entropy(z, target, **options).sum())(x),
        torch.func.hessian(lambda z: F.cross_entropy(z, target, **options).sum())(x))
    torch.testing.assert_close(
        torch.func.jacfwd(lambda z: ckt.cross_entropy(z, target, **options))(x),
        torch.func.jacfwd(lambda z: F.cross_entropy(z, target, **options))(x))
    y = torch.rand(4, 5, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    pw = torch.linspace(0.5, 3.0, 5, dtype=torch.float64)

    def bce(fn):
        return lambda z: fn(z, y, reduction=reduction, pos_weight=pw).sum()

    torch.testing.assert_close(torch.func.hessian(bce(ckt.binary_cross_entropy_with_logits))(x),
                               torch.func.hessian(bce(F.binary_cross_entropy_with_logits))(x))
    import torch.autograd.forward_ad as fwAD
    with fwAD.dual_level():
        out = ckt.cross_entropy(fwAD.make_dual(x, vec), target, **options)
        torch.testing.assert_close(fwAD.unpack_dual(out).tangent, theirs[1])
