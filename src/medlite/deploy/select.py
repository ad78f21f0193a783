"""Which file of a run directory to deploy, by a rule that is printed with every answer."""

from __future__ import annotations

import json
from pathlib import Path

from medlite.runtime import ArtifactError, runtime_available, runtime_for

AUC_MARGIN = 0.01


def load_results(run_dir: Path) -> dict:
    path = run_dir / "results.json"
    if not path.is_file():
        raise ArtifactError(f"{run_dir}: not a run directory (no results.json) and not a model file")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{path}: unreadable ({err})") from None
    if not isinstance(data.get("variants"), list):
        raise ArtifactError(f"{path}: no `variants` list")
    return data


def evaluate_split(run_dir: Path) -> str:
    """The split the run's metrics were measured on (recipe.resolved.yaml `evaluate.split`, default test)."""
    try:
        import yaml

        tree = yaml.safe_load((run_dir / "recipe.resolved.yaml").read_text()) or {}
        return str((tree.get("evaluate") or {}).get("split") or "test")
    except Exception:  # noqa: BLE001 - no yaml on a device, or no resolved recipe: say so
        return "recorded"


def selection_auc(variant: dict, split: str) -> float | None:
    """The AUC that may choose: measured on the validation split (never the test split it is reported on)."""
    source = variant.get("metrics") if split == "val" else variant.get("val_metrics")
    auc = (source or {}).get("auc")
    return float(auc) if isinstance(auc, (int, float)) and auc == auc else None


def choose_variant(run_dir: Path, margin: float = AUC_MARGIN) -> tuple[Path, dict, str]:
    """(file, variant entry, rule text) for the run's best deployable variant.

    Rule: among variants whose file exists and whose runtime is installed here, take the best
    validation AUC; deploy the smallest file (bytes the runtime needs) whose validation AUC is
    within `margin` of it; ties go to the higher AUC. The test split takes no part in the choice:
    the chosen file's test figures are reported after it. The rule and the passed-over variants
    are printed, never applied silently.
    """
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    split = evaluate_split(run_dir)
    candidates, passed = [], []
    for v in results["variants"]:
        rel, name = v.get("file"), v.get("name", "?")
        auc = selection_auc(v, split)
        if not rel or not (run_dir / rel).is_file():
            passed.append(f"{name} (file missing)")
            continue
        try:
            runtime = runtime_for(run_dir / rel, v.get("runtime"))
            ok, hint = runtime_available(runtime)
        except ArtifactError as err:
            passed.append(f"{name} ({err})")
            continue
        if not ok:
            passed.append(f"{name} ({runtime} not installed: {hint})")
            continue
        if auc is None:
            passed.append(f"{name} (no validation AUC recorded)")
            continue
        candidates.append((v, auc, int(v.get("file_bytes") or (run_dir / rel).stat().st_size)))
    if not candidates:
        raise ArtifactError(f"{run_dir}: no deployable variant with a validation AUC" + (f" ({'; '.join(passed)})" if passed else ""))
    best = max(auc for _, auc, _ in candidates)
    near = [c for c in candidates if c[1] >= best - margin]
    chosen, auc, size = min(near, key=lambda c: (c[2], -c[1]))
    reported = (chosen.get("metrics") or {}).get("auc")
    after = (f"; its {split} AUC {reported:.3f} is reported after the choice" if split != "val"
             and isinstance(reported, (int, float)) else "")
    rule = (f"chosen on the validation split: smallest file within {margin:g} of the best validation AUC "
            f"({best:.3f}) among {len(candidates)} deployable variants: {chosen['name']} (validation AUC "
            f"{auc:.3f}, {size / 1024:.0f} KiB, {chosen.get('runtime')}){after}")
    if passed:
        rule += f"; passed over: {', '.join(passed)}"
    return run_dir / chosen["file"], chosen, rule


def resolve_model(target: Path) -> tuple[Path, str | None, str]:
    """A model file or a run directory -> (file, runtime or None, how it was chosen)."""
    target = Path(target)
    if target.is_dir():
        path, variant, rule = choose_variant(target)
        return path, variant.get("runtime"), rule
    if target.is_file():
        runtime_for(target)  # a clear error for a file no runtime reads
        return target, None, f"model file given: {target}"
    raise ArtifactError(f"{target}: no such model file or run directory")
