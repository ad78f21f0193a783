"""Hybrid two-backbone models (issue 19 item 2): `hybrid(a,b)` / `hybrid_gated(a,b)` build and run at
28 px, expose both backbones' stages as taps, export to ONNX and int8 with the file's probabilities
close to PyTorch's, prune where the backbones allow it (and refuse in one line where not), explain
through one backbone, and run end to end on BreastMNIST with multi-stage distillation."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from medlite.errors import UsageError
from medlite.models import check_arch, count_params, create
from medlite.models.taps import FeatureTaps, stage_paths

TINY = "hybrid(medlite_cnn_tiny,medlite_dsconv_tiny)"


def _seeded(arch: str, size: int = 28, classes: int = 3):
    torch.manual_seed(0)
    return create(arch, classes, 1, size).eval()


@pytest.mark.parametrize("kind", ["hybrid", "hybrid_gated"])
def test_builds_and_runs_at_28_px_with_one_head_over_both_backbones(kind):
    arch = f"{kind}(medlite_cnn_tiny,medlite_dsconv_tiny)"
    model = _seeded(arch)
    with torch.no_grad():
        out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 3)
    cnn, ds = (create(n, 3, 1, 28) for n in ("medlite_cnn_tiny", "medlite_dsconv_tiny"))
    heads = [sum(p.numel() for p in m.head.parameters()) for m in (cnn, ds)]  # taken off in the hybrid
    backbones = count_params(cnn) + count_params(ds) - sum(heads)
    width = 48 + 128  # the two backbones' pooled widths
    fusion = width * 3 + 3 if kind == "hybrid" else (48 * 48 + 48) + (128 * 48 + 48) + (width * 48 + 48) + 48 * 3 + 3
    assert count_params(model) == backbones + fusion


def test_concat_head_is_one_linear_map_over_the_concatenated_features():
    model = _seeded(TINY)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        joined = model.forward_features(x)
        weight = torch.cat([model.head[0].weight, model.head[1].weight], dim=1)
        assert torch.allclose(model(x), joined @ weight.T + model.head[0].bias, atol=1e-5)


def test_taps_cover_both_backbones_and_multistage_fuses_them():
    model = _seeded(TINY)
    paths = stage_paths(model)
    assert paths == [f"backbones.0.stages.{i}" for i in range(3)] + [f"backbones.1.stages.{i}" for i in range(3)]
    taps = FeatureTaps(model, paths)
    with torch.no_grad():
        model(torch.randn(2, 1, 28, 28))
    caught = taps.take()
    taps.remove()
    assert caught["backbones.0.stages.2"].shape[1] == 48 and caught["backbones.1.stages.2"].shape[1] == 128
    fused = _seeded(f"fused({TINY})")  # what multistage builds: every stage of both backbones before the head
    assert stage_paths(fused) == [f"base.{p}" for p in paths]
    assert fused.head.in_features == (12 + 24 + 48) + (32 + 64 + 128)


@pytest.mark.parametrize("method", ["fitnet", "at", "sp", "multistage"])
def test_feature_methods_tap_hybrid_teacher_and_student(method):
    from medlite.distill.config import CONFIGS
    from medlite.distill.methods import StudentOutput, TeacherOutput, build_method

    cfg = CONFIGS[method]()
    torch.manual_seed(0)
    teacher = create("hybrid(medlite_dsconv_tiny,medlite_cnn_tiny)", 3, 1, 28)
    student = create(cfg.student_arch(TINY), 3, 1, 28)
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 0])
    built = build_method(cfg, student, [teacher], x)
    taps = built.student_taps() + built.teacher_taps()
    assert taps and all("backbones." in p for p in taps)
    if method != "fitnet":  # FitNet's one hint is the middle stage of the list (the first backbone's last)
        assert any("backbones.1." in p for p in taps)  # the second backbone is tapped too
    s_taps, t_taps = FeatureTaps(student, built.student_taps()), FeatureTaps(teacher, built.teacher_taps())
    logits = student(x)
    with torch.no_grad():
        t_logits = teacher(x)
    loss = built.loss(StudentOutput(logits, s_taps.take()), TeacherOutput([t_logits], None, t_taps.take()), y,
                      hard_loss=lambda z: torch.nn.functional.cross_entropy(z, y), epoch=1)
    loss.backward()
    s_taps.remove()
    t_taps.remove()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in student.get_submodule("base.backbones.1" if method == "multistage" else "backbones.1").parameters()
               if p.requires_grad and p.dim() > 1)


def test_explanations_take_the_cnn_backbones_layer():
    from medlite.explain.methods import find_target_layer

    x = torch.zeros(1, 1, 28, 28)
    assert find_target_layer(_seeded(f"fused({TINY})"), x)[0] == "base.backbones.0.stages.2"
    vit_first = _seeded("hybrid(test_vit,medlite_cnn_tiny)", 32)  # timm's tiny test ViT (16 px patches)
    assert find_target_layer(vit_first, torch.zeros(1, 1, 32, 32)) == ("backbones.1.stages.2", None)  # the ViT is passed over


def test_onnx_and_int8_files_give_torchs_probabilities(tmp_path):
    from medlite.compress.quantize import quantize_static
    from medlite.data.preprocess import PreprocessSpec
    from medlite.export.onnx import export_onnx, run_onnx

    model = _seeded("hybrid_gated(medlite_cnn_tiny,medlite_dsconv_tiny)", classes=2)
    spec = PreprocessSpec(28, 1, 0.5, 0.5, ("benign", "malignant"))
    fp32, int8 = tmp_path / "h.onnx", tmp_path / "h_int8.onnx"
    assert export_onnx(model, spec, fp32)["max_abs_diff"] < 1e-4
    images = np.random.default_rng(0).standard_normal((48, 1, 28, 28)).astype(np.float32)
    facts = quantize_static(fp32, int8, images[:32])
    assert facts["quantized_nodes"] > 0
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(images[32:])), 1).numpy()
    got = torch.softmax(torch.from_numpy(run_onnx(int8, images[32:])), 1).numpy()
    assert np.abs(got - expected).max() < 0.05


def test_litert_fp32_and_int8_files_give_torchs_probabilities(tmp_path):
    """A multi-stage student (layer fusion over both backbones, the gated head) through LiteRT's
    converter and quantizer, read by the interpreter as every consumer reads it."""
    from medlite.export.litert import missing_packages

    if missing_packages():
        pytest.skip("LiteRT converter not installed (make litert)")
    from medlite.data.preprocess import PreprocessSpec, normalize
    from medlite.export.litert import convert_fp32, quantize
    from medlite.runtime import open_artifact

    model = _seeded("fused(hybrid_gated(medlite_cnn_tiny,medlite_dsconv_tiny))", classes=3)
    spec = PreprocessSpec(28, 1, 0.5, 0.5, ("a", "b", "c"))
    images = np.random.default_rng(0).integers(0, 256, (40, 28, 28, 1), dtype=np.uint8)
    with torch.no_grad():
        want = torch.softmax(model(torch.from_numpy(normalize(images[32:], spec))), 1).numpy()
    fp32, int8 = tmp_path / "h.tflite", tmp_path / "h_int8.tflite"
    convert_fp32(model, spec, fp32, "h")
    np.testing.assert_allclose(open_artifact(fp32).predict_proba(images[32:]), want, atol=1e-4)
    quantize(fp32, "int8_static", int8, spec, "h_int8", calibration=normalize(images[:32], spec))
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size
    assert np.abs(open_artifact(int8).predict_proba(images[32:]) - want).max() < 0.05


@pytest.mark.parametrize("arch", [TINY, "hybrid_gated(medlite_cnn_tiny,medlite_dsconv_tiny)", f"fused({TINY})"])
def test_structured_pruning_of_convolutional_backbones_reloads(tmp_path, arch):
    """A head over torch.cat of the pooled features came out of torch-pruning with the wrong width."""
    from medlite.compress.prune import prune_structured
    from medlite.models.weights import load_checkpoint, save_state

    pruned = prune_structured(_seeded(arch, classes=2), torch.randn(1, 1, 28, 28), 0.3)
    assert count_params(pruned) < 0.7 * count_params(_seeded(arch, classes=2))
    save_state(pruned, tmp_path / "p.safetensors", metadata={"arch": arch, "structure": "pruned"})
    back = load_checkpoint(create(arch, 2, 1, 28), tmp_path / "p.safetensors").eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(back(x), pruned.eval()(x), atol=1e-5)


def test_pruned_timm_batchnorm_act_keeps_its_activation(tmp_path):
    """Before the fix a pruned EfficientNet reloaded with ReLU where it had SiLU (BatchNormAct2d rebuilt fresh)."""
    from medlite.compress.prune import prune_structured
    from medlite.models.weights import load_checkpoint, save_state

    pruned = prune_structured(_seeded("test_efficientnet", 32, 2), torch.randn(1, 1, 32, 32), 0.3)
    save_state(pruned, tmp_path / "e.safetensors", metadata={"arch": "test_efficientnet", "structure": "pruned"})
    back = load_checkpoint(create("test_efficientnet", 2, 1, 32), tmp_path / "e.safetensors").eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(back(x), pruned.eval()(x), atol=1e-5)


def test_pruning_refuses_a_backbone_it_cannot_rebuild():
    from medlite.compress.prune import prune_structured

    model = _seeded("hybrid(medlite_cnn_tiny,test_convnext)", 32, 2)
    with pytest.raises(UsageError, match=r"prune_structured: backbone 'test_convnext' .*LayerNorm"):
        prune_structured(model, torch.randn(1, 1, 32, 32), 0.3)


@pytest.mark.parametrize("arch, message", [
    ("hybrid(medlite_cnn_tiny,nosuch_net)", r"hybrid\(medlite_cnn_tiny,nosuch_net\): unknown architecture 'nosuch_net'"),
    ("hybrid(medlite_cnn_tiny,ensemble(medlite_cnn_tiny,medlite_dsconv_tiny))", r"backbone 'ensemble\(.*cannot be fused"),
    ("hybrid(medlite_cnn_tiny)", r"takes exactly 2 architectures, not 1"),
    ("hybrid(medlite_cnn_tiny,fused(medlite_cnn_tiny))", r"backbone 'fused\(medlite_cnn_tiny\)' cannot be fused"),
])
def test_backbones_that_cannot_be_fused_are_refused_by_name(arch, message):
    with pytest.raises(UsageError, match=message):
        check_arch(arch)


def test_a_backbone_that_cannot_take_the_input_size_is_refused_by_name():
    with pytest.raises(UsageError, match=r"backbone 'torchvision/mobilenet_v3_small' cannot be fused"):
        create("hybrid(medlite_cnn_tiny,torchvision/mobilenet_v3_small)", 2, 1, 28)
    with pytest.raises(UsageError, match=r"backbone 'test_vit' cannot take 28 px images"):
        create("hybrid(medlite_cnn_tiny,test_vit)", 2, 1, 28)


def test_cli_exits_2_in_one_line_naming_the_backbone(tmp_path, data_root, monkeypatch, capsys):
    from medlite.cli import main

    monkeypatch.setenv("MEDLITE_DATA_ROOT", str(data_root))
    monkeypatch.setattr(sys, "argv", ["medlite", "run", "--out", str(tmp_path / "run"),
                                      "--set", "student.arch=hybrid(medlite_cnn,nosuch_net)"])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_.value.code == 2 and len(lines) == 1, err
    assert "student.arch" in lines[0] and "hybrid(medlite_cnn,nosuch_net)" in lines[0] and "'nosuch_net'" in lines[0]
    assert not (tmp_path / "run").exists()


def test_hybrid_student_end_to_end_on_breastmnist(tmp_path, data_root):
    """Hybrid teacher -> hybrid student by multi-stage distillation (exits on both backbones, layer fusion),
    int8, explanations, beside a plain student distilled the same way: each measured on its file."""
    from medlite.pipeline import run_pipeline
    from medlite.recipe import Recipe

    recipe = Recipe.model_validate({
        "name": "tiny_hybrid",
        "data": {"flag": "breastmnist", "limit": 32, "balance": "class_weights"},
        "teacher": {"arch": "hybrid(medlite_cnn_tiny,medlite_dsconv_tiny)", "epochs": 1},
        "student": {"arch": "hybrid_gated(medlite_cnn_tiny,medlite_dsconv_tiny)", "epochs": 1},
        "compare_students": [{"arch": "medlite_cnn_tiny", "epochs": 1}],
        "distill": {"method": "multistage", "scratch_baseline": False},
        "evaluate": {"bootstrap": 0},
        "compress": {"targets": ["student_kd"], "methods": ["int8_static"]},
        "explain": {"methods": ["gradcam"], "images_per_class": 1, "variants": ["student_kd"]},
    })
    results = run_pipeline(recipe, tmp_path, data_root, say=lambda _: None, progress=False)
    v = {x["name"]: x for x in results["variants"]}
    assert list(v) == ["teacher", "student_kd", "compare_1_kd", "student_kd_int8_static"]
    assert v["student_kd"]["arch"] == "fused(hybrid_gated(medlite_cnn_tiny,medlite_dsconv_tiny))"
    assert v["compare_1_kd"]["arch"] == "fused(medlite_cnn_tiny)" and v["compare_1_kd"]["teachers"] == ["teacher"]
    for variant in v.values():
        assert (tmp_path / variant["file"]).is_file() and 0.0 <= variant["metrics"]["auc"] <= 1.0
    assert v["student_kd_int8_static"]["file"].endswith(".onnx")
    assert v["student_kd"]["explain"]["methods"]["gradcam"]["layer"].startswith("base.backbones.0.")
    json.dumps(results)  # the results document stays JSON


def test_compare_students_left_out_of_the_dump_when_empty():
    """Recipes written before the key existed keep their dumps (run markers, study trial records, card hashes)."""
    from medlite.recipe import Recipe, dump_recipe

    assert "compare_students" not in dump_recipe(Recipe())
    with_one = Recipe.model_validate({"compare_students": ["medlite_cnn_tiny"]})
    assert with_one.compare_students[0].arch == "medlite_cnn_tiny" and "compare_students" in dump_recipe(with_one)
    assert Recipe.model_validate(with_one.model_dump(mode="json")) == with_one


def test_compare_students_are_checked_like_the_student():
    from medlite.distill.stages import check_recipe, variant_names
    from medlite.recipe import Recipe

    recipe = Recipe.model_validate({"compare_students": [{"arch": "hybrid(medlite_cnn_tiny,nosuch_net)"}]})
    with pytest.raises(UsageError, match=r"compare_students\[0\]\.arch: hybrid\(medlite_cnn_tiny,nosuch_net\)"):
        check_recipe(recipe)
    fitnet = Recipe.model_validate({"distill": {"method": "fitnet"},
                                    "compare_students": [{"arch": "medlite_cnn_tiny", "image_size": 14}]})
    with pytest.raises(UsageError, match=r"compare_students\[0\]\.image_size: fitnet"):
        check_recipe(fitnet)
    assert variant_names(fitnet)[-2:] == ["student_kd", "compare_1_kd"]
