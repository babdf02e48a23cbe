"""entropy, cross_entropy_probs, kl_divergence, binary cross-entropy,
sigmoid and log_sigmoid against the float64 reference, SciPy and PyTorch
(when installed), identities, gradients and bad input."""
import math

import numpy as np
import pytest

import ce_kernels as ck
import reference as ref
from conftest import THREAD_COUNTS, tolerance


def random_distributions(rng, shape, dtype=np.float64, zeros=False):
    raw = rng.random(shape)
    if zeros:
        raw[raw < 0.3] = 0.0
        raw[..., 0] += 0.5  # every row keeps some mass
    p = raw / raw.sum(axis=-1, keepdims=True)
    return p.astype(dtype)


# ---- distributions ----------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axis", [((5,), -1), ((4, 7), -1), ((4, 7), 0), ((3, 2, 3000), 1),
                                        ((2, 50000), -1)])
@pytest.mark.parametrize("base", [None, 2, 10, 0.5])
@pytest.mark.parametrize("zeros", [False, True])
def test_distributions_match_reference(rng, dtype, shape, axis, base, zeros):
    p = np.moveaxis(random_distributions(rng, np.moveaxis(np.empty(shape), axis, -1).shape, dtype, zeros), -1, axis)
    q = np.moveaxis(random_distributions(rng, np.moveaxis(np.empty(shape), axis, -1).shape, dtype), -1, axis)
    p64, q64 = p.astype(np.float64), q.astype(np.float64)
    tol = tolerance(dtype)
    for got, expected in [
        (ck.entropy(p, base=base, axis=axis), ref.entropy(p64, base, axis)),
        (ck.cross_entropy_probs(p, q, base=base, axis=axis), ref.cross_entropy_probs(p64, q64, base, axis)),
        (ck.kl_divergence(p, q, base=base, axis=axis), ref.kl_divergence(p64, q64, base, axis)),
    ]:
        assert np.shape(got) == np.shape(expected)
        assert np.asarray(got).dtype == dtype
        np.testing.assert_allclose(got, expected, rtol=tol["rtol"] * 5, atol=tol["atol"])


def test_distributions_against_scipy(rng):
    scipy_special = pytest.importorskip("scipy.special")
    scipy_stats = pytest.importorskip("scipy.stats")
    p = random_distributions(rng, (6, 40), zeros=True)
    q = random_distributions(rng, (6, 40))
    np.testing.assert_allclose(ck.entropy(p), scipy_special.entr(p).sum(-1), rtol=1e-13)
    np.testing.assert_allclose(ck.kl_divergence(p, q), scipy_special.rel_entr(p, q).sum(-1), rtol=1e-12)
    np.testing.assert_allclose(ck.entropy(p, base=2), scipy_stats.entropy(p, base=2, axis=-1), rtol=1e-13)
    np.testing.assert_allclose(ck.kl_divergence(p, q), scipy_stats.entropy(p, q, axis=-1), rtol=1e-12)


def test_kl_against_pytorch(rng):
    torch = pytest.importorskip("torch")
    p = random_distributions(rng, (5, 30), zeros=True)
    q = random_distributions(rng, (5, 30))
    expected = torch.nn.functional.kl_div(torch.tensor(np.log(q)), torch.tensor(p), reduction="none").sum(-1)
    np.testing.assert_allclose(ck.kl_divergence(p, q), expected.numpy(), rtol=1e-12)


def test_identities(rng):
    p = random_distributions(rng, (8, 100), zeros=True)
    q = random_distributions(rng, (8, 100))
    np.testing.assert_array_equal(ck.kl_divergence(p, p), 0.0)
    np.testing.assert_allclose(ck.cross_entropy_probs(p, q), ck.entropy(p) + ck.kl_divergence(p, q), rtol=1e-13)
    for v in (1, 2, 7, 32000):
        np.testing.assert_allclose(ck.entropy(np.full(v, 1.0 / v)), math.log(v), rtol=1e-12, atol=1e-15)
    # soft-target softmax cross-entropy on log q is the cross-entropy of distributions
    np.testing.assert_allclose(ck.cross_entropy(np.log(q), p, reduction="none"), ck.cross_entropy_probs(p, q),
                               rtol=1e-12)


