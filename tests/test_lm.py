"""Language-model options: half-precision logits, z-loss, soft-capping and
token statistics."""
import numpy as np
import pytest

import ce_kernels as ck
import reference as ref
from conftest import THREAD_COUNTS

# Each test runs on every instruction-set path this CPU has.
pytestmark = pytest.mark.usefixtures("isa")

try:
    import ml_dtypes as _ml
    HALF_DTYPES = [np.dtype(np.float16), np.dtype(_ml.bfloat16)]
except ImportError:  # bfloat16 arrays need ml_dtypes (an optional dependency)
    HALF_DTYPES = [np.dtype(np.float16)]

# PyTorch's default comparison tolerances for these dtypes
HALF_TOL = {"float16": dict(rtol=1e-3, atol=1e-5), "bfloat16": dict(rtol=1.6e-2, atol=1e-5)}


def half_case(rng, shape, dtype):
    logits = (rng.standard_normal(shape) * 3).astype(np.float32).astype(dtype)
    target = rng.integers(0, shape[-1], shape[:-1])
    target.reshape(-1)[::5] = -100
    return logits, target


# ---- half precision --------------------------------------------------------------

@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(7, 3), (16, 2049), (2, 3, 5000), (1, 100000)], ids=str)
@pytest.mark.parametrize("options", [{}, {"label_smoothing": 0.1}, {"z_loss": 1e-3, "softcap": 10.0},
                                     {"reduction": "none"}], ids=["plain", "smooth", "zcap", "none"])
def test_half_matches_float32_on_upcast_logits(rng, dtype, shape, options):
    logits, target = half_case(rng, shape, dtype)
    upcast = logits.astype(np.float32)
    loss, grad = ck.cross_entropy_with_grad(logits, target, **options)
    loss32, grad32 = ck.cross_entropy_with_grad(upcast, target, **options)
    assert np.asarray(loss).dtype == np.float32
    assert grad.dtype == dtype
    np.testing.assert_allclose(loss, loss32, rtol=1e-6, atol=1e-7)  # same float32 arithmetic
    # the gradient differs from float32 only by its rounding to the half type
    np.testing.assert_array_equal(grad, grad32.astype(dtype))
    np.testing.assert_allclose(ck.cross_entropy(logits, target, **options), loss32, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
def test_half_normalizers_and_stats(rng, dtype):
    logits, target = half_case(rng, (12, 3001), dtype)
    upcast = logits.astype(np.float32)
    tol = HALF_TOL[dtype.name]
    lse = ck.logsumexp(logits)
    assert lse.dtype == np.float32
    np.testing.assert_allclose(lse, ck.logsumexp(upcast), rtol=1e-6)
    for fn in (ck.softmax, ck.log_softmax):
        got = fn(logits)
        assert got.dtype == dtype
        np.testing.assert_allclose(got.astype(np.float32), fn(upcast), **tol)
    stats, stats32 = ck.token_stats(logits, target), ck.token_stats(upcast, target)
    for a, b in zip(stats, stats32):
        np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
def test_half_in_place_byteswapped_and_strided(rng, dtype):
    logits, target = half_case(rng, (6, 4100), dtype)
    _, expected = ck.cross_entropy_with_grad(logits, target)
    work = logits.copy()
    ck.cross_entropy_with_grad(work, target, out=work)
    np.testing.assert_array_equal(work, expected)
    swapped = logits.astype(logits.dtype.newbyteorder(">" if logits.dtype.byteorder in "=<" else "<"))
    np.testing.assert_array_equal(ck.cross_entropy_with_grad(swapped, target)[1], expected)
    holder = np.zeros((6, 8200), dtype=dtype)
    holder[:, ::2] = logits
    np.testing.assert_array_equal(ck.cross_entropy_with_grad(holder[:, ::2], target)[1], expected)


def test_half_conversions_round_trip_special_values():
    """Infinities, NaN, subnormals and the largest finite values survive the
    kernels' conversions (softmax of a row with one finite entry is exact)."""
    x = np.array([[-np.inf, 0.0, -np.inf]], dtype=np.float16)
    np.testing.assert_array_equal(ck.softmax(x), np.array([[0, 1, 0]], dtype=np.float16))
    tiny = np.array([[np.float16(6e-8), np.float16(65504.0)]], dtype=np.float16)
    np.testing.assert_array_equal(ck.log_softmax(tiny)[0, 1], np.float16(0.0))
    nan_row = np.array([[np.nan, 1.0]], dtype=np.float16)
    assert np.isnan(ck.logsumexp(nan_row)[0])
    # float -> float16 rounding of the gradient matches NumPy's (round to nearest even)
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal((3, 70000)) * 8).astype(np.float16)
    target = rng.integers(0, 70000, 3)
    _, grad = ck.cross_entropy_with_grad(logits, target, reduction="sum")
    _, grad32 = ck.cross_entropy_with_grad(logits.astype(np.float32), target, reduction="sum")
    np.testing.assert_array_equal(grad, grad32.astype(np.float16))


# ---- z-loss and soft-capping --------------------------------------------------------

