"""`medlite models RUN_DIR`: the variants of a run, their files and figures, and which one
`medlite predict` would deploy and why (the rule of `medlite.deploy.select.choose_variant`).

Reads `results.json` and looks at the files (no model is loaded), as `choose_variant` does.
"""

from __future__ import annotations

from pathlib import Path

from medlite.deploy.select import evaluate_split, load_results, selection_auc, choose_variant
from medlite.runtime import ArtifactError, artifact_bytes, runtime_available, runtime_for


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value else None


def list_models(run_dir: Path) -> dict:
    """{"run_dir", "evaluated_split", "variants": [...], "deploy": {"variant", "file", "rule"}}.

    Per variant: name, file, whether it exists, file_bytes (every file the runtime needs), runtime
    and whether it is installed here, test and validation AUC, its warnings, and `deployed`.
    """
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    split = evaluate_split(run_dir)
    try:
        _, chosen, rule = choose_variant(run_dir)
        deploy = {"variant": chosen.get("name"), "file": chosen.get("file"), "rule": rule}
    except ArtifactError as err:  # nothing deployable: the listing still shows why, variant by variant
        deploy = {"variant": None, "file": None, "rule": str(err)}
    rows = []
    for v in results["variants"]:
        rel = v.get("file")
        exists = bool(rel) and (run_dir / rel).is_file()
        runtime, installed = v.get("runtime"), None
        size = v.get("file_bytes")
        if exists:
            try:
                runtime = runtime_for(run_dir / rel, runtime)
                installed = runtime_available(runtime)[0]
                size = size or artifact_bytes(run_dir / rel, runtime)
            except ArtifactError:
                installed = False
        reported = _number((v.get("metrics") or {}).get("auc"))
        rows.append({
            "name": v.get("name"),
            "file": rel,
            "file_exists": exists,
            "file_bytes": int(size) if isinstance(size, (int, float)) else None,
            "runtime": runtime,
            "runtime_installed": installed,
            "test_auc": reported if split == "test" else None,
            "val_auc": selection_auc(v, split),
            "warnings": list(v.get("warnings") or []),
            "deployed": v.get("name") == deploy["variant"],
        })
    return {"run_dir": str(run_dir), "evaluated_split": split, "variants": rows, "deploy": deploy}