def test_zero_conventions():
    assert ck.entropy([1.0, 0.0]) == 0.0
    assert ck.cross_entropy_probs([1.0, 0.0], [1.0, 0.0]) == 0.0
    assert ck.cross_entropy_probs([0.5, 0.5], [1.0, 0.0]) == np.inf
    assert ck.kl_divergence([0.5, 0.5], [1.0, 0.0]) == np.inf
    assert ck.kl_divergence([1.0, 0.0], [0.5, 0.5]) == pytest.approx(math.log(2), rel=1e-15)


def test_not_a_distribution_names_the_row():
    p = np.full((2, 3, 4), 0.25)
    p[1, 2, 0] = -0.1
    with pytest.raises(ValueError, match=r"p is not a probability distribution .*row \[1, 2\] has a negative"):
        ck.entropy(p)
    p = np.full((3, 4), 0.25)
    p[2] *= 1.5
    with pytest.raises(ValueError, match=r"row \[2\] sums to 1.5"):
        ck.kl_divergence(np.full((3, 4), 0.25), p)
    with pytest.raises(ValueError, match="q is not"):
        ck.cross_entropy_probs(np.full((3, 4), 0.25), p)
    # validate=False skips the check and computes the formula
    assert np.isfinite(ck.entropy(np.array([0.5, 0.7]), validate=False))


@pytest.mark.parametrize("base", [0, -2, 1, float("nan"), "2"])
def test_bad_base(base):
    with pytest.raises((ValueError, TypeError), match="base"):
        ck.entropy([0.5, 0.5], base=base)


def test_distribution_shape_mismatch_and_dtype():
    with pytest.raises(ValueError, match="same shape"):
        ck.kl_divergence([0.5, 0.5], [1.0])
    with pytest.raises(TypeError, match="p must be a floating-point array"):
        ck.entropy(np.array([1, 0]))


# ---- binary cross-entropy ---------------------------------------------------------

