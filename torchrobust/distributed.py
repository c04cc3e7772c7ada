"""Distributed set-up for ``torchrun --nproc_per_node N``: DistributedDataParallel over gloo (CPU) or nccl (CUDA).

Nothing here is global state of ours: the process group is torch's, created only when the launcher's
environment (``WORLD_SIZE`` > 1) asks for it, and the helpers below read it back.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["init_from_env", "is_distributed", "rank", "world_size", "is_main", "gather_rows", "device_for_rank",
           "barrier", "cleanup", "any_rank"]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: str | None = None) -> bool:
    """Initialise the process group from torchrun's environment; returns True when running distributed.

    The backend is nccl when the device is CUDA, gloo otherwise.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if dist.is_initialized():
        return True
    use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def device_for_rank(device: str | None = None) -> torch.device:
    """The device this process should use: ``cuda:LOCAL_RANK`` under torchrun on CUDA, else ``device``/cpu."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and is_distributed():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(device)


def shard_bounds(n: int, r: int | None = None, w: int | None = None) -> tuple[int, int]:
    """Contiguous shard ``[start, stop)`` of ``n`` items for rank ``r`` of ``w`` (sizes differ by at most 1)."""
    r = rank() if r is None else r
    w = world_size() if w is None else w
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    return start, start + base + (1 if r < extra else 0)


def gather_rows(t: torch.Tensor, n_total: int) -> torch.Tensor:
    """All-gather contiguous shards (rank order) of a tensor along dim 0 into the full ``n_total`` rows."""
    if not is_distributed():
        return t
    w = world_size()
    sizes = [shard_bounds(n_total, r, w) for r in range(w)]
    max_rows = max(b - a for a, b in sizes)
    pad = torch.zeros((max_rows - t.shape[0], *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded = torch.cat([t, pad]) if pad.shape[0] else t
    dtype = padded.dtype
    if dtype == torch.bool:  # gloo has no bool all_gather
        padded = padded.to(torch.uint8)
    out = [torch.empty_like(padded) for _ in range(w)]
    dist.all_gather(out, padded.contiguous())
    rows = [o[: b - a] for o, (a, b) in zip(out, sizes, strict=True)]
    return torch.cat(rows).to(dtype)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one (all-reduce MAX; no communication alone)."""
    if not is_distributed():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
