"""Training telemetry (issue 19, item 4): GPU memory per epoch in the CSV log (null on a CPU), TensorBoard
images at set epochs (feature maps of validation images, ViT attention, gradient flow), read back with
TensorBoard's EventAccumulator; `trainer.grad_checkpointing` switched on where a model has it, refused
where it has none."""

from __future__ import annotations

import copy
import csv

import pytest
import torch

from medlite.data import load_dataset
from medlite.errors import UsageError
from medlite.recipe import load_recipe


@pytest.fixture(scope="module")
def tiny(data_root):
    recipe = load_recipe("breastmnist", ["data.limit=24", "trainer.telemetry={every: 2, images: 3}"])
    return recipe, load_dataset(recipe.data, data_root, recipe.seed)


def _events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"images": 0, "histograms": 0, "scalars": 0})
    events.Reload()
    return events


def test_cnn_run_writes_feature_maps_gradient_flow_and_a_null_gpu_memory_column(tiny, tmp_path):
    from medlite.models import create
    from medlite.train import fit

    recipe, data = tiny
    model = create("medlite_cnn_tiny", 2, 1, 28)
    cfg = recipe.student.model_copy(update={"epochs": 3, "batch_size": 8})
    result = fit(model, data, cfg, data_cfg=recipe.data, seed=0, log_dir=tmp_path, trainer_cfg=recipe.trainer)
    assert [row["gpu_max_mem_mb"] for row in result.history] == [None, None, None]  # a CPU run
    with open(tmp_path / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    epoch_rows = [r for r in rows if r.get("epoch_time")]
    assert len(epoch_rows) == 3 and all(r["gpu_max_mem_mb"] == "" for r in epoch_rows)

    events = _events(tmp_path)
    images = set(events.Tags()["images"])
    features = {f"telemetry/features/stages.{i}" for i in range(3)}
    assert {"telemetry/inputs", "telemetry/gradient_flow"} | features <= images, images
    assert "telemetry/attention" not in images  # not a ViT
    # epochs 2 (every: 2) and 3 (the last), not 1
    assert [e.step for e in events.Images("telemetry/gradient_flow")] == [2, 3]
    first = events.Images("telemetry/features/stages.0")[0]
    assert first.height > 3 * 28 and first.width > 8 * 28  # 3 images x 8 channels of 28 x 28 maps
    inputs = events.Images("telemetry/inputs")[0]
    assert inputs.width > 3 * 28 > inputs.height  # the 3 validation images side by side
    norms = events.Histograms("telemetry/gradient_norms")
    weights = [p for p in model.parameters() if p.ndim > 1]
    assert [h.step for h in norms] == [2, 3] and norms[0].histogram_value.num == len(weights)
    assert norms[0].histogram_value.min > 0  # every layer had a gradient


def test_vit_run_draws_the_attention_of_its_last_block(tiny, tmp_path):
    from timm.models.vision_transformer import VisionTransformer

    from medlite.train import fit
    from medlite.train.callbacks import vit_blocks

    recipe, data = tiny
    model = VisionTransformer(img_size=28, patch_size=7, in_chans=1, num_classes=2, embed_dim=16, depth=2, num_heads=2)
    assert vit_blocks(model) is not None and model.blocks[-1].attn.fused_attn  # the fast path while training
    cfg = recipe.student.model_copy(update={"epochs": 1, "batch_size": 8})
    fit(model, data, cfg, data_cfg=recipe.data, seed=0, log_dir=tmp_path, trainer_cfg=recipe.trainer)
    assert model.blocks[-1].attn.fused_attn  # given back after drawing
    images = set(_events(tmp_path).Tags()["images"])
    assert {"telemetry/attention", "telemetry/features/blocks.0", "telemetry/features/blocks.1"} <= images, images
    attention = _events(tmp_path).Images("telemetry/attention")[0]
    assert attention.width > 3 * 28  # one 28 x 28 map per validation image


def test_pick_images_takes_the_classes_in_turn():
    import numpy as np

    from medlite.train.callbacks import pick_images

    labels = np.array([0, 0, 0, 1, 2, 2])
    assert pick_images(labels, 4).tolist() == [0, 3, 4, 1]
    assert pick_images(labels, 10).tolist() == [0, 3, 4, 1, 5, 2]


def test_grad_checkpointing_recomputes_and_gives_the_same_gradients():
    from medlite.models import create
    from medlite.train.checkpointing import enable

    torch.manual_seed(0)
    plain = create("small_pooled_mobilenetv3_small_050", 2, 1, 28)
    checkpointed = copy.deepcopy(plain)
    enable(checkpointed, "small_pooled_mobilenetv3_small_050", "teacher.arch")
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 0, 1])
    calls = {"plain": 0, "checkpointed": 0}
    for name, model in (("plain", plain), ("checkpointed", checkpointed)):
        # timm's checkpoint_seq(flatten=True) calls the inner blocks, not the stage; a pre-hook, as the
        # recomputation stops once the saved tensors it needs are back (before the block returns)
        model.blocks[0][0].register_forward_pre_hook(lambda *_, n=name: calls.__setitem__(n, calls[n] + 1))
        torch.nn.functional.cross_entropy(model(x), y).backward()
    assert calls == {"plain": 1, "checkpointed": 2}  # recomputed in the backward pass
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name


