"""The command line: ce-kernels bench runs and reports; bad arguments exit 2."""
import json
import subprocess
import tempfile
import sys

import numpy as np
import pytest

from ce_kernels import cli
from ce_kernels.bench import numpy_cross_entropy, numpy_cross_entropy_with_grad
import ce_kernels as ck

# Subprocesses start outside the checkout so that they import the installed
# package, not the uncompiled source directory.
OUTSIDE_SOURCE_TREE = tempfile.gettempdir()


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "ce_kernels", *args], capture_output=True, text=True,
                          cwd=OUTSIDE_SOURCE_TREE)


def test_bench_json_reports_every_contender():
    proc = run_cli("bench", "--shape", "64x3000", "--repeat", "2", "--no-torch", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    times = doc["results"][0]["times"]
    for name in ["read floor", "copy floor", "in-place floor", "ours forward", "ours fwd+bwd (out=buf)",
                 "ours fwd+bwd (in place)", "numpy forward", "numpy fwd+bwd"]:
        assert times[name]["min"] > 0
    assert doc["results"][0]["ratios"]["forward speedup vs numpy"] > 0


def test_bench_table():
    proc = run_cli("bench", "--shape", "16x1000", "--repeat", "1", "--no-torch")
    assert proc.returncode == 0, proc.stderr
    assert "ours forward" in proc.stdout and "x read floor" in proc.stdout


@pytest.mark.parametrize("bad", [["bench", "--shape", "12"], ["bench", "--threads", "0"], ["frobnicate"]])
def test_bad_arguments_exit_2(bad):
    proc = run_cli(*bad)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


def test_parse_shape():
    assert cli.parse_shape("2048x32000") == (2048, 32000)


def test_numpy_baselines_are_correct(rng):
    """The benchmark's NumPy contenders compute the same numbers as we do."""
    logits = rng.standard_normal((20, 300)).astype(np.float64)
    target = rng.integers(0, 300, 20)
    loss, grad = ck.cross_entropy_with_grad(logits, target)
    assert numpy_cross_entropy(logits, target) == pytest.approx(float(loss), rel=1e-12)
    nloss, ngrad = numpy_cross_entropy_with_grad(logits, target)
    assert nloss == pytest.approx(float(loss), rel=1e-12)
    np.testing.assert_allclose(ngrad, grad, rtol=1e-10, atol=1e-15)


HALF_RATIOS = ["float16 forward / half read floor", "bfloat16 forward / half read floor",
               "bfloat16 fwd+bwd in place / half in-place floor", "forward / exp alone, in cache"]
TORCH_BFLOAT16_RATIOS = ["bfloat16 forward speedup vs torch bfloat16",
                         "bfloat16 fwd+bwd speedup vs torch bfloat16"]


def _has_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def test_bench_json_reports_the_half_precision_few_row_and_eval_ratios(tmp_path):
    args = ["bench", "--shape", "8x3000", "--repeat", "2", "--no-numpy", "--json",
            "--eval-gb", "0.002", "--eval-dir", str(tmp_path)]
    proc = run_cli(*args, *([] if _has_torch() else ["--no-torch"]))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    ratios = doc["results"][0]["ratios"]
    expected = HALF_RATIOS + (TORCH_BFLOAT16_RATIOS if _has_torch() else [])
    for name in expected + ["fwd+bwd in place / in-place floor", "forward / read floor, from memory"]:
        assert ratios[name] > 0, name
        assert doc["results"][0]["paired_ratios"][name] > 0, name
    times = doc["results"][0]["times"]
    for name in ["half read floor", "half in-place floor", "ours fwd+bwd bfloat16 (in place)",
                 "exp alone (one thread)", "ours forward (one thread)"]:
        assert times[name]["min"] > 0, name
    _check_eval_benchmark(doc["eval"], rows=-(-2_000_000 // (4 * 32000)), vocab=32000)
    assert list(tmp_path.iterdir()) == []          # the file it scored is gone


def test_bench_runs_no_eval_by_default():
    proc = run_cli("bench", "--shape", "4x1000", "--repeat", "1", "--no-numpy", "--no-torch",
                   "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["eval"] is None


def _check_eval_benchmark(result, rows, vocab):
    assert result["shape"] == [rows, vocab]
    assert result["bytes"] > rows * vocab * 4                # data and header
    assert result["chunk_rows"] >= 1
    for part in (result["page_cache"], result["cold"]):
        if part is None:                                     # no posix_fadvise
            continue
        assert set(part["times"]) == {"read, 1 MiB blocks", "read, chunk-size blocks",
                                      "read, memory-mapped", "eval"}
        assert all(part["gbps"][name] > 0 for name in part["times"])
        assert part["read floor"] in ("read, 1 MiB blocks", "read, chunk-size blocks")
        for ratio in ("eval / read floor", "eval / read floor, paired median",
                      "eval / read, memory-mapped"):
            assert part[ratio] > 0


@pytest.fixture
def small_files(tmp_path, rng):
    logits, targets = tmp_path / "logits.npy", tmp_path / "targets.npy"
    np.save(logits, rng.standard_normal((37, 300)).astype(np.float32))
    np.save(targets, rng.integers(0, 300, 37))
    return str(logits), str(targets)


def test_eval_benchmark_json(small_files):
    proc = run_cli("eval", *small_files, "--benchmark", "--repeat", "2", "--chunk-rows", "10",
                   "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    _check_eval_benchmark(result, rows=37, vocab=300)
    assert result["chunk_rows"] == 10 and result["chunk_bytes"] == 10 * 300 * 4


def test_eval_benchmark_table(small_files):
    proc = run_cli("eval", *small_files, "--benchmark", "--repeat", "1", "--no-cold")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "from the page cache" in proc.stdout and "GB/s" in proc.stdout
    assert sum("eval / read floor" in line for line in lines) == 1
    assert "cold: not measured" in proc.stdout


@pytest.mark.parametrize("extra", [["--per-token", "out.npy"], ["--rows", "0:5"], ["--shift"]])
def test_eval_benchmark_refuses_other_modes(small_files, extra):
    proc = run_cli("eval", *small_files, "--benchmark", *extra)
    assert proc.returncode == 2
    assert "--benchmark" in proc.stderr and "Traceback" not in proc.stderr


def test_half_floor_views_cover_every_byte(rng):
    from ce_kernels import bench

    for n in (7, 8):                                 # odd and even element counts
        half = rng.standard_normal((n, 3)).astype(np.float16)
        words = bench._as_words(half)
        assert words.dtype == np.float32 and words.nbytes == half.nbytes - half.nbytes % 4
        work = np.zeros_like(half)
        bench._copy_half(half, work, 2)
        assert np.array_equal(work.view(np.uint16), half.view(np.uint16))
