"""Quantization-aware training (QAT) whose deployed artifact is an int8 QDQ ONNX file.

Why our own fake-quant and not `torch.ao.quantization` or torchao: the first is deprecated,
and torchao's PT2E flow is not installed and exports through the dynamo exporter. What we
deploy is ONNX Runtime's static QDQ int8 scheme (`medlite.compress.quantize`), so QAT only
has to make the network robust to *that* rounding. `prepare_qat` therefore simulates exactly
that scheme in an ordinary `nn.Module`, trainable by any loop (medlite's Lightning `fit`):

- BatchNorm is folded into the preceding conv first (running statistics frozen). ORT folds
  BN before it quantizes weights, so the weights that get rounded at deployment are the folded
  ones; folding first makes the training-time weight grid bit-identical to the deployed one.
  (Short, low-LR fine-tuning of a trained model needs no BN re-estimation.)
- weights: `torch.fake_quantize_per_channel_affine`, symmetric int8 per output channel,
  [-127, 127], scale = max|w| / 127, as ORT computes it; applied through a
  `torch.nn.utils.parametrize` parametrization, so the module types and names stay intact.
- activations: per-tensor affine uint8 [0, 255] fake-quant with EMA min/max observers, at the
  tensors ORT's QDQ quantizer quantizes: the model input and the outputs of Conv/Linear, Add
  and average pooling (after a following ReLU, which ORT fuses away). Gradients pass straight
  through (STE) inside the range and are zero outside it.

`export_qat` then exports the fine-tuned float weights (already on the int8 grid) and runs
ORT's static quantizer with the *learned* activation ranges as `TensorQuantOverrides`
(calibration images only fill in tensors that have no learned range), so the int8 file
computes what the fake-quant model computed during training.
"""

from __future__ import annotations

import copy
import operator
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import fx, nn
from torch.nn.utils import parametrize

from medlite.compress.quantize import ACT_QMAX, ACT_QMIN, WEIGHT_QMAX, WEIGHT_QMIN, check_calibration, quantize_static
from medlite.errors import InternalError, UsageError

FORMAT_QAT = "onnx-int8-qdq"


