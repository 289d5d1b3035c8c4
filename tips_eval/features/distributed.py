"""Scale-out through Lightning Fabric: launch (or join) the DDP processes, run one rank each.

Lightning does all process management: it starts the other local ranks
(re-running the script), or joins those torchrun / SLURM / other cluster
environments created. We only use its collectives: broadcast (rank 0's plan),
all_reduce (did any rank fail?) and barrier (before rank 0 seals the manifest).
"""

from __future__ import annotations

import torch

from .runner import Job, Runner


def _fabric_cls():
    try:
        from lightning.fabric import Fabric
    except ImportError:
        from lightning_fabric import Fabric
    return Fabric


class FabricComm:
    def __init__(self, fabric):
        self.fabric = fabric
        self.rank, self.world = fabric.global_rank, fabric.world_size

    def broadcast(self, obj):
        return self.fabric.broadcast(obj, src=0)

    def barrier(self):
        self.fabric.barrier()

    def any(self, flag: bool) -> bool:
        t = torch.tensor([1.0 if flag else 0.0], device=self.fabric.device)
        return bool(self.fabric.all_reduce(t, reduce_op="sum").item() > 0)


class _Payload:
    """Opaque holder: Lightning's spawn launcher must not walk into the (frozen) dataclasses of a Job."""

    def __init__(self, job: Job):
        self.job = job


def _rank_main(fabric, payload: _Payload) -> str:
    job = payload.job
    job.extra = {**job.extra, "strategy": type(fabric.strategy).__name__}
    Runner(job, FabricComm(fabric), fabric.device).run()
    return str(job.root)


def run_distributed(job: Job, *, devices: int, num_nodes: int, strategy, accelerator: str) -> str:
    """Run ``job`` over ``devices`` x ``num_nodes`` processes; returns the entry path on every rank."""
    Fabric = _fabric_cls()
    fabric = Fabric(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
                    precision="32-true")
    return fabric.launch(_rank_main, _Payload(job))
