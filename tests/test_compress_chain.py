"""A declared chain end to end on real BreastMNIST: the schema's default teacher (a residual network,
`small_pooled_resnet18`), structurally pruned, then quantization-aware trained (pruned -> int8_qat).
(The built-in default recipe's teacher, `medlite_dsconv_wide`, goes through every compression method in test_pipeline.)

Tiny on purpose (32 images per split, one epoch per step); also checks that a fully reused rerun
keeps the stage timings, and that a stage's schema version invalidates its records.
"""

from __future__ import annotations

import numpy as np
import pytest

from medlite.recipe import Recipe, load_recipe

CHAIN = [
    "data.limit=32",
    "teacher.epochs=1",
    "teacher.arch=small_pooled_resnet18",  # the schema default (a residual network); breastmnist.yaml names another
    "distill.scratch_baseline=false",
    "student.arch=medlite_dsconv_tiny",
    "student.epochs=1",
    "evaluate.bootstrap=20",
    "compress.targets=[teacher]",
    "compress.methods=[]",
    "compress.chains=[[prune_structured,int8_qat]]",
    "compress.prune_structured.epochs=1",
    "compress.int8_qat.epochs=1",
    "compress.int8_qat.calibration_images=32",
    "bench.enabled=false",
]


def run(out, data_root):
    from medlite.pipeline import run_pipeline

    lines: list[str] = []
    results = run_pipeline(load_recipe("breastmnist", CHAIN), out, data_root, say=lines.append, progress=False)
    return results, lines


