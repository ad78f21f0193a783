"""Studies: schema validation, k-fold splits, statistics against hand computations, and a tiny
real study end to end (shared teacher, paired comparisons, selection, outputs, kill -9 resume)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from medlite.errors import UsageError

SRC = Path(__file__).resolve().parents[1] / "src"

TINY = {
    "data.limit": 40,
    "teacher.arch": "medlite_cnn_tiny",
    "teacher.epochs": 1,
    "student.arch": "medlite_cnn_tiny",
    "student.epochs": 1,
    "compress.methods": [],
    "bench.enabled": False,
    "explain.enabled": False,  # the trials' explanations are nothing the study reads
    "evaluate.bootstrap": 0,
}


def write_study(tmp_path: Path, name: str = "s.yaml", **spec) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"recipe": "breastmnist", "set": dict(TINY), **spec}, sort_keys=False))
    return path


# -- statistics -------------------------------------------------------------------------


def test_holm_matches_a_hand_computed_example():
    from medlite.study.stats import holm

    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    # An untestable comparison (NaN) stays NaN and does not enlarge the family.
    assert holm([0.01, float("nan"), 0.04]) == pytest.approx([0.02, float("nan"), 0.04], nan_ok=True)


def test_describe_is_the_student_t_interval():
    from medlite.study.stats import describe

    out = describe([0.80, 0.82, 0.79])
    mean, sd = 0.80333333, 0.01527525
    half = 4.302652729911275 * sd / np.sqrt(3)  # t_{0.975, 2}
    assert out["mean"] == pytest.approx(mean)
    assert out["std"] == pytest.approx(sd, rel=1e-6)
    assert out["ci"] == pytest.approx([mean - half, mean + half], rel=1e-6)
    assert describe([0.7])["ci"] is None


def test_batched_auc_matches_scikit_learn():
    from sklearn.metrics import roc_auc_score

    from medlite.study.stats import auc_rows

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    p = rng.random(80)
    probs = np.stack([1 - p, p], 1)
    idx = rng.integers(0, 80, (6, 80))
    expected = [roc_auc_score(y[i], p[i]) for i in idx]
    assert auc_rows(probs, y, idx) == pytest.approx(expected)


def test_paired_bootstrap_detects_a_better_model_and_not_an_identical_one():
    from medlite.study.stats import paired_auc_difference

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 150)
    good = np.clip(0.5 + 0.35 * (2 * y - 1) + rng.normal(0, 0.2, 150), 0, 1)
    weak = np.clip(0.5 + 0.05 * (2 * y - 1) + rng.normal(0, 0.2, 150), 0, 1)
    as_probs = lambda s: np.stack([1 - s, s], 1)  # noqa: E731
    better = paired_auc_difference([{"group": 0, "labels": y, "a": as_probs(good), "b": as_probs(weak)}], resamples=500)
    assert better["delta_auc"] > 0.2 and better["ci"][0] > 0 and better["p"] < 0.01
    same = paired_auc_difference([{"group": 0, "labels": y, "a": as_probs(weak), "b": as_probs(weak)}], resamples=500)
    assert same["delta_auc"] == 0 and same["p"] == 1.0


def test_paired_runs_test_matches_the_t_distribution_in_closed_form():
    """With 3 runs (2 degrees of freedom) the t CDF is 1/2 + t / (2 sqrt(2 + t^2)), so the two-sided
    p-value is 1 - |t| / sqrt(2 + t^2): a reference that does not go through scipy."""
    from medlite.study.stats import paired_runs_test

    a, b = [0.91, 0.93, 0.90], [0.89, 0.90, 0.90]
    d = np.subtract(a, b)
    sd = np.sqrt(((d - d.mean()) ** 2).sum() / 2)

    def p_two_sided(t: float) -> float:
        return 1 - abs(t) / np.sqrt(2 + t * t)

    plain = paired_runs_test(a, b)
    assert plain["n"] == 3 and plain["mean_delta"] == pytest.approx(d.mean())
    assert plain["p"] == pytest.approx(p_two_sided(d.mean() / (sd / np.sqrt(3))))
    # 3 runs of 3-fold CV: variance inflated by (1/3 + 1/(3-1)) (Nadeau & Bengio), a larger p
    corrected = paired_runs_test(a, b, folds=3)
    assert corrected["p"] == pytest.approx(p_two_sided(d.mean() / np.sqrt((1 / 3 + 1 / 2) * sd * sd)))
    assert corrected["p"] > plain["p"] and "Nadeau" in corrected["test"]
    one = paired_runs_test([0.9], [0.8])
    assert np.isnan(one["p"]) and "fewer than 2" in one["reason"]
    assert paired_runs_test([0.9, 0.8], [0.9, 0.8])["p"] == 1.0
    assert np.isnan(paired_runs_test([0.9, 0.8], [0.8, 0.7])["p"])  # constant non-zero: no scale, no test


def test_bootstrap_ci_agrees_with_the_normal_approximation():
    from medlite.evaluate.metrics import bootstrap_ci

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 400)
    probs = np.stack([1 - labels * 0.8 - 0.1, labels * 0.8 + 0.1], 1)
    flip = rng.random(400) < 0.2  # about 80% accuracy
    probs[flip] = probs[flip][:, ::-1]
    acc = (probs.argmax(1) == labels).mean()
    half = 1.96 * np.sqrt(acc * (1 - acc) / 400)
    lo, hi = bootstrap_ci(probs, labels, 2000, 0.95, seed=0)["accuracy"]
    assert lo == pytest.approx(acc - half, abs=0.01) and hi == pytest.approx(acc + half, abs=0.01)


# -- schema -------------------------------------------------------------------------------


def test_unknown_study_key_is_named(tmp_path):
    from medlite.study.schema import load_study

    path = write_study(tmp_path, seedz=[0])
    with pytest.raises(UsageError, match="unknown study key 'seedz'"):
        load_study(path)


def test_unknown_recipe_key_in_a_grid_is_named(tmp_path):
    from medlite.study.runner import prepare_study

    with pytest.raises(UsageError, match=r"grid key 'distill\.alphaa'"):
        prepare_study(write_study(tmp_path, grid={"distill.alphaa": [0.3]}))
    with pytest.raises(UsageError, match=r"distill\.alpha.*less than or equal to 1"):
        prepare_study(write_study(tmp_path, grid={"distill.alpha": [0.3, 1.5]}))
    with pytest.raises(UsageError, match="baseline.setting 'nope'"):
        prepare_study(write_study(tmp_path, grid={"distill.alpha": [0.3]}, baseline={"setting": "nope"}))
    with pytest.raises(UsageError, match="seeds"):
        prepare_study(write_study(tmp_path, grid={"seed": [1, 2]}))


def test_cli_bad_study_exits_2_with_one_line(tmp_path):
    path = write_study(tmp_path, grid={"teacher.epochz": [1]})
    proc = subprocess.run([sys.executable, "-m", "medlite.cli", "study", str(path), "--dry-run"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(SRC)}, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "teacher.epochz" in lines[0]


def test_expand_grid_list_seeds_folds(tmp_path):
    from medlite.study.runner import dry_run_lines, prepare_study

    path = write_study(tmp_path, grid={"distill.temperature": [2, 4], "distill.alpha": [0.5]},
                       list={"cnn": {"student.arch": "medlite_cnn_tiny"}, "ds": {"student.arch": "medlite_dsconv_tiny"}},
                       seeds=2, folds=3)
    spec, settings, trials = prepare_study(path)
    assert len(settings) == 4 and len(trials) == 4 * 2 * 3
    t = trials[0]
    assert t.setting == "cnn,temperature=2,alpha=0.5"
    assert t.recipe.data.fold.k == 3 and t.recipe.distill.temperature == 2 and t.recipe.data.limit == 40
    assert {(x.seed, x.fold) for x in trials if x.setting == t.setting} == {(s, f) for s in (0, 1) for f in range(3)}
    lines = dry_run_lines(spec, trials, tmp_path / "out")
    assert len(lines) == 1 + 1 + len(trials) and not (tmp_path / "out").exists()


# -- k-fold ---------------------------------------------------------------------------


def test_kfold_over_train_val_keeps_the_test_split(data_root):
    from medlite.data import load_dataset
    from medlite.recipe import load_recipe

    base = load_dataset(load_recipe("breastmnist").data, data_root, 0)
    pooled = np.concatenate([base.splits["train"].labels, base.splits["val"].labels])
    vals = []
    for index in range(3):
        d = load_dataset(load_recipe("breastmnist", [f"data.fold={{k: 3, index: {index}}}"]).data, data_root, 7)
        assert np.array_equal(d.splits["test"].images, base.splits["test"].images)
        assert len(d.splits["train"]) + len(d.splits["val"]) == len(pooled)
        vals.append(len(d.splits["val"]))
        assert "held out" in d.split_origin
        # stratified: the class share of each validation fold is that of the pool (within rounding)
        assert abs(d.splits["val"].labels.mean() - pooled.mean()) < 0.02
    assert sum(vals) == len(pooled)


def test_kfold_on_a_flat_folder_partitions_every_image_into_test_parts(tmp_path):
    from PIL import Image

    from medlite.data import load_dataset
    from medlite.recipe import load_recipe

    rng = np.random.default_rng(0)
    for cls, n in (("a", 12), ("b", 9)):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    seen = []
    for index in range(3):
        recipe = load_recipe("busi", [f"data.root={tmp_path / 'imgs'}", "data.image_size=8", f"data.fold={{k: 3, index: {index}}}"])
        d = load_dataset(recipe.data, tmp_path, 0)
        assert "as test" in d.split_origin
        assert len(d.splits["train"]) + len(d.splits["val"]) + len(d.splits["test"]) == 21
        seen += [img.tobytes() for img in d.splits["test"].images]
    assert len(seen) == 21 and len(set(seen)) == 21  # each image is in exactly one test part


def test_fold_index_must_be_below_k():
    from medlite.recipe import load_recipe

    with pytest.raises(UsageError, match="data.fold"):
        load_recipe("breastmnist", ["data.fold={k: 3, index: 3}"])


# -- end to end -----------------------------------------------------------------------------


def _store_entries(out: Path, stage: str) -> list[str]:
    return sorted(p.name for p in (out / "store").iterdir() if p.name.startswith(f"{stage}-"))


def test_tiny_study_end_to_end(tmp_path, data_root):
    """alpha grid x 2 seeds: each seed's teacher trained once, paired comparisons, selection on validation."""
    from medlite.study.runner import run_study

    path = write_study(tmp_path, grid={"distill.alpha": [0.3, 0.7]}, seeds=[0, 1],
                       variants=["student_kd", "student_scratch"], baseline={"variant": "student_scratch"},
                       select={"metric": "val_auc", "over": ["grid"]}, stats={"resamples": 200})
    out = tmp_path / "study"
    lines: list[str] = []
    doc = run_study(path, out, data_root, workers=2, say=lines.append)
    assert doc["trials_finished"] == 4 and not doc["failed"]
    # each seed's teacher and scratch student made once, then reused from the store
    assert len(_store_entries(out, "teacher")) == 2 and len(_store_entries(out, "student_scratch")) == 2
    assert len(_store_entries(out, "student_kd")) == 4
    markers = [json.loads(p.read_text()) for p in sorted((out / "trials").glob("*/trial.json"))]
    assert sum(any(h.startswith("teacher-") for h in m["from_store"]) for m in markers) == 2
    # the summary equals a recomputation from the trials' results.json
    kd = [v for p in sorted((out / "trials").glob("alpha=0.3__*/results.json"))
          for v in json.loads(p.read_text())["variants"] if v["name"] == "student_kd"]
    entry = next(e for e in doc["summary"] if e["setting"] == "alpha=0.3" and e["variant"] == "student_kd")
    assert entry["auc"]["mean"] == pytest.approx(np.mean([v["metrics"]["auc"] for v in kd]))
    # selection: by validation only; the chosen setting is a ready recipe; comparisons only for it
    sel = doc["selection"]
    def val_auc(p: Path) -> float:
        return next(v for v in json.loads(p.read_text())["variants"] if v["name"] == "student_kd")["val_metrics"]["auc"]

    val = {s: np.mean([val_auc(p) for p in (out / "trials").glob(f"{s}__*/results.json")]) for s in ("alpha=0.3", "alpha=0.7")}
    assert sel["setting"] == max(val, key=val.get)
    from medlite.recipe import load_recipe

    chosen = load_recipe(str(out / "selected.yaml"))
    assert chosen.distill.alpha == sel["overrides"]["distill.alpha"] and chosen.data.limit == 40
    assert [c["setting"] for c in doc["comparisons"]] == [sel["setting"]]
    c = doc["comparisons"][0]
    assert c["baseline_variant"] == "student_scratch" and 0 <= c["p_holm"] <= 1 and c["pairs"] == 2
    # the runs-level test pairs the two seeds' AUCs of the chosen setting with the scratch student's
    def test_auc(setting: str, variant: str, seed: int) -> float:
        results = json.loads((out / "trials" / f"{setting}__seed{seed}" / "results.json").read_text())
        return next(v for v in results["variants"] if v["name"] == variant)["metrics"]["auc"]

    deltas = [test_auc(sel["setting"], "student_kd", s) - test_auc(sel["setting"], "student_scratch", s) for s in (0, 1)]
    assert c["runs"]["n"] == 2 and c["runs"]["mean_delta"] == pytest.approx(np.mean(deltas))
    assert "p runs (Holm)" in (out / "study.md").read_text()
    md = (out / "study.md").read_text()
    assert "(not shown)" in md and "ΔAUC" in md
    # 2 seeds: the runs, not a t-interval (12.7 standard errors wide, past [0, 1])
    assert "runs: " in md and "too few runs for an interval (n < 3)" in md
    kd_auc = next(e for e in doc["summary"] if e["setting"] == sel["setting"] and e["variant"] == "student_kd")["auc"]
    assert kd_auc["ci"] is None and len(kd_auc["runs"]) == 2
    for name in ("study.json", "study.csv", "study.tex", "figures/auc_strip.png", "figures/auc_strip.svg",
                 "figures/pareto.png", "figures/pareto.svg"):
        assert (out / name).is_file(), name
    # predictions CSV per variant (the paired statistics read it)
    from medlite.evaluate.predictions import read_predictions

    ids, labels, probs, names = read_predictions(next((out / "trials").glob("*seed0/predictions/student_kd.csv")))
    assert probs.shape == (len(ids), 2) and np.allclose(probs.sum(1), 1, atol=1e-6)
    # without selection every setting is compared; the teacher shared by both alphas is one comparison
    from medlite.study.runner import prepare_study, summarise

    spec, all_settings, trials = prepare_study(path)
    spec.select, spec.variants = None, None
    full = summarise(spec, all_settings, trials, out)
    teacher = [c for c in full["comparisons"] if c["variant"] == "teacher"]
    assert len(teacher) == 2 and teacher[1]["duplicate_of"] == teacher[0]["setting"]
    assert teacher[1]["p_holm"] == teacher[0]["p_holm"] and full["comparisons"][0]["family_size"] == 3
    # the same study without `baseline:`: every trial has student_scratch, so it is the baseline
    default = write_study(tmp_path, "default.yaml", grid={"distill.alpha": [0.3, 0.7]}, seeds=[0, 1],
                          variants=["student_kd", "student_scratch"], stats={"resamples": 200})
    spec, all_settings, trials = prepare_study(default)
    by_default = summarise(spec, all_settings, trials, out)
    assert [(c["setting"], c["variant"], c["baseline_setting"], c["baseline_variant"]) for c in by_default["comparisons"]] \
        == [(s, "student_kd", s, "student_scratch") for s in ("alpha=0.3", "alpha=0.7")]
    from medlite.study.outputs import _notes

    assert any("student_scratch of each setting (default: every trial has it" in n for n in _notes(by_default))
    # a rerun does nothing
    lines.clear()
    again = run_study(path, out, data_root, workers=2, say=lines.append)
    assert "4 already done, running 0" in lines[0]
    assert again["summary"] == doc["summary"]
    assert [i["trials_run"] for i in again["invocations"]] == [4, 0]
    assert again["invocations"][0]["wall_seconds"] == doc["invocations"][0]["wall_seconds"] > 0


