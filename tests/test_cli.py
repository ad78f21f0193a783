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


# -- usage errors from typer's own click, --version ------------------------------------------

from types import SimpleNamespace  # noqa: E402


def main_in_process(monkeypatch, capsys, *args):
    """medlite.cli.main() with sys.argv patched: exit code, stdout and stderr, without a new interpreter."""
    from medlite import cli

    monkeypatch.setattr(sys, "argv", ["medlite", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        cli.main()
        raise SystemExit(0)  # main() returns normally on success
    out, err = capsys.readouterr()
    code = info.value.code if isinstance(info.value.code, int) else (0 if info.value.code is None else 1)
    return SimpleNamespace(returncode=code, stdout=out, stderr=err)


def test_no_arguments_shows_help_and_is_a_usage_error(monkeypatch, capsys):
    result = main_in_process(monkeypatch, capsys)
    assert result.returncode == 2
    assert "Usage" in result.stdout + result.stderr and "run" in result.stdout + result.stderr
    assert "unexpected error" not in result.stderr


def test_version(monkeypatch, capsys):
    from medlite import __version__

    result = main_in_process(monkeypatch, capsys, "--version")
    assert result.returncode == 0 and result.stdout.strip() == f"medlite {__version__}"


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--bogus"], "No such option: --bogus"),
        (["frobnicate"], "No such command 'frobnicate'"),
        (["run", "--no-such-flag"], "No such option: --no-such-flag"),
        (["bench"], "Missing argument"),
    ],
)
def test_unknown_option_or_command_is_a_usage_error(monkeypatch, capsys, args, fragment):
    result = main_in_process(monkeypatch, capsys, *args)
    assert result.returncode == 2, result.stderr
    assert fragment in result.stderr and "Usage:" in result.stderr
    assert "unexpected error" not in result.stderr and "Traceback" not in result.stderr


def test_version_and_usage_error_in_a_real_process():
    assert medlite("--version").returncode == 0
    result = medlite("--bogus")
    assert result.returncode == 2 and "No such option" in result.stderr


# -- the bad-input corpus, from the command line ---------------------------------------------


def test_partial_recipe_runs_the_data_command(tmp_path, data_root, monkeypatch, capsys):
    monkeypatch.setenv("MEDLITE_CACHE_DIR", str(tmp_path / "cache"))
    recipe = tmp_path / "partial.yaml"
    recipe.write_text("teacher: {epochs: 3}\nstudent: {lr: 0.01}\n")
    result = main_in_process(monkeypatch, capsys, "data", str(recipe), "--data-root", str(data_root))
    assert result.returncode == 0, result.stderr
    assert "malignant" in result.stdout


@pytest.mark.parametrize(
    "content, fragments",
    [
        ("teacher: {epochz: 3}\n", ["unknown key 'teacher.epochz'"]),
        ("- data\n- teacher\n", ["mapping of keys", "list"]),
        ("", ["empty recipe"]),
        (b"\x00\x01\xff\xfe binary", ["not a text (UTF-8) recipe file"]),
    ],
)
def test_bad_recipe_files_exit_2_one_line(tmp_path, monkeypatch, capsys, content, fragments):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(content) if isinstance(content, str) else recipe.write_bytes(content)
    result = main_in_process(monkeypatch, capsys, "run", str(recipe), "--out", str(tmp_path / "out"))
    assert_one_line_error(result, str(recipe), *fragments)
    assert not (tmp_path / "out").exists()


def test_set_with_a_wrong_type_names_the_option(tmp_path, monkeypatch, capsys):
    result = main_in_process(monkeypatch, capsys, "data", "--set", "teacher.epochs=abc")
    assert_one_line_error(result, "--set teacher.epochs=abc: teacher.epochs: Input should be a valid integer")
    assert ".yaml" not in result.stderr


def _arrays_recipe(tmp_path, x, y):
    folder = tmp_path / "arrays"
    folder.mkdir(exist_ok=True)
    np.save(folder / "X_train.npy", x)
    np.save(folder / "y_train.npy", y)
    recipe = tmp_path / "arrays.yaml"
    recipe.write_text(f"data: {{source: arrays, root: '{folder}'}}\n")
    return recipe, folder


