"""Issue 18: `make wheel` builds a pure-Python wheel that installs with `--no-deps` into a fresh virtual
environment and runs the edge runner there, next to only the runner's own dependencies.

The device's packages (numpy, onnxruntime, Pillow, psutil) are not downloaded: the fresh environment
sees exactly those from this one (a `.pth` file naming a folder of links to them), nothing else."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EDGE_PACKAGES = ("numpy", "numpy.libs", "onnxruntime", "PIL", "pillow.libs", "psutil")


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(cmd: list, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120, **kw)
    assert done.returncode == 0, (cmd, done.stdout[-2000:], done.stderr[-2000:])
    return done


def test_make_wheel_installs_without_dependencies_and_runs_the_edge_runner(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    # The project as a clone has it (no build/ or egg-info of this checkout can leak into the wheel).
    proj = tmp_path / "medlite"
    proj.mkdir()
    for name in ("Makefile", "pyproject.toml", "README.md", "requirements.lock"):
        shutil.copy(REPO / name, proj / name)
    shutil.copytree(REPO / "src", proj / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    # This environment stands in for the one `make setup` makes (PY=: its python, with setuptools).
    (proj / ".venv").mkdir()
    (proj / ".venv" / ".installed").touch()
    _run(["make", "-C", proj, "wheel", f"PY={sys.executable}"], env=_clean_env())
    wheels = list((proj / "dist").glob("medlite-*-py3-none-any.whl"))
    assert len(wheels) == 1, list((proj / "dist").iterdir())
    assert not (proj / "build").exists() and not list((proj / "src").glob("*.egg-info"))

    device = tmp_path / "device"
    _run([sys.executable, "-m", "venv", "--without-pip", device])
    python = device / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheels[0]],
         env=_clean_env())
    # The runner's dependencies, and only those, from this environment.
    deps = tmp_path / "edge-deps"
    deps.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for name in EDGE_PACKAGES:
        if (site / name).exists():
            (deps / name).symlink_to(site / name)
    device_site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            env=_clean_env()).stdout.strip())
    (device_site / "edge_deps.pth").write_text(f"{deps}\n")

    probe = ("import sys, medlite, medlite.edge; print(medlite.__file__); "
             "print(sorted(m for m in ('torch', 'onnx', 'scipy', 'pydantic', 'sklearn') if m in sys.modules))")
    out = _run([python, "-c", probe], env=_clean_env(), cwd=tmp_path).stdout.splitlines()
    assert out[0].startswith(str(device_site)), out  # the wheel's medlite, not this checkout's
    assert out[1] == "[]", out
    usage = _run([python, "-m", "medlite.edge", "--help"], env=_clean_env(), cwd=tmp_path).stdout
    assert "MODEL" in usage or "model" in usage
    # torch & co. are really absent there: the wheel's --no-deps install brought none of them
    missing = subprocess.run([python, "-c", "import torch"], capture_output=True, text=True, env=_clean_env())
    assert missing.returncode != 0 and "No module named 'torch'" in missing.stderr
