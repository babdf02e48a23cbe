"""The rows-level seam: a problem validated once, run on blocks of rows,
gives what one call over the whole batch gives, bit for bit."""
import numpy as np
import pytest

import ce_kernels as ck
import reference as ref
from ce_kernels import _validation as v
from ce_kernels._rows import Problem, Targets

OPTIONS = [dict(), dict(weight="w", label_smoothing=0.1), dict(z_loss=1e-3, softcap=5.0),
           dict(reduction="sum"), dict(reduction="none")]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("options", OPTIONS)
def test_blocks_equal_one_call(rng, dtype, options):
    o = dict(options)
    if o.get("weight") == "w":
        o["weight"] = rng.uniform(0.5, 2.0, 30)
    x = rng.standard_normal((17, 30)).astype(dtype)
    t = rng.integers(0, 30, 17)
    t[::5] = -100
    whole_loss, whole_grad = ck.cross_entropy_with_grad(x, t, **o)

    problem = Problem(x.dtype, 30, **o)
    targets = problem.targets(t, (17,))
    scale, row_scale = problem.grad_scales(None, (17,), targets)
    row_loss, grad = np.empty(17), np.empty_like(x)
    for start, stop in ((0, 4), (4, 5), (5, 17)):          # blocks of any size, any order
        block = targets.rows(start, stop)
        assert block.mean_denominator == targets.mean_denominator
        problem.loss_grad_rows(x[start:stop], block, grad[start:stop], row_loss[start:stop],
                               scale, row_scale)
    np.testing.assert_array_equal(grad, whole_grad)
    np.testing.assert_array_equal(problem.reduce(row_loss, targets, (17,)), whole_loss)
    forward = np.empty(17)
    index = np.array([16, 2, 9])
    problem.loss_rows(x[index], targets.take(index), forward[:3])
    np.testing.assert_array_equal(forward[:3], row_loss[index])


def test_in_place_and_token_stats(rng):
    x = rng.standard_normal((6, 11))
    t = np.array([1, -100, 3, 10, 0, 5])
    problem = Problem(x.dtype, 11)
    targets = problem.targets(t, (6,))
    stats = problem.shaped_stats(problem.token_stats_rows(x, targets), (2, 3))
    nll, predicted, correct, entropy = ref.token_stats(x.reshape(2, 3, 11), t.reshape(2, 3))
    np.testing.assert_allclose(stats.nll, nll, rtol=1e-12)
    np.testing.assert_array_equal(stats.predicted, predicted)
    np.testing.assert_array_equal(stats.correct, correct)
    buf, row_loss = x.copy(), np.empty(6)
    problem.loss_grad_rows(buf, targets, buf, row_loss, 0.5)
    expected = ref.cross_entropy_grad(x, t, reduction="sum") * 0.5
    np.testing.assert_allclose(buf, expected, rtol=1e-12, atol=1e-15)


def test_targets_built_unchecked_and_soft():
    soft = Targets(None, v.rows_view(np.full((2, 4), 0.25)), 2.0)
    assert soft.rows(1, 2).soft.shape == (1, 4) and soft.rows(1, 2).hard is None
    problem = Problem(np.dtype(np.float64), 4)
    checked = problem.targets(np.full((2, 4), 0.25), (2,))
    assert checked.hard is None and checked.mean_denominator == 2.0


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="reduction"):
        Problem(np.dtype(np.float32), 3, reduction="avg")
    with pytest.raises(ValueError, match="class_weight must have shape"):
        Problem(np.dtype(np.float32), 3, weight=np.ones(2), weight_name="class_weight")
    with pytest.raises(ValueError, match="at least one class"):
        Problem(np.dtype(np.float32), 0)
    with pytest.raises(IndexError, match=r"target\[1\] = 3"):
        Problem(np.dtype(np.float32), 3).targets(np.array([0, 3]), (2,))
