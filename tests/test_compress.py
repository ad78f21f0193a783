"""Compression: structured/unstructured pruning, int8 PTQ (dynamic, static QDQ) and QAT.

Small models (medlite_dsconv_tiny, medlite_cnn_tiny) on a slice of real BreastMNIST; every
quantized file is run in ONNX Runtime, as the pipeline measures it.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from medlite.compress.prune import (
    GradualMagnitudePruning,
    count_macs,
    count_nonzero,
    gzip_bytes,
    make_permanent,
    polynomial_sparsity,
    prune_structured,
    prunable_weights,
    sparsity,
)
from medlite.data.preprocess import PreprocessSpec, normalize
from medlite.errors import InternalError, UsageError
from medlite.export.onnx import PREPROCESS_KEY, export_onnx, read_preprocess, run_onnx
from medlite.models import count_params, create

SPEC = PreprocessSpec(image_size=28, channels=1, mean=0.5, std=0.5, class_names=("malignant", "normal"))
X1 = torch.zeros(1, 1, 28, 28)


@pytest.fixture(scope="module")
def data(breast_npz):
    """Normalised float32 NCHW slices of real BreastMNIST (train for fitting/calibration, test)."""

    def prep(split: str, n: int):
        x = normalize(breast_npz[f"{split}_images"][:n, :, :, None], SPEC)
        return x, breast_npz[f"{split}_labels"][:n].reshape(-1).astype(np.int64)

    (xtr, ytr), (xte, yte) = prep("train", 192), prep("test", 96)
    return SimpleNamespace(xtr=xtr, ytr=ytr, xte=xte, yte=yte)


def _fit(model: nn.Module, data, steps: int = 12, lr: float = 3e-3, bs: int = 32, seed: int = 0) -> nn.Module:
    """A few plain optimizer steps on real images: enough to give weights and ranges real structure."""
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    x, y = torch.from_numpy(data.xtr), torch.from_numpy(data.ytr)
    model.train()
    for step in range(steps):
        idx = torch.arange(step * bs, (step + 1) * bs) % len(x)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained(data) -> nn.Module:
    torch.manual_seed(0)
    return _fit(create("medlite_dsconv_tiny", 2), data)


@pytest.fixture(scope="module")
def fp32_onnx(trained, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fp32") / "student.onnx"
    export_onnx(trained, SPEC, path)
    return path


def _ops(path: Path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path)).graph.node}


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


# -- structured pruning ----------------------------------------------------------------------


class _Residual(nn.Module):
    """A tiny ResNet-style net: the residual add ties the channels of both branches."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.body(x))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("arch", ["medlite_dsconv_tiny", "medlite_cnn_tiny", "residual"])
def test_structured_pruning_removes_channels_and_exports(arch, tmp_path):
    torch.manual_seed(0)
    model = _Residual() if arch == "residual" else create(arch, 2)
    params, macs = count_params(model), count_macs(model, X1)
    pruned = prune_structured(model, X1, ratio=0.5)
    assert count_params(model) == params  # the parent is untouched
    assert count_params(pruned) < 0.6 * params
    assert count_macs(pruned, X1) <= 0.6 * macs
    widths = [m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    assert widths and max(widths) < max(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))
    heads = [m for m in pruned.modules() if isinstance(m, nn.Linear)]
    assert heads[-1].out_features == 2  # the classifier keeps every class
    result = export_onnx(pruned, SPEC, tmp_path / "pruned.onnx")
    assert result["max_abs_diff"] < 1e-4
    assert run_onnx(tmp_path / "pruned.onnx", np.zeros((3, 1, 28, 28), np.float32)).shape == (3, 2)


def test_structured_pruning_taylor_uses_a_real_batch(data):
    model = _fit(create("medlite_cnn_tiny", 2), data, steps=3)
    batch = (torch.from_numpy(data.xtr[:32]), torch.from_numpy(data.ytr[:32]))
    pruned = prune_structured(model, X1, ratio=0.3, importance="taylor", batch=batch, ignore_layers=["stem.0"])
    assert pruned.stem[0].out_channels == model.stem[0].out_channels  # ignored
    assert count_params(pruned) < count_params(model)
    assert all(p.grad is None for p in pruned.parameters())
    with pytest.raises(UsageError, match="taylor"):
        prune_structured(model, X1, importance="taylor")


@pytest.mark.parametrize("ratio", [0, 1, 1.5, -0.1])
def test_bad_ratio_is_a_usage_error(ratio):
    with pytest.raises(UsageError, match="ratio"):
        prune_structured(create("medlite_cnn_tiny", 2), X1, ratio=ratio)