def _images(n=40, seed=0):
    return np.random.default_rng(seed).random((n, 8, 8), dtype=np.float32)


@pytest.mark.parametrize(
    "make, file, fragments",
    [
        (lambda: (np.where(np.arange(40)[:, None, None] == 3, np.nan, _images()), np.arange(40) % 2), "X_train.npy", ["NaN"]),
        (lambda: (_images(), np.arange(40) % 2 + 1), "y_train.npy", ["no image has label 0", "numbered from 1"]),
        (lambda: (_images(), np.arange(40) % 2 - 1), "y_train.npy", ["negative label -1"]),
        (lambda: (_images(), np.arange(39) % 2), "y_train.npy", ["39 labels for 40 images"]),
    ],
)
def test_bad_arrays_exit_2_naming_file_and_fault(tmp_path, monkeypatch, capsys, make, file, fragments):
    recipe, folder = _arrays_recipe(tmp_path, *make())
    result = main_in_process(monkeypatch, capsys, "data", str(recipe))
    assert_one_line_error(result, str(folder / file), *fragments)


@pytest.mark.parametrize("damage", ["truncated", "keyless", "empty"])
def test_damaged_medmnist_file_exits_2_naming_it(tmp_path, monkeypatch, capsys, data_root, damage):
    monkeypatch.setenv("MEDLITE_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "data"
    root.mkdir()
    target = root / "breastmnist.npz"
    if damage == "truncated":
        target.write_bytes((data_root / "breastmnist.npz").read_bytes()[:50_000])
    elif damage == "keyless":
        np.savez(target)
    else:
        target.write_bytes(b"")
    result = main_in_process(monkeypatch, capsys, "data", "--data-root", str(root))
    assert_one_line_error(result, str(target), "MD5", "750601b1f35ba3300ea97c75c52ff8f6")


def test_data_root_is_not_created(tmp_path, monkeypatch, capsys):
    import urllib.request

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    missing = tmp_path / "no" / "such" / "root"
    result = main_in_process(monkeypatch, capsys, "data", "--data-root", str(missing))
    assert_one_line_error(result, "breastmnist.npz", str(missing))
    assert not (tmp_path / "no").exists()


def _bare_onnx(path):
    """A metadata-free ONNX model that takes N x 1 x 8 x 8 (built with onnx.helper: no torch)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])],
        "bare",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("shape, fragments", [("abc", ["--input-shape 'abc'"]), ("1,3,8,8", ["--input-shape 1,3,8,8", "N,1,8,8"])])
def test_bench_wrong_input_shape_exits_2(tmp_path, monkeypatch, capsys, shape, fragments):
    model = _bare_onnx(tmp_path / "bare.onnx")
    result = main_in_process(
        monkeypatch, capsys, "bench", str(model), "--input-shape", shape,
        "--threads", "1", "--warmup", "0", "--iterations", "2", "--time-budget", "0.2",
    )
    assert_one_line_error(result, *fragments)


# -- whose fault: exit 2 for the user's, exit 1 for an internal failure ----------------------


def cli_main() -> None:
    from medlite import cli

    cli.main()


def _fail_in_pipeline(monkeypatch, error: BaseException) -> None:
    import medlite.pipeline

    def fails(*args, **kwargs):
        raise error

    monkeypatch.setattr(medlite.pipeline, "run_pipeline", fails)


def test_internal_failure_exits_1_with_one_line_and_a_debug_pointer(tmp_path, monkeypatch, capsys, data_root):
    from medlite.errors import InternalError

    try:
        raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : simulated\nsecond line")
    except RuntimeError as cause:
        error = InternalError("models/x.onnx: cannot quantize (static int8, minmax): Fail: simulated")
        error.__cause__ = cause
    _fail_in_pipeline(monkeypatch, error)
    result = main_in_process(monkeypatch, capsys, "run", "--out", str(tmp_path / "o"), "--data-root", str(data_root))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == ["medlite: error: models/x.onnx: cannot quantize (static int8, minmax): Fail: simulated "
                     "(rerun with --debug for the traceback)"], result.stderr
    # --debug: the traceback instead (main re-raises; the interpreter prints it).
    monkeypatch.setattr(sys, "argv", ["medlite", "run", "--out", str(tmp_path / "o"), "--data-root", str(data_root), "--debug"])
    with pytest.raises(InternalError) as info:
        cli_main()
    assert info.value.__cause__ is not None


def test_unexpected_exception_exits_1_on_one_line(tmp_path, monkeypatch, capsys, data_root):
    _fail_in_pipeline(monkeypatch, ValueError("first line\nsecond line"))
    result = main_in_process(monkeypatch, capsys, "run", "--out", str(tmp_path / "o"), "--data-root", str(data_root))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "medlite: unexpected error: ValueError: first line (rerun with --debug for the traceback)"]


def test_debug_before_the_command_and_on_every_command(tmp_path, monkeypatch, capsys, data_root):
    _fail_in_pipeline(monkeypatch, ValueError("boom"))
    monkeypatch.setattr(sys, "argv", ["medlite", "--debug", "run", "--out", str(tmp_path / "o"), "--data-root", str(data_root)])
    with pytest.raises(ValueError, match="boom"):
        cli_main()
    # the pointer in every internal error's message is true for every command
    for command in ("run", "data", "bench", "predict", "serve", "explain", "study", "tune"):
        assert "--debug" in medlite_help(monkeypatch, capsys, command), command


def medlite_help(monkeypatch, capsys, command: str) -> str:
    result = main_in_process(monkeypatch, capsys, command, "--help")
    assert result.returncode == 0
    return result.stdout


def test_no_module_global_state_between_invocations(tmp_path, monkeypatch, capsys, data_root):
    """--debug in one invocation must not leak into the next (it lived in a module global before)."""
    _fail_in_pipeline(monkeypatch, ValueError("boom"))
    monkeypatch.setattr(sys, "argv", ["medlite", "run", "--debug", "--out", str(tmp_path / "o"), "--data-root", str(data_root)])
    with pytest.raises(ValueError):
        cli_main()
    result = main_in_process(monkeypatch, capsys, "run", "--out", str(tmp_path / "o"), "--data-root", str(data_root))
    assert result.returncode == 1 and "Traceback" not in result.stderr and "boom" in result.stderr


def test_cli_package_has_no_import_cycle():
    """Commands import only medlite.cli.common from the CLI package; nothing outside the CLI imports it.

    (The commands used to live in explain/cli.py, study/cli.py, ... and import medlite.cli for a
    shared mutable `_debug`, while medlite.cli imported them: a cycle.)
    """
    import ast
    from pathlib import Path

    import medlite

    root = Path(medlite.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        in_cli = path.parent == root / "cli"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                # `from medlite import cli` imports medlite.cli; `from medlite.cli.common import x` only common
                names = [node.module] if node.module != "medlite" else [f"medlite.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if not (name == "medlite.cli" or name.startswith("medlite.cli.")):
                    continue
                allowed = in_cli and (path.name == "__init__.py" or name == "medlite.cli.common" or path.name == "__main__.py")
                if not allowed:
                    offenders.append(f"{path.relative_to(root)} imports {name}")
    assert offenders == []


def test_a_command_that_exits_non_zero_keeps_its_code(monkeypatch):
    """typer.Exit(n) under standalone_mode=False is returned, not raised: main() must still exit n."""
    import sys

    import typer

    import medlite.cli as cli

    @cli.app.command("exit-three-for-test", hidden=True)
    def _three() -> None:
        raise typer.Exit(3)

    monkeypatch.setattr(sys, "argv", ["medlite", "exit-three-for-test"])
    try:
        with pytest.raises(SystemExit) as info:
            cli.main()
        assert info.value.code == 3
    finally:
        cli.app.registered_commands[:] = [c for c in cli.app.registered_commands if c.name != "exit-three-for-test"]