def bce_case(rng, shape, dtype, weighted, pos_weighted):
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    y = rng.random(shape).astype(dtype)
    w = rng.random(shape[:1] + (1,) * (len(shape) - 1)).astype(dtype) + 0.5 if weighted else None
    pw = rng.random(shape[-1:]).astype(dtype) * 3 if pos_weighted else None
    return x, y, w, pw


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7,), (4, 9), (2, 3, 5000)], ids=str)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("pos_weighted", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bce_matches_reference(rng, dtype, shape, weighted, pos_weighted, reduction):
    x, y, w, pw = bce_case(rng, shape, dtype, weighted, pos_weighted)
    options = dict(weight=w, pos_weight=pw, reduction=reduction)
    expected = ref.binary_cross_entropy(x, y, **options)
    expected_grad = ref.binary_cross_entropy_grad(x, y, **options)
    loss = ck.binary_cross_entropy(x, y, **options)
    loss2, grad = ck.binary_cross_entropy_with_grad(x, y, **options)
    tol = tolerance(dtype)
    np.testing.assert_allclose(loss, expected, rtol=tol["rtol"] * 5, atol=tol["atol"])
    np.testing.assert_array_equal(loss, loss2)
    assert grad.shape == x.shape and grad.dtype == dtype
    np.testing.assert_allclose(grad, expected_grad, rtol=tol["rtol"] * 5, atol=tol["atol"] * 1e-3)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bce_against_pytorch(rng, reduction):
    torch = pytest.importorskip("torch")
    x, y, w, pw = bce_case(rng, (6, 11), np.float64, True, True)
    tx = torch.tensor(x, requires_grad=True)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        tx, torch.tensor(y), weight=torch.tensor(w), pos_weight=torch.tensor(pw), reduction=reduction)
    expected.sum().backward()
    loss, grad = ck.binary_cross_entropy_with_grad(x, y, weight=w, pos_weight=pw, reduction=reduction)
    np.testing.assert_allclose(loss, expected.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(grad, tx.grad.numpy(), rtol=1e-12, atol=1e-16)
    p = ref.sigmoid(x)
    p[0, :3] = [0.0, 1.0, 0.5]
    expected_probs = torch.nn.functional.binary_cross_entropy(torch.tensor(p), torch.tensor(y),
                                                               weight=torch.tensor(w), reduction=reduction)
    np.testing.assert_allclose(ck.binary_cross_entropy_probs(p, y, weight=w, reduction=reduction),
                               expected_probs.numpy(), rtol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bce_gradient_by_finite_differences(rng, reduction):
    x, y, w, pw = bce_case(rng, (3, 4), np.float64, True, True)
    g = rng.standard_normal((3, 4)) if reduction == "none" else None
    options = dict(weight=w, pos_weight=pw, reduction=reduction)

    def total(z):
        loss = ck.binary_cross_entropy(z, y, **options)
        return float(np.sum(loss * (g if g is not None else 1.0)))

    _, grad = ck.binary_cross_entropy_with_grad(x, y, grad_output=g, **options)
    np.testing.assert_allclose(grad, ref.numerical_grad(total, x), rtol=1e-7, atol=1e-10)


def test_bce_stable_for_huge_logits():
    x = np.array([1e4, -1e4, 1e30, -1e30, 0.0])
    y = np.array([0.0, 1.0, 1.0, 0.0, 1.0])
    loss, grad = ck.binary_cross_entropy_with_grad(x, y, reduction="none")
    np.testing.assert_allclose(loss, [1e4, 1e4, 0.0, 0.0, math.log(2)], rtol=1e-15)
    np.testing.assert_allclose(grad, [1.0, -1.0, 0.0, 0.0, -0.5], rtol=1e-15)
    assert np.all(np.isfinite(ck.binary_cross_entropy(np.float32([3e38, -3e38]), np.float32([0, 1]), reduction="none")))


def test_bce_in_place_and_out(rng):
    x, y, _, _ = bce_case(rng, (5, 6), np.float32, False, False)
    _, expected = ck.binary_cross_entropy_with_grad(x, y)
    buf = x.copy()
    _, grad = ck.binary_cross_entropy_with_grad(buf, y, out=buf)
    assert grad is buf
    np.testing.assert_array_equal(buf, expected)


def test_bce_probs_clamps_log_at_minus_100():
    loss = ck.binary_cross_entropy_probs(np.array([0.0, 1.0, 0.0]), np.array([1.0, 0.0, 0.0]), reduction="none")
    np.testing.assert_array_equal(loss, [100.0, 100.0, 0.0])


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan")])
def test_bce_probs_outside_unit_interval(bad):
    with pytest.raises(ValueError, match=r"probs\[1\] = .* outside \[0, 1\]"):
        ck.binary_cross_entropy_probs(np.array([0.5, bad]), np.array([1.0, 0.0]))


def test_bce_bad_input():
    with pytest.raises(ValueError, match="target has shape"):
        ck.binary_cross_entropy(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="pos_weight of shape"):
        ck.binary_cross_entropy(np.zeros((2, 3)), np.zeros((2, 3)), pos_weight=np.ones(4))
    with pytest.raises(ValueError, match="reduction"):
        ck.binary_cross_entropy(np.zeros(3), np.zeros(3), reduction="avg")
    with pytest.raises(TypeError, match="logits"):
        ck.binary_cross_entropy(np.zeros(3, dtype=int), np.zeros(3))


# ---- sigmoid --------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_and_log_sigmoid(rng, dtype):
    x = (rng.standard_normal((40, 1000)) * 20).astype(dtype)
    tol = tolerance(dtype)
    np.testing.assert_allclose(ck.sigmoid(x), ref.sigmoid(x), rtol=tol["rtol"], atol=1e-300)
    np.testing.assert_allclose(ck.log_sigmoid(x), -ref.softplus(-x.astype(np.float64)), rtol=tol["rtol"])
    assert ck.log_sigmoid(np.array([-1e4]))[0] == -1e4
    y = x.copy()
    assert ck.sigmoid(y, out=y) is y
    np.testing.assert_array_equal(y, ck.sigmoid(x))


# ---- threads ------------------------------------------------------------------------

def test_family_identical_across_thread_counts(rng):
    p = random_distributions(rng, (64, 3000))
    q = random_distributions(rng, (64, 3000))
    x, y, w, pw = bce_case(rng, (64, 3000), np.float32, True, True)
    results = []
    for n in THREAD_COUNTS:
        results.append((ck.kl_divergence(p, q, num_threads=n), ck.entropy(p, num_threads=n),
                        *ck.binary_cross_entropy_with_grad(x, y, weight=w, pos_weight=pw, num_threads=n)))
    for r in results[1:]:
        for a, b in zip(r, results[0]):
            np.testing.assert_array_equal(a, b)


def test_family_layouts(rng):
    """Fortran, strided, read-only and byte-swapped inputs give the same answers."""
    from test_layouts import layouts
    p = random_distributions(rng, (9, 2100))
    q = random_distributions(rng, (9, 2100))
    x, y, w, pw = bce_case(rng, (9, 2100), np.float64, True, True)
    expected = (ck.entropy(p), ck.kl_divergence(p, q), *ck.binary_cross_entropy_with_grad(x, y, weight=w, pos_weight=pw))
    for (name, pl), (_, ql), (_, xl) in zip(layouts(p), layouts(q), layouts(x)):
        if name == "broadcast_rows":  # holds other values by design
            continue
        before = np.array(xl, copy=True)
        got = (ck.entropy(pl), ck.kl_divergence(pl, ql), *ck.binary_cross_entropy_with_grad(xl, y, weight=w, pos_weight=pw))
        for a, b in zip(got, expected):
            np.testing.assert_allclose(a, b, rtol=1e-13, err_msg=name)
        np.testing.assert_array_equal(xl, before, err_msg=f"{name}: input modified")


# ---- half precision and exactness of the vectorised kernels ------------------------

def half_dtype(name):
    if name == "bfloat16":
        return pytest.importorskip("ml_dtypes").bfloat16
    return np.float16


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_every_family_function_takes_half_precision(isa, rng, name):
    """Half-precision inputs are computed in float32 (sums in float64):
    every function matches the float64 reference on the same (rounded)
    values; losses and statistics come back in float32, elementwise
    results and gradients in the input's dtype."""
    half = half_dtype(name)
    p = random_distributions(rng, (5, 3000)).astype(half)
    q = random_distributions(rng, (5, 3000)).astype(half)
    p64, q64 = p.astype(np.float64), q.astype(np.float64)
    # a half-precision distribution sums to 1 only within its own rounding
    for got, expected in [(ck.entropy(p), ref.entropy(p64)),
                          (ck.cross_entropy_probs(p, q), ref.cross_entropy_probs(p64, q64)),
                          (ck.kl_divergence(p, q), ref.kl_divergence(p64, q64))]:
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=2e-6)
    x = (rng.standard_normal((4, 2500)) * 6).astype(half)
    y = rng.random((4, 2500)).astype(np.float32)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    loss, grad = ck.binary_cross_entropy_with_grad(x, y, reduction="sum")
    assert loss.dtype == np.float32 and grad.dtype == x.dtype
    np.testing.assert_allclose(loss, ref.binary_cross_entropy(x64, y64, reduction="sum"), rtol=1e-6)
    expected_grad = ref.binary_cross_entropy_grad(x64, y64, reduction="sum").astype(half)
    np.testing.assert_array_equal(grad, expected_grad)
    none = ck.binary_cross_entropy(x, y, reduction="none")
    assert none.dtype == np.float32
    np.testing.assert_allclose(none, ref.binary_cross_entropy(x64, y64, reduction="none"),
                               rtol=2e-6, atol=1e-30)
    s, ls = ck.sigmoid(x), ck.log_sigmoid(x)
    assert s.dtype == x.dtype and ls.dtype == x.dtype
    np.testing.assert_array_equal(s, ref.sigmoid(x64).astype(half))
    np.testing.assert_array_equal(ls, ref.log_sigmoid(x64).astype(half))
    probs = ref.sigmoid(x64).astype(half)
    np.testing.assert_allclose(
        ck.binary_cross_entropy_probs(probs, y, reduction="sum"),
        ref.binary_cross_entropy_probs(probs.astype(np.float64), y64, reduction="sum"), rtol=1e-6)


def test_half_distribution_validated_at_its_precision():
    p = np.array([[0.5, 0.25, 0.25], [0.5, 0.5, 0.25]], dtype=np.float16)
    with pytest.raises(ValueError, match=r"row \[1\] sums to 1.25"):
        ck.entropy(p)
    with pytest.raises(ValueError, match=r"row \[0\] has a negative entry"):
        ck.kl_divergence(np.array([[1.5, -0.5]], dtype=np.float16), np.array([[0.5, 0.5]], dtype=np.float16))


def test_bce_targets_and_weights_kept_in_float32_for_bfloat16_logits(rng):
    """Targets, weights and pos_weight are not rounded to bfloat16 (0.3
    is not a bfloat16 value): the loss is that of the float32 values."""
    half = half_dtype("bfloat16")
    x = (rng.standard_normal((3, 700)) * 3).astype(half)
    y = np.full((3, 700), 0.3, dtype=np.float32)
    w = np.float32(1.0) + rng.random((3, 1)).astype(np.float32) / 3
    pw = rng.random(700).astype(np.float32) + np.float32(0.1)
    got = ck.binary_cross_entropy(x, y, weight=w, pos_weight=pw, reduction="sum")
    expected = ref.binary_cross_entropy(x.astype(np.float64), y.astype(np.float64), weight=w.astype(np.float64),
                                        pos_weight=pw.astype(np.float64), reduction="sum")
    np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize("dtype,rtol", [(np.float32, 1e-6), (np.float64, 1e-12)])
def test_bce_relative_error_over_the_logit_range(isa, dtype, rtol):
    """Every logit on a grid of +-1e4 (fine near 0), targets 0, 1 and in
    between: each loss and each gradient within rtol of the exact value
    (float64 reference on the same inputs; float32 results below the
    smallest normal float are held to its subnormal spacing)."""
    grid = np.concatenate([-np.geomspace(1e-6, 1e4, 4001), [0.0], np.geomspace(1e-6, 1e4, 4001)])
    x = np.repeat(grid, 4).astype(dtype)
    y = np.tile([0.0, 1.0, 0.3, 0.75], grid.size).astype(dtype)
    loss, grad = ck.binary_cross_entropy_with_grad(x, y, reduction="none")
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    exact = ref.binary_cross_entropy(x64, y64, reduction="none")
    exact_grad = ref.binary_cross_entropy_grad(x64, y64, reduction="none")
    tiny = np.finfo(dtype).smallest_subnormal
    np.testing.assert_allclose(loss, exact, rtol=rtol, atol=tiny)
    np.testing.assert_allclose(grad, exact_grad, rtol=rtol, atol=tiny)
    assert ck.binary_cross_entropy(np.array([-40.0], dtype), np.zeros(1, dtype), reduction="none")[0] == \
        pytest.approx(4.248354255291589e-18, rel=rtol)
