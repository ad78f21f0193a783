"""The export seam: every deployment format registers here by name.

A format declares the runtime that runs its files, its file suffix, the stage function that
makes its variants (`"module:function"`, `function(ctx) -> None`, imported only when the format
is asked for) and a check of the packages it needs (run before anything trains, so a missing
converter is an error up front, never a silent skip). This module is light (no torch, no onnx):
the recipe validates `export.formats` against it.

`onnx` is the base format: every trained variant is exported to it, and compression,
explanations and the bench reference start from that file. Adding a format is a module of its own
(its stage function and config) plus one `register(ExportFormat(...))` call in it, listed in
`BUILTIN_MODULES` below when it ships with medlite.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Callable

from medlite.errors import unknown_name


@dataclass(frozen=True)
class ExportFormat:
    name: str  # the recipe's `export.formats` entry
    runtime: str  # the registered runtime (medlite.runtime) that runs its files
    suffix: str  # file suffix of its artifacts
    stage: str  # "module:function": function(ctx) makes this format's variants from the trained ones
    check: str | None = None  # "module:function" -> list of missing packages (empty: ready)
    install_hint: str = ""
    base: bool = False  # the format every variant is exported to first (exactly one: onnx)
    doc: str = ""

    def load(self) -> Callable:
        module, _, function = self.stage.partition(":")
        return getattr(import_module(module), function)

    def missing_packages(self) -> list[str]:
        if self.check is None:
            return []
        module, _, function = self.check.partition(":")
        return getattr(import_module(module), function)()


FORMATS: dict[str, ExportFormat] = {}


def register(fmt: ExportFormat) -> ExportFormat:
    if fmt.name in FORMATS and FORMATS[fmt.name] != fmt:
        raise ValueError(f"export format {fmt.name!r} is already registered")
    FORMATS[fmt.name] = fmt
    return fmt


def get(name: str) -> ExportFormat:
    if name not in FORMATS:
        raise ValueError(unknown_message(name))
    return FORMATS[name]


def unknown_message(name: str) -> str:
    return unknown_name("export format", name, list(FORMATS))


def base_format() -> ExportFormat:
    return next(f for f in FORMATS.values() if f.base)


register(ExportFormat(
    "onnx", runtime="onnxruntime", suffix=".onnx", stage="medlite.export.onnx_stage:export_trained", base=True,
    doc="ONNX (opset 17), checked against PyTorch; the reference every variant is measured in",
))
register(ExportFormat(
    "litert", runtime="litert", suffix=".tflite", stage="medlite.export.litert_stage:export_trained",
    check="medlite.export.litert:missing_packages",
    install_hint="make litert, or pip install --no-deps -r requirements-litert.txt",
    doc="LiteRT (TensorFlow Lite) fp32, dynamic-range int8 and full-integer int8 files",
))
