"""Faults: kill -9 at many points, a second live run, a full disk, an --out that cannot be written.

The fault-injection test runs a tiny recipe (real BreastMNIST, 48 images per split, 2-epoch
teacher and students, int8_static of the KD student, no benchmark) with `medlite run` in a
subprocess, and kills it with SIGKILL (`$MEDLITE_FAULT_AT`, see `runstate.fault_point`) at these
points, in order, each time rerunning the same directory until the next point:

 1. `rundir:locked`                           the run directory is marked and locked, nothing else done
 2. `write:*/samples/*`                       half-way through writing the first sample PNG (data stage)
 3. `epoch:teacher:1`                         in the middle of training the teacher (after epoch 1 of 2)
 4. `write:*/checkpoints/teacher.safetensors` half-way through writing the teacher checkpoint
 5. `store:teacher`                           teacher checkpoint in place, its stage record not yet written
 6. `epoch:student_scratch:1`                 in the middle of training the scratch student
 7. `store:student_kd`                        distilled student saved, record not yet written
 8. `write:*/models/student_kd.onnx`          half-way through writing the exported ONNX file
 9. `store:student_kd.export`                 export done, record not yet written
10. `write:*/models/student_kd_int8_static.onnx`  half-way through writing the quantized model
11. `store:student_kd_int8_static`            quantized model in place, record not yet written
12. `store:teacher.evaluate`                  evaluation measured, record not yet written
13. `write:*/results.json`                    half-way through writing results.json
14. `write:*/report.html`                     half-way through writing the report

then a last rerun completes. Its results.json metrics equal those of an uninterrupted run of the
same recipe in another directory (same seed, same data: training on CPU is deterministic here).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from medlite.errors import UsageError
from medlite.runstate import LOCK, MARKER, RunDir, write_atomic

SRC = Path(__file__).resolve().parents[1] / "src"

RECIPE = textwrap.dedent(
    """\
    name: faults
    seed: 0
    device: cpu
    data: {limit: 48}
    teacher: {arch: medlite_cnn_tiny, epochs: 2}
    student: {arch: medlite_dsconv_tiny, epochs: 2}
    evaluate: {bootstrap: 20}
    compress: {methods: [int8_static], targets: [student_kd], int8_static: {calibration_images: 16}}
    bench: {enabled: false}
    explain: {enabled: false}
    """
)

# One kill point per mechanism and per kind of stage (the lock, a training epoch, an atomic write of
# each kind of artifact, the stage store after training, export, compression and evaluation): each
# costs a whole medlite process, so points that test the same mechanism again are left out.
KILL_POINTS = [
    "rundir:locked",
    "epoch:teacher:1",
    "write:*/checkpoints/teacher.safetensors",
    "store:student_kd",
    "write:*/models/student_kd.onnx",
    "store:student_kd_int8_static",
    "store:teacher.evaluate",
    "write:*/results.json",
]
METRICS = ("accuracy", "balanced_accuracy", "auc", "f1_macro", "confusion_matrix")


def medlite(*args: str, fault: str | None = None, data_root: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MEDLITE_FAULT_AT"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    if fault:
        env["MEDLITE_FAULT_AT"] = fault
    if data_root is not None:
        env["MEDLITE_DATA_ROOT"] = str(data_root)
    return subprocess.run([sys.executable, "-m", "medlite.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".medlite-tmp") or p.name.startswith(".medlite-")
            and p.is_dir()]


def metrics_of(results: dict) -> dict:
    return {v["name"]: {k: v["metrics"][k] for k in METRICS} for v in results["variants"]}


@pytest.mark.slow
def test_killed_anywhere_then_rerun_gives_the_uninterrupted_results(tmp_path, data_root):
    recipe = tmp_path / "faults.yaml"
    recipe.write_text(RECIPE)
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    done = medlite("run", str(recipe), "--out", str(reference_dir), data_root=data_root)
    assert done.returncode == 0, done.stderr
    reference = json.loads((reference_dir / "results.json").read_text())

    pids = set()
    for point in KILL_POINTS:
        killed = medlite("run", str(recipe), "--out", str(killed_dir), fault=point, data_root=data_root)
        assert killed.returncode == -signal.SIGKILL, f"{point}: not reached (rc {killed.returncode}): {killed.stderr[-2000:]}"
        assert (killed_dir / MARKER).is_file()
        pids.add(json.loads((killed_dir / LOCK).read_text())["pid"])  # each rerun took over the dead run's lock
        if point.startswith("write:"):
            # Killed mid-write: the half-written file is under its temporary name only, never the final one.
            partial = [p for p in temporaries(killed_dir) if p.is_file()]
            assert len(partial) == 1, (point, partial)
            final = partial[0].parent / partial[0].name[1:].rsplit(".", 2)[0]
            assert not final.exists(), point
    assert len(pids) == len(KILL_POINTS)

    final = medlite("run", str(recipe), "--out", str(killed_dir), data_root=data_root)
    assert final.returncode == 0, final.stderr
    results = json.loads((killed_dir / "results.json").read_text())
    assert metrics_of(results) == metrics_of(reference)
    assert [v["name"] for v in results["variants"]] == ["teacher", "student_scratch", "student_kd", "student_kd_int8_static"]
    assert not temporaries(killed_dir)
    import onnx

    for v in results["variants"]:
        onnx.checker.check_model(str(killed_dir / v["file"]))


def test_second_live_run_is_refused_and_names_the_holder(tmp_path, data_root):
    out = tmp_path / "run"
    holder = RunDir(out)
    holder.open()
    try:
        second = medlite("run", "--out", str(out), "--set", "data.limit=16", data_root=data_root)
        (out / "results.json").write_text('{"variants": []}')
        from medlite.cli.bench import bench

        with pytest.raises(UsageError, match=f"in use by another medlite run \\(pid {os.getpid()}"):
            bench(out, input_shape=None, images=None, threads="1", warmup=None, iterations=None, time_budget=None,
                  throughput_batch=None, json_out=None)
        assert not (out / "bench.json").exists()
    finally:
        holder.close()
    assert second.returncode == 2, second.stderr
    line = second.stderr.strip()
    assert str(out) in line and f"pid {os.getpid()}" in line and "in use by another medlite run" in line
    assert len(line.splitlines()) == 1
    # Released: the next holder gets it.
    with RunDir(out) as again:
        again.open()


def test_lock_of_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / "run"
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from medlite.runstate import RunDir;"
         " RunDir(Path(sys.argv[1])).open(); print('locked', flush=True); time.sleep(600)", str(out)],
        stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))},
    )
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(UsageError, match=f"pid {child.pid}"):
            RunDir(out).open()
    finally:
        child.kill()
        child.wait()
    run = RunDir(out)
    run.open()  # the kernel dropped the dead process's lock
    assert json.loads((out / LOCK).read_text())["pid"] == os.getpid()
    run.close()


def test_full_disk_mid_artifact_leaves_nothing_half_written(tmp_path, data_root, monkeypatch):
    """ENOSPC while the teacher checkpoint is written: exit-2 error naming it, no partial file, lock released."""
    import safetensors.torch

    from medlite.pipeline import run_pipeline
    from medlite.recipe import load_recipe

    def full_disk(state, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"\0" * 1000)  # some bytes got out before the disk filled
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    recipe = load_recipe("breastmnist", ["data.limit=16", "teacher.arch=medlite_cnn_tiny", "teacher.epochs=1",
                                         "student.arch=medlite_dsconv_tiny", "student.epochs=1",
                                         "compress.methods=[]", "bench.enabled=false", "device=cpu"])
    out = tmp_path / "run"
    with pytest.raises(UsageError) as info:
        run_pipeline(recipe, out, data_root, say=lambda line: None, progress=False)
    message = str(info.value)
    assert "teacher.safetensors" in message and "No space left on device" in message
    assert not (out / "checkpoints" / "teacher.safetensors").exists()
    assert not temporaries(out)
    with RunDir(out) as again:
        again.open()  # the failed run let go of its lock


def test_write_atomic_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    target.write_text("old\n")

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(UsageError, match=r"results.json: cannot write: No space left on device \(disk full\?\)"):
        write_atomic(target, "new\n")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_out_that_is_a_file_or_under_a_file_exits_2(tmp_path, data_root):
    plain = tmp_path / "notes.txt"
    plain.write_text("mine\n")
    for out in (plain, plain / "run"):
        result = medlite("run", "--out", str(out), "--set", "data.limit=16", data_root=data_root)
        assert result.returncode == 2, result.stderr
        assert str(out) in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert plain.read_text() == "mine\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through a read-only folder's permissions")
def test_read_only_out_exits_2(tmp_path, data_root):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        result = medlite("run", "--out", str(parent / "run"), "--set", "data.limit=16", data_root=data_root)
    finally:
        parent.chmod(0o700)
    assert result.returncode == 2, result.stderr
    assert str(parent / "run") in result.stderr and "Permission denied" in result.stderr
