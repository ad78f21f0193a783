"""Function matching (`distill.views: live`, `distill.mixup`) and cross-resolution students
(`student.image_size`): the parts, then one tiny run end to end on a real image folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from medlite.errors import UsageError
from medlite.recipe import load_recipe
from medlite.train.augment import mixup, resize_to

TINY = [
    "data.limit=48",
    "teacher.arch=medlite_cnn_tiny",
    "teacher.epochs=1",
    "student.arch=medlite_dsconv_tiny",
    "student.epochs=1",
    "evaluate.bootstrap=50",
    "compress.methods=[]",
    "bench.enabled=false",
    "explain.enabled=false",
]


def test_mixup_is_the_convex_combination_with_a_permutation():
    x = torch.rand(6, 1, 5, 5)
    mixed, partner, lam = mixup(x, 0.4, torch.Generator().manual_seed(3))
    assert 0.0 <= lam <= 1.0
    assert sorted(partner.tolist()) == list(range(6))
    assert torch.allclose(mixed, lam * x + (1 - lam) * x[partner])
    again = mixup(x, 0.4, torch.Generator().manual_seed(3))  # the seed fixes lambda and the pairs
    assert again[2] == lam and torch.equal(again[1], partner)


def test_resize_to_keeps_a_tensor_at_its_size_and_downsamples_otherwise():
    x = torch.rand(2, 3, 28, 28)
    assert resize_to(x, 28) is x and resize_to(x, None) is x
    small = resize_to(x, 14)
    assert small.shape == (2, 3, 14, 14)
    # antialiased bilinear halving of a constant image keeps the constant
    assert torch.allclose(resize_to(torch.full((1, 1, 8, 8), 0.25), 4), torch.full((1, 1, 4, 4), 0.25))


@pytest.mark.parametrize("overrides, message", [
    (["distill.views=bank"], "mixup needs views: live"),  # the default recipe has mixup 0.2
    (["distill.method=dkd", "distill.views=live", "distill.mixup=0.2"], "two"),
    (["distill.method=fitnet", "distill.views=bank"], "use views: live"),
])
def test_settings_that_cannot_mean_what_they_say_are_refused(overrides, message):
    with pytest.raises(UsageError, match=message):
        load_recipe("breastmnist", overrides)


def test_views_default_per_method():
    from medlite.distill.config import ATConfig, KDConfig

    assert KDConfig().resolved_views == "bank" and ATConfig().resolved_views == "live"
    # the default recipe ships function matching, chosen on validation (benchmarks/kd_evidence)
    assert load_recipe("breastmnist").distill.resolved_views == "live"
    assert load_recipe("breastmnist", ["distill.views=bank", "distill.mixup=0"]).distill.resolved_views == "bank"


def test_switching_to_dkd_drops_the_files_mixup_and_says_so():
    recipe = load_recipe("breastmnist", ["distill.method=dkd"])
    assert recipe.distill.mixup == 0 and recipe.distill.views == "live"
    assert any("distill.mixup" in note for note in recipe._notes)


def test_feature_method_refuses_a_cross_resolution_student():
    from medlite.distill.stages import check_recipe

    with pytest.raises(UsageError, match="student.image_size"):
        check_recipe(load_recipe("breastmnist", ["distill.method=fitnet", "student.image_size=14"]))


class _Recorder(nn.Module):
    """A tiny classifier that keeps the inputs it saw in training mode (or always, for a teacher)."""

    def __init__(self, log: list, always: bool = False) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        self.log, self.always = log, always

    def forward(self, x):
        if self.training or self.always:
            self.log.append(x.detach().clone())
        return self.net(x)


def _tiny_dataset(n: int = 24, size: int = 16):
    from medlite.data.dataset import Dataset, Split

    rng = np.random.default_rng(0)
    split = lambda m: Split(rng.integers(0, 256, (m, size, size, 1), dtype=np.uint8), np.arange(m) % 2)  # noqa: E731
    return Dataset("tiny", "arrays", "-", ["a", "b"], {"train": split(n), "val": split(8), "test": split(8)},
                   1, size, 0.5, 0.25, "given")


@pytest.mark.parametrize("student_size", [None, 8])
def test_live_teacher_sees_the_students_very_view(tmp_path, student_size):
    """Function matching: every step, the teacher's input is the student's (mixed, augmented) view,
    the student's at its own size (a cross-resolution student)."""
    from medlite.train import fit

    recipe = load_recipe("breastmnist", ["distill.views=live", "distill.mixup=0.3", "student.epochs=2",
                                         "student.batch_size=8"])
    seen_s, seen_t = [], []
    student, teacher = _Recorder(seen_s), _Recorder(seen_t, always=True)
    fit(student, _tiny_dataset(), recipe.student, data_cfg=recipe.data, seed=0, log_dir=tmp_path, teacher=teacher,
        distill=recipe.distill, progress=False, input_size=student_size, select_best=False)
    assert len(seen_s) == len(seen_t) == 6  # 24 images / 8 per batch x 2 epochs
    for s, t in zip(seen_s, seen_t):
        assert t.shape[-1] == 16
        assert s.shape[-1] == (student_size or 16)
        assert torch.allclose(s, resize_to(t, student_size), atol=1e-6)


