"""distill_kl, distill_jsd and their gradients against the float64 reference
(tests/reference.py), finite differences and PyTorch's autograd; options,
layouts, threads, masked and large logits, and bad input."""
import math

import numpy as np
import pytest

import ce_kernels as ck
import reference as ref

pytestmark = pytest.mark.usefixtures("isa")

# (function mode of the reference, keyword arguments of the public call)
MODES = [("forward", dict(direction="forward")), ("reverse", dict(direction="reverse"))] + [
    ("jsd", dict(beta=b)) for b in (0.0, 0.1, 0.5, 0.9, 1.0)]
TEMPERATURES = [0.5, 1.0, 3.0]


def loss_fn(kwargs, with_grad=False):
    if "beta" in kwargs:
        return ck.distill_jsd_with_grad if with_grad else ck.distill_jsd
    return ck.distill_kl_with_grad if with_grad else ck.distill_kl


def ref_kwargs(mode, kwargs):
    return dict(mode=mode, beta=kwargs.get("beta", 0.5))


def float32_tolerance(student, teacher, temperature):
    """float32 arithmetic rounds each tempered logit and log-sum-exp to
    about 6e-8 of its size; the loss and gradient carry that error times
    the largest tempered logit (and T**2, T for the gradient)."""
    size = 1.0 + max(np.abs(student).max(), np.abs(teacher).max()) / temperature
    return dict(rtol=2e-6, atol=4e-7 * size * max(temperature, 1.0) ** 2)


def assert_float32_grad_close(grad, expected, student, teacher, temperature, rtol=2e-6,
                              atol=1e-30):
    """Each element of a float32 gradient is T p (a log-ratio or a
    difference of probabilities): its probabilities come from exponentials
    of rounded arguments (about 6e-8 of the largest tempered logit each),
    and a log-ratio cancels to what is left of such rounded terms. So the
    error bound of an element scales with T (p_s + p_t) and that size."""
    s64, t64 = (np.asarray(a, dtype=np.float64) for a in (student, teacher))
    size = 1.0 + max(np.abs(s64).max(), np.abs(t64).max()) / temperature
    p = ref.softmax(s64 / temperature) + ref.softmax(t64 / temperature)
    bound = rtol * np.abs(expected) + 8e-7 * size * temperature * p + atol
    excess = np.abs(np.asarray(grad, dtype=np.float64) - expected) / bound
    assert excess.max() <= 1.0, (np.unravel_index(excess.argmax(), excess.shape), excess.max())


def logits_pair(rng, shape, dtype=np.float64, scale=3.0):
    s = (rng.standard_normal(shape) * scale).astype(dtype)
    t = (rng.standard_normal(shape) * scale).astype(dtype)
    return s, t


def torch_grad(student, teacher, temperature, mode, beta=0.5):
    """d (sum of row losses) / d student by PyTorch autograd in float64,
    from the formulas written with torch's own log_softmax."""
    torch = pytest.importorskip("torch")
    s = torch.tensor(np.asarray(student, dtype=np.float64), requires_grad=True)
    t = torch.tensor(np.asarray(teacher, dtype=np.float64))
    log_ps = torch.log_softmax(s / temperature, -1)
    log_pt = torch.log_softmax(t / temperature, -1)
    if mode == "jsd" and beta in (0.0, 1.0):
        mode = "forward" if beta == 0.0 else "reverse"
    if mode == "forward":
        loss = torch.nn.functional.kl_div(log_ps, log_pt, log_target=True, reduction="sum")
    elif mode == "reverse":
        loss = torch.nn.functional.kl_div(log_pt, log_ps, log_target=True, reduction="sum")
    else:
        log_m = torch.logsumexp(torch.stack([log_pt + math.log(beta),
                                             log_ps + math.log1p(-beta)]), 0)
        loss = (beta * torch.nn.functional.kl_div(log_m, log_pt, log_target=True, reduction="sum")
                + (1 - beta) * torch.nn.functional.kl_div(log_m, log_ps, log_target=True,
                                                          reduction="sum"))
    (loss * temperature ** 2).backward()
    return s.grad.numpy()


