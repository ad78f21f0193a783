"""Study executors: how a list of trial jobs gets run. A registry by name, like every medlite seam.

An executor takes JSON-able jobs (see `study.worker.run_trial`) and a `poll` callback the study uses
for progress; it returns one outcome per job, in order. Adding one (Slurm, Dask) means registering a
class here; the trials stay ordinary run directories.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Protocol

from medlite.errors import UsageError, first_line

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


RAY_CONNECT_TIMEOUT_S = 5.0  # a head that does not accept a TCP connection in this time is not there


def ray_address(address: str | None) -> tuple[str | None, str]:
    """The cluster to join and where that came from: `--ray-address`/`--address`, else `$RAY_ADDRESS`,
    else none (Ray then starts a one-machine cluster inside this study)."""
    if address:
        return address, "--ray-address"
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
    return None, "local"


def check_reachable(address: str, source: str, timeout: float = RAY_CONNECT_TIMEOUT_S) -> str | None:
    """Fail fast on a head that does not answer (Ray itself retries for minutes); returns the host
    of a HOST:PORT address (None for 'auto'), so the driver registers on that interface."""
    import socket

    if address == "auto":
        return None
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"{source} {address!r}: expected HOST:PORT (e.g. 127.0.0.1:6379), ray://HOST:PORT or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as err:
        reason = "no answer" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise UsageError(f"{source} {address}: no Ray cluster answers there ({reason} within {timeout:g} s); "
                         f"start one with `ray start --head` (README: Studies on a Ray cluster)") from None
    return host.strip("[]")


PROBE = ".medlite-probe"


def probe_storage(token_file: str, token: str, paths: dict[str, str]) -> dict:
    """Runs on one node: can it see the driver's study storage (the token the driver just wrote,
    not a same-named local folder), the data root, and write where the trials write?"""
    import platform
    import uuid
    from pathlib import Path

    from medlite.stagestore import is_url

    problems = []
    try:
        seen = Path(token_file).read_text()
    except OSError as err:
        seen = f"unreadable ({err.strerror or err})"
    if seen != token:
        problems.append(f"the study directory {paths['study']} is not the driver's (token {seen[:40]!r})")
    if not Path(paths["data_root"]).is_dir():
        problems.append(f"the data root {paths['data_root']} does not exist")
    if is_url(paths["store"]):  # an fsspec URL: this node needs fsspec (and s3fs, ...) and access
        try:
            import fsspec

            fs, root = fsspec.core.url_to_fs(paths["store"])
            test = f"{root}/{PROBE}-{uuid.uuid4().hex}"
            with fs.open(test, "w") as f:
                f.write(token)
            fs.rm(test)
        except Exception as err:  # noqa: BLE001 - ImportError, credentials, network: all "cannot reach"
            problems.append(f"cannot write the stage store {paths['store']} ({type(err).__name__}: {err})".splitlines()[0])
    for key in ("trials",) if is_url(paths["store"]) else ("store", "trials"):
        folder = Path(paths[key])
        try:
            folder.mkdir(parents=True, exist_ok=True)
            test = folder / f"{PROBE}-{uuid.uuid4().hex}"
            test.write_text("")
            test.unlink()
        except OSError as err:
            problems.append(f"cannot write {folder} ({err.strerror or err})")
    return {"host": platform.node(), "problems": problems}


def storage_error(reports: dict[str, dict]) -> UsageError | None:
    """One line naming the first node that cannot reach the shared storage (None: every node can)."""
    bad = {node: r for node, r in reports.items() if r["problems"]}
    if not bad:
        return None
    node, report = next(iter(sorted(bad.items())))
    more = f" (and {len(bad) - 1} more node(s))" if len(bad) > 1 else ""
    return UsageError(f"--executor ray: node {report['host']} ({node[:12]}){more}: {report['problems'][0]}; every node "
                      "needs the study directory and the data root on storage all nodes share, at the same path")


@register("ray")
class RayExecutor:
    """Trials as Ray tasks, each asking for `cpus_per_trial` CPUs and `gpus_per_trial` GPUs.

    Every node needs medlite installed, the data root at the same path and the study directory
    on a shared file system (the trial writes its run directory and the stage store there):
    checked on every node before any trial starts. A trial whose worker or node dies is
    retried up to `retries` times on a live node (Ray's `max_retries`; trial errors are not
    retried: the trial reports them itself); its run directory resumes where the last attempt
    stopped. `info` (after `run`) records the cluster and each retried trial's attempts.
    """

    def __init__(self, address: str | None = None, cpus_per_trial: float = 1, gpus_per_trial: float = 0,
                 retries: int = 3, **_: object) -> None:
        self.address, self.source = ray_address(address)
        self.cpus = cpus_per_trial
        self.gpus = gpus_per_trial
        self.retries = retries
        self.info: dict = {}
        if self.address:  # before the study directory is touched
            self.host = check_reachable(self.address, self.source)

    def _connect(self, ray) -> None:
        options: dict = {"log_to_driver": False, "include_dashboard": False}
        if self.address and not self.address.startswith("ray://") and getattr(self, "host", None) in ("127.0.0.1", "localhost", "::1"):
            options["_node_ip_address"] = "127.0.0.1"  # a loopback cluster: the driver registers there too
        try:
            ray.init(address=self.address, **options)
        except (ConnectionError, RuntimeError, ValueError) as err:
            first = first_line(err)
            raise UsageError(f"{self.source} {self.address}: cannot join the Ray cluster ({first})") from None

    def _check_storage(self, ray, jobs: list[dict]) -> list[str]:
        import uuid
        from pathlib import Path

        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        study = Path(jobs[0]["dir"]).parent.parent  # <study>/trials/<trial>
        paths = {"study": str(study), "store": jobs[0]["store"], "trials": str(Path(jobs[0]["dir"]).parent),
                 "data_root": jobs[0]["data_root"]}
        token = uuid.uuid4().hex
        token_file = study / f"{PROBE}-{token}"
        token_file.write_text(token)
        try:
            nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
            probe = ray.remote(probe_storage)
            refs = {node: probe.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
                    .remote(str(token_file), token, paths) for node in nodes}
            reports = dict(zip(refs, ray.get(list(refs.values()), timeout=120)))
        finally:
            token_file.unlink(missing_ok=True)
        error = storage_error(reports)
        if error is not None:
            raise error
        return nodes

    def run(self, jobs: list[dict], poll: Poll) -> list[dict]:
        try:
            import ray
        except ImportError:
            raise UsageError("--executor ray needs Ray: pip install 'medlite[ray]'") from None
        from medlite.study.worker import attempts, run_trial

        if not jobs:
            return []
        started_here = not ray.is_initialized()
        if started_here:
            self._connect(ray)
        try:
            nodes = self._check_storage(ray, jobs)
            self.info = {"address": self.address or "local", "address_from": self.source, "nodes": len(nodes),
                         "cpus_per_trial": self.cpus, "gpus_per_trial": self.gpus, "max_retries": self.retries}
            # Node or worker death is retried; a trial's own error is an outcome, never an exception.
            task = ray.remote(run_trial).options(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=self.retries,
                                                 retry_exceptions=False)
            tag = os.urandom(8).hex()  # this invocation's attempts, not an earlier one's
            for job in jobs:
                job.setdefault("threads", max(1, int(self.cpus)))
                job["attempt_tag"] = tag
            refs = {task.remote(job): i for i, job in enumerate(jobs)}
            outcomes: dict[int, dict] = {}
            pending = list(refs)
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=0.5)
                for ref in done:
                    i = refs[ref]
                    try:
                        outcomes[i] = ray.get(ref)
                    except Exception as err:  # noqa: BLE001 - every attempt's node or worker died
                        first = first_line(err)
                        outcomes[i] = {"dir": jobs[i]["dir"], "status": "failed",
                                       "error": f"ray: {first} (after {self.retries} retries)"}
                    outcomes[i]["attempts"] = attempts(jobs[i])
                poll(outcomes)
            self.info["retried"] = [{"dir": jobs[i]["dir"], "attempts": o["attempts"]}
                                    for i, o in sorted(outcomes.items()) if len(o["attempts"]) > 1]
            return [outcomes[i] for i in range(len(jobs))]
        finally:
            if started_here:
                ray.shutdown()
