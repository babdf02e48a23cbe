"""The log-sum-exp and argmax of every row, from the loss pass itself
(``_core.run(..., row_lse=, row_argmax=)``), against the float64 reference."""
import numpy as np
import pytest

import ce_kernels as ck
import reference as ref
from ce_kernels import _core

pytestmark = pytest.mark.usefixtures("isa")

ml_dtypes = pytest.importorskip("ml_dtypes")
DTYPES = {np.float32: _core.DTYPE_FLOAT32, np.float64: _core.DTYPE_FLOAT64,
          ml_dtypes.bfloat16: _core.DTYPE_BFLOAT16}


def loss_pass(x, target, mode=_core.MODE_LOSS, *, out=None, stats=True, n_threads=1, **options):
    """(row losses, row lse, row argmax) of one kernel call on 2-D logits."""
    n = x.shape[0]
    row_out = np.full(n, 7.0)
    lse = np.full(n, 7.0) if stats else None
    argmax = np.full(n, -7, dtype=np.int64) if stats else None
    _core.run(mode, DTYPES[x.dtype.type], x, out=out, target=target, row_out=row_out,
              row_lse=lse, row_argmax=argmax, n_threads=n_threads, **options)
    return row_out, lse, argmax


def case(rng, shape, dtype, scale=3.0):
    x = (rng.standard_normal(shape) * scale).astype(dtype)
    t = rng.integers(0, shape[1], shape[0])
    t[::3] = -100
    return x, t


@pytest.mark.parametrize("dtype", list(DTYPES), ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(1, 1), (9, 37), (5, 4100), (2, 20000)], ids=str)
@pytest.mark.parametrize("softcap", [0.0, 2.5])
def test_lse_and_argmax_match_reference(rng, dtype, shape, softcap):
    x, t = case(rng, shape, dtype)
    x64 = x.astype(np.float64)
    expected_lse = ref.logsumexp(ref.softcapped(x64, softcap or None))
    for threads in (1, 3):
        _, lse, argmax = loss_pass(x, t, softcap=softcap, n_threads=threads)
        rtol = 1e-12 if dtype is np.float64 else 2e-6
        np.testing.assert_allclose(lse, expected_lse, rtol=rtol, atol=rtol)
        np.testing.assert_array_equal(argmax, np.argmax(x64, axis=-1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7, 300), (2, 9000)], ids=str)
def test_asking_changes_nothing_else(rng, dtype, shape):
    """Losses and gradients are bitwise those of a call without the extra
    outputs; ignored rows give loss 0 and a zero gradient yet their lse."""
    x, t = case(rng, shape, dtype)
    opts = dict(smoothing=0.1, z_loss=1e-3, grad_scale=0.5)
    for threads in (1, 2):
        g0, g1 = np.empty_like(x), np.empty_like(x)
        loss0, _, _ = loss_pass(x, t, _core.MODE_LOSS_GRAD, out=g0, stats=False,
                                n_threads=threads, **opts)
        loss1, lse, argmax = loss_pass(x, t, _core.MODE_LOSS_GRAD, out=g1, n_threads=threads,
                                       **opts)
        np.testing.assert_array_equal(loss1, loss0)
        np.testing.assert_array_equal(g1, g0)
        assert np.all(loss1[t == -100] == 0) and np.all(g1[t == -100] == 0)
        np.testing.assert_allclose(lse, ref.logsumexp(x.astype(np.float64)), rtol=2e-6)
        np.testing.assert_array_equal(argmax, np.argmax(x, axis=-1))


@pytest.mark.parametrize("shape", [(6, 5000), (2, 9000)], ids=str)
def test_in_place_gradient_keeps_the_argmax(rng, shape):
    """The argmax is found after the first sweep; a gradient written over the
    logits must not have replaced them by then."""
    x, t = case(rng, shape, np.float32)
    expected_argmax = np.argmax(x, axis=-1)
    separate = np.empty_like(x)
    loss_sep, lse_sep, _ = loss_pass(x, t, _core.MODE_LOSS_GRAD, out=separate, n_threads=2)
    loss, lse, argmax = loss_pass(x, t, _core.MODE_LOSS_GRAD, out=x, n_threads=2)
    np.testing.assert_array_equal(argmax, expected_argmax)
    np.testing.assert_array_equal(loss, loss_sep)
    np.testing.assert_array_equal(lse, lse_sep)
    np.testing.assert_allclose(x, separate, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("shape", [(6, 5000), (2, 9000)], ids=str)
def test_half_in_place_gradient_keeps_the_argmax(rng, shape):
    """In place, half-precision exponentials are kept beside the output
    (per thread on whole rows, shared when threads split a row): the logits
    stay for the argmax, and the gradient is the float32 one of the upcast
    logits rounded once."""
    x, t = case(rng, shape, ml_dtypes.bfloat16)
    upcast = x.astype(np.float32)
    for threads in (1, 2):
        work = x.copy()
        grad32 = np.empty_like(upcast)
        loss32, lse32, _ = loss_pass(upcast, t, _core.MODE_LOSS_GRAD, out=grad32, n_threads=threads)
        loss, lse, argmax = loss_pass(work, t, _core.MODE_LOSS_GRAD, out=work, n_threads=threads)
        np.testing.assert_array_equal(argmax, np.argmax(upcast, axis=-1))
        np.testing.assert_allclose(loss, loss32, rtol=1e-6)
        np.testing.assert_allclose(lse, ref.logsumexp(upcast.astype(np.float64)), rtol=2e-6)
        np.testing.assert_array_equal(work, grad32.astype(ml_dtypes.bfloat16))


def test_special_rows():
    """Ties take the first index, NaN wins as in numpy.argmax, +inf gives an
    lse of +inf, a row of -inf only an lse of -inf."""
    inf = np.inf
    x = np.array([[1.0, 3.0, 3.0, 0.0],
                  [1.0, np.nan, 5.0, np.nan],
                  [0.0, inf, 1.0, 2.0],
                  [-inf, -inf, -inf, -inf]], dtype=np.float32)
    _, lse, argmax = loss_pass(x, np.array([0, 0, 0, -100]))
    np.testing.assert_array_equal(argmax, [1, 1, 1, 0])
    assert lse[0] == pytest.approx(ref.logsumexp(x[0].astype(np.float64)), rel=1e-6)
    assert np.isnan(lse[1]) and lse[2] == inf and lse[3] == -inf
