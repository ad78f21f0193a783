"""The evidence of issue 21 in one table: does the distillation chosen on validation beat the fair
scratch student, and what does a cross-resolution student cost in AUC?

Reads each finished evidence study (`study.json` and its trials' `results.json` for MACs), copies
`study.json` / `study.md` to `benchmarks/results/kd_evidence/<dataset>/`, and writes
`benchmarks/results/kd_evidence/summary.md` and `summary.json`:

    python benchmarks/kd_evidence/summarize.py breastmnist=runs/kd-evidence-breastmnist \
        busi=runs/kd-evidence-busi ham10000=runs/kd-evidence-ham10000 [--machine "2-core x86 VM"]

Every number comes from the studies' own records: the headline comparison (chosen setting's
`student_kd` against the plain `student_scratch` of `kd_bank`) is the study's Holm-corrected one; the
comparisons against each setting's own scratch student and of the cross-resolution student against
the full-resolution one are paired over the same runs here (scipy, through medlite.study.stats),
outside the study's Holm family, and said so.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from medlite.study.stats import paired_runs_test

GOAL = 0.01  # the bar: at least 0.01 test AUC over the fair scratch student, runs-level test significant
HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "results" / "kd_evidence"


def _runs(doc: dict, setting: str, variant: str) -> dict[tuple, float]:
    return {(r["seed"], r["fold"]): r["auc"] for r in doc["rows"]
            if r["setting"] == setting and r["variant"] == variant and r["auc"] is not None}


def _folds(doc: dict) -> int | None:
    folds = (doc.get("spec") or {}).get("folds")
    return folds.get("k") if isinstance(folds, dict) else folds


def _paired(doc: dict, a: tuple[str, str], b: tuple[str, str]) -> dict:
    ra, rb = _runs(doc, *a), _runs(doc, *b)
    keys = sorted(set(ra) & set(rb), key=str)
    x, y = [ra[k] for k in keys], [rb[k] for k in keys]
    test = paired_runs_test(x, y, folds=_folds(doc))
    diff = np.array(x) - np.array(y)
    return {"a": "/".join(a), "b": "/".join(b), "n": len(keys), "delta_mean": float(diff.mean()) if len(diff) else None,
            "delta_std": float(diff.std(ddof=1)) if len(diff) > 1 else None, "p": test.get("p"), "test": test.get("test")}


def _entry(doc: dict, setting: str, variant: str) -> dict | None:
    return next((e for e in doc["summary"] if e["setting"] == setting and e["variant"] == variant), None)


def _comparison(doc: dict, setting: str, variant: str) -> dict | None:
    return next((c for c in doc.get("comparisons", []) if c["setting"] == setting and c["variant"] == variant), None)


def _macs(study_dir: Path, doc: dict, setting: str, variant: str) -> float | None:
    values = []
    for row in doc["rows"]:
        if row["setting"] == setting and row["variant"] == variant:
            results = study_dir / "trials" / Path(row["trial"]).name / "results.json"
            if not results.is_file():
                results = next((study_dir / "trials").glob(f"{row['trial'].replace(' ', '_')}*/results.json"), None)
            if results and results.is_file():
                found = [v.get("macs") for v in json.loads(results.read_text())["variants"] if v["name"] == variant]
                values += [m for m in found if m]
    return float(np.mean(values)) if values else None


def summarize(name: str, study_dir: Path) -> dict:
    doc = json.loads((study_dir / "study.json").read_text())
    target = OUT / name
    target.mkdir(parents=True, exist_ok=True)
    for file in ("study.json", "study.md"):
        shutil.copy2(study_dir / file, target / file)
    selection = doc.get("selection") or {}
    chosen = selection.get("setting")
    base = (doc["spec"]["baseline"]["setting"], doc["spec"]["baseline"]["variant"])
    headline = _comparison(doc, chosen, "student_kd") if chosen else None
    fair = _entry(doc, *base)
    kd = _entry(doc, chosen, "student_kd") if chosen else None
    out = {
        "dataset": name, "study": doc["study"], "runs": fair["n"] if fair else 0, "folds": bool(doc.get("folds")),
        "chosen": chosen, "val_scores": selection.get("scores"),
        "fair_scratch_auc": fair and fair["auc"], "chosen_kd_auc": kd and kd["auc"],
        "headline": headline and {k: headline.get(k) for k in ("delta_auc", "ci", "p_holm", "significant", "family_size")}
        | {"runs": headline.get("runs")},
        "per_setting": {}, "failed": doc.get("failed", []),
    }
    if headline:
        runs = headline.get("runs") or {}
        out["goal_met"] = bool(headline["delta_auc"] >= GOAL and runs.get("significant"))
    for setting in [s["name"] for s in doc["settings"]]:
        row = {}
        for variant in ("teacher", "student_scratch", "student_kd", "student_kd_int8_static"):
            entry = _entry(doc, setting, variant)
            if entry:
                row[variant] = {"auc": entry["auc"], "val_auc": entry.get("val_auc"), "file_bytes": entry["file_bytes"]}
        row["kd_vs_own_scratch"] = _paired(doc, (setting, "student_kd"), (setting, "student_scratch"))
        row["kd_vs_fair_scratch"] = _paired(doc, (setting, "student_kd"), base)
        row["student_kd_macs"] = _macs(study_dir, doc, setting, "student_kd")
        out["per_setting"][setting] = row
    if "cross_res" in out["per_setting"] and "fm" in out["per_setting"]:
        out["cross_res_vs_full"] = _paired(doc, ("cross_res", "student_kd"), ("fm", "student_kd"))
        out["cross_res_int8_vs_full_int8"] = _paired(doc, ("cross_res", "student_kd_int8_static"), ("fm", "student_kd_int8_static"))
    return out


def _f(stat, digits: int = 3) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}" if stat.get("std") is not None else f"{stat['mean']:.{digits}f}"


def _p(value) -> str:
    return "-" if value is None or value != value else f"{value:.3f}"


def markdown(results: list[dict], command: str, machine: str) -> str:
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    lines = [f"`{command}` on the {machine}, {date}, from the studies' own `study.json` (beside this file, one folder per dataset).", "",
             "# Does distillation earn its place? (issue 21)", "",
             "Test AUC, mean ± std over runs (seeds or folds), each measured on the exported ONNX file. "
             "`fair scratch`: the plain scratch student of the `kd_bank` setting (live augmentation, the "
             "distilled student's epochs and optimizer). Chosen: the distillation setting with the best mean "
             "validation AUC of `student_kd` (kd_bank or fm); test figures were read after the choice.", "",
             "| dataset | runs | fair scratch | chosen on val | its KD student | Δ vs fair scratch | p images (Holm) | p runs (Holm) | goal (≥ +0.01, runs significant) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        h = r.get("headline") or {}
        runs = h.get("runs") or {}
        lines.append(f"| {r['dataset']} | {r['runs']}{' folds' if r['folds'] else ' seeds'} | {_f(r['fair_scratch_auc'])} | "
                     f"{r['chosen']} | {_f(r['chosen_kd_auc'])} | {h.get('delta_auc', float('nan')):+.3f} | "
                     f"{_p(h.get('p_holm'))} | {_p(runs.get('p_holm'))} | {'met' if r.get('goal_met') else 'not met'} |")
    lines += ["", "Per setting (test AUC; Δ and p paired over the same runs, here, outside the study's Holm family):", "",
              "| dataset | setting | teacher | scratch (same setting) | KD student | Δ KD vs own scratch (p runs) | "
              "Δ KD vs fair scratch (p runs) | KD int8 | int8 KB | student MMACs |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for setting, row in r["per_setting"].items():
            own, fair = row["kd_vs_own_scratch"], row["kd_vs_fair_scratch"]
            int8 = row.get("student_kd_int8_static") or {}
            kb = int8.get("file_bytes", {}).get("mean")
            macs = row.get("student_kd_macs")
            lines.append(
                f"| {r['dataset']} | {setting} | {_f((row.get('teacher') or {}).get('auc'))} | "
                f"{_f((row.get('student_scratch') or {}).get('auc'))} | {_f((row.get('student_kd') or {}).get('auc'))} | "
                f"{own['delta_mean']:+.3f} ({_p(own['p'])}) | {fair['delta_mean']:+.3f} ({_p(fair['p'])}) | "
                f"{_f(int8.get('auc'))} | {kb / 1024:.1f} | {macs / 1e6:.2f} |" if kb and macs else
                f"| {r['dataset']} | {setting} | {_f((row.get('teacher') or {}).get('auc'))} | "
                f"{_f((row.get('student_scratch') or {}).get('auc'))} | {_f((row.get('student_kd') or {}).get('auc'))} | "
                f"{own['delta_mean']:+.3f} ({_p(own['p'])}) | {fair['delta_mean']:+.3f} ({_p(fair['p'])}) | "
                f"{_f(int8.get('auc'))} | - | - |")
    lines += ["", "Cross-resolution students (half the side, a quarter of the MACs) against the same function-matching "
              "student at full resolution, paired over runs (the issue's target: at most 0.01 AUC lost):", "",
              "| dataset | Δ AUC (fp32 files) | p runs | Δ AUC (int8 files) | p runs |", "|---|---|---|---|---|"]
    for r in results:
        c, q = r.get("cross_res_vs_full"), r.get("cross_res_int8_vs_full_int8")
        if c:
            lines.append(f"| {r['dataset']} | {c['delta_mean']:+.3f} ± {c['delta_std']:.3f} | {_p(c['p'])} | "
                         f"{q['delta_mean']:+.3f} ± {q['delta_std']:.3f} | {_p(q['p'])} |")
    met = sum(bool(r.get("goal_met")) for r in results)
    lines += ["", f"Goal of issue 21 (the validation-chosen distillation beats the fair scratch student by at least "
              f"0.01 test AUC, runs-level test significant, on at least two of the three sets): met on {met} of "
              f"{len(results)}."]
    for r in results:
        for f in r["failed"]:
            lines.append(f"- FAILED in {r['dataset']}: {f['trial']}: {f['error']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="+", help="NAME=STUDY_DIR")
    parser.add_argument("--machine", default="2-core x86 VM (AMD EPYC), CPU only")
    args = parser.parse_args(argv)
    results = [summarize(name, Path(folder)) for name, folder in (item.split("=", 1) for item in args.studies)]
    command = "python benchmarks/kd_evidence/summarize.py " + " ".join(args.studies)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "summary.md").write_text(markdown(results, command, args.machine))
    (OUT / "summary.json").write_text(json.dumps({"command": command, "machine": args.machine, "results": results},
                                                 indent=1, default=float))
    print((OUT / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
