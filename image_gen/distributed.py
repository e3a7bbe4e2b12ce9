"""torchrun plumbing: one process per GPU (or CPU process with gloo), identified by env variables."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def setup(device: str = "auto") -> tuple[int, int, torch.device]:
    """Join the process group when launched by torchrun; returns (rank, world_size, device).

    device: "auto" (CUDA when available), "cuda" or "cpu".
    """
    if device not in ("auto", "cuda", "cpu"):
        raise ValueError(f"device must be auto, cuda or cpu, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but torch sees no CUDA GPU; use device=cpu (or auto)")
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The value averaged over all processes (itself when not distributed)."""
    if dist.is_initialized():
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_true(flag: bool, device: torch.device) -> bool:
    """True only when the flag holds on every process (keeps ranks stepping in lockstep)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([int(flag)], device=device)  # on the device: NCCL reduces CUDA tensors only
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def from_rank0(value: float, device: torch.device) -> float:
    """Rank 0's value on every process (the value itself when not distributed)."""
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)  # on the device: NCCL reduces CUDA tensors only
    dist.broadcast(t, src=0)
    return t.item()
