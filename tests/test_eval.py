"""ce-kernels eval, end to end through the real command line, on files the
tests write, against NumPy computations of the same numbers."""
import json
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import reference as ref

OUTSIDE_SOURCE_TREE = tempfile.gettempdir()


def run_eval(*args):
    return subprocess.run([sys.executable, "-m", "ce_kernels", "eval", *map(str, args)],
                          capture_output=True, text=True, cwd=OUTSIDE_SOURCE_TREE)


def expected_numbers(logits, targets, ignore_index=-100):
    """The metrics computed plainly in NumPy (float64)."""
    x = logits.astype(np.float64).reshape(-1, logits.shape[-1])
    t = targets.reshape(-1)
    counted = t != ignore_index
    logp = ref.log_softmax(x)
    nll = -logp[np.arange(len(t))[counted], t[counted]]
    entropy = -(np.exp(logp) * logp).sum(-1)[counted]
    accuracy = np.mean(x.argmax(-1)[counted] == t[counted])
    return {"tokens": int(counted.sum()), "ignored": int((~counted).sum()), "nll": nll.mean(),
            "bits_per_token": nll.mean() / np.log(2), "perplexity": np.exp(nll.mean()),
            "accuracy": accuracy, "entropy": entropy.mean()}


@pytest.fixture
def files(tmp_path, rng):
    logits = (rng.standard_normal((3, 40, 500)) * 2).astype(np.float32)
    targets = rng.integers(0, 500, (3, 40))
    targets[0, :6] = -100
    # make some predictions right
    logits[1, :10, :] -= 5
    logits[1, np.arange(10), targets[1, :10]] += 20
    np.save(tmp_path / "logits.npy", logits)
    np.save(tmp_path / "targets.npy", targets)
    return tmp_path, logits, targets


def check_json(proc, expected):
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    for key in ("tokens", "ignored", "nll", "bits_per_token", "perplexity", "accuracy", "entropy"):
        assert got[key] == pytest.approx(expected[key], rel=2e-6), key
    return got


def test_eval_json_matches_numpy(files):
    path, logits, targets = files
    check_json(run_eval(path / "logits.npy", path / "targets.npy", "--json"),
               expected_numbers(logits, targets))


def test_eval_in_chunks_smaller_than_the_file(files):
    path, logits, targets = files
    got = check_json(run_eval(path / "logits.npy", path / "targets.npy", "--json", "--chunk-rows", 7,
                              "--threads", 2),
                     expected_numbers(logits, targets))
    assert got["chunk_rows"] == 7 and got["positions"] == 120


def test_eval_shift_scores_next_token(files):
    path, logits, targets = files
    expected = expected_numbers(logits[:, :-1], targets[:, 1:])
    per_token = path / "nll.npy"
    check_json(run_eval(path / "logits.npy", path / "targets.npy", "--shift", "--json",
                        "--chunk-rows", 5, "--per-token", per_token), expected)
    nll = np.load(per_token)
    assert nll.shape == (3, 39)
    x = logits[:, :-1].astype(np.float64)
    t = targets[:, 1:]
    logp = ref.log_softmax(x)
    counted = t != -100
    want = -np.take_along_axis(logp, np.where(counted, t, 0)[..., None], -1)[..., 0]
    np.testing.assert_allclose(nll[counted], want[counted], rtol=2e-6)
    assert np.all(np.isnan(nll[~counted]))


def test_eval_text_output_and_ignore_index(files):
    path, logits, targets = files
    t = np.where(targets == -100, 0, targets)
    t[2, :3] = 7
    np.save(path / "t7.npy", t)
    proc = run_eval(path / "logits.npy", path / "t7.npy", "--ignore-index", 7)
    assert proc.returncode == 0, proc.stderr
    expected = expected_numbers(logits, t, ignore_index=7)
    assert f"tokens ignored    {expected['ignored']}" in proc.stdout
    assert "perplexity" in proc.stdout and "bits per token" in proc.stdout


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_eval_other_dtypes(files, dtype):
    path, logits, targets = files
    if dtype == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        stored = logits.astype(ml_dtypes.bfloat16)   # saved by NumPy as 2-byte void
    else:
        stored = logits.astype(dtype)
    np.save(path / "half.npy", stored)
    check_json(run_eval(path / "half.npy", path / "targets.npy", "--json", "--chunk-rows", 11),
               expected_numbers(stored.astype(np.float32), targets))


def test_eval_bad_inputs_exit_2_with_one_line(files, tmp_path):
    path, logits, targets = files
    (tmp_path / "empty.npy").write_bytes(b"")
    (tmp_path / "text.npy").write_text("not numpy")
    np.save(tmp_path / "ints.npy", targets)
    np.save(tmp_path / "short.npy", targets[:, :-1])
    bad_ids = targets.copy()
    bad_ids[2, 5] = 999
    np.save(tmp_path / "bad_ids.npy", bad_ids)
    np.save(tmp_path / "float_targets.npy", targets.astype(np.float32))
    cases = [
        ((tmp_path / "missing.npy", path / "targets.npy"), "not found"),
        ((tmp_path / "empty.npy", path / "targets.npy"), "empty"),
        ((tmp_path / "text.npy", path / "targets.npy"), "not a .npy"),
        ((tmp_path / "ints.npy", path / "targets.npy"), "unsupported dtype"),
        ((path / "logits.npy", tmp_path / "short.npy"), "expected (3, 40)"),
        ((path / "logits.npy", tmp_path / "bad_ids.npy"), "TARGETS[2, 5]"),
        ((path / "logits.npy", tmp_path / "float_targets.npy"), "integer token ids"),
    ]
    for args, message in cases:
        proc = run_eval(*args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert message in proc.stderr, (message, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_eval_file_larger_than_chunk_keeps_memory_bounded(tmp_path, rng):
    """A 400 MB float32 file scored in 8 MB chunks: the resident memory of the
    process grows by far less than the file (pages of finished chunks are
    released)."""
    vocab, rows = 32000, 3200
    logits = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.float32,
                                       shape=(rows, vocab))
    for start in range(0, rows, 400):
        logits[start:start + 400] = rng.standard_normal((400, vocab), dtype=np.float32)
    logits.flush()
    targets = rng.integers(0, vocab, rows)
    np.save(tmp_path / "big_t.npy", targets)
    del logits
    code = (
        "import resource, json, sys\n"
        "from ce_kernels.evaluate import evaluate\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"r = evaluate({str(tmp_path / 'big.npy')!r}, {str(tmp_path / 'big_t.npy')!r}, chunk_rows=64)\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(json.dumps({'nll': r['nll'], 'growth_kb': after - before}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=OUTSIDE_SOURCE_TREE)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["growth_kb"] < 100_000, out            # 400 MB file, < 100 MB growth
    sample = np.load(tmp_path / "big.npy", mmap_mode="r")[:50]
    expected = -ref.log_softmax(sample.astype(np.float64))[np.arange(50), targets[:50]]
    assert np.isfinite(out["nll"]) and 9 < out["nll"] < 13
    assert abs(expected.mean() - out["nll"]) < 0.5
