"""`medlite study`: expand the study into trials, run the missing ones, then the statistics and outputs.

Layout of a study directory:
    study.yaml            the study as given (resolved), plus `trials.json` (what each trial is)
    trials/<trial>/       one ordinary run directory per trial (resumable like any run)
    store/                the content-addressed stage store the trials share
    study.json/.csv/.md/.tex, figures/, selected.yaml
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medlite.errors import UsageError
from medlite.runstate import write_atomic, write_json
from medlite.study.schema import HEADLINE, StudySpec, Trial, expand, load_study

STUDY_MARK = ".medlite-study"


def prepare_study(path: Path) -> tuple[StudySpec, list, list[Trial]]:
    spec = load_study(path)
    all_settings, trials = expand(spec, str(path))
    return spec, all_settings, trials


def _check_out(out: Path) -> None:
    """Write only into a directory medlite made for a study (or a new/empty one)."""
    if out.exists() and any(out.iterdir()) and not (out / STUDY_MARK).exists():
        raise UsageError(f"--out {out}: not empty and not a medlite study directory; choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / STUDY_MARK).touch()


def dry_run_lines(spec: StudySpec, trials: list[Trial], out: Path) -> list[str]:
    from medlite.study.worker import is_done

    lines = [f"study {spec.name}: recipe {spec.recipe}, {len(trials)} trials -> {out}"]
    if spec.fixed:
        lines.append("  every trial: " + " ".join(f"{k}={v}" for k, v in spec.fixed.items()))
    for t in trials:
        done = is_done(out / "trials" / t.dirname, t.recipe.model_dump(mode="json"))
        extra = " ".join(f"{k}={v}" for k, v in t.tags.items())
        lines.append(f"  {'[done] ' if done else ''}{t.name:<40} trials/{t.dirname}  {extra}")
    return lines


def run_study(
    study: Path,
    out: Path | None = None,
    data_root: Path | None = None,
    *,
    executor: str = "local",
    address: str | None = None,
    workers: int | None = None,
    cpus_per_trial: float = 1,
    gpus_per_trial: float = 0,
    retries: int = 3,
    store: str | None = None,
    dry_run: bool = False,
    say: Callable[[str], None] = print,
    console=None,
) -> dict[str, Any]:
    """Run (or resume) a study; returns the study document (also written to study.json)."""
    from medlite.study.executors import create_executor
    from medlite.study.worker import is_done

    spec, all_settings, trials = prepare_study(study)
    out = out or Path("runs") / f"study-{spec.name}"
    if dry_run:
        for line in dry_run_lines(spec, trials, out):
            say(line)
        return {"trials": len(trials), "dry_run": True}
    if data_root is None:
        from medlite.data.medmnist import default_data_root

        data_root = default_data_root()
    if address and executor != "ray":
        raise UsageError(f"--ray-address {address}: only with --executor ray (this study runs with {executor})")
    runner = create_executor(executor, workers=workers, address=address, cpus_per_trial=cpus_per_trial,
                             gpus_per_trial=gpus_per_trial, retries=retries)
    from medlite.stagestore import is_url, open_store

    # The stage store: the study's own folder, a path elsewhere (shared storage) or an fsspec URL.
    store = store if store and is_url(store) else str(Path(store).expanduser().resolve() if store else (out / "store").resolve())
    if is_url(store):
        open_store(store)  # fsspec (and the file system's package) missing: refused before any trial
    _check_out(out)
    write_atomic(out / "study.yaml", Path(study).read_text())
    write_json(out / "trials.json", [
        {"setting": t.setting, "seed": t.seed, "fold": t.fold, "dir": f"trials/{t.dirname}", "overrides": t.overrides}
        for t in trials
    ])
    jobs, todo = [], []
    for t in trials:
        recipe_json = t.recipe.model_dump(mode="json")
        if is_done(out / "trials" / t.dirname, recipe_json):
            continue
        jobs.append({"dir": str((out / "trials" / t.dirname).resolve()), "recipe": recipe_json,
                     "data_root": str(Path(data_root).resolve()), "store": store})
        todo.append(t)
    say(f"study {spec.name}: {len(trials)} trials, {len(trials) - len(todo)} already done, "
        f"running {len(todo)} with the {executor} executor")
    start = time.perf_counter()
    from medlite.study.progress import StudyProgress

    with StudyProgress(todo, jobs, len(trials), len(trials) - len(todo), say, console) as progress:
        outcomes = runner.run(jobs, progress.poll)
    wall = time.perf_counter() - start
    failed = [(t, o) for t, o in zip(todo, outcomes) if o["status"] == "failed"]
    document = summarise(spec, all_settings, trials, out, wall_seconds=wall, executor=executor)
    # Each invocation's wall time, kept across reruns: a rerun with nothing left to train should not
    # make the study look free (one killed with kill -9 never wrote its entry, and is missing here).
    invocation = {"executor": executor, "trials_run": len(todo), "wall_seconds": round(wall, 2)}
    info = dict(getattr(runner, "info", None) or {})
    if info:  # the cluster, and each trial a node's death made run again (with its attempts)
        trial_of = {str((out / "trials" / t.dirname).resolve()): t for t in todo}
        info["retried"] = [{"trial": trial_of[r["dir"]].name, "dir": f"trials/{trial_of[r['dir']].dirname}",
                            "attempts": r["attempts"]} for r in info.get("retried", [])]
        invocation[executor] = info
    document["invocations"] = _previous_invocations(out) + [invocation]
    document["failed"] = [{"trial": t.name, "dir": f"trials/{t.dirname}", "error": o.get("error")} for t, o in failed]
    from medlite.study.outputs import write_outputs

    write_outputs(document, out)
    return document


def _latency(variant: dict) -> float | None:
    bench = variant.get("bench") or {}
    for key in ("threads_1", *[k for k in bench if k.startswith("threads_")]):
        entry = bench.get(key)
        if isinstance(entry, dict) and isinstance(entry.get("latency_ms"), dict):
            return entry["latency_ms"].get("p50")
    return None


def collect(trials: list[Trial], out: Path, variants: list[str] | None) -> tuple[list[dict], dict]:
    """One row per (trial, variant) from the trials' results.json (finished trials only)."""
    rows, splits = [], {}
    for t in trials:
        path = out / "trials" / t.dirname / "results.json"
        if not (out / "trials" / t.dirname / "trial.json").is_file() or not path.is_file():
            continue
        results = json.loads(path.read_text())
        dataset = results.get("dataset", {})
        splits[t.dirname] = {"split": dataset.get("split"), "test": (dataset.get("split_fingerprints") or {}).get(t.recipe.evaluate.split)}
        for v in results.get("variants", []):
            if variants and v["name"] not in variants:
                continue
            m = v.get("metrics") or {}
            row = {"setting": t.setting, "seed": t.seed, "fold": t.fold, "variant": v["name"], "trial": t.dirname,
                   "arch": v.get("arch"), "format": v.get("format"), "params": v.get("params"),
                   "file_bytes": v.get("file_bytes"), "latency_ms": _latency(v),
                   **{k: m.get(k) for k in HEADLINE},
                   **{f"val_{k}": (v.get("val_metrics") or {}).get(k) for k in HEADLINE},
                   "predictions": f"trials/{t.dirname}/predictions/{v['name']}.csv", "n_test": m.get("n")}
            rows.append(row)
    return rows, splits


