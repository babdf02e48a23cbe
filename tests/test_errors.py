"""Bad input raises a clear exception naming what is wrong."""
import numpy as np
import pytest

import ce_kernels as ck

LOGITS = np.zeros((4, 5), dtype=np.float32)
TARGET = np.array([0, 1, 2, 3])



@pytest.mark.parametrize("fn", [ck.cross_entropy, ck.cross_entropy_with_grad])
class TestLossErrors:
    def test_target_out_of_range_reports_position_and_value(self, fn):
        target = np.array([[0, 1], [7, 2]])
        with pytest.raises(IndexError, match=r"target\[1, 0\] = 7 .*\[0, 5\)"):
            fn(np.zeros((2, 2, 5)), target)

    def test_negative_target_not_ignore_index(self, fn):
        with pytest.raises(IndexError, match=r"target\[2\] = -1"):
            fn(LOGITS, np.array([0, 1, -1, 3]))

    def test_target_shape_mismatch(self, fn):
        with pytest.raises(ValueError, match=r"target has shape \(3,\), expected \(4,\)"):
            fn(LOGITS, np.array([0, 1, 2]))

    def test_soft_target_shape_mismatch(self, fn):
        with pytest.raises(ValueError, match="soft"):
            fn(LOGITS, np.zeros((4, 6)))

    def test_float_target_of_index_shape(self, fn):
        with pytest.raises(ValueError, match="integer array of shape"):
            fn(LOGITS, np.zeros(4))

    def test_bool_target(self, fn):
        with pytest.raises(TypeError, match="target"):
            fn(LOGITS, np.zeros(4, dtype=bool))

    @pytest.mark.parametrize("bad", [np.zeros((4, 5), dtype=np.int32), np.zeros((4, 5), dtype=bool)])
    def test_integer_logits(self, fn, bad):
        with pytest.raises(TypeError, match="logits must be a floating-point array"):
            fn(bad, TARGET)

    def test_complex_logits(self, fn):
        with pytest.raises(TypeError, match="complex"):
            fn(np.zeros((4, 5), dtype=np.complex64), TARGET)

    def test_non_numeric_logits(self, fn):
        with pytest.raises(TypeError, match="logits"):
            fn(np.array([["a", "b"]]), np.array([0]))
        with pytest.raises(TypeError, match="logits"):
            fn([[1.0, None]], [0])

    def test_unsupported_float_dtype(self, fn):
        with pytest.raises(TypeError, match="supported dtypes are float32, float64, float16 and bfloat16"):
            fn(np.zeros((4, 5), dtype=np.longdouble), TARGET)

    def test_zero_dim_logits(self, fn):
        with pytest.raises(ValueError, match="at least one dimension"):
            fn(np.float32(1.0), np.array(0))

    def test_no_classes(self, fn):
        with pytest.raises(ValueError, match="at least one class"):
            fn(np.zeros((4, 0)), TARGET)

    def test_weight_wrong_length(self, fn):
        with pytest.raises(ValueError, match=r"weight must have shape \(5,\)"):
            fn(LOGITS, TARGET, weight=np.ones(4))

    def test_weight_non_numeric(self, fn):
        with pytest.raises(TypeError, match="weight"):
            fn(LOGITS, TARGET, weight=np.array(["a"] * 5))

    @pytest.mark.parametrize("reduction", ["avg", None, "MEAN"])
    def test_unknown_reduction(self, fn, reduction):
        with pytest.raises(ValueError, match="reduction must be one of"):
            fn(LOGITS, TARGET, reduction=reduction)

    @pytest.mark.parametrize("eps", [-0.1, 1.5, float("nan")])
    def test_label_smoothing_out_of_range(self, fn, eps):
        with pytest.raises(ValueError, match="label_smoothing must be in"):
            fn(LOGITS, TARGET, label_smoothing=eps)

    def test_label_smoothing_not_a_number(self, fn):
        with pytest.raises(TypeError, match="label_smoothing"):
            fn(LOGITS, TARGET, label_smoothing="0.1")

    @pytest.mark.parametrize("n", [0, -2])
    def test_num_threads_below_one(self, fn, n):
        with pytest.raises(ValueError, match="num_threads must be >= 1"):
            fn(LOGITS, TARGET, num_threads=n)

    def test_num_threads_not_integer(self, fn):
        with pytest.raises(TypeError, match="num_threads"):
            fn(LOGITS, TARGET, num_threads=1.5)

    def test_ignore_index_not_integer(self, fn):
        with pytest.raises(TypeError, match="ignore_index"):
            fn(LOGITS, TARGET, ignore_index=1.5)


class TestOutErrors:
    def test_wrong_shape(self):
        with pytest.raises(ValueError, match=r"out has shape \(4, 4\)"):
            ck.cross_entropy_with_grad(LOGITS, TARGET, out=np.empty((4, 4), np.float32))

    def test_wrong_dtype(self):
        with pytest.raises(ValueError, match="out has dtype float64"):
            ck.cross_entropy_with_grad(LOGITS, TARGET, out=np.empty((4, 5)))

    def test_read_only(self):
        out = np.empty((4, 5), np.float32)
        out.flags.writeable = False
        with pytest.raises(ValueError, match="read-only"):
            ck.cross_entropy_with_grad(LOGITS, TARGET, out=out)

    def test_not_an_array(self):
        with pytest.raises(TypeError, match="out must be a numpy.ndarray"):
            ck.cross_entropy_with_grad(LOGITS, TARGET, out=[[0.0] * 5] * 4)

    def test_partial_overlap_with_logits(self):
        buf = np.zeros((5, 5), np.float32)
        with pytest.raises(ValueError, match="overlaps logits"):
            ck.cross_entropy_with_grad(buf[:4], TARGET, out=buf[1:])

    def test_overlap_with_soft_target(self):
        soft = np.full((4, 5), 0.2, np.float32)
        with pytest.raises(ValueError, match="overlaps target"):
            ck.cross_entropy_with_grad(LOGITS, soft, out=soft)

    def test_grad_output_must_be_scalar_for_mean(self):
        with pytest.raises(ValueError, match="grad_output must be a scalar"):
            ck.cross_entropy_with_grad(LOGITS, TARGET, grad_output=np.ones(4))

    def test_grad_output_shape_for_none(self):
        with pytest.raises(ValueError, match="does not broadcast"):
            ck.cross_entropy_with_grad(LOGITS, TARGET, reduction="none", grad_output=np.ones(3))


class TestNormalizerErrors:
    @pytest.mark.parametrize("fn", [ck.softmax, ck.log_softmax, ck.logsumexp])
    def test_axis_out_of_bounds(self, fn):
        with pytest.raises(ValueError, match="axis 2 is out of bounds"):
            fn(np.zeros((2, 3)), axis=2)

    @pytest.mark.parametrize("fn", [ck.softmax, ck.log_softmax, ck.logsumexp])
    def test_integer_input(self, fn):
        with pytest.raises(TypeError, match="x must be a floating-point array"):
            fn(np.zeros((2, 3), dtype=np.int64))

    @pytest.mark.parametrize("fn", [ck.softmax, ck.log_softmax])
    def test_out_wrong_shape(self, fn):
        with pytest.raises(ValueError, match="out has shape"):
            fn(np.zeros((2, 3)), out=np.zeros((3, 2)))


def test_set_num_threads_validates():
    with pytest.raises(ValueError):
        ck.set_num_threads(0)
    with pytest.raises(TypeError):
        ck.set_num_threads("2")


def test_set_isa_rejects_unknown():
    with pytest.raises(ValueError, match="instruction set"):
        ck.set_isa("avx9000")
