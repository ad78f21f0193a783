"""Study outputs: study.json (everything), study.csv (one row per setting x variant), study.md and
study.tex (the table for a paper), figures (strip/box plots per setting, the AUC-size-latency
Pareto front) as PNG and SVG, and selected.yaml (the chosen setting as a ready recipe).

Every interval shown stays inside its quantity's range (clipped sides marked ‡), and with fewer than
3 runs the runs are shown instead of an interval (medlite.study.stats.describe).

    python -m medlite.study.outputs STUDY_DIR/study.json [--out DIR]

writes them all again from a study.json alone (no training, no trial directories needed).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from medlite.runstate import atomic_path, write_atomic, write_json

COLUMNS = [("auc", "AUC"), ("accuracy", "Acc"), ("balanced_accuracy", "Bal. acc"), ("f1_macro", "F1"), ("ece", "ECE")]
CLIPPED = "‡"  # an interval clipped to its quantity's range


def _few(stat: dict) -> bool:
    """Fewer runs than an interval needs (the summary lists them); also for a study.json from before
    that rule, whose entries have no `runs`."""
    from medlite.study.stats import MIN_RUNS_FOR_INTERVAL

    return stat.get("runs") is not None or 0 < stat.get("n", MIN_RUNS_FOR_INTERVAL) < MIN_RUNS_FOR_INTERVAL


def _fmt(stat: dict | None, digits: int = 3, scale: float = 1.0) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    text = f"{stat['mean'] * scale:.{digits}f}"
    # With 1 or 2 runs a spread is not worth a ± (the CI column lists the runs).
    if stat.get("std") is not None and not _few(stat):
        text += f" ± {stat['std'] * scale:.{digits}f}"
    return text


def _ci(stat: dict | None, digits: int = 3) -> str:
    if not stat or stat.get("mean") is None:
        return ""
    if _few(stat):
        from medlite.study.stats import TOO_FEW_RUNS

        runs = stat.get("runs")
        return "runs: " + ", ".join(f"{v:.{digits}f}" for v in runs) if runs else TOO_FEW_RUNS
    if not stat.get("ci"):
        return ""
    return f"[{stat['ci'][0]:.{digits}f}, {stat['ci'][1]:.{digits}f}]" + (CLIPPED if stat.get("clipped") else "")


def refresh_intervals(document: dict) -> None:
    """Recompute every summary statistic from the document's rows with its quantity's range
    (`stats.metric_range`): the intervals study.json, study.csv and the tables show are bounded and
    n < 3 lists the runs, also for a document summarised without the range or by an older medlite."""
    from medlite.study.stats import describe, metric_range

    rows = document.get("rows") or []
    confidence = document.get("confidence", 0.95)
    for entry in document.get("summary") or []:
        members = [r for r in rows if (r["setting"], r["variant"]) == (entry["setting"], entry["variant"])]
        for key, stat in entry.items():
            if isinstance(stat, dict) and members and all(key in r for r in members):
                entry[key] = describe([r[key] for r in members], confidence, bounds=metric_range(key))


def _hidden(document: dict, entry: dict) -> bool:
    """With a selection rule, test metrics are shown only for the chosen setting."""
    selection = document.get("selection") or {}
    return ("setting" in selection and selection.get("report", "chosen") == "chosen"
            and entry["setting"] != selection["setting"])


def _comparison(document: dict, entry: dict) -> dict | None:
    for c in document.get("comparisons", []):
        if c["setting"] == entry["setting"] and c["variant"] == entry["variant"]:
            return c
    return None


def table_rows(document: dict) -> list[dict[str, str]]:
    rows = []
    for entry in document["summary"]:
        hidden = _hidden(document, entry)
        chosen = (document.get("selection") or {}).get("setting") == entry["setting"]
        row = {"setting": entry["setting"] + (" (chosen on val)" if chosen else ""), "variant": entry["variant"],
               "n": str(entry["n"])}
        for key, label in COLUMNS:
            row[label] = "(not shown)" if hidden else _fmt(entry[key])
        row[f"AUC {_percent(document)}% CI"] = "" if hidden else _ci(entry["auc"])
        size = entry["file_bytes"]
        row["size KB"] = _fmt(size, 1, 1 / 1024) if size.get("mean") is not None else "-"
        row["latency ms"] = _fmt(entry["latency_ms"], 3)
        select = (document.get("selection") or {}).get("metric")
        if select:
            row[select] = _fmt(entry[select])
        c = _comparison(document, entry)
        if c:
            mark = "*" if c["significant"] else ""
            low, high = c["ci"]
            # scipy gives a NaN interval when every resample agrees (e.g. two constant predictors)
            interval = f"[{low:+.3f}, {high:+.3f}]" if math.isfinite(low) and math.isfinite(high) else "[interval n/a]"
            interval += CLIPPED if c.get("clipped") else ""
            row["ΔAUC vs baseline"] = f"{c['delta_auc']:+.3f}{mark} {interval}"
            row["p (Holm)"] = _fmt_p(c["p_holm"])
            runs = c.get("runs") or {}
            row["p runs (Holm)"] = _fmt_p(runs.get("p_holm")) + ("†" if runs.get("significant") else "")
        rows.append(row)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return [{k: r.get(k, "") for k in keys} for r in rows]


def _percent(document: dict) -> str:
    return f"{document.get('confidence', 0.95) * 100:g}"


def _ci_note(entry: dict, keys: list[str]) -> str:
    """One CSV cell: which of the entry's intervals were clipped to their range, or why there are none."""
    from medlite.study.stats import TOO_FEW_RUNS

    parts = []
    if any(_few(entry[k]) for k in keys if entry[k].get("mean") is not None):
        parts.append(TOO_FEW_RUNS)
    clipped = [f"{k} {side}" for k in keys for side in entry[k].get("clipped") or []]
    if clipped:
        parts.append("clipped to the range: " + ", ".join(clipped))
    return "; ".join(parts)


