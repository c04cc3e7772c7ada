"""``torchrobust.train.distributed`` is :mod:`torchrobust.distributed` (moved one layer down so that training and
evaluation both use it without importing each other); this module keeps the old import path working."""

from torchrobust.distributed import (
    any_rank,
    barrier,
    cleanup,
    device_for_rank,
    gather_rows,
    init_from_env,
    is_distributed,
    is_main,
    rank,
    shard_bounds,
    world_size,
)

__all__ = ["init_from_env", "is_distributed", "rank", "world_size", "is_main", "gather_rows", "device_for_rank",
           "barrier", "cleanup", "any_rank", "shard_bounds"]
