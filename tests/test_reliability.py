"""Reliability: outputs that overlap, aliased inputs, unaligned memory,
extreme options, rows with no distribution, thread counts out of reason,
and calls interrupted from the keyboard. Each test here failed on an earlier
version of the library."""
import math
import os
import signal
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

import ce_kernels as ck
from ce_kernels import _core
import reference as ref
from conftest import tolerance

OUTSIDE_SOURCE_TREE = tempfile.gettempdir()


def run_python(code, timeout=120):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, cwd=OUTSIDE_SOURCE_TREE, timeout=timeout)


# ---- outputs whose elements share memory -----------------------------------------

def overlapping_rows(shape, dtype, row_stride_elements, base=None):
    """A writable view of shape (n, V) whose rows start row_stride_elements
    apart, over base (zeros if not given)."""
    n, vocab = shape
    if base is None:
        base = np.zeros(vocab + row_stride_elements * (n - 1), dtype=dtype)
    itemsize = base.itemsize
    return np.lib.stride_tricks.as_strided(base, shape, (row_stride_elements * itemsize, itemsize))


@pytest.mark.parametrize("row_stride", [0, 1, 7])
def test_out_with_overlapping_rows_is_refused(rng, row_stride):
    logits = rng.standard_normal((6, 8)).astype(np.float32)
    target = rng.integers(0, 8, 6)
    out = overlapping_rows((6, 8), np.float32, row_stride)
    with pytest.raises(ValueError, match="out has elements that share memory"):
        ck.cross_entropy_with_grad(logits, target, out=out)


def test_in_place_logits_with_overlapping_rows_is_refused(rng):
    memory = rng.standard_normal(8 + 3 * 4)
    logits = overlapping_rows((5, 8), np.float64, 3, base=memory)
    before = memory.copy()
    with pytest.raises(ValueError, match="share memory"):
        ck.cross_entropy_with_grad(logits, np.zeros(5, dtype=np.int64), out=logits)
    np.testing.assert_array_equal(memory, before)


@pytest.mark.parametrize("fn", [ck.softmax, ck.log_softmax])
def test_normalizer_out_with_overlapping_rows_is_refused(rng, fn):
    x = rng.standard_normal((4, 16))
    with pytest.raises(ValueError, match="share memory"):
        fn(x, out=overlapping_rows((4, 16), np.float64, 0))


def test_family_out_with_overlapping_rows_is_refused(rng):
    x = rng.standard_normal((4, 16))
    y = (rng.random((4, 16)) > 0.5).astype(np.float64)
    with pytest.raises(ValueError, match="share memory"):
        ck.binary_cross_entropy_with_grad(x, y, out=overlapping_rows((4, 16), np.float64, 2))
    with pytest.raises(ValueError, match="share memory"):
        ck.sigmoid(x, out=overlapping_rows((4, 16), np.float64, 0))


def test_outputs_that_merely_look_unusual_are_accepted(rng):
    """Negative strides, Fortran order and gaps between rows do not overlap."""
    logits = rng.standard_normal((4, 6))
    target = rng.integers(0, 6, 4)
    expected = ref.cross_entropy_grad(logits, target)
    for out in (np.empty((4, 6))[::-1], np.empty((4, 6), order="F"), np.empty((4, 12))[:, ::2],
                np.empty((8, 6))[::2]):
        _, grad = ck.cross_entropy_with_grad(logits, target, out=out)
        assert grad is out
        np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-14)


# ---- the logits passed again under another name --------------------------------

def test_in_place_logits_also_given_as_soft_target_is_refused(rng):
    logits = ref.softmax(rng.standard_normal((3, 5)))
    before = logits.copy()
    with pytest.raises(ValueError, match="out overlaps target"):
        ck.cross_entropy_with_grad(logits, logits, out=logits)
    np.testing.assert_array_equal(logits, before)


def test_in_place_logits_also_given_as_weight_is_refused(rng):
    logits = rng.random(5) + 0.5        # one row: its own length is the class count
    before = logits.copy()
    with pytest.raises(ValueError, match="out overlaps weight"):
        ck.cross_entropy_with_grad(logits, np.array(2), weight=logits, out=logits)
    np.testing.assert_array_equal(logits, before)


def test_in_place_logits_also_given_as_grad_output_is_refused(rng):
    logits = rng.standard_normal((4, 4))
    with pytest.raises(ValueError, match="out overlaps grad_output"):
        ck.cross_entropy_with_grad(logits, np.arange(4), reduction="none",
                                   grad_output=logits[:, 0], out=logits)


def test_family_in_place_logits_also_given_as_target_is_refused(rng):
    x = rng.random((3, 4))
    with pytest.raises(ValueError, match="out overlaps target"):
        ck.binary_cross_entropy_with_grad(x, x, out=x)


