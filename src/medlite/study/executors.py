"""Study executors: how a list of trial jobs gets run. A registry by name, like every medlite seam.

An executor takes JSON-able jobs (see `study.worker.run_trial`) and a `poll` callback the study uses
for progress; it returns one outcome per job, in order. Adding one (Slurm, Dask) means registering a
class here; the trials stay ordinary run directories.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Protocol

from medlite.errors import UsageError

Poll = Callable[[dict[int, dict]], None]  # called about twice a second with {job index: outcome so far}


class Executor(Protocol):
    name: str

    def run(self, jobs: list[dict], poll: Poll) -> list[dict]: ...


EXECUTORS: dict[str, type] = {}


def register(name: str):
    def wrap(cls):
        cls.name = name
        EXECUTORS[name] = cls
        return cls

    return wrap


def create_executor(name: str, **options) -> Executor:
    if name not in EXECUTORS:
        raise UsageError(f"--executor: unknown executor {name!r}; choose from {', '.join(sorted(EXECUTORS))}")
    return EXECUTORS[name](**options)


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@register("local")
class LocalExecutor:
    """A pool of worker processes (spawned: no forked torch state) sized to the cores; each trial
    gets its share of the cores as torch threads."""

    def __init__(self, workers: int | None = None, **_: object) -> None:
        self.workers = workers

    def run(self, jobs: list[dict], poll: Poll) -> list[dict]:
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        from medlite.study.worker import run_trial

        if not jobs:
            return []
        workers = max(1, min(self.workers or cores(), len(jobs)))
        threads = max(1, cores() // workers)
        for job in jobs:
            job.setdefault("threads", threads)
        outcomes: dict[int, dict] = {}
        if workers == 1:  # no pool: same process (simplest to debug; still one trial at a time)
            for i, job in enumerate(jobs):
                poll(outcomes)
                outcomes[i] = run_trial(job)
            poll(outcomes)
            return [outcomes[i] for i in range(len(jobs))]
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(run_trial, job): i for i, job in enumerate(jobs)}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in done:
                    try:
                        outcomes[futures[future]] = future.result()
                    except Exception as err:  # a worker died (killed, out of memory)
                        outcomes[futures[future]] = {"dir": jobs[futures[future]]["dir"], "status": "failed",
                                                     "error": f"worker process died: {err}"}
                poll(outcomes)
        return [outcomes[i] for i in range(len(jobs))]


@register("ray")
class RayExecutor:
    """Trials as Ray tasks, each asking for `cpus_per_trial` CPUs and `gpus_per_trial` GPUs.

    Every node needs medlite installed, the data root at the same path and the study directory
    on a shared file system (the trial writes its run directory and the stage store there).
    """

    def __init__(self, address: str | None = None, cpus_per_trial: float = 1, gpus_per_trial: float = 0, **_: object) -> None:
        self.address = address
        self.cpus = cpus_per_trial
        self.gpus = gpus_per_trial

    def run(self, jobs: list[dict], poll: Poll) -> list[dict]:
        try:
            import ray
        except ImportError:
            raise UsageError("--executor ray needs Ray: pip install 'medlite[ray]'") from None
        from medlite.study.worker import run_trial

        if not jobs:
            return []
        started_here = not ray.is_initialized()
        if started_here:
            try:
                ray.init(address=self.address, log_to_driver=False, include_dashboard=False)
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise UsageError(f"--address {self.address}: cannot connect to a Ray cluster ({err})") from None
        try:
            task = ray.remote(run_trial).options(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=0)
            for job in jobs:
                job.setdefault("threads", max(1, int(self.cpus)))
            refs = {task.remote(job): i for i, job in enumerate(jobs)}
            outcomes: dict[int, dict] = {}
            pending = list(refs)
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=0.5)
                for ref in done:
                    try:
                        outcomes[refs[ref]] = ray.get(ref)
                    except Exception as err:  # noqa: BLE001 - the task's node died
                        outcomes[refs[ref]] = {"dir": jobs[refs[ref]]["dir"], "status": "failed", "error": f"ray: {err}"}
                poll(outcomes)
            return [outcomes[i] for i in range(len(jobs))]
        finally:
            if started_here:
                ray.shutdown()
