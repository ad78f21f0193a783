"""Explainers on a model with a planted signal: class 1 is decided by one bright square.

The network's weights are set by hand (a local-mean detector of bright pixels, then a linear
read-out of how much of it there is), so we know exactly where the evidence is: every method's
map must put its maximum inside the square, and the deletion / insertion scores must rank the
correct map above a random one. The black-box methods run the exported ONNX file.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medlite.explain import EXPLAINERS, get_explainer, registered
from medlite.explain.config import ExplainConfig
from medlite.explain.methods import Subject, find_target_layer, grid_segments
from medlite.explain.scores import agreement, deletion_insertion, random_maps, spearman, top_iou

SIZE, PATCH = 28, 6


class PatchNet(nn.Module):
    """logit_1 = 600 * mean(relu(relu(local_mean(x) - 0.5))) - 2; logit_0 = 0."""

    def __init__(self) -> None:
        super().__init__()
        detect = nn.Conv2d(1, 1, 3, padding=1)
        spread = nn.Conv2d(1, 4, 1)
        with torch.no_grad():
            detect.weight.fill_(1 / 9)
            detect.bias.fill_(-0.5)
            spread.weight.fill_(1.0)
            spread.bias.zero_()
        self.stages = nn.Sequential(nn.Sequential(detect, nn.ReLU()), nn.Sequential(spread, nn.ReLU()))
        self.head = nn.Linear(4, 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[0.0] * 4, [150.0] * 4]))
            self.head.bias.copy_(torch.tensor([0.0, -2.0]))

    def forward(self, x):
        return self.head(self.stages(x).mean(dim=(2, 3)))


def planted_images(n: int, seed: int = 0) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Normalised images: dim noise (about -0.5) plus one bright square (+1) at a random place."""
    rng = np.random.default_rng(seed)
    images = rng.normal(-0.5, 0.1, (n, 1, SIZE, SIZE)).astype(np.float32)
    corners = []
    for i in range(n):
        y, x = rng.integers(2, SIZE - PATCH - 2, 2)
        images[i, 0, y : y + PATCH, x : x + PATCH] = 1.0
        corners.append((int(y), int(x)))
    return images, corners


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    from medlite.data.preprocess import PreprocessSpec
    from medlite.evaluate.metrics import softmax
    from medlite.export.onnx import export_onnx, run_onnx

    model = PatchNet().eval()
    path = tmp_path_factory.mktemp("planted") / "patchnet.onnx"
    export_onnx(model, PreprocessSpec(SIZE, 1, 0.5, 0.5, ("empty", "patch")), path)
    return Subject("patchnet", lambda x: softmax(run_onnx(path, x).astype(np.float64)), module=model)


def test_planted_model_decides_by_the_patch(subject):
    images, _ = planted_images(8)
    empty = np.random.default_rng(1).normal(-0.5, 0.1, (8, 1, SIZE, SIZE)).astype(np.float32)
    assert (subject.predict(images)[:, 1] > 0.85).all()
    assert (subject.predict(empty)[:, 1] < 0.2).all()


def test_registry_matches_the_recipe_schema():
    get_explainer("gradcam")  # imports the methods
    assert set(EXPLAINERS) == set(registered()) >= {"gradcam", "occlusion", "lime"}
    with pytest.raises(KeyError):
        get_explainer("nope")
    with pytest.raises(ValueError, match="did you mean 'gradcam'"):
        ExplainConfig(methods=["gradcan"])


def test_a_registered_explainer_is_accepted_by_recipes_without_a_list_to_edit():
    from medlite.explain import register
    from medlite.explain.methods import Explainer

    @register
    class Blank(Explainer):
        name, kind = "blank_for_test", "blackbox"

    try:
        assert ExplainConfig(methods=["blank_for_test"]).methods == ["blank_for_test"]
    finally:
        EXPLAINERS.pop("blank_for_test")
    with pytest.raises(ValueError, match="blank_for_test"):
        ExplainConfig(methods=["blank_for_test"])