# ---- unaligned memory ------------------------------------------------------------

def unaligned(arr):
    """A copy of arr at an address that is not a multiple of its itemsize."""
    arr = np.asarray(arr)
    raw = np.zeros(arr.nbytes + 1, dtype=np.uint8)
    view = raw[1:].view(arr.dtype).reshape(arr.shape)
    view[...] = arr
    assert not view.flags.aligned and view.flags.c_contiguous
    return view


BRIDGE_FUNCTIONS = ["run", "check_targets", "dist_run", "bce_run", "sigmoid_run",
                    "small_mean_loss"]


@pytest.fixture
def aligned_bridge(monkeypatch):
    """Every array handed to the C bridge must be aligned: C reads them as
    typed elements, and a misaligned pointer is undefined behaviour."""
    seen = []

    def wrap(name, fn):
        def checked(*args, **kwargs):
            for arg in list(args) + list(kwargs.values()):
                if isinstance(arg, np.ndarray):
                    assert arg.flags.aligned, f"{name} got an unaligned array"
                    seen.append(name)
            return fn(*args, **kwargs)
        return checked

    for name in BRIDGE_FUNCTIONS:
        monkeypatch.setattr(_core, name, wrap(name, getattr(_core, name)))
    return seen


def test_unaligned_logits_targets_weights_and_grad_output(rng, aligned_bridge):
    logits = rng.standard_normal((5, 7))
    target = rng.integers(0, 7, 5)
    weight = rng.random(7) + 0.5
    grad_output = rng.random(5)
    options = dict(weight=weight, reduction="none", grad_output=grad_output)
    expected_loss = ref.cross_entropy(logits, target, weight=weight, reduction="none")
    expected_grad = ref.cross_entropy_grad(logits, target, weight=weight, reduction="none",
                                           grad_output=grad_output)
    loss, grad = ck.cross_entropy_with_grad(
        unaligned(logits), unaligned(target), weight=unaligned(weight), reduction="none",
        grad_output=unaligned(grad_output))
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-12)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-12, atol=1e-15)
    out = unaligned(np.zeros((5, 7)))
    ck.cross_entropy_with_grad(logits, target, out=out, **options)
    np.testing.assert_allclose(out, expected_grad, rtol=1e-12, atol=1e-15)
    assert "run" in aligned_bridge and "check_targets" in aligned_bridge


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_unaligned_logits_of_every_dtype(rng, aligned_bridge, dtype):
    logits = rng.standard_normal((3, 9)).astype(dtype)
    target = rng.integers(0, 9, 3)
    expected = ck.cross_entropy(logits.copy(), target, reduction="none")
    np.testing.assert_array_equal(ck.cross_entropy(unaligned(logits), target, reduction="none"),
                                  expected)
    np.testing.assert_array_equal(ck.softmax(unaligned(logits)), ck.softmax(logits.copy()))
    np.testing.assert_array_equal(ck.logsumexp(unaligned(logits)), ck.logsumexp(logits.copy()))


def test_unaligned_small_call(rng, aligned_bridge):
    """The fast path for a few rows checks alignment too."""
    logits = rng.standard_normal((2, 5))
    target = np.array([1, 3])
    expected = ref.cross_entropy(logits, target)
    np.testing.assert_allclose(ck.cross_entropy(unaligned(logits), unaligned(target)), expected,
                               rtol=1e-12)


def test_unaligned_family_inputs(rng, aligned_bridge):
    p = ref.softmax(rng.standard_normal((3, 6)))
    q = ref.softmax(rng.standard_normal((3, 6)))
    np.testing.assert_allclose(ck.kl_divergence(unaligned(p), unaligned(q)),
                               ref.kl_divergence(p, q), rtol=1e-12)
    x = rng.standard_normal((3, 6))
    y = (rng.random((3, 6)) > 0.5).astype(np.float64)
    np.testing.assert_allclose(ck.binary_cross_entropy(unaligned(x), unaligned(y),
                                                       weight=unaligned(p[0])),
                               ref.binary_cross_entropy(x, y, weight=p[0]), rtol=1e-12)
    out = unaligned(np.zeros((3, 6)))
    ck.sigmoid(unaligned(x), out=out)
    np.testing.assert_allclose(out, ref.sigmoid(x), rtol=1e-14)
    assert {"dist_run", "bce_run", "sigmoid_run"} <= set(aligned_bridge)


# ---- soft-capping below the smallest normal float ---------------------------------

@pytest.mark.parametrize("softcap, dtype", [(1e-39, np.float32), (1e-45, np.float32),
                                            (5e-324, np.float64), (1e-310, np.float64)])
