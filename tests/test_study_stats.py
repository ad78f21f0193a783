"""Study intervals that stay inside the metric's range, no t-interval under 3 runs, and the default
baseline (student_scratch of each setting). Unit tests on synthetic study documents: nothing trains."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from medlite.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]


def t_975_two_df() -> float:
    """t_{0.975} with 2 degrees of freedom in closed form, (2p - 1) / sqrt(2 p (1 - p)): not via scipy."""
    p = 0.975
    return (2 * p - 1) / math.sqrt(2 * p * (1 - p))


def reference_interval(values: list[float]) -> tuple[float, float]:
    x = np.asarray(values, float)
    half = t_975_two_df() * x.std(ddof=1) / math.sqrt(len(x))
    return x.mean() - half, x.mean() + half


# -- describe -------------------------------------------------------------------------------


def test_the_closed_form_t_quantile_is_scipys():
    from scipy import stats

    assert t_975_two_df() == pytest.approx(stats.t.ppf(0.975, 2), rel=1e-12)


def test_three_runs_give_the_student_t_interval():
    from medlite.study.stats import describe

    values = [0.80, 0.82, 0.79]
    out = describe(values, 0.95, bounds=(0.0, 1.0))
    assert out["n"] == 3 and out["mean"] == pytest.approx(np.mean(values))
    assert out["ci"] == pytest.approx(reference_interval(values), rel=1e-9)
    assert "clipped" not in out and "runs" not in out and "no_interval" not in out
    assert out["range"] == [0.0, 1.0]


@pytest.mark.parametrize("values", [[0.871], [0.871, 0.880]])
def test_one_or_two_runs_give_the_runs_and_no_interval(values):
    from medlite.study.stats import describe

    out = describe(values, 0.95, bounds=(0.0, 1.0))
    assert out["ci"] is None and out["runs"] == values
    assert out["no_interval"] == "too few runs for an interval (n < 3)"
    assert out["mean"] == pytest.approx(np.mean(values))
    assert (out["std"] is None) == (len(values) == 1)


def test_nan_runs_do_not_count_towards_three():
    from medlite.study.stats import describe

    out = describe([0.9, float("nan"), 0.8, None])
    assert out["n"] == 2 and out["missing"] == 2 and out["ci"] is None and out["runs"] == [0.9, 0.8]


def test_an_interval_past_1_is_clipped_at_1_and_says_so():
    from medlite.study.stats import describe

    values = [0.99, 1.0, 0.97]
    lo, hi = reference_interval(values)
    assert hi > 1  # the plain t-interval leaves the AUC's range
    out = describe(values, 0.95, bounds=(0.0, 1.0))
    assert out["ci"] == pytest.approx([lo, 1.0], rel=1e-9) and out["clipped"] == ["high"]
    # without a range nothing is clipped (an unknown quantity)
    assert describe(values)["ci"] == pytest.approx([lo, hi], rel=1e-9)


def test_an_interval_below_0_is_clipped_at_0_and_sizes_have_no_upper_bound():
    from medlite.study.stats import NON_NEGATIVE, describe, metric_range

    ece = describe([0.01, 0.0, 0.05], 0.95, bounds=metric_range("ece"))
    assert ece["ci"][0] == 0.0 and ece["clipped"] == ["low"]
    latency = describe([0.1, 0.5, 3.0], 0.95, bounds=metric_range("latency_ms"))
    assert latency["ci"][0] == 0.0 and latency["clipped"] == ["low"]
    assert latency["ci"][1] == pytest.approx(reference_interval([0.1, 0.5, 3.0])[1])
    assert latency["range"] == [0.0, None]  # JSON-safe: an open side is null
    json.dumps(latency, allow_nan=False)
    assert metric_range("file_bytes") == NON_NEGATIVE


def test_every_headline_metric_and_its_validation_twin_is_in_0_1():
    from medlite.study.schema import HEADLINE
    from medlite.study.stats import metric_range

    for key in HEADLINE:
        assert metric_range(key) == (0.0, 1.0) and metric_range(f"val_{key}") == (0.0, 1.0)
    assert metric_range("params") is None


def test_bound_interval_keeps_nan_and_clips_both_sides():
    from medlite.study.stats import DIFFERENCE_RANGE, bound_interval

    assert bound_interval([-1.4, 1.2], DIFFERENCE_RANGE) == ([-1.0, 1.0], ["low", "high"])
    ci, clipped = bound_interval([float("nan"), float("nan")], (0.0, 1.0))
    assert all(math.isnan(v) for v in ci) and clipped == []


def test_the_paired_difference_interval_stays_in_minus_1_1():
    from medlite.study.stats import paired_auc_difference

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    s = np.clip(y + rng.normal(0, 0.1, 60), 0, 1)
    as_probs = lambda v: np.stack([1 - v, v], 1)  # noqa: E731
    out = paired_auc_difference([{"group": 0, "labels": y, "a": as_probs(s), "b": as_probs(1 - s)}], resamples=200)
    assert out["delta_auc"] > 0.9 and -1 <= out["ci"][0] <= out["ci"][1] <= 1


# -- outputs ----------------------------------------------------------------------------------


def document(aucs: dict[str, list[float]], origin: str | None = None, baseline: dict | None = None) -> dict:
    """A study document as runner.summarise makes it, summarised without ranges (as before this rule)."""
    from medlite.study.runner import SUMMARY_KEYS
    from medlite.study.stats import describe

    rows = []
    for variant, values in aucs.items():
        for seed, auc in enumerate(values):
            row = {key: None for key in SUMMARY_KEYS}
            row.update(setting="default", seed=seed, fold=None, variant=variant, trial=f"default__seed{seed}",
                       arch="a", format="onnx-fp32", auc=auc, ece=0.02 * seed, file_bytes=1000.0)
            rows.append(row)
    summary = []
    for variant, values in aucs.items():
        members = [r for r in rows if r["variant"] == variant]
        entry = {"setting": "default", "variant": variant, "n": len(members), "arch": "a", "format": "onnx-fp32"}
        entry.update({key: describe([m[key] for m in members]) for key in SUMMARY_KEYS})
        summary.append(entry)
    spec = {"set": {}, "seeds": list(range(max(len(v) for v in aucs.values()))), "stats": {"alpha": 0.05},
            "baseline": baseline, "baseline_origin": origin}
    return {"study": "synthetic", "recipe": "breastmnist", "spec": spec, "settings": [], "trials_total": 3,
            "trials_finished": 3, "folds": None, "rows": rows, "summary": summary, "comparisons": [],
            "selection": None, "confidence": 0.95, "invocations": [], "failed": []}


def _row(rows: list[dict], variant: str) -> dict:
    return next(r for r in rows if r["variant"] == variant)


def test_tables_show_runs_under_3_and_a_clipped_interval_marked():
    from medlite.study.outputs import _csv, _latex, _markdown, refresh_intervals, table_rows

    doc = document({"teacher": [0.99, 1.0, 0.97], "student_kd": [0.871, 0.880]})
    refresh_intervals(doc)
    rows = table_rows(doc)
    teacher, kd = _row(rows, "teacher"), _row(rows, "student_kd")
    lo = reference_interval([0.99, 1.0, 0.97])[0]
    assert teacher["AUC 95% CI"] == f"[{lo:.3f}, 1.000]‡"
    assert kd["AUC 95% CI"] == "runs: 0.871, 0.880" and kd["AUC"] == f"{np.mean([0.871, 0.880]):.3f}"  # no ± over 2 runs
    md = _markdown(doc, rows)
    assert "too few runs for an interval (n < 3)" in md and "‡ = the interval went past" in md
    tex = _latex(doc, rows)
    assert r"1.000]$^{\ddagger}$" in tex and "runs: 0.871, 0.880" in tex
    by_variant = {r["variant"]: r for r in csv.DictReader(io.StringIO(_csv(doc)))}
    assert float(by_variant["teacher"]["auc_ci_high"]) == 1.0
    assert "auc high" in by_variant["teacher"]["ci_note"]
    assert by_variant["student_kd"]["auc_ci_low"] == "" and by_variant["student_kd"]["auc_ci_high"] == ""
    assert by_variant["student_kd"]["ci_note"] == "too few runs for an interval (n < 3)"


def test_one_run_lists_the_run():
    from medlite.study.outputs import refresh_intervals, table_rows

    doc = document({"student_kd": [0.871]})
    refresh_intervals(doc)
    row = table_rows(doc)[0]
    assert row["AUC 95% CI"] == "runs: 0.871" and row["AUC"] == "0.871"


def test_render_rewrites_an_old_study_json_with_bounded_intervals(tmp_path):
    """An old study.json (a t-interval over 2 seeds, one past 1) comes back right, without training."""
    from medlite.study.outputs import render

    doc = document({"teacher": [0.99, 1.0, 0.97], "student_kd": [0.5, 0.6]})
    kd = _row(doc["summary"], "student_kd")
    kd["auc"] = {"n": 2, "mean": 0.55, "std": 0.0707, "ci": [-0.085, 1.185]}  # what the old describe wrote
    (tmp_path / "study.json").write_text(json.dumps(doc))
    render(tmp_path / "study.json")
    again = json.loads((tmp_path / "study.json").read_text())
    auc = _row(again["summary"], "student_kd")["auc"]
    assert auc["ci"] is None and auc["runs"] == [0.5, 0.6]
    teacher = _row(again["summary"], "teacher")["auc"]
    assert teacher["ci"][1] == 1.0 and teacher["clipped"] == ["high"]
    assert "runs: 0.500, 0.600" in (tmp_path / "study.md").read_text()
    assert (tmp_path / "figures" / "auc_strip.png").is_file()


@pytest.mark.parametrize("origin, baseline, says", [
    ("default", {"setting": None, "variant": "student_scratch"},
     "baseline: student_scratch of each setting (default: every trial has it"),
    ("study", {"setting": None, "variant": "student_scratch"}, "baseline: student_scratch of each setting (the study's"),
    ("off", None, "no paired comparisons: the study sets `baseline: none`"),
    ("absent", None, "not every trial trains student_scratch"),
])
def test_the_notes_say_which_baseline(origin, baseline, says):
    from medlite.study.outputs import _notes

    notes = " ".join(_notes(document({"student_kd": [0.8, 0.9, 0.85]}, origin, baseline)))
    assert says in notes.lower()


# -- the default baseline ---------------------------------------------------------------------

TINY = {"data.limit": 40, "teacher.arch": "medlite_cnn_tiny", "student.arch": "medlite_cnn_tiny",
        "compress.methods": [], "bench.enabled": False}


def study(tmp_path: Path, **spec) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"recipe": "breastmnist", "set": dict(TINY), **spec}, sort_keys=False))
    return path


def test_every_trial_with_student_scratch_compares_against_it_by_default(tmp_path):
    from medlite.distill.stages import SCRATCH
    from medlite.study.runner import prepare_study
    from medlite.study.schema import SCRATCH as SCHEMA_SCRATCH, expand

    assert SCHEMA_SCRATCH == SCRATCH
    spec, _, trials = prepare_study(study(tmp_path, grid={"distill.alpha": [0.3, 0.7]}))
    assert spec.baseline.variant == "student_scratch" and spec.baseline.setting is None
    assert spec.model_dump(mode="json", by_alias=True)["baseline_origin"] == "default"
    expand(spec)  # resolved once: a second expand does not take the default for the study's own
    assert spec.baseline_origin == "default"


def test_baseline_none_turns_the_default_off_and_an_explicit_one_wins(tmp_path):
    from medlite.study.runner import prepare_study

    spec, _, _ = prepare_study(study(tmp_path, baseline="none"))
    assert spec.baseline is None and spec.baseline_origin == "off"
    spec, _, _ = prepare_study(study(tmp_path, grid={"distill.alpha": [0.3, 0.7]}, baseline={"setting": "alpha=0.3"}))
    assert spec.baseline.setting == "alpha=0.3" and spec.baseline.variant is None and spec.baseline_origin == "study"


def test_no_default_when_some_trial_has_no_scratch_student(tmp_path):
    from medlite.study.runner import prepare_study

    spec, _, _ = prepare_study(study(tmp_path, list={"with": {}, "without": {"distill.scratch_baseline": False}}))
    assert spec.baseline is None and spec.baseline_origin == "absent"
    spec, _, _ = prepare_study(study(tmp_path, variants=["teacher", "student_kd"]))
    assert spec.baseline is None and spec.baseline_origin == "absent"


@pytest.mark.parametrize("value, message", [
    (None, "baseline: .*empty; write `baseline: none`"),
    ("off", "baseline: .*write `baseline: none` to turn"),
    (False, "baseline: .*write `baseline: none` to turn"),
])
def test_a_bad_baseline_value_is_named(tmp_path, value, message):
    from medlite.study.schema import load_study

    with pytest.raises(UsageError, match=message):
        load_study(study(tmp_path, baseline=value))


def test_the_leakage_study_keeps_no_paired_baseline():
    """Its settings test on different images; it turns the default comparison off."""
    from medlite.study.schema import expand, load_study

    spec = load_study(ROOT / "benchmarks" / "ham10000_leakage.yaml")
    _, trials = expand(spec)
    assert all(t.recipe.distill.scratch_baseline for t in trials)  # the default would apply without the switch
    assert spec.baseline is None and spec.baseline_origin == "off"


# -- selection: among, report ----------------------------------------------------------------


def _two_settings(report: str) -> dict:
    doc = document({"student_kd": [0.80, 0.82, 0.81]})
    second = [dict(e, setting="fm") for e in doc["summary"]]
    doc["summary"] += second
    doc["selection"] = {"setting": "fm", "metric": "val_auc", "variant": "student_kd", "direction": "max",
                        "value": 0.9, "scores": {"default": 0.85, "fm": 0.9}, "overrides": {}, "report": report}
    return doc


@pytest.mark.parametrize("report, shown", [("chosen", 1), ("all", 2)])
def test_report_all_shows_every_setting_and_marks_the_choice(report, shown):
    from medlite.study.outputs import _notes, table_rows

    rows = table_rows(_two_settings(report))
    assert sum(r["AUC"] != "(not shown)" for r in rows) == shown
    assert [r["setting"] for r in rows] == ["default", "fm (chosen on val)"]
    notes = " ".join(_notes(_two_settings(report)))
    assert "among default 0.8500, fm 0.9000" in notes
    assert ("reported too (report: all)" in notes) == (report == "all")


def test_select_among_names_settings_that_exist(tmp_path):
    from medlite.errors import UsageError
    from medlite.study.runner import _select, prepare_study
    from medlite.study.schema import settings

    path = study(tmp_path, list={"a": {}, "b": {"distill.alpha": 0.3}},
                 select={"variant": "student_kd", "among": ["a", "c"]})
    spec, _, trials = prepare_study(path)
    with pytest.raises(UsageError, match="select.among: 'c' is not a setting"):
        _select(spec, settings(spec), [], trials)
    spec.select.among = ["b"]
    summary = [{"setting": s, "variant": "student_kd", "val_auc": {"mean": m}} for s, m in (("a", 0.9), ("b", 0.7))]
    assert _select(spec, settings(spec), summary, trials)["setting"] == "b"  # a is not a candidate


def test_a_rare_label_s_paired_test_drops_undefined_resamples_quietly():
    """A label with 2 positives in 40 images: some resamples draw none, so its AUC is undefined there.
    Those resamples are counted and left out; the interval comes from the rest, and nothing warns."""
    import warnings

    import numpy as np

    from medlite.study.stats import paired_auc_difference

    rng = np.random.default_rng(1)
    labels = np.zeros((40, 2), np.uint8)
    labels[:2, 0] = 1
    labels[:20, 1] = 1
    a, b = rng.random((40, 2)), rng.random((40, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = paired_auc_difference([{"group": "t", "labels": labels, "a": a, "b": b}], resamples=300, label=0)
    assert 0 < out["undefined_resamples"] < 300
    assert all(np.isfinite(out["ci"])) and out["ci"][0] <= out["ci"][1]
    assert 0 < out["p"] <= 1