SUMMARY_KEYS = (*HEADLINE, "file_bytes", "latency_ms", *[f"val_{k}" for k in HEADLINE])


def _previous_invocations(out: Path) -> list[dict]:
    try:
        return list(json.loads((out / "study.json").read_text()).get("invocations") or [])
    except (OSError, ValueError, AttributeError):
        return []


def summarise(spec: StudySpec, all_settings, trials: list[Trial], out: Path, *, wall_seconds: float = 0.0,
              executor: str = "local") -> dict[str, Any]:
    from medlite.study.stats import describe, metric_range

    rows, splits = collect(trials, out, spec.variants)
    order = {s.name: i for i, s in enumerate(all_settings)}
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["setting"], row["variant"]), []).append(row)
    summary = []
    for (setting, variant), members in sorted(groups.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
        entry = {"setting": setting, "variant": variant, "n": len(members),
                 "arch": members[0]["arch"], "format": members[0]["format"]}
        for key in SUMMARY_KEYS:
            entry[key] = describe([m[key] for m in members], spec.stats.confidence, bounds=metric_range(key))
        summary.append(entry)
    selection = _select(spec, all_settings, summary, trials)
    comparisons = _compare(spec, rows, splits, out, selection)
    fold_mode = None
    if spec.folds:
        any_split = next(iter(splits.values()), {}).get("split") or ""
        fold_mode = "per-fold test part (flat folder: folds over every image)" if "as test" in any_split else \
            "folds over train+val, test split held out"
    return {
        "study": spec.name,
        "recipe": spec.recipe,
        "spec": spec.model_dump(mode="json", by_alias=True),
        "settings": [{"name": s.name, "overrides": s.overrides, "axis": s.axis} for s in all_settings],
        "trials_total": len(trials),
        "trials_finished": len({r["trial"] for r in rows}) if rows else 0,
        "folds": fold_mode,
        "splits": sorted({s["split"] for s in splits.values() if s.get("split")}),
        "rows": rows,
        "summary": summary,
        "comparisons": comparisons,
        "selection": selection,
        "confidence": spec.stats.confidence,
        "executor": executor,
        "wall_seconds": round(wall_seconds, 2),
    }


def _select(spec: StudySpec, all_settings, summary: list[dict], trials: list[Trial]) -> dict | None:
    """The setting with the best mean validation metric (test metrics are never read here)."""
    if spec.select is None:
        return None
    sel = spec.select
    eligible = {s.name for s in all_settings if any(part in sel.over for part in s.axis.split("+")) or s.axis == "fixed"}
    if sel.among is not None:
        unknown = [name for name in sel.among if name not in {s.name for s in all_settings}]
        if unknown:
            raise UsageError(f"select.among: {unknown[0]!r} is not a setting; settings: " + ", ".join(s.name for s in all_settings))
        eligible &= set(sel.among)
    scores = {}
    for entry in summary:
        if entry["variant"] == sel.variant and entry["setting"] in eligible:
            mean = entry[sel.metric]["mean"]
            if mean is not None:
                scores[entry["setting"]] = mean
    if not scores:
        return {"error": f"select: no {sel.metric} for variant {sel.variant!r} in any eligible setting"}
    pick = (max if sel.direction == "max" else min)(scores, key=scores.get)
    setting = next(s for s in all_settings if s.name == pick)
    return {"setting": pick, "metric": sel.metric, "variant": sel.variant, "direction": sel.direction,
            "value": scores[pick], "scores": scores, "overrides": setting.overrides, "report": sel.report}


def _per_label(pairs: list[dict], names: list[str], spec: StudySpec, seed: int) -> dict[str, dict]:
    """Paired bootstrap of each label's AUC difference, Holm-corrected within the comparison's labels (a
    label undefined on the test images has no test and is left out of the family)."""
    from medlite.study.stats import holm, paired_auc_difference

    out = {}
    for k, name in enumerate(names):
        counts = [int(np.asarray(p["labels"])[:, k].sum()) for p in pairs]
        if all(c == 0 or c == len(p["labels"]) for c, p in zip(counts, pairs)):
            missing = "positive" if not any(counts) else "negative" if all(c == len(p["labels"]) for c, p in zip(counts, pairs)) else "positive or negative"
            out[name] = {"delta_auc": float("nan"), "ci": None, "p": float("nan"),
                         "undefined": f"no {missing} test image of {name}"}
            continue
        r = paired_auc_difference(pairs, resamples=spec.stats.resamples, confidence=spec.stats.confidence,
                                  seed=seed, label=k)
        out[name] = {key: r[key] for key in ("delta_auc", "ci", "p")}
    family = [n for n in names if math.isfinite(out[n]["p"]) and math.isfinite(out[n]["delta_auc"])]
    for name, adjusted in zip(family, holm([out[n]["p"] for n in family]) if family else []):
        out[name].update(p_holm=adjusted, significant=bool(adjusted <= spec.stats.alpha))
    return out


def _compare(spec: StudySpec, rows: list[dict], splits: dict, out: Path, selection: dict | None) -> list[dict]:
    """Paired AUC comparisons against the baseline on the same test images, Holm-corrected."""
    if spec.baseline is None or not rows:
        return []
    from medlite.evaluate.predictions import read_predictions
    from medlite.study.stats import holm, paired_auc_difference, paired_runs_test

    base = spec.baseline
    by_key = {(r["setting"], r["variant"], r["seed"], r["fold"]): r for r in rows}
    targets = list(dict.fromkeys((r["setting"], r["variant"]) for r in rows))  # first-seen order
    if selection and "setting" in selection and selection.get("report", "chosen") == "chosen":
        # the strict protocol: only the chosen setting meets the test split
        targets = [sv for sv in targets if sv[0] == selection["setting"]]
    cache: dict[str, tuple] = {}

    def load(rel: str):
        if rel not in cache:
            cache[rel] = read_predictions(out / rel)
        return cache[rel]

    comparisons: list[dict] = []
    seen: dict[str, dict] = {}
    for setting, variant in targets:
        b_setting, b_variant = base.setting or setting, base.variant or variant
        if (setting, variant) == (b_setting, b_variant):
            continue
        pairs, run_aucs = [], ([], [])
        for (s, v, seed, fold), row in by_key.items():
            if (s, v) != (setting, variant) or (b_setting, b_variant, seed, fold) not in by_key:
                continue
            other = by_key[(b_setting, b_variant, seed, fold)]
            ids_a, labels_a, probs_a, label_names = load(row["predictions"])
            ids_b, labels_b, probs_b, _ = load(other["predictions"])
            if not (len(ids_a) == len(ids_b) and (ids_a == ids_b).all() and (labels_a == labels_b).all()):
                raise UsageError(f"baseline: {row['trial']} and {other['trial']} were tested on different images")
            # Pairs evaluated on the same test images are resampled together (one group per test set).
            test_set = splits.get(row["trial"], {}).get("test") or row["trial"]
            pairs.append({"group": test_set, "labels": labels_a, "a": probs_a, "b": probs_b})
            run_aucs[0].append(row["auc"] if row["auc"] is not None else float("nan"))
            run_aucs[1].append(other["auc"] if other["auc"] is not None else float("nan"))
        if not pairs:
            continue
        # The same models under another setting name (a teacher shared by every alpha): the same
        # comparison, reported again but counted once in the Holm family.
        content = hashlib.sha256(b"".join(np.ascontiguousarray(x).tobytes() for p in pairs for x in (p["a"], p["b"]))).hexdigest()
        if content in seen:
            comparisons.append({**seen[content], "setting": setting, "variant": variant, "duplicate_of": seen[content]["setting"]})
            continue
        result = paired_auc_difference(pairs, resamples=spec.stats.resamples, confidence=spec.stats.confidence,
                                       seed=len(seen))
        runs = paired_runs_test(*run_aucs, folds=spec.folds.k if spec.folds else None)
        comparisons.append({"setting": setting, "variant": variant, "baseline_setting": b_setting,
                            "baseline_variant": b_variant, **result, "runs": runs})
        if np.ndim(pairs[0]["labels"]) == 2:  # multi-label: each label's AUC too, Holm over the labels
            comparisons[-1]["per_label"] = _per_label(pairs, label_names, spec, seed=len(seen))
        seen[content] = comparisons[-1]
    family = [c for c in comparisons if "duplicate_of" not in c]
    for c, adjusted in zip(family, holm([c["p"] for c in family]) if family else []):
        c["p_holm"] = adjusted
        c["significant"] = bool(adjusted <= spec.stats.alpha)
        c["better"] = bool(c["significant"] and c["delta_auc"] > 0)
    # The runs-level test gets its own Holm family (the comparisons where it could be computed).
    testable = [c for c in family if math.isfinite(c["runs"]["p"])]
    for c, adjusted in zip(testable, holm([c["runs"]["p"] for c in testable]) if testable else []):
        c["runs"].update(p_holm=adjusted, significant=bool(adjusted <= spec.stats.alpha))
    for c in comparisons:
        if "duplicate_of" in c:
            original = next(x for x in family if x["setting"] == c["duplicate_of"] and x["variant"] == c["variant"])
            c.update(p_holm=original["p_holm"], significant=original["significant"], better=original["better"],
                     runs=original["runs"])
    for c in comparisons:
        c["family_size"] = len(family)
    return comparisons
