"""Data parallelism across processes: one command on 1 process, on N (torchrun), on GPUs on several hosts.

Under `torchrun` (which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT), `setup`
joins the process group (NCCL on CUDA, gloo on CPU) and gives each process its device
(`cuda:<LOCAL_RANK>` on GPUs). Without torchrun every function here is a no-op, so single-process code
paths are the same code.

The contract the trainers keep:
- **Same global batch.** Every rank draws the same shuffled global batches (same seed) and trains on
  its slice `shard(batch)`; a global batch of B examples on N ranks is B/N per rank, and the optimiser
  sees the gradient of the whole global batch, as on one process.
- **Exact loss scaling.** A rank's loss is its examples' weighted sum divided by the *global* batch's
  weight over N (`local_total`); DDP averages gradients over the N ranks, which gives back the global
  batch's weighted mean. A rank whose slice is empty trains on one zero-weight example, so every rank
  joins every gradient all-reduce.
- **Only rank 0 writes**: checkpoints, SID tables and logbook rows (`is_main`). Checkpoints go to the
  workspace, which on several hosts must be on a shared filesystem so that every rank can resume.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as td


def launched() -> bool:
    """Started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str = "cpu") -> str:
    """Join the process group if launched by torchrun; returns this process's device."""
    if not launched():
        return device
    cuda = str(device).startswith("cuda")
    if not td.is_initialized():
        td.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return device


def world() -> int:
    return td.get_world_size() if td.is_initialized() else 1


def rank() -> int:
    return td.get_rank() if td.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if td.is_initialized():
        td.barrier()


def shard(batch: torch.Tensor) -> torch.Tensor:
    """This rank's share of a global batch of indices (strided, so ranks differ by at most one example)."""
    return batch[rank()::world()]


def local_total(weight: torch.Tensor) -> torch.Tensor:
    """The denominator of a rank's loss: the global batch's summed weight over the number of ranks."""
    return weight.sum().clamp_min(1e-9) / world()


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """`model` in DistributedDataParallel when there are several processes (the module itself otherwise).
    Unused parameters are allowed: stages 1-2 of a personalised generator leave its context slots idle."""
    if world() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    dev = next(model.parameters()).device
    ids = [dev.index] if dev.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def all_sum(x: float) -> float:
    """The sum of a number over ranks (the number itself on one process)."""
    if world() == 1:
        return x
    dev = f"cuda:{torch.cuda.current_device()}" if td.get_backend() == "nccl" else "cpu"  # NCCL reduces GPU tensors only
    t = torch.tensor([x], dtype=torch.float64, device=dev)
    td.all_reduce(t)
    return float(t)


def teardown() -> None:
    if td.is_initialized():
        td.destroy_process_group()
