"""The built-in explainers. Each returns one map per image: float32 (N, H, W) at the input size,
larger = more evidence for the target class. Inputs are normalised float32 NCHW arrays, exactly
what the deployed file takes.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar

import numpy as np

from medlite.errors import UsageError
from medlite.explain.registry import register

if TYPE_CHECKING:  # the recipe section, for type hints only (its validator reads this module's registry)
    from medlite.explain.config import ExplainConfig


@dataclass
class Subject:
    """What is explained: a variant's deployed file (`predict`) and, when it has one, its PyTorch module.

    `predict` maps normalised float32 NCHW images to class probabilities (N, K) by running the
    deployed artifact in its runtime.
    """

    name: str
    predict: Callable[[np.ndarray], np.ndarray]
    module: object | None = None  # torch.nn.Module
    format: str = "onnx-fp32"


class Explainer:
    name: ClassVar[str]
    kind: ClassVar[str]  # "gradient" (needs the PyTorch module) or "blackbox" (runs the deployed file)
    cite: ClassVar[str] = ""

    def __init__(self, cfg: ExplainConfig, seed: int = 0) -> None:
        self.cfg = cfg
        self.seed = seed
        self.info: dict = {}  # what the method chose (target layer, window, ...), recorded in results.json

    def not_applicable(self, subject: Subject) -> str | None:
        """Why this method cannot explain `subject` (recorded in results.json), or None."""
        if self.kind == "gradient" and subject.module is None:
            return f"needs the PyTorch module; {subject.name} exists only as a {subject.format} file"
        return None

    def explain(self, subject: Subject, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
        raise NotImplementedError


# -- gradient methods (PyTorch module) --------------------------------------------------------


def is_vit(model) -> bool:
    return hasattr(model, "patch_embed") and hasattr(model, "blocks")


def _feature_candidates(model) -> list[str]:
    """Module paths of the model's feature stages, shallow to deep.

    timm models list them in `feature_info`; our students have `stages`; anything else: every conv.
    """
    from torch import nn

    info = getattr(model, "feature_info", None)
    if isinstance(info, (list, tuple)) and info and isinstance(info[0], dict) and "module" in info[0]:
        return [entry["module"] for entry in info]
    if hasattr(info, "module_name"):  # timm FeatureInfo object
        return list(info.module_name())
    stages = getattr(model, "stages", None)
    if isinstance(stages, nn.Sequential) and len(stages):
        return [f"stages.{i}" for i in range(len(stages))]
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def find_target_layer(model, example, min_size: int = 4) -> tuple[str, Callable | None]:
    """The CAM layer: for a ViT the last block's first norm (tokens reshaped to the patch grid);
    for a CNN the deepest feature stage whose map is at least `min_size` pixels wide; for a model that
    names a `cam_backbone()` (a hybrid: its first non-ViT backbone; `fused(a)`: `a`), that one's layer.

    Why not always the last stage: at MedMNIST's 28 px a ResNet's last stage is 1-2 pixels wide,
    which gives one blob per image; the stage before it still carries class evidence at 4 x 4.
    Returns (module path, reshape_transform or None).
    """
    import torch

    backbone = getattr(model, "cam_backbone", None)
    if callable(backbone):
        # A model made of models (a hybrid's backbones, `fused(...)`'s base) names the submodule that sees
        # the image and stands for it: its own CAM layer, under that path.
        path = backbone()
        layer, reshape = find_target_layer(model.get_submodule(path), example, min_size)
        return f"{path}.{layer}", reshape
    if is_vit(model):
        return f"blocks.{len(model.blocks) - 1}.norm1", vit_reshape(model)
    names = _feature_candidates(model)
    if not names:
        raise ValueError(f"{type(model).__name__}: no convolutional feature stage to take a CAM from")
    sizes: dict[str, tuple] = {}
    hooks = [
        model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: sizes.__setitem__(n, tuple(o.shape)))
        for n in names
    ]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
    spatial = [(n, min(sizes[n][-2:])) for n in names if n in sizes and len(sizes[n]) == 4]
    if not spatial:
        raise ValueError(f"{type(model).__name__}: its feature stages give no 2-D maps")
    wide = [n for n, s in spatial if s >= min_size]
    # Deepest wide-enough stage; if every stage is narrower, the widest one.
    return (wide[-1] if wide else max(spatial, key=lambda t: t[1])[0]), None


def vit_reshape(model) -> Callable:
    """Tokens (N, prefix + h*w, C) -> (N, C, h, w): drop the class/register tokens, lay patches on the grid."""
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    h, w = model.patch_embed.grid_size

    def reshape(tokens):
        x = tokens[:, prefix:, :]
        return x.reshape(x.shape[0], h, w, x.shape[2]).permute(0, 3, 1, 2)

    return reshape


class _Cam(Explainer):
    kind = "gradient"
    cam_class: ClassVar[str]

    def explain(self, subject, images, targets):
        import pytorch_grad_cam
        import torch
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        model = subject.module.eval()
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        layer_name, reshape = find_target_layer(model, x[:1], self.cfg.min_cam_size)
        self.info = {"layer": layer_name}
        cam_cls = getattr(pytorch_grad_cam, self.cam_class)
        # Grad-CAM modules register hooks and print progress bars (Score-CAM): keep the run quiet.
        with torch.enable_grad(), contextlib.redirect_stderr(io.StringIO()):
            with cam_cls(model=model, target_layers=[model.get_submodule(layer_name)], reshape_transform=reshape) as cam:
                cam.batch_size = 64
                maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
        return np.asarray(maps, dtype=np.float32)


@register
class GradCam(_Cam):
    """Grad-CAM: channel weights = spatially averaged gradients of the class score (Selvaraju et al., ICCV 2017)."""

    name, cam_class = "gradcam", "GradCAM"
    cite = "Selvaraju et al. 2017, Grad-CAM, ICCV"


@register
class GradCamPlusPlus(_Cam):
    """Grad-CAM++: second-order weighting of positive gradients (Chattopadhay et al., WACV 2018)."""

    name, cam_class = "gradcam++", "GradCAMPlusPlus"
    cite = "Chattopadhay et al. 2018, Grad-CAM++, WACV"


@register
class ScoreCam(_Cam):
    """Score-CAM: channel weights = the class score of the input masked by each activation map
    (Wang et al., CVPR-W 2020). Gradient-free, but needs the module's activations."""

    name, cam_class = "scorecam", "ScoreCAM"
    cite = "Wang et al. 2020, Score-CAM, CVPR Workshops"


