"""cross_entropy and cross_entropy_with_grad against the float64 reference,
over a grid of dtypes, shapes, reductions and options."""
import numpy as np
import pytest

import ce_kernels as ck
import reference as ref
from conftest import tolerance

# Each test runs on every instruction-set path this CPU has.
pytestmark = pytest.mark.usefixtures("isa")

SHAPES = [(1, 1), (7, 3), (5,), (16, 2049), (3, 4, 37), (0, 5), (2, 50000)]
TARGET_KINDS = ["index", "index_ignored", "soft"]


def make_targets(rng, shape, kind, ignore_index=-100):
    batch, n_classes = shape[:-1], shape[-1]
    if kind == "soft":
        raw = rng.random(shape)
        return raw / raw.sum(axis=-1, keepdims=True)
    t = rng.integers(0, n_classes, size=batch)
    if kind == "index_ignored" and t.size:
        t = np.where(rng.random(batch) < 0.3, ignore_index, t)
    return t


def make_case(rng, shape, dtype, kind, weighted):
    logits = (rng.standard_normal(shape) * 3).astype(dtype)
    target = make_targets(rng, shape, kind)
    weight = rng.random(shape[-1]) + 0.5 if weighted else None
    if weight is not None:
        weight = weight.astype(dtype)
    return logits, target, weight


def reference_inputs(logits, target, weight):
    """What the kernels actually see, in float64 (soft targets and weights are
    cast to the logits' dtype first, so the reference sees that too)."""
    dtype = logits.dtype
    t = target.astype(dtype).astype(np.float64) if target.dtype.kind == "f" else target
    return logits.astype(np.float64), t, weight


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind", TARGET_KINDS)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_reference(rng, dtype, shape, kind, weighted, smoothing, reduction):
    logits, target, weight = make_case(rng, shape, dtype, kind, weighted)
    x64, t64, w64 = reference_inputs(logits, target, weight)
    options = dict(weight=weight, reduction=reduction, label_smoothing=smoothing)

    expected = ref.cross_entropy(x64, t64, **options)
    expected_grad = ref.cross_entropy_grad(x64, t64, **options)
    loss = ck.cross_entropy(logits, target, **options)
    loss2, grad = ck.cross_entropy_with_grad(logits, target, **options)

    tol = tolerance(dtype)
    assert np.asarray(loss).dtype == dtype
    assert np.shape(loss) == np.shape(expected)
    np.testing.assert_allclose(loss, expected, **tol)
    np.testing.assert_array_equal(loss2, loss)  # the fused pass gives the same loss
    assert grad.shape == logits.shape and grad.dtype == dtype
    np.testing.assert_allclose(grad, expected_grad, rtol=tol["rtol"] * 10, atol=tol["atol"])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_grad_output(rng, reduction, kind):
    logits, target, weight = make_case(rng, (6, 9), np.float64, kind, True)
    if reduction == "none":
        grad_output = rng.standard_normal(6)
    else:
        grad_output = 2.5
    options = dict(weight=weight, reduction=reduction, label_smoothing=0.2)
    _, grad = ck.cross_entropy_with_grad(logits, target, grad_output=grad_output, **options)
    expected = ref.cross_entropy_grad(logits, target, grad_output=grad_output, **options)
    np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=1e-14)


