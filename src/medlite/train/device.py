"""Where training runs: the device, the Lightning strategy and world size, the precision."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    launched: bool = False  # the ranks were started by torchrun or SLURM (medlite.train.launched)
    # Why the ranks are spawned although fork was asked for (`fork_unsafe`), else None; an explanation
    # carried for the record, not part of what the placement is.
    fork_unsafe: str | None = field(default=None, compare=False)


MULTI_NODE = ("trainer.num_nodes: several nodes train together when a launcher starts the run on each of them: "
              "`torchrun --nnodes N --nproc-per-node GPUS --node-rank R --master-addr HOST --master-port PORT "
              "-m medlite.cli run ...` "
              "(or SLURM's srun); alone, medlite forks or spawns ranks on this machine only. To spread "
              "independent trials over machines instead: `medlite study --executor ray`")


def placement(trainer_cfg: TrainerConfig | None, device: str, balance: str, gpus: int | None = None) -> Placement:
    """The placement for a recipe's `trainer` section (None: one process).

    Only training runs in several processes; every other stage runs once, in the launching
    process, which owns the run directory. Several processes on one CPU machine run as
    `ddp_fork` (gloo): the ranks are forked, cheap. Several GPUs run as `ddp_spawn` (NCCL): a
    forked child cannot use CUDA once the parent has (an earlier stage trained or scored on the
    GPU), so the ranks are spawned, fresh interpreters that receive the trainer pickled.
    `strategy: ddp_spawn` asks for spawning on CPU too (gloo): the GPU code path, testable
    without a GPU; so does a process a threaded library runs in (`fork_unsafe`). In a run a
    launcher started (torchrun, SLURM; `medlite.train.launched`) the ranks exist already and the
    world is the launcher's. Several nodes without a launcher are refused (`MULTI_NODE` says how
    to start them).
    `gpus`: the GPUs this machine has (default: counted).
    """
    if trainer_cfg is None:
        return Placement()
    from medlite.train import launched

    world_launched = launched.current()
    if world_launched is not None:
        launched.check_recipe(world_launched, trainer_cfg.devices, trainer_cfg.num_nodes, trainer_cfg.strategy)
        if balance == "sampler":
            raise UsageError("data.balance: 'sampler' is not supported with DDP; use class_weights")
        return Placement("ddp", world_launched.local_size, world_launched.nodes, world_launched.size, launched=True)
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
    unsafe = None if device == "cuda" or trainer_cfg.strategy == "ddp_spawn" else fork_unsafe()
    spawn = device == "cuda" or trainer_cfg.strategy == "ddp_spawn" or unsafe is not None
    return Placement("ddp_spawn" if spawn else "ddp_fork", devices, 1, world, fork_unsafe=unsafe)


# Libraries that run threads of their own once imported: a process forked while they run inherits their
# locks held and can hang in its first collective (seen: gloo after the LiteRT converter's JAX).
_THREADED = {"jax": "JAX (the LiteRT converter)", "ray": "Ray's client"}


def fork_unsafe() -> str | None:
    """Why forking DDP ranks from this process could deadlock them (a threaded library is loaded), or None;
    then the ranks are spawned instead, fresh interpreters (`ddp_spawn`, the path GPUs take)."""
    import sys

    for module, name in _THREADED.items():
        if module in sys.modules:
            return f"{name} runs threads in this process"
    return None


def precision(trainer_cfg: TrainerConfig | None, device: str) -> str:
    """The recipe's precision; `auto`: full precision on CPU, bf16 (else fp16) mixed precision on a GPU."""
    if trainer_cfg is not None and trainer_cfg.precision != "auto":
        return trainer_cfg.precision
    if device == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"