def test_unknown_ignored_layer_or_importance_is_a_usage_error():
    model = create("medlite_cnn_tiny", 2)
    with pytest.raises(UsageError, match="no_such_layer"):
        prune_structured(model, X1, ignore_layers=["no_such_layer"])
    with pytest.raises(UsageError, match="importance"):
        prune_structured(model, X1, importance="l3")  # type: ignore[arg-type]


# -- unstructured (gradual magnitude) pruning --------------------------------------------------


def test_polynomial_schedule_ramps_cubically():
    values = [polynomial_sparsity(t, 0.1, 0.8, begin_step=10, end_step=110) for t in range(0, 140)]
    assert values[0] == values[10] == pytest.approx(0.1)
    assert values[110] == values[139] == pytest.approx(0.8)
    assert all(b >= a for a, b in zip(values, values[1:]))
    # cubic: s(mid) = s_f + (s_i - s_f) * 0.5^3
    assert values[60] == pytest.approx(0.8 + (0.1 - 0.8) * 0.125)
    # fast early, slow late
    assert values[35] - values[10] > values[110] - values[85]


def test_gradual_pruning_follows_the_schedule_and_becomes_permanent(data):
    model = create("medlite_cnn_tiny", 2)
    gmp = GradualMagnitudePruning(0.0, 0.75, scope="global", total_steps=20, frequency=5)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    x, y = torch.from_numpy(data.xtr[:32]), torch.from_numpy(data.ytr[:32])
    seen = []
    for step in range(0, 26):
        new = gmp.apply(model, step)
        if new is not None:
            assert sparsity(model) == pytest.approx(new, abs=1e-3)
            seen.append(new)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert sparsity(model) >= (seen[-1] - 1e-3)  # pruned weights stay zero under AdamW
    assert seen == sorted(seen) and seen[0] == 0.0 and seen[-1] == pytest.approx(0.75)
    assert len(seen) == 5  # steps 0, 5, 10, 15, 20
    dense_nonzero = count_params(model)
    make_permanent(model)
    for _, module in prunable_weights(model):
        assert not hasattr(module, "weight_orig") and not hasattr(module, "weight_mask")
        assert not module._forward_pre_hooks
        assert isinstance(module.weight, nn.Parameter)
    assert sparsity(model) == pytest.approx(0.75, abs=1e-3)
    zeros = sum(int((m.weight == 0).sum()) for _, m in prunable_weights(model))
    assert zeros == round(0.75 * sum(m.weight.numel() for _, m in prunable_weights(model)))
    assert count_nonzero(model) < dense_nonzero
    assert set(model.state_dict()) == set(create("medlite_cnn_tiny", 2).state_dict())


def test_layer_scope_prunes_every_layer_evenly():
    model = create("medlite_cnn_tiny", 2)
    gmp = GradualMagnitudePruning(0.5, 0.5, scope="layer", total_steps=1)
    gmp.apply(model, 0)
    for _, module in prunable_weights(model):
        assert float((module.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.02)


def test_gradual_pruning_callback_in_a_lightning_trainer(data, tmp_path):
    import lightning.pytorch as pl

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = create("medlite_cnn_tiny", 2)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.model(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(data.xtr[:64]), torch.from_numpy(data.ytr[:64])), batch_size=16
    )
    module = Module()
    gmp = GradualMagnitudePruning(0.0, 0.6, total_steps=None, ramp_fraction=0.5, frequency=1)
    trainer = pl.Trainer(max_epochs=2, callbacks=[gmp], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, loader)
    assert gmp.total_steps == 4  # half of the 8 estimated steps
    assert sparsity(module.model) == pytest.approx(0.6, abs=1e-3)
    assert not any(hasattr(m, "weight_mask") for m in module.model.modules())  # permanent


def test_gzip_bytes_shrinks_with_sparsity(tmp_path):
    torch.manual_seed(0)
    model = create("medlite_cnn_tiny", 2).eval()
    export_onnx(model, SPEC, tmp_path / "dense.onnx")
    GradualMagnitudePruning(0.8, 0.8, total_steps=1).apply(model, 0)
    export_onnx(make_permanent(model), SPEC, tmp_path / "sparse.onnx")
    assert gzip_bytes(tmp_path / "sparse.onnx") < 0.6 * gzip_bytes(tmp_path / "dense.onnx")


# -- post-training quantization ---------------------------------------------------------------


