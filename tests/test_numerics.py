"""Numerical stability at the edges: huge offsets and magnitudes, masked
(-inf) classes, NaN, 64-bit sizes, and the accuracy of the exponential."""
import numpy as np
import pytest

import ce_kernels as ck
import reference as ref
from ce_kernels import _core

# Each test runs on every instruction-set path this CPU has.
pytestmark = pytest.mark.usefixtures("isa")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("offset", [1e4, -1e4])
def test_large_offsets(rng, dtype, offset):
    base = rng.standard_normal((6, 3000))
    logits = (base + offset).astype(dtype)
    target = rng.integers(0, 3000, 6)
    x64 = logits.astype(np.float64)
    loss, grad = ck.cross_entropy_with_grad(logits, target, reduction="none", label_smoothing=0.1)
    np.testing.assert_allclose(loss, ref.cross_entropy(x64, target, reduction="none", label_smoothing=0.1),
                               rtol=2e-6 if dtype == np.float32 else 1e-12)
    np.testing.assert_allclose(grad, ref.cross_entropy_grad(x64, target, reduction="none", label_smoothing=0.1),
                               rtol=2e-5, atol=1e-7 if dtype == np.float32 else 1e-14)


def test_huge_magnitudes_float64(rng):
    logits = rng.standard_normal((4, 100)) * 1e30
    target = rng.integers(0, 100, 4)
    loss, grad = ck.cross_entropy_with_grad(logits, target, reduction="none")
    expected = ref.cross_entropy(logits, target, reduction="none")
    np.testing.assert_allclose(loss, expected, rtol=1e-14)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, ref.cross_entropy_grad(logits, target, reduction="none"), atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_masked_vocabulary(rng, dtype):
    logits = rng.standard_normal((5, 5000)).astype(dtype)
    mask = rng.random((5, 5000)) < 0.7
    target = rng.integers(0, 5000, 5)
    mask[np.arange(5), target] = False
    mask[2, :2048] = True  # a whole chunk masked
    mask[2, target[2]] = False
    logits[mask] = -np.inf
    loss, grad = ck.cross_entropy_with_grad(logits, target, reduction="none")
    x64 = logits.astype(np.float64)
    np.testing.assert_allclose(loss, ref.cross_entropy(x64, target, reduction="none"), rtol=2e-6)
    assert np.all(grad[mask] == 0)
    np.testing.assert_allclose(grad, ref.cross_entropy_grad(x64, target, reduction="none"), rtol=2e-5, atol=1e-8)
    # label smoothing puts mass on masked classes: the loss is infinite
    assert np.all(np.isinf(ck.cross_entropy(logits, target, reduction="none", label_smoothing=0.1)))


def test_masked_vocabulary_with_soft_targets(rng):
    logits = rng.standard_normal((3, 10))
    logits[:, 5:] = -np.inf
    probs = ref.softmax(rng.standard_normal((3, 10)))
    probs[:, 5:] = 0
    probs /= probs.sum(-1, keepdims=True)
    loss, grad = ck.cross_entropy_with_grad(logits, probs, reduction="none")
    expected = -(probs[:, :5] * ref.log_softmax(logits[:, :5])).sum(-1)
    np.testing.assert_allclose(loss, expected, rtol=1e-13)
    assert np.all(grad[:, 5:] == 0)


def test_nan_propagates(rng):
    logits = rng.standard_normal((3, 4000))
    logits[1, 2500] = np.nan
    loss = ck.cross_entropy(logits, np.array([0, 1, 2]), reduction="none")
    assert np.isfinite(loss[0]) and np.isnan(loss[1]) and np.isfinite(loss[2])
    assert np.isnan(ck.logsumexp(logits)[1])
    logits[2, :] = np.nan
    assert np.isnan(ck.cross_entropy(logits, np.array([0, 1, 2]), reduction="none")[2])


def test_single_class_and_fully_masked_rows():
    assert ck.cross_entropy(np.array([[3.0]]), np.array([0])) == 0
    loss = ck.cross_entropy(np.array([[-np.inf, -np.inf]]), np.array([0]))
    assert np.isnan(loss)


