"""`trainer.deterministic: true` reaches Lightning and gives bitwise-identical weights on a repeat."""

from pathlib import Path

import lightning as L
import pytest
import torch

from medlite.data import load_dataset
from medlite.recipe import load_recipe
from medlite.train import fit


class _SeesFlag(L.Callback):
    """Records whether torch ran with deterministic algorithms only while the model trained."""

    def __init__(self) -> None:
        self.seen: list[bool] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.seen.append(torch.are_deterministic_algorithms_enabled())


@pytest.fixture
def _restore_torch_flag():
    # Lightning sets torch.use_deterministic_algorithms process-wide; leave it as found for other tests.
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def _train_twice(data_root, tmp_path, deterministic: bool):
    from medlite.context import Context

    recipe = load_recipe("breastmnist", ["data.limit=48", f"trainer.deterministic={str(deterministic).lower()}"])
    ds = load_dataset(recipe.data, data_root, recipe.seed)
    cfg = recipe.student.model_copy(update={"epochs": 1, "arch": "medlite_dsconv_tiny"})
    seen = _SeesFlag()
    weights = []
    for run in range(2):
        torch.manual_seed(100 + run)  # whatever the global RNG state was before: the recipe seed decides
        ctx = Context(recipe, run=None, data_root=data_root, say=print, progress=False)
        ctx.dataset = ds
        model = ctx.models.build(cfg.arch)
        fit(model, ds, cfg, data_cfg=recipe.data, seed=recipe.seed, log_dir=Path(tmp_path) / f"{deterministic}{run}",
            callbacks=(seen,), trainer_cfg=recipe.trainer)
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
    return recipe, seen.seen, weights


def test_deterministic_key_reaches_lightning_and_repeats_bitwise(data_root, tmp_path, _restore_torch_flag):
    recipe, seen, (a, b) = _train_twice(data_root, tmp_path, deterministic=True)
    assert recipe.trainer.deterministic is True
    assert seen == [True, True]
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]  # exact, not allclose
    assert not different, f"weights differ between two deterministic runs: {different}"


def test_default_is_not_deterministic(data_root, tmp_path, _restore_torch_flag):
    torch.use_deterministic_algorithms(True)  # a flag left on elsewhere must not leak into training
    assert load_recipe("breastmnist").trainer.deterministic is False
    _, seen, _ = _train_twice(data_root, tmp_path, deterministic=False)
    assert seen == [False, False]
