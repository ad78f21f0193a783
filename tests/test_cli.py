"""The command line as a user meets it: exit codes and one-line errors that name the fault."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image


def medlite(*args, cwd=None, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "medlite.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr + result.stdout
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_help_is_fast_and_does_not_import_torch():
    start = time.perf_counter()
    result = medlite("--help")
    assert result.returncode == 0 and "run" in result.stdout
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, medlite.cli; print('torch' in sys.modules, 'lightning' in sys.modules)"],
        capture_output=True, text=True,
    )
    assert probe.stdout.strip() == "False False"
    assert time.perf_counter() - start < 30  # generous: the target (about 1 s) lives in benchmarks


def test_recipes_lists_builtins():
    result = medlite("recipes")
    assert result.returncode == 0
    for name in ("breastmnist", "pneumoniamnist", "busi"):
        assert name in result.stdout


def test_data_summary(data_root):
    result = medlite("data", "--data-root", str(data_root))
    assert result.returncode == 0, result.stderr
    assert "malignant" in result.stdout and "546" in result.stdout and "156" in result.stdout


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--set", "teacher.epochz=2"], ["unknown key", "teacher.epochz"]),
        (["--set", "distill.alpha=1.7"], ["distill.alpha", "1.7"]),
        (["breastmnst"], ["unknown recipe", "breastmnist"]),
        (["--set", "teacher.arch=resnet81"], ["teacher.arch", "resnet81"]),
        (["--set", "data.flag=dermamnist"], ["dermamnist.npz"]),
        (["--set", "compress.methods=[prune_magic]"], ["compress.methods", "prune_magic"]),
        (["--set", "compress.prune_structured.ratio=1.0"], ["ratio"]),
    ],
)
def test_run_bad_input_exits_2(args, fragments, tmp_path, data_root):
    result = medlite("run", *args, "--out", str(tmp_path / "out"), "--data-root", str(data_root),
                     env_extra={"MEDLITE_OFFLINE": "1"})
    assert_one_line_error(result, *fragments)


def test_malformed_yaml(tmp_path, data_root):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("data:\n  flag: breastmnist\n   size: 28\n")
    assert_one_line_error(medlite("run", str(recipe), "--data-root", str(data_root)), "broken.yaml", "malformed YAML")


def _folder_recipe(tmp_path, layout, extra=""):
    rng = np.random.default_rng(0)
    for rel, count in layout.items():
        (tmp_path / "imgs" / rel).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(tmp_path / "imgs" / rel / f"{i}.png")
    recipe = tmp_path / "folder.yaml"
    recipe.write_text(f"data:\n  source: folder\n  root: {tmp_path / 'imgs'}\n{extra}")
    return recipe


def test_fewer_than_two_classes(tmp_path):
    recipe = _folder_recipe(tmp_path, {"only": 6})
    assert_one_line_error(medlite("data", str(recipe)), "at least 2 classes")


def test_empty_dataset(tmp_path):
    recipe = _folder_recipe(tmp_path, {"a": 0, "b": 0})
    assert_one_line_error(medlite("run", str(recipe), "--out", str(tmp_path / "o")), "no images")


def test_class_mismatch_between_splits(tmp_path):
    recipe = _folder_recipe(tmp_path, {"train/a": 4, "train/b": 4, "test/a": 2, "test/c": 2})
    assert_one_line_error(medlite("run", str(recipe), "--out", str(tmp_path / "o")), "class names differ", "c")


def test_unreadable_image(tmp_path):
    recipe = _folder_recipe(tmp_path, {"a": 6, "b": 6})
    (tmp_path / "imgs" / "b" / "bad.png").write_bytes(b"\x89PNG broken")
    assert_one_line_error(medlite("data", str(recipe)), "bad.png", "unreadable")


def test_debug_shows_traceback(tmp_path):
    result = medlite("run", "--set", "distill.alpha=1.7", "--debug", "--out", str(tmp_path))
    assert result.returncode != 0 and "Traceback" in result.stderr