def test_grad_output_broadcasts_for_none(rng):
    logits, target, _ = make_case(rng, (2, 3, 4), np.float64, "index", False)
    _, grad = ck.cross_entropy_with_grad(logits, target, reduction="none", grad_output=np.array([1.0, 2.0, 3.0]))
    expected = ref.cross_entropy_grad(logits, target, reduction="none", grad_output=np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", TARGET_KINDS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.25])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradient_by_finite_differences(rng, kind, weighted, smoothing, reduction):
    logits, target, weight = make_case(rng, (3, 5), np.float64, kind, weighted)
    grad_output = np.array([0.5, -1.0, 2.0]) if reduction == "none" else None
    options = dict(weight=weight, reduction=reduction, label_smoothing=smoothing)

    def total(x):
        loss = ck.cross_entropy(x, target, **options)
        return float(np.sum(loss * (grad_output if grad_output is not None else 1.0)))

    def total_reference(x):
        loss = ref.cross_entropy(x, target, **options)
        return float(np.sum(loss * (grad_output if grad_output is not None else 1.0)))

    _, grad = ck.cross_entropy_with_grad(logits, target, grad_output=grad_output, **options)
    np.testing.assert_allclose(grad, ref.numerical_grad(total, logits), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(
        ref.cross_entropy_grad(logits, target, grad_output=grad_output, **options),
        ref.numerical_grad(total_reference, logits), rtol=1e-7, atol=1e-9)


def test_ignored_positions_have_zero_loss_and_exactly_zero_grad(rng):
    logits = rng.standard_normal((6, 11)).astype(np.float32)
    target = np.array([3, -100, 0, -100, 10, 5])
    losses = ck.cross_entropy(logits, target, reduction="none", label_smoothing=0.3)
    _, grad = ck.cross_entropy_with_grad(logits, target, label_smoothing=0.3)
    assert losses[1] == 0 and losses[3] == 0
    assert np.all(grad[[1, 3]] == 0)
    assert np.all(grad[[0, 2, 4, 5]] != 0)


def test_custom_ignore_index_inside_class_range(rng):
    logits = rng.standard_normal((4, 5))
    target = np.array([0, 2, 0, 4])
    loss = ck.cross_entropy(logits, target, ignore_index=0)
    np.testing.assert_allclose(loss, ref.cross_entropy(logits, target, ignore_index=0), rtol=1e-13)


def test_all_ignored_mean_is_nan_sum_is_zero(rng):
    logits = rng.standard_normal((3, 4))
    target = np.full(3, -100)
    assert np.isnan(ck.cross_entropy(logits, target))
    assert ck.cross_entropy(logits, target, reduction="sum") == 0
    loss, grad = ck.cross_entropy_with_grad(logits, target)
    assert np.isnan(loss) and np.all(grad == 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_empty_batch(dtype):
    logits = np.empty((0, 7), dtype=dtype)
    target = np.empty(0, dtype=np.int64)
    assert np.isnan(ck.cross_entropy(logits, target))
    assert ck.cross_entropy(logits, target, reduction="sum") == 0
    none = ck.cross_entropy(logits, target, reduction="none")
    assert none.shape == (0,) and none.dtype == dtype
    loss, grad = ck.cross_entropy_with_grad(logits, target)
    assert np.isnan(loss) and grad.shape == (0, 7)


def test_any_integer_target_dtype(rng):
    logits = rng.standard_normal((5, 200))
    target = rng.integers(0, 200, 5)
    expected = ck.cross_entropy(logits, target.astype(np.int64))
    for dt in [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.uint64]:
        t = target.astype(dt) if np.iinfo(dt).max >= 200 else np.minimum(target, 100).astype(dt)
        e = expected if np.iinfo(dt).max >= 200 else ck.cross_entropy(logits, np.minimum(target, 100))
        assert ck.cross_entropy(logits, t, ignore_index=-1) == e


def test_array_likes(rng):
    logits = [[1.0, 2.0, 3.0], [0.5, 0.5, -1.0]]
    target = [2, 0]
    np.testing.assert_allclose(ck.cross_entropy(logits, target), ref.cross_entropy(logits, target), rtol=1e-14)


def test_soft_targets_equal_one_hot_index_targets(rng):
    logits = rng.standard_normal((5, 8))
    target = rng.integers(0, 8, 5)
    onehot = np.eye(8)[target]
    for smoothing in (0.0, 0.3):
        np.testing.assert_allclose(
            ck.cross_entropy(logits, onehot, label_smoothing=smoothing, reduction="none"),
            ck.cross_entropy(logits, target, label_smoothing=smoothing, reduction="none"),
            rtol=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_rows", [1, 3, 7, 8])
def test_small_call_fast_path_is_identical_to_general_path(rng, dtype, n_rows):
    """Tiny calls skip the general conversions; the answer is bit for bit the
    same as through the general path (here forced by a no-op option)."""
    logits = rng.standard_normal((n_rows, 1001)).astype(dtype)
    target = rng.integers(0, 1001, n_rows)
    target[0] = -100
    fast = ck.cross_entropy(logits, target)
    general = ck.cross_entropy(logits, target, label_smoothing=np.float64(0.0))
    assert type(fast) is type(general)
    np.testing.assert_array_equal(fast, general)   # NaN (all ignored) equals NaN here
    np.testing.assert_allclose(fast, ref.cross_entropy(logits.astype(np.float64), target), rtol=2e-6)
    assert np.isnan(ck.cross_entropy(logits, np.full(n_rows, -100)))
    bad = target.copy()
    bad[-1] = 1001
    with pytest.raises(IndexError, match=rf"target\[{n_rows - 1}\] = 1001"):
        ck.cross_entropy(logits, bad)
