"""The Stage type and the typed records: one cache protocol, strict records, dry-run plans."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medlite.runstate import RunDir
from medlite.stage import Stage, StageLedger
from medlite.variant import RECORD_VERSION, RecordError, TrainSection, Variant, lineage, trained_root


def _run(tmp_path: Path) -> RunDir:
    run = RunDir(tmp_path / "run")
    run.open()
    return run


def _file_stage(run: RunDir, calls: list, *, config=1, inputs=()) -> Stage[dict]:
    out = run.models / "thing.txt"

    def compute() -> dict:
        calls.append(1)
        out.write_text(f"made with {config}")
        return {"file": run.rel(out), "value": config}

    return Stage(name="thing", kind="export", inputs=list(inputs), config=config, outputs=[out], compute=compute,
                 emit=lambda facts: facts, plan=lambda: {"planned": True})


def test_a_stage_is_computed_once_then_reused_with_its_seconds(tmp_path):
    run = _run(tmp_path)
    calls: list = []
    first = StageLedger(run, say=lambda _: None)
    assert first.run_stage(_file_stage(run, calls)) == {"file": "models/thing.txt", "value": 1}
    assert calls == [1] and first.cached_stages == [] and first.timings["export"] >= 0
    again = StageLedger(run, say=lambda _: None)
    assert again.run_stage(_file_stage(run, calls))["value"] == 1
    assert calls == [1] and again.cached_stages == ["thing"]
    assert again.reused_timings["export"] == again.timings["export"]
    record = json.loads((run.stages / "thing.json").read_text())
    assert set(record) == {"key", "outputs", "facts"} and "_timing" in record["facts"]
    run.close()


def test_a_changed_config_or_damaged_output_redoes_the_stage(tmp_path):
    run = _run(tmp_path)
    calls: list = []
    StageLedger(run, say=lambda _: None).run_stage(_file_stage(run, calls))
    StageLedger(run, say=lambda _: None).run_stage(_file_stage(run, calls, config=2))
    assert calls == [1, 1]
    (run.models / "thing.txt").write_text("tampered")
    ledger = StageLedger(run, say=lambda _: None)
    ledger.run_stage(_file_stage(run, calls, config=2))
    assert calls == [1, 1, 1] and ledger.cached_stages == []
    run.close()


def test_an_input_variants_artifact_keys_the_stage(tmp_path):
    run = _run(tmp_path)
    calls: list = []
    parent_file = run.models / "parent.onnx"
    parent_file.write_bytes(b"one")
    parent = Variant(name="p", parent=None, stage="train", arch="a", file="models/parent.onnx")
    StageLedger(run, say=lambda _: None).run_stage(_file_stage(run, calls, inputs=[parent]))
    StageLedger(run, say=lambda _: None).run_stage(_file_stage(run, calls, inputs=[parent]))
    parent_file.write_bytes(b"two")  # the parent changed: everything it feeds is redone
    StageLedger(run, say=lambda _: None).run_stage(_file_stage(run, calls, inputs=[parent]))
    assert calls == [1, 1]
    run.close()


def test_a_dry_run_computes_and_writes_nothing(tmp_path):
    run = _run(tmp_path)
    calls: list = []
    planning = StageLedger(run, say=lambda _: None, planning=True)
    assert planning.run_stage(_file_stage(run, calls)) == {"planned": True}
    assert calls == [] and not list(run.stages.iterdir()) and [p.action for p in planning.plan] == ["run"]
    StageLedger(run, say=lambda _: None).run_stage(_file_stage(run, calls))
    planning = StageLedger(run, say=lambda _: None, planning=True)
    assert planning.run_stage(_file_stage(run, calls))["value"] == 1
    assert calls == [1] and [p.action for p in planning.plan] == ["reuse"]
    # a planned parent (no artifact yet) plans everything downstream
    planned = Variant(name="p", parent=None, stage="train", arch="a", planned=True)
    planning.run_stage(_file_stage(run, calls, inputs=[planned]))
    assert planning.plan[-1].action == "run" and planning.plan[-1].inputs == ["p"]
    run.close()


def test_variant_records_round_trip_and_refuse_unknown_keys():
    v = Variant(name="student_kd", parent="teacher", stage="distill", arch="a", teachers=["teacher"],
                train_section=TrainSection("teachers", 1), metrics={"auc": 0.9},
                prediction={"predictions": "predictions/student_kd.csv", "operating_point": {"threshold": 0.3}})
    assert Variant.from_dict(v.to_record()) == v
    assert Variant.from_dict(v.to_dict()) == v  # the results.json form: predictions inside metrics
    assert v.to_dict()["metrics"] == {"auc": 0.9, "predictions": "predictions/student_kd.csv",
                                      "operating_point": {"threshold": 0.3}}
    assert v.to_record()["record_version"] == RECORD_VERSION
    with pytest.raises(RecordError, match="unknown key 'colour'"):
        Variant.from_dict({**v.to_record(), "colour": "red"})
    with pytest.raises(RecordError, match="newer"):
        Variant.from_dict({**v.to_record(), "record_version": RECORD_VERSION + 1})


def test_an_old_record_is_migrated_not_dropped():
    old = {"name": "assistant_2", "parent": "assistant_1", "stage": "distill", "arch": "a",
           "train_section": "assistants.1", "metrics": {"auc": 0.8, "predictions": "p.csv"}}
    v = Variant.from_dict(old)
    assert v.train_section == TrainSection("assistants", 1) and str(v.train_section) == "assistants[1]"
    assert v.metrics == {"auc": 0.8} and v.prediction == {"predictions": "p.csv"}


def test_train_section_resolves_into_the_recipe():
    from medlite.recipe import Recipe

    recipe = Recipe.model_validate({"teachers": ["medlite_cnn_tiny", "medlite_dsconv"]})
    assert TrainSection("teachers", 1).resolve(recipe).arch == "medlite_dsconv"
    assert TrainSection("student").resolve(recipe) is recipe.student


def test_lineage_and_trained_root_follow_data_not_names():
    t = Variant(name="x", parent=None, stage="train", arch="a", train_section=TrainSection("teacher"))
    p = Variant(name="y", parent="x", stage="prune_structured", arch="a")
    q = Variant(name="z", parent="y", stage="int8_static", arch="a")
    variants = {v.name: v for v in (t, p, q)}
    assert trained_root(q, variants) is t and lineage(q, variants) == ["y", "x"]


def test_explain_runs_a_variant_in_its_own_runtime(tmp_path, monkeypatch):
    """Issue 15: LiteRT variants were explained through ONNX Runtime. The predictor opens the file
    through the runtime seam with the variant's runtime."""
    from medlite import runtime
    from medlite.explain import stage as explain_stage

    opened = []

    class FakeArtifact:
        def probabilities(self, x):
            return np.full((len(x), 2), 0.5)

    monkeypatch.setattr(runtime, "open_artifact", lambda path, runtime=None, threads=0: opened.append(runtime) or FakeArtifact())
    predict = explain_stage.deployed_predictor(tmp_path / "m.tflite", "litert")
    probs = predict(np.zeros((3, 1, 8, 8), np.float32))
    assert opened == ["litert"] and probs.shape == (3, 2) and np.allclose(probs, 0.5)
