"""Threads: results are bitwise identical for any thread count, the GIL is
released, and the thread-count controls behave."""
import os
import subprocess
import tempfile
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import ce_kernels as ck

# Subprocesses start outside the checkout so that they import the installed
# package, not the uncompiled source directory.
OUTSIDE_SOURCE_TREE = tempfile.gettempdir()
import reference as ref
from conftest import THREAD_COUNTS

# (rows, vocab): many rows (split by rows), few rows (vocabulary split across
# threads), one huge row, and a ragged vocabulary that is not a multiple of
# the chunk or vector width.
SHAPES = [(64, 5000), (3, 100003), (1, 300000), (9, 2049)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind", ["index", "soft"])
def test_bitwise_identical_across_thread_counts(rng, dtype, shape, kind):
    logits = (rng.standard_normal(shape) * 3).astype(dtype)
    if kind == "index":
        target = rng.integers(0, shape[1], shape[0])
        target[0] = -100
    else:
        target = ref.softmax(rng.standard_normal(shape)).astype(dtype)
    weight = (rng.random(shape[1]) + 0.5).astype(dtype)
    options = dict(weight=weight, label_smoothing=0.1, reduction="none")
    results = []
    for n in THREAD_COUNTS:
        loss, grad = ck.cross_entropy_with_grad(logits, target, num_threads=n, **options)
        in_place = logits.copy()
        ck.cross_entropy_with_grad(in_place, target, num_threads=n, out=in_place, **options)
        results.append((loss, grad, in_place, ck.cross_entropy(logits, target, num_threads=n, **options)))
    loss0, grad0, in_place0, fwd0 = results[0]
    np.testing.assert_array_equal(grad0, in_place0)
    np.testing.assert_array_equal(loss0, fwd0)
    for n, (loss, grad, in_place, fwd) in zip(THREAD_COUNTS[1:], results[1:]):
        np.testing.assert_array_equal(loss, loss0, err_msg=f"{n} threads")
        np.testing.assert_array_equal(grad, grad0, err_msg=f"{n} threads")
        np.testing.assert_array_equal(in_place, grad0, err_msg=f"{n} threads")
        np.testing.assert_array_equal(fwd, fwd0, err_msg=f"{n} threads")


@pytest.mark.parametrize("fn", [ck.softmax, ck.log_softmax, ck.logsumexp])
def test_normalizers_identical_across_thread_counts(rng, fn):
    x = rng.standard_normal((2, 200000)).astype(np.float32)
    results = []
    for n in THREAD_COUNTS:
        ck.set_num_threads(n)
        try:
            results.append(fn(x))
        finally:
            ck.set_num_threads(None)
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def test_concurrent_python_threads(rng):
    """The GIL is released during the kernel; concurrent calls stay correct."""
    logits = rng.standard_normal((32, 20000)).astype(np.float32)
    target = rng.integers(0, 20000, 32)
    expected = ck.cross_entropy(logits, target, num_threads=1)

    def call(_):
        return ck.cross_entropy(logits, target, num_threads=2)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(call, range(16)))
    assert all(r == expected for r in results)


def test_set_and_get_num_threads():
    default = ck.get_num_threads()
    assert default >= 1
    try:
        ck.set_num_threads(3)
        assert ck.get_num_threads() == (3 if ck.openmp_enabled() else 1)
    finally:
        ck.set_num_threads(None)
    assert ck.get_num_threads() == default


def run_python(code, **env):
    full_env = dict(os.environ, **env)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env,
                         check=True, cwd=OUTSIDE_SOURCE_TREE)
    return out.stdout.strip()


@pytest.mark.skipif(not ck.openmp_enabled(), reason="built without OpenMP")
def test_omp_num_threads_is_honoured():
    code = "import ce_kernels as ck; print(ck.get_num_threads())"
    assert run_python(code, OMP_NUM_THREADS="3") == "3"
    assert run_python(code, OMP_NUM_THREADS="1") == "1"


def test_isa_paths_agree_with_reference(rng):
    """Every instruction-set path this CPU has gives reference results."""
    code = """
import numpy as np, ce_kernels as ck, sys
sys.path.insert(0, {tests!r})
import reference as ref
rng = np.random.default_rng(0)
x = rng.standard_normal((7, 5003)) * 3
t = rng.integers(0, 5003, 7)
for dt, tol in ((np.float32, 2e-6), (np.float64, 1e-12)):
    xs = x.astype(dt)
    loss, grad = ck.cross_entropy_with_grad(xs, t, label_smoothing=0.1, reduction="none")
    x64 = xs.astype(np.float64)
    np.testing.assert_allclose(loss, ref.cross_entropy(x64, t, label_smoothing=0.1, reduction="none"), rtol=tol)
    np.testing.assert_allclose(grad, ref.cross_entropy_grad(x64, t, label_smoothing=0.1, reduction="none"), rtol=10 * tol, atol=tol)
print(ck.build_info()["isa"])
""".format(tests=os.path.dirname(__file__))
    best = ck.build_info()["best_isa"]
    order = ["sse2", "avx2", "avx512"] if best in ("sse2", "avx2", "avx512") else [best]
    for isa in order[: order.index(best) + 1]:
        assert run_python(code, CE_KERNELS_ISA=isa) == isa