class WeightFakeQuant(nn.Module):
    """Parametrization: symmetric per-output-channel int8 fake quantization of a weight."""

    def __init__(self, axis: int = 0) -> None:
        super().__init__()
        self.axis = axis

    def qparams(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dims = [d for d in range(weight.dim()) if d != self.axis]
        absmax = weight.detach().abs().amax(dim=dims).float()
        scale = (absmax * 2.0 / (WEIGHT_QMAX - WEIGHT_QMIN)).clamp(min=1e-12)
        return scale, torch.zeros_like(scale, dtype=torch.int32)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        scale, zero_point = self.qparams(weight)
        return torch.fake_quantize_per_channel_affine(weight, scale, zero_point, self.axis, WEIGHT_QMIN, WEIGHT_QMAX)


class ActivationFakeQuant(nn.Module):
    """Per-tensor affine uint8 fake quantization with an EMA min/max observer.

    In training mode the observer tracks min/max (first batch sets them, then an exponential
    moving average, as `MovingAverageMinMaxObserver` does); in eval mode the ranges are fixed.
    `enabled=False` makes it the identity (used to export the float graph).
    """

    def __init__(self, momentum: float = 0.01) -> None:
        super().__init__()
        self.momentum = momentum
        self.enabled = True
        self.observe = True
        self.register_buffer("min_val", torch.tensor(0.0))
        self.register_buffer("max_val", torch.tensor(0.0))
        self.register_buffer("initialized", torch.tensor(False))
        self.frozen: tuple[float, int] | None = None  # python scale/zero point, set for export

    def freeze(self) -> None:
        """Fix the quantization parameters as Python numbers, so the ONNX exporter writes them
        as constants of QuantizeLinear/DequantizeLinear instead of tracing the arithmetic."""
        scale, zero_point = self.qparams()
        self.frozen = (float(scale), int(zero_point))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        low, high = x.detach().min().float(), x.detach().max().float()
        if not bool(self.initialized):
            self.min_val.copy_(low)
            self.max_val.copy_(high)
            self.initialized.fill_(True)
        else:
            self.min_val.lerp_(low, self.momentum)
            self.max_val.lerp_(high, self.momentum)

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """ORT's asymmetric rule: the range always holds 0; zero point = round(qmin - rmin / scale)."""
        rmin = torch.clamp(self.min_val, max=0.0)
        rmax = torch.clamp(self.max_val, min=0.0)
        scale = ((rmax - rmin) / (ACT_QMAX - ACT_QMIN)).clamp(min=1e-12)
        zero_point = torch.clamp(torch.round(ACT_QMIN - rmin / scale), ACT_QMIN, ACT_QMAX).to(torch.int32)
        return scale.reshape(1), zero_point.reshape(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.observe:
            self.update(x)
        if not self.enabled or not bool(self.initialized):
            return x
        if self.frozen is not None:
            return torch.fake_quantize_per_tensor_affine(x, self.frozen[0], self.frozen[1], ACT_QMIN, ACT_QMAX)
        scale, zero_point = self.qparams()
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, ACT_QMIN, ACT_QMAX)

    def extra_repr(self) -> str:
        return f"min={float(self.min_val):.4g}, max={float(self.max_val):.4g}, enabled={self.enabled}"


# -- graph rewriting -----------------------------------------------------------------------

_RELU_MODULES = (nn.ReLU,)
_RELU_FUNCTIONS = {torch.relu, torch.relu_, nn.functional.relu}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_POOL_MODULES = (nn.AdaptiveAvgPool2d, nn.AvgPool2d)
_POOL_FUNCTIONS = {nn.functional.adaptive_avg_pool2d, nn.functional.avg_pool2d}


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), _RELU_MODULES)
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _is_anchor(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """A node whose output ORT's QDQ quantizer quantizes (input, Conv, Gemm, Add, AveragePool)."""
    if node.op == "placeholder":
        return True
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), (nn.Conv2d, nn.Conv1d, nn.Linear) + _POOL_MODULES)
    if node.op == "call_function":
        if node.target in _ADD_FUNCTIONS:
            # only tensor + tensor (a residual add), not x + 1
            return all(isinstance(a, fx.Node) for a in node.args[:2])
        return node.target in _POOL_FUNCTIONS
    if node.op == "call_method":
        return node.target in ("add", "add_") and all(isinstance(a, fx.Node) for a in node.args[:2])
    return False


def _trace_and_fold(model: nn.Module) -> fx.GraphModule:
    from torch.fx.experimental.optimization import fuse

    model = copy.deepcopy(model).cpu().eval()
    try:
        return fuse(model, inplace=True)
    except Exception as err:  # noqa: BLE001 - tracing failures are model-specific
        # Any exception from torch.fx's tracer or fuser: a limit of medlite's QAT (or a torch bug),
        # not a fault in the user's input, so exit 1 with the traceback under --debug.
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise InternalError(
            f"QAT needs a model torch.fx can trace; {type(model).__name__} cannot be ({first[:200]})"
        ) from err


def _insert_activation_fake_quant(gm: fx.GraphModule) -> int:
    modules = dict(gm.named_modules())
    done: set[fx.Node] = set()
    count = 0
    for node in list(gm.graph.nodes):
        if not _is_anchor(node, modules):
            continue
        target = node
        while len(target.users) == 1 and _is_relu(next(iter(target.users)), modules):
            target = next(iter(target.users))
        if target in done:
            continue
        done.add(target)
        name = f"act_fq_{count}"
        gm.add_submodule(name, ActivationFakeQuant())
        with gm.graph.inserting_after(target):
            fq = gm.graph.call_module(name, (target,))
        target.replace_all_uses_with(fq, delete_user_cb=lambda user: user is not fq)
        count += 1
    gm.graph.lint()
    gm.recompile()
    return count


