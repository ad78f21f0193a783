"""`medlite serve` in a real browser: headless Debian chromium uploads images and sees the answers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from chromium import open_page, require_chromium
from deploy_helpers import CLASSES, live_server, make_model, reference_probs, write_images

pytestmark = pytest.mark.browser

CARD = {
    "model": "student_kd", "arch": "medlite_dsconv_tiny", "format": "onnx-fp32", "classes": list(CLASSES),
    "intended_use": "Research only.", "dataset": {"name": "breastmnist", "source": "medmnist",
                                                   "images": {"train": 546, "val": 78, "test": 156}},
    "metrics": {"split": "test", "auc": 0.81, "n": 156, "ci": {"auc": [0.74, 0.88]}, "confidence": 0.95},
}


def upload_and_classify(page, files: list[Path]) -> list[str]:
    """Choose `files` in the serve page's file input, click Classify; the predicted labels."""
    page.wait_for("document.readyState === 'complete' && !!document.getElementById('files')")
    doc = page.send("DOM.getDocument")
    node = page.send("DOM.querySelector", nodeId=doc["root"]["nodeId"], selector="#files")["nodeId"]
    page.send("DOM.setFileInputFiles", nodeId=node, files=[str(f) for f in files])
    page.evaluate("document.getElementById('files').dispatchEvent(new Event('change'))")
    page.wait_for("!document.getElementById('go').disabled")
    page.evaluate("document.getElementById('go').click()")
    page.wait_for(f"document.querySelectorAll('.result .cls').length >= {len(files)} "
                  "&& Array.from(document.querySelectorAll('.result img')).every(i => i.complete && i.naturalWidth > 0)")
    return page.evaluate("Array.from(document.querySelectorAll('.result .cls')).map(e => e.textContent)")


def test_upload_in_browser_shows_prediction_heatmap_and_card(tmp_path, breast_npz):
    from medlite.deploy.serve import create_app

    binary = require_chromium()
    model = make_model(tmp_path, card=CARD)
    images = write_images(tmp_path / "imgs", breast_npz, 2)
    ref = reference_probs(model, images)
    with live_server(create_app(model)) as url, open_page(binary, tmp_path / "browser", url + "/") as page:
        labels = upload_and_classify(page, images)
        want = [CLASSES[int(p.argmax())] for p in ref]
        assert [label.split(" (")[0] for label in labels] == want
        text = page.evaluate("document.body.innerText")
        assert "0.810 (95% CI 0.740–0.880)" in text and "Research only." in text
        heat_sizes = page.evaluate("Array.from(document.querySelectorAll('.result img[alt=\"occlusion heat-map\"]'))"
                               ".map(i => i.naturalWidth)")
        assert heat_sizes == [224, 224]
        # Every heat-map has its colour scale (the map's own ramp), and the card explains it once.
        ramps = page.evaluate("Array.from(document.querySelectorAll('.result .ramp'))"
                              ".map(r => [r.getBoundingClientRect().width, getComputedStyle(r).backgroundImage])")
        assert len(ramps) == 2 and all(w >= 150 and "linear-gradient" in bg for w, bg in ramps)
        assert "scaled to its own largest drop" in text
        shot = page.screenshot(Path(os.environ.get("MEDLITE_SCREENSHOT_DIR", tmp_path)) / "serve.png")
        errors = page.errors()
    assert errors == [], errors  # console errors, exceptions, failed loads
    image = np.asarray(Image.open(shot).convert("L"))
    assert image.shape[1] == 1400 and image.std() > 10  # a rendered page, not a blank one


def test_a_token_server_in_the_browser_refuses_without_it_and_answers_with_it(tmp_path, breast_npz):
    """The token path as a user meets it: the page asks for the token, a wrong one shows the 401, the
    right one classifies."""
    from medlite.deploy.serve import create_app

    binary = require_chromium()
    model = make_model(tmp_path, card=CARD)
    images = write_images(tmp_path / "imgs", breast_npz, 1)
    token = "browser-token-0123456789abcdef"
    with live_server(create_app(model, token=token)) as url, open_page(binary, tmp_path / "browser", url + "/") as page:
        page.wait_for("document.readyState === 'complete' && !document.getElementById('token').hidden")
        page.evaluate("document.getElementById('token').value = 'wrong-token-000000000000'")
        doc = page.send("DOM.getDocument")
        node = page.send("DOM.querySelector", nodeId=doc["root"]["nodeId"], selector="#files")["nodeId"]
        page.send("DOM.setFileInputFiles", nodeId=node, files=[str(images[0])])
        page.evaluate("document.getElementById('files').dispatchEvent(new Event('change'))")
        page.wait_for("!document.getElementById('go').disabled")
        page.evaluate("document.getElementById('go').click()")
        page.wait_for("document.querySelectorAll('#results .err').length >= 1")
        assert "token" in page.evaluate("document.querySelector('#results .err').textContent")
        page.evaluate(f"document.getElementById('token').value = '{token}'")
        labels = upload_and_classify(page, images)
    assert [label.split(" (")[0] for label in labels] == [CLASSES[int(p.argmax())] for p in reference_probs(model, images)]
