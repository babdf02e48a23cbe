"""Concurrent calls from many Python threads.

The kernels release the GIL and run their own OpenMP threads, and the
default thread count (``set_num_threads``) is process-wide state. Here eight
Python threads call every kernel at once, each with its own ``num_threads``
(1, 2, 3 or 8, and None: the shared default), while another thread keeps
changing the default. Every result must be bitwise identical to the one
computed beforehand on one thread: results do not depend on the thread
count, and no call may see another's scratch memory or output.

The inputs are large enough (>= 32768 elements) for the kernels to use
their OpenMP threads.
"""
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest

import ce_kernels as ck

N_WORKERS = 8
WORKER_THREADS = [1, 2, 3, 8]
ROUNDS = 10


def bits(value):
    """The bytes of a result (arrays, NumPy scalars, tuples of them), for
    bitwise comparison: NaN equals NaN with the same payload, -0.0 is not 0.0."""
    if isinstance(value, tuple):
        return tuple(bits(v) for v in value)
    arr = np.asarray(value)
    return (arr.dtype.str, arr.shape, arr.tobytes())


def make_inputs():
    rng = np.random.default_rng(2024)
    inputs = {}
    # Many rows (split across threads by rows) and few long rows (split by
    # vocabulary chunks, merged in a fixed order).
    inputs["logits"] = (rng.standard_normal((24, 3001)) * 3).astype(np.float32)
    inputs["target"] = rng.integers(0, 3001, 24)
    inputs["target"][::5] = -100
    inputs["weight"] = (rng.random(3001) + 0.5).astype(np.float32)
    inputs["long"] = (rng.standard_normal((2, 40_000)) * 2).astype(np.float64)
    inputs["long_target"] = rng.integers(0, 40_000, 2)
    soft = rng.random((2, 40_000))
    inputs["long_soft"] = soft / soft.sum(-1, keepdims=True)
    inputs["half"] = (rng.standard_normal((16, 4096)) * 4).astype(np.float16)
    inputs["half_target"] = rng.integers(0, 4096, 16)
    inputs["x"] = rng.standard_normal((8, 8193)).astype(np.float32)
    p = rng.random((16, 4096))
    q = rng.random((16, 4096))
    inputs["p"] = p / p.sum(-1, keepdims=True)
    inputs["q"] = (q / q.sum(-1, keepdims=True)).astype(np.float64)
    inputs["bce_x"] = rng.standard_normal((64, 1024)).astype(np.float32) * 5
    inputs["bce_y"] = rng.random((64, 1024)).astype(np.float32)
    inputs["bce_pw"] = (rng.random(1024) + 0.5).astype(np.float32)
    inputs["elementwise"] = rng.standard_normal(65_536) * 10
    return inputs


def in_place_grad(logits, target, n, **options):
    """cross_entropy_with_grad writing the gradient over a private copy."""
    work = logits.copy()
    loss, grad = ck.cross_entropy_with_grad(work, target, out=work, num_threads=n, **options)
    assert grad is work
    return loss, grad


def kernel_calls(i):
    """(name, call(n)) for every kernel; n is the worker's num_threads."""
    calls = [
        ("cross_entropy", lambda n: ck.cross_entropy(
            i["logits"], i["target"], weight=i["weight"], label_smoothing=0.1, num_threads=n)),
        ("cross_entropy none", lambda n: ck.cross_entropy(
            i["long"], i["long_target"], reduction="none", z_loss=1e-3, num_threads=n)),
        ("cross_entropy_with_grad", lambda n: ck.cross_entropy_with_grad(
            i["logits"], i["target"], weight=i["weight"], reduction="sum", num_threads=n)),
        ("cross_entropy_with_grad soft", lambda n: ck.cross_entropy_with_grad(
            i["long"], i["long_soft"], label_smoothing=0.2, softcap=20.0, num_threads=n)),
        ("cross_entropy_with_grad in place", lambda n: in_place_grad(
            i["logits"], i["target"], n, label_smoothing=0.1)),
        ("cross_entropy_with_grad in place, few rows", lambda n: in_place_grad(
            i["long"], i["long_target"], n, reduction="none", grad_output=np.array([1.0, -2.0]))),
        ("cross_entropy_with_grad float16 in place", lambda n: in_place_grad(
            i["half"], i["half_target"], n)),
        ("token_stats", lambda n: tuple(ck.token_stats(i["logits"], i["target"], num_threads=n))),
        ("token_stats, few rows", lambda n: tuple(ck.token_stats(i["long"], i["long_target"], num_threads=n))),
        # These use the process-wide default that the other thread changes.
        ("softmax", lambda n: ck.softmax(i["x"])),
        ("log_softmax", lambda n: ck.log_softmax(i["x"], axis=0)),
        ("log_softmax in place", lambda n: (lambda w: ck.log_softmax(w, out=w))(i["x"].copy())),
        ("logsumexp", lambda n: ck.logsumexp(i["long"])),
        ("entropy", lambda n: ck.entropy(i["p"], base=2, num_threads=n)),
        ("kl_divergence", lambda n: ck.kl_divergence(i["p"], i["q"], num_threads=n)),
        ("cross_entropy_probs", lambda n: ck.cross_entropy_probs(i["p"], i["q"], num_threads=n)),
        ("binary_cross_entropy", lambda n: ck.binary_cross_entropy(
            i["bce_x"], i["bce_y"], pos_weight=i["bce_pw"], num_threads=n)),
        ("binary_cross_entropy_with_grad", lambda n: ck.binary_cross_entropy_with_grad(
            i["bce_x"], i["bce_y"], reduction="none", num_threads=n)),
        ("binary_cross_entropy_probs", lambda n: ck.binary_cross_entropy_probs(
            i["bce_y"], (i["bce_y"] > 0.5), num_threads=n)),
        ("sigmoid", lambda n: ck.sigmoid(i["elementwise"])),
        ("log_sigmoid", lambda n: ck.log_sigmoid(i["elementwise"])),
    ]
    return calls


