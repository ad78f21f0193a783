"""DDP on CPU: 2 processes (gloo, forked) against 1 process on the same data.

Stated tolerance: after 3 epochs on BreastMNIST (96 training images, all 78 validation images),
the best validation AUC of the 2-process run is within 0.15 of the 1-process run (the global batch
is the same; BatchNorm statistics are per process, so the runs are not bit-identical).
"""

from __future__ import annotations

import json
import os

import lightning as L
import numpy as np
import pytest
import torch

from medlite.recipe import load_recipe


class SeenIndices(L.Callback):
    """Writes the training indices each rank saw, per epoch (works across forked and spawned
    processes: a module-level class, so a spawned rank unpickles it)."""

    def __init__(self, folder):
        self.folder = folder

    def on_train_epoch_start(self, trainer, module):
        self.seen = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.seen += batch["idx"].tolist()

    def on_train_epoch_end(self, trainer, module):
        path = self.folder / f"seen_e{trainer.current_epoch}_r{trainer.global_rank}.json"
        path.write_text(json.dumps(self.seen))


def _fit(dataset, recipe, tmp_path, name, trainer_overrides, say=None):
    from medlite.models import create
    from medlite.train import fit

    r = load_recipe("breastmnist", trainer_overrides)
    torch.manual_seed(0)
    model = create("medlite_cnn_tiny", dataset.num_classes, dataset.channels, dataset.image_size)
    folder = tmp_path / name
    folder.mkdir()
    result = fit(model, dataset, recipe.student, data_cfg=recipe.data, seed=0, log_dir=folder / "logs",
                 callbacks=(SeenIndices(folder),), device="cpu", progress=False, trainer_cfg=r.trainer, say=say)
    return model, result, folder


def _val_auc(model, dataset) -> float:
    from medlite.evaluate.metrics import auc, softmax

    val = dataset.splits["val"]
    x = (torch.from_numpy(val.images.transpose(0, 3, 1, 2)).float() / 255 - dataset.mean) / dataset.std
    with torch.no_grad():
        return auc(softmax(model.eval()(x).numpy().astype(np.float64)), val.labels)


def _ranks_split_every_epoch(folder, n, epochs):
    for epoch in range(epochs):
        ranks = [json.loads((folder / f"seen_e{epoch}_r{r}.json").read_text()) for r in (0, 1)]
        assert sorted(ranks[0] + ranks[1]) == list(range(n))  # the two ranks split the same data
        assert len(ranks[0]) == len(ranks[1]) == n // 2


def test_ddp_two_cpu_processes_match_one(tmp_path, data_root):
    from medlite.data import load_dataset
    from medlite.evaluate.metrics import auc, softmax

    recipe = load_recipe("breastmnist", ["data.limit=96", "student.arch=medlite_cnn_tiny", "student.epochs=3",
                                         "student.batch_size=16", "data.augment=none"])
    dataset = load_dataset(recipe.data, data_root, 0)
    n = len(dataset.splits["train"])
    single_model, single, f1 = _fit(dataset, recipe, tmp_path, "one", [])
    ddp_model, ddp, f2 = _fit(dataset, recipe, tmp_path, "ddp", ["trainer.devices=2", "trainer.strategy=ddp"])

    for epoch in range(3):
        one = json.loads((f1 / f"seen_e{epoch}_r0.json").read_text())
        ranks = [json.loads((f2 / f"seen_e{epoch}_r{r}.json").read_text()) for r in (0, 1)]
        assert sorted(one) == list(range(n))  # every image once per epoch
        assert sorted(ranks[0] + ranks[1]) == list(range(n))  # the two ranks split the same data
        assert len(ranks[0]) == len(ranks[1]) == n // 2
    assert len(ddp.history) == 3 and ddp.best_epoch >= 0
    # metrics from the whole validation split: rescoring the returned (best) model gives the same AUC
    val = dataset.splits["val"]
    x = (torch.from_numpy(val.images.transpose(0, 3, 1, 2)).float() / 255 - dataset.mean) / dataset.std
    with torch.no_grad():
        probs = softmax(ddp_model.eval()(x).numpy().astype(np.float64))
    assert auc(probs, val.labels) == pytest.approx(ddp.best_val_auc, abs=1e-6)
    print(f"DDP best val AUC {ddp.best_val_auc:.4f} (epoch {ddp.best_epoch}), 1 process {single.best_val_auc:.4f} (epoch {single.best_epoch})")
    assert abs(ddp.best_val_auc - single.best_val_auc) <= 0.15


