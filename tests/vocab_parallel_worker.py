"""One process of a vocabulary-parallel test (tests/test_vocab_parallel.py).

Reads the case (logits, targets, weights, shard boundaries) from case.npz,
computes the loss and its shard's gradient with one engine, then the same
call with a target out of range on the last rank only (every rank must
raise, none hang), and saves what it got to rank<R>.npz in the same
directory. Run as ``python vocab_parallel_worker.py {torch,mpi} DIR`` (under
torchrun or mpiexec), or through :func:`run_torch` (spawn).
"""
import os
import sys

import numpy as np

OPTIONS = dict(label_smoothing=0.1, z_loss=1e-3, softcap=8.0)


def _shard(case, rank):
    cuts = case["cuts"]
    return case["x"][:, cuts[rank]:cuts[rank + 1]]


def _bad_target(case, rank, world):
    t = case["t"].copy()
    if rank == world - 1:
        t[0] = case["x"].shape[1]
    return t


def _save(directory, rank, **results):
    np.savez(os.path.join(directory, f"rank{rank}.npz"), **results)


def run_torch(rank, world, init_method, directory):
    import torch
    import torch.distributed as dist
    from ce_kernels.distributed import vocab_parallel_cross_entropy

    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
    rank, world = dist.get_rank(), dist.get_world_size()
    case = np.load(os.path.join(directory, "case.npz"))
    shard = torch.from_numpy(np.ascontiguousarray(_shard(case, rank))).requires_grad_()
    t, w = torch.from_numpy(case["t"]), torch.from_numpy(case["w"])
    loss = vocab_parallel_cross_entropy(shard, t, weight=w, **OPTIONS)
    loss.backward()
    rows = vocab_parallel_cross_entropy(shard.detach(), t, weight=w, reduction="none", **OPTIONS)
    try:
        vocab_parallel_cross_entropy(shard, torch.from_numpy(_bad_target(case, rank, world)))
        error = ""
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    _save(directory, rank, loss=loss.detach().numpy(), grad=shard.grad.numpy(),
          rows=rows.numpy(), error=error)
    dist.destroy_process_group()


def run_mpi(directory):
    from mpi4py import MPI
    from ce_kernels.mpi import vocab_parallel_cross_entropy, vocab_parallel_cross_entropy_with_grad

    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    case = np.load(os.path.join(directory, "case.npz"))
    shard, t, w = _shard(case, rank), case["t"], case["w"]
    loss, grad = vocab_parallel_cross_entropy_with_grad(shard, t, weight=w, **OPTIONS)
    rows = vocab_parallel_cross_entropy(shard, t, weight=w, reduction="none", **OPTIONS)
    try:
        vocab_parallel_cross_entropy(shard, _bad_target(case, rank, world))
        error = ""
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    _save(directory, rank, loss=loss, grad=grad, rows=rows, error=error)


if __name__ == "__main__":
    engine, directory = sys.argv[1], sys.argv[2]
    if engine == "mpi":
        run_mpi(directory)
    else:  # under torchrun: rank, world size and rendezvous from the environment
        run_torch(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), "env://", directory)