@pytest.mark.skipif(not ck.openmp_enabled(), reason="built without OpenMP: nothing runs in parallel")
def test_concurrent_calls_with_changing_thread_counts():
    default = ck.get_num_threads()
    inputs = make_inputs()
    snapshot = {k: bits(v) for k, v in inputs.items()}
    calls = kernel_calls(inputs)

    # Expected results: each kernel alone, on one thread.
    ck.set_num_threads(1)
    try:
        expected = {name: bits(call(1)) for name, call in calls}
    finally:
        ck.set_num_threads(None)

    errors = []
    mismatches = []
    done = threading.Event()
    start = threading.Barrier(N_WORKERS + 1)

    def worker(k):
        n_threads = WORKER_THREADS[k % len(WORKER_THREADS)]
        order = list(range(len(calls)))
        rng = np.random.default_rng(k)
        try:
            start.wait()
            for r in range(ROUNDS):
                rng.shuffle(order)  # workers run different kernels at the same moment
                for j in order:
                    name, call = calls[j]
                    n = None if (k + r) % 4 == 3 else n_threads
                    if bits(call(n)) != expected[name]:
                        mismatches.append(f"{name} (num_threads={n}, worker {k}, round {r})")
        except BaseException as exc:  # reported by the main thread
            errors.append((k, exc))

    def changer():
        values = [1, 2, 3, 8, None, 5]
        m = 0
        try:
            start.wait()
            while not done.is_set():
                ck.set_num_threads(values[m % len(values)])
                m += 1
                time.sleep(0.0005)
        except BaseException as exc:
            errors.append(("changer", exc))
        finally:
            ck.set_num_threads(None)

    workers = [threading.Thread(target=worker, args=(k,)) for k in range(N_WORKERS)]
    setter = threading.Thread(target=changer)
    for t in workers + [setter]:
        t.start()
    try:
        for t in workers:
            t.join(timeout=300)
        hung = [k for k, t in enumerate(workers) if t.is_alive()]
    finally:
        done.set()
        setter.join(timeout=60)
        ck.set_num_threads(None)

    assert not hung, f"workers {hung} did not finish"
    assert not errors, errors
    assert not mismatches, f"{len(mismatches)} results differ from one thread's: {mismatches[:10]}"
    assert {k: bits(v) for k, v in inputs.items()} == snapshot, "an input was modified"
    assert ck.get_num_threads() == default, "the default thread count was not restored"


# A thread count far above what the machine can start: every call must run
# (capped to something sensible) and give the one-thread result. Run in a
# subprocess, so that a crash is a failure rather than the end of the run.
HUGE_THREADS_SCRIPT = r"""
import numpy as np, ce_kernels as ck
huge = 2**31 - 1
rng = np.random.default_rng(0)
rows = rng.standard_normal((65536, 2)).astype(np.float32)   # one work item per row
target = rng.integers(0, 2, 65536)
p = np.full((4096, 16), 1 / 16)
x = rng.standard_normal(65536)
calls = {
    "cross_entropy": lambda n: ck.cross_entropy(rows, target, num_threads=n),
    "cross_entropy_with_grad": lambda n: ck.cross_entropy_with_grad(rows, target, num_threads=n),
    "token_stats": lambda n: tuple(ck.token_stats(rows, target, num_threads=n)),
    "entropy": lambda n: ck.entropy(p, num_threads=n),
    "kl_divergence": lambda n: ck.kl_divergence(p, p, num_threads=n),
    "binary_cross_entropy_with_grad": lambda n: ck.binary_cross_entropy_with_grad(x, x > 0, num_threads=n),
}
defaults = {
    "softmax": lambda: ck.softmax(rows),
    "logsumexp": lambda: ck.logsumexp(rows),
    "sigmoid": lambda: ck.sigmoid(x),
}
def same(a, b):
    if isinstance(a, tuple):
        return all(same(u, v) for u, v in zip(a, b))
    return np.asarray(a).tobytes() == np.asarray(b).tobytes()
for name, call in calls.items():
    assert same(call(huge), call(1)), name
    print(name, "ok", flush=True)
for name, call in defaults.items():
    ck.set_num_threads(1)
    one = call()
    ck.set_num_threads(huge)
    assert same(call(), one), name
    ck.set_num_threads(None)
    print(name, "ok", flush=True)
"""


@pytest.mark.skipif(not ck.openmp_enabled(), reason="built without OpenMP")
def test_huge_thread_counts_are_capped():
    # Started outside the checkout, so that it imports the package the tests
    # run against (PYTHONPATH is inherited), not the uncompiled sources.
    proc = subprocess.run([sys.executable, "-c", HUGE_THREADS_SCRIPT], capture_output=True, text=True,
                          timeout=300, cwd=tempfile.gettempdir(), env=dict(os.environ))
    assert proc.returncode == 0, (
        f"exit status {proc.returncode}; finished: {proc.stdout.split()[::2]}; "
        f"stderr: {proc.stderr[-2000:]}")
