"""The training loop on real data: best-epoch selection and never-worse fine-tuning."""

from pathlib import Path

import lightning as L
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


def _csv_rows(log_dir):
    import csv

    with open(log_dir / "metrics.csv", newline="") as f:
        return [row for row in csv.DictReader(f) if row.get("val_auc")]


class _Snapshots(L.Callback):
    """The weights each epoch was scored with (validation does not change them)."""

    def __init__(self) -> None:
        self.states: dict[int, dict] = {}

    def on_validation_end(self, trainer, module) -> None:
        self.states[trainer.current_epoch] = {k: v.detach().clone() for k, v in module.model.state_dict().items()}


def test_checkpoint_keeps_the_epoch_of_max_val_auc_in_the_csv_log(data_root, tmp_path):
    """ModelCheckpoint (monitor val_auc, mode max) keeps the epoch the CSV log ranks best, not the last
    one, and fit() loads those weights back; the checkpoint lives in a temporary directory."""
    recipe, ds = _tiny(data_root)
    torch.manual_seed(0)
    model = create("medlite_dsconv_tiny", 2, 1, 28)
    cfg = recipe.student.model_copy(update={"epochs": 4, "batch_size": 16})
    snapshots = _Snapshots()
    result = fit(model, ds, cfg, data_cfg=recipe.data, seed=0, log_dir=tmp_path, progress=False, callbacks=(snapshots,))
    rows = _csv_rows(tmp_path)
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2, 3]
    best = max(rows, key=lambda row: (float(row["val_auc"]), -float(row["val_loss"])))
    assert result.best_epoch == int(best["epoch"]) and result.selected_by == "val_auc"
    assert result.best_epoch != 3  # this seed peaks early: the last epoch's weights would be the wrong ones
    assert abs(result.best_val_auc - float(best["val_auc"])) < 1e-6
    # The best epoch's weights are the ones loaded back, to the bit. (Not checked by rescoring: this tiny
    # model's probabilities at its best epoch differ in the 6th decimal only, so their AUC hangs on float
    # noise, e.g. the batch size of the forward pass or the CPU's kernels.)
    weights = model.state_dict()
    assert all(torch.equal(weights[k], snapshots.states[result.best_epoch][k]) for k in weights)
    assert not all(torch.equal(weights[k], snapshots.states[3][k]) for k in weights)
    assert abs(float(rows[-1]["val_auc"]) - result.best_val_auc) > 1e-3
    assert not list(tmp_path.rglob("*.ckpt"))


def test_datamodule_gives_the_same_batches_for_the_same_seed(data_root):
    """TrainData: the same seed draws the same batches (indices, images, labels), each epoch covers the
    split once, another seed shuffles differently, and DDP ranks split each epoch between them."""
    from types import SimpleNamespace

    from medlite.train.data import TrainData

    recipe, ds = _tiny(data_root)

    def batches(seed, world=1, rank=0, bank=False):
        data = TrainData(ds, batch_size=16, balance="none", augment="light", seed=seed)
        if bank:
            data.build_bank(None, views=2, device="cpu")
        trainer = SimpleNamespace(world_size=world, global_rank=rank, current_epoch=0,
                                  strategy=SimpleNamespace(root_device=torch.device("cpu")))
        data.trainer = trainer
        data.setup("fit")
        epochs = []
        for epoch in range(2):
            trainer.current_epoch = epoch
            loader = data.train_dataloader()
            if hasattr(loader.sampler, "set_epoch"):
                loader.sampler.set_epoch(epoch)
            epochs.append([data.on_after_batch_transfer(b, 0) for b in loader])
        return epochs

    def same(a, b):
        return all(
            torch.equal(x["idx"], y["idx"]) and torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])
            for ea, eb in zip(a, b, strict=True) for x, y in zip(ea, eb, strict=True)
        )

    n = len(ds.splits["train"])
    first, again = batches(0), batches(0)
    assert same(first, again)
    for epoch in first:
        assert sorted(torch.cat([b["idx"] for b in epoch]).tolist()) == list(range(n))
        assert not any(b["fixed_view"] for b in epoch)
    assert not torch.equal(torch.cat([b["idx"] for b in first[0]]), torch.cat([b["idx"] for b in batches(1)[0]]))
    banked = batches(0, bank=True)
    assert same(banked, batches(0, bank=True)) and all(b["fixed_view"] for b in banked[0])
    # a bank view is not the raw image, and epoch 1 draws from the other view
    raw = torch.from_numpy(ds.splits["train"].images.transpose(0, 3, 1, 2))
    b0 = banked[0][0]
    b1 = next(b for b in banked[1] if set(b["idx"].tolist()) & set(b0["idx"].tolist()))
    assert not torch.equal(b0["image"], raw[b0["idx"]])
    common = sorted(set(b0["idx"].tolist()) & set(b1["idx"].tolist()))[0]
    assert not torch.equal(b0["image"][b0["idx"].tolist().index(common)], b1["image"][b1["idx"].tolist().index(common)])
    ranks = [batches(0, world=2, rank=r) for r in (0, 1)]
    for epoch in range(2):
        seen = [torch.cat([b["idx"] for b in ranks[r][epoch]]).tolist() for r in (0, 1)]
        assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == list(range(n))


