"""`medlite serve` in a real browser: headless Debian chromium uploads images and sees the answers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cdp import browser, chromium_path, upload_and_classify
from deploy_helpers import CLASSES, live_server, make_model, reference_probs, write_images

pytestmark = pytest.mark.browser

CARD = {
    "model": "student_kd", "arch": "medlite_dsconv_tiny", "format": "onnx-fp32", "classes": list(CLASSES),
    "intended_use": "Research only.", "dataset": {"name": "breastmnist", "source": "medmnist",
                                                   "images": {"train": 546, "val": 78, "test": 156}},
    "metrics": {"split": "test", "auc": 0.81, "n": 156, "ci": {"auc": [0.74, 0.88]}, "confidence": 0.95},
}


@pytest.fixture(scope="module")
def chromium():
    if chromium_path() is None:
        if os.environ.get("MEDLITE_REQUIRE_BROWSER") == "1":
            pytest.fail("MEDLITE_REQUIRE_BROWSER=1 but no chromium found (apt-get install chromium)")
        pytest.skip("chromium not installed")
    return chromium_path()


def test_upload_in_browser_shows_prediction_heatmap_and_card(chromium, tmp_path, breast_npz):
    from medlite.deploy.serve import create_app

    model = make_model(tmp_path, card=CARD)
    images = write_images(tmp_path / "imgs", breast_npz, 2)
    ref = reference_probs(model, images)
    with live_server(create_app(model)) as url, browser() as page:
        labels = upload_and_classify(page, url + "/", images)
        want = [CLASSES[int(p.argmax())] for p in ref]
        assert [label.split(" (")[0] for label in labels] == want
        text = page.eval("document.body.innerText")
        assert "0.810 (95% CI 0.740–0.880)" in text and "Research only." in text
        heat_sizes = page.eval("Array.from(document.querySelectorAll('.result img[alt=\"occlusion heat-map\"]'))"
                               ".map(i => i.naturalWidth)")
        assert heat_sizes == [224, 224]
        shot = page.screenshot(Path(os.environ.get("MEDLITE_SCREENSHOT_DIR", tmp_path)) / "serve.png")
    image = np.asarray(Image.open(shot).convert("L"))
    assert image.shape[1] == 1280 and image.std() > 10  # a rendered page, not a blank one
