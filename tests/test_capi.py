"""The C and Cython interface: two downstream extensions (the examples in
docs/examples/capi) are built at test time against the installed package
and must give bitwise the results of the Python API."""
import os
import shutil
import subprocess
import sys
import sysconfig

import numpy as np
import pytest

import ce_kernels as ck

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "examples", "capi")


def have_compiler():
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc) is not None


@pytest.fixture(scope="module")
def downstream(tmp_path_factory):
    """The two example extensions, compiled in a scratch directory."""
    if not have_compiler():
        pytest.skip("no C compiler")
    pytest.importorskip("Cython")
    pytest.importorskip("setuptools")
    if not os.path.isdir(EXAMPLES):
        pytest.skip("the examples are not beside the tests (installed tests only)")
    build = tmp_path_factory.mktemp("downstream")
    for name in ("batch_scorer.pyx", "plain_c_scorer.c", "setup.py"):
        shutil.copy(os.path.join(EXAMPLES, name), build)
    proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=build,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sys.path.insert(0, str(build))
    try:
        import batch_scorer
        import plain_c_scorer
    finally:
        sys.path.remove(str(build))
    return batch_scorer, plain_c_scorer


def test_get_include_holds_the_public_headers():
    include = ck.get_include()
    for header in ("ce_kernels.h", "ce_kernels_python.h"):
        with open(os.path.join(include, header)) as f:
            text = f.read()
        assert "CE_KERNELS_ABI_VERSION" in text
    with open(os.path.join(include, "ce_kernels.h")) as f:
        assert "Python.h" not in f.read()


def test_capsule_is_versioned_and_named():
    from ce_kernels import capi

    assert capi.ABI_VERSION == 1
    assert "ce_kernels.capi._C_API" in repr(capi._C_API)
    assert {"run_abi", "abi_version", "default_threads", "max_threads"} <= set(capi.__pyx_capi__)


def test_cython_downstream_matches_python_api(downstream, rng):
    batch_scorer, _ = downstream
    logits = rng.standard_normal((6, 40, 3000)).astype(np.float32) * 3
    target = rng.integers(0, 3000, (6, 40))
    target[2, 5] = -100
    loss, grad = batch_scorer.batch_losses(logits, target, with_grad=True)
    loss_only, no_grad = batch_scorer.batch_losses(logits, target)
    assert no_grad is None
    np.testing.assert_array_equal(loss, loss_only)
    for b in range(6):
        expected_loss = ck.cross_entropy(logits[b], target[b], reduction="none")
        _, expected_grad = ck.cross_entropy_with_grad(logits[b], target[b], reduction="sum")
        np.testing.assert_array_equal(loss[b].astype(np.float32), expected_loss)
        np.testing.assert_array_equal(grad[b], expected_grad)
    assert loss[2, 5] == 0.0 and np.all(grad[2, 5] == 0.0)


def test_plain_c_downstream_matches_python_api(downstream, rng):
    _, plain_c_scorer = downstream
    logits = rng.standard_normal((300, 5000)).astype(np.float32)
    target = rng.integers(0, 5000, 300)
    expected = ck.cross_entropy(logits, target, reduction="none")
    for n_threads in (1, 2, 3):
        loss = np.empty(300)
        status = plain_c_scorer.row_losses(logits, target.astype(np.int64), loss, 300, 5000,
                                           n_threads)
        assert status == 0
        np.testing.assert_array_equal(loss.astype(np.float32), expected)


def test_plain_c_downstream_called_from_threads_concurrently(downstream, rng):
    """Without the GIL, from several Python threads at once."""
    from concurrent.futures import ThreadPoolExecutor

    _, plain_c_scorer = downstream
    logits = rng.standard_normal((8, 200, 4000)).astype(np.float32)
    target = rng.integers(0, 4000, (8, 200))

    def score(b):
        loss = np.empty(200)
        assert plain_c_scorer.row_losses(logits[b], target[b], loss, 200, 4000, 2) == 0
        return loss

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(score, range(8)))
    for b, loss in enumerate(results):
        np.testing.assert_array_equal(loss.astype(np.float32),
                                      ck.cross_entropy(logits[b], target[b], reduction="none"))


def test_c_extension_built_for_another_abi_refuses_to_import(tmp_path):
    """ce_kernels_import() checks the version the extension was compiled
    against: a header claiming version 99 gives a clear ImportError."""
    if not have_compiler():
        pytest.skip("no C compiler")
    pytest.importorskip("setuptools")
    if not os.path.isdir(EXAMPLES):
        pytest.skip("the examples are not beside the tests (installed tests only)")
    include = tmp_path / "include"
    include.mkdir()
    for header in ("ce_kernels.h", "ce_kernels_python.h"):
        text = open(os.path.join(ck.get_include(), header)).read()
        (include / header).write_text(
            text.replace("#define CE_KERNELS_ABI_VERSION 1", "#define CE_KERNELS_ABI_VERSION 99"))
    source = open(os.path.join(EXAMPLES, "plain_c_scorer.c")).read()
    (tmp_path / "abi_mismatch.c").write_text(source.replace("plain_c_scorer", "abi_mismatch"))
    (tmp_path / "setup.py").write_text(
        "from setuptools import Extension, setup\n"
        "setup(name='abi-mismatch', ext_modules=[Extension('abi_mismatch', ['abi_mismatch.c'], "
        "include_dirs=['include'])])\n")
    proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check = subprocess.run([sys.executable, "-c", "import abi_mismatch"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode != 0
    assert "ImportError: ce_kernels ABI version 1 is installed" in check.stderr
    assert "compiled against version 99" in check.stderr
