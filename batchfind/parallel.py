"""Inside a worker of a distributed probe: join the ranks' process group and wrap the model the way
the job trains it, with PyTorch's DistributedDataParallel or FSDP (`fully_shard`)."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .errors import InputError


def join(rank: dict[str, Any], device: torch.device, timeout_s: float) -> str:
    """Join this set of workers' process group (nccl on GPU, gloo on CPU); returns the backend."""
    timeout = timedelta(seconds=timeout_s)
    store = dist.PrefixStore(rank["prefix"], dist.TCPStore(rank["addr"], rank["port"], is_master=False, timeout=timeout))
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=store, rank=rank["rank"], world_size=rank["world_size"], timeout=timeout)
    return backend


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether any rank says so: what every rank must then do alike (wrap the model the same way)."""
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def wrap(model: nn.Module, strategy: str, device: torch.device, find_unused: bool = False) -> nn.Module:
    """The model, built in host memory, on `device` the way the strategy puts it there.

    DDP: a full replica per rank plus gradient buckets; `find_unused` where some parameters get no
    gradient (it walks the graph after every forward for them). FSDP: parameters, gradients and
    optimizer state sharded across ranks, each repeated block gathered only while it runs; blocks
    move to the device one at a time, so a model that fits only when sharded still sets up.
    """
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model.to(device), device_ids=[device.index] if device.type == "cuda" else None,
                                       find_unused_parameters=find_unused)
    from torch.distributed.device_mesh import init_device_mesh

    fully_shard = _fully_shard()
    # The probe's device, not whichever accelerator the machine has.
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for block in repeated_blocks(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _fully_shard() -> Any:
    """FSDP2's `fully_shard`: public from torch 2.6, under `_composable` in 2.4 and 2.5, absent before."""
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        try:
            from torch.distributed._composable.fsdp import fully_shard
        except ImportError:
            raise InputError(f"probe.strategy: fsdp needs torch 2.4 or later (this is {torch.__version__}); "
                             "ddp works with this one") from None
    return fully_shard


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """Children of a ModuleList or Sequential that repeat one class, are built of modules and hold
    parameters (a transformer's layers, a ResNet's blocks): the units FSDP gathers one at a time.
    Single layers (a Linear) are too small to be worth their own unit. Innermost first, as
    `fully_shard` wants nested units."""
    blocks: list[nn.Module] = []
    for container in model.modules():
        if isinstance(container, (nn.ModuleList, nn.Sequential)):
            children = [c for c in container.children() if any(True for _ in c.children())]
            counts = Counter(type(child) for child in children)
            blocks += [c for c in children if counts[type(c)] > 1 and any(True for _ in c.parameters())]
    # modules() lists parents before children: reversed, every block comes after the blocks it holds.
    return list(dict.fromkeys(reversed(blocks)))
