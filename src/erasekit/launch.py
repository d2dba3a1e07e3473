"""Where this process stands in a multi-process launch (``accelerate launch``, ``torchrun``), from the environment
variables those launchers set, so neither accelerate nor torch.distributed is needed to ask."""

from __future__ import annotations

import os

from .errors import ConfigError


def process_rank() -> tuple[int, int]:
    """``(rank, world size)`` of this process; ``(0, 1)`` outside a launcher."""
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError("RANK and WORLD_SIZE must be integers") from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"invalid process rank {rank} of world size {world}")
    return rank, world


def process_device(device: str) -> str:
    """``device`` for this process: under a multi-process launch each process takes its own GPU, ``cuda:LOCAL_RANK``
    (a plain ``cuda`` would put every process on the first one)."""
    _, world = process_rank()
    if world > 1 and device == "cuda":
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return device