def test_static_quantization_is_smaller_runs_and_keeps_metadata(fp32_onnx, data, tmp_path):
    from medlite.compress.quantize import quantize_static

    out = tmp_path / "int8.onnx"
    facts = quantize_static(fp32_onnx, out, data.xtr[:64], method="minmax")
    assert facts["format"] == "onnx-int8-qdq" and facts["quantized_nodes"] > 5
    assert facts["file_bytes"] < 0.4 * facts["parent_bytes"]
    assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(out)
    assert read_preprocess(out) == read_preprocess(fp32_onnx) == SPEC
    ref, got = _softmax(run_onnx(fp32_onnx, data.xte)), _softmax(run_onnx(out, data.xte))
    assert (ref.argmax(1) == got.argmax(1)).mean() >= 0.9
    assert np.abs(ref - got).max() < 0.2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8.onnx"]  # no temporary files left


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_static_calibration_methods(fp32_onnx, data, tmp_path, method):
    import onnx

    from medlite.compress.quantize import quantize_static

    facts = quantize_static(fp32_onnx, tmp_path / "q.onnx", data.xtr[:32], method=method, per_channel=False)
    assert facts["method"] == method
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "q.onnx")).metadata_props}
    assert json.loads(meta["medlite.quantization"])["method"] == method and PREPROCESS_KEY in meta
    assert run_onnx(tmp_path / "q.onnx", data.xte[:4]).shape == (4, 2)


def test_dynamic_quantization_is_smaller_and_runs(fp32_onnx, data, tmp_path):
    from medlite.compress.quantize import quantize_dynamic

    out = tmp_path / "dyn.onnx"
    facts = quantize_dynamic(fp32_onnx, out)
    assert facts["format"] == "onnx-int8-dynamic" and facts["quantized_nodes"] > 0
    assert facts["file_bytes"] < 0.5 * facts["parent_bytes"]
    assert read_preprocess(out) == SPEC
    ref, got = _softmax(run_onnx(fp32_onnx, data.xte)), _softmax(run_onnx(out, data.xte))
    assert (ref.argmax(1) == got.argmax(1)).mean() >= 0.9


@pytest.mark.parametrize(
    "calibration, message",
    [
        (None, "no calibration images"),
        (np.zeros((0, 1, 28, 28), np.float32), "empty"),
        (np.zeros((4, 3, 28, 28), np.float32), "expects"),
        (np.zeros((4, 28, 28), np.float32), "N x C x H x W"),
    ],
)
def test_bad_calibration_is_a_usage_error(fp32_onnx, tmp_path, calibration, message):
    from medlite.compress.quantize import quantize_static

    with pytest.raises(UsageError, match="calibration") as err:
        quantize_static(fp32_onnx, tmp_path / "q.onnx", calibration)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "q.onnx").exists()


def test_unquantizable_model_is_a_usage_error(tmp_path, data):
    from medlite.compress.quantize import quantize_dynamic, quantize_static

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    with pytest.raises(UsageError, match="cannot quantize"):
        quantize_static(broken, tmp_path / "q.onnx", np.zeros((2, 1, 28, 28), np.float32))
    with pytest.raises(UsageError, match="not found"):
        quantize_dynamic(tmp_path / "missing.onnx", tmp_path / "q.onnx")


# -- quantization-aware training ----------------------------------------------------------------


def test_qat_export_agrees_with_the_fake_quant_model(trained, data, tmp_path):
    from medlite.compress.qat import ActivationFakeQuant, export_qat, prepare_qat

    before = {k: v.clone() for k, v in trained.state_dict().items()}
    qat = prepare_qat(trained, torch.from_numpy(data.xtr[:64]))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in qat.modules())  # folded
    assert sum(isinstance(m, ActivationFakeQuant) for m in qat.modules()) >= 8
    _fit(qat, data, steps=4, lr=5e-4)  # an ordinary loop trains it
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in before.items())  # parent untouched

    out = tmp_path / "qat.onnx"
    facts = export_qat(qat, SPEC, out, data.xtr[:64])
    assert facts["format"] == "onnx-int8-qdq" and facts["qat"]
    assert facts["learned_ranges"] == facts["activation_quantizers"]
    assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(out)
    assert read_preprocess(out) == SPEC
    with torch.no_grad():
        expected = _softmax(qat.eval()(torch.from_numpy(data.xte)).numpy())
    got = _softmax(run_onnx(out, data.xte))
    assert (expected.argmax(1) == got.argmax(1)).mean() >= 0.95
    assert np.abs(expected - got).mean() < 0.02


def test_pruned_model_restores_from_a_tensor_only_checkpoint():
    from medlite.compress.prune import load_pruned_state

    torch.manual_seed(0)
    pruned = prune_structured(create("medlite_dsconv_tiny", 2), X1, ratio=0.5).eval()
    restored = load_pruned_state(create("medlite_dsconv_tiny", 2), pruned.state_dict()).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(restored(x), pruned(x))
    assert count_params(restored) == count_params(pruned)


