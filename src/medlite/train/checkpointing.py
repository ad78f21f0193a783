"""`trainer.grad_checkpointing`: recompute activations in the backward pass instead of keeping them (timm's
`set_grad_checkpointing`), trading time for GPU memory. Only a model that really switches it on counts:
one without the method (medlite's own students, the CIFAR ResNets, composites), or whose method refuses
(timm's VGG, NASNet, legacy Xception assert), or that sets no flag anywhere, is refused, naming its
recipe key, before anything trains. torch and timm are imported inside the functions (the CLI stays fast).
"""

from __future__ import annotations

from medlite.errors import UsageError

FLAG = "grad_checkpointing"  # the attribute timm's models (or their blocks) set


def enable(model, arch: str, where: str) -> None:
    """Switch gradient checkpointing on in `model` (built from `arch`, trained with recipe key `where`)."""
    method = getattr(model, "set_grad_checkpointing", None)
    why = None
    if method is None:
        why = "has no gradient checkpointing (timm models with set_grad_checkpointing have)"
    else:
        try:
            method(True)
        except (AssertionError, NotImplementedError, TypeError) as err:
            why = f"refuses gradient checkpointing ({' '.join(str(err).split()) or type(err).__name__})"
        else:
            if not any(getattr(m, FLAG, False) is True for m in model.modules()):
                why = "has set_grad_checkpointing, but it switches nothing on"
    if why:
        raise UsageError(f"trainer.grad_checkpointing: {where} {arch!r} {why}; set trainer.grad_checkpointing to false, "
                         "or to the sections whose models have it (e.g. [teacher])")


def sections(recipe) -> list[tuple[str, str, str]]:
    """(recipe key, section name, arch) of every model the recipe trains."""
    out = []
    if recipe.teachers is not None:
        out += [(f"teachers[{i}].arch", "teachers", t.arch) for i, t in enumerate(recipe.teachers)]
    else:
        out.append(("teacher.arch", "teacher", recipe.teacher.arch))
    out += [(f"assistants[{i}].arch", "assistants", a.arch) for i, a in enumerate(recipe.assistants)]
    out.append(("student.arch", "student", recipe.student.arch))
    return out


def check(recipe) -> None:
    """Refuse `trainer.grad_checkpointing` for a model that has none, before any data is read. Each model
    is built on the meta device (its layout, no weights)."""
    if recipe.trainer.grad_checkpointing is False:
        return
    import torch

    from medlite.models.registry import create

    size = recipe.data.image_size or 224  # the layout, not the numbers: any size the model takes
    for key, section, arch in sections(recipe):
        if not recipe.trainer.checkpoints(section):
            continue
        with torch.device("meta"):
            model = create(arch, 2, 3, size)
        enable(model, arch, key)