def test_bank_teacher_does_not_run_during_training(tmp_path):
    from medlite.train import fit

    recipe = load_recipe("breastmnist", ["student.epochs=2", "student.batch_size=8", "distill.views=bank",
                                         "distill.mixup=0"])
    seen_t: list = []
    teacher = _Recorder(seen_t, always=True)
    fit(_Recorder([]), _tiny_dataset(), recipe.student, data_cfg=recipe.data, seed=0, log_dir=tmp_path,
        teacher=teacher, distill=recipe.distill, progress=False, select_best=False)
    # the bank: one teacher pass per view over the 24 training images, before training (a batch of 24)
    assert recipe.distill.resolved_views == "bank" and all(len(x) == 24 for x in seen_t)


def test_cross_resolution_run_on_a_folder_deploys_the_small_student(tmp_path, busi_root):
    """The issue's 'done when', CPU-sized: a 32-px folder run with a live teacher, mixup and a 16-px
    student gives a 16-px int8 student whose file predict and the edge runner use, and whose record says how."""
    from medlite.edge import main as edge_main
    from medlite.pipeline import run_pipeline
    from medlite.runtime import open_artifact

    recipe = load_recipe("busi", TINY + ["data.image_size=32", "distill.views=live", "distill.mixup=0.2",
                                         "student.image_size=16", "compress.methods=[int8_static]",
                                         "compress.targets=[student_kd]"])
    out = tmp_path / "run"
    results = run_pipeline(recipe, out, busi_root.parent, say=lambda _: None, progress=False)
    by_name = {v["name"]: v for v in results["variants"]}
    assert by_name["teacher"]["training"]["image_size"] == 32
    for name in ("student_kd", "student_scratch"):
        assert by_name[name]["training"].items() >= {"views": "live", "mixup": 0.2, "image_size": 16}.items()
    int8 = by_name["student_kd_int8_static"]
    artifact = open_artifact(out / int8["file"])
    assert artifact.input_shape[2:] == (16, 16) and artifact.require_spec().image_size == 16
    assert np.isfinite(int8["metrics"]["auc"])  # measured on its file, at 16 px
    sample = sorted((out / "samples").glob("*.png"))[0]
    code = edge_main([str(out / int8["file"]), str(sample)])
    assert code == 0
    card = json.loads((out / (int8["file"] + ".json")).read_text())
    assert card["medlite.preprocess"]["image_size"] == 16

    # predict and serve read the file's own size and resize the (32-px) image to it
    from deploy_helpers import live_server

    from medlite.deploy.predict import predict_files
    from medlite.deploy.serve import create_app

    probs = artifact.predict_proba(artifact_pixels(sample, artifact.require_spec().channels, 16))[0]
    row = predict_files(out / int8["file"], [sample])["predictions"][0]
    assert row["input"]["resized_to"] == [16, 16]
    np.testing.assert_allclose([row["probabilities"][c] for c in artifact.class_names], probs, atol=1e-5)
    import httpx

    with live_server(create_app(out / int8["file"])) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/model").json()["preprocess"]["image_size"] == 16
        res = client.post("/predict", files=[("file", (sample.name, sample.read_bytes(), "image/png"))])
        assert res.status_code == 200, res.text
        got = res.json()["results"][0]["probabilities"]
        np.testing.assert_allclose([got[c] for c in artifact.class_names], probs, atol=1e-5)


def artifact_pixels(path, channels, size):
    from medlite.data.preprocess import load_image

    return load_image(path, channels, size)[None]