def test_warnings_during_training_are_shown_and_only_named_ones_filtered(data_root, tmp_path):
    """A warning raised while training reaches the caller (it used to be swallowed with every other);
    Lightning's advice on DataLoader workers, which does not apply to in-memory index batches, does not."""
    import warnings

    import lightning as L

    class Warns(L.Callback):
        def on_train_epoch_end(self, trainer, module):
            warnings.warn("medlite test: a warning that matters", UserWarning)

    recipe, ds = _tiny(data_root)
    torch.manual_seed(0)
    model = create("medlite_dsconv_tiny", 2, 1, 28)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(model, ds, recipe.student.model_copy(update={"epochs": 1}), data_cfg=recipe.data, seed=0,
            log_dir=tmp_path, callbacks=(Warns(),), progress=False)
    messages = [str(w.message) for w in caught]
    assert "medlite test: a warning that matters" in messages
    assert not [m for m in messages if "does not have many workers" in m]


def test_without_a_validation_split_the_last_epoch_is_kept(data_root, tmp_path):
    """No validation split: no checkpoint to choose from, the last epoch's weights and a note saying so."""
    import dataclasses

    from medlite.data import Split

    recipe, ds = _tiny(data_root)
    val = ds.splits["val"]
    no_val = dataclasses.replace(ds, splits={**ds.splits, "val": Split(val.images[:0], val.labels[:0])})
    torch.manual_seed(0)
    model = create("medlite_dsconv_tiny", 2, 1, 28)
    result = fit(model, no_val, recipe.student.model_copy(update={"epochs": 2}), data_cfg=recipe.data, seed=0,
                 log_dir=tmp_path, progress=False)
    assert result.best_epoch == 1 and result.best_val_auc is None and result.selected_by == "last_epoch"
    assert result.warnings == ["no validation split: kept the last epoch"]
    assert len(result.history) == 2 and "val_auc" not in result.history[-1]


def test_epoch_fault_point_kills_after_that_epoch(data_root, tmp_path):
    """`epoch:<label>:<n>` (MEDLITE_FAULT_AT) kills the process right after epoch n: the fault tests rely on it."""
    import os
    import subprocess
    import sys

    script = (
        "import sys, torch\n"
        "from pathlib import Path\n"
        "from medlite.data import load_dataset\n"
        "from medlite.models import create\n"
        "from medlite.recipe import load_recipe\n"
        "from medlite.train import fit\n"
        "r = load_recipe('breastmnist', ['data.limit=64'])\n"
        "ds = load_dataset(r.data, Path(sys.argv[1]), r.seed)\n"
        "fit(create('medlite_dsconv_tiny', 2, 1, 28), ds, r.student.model_copy(update={'epochs': 3}), data_cfg=r.data,\n"
        "    seed=0, log_dir=Path(sys.argv[2]), label='probe', progress=False)\n"
    )
    env = {**os.environ, "MEDLITE_FAULT_AT": "epoch:probe:2"}
    done = subprocess.run([sys.executable, "-c", script, str(data_root), str(tmp_path)], env=env, capture_output=True)
    assert done.returncode == -9, done.stderr.decode()[-2000:]
    assert sorted({int(row["epoch"]) for row in _csv_rows(tmp_path)}) == [0, 1]
