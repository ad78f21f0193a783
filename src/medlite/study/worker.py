"""One trial in a worker process (a local pool worker or a Ray task): an ordinary `run_pipeline`
into the trial's run directory, sharing the study's stage store, logging to `logs/trial.log`.

Importable without Ray; every argument is JSON-able, so the same job runs anywhere the data root
and the study directory are reachable.
"""

from __future__ import annotations

import json
import os
import platform
import time
import traceback
from pathlib import Path

from medlite.runstate import fingerprint, write_json

DONE = "trial.json"


def job_fingerprint(recipe_json: dict) -> str:
    return fingerprint("trial", recipe_json)


def is_done(trial_dir: Path, recipe_json: dict) -> bool:
    """Finished before with the same recipe (the marker is written after results.json)."""
    try:
        marker = json.loads((trial_dir / DONE).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return marker.get("fingerprint") == job_fingerprint(recipe_json) and (trial_dir / "results.json").is_file()


def _ray_node() -> str | None:
    """The Ray node id when this trial runs as a Ray task (Ray is never imported here otherwise)."""
    import sys

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return ray.get_runtime_context().get_node_id()


TRIAL_LOG = "trial.log"
ATTEMPTS = "attempts.jsonl"  # one line per start of a trial by an executor that retries (Ray)


def _record_attempt(out: Path, job: dict) -> None:
    if not job.get("attempt_tag"):
        return
    out.mkdir(parents=True, exist_ok=True)
    line = {"tag": job["attempt_tag"], "node": _ray_node(), "host": platform.node(), "pid": os.getpid(),
            "time": round(time.time(), 3)}
    with open(out / ATTEMPTS, "a") as f:  # one short append: whole lines even from several nodes over NFS
        f.write(json.dumps(line) + "\n")


def attempts(job: dict) -> list[dict]:
    """The starts of `job` in this invocation (its tag), oldest first: more than one means retried."""
    try:
        lines = (Path(job["dir"]) / ATTEMPTS).read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line cut by a node's death
        if entry.get("tag") == job.get("attempt_tag"):
            found.append({k: entry.get(k) for k in ("node", "pid", "time")})
    return found


def run_trial(job: dict) -> dict:
    """Run one trial; never raises (the study records a failed trial and goes on with the others)."""
    threads = int(job.get("threads") or 1)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(threads)
    from medlite.pipeline import run_pipeline
    from medlite.recipe import Recipe
    from medlite.runstate import Before, discard_skeleton
    from medlite.stagestore import open_store

    out = Path(job["dir"])
    if is_done(out, job["recipe"]):
        _record_attempt(out, job)
        return {"dir": str(out), "status": "done", "seconds": 0.0}
    before = Before.of(out)  # what a failure may take away again: only what this trial makes
    _record_attempt(out, job)
    # Beside medlite's own names (logs/ is the run directory's): the trial folder stays one medlite may adopt.
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / TRIAL_LOG, "a", buffering=1)

    def say(message: str) -> None:
        log.write(f"{time.strftime('%H:%M:%S')} {message}\n")

    say(f"trial start on {platform.node()} pid {os.getpid()} ({threads} threads)")
    store = open_store(job["store"])  # a path, or an fsspec URL
    start = time.perf_counter()
    try:
        recipe = Recipe.model_validate(job["recipe"])
        results = run_pipeline(recipe, out, Path(job["data_root"]), say=say, progress=False, store=store)
    except BaseException as err:  # noqa: BLE001 - reported per trial, the study goes on
        say("trial failed:\n" + traceback.format_exc())
        store.release_all()
        log.close()
        # Failed (or interrupted) before computing anything: no skeleton of empty folders, marker and lock
        # in the study directory; the log of why it failed stays (study.json's `failed` points to it).
        discard_skeleton(before, keep=frozenset({TRIAL_LOG, ATTEMPTS}))
        return {"dir": str(out), "status": "failed", "error": f"{type(err).__name__}: {err}",
                "seconds": round(time.perf_counter() - start, 2)}
    finally:
        store.release_all()
        log.close()
    seconds = round(time.perf_counter() - start, 2)
    write_json(out / DONE, {
        "fingerprint": job_fingerprint(job["recipe"]), "seconds": seconds, "host": platform.node(), "ray_node": _ray_node(),
        "pid": os.getpid(), "threads": threads, "from_store": store.hits, "published": store.published,
        "cached_stages": results.get("cached_stages", []),
    })
    return {"dir": str(out), "status": "ok", "seconds": seconds}
