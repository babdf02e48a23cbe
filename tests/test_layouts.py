"""Every memory layout gives the same answer; inputs are never modified;
``out=`` is really written and shared."""
import numpy as np
import pytest

import ce_kernels as ck
import reference as ref
from conftest import tolerance

# Each test runs on every instruction-set path this CPU has.
pytestmark = pytest.mark.usefixtures("isa")


def layouts(base):
    """(name, array with the values of base) for many memory layouts."""
    yield "C", np.ascontiguousarray(base)
    yield "F", np.asfortranarray(base)
    big = np.zeros((base.shape[0] * 2, base.shape[1] * 3), dtype=base.dtype)
    big[::2, ::3] = base
    yield "strided", big[::2, ::3]
    big2 = np.zeros((base.shape[0] * 2, base.shape[1] + 7), dtype=base.dtype)
    big2[::2, 3:3 + base.shape[1]] = base
    yield "row_strided", big2[::2, 3:3 + base.shape[1]]
    yield "reversed", base[::-1, ::-1][::-1, ::-1].copy()[::-1][::-1]
    ro = base.copy()
    ro.flags.writeable = False
    yield "read_only", ro
    yield "byteswapped", base.astype(base.dtype.newbyteorder(">" if base.dtype.byteorder in "=<" else "<"))
    raw = np.zeros(base.nbytes + 1, dtype=np.uint8)
    unaligned = np.frombuffer(raw.data, dtype=base.dtype, count=base.size, offset=1).reshape(base.shape)
    unaligned = unaligned.copy() if unaligned.flags.writeable is False else unaligned
    raw[1:] = np.frombuffer(np.ascontiguousarray(base).tobytes(), dtype=np.uint8)
    yield "unaligned", np.frombuffer(raw.data, dtype=base.dtype, count=base.size, offset=1).reshape(base.shape)
    yield "broadcast_rows", np.broadcast_to(base[:1], base.shape)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("soft", [False, True], ids=["index", "soft"])
def test_all_layouts_agree(rng, dtype, soft):
    base = (rng.standard_normal((9, 2100)) * 2).astype(dtype)
    target = rng.integers(0, 2100, 9)
    if soft:
        target = ref.softmax(rng.standard_normal((9, 2100)))
    for name, logits in layouts(base):
        values = np.array(logits, dtype=np.float64)
        expected = ref.cross_entropy(values, target, reduction="none", label_smoothing=0.1)
        expected_grad = ref.cross_entropy_grad(values, target, reduction="none", label_smoothing=0.1)
        before = np.array(logits, copy=True)
        loss, grad = ck.cross_entropy_with_grad(logits, target, reduction="none", label_smoothing=0.1)
        tol = tolerance(dtype)
        np.testing.assert_allclose(loss, expected, err_msg=name, **tol)
        np.testing.assert_allclose(grad, expected_grad, err_msg=name, rtol=tol["rtol"] * 10, atol=tol["atol"])
        np.testing.assert_array_equal(logits, before, err_msg=f"{name}: input modified")
        assert grad.dtype == np.dtype(dtype)


def test_inputs_never_modified(rng):
    logits = rng.standard_normal((8, 300)).astype(np.float32)
    target = rng.integers(0, 300, 8)
    weight = rng.random(300).astype(np.float32)
    soft = ref.softmax(rng.standard_normal((8, 300))).astype(np.float32)
    grad_output = rng.standard_normal(8)
    copies = [a.copy() for a in (logits, target, weight, soft, grad_output)]
    ck.cross_entropy_with_grad(logits, target, weight=weight, label_smoothing=0.2)
    ck.cross_entropy_with_grad(logits, soft, weight=weight, reduction="none", grad_output=grad_output)
    ck.softmax(logits)
    ck.log_softmax(logits)
    ck.logsumexp(logits)
    for original, now in zip(copies, (logits, target, weight, soft, grad_output)):
        np.testing.assert_array_equal(original, now)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(5, 3000), (1, 300000), (2, 3, 70)])
def test_out_is_shared_and_in_place_matches(rng, dtype, shape):
    logits = rng.standard_normal(shape).astype(dtype)
    target = rng.integers(0, shape[-1], shape[:-1])
    expected_loss, expected_grad = ck.cross_entropy_with_grad(logits, target, label_smoothing=0.1)

    out = np.empty_like(logits)
    loss, grad = ck.cross_entropy_with_grad(logits, target, label_smoothing=0.1, out=out)
    assert grad is out
    np.testing.assert_array_equal(out, expected_grad)
    assert loss == expected_loss

    in_place = logits.copy()
    loss, grad = ck.cross_entropy_with_grad(in_place, target, label_smoothing=0.1, out=in_place)
    assert grad is in_place
    np.testing.assert_array_equal(in_place, expected_grad)
    assert loss == expected_loss


def test_out_with_awkward_layouts(rng):
    logits = rng.standard_normal((6, 40))
    target = rng.integers(0, 40, 6)
    _, expected = ck.cross_entropy_with_grad(logits, target)
    fortran_out = np.empty((6, 40), order="F")
    _, grad = ck.cross_entropy_with_grad(logits, target, out=fortran_out)
    assert grad is fortran_out
    np.testing.assert_array_equal(fortran_out, expected)
    holder = np.zeros((6, 80))
    strided_out = holder[:, ::2]
    ck.cross_entropy_with_grad(logits, target, out=strided_out)
    np.testing.assert_array_equal(holder[:, ::2], expected)
    assert np.all(holder[:, 1::2] == 0)
    # in place on a Fortran-ordered array
    f_logits = np.asfortranarray(logits)
    ck.cross_entropy_with_grad(f_logits, target, out=f_logits)
    np.testing.assert_array_equal(f_logits, expected)


@pytest.mark.parametrize("fn", [ck.softmax, ck.log_softmax])
def test_normalizer_out_and_in_place(rng, fn):
    x = rng.standard_normal((4, 5000))
    expected = fn(x)
    out = np.empty_like(x)
    assert fn(x, out=out) is out
    np.testing.assert_array_equal(out, expected)
    y = x.copy()
    assert fn(y, out=y) is y
    np.testing.assert_array_equal(y, expected)
    z = np.asfortranarray(x)
    fn(z, axis=0, out=z)
    np.testing.assert_array_equal(z, fn(x, axis=0))
