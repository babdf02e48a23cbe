"""ce-kernels eval --hidden --head [--bias]: scoring saved hidden states
through an output layer, end to end through the command line, against
the float64 reference of the logits the layer makes."""
import json
import re

import numpy as np
import pytest

import reference as ref
from test_eval import expected_numbers, run_eval

KEYS = ("tokens", "ignored", "nll", "bits_per_token", "perplexity", "accuracy", "entropy")


@pytest.fixture
def layer(tmp_path, rng):
    hidden = rng.standard_normal((3, 20, 24)).astype(np.float32)
    head = (0.5 * rng.standard_normal((400, 24))).astype(np.float32)
    bias = rng.standard_normal(400).astype(np.float32)
    targets = rng.integers(0, 400, (3, 20))
    targets[0, :5] = -100
    targets[1, :8] = ref.linear_logits(hidden[1, :8], head, bias).argmax(-1)   # some right
    for name, a in (("hidden", hidden), ("head", head), ("bias", bias), ("targets", targets)):
        np.save(tmp_path / f"{name}.npy", a)
    return tmp_path, hidden, head, bias, targets


def hidden_args(d, *extra, bias=True):
    return ("--hidden", d / "hidden.npy", "--head", d / "head.npy",
            *(("--bias", d / "bias.npy") if bias else ()), d / "targets.npy", *extra)


def check(proc, expected):
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    for key in KEYS:
        assert got[key] == pytest.approx(expected[key], rel=1e-5), key
    return got


@pytest.mark.parametrize("chunk_rows", ["1", "7", None])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_reference(layer, chunk_rows, bias):
    d, hidden, head, b, targets = layer
    extra = ("--json",) + (("--chunk-rows", chunk_rows) if chunk_rows else ())
    logits = ref.linear_logits(hidden, head, b if bias else None)
    got = check(run_eval(*hidden_args(d, *extra, bias=bias)), expected_numbers(logits, targets))
    assert got["vocab"] == 400 and got["positions"] == 60
    assert got["accuracy"] > 0


def test_shift_and_per_token(layer):
    d, hidden, head, b, targets = layer
    proc = run_eval(*hidden_args(d, "--json", "--shift", "--per-token", d / "nll.npy"))
    logits = ref.linear_logits(hidden, head, b)
    check(proc, expected_numbers(logits[:, :-1], targets[:, 1:]))
    nll = ref.token_stats(logits[:, :-1], targets[:, 1:])[0]
    np.testing.assert_allclose(np.load(d / "nll.npy"), nll, rtol=1e-5)


def test_float64_hidden(layer):
    d, hidden, head, b, targets = layer
    np.save(d / "hidden.npy", hidden.astype(np.float64))
    check(run_eval(*hidden_args(d, "--json")),
          expected_numbers(ref.linear_logits(hidden, head, b), targets))


def test_same_summary_as_the_logits_path(layer):
    d, hidden, head, b, targets = layer
    np.save(d / "logits.npy", ref.linear_logits(hidden, head, b).astype(np.float32))
    text = run_eval(*hidden_args(d))
    assert text.returncode == 0, text.stderr
    from_logits = run_eval(d / "logits.npy", d / "targets.npy")
    assert [line.split()[:-1] for line in text.stdout.splitlines()] == \
        [line.split()[:-1] for line in from_logits.stdout.splitlines()]


@pytest.mark.parametrize("change, message", [
    (lambda d: np.save(d / "head.npy", np.zeros((400, 23), np.float32)), r"HEAD has shape"),
    (lambda d: np.save(d / "bias.npy", np.zeros(399, np.float32)), r"BIAS has shape"),
    (lambda d: np.save(d / "hidden.npy", np.zeros((3, 20, 24), np.float16)), r"float32 or float64"),
    (lambda d: np.save(d / "targets.npy", np.zeros((3, 19), np.int64)), r"TARGETS has shape"),
    (lambda d: np.save(d / "head.npy", np.array(["a"])), r"HEAD has unsupported dtype"),
])
def test_bad_inputs(layer, change, message):
    d = layer[0]
    change(d)
    proc = run_eval(*hidden_args(d))
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1
    assert re.search(message, proc.stderr), proc.stderr


def test_argument_combinations(layer):
    d = layer[0]
    for args in (("--hidden", d / "hidden.npy", d / "targets.npy"),
                 ("--hidden", d / "hidden.npy", "--head", d / "head.npy", d / "x.npy",
                  d / "targets.npy"),
                 (d / "hidden.npy", d / "targets.npy", "--head", d / "head.npy"),
                 (d / "targets.npy",)):
        proc = run_eval(*args)
        assert proc.returncode == 2 and "error:" in proc.stderr, args
    missing = run_eval("--hidden", d / "nothing.npy", "--head", d / "head.npy",
                       d / "targets.npy")
    assert missing.returncode == 2 and "HIDDEN file not found" in missing.stderr