def test_dynamic_fallback_to_dense_layers_is_flagged(fp32_onnx, tmp_path, monkeypatch):
    """When ConvInteger cannot be used, the file quantizes only MatMul/Gemm: the facts must say so."""
    import onnxruntime.quantization as ortq

    from medlite.compress.quantize import quantize_dynamic

    real = ortq.quantize_dynamic

    def no_conv_integer(*args, **kwargs):
        if "Conv" in kwargs.get("op_types_to_quantize", []):
            raise RuntimeError("ConvInteger is not implemented (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(ortq, "quantize_dynamic", no_conv_integer)
    facts = quantize_dynamic(fp32_onnx, tmp_path / "dyn.onnx")
    assert facts["dense_only"] is True and facts["op_types"] == ["MatMul", "Gemm"]
    assert "ConvInteger" not in facts["quantized_ops"] and facts["float_ops"]["Conv"] > 0
    assert any("only the dense layers are int8" in w and "simulated" in w for w in facts["warnings"])
    assert "ConvInteger" not in _ops(tmp_path / "dyn.onnx")


def test_dynamic_without_fallback_reports_what_it_quantized(fp32_onnx, tmp_path):
    from medlite.compress.quantize import quantize_dynamic

    facts = quantize_dynamic(fp32_onnx, tmp_path / "dyn.onnx")
    assert facts["dense_only"] is False and facts["quantized_ops"]["ConvInteger"] > 0
    assert facts["quantized_ops"]["ConvInteger"] == sum(1 for op in _op_list(tmp_path / "dyn.onnx") if op == "ConvInteger")


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_onnx_runtime_failure_is_internal_not_a_usage_error(fp32_onnx, tmp_path, monkeypatch, kind):
    """ORT's quantizer failing on a valid model and valid calibration images: exit 1 (InternalError), not 2."""
    import onnxruntime.quantization

    from medlite.compress.quantize import quantize_dynamic, quantize_static

    def fails(*args, **kwargs):
        raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : simulated failure\nsecond line of ORT's message")

    monkeypatch.setattr(onnxruntime.quantization, f"quantize_{kind}", fails)
    with pytest.raises(InternalError, match="cannot quantize") as info:
        if kind == "static":
            quantize_static(fp32_onnx, tmp_path / "q.onnx", np.zeros((4, 1, 28, 28), np.float32))
        else:
            quantize_dynamic(fp32_onnx, tmp_path / "q.onnx")
    message = str(info.value)
    assert not isinstance(info.value, UsageError) and info.value.exit_code == 1
    assert str(fp32_onnx) in message and "simulated failure" in message and "\n" not in message
    assert isinstance(info.value.__cause__, RuntimeError)
    assert not (tmp_path / "q.onnx").exists()


def test_qat_tracing_failure_is_internal():
    from medlite.compress.qat import prepare_qat

    class Branchy(nn.Module):  # data-dependent control flow: torch.fx cannot trace it
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else self.conv(-x)

    with pytest.raises(InternalError, match="QAT needs a model torch.fx can trace; Branchy cannot be") as info:
        prepare_qat(Branchy(), torch.zeros(1, 1, 8, 8))
    assert not isinstance(info.value, UsageError) and info.value.__cause__ is not None


def _op_list(path: Path) -> list[str]:
    import onnx

    return [n.op_type for n in onnx.load(str(path)).graph.node]


def test_qat_without_its_learned_ranges_fails_instead_of_calibrating(trained, data, tmp_path, monkeypatch):
    from medlite.compress import qat as qat_module

    model = qat_module.prepare_qat(trained, torch.from_numpy(data.xtr[:32]))

    def unreadable(path):
        raise RuntimeError("no QuantizeLinear found (simulated)")

    monkeypatch.setattr(qat_module, "_learned_ranges", unreadable)
    # QAT's own export failing is medlite's fault, not the user's: exit 1, never 2.
    with pytest.raises(InternalError, match="learned activation ranges could not be used: no QuantizeLinear") as info:
        qat_module.export_qat(model, SPEC, tmp_path / "qat.onnx", data.xtr[:32])
    assert not isinstance(info.value, UsageError) and info.value.exit_code == 1
    assert isinstance(info.value.__cause__, RuntimeError)  # --debug shows where it came from
    assert not (tmp_path / "qat.onnx").exists()


def test_qat_partial_ranges_are_a_warning(trained, data, tmp_path, monkeypatch):
    from medlite.compress import qat as qat_module

    model = qat_module.prepare_qat(trained, torch.from_numpy(data.xtr[:32]))
    real = qat_module._learned_ranges
    monkeypatch.setattr(qat_module, "_learned_ranges", lambda path: dict(list(real(path).items())[:3]))
    facts = qat_module.export_qat(model, SPEC, tmp_path / "qat.onnx", data.xtr[:32])
    assert facts["learned_ranges"] == 3 < facts["activation_quantizers"]
    assert any(f"3 of {facts['activation_quantizers']} learned activation ranges" in w for w in facts["warnings"])
