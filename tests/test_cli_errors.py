"""The error paths a new user hits (issue 18): what a failed command leaves behind, its exit code
and its one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def medlite(*args: str, data_root: Path | None = None, cwd: Path | None = None, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    if data_root is not None:
        env["MEDLITE_DATA_ROOT"] = str(data_root)
    return subprocess.run([sys.executable, "-m", "medlite.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=cwd, **kw)


# -- a failed run leaves no skeleton directory ------------------------------------------------


def test_run_on_missing_data_leaves_no_directory(tmp_path):
    out = tmp_path / "runs" / "busi"
    result = medlite("run", "busi", "--out", str(out), "--data-root", str(tmp_path / "no-data"),
                     "--set", "data.limit=16")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists(), sorted(p.name for p in out.iterdir())


def test_run_on_missing_data_in_a_folder_of_yours_removes_only_what_it_made(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    result = medlite("run", "busi", "--out", str(out), "--data-root", str(tmp_path / "no-data"))
    assert result.returncode == 2, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_run_with_unknown_set_key_leaves_no_directory(tmp_path, data_root):
    out = tmp_path / "run"
    result = medlite("run", "--out", str(out), "--set", "teacher.epoch=1", data_root=data_root)
    assert result.returncode == 2 and "teacher.epoch" in result.stderr, result.stderr
    assert not out.exists()
