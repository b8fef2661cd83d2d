"""torch.distributed helpers: one process per device under ``torchrun``, nothing when run as a single process.

Losses divide by counts (positives, anchors, RoIs). To make N processes train exactly like one process with the
same global batch, every normaliser is the count *averaged over processes* (``average_count``): DistributedDataParallel
averages gradients, so sum_r grad(sum_r / mean_count) / N = grad(sum of all) / total count.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_environment(device_type: str) -> torch.device | None:
    """Join the process group ``torchrun`` describes (RANK, WORLD_SIZE, MASTER_ADDR, ...); returns this process's
    CUDA device when there is one. A plain ``python``/``sampling-free`` run (no WORLD_SIZE) does nothing."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return None
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
        return torch.device("cuda", local_rank)
    dist.init_process_group("gloo")
    return None


def _reduce_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def average_count(count) -> float:
    """The mean of ``count`` over processes, at least 1 (a loss normaliser)."""
    if not is_distributed():
        return max(1.0, float(count))
    t = torch.tensor([float(count)], dtype=torch.float64, device=_reduce_device())
    dist.all_reduce(t)
    return max(1.0, float(t) / world_size())


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """Element-wise mean over processes of a detached tensor (e.g. the guided-scaling ratio's two losses)."""
    if not is_distributed():
        return values
    t = values.detach().clone().to(_reduce_device(), torch.float64)
    dist.all_reduce(t)
    return (t / world_size()).to(values.device, values.dtype)


def gather_objects(obj) -> list:
    """Every process's ``obj``, in rank order (on every rank)."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()