def _fmt_p(p: float) -> str:
    if p is None or not math.isfinite(p):
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3g}"


def _csv(document: dict) -> str:
    out = io.StringIO()
    fields = ["setting", "variant", "n", "arch", "format"]
    stats_keys = [k for k in document["summary"][0] if isinstance(document["summary"][0][k], dict)] if document["summary"] else []
    for key in stats_keys:
        fields += [f"{key}_mean", f"{key}_std", f"{key}_ci_low", f"{key}_ci_high"]
    fields += ["ci_note", "delta_auc", "delta_auc_ci_low", "delta_auc_ci_high", "p", "p_holm", "significant", "baseline",
               "runs_n", "runs_mean_delta", "runs_p", "runs_p_holm", "runs_significant"]
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for entry in document["summary"]:
        hidden = _hidden(document, entry)
        row: dict[str, Any] = {k: entry.get(k) for k in ("setting", "variant", "n", "arch", "format")}
        shown = []
        for key in stats_keys:
            s = entry[key]
            if hidden and not key.startswith("val_") and key not in ("file_bytes", "latency_ms"):
                continue
            shown.append(key)
            row[f"{key}_mean"], row[f"{key}_std"] = s.get("mean"), s.get("std")
            row[f"{key}_ci_low"], row[f"{key}_ci_high"] = (s.get("ci") or [None, None])
        row["ci_note"] = _ci_note(entry, shown)
        c = _comparison(document, entry)
        if c:
            row.update(delta_auc=c["delta_auc"], delta_auc_ci_low=c["ci"][0], delta_auc_ci_high=c["ci"][1], p=c["p"],
                       p_holm=c["p_holm"], significant=c["significant"],
                       baseline=f"{c['baseline_setting']}/{c['baseline_variant']}")
            runs = c.get("runs") or {}
            row.update(runs_n=runs.get("n"), runs_mean_delta=runs.get("mean_delta"), runs_p=runs.get("p"),
                       runs_p_holm=runs.get("p_holm"), runs_significant=runs.get("significant"))
        writer.writerow(row)
    return out.getvalue()


def _baseline_note(document: dict) -> str | None:
    spec = document.get("spec") or {}
    origin, base = spec.get("baseline_origin"), spec.get("baseline") or {}
    if origin == "default":
        return f"Baseline: {base['variant']} of each setting (default: every trial has it; `baseline: none` turns it off)."
    if origin == "off":
        return "No paired comparisons: the study sets `baseline: none`."
    if origin == "absent":
        return "No paired comparisons: the study names no `baseline` and not every trial trains student_scratch."
    if origin == "study":
        if base.get("setting") and base.get("variant"):
            what = f"{base['variant']} of setting {base['setting']}"
        elif base.get("setting"):
            what = f"the same variant of setting {base['setting']}"
        else:
            what = f"{base['variant']} of each setting"
        return f"Baseline: {what} (the study's `baseline`)."
    return None  # a study.json from before the baseline's origin was recorded


