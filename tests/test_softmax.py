"""log_softmax, softmax and logsumexp against the float64 reference."""
import numpy as np
import pytest

import ce_kernels as ck
import reference as ref
from conftest import tolerance

# Each test runs on every instruction-set path this CPU has.
pytestmark = pytest.mark.usefixtures("isa")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axis", [((7,), 0), ((4, 9), -1), ((4, 9), 0), ((3, 5, 4100), 1),
                                        ((3, 5, 4100), -1), ((2, 1), -1), ((1, 50000), -1)])
def test_match_reference(rng, dtype, shape, axis):
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    tol = tolerance(dtype)
    for fn, reference in [(ck.log_softmax, ref.log_softmax), (ck.softmax, ref.softmax),
                          (ck.logsumexp, ref.logsumexp)]:
        got = fn(x, axis=axis)
        expected = reference(x.astype(np.float64), axis=axis)
        assert np.shape(got) == np.shape(expected)
        assert np.asarray(got).dtype == dtype
        np.testing.assert_allclose(got, expected, rtol=tol["rtol"] * 4, atol=tol["atol"],
                                   err_msg=fn.__name__)


def test_softmax_rows_sum_to_one(rng):
    x = rng.standard_normal((16, 32000)).astype(np.float32) * 10
    np.testing.assert_allclose(ck.softmax(x).sum(axis=-1, dtype=np.float64), 1.0, rtol=1e-5)


def test_logsumexp_of_1d_is_scalar():
    out = ck.logsumexp(np.array([0.0, 0.0]))
    assert np.ndim(out) == 0
    assert out == pytest.approx(np.log(2.0), rel=1e-15)


def test_empty_axis():
    assert np.all(ck.logsumexp(np.zeros((3, 0))) == -np.inf)
    assert ck.softmax(np.zeros((3, 0))).shape == (3, 0)
    assert ck.log_softmax(np.zeros((0, 4))).shape == (0, 4)


def test_masked_entries():
    x = np.array([[0.0, -np.inf, 1.0, -np.inf]])
    p = ck.softmax(x)
    assert p[0, 1] == 0 and p[0, 3] == 0
    np.testing.assert_allclose(p[0, [0, 2]], ref.softmax(np.array([0.0, 1.0])), rtol=1e-14)
    assert ck.log_softmax(x)[0, 1] == -np.inf
    assert ck.logsumexp(np.array([-np.inf, -np.inf])) == -np.inf