def test_target_layer_is_the_deepest_wide_stage():
    model = PatchNet()
    assert find_target_layer(model, torch.zeros(1, 1, SIZE, SIZE))[0] == "stages.1"
    from medlite.models import create

    resnet = create("small_pooled_resnet18", 2, 1, 28)
    # 28 px: layer4 is 2 x 2, layer3 4 x 4 -> layer3 at min_size 4; layer4 when any size is fine
    assert find_target_layer(resnet, torch.zeros(1, 1, 28, 28), 4)[0] == "layer3"
    assert find_target_layer(resnet, torch.zeros(1, 1, 28, 28), 1)[0] == "layer4"


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "scorecam", "occlusion", "lime"])
def test_map_lands_on_the_patch(subject, method):
    images, corners = planted_images(6, seed=2)
    targets = np.ones(len(images), int)
    explainer = get_explainer(method, ExplainConfig(lime={"samples": 150}), seed=0)
    assert explainer.not_applicable(subject) is None
    maps = explainer.explain(subject, images, targets)
    assert maps.shape == (6, SIZE, SIZE) and np.isfinite(maps).all()
    for saliency, (y, x) in zip(maps, corners):
        peak = np.unravel_index(np.argmax(saliency), saliency.shape)
        # the square, grown by the blur of a 3x3 detector (CAMs) or the window / superpixel (black-box)
        margin = 1 if explainer.kind == "gradient" else 3
        assert y - margin <= peak[0] < y + PATCH + margin and x - margin <= peak[1] < x + PATCH + margin, (method, peak, (y, x))
        inside = saliency[y : y + PATCH, x : x + PATCH].mean()
        outside = np.delete(saliency.ravel(), np.ravel_multi_index(np.mgrid[y : y + PATCH, x : x + PATCH].reshape(2, -1), saliency.shape)).mean()
        assert inside > outside


def test_gradient_methods_refuse_a_file_without_module(subject):
    onnx_only = Subject("int8", subject.predict, module=None, format="onnx-int8-qdq")
    assert "PyTorch module" in get_explainer("gradcam").not_applicable(onnx_only)
    assert get_explainer("occlusion").not_applicable(onnx_only) is None
    assert "not a vision transformer" in get_explainer("attention_rollout").not_applicable(subject)


def test_deletion_and_insertion_rank_the_true_map_above_random(subject):
    images, corners = planted_images(6, seed=3)
    targets = np.ones(len(images), int)
    truth = np.zeros((6, SIZE, SIZE), np.float32)
    for t, (y, x) in zip(truth, corners):
        t[y : y + PATCH, x : x + PATCH] = 1.0
    noise = random_maps(truth.shape, seed=0)
    truth_del, truth_ins = deletion_insertion(subject.predict, images, truth + 1e-3 * noise, targets, steps=16)
    rand_del, rand_ins = deletion_insertion(subject.predict, images, noise, targets, steps=16)
    assert (truth_del < rand_del).all() and (truth_ins > rand_ins).all()
    # independent check of one curve end: everything removed -> the empty image's probability
    p_empty = subject.predict(np.zeros((1, 1, SIZE, SIZE), np.float32))[0, 1]
    assert truth_del.mean() < 0.5 * rand_del.mean() and p_empty < 0.2
    # and the occlusion map, as computed, scores like the truth
    occ = get_explainer("occlusion").explain(subject, images, targets)
    occ_del, _ = deletion_insertion(subject.predict, images, occ, targets, steps=16)
    assert occ_del.mean() < rand_del.mean()


def test_agreement_scores_against_hand_computed_values():
    a = np.arange(16, dtype=float).reshape(4, 4)
    assert spearman(a, a) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert np.isnan(spearman(a, np.ones_like(a)))
    # top 25% = 4 pixels: a's are 12..15; b's top 4 share two of them -> IoU 2 / 6
    b = np.zeros((4, 4))
    b.flat[[15, 14, 0, 1]] = [9, 8, 7, 6]
    assert top_iou(a, b, 0.25) == pytest.approx(2 / 6)
    out = agreement(np.stack([a, a]), np.stack([a, b]), 0.25)
    assert out["iou_top"] == pytest.approx(round((1 + 2 / 6) / 2, 4))
    assert out["per_image"]["spearman"][0] == 1.0