def _notes(document: dict) -> list[str]:
    from medlite.study.stats import MIN_RUNS_FOR_INTERVAL, TOO_FEW_RUNS

    notes = [f"{document['trials_finished']}/{document['trials_total']} trials finished; mean ± std over seeds/folds; "
             f"{_percent(document)}% CI: Student t over seeds/folds, kept inside the metric's range "
             "([0, 1]; sizes and latencies >= 0)."]
    shown = [e for e in document.get("summary") or [] if not _hidden(document, e)]
    stats_of = [s for e in shown for s in e.values() if isinstance(s, dict) and s.get("mean") is not None]
    if any(s.get("clipped") for s in stats_of) or any(c.get("clipped") for c in document.get("comparisons") or []):
        notes.append(f"{CLIPPED} = the interval went past the metric's range and was clipped to it.")
    if any(_few(s) for s in stats_of):
        notes.append(f"Where n < {MIN_RUNS_FOR_INTERVAL}: {TOO_FEW_RUNS}; the CI column lists the runs, and no ± std is shown.")
    if document.get("folds"):
        notes.append(f"Cross-validation: {document['folds']}.")
    baseline = _baseline_note(document)
    if baseline:
        notes.append(baseline)
    if document.get("comparisons"):
        c = document["comparisons"][0]
        notes.append(f"ΔAUC: {c['method']} with {c['resamples']} resamples on the same test images; "
                     f"* = significant after Holm correction over {c.get('family_size', len(document['comparisons']))} distinct comparisons "
                     f"(alpha {document['spec']['stats']['alpha']}). This is conditional on the trained models: "
                     f"it says these models differ on this test population.")
        runs = next((x.get("runs") for x in document["comparisons"] if x.get("runs")), None)
        if runs:
            notes.append(f"p runs: {runs['test']} of the per-run AUC differences, Holm-corrected; † = significant. "
                         "It asks whether the difference comes back when the models are trained again "
                         f"(the baseline's own run-to-run spread counts); with {runs['n']} runs it has little power, so a "
                         "large p means 'not shown', not 'no difference'.")
    invocations = document.get("invocations") or []
    ran = [i for i in invocations if i["trials_run"]]
    if ran:
        parts = ", then ".join(f"{i['trials_run']} trials in {i['wall_seconds']:.0f} s ({i['executor']})" for i in ran)
        resummarised = len(invocations) - len(ran)
        notes.append(f"Wall time: {parts}" + (f"; re-summarised {resummarised} times since." if resummarised else "."))
    selection = document.get("selection")
    if selection and "setting" in selection:
        shown = ("every setting's test metrics are reported too (report: all), compared and Holm-corrected together"
                 if selection.get("report") == "all" else "test metrics shown only for it")
        among = ", ".join(f"{name} {value:.4f}" for name, value in selection.get("scores", {}).items())
        notes.append(f"Selected on validation ({selection['metric']} of {selection['variant']}, {selection['direction']}; "
                     f"among {among}): {selection['setting']}; {shown}.")
    elif selection:
        notes.append(selection["error"])
    for f in document.get("failed", []):
        notes.append(f"FAILED: {f['trial']}: {f['error']}")
    return notes