@pytest.fixture(scope="module")
def chain_run(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("chain")
    results, lines = run(out, data_root)
    return out, results, lines


def test_pruned_then_qat_on_the_default_residual_teacher(chain_run):
    import onnx

    out, results, _ = chain_run
    variants = {v["name"]: v for v in results["variants"]}
    assert list(variants) == ["teacher", "student_kd", "teacher_pruned", "teacher_pruned_int8_qat"]
    teacher, pruned, qat = variants["teacher"], variants["teacher_pruned"], variants["teacher_pruned_int8_qat"]
    assert teacher["arch"] == Recipe().teacher.arch == "small_pooled_resnet18"
    assert teacher["train_section"] == {"field": "teacher", "index": None}
    assert variants["student_kd"]["train_section"] == {"field": "student", "index": None}
    # lineage as data: the chain's steps, and what each fine-tune distilled from
    assert pruned["parent"] == "teacher" and qat["parent"] == "teacher_pruned"
    assert pruned["teachers"] == qat["teachers"] == ["teacher"]
    assert pruned["checkpoint"] and (out / pruned["checkpoint"]).is_file()
    assert pruned["params"] < 0.7 * teacher["params"] and pruned["macs"] < 0.7 * teacher["macs"]
    # QAT really ran on the pruned residual network, and its learned ranges are in the file
    assert qat["stage"] == "int8_qat" and qat["format"] == "onnx-int8-qdq"
    assert qat["params"] == pruned["params"] and qat["file_bytes"] < 0.4 * pruned["file_bytes"]
    assert qat["compress"]["learned_ranges"] == qat["compress"]["activation_quantizers"] > 10
    # no fallback taken (a tiny model may still be flagged as no better than chance, which is not the method's)
    assert [w for w in qat["warnings"] if not w.startswith("no better than chance")] == []
    assert len(qat["train"]["epoch_seconds"]) == 1
    ops = {n.op_type for n in onnx.load(str(out / qat["file"])).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Add"} <= ops  # the residual adds survive
    for v in variants.values():
        assert 0 <= v["metrics"]["auc"] <= 1 and v["metrics"]["n"] == 32


def test_pruned_checkpoint_reloads_at_its_pruned_widths(chain_run, data_root):
    """Tensors only (safetensors), rebuilt from the saved shapes: the same outputs as the pruned ONNX file."""
    import torch

    from medlite.data import load_dataset
    from medlite.data.preprocess import normalize
    from medlite.export.onnx import run_onnx
    from medlite.context import Context
    from medlite.runstate import RunDir
    from medlite.variant import Variant

    out, results, _ = chain_run
    recipe = load_recipe("breastmnist", CHAIN)
    ctx = Context(recipe, RunDir(out), data_root, say=lambda line: None, progress=False)
    ctx.dataset = load_dataset(recipe.data, data_root, recipe.seed)
    pruned = Variant.from_dict(next(v for v in results["variants"] if v["name"] == "teacher_pruned"))
    model = ctx.models.load(pruned).eval()
    x = normalize(ctx.dataset.splits["test"].images[:8], ctx.dataset.preprocess)
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
    assert np.allclose(got, run_onnx(out / pruned.file, x), atol=1e-4)
    assert sum(p.numel() for p in model.parameters()) == pruned.params


def test_fully_reused_rerun_keeps_stage_timings(chain_run, data_root):
    out, _, _ = chain_run
    first, _ = run(out, data_root)  # whatever earlier tests changed is redone here
    again, lines = run(out, data_root)
    made = {v["name"] for v in again["variants"]}
    assert made <= set(again["cached_stages"])
    assert {f"{name}.evaluate" for name in made} <= set(again["cached_stages"])
    stages = {k for k in first["timings"] if k not in ("data", "total")}
    assert {"teacher", "student_kd", "export", "evaluate", "compress.prune_structured", "compress.int8_qat"} <= stages
    for stage in stages:  # the seconds of the runs that made them, not 0 or missing
        assert first["timings"][stage] > 0, stage
        if stage == "explain":  # choosing the images is redone on every run; the maps themselves are reused
            assert 0 < again["timings_reused"][stage] <= again["timings"][stage], stage
            continue
        # Per-stage seconds are stored rounded to ms, so a kind summed over many stages may differ by a few ms.
        assert again["timings"][stage] == pytest.approx(first["timings"][stage], abs=0.01), stage
        assert again["timings_reused"][stage] == again["timings"][stage], stage
    assert set(again["timings_reused"]) == stages
    html = (out / "report.html").read_text()
    assert html.count("reused: measured by the run that made it") == len(stages) - 1  # all but explain
    assert html.count("of it reused from an earlier run") == 1


def test_schema_version_bump_redoes_only_that_stage(chain_run, data_root, monkeypatch):
    from medlite import stage as variant

    out, _, _ = chain_run
    monkeypatch.setitem(variant.STAGE_SCHEMAS, "evaluate", variant.STAGE_SCHEMAS["evaluate"] + 100)
    results, _ = run(out, data_root)
    cached = set(results["cached_stages"])
    assert not any(stage.endswith(".evaluate") for stage in cached)
    assert {"teacher", "student_kd", "teacher_pruned", "teacher_pruned_int8_qat"} <= cached


def test_dense_only_dynamic_int8_is_renamed_and_warned(chain_run, data_root, monkeypatch):
    """A 'dynamic int8' conv net whose convolutions stayed float does not keep the plain name."""
    import onnxruntime.quantization as ortq

    from medlite.compress import stages
    from medlite.data import load_dataset
    from medlite.context import Context
    from medlite.runstate import RunDir
    from medlite.variant import Variant

    real = ortq.quantize_dynamic

    def no_conv_integer(*args, **kwargs):
        if "Conv" in kwargs.get("op_types_to_quantize", []):
            raise RuntimeError("ConvInteger is not implemented (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(ortq, "quantize_dynamic", no_conv_integer)
    out, results, _ = chain_run
    recipe = load_recipe("breastmnist", CHAIN)
    said: list[str] = []
    ctx = Context(recipe, RunDir(out), data_root, say=said.append, progress=False)
    ctx.dataset = load_dataset(recipe.data, data_root, recipe.seed)
    for v in results["variants"]:
        ctx.add(Variant.from_dict(v))
    made = ctx.ledger.run_stage(stages.dynamic(ctx, ctx.variants["student_kd"]))
    assert made.name == "student_kd_int8_dynamic_dense" and made.file == "models/student_kd_int8_dynamic_dense.onnx"
    assert (out / made.file).is_file() and not (out / "models" / "student_kd_int8_dynamic.onnx").exists()
    assert made.compress["dense_only"] and made.warnings
    assert any("warning: only the dense layers are int8" in line for line in said)
    # reused as it was made: same name, same warning
    again = ctx.ledger.run_stage(stages.dynamic(ctx, ctx.variants["student_kd"]))
    assert again.name == made.name and again.warnings == made.warnings
