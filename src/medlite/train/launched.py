"""Runs started by a cluster launcher (torchrun, SLURM's srun): the same `medlite run` on every rank.

medlite runs its pipeline once, in one process that owns the run directory. A launcher starts
the command on every rank of every node instead, so the ranks split the work this way: rank 0
leads, it runs the whole pipeline as if alone; whenever a stage trains (teachers, students,
distillation), it sends the fit to the other ranks (the Lightning trainer, module and data,
pickled, as Lightning's ddp_spawn hands them to spawned ranks) over a gloo side group, and every
rank trains its shard of each epoch under DDP in the process group the launcher described. The
followers write nothing (Lightning's loggers and checkpoints write on rank 0 only), read no data
files and print nothing; between fits they wait, and when rank 0 is done (or fails) it tells
them to stop. Fits without a trainer section (the compression fine-tunes) run on rank 0 alone.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

from medlite.errors import InternalError, UsageError, first_line

T = TypeVar("T")
_STOP = "stop"
# Between two fits rank 0 evaluates, exports and benchmarks alone, for as long as that takes: the
# followers' wait for the next message must not time out (gloo's default is 30 minutes).
_WAIT = timedelta(days=7)


@dataclass(frozen=True)
class World:
    """This process's place among the ranks a launcher started."""

    rank: int
    local_rank: int
    size: int
    local_size: int
    launcher: str  # torchrun | slurm | RANK/WORLD_SIZE (another launcher)
    main_address: str
    main_port: int

    @property
    def nodes(self) -> int:
        return max(1, self.size // max(1, self.local_size))

    def describe(self) -> dict:
        return {"launcher": self.launcher, "processes": self.size, "nodes": self.nodes,
                "processes_per_node": self.local_size}


def _int(env: dict, key: str) -> int:
    try:
        return int(env[key])
    except (KeyError, ValueError):
        raise UsageError(f"launcher environment: {key}={env.get(key)!r} is not a whole number") from None


def launched_world(env: dict | None = None) -> World | None:
    """The world a launcher describes in the environment, or None (one process; a launcher with one
    rank counts as none). torchrun: RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR/PORT
    (any launcher that sets RANK and WORLD_SIZE, e.g. Kubeflow's PyTorchJob, is read the same way).
    SLURM (`srun medlite run ...`, one task per GPU): Lightning's SLURMEnvironment reads it."""
    env = os.environ if env is None else env
    if "TORCHELASTIC_RUN_ID" in env or {"RANK", "WORLD_SIZE"} <= env.keys():
        size = _int(env, "WORLD_SIZE")
        if size <= 1:
            return None
        for key in ("MASTER_ADDR", "MASTER_PORT"):
            if key not in env:
                raise UsageError(f"launcher environment: WORLD_SIZE={size} but {key} is not set")
        # Without LOCAL_* (Kubeflow's PyTorchJob: one process per pod) each process is a node of its own.
        local_size = _int(env, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in env else 1
        return World(_int(env, "RANK"), _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0, size, local_size,
                     "torchrun" if "TORCHELASTIC_RUN_ID" in env else "RANK/WORLD_SIZE",
                     env["MASTER_ADDR"], _int(env, "MASTER_PORT"))
    if "SLURM_NTASKS" in env and "SLURM_PROCID" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        size = _int(env, "SLURM_NTASKS")
        if size <= 1:
            return None
        from lightning.fabric.plugins.environments import SLURMEnvironment

        slurm = SLURMEnvironment()  # reads os.environ: the main node from SLURM_NODELIST, a port from the job id
        per_node = env.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]
        return World(_int(env, "SLURM_PROCID"), _int(env, "SLURM_LOCALID"), size,
                     int(per_node) if per_node.isdigit() else size // max(1, _int(env, "SLURM_NNODES")), "slurm",
                     slurm.main_address, slurm.main_port)
    return None


class _Session:
    world: World | None = None
    control = None  # the gloo group the fits travel on
    listening = None  # rank 0's store socket


_session = _Session()


def current() -> World | None:
    """The launched world this process has joined (`join`), or None."""
    return _session.world


def join(world: World, device: str) -> None:
    """Join the launcher's process group (NCCL on GPUs, gloo on CPU) and open the gloo side group."""
    import torch
    import torch.distributed as dist

    if device == "cuda":
        torch.cuda.set_device(world.local_rank)
    # What Lightning's cluster environments read to place this process (torchrun sets them all).
    os.environ.setdefault("MASTER_ADDR", world.main_address)
    os.environ.setdefault("MASTER_PORT", str(world.main_port))
    os.environ.setdefault("LOCAL_RANK", str(world.local_rank))
    os.environ.setdefault("NODE_RANK", str(world.rank // world.local_size))
    if not dist.is_initialized():
        backend = "nccl" if device == "cuda" else "gloo"
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":  # torchrun's agent serves the store
            dist.init_process_group(backend, rank=world.rank, world_size=world.size)
        else:
            dist.init_process_group(backend, store=_store(world), rank=world.rank, world_size=world.size)
    _session.control = dist.new_group(backend="gloo", timeout=_WAIT)
    _session.world = world


def _store(world: World):
    """The rendezvous store, served by rank 0 on the main address only: torch's TCPStore listens on every
    interface of the machine when it binds the port itself, so it is handed a socket bound here."""
    import socket

    import torch.distributed as dist

    if world.rank != 0:
        return dist.TCPStore(world.main_address, world.main_port, world.size, is_master=False)
    try:
        listening = socket.create_server((world.main_address, world.main_port))
    except OSError as err:
        raise UsageError(f"launcher: cannot listen on MASTER_ADDR:MASTER_PORT {world.main_address}:{world.main_port} "
                         f"({err.strerror or err})") from None
    _session.listening = listening  # open for the life of the store
    return dist.TCPStore(world.main_address, world.main_port, world.size, is_master=True,
                         master_listen_fd=listening.fileno())


def _broadcast(message: object) -> object:
    import torch.distributed as dist

    box = [message]
    dist.broadcast_object_list(box, src=0, group=_session.control)
    return box[0]


def _random_states() -> tuple:
    import random

    import numpy as np
    import torch

    return random.getstate(), np.random.get_state(), torch.get_rng_state()


def _set_random_states(states: tuple) -> None:
    import random

    import numpy as np
    import torch

    random.setstate(states[0])
    np.random.set_state(states[1])
    torch.set_rng_state(states[2])


def fit_everywhere(trainer, module, datamodule) -> None:
    """Rank 0: send this fit to every rank, then train rank 0's shard of it. The random generators'
    states travel with it, so every rank starts from rank 0's, as a forked rank does (the same
    augmentation and dropout streams as `ddp_fork` on one machine: the same numbers)."""
    buffer = io.BytesIO()
    pickle.dump((trainer, module, datamodule, _random_states()), buffer)
    try:
        _broadcast(buffer.getvalue())
        trainer.fit(module, datamodule=datamodule)
    except RuntimeError as err:
        if "closed by peer" not in str(err) and "Connection reset" not in str(err):
            raise
        first = first_line(err)
        raise InternalError(f"ddp: a rank of the {_session.world.size} that {_session.world.launcher} started stopped "
                            f"answering (see its node's log); this run stopped here ({first[:200]})") from err


def follow() -> None:
    """A rank other than 0: train every fit rank 0 sends, until it says stop."""
    from medlite.train.quiet import quiet_lightning_info, training_warnings

    quiet_lightning_info()
    while True:
        message = _broadcast(None)
        if message == _STOP:
            return
        trainer, module, datamodule, states = pickle.loads(message)
        _set_random_states(states)
        with training_warnings():  # the ones rank 0 leaves out too
            trainer.fit(module, datamodule=datamodule)


def release() -> None:
    """Rank 0, at the end (done or failed): the followers stop waiting."""
    if _session.world is not None and _session.world.rank == 0:
        _broadcast(_STOP)


def on_every_rank(device: str, lead: Callable[[World | None], T]) -> T | None:
    """`lead(world)` as the run of rank 0 (world None: no launcher, an ordinary run); on the other ranks,
    train what rank 0 sends until it is done, and return None. `device`: the resolved device."""
    world = launched_world()
    if world is None:
        return lead(None)
    if world.rank != 0:
        join(world, device)
        try:
            follow()
        finally:
            _session.world = None
        return None
    with leading(world, device):
        return lead(world)


@contextmanager
def leading(world: World, device: str) -> Iterator[None]:
    """Rank 0's side of a launched run: joined for the run, the followers released at its end."""
    join(world, device)
    try:
        yield
    finally:
        # A rank that died broke the group: its error (or the run's own) is the one to report, not the
        # failed goodbye to it.
        with suppress(RuntimeError):
            release()
        _session.world = None


def check_recipe(world: World, devices: int, num_nodes: int, strategy: str) -> None:
    """A recipe that sets the world itself must agree with the launcher's."""
    if strategy == "ddp_spawn":
        raise UsageError(f"trainer.strategy: 'ddp_spawn' spawns its own ranks, but this run was started by "
                         f"{world.launcher} with {world.size} ranks; use trainer.strategy: ddp (or auto)")
    asked = devices * num_nodes
    if asked > 1 and (devices, num_nodes) != (world.local_size, world.nodes):
        raise UsageError(f"trainer.devices: {devices} x trainer.num_nodes: {num_nodes} does not match the launcher "
                         f"({world.launcher}: {world.local_size} per node x {world.nodes} nodes); set them so, "
                         f"or leave them at 1 to take the launcher's")
