"""Serving beyond loopback, safely: a token, a per-client rate limit, TLS files checked, uploads kept
in memory (issue 20, item 5). Real uvicorn servers on 127.0.0.1 only."""

from __future__ import annotations

import io
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from PIL import Image

from deploy_helpers import live_server, make_model

TOKEN = "s3cret-token-for-tests-0123"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("model"))


def png(size: int = 28, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_token_guards_the_api_but_not_the_page(model):
    import httpx

    from medlite.deploy.serve import create_app

    with live_server(create_app(model, token=TOKEN)) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/health").status_code == 200
        page = client.get("/")
        assert page.status_code == 200 and 'placeholder="access token" autocomplete="off">' in page.text  # shown
        files = [("file", ("a.png", png(), "image/png"))]
        for headers in ({}, {"Authorization": "Bearer wrong-token-0000000000"}, {"Authorization": TOKEN}):
            res = client.post("/predict", files=files, headers=headers)
            assert res.status_code == 401 and res.headers["www-authenticate"] == "Bearer", res.text
            assert client.get("/model", headers=headers).status_code == 401
        ok = client.post("/predict", files=files, headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and ok.json()["results"][0]["predicted"]
        assert client.get("/model", headers={"Authorization": f"Bearer {TOKEN}"}).json()["auth"] is True


def test_without_a_token_the_page_has_no_token_field(model):
    import httpx

    from medlite.deploy.serve import create_app

    with live_server(create_app(model)) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert 'placeholder="access token" autocomplete="off" hidden>' in client.get("/").text
        assert client.get("/model").json()["auth"] is False


def test_the_rate_limit_answers_429_with_retry_after_per_client(model):
    import httpx

    from medlite.deploy.serve import create_app

    with live_server(create_app(model, rate_limit=2)) as url, httpx.Client(base_url=url, timeout=30) as client:
        files = [("file", ("a.png", png(), "image/png"))]
        assert [client.post("/predict", files=files).status_code for _ in range(3)] == [200, 200, 429]
        res = client.post("/predict", files=files)
        assert res.status_code == 429 and 0 < int(res.headers["retry-after"]) <= 61 and "2 predictions per minute" in res.text
        assert client.get("/health").status_code == 200  # only /predict is limited


def test_uploads_past_starlettes_spool_size_stay_in_memory(model, monkeypatch):
    import httpx

    from medlite.deploy.serve import create_app

    made = []
    real = tempfile.TemporaryFile
    monkeypatch.setattr(tempfile, "TemporaryFile", lambda *a, **k: made.append(1) or real(*a, **k))
    big = png(1100)  # ~1.2 MB of noise: past starlette's default 1 MB spool
    assert len(big) > 1024 * 1024
    with live_server(create_app(model, max_upload_mb=5)) as url, httpx.Client(base_url=url, timeout=60) as client:
        res = client.post("/predict", files=[("file", ("big.png", big, "image/png"))])
        assert res.status_code == 200, res.text
    assert made == []  # no temporary file: the image never touched the disk


@pytest.mark.parametrize("host, token, no_auth, message", [
    ("0.0.0.0", None, False, "--host 0.0.0.0: other machines could use the model"),
    ("127.0.0.1", "short", False, "--token: at least 16 characters"),
])
def test_exposure_without_protection_is_refused(host, token, no_auth, message):
    from medlite.deploy.serve import check_exposure

    with pytest.raises(ValueError, match=message):
        check_exposure(host, token, no_auth, None, None)


def test_exposure_rules_warn_where_they_allow(tmp_path):
    from medlite.deploy.serve import check_exposure

    assert check_exposure("127.0.0.1", None, False, None, None) == []
    warned = check_exposure("0.0.0.0", None, True, None, None)
    assert any("--no-auth" in w for w in warned) and any("without TLS" in w for w in warned)
    assert check_exposure("0.0.0.0", TOKEN, False, None, None) == [next(w for w in warned if "TLS" in w)]
    with pytest.raises(ValueError, match="go together"):
        check_exposure("0.0.0.0", TOKEN, False, tmp_path / "cert.pem", None)
    with pytest.raises(ValueError, match="not found"):
        check_exposure("0.0.0.0", TOKEN, False, tmp_path / "cert.pem", tmp_path / "key.pem")


def test_cli_refuses_an_open_server_with_exit_2(model):
    proc = subprocess.run([sys.executable, "-m", "medlite.cli", "serve", str(model), "--host", "0.0.0.0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--token" in proc.stderr and "Traceback" not in proc.stderr
