"""pytest-benchmark benchmarks, grouped by shape so that
``pytest bench/ --benchmark-compare`` compares commits call by call.

Run: pytest bench/ --benchmark-autosave   (then --benchmark-compare later)
"""
import numpy as np
import pytest

import ce_kernels as ck
from ce_kernels import _core
from ce_kernels.bench import numpy_cross_entropy, numpy_cross_entropy_with_grad

SHAPES = [(2048, 32000), (512, 128256), (8, 256000), (1, 1000)]


@pytest.fixture(scope="module", params=SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def problem(request):
    n, v = request.param
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((n, v), dtype=np.float32)
    target = rng.integers(0, v, n)
    return logits, target


def group(benchmark, problem, what):
    logits, _ = problem
    benchmark.group = f"{logits.shape[0]}x{logits.shape[1]} {what}"


def test_read_floor(benchmark, problem):
    group(benchmark, problem, "forward")
    logits, _ = problem
    benchmark(_core.floor_read, logits, ck.get_num_threads())


def test_ours_forward(benchmark, problem):
    group(benchmark, problem, "forward")
    logits, target = problem
    benchmark(ck.cross_entropy, logits, target)


def test_numpy_forward(benchmark, problem):
    group(benchmark, problem, "forward")
    logits, target = problem
    benchmark(numpy_cross_entropy, logits, target)


def test_torch_forward(benchmark, problem):
    torch = pytest.importorskip("torch")
    group(benchmark, problem, "forward")
    logits, target = problem
    x, t = torch.from_numpy(logits), torch.from_numpy(target)
    with torch.no_grad():
        benchmark(torch.nn.functional.cross_entropy, x, t)


def test_copy_floor(benchmark, problem):
    group(benchmark, problem, "fwd+bwd")
    logits, _ = problem
    buf = np.empty_like(logits)
    benchmark(_core.floor_copy, logits, buf, ck.get_num_threads())


def test_ours_fwd_bwd(benchmark, problem):
    group(benchmark, problem, "fwd+bwd")
    logits, target = problem
    buf = np.empty_like(logits)
    benchmark(ck.cross_entropy_with_grad, logits, target, out=buf)


def test_numpy_fwd_bwd(benchmark, problem):
    group(benchmark, problem, "fwd+bwd")
    logits, target = problem
    benchmark(numpy_cross_entropy_with_grad, logits, target)


def test_torch_fwd_bwd(benchmark, problem):
    torch = pytest.importorskip("torch")
    group(benchmark, problem, "fwd+bwd")
    logits, target = problem
    leaf = torch.from_numpy(logits.copy()).requires_grad_(True)
    t = torch.from_numpy(target)

    def step():
        leaf.grad = None
        torch.nn.functional.cross_entropy(leaf, t).backward()

    benchmark(step)


def test_ours_token_stats(benchmark, problem):
    group(benchmark, problem, "forward")
    logits, target = problem
    benchmark(ck.token_stats, logits, target)


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_ours_forward_half(benchmark, problem, half):
    if half == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
    else:
        dtype = np.float16
    group(benchmark, problem, "forward")
    logits, target = problem
    benchmark(ck.cross_entropy, logits.astype(dtype), target)


def test_ce_kernels_torch_fwd_bwd(benchmark, problem):
    torch = pytest.importorskip("torch")
    import ce_kernels.torch as ckt
    group(benchmark, problem, "fwd+bwd")
    logits, target = problem
    leaf = torch.from_numpy(logits.copy()).requires_grad_(True)
    t = torch.from_numpy(target)

    def step():
        leaf.grad = None
        ckt.cross_entropy(leaf, t).backward()

    benchmark(step)
