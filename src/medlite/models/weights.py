"""Safe weight files: safetensors for everything we write; torch.load(weights_only=True) for timm checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from medlite.errors import UsageError


def save_state(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors checkpoint atomically (temporary name, then rename)."""
    from safetensors.torch import save_file

    from medlite.runstate import atomic_path

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)


def read_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UsageError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles arbitrary objects
    except Exception as err:  # noqa: BLE001 - any failure here is a bad file
        raise UsageError(f"{path}: not a readable weights file ({type(err).__name__})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return {k.removeprefix("module.").removeprefix("model."): v for k, v in state.items() if torch.is_tensor(v)}


def load_pretrained(model: nn.Module, path: Path) -> tuple[int, int]:
    """Copy every tensor whose name and shape match (a new head or stem keeps its fresh init).

    Returns (loaded, skipped); fails when nothing matches, which means the file is for another model.
    """
    state = read_state(path)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise UsageError(f"{path}: no tensor matches the model (is it for another architecture?)")
    model.load_state_dict(usable, strict=False)
    return len(usable), len(own) - len(usable)


def load_exact(model: nn.Module, path: Path) -> nn.Module:
    """Load a checkpoint we wrote ourselves: every key must match."""
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(path)))
    return model


def imagenet_file(name: str) -> Path:
    """The local file of timm's ImageNet weights for `name`, downloaded once into the Hugging Face cache.

    Offline (`MEDLITE_OFFLINE=1`, or no network) a file already in the cache is used; otherwise a
    UsageError names the model, the file to fetch and where to put it.
    """
    import timm
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        raise UsageError(f"pretrained: imagenet: timm has no Hugging Face weights for {name!r}; give a local .safetensors file")
    filename, cache = "model.safetensors", _hub_cache()
    cached = try_to_load_from_cache(repo, filename, cache_dir=cache)
    if isinstance(cached, str) and Path(cached).is_file():
        return Path(cached)
    where = (f"download https://huggingface.co/{repo}/resolve/main/{filename} and set pretrained: to that file's path"
             f" (or run once with network; the cache is {cache})")
    if os.environ.get("MEDLITE_OFFLINE") == "1":
        raise UsageError(f"pretrained: imagenet: weights for {name!r} ({repo}) are not cached and MEDLITE_OFFLINE=1: {where}")
    try:
        return Path(hf_hub_download(repo, filename, cache_dir=cache))
    except Exception as err:  # noqa: BLE001 - any network or hub failure is reported the same way
        raise UsageError(f"pretrained: imagenet: cannot download weights for {name!r} ({repo}: {type(err).__name__}): {where}") from None


def _hub_cache() -> str:
    """The Hugging Face hub cache (read at call time, so $HF_HUB_CACHE set later still counts)."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE


def read_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file (no tensors are read)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def load_checkpoint(model, path: Path):
    """`model` (fresh from `create`) with a variant's safetensors weights: the one loader the pipeline
    and the bench's eager reference share.

    A structured-pruned checkpoint (metadata `structure: pruned`) has narrower layers than `create()`
    builds: they are rebuilt at the saved widths (`load_pruned_state`, tensors only, no pickle); any
    other checkpoint must fit exactly.
    """
    if read_metadata(path).get("structure") == "pruned":
        from safetensors.torch import load_file

        return load_pruned_state(model, load_file(str(path)))
    return load_exact(model, path)


def load_pruned_state(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Shrink a freshly created model's layers to a pruned checkpoint's shapes, then load it.

    Checkpoints are safetensors (tensors only, never pickle), so a structurally pruned model
    is restored as `create(arch, ...)` + this: conv, linear and batch-norm layers whose saved
    shapes differ are rebuilt with the saved widths (depthwise convs keep groups == channels).
    """
    for name, module in list(model.named_modules()):
        weight = state_dict.get(f"{name}.weight")
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and weight is not None:
            if tuple(weight.shape) == tuple(module.weight.shape):
                continue
            out_channels, in_per_group = int(weight.shape[0]), int(weight.shape[1])
            depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
            groups = out_channels if depthwise else module.groups
            new = type(module)(
                in_per_group * groups, out_channels, module.kernel_size, module.stride, module.padding,
                module.dilation, groups, bias=module.bias is not None, padding_mode=module.padding_mode,
            )
        elif isinstance(module, nn.Linear) and weight is not None:
            if tuple(weight.shape) == tuple(module.weight.shape):
                continue
            new = nn.Linear(int(weight.shape[1]), int(weight.shape[0]), bias=module.bias is not None)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            stat = state_dict.get(f"{name}.running_mean", weight)
            if stat is None or stat.shape[0] == module.num_features:
                continue
            new = _resized_norm(module, int(stat.shape[0]))
        else:
            continue
        _set_module(model, name, new)
    model.load_state_dict(state_dict)
    return model


def _resized_norm(module: nn.modules.batchnorm._BatchNorm, width: int) -> nn.modules.batchnorm._BatchNorm:
    """`module` at `width` channels, everything else kept: a copy, not a fresh `type(module)(...)`, since
    subclasses carry more than a batch norm (timm's BatchNormAct2d holds its activation, SiLU in an
    EfficientNet, which a fresh one would make the default ReLU). The tensors are placeholders the
    checkpoint then fills."""
    import copy

    new = copy.deepcopy(module)
    new.num_features = width
    for name, tensor in list(new.named_parameters(recurse=False)):
        setattr(new, name, nn.Parameter(torch.empty(width, dtype=tensor.dtype)))
    for name, tensor in list(new.named_buffers(recurse=False)):
        if tensor is not None and tensor.dim() == 1:  # running_mean / running_var (num_batches_tracked is a scalar)
            new.register_buffer(name, torch.empty(width, dtype=tensor.dtype))
    return new


# -- unstructured (gradual magnitude) pruning ------------------------------------------------


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)