def test_ddp_placement_spawns_on_gpus_and_refuses_nodes_and_missing_gpus():
    from medlite.errors import UsageError
    from medlite.train.device import MULTI_NODE, Placement, placement

    r = load_recipe("breastmnist", ["trainer.devices=2", "trainer.strategy=ddp"])
    assert placement(r.trainer, "cpu", "none") == Placement("ddp_fork", 2, 1, 2)
    # A GPU parent may hold CUDA already (an earlier stage): the ranks are spawned, not forked.
    assert placement(r.trainer, "cuda", "none", gpus=2) == Placement("ddp_spawn", 2, 1, 2)
    spawn = load_recipe("breastmnist", ["trainer.devices=2", "trainer.strategy=ddp_spawn"]).trainer
    assert placement(spawn, "cpu", "none") == Placement("ddp_spawn", 2, 1, 2)
    with pytest.raises(UsageError, match="2 GPUs requested but this machine has 1"):
        placement(r.trainer, "cuda", "none", gpus=1)
    nodes = load_recipe("breastmnist", ["trainer.num_nodes=2", "trainer.strategy=ddp"]).trainer
    for device in ("cpu", "cuda"):
        with pytest.raises(UsageError, match="num_nodes") as err:
            placement(nodes, device, "none", gpus=8)
        assert str(err.value) == MULTI_NODE and "--executor ray" in MULTI_NODE
    with pytest.raises(UsageError, match="strategy: ddp"):
        placement(load_recipe("breastmnist", ["trainer.devices=2"]).trainer, "cpu", "none")


def test_ddp_spawn_on_two_cpu_processes_trains_and_hands_back_the_best_model(tmp_path, data_root):
    """The GPU path (spawned ranks: the trainer pickled into fresh interpreters) on CPU with gloo."""
    from medlite.data import load_dataset

    recipe = load_recipe("breastmnist", ["data.limit=64", "student.arch=medlite_cnn_tiny", "student.epochs=2",
                                         "student.batch_size=16", "data.augment=none"])
    dataset = load_dataset(recipe.data, data_root, 0)
    said = []
    model, result, folder = _fit(dataset, recipe, tmp_path, "spawn", ["trainer.devices=2", "trainer.strategy=ddp_spawn"],
                                 say=said.append)
    _ranks_split_every_epoch(folder, len(dataset.splits["train"]), 2)
    assert len(result.history) == 2 and result.best_epoch >= 0
    assert _val_auc(model, dataset) == pytest.approx(result.best_val_auc, abs=1e-6)  # the best epoch came back
    assert [line.split(" loss")[0] for line in said] == ["train epoch 1/2", "train epoch 2/2"]  # said here, once


def test_compression_fine_tunes_run_under_ddp(tmp_path, data_root):
    """QAT and pruning fine-tunes (score_start: the starting weights are a candidate) under ddp_fork."""
    from medlite.compress.prune import GradualMagnitudePruning
    from medlite.compress.qat import prepare_qat
    from medlite.data import load_dataset
    from medlite.models import create
    from medlite.train import fit

    recipe = load_recipe("breastmnist", ["data.limit=64", "student.epochs=2", "student.batch_size=16",
                                         "data.augment=none"])
    dataset = load_dataset(recipe.data, data_root, 0)
    ddp = load_recipe("breastmnist", ["trainer.devices=2", "trainer.strategy=ddp"]).trainer
    torch.manual_seed(0)
    model = create("medlite_cnn_tiny", dataset.num_classes, dataset.channels, dataset.image_size)
    fit(model, dataset, recipe.student, data_cfg=recipe.data, seed=0, log_dir=tmp_path / "base", device="cpu",
        progress=False)  # the parent: trained, in one process
    train = dataset.splits["train"]
    calib = (torch.from_numpy(train.images[:16].transpose(0, 3, 1, 2)).float() / 255 - dataset.mean) / dataset.std
    qat = prepare_qat(model, calib)
    start = _val_auc(qat, dataset)
    # A learning rate that wrecks the model in one epoch: only the scored start can win.
    ruin = recipe.student.model_copy(update={"epochs": 1, "lr": 5.0})
    result = fit(qat, dataset, ruin, data_cfg=recipe.data, seed=0, log_dir=tmp_path / "qat", device="cpu",
                 progress=False, trainer_cfg=ddp, score_start=True)
    assert len(result.history) == 1 and result.history[0]["val_auc"] < result.best_val_auc
    assert result.best_epoch == -1  # the scored start beat the epoch: kept
    assert _val_auc(qat, dataset) == pytest.approx(start, abs=1e-9)  # ... and these are its weights
    recipe = load_recipe("breastmnist", ["data.limit=64", "student.epochs=1", "student.batch_size=16",
                                         "data.augment=none"])

    pruned = create("medlite_cnn_tiny", dataset.num_classes, dataset.channels, dataset.image_size)
    schedule = GradualMagnitudePruning(0.0, 0.5, "global")
    fit(pruned, dataset, recipe.student, data_cfg=recipe.data, seed=0, log_dir=tmp_path / "prune", device="cpu",
        progress=False, trainer_cfg=ddp, callbacks=(schedule,), select_best=False, score_start=True)
    weights = [m.weight for m in pruned.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(0.5, abs=0.02)  # rank 0's final, permanently pruned weights came back
    assert not any(name.endswith("_orig") for name, _ in pruned.named_parameters())
