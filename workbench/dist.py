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
- **Reads like one process.** The trainers' collectives go through the helpers below (`my_rows`,
  `mean_over_ranks`, `all_sum_many_`, `gather_batch`, `gather_cat`, `average_grads`), each the identity
  (or the plain computation) on one process.
- **Only rank 0 writes**: checkpoints, SID tables and logbook rows (`is_main`). Checkpoints go to the
  workspace, which on several hosts must be on a shared filesystem so that every rank can resume.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import fields, is_dataclass, replace

import torch
import torch.distributed as td


def command(procs: int, args: list[str]) -> list[str]:
    """The command line of `workbench ARGS` on `procs` processes of this host (torchrun when more than one)."""
    launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"] if procs > 1 else []
    return [sys.executable, *launch, "-m", "workbench", *args]


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


def my_rows() -> slice:
    """This rank's rows of a global batch, `slice(rank, None, world)`: strided, so ranks differ by at most
    one row; every row (`slice(0, None, 1)`) on one process."""
    return slice(rank(), None, world())


def shard(batch: torch.Tensor) -> torch.Tensor:
    """This rank's share of a global batch of indices: `batch[my_rows()]`."""
    return batch[my_rows()]


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


def _comm_device() -> str:
    return f"cuda:{torch.cuda.current_device()}" if td.get_backend() == "nccl" else "cpu"  # NCCL reduces GPU tensors only


def all_sum(x: float) -> float:
    """The sum of a number over ranks (the number itself on one process)."""
    return float(all_sum_(torch.tensor([x], dtype=torch.float64))) if world() > 1 else x


def all_sum_(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place (and return it); a no-op on one process."""
    if world() > 1:
        buf = t.to(_comm_device())
        td.all_reduce(buf)
        t.copy_(buf)
    return t


def all_sum_many_(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Sum several tensors (of one dtype and device) over ranks in place in one flat all-reduce, and return
    them; a no-op on one process."""
    if world() > 1 and tensors:
        flat = all_sum_(torch.cat([t.reshape(-1) for t in tensors]))
        for t, v in zip(tensors, flat.split([t.numel() for t in tensors])):
            t.copy_(v.view_as(t))
    return tensors


def mean_over_ranks(stats: dict) -> dict[str, float]:
    """Each value of `stats` averaged over ranks, as floats, in one all-reduce: numbers in float64, 0-d
    tensors (all of them, on one device) in their own dtype; the values themselves on one process. A
    value each rank holds as N x its part of a global quantity (a local mean times its rows' share of
    the global batch, say) averages to that quantity; local counts average to the global count / N, a
    rank's loss denominator (as `local_total`)."""
    if world() == 1:
        return {k: float(v) for k, v in stats.items()}
    v = list(stats.values())
    t = torch.stack(v) if all(torch.is_tensor(x) for x in v) else torch.tensor([float(x) for x in v], dtype=torch.float64)
    return dict(zip(stats, (all_sum_(t) / world()).tolist()))


def average_grads(params) -> None:
    """Average the gradients of `params` over ranks in one flat all-reduce: DDP's arithmetic, for trainers
    whose loss needs whole-batch collectives of its own (`gather_batch`) inside the backward pass."""
    if world() == 1:
        return
    for g in all_sum_many_([p.grad for p in params if p.grad is not None]):
        g.div_(world())


def sync_params(model: torch.nn.Module) -> None:
    """Every rank starts from rank 0's parameters and buffers (a guard: seeded inits already agree)."""
    if world() == 1:
        return
    for t in [*model.parameters(), *model.buffers()]:
        buf = t.data.to(_comm_device())
        td.broadcast(buf, 0)
        t.data.copy_(buf)


def gather_batch(local: torch.Tensor, total: int) -> torch.Tensor:
    """The whole global batch (total rows, in global order) from each rank's `shard` of it; differentiable.

    Every rank then computes the same whole-batch loss (an in-batch contrastive loss, say). The
    backward pass sums the ranks' gradients into each rank's own rows, so after `average_grads` the
    optimiser sees exactly the one-process gradient. Slices differ by at most a row: pad, gather, cut."""
    n = world()
    if n == 1:
        return local
    from torch.distributed.nn.functional import all_gather  # the autograd-aware gather

    m = -(-total // n)
    pad = torch.cat([local, local.new_zeros(m - len(local), *local.shape[1:])])
    parts = all_gather(pad.to(_comm_device()))  # N x (m, ...)
    # (m, N, ...) -> (m*N, ...): row j*N + r is rank r's j-th row, which is global row j*N + r
    return torch.stack(parts, 1).flatten(0, 1)[:total].to(local.device)


def gather_objects(obj) -> list:
    """Every rank's `obj` (pickled: only for this job's own processes), in rank order; [obj] on one process."""
    if world() == 1:
        return [obj]
    out = [None] * world()
    td.all_gather_object(out, obj)
    return out


def _merge(xs: list, tensors):
    """One structure from several alike ones (tensors, nested in tuples, lists, dicts and dataclasses):
    `tensors(list of the tensors at a place)` at each tensor, the first structure's value at any other leaf."""
    x = xs[0]
    if isinstance(x, torch.Tensor):
        return tensors(xs)
    if isinstance(x, dict):
        return {k: _merge([y[k] for y in xs], tensors) for k in x}
    if isinstance(x, (tuple, list)):
        return type(x)(_merge(list(ys), tensors) for ys in zip(*xs))
    if is_dataclass(x) and not isinstance(x, type):
        return replace(x, **{f.name: _merge([getattr(y, f.name) for y in xs], tensors) for f in fields(x) if f.init})
    return x


def gather_cat(x):
    """Every rank's `x` joined along the batch (dim 0, in rank order, on the CPU): `x` is a tensor or a
    tuple, list, dict or dataclass of them (nested), any other leaf (a float) is rank 0's. For what each
    rank computes on its own rows and the whole batch is needed for (diagnostics); pickled
    (`gather_objects`), not differentiable. `x` itself on one process."""
    if world() == 1:
        return x
    return _merge(gather_objects(_merge([x], lambda ts: ts[0].cpu())), torch.cat)


@contextmanager
def main_first():
    """Rank 0 runs the block first (e.g. to fill a cache on disk), then the others."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def teardown(wait: bool = True) -> None:
    """Leave the process group (after every rank is done, when `wait`): a clean exit, instead of ranks
    tearing their connections down while a peer still reads them."""
    if td.is_initialized():
        if wait:
            td.barrier()
        td.destroy_process_group()
