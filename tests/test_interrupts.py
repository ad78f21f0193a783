"""Ctrl-C (SIGINT) and SIGTERM during `medlite run` (issue 18): exit 130 / 143 with one line, and
nothing half-written, wherever the run was (training, int8 compression)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
TINY = ["data.limit=48", "teacher.arch=medlite_cnn_tiny", "student.arch=medlite_dsconv_tiny",
        "evaluate.bootstrap=20", "bench.enabled=false", "explain.enabled=false"]


def start_run(out: Path, data_root: Path, overrides: list[str]) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "MEDLITE_FAULT_AT"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    env["MEDLITE_DATA_ROOT"] = str(data_root)
    env["PYTHONUNBUFFERED"] = "1"
    args = [sys.executable, "-m", "medlite.cli", "run", "breastmnist", "--out", str(out)]
    for item in TINY + overrides:
        args += ["--set", item]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def interrupt_at(proc: subprocess.Popen, marker: str, signum: int) -> tuple[int, str]:
    """Wait for a line containing `marker`, send `signum`, return the exit code and the whole output."""
    lines = []
    deadline = time.monotonic() + 300
    for line in proc.stdout:
        lines.append(line)
        if marker in line:
            proc.send_signal(signum)
            break
        assert time.monotonic() < deadline, "".join(lines)
    else:
        proc.wait()
        pytest.fail(f"the run ended before {marker!r}:\n" + "".join(lines))
    rest, _ = proc.communicate(timeout=120)
    return proc.returncode, "".join(lines) + rest


def half_written(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".medlite-tmp")]


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_training_exits_with_its_code(tmp_path, data_root, signum, code):
    out = tmp_path / "run"
    proc = start_run(out, data_root, ["teacher.epochs=40", "student.epochs=2", "compress.methods=[]"])
    returncode, output = interrupt_at(proc, "teacher epoch 1/", signum)
    assert returncode == code, output
    assert output.rstrip().splitlines()[-1] == "medlite: interrupted; rerun to resume", output
    assert "Traceback" not in output
    assert not (out / "results.json").exists() and not half_written(out)


def test_sigint_during_int8_compression_exits_130(tmp_path, data_root):
    out = tmp_path / "run"
    proc = start_run(out, data_root, ["teacher.epochs=1", "student.epochs=1", "compress.methods=[int8_static]",
                                      "compress.targets=[student_kd]", "compress.int8_static.calibration_images=48"])
    returncode, output = interrupt_at(proc, "int8 QDQ", signal.SIGINT)
    assert returncode == 130, output
    assert output.rstrip().splitlines()[-1] == "medlite: interrupted; rerun to resume", output
    assert not half_written(out)
