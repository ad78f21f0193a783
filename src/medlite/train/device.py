"""Where training runs: the device, the Lightning strategy and world size, the precision."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from medlite.errors import UsageError
from medlite.recipe import TrainerConfig


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; 'cuda' without a GPU is the user's error."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("device: 'cuda' requested but no CUDA GPU is available")
    return name


@dataclass(frozen=True)
class Placement:
    """Lightning's strategy, devices and num_nodes for one fit; `world` processes train."""

    strategy: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    world: int = 1


MULTI_NODE = ("trainer.num_nodes: DDP over several nodes is not supported: Lightning's multi-node launch "
              "(torchrun, SLURM) runs the whole command on every rank, while medlite runs the pipeline once and "
              "forks or spawns only its training; train on one node (trainer.devices: its GPUs), or spread "
              "trials over machines with `medlite study --executor ray`")


def placement(trainer_cfg: TrainerConfig | None, device: str, balance: str, gpus: int | None = None) -> Placement:
    """The placement for a recipe's `trainer` section (None: one process).

    Only training runs in several processes; every other stage runs once, in the launching
    process, which owns the run directory. Several processes on one CPU machine run as
    `ddp_fork` (gloo): the ranks are forked, cheap. Several GPUs run as `ddp_spawn` (NCCL): a
    forked child cannot use CUDA once the parent has (an earlier stage trained or scored on the
    GPU), so the ranks are spawned, fresh interpreters that receive the trainer pickled.
    `strategy: ddp_spawn` asks for spawning on CPU too (gloo): the GPU code path, testable
    without a GPU. Several nodes are refused (`MULTI_NODE` says why and what to do instead).
    `gpus`: the GPUs this machine has (default: counted).
    """
    if trainer_cfg is None:
        return Placement()
    devices, nodes = trainer_cfg.devices, trainer_cfg.num_nodes
    world = devices * nodes
    if nodes > 1:
        raise UsageError(MULTI_NODE)
    if world == 1:
        return Placement("ddp" if trainer_cfg.strategy in ("ddp", "ddp_spawn") else "auto")
    if trainer_cfg.strategy == "auto":
        raise UsageError(f"trainer.devices: {world} processes need trainer.strategy: ddp")
    if device == "cuda":
        have = torch.cuda.device_count() if gpus is None else gpus
        if devices > have:
            raise UsageError(f"trainer.devices: {devices} GPUs requested but this machine has {have}")
    if balance == "sampler":
        raise UsageError("data.balance: 'sampler' is not supported with DDP; use class_weights")
    spawn = device == "cuda" or trainer_cfg.strategy == "ddp_spawn"
    return Placement("ddp_spawn" if spawn else "ddp_fork", devices, 1, world)


def precision(trainer_cfg: TrainerConfig | None, device: str) -> str:
    """The recipe's precision; `auto`: full precision on CPU, bf16 (else fp16) mixed precision on a GPU."""
    if trainer_cfg is not None and trainer_cfg.precision != "auto":
        return trainer_cfg.precision
    if device == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"