def _markdown(document: dict, rows: list[dict]) -> str:
    lines = [f"# Study {document['study']}", "", f"Recipe: `{document['recipe']}`", ""]
    if rows:
        keys = list(rows[0])
        lines += ["| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
        lines += ["| " + " | ".join(r[k] for k in keys) + " |" for r in rows]
    lines += [""] + [f"- {n}" for n in _notes(document)]
    lines += _per_label_markdown(document)
    return "\n".join(lines) + "\n"


def _per_label_markdown(document: dict) -> list[str]:
    """Multi-label studies: each comparison's per-label AUC differences (paired bootstrap over the
    same test images, Holm-corrected within the comparison's labels), one table per comparison."""
    lines: list[str] = []
    for c in document.get("comparisons") or []:
        per_label = c.get("per_label")
        if not per_label or "duplicate_of" in c:
            continue
        lines += ["", f"## Per label: {c['setting']} / {c['variant']} vs {c['baseline_setting']} / {c['baseline_variant']}",
                  "", "| label | Δ AUC | CI | p | p (Holm) |", "|---|---|---|---|---|"]
        for name, r in per_label.items():
            if r.get("undefined"):
                lines.append(f"| {name} | undefined | {r['undefined']} | | |")
                continue
            ci = r.get("ci")
            ci_text = f"{ci[0]:+.3f} to {ci[1]:+.3f}" if ci else "n/a"
            star = "*" if r.get("significant") else ""
            p_holm = r.get("p_holm")
            lines.append(f"| {name} | {r['delta_auc']:+.3f}{star} | {ci_text} | {_fmt_p(r['p'])} | "
                         f"{_fmt_p(p_holm) if p_holm is not None else 'n/a'} |")
        lines.append("")
        lines.append("* = significant after Holm correction over this comparison's defined labels.")
    return lines


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "{": r"\{", "}": r"\}",
          "$": r"\$", "±": r"$\pm$", "Δ": r"$\Delta$", "*": r"$^{*}$", "†": r"$^{\dagger}$", "‡": r"$^{\ddagger}$",
          "<": r"$<$", ">": r"$>$"}


def _latex_escape(text: str) -> str:
    import re

    return re.sub("|".join(re.escape(k) for k in _LATEX), lambda m: _LATEX[m.group(0)], text)


def _latex(document: dict, rows: list[dict]) -> str:
    if not rows:
        return "% no finished trials\n"
    keys = [k for k in rows[0] if k not in ("n",)]
    header = " & ".join(_latex_escape(k) for k in keys)
    body = "\n".join(" & ".join(_latex_escape(r[k]) for k in keys) + r" \\" for r in rows)
    notes = " ".join(_latex_escape(n) for n in _notes(document))
    return (
        "% medlite study table (needs \\usepackage{booktabs} and \\usepackage{graphicx})\n"
        "\\begin{table}[t]\n\\centering\\small\n"
        "\\resizebox{\\linewidth}{!}{%  a study table is wider than a column\n"
        f"\\begin{{tabular}}{{{'l' * 2}{'r' * (len(keys) - 2)}}}\n\\toprule\n{header} \\\\\n\\midrule\n{body}\n"
        "\\bottomrule\n\\end{tabular}}\n"
        f"\\caption{{Study {_latex_escape(document['study'])}. {notes}}}\n\\end{{table}}\n"
    )


def _shared_once(keys: list[tuple[str, str]], values: list) -> list[tuple[int, str]]:
    """(index, label) of the entries to draw. A variant whose values are the same under every
    setting (a teacher or baseline the settings share through the stage store) is drawn once,
    first, as "<variant> (all settings)", instead of once per setting."""
    by_variant: dict[str, list[int]] = {}
    for i, (_, variant) in enumerate(keys):
        by_variant.setdefault(variant, []).append(i)
    shared, drop = [], set()
    for variant, indices in by_variant.items():
        if len(indices) > 1 and all(values[i] == values[indices[0]] for i in indices):
            shared.append((indices[0], f"{variant} (all settings)"))
            drop.update(indices)
    return shared + [(i, f"{keys[i][0]} / {keys[i][1]}") for i in range(len(keys)) if i not in drop]


