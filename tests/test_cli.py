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