@pytest.mark.parametrize("kind", ["index", "soft"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("z_loss,softcap", [(1e-2, None), (0.0, 2.0), (1e-3, 30.0)])
def test_z_loss_and_softcap_against_reference(rng, kind, weighted, reduction, z_loss, softcap):
    logits = rng.standard_normal((5, 9)) * 4
    if kind == "index":
        target = rng.integers(0, 9, 5)
        target[1] = -100
    else:
        target = ref.softmax(rng.standard_normal((5, 9)))
    weight = rng.random(9) + 0.5 if weighted else None
    grad_output = rng.standard_normal(5) if reduction == "none" else None
    options = dict(weight=weight, reduction=reduction, label_smoothing=0.1, z_loss=z_loss, softcap=softcap)

    loss, grad = ck.cross_entropy_with_grad(logits, target, grad_output=grad_output, **options)
    np.testing.assert_allclose(loss, ref.cross_entropy(logits, target, **options), rtol=1e-12, atol=1e-14)

    def total(x):
        value = ref.cross_entropy(x, target, **options)
        return float(np.sum(value * (grad_output if grad_output is not None else 1.0)))

    np.testing.assert_allclose(grad, ref.numerical_grad(total, logits), rtol=1e-7, atol=1e-9)


def test_softcap_in_place_and_across_threads(rng):
    logits = (rng.standard_normal((3, 70000)) * 20).astype(np.float32)
    target = rng.integers(0, 70000, 3)
    results = []
    for n in THREAD_COUNTS:
        work = logits.copy()
        loss, _ = ck.cross_entropy_with_grad(work, target, softcap=15.0, z_loss=1e-4, out=work, num_threads=n)
        results.append((loss, work))
    for loss, work in results[1:]:
        assert loss == results[0][0]
        np.testing.assert_array_equal(work, results[0][1])
    _, fresh = ck.cross_entropy_with_grad(logits, target, softcap=15.0, z_loss=1e-4)
    np.testing.assert_array_equal(results[0][1], fresh)
    expected = ref.cross_entropy(logits, target, softcap=15.0, z_loss=1e-4)
    np.testing.assert_allclose(results[0][0], expected, rtol=2e-6)


def test_softcap_and_z_loss_validation():
    x, t = np.zeros((2, 3)), np.array([0, 1])
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="softcap"):
            ck.cross_entropy(x, t, softcap=bad)
    with pytest.raises(ValueError, match="z_loss"):
        ck.cross_entropy(x, t, z_loss=-1e-3)
    with pytest.raises(TypeError, match="softcap"):
        ck.cross_entropy(x, t, softcap="5")


# ---- token statistics --------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(9, 4), (2, 3, 5000), (1, 300000)], ids=str)
def test_token_stats_match_reference(rng, dtype, shape):
    logits = (rng.standard_normal(shape) * 3).astype(dtype)
    target = rng.integers(0, shape[-1], shape[:-1])
    target.reshape(-1)[::4] = -100
    # make some predictions right and some ties
    flat_logits = logits.reshape(-1, shape[-1])
    flat_target = target.reshape(-1)
    if flat_logits.shape[0] > 2:
        flat_logits[1, :] = 0.0
        if flat_target[2] >= 0:
            flat_logits[2, flat_target[2]] = 50.0
    stats = ck.token_stats(logits, target)
    nll, predicted, correct, entropy = ref.token_stats(logits.astype(np.float64), target)
    tol = dict(rtol=2e-6, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats.nll, nll, **tol)
    np.testing.assert_array_equal(np.isnan(stats.nll), target == -100)
    np.testing.assert_array_equal(stats.predicted, predicted)   # ties: first index
    np.testing.assert_array_equal(stats.correct, correct)
    np.testing.assert_allclose(stats.entropy, entropy, **tol)
    assert stats.predicted.dtype == np.int64 and stats.correct.dtype == bool


def test_token_stats_masked_and_nan_rows():
    logits = np.array([[-np.inf, 2.0, -np.inf, 2.0], [1.0, np.nan, 3.0, np.nan]])
    stats = ck.token_stats(logits, np.array([1, 2]))
    assert stats.predicted.tolist() == [1, 1]          # first max; first NaN as numpy.argmax
    assert stats.entropy[0] == pytest.approx(np.log(2), rel=1e-6)
    assert stats.nll[0] == pytest.approx(np.log(2), rel=1e-6)
    assert np.isnan(stats.nll[1])


def test_token_stats_give_perplexity_and_accuracy(rng):
    logits = rng.standard_normal((4, 50, 100)).astype(np.float32)
    target = rng.integers(0, 100, (4, 50))
    stats = ck.token_stats(logits, target)
    assert np.exp(np.nanmean(stats.nll)) == pytest.approx(np.exp(float(ck.cross_entropy(logits, target))), rel=1e-5)
    assert stats.correct.mean() == pytest.approx(np.mean(logits.argmax(-1) == target))


def test_token_stats_bad_input():
    with pytest.raises(IndexError, match=r"target\[1\] = 9"):
        ck.token_stats(np.zeros((2, 3)), np.array([0, 9]))
    with pytest.raises(TypeError, match="integer"):
        ck.token_stats(np.zeros((2, 3)), np.zeros((2, 3)))