def prepare_qat(model: nn.Module, example_input: torch.Tensor) -> fx.GraphModule:
    """A copy of `model` that trains with int8 fake quantization (ORT's static QDQ scheme).

    `example_input` should be a batch of real, normalised images: one forward pass on it
    seeds the activation ranges. BN is folded (see the module docstring), so the returned
    `torch.fx.GraphModule` has no BatchNorm; train it with any ordinary loop (medlite's
    `fit`), at a low learning rate, then call `export_qat`. The input model is untouched.
    """
    gm = _trace_and_fold(model)
    for module in gm.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            parametrize.register_parametrization(module, "weight", WeightFakeQuant(axis=0))
    if _insert_activation_fake_quant(gm) == 0:
        raise UsageError(f"QAT: found nothing to quantize in {type(model).__name__}")
    gm.train()
    with torch.no_grad():
        gm(example_input.cpu().float())
    return gm


def activation_quantizers(model: nn.Module) -> list[ActivationFakeQuant]:
    return [m for m in model.modules() if isinstance(m, ActivationFakeQuant)]


def freeze_observers(model: nn.Module) -> None:
    """Stop updating activation ranges (e.g. for the last epoch of QAT)."""
    for fq in activation_quantizers(model):
        fq.observe = False


def _baked(module: nn.Module) -> nn.Module:
    """A plain Conv/Linear holding the fake-quantized weight of a parametrized one.

    (Not `remove_parametrizations` on a deepcopy: the copy shares the dynamically created
    parametrized class with the original, and removal deletes the property from that class,
    breaking the model still being trained.)
    """
    base = type(module).__bases__[0]
    with torch.no_grad():
        weight = module.weight.detach().clone()
    if issubclass(base, nn.Linear):
        plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
    else:
        plain = base(
            module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
            module.dilation, module.groups, bias=module.bias is not None, padding_mode=module.padding_mode,
        )
    plain.weight = nn.Parameter(weight)
    if module.bias is not None:
        plain.bias = nn.Parameter(module.bias.detach().clone())
    return plain.train(module.training)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _deployable_copy(qat_model: nn.Module) -> nn.Module:
    """Eval-mode copy: weights baked onto the int8 grid (parametrizations removed), ranges frozen."""
    model = copy.deepcopy(qat_model).cpu().eval()
    for name, module in list(model.named_modules()):
        if parametrize.is_parametrized(module, "weight"):
            _replace(model, name, _baked(module))
    for fq in activation_quantizers(model):
        if bool(fq.initialized):
            fq.freeze()
    return model


