"""The processes of a run: torchrun ranks and devices, values rank 0 decides, and each rank's
share of an epoch."""

from __future__ import annotations

import gc
import math
import os

import torch
import torch.distributed as dist


def setup() -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this process; under torchrun, joins the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if world > 1 else 0
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def leave_group(wait: bool) -> None:
    """Destroy the process group (if this process joined one). With ``wait`` (a run that ended
    normally, every rank here) after all ranks arrive, so none closes its connections while
    another still receives. Garbage is collected first: reference cycles (torch keeps some
    import-time frames) can hold a DDP wrapper, whose reducer holds the group's gloo threads;
    freed now, they are not left to the interpreter's teardown, where gloo may abort."""
    if not dist.is_initialized():
        return
    gc.collect()
    if wait:
        dist.barrier()
    dist.destroy_process_group()


def broadcast(value, world: int):
    """Rank 0's ``value`` on every rank (itself when there is one process)."""
    if world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value, world: int) -> list | None:
    """Every rank's ``value``, in rank order, on rank 0 (None on the others); ``[value]`` when
    there is one process."""
    if world == 1:
        return [value]
    box = [None] * world if dist.get_rank() == 0 else None
    dist.gather_object(value, box, dst=0)
    return box


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1
                  ) -> list[list[int]]:
    """This rank's batches of image indices for an epoch: a permutation fixed by (seed, epoch),
    padded to split evenly over ranks, so a resumed run sees exactly the same order."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    per_rank = math.ceil(n / world)
    order = (order * (world + 1))[: per_rank * world][rank::world]
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]


