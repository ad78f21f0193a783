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


def placement(trainer_cfg: TrainerConfig | None, device: str, balance: str, score_start: bool) -> Placement:
    """The placement for a recipe's `trainer` section (None: one process).

    Several processes on one CPU machine run as `ddp_fork` (gloo): only training is forked, the
    rest of the pipeline runs once. One GPU with `ddp` is a world of one. Several GPUs or nodes
    would need each rank to run the whole command (Lightning's launcher): refused, not faked.
    """
    if trainer_cfg is None:
        return Placement()
    devices, nodes = trainer_cfg.devices, trainer_cfg.num_nodes
    world = devices * nodes
    if world == 1:
        return Placement("ddp" if trainer_cfg.strategy == "ddp" else "auto")
    if trainer_cfg.strategy != "ddp":
        raise UsageError(f"trainer.devices/num_nodes: {world} processes need trainer.strategy: ddp")
    if device != "cpu" or nodes > 1:
        raise UsageError("trainer: DDP over several GPUs or nodes is not supported yet; use devices: 1 per GPU, "
                         "or several CPU processes on one machine (device: cpu)")
    if balance == "sampler":
        raise UsageError("data.balance: 'sampler' is not supported with DDP; use class_weights")
    if score_start:
        raise UsageError("trainer: DDP is for training from scratch or distilling, not for fine-tuning stages")
    return Placement("ddp_fork", devices, 1, world)


def precision(trainer_cfg: TrainerConfig | None, device: str) -> str:
    """The recipe's precision; `auto`: full precision on CPU, bf16 (else fp16) mixed precision on a GPU."""
    if trainer_cfg is not None and trainer_cfg.precision != "auto":
        return trainer_cfg.precision
    if device == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"