# ---- values ------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode,kwargs", MODES)
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_loss_matches_reference(rng, dtype, mode, kwargs, temperature):
    # V = 5000 is not a multiple of the chunk size: three chunks, the last partial
    s, t = logits_pair(rng, (4, 5000), dtype)
    got = loss_fn(kwargs)(s, t, temperature=temperature, reduction="none", **kwargs)
    expected = ref.distill_row_losses(s, t, temperature, **ref_kwargs(mode, kwargs))
    assert got.dtype == dtype and got.shape == (4,)
    tol = float32_tolerance(s, t, temperature) if dtype == np.float32 else dict(rtol=1e-12,
                                                                                 atol=1e-12)
    np.testing.assert_allclose(got, expected, **tol)


@pytest.mark.parametrize("mode,kwargs", MODES)
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_gradient_matches_finite_differences(rng, mode, kwargs, temperature):
    s, t = logits_pair(rng, (3, 7))
    target = np.array([4, -100, 0])
    loss, grad = loss_fn(kwargs, True)(s, t, temperature=temperature, target=target, **kwargs)
    numeric = ref.numerical_grad(
        lambda x: ref.distill_loss(x, t, temperature, target=target, **ref_kwargs(mode, kwargs)),
        s)
    np.testing.assert_allclose(grad, numeric, rtol=1e-7, atol=1e-9)
    assert np.all(grad[1] == 0.0)
    np.testing.assert_allclose(loss, ref.distill_loss(s, t, temperature, target=target,
                                                      **ref_kwargs(mode, kwargs)), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode,kwargs", MODES)
def test_gradient_matches_pytorch(rng, dtype, mode, kwargs):
    s, t = logits_pair(rng, (3, 5000), dtype)
    _, grad = loss_fn(kwargs, True)(s, t, temperature=2.0, reduction="sum", **kwargs)
    expected = torch_grad(s, t, 2.0, mode, kwargs.get("beta", 0.5))
    assert grad.dtype == dtype
    if dtype == np.float32:
        assert_float32_grad_close(grad, expected, s, t, 2.0)
    else:
        np.testing.assert_allclose(grad, expected, rtol=1e-10, atol=1e-15)


def test_forward_kl_matches_pytorch_kl_div(rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    s, t = logits_pair(rng, (6, 3000))
    T = 2.0
    expected = F.kl_div(F.log_softmax(torch.tensor(s) / T, -1), F.log_softmax(torch.tensor(t) / T, -1),
                        log_target=True, reduction="batchmean") * T * T
    assert ck.distill_kl(s, t, temperature=T) == pytest.approx(float(expected), rel=1e-12)


@pytest.mark.parametrize("reduction", ["batchmean", "sum", "mean", "none"])
@pytest.mark.parametrize("mode,kwargs", [MODES[0], MODES[1], MODES[4]])
def test_reductions_and_their_gradients(rng, reduction, mode, kwargs):
    s, t = logits_pair(rng, (4, 5))
    target = np.array([1, -100, 3, -100])
    rk = ref_kwargs(mode, kwargs)
    loss, grad = loss_fn(kwargs, True)(s, t, target=target, reduction=reduction, **kwargs)
    expected = ref.distill_loss(s, t, target=target, reduction=reduction, **rk)
    np.testing.assert_allclose(loss, expected, rtol=1e-12, atol=1e-15)
    # "none": the gradient of the sum of the row losses
    summed = "sum" if reduction == "none" else reduction
    numeric = ref.numerical_grad(
        lambda x: ref.distill_loss(x, t, target=target, reduction=summed, **rk), s)
    np.testing.assert_allclose(grad, numeric, rtol=1e-7, atol=1e-10)
    if reduction == "none":
        assert loss[1] == 0.0 and loss[3] == 0.0


def test_no_counted_rows():
    s = np.zeros((2, 3))
    t = np.array([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    target = np.array([-100, -100])
    assert math.isnan(ck.distill_kl(s, t, target=target))
    assert math.isnan(ck.distill_kl(s, t, target=target, reduction="mean"))
    assert ck.distill_kl(s, t, target=target, reduction="sum") == 0.0
    loss, grad = ck.distill_jsd_with_grad(s, t, target=target)
    assert math.isnan(loss) and np.all(grad == 0.0)
    empty = np.zeros((0, 3))
    assert math.isnan(ck.distill_kl(empty, empty))
    assert ck.distill_kl(empty, empty, reduction="none").shape == (0,)


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_jsd_endpoints_are_the_kl_directions(rng, beta):
    s, t = logits_pair(rng, (3, 300))
    direction = "forward" if beta == 0.0 else "reverse"
    kl, kl_grad = ck.distill_kl_with_grad(s, t, temperature=1.5, direction=direction)
    jsd, jsd_grad = ck.distill_jsd_with_grad(s, t, temperature=1.5, beta=beta)
    assert kl == jsd
    assert np.array_equal(kl_grad, jsd_grad)


def test_symmetric_jsd_is_bounded_by_log_2(rng):
    s = rng.standard_normal((3, 50)) * 30
    t = -s
    loss = ck.distill_jsd(s, t, reduction="none")
    assert np.all(loss <= math.log(2) + 1e-12) and np.all(loss >= 0)
    np.testing.assert_allclose(ck.distill_jsd(s, s, reduction="none"), 0.0, atol=1e-15)


# ---- half precision ----------------------------------------------------------------

def half_dtype(name):
    if name == "bfloat16":
        return pytest.importorskip("ml_dtypes").bfloat16
    return np.float16


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
@pytest.mark.parametrize("mode,kwargs", MODES)
def test_half_precision(rng, name, mode, kwargs):
    dtype = half_dtype(name)
    s, t = logits_pair(rng, (3, 3000), dtype)
    s64, t64 = s.astype(np.float64), t.astype(np.float64)
    loss, grad = loss_fn(kwargs, True)(s, t, temperature=2.0, reduction="none", **kwargs)
    # computed in float32 from the half values themselves: float32's tolerance
    assert loss.dtype == np.float32 and grad.dtype == np.dtype(dtype)
    np.testing.assert_allclose(loss, ref.distill_row_losses(s64, t64, 2.0, **ref_kwargs(mode, kwargs)),
                               **float32_tolerance(s64, t64, 2.0))
    # the gradient is rounded to the half type on output: half an ulp of it
    # (relative 2**-11, 2**-8), and below float16's normal range half its
    # spacing 2**-24
    eps = 2.0 ** -11 if name == "float16" else 2.0 ** -8
    expected = torch_grad(s64, t64, 2.0, mode, kwargs.get("beta", 0.5))
    assert_float32_grad_close(grad, expected, s64, t64, 2.0, rtol=eps + 2e-6,
                              atol=2.0 ** -25 if name == "float16" else 1e-30)


# ---- outputs, layouts, threads -----------------------------------------------------

@pytest.mark.parametrize("mode,kwargs", [MODES[0], MODES[1], MODES[3]])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_in_place_and_out_buffer(rng, mode, kwargs, dtype):
    s, t = logits_pair(rng, (5, 4100), dtype)
    t_copy = t.copy()
    fn = loss_fn(kwargs, True)
    loss, grad = fn(s.copy(), t, temperature=2.0, **kwargs)
    buffer = np.full_like(s, np.nan)
    loss_b, grad_b = fn(s, t, temperature=2.0, out=buffer, **kwargs)
    assert grad_b is buffer and np.array_equal(grad_b, grad) and loss_b == loss
    in_place = s.copy()
    loss_i, grad_i = fn(in_place, t, temperature=2.0, out=in_place, **kwargs)
    assert grad_i is in_place and np.array_equal(grad_i, grad) and loss_i == loss
    assert np.array_equal(t, t_copy)


@pytest.mark.parametrize("mode,kwargs", [MODES[0], MODES[1], MODES[3]])
def test_layouts_give_identical_results_and_inputs_are_untouched(rng, mode, kwargs):
    s, t = logits_pair(rng, (2, 3, 2500), np.float32)
    expected_loss, expected_grad = loss_fn(kwargs, True)(s, t, **kwargs)
    wide_s = np.zeros((2, 3, 5000), np.float32)
    wide_s[..., ::2] = s
    layouts = [
        (np.asfortranarray(s), np.asfortranarray(t)),            # F order
        (wide_s[..., ::2], t[::1]),                               # strided last axis
        (s.astype(s.dtype.newbyteorder()), t),                    # swapped byte order
    ]
    read_only_s, read_only_t = s.copy(), t.copy()
    read_only_s.flags.writeable = read_only_t.flags.writeable = False
    layouts.append((read_only_s, read_only_t))
    for ls, lt in layouts:
        before_s, before_t = ls.copy(), lt.copy()
        loss, grad = loss_fn(kwargs, True)(ls, lt, **kwargs)
        assert loss == expected_loss and np.array_equal(grad, expected_grad)
        assert np.array_equal(ls, before_s) and np.array_equal(lt, before_t)
    rows = loss_fn(kwargs)(s, t, reduction="none", **kwargs)
    assert rows.shape == (2, 3)


@pytest.mark.parametrize("mode,kwargs", MODES[:4])
def test_thread_counts_agree_bitwise(rng, mode, kwargs):
    s, t = logits_pair(rng, (9, 5000), np.float32)
    target = np.array([0, 1, -100, 3, 4, 5, -100, 7, 8])
    results = [loss_fn(kwargs, True)(s, t, target=target, reduction="none", num_threads=n,
                                     **kwargs) for n in (1, 2)]
    assert np.array_equal(results[0][0], results[1][0])
    assert np.array_equal(results[0][1], results[1][1])


# ---- masked and large logits -------------------------------------------------------

def test_masked_vocabulary():
    t = np.array([[2.0, -np.inf, 0.5, 1.0], [0.0, 1.0, -np.inf, -np.inf]])
    s = np.array([[0.0, 3.0, -1.0, 0.5], [1.0, 0.0, 2.0, -np.inf]])
    # teacher probability 0: the forward term is 0, even with the student at -inf
    loss, grad = ck.distill_kl_with_grad(s, t, reduction="none")
    np.testing.assert_allclose(loss, ref.distill_row_losses(s, t), rtol=1e-12)
    assert np.all(np.isfinite(grad)) and grad[1, 3] == 0.0
    np.testing.assert_allclose(grad, torch_grad(s, t, 1.0, "forward"), rtol=1e-12, atol=1e-15)
    # reverse: a student probability 0 contributes 0, a teacher 0 under it gives inf
    rev = ck.distill_kl(s, t, direction="reverse", reduction="none")
    assert rev[0] == np.inf and rev[1] == np.inf
    # masked in both: contributes nothing, gradient 0 there
    both_t = np.array([[1.0, -np.inf, 0.0]])
    both_s = np.array([[-0.5, -np.inf, 2.0]])
    for mode, kwargs in MODES:
        loss, grad = loss_fn(kwargs, True)(both_s, both_t, **kwargs)
        assert np.isfinite(loss) and np.all(np.isfinite(grad)) and grad[0, 1] == 0.0
        np.testing.assert_allclose(loss, ref.distill_row_losses(both_s, both_t,
                                                                 **ref_kwargs(mode, kwargs)),
                                   rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_student_without_mass_where_teacher_has_some_is_infinite(dtype):
    s = np.array([[0.0, -np.inf, 1.0]], dtype)
    t = np.array([[0.0, 1.0, 1.0]], dtype)
    assert ck.distill_kl(s, t) == np.inf
    assert math.isfinite(ck.distill_jsd(s, t, beta=0.5))
    assert math.isnan(ck.distill_kl(np.full((1, 3), -np.inf, dtype), t))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode,kwargs", MODES)
def test_large_logits_do_not_overflow(rng, dtype, mode, kwargs):
    s = (rng.choice([-1.0, 1.0], (3, 2100)) * 1e4 * rng.random((3, 2100))).astype(dtype)
    t = (rng.choice([-1.0, 1.0], (3, 2100)) * 1e4 * rng.random((3, 2100))).astype(dtype)
    s[:, 5], t[:, 5] = 1e4, 1e4
    loss, grad = loss_fn(kwargs, True)(s, t, temperature=1.0, reduction="none", **kwargs)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))
    expected = ref.distill_row_losses(s, t, **ref_kwargs(mode, kwargs))
    rtol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(loss, expected, rtol=rtol, atol=rtol)


# ---- bad input ---------------------------------------------------------------------

@pytest.mark.parametrize("call,error,match", [
    (lambda s, t: ck.distill_kl(s, t[:, :3]), ValueError, "same shape"),
    (lambda s, t: ck.distill_kl(s, t.astype(np.float32)), TypeError, "same dtype"),
    (lambda s, t: ck.distill_kl(s.astype(int), t), TypeError, "student_logits"),
    (lambda s, t: ck.distill_kl(s, t, direction="sideways"), ValueError, "direction"),
    (lambda s, t: ck.distill_jsd(s, t, beta=1.5), ValueError, "beta"),
    (lambda s, t: ck.distill_jsd(s, t, beta=-0.1), ValueError, "beta"),
    (lambda s, t: ck.distill_jsd(s, t, beta=float("nan")), ValueError, "beta"),
    (lambda s, t: ck.distill_jsd(s, t, beta="half"), TypeError, "beta"),
    (lambda s, t: ck.distill_kl(s, t, temperature=0.0), ValueError, "temperature"),
    (lambda s, t: ck.distill_kl(s, t, temperature=-1.0), ValueError, "temperature"),
    (lambda s, t: ck.distill_kl(s, t, temperature=float("inf")), ValueError, "temperature"),
    (lambda s, t: ck.distill_jsd(s, t, temperature=float("nan")), ValueError, "temperature"),
    (lambda s, t: ck.distill_kl(s, t, temperature="hot"), TypeError, "temperature"),
    (lambda s, t: ck.distill_kl(s, t, target=np.zeros(3, int)), ValueError, "target has shape"),
    (lambda s, t: ck.distill_kl(s, t, target=np.zeros(2)), TypeError, "target"),
    (lambda s, t: ck.distill_kl(s, t, reduction="average"), ValueError, "reduction"),
    (lambda s, t: ck.distill_kl(s[:, :0], t[:, :0]), ValueError, "class"),
    (lambda s, t: ck.distill_kl_with_grad(s, t, out=np.empty((2, 3))), ValueError, "out has shape"),
    (lambda s, t: ck.distill_kl_with_grad(s, t, out=t), ValueError, "overlaps teacher_logits"),
    (lambda s, t: ck.distill_jsd_with_grad(s, t, out=s[:, ::-1]), ValueError, "overlaps"),
])
def test_bad_input(call, error, match):
    s = np.zeros((2, 4))
    t = np.ones((2, 4))
    s_copy, t_copy = s.copy(), t.copy()
    with pytest.raises(error, match=match):
        call(s, t)
    assert np.array_equal(s, s_copy) and np.array_equal(t, t_copy)


# ---- the benchmark's section -------------------------------------------------------

def test_bench_section_reports_its_rows():
    from ce_kernels import bench
    r = bench.bench_distill(4, 300, threads=1, repeat=1, with_torch=False)
    ratios = bench.distill_ratios(r)
    for ours, _, floor in bench.DISTILL_ROWS:
        assert ratios[f"{ours} / {floor}"] > 0
    table = bench.format_distill_table(r)
    assert "distill_kl_with_grad (out=buf) / two-input read floor" in table
