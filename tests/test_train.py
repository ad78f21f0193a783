"""The training loop on real data: best-epoch selection and never-worse fine-tuning."""

from pathlib import Path

import torch

from medlite.data import load_dataset
from medlite.models import create
from medlite.recipe import load_recipe
from medlite.train import fit


def _tiny(data_root):
    recipe = load_recipe("breastmnist", ["data.limit=64"])
    return recipe, load_dataset(recipe.data, data_root, recipe.seed)


def test_best_epoch_is_restored_and_logged(data_root, tmp_path):
    recipe, ds = _tiny(data_root)
    model = create("medlite_dsconv_tiny", 2, 1, 28)
    result = fit(model, ds, recipe.student.model_copy(update={"epochs": 3}), data_cfg=recipe.data, seed=0, log_dir=tmp_path)
    assert 0 <= result.best_epoch < 3 and len(result.epoch_seconds) == 3
    best_row = result.history[result.best_epoch]
    assert best_row["val_auc"] == max(row["val_auc"] for row in result.history)
    assert result.best_val_auc == best_row["val_auc"] or abs(result.best_val_auc - best_row["val_auc"]) < 1e-4


def test_fine_tuning_never_ends_worse_than_its_start(data_root, tmp_path):
    recipe = load_recipe("breastmnist")
    ds = load_dataset(recipe.data, data_root, recipe.seed)  # all 546 images: a start clearly better than chance
    torch.manual_seed(0)
    model = create("medlite_cnn_tiny", 2, 1, 28)
    first = fit(model, ds, recipe.student.model_copy(update={"epochs": 4}), data_cfg=recipe.data, seed=0, log_dir=tmp_path / "a")
    assert first.best_val_auc > 0.55
    start = {k: v.clone() for k, v in model.state_dict().items()}
    wrecking = recipe.student.model_copy(update={"epochs": 2, "lr": 5.0})  # absurd learning rate
    result = fit(model, ds, wrecking, data_cfg=recipe.data, seed=0, log_dir=tmp_path / "b", score_start=True)
    assert result.best_epoch == -1
    assert all(torch.equal(start[k], v) for k, v in model.state_dict().items())


def test_same_seed_same_weights(data_root, tmp_path):
    """The recipe seed fixes initialisation (as the pipeline creates models) and sampling."""
    from medlite.context import Context

    recipe, ds = _tiny(data_root)
    cfg = recipe.student.model_copy(update={"epochs": 1, "arch": "medlite_dsconv_tiny"})
    weights = []
    for run in range(2):
        torch.manual_seed(100 + run)  # whatever the global RNG state was before
        ctx = Context(recipe, run=None, data_root=data_root, say=print, progress=False)
        ctx.dataset = ds
        model = ctx.models.build(cfg.arch)
        fit(model, ds, cfg, data_cfg=recipe.data, seed=recipe.seed, log_dir=Path(tmp_path) / str(run))
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_uncomputable_val_auc_is_nan_and_loss_picks_the_epoch(data_root, tmp_path):
    """A validation split with one class has no AUC: logged as NaN (not 0.0), the best epoch by loss."""
    import dataclasses
    import math

    import numpy as np

    from medlite.data import Split

    recipe, ds = _tiny(data_root)
    val = ds.splits["val"]
    keep = val.labels == np.bincount(val.labels).argmax()
    one_class = dataclasses.replace(ds, splits={**ds.splits, "val": Split(val.images[keep], val.labels[keep])})
    torch.manual_seed(0)
    model = create("medlite_dsconv_tiny", 2, 1, 28)
    result = fit(model, one_class, recipe.student.model_copy(update={"epochs": 3}), data_cfg=recipe.data, seed=0,
                 log_dir=tmp_path)
    assert all(math.isnan(row["val_auc"]) for row in result.history)
    assert result.best_val_auc is None and result.selected_by == "val_loss"
    losses = [row["val_loss"] for row in result.history]
    assert result.best_epoch == int(np.argmin(losses))
    assert result.warnings and "validation loss" in result.warnings[0]
    csv = (tmp_path / "metrics.csv").read_text().splitlines()
    column = csv[0].split(",").index("val_auc")
    logged = [line.split(",")[column] for line in csv[1:] if line.split(",")[column]]
    assert logged and all(value.lower() == "nan" for value in logged)  # never a fake 0.0
