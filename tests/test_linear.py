"""The fused linear layer + cross-entropy against the float64 reference
(the product, then the reference loss), finite differences, and its
determinism."""
import os
import subprocess
import sys

import numpy as np
import pytest

import ce_kernels as ck
import reference as ref

# the directory holding the ce_kernels under test (installed, or built in place)
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(ck.__file__)))

N, D, V = 23, 12, 37
TOL = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}

OPTIONS = {
    "plain": {},
    "ignored": dict(ignore_index=5),
    "class_weight": dict(class_weight="w"),
    "smoothing": dict(label_smoothing=0.2),
    "z_loss": dict(z_loss=1e-2),
    "softcap": dict(softcap=2.5),
    "sum": dict(reduction="sum"),
    "none": dict(reduction="none", grad_output="per-row"),
    "everything": dict(class_weight="w", ignore_index=5, label_smoothing=0.1, z_loss=1e-3,
                       softcap=4.0, grad_output=0.5),
}


def problem(rng, dtype, n=N, batch=None, bias=True):
    batch = (n,) if batch is None else batch
    hidden = rng.standard_normal(batch + (D,)).astype(dtype)
    weight = (0.4 * rng.standard_normal((V, D))).astype(dtype)
    b = rng.standard_normal(V).astype(dtype) if bias else None
    target = rng.integers(0, V, size=batch)
    return hidden, weight, b, target


def resolved(options, rng, target):
    """The options with their placeholders filled: class weights, the
    targets to ignore, per-row upstream gradients."""
    o = dict(options)
    if o.get("class_weight") == "w":
        o["class_weight"] = rng.uniform(0.2, 2.0, V)
    if "ignore_index" in o:
        target.reshape(-1)[::4] = o["ignore_index"]
    if isinstance(o.get("grad_output"), str):
        o["grad_output"] = rng.uniform(-1.0, 2.0, target.shape)
    return o


def reference_options(o):
    r = {k: val for k, val in o.items() if k not in ("grad_output",)}
    if "class_weight" in r:
        r["weight"] = r.pop("class_weight")
    return r


def check_against_reference(hidden, weight, bias, target, o, dtype, chunk_rows):
    loss, d_hidden, d_weight, d_bias = ck.linear_cross_entropy_with_grad(
        hidden, weight, target, bias=bias, chunk_rows=chunk_rows, **o)
    forward = ck.linear_cross_entropy(
        hidden, weight, target, bias=bias, chunk_rows=chunk_rows,
        **{k: val for k, val in o.items() if k != "grad_output"})
    r = reference_options(o)
    expected = ref.linear_cross_entropy(hidden, weight, target, bias, **r)
    e_hidden, e_weight, e_bias = ref.linear_cross_entropy_grads(
        hidden, weight, target, bias, grad_output=o.get("grad_output"), **r)
    tol = TOL[dtype]
    np.testing.assert_allclose(loss, expected, **tol)
    np.testing.assert_array_equal(forward, loss)
    assert np.asarray(loss).dtype == dtype and d_hidden.dtype == dtype and d_weight.dtype == dtype
    assert d_hidden.shape == hidden.shape and d_weight.shape == weight.shape
    np.testing.assert_allclose(d_hidden, e_hidden, **tol)
    np.testing.assert_allclose(d_weight, e_weight, **tol)
    if bias is None:
        assert d_bias is None
    else:
        assert d_bias.dtype == dtype and d_bias.shape == bias.shape
        np.testing.assert_allclose(d_bias, e_bias, **tol)
    return d_hidden


