"""Run directories: medlite touches only what it wrote, and the default directory is keyed by the data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from medlite.errors import UsageError
from medlite.recipe import load_recipe
from medlite.recipe import default_run_dir
from medlite.runstate import MARKER, RESOLVED_RECIPE, RunDir, read_marker, temp_path

SRC = Path(__file__).resolve().parents[1] / "src"

USER_RECIPE = textwrap.dedent(
    """\
    # My own recipe. medlite must never rewrite this file: these comments are mine.
    name: mine
    device: cpu
    data: {limit: 16}          # quick
    teacher: {arch: medlite_cnn_tiny, epochs: 1}
    student: {arch: medlite_dsconv_tiny, epochs: 1}
    evaluate: {bootstrap: 20}
    compress: {methods: []}
    bench: {enabled: false}
    explain: {enabled: false}
    """
)


def medlite(*args: str, cwd: Path | None = None, data_root: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    env.pop("MEDLITE_FAULT_AT", None)
    if data_root is not None:
        env["MEDLITE_DATA_ROOT"] = str(data_root)
    return subprocess.run([sys.executable, "-m", "medlite.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Content and mtime of every file below `root`, and the listing of every folder."""
    state: dict = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_file():
            state[rel] = (path.read_bytes(), path.stat().st_mtime_ns)
        else:
            state[rel + "/"] = sorted(p.name for p in path.iterdir())
    return state


def plant_user_files(root: Path) -> None:
    """A folder of the user's, with the names medlite itself uses for its outputs."""
    from medlite.data.preprocess import PreprocessSpec
    from medlite.export.onnx import export_onnx
    from medlite.models import create

    (root / "logs").mkdir(parents=True)
    (root / "recipe.yaml").write_text(USER_RECIPE)
    (root / "notes.tmp").write_text("my notes, not a leftover\n")
    (root / "logs" / "x").write_text("my log\n")
    (root / "logs" / "old.tmp").write_text("mine too\n")
    model = create("medlite_cnn_tiny", num_classes=2, in_chans=1, img_size=28).eval()
    export_onnx(model, PreprocessSpec(28, 1, 0.5, 0.5, ("a", "b")), root / "models" / "mine.onnx")
    (root / "results.json").write_text(json.dumps(
        {"dataset": {}, "variants": [{"name": "mine", "file": "models/mine.onnx"}]}))


def test_no_command_touches_a_users_folder(tmp_path, data_root):
    user = tmp_path / "user"
    plant_user_files(user)
    before = snapshot(user)

    into = medlite("run", str(user / "recipe.yaml"), "--out", str(user), data_root=data_root)
    assert into.returncode == 2, into.stderr
    assert str(user) in into.stderr and "'models'" in into.stderr and "no .medlite-run" in into.stderr

    fresh = medlite("run", str(user / "recipe.yaml"), "--out", str(user), "--fresh", data_root=data_root)
    assert fresh.returncode == 2, fresh.stderr
    assert "--fresh" in fresh.stderr and str(user) in fresh.stderr and "not made by medlite" in fresh.stderr

    data = medlite("data", str(user / "recipe.yaml"), "--data-root", str(data_root))
    assert data.returncode == 0, data.stderr

    bench = medlite("bench", str(user), "--threads", "1", "--warmup", "1", "--iterations", "3",
                    "--time-budget", "0.2", "--throughput-batch", "2")
    assert bench.returncode == 0, bench.stderr
    assert "bench.json not written" in bench.stdout
    for result in (into, fresh, data, bench):
        assert len([line for line in result.stderr.splitlines() if line.strip()]) <= 1
    assert snapshot(user) == before