def test_softcap_below_smallest_normal_is_refused(softcap, dtype):
    """Below the smallest normal number of the compute type (whose
    reciprocal the kernels take)."""
    with pytest.raises(ValueError, match="softcap must be at least"):
        ck.cross_entropy_with_grad(np.zeros((2, 3), dtype=dtype), np.array([0, 1]),
                                   softcap=softcap)


def test_tiny_softcap_with_float64_logits_is_computed():
    loss, grad = ck.cross_entropy_with_grad(np.array([[0.5, -1.0, 2.0]]), np.array([0]),
                                            softcap=1e-40)
    assert loss == pytest.approx(math.log(3.0), rel=1e-12)
    np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_smallest_softcap_gives_finite_correct_results(rng, dtype):
    """At the smallest allowed cap every logit far from 0 is capped flat:
    the softmax is uniform over the capped values and the gradient through
    the cap is 0 wherever |x| / cap saturates tanh."""
    cap = float(np.finfo(np.float32).tiny)
    logits = rng.standard_normal((4, 10)).astype(dtype)
    target = np.array([1, 2, 3, 4])
    loss, grad = ck.cross_entropy_with_grad(logits, target, softcap=cap)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(loss, np.log(10.0), rtol=1e-6)
    np.testing.assert_array_equal(grad, 0.0)


# ---- rows with no distribution --------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_all_minus_inf_row_is_nan_everywhere(dtype):
    x = np.array([[-np.inf, -np.inf, -np.inf], [0.0, 1.0, -np.inf]], dtype=dtype)
    sm, lsm = ck.softmax(x), ck.log_softmax(x)
    assert np.all(np.isnan(sm[0])) and np.all(np.isnan(lsm[0]))
    np.testing.assert_allclose(sm[1], ref.softmax(x[1].astype(np.float64)), rtol=1e-6)
    assert ck.logsumexp(x)[0] == -np.inf
    loss, grad = ck.cross_entropy_with_grad(x, np.array([0, 1]), reduction="none")
    assert np.isnan(loss[0]) and np.all(np.isnan(grad[0]))
    assert np.all(np.isfinite(grad[1]))
    in_place = x.copy()
    ck.softmax(in_place, out=in_place)
    np.testing.assert_array_equal(in_place, sm)


def test_all_minus_inf_row_split_across_threads():
    x = np.full((1, 200000), -np.inf, dtype=np.float32)
    for n in (1, 2, 3):
        assert np.all(np.isnan(ck.softmax(x)))
        _, grad = ck.cross_entropy_with_grad(x, np.array([5]), num_threads=n)
        assert np.all(np.isnan(grad))


# ---- thread counts -------------------------------------------------------------

def test_thread_count_is_capped(rng):
    most = _core.max_threads()
    assert most >= 8
    ck.set_num_threads(10**6)
    try:
        assert ck.get_num_threads() == most
        logits = rng.standard_normal((64, 1000)).astype(np.float32)
        target = rng.integers(0, 1000, 64)
        np.testing.assert_array_equal(ck.cross_entropy(logits, target),
                                      ck.cross_entropy(logits, target, num_threads=1))
    finally:
        ck.set_num_threads(None)


def test_huge_thread_counts_neither_crash_nor_spawn_thousands():
    """Asked for 100,000 threads (which once overflowed OpenMP's stack) and
    2^31 - 1, every kernel runs, and the process keeps a bounded number of
    OS threads."""
    proc = run_python("""
        import os
        import numpy as np, ce_kernels as ck
        x = np.random.default_rng(0).standard_normal((4096, 64)).astype(np.float32)
        t = np.zeros(4096, dtype=np.int64)
        p = np.full((4096, 64), 1 / 64)
        for n in (100_000, 2**31 - 1):
            ck.cross_entropy_with_grad(x, t, num_threads=n)
            ck.entropy(p, num_threads=n)
            ck.binary_cross_entropy(x, p, num_threads=n)
        ck.set_num_threads(100_000)
        ck.softmax(x); ck.sigmoid(np.zeros(10**6))
        print(len(os.listdir("/proc/self/task")), ck._core.max_threads())
    """)
    assert proc.returncode == 0, proc.stderr
    threads, most = map(int, proc.stdout.split())
    assert threads <= most + 1


# ---- interrupts ------------------------------------------------------------------

