"""`medlite study STUDY.yaml` and `medlite tune [RECIPE]`: studies of many runs, and tuning on validation."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer

from medlite.cli.common import DebugOpt, check_writable, data_root as resolve_data_root, state


@contextmanager
def _write_faults(out: Path) -> Iterator[None]:
    """A disk or permission fault while writing under `out`: exit 2 naming the path, not "unexpected error"."""
    from medlite.runstate import DISK_ERRNOS, write_error

    try:
        yield
    except OSError as err:
        if err.errno not in DISK_ERRNOS:
            raise
        raise write_error(Path(err.filename) if err.filename else out, err) from None


def study(
    ctx: typer.Context,
    study_file: Annotated[Path, typer.Argument(help="study YAML (recipe, set, grid, list, seeds, folds, baseline, select)")],
    out: Annotated[Optional[Path], typer.Option("--out", help="study directory (default: runs/study-<name>)")] = None,
    data_root: Annotated[Optional[Path], typer.Option("--data-root", help="dataset folder (default: $MEDLITE_DATA_ROOT)")] = None,
    executor: Annotated[str, typer.Option("--executor", help="local (process pool) or ray")] = "local",
    address: Annotated[Optional[str], typer.Option("--ray-address", "--address",
                                                   help="Ray cluster HOST:PORT (--executor ray; default: $RAY_ADDRESS, else a one-machine Ray)")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, help="local worker processes (default: cores)")] = None,
    cpus_per_trial: Annotated[float, typer.Option("--cpus-per-trial", min=0.01, help="Ray: CPUs per trial")] = 1,
    gpus_per_trial: Annotated[float, typer.Option("--gpus-per-trial", min=0, help="Ray: GPUs per trial")] = 0,
    retries: Annotated[int, typer.Option("--retries", min=0, help="Ray: reruns of a trial whose node or worker died")] = 3,
    store: Annotated[Optional[str], typer.Option("--store", help="stage store: a path on storage every node shares, "
                                                 "or an fsspec URL (s3://...; default: STUDY_DIR/store)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="validate and print the trials; train nothing")] = False,
    debug: DebugOpt = False,
) -> None:
    """Run a study: a grid / list of settings x seeds x folds, each trial an ordinary run; statistics and tables."""
    # local: the study runner imports the pipeline (torch) and, for --executor ray, ray.
    from medlite.recipe import check_yaml_file
    from medlite.study.runner import run_study

    check_yaml_file(study_file)  # a key given twice would silently keep the last

    console = state(ctx).console
    if not dry_run:  # before any trial: a study's hours must not end in "cannot write"
        check_writable(out or Path("runs"), folder=True)
    with _write_faults(out or Path("runs")):
        document = run_study(
            study_file, out, data_root.expanduser() if data_root else None, executor=executor, address=address,
            workers=workers, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, retries=retries, store=store, dry_run=dry_run,
            say=console.print, console=console,
        )
    if dry_run:
        return
    # local: rich tables and the study outputs are not for --help.
    from rich.table import Table

    from medlite.study.outputs import table_rows

    rows = table_rows(document)
    if rows:
        table = Table(title=f"study {document['study']}")
        for key in rows[0]:
            table.add_column(key, justify="left" if key in ("setting", "variant") else "right")
        for row in rows:
            table.add_row(*row.values())
        console.print(table)
    out_dir = out or Path("runs") / f"study-{document['study']}"
    console.print(f"study done in {document['wall_seconds']:.1f}s: {out_dir / 'study.md'}, {out_dir / 'study.json'}")
    if document.get("failed"):
        for f in document["failed"]:
            console.print(f"[red]failed[/red] {f['trial']}: {f['error']} (log: {out_dir / f['dir'] / 'logs' / 'trial.log'})")
        raise typer.Exit(1)


def tune(
    ctx: typer.Context,
    recipe: Annotated[Optional[str], typer.Argument(help="recipe YAML path or built-in name (default: breastmnist)")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="tuning directory (default: runs/tune-<recipe>)")] = None,
    data_root: Annotated[Optional[Path], typer.Option("--data-root", help="dataset folder (default: $MEDLITE_DATA_ROOT)")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="fixed recipe override, e.g. teacher.epochs=5")] = None,
    budget: Annotated[float, typer.Option("--time-budget", min=1, help="seconds; no trial starts after it")] = 1800,
    trials: Annotated[Optional[int], typer.Option("--trials", min=1, help="at most this many trials")] = None,
    seed: Annotated[int, typer.Option("--seed", help="sampler seed")] = 0,
    debug: DebugOpt = False,
) -> None:
    """Tune lr, epochs, class balance, augmentation, temperature and alpha on validation (Optuna TPE, time budget)."""
    # local: the recipe schema (pydantic) and the tuner (optuna, the pipeline) are not for --help.
    from medlite.recipe import load_recipe
    from medlite.study.tune import tune as run_tune

    console = state(ctx).console
    name = load_recipe(recipe, set_ or []).name
    out = out or Path("runs") / f"tune-{name}"
    check_writable(out, folder=True)  # before any trial
    with _write_faults(out):
        doc = run_tune(recipe, out, resolve_data_root(data_root), overrides=set_ or [], budget_s=budget, max_trials=trials,
                       seed=seed, say=console.print)
    best = doc["best"]
    console.print(f"tune: {len(doc['trials'])} trials in {doc['seconds']:.0f}s; best trial {best['trial']} "
                  f"(val AUC {best['val_auc']:.4f}): {best['params']}")
    console.print(f"test metrics of the chosen setting only: {doc['best_test_metrics']}; recipe: {out / 'selected.yaml'}")
