"""DDP on CPU: 2 processes (gloo, forked) against 1 process on the same data.

Stated tolerance: after 3 epochs on BreastMNIST (96 training images, all 78 validation images),
the best validation AUC of the 2-process run is within 0.15 of the 1-process run (the global batch
is the same; BatchNorm statistics are per process, so the runs are not bit-identical).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from medlite.recipe import load_recipe


class SeenIndices:
    """Writes the training indices each rank saw, per epoch (works across forked processes)."""

    def __new__(cls, folder):
        import lightning as L

        class _Seen(L.Callback):
            def on_train_epoch_start(self, trainer, module):
                self.seen = []

            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                self.seen += batch["idx"].tolist()

            def on_train_epoch_end(self, trainer, module):
                path = folder / f"seen_e{trainer.current_epoch}_r{trainer.global_rank}.json"
                path.write_text(json.dumps(self.seen))

        return _Seen()


def _fit(dataset, recipe, tmp_path, name, trainer_overrides):
    from medlite.models import create
    from medlite.train import fit

    r = load_recipe("breastmnist", trainer_overrides)
    torch.manual_seed(0)
    model = create("medlite_cnn_tiny", dataset.num_classes, dataset.channels, dataset.image_size)
    folder = tmp_path / name
    folder.mkdir()
    result = fit(model, dataset, recipe.student, data_cfg=recipe.data, seed=0, log_dir=folder / "logs",
                 callbacks=(SeenIndices(folder),), device="cpu", progress=False, trainer_cfg=r.trainer)
    return model, result, folder


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


def test_multi_gpu_or_node_ddp_is_refused_not_faked():
    from medlite.errors import UsageError
    from medlite.train.device import Placement, placement

    r = load_recipe("breastmnist", ["trainer.devices=2", "trainer.strategy=ddp"])
    with pytest.raises(UsageError, match="GPUs or nodes"):
        placement(r.trainer, "cuda", "none", False)
    with pytest.raises(UsageError, match="strategy: ddp"):
        placement(load_recipe("breastmnist", ["trainer.devices=2"]).trainer, "cpu", "none", False)
    assert placement(r.trainer, "cpu", "none", False) == Placement("ddp_fork", 2, 1, 2)