def _save(fig, folder: Path, stem: str) -> list[str]:
    """PNG and SVG, each written to a temporary name and renamed: a killed study leaves no half figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    for ext in ("png", "svg"):
        with atomic_path(folder / f"{stem}.{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=150)
    plt.close(fig)
    return [f"figures/{stem}.png", f"figures/{stem}.svg"]


def _figures(document: dict, folder: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    rows = document["rows"]
    keys = [(e["setting"], e["variant"]) for e in document["summary"] if not _hidden(document, e)]
    per_key = [[r["auc"] for r in rows if (r["setting"], r["variant"]) == k and r["auc"] is not None] for k in keys]
    drawn = _shared_once(keys, per_key)
    data = [per_key[i] for i, _ in drawn]
    labels = [label.replace(" / ", "\n").replace(" (all", "\n(all") for _, label in drawn]
    if keys:
        fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(data) + 1), 4.2))
        ax.boxplot(data, showfliers=False, widths=0.5)
        rng = np.random.default_rng(0)
        for i, values in enumerate(data, start=1):
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(values)), values, s=14, alpha=0.8, zorder=3)
        ax.set_xticks(range(1, len(data) + 1), labels, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("test AUC (one point per seed/fold)")
        ax.set_title(f"{document['study']}: AUC per setting and variant")
        written += _save(fig, folder, "auc_strip")

    shown = [e for e in document["summary"] if not _hidden(document, e)
             and e["file_bytes"]["mean"] is not None and e["auc"]["mean"] is not None]
    drawn = _shared_once([(e["setting"], e["variant"]) for e in shown],
                         [(e["file_bytes"]["mean"], e["auc"]["mean"], e["latency_ms"]["mean"]) for e in shown])
    points = [(shown[i]["file_bytes"]["mean"], shown[i]["auc"]["mean"], shown[i]["latency_ms"]["mean"], label)
              for i, label in drawn]
    if points:
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        sizes = np.array([p[0] / 1024 for p in points])
        aucs = np.array([p[1] for p in points])
        lat = [p[2] for p in points]
        if all(v is not None for v in lat):
            sc = ax.scatter(sizes, aucs, c=lat, cmap="viridis", s=40, zorder=3)
            fig.colorbar(sc, ax=ax, label="latency p50 (ms, 1 thread)")
        else:
            ax.scatter(sizes, aucs, s=40, zorder=3)
        # The report's front and label placement: straight segments through the non-dominated
        # points only (ringed), labels placed where they overlap no other label or marker.
        from medlite.report.figures import front_line, pareto_front, place_labels

        named = [(name, y, x / 1024) for (x, y, _, name) in points]
        xs, ys = front_line(named)
        ax.plot(xs, ys, "-", color="crimson", lw=1.2, zorder=2, label="Pareto front (smaller, better)")
        ax.scatter(xs, ys, s=90, facecolors="none", edgecolors="crimson", linewidths=1.0, zorder=4)
        ax.margins(x=0.25, y=0.15)
        ax.set_xscale("log")
        ax.set_xlabel("file size (KB, log)")
        ax.set_ylabel("mean test AUC")
        ax.legend(fontsize=7, loc="lower right")
        ax.set_title(f"{document['study']}: AUC vs size")
        fig.tight_layout()
        on_front = set(pareto_front(named))
        place_labels(ax, [(n, c, a, {"fontsize": 6.5, "color": "crimson" if n in on_front else "#444444"})
                          for n, a, c in named])
        written += _save(fig, folder, "pareto")
    return written


def write_selected(document: dict, out: Path) -> None:
    selection = document.get("selection") or {}
    if "setting" not in selection:
        return
    from medlite.recipe import dump_recipe, load_recipe
    from medlite.study.schema import _override

    spec = document["spec"]
    overrides = [_override(k, v) for k, v in {**spec.get("set", {}), **selection["overrides"]}.items()]
    recipe = load_recipe(document["recipe"], overrides + [f"seed={spec['seeds'][0]}"])
    header = (f"# Chosen by study {document['study']} on validation ({selection['metric']} of {selection['variant']}, "
              f"{selection['direction']}): {selection['setting']}\n")
    write_atomic(out / "selected.yaml", header + dump_recipe(recipe))


def write_outputs(document: dict, out: Path) -> None:
    refresh_intervals(document)
    rows = table_rows(document)
    document["figures"] = _figures(document, out / "figures") if document["summary"] else []
    write_json(out / "study.json", document)
    write_atomic(out / "study.csv", _csv(document))
    write_atomic(out / "study.md", _markdown(document, rows))
    write_atomic(out / "study.tex", _latex(document, rows))
    write_selected(document, out)


def render(study_json: Path, out: Path | None = None) -> dict:
    """Every output written again from a study.json (to its folder, or `out`): no trial is read or trained."""
    import json

    document = json.loads(Path(study_json).read_text())
    out = Path(out) if out is not None else Path(study_json).parent
    out.mkdir(parents=True, exist_ok=True)
    write_outputs(document, out)
    return document


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m medlite.study.outputs", description=render.__doc__)
    parser.add_argument("study_json", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="folder for the outputs (default: the study.json's)")
    args = parser.parse_args()
    if not args.study_json.is_file():
        parser.exit(2, f"{args.study_json}: no such file\n")
    render(args.study_json, args.out)
    print(f"wrote {args.out or args.study_json.parent}/study.md (and .json, .csv, .tex, figures)")
