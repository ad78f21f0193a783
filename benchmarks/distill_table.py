"""Every distillation method x seeds x datasets through the medlite pipeline, as one markdown table.

    python benchmarks/distill_table.py --data-root DIR --out OUT [--workers N] [--seeds 0 1 2]
           [--datasets breastmnist pneumoniamnist] [--methods kd dkd ...] [--quick]

For each dataset and seed, the teachers are trained once (phase 1, `OUT/teachers/`), then every method
is an ordinary pipeline run (`OUT/runs/<dataset>/seed<k>/<method>/`) whose teacher(s) start from those
weights with 0 epochs, so all methods of a seed distil from the very same teacher. Every number in the
table is read back from the runs' results.json: test AUC measured on the exported ONNX files (mean ±
std over seeds), the best-epoch validation AUC (choose by this one), and the student's training epoch
time relative to the scratch student of the same dataset and seed (runs in parallel disturb each
other's timings: use benchmarks/distill_epoch_cost.py for the cost claim). Finished runs are reused
when the script is run again. `--quick`: tiny models, 64 images, 1-2 epochs, one seed (a smoke test).
`--workers N`: runs at once (each with cores/N threads).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

# name -> (what changes in the recipe, which rows it reports). "teacher" is a recipe teacher section.
FULL = {
    "teacher": {"arch": "small_pooled_resnet18", "epochs": 20, "lr": 0.002},
    "student": {"arch": "medlite_dsconv", "epochs": 30, "lr": 0.003},
    # Three different architectures for the multi-teacher rows.
    "ensemble": [{"arch": "small_pooled_resnet18", "epochs": 20, "lr": 0.002},
                 {"arch": "medlite_dsconv_wide", "epochs": 30, "lr": 0.003},
                 {"arch": "small_pooled_resnet34", "epochs": 20, "lr": 0.002}],
    "assistant": {"arch": "medlite_dsconv_wide", "epochs": 30, "lr": 0.003},
    # A candidate default teacher: a wider version of the student, trained longer.
    "teacher_alt": {"arch": "medlite_dsconv_wide", "epochs": 40, "lr": 0.003},
    "data": {},
}
QUICK = {
    "teacher": {"arch": "medlite_cnn_tiny", "epochs": 2},
    "student": {"arch": "medlite_dsconv_tiny", "epochs": 2},
    "ensemble": [{"arch": "medlite_cnn_tiny", "epochs": 2}, {"arch": "medlite_dsconv_tiny", "epochs": 2}],
    "assistant": {"arch": "medlite_cnn_tiny", "epochs": 2},
    "teacher_alt": {"arch": "medlite_cnn", "epochs": 2},
    "data": {"limit": 64},
}
METHODS = {
    "kd": {"distill": {"method": "kd", "temperature": 4.0, "alpha": 0.7, "scratch_baseline": True}},
    "kd_ls": {"distill": {"method": "kd", "temperature": 4.0, "alpha": 0.7, "standardize": True}},
    "dkd": {"distill": {"method": "dkd", "alpha": 1.0, "beta": 8.0, "warmup_epochs": 5}},
    "dist": {"distill": {"method": "dist"}},
    "fitnet": {"distill": {"method": "fitnet", "scratch_baseline": True}},
    "at": {"distill": {"method": "at"}},
    "multistage": {"distill": {"method": "multistage"}},
    "multiteacher": {"distill": {"method": "kd", "temperature": 4.0, "alpha": 0.7}, "teachers": "ensemble"},
    "multiteacher_dkd": {"distill": {"method": "dkd"}, "teachers": "ensemble"},
    "chain": {"distill": {"method": "kd", "temperature": 4.0, "alpha": 0.7}, "assistants": "assistant"},
    "kd_alt_teacher": {"distill": {"method": "kd", "temperature": 4.0, "alpha": 0.7}, "teacher": "teacher_alt"},
}
DATASETS = ("breastmnist", "pneumoniamnist")
# Where the models train: cpu, or cuda on a GPU machine (`MEDLITE_TABLE_DEVICE=cuda`; the runs share the GPU).
DEVICE = os.environ.get("MEDLITE_TABLE_DEVICE", "cpu")


# -- workers (run in fresh processes) -----------------------------------------------------


def _threads(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))


def train_teacher(data_root: str, flag: str, seed: int, cfg: dict, data: dict, path: str, threads: int) -> str:
    """One teacher, trained exactly as the pipeline trains it (seeded init, fit, best validation epoch)."""
    _threads(threads)
    import torch

    from medlite.data import load_dataset
    from medlite.models import create
    from medlite.models.weights import save_state
    from medlite.recipe import Recipe
    from medlite.train import fit

    target = Path(path)
    if target.is_file():
        return path
    recipe = Recipe.model_validate({"seed": seed, "data": {"flag": flag, "balance": "class_weights", **data}, "teacher": cfg})
    ds = load_dataset(recipe.data, Path(data_root), seed)
    torch.manual_seed(seed)
    model = create(cfg["arch"], ds.num_classes, ds.channels, ds.image_size)
    result = fit(model, ds, recipe.teacher, data_cfg=recipe.data, seed=seed, log_dir=target.parent / (target.stem + "_logs"),
                 device=DEVICE)
    target.with_suffix(".json").write_text(json.dumps(result.to_dict()))  # its validation AUC, for the table
    save_state(model, target)
    return path


def run_method(data_root: str, tree: dict, out: str, threads: int) -> str:
    _threads(threads)
    from medlite.pipeline import run_pipeline
    from medlite.recipe import Recipe

    done = Path(out) / "results.json"
    run_pipeline(Recipe.model_validate(tree), Path(out), Path(data_root), say=lambda _: None, progress=False)
    return str(done)


# -- planning -------------------------------------------------------------------------------


def teacher_path(out: Path, flag: str, seed: int, cfg: dict) -> Path:
    return out / "teachers" / flag / f"seed{seed}" / f"{cfg['arch']}_{cfg['epochs']}ep.safetensors"


def recipe_tree(preset: dict, method: str, flag: str, seed: int, out: Path) -> dict:
    spec = METHODS[method]
    frozen = lambda cfg: {**cfg, "epochs": 0, "pretrained": str(teacher_path(out, flag, seed, cfg))}  # noqa: E731
    tree = {
        "name": f"{flag}_{method}_seed{seed}", "seed": seed, "device": DEVICE,
        "data": {"flag": flag, "augment": "light", "balance": "class_weights", **preset["data"]},
        "student": preset["student"],
        "distill": {"scratch_baseline": False, **spec["distill"]},
        "evaluate": {"bootstrap": 0},
        "compress": {"methods": []},
        "bench": {"enabled": False},
        "explain": {"enabled": False},
    }
    if spec.get("teachers") == "ensemble":
        tree["teachers"] = [frozen(cfg) for cfg in preset["ensemble"]]
    else:
        tree["teacher"] = frozen(preset[spec.get("teacher", "teacher")])
    if spec.get("assistants") == "assistant":
        tree["assistants"] = [preset["assistant"]]
    return tree


def run_all(args) -> list[Path]:
    preset = QUICK if args.quick else FULL
    out = args.out.resolve()
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    needs_ensemble = any(METHODS[m].get("teachers") == "ensemble" for m in args.methods)
    extra = [preset[METHODS[m]["teacher"]] for m in args.methods if "teacher" in METHODS[m]]
    teacher_jobs = {}
    for flag in args.datasets:
        for seed in args.seeds:
            for cfg in [preset["teacher"]] + (preset["ensemble"] if needs_ensemble else []) + extra:
                teacher_jobs[teacher_path(out, flag, seed, cfg)] = (str(args.data_root), flag, seed, cfg, preset["data"])
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        futures = [pool.submit(train_teacher, *job, str(path), threads) for path, job in teacher_jobs.items() if not path.is_file()]
        for n, future in enumerate(as_completed(futures), 1):
            print(f"[{time.perf_counter() - start:6.0f}s] teacher {n}/{len(futures)}: {future.result()}", flush=True)
        runs, futures = [], []
        for flag in args.datasets:
            for seed in args.seeds:
                for method in args.methods:
                    run_dir = out / "runs" / flag / f"seed{seed}" / method
                    runs.append(run_dir)
                    futures.append(pool.submit(run_method, str(args.data_root), recipe_tree(preset, method, flag, seed, out), str(run_dir), threads))
        for n, future in enumerate(as_completed(futures), 1):
            print(f"[{time.perf_counter() - start:6.0f}s] run {n}/{len(futures)}: {future.result()}", flush=True)
    return runs


# -- the table --------------------------------------------------------------------------------


def _variants(run_dir: Path) -> dict[str, dict]:
    """The run's variants by name; each trained one also carries the weights file it started from."""
    import yaml

    results = json.loads((run_dir / "results.json").read_text())
    resolved = next(p for p in (run_dir / "recipe.resolved.yaml", run_dir / "recipe.yaml") if p.is_file())
    recipe = yaml.safe_load(resolved.read_text())
    sections = {"teacher": recipe.get("teacher")}
    sections.update({f"teacher_{i}": t for i, t in enumerate(recipe.get("teachers") or [])})
    variants = {v["name"]: v for v in results["variants"]}
    for name, section in sections.items():
        if name in variants and section:
            variants[name]["_pretrained"] = section.get("pretrained")
    return variants