@register
class AttentionRollout(Explainer):
    """Attention rollout for ViTs (Abnar & Zuidema, ACL 2020): multiply the head-averaged attention
    matrices (plus identity, for the residual path) through the layers; the class token's row over
    the patches is the map. Class-agnostic: the target is ignored (recorded in `info`)."""

    name, kind = "attention_rollout", "gradient"
    cite = "Abnar & Zuidema 2020, Quantifying Attention Flow in Transformers, ACL"

    def not_applicable(self, subject):
        reason = super().not_applicable(subject)
        if reason is None and not is_vit(subject.module):
            reason = f"{type(subject.module).__name__} is not a vision transformer"
        return reason

    def explain(self, subject, images, targets):
        import torch
        import torch.nn.functional as F

        model = subject.module.eval()
        attentions: list = []
        hooks, fused = [], []
        for block in model.blocks:
            attn = block.attn
            # timm's fused kernel never materialises the attention matrix; the explicit path does.
            fused.append(getattr(attn, "fused_attn", False))
            attn.fused_attn = False
            hooks.append(attn.attn_drop.register_forward_hook(lambda m, i, o: attentions.append(o.detach())))
        try:
            with torch.no_grad():
                model(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)))
        finally:
            for h, block, f in zip(hooks, model.blocks, fused):
                h.remove()
                block.attn.fused_attn = f
        if not attentions:
            raise ValueError(f"{subject.name}: no attention matrices captured (unsupported ViT attention module)")
        n_tokens = attentions[0].shape[-1]
        rollout = torch.eye(n_tokens).expand(len(images), n_tokens, n_tokens)
        for a in attentions:
            a = a.mean(dim=1) + torch.eye(n_tokens)
            rollout = (a / a.sum(dim=-1, keepdim=True)) @ rollout
        prefix = int(getattr(model, "num_prefix_tokens", 1))
        h, w = model.patch_embed.grid_size
        grid = rollout[:, 0, prefix:].reshape(len(images), 1, h, w)
        maps = F.interpolate(grid, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        self.info = {"class_agnostic": True, "layers": len(attentions)}
        return maps.numpy().astype(np.float32)


# -- black-box methods (the deployed file) ----------------------------------------------------


def default_cell(size: int) -> int:
    """A seventh of the image side: 4 px at 28 px, 32 px at 224 px."""
    return max(2, size // 7)


def covering_stride(size: int, window: int, stride: int, configured: bool) -> int:
    """A stride whose windows end exactly at the border: captum's grid has no extra last window, so
    with any other stride the last pixels would never be occluded (and get no score). A default
    stride that does not reach is narrowed to the largest one that does; a configured one is an error."""
    span = size - window
    if span <= 0 or span % stride == 0:
        return stride
    if configured:
        fits = [d for d in range(1, span + 1) if span % d == 0]
        raise UsageError(f"explain.occlusion.stride: windows of {window} px every {stride} px leave the last "
                         f"{span % stride} px of the {size} px image uncovered; choose a stride in {fits}")
    return max(d for d in range(1, stride + 1) if span % d == 0)


def torch_forward(subject: Subject) -> Callable:
    """The deployed file's probabilities as a torch function, for captum's black-box attributions."""
    import torch

    def forward(x: "torch.Tensor") -> "torch.Tensor":
        return torch.from_numpy(subject.predict(x.detach().numpy().astype(np.float32)))

    return forward


@register
class Occlusion(Explainer):
    """Occlusion sensitivity (Zeiler & Fergus, ECCV 2014) through captum: slide a grey square over
    the image; a pixel's score is the mean drop in the target probability over the windows that
    cover it. Runs the deployed file, so it explains int8 and pruned variants exactly as shipped."""

    name, kind = "occlusion", "blackbox"
    cite = "Zeiler & Fergus 2014, Visualizing and Understanding Convolutional Networks, ECCV"
    batch_images = 512  # images per call of the deployed file (windows x images)

    def explain(self, subject, images, targets):
        import torch
        from captum.attr import Occlusion as CaptumOcclusion

        n, c, h, w = images.shape
        win = min(self.cfg.occlusion.window or default_cell(min(h, w)), h, w)
        stride = self.cfg.occlusion.stride or win
        strides = tuple(covering_stride(size, win, stride, self.cfg.occlusion.stride is not None) for size in (h, w))
        windows = ((h - win) // strides[0] + 1) * ((w - win) // strides[1] + 1)
        self.info = {"window": win, "stride": strides[0] if strides[0] == strides[1] else list(strides),
                     "fill": "dataset mean (0 after normalisation)"}
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        attr = CaptumOcclusion(torch_forward(subject)).attribute(
            x, sliding_window_shapes=(c, win, win), strides=(c, *strides), baselines=0.0,
            target=torch.as_tensor(np.asarray(targets), dtype=torch.long),
            perturbations_per_eval=max(1, min(windows, self.batch_images // n)))
        return attr.mean(dim=1).numpy().astype(np.float32)  # the same score in every channel


def grid_segments(h: int, w: int, cell: int) -> np.ndarray:
    """Square superpixels (int ids, H x W): deterministic, and fair to every model alike."""
    rows = np.arange(h) // cell
    cols = np.arange(w) // cell
    return rows[:, None] * (cols.max() + 1) + cols[None, :]


@register
class Lime(Explainer):
    """LIME (Ribeiro et al., KDD 2016) through captum: fit a linear model to the deployed file's
    target probability on random on/off patterns of square superpixels (off = dataset mean)."""

    name, kind = "lime", "blackbox"
    cite = "Ribeiro et al. 2016, \"Why Should I Trust You?\", KDD"

    def explain(self, subject, images, targets):
        import torch
        from captum._utils.models.linear_model import SkLearnRidge
        from captum.attr import Lime as CaptumLime

        n, c, h, w = images.shape
        cell = self.cfg.lime.cell or default_cell(min(h, w))
        segments = torch.from_numpy(grid_segments(h, w, cell)).long()
        mask = segments[None, None].expand(1, c, h, w)
        self.info = {"samples": self.cfg.lime.samples, "superpixel": f"{cell}x{cell} grid", "surrogate": "ridge"}

        lime = CaptumLime(torch_forward(subject), interpretable_model=SkLearnRidge(alpha=1.0))
        torch.manual_seed(self.seed)  # captum draws the on/off patterns from torch's generator
        maps = []
        for i in range(n):
            x = torch.from_numpy(np.ascontiguousarray(images[i : i + 1], dtype=np.float32))
            attr = lime.attribute(x, target=int(targets[i]), feature_mask=mask, baselines=0.0,
                                  n_samples=self.cfg.lime.samples, perturbations_per_eval=self.cfg.lime.samples)
            maps.append(attr[0].mean(0).numpy())
        return np.stack(maps).astype(np.float32)