def test_more_than_2_to_31_elements():
    """64-bit indexing: N x V past 2**31 (rows broadcast, so no memory)."""
    vocab = 50_000
    row = np.linspace(-3, 3, vocab, dtype=np.float32)
    n_rows = 2**31 // vocab + 1000
    logits = np.broadcast_to(row, (n_rows, vocab))
    assert logits.size > 2**31
    target = np.arange(n_rows) % vocab
    losses = ck.cross_entropy(logits, target, reduction="none")
    lse = ref.logsumexp(row.astype(np.float64))
    np.testing.assert_allclose(losses[[0, 1, n_rows - 1]], lse - row[target[[0, 1, n_rows - 1]]].astype(np.float64), rtol=2e-6)
    np.testing.assert_allclose(losses[-1000:], lse - row[target[-1000:]].astype(np.float64), rtol=2e-6)


def _confident_rows(rng, n, vocab, margins, dtype=np.float32):
    """Rows whose target leads the rest by each margin: per-row losses from
    about 1 down to 1e-6, where the sum of exponentials is barely above 1."""
    logits = rng.standard_normal((n, vocab))
    target = rng.integers(0, vocab, n)
    logits[np.arange(n), target] += np.resize(margins, n)
    return logits.astype(dtype), target


@pytest.mark.parametrize("shape,threads", [((24, 20000), 2), ((2, 200_000), 2), ((24, 5003), 1)])
def test_confident_rows_keep_relative_accuracy(rng, shape, threads):
    """A confident row's loss is log(1 + tiny): float32 logits still give it
    to 1e-6 relative, in every mode that reports it."""
    n, vocab = shape
    margins = np.array([24.0, 20.0, 16.0, 12.0, 8.0])
    logits, target = _confident_rows(rng, n, vocab, margins)
    x64 = logits.astype(np.float64)
    expected = ref.cross_entropy(x64, target, reduction="none")
    assert expected.min() < 1e-5
    loss = ck.cross_entropy(logits, target, reduction="none", num_threads=threads)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    loss_buf, grad = ck.cross_entropy_with_grad(logits, target, reduction="none", num_threads=threads)
    np.testing.assert_allclose(loss_buf, expected, rtol=1e-6)
    np.testing.assert_allclose(grad, ref.cross_entropy_grad(x64, target, reduction="none"),
                               rtol=2e-5, atol=1e-7)
    work = logits.copy()
    loss_in_place, _ = ck.cross_entropy_with_grad(work, target, reduction="none", out=work,
                                                  num_threads=threads)
    np.testing.assert_allclose(loss_in_place, expected, rtol=1e-6)
    stats = ck.token_stats(logits, target, num_threads=threads)
    nll, _, _, entropy = ref.token_stats(x64, target)
    np.testing.assert_allclose(stats.nll, nll, rtol=1e-6)
    np.testing.assert_allclose(stats.entropy, entropy, rtol=2e-6)
    log_p = ck.log_softmax(logits)
    np.testing.assert_allclose(np.take_along_axis(log_p, target[:, None], -1)[:, 0], -expected,
                               rtol=1e-6)