def _fmt(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _val_auc(variant: dict) -> float | None:
    """Best-epoch validation AUC; a frozen teacher (0 epochs here) has it in its phase-1 record."""
    val = variant.get("train", {}).get("best_val_auc")
    if val is None and variant.get("train", {}).get("epochs") == 0:
        record = Path(str(variant.get("_pretrained", ""))).with_suffix(".json")
        if record.is_file():
            val = json.loads(record.read_text()).get("best_val_auc")
    return val


def collect(args) -> dict:
    """rows[label][flag] = {"test": [...], "val": [...], "ratio": [...]} over seeds."""
    rows: dict[str, dict[str, dict[str, list]]] = {}

    def add(label, flag, variant, ratio=None):
        cell = rows.setdefault(label, {}).setdefault(flag, {"test": [], "val": [], "ratio": []})
        cell["test"].append(variant["metrics"].get("auc"))
        cell["val"].append(_val_auc(variant))
        cell["ratio"].append(ratio)

    for flag in args.datasets:
        for seed in args.seeds:
            base = args.out / "runs" / flag / f"seed{seed}"
            scratch_epoch = None
            if (base / "kd" / "results.json").is_file():
                scratch_epoch = _variants(base / "kd").get("student_scratch", {}).get("train", {}).get("mean_epoch_s")
            for method in args.methods:
                run_dir = base / method
                if not (run_dir / "results.json").is_file():
                    continue
                v = _variants(run_dir)
                if method == "kd":
                    add("teacher (" + v["teacher"]["arch"] + ")", flag, v["teacher"])
                    add("scratch student (same fixed views as KD)", flag, v["student_scratch"], 1.0)
                if method == "fitnet" and "student_scratch" in v:
                    add("scratch student (live augmentation)", flag, v["student_scratch"],
                        v["student_scratch"]["train"]["mean_epoch_s"] / scratch_epoch if scratch_epoch else None)
                if method == "multiteacher":
                    for name, variant in v.items():
                        if name.startswith("teacher_") and name != "teacher_ensemble":
                            add(f"ensemble member ({variant['arch']})", flag, variant)
                    add("teachers' ensemble (one ONNX file)", flag, v["teacher_ensemble"])
                if method == "kd_alt_teacher":
                    add("teacher (" + v["teacher"]["arch"] + ", alternative)", flag, v["teacher"])
                if method == "chain":
                    add(f"assistant ({v['assistant_1']['arch']}, kd)", flag, v["assistant_1"])
                kd = v["student_kd"]
                ratio = kd["train"]["mean_epoch_s"] / scratch_epoch if scratch_epoch else None
                add(f"student: {method}", flag, kd, ratio)
    return rows


def table(args, rows: dict) -> str:
    head = "| model | " + " | ".join(f"{f} test AUC | {f} val AUC | {f} Δ test vs scratch" for f in args.datasets) + " | epoch x scratch |"
    lines = [head, "|" + "---|" * (2 + 3 * len(args.datasets))]
    scratch = {f: rows.get("scratch student (same fixed views as KD)", {}).get(f, {}).get("test", []) for f in args.datasets}
    for label, cells in rows.items():
        parts, ratios = [], []
        for flag in args.datasets:
            cell = cells.get(flag, {"test": [], "val": [], "ratio": []})
            tests = [t for t in cell["test"] if t is not None]
            delta = "-"
            if label.startswith("student") and tests and scratch[flag]:
                delta = f"{statistics.mean(tests) - statistics.mean([s for s in scratch[flag] if s is not None]):+.3f}"
            parts.append(f"{_fmt(cell['test'])} | {_fmt(cell['val'])} | {delta}")
            ratios += [r for r in cell["ratio"] if r is not None]
        ratio = f"{statistics.mean(ratios):.2f}" if ratios else "-"
        lines.append(f"| {label} | " + " | ".join(parts) + f" | {ratio} |")
    best = {}
    for flag in args.datasets:
        students = {k: statistics.mean([x for x in c[flag]["val"] if x is not None]) for k, c in rows.items()
                    if k.startswith("student") and flag in c and any(x is not None for x in c[flag]["val"])}
        if students:
            best[flag] = max(students, key=students.get)
    notes = [f"- best student by mean validation AUC on {f}: **{b}**" for f, b in best.items()]
    return "\n".join(lines + [""] + notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=os.environ.get("MEDLITE_DATA_ROOT"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--datasets", nargs="+", default=None, choices=DATASETS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--quick", action="store_true", help="tiny models and data, one seed: a smoke run")
    parser.add_argument("--table-only", action="store_true", help="only read the finished runs")
    args = parser.parse_args(argv)
    if args.data_root is None:
        parser.error("--data-root (or $MEDLITE_DATA_ROOT) is required")
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    args.datasets = args.datasets or (["breastmnist"] if args.quick else list(DATASETS))
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if not args.table_only:
        run_all(args)
    text = table(args, collect(args))
    header = (f"Student test AUC measured on the exported ONNX files, mean ± std over seeds {args.seeds}"
              f"{' (QUICK smoke run: tiny models, 64 images; not a result)' if args.quick else ''}.\n\n")
    (args.out / "distill_table.md").write_text(header + text + "\n")
    print(header + text)
    print(f"\n{time.perf_counter() - start:.0f}s; table: {args.out / 'distill_table.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