INTERRUPT_SCRIPT = """
    import os, signal, threading, time
    import numpy as np, ce_kernels as ck
    row = np.random.default_rng(0).standard_normal(32000).astype(np.float32)
    # 3e11 elements without the memory: every row is the same row
    x = np.broadcast_to(row, (10_000_000, 32000))
    target = np.zeros(x.shape[0], dtype=np.int64)
    calls = {
        "cross_entropy": lambda: ck.cross_entropy(x, target),
        "logsumexp": lambda: ck.logsumexp(x),
        "entropy": lambda: ck.entropy(np.broadcast_to(np.full(32000, 1 / 32000), x.shape),
                                      validate=False),
    }
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
    start = time.monotonic()
    try:
        calls[CALL]()
        print("finished")
    except KeyboardInterrupt:
        print("interrupted", time.monotonic() - start)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or sys.platform == "win32",
                    reason="needs POSIX signals")
@pytest.mark.parametrize("call", ["cross_entropy", "logsumexp", "entropy"])
def test_ctrl_c_interrupts_a_long_call(call):
    """A call that would run for minutes stops with KeyboardInterrupt soon
    after SIGINT (the kernels poll between rows), instead of at its end."""
    proc = run_python(INTERRUPT_SCRIPT.replace("CALL", repr(call)), timeout=60)
    assert proc.returncode == 0, proc.stderr
    word, *elapsed = proc.stdout.split()
    assert word == "interrupted"
    # the whole call takes minutes; the interrupt arrives after 0.5 s
    assert float(elapsed[0]) < 20.0


def test_interrupt_in_a_thread_that_is_not_main_does_not_poll(rng):
    """Only the main thread runs signal handlers; other threads' calls are
    unaffected (and results equal)."""
    from concurrent.futures import ThreadPoolExecutor

    logits = rng.standard_normal((300, 2000)).astype(np.float32)
    target = rng.integers(0, 2000, 300)
    expected = ck.cross_entropy(logits, target, reduction="none")
    with ThreadPoolExecutor(2) as pool:
        got = pool.submit(ck.cross_entropy, logits, target, reduction="none").result()
    np.testing.assert_array_equal(got, expected)


# ---- weights and soft targets with half-precision logits ---------------------------

def half_dtypes():
    dtypes = [np.dtype(np.float16)]
    try:
        import ml_dtypes
        dtypes.append(np.dtype(ml_dtypes.bfloat16))
    except ImportError:
        pass
    return dtypes


@pytest.mark.parametrize("dtype", half_dtypes(), ids=str)
def test_half_logits_keep_float32_weights_and_soft_targets(rng, dtype):
    """Weights and probabilities are used as given (float32), not rounded
    to the logits' half precision: the loss is that of the upcast logits
    with the float32 weights, within 1e-6 (rounding the weights to bfloat16
    alone moves it by ~1e-3)."""
    logits = (rng.standard_normal((16, 300)) * 4).astype(dtype)
    upcast = logits.astype(np.float64)
    weight = (1.0 + rng.random(300) / 7).astype(np.float32)
    target = rng.integers(0, 300, 16)
    probs = ref.softmax(rng.standard_normal((16, 300))).astype(np.float32)
    for options, t in ((dict(weight=weight), target), (dict(weight=weight, label_smoothing=0.2), target),
                       (dict(), probs), (dict(weight=weight), probs)):
        expected = ref.cross_entropy(upcast, t.astype(np.float64) if t.dtype.kind == "f" else t,
                                     reduction="none",
                                     **{k: (val.astype(np.float64) if isinstance(val, np.ndarray)
                                            else val) for k, val in options.items()})
        loss = ck.cross_entropy(logits, t, reduction="none", **options)
        np.testing.assert_allclose(loss, expected, rtol=1e-6, atol=1e-6)
        _, grad = ck.cross_entropy_with_grad(logits, t, reduction="none", **options)
        expected_grad = ref.cross_entropy_grad(upcast, t.astype(np.float64) if t.dtype.kind == "f" else t,
                                               reduction="none",
                                               **{k: (val.astype(np.float64) if isinstance(val, np.ndarray)
                                                      else val) for k, val in options.items()})
        # the gradient: the exact one rounded to the half dtype (within its ulp)
        eps = 2.0 ** -7 if dtype.name == "bfloat16" else 2.0 ** -10
        np.testing.assert_allclose(grad.astype(np.float64), expected_grad, rtol=eps, atol=1e-7)


@pytest.mark.parametrize("dtype", half_dtypes(), ids=str)
def test_half_precision_weights_and_soft_targets_are_accepted(rng, dtype):
    logits = rng.standard_normal((4, 10)).astype(dtype)
    weight = (rng.random(10) + 0.5).astype(dtype)
    probs = ref.softmax(rng.standard_normal((4, 10))).astype(dtype)
    expected = ref.cross_entropy(logits.astype(np.float64), probs.astype(np.float64),
                                 weight=weight.astype(np.float64))
    np.testing.assert_allclose(ck.cross_entropy(logits, probs, weight=weight), expected, rtol=1e-6)