@pytest.mark.slow
def test_killed_study_resumes_only_the_missing_trials(tmp_path, data_root):
    path = write_study(tmp_path, grid={"distill.alpha": [0.2, 0.4, 0.6]}, seeds=[0],
                       set={**TINY, "distill.scratch_baseline": False})
    out = tmp_path / "study"
    env = {**os.environ, "PYTHONPATH": str(SRC), "MEDLITE_DATA_ROOT": str(data_root)}
    cmd = [sys.executable, "-m", "medlite.cli", "study", str(path), "--out", str(out), "--workers", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not list((out / "trials").glob("*/trial.json")):
            time.sleep(0.5)
        assert list((out / "trials").glob("*/trial.json")), "no trial finished in time"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the study and its worker, as kill -9 would
        proc.wait()
    first = {p.parent.name: p.stat().st_mtime_ns for p in (out / "trials").glob("*/trial.json")}
    assert 1 <= len(first) < 3
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{len(first)} already done, running {3 - len(first)}" in rerun.stdout
    after = {p.parent.name: p.stat().st_mtime_ns for p in (out / "trials").glob("*/trial.json")}
    assert len(after) == 3 and all(after[name] == mtime for name, mtime in first.items())
    doc = json.loads((out / "study.json").read_text())
    assert doc["trials_finished"] == 3 and len(_store_entries(out, "teacher")) == 1


def _kill_a_trials_node(cluster, trials: Path, stop) -> list[int]:
    """Watcher: once a trial has started on the worker node, SIGKILL that node. Never the head: it
    holds the GCS, and the driver attaches to it (Ray prefers the head among nodes on one host)."""
    while not stop.is_set():
        for path in trials.glob("*/attempts.jsonl"):
            for line in path.read_text().splitlines():
                if cluster.node_of(json.loads(line)["pid"]) == 1:
                    cluster.kill_node(1)
                    return [1]
        time.sleep(0.1)
    return []


@pytest.mark.slow
def test_two_node_ray_study_equals_the_local_one_and_survives_a_dead_node(tmp_path, data_root):
    """Two trials on a two-node loopback cluster (one CPU each, so one trial per node); the worker
    node is killed mid-trial: Ray reruns that trial on the head, the run directory resumes,
    study.json records the retry, and the table equals the local executor's. The Ray driver is
    `medlite study --ray-address` in a subprocess: Ray's threads never enter this process, so a
    later test's DDP fork cannot inherit them."""
    pytest.importorskip("ray")
    import shutil
    import tempfile
    import threading

    from raycluster import RayCluster

    from medlite.study.runner import run_study

    path = write_study(tmp_path, grid={"distill.alpha": [0.5]}, seeds=[0, 1],
                       set={**TINY, "distill.scratch_baseline": False})
    # Faster death detection than Ray's default (a missed health check every 3 s, 5 times over).
    env = {**os.environ, "PYTHONPATH": str(SRC), "MEDLITE_DATA_ROOT": str(data_root), "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "3"}
    env.pop("RAY_ADDRESS", None)
    short = Path(tempfile.mkdtemp(prefix="mlray", dir="/tmp"))  # Ray's socket paths must stay under 108 bytes
    cluster = RayCluster(short, env, nodes=2, cpus=1)
    # The cluster starts (mostly waiting on `ray start`) while the local reference trains here.
    starter = threading.Thread(target=cluster.start)
    starter.start()
    try:
        # Two worker processes, one torch thread per trial like each Ray task: the same floats. (Not in
        # this process: after a pipeline ran here with 1 thread, a later test's DDP fork deadlocked.)
        local = run_study(path, tmp_path / "local", data_root, workers=2, say=lambda _: None)
        starter.join()
        stop, killed = threading.Event(), []
        watcher = threading.Thread(target=lambda: killed.extend(_kill_a_trials_node(cluster, tmp_path / "ray" / "trials", stop)))
        watcher.start()
        try:
            proc = subprocess.run([sys.executable, "-m", "medlite.cli", "study", str(path), "--out", str(tmp_path / "ray"),
                                   "--executor", "ray", "--ray-address", cluster.address], env=env, capture_output=True,
                                  text=True, timeout=600)
        finally:
            stop.set()
            watcher.join()
    finally:
        starter.join()
        cluster.stop()
        shutil.rmtree(short, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert killed == [1]
    remote = json.loads((tmp_path / "ray" / "study.json").read_text())
    assert not remote["failed"]
    info = remote["invocations"][-1]["ray"]
    assert info["nodes"] == 2 and info["address"] == cluster.address and info["address_from"] == "--ray-address"
    (retried,) = info["retried"]
    assert retried["dir"].startswith("trials/") and len(retried["attempts"]) == 2
    assert retried["attempts"][0]["node"] != retried["attempts"][1]["node"]  # rerun on the surviving node
    log = (tmp_path / "ray" / retried["dir"] / "trial.log").read_text()
    assert log.count("trial start on") == 2
    strip = lambda doc: [{k: e[k] for k in e if k not in ("latency_ms",)} for e in doc["summary"]]  # noqa: E731
    assert strip(remote) == strip(local)
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def test_ray_address_that_does_not_answer_exits_2_in_one_line(tmp_path, data_root):
    """A closed port on 127.0.0.1, given as --ray-address or in $RAY_ADDRESS: exit 2, one line, the
    study directory untouched (Ray itself would retry for minutes)."""
    pytest.importorskip("ray")
    from raycluster import free_port

    path = write_study(tmp_path)
    address = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "PYTHONPATH": str(SRC), "MEDLITE_DATA_ROOT": str(data_root)}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "medlite.cli", "study", str(path), "--out", str(tmp_path / "s"), "--executor", "ray"]
    for extra, extra_env, source in ((["--ray-address", address], {}, "--ray-address"),
                                     ([], {"RAY_ADDRESS": address}, "RAY_ADDRESS")):
        proc = subprocess.run(cmd + extra, env={**env, **extra_env}, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr[-2000:]
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and f"{source} {address}: no Ray cluster answers there" in lines[0]
        assert not (tmp_path / "s").exists()
    from medlite.study.runner import run_study

    with pytest.raises(UsageError, match="--ray-address 127.0.0.1:6379: only with --executor ray"):
        run_study(path, tmp_path / "s", data_root, address="127.0.0.1:6379")  # not silently ignored
    assert not (tmp_path / "s").exists()


def test_a_node_that_cannot_reach_the_study_storage_is_named():
    from medlite.study.executors import probe_storage, storage_error

    ok = {"host": "a", "problems": []}
    assert storage_error({"n1": ok, "n2": ok}) is None
    bad = probe_storage("/nonexistent/.medlite-probe-x", "x", {"study": "/nonexistent", "store": "/proc/store",
                                                                "trials": "/proc/trials", "data_root": "/nonexistent/d"})
    assert len(bad["problems"]) == 4
    error = storage_error({"n1": ok, "abcdef0123456789": bad})
    assert error is not None and error.exit_code == 2
    assert str(error).startswith(f"--executor ray: node {bad['host']} (abcdef012345): the study directory /nonexistent")
    assert "storage all nodes share" in str(error) and "\n" not in str(error)


def test_tune_picks_by_validation_and_trains_the_teacher_once(tmp_path, data_root):
    pytest.importorskip("optuna")
    from medlite.recipe import load_recipe
    from medlite.study.tune import tune

    overrides = [f"{k}={json.dumps(v)}" for k, v in TINY.items()]
    doc = tune("breastmnist", tmp_path / "tune", data_root, overrides=overrides, budget_s=300, max_trials=2,
               space={"distill.alpha": ("float", 0.1, 0.9), "distill.temperature": ("cat", [2.0, 4.0])}, say=lambda _: None)
    assert len(doc["trials"]) == 2
    assert doc["best"]["val_auc"] == max(t["val_auc"] for t in doc["trials"])
    assert len(_store_entries(tmp_path / "tune", "teacher")) == 1
    chosen = load_recipe(str(tmp_path / "tune" / "selected.yaml"))
    assert chosen.distill.alpha == pytest.approx(doc["best"]["params"]["distill.alpha"])
    assert chosen.data.limit == 40 and set(doc["best_test_metrics"]) >= {"auc", "accuracy"}


def test_strip_plot_draws_a_shared_variant_once():
    from medlite.study.outputs import _shared_once

    keys = [("a", "teacher"), ("a", "kd"), ("b", "teacher"), ("b", "kd")]
    values = [[0.9, 0.8], [0.7, 0.6], [0.9, 0.8], [0.75, 0.6]]
    assert _shared_once(keys, values) == [(0, "teacher (all settings)"), (1, "a / kd"), (3, "b / kd")]


def test_latex_table_escapes_every_special_character():
    """Text-mode LaTeX prints '<' as '¡' and breaks on '_', '%', '&': the table escapes them all."""
    from medlite.study.outputs import _latex_escape

    assert _latex_escape("a_b 50% R&D <0.001† -0.03* ±Δ") == (
        r"a\_b 50\% R\&D $<$0.001$^{\dagger}$ -0.03$^{*}$ $\pm$$\Delta$")


def test_fsspec_stage_store_counts_an_entry_only_once_its_record_is_written(tmp_path, monkeypatch):
    """The store at an fsspec URL (here file://, the same code as s3:// or gs://): files first, record
    last; a damaged file is never taken; no fsspec, or an unknown protocol: one-line refusals."""
    pytest.importorskip("fsspec")
    from medlite.runstate import sha256
    from medlite.stagestore import FsspecStore, open_store

    store = open_store(f"file://{tmp_path / 'remote'}")
    assert isinstance(store, FsspecStore)
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "models").mkdir(parents=True)
    (a / "models" / "teacher.pt").write_bytes(b"weights")
    record = {"key": "k1", "outputs": {"models/teacher.pt": sha256(a / "models" / "teacher.pt")}, "facts": {"auc": 0.9}}
    assert store.fetch("teacher", "k1", b) is None
    entry = store.entry("teacher", "k1")
    (tmp_path / "remote" / entry / "files" / "models").mkdir(parents=True)
    (tmp_path / "remote" / entry / "files" / "models" / "teacher.pt").write_bytes(b"weights")
    assert store.fetch("teacher", "k1", b) is None  # files without a record: a publisher that died
    store.publish("teacher", "k1", a, record)
    assert store.published == [entry]
    got = open_store(f"file://{tmp_path / 'remote'}").fetch("teacher", "k1", b)
    assert got["facts"] == {"auc": 0.9} and (b / "models" / "teacher.pt").read_bytes() == b"weights"
    (tmp_path / "remote" / entry / "files" / "models" / "teacher.pt").write_bytes(b"damaged")
    c = tmp_path / "c"
    assert store.fetch("teacher", "k1", c) is None and not (c / "models" / "teacher.pt").exists()
    store.publish("teacher.evaluate", "k2", a, {"key": "k2", "outputs": {}, "facts": {"n": 3}})  # facts only
    assert store.fetch("teacher.evaluate", "k2", c)["facts"] == {"n": 3}

    with pytest.raises(UsageError, match="nosuchfs://x: .*"):
        open_store("nosuchfs://x")
    monkeypatch.setitem(sys.modules, "fsspec", None)
    with pytest.raises(UsageError, match=r"--store s3://b/s: a stage store URL needs fsspec"):
        open_store("s3://b/s")