def test_grid_segments():
    seg = grid_segments(6, 6, 4)
    assert seg.max() == 3 and (seg[:4, :4] == 0).all() and (seg[4:, 4:] == 3).all()


def test_vit_methods_run_on_a_timm_vit(tmp_path):
    """Grad-CAM with the token reshape and attention rollout on a small timm ViT: maps of the right
    shape, and rollout on a ViT whose attention we know (uniform) gives a uniform map."""
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", img_size=SIZE, patch_size=4, num_classes=2, in_chans=1,
                            embed_dim=32, depth=2, num_heads=2).eval()
    images, _ = planted_images(2)
    s = Subject("vit", lambda x: torch.softmax(vit(torch.from_numpy(x)), 1).detach().numpy(), module=vit)
    cam = get_explainer("gradcam")
    maps = cam.explain(s, images, np.ones(2, int))
    assert maps.shape == (2, SIZE, SIZE) and cam.info["layer"] == "blocks.1.norm1"
    # zero q/k weights -> every attention row is uniform -> rollout is uniform over the patches
    with torch.no_grad():
        for block in vit.blocks:
            block.attn.qkv.weight[: 2 * 32].zero_()
            block.attn.qkv.bias[: 2 * 32].zero_()
    rollout = get_explainer("attention_rollout").explain(s, images, np.ones(2, int))
    assert rollout.shape == (2, SIZE, SIZE)
    assert np.ptp(rollout) < 1e-5
    assert all(getattr(b.attn, "fused_attn", False) == timm.layers.use_fused_attn() for b in vit.blocks)


def test_lineage_follows_parents_and_teachers_not_names():
    from medlite.variant import lineage
    from medlite.variant import Variant

    def v(name, parent=None, teachers=()):
        return Variant(name=name, parent=parent, stage="x", arch="a", teachers=list(teachers))

    # two teachers, an assistant, and names that do not say who is who
    variants = {x.name: x for x in [
        v("big_a"), v("big_b"), v("helper", "big_a", ["big_a", "big_b"]), v("small", "helper", ["helper"]),
        v("small_q", "small"), v("unrelated"),
    ]}
    assert lineage(variants["small_q"], variants) == ["small", "helper", "big_a", "big_b"]
    assert lineage(variants["helper"], variants) == ["big_a", "big_b"]
    assert lineage(variants["unrelated"], variants) == []


def test_image_selection_is_seeded_per_class_and_includes_mistakes():
    from medlite.explain.stage import select_images

    labels = np.array([0] * 10 + [1] * 10)
    wrong = np.zeros(20, bool)
    wrong[[3, 4, 15]] = True
    picks = select_images(labels, wrong, 3, seed=0)
    assert len(picks) == 6 and (labels[picks] == [0, 0, 0, 1, 1, 1]).all()
    assert wrong[picks[:3]].sum() == 1 and wrong[picks[3:]].sum() == 1
    assert (picks == select_images(labels, wrong, 3, seed=0)).all()
    assert len(select_images(labels, wrong, 1, seed=0)) == 2 and not wrong[select_images(labels, wrong, 1, seed=0)].any()


def test_occlusion_is_the_mean_drop_over_covering_windows(subject):
    """captum's Occlusion around the deployed file, against the definition computed by hand."""
    images, _ = planted_images(2, seed=4)
    targets = np.array([1, 0])
    explainer = get_explainer("occlusion", ExplainConfig(occlusion={"window": 7, "stride": 7}))
    maps = explainer.explain(subject, images, targets)
    base = subject.predict(images)[np.arange(2), targets]
    for i in range(2):
        for y in range(0, SIZE, 7):
            for x in range(0, SIZE, 7):
                hidden = images[i : i + 1].copy()
                hidden[:, :, y : y + 7, x : x + 7] = 0.0
                drop = base[i] - subject.predict(hidden)[0, targets[i]]
                assert maps[i, y : y + 7, x : x + 7] == pytest.approx(np.full((7, 7), drop), abs=1e-5)
    assert explainer.info["window"] == 7 and explainer.info["stride"] == 7


