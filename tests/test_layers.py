"""The per-layer view of a deployed file (medlite.bench.layers): MACs, precision, latency shares."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from medlite.bench.layers import layer_lines, layer_view
from medlite.data.preprocess import PreprocessSpec
from medlite.export.onnx import export_onnx

SPEC = PreprocessSpec(image_size=16, channels=3, mean=0.5, std=0.5, class_names=("a", "b"))
SRC = Path(__file__).resolve().parents[1] / "src"


class _Net(nn.Module):
    """A standard conv, a depthwise conv and a dense layer: MACs known by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.dw(torch.relu(self.conv(x))))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    from medlite.compress.quantize import quantize_static

    folder = tmp_path_factory.mktemp("layers")
    torch.manual_seed(0)
    fp32 = folder / "net.onnx"
    export_onnx(_Net().eval(), SPEC, fp32)
    int8 = folder / "net_int8.onnx"
    calibration = np.random.default_rng(0).standard_normal((16, 3, 16, 16)).astype(np.float32)
    quantize_static(fp32, int8, calibration)
    return {"fp32": fp32, "int8": int8}


def _convs(view: dict) -> list[dict]:
    return [l for l in view["layers"] if l["op"] in ("Conv", "QLinearConv", "ConvInteger")]


def test_conv_and_depthwise_macs_match_a_hand_count(files):
    view = layer_view(files["fp32"])
    conv, dw = sorted(_convs(view), key=lambda l: l["kind"])  # "conv" < "depthwise"
    # Independent count: every output element (C_out x H x W) is a dot product over C_in/groups x k x k.
    assert conv["kind"] == "conv" and conv["macs"] == 8 * 16 * 16 * (3 * 3 * 3)
    assert dw["kind"] == "depthwise" and dw["macs"] == 8 * 16 * 16 * (1 * 3 * 3)
    dense = next(l for l in view["layers"] if l["op"] in ("Gemm", "MatMul"))
    assert dense["macs"] == 2 * 8
    # Parameter bytes: float32 weights and biases of each layer.
    assert conv["param_bytes"] == 4 * (8 * 3 * 3 * 3 + 8)
    assert conv["precision"] == dw["precision"] == "fp32"
    assert view["totals"]["macs"] == conv["macs"] + dw["macs"] + dense["macs"]


def test_qdq_int8_file_reports_its_convs_quantized(files):
    view = layer_view(files["int8"])
    convs = _convs(view)
    assert len(convs) == 2
    for conv in convs:
        assert conv["precision"] == "int8", conv
        assert "QLinearConv" in conv["runs"]  # the kernel ONNX Runtime actually ran
        assert conv["stored"] and "int8" in conv["stored"]
    # The weight DequantizeLinear nodes are folded into their convs, activation Q/DQ are converters.
    assert all(l["precision"] == "convert" for l in view["layers"] if l["op"] in ("QuantizeLinear", "DequantizeLinear"))
    assert view["totals"]["int8_layers"] >= 2
    assert sorted(l["macs"] for l in convs) == [8 * 16 * 16 * 9, 8 * 16 * 16 * 27]  # same arithmetic as fp32


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_latency_shares_sum_to_one(files, kind):
    view = layer_view(files[kind], runs=5)
    assert view["latency"]["available"] and view["latency"]["kernel_ms"] > 0
    shares = [l["share"] for l in view["layers"]] + [r["share"] for r in view["inserted"]]
    assert sum(shares) == pytest.approx(1.0, abs=1e-3)
    assert sum(r["share"] for r in view["ops"]) == pytest.approx(1.0, abs=1e-3)
    assert max(l["share"] for l in _convs(view)) > 0  # the convs got their kernels' time


def test_fp16_file_is_reported_fp16_at_half_the_bytes(files, tmp_path):
    pytest.importorskip("onnxconverter_common")
    from medlite.compress.fp16 import convert_fp16

    out = tmp_path / "net_fp16.onnx"
    convert_fp16(files["fp32"], out)
    fp32, fp16 = layer_view(files["fp32"], profile=False), layer_view(out, profile=False)
    assert all(l["precision"] == "fp16" for l in _convs(fp16))
    assert fp16["totals"]["param_bytes"] == fp32["totals"]["param_bytes"] // 2
    assert fp16["latency"] == {"available": False, "reason": "profiling not asked for"}


def test_printed_view_fits_80_columns(files):
    lines = layer_lines(layer_view(files["int8"], runs=3))
    assert max(len(line) for line in lines) <= 80
    assert any(line.startswith("Conv") for line in lines)


def test_bench_cli_layers_prints_and_saves(files, tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
               COLUMNS="80")
    proc = subprocess.run([sys.executable, "-m", "medlite.cli", "bench", str(files["int8"]), "--layers", "--threads", "1",
                           "--warmup", "0", "--iterations", "2", "--time-budget", "0.1", "--throughput-batch", "1",
                           "--json", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "QuantizeLinear" in proc.stdout and "layers: the top" in proc.stdout
    saved = json.loads(out.read_text())
    assert saved["layers"]["totals"]["int8_layers"] >= 2 and saved["latency_ms"]["p50"] > 0
