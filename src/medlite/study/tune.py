"""`medlite tune RECIPE`: choose the settings that matter most on the validation split, within a time budget.

An Optuna TPE sampler (seeded) proposes the student's learning rate and epochs, class balance,
augmentation and the distillation temperature / alpha; each proposal is an ordinary run directory
(`trials/NNNN`) scored by the validation AUC of its deployed `student_kd` file. The teacher's config
does not change, so it is trained once and reused from the shared stage store. No new trial starts
after the time budget is spent (a running trial finishes). The best setting is written as a ready
recipe (`selected.yaml`); test metrics are reported for it only.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from medlite.errors import UsageError
from medlite.runstate import write_atomic, write_json

SPACE = {
    "student.lr": ("log", 3e-4, 1e-2),
    "student.epochs": ("int", 10, 60, 10),
    "data.balance": ("cat", ["none", "class_weights"]),
    "data.augment": ("cat", ["none", "light", "medium"]),
    "distill.temperature": ("cat", [1.0, 2.0, 4.0, 8.0]),
    "distill.alpha": ("float", 0.1, 0.9),
}


def _suggest(trial, key: str, spec: tuple) -> Any:
    kind = spec[0]
    if kind == "log":
        return trial.suggest_float(key, spec[1], spec[2], log=True)
    if kind == "float":
        return trial.suggest_float(key, spec[1], spec[2])
    if kind == "int":
        return trial.suggest_int(key, spec[1], spec[2], step=spec[3])
    return trial.suggest_categorical(key, spec[1])


def tune(
    recipe: str | None,
    out: Path,
    data_root: Path,
    *,
    overrides: list[str] | None = None,
    budget_s: float = 1800,
    max_trials: int | None = None,
    seed: int = 0,
    space: dict[str, tuple] | None = None,
    say: Callable[[str], None] = print,
) -> dict:
    try:
        import optuna
    except ImportError:
        raise UsageError("medlite tune needs Optuna: pip install 'medlite[tune]'") from None
    from medlite.pipeline import run_pipeline
    from medlite.recipe import dump_recipe, load_recipe
    from medlite.runstate import Before, discard_skeleton
    from medlite.stagestore import StageStore
    from medlite.study.schema import _override

    from medlite.recipe import parse_override

    # A key the user fixed with --set is not searched: the search would override it (issue 18:
    # `--set student.epochs=2` trained 50-epoch students). Dropped from the default space (and
    # said); a space the caller gave that names one is a contradiction, refused.
    pinned = {".".join(parse_override(text)[0]) for text in overrides or []}
    if space is not None:
        clash = sorted(pinned & set(space))
        if clash:
            raise UsageError(f"tune: {clash[0]} is fixed with --set and also in the search space; "
                             "remove it from one of them")
    else:
        space = {k: v for k, v in SPACE.items() if k not in pinned}
        dropped = [k for k in SPACE if k in pinned]
        if dropped:
            say(f"tune: not searching {', '.join(dropped)} (fixed with --set)")
    if not space:
        raise UsageError("tune: every key of the search space is fixed with --set; nothing to tune")
    fixed = list(overrides or []) + ["compress.methods=[]", "bench.enabled=false", "distill.scratch_baseline=false"]
    base = load_recipe(recipe, fixed)  # validate before anything trains
    for key, spec in space.items():  # every key of the space must be a recipe key with valid values
        for value in ([spec[1], spec[2]] if spec[0] != "cat" else spec[1]):
            load_recipe(recipe, fixed + [_override(key, value)])
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        from medlite.runstate import write_error

        raise write_error(out, err) from None
    store = StageStore(out / "store")
    records: list[dict] = []
    start = time.perf_counter()

    def objective(trial) -> float:
        params = {key: _suggest(trial, key, spec) for key, spec in space.items()}
        run = load_recipe(recipe, fixed + [_override(k, v) for k, v in params.items()])
        folder = out / "trials" / f"{trial.number:04d}"
        t0 = time.perf_counter()
        before = Before.of(folder)
        try:
            results = run_pipeline(run, folder, data_root, say=lambda _: None, progress=False, store=store)
        except BaseException:
            store.release_all()
            discard_skeleton(before)  # a trial that failed before computing anything leaves no empty folders
            raise
        finally:
            store.release_all()
        kd = next(v for v in results["variants"] if v["name"] == "student_kd")
        score = (kd.get("val_metrics") or {}).get("auc")
        if score is None:
            raise UsageError("tune: the recipe has no validation split to score on")
        records.append({"trial": trial.number, "params": params, "val_auc": score, "dir": f"trials/{trial.number:04d}",
                        "seconds": round(time.perf_counter() - t0, 1)})
        say(f"tune: trial {trial.number}: val AUC {score:.4f} ({time.perf_counter() - t0:.0f}s) {params}")
        return score

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=max_trials, timeout=budget_s, catch=())
    if not records:
        raise UsageError("tune: no trial finished within the time budget")
    best = max(records, key=lambda r: r["val_auc"])
    chosen = load_recipe(recipe, list(overrides or []) + [_override(k, v) for k, v in best["params"].items()])
    write_atomic(out / "selected.yaml", f"# Chosen by medlite tune on validation AUC (trial {best['trial']})\n"
                 + dump_recipe(chosen))
    results = json.loads((out / best["dir"] / "results.json").read_text())
    kd = next(v for v in results["variants"] if v["name"] == "student_kd")
    document = {
        "recipe": base.name, "budget_s": budget_s, "seconds": round(time.perf_counter() - start, 1),
        "sampler": "optuna TPESampler", "seed": seed, "space": {k: list(v) for k, v in space.items()},
        "trials": records, "best": best,
        "best_test_metrics": {k: kd["metrics"].get(k) for k in ("auc", "accuracy", "balanced_accuracy", "f1_macro", "ece")},
    }
    write_json(out / "tune.json", document)
    return document
