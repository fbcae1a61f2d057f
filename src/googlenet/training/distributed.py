"""Distributed data-parallel training through torchrun: which process am I, and the few collective calls
the training loop needs. Launch: `torchrun --nproc_per_node=N -m googlenet.cli train ...`.

Each global batch (data.batch_size images) is split across the processes, and DistributedDataParallel
averages the gradients, so N processes take the same steps as one process on the same global batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_environment() -> DistInfo:
    """The process's place in a torchrun job (RANK, WORLD_SIZE, LOCAL_RANK), or a single process."""
    return DistInfo(
        rank=int(os.environ.get("RANK", "0")),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def initialise(info: DistInfo, device_type: str) -> None:
    """Join the process group: NCCL between GPUs, gloo on CPUs. GPU processes also get gloo for CPU tensors:
    the stop flag and the timings are agreed on as CPU values, which need no wait for the GPU."""
    if info.enabled and not dist.is_initialized():
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo")


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every process if it is true on any: all processes must stop at the same step."""
    if not info.enabled:
        return flag
    value = torch.tensor([int(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def max_over_ranks(values: list[float], info: DistInfo) -> list[float]:
    """Each value's maximum over the processes: every process plans by the slowest one."""
    if not info.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [float(v) for v in tensor.tolist()]
