"""A minimal Chrome DevTools Protocol client for headless Debian chromium (no browser download)."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM = os.environ.get("MEDLITE_CHROMIUM", "/usr/bin/chromium")


def chromium_path() -> str | None:
    found = CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium")
    return found


class Page:
    def __init__(self, ws):
        self.ws = ws
        self.ids = itertools.count(1)

    def send(self, method: str, **params):
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv(timeout=60))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def eval(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:60]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60) -> object:
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.eval(expression)
            if value:
                return value
            time.sleep(0.2)
        raise TimeoutError(f"timed out waiting for {expression}")

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return path


@contextlib.contextmanager
def browser(width: int = 1280, height: int = 900):
    """Headless chromium on a loopback debugging port; yields a Page."""
    from websockets.sync.client import connect

    exe = chromium_path()
    if exe is None:
        raise FileNotFoundError("chromium not found")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    profile = tempfile.mkdtemp(prefix="medlite-chromium-")
    proc = subprocess.Popen(
        [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1", f"--user-data-dir={profile}",
         f"--window-size={width},{height}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 60
        targets = None
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    targets = [t for t in json.load(r) if t.get("type") == "page"]
                if targets:
                    break
            except OSError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"chromium exited with code {proc.returncode}")
            time.sleep(0.3)
        if not targets:
            raise RuntimeError("chromium did not open a page target")
        with connect(targets[0]["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024) as ws:
            page = Page(ws)
            page.send("Page.enable")
            page.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
            yield page
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)


def upload_and_classify(page: Page, url: str, files: list[Path]) -> list[str]:
    """Open the serve page, choose `files` in the file input, click Classify; return the predicted labels."""
    page.send("Page.navigate", url=url)
    page.wait_for("document.readyState === 'complete' && !!document.getElementById('files')")
    doc = page.send("DOM.getDocument")
    node = page.send("DOM.querySelector", nodeId=doc["root"]["nodeId"], selector="#files")["nodeId"]
    page.send("DOM.setFileInputFiles", nodeId=node, files=[str(f) for f in files])
    page.eval("document.getElementById('files').dispatchEvent(new Event('change'))")
    page.wait_for("!document.getElementById('go').disabled")
    page.eval("document.getElementById('go').click()")
    page.wait_for(f"document.querySelectorAll('.result .cls').length >= {len(files)} "
                  "&& Array.from(document.querySelectorAll('.result img')).every(i => i.complete && i.naturalWidth > 0)")
    return page.eval("Array.from(document.querySelectorAll('.result .cls')).map(e => e.textContent)")