def test_confident_rows_half_precision_and_softcap(rng):
    halves = [np.float16]
    try:
        import ml_dtypes
        halves.append(ml_dtypes.bfloat16)
    except ImportError:
        pass
    for dtype in halves:
        logits, target = _confident_rows(rng, 10, 9000, np.array([6.0, 9.0, 12.0]), dtype)
        x64 = logits.astype(np.float64)
        np.testing.assert_allclose(ck.cross_entropy(logits, target, reduction="none"),
                                   ref.cross_entropy(x64, target, reduction="none"), rtol=1e-6)
        loss, _ = ck.cross_entropy_with_grad(logits, target, reduction="none")
        np.testing.assert_allclose(loss, ref.cross_entropy(x64, target, reduction="none"), rtol=1e-6)
    logits, target = _confident_rows(rng, 10, 9000, np.array([20.0, 30.0, 40.0]))
    x64 = logits.astype(np.float64)
    expected = ref.cross_entropy(x64, target, reduction="none", softcap=30.0)
    assert expected.min() < 1e-4
    for fn in (ck.cross_entropy, lambda *a, **k: ck.cross_entropy_with_grad(*a, **k)[0]):
        np.testing.assert_allclose(fn(logits, target, reduction="none", softcap=30.0), expected,
                                   rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_later_chunks_far_from_the_first(rng, dtype, threads):
    """Rows whose later chunks lie far above the first chunk (beyond and
    within the headroom of the one-pass sums, which measure a chunk from the
    first chunk's maximum), barely above it, or far below it, the jump
    falling inside a chunk; some targets at the row maximum, where the loss
    is small. Also in place, where the logits the first sweep measured from
    the reference are overwritten as it goes."""
    chunk = ck.build_info()["chunk_size"]
    vocab = 5 * chunk + 77
    jumps = np.array([200.0, 40.0, 10.0, 2.5, 1.5, 0.5, -60.0, -200.0])
    logits = rng.standard_normal((2 * len(jumps), vocab))
    logits[:, 2 * chunk + 300:] += np.tile(jumps, 2)[:, None]
    target = rng.integers(0, vocab, len(logits))
    confident = np.arange(len(jumps), len(logits))
    target[confident] = logits[confident].argmax(-1)
    logits[confident, target[confident]] += 20.0
    logits = logits.astype(dtype)
    x64 = logits.astype(np.float64)
    expected = ref.cross_entropy(x64, target, reduction="none")
    expected_grad = ref.cross_entropy_grad(x64, target, reduction="none")
    assert expected.min() < 1e-3
    # float64 sums add in float64 throughout, so a confident row's loss
    # log(1 + 5e-7) keeps about 1e-8 of it
    rtol = 1e-6 if dtype == np.float32 else 1e-7
    grad_tol = dict(rtol=2e-5, atol=1e-7) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(ck.cross_entropy(logits, target, reduction="none", num_threads=threads),
                               expected, rtol=rtol)
    np.testing.assert_allclose(ck.logsumexp(logits), ref.logsumexp(x64), rtol=rtol)
    loss, grad = ck.cross_entropy_with_grad(logits, target, reduction="none", num_threads=threads)
    np.testing.assert_allclose(loss, expected, rtol=rtol)
    np.testing.assert_allclose(grad, expected_grad, **grad_tol)
    # all rows (split across threads by rows), and three (each row split by
    # vocabulary chunks, whose threads all read the first chunk before any
    # overwrites it)
    for rows in (np.arange(len(logits)), np.array([2, 9, 12])):
        work = logits[rows]
        loss, grad = ck.cross_entropy_with_grad(work, target[rows], reduction="none", out=work,
                                                num_threads=threads)
        np.testing.assert_allclose(loss, expected[rows], rtol=rtol)
        np.testing.assert_allclose(work, expected_grad[rows], **grad_tol)
    capped = ref.cross_entropy(x64, target, reduction="none", softcap=50.0)
    np.testing.assert_allclose(ck.cross_entropy(logits, target, reduction="none", softcap=50.0,
                                                num_threads=threads), capped, rtol=2e-6)


def test_small_sums_with_the_maximum_beyond_the_first_chunk(rng):
    """Rows whose maximum lies a little above the first chunk's maximum, in
    a later chunk, and whose sum of exponentials relative to it is between
    1.1 and 2 (loss 0.1 to 0.7). Measured from the first chunk's maximum,
    the maximum's own exponential carries exp's ulp error, alone up to 1e-7
    of the loss at loss 0.12; counted as exactly exp(max - shift)
    (ce_chunk_stats.scale), these rows keep the accuracy of the float64
    merge (a few 1e-8) on every instruction set."""
    chunk = ck.build_info()["chunk_size"]
    rows, vocab = 300, 5 * chunk + 77
    logits = np.full((rows, vocab), -30.0)
    logits[:, :chunk] = rng.uniform(-40.0, -25.0, (rows, chunk))
    logits[:, 5] = 0.0
    target = np.full(rows, 3 * chunk + 11)
    rise = rng.uniform(0.0, 2.2, rows)   # the rest sums to exp(-rise)
    logits[np.arange(rows), target] = rise
    logits = logits.astype(np.float32)
    expected = ref.cross_entropy(logits.astype(np.float64), target, reduction="none")
    assert expected.min() < 0.12 and expected.max() > 0.65
    np.testing.assert_allclose(ck.cross_entropy(logits, target, reduction="none"),
                               expected, rtol=1.5e-7)


@pytest.mark.parametrize("dtype,max_ulp", [(np.float32, 2), (np.float64, 2)])
def test_exponential_accuracy_sampled(isa, dtype, max_ulp):
    """Error of the kernels' exp in ulps over the range it is used on."""
    rng = np.random.default_rng(7)
    lo, hi = (-87.33 if dtype == np.float32 else -708.39), 4.0
    x = np.concatenate([np.linspace(lo, hi, 2_000_001), rng.uniform(lo, hi, 1_000_000),
                        rng.uniform(-1, 1, 1_000_000)]).astype(dtype)
    y = np.empty_like(x)
    _core.exp_array(x, y)
    exact = np.exp(x.astype(np.longdouble))
    ulp = np.spacing(exact.astype(dtype)).astype(np.longdouble)
    err = np.abs(y.astype(np.longdouble) - exact) / ulp
    assert float(err.max()) <= max_ulp


def test_exponential_special_values(isa):
    for dtype in (np.float32, np.float64):
        x = np.array([-np.inf, np.nan, 0.0, -1000.0, -0.0], dtype=dtype)
        y = np.empty_like(x)
        _core.exp_array(x, y)
        assert y[0] == 0 and np.isnan(y[1]) and y[2] == 1 and y[3] == 0 and y[4] == 1


def test_exponential_every_float32_in_kernel_range(isa):
    """Every float in [-87.33, 4] (about 2.2e9 values; the kernels pass
    inputs up to CE_REF_HEADROOM = 2), against float64 exp.

    The documented bound (README) is 1.5 ulp; measured maximum 1.34 ulp on
    the SSE2 path, 1.05 ulp on the AVX2 one and 1.06 ulp on the AVX-512 one."""
    lo_bits = int(np.array(-87.33654475, dtype=np.float32).view(np.uint32))
    hi_bits = int(np.array(4.0, dtype=np.float32).view(np.uint32))
    negative = (0x80000000, lo_bits + 1)           # -0.0 down to ln(FLT_MIN)
    positive = (0x00000000, hi_bits + 1)           # +0.0 up to 4
    worst = 0.0
    step = 1 << 24
    for start, stop in (negative, positive):
        for begin in range(start, stop, step):
            bits = np.arange(begin, min(begin + step, stop), dtype=np.uint32)
            x = bits.view(np.float32)
            y = np.empty_like(x)
            _core.exp_array(x, y)
            exact = np.exp(x.astype(np.float64))
            ulp = np.spacing(exact.astype(np.float32)).astype(np.float64)
            worst = max(worst, float(np.max(np.abs(y.astype(np.float64) - exact) / ulp)))
    assert worst <= 1.5, worst


def test_logarithm_every_positive_float32(isa):
    """The kernels' float32 log over every bit pattern from +0.0 to the
    last NaN (subnormals, 0, inf and NaN included), against their float64
    log (itself checked against long double below), in C.

    The documented bound (README) is 1 ulp; measured maximum 0.882 ulp on
    the SSE2 path and 0.900 ulp on the AVX2 one (the division-free reduced
    logarithm), 0.591 ulp on the AVX-512 one (the table-driven logarithm)."""
    worst = _core.log_f32_max_ulp(0, 0x7FFFFFFF)
    assert worst <= 1.0, worst


def test_logarithm_float64_sampled(isa):
    """float64 log against long double over the whole range, subnormals
    and the neighbourhood of 1 included: at most 1.5 ulp (measured 1.23 on
    the SSE2 path, 1.14 on AVX2, 1.12 on AVX-512)."""
    rng = np.random.default_rng(3)
    x = np.concatenate([np.exp(rng.uniform(-745.0, 709.7, 1_000_000)),
                        rng.uniform(0.5, 2.0, 500_000), rng.uniform(0.0, 1e-307, 50_000),
                        np.linspace(1 - 1e-6, 1 + 1e-6, 100_001)])
    y = np.empty_like(x)
    _core.log_array(x, y)
    exact = np.log(x.astype(np.longdouble))
    ulp = np.spacing(exact.astype(np.float64)).astype(np.longdouble)
    assert float(np.max(np.abs(y.astype(np.longdouble) - exact) / np.abs(ulp))) <= 1.5


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logarithm_special_values_and_negatives(isa, dtype):
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, -1e-45], dtype=dtype)
    y = np.empty_like(x)
    _core.log_array(x, y)
    assert y[0] == -np.inf and y[1] == -np.inf and y[2] == np.inf and y[5] == 0.0
    assert np.isnan(y[3]) and np.isnan(y[4]) and np.isnan(y[6]) and np.isnan(y[7])
    # every 997th negative float32 pattern: NaN
    negatives = np.arange(0x80000001, 0x100000000, 997, dtype=np.uint64).astype(np.uint32)
    values = negatives.view(np.float32).astype(dtype)
    out = np.empty_like(values)
    _core.log_array(values, out)
    assert np.isnan(out).all()