@pytest.mark.parametrize("chunk_rows", [None, 1, 4, 7, 64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(OPTIONS))
def test_matches_reference(rng, name, dtype, chunk_rows):
    hidden, weight, bias, target = problem(rng, dtype)
    o = resolved(OPTIONS[name], rng, target)
    d_hidden = check_against_reference(hidden, weight, bias, target, o, dtype, chunk_rows)
    if "ignore_index" in o:
        ignored = target == o["ignore_index"]
        assert np.all(d_hidden[ignored] == 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_soft_targets_and_no_bias(rng, dtype):
    hidden, weight, _, _ = problem(rng, dtype, bias=False)
    soft = rng.dirichlet(np.ones(V), size=N).astype(dtype)
    check_against_reference(hidden, weight, None, soft, dict(label_smoothing=0.1), dtype, 5)


@pytest.mark.parametrize("batch", [(2, 5), (3, 1, 4), (1,), ()])
def test_batch_shapes(rng, batch):
    hidden, weight, bias, target = problem(rng, np.float64, batch=batch)
    check_against_reference(hidden, weight, bias, target, dict(reduction="none"),
                            np.float64, 3)
    check_against_reference(hidden, weight, bias, target, {}, np.float64, 3)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_batch(rng, reduction):
    hidden, weight, bias, target = problem(rng, np.float32, n=0)
    loss, d_hidden, d_weight, d_bias = ck.linear_cross_entropy_with_grad(
        hidden, weight, target, bias=bias, reduction=reduction)
    if reduction == "mean":
        assert np.isnan(loss)
    elif reduction == "sum":
        assert loss == 0
    else:
        assert loss.shape == (0,)
    assert d_hidden.shape == (0, D)
    assert np.all(d_weight == 0) and np.all(d_bias == 0)


@pytest.mark.parametrize("chunk_rows", [1, 5, None])
def test_all_ignored(rng, chunk_rows):
    hidden, weight, bias, target = problem(rng, np.float64)
    target[:] = -100
    loss, d_hidden, d_weight, d_bias = ck.linear_cross_entropy_with_grad(
        hidden, weight, target, bias=bias, chunk_rows=chunk_rows)
    assert np.isnan(loss)          # a mean over nothing, as PyTorch
    assert np.all(d_hidden == 0) and np.all(d_weight == 0) and np.all(d_bias == 0)
    assert ck.linear_cross_entropy(hidden, weight, target, reduction="sum") == 0


def test_finite_differences(rng):
    """All three gradients against central differences of the loss itself."""
    hidden, weight, bias, target = problem(rng, np.float64, n=5)
    hidden, weight = hidden[:, :4].copy(), weight[:7, :4].copy()
    bias, target = bias[:7].copy(), target % 7
    target[1] = -100
    o = dict(label_smoothing=0.1, z_loss=0.01, softcap=3.0, class_weight=np.linspace(0.5, 2, 7))
    _, d_hidden, d_weight, d_bias = ck.linear_cross_entropy_with_grad(
        hidden, weight, target, bias=bias, chunk_rows=2, **o)

    def loss(h=hidden, w=weight, b=bias):
        return float(ck.linear_cross_entropy(h, w, target, bias=b, chunk_rows=2, **o))

    np.testing.assert_allclose(d_hidden, ref.numerical_grad(lambda h: loss(h=h), hidden),
                               rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(d_weight, ref.numerical_grad(lambda w: loss(w=w), weight),
                               rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(d_bias, ref.numerical_grad(lambda b: loss(b=b), bias),
                               rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("softcap", [None, 2.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_token_stats(rng, dtype, softcap):
    hidden, weight, bias, target = problem(rng, dtype, batch=(3, 8))
    target[0, ::3] = -100
    stats = ck.linear_token_stats(hidden, weight, target, bias=bias, softcap=softcap,
                                  chunk_rows=5)
    logits = ref.softcapped(ref.linear_logits(hidden, weight, bias), softcap)
    nll, predicted, correct, entropy = ref.token_stats(logits, target)
    tol = TOL[dtype]
    np.testing.assert_allclose(stats.nll, nll, **tol)
    np.testing.assert_array_equal(stats.predicted, predicted)
    np.testing.assert_array_equal(stats.correct, correct)
    np.testing.assert_allclose(stats.entropy, entropy, **tol)
    assert stats.nll.dtype == dtype and stats.nll.shape == (3, 8)
    # the same as token_stats of the logits, up to the rounding of the product
    direct = ck.token_stats(logits.astype(dtype), target)
    np.testing.assert_array_equal(direct.correct, stats.correct)


def test_token_stats_empty(rng):
    hidden, weight, bias, target = problem(rng, np.float32, n=0)
    stats = ck.linear_token_stats(hidden, weight, target, bias=bias)
    assert stats.nll.shape == stats.predicted.shape == (0,)


# ---- outputs, inputs ---------------------------------------------------------------

def test_out_buffers_and_inputs_untouched(rng):
    hidden, weight, bias, target = problem(rng, np.float32)
    saved = [a.copy() for a in (hidden, weight, bias, target)]
    out_hidden = np.full((2 * N, D), np.nan, dtype=np.float32)[::2]   # strided
    out_weight = np.full_like(weight, np.nan)
    _, d_hidden, d_weight, _ = ck.linear_cross_entropy_with_grad(
        hidden, weight, target, bias=bias, out_hidden=out_hidden, out_weight=out_weight,
        chunk_rows=4)
    assert d_hidden is out_hidden and d_weight is out_weight
    e_hidden, e_weight, _ = ref.linear_cross_entropy_grads(hidden, weight, target, bias)
    np.testing.assert_allclose(d_hidden, e_hidden, **TOL[np.float32])
    np.testing.assert_allclose(d_weight, e_weight, **TOL[np.float32])
    for before, after in zip(saved, (hidden, weight, bias, target)):
        np.testing.assert_array_equal(before, after)


def test_layouts(rng):
    """Transposed weight, big-endian hidden, a non-contiguous batch."""
    hidden, weight, bias, target = problem(rng, np.float64, batch=(4, 6))
    expected = ref.linear_cross_entropy(hidden, weight, target, bias)
    odd_hidden = hidden.astype(">f8")
    odd_weight = np.asfortranarray(weight)
    got = ck.linear_cross_entropy(odd_hidden, odd_weight, target, bias=bias, chunk_rows=5)
    np.testing.assert_allclose(got, expected, **TOL[np.float64])
    wide = np.zeros((4, 12, D))
    wide[:, ::2] = hidden
    got = ck.linear_cross_entropy(wide[:, ::2], weight[:, None, :][:, 0], target, bias=bias)
    np.testing.assert_allclose(got, expected, **TOL[np.float64])


def test_default_chunk_rows_is_a_memory_budget():
    from ce_kernels import linear
    assert linear.chunk_rows_for(None, 128256, 4) == 256 * 2**20 // (128256 * 4)
    assert linear.chunk_rows_for(None, 10**9, 8) == 1
    assert linear.chunk_rows_for(7, 10, 4) == 7


# ---- determinism -------------------------------------------------------------------

def _all_results(hidden, weight, bias, target, **kw):
    loss, d_hidden, d_weight, d_bias = ck.linear_cross_entropy_with_grad(
        hidden, weight, target, bias=bias, reduction="sum", **kw)
    return [np.asarray(a).tobytes() for a in (loss, d_hidden, d_weight, d_bias)]


def test_bitwise_run_to_run_and_across_kernel_threads(rng):
    hidden, weight, bias, target = problem(rng, np.float32, n=200)
    weight = np.tile(weight, (60, 1))            # V = 2220: the kernels go parallel
    bias = np.tile(bias, 60)
    target = target * 50
    first = _all_results(hidden, weight, bias, target, chunk_rows=37)
    assert _all_results(hidden, weight, bias, target, chunk_rows=37) == first
    for threads in (1, 2, 3, 8):
        assert _all_results(hidden, weight, bias, target, chunk_rows=37,
                            num_threads=threads) == first


_BLAS_RUN = """
import sys, numpy as np, ce_kernels as ck
rng = np.random.default_rng(7)
h = rng.standard_normal((300, 96), dtype=np.float32)
w = rng.standard_normal((1500, 96), dtype=np.float32)
t = rng.integers(0, 1500, 300)
loss, dh, dw, _ = ck.linear_cross_entropy_with_grad(h, w, t, chunk_rows=64,
                                                    num_threads=int(sys.argv[1]))
np.save(sys.argv[2], np.concatenate([np.atleast_1d(loss), dh.ravel(), dw.ravel()]))
"""


def test_blas_thread_count(tmp_path):
    """NumPy's BLAS takes its thread count from the environment at import,
    so each count runs in a fresh process. Measured with NumPy's OpenBLAS
    0.3.31: 2 and 4 BLAS threads give bitwise equal results, 1 thread
    differs from them in the last bits of some products (an absolute
    2.3e-9 here, a float32 rounding); the kernels' thread count never
    changes a bit. So the results are bounded, not bitwise, across BLAS
    thread counts."""
    results = []
    for blas_threads, kernel_threads in ((1, 1), (2, 3), (4, 2)):
        env = dict(os.environ, OPENBLAS_NUM_THREADS=str(blas_threads),
                   OMP_NUM_THREADS=str(blas_threads))
        path = tmp_path / f"r{blas_threads}.npy"
        # from the directory holding the ce_kernels under test (installed,
        # or built in place), not a source tree it might not be built in
        subprocess.run([sys.executable, "-c", _BLAS_RUN, str(kernel_threads), str(path)],
                       check=True, env=env, timeout=300, cwd=PACKAGE_PARENT)
        results.append(np.load(path))
    for other in results[1:]:
        np.testing.assert_allclose(other, results[0], rtol=1e-5, atol=1e-6)


# ---- errors --------------------------------------------------------------------------

def test_errors(rng):
    hidden, weight, bias, target = problem(rng, np.float32)
    call = ck.linear_cross_entropy_with_grad
    with pytest.raises(TypeError, match="hidden"):
        call(hidden.astype(int), weight, target)
    with pytest.raises(TypeError, match="half precision"):
        call(hidden.astype(np.float16), weight.astype(np.float16), target)
    with pytest.raises(TypeError, match="weight has dtype float64"):
        call(hidden, weight.astype(np.float64), target)
    with pytest.raises(ValueError, match=r"weight must have shape \(V, D\)"):
        call(hidden, weight[0], target)
    with pytest.raises(ValueError, match="second axis must match"):
        call(hidden, weight[:, :-1], target)
    with pytest.raises(ValueError, match="at least one row"):
        call(hidden, weight[:0], target)
    with pytest.raises(ValueError, match=r"bias must have shape \(37,\)"):
        call(hidden, weight, target, bias=bias[:-1])
    with pytest.raises(ValueError, match=r"target has shape \(22,\).*hidden.shape"):
        call(hidden, weight, target[:-1])
    bad = target.copy()
    bad[6] = V
    with pytest.raises(IndexError, match=r"target\[6\] = 37"):
        call(hidden, weight, bad)
    with pytest.raises(ValueError, match="class_weight must have shape"):
        call(hidden, weight, target, class_weight=np.ones(3))
    with pytest.raises(ValueError, match="chunk_rows must be >= 1"):
        call(hidden, weight, target, chunk_rows=0)
    with pytest.raises(TypeError, match="chunk_rows"):
        call(hidden, weight, target, chunk_rows=True)
    with pytest.raises(ValueError, match="reduction"):
        call(hidden, weight, target, reduction="avg")
    with pytest.raises(ValueError, match="out_hidden has shape"):
        call(hidden, weight, target, out_hidden=np.empty((N, D + 1), np.float32))
    with pytest.raises(ValueError, match="out_hidden overlaps hidden"):
        call(hidden, weight, target, out_hidden=hidden)
    with pytest.raises(ValueError, match="out_weight overlaps weight"):
        call(hidden, weight, target, out_weight=weight)
    with pytest.raises(ValueError, match="out_weight has dtype"):
        call(hidden, weight, target, out_weight=np.empty((V, D)))
    with pytest.raises(TypeError, match="target"):
        ck.linear_token_stats(hidden, weight, target.astype(np.float32))


def test_bench_linear_runs(capsys):
    """``ce-kernels bench --linear`` end to end on a tiny shape (what it
    prints, not how fast)."""
    from ce_kernels import cli
    assert cli.main(["bench", "--linear", "--linear-shape", "16x8x50", "--memory-shape",
                     "16x8x50", "--repeat", "1"]) == 0
    text = capsys.readouterr().out
    for row in ("bare product h @ W.T", "ours fused fwd+bwd", "fused forward / bare product",
                "peak memory", "ours fused", "numpy unfused"):
        assert row in text
    assert "failed" not in text
