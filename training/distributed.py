"""The process group, when the run was started by torchrun (WORLD_SIZE > 1): DDP over gloo, so the same recipe
runs unchanged on CPUs. With one process every method here is a no-op.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world: int = 1

    @classmethod
    def from_environ(cls) -> DistEnv:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                # gloo: works on CPU everywhere; NCCL would need a GPU per process
                dist.init_process_group("gloo")
            return cls(rank=dist.get_rank(), world=dist.get_world_size())
        return cls()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model):
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model)

    def no_sync(self, runner, last: bool):
        """Skips the gradient all-reduce on all but the last micro-batch of an accumulated step."""
        if self.world == 1 or last:
            return contextlib.nullcontext()
        return runner.no_sync()

    def mean(self, value: float) -> float:
        if self.world == 1:
            return value
        import torch
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item()) / self.world

    def gather_rng(self, state):
        """Every process's RNG state (for exact resume), collected on all processes."""
        if self.world == 1:
            return [state]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, state)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()