def test_occlusion_windows_reach_the_border(subject):
    from medlite.errors import UsageError
    from medlite.explain.methods import covering_stride

    assert covering_stride(28, 4, 4, configured=False) == 4
    assert covering_stride(64, 9, 9, configured=False) == 5  # 55 px of travel: 9 does not divide it, 5 does
    with pytest.raises(UsageError, match="explain.occlusion.stride: windows of 6 px every 4 px leave the last 2 px"):
        get_explainer("occlusion", ExplainConfig(occlusion={"window": 6, "stride": 4})).explain(
            subject, planted_images(1)[0], np.ones(1, int))
    maps = get_explainer("occlusion", ExplainConfig(occlusion={"window": 6})).explain(
        subject, planted_images(1)[0], np.ones(1, int))
    assert np.isfinite(maps).all()  # the default stride narrowed to one that covers every pixel


# -- `medlite explain` and the run lock ------------------------------------------------------------


def _explain_cli(monkeypatch, capsys, *args):
    import sys
    from types import SimpleNamespace

    from medlite import cli

    monkeypatch.setattr(sys, "argv", ["medlite", "explain", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        cli.main()
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return SimpleNamespace(returncode=info.value.code or 0, stdout=out, stderr=err)


def test_cli_explain_refuses_a_run_directory_a_live_run_holds(tmp_path, monkeypatch, capsys):
    import os

    from medlite.runstate import RunDir

    out = tmp_path / "run"
    holder = RunDir(out)
    holder.open()
    try:
        (out / "results.json").write_text('{"variants": []}\n')
        result = _explain_cli(monkeypatch, capsys, str(out))
    finally:
        holder.close()
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(out) in lines[0] and "in use by another medlite run" in lines[0]
    assert f"pid {os.getpid()}" in lines[0]
    assert (out / "results.json").read_text() == '{"variants": []}\n'
    with RunDir(out) as again:
        again.lock()  # a refused explain holds nothing


def test_cli_explain_holds_the_lock_while_it_rewrites_results(tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    import medlite.cli.explain as command
    import medlite.explain.rundir as rundir
    import medlite.explain.stage as stage
    import medlite.report as report
    from medlite.errors import UsageError
    from medlite.runstate import RunDir, write_json

    out = tmp_path / "run"
    with RunDir(out) as finished:
        finished.open()  # a finished run: marked, then unlocked
    write_json(out / "results.json", {"variants": [{"name": "a"}], "timings": {}})
    variant = SimpleNamespace(explain={"methods": {}})
    fake = SimpleNamespace(recipe=SimpleNamespace(explain=SimpleNamespace(variants=[])), variants={"a": variant},
                           ledger=SimpleNamespace(timings={"explain": 0.1}), dataset=None)
    monkeypatch.setattr(rundir, "load_run", lambda run_dir, data_root, overrides, say, run=None: (fake, command.read_json(run_dir / "results.json")))
    monkeypatch.setattr(stage, "stage_explain", lambda ctx, names: None)
    monkeypatch.setattr(report, "write_report", lambda *args: None)
    held = []

    def probing_write_json(path, data):
        try:
            with RunDir(out) as other:
                other.lock()
            held.append(False)
        except UsageError as err:
            held.append("in use by another medlite run" in str(err))
        write_json(path, data)

    monkeypatch.setattr(command, "write_json", probing_write_json)
    result = _explain_cli(monkeypatch, capsys, str(out), "--data-root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert held == [True]
    assert command.read_json(out / "results.json")["variants"][0]["explain"] == {"methods": {}}
