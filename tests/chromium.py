"""A small Chrome DevTools Protocol client for tests: headless Debian Chromium, one page.

    binary = require_chromium()          # skips the test, or fails it under MEDLITE_REQUIRE_BROWSER=1
    with open_page(binary, tmp_path, "file:///.../report.html") as page:
        page.evaluate("document.title"); page.wait_for("..."); page.screenshot(path); page.errors()

`errors()` lists console errors, uncaught exceptions, browser log errors and failed loads: what a
reader of the page would see break. No network is used; nothing is downloaded.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
)


def require_chromium() -> str:
    """The chromium binary; without one (or without the websockets package) the test is skipped,
    or fails when MEDLITE_REQUIRE_BROWSER=1 (CI installs chromium and must not skip silently)."""
    import pytest

    binary = os.environ.get("MEDLITE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    problem = None if binary else "chromium not installed (apt-get install chromium)"
    if not problem:
        try:
            import websockets.sync.client  # noqa: F401
        except ImportError:
            problem = "the websockets package is missing (pip install medlite[test])"
    if problem:
        if os.environ.get("MEDLITE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"MEDLITE_REQUIRE_BROWSER=1 but {problem}")
        pytest.skip(problem)
    return binary


class Page:
    def __init__(self, ws, timeout: float) -> None:
        self.ws = ws
        self.timeout = timeout
        self.events: list[dict] = []
        self._id = 0

    def _recv(self, timeout: float) -> dict:
        return json.loads(self.ws.recv(timeout=timeout))

    def send(self, method: str, **params) -> dict:
        self._id += 1
        ident = self._id
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while True:
            message = self._recv(max(0.1, deadline - time.monotonic()))
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_event(self, method: str) -> dict:
        for event in self.events:
            if event.get("method") == method:
                return event
        deadline = time.monotonic() + self.timeout
        while True:
            message = self._recv(max(0.1, deadline - time.monotonic()))
            self.events.append(message)
            if message.get("method") == method:
                return message

    def drain(self, quiet: float = 0.5) -> None:
        """Collect the events that arrive until the page has been quiet for `quiet` seconds."""
        while True:
            try:
                self.events.append(self._recv(quiet))
            except TimeoutError:
                return

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str) -> object:
        """Poll `expression` in the page until it is truthy; its value."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.2)
        raise TimeoutError(f"timed out waiting for {expression}")

    def screenshot(self, path: Path, width: int = 1400) -> Path:
        """The whole page (not only the viewport) as PNG."""
        metrics = self.send("Page.getLayoutMetrics")
        height = int(metrics.get("cssContentSize", metrics.get("contentSize"))["height"])
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=min(height, 30000), deviceScaleFactor=1, mobile=False)
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def errors(self) -> list[str]:
        self.drain()
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(f"exception: {params['exceptionDetails'].get('text')} {params['exceptionDetails'].get('exception', {}).get('description', '')}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                found.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
            elif method == "Network.loadingFailed" and not params.get("canceled"):
                found.append(f"failed load: {params.get('errorText')} (request {params.get('requestId')})")
        return found


@contextmanager
def open_page(binary: str, workdir: Path, url: str, timeout: float = 60.0) -> Iterator[Page]:
    """Start Chromium, open `url`, wait for its load event; always stop the browser afterwards."""
    from websockets.sync.client import connect

    profile = workdir / "chromium-profile"
    profile.mkdir(parents=True, exist_ok=True)
    log = open(workdir / "chromium.log", "w")
    proc = subprocess.Popen(
        [binary, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "--window-size=1400,1000", "about:blank"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.is_file() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start (exit {proc.poll()}); see {workdir / 'chromium.log'}")
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout) as response:
            targets = json.loads(response.read())
        target = next(t for t in targets if t.get("type") == "page")
        with connect(target["webSocketDebuggerUrl"], max_size=None, open_timeout=timeout) as ws:
            page = Page(ws, timeout)
            for domain in ("Runtime", "Log", "Page", "Network"):
                page.send(f"{domain}.enable")
            page.send("Page.navigate", url=url)
            page.wait_event("Page.loadEventFired")
            yield page
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