def test_run_beside_a_hand_written_recipe_keeps_it_and_fresh_removes_only_medlites(tmp_path, data_root):
    """`--out .` next to the user's recipe.yaml: adopted (no name collides), the user's files survive `--fresh`."""
    user = tmp_path / "project"
    user.mkdir()
    (user / "recipe.yaml").write_text(USER_RECIPE)
    (user / "notes.tmp").write_text("my notes\n")
    (user / "scans").mkdir()
    (user / "scans" / "a.tmp").write_text("mine\n")
    before = snapshot(user)

    first = medlite("run", "recipe.yaml", "--out", ".", cwd=user, data_root=data_root)
    assert first.returncode == 0, first.stderr
    assert (user / RESOLVED_RECIPE).is_file() and (user / "results.json").is_file()
    marker = read_marker(user)
    assert marker["adopted"] is True and marker["medlite"] and marker["data"]["limit"] == 16
    assert load_recipe(str(user / RESOLVED_RECIPE)).teacher.epochs == 1

    again = medlite("run", "recipe.yaml", "--out", ".", "--fresh", cwd=user, data_root=data_root)
    assert again.returncode == 0, again.stderr
    assert "reused" not in again.stdout  # started over
    after = snapshot(user)
    assert {k: v for k, v in after.items() if k in before and not k.endswith("/")} == \
        {k: v for k, v in before.items() if not k.endswith("/")}
    assert after["scans/"] == before["scans/"]


def test_fresh_removes_only_managed_entries_and_temporaries_only_ours(tmp_path):
    out = tmp_path / "run"
    with RunDir(out) as run:
        run.open()
    (out / "models" / "teacher.onnx").write_bytes(b"medlite's")
    (out / "results.json").write_text("{}")
    (out / "mine.txt").write_text("the user's, beside the run\n")
    (out / "mine.tmp").write_text("the user's\n")
    ours = temp_path(out / "models" / "student.onnx")
    ours.write_bytes(b"half")
    work = out / "models" / ".medlite-quant-abcd1234"
    work.mkdir()
    (work / "x.onnx").write_bytes(b"half")

    with RunDir(out) as run:
        run.open()  # resume: temporaries of a killed run go, everything else stays
    assert not ours.exists() and not work.exists()
    assert (out / "models" / "teacher.onnx").is_file() and (out / "mine.tmp").is_file()

    with RunDir(out) as run:
        run.open(fresh=True)
    assert not (out / "results.json").exists() and list((out / "models").iterdir()) == []
    assert (out / "mine.txt").read_text() == "the user's, beside the run\n" and (out / "mine.tmp").is_file()
    assert (out / MARKER).is_file()


def test_unmarked_folder_with_an_output_name_is_refused(tmp_path):
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(UsageError, match="results.json.*choose a new or empty --out"):
        RunDir(tmp_path).open()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # not even a lock file


def test_run_directory_made_before_markers_is_resumed(tmp_path):
    (tmp_path / "stages").mkdir()
    (tmp_path / "environment.json").write_text(json.dumps({"versions": {"medlite": "0.1.0"}}))
    (tmp_path / "results.json").write_text("{}")
    with RunDir(tmp_path) as run:
        run.open()
    assert read_marker(tmp_path)["medlite"]


def test_default_directory_is_keyed_by_the_data():
    assert default_run_dir(load_recipe("breastmnist")) == Path("runs") / "breastmnist"
    assert default_run_dir(load_recipe("breastmnist", ["data.augment=none", "teacher.epochs=1"])) == Path("runs/breastmnist")
    arrays = default_run_dir(load_recipe("breastmnist", ["data.source=arrays", "data.root=some/arrays"]))
    other = default_run_dir(load_recipe("breastmnist", ["data.source=arrays", "data.root=other/arrays"]))
    limited = default_run_dir(load_recipe("breastmnist", ["data.limit=64"]))
    assert arrays.name.startswith("breastmnist-arrays-") and other.name.startswith("breastmnist-arrays-")
    assert len({arrays, other, limited, Path("runs/breastmnist")}) == 4
    assert default_run_dir(load_recipe("breastmnist", ["name=mine"])) == Path("runs/mine")


def test_default_directory_on_other_data_is_refused(tmp_path):
    first = load_recipe("breastmnist", ["name=mine"])
    second = load_recipe("breastmnist", ["name=mine", "data.source=arrays", "data.root=arrays"])
    from medlite.recipe import data_identity

    with RunDir(tmp_path) as run:
        run.open(data=data_identity(first), same_data=True)
    with pytest.raises(UsageError, match=f"{tmp_path}: holds a run on other data .*--out"):
        RunDir(tmp_path).open(data=data_identity(second), same_data=True)
    with RunDir(tmp_path) as run:  # a folder the user names explicitly: the recipe decides, stages rerun
        run.open(data=data_identity(second))
    assert read_marker(tmp_path)["data"]["source"] == "arrays"
