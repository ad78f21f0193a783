"""ONNX export: only the exporter warnings we understand are hidden; a model's own TracerWarning shows."""

from __future__ import annotations

import warnings

import pytest

from medlite.data.preprocess import PreprocessSpec
from medlite.export.onnx import export_onnx

SPEC = PreprocessSpec(28, 1, 0.5, 0.5, ("a", "b"))


def test_a_models_data_dependent_branch_warns(tmp_path):
    """Before: every warning was ignored during export, TracerWarning included."""
    import torch
    from torch import nn

    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(28 * 28, 2)

        def forward(self, x):
            if x.mean() > 0:  # data-dependent: the trace keeps one branch only
                x = x * 2
            return self.fc(x.flatten(1))

    torch.manual_seed(0)
    with pytest.warns(torch.jit.TracerWarning, match="Python boolean"):
        export_onnx(Branchy().eval(), SPEC, tmp_path / "branchy.onnx")


@pytest.mark.parametrize("arch", ["medlite_cnn_tiny", "small_vit_tiny_patch16_224"])
def test_medlites_own_models_export_without_a_warning(tmp_path, arch):
    import torch

    from medlite.models import create

    torch.manual_seed(0)
    model = create(arch, num_classes=2, in_chans=1, img_size=28).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an unexpected warning fails the test
        check = export_onnx(model, SPEC, tmp_path / f"{arch}.onnx")
    assert check["max_abs_diff"] < 1e-3
