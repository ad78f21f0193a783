"""The per-epoch record: one history row and one plain line per epoch, and the `epoch:<label>:<n>` fault point;
and the training telemetry TensorBoard shows (`Telemetry`: feature maps, ViT attention, gradient flow)."""

from __future__ import annotations

import time
from typing import Callable

import lightning as L
import numpy as np
import torch

from medlite.runstate import fault_point

GPU_MEMORY = "gpu_max_mem_mb"  # peak memory torch allocated on the GPU during the epoch; None (empty) on CPU


class EpochLog(L.Callback):
    """Times each training epoch, appends its metrics to `module.history` and reports one line per epoch.

    On a GPU each epoch also records the peak memory torch allocated in it (`torch.cuda.max_memory_allocated`,
    the peak reset at the epoch's start), in MiB; on a CPU the value is None (an empty cell in metrics.csv).
    """

    def __init__(self, label: str, say: Callable[[str], None] | None) -> None:
        self.label, self.say = label, say
        self.start = 0.0

    def on_train_epoch_start(self, trainer, module) -> None:
        if module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(module.device)
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, module) -> None:
        seconds = time.perf_counter() - self.start
        memory = None
        if module.device.type == "cuda":
            memory = torch.cuda.max_memory_allocated(module.device) / 2**20
            # DDP: metrics.csv gets the largest rank's peak (the one that runs out first); the history row, rank 0's
            module.log(GPU_MEMORY, memory, sync_dist=trainer.world_size > 1, reduce_fx="max")
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        module.log("epoch_time", seconds, sync_dist=trainer.world_size > 1)  # DDP: the mean over ranks
        metrics.pop(GPU_MEMORY, None)
        row = {"epoch": trainer.current_epoch, "seconds": round(seconds, 3), **{k: round(v, 5) for k, v in metrics.items()},
               GPU_MEMORY: None if memory is None else round(memory, 1)}
        module.history.append(row)
        fault_point(f"epoch:{self.label}:{trainer.current_epoch + 1}")  # tests kill a run mid-training here
        if self.say and trainer.is_global_zero:
            self.say(self.line(self.label, row, trainer.max_epochs))

    @staticmethod
    def line(label: str, row: dict, epochs: int) -> str:
        """The plain line of one epoch's history row."""
        val = f" val_auc {row['val_auc']:.3f} val_acc {row['val_acc']:.3f}" if "val_auc" in row else ""
        return (f"{label} epoch {row['epoch'] + 1}/{epochs}"
                f" loss {row.get('train_loss', float('nan')):.4f}{val} ({row['seconds']:.1f}s)")


# -- TensorBoard telemetry --------------------------------------------------------------------------------

TAG = "telemetry"
CHANNELS = 8  # feature-map channels drawn per image and layer
MIN_SIDE = 16  # maps smaller than this are drawn enlarged (nearest neighbour)


