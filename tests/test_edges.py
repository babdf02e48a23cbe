"""Exact at the edges: losses far in the tails, subnormal probabilities and
rows holding infinities or NaN, against exact hand maths, the float64
reference and SciPy."""
import math

import numpy as np
import pytest

import ce_kernels as ck
import reference as ref

pytestmark = pytest.mark.usefixtures("isa")


# ---- binary cross-entropy in the tails -------------------------------------------

LOGITS = np.concatenate([-np.logspace(4, -3, 60), [0.0], np.logspace(-3, 4, 60),
                         [-40.0, -30.0, -20.0, 20.0, 30.0, 40.0]])


@pytest.mark.parametrize("y", [0.0, 1.0, 0.3])
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 1e-6)])
def test_bce_with_logits_exact_for_every_logit(y, dtype, rtol):
    """Relative accuracy wherever the result is a normal number of the
    output dtype (float32 cannot hold e^-100 but as a subnormal)."""
    x = LOGITS.astype(dtype)
    target = np.full(x.shape, y, dtype=dtype)
    expected = ref.binary_cross_entropy(x, target, reduction="none")
    expected_grad = ref.binary_cross_entropy_grad(x, target, reduction="sum")
    loss, grad = ck.binary_cross_entropy_with_grad(x, target, reduction="none",
                                                   grad_output=np.ones(x.shape))
    atol = float(np.finfo(dtype).tiny)
    np.testing.assert_allclose(loss, expected, rtol=rtol, atol=atol)
    np.testing.assert_allclose(grad, expected_grad, rtol=rtol, atol=atol)


def test_bce_small_losses_by_hand():
    """log(1 + e^x) for x = -40 is 4.25e-18, not 0 (x + softplus(-x) cancels)."""
    x = np.array([-40.0, -30.0, -745.0])
    loss = ck.binary_cross_entropy(x, np.zeros(3), reduction="none")
    for got, xi in zip(loss, x):
        assert got == pytest.approx(math.log1p(math.exp(xi)), rel=1e-15, abs=0)
    assert loss[0] == pytest.approx(4.248354255291589e-18, rel=1e-15)
    _, grad = ck.binary_cross_entropy_with_grad(x, np.zeros(3), reduction="sum")
    assert grad[0] == pytest.approx(1.0 / (1.0 + math.exp(40.0)), rel=1e-15)


def test_bce_pos_weight_and_weight_in_the_tails():
    x = np.array([-40.0, 40.0, -25.0, 25.0])
    y = np.array([0.0, 1.0, 0.25, 0.75])
    pw, w = np.array([2.0, 3.0, 0.5, 4.0]), np.array([1.5, 0.5, 2.0, 1.0])
    np.testing.assert_allclose(
        ck.binary_cross_entropy(x, y, pos_weight=pw, weight=w, reduction="none"),
        ref.binary_cross_entropy(x, y, pos_weight=pw, weight=w, reduction="none"), rtol=1e-13)


# ---- distributions with subnormal entries -----------------------------------------

def test_kl_with_a_subnormal_q_is_finite_and_exact():
    tiny = 5e-324                                   # the smallest float64
    p = np.array([0.5, 0.5])
    q = np.array([1.0, tiny])                       # sums to 1 in float64
    expected = 0.5 * math.log(0.5) + 0.5 * (math.log(0.5) - math.log(tiny))
    assert ck.kl_divergence(p, q) == pytest.approx(expected, rel=1e-15)
    assert ck.cross_entropy_probs(p, q) == pytest.approx(-0.5 * math.log(tiny), rel=1e-15)


def test_kl_with_a_subnormal_p_is_exact():
    tiny = 5e-324
    p = np.array([1.0, tiny])
    q = np.array([0.25, 0.75])
    expected = math.log(4.0) + tiny * (math.log(tiny) - math.log(0.75))
    assert ck.kl_divergence(p, q) == pytest.approx(expected, rel=1e-15)


def test_kl_conventions_hold():
    assert ck.kl_divergence([0.0, 1.0], [0.0, 1.0]) == 0.0            # 0 log 0 = 0
    assert ck.kl_divergence([0.5, 0.5], [1.0, 0.0]) == np.inf        # p > 0 = q
    assert ck.entropy([1.0, 0.0]) == 0.0


# ---- rows holding +inf, -inf or NaN ------------------------------------------------

ROWS = [
    [np.inf, 1.0, 2.0],
    [np.inf, np.inf, 0.0],
    [-np.inf, 1.0, np.inf],
    [np.inf, np.nan, 1.0],
    [np.nan, 1.0, 2.0],
    [-np.inf, -np.inf, 3.0],
    [1.0, 2.0, 3.0],
]


@pytest.mark.parametrize("row", ROWS, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_normalizers_of_non_finite_rows_follow_scipy(row, dtype):
    special = pytest.importorskip("scipy.special")
    x = np.array([row], dtype=dtype)
    # each path is checked on a row long enough to span chunks, too
    wide = np.concatenate([np.full((1, 5000), -1.0, dtype=dtype), x], axis=1)
    with np.errstate(invalid="ignore"):
        for arr in (x, wide):
            want = arr.astype(np.float64)
            np.testing.assert_allclose(ck.logsumexp(arr), special.logsumexp(want, axis=-1),
                                       rtol=1e-6)
            np.testing.assert_allclose(ck.log_softmax(arr), special.log_softmax(want, axis=-1),
                                       rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(ck.softmax(arr), special.softmax(want, axis=-1),
                                       rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("target", [0, 1])
def test_loss_and_gradient_of_a_row_holding_plus_inf_are_nan(target):
    """As PyTorch's (inf - inf), whatever the target."""
    x = np.array([[np.inf, 1.0, 2.0]])
    loss, grad = ck.cross_entropy_with_grad(x, np.array([target]), reduction="none")
    assert np.isnan(loss[0]) and np.all(np.isnan(grad))
    assert np.isnan(ck.token_stats(x, np.array([target])).nll[0])


def test_float32_distribution_checked_at_float32_precision():
    """A float32 q that sums to 1 within float32 rounding is a distribution,
    even beside a float64 p."""
    p = np.full(3, 1 / 3)
    q = np.full(3, 1 / 3, dtype=np.float32)
    assert abs(float(ck.kl_divergence(p, q))) < 1e-6
    with pytest.raises(ValueError, match="q is not a probability distribution"):
        ck.kl_divergence(p, np.array([0.5, 0.5, 0.1], dtype=np.float32))


def test_loss_beyond_float32_range_is_inf_without_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = ck.cross_entropy(np.array([[3e38, -3e38]], dtype=np.float32), np.array([1]))
    assert loss == np.inf
