"""The compression seam: every method registers here by name, with its config model and formats.

This module is light (no torch, no onnx): the recipe validates `compress.methods` and
`compress.chains` against it at load time. A method's implementation is a stage function
`stage(ctx, parent) -> Variant`, named by a dotted path and imported only when the method runs.

Formats are what a variant offers the next method:
- `pytorch`: a float PyTorch model with a reloadable safetensors checkpoint (trained, or pruned:
  a structured-pruned checkpoint records its own layer widths);
- `onnx-fp32`: a float ONNX file;
- `onnx-int8-qdq`, `onnx-int8-dynamic`: int8 ONNX files (nothing can be compressed after them);
- `onnx-fp16`: a float16 ONNX file, float32 input and output (nothing is compressed after it either).

A trained variant (teacher, students) offers `pytorch` and `onnx-fp32`. A chain such as
`[prune_structured, int8_qat]` is valid when each method accepts one of the formats the previous
one emits.

Adding a method: its stage function (`stage(ctx, parent) -> medlite.stage.Stage`) in a module of
its own, and its config model with one `register(MethodSpec(...))` call (the built-in ones in
`medlite.compress.builtin`; a plugin's anywhere imported before its recipe is loaded). The recipe's
`compress` section gains the method's config section from the registry; nothing else changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Callable

from medlite.errors import unknown_name

PYTORCH = "pytorch"
ONNX_FP32 = "onnx-fp32"
ONNX_INT8_QDQ = "onnx-int8-qdq"
ONNX_INT8_DYNAMIC = "onnx-int8-dynamic"
ONNX_FP16 = "onnx-fp16"
TRAINED_FORMATS = frozenset({PYTORCH, ONNX_FP32})  # what a trained variant offers


@dataclass(frozen=True)
class MethodSpec:
    """A compression method as the rest of medlite sees it."""

    name: str
    suffix: str  # appended to the parent's name: student_kd -> student_kd_pruned
    accepts: frozenset[str]  # formats it can start from (one is enough)
    emits: frozenset[str]  # formats its variant offers the next method
    stage: str  # "module:function", the stage function, imported on first use
    config: str | None = None  # name of its section in the recipe's `compress`; None: no settings
    config_model: type | None = None  # that section's pydantic model (a medlite.config_base.Strict)
    schema: int = 1  # bump when the method's output changes for the same inputs: old artifacts are redone
    doc: str = ""
    # "module:function" -> the packages it needs that are missing here (empty: ready); checked
    # before anything trains, like an export format's (a missing converter is never a late failure).
    check: str | None = None
    install_hint: str = ""

    def load(self) -> Callable:
        module, _, function = self.stage.partition(":")
        return getattr(import_module(module), function)

    def missing_packages(self) -> list[str]:
        if self.check is None:
            return []
        module, _, function = self.check.partition(":")
        return getattr(import_module(module), function)()


METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Add a method; a recipe validated after this call knows its name and its config section."""
    if spec.name in METHODS and METHODS[spec.name] != spec:
        raise ValueError(f"compression method {spec.name!r} is already registered")
    if (spec.config is None) != (spec.config_model is None):
        raise ValueError(f"compression method {spec.name!r}: give both config (section name) and config_model, or neither")
    METHODS[spec.name] = spec
    _recipe_changed()
    return spec


def unregister(name: str) -> None:
    """Remove a method (tests, plugins that unload)."""
    METHODS.pop(name, None)
    _recipe_changed()


def _recipe_changed() -> None:
    # The recipe's `compress` model is built from this registry; rebuild it when it was built already.
    import sys

    recipe = sys.modules.get("medlite.recipe")
    if recipe is not None and hasattr(recipe, "_rebuild_compress_section"):
        recipe._rebuild_compress_section()


def get(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ValueError(unknown_message(name))
    return METHODS[name]


def unknown_message(name: str) -> str:
    return unknown_name("method", name, list(METHODS))


def check_chain(chain: list[str]) -> None:
    """Raise ValueError (one line, naming the chain) when a chain cannot run."""
    shown = "[" + ", ".join(chain) + "]"
    if not chain:
        raise ValueError("a chain needs at least one method")
    if len(set(chain)) != len(chain):
        raise ValueError(f"chain {shown}: a method appears twice (variant names would collide)")
    offered, previous = TRAINED_FORMATS, "a trained model"
    for name in chain:
        if name not in METHODS:
            raise ValueError(f"chain {shown}: {unknown_message(name)}")
        spec = METHODS[name]
        if not spec.accepts & offered:
            raise ValueError(
                f"chain {shown}: {name} cannot follow {previous}: it takes {'/'.join(sorted(spec.accepts))}, "
                f"{previous} gives {'/'.join(sorted(offered))}"
            )
        offered, previous = spec.emits, name


def chain_name(base: str, chain: list[str]) -> str:
    return base + "".join(METHODS[name].suffix for name in chain)