def pick_images(labels: np.ndarray, count: int) -> np.ndarray:
    """`count` image indices taking the classes in turn (the first image of each class, then the second ...),
    so a few images show every class; multi-hot labels: the first images."""
    if labels.ndim != 1:
        return np.arange(min(count, len(labels)))
    queues = [list(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    out: list[int] = []
    while len(out) < min(count, len(labels)):
        for queue in queues:
            if queue and len(out) < count:
                out.append(int(queue.pop(0)))
    return np.asarray(out, np.int64)


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Each map scaled to [0, 1] on its own (dims: ... x H x W)."""
    low = x.flatten(-2).min(-1).values[..., None, None]
    high = x.flatten(-2).max(-1).values[..., None, None]
    return (x - low) / (high - low).clamp_min(1e-8)


def _enlarged(x: torch.Tensor) -> torch.Tensor:
    side = x.shape[-1]
    if side >= MIN_SIDE:
        return x
    return torch.nn.functional.interpolate(x, scale_factor=-(-MIN_SIDE // side), mode="nearest")


def vit_blocks(model: torch.nn.Module):
    """The blocks of a timm Vision Transformer whose attention can be read (`attn.fused_attn` switchable), else None."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or not len(blocks) or not hasattr(getattr(blocks[-1], "attn", None), "fused_attn"):
        return None
    return blocks


class Telemetry(L.Callback):
    """At epochs `every`, 2 x `every`, ... and the last: TensorBoard images of what the model does with a few
    fixed validation images (never test ones), and how the gradients flowed in that epoch.

    Tags (all under `telemetry/`): `inputs` (the images), `features/<module>` (the first channels of the first,
    middle and last stage's output: one row per image), `attention` (timm ViTs: the last block's attention of
    the class token to each patch, averaged over heads, at the image's size), `gradient_flow` (a figure: the
    mean L2 norm of each layer's weight gradient over the epoch's optimizer steps, input to output, log scale)
    and `gradient_norms` (the same norms as a histogram). Drawing runs the model in eval mode without
    gradients, so training is unchanged (no random draw, no batch-norm statistics updated).
    """

    def __init__(self, cfg, images: np.ndarray) -> None:
        self.cfg = cfg
        self.images = images  # uint8 N x H x W x C, validation
        self._norms: dict[str, torch.Tensor] = {}
        self._steps = 0

    def _logged(self, trainer) -> bool:
        epoch = trainer.current_epoch + 1
        return epoch % self.cfg.every == 0 or epoch == trainer.max_epochs

    @staticmethod
    def _writer(trainer):
        from lightning.pytorch.loggers import TensorBoardLogger

        return next((lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)

    def on_train_epoch_start(self, trainer, module) -> None:
        self._norms, self._steps = {}, 0

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        # Gradients are complete here (and unscaled under 16-bit mixed precision). Summed on the device:
        # no host sync per step.
        if not self.cfg.gradients or not self._logged(trainer):
            return
        for name, param in module.model.named_parameters():
            if param.grad is not None and param.ndim > 1:  # weights of convolutions and linear layers
                norm = param.grad.detach().float().norm()
                self._norms[name] = self._norms[name] + norm if name in self._norms else norm
        self._steps += 1

    def on_train_epoch_end(self, trainer, module) -> None:
        if not self._logged(trainer) or not trainer.is_global_zero:
            return
        writer = self._writer(trainer)
        if writer is None:
            return
        step = trainer.current_epoch + 1
        if self.cfg.gradients and self._steps:
            self._gradients(writer, step)
        if len(self.images) and (self.cfg.features or self.cfg.attention):
            self._draw(writer, module, step)
        writer.flush()

    def _gradients(self, writer, step: int) -> None:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt

        names = list(self._norms)
        norms = torch.stack([self._norms[n] for n in names]).cpu().numpy() / self._steps
        writer.add_histogram(f"{TAG}/gradient_norms", norms, step)
        fig, ax = plt.subplots(figsize=(max(6.0, 0.12 * len(names)), 3.2))
        ax.bar(np.arange(len(names)), np.maximum(norms, 1e-12), color="#4c72b0")
        ax.set_yscale("log")
        ax.set_xlabel("layer (input to output)")
        ax.set_ylabel("mean gradient L2 norm")
        ax.set_title(f"gradient flow, epoch {step} ({self._steps} steps)")
        every = max(1, len(names) // 12)
        ax.set_xticks(np.arange(0, len(names), every))
        ax.set_xticklabels([names[i].removesuffix(".weight") for i in range(0, len(names), every)], rotation=60,
                           ha="right", fontsize=6)
        fig.tight_layout()
        writer.add_figure(f"{TAG}/gradient_flow", fig, step, close=True)

    def _inputs(self, module) -> torch.Tensor:
        from medlite.train.augment import resize_to

        x = torch.from_numpy(self.images).permute(0, 3, 1, 2).float().div(255).to(module.device)
        return resize_to(module.normalize(x), module.input_size)

    def _draw(self, writer, module, step: int) -> None:
        from torchvision.utils import make_grid

        from medlite.models.taps import FeatureTaps, as_map, stage_paths

        model = module.model
        x = self._inputs(module)
        shown = _unit(x * module.std + module.mean)
        writer.add_image(f"{TAG}/inputs", make_grid(shown[:, :3].cpu(), nrow=len(x), padding=2), step)
        paths = stage_paths(model, strict=False) if self.cfg.features else []
        if len(paths) > 3:
            paths = [paths[0], paths[(len(paths) - 1) // 2], paths[-1]]
        taps = FeatureTaps(model, paths, "model") if paths else None
        blocks = vit_blocks(model) if self.cfg.attention else None
        attention: list[torch.Tensor] = []
        handle = fused = None
        if blocks is not None:
            attn = blocks[-1].attn
            fused, attn.fused_attn = attn.fused_attn, False  # the explicit softmax path: its weights can be caught
            handle = attn.attn_drop.register_forward_hook(lambda _m, _i, out: attention.append(out.detach()))
        was_training = model.training
        model.eval()
        # Gradient checkpointing (timm's flag) would run the stages through checkpoint_seq, around the modules
        # the taps hook: drawn with the plain forward, then switched back on.
        checkpointed = [m for m in model.modules() if getattr(m, "grad_checkpointing", False) is True]
        for m in checkpointed:
            m.grad_checkpointing = False
        try:
            with torch.no_grad():
                model(x)
        finally:
            model.train(was_training)
            for m in checkpointed:
                m.grad_checkpointing = True
            if taps is not None:
                features = taps.take()
                taps.remove()
            if handle is not None:
                handle.remove()
                blocks[-1].attn.fused_attn = fused
        for path in paths:
            if path not in features:  # a module the forward did not call as such: nothing to draw
                continue
            maps = as_map(features[path].float())[:, :CHANNELS]  # images x channels x h x w
            n, c, h, w = maps.shape
            tiles = _enlarged(_unit(maps).reshape(n * c, 1, h, w))
            writer.add_image(f"{TAG}/features/{path}", make_grid(tiles.cpu(), nrow=c, padding=1, pad_value=1.0), step)
        if attention:
            writer.add_image(f"{TAG}/attention", self._attention_image(model, attention[-1], x), step)

    @staticmethod
    def _attention_image(model, weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The class token's (else the mean query's) attention to each patch, as a map at the image's size."""
        from torchvision.utils import make_grid

        prefix = int(getattr(model, "num_prefix_tokens", 1))
        mean = weights.float().mean(1)  # images x tokens x tokens, averaged over heads
        rows = mean[:, 0, prefix:] if prefix else mean[:, :, prefix:].mean(1)
        grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
        gh, gw = grid if grid is not None else (int(rows.shape[1] ** 0.5),) * 2
        maps = rows.reshape(len(rows), 1, gh, gw)
        maps = torch.nn.functional.interpolate(maps, size=x.shape[-2:], mode="nearest")
        return make_grid(_unit(maps).cpu(), nrow=len(maps), padding=2)
