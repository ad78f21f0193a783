"""The error paths a new user hits (issue 18): what a failed command leaves behind, its exit code
and its one line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def medlite(*args: str, data_root: Path | None = None, cwd: Path | None = None, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    if data_root is not None:
        env["MEDLITE_DATA_ROOT"] = str(data_root)
    kw.setdefault("capture_output", True)
    kw.setdefault("timeout", 300)
    return subprocess.run([sys.executable, "-m", "medlite.cli", *args], text=True, env=env, cwd=cwd, **kw)


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


# -- an output that cannot be written: exit 2 naming it, before any work -------------------------


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    from deploy_helpers import make_model

    return make_model(tmp_path_factory.mktemp("model"))


@pytest.fixture
def unwritable(tmp_path) -> Path:
    """A folder this process cannot write in: a read-only one, or (as root, who writes through
    permission bits) sysfs, which refuses new files even to root."""
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o500)
        yield folder
        folder.chmod(0o700)
        return
    probe = Path("/sys")
    if not probe.is_dir() or os.access(probe, os.W_OK) and _can_create(probe):
        pytest.skip("running as root with no folder root cannot write in")
    yield probe


def _can_create(folder: Path) -> bool:
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def one_line_naming(result: subprocess.CompletedProcess, path: Path) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("medlite: ")]
    assert len(errors) == 1 and str(path) in errors[0], result.stderr
    assert "unexpected error" not in result.stderr and "Traceback" not in result.stderr


def test_predict_to_unwritable_out_exits_2(model, unwritable, busi_root):
    out = unwritable / "predictions.csv"
    one_line_naming(medlite("predict", str(model), str(busi_root / "benign" / "benign (1).png"), "--out", str(out)), out)


def test_soak_to_unwritable_out_exits_2(model, unwritable):
    out = unwritable / "soak.csv"
    one_line_naming(medlite("bench", str(model), "--soak", "1", "--soak-out", str(out)), out)


def test_study_and_tune_to_unwritable_out_exit_2(tmp_path, unwritable, data_root):
    study = tmp_path / "s.yaml"
    study.write_text("recipe: breastmnist\nset: {data.limit: 16}\ngrid: {distill.alpha: [0.3, 0.7]}\n")
    out = unwritable / "study"
    one_line_naming(medlite("study", str(study), "--out", str(out), data_root=data_root), out)
    out = unwritable / "tune"
    one_line_naming(medlite("tune", "--out", str(out), "--set", "data.limit=16", "--trials", "1",
                            data_root=data_root), out)


def test_out_under_a_file_exits_2(tmp_path, model, busi_root):
    plain = tmp_path / "notes.txt"
    plain.write_text("mine\n")
    one_line_naming(medlite("tune", "--out", str(plain / "tune"), "--set", "data.limit=16"), plain)
    one_line_naming(medlite("bench", str(model), "--soak", "1", "--soak-out", str(plain / "s.csv")), plain)


# -- serve on a port in use ---------------------------------------------------------------------


def test_serve_on_a_port_in_use_exits_2_naming_it(model):
    pytest.importorskip("uvicorn")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = medlite("serve", str(model), "--port", str(port), timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"127.0.0.1:{port}" in result.stderr and "in use" in result.stderr
    assert "serving" not in result.stdout


# -- a reader that goes away (`| head -1`) -----------------------------------------------------


def closed_pipe_run(*args: str) -> subprocess.CompletedProcess:
    """Run with stdout a pipe whose reader is already gone: every write gets EPIPE."""
    read, write = os.pipe()
    os.close(read)
    try:
        return medlite(*args, stdout=write, stderr=subprocess.PIPE, capture_output=False) if args[0] != "-edge" \
            else _edge(args[1:], write)
    finally:
        os.close(write)


def _edge(args, write) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "medlite.edge", *args], stdout=write, stderr=subprocess.PIPE,
                          text=True, env=env, timeout=120)


def test_broken_pipe_exits_0_quietly(model, busi_root):
    for args in (["recipes"], ["predict", str(model), str(busi_root / "benign")]):
        result = closed_pipe_run(*args)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr and "error" not in result.stderr
    result = closed_pipe_run("-edge", str(model), str(busi_root / "benign" / "benign (1).png"))
    assert result.returncode == 0, result.stderr
    assert "BrokenPipe" not in result.stderr and "Traceback" not in result.stderr


def test_first_line_quotes_a_library_error_in_one_line():
    from medlite.errors import first_line

    assert first_line(RuntimeError("  gloo: connection closed\nframe 1\nframe 2")) == "gloo: connection closed"
    assert first_line(AssertionError()) == "AssertionError"  # no message: the type names it
    assert first_line(ValueError("\n\n")) == "ValueError"
