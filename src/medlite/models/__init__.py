"""`create(arch, num_classes, in_chans, img_size)`: one front door to every model medlite can train.

Every name resolves through the model registry (`medlite.models.registry`, the timm way), where each
kind registers itself in its own module:
- our compact students by name (`compact.py`): `medlite_cnn`, `medlite_dsconv` (and `_tiny` / `_wide`);
- families by prefix (`families.py`): `small_<timm model>`, `small_pooled_<timm model>`,
  `small_vit_*`, `torchvision/<name>`, and any other timm name (`resnet18`, `efficientnet_b0`, ...);
- composites (`composite.py`): `ensemble(a,b,...)` and `fused(a)`, read by the registry's one parser.

Unknown names raise a UsageError with the closest known ones.
"""

from __future__ import annotations

from medlite.models.registry import (
    IMAGENET,
    Arch,
    check_arch,
    count_params,
    create,
    is_model,
    kinds,
    known_names,
    list_models,
    parse_arch,
    register_composite,
    register_family,
    register_model,
    unknown_arch,
    unregister,
)

__all__ = [
    "IMAGENET", "Arch", "check_arch", "count_params", "create", "is_model", "kinds", "known_names", "list_models",
    "parse_arch", "register_composite", "register_family", "register_model", "unknown_arch", "unregister",
]
