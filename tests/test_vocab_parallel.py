"""Vocabulary-parallel cross-entropy on real processes: torch.distributed
(gloo; spawn and torchrun) and MPI (mpiexec), 2 and 3 ranks on localhost,
against the single-process call. Each rank runs one OpenMP thread."""
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import ce_kernels as ck
import vocab_parallel_worker as worker

HERE = os.path.dirname(os.path.abspath(__file__))
# the directory holding the ce_kernels under test (installed, or built in
# place): the ranks import that one, not an unbuilt source tree
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(ck.__file__)))
TIMEOUT = 120


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_environment():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([PACKAGE_PARENT, HERE, env.get("PYTHONPATH", "")])
    return env


@contextlib.contextmanager
def one_thread_per_rank():
    """OMP_NUM_THREADS=1 for the processes started meanwhile (read as they start)."""
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = old


def write_case(directory, world, dtype):
    rng = np.random.default_rng(world)
    v = 301
    x = (rng.standard_normal((12, v)) * 3).astype(dtype)
    t = rng.integers(0, v, 12)
    t[::5] = -100
    cuts = np.array([0, 120, 250, v] if world == 3 else [0, 97, v])
    t[1], t[2] = cuts[1], cuts[1] - 1       # targets on a shard boundary
    w = (rng.random(v) + 0.5).astype(dtype)
    np.savez(os.path.join(directory, "case.npz"), x=x, t=t, w=w, cuts=cuts)
    return x, t, w


def check_ranks(directory, world, x, t, w):
    """Every rank's loss equals the single-process one; the ranks' gradients
    put together equal its gradient; a bad target raised on every rank."""
    loss, grad = ck.cross_entropy_with_grad(x, t, weight=w, **worker.OPTIONS)
    rows = ck.cross_entropy(x, t, weight=w, reduction="none", **worker.OPTIONS)
    got = [np.load(os.path.join(directory, f"rank{r}.npz")) for r in range(world)]
    for r, g in enumerate(got):
        np.testing.assert_allclose(g["loss"], loss, rtol=1e-6)
        np.testing.assert_array_equal(g["loss"], got[0]["loss"])   # same bits everywhere
        np.testing.assert_allclose(g["rows"], rows, rtol=1e-6, atol=1e-7)
        error = str(g["error"])
        if r == world - 1:
            assert error.startswith("IndexError") and "out of range" in error
        else:
            assert error.startswith("RuntimeError") and f"rank {world - 1}" in error
    sharded = np.concatenate([g["grad"] for g in got], axis=-1)
    np.testing.assert_allclose(sharded, grad, rtol=0, atol=1e-6 * np.abs(grad).max())


def run_processes(command, directory):
    result = subprocess.run(command, cwd=directory, env=rank_environment(), timeout=TIMEOUT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("world,dtype", [(2, np.float32), (3, np.float64)])
def test_torch_spawn(tmp_path, world, dtype):
    pytest.importorskip("torch")
    mp = pytest.importorskip("torch.multiprocessing")
    x, t, w = write_case(tmp_path, world, dtype)
    with one_thread_per_rank():
        context = mp.start_processes(
            worker.run_torch, args=(world, f"tcp://127.0.0.1:{free_port()}", str(tmp_path)),
            nprocs=world, join=False, start_method="spawn")
        deadline = time.monotonic() + TIMEOUT
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                for p in context.processes:
                    p.terminate()
                pytest.fail("the ranks did not finish")
    check_ranks(tmp_path, world, x, t, w)


def test_torchrun(tmp_path):
    pytest.importorskip("torch")
    torchrun = shutil.which("torchrun") or pytest.skip("torchrun is not on PATH")
    x, t, w = write_case(tmp_path, 2, np.float32)
    run_processes([torchrun, "--nproc-per-node", "2", "--master-port", str(free_port()),
                   os.path.join(HERE, "vocab_parallel_worker.py"), "torch", str(tmp_path)],
                  tmp_path)
    check_ranks(tmp_path, 2, x, t, w)


@pytest.mark.parametrize("world,dtype", [(2, np.float32), (3, np.float64)])
def test_mpi(tmp_path, world, dtype):
    pytest.importorskip("mpi4py")
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep +
                           os.environ.get("PATH", "")) or pytest.skip("mpiexec is not on PATH")
    x, t, w = write_case(tmp_path, world, dtype)
    run_processes([mpiexec, "-n", str(world), sys.executable,
                   os.path.join(HERE, "vocab_parallel_worker.py"), "mpi", str(tmp_path)],
                  tmp_path)
    check_ranks(tmp_path, world, x, t, w)


def test_bench_section(capsys):
    """ce-kernels bench --vocab-parallel: times on real processes, and the
    bytes per row do not depend on the vocabulary."""
    pytest.importorskip("torch")
    from ce_kernels import bench

    with one_thread_per_rank():
        small = bench.vocab_parallel(8, 1000, 2, threads=1, repeat=2)
    assert small["vocab_parallel"]["runs"] == 2 and small["single_process"]["min"] > 0
    assert small["bytes_sent_per_row_per_rank"] == 17 * 8  # the record: 17 doubles
    assert small["bytes_received_per_row_per_rank"] == 17 * 8
    text = bench.format_vocab_parallel(small)
    assert "2 processes (gloo)" in text and "independent of V" in text


def test_torch_group_of_one(rng):
    """In this process, a group of one rank: the loss in the logits' dtype
    (bfloat16 too) and the gradient as the PyTorch adapter gives them, and
    errors that name what is wrong."""
    torch = pytest.importorskip("torch")
    dist = pytest.importorskip("torch.distributed")
    import ce_kernels.torch as ckt
    from ce_kernels.distributed import vocab_parallel_cross_entropy

    with pytest.raises(RuntimeError, match="not initialized"):
        vocab_parallel_cross_entropy(torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0,
                            world_size=1)
    try:
        t = torch.tensor([1, 2, -100, 299])
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.from_numpy(rng.standard_normal((4, 300))).to(dtype).requires_grad_()
            loss = vocab_parallel_cross_entropy(x, t, reduction="none", label_smoothing=0.1)
            loss.sum().backward()
            y = x.detach().clone().requires_grad_()
            expected = ckt.cross_entropy(y, t, reduction="none", label_smoothing=0.1)
            expected.sum().backward()
            assert loss.dtype == expected.dtype == dtype
            torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(x.grad, y.grad, rtol=1e-6, atol=1e-6)
        with pytest.raises(ValueError, match=r"hold 300 classes in all .* not vocab_size \(500\)"):
            vocab_parallel_cross_entropy(x, t, vocab_size=500)
        with pytest.raises(ValueError, match="must be on the CPU|meta"):
            vocab_parallel_cross_entropy(x.detach().to("meta"), t)
        with pytest.raises(TypeError, match="logits_shard must be a torch.Tensor"):
            vocab_parallel_cross_entropy([[1.0]], t)
    finally:
        dist.destroy_process_group()