def _learned_ranges(fq_onnx: Path) -> dict[str, tuple[float, float]]:
    """Tensor name -> (rmin, rmax), read from the QuantizeLinear nodes of the fake-quant export."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(fq_onnx))
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(attr.t)
    outputs = {o.name for o in model.graph.output}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    ranges = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in consts:
            continue
        scale = consts.get(node.input[1])
        zero_point = consts.get(node.input[2]) if len(node.input) > 2 else np.zeros(1, np.uint8)
        if scale is None or zero_point is None or scale.size != 1:
            continue
        s, z = float(scale.reshape(-1)[0]), int(zero_point.reshape(-1)[0])
        ranges[node.input[0]] = ((ACT_QMIN - z) * s, (ACT_QMAX - z) * s)
        # The last fake-quant's output is the graph output (`logits`); in the float export the
        # tensor it quantizes carries that name instead.
        for dq in consumers.get(node.output[0], []):
            if dq.op_type == "DequantizeLinear" and dq.output[0] in outputs:
                ranges[dq.output[0]] = ranges[node.input[0]]
    return ranges


def _tensor_names(path: Path) -> set[str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    names = {i.name for i in model.graph.input}
    for node in model.graph.node:
        names.update(node.output)
    return names


def export_qat(qat_model: nn.Module, spec, onnx_out: str | Path, calibration: np.ndarray | None) -> dict:
    """Write the QAT model as an int8 QDQ ONNX file that ONNX Runtime runs; return facts.

    Steps: bake the weights onto their int8 grid; export once with the activation fake-quant
    enabled (the TorchScript exporter turns it into QuantizeLinear/DequantizeLinear) only to
    read the learned ranges by tensor name; export the float graph; quantize it with ORT's
    static QDQ quantizer (same scheme as PTQ), the learned ranges as `TensorQuantOverrides`.
    `calibration` (float32 NCHW, normalised) fills in any tensor without a learned range.
    Learned ranges that cannot be used fail (the result would not be QAT); some unused ranges
    or BatchNorms that could not be folded are listed under `warnings`.
    Facts: the static quantizer's, plus `qat: True`, `learned_ranges` (how many were used),
    and `agreement` / `max_prob_diff` of the file against the fake-quant model on the
    calibration images.
    """
    from medlite.export.onnx import export_onnx, run_onnx

    onnx_out = Path(onnx_out)
    images = check_calibration(calibration, [None, spec.channels, spec.image_size, spec.image_size])
    if not activation_quantizers(qat_model):
        raise InternalError("export_qat: the model was not prepared with prepare_qat")  # a caller's bug
    deploy = _deployable_copy(qat_model)
    onnx_out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".medlite-qat-", dir=onnx_out.parent) as tmp:
        work = Path(tmp)
        range_error, range_error_exc = None, None
        try:
            export_onnx(deploy, spec, work / "fake_quant.onnx")
            ranges = _learned_ranges(work / "fake_quant.onnx")
        except Exception as err:  # noqa: BLE001 - reported below, never silently replaced by calibration
            ranges, range_error_exc = {}, err
            range_error = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        for fq in activation_quantizers(deploy):
            fq.enabled = False
        export_onnx(deploy, spec, work / "float.onnx")
        present = _tensor_names(work / "float.onnx")
        overrides = {
            name: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}]
            for name, (lo, hi) in ranges.items()
            if name in present
        }
        quantizers = len(activation_quantizers(qat_model))
        if not overrides:
            # Without its learned ranges the file would be post-training calibrated: not QAT.
            why = f": {range_error}" if range_error else " (no tensor of the float export matches them)"
            # QAT's own export failed (the ranges it learned are not in the file): internal, not the user's.
            raise InternalError(f"int8_qat: the learned activation ranges could not be used{why}; "
                                "the int8 file would be calibrated, not quantization-aware") from range_error_exc
        warnings = []
        if len(overrides) < quantizers:
            warnings.append(
                f"QAT: {len(overrides)} of {quantizers} learned activation ranges used; the other tensors "
                "are calibrated on training images (min/max)"
            )
        unfolded = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in qat_model.modules())
        if unfolded:
            warnings.append(f"QAT: {unfolded} BatchNorm layer(s) could not be folded into a convolution")
        facts = quantize_static(work / "float.onnx", onnx_out, images, method="minmax", per_channel=True,
                                tensor_overrides=overrides)
        facts["warnings"] = facts.get("warnings", []) + warnings
    for fq in activation_quantizers(deploy):
        fq.enabled = True
    with torch.no_grad():
        expected = _softmax(deploy(torch.from_numpy(images)).numpy())
    got = _softmax(run_onnx(onnx_out, images))
    return {
        **facts,
        "format": FORMAT_QAT,
        "qat": True,
        "learned_ranges": len(overrides),
        "activation_quantizers": quantizers,
        "agreement": float((expected.argmax(1) == got.argmax(1)).mean()),
        "max_prob_diff": float(np.abs(expected - got).max()),
    }


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