def test_grad_checkpointing_refused_for_a_model_without_it_before_anything_runs():
    from medlite.pipeline import check_recipe

    with pytest.raises(UsageError, match=r"trainer.grad_checkpointing: teacher.arch 'medlite_dsconv_wide' has no "
                                         r"gradient checkpointing .*or to the sections whose models have it"):
        check_recipe(load_recipe("breastmnist", ["trainer.grad_checkpointing=true"]))
    with pytest.raises(UsageError, match=r"teacher.arch 'small_vgg16' refuses gradient checkpointing \(gradient "
                                         r"checkpointing not supported\)"):
        check_recipe(load_recipe("breastmnist", ["teacher.arch=small_vgg16", "trainer.grad_checkpointing=[teacher]"]))
    with pytest.raises(UsageError, match=r"student.arch 'medlite_dsconv'"):
        check_recipe(load_recipe("breastmnist", ["teacher.arch=small_resnet18", "trainer.grad_checkpointing=true"]))
    # only the teacher: a timm ResNet has it, the medlite student is not asked
    check_recipe(load_recipe("breastmnist", ["teacher.arch=small_resnet18", "trainer.grad_checkpointing=[teacher]"]))


def test_a_checkpointed_model_is_drawn_with_its_plain_forward(tiny, tmp_path):
    """timm runs checkpointed stages through checkpoint_seq, past the stage modules the taps hook (a run
    with both keys stopped with KeyError 'blocks.0'); drawing switches the flag off and back on."""
    from types import SimpleNamespace

    from torch.utils.tensorboard import SummaryWriter

    from medlite.models import create
    from medlite.train.callbacks import Telemetry, pick_images
    from medlite.train.checkpointing import enable

    recipe, data = tiny
    model = create("small_pooled_mobilenetv3_small_050", 2, 1, 28)
    enable(model, "small_pooled_mobilenetv3_small_050", "teacher.arch")
    module = SimpleNamespace(model=model, device=torch.device("cpu"), mean=data.mean, std=data.std, input_size=None,
                             normalize=lambda x: (x - data.mean) / data.std)
    val = data.splits["val"]
    with SummaryWriter(str(tmp_path)) as writer:
        Telemetry(recipe.trainer.telemetry, val.images[pick_images(val.labels, 2)])._draw(writer, module, 1)
    assert model.grad_checkpointing is True and model.training
    images = set(_events(tmp_path).Tags()["images"])
    assert {"telemetry/features/blocks.0", "telemetry/features/blocks.5"} <= images, images
