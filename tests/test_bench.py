"""Benchmarks: complete, sane objects from fresh worker processes; run directories; CLI; errors."""

from __future__ import annotations

import json
import os
import runpy
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from medlite.bench import bench_file, bench_run_dir, load_bench, merge_into_results, print_bench_table
from medlite.cli.bench import bench as bench_command
from medlite.bench.measure import summarize
from medlite.data.preprocess import PreprocessSpec
from medlite.errors import UsageError
from medlite.export.onnx import export_onnx
from medlite.runtime import cpu_count

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(warmup=1, iterations=15, time_budget_s=0.5, throughput_batch=4)
MEASUREMENT_KEYS = {
    "latency_ms", "load_ms", "prep_ms", "prep_source", "peak_rss_mb", "cpu_util", "throughput_ips", "threads",
    "temperature_c", "temperature_unavailable", "energy_j_per_inference", "energy_unavailable", "runtime",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """A tiny student exported to ONNX plus its safetensors checkpoint, as the pipeline writes them."""
    import torch

    from medlite.models import create
    from medlite.models.weights import save_state

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("bench")
    spec = PreprocessSpec(28, 1, 0.5, 0.5, ("benign", "malignant"))
    model = create("medlite_cnn_tiny", num_classes=2, in_chans=1, img_size=28).eval()
    export_onnx(model, spec, root / "models" / "student_kd.onnx")
    save_state(model, root / "models" / "student_kd.safetensors")
    return {"root": root, "onnx": root / "models" / "student_kd.onnx",
            "ckpt": root / "models" / "student_kd.safetensors", "spec": spec}


def check_measurement(m: dict) -> None:
    assert MEASUREMENT_KEYS <= set(m), MEASUREMENT_KEYS - set(m)
    lat = m["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert lat["runs"] > 0 and lat["mean"] > 0 and lat["std"] >= 0
    assert m["load_ms"] > 0 and m["prep_ms"] > 0 and m["peak_rss_mb"] > 10
    assert m["throughput_ips"] > 0 and m["cpu_util"] > 0 and m["threads"] >= 1
    # Either a figure or the reason there is none.
    assert (m["temperature_c"] is None) == bool(m["temperature_unavailable"])
    assert (m["energy_j_per_inference"] is None) == bool(m["energy_unavailable"])


def test_summary_statistics_are_ordered():
    stats = summarize([5.0, 1.0, 2.0, 3.0, 4.0, 100.0])
    assert stats["p50"] == 3.5 and stats["runs"] == 6 and stats["max"] == 100.0
    assert stats["p50"] <= stats["p90"] <= stats["p99"]


def test_bench_file_real_image(tiny, busi_root):
    images = sorted((busi_root / "benign").glob("*.png"))[:2]
    folder = tiny["root"] / "imgs"
    folder.mkdir(exist_ok=True)
    for image in images:
        shutil.copy(image, folder / image.name)
    result = bench_file(tiny["onnx"], images_dir=folder if images else None, threads=[1], **FAST)
    check_measurement(result["threads_1"])
    check_measurement(result)  # headline figures at the top level
    assert result["primary"] == "threads_1" and result["threads"] == 1
    assert result["latency_ms"] == result["threads_1"]["latency_ms"]
    assert result["threads_1"]["latency_ms"]["runs"] <= FAST["iterations"]
    assert result["preprocess"]["class_names"] == ["benign", "malignant"]
    assert result["runtime"].startswith("onnxruntime")
    if images:
        assert result["prep_source"].startswith("real image")


def test_bench_file_synthetic_all_cores_and_bare_model(tiny, tmp_path):
    import onnx

    proto = onnx.load(str(tiny["onnx"]))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    result = bench_file(bare, input_shape="1,1,28,28", threads=[1, 0], **FAST)
    assert set(result) >= {"threads_1", "threads_all"}
    check_measurement(result["threads_all"])
    assert result["threads_all"]["threads"] == cpu_count()
    assert result["prep_source"].startswith("synthetic")
    assert any("no preprocessing spec" in note for note in result["threads_1"]["notes"])
    assert result["threads_1"]["input_shape"] == [1, 1, 28, 28]


def test_onnx_worker_imports_only_edge_packages(tiny):
    """The ONNX worker must run on a device with only numpy, onnxruntime and Pillow."""
    blocked = ("torch", "onnx", "sklearn", "lightning", "timm", "torchvision", "scipy", "pydantic", "yaml",
               "typer", "rich", "safetensors", "matplotlib")
    code = textwrap.dedent(
        """
        import json, runpy, sys
        blocked = set(sys.argv[1].split(","))
        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in blocked:
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Blocker())
        sys.argv = ["worker"] + sys.argv[2:]
        try:
            runpy.run_module("medlite.bench.worker", run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            third = sorted({m.split(".")[0] for m in sys.modules} - set(sys.stdlib_module_names) - {"__main__"})
            third = [m for m in third if not m.startswith("_cython_")]  # numpy's compiled-extension helpers
            print("THIRD " + json.dumps(third), file=sys.stderr)
            sys.exit(exc.code)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, ",".join(blocked), "onnx", str(tiny["onnx"]), "--threads", "1",
         "--warmup", "1", "--iterations", "5", "--time-budget", "0.5", "--throughput-batch", "2"],
        capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    check_measurement(json.loads(proc.stdout.strip().splitlines()[-1]))
    third = json.loads([line for line in proc.stderr.splitlines() if line.startswith("THIRD ")][-1][6:])
    assert set(third) <= {"numpy", "onnxruntime", "PIL", "medlite", "_distutils_hack", "psutil", "cython_runtime"}, third


def test_pruned_variant_gets_an_eager_reference(tmp_path):
    """Before: the eager worker built the unpruned architecture and `load_exact` refused the narrower
    checkpoint, so pruned rows never had a reference."""
    import torch

    from medlite.compress.prune import prune_structured
    from medlite.models import create
    from medlite.models.weights import save_state

    torch.manual_seed(0)
    spec = PreprocessSpec(28, 1, 0.5, 0.5, ("benign", "malignant"))
    model = create("medlite_cnn_tiny", num_classes=2, in_chans=1, img_size=28).eval()
    pruned = prune_structured(model, torch.zeros(1, 1, 28, 28), ratio=0.5).eval()
    export_onnx(pruned, spec, tmp_path / "pruned.onnx")
    save_state(pruned, tmp_path / "pruned.safetensors", metadata={"arch": "medlite_cnn_tiny", "structure": "pruned"})
    reference = {"arch": "medlite_cnn_tiny", "checkpoint": tmp_path / "pruned.safetensors", "num_classes": 2,
                 "in_chans": 1, "img_size": 28}
    result = bench_file(tmp_path / "pruned.onnx", threads=[1], reference=reference, **FAST)
    assert "error" not in result["reference"], result["reference"]
    check_measurement(result["reference"]["threads_1"])
    assert result["speedup_vs_eager"] > 0


def make_run_dir(tiny, root: Path) -> Path:
    """A hand-made minimal run: a base model with checkpoint, a derived ONNX-only variant, a broken one."""
    run = root / "run"
    (run / "models").mkdir(parents=True)
    shutil.copy(tiny["onnx"], run / "models" / "student_kd.onnx")
    shutil.copy(tiny["ckpt"], run / "models" / "student_kd.safetensors")
    shutil.copy(tiny["onnx"], run / "models" / "student_kd_int8_static.onnx")
    results = {
        "dataset": {"name": "breastmnist", "num_classes": 2, "channels": 1, "image_size": 28},
        "variants": [
            {"name": "student_kd", "parent": None, "arch": "medlite_cnn_tiny", "format": "onnx",
             "file": "models/student_kd.onnx", "checkpoint": "models/student_kd.safetensors"},
            {"name": "student_kd_int8_static", "parent": "student_kd", "arch": "medlite_cnn_tiny",
             "format": "onnx", "file": "models/student_kd_int8_static.onnx"},
            {"name": "student_kd_lost", "parent": "student_kd", "arch": "medlite_cnn_tiny",
             "format": "onnx", "file": "models/missing.onnx"},
        ],
    }
    (run / "results.json").write_text(json.dumps(results))
    return run


def test_bench_run_dir_fills_every_variant_and_reference(tiny, tmp_path, busi_root):
    from medlite.recipe import BenchConfig

    run = make_run_dir(tiny, tmp_path)
    (run / "samples").mkdir()
    shutil.copy(sorted((busi_root / "normal").glob("*.png"))[0], run / "samples" / "test_0.png")
    cfg = BenchConfig(enabled=True, threads=[1, 0], warmup=1, iterations=10, time_budget_s=0.5, throughput_batch=4)
    seen = []
    out = bench_run_dir(run, cfg, on_variant=lambda name, _: seen.append(name))
    assert seen == ["student_kd", "student_kd_int8_static", "student_kd_lost"]
    for name in ("student_kd", "student_kd_int8_static"):
        for key in ("threads_1", "threads_all"):
            check_measurement(out[name][key])
        check_measurement(out[name])
        assert out[name]["file"] == f"models/{name}.onnx"
    assert "missing.onnx" in out["student_kd_lost"]["error"]
    assert "samples" in out["student_kd"]["prep_source"]

    ref = out["student_kd"]["reference"]
    assert "error" not in ref, ref
    check_measurement(ref["threads_1"])
    check_measurement(ref["threads_all"])
    assert ref["runtime"].startswith("torch") and ref["checkpoint"] == "models/student_kd.safetensors"
    assert set(ref["speedup"]) == {"threads_1", "threads_all"}
    assert ref["speedup"]["threads_1"]["latency_p50"] > 0
    assert out["student_kd"]["speedup_vs_eager"] == ref["speedup"]["threads_1"]["latency_p50"]
    assert "reference" not in out["student_kd_int8_static"]
    # Each worker reports its own memory, not its parent's (this pytest process has torch loaded).
    assert out["student_kd"]["peak_rss_mb"] < ref["peak_rss_mb"]

    stored = json.loads((run / "bench.json").read_text())
    assert stored["variants"] == out and stored["config"]["threads"] == [1, 0] and stored["machine"]["cores"] >= 1
    assert load_bench(run) == out
    assert merge_into_results(run, out) == sorted(out)
    merged = json.loads((run / "results.json").read_text())
    assert all(v["bench"] == out[v["name"]] for v in merged["variants"])
    with pytest.raises(UsageError, match="nope"):
        merge_into_results(run, {"nope": {}})
    assert not list(run.glob(".*tmp"))  # no temporary file left (medlite's are .<name>.<pid>.medlite-tmp)

    from rich.console import Console

    console = Console(record=True, width=200)
    print_bench_table(out, console)
    text = console.export_text()
    assert "student_kd_int8_static" in text and "missing.onnx" in text and "speed-up" in text


def test_bad_input_raises_usage_error(tiny, tmp_path):
    with pytest.raises(UsageError, match="nope.onnx"):
        bench_file(tmp_path / "nope.onnx", **FAST)
    with pytest.raises(UsageError, match="input-shape"):
        bench_file(tiny["onnx"], input_shape="1,1,28", **FAST)
    with pytest.raises(UsageError, match="input-shape"):  # disagrees with the spec in the file
        bench_file(tiny["onnx"], input_shape="1,3,64,64", threads=[1], **FAST)
    with pytest.raises(UsageError, match="threads"):
        bench_file(tiny["onnx"], threads=[-1], **FAST)
    with pytest.raises(UsageError, match="nowhere"):
        bench_file(tiny["onnx"], images_dir=tmp_path / "nowhere", **FAST)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"garbage")
    with pytest.raises(UsageError, match="garbage.onnx"):
        bench_file(garbage, threads=[1], **FAST)
    with pytest.raises(UsageError, match="results.json"):
        from medlite.recipe import BenchConfig

        bench_run_dir(tmp_path, BenchConfig())


def test_cli_bench(tiny, tmp_path, capsys):
    args = dict(input_shape=None, images=None, warmup=0, iterations=5, time_budget=0.5, throughput_batch=2)
    out = tmp_path / "b.json"
    bench_command(tiny["onnx"], threads="1", json_out=out, **args)
    data = json.loads(out.read_text())
    check_measurement(data["threads_1"])
    assert "student_kd.onnx" in capsys.readouterr().out
    bad = {
        "nope": (tmp_path / "nope.onnx", "1"),
        "not a run directory": (tmp_path, "1"),
        "--threads": (tiny["onnx"], "1,x"),
    }
    for message, (target, threads) in bad.items():
        with pytest.raises(UsageError, match=message):
            bench_command(target, threads=threads, json_out=None, **args)
    (tmp_path / "model.txt").write_text("x")
    with pytest.raises(UsageError, match="model.txt"):
        bench_command(tmp_path / "model.txt", threads="1", json_out=None, **args)


def test_cli_module_is_light():
    code = "import sys, medlite.cli.bench; bad = {'torch', 'onnxruntime', 'numpy', 'pydantic', 'rich'} & set(sys.modules); print(sorted(bad))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def _speed_results(run: Path) -> None:
    lat = lambda p50: {"latency_ms": {"p50": p50, "p90": p50, "p99": p50, "mean": p50, "std": 0, "runs": 9}}  # noqa: E731
    results = {
        "dataset": {"num_classes": 2, "channels": 1, "image_size": 28},
        "timings": {"data": 1.0, "teacher": 30.0, "student_kd": 12.0, "total": 50.0},
        "variants": [
            {"name": "teacher", "parent": None, "train": {"epoch_seconds": [3, 3], "mean_epoch_s": 3.0}},
            {"name": "student_scratch", "parent": None, "train": {"epoch_seconds": [1, 1], "mean_epoch_s": 1.0}},
            {"name": "student_kd", "parent": "teacher", "train": {"epoch_seconds": [1.5], "mean_epoch_s": 1.5},
             "bench": {**lat(0.4), "reference": lat(2.0)}},
            {"name": "student_kd_int8_static", "parent": "student_kd", "bench": lat(0.2)},
        ],
    }
    (run / "results.json").write_text(json.dumps(results))


def test_pipeline_speed_script(tmp_path, capsys):
    script = runpy.run_path(str(ROOT / "benchmarks" / "pipeline_speed.py"))
    _speed_results(tmp_path)
    assert script["main"]([str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "1.50 x" in text and "10.00x" in text and "2.00x" in text and "50.0 s" in text
    data = json.loads((tmp_path / "results.json").read_text())
    del data["timings"]
    data["variants"] = [v for v in data["variants"] if v["name"] != "student_scratch"]
    (tmp_path / "results.json").write_text(json.dumps(data))
    assert script["main"]([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "student_scratch" in err and "timings" in err
    assert script["main"]([str(tmp_path / "nowhere")]) == 2
