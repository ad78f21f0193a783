"""The compression seam: every method registers here by name, with its config model and formats.

This module is light (no torch, no onnx): the recipe validates `compress.methods` and
`compress.chains` against it at load time. A method's implementation is a stage function
`stage(ctx, parent) -> Variant`, named by a dotted path and imported only when the method runs.

Formats are what a variant offers the next method:
- `pytorch`: a float PyTorch model with a reloadable safetensors checkpoint (trained, or pruned:
  a structured-pruned checkpoint records its own layer widths);
- `onnx-fp32`: a float ONNX file;
- `onnx-int8-qdq`, `onnx-int8-dynamic`: int8 ONNX files (nothing can be compressed after them).

A trained variant (teacher, students) offers `pytorch` and `onnx-fp32`. A chain such as
`[prune_structured, int8_qat]` is valid when each method accepts one of the formats the previous
one emits.

Adding a method: a config model (a field of the same name in `recipe.CompressConfig`), a stage
function, and one `register(MethodSpec(...))` call below (or in the module that defines it).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib import import_module
from typing import Callable

PYTORCH = "pytorch"
ONNX_FP32 = "onnx-fp32"
ONNX_INT8_QDQ = "onnx-int8-qdq"
ONNX_INT8_DYNAMIC = "onnx-int8-dynamic"
TRAINED_FORMATS = frozenset({PYTORCH, ONNX_FP32})  # what a trained variant offers


@dataclass(frozen=True)
class MethodSpec:
    """A compression method as the rest of medlite sees it."""

    name: str
    suffix: str  # appended to the parent's name: student_kd -> student_kd_pruned
    accepts: frozenset[str]  # formats it can start from (one is enough)
    emits: frozenset[str]  # formats its variant offers the next method
    stage: str  # "module:function", the stage function, imported on first use
    config: str | None = None  # name of its section in `compress` (a pydantic model), None: no settings
    schema: int = 1  # bump when the method's output changes for the same inputs: old artifacts are redone
    doc: str = ""

    def load(self) -> Callable:
        module, _, function = self.stage.partition(":")
        return getattr(import_module(module), function)


METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    if spec.name in METHODS and METHODS[spec.name] != spec:
        raise ValueError(f"compression method {spec.name!r} is already registered")
    METHODS[spec.name] = spec
    return spec


def get(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ValueError(unknown_message(name))
    return METHODS[name]


def unknown_message(name: str) -> str:
    hint = difflib.get_close_matches(name, list(METHODS), n=1)
    return f"unknown method {name!r}" + (
        f" (did you mean {hint[0]!r}?)" if hint else f"; choose from {', '.join(METHODS)}"
    )


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


# -- the built-in methods ---------------------------------------------------------------------

_STAGES = "medlite.compress.stages"
register(MethodSpec(
    "prune_structured", "_pruned", frozenset({PYTORCH}), frozenset({PYTORCH, ONNX_FP32}),
    f"{_STAGES}:structured", config="prune_structured", schema=2,
    doc="remove whole channels (Torch-Pruning dependency graph), fine-tune; keeps a reloadable checkpoint",
))
register(MethodSpec(
    # The masks are baked into a dense file: only the ONNX file carries on (a PyTorch fine-tune
    # after it would refill the zeros).
    "prune_unstructured", "_sparse", frozenset({PYTORCH}), frozenset({ONNX_FP32}),
    f"{_STAGES}:unstructured", config="prune_unstructured",
    doc="gradual magnitude pruning during fine-tuning (Zhu & Gupta, 2017)",
))
register(MethodSpec(
    "int8_dynamic", "_int8_dynamic", frozenset({ONNX_FP32}), frozenset({ONNX_INT8_DYNAMIC}),
    f"{_STAGES}:dynamic", config=None, schema=2,
    doc="ONNX Runtime weight-only int8 (ConvInteger/MatMulInteger), no calibration",
))
register(MethodSpec(
    "int8_static", "_int8_static", frozenset({ONNX_FP32}), frozenset({ONNX_INT8_QDQ}),
    f"{_STAGES}:static", config="int8_static",
    doc="ONNX Runtime static QDQ int8, calibrated on training images",
))
register(MethodSpec(
    "int8_qat", "_int8_qat", frozenset({PYTORCH}), frozenset({ONNX_INT8_QDQ}),
    f"{_STAGES}:qat", config="int8_qat", schema=2,
    doc="quantization-aware fine-tuning (fake quant, BN folded), exported as static QDQ with the learned ranges",
))
