"""Compression stages: structured pruning (real channel removal), unstructured magnitude pruning,
int8 post-training quantization (dynamic, static QDQ) and quantization-aware training.

Each submodule is imported on demand by the pipeline (they pull in torch, torch-pruning and
onnxruntime.quantization), so this package's `__init__` stays empty of heavy imports.

- `medlite.compress.registry` (light, no torch): every method by name, with its recipe section and
  the formats it accepts and emits; `check_chain` validates `compress.chains`.
- `medlite.compress.stages`: the stage function of each method (takes a variant, emits a variant).
- `medlite.compress.prune`: `prune_structured`, `GradualMagnitudePruning`, `make_permanent`,
  `sparsity`, `count_nonzero`, `count_macs`, `gzip_bytes`.
- `medlite.compress.quantize`: `quantize_dynamic`, `quantize_static`.
- `medlite.compress.qat`: `prepare_qat`, `export_qat`.
"""

# The built-in methods register (config model and spec) when the package is first imported, so every
# `medlite.compress.registry` lookup sees them. Light: pydantic only.
from medlite.compress import builtin  # noqa: E402,F401
