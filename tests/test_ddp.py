"""DDP on CPU: 2 processes (gloo, forked) against 1 process on the same data.

Stated tolerance: after 3 epochs on BreastMNIST (96 training images, all 78 validation images),
the best validation AUC of the 2-process run is within 0.15 of the 1-process run (the global batch
is the same; BatchNorm statistics are per process, so the runs are not bit-identical).
"""

from __future__ import annotations

import json
import os

import lightning as L
import numpy as np
import pytest
import torch

from medlite.recipe import load_recipe


class SeenIndices(L.Callback):
    """Writes the training indices each rank saw, per epoch (works across forked and spawned
    processes: a module-level class, so a spawned rank unpickles it)."""

    def __init__(self, folder):
        self.folder = folder

    def on_train_epoch_start(self, trainer, module):
        self.seen = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.seen += batch["idx"].tolist()

    def on_train_epoch_end(self, trainer, module):
        path = self.folder / f"seen_e{trainer.current_epoch}_r{trainer.global_rank}.json"
        path.write_text(json.dumps(self.seen))


def _fit(dataset, recipe, tmp_path, name, trainer_overrides, say=None):
    from medlite.models import create
    from medlite.train import fit

    r = load_recipe("breastmnist", trainer_overrides)
    torch.manual_seed(0)
    model = create("medlite_cnn_tiny", dataset.num_classes, dataset.channels, dataset.image_size)
    folder = tmp_path / name
    folder.mkdir()
    result = fit(model, dataset, recipe.student, data_cfg=recipe.data, seed=0, log_dir=folder / "logs",
                 callbacks=(SeenIndices(folder),), device="cpu", progress=False, trainer_cfg=r.trainer, say=say)
    return model, result, folder


def _val_auc(model, dataset) -> float:
    from medlite.evaluate.metrics import auc, softmax

    val = dataset.splits["val"]
    x = (torch.from_numpy(val.images.transpose(0, 3, 1, 2)).float() / 255 - dataset.mean) / dataset.std
    with torch.no_grad():
        return auc(softmax(model.eval()(x).numpy().astype(np.float64)), val.labels)


def _ranks_split_every_epoch(folder, n, epochs):
    for epoch in range(epochs):
        ranks = [json.loads((folder / f"seen_e{epoch}_r{r}.json").read_text()) for r in (0, 1)]
        assert sorted(ranks[0] + ranks[1]) == list(range(n))  # the two ranks split the same data
        assert len(ranks[0]) == len(ranks[1]) == n // 2


def test_ddp_two_cpu_processes_match_one(tmp_path, data_root):
    from medlite.data import load_dataset
    from medlite.evaluate.metrics import auc, softmax

    recipe = load_recipe("breastmnist", ["data.limit=96", "student.arch=medlite_cnn_tiny", "student.epochs=3",
                                         "student.batch_size=16", "data.augment=none"])
    dataset = load_dataset(recipe.data, data_root, 0)
    n = len(dataset.splits["train"])
    single_model, single, f1 = _fit(dataset, recipe, tmp_path, "one", [])
    ddp_model, ddp, f2 = _fit(dataset, recipe, tmp_path, "ddp", ["trainer.devices=2", "trainer.strategy=ddp"])

    for epoch in range(3):
        one = json.loads((f1 / f"seen_e{epoch}_r0.json").read_text())
        ranks = [json.loads((f2 / f"seen_e{epoch}_r{r}.json").read_text()) for r in (0, 1)]
        assert sorted(one) == list(range(n))  # every image once per epoch
        assert sorted(ranks[0] + ranks[1]) == list(range(n))  # the two ranks split the same data
        assert len(ranks[0]) == len(ranks[1]) == n // 2
    assert len(ddp.history) == 3 and ddp.best_epoch >= 0
    # metrics from the whole validation split: rescoring the returned (best) model gives the same AUC
    val = dataset.splits["val"]
    x = (torch.from_numpy(val.images.transpose(0, 3, 1, 2)).float() / 255 - dataset.mean) / dataset.std
    with torch.no_grad():
        probs = softmax(ddp_model.eval()(x).numpy().astype(np.float64))
    assert auc(probs, val.labels) == pytest.approx(ddp.best_val_auc, abs=1e-6)
    print(f"DDP best val AUC {ddp.best_val_auc:.4f} (epoch {ddp.best_epoch}), 1 process {single.best_val_auc:.4f} (epoch {single.best_epoch})")
    assert abs(ddp.best_val_auc - single.best_val_auc) <= 0.15


def test_ddp_placement_spawns_on_gpus_and_refuses_nodes_and_missing_gpus(monkeypatch):
    import sys

    from medlite.errors import UsageError
    from medlite.train.device import MULTI_NODE, Placement, placement

    for module in ("jax", "ray"):  # whatever earlier tests imported: a clean process first
        monkeypatch.delitem(sys.modules, module, raising=False)
    r = load_recipe("breastmnist", ["trainer.devices=2", "trainer.strategy=ddp"])
    assert placement(r.trainer, "cpu", "none") == Placement("ddp_fork", 2, 1, 2)
    # JAX's threads (the LiteRT converter, imported by a run that exports .tflite) make a fork unsafe.
    monkeypatch.setitem(sys.modules, "jax", sys)
    assert placement(r.trainer, "cpu", "none") == Placement("ddp_spawn", 2, 1, 2)
    monkeypatch.delitem(sys.modules, "jax")
    # A GPU parent may hold CUDA already (an earlier stage): the ranks are spawned, not forked.
    assert placement(r.trainer, "cuda", "none", gpus=2) == Placement("ddp_spawn", 2, 1, 2)
    spawn = load_recipe("breastmnist", ["trainer.devices=2", "trainer.strategy=ddp_spawn"]).trainer
    assert placement(spawn, "cpu", "none") == Placement("ddp_spawn", 2, 1, 2)
    with pytest.raises(UsageError, match="2 GPUs requested but this machine has 1"):
        placement(r.trainer, "cuda", "none", gpus=1)
    nodes = load_recipe("breastmnist", ["trainer.num_nodes=2", "trainer.strategy=ddp"]).trainer
    for device in ("cpu", "cuda"):
        with pytest.raises(UsageError, match="num_nodes") as err:
            placement(nodes, device, "none", gpus=8)
        assert str(err.value) == MULTI_NODE and "--executor ray" in MULTI_NODE
    with pytest.raises(UsageError, match="strategy: ddp"):
        placement(load_recipe("breastmnist", ["trainer.devices=2"]).trainer, "cpu", "none")


def test_ddp_spawn_on_two_cpu_processes_trains_and_hands_back_the_best_model(tmp_path, data_root):
    """The GPU path (spawned ranks: the trainer pickled into fresh interpreters) on CPU with gloo."""
    from medlite.data import load_dataset

    recipe = load_recipe("breastmnist", ["data.limit=64", "student.arch=medlite_cnn_tiny", "student.epochs=2",
                                         "student.batch_size=16", "data.augment=none"])
    dataset = load_dataset(recipe.data, data_root, 0)
    said = []
    model, result, folder = _fit(dataset, recipe, tmp_path, "spawn", ["trainer.devices=2", "trainer.strategy=ddp_spawn"],
                                 say=said.append)
    _ranks_split_every_epoch(folder, len(dataset.splits["train"]), 2)
    assert len(result.history) == 2 and result.best_epoch >= 0
    assert _val_auc(model, dataset) == pytest.approx(result.best_val_auc, abs=1e-6)  # the best epoch came back
    assert [line.split(" loss")[0] for line in said] == ["train epoch 1/2", "train epoch 2/2"]  # said here, once


def test_compression_fine_tunes_run_under_ddp(tmp_path, data_root, monkeypatch):
    """QAT and pruning fine-tunes (score_start: the starting weights are a candidate) under ddp_fork, also
    when a threaded library would make medlite spawn (a fake-quant model cannot be pickled: forked, said)."""
    import sys

    monkeypatch.setitem(sys.modules, "jax", sys.modules.get("jax", sys))  # as after a LiteRT export
    from medlite.compress.prune import GradualMagnitudePruning
    from medlite.compress.qat import prepare_qat
    from medlite.data import load_dataset
    from medlite.models import create
    from medlite.train import fit

    recipe = load_recipe("breastmnist", ["data.limit=64", "student.epochs=2", "student.batch_size=16",
                                         "data.augment=none"])
    dataset = load_dataset(recipe.data, data_root, 0)
    ddp = load_recipe("breastmnist", ["trainer.devices=2", "trainer.strategy=ddp"]).trainer
    torch.manual_seed(0)
    model = create("medlite_cnn_tiny", dataset.num_classes, dataset.channels, dataset.image_size)
    fit(model, dataset, recipe.student, data_cfg=recipe.data, seed=0, log_dir=tmp_path / "base", device="cpu",
        progress=False)  # the parent: trained, in one process
    train = dataset.splits["train"]
    calib = (torch.from_numpy(train.images[:16].transpose(0, 3, 1, 2)).float() / 255 - dataset.mean) / dataset.std
    qat = prepare_qat(model, calib)
    start = _val_auc(qat, dataset)
    # A learning rate that wrecks the model in one epoch: only the scored start can win.
    ruin = recipe.student.model_copy(update={"epochs": 1, "lr": 5.0})
    result = fit(qat, dataset, ruin, data_cfg=recipe.data, seed=0, log_dir=tmp_path / "qat", device="cpu",
                 progress=False, trainer_cfg=ddp, score_start=True)
    assert len(result.history) == 1 and result.history[0]["val_auc"] < result.best_val_auc
    assert result.processes["started_by"] == "ddp_fork"
    assert any("cannot be pickled to spawned ranks" in w for w in result.warnings), result.warnings
    assert result.best_epoch == -1  # the scored start beat the epoch: kept
    assert _val_auc(qat, dataset) == pytest.approx(start, abs=1e-9)  # ... and these are its weights
    recipe = load_recipe("breastmnist", ["data.limit=64", "student.epochs=1", "student.batch_size=16",
                                         "data.augment=none"])

    pruned = create("medlite_cnn_tiny", dataset.num_classes, dataset.channels, dataset.image_size)
    schedule = GradualMagnitudePruning(0.0, 0.5, "global")
    fit(pruned, dataset, recipe.student, data_cfg=recipe.data, seed=0, log_dir=tmp_path / "prune", device="cpu",
        progress=False, trainer_cfg=ddp, callbacks=(schedule,), select_best=False, score_start=True)
    weights = [m.weight for m in pruned.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(0.5, abs=0.02)  # rank 0's final, permanently pruned weights came back
    assert not any(name.endswith("_orig") for name, _ in pruned.named_parameters())


# -- several nodes: torchrun on every node, rank 0 leads (medlite.train.launched) ------------------------

TINY_RUN = ["data.limit=48", "teacher.arch=medlite_cnn_tiny", "student.arch=medlite_dsconv_tiny", "teacher.epochs=2",
            "student.epochs=2", "evaluate.bootstrap=20", "bench.enabled=false", "explain.enabled=false",
            "compress.methods=[int8_static]"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(data_root) -> dict:
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "src"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDLITE_FAULT", "RANK", "WORLD_SIZE", "LOCAL_", "GROUP_RANK", "MASTER_", "TORCHELASTIC", "NODE_RANK"))}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")])), MEDLITE_DATA_ROOT=str(data_root),
               OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")  # gloo's sockets on loopback only
    return env


def _two_nodes(out, data_root, overrides=()):
    """`medlite run` on two 'nodes' of one process each, with the environment torchrun gives its workers
    (`torchrun --nnodes 2 --nproc-per-node 1 --node-rank R --master-addr 127.0.0.1`). The workers are
    started here rather than by torchrun's agent, whose own store listens on every interface; medlite's
    store listens on MASTER_ADDR only, and gloo's sockets on loopback (GLOO_SOCKET_IFNAME)."""
    import subprocess
    import sys

    port, env = _free_port(), _env(data_root)
    sets = [arg for item in (*TINY_RUN, *overrides) for arg in ("--set", item)]
    nodes = []
    for rank in (0, 1):
        worker = {"RANK": str(rank), "GROUP_RANK": str(rank), "LOCAL_RANK": "0", "WORLD_SIZE": "2",
                  "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                  "TORCHELASTIC_RUN_ID": "medlite-test"}
        nodes.append(subprocess.Popen([sys.executable, "-m", "medlite.cli", "run", "breastmnist", "--out", str(out), *sets],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**env, **worker}))
    return [(node.wait(timeout=300), *node.communicate()) for node in nodes]


def test_two_torchrun_nodes_train_like_two_forked_processes(tmp_path, data_root):
    """Two torchrun nodes give the numbers two forked ranks on one machine give (same world, same shards,
    rank 0's random streams): every training stage ran on both, rank 0 alone wrote the run."""
    import subprocess
    import sys

    (code0, out0, err0), (code1, out1, err1) = _two_nodes(tmp_path / "nodes", data_root)
    assert code0 == 0, out0 + err0 + "\n--- node 1:\n" + out1 + err1
    assert code1 == 0 and out1 == "" and "Traceback" not in err1, out1 + err1
    assert "ddp: 2 processes on 2 node(s), started by torchrun" in out0
    sets = [arg for item in (*TINY_RUN, "trainer.devices=2", "trainer.strategy=ddp") for arg in ("--set", item)]
    forked = subprocess.run([sys.executable, "-m", "medlite.cli", "run", "breastmnist", "--out", str(tmp_path / "fork"),
                             *sets], capture_output=True, text=True, env=_env(data_root), timeout=300)
    assert forked.returncode == 0, forked.stdout + forked.stderr
    nodes = json.loads((tmp_path / "nodes" / "results.json").read_text())
    fork = json.loads((tmp_path / "fork" / "results.json").read_text())
    assert [v["name"] for v in nodes["variants"]] == [v["name"] for v in fork["variants"]]
    trained = 0
    for a, b in zip(nodes["variants"], fork["variants"]):
        assert a["metrics"]["auc"] == b["metrics"]["auc"], a["name"]  # measured on the exported files
        if a.get("train", {}).get("history"):
            trained += 1
            assert [h["val_auc"] for h in a["train"]["history"]] == [h["val_auc"] for h in b["train"]["history"]]
            assert a["train"]["processes"] == {"processes": 2, "nodes": 2, "started_by": "torchrun",
                                               "global_batch": 64, "per_process_batch": 32}
            assert b["train"]["processes"]["started_by"] == "ddp_fork"
    assert trained == 3  # teacher, scratch student, KD student


def test_a_failing_leader_releases_the_other_nodes(tmp_path, data_root):
    """Rank 0 fails inside the pipeline (no such data file): it exits 2 in one line, the follower stops
    waiting and exits by itself, and no run folder is left behind."""
    results = _two_nodes(tmp_path / "run", tmp_path / "no-data")
    (code0, out0, err0), (code1, out1, err1) = results
    assert code0 != 0 and "medlite: error:" in err0 and "breastmnist.npz" in err0, out0 + err0
    assert code1 == 0 and out1 == "", out1 + err1
    assert not (tmp_path / "run").exists()


def test_the_launchers_world_is_read_from_its_environment_and_checked_against_the_recipe():
    from medlite.errors import UsageError
    from medlite.train.launched import World, check_recipe, launched_world

    torchrun = {"TORCHELASTIC_RUN_ID": "x", "RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2",
                "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
    world = launched_world(torchrun)
    assert world == World(3, 1, 4, 2, "torchrun", "10.0.0.1", 29500) and world.nodes == 2
    assert launched_world({**torchrun, "WORLD_SIZE": "1"}) is None  # one rank: an ordinary run
    assert launched_world({}) is None
    with pytest.raises(UsageError, match=r"WORLD_SIZE='four'"):
        launched_world({**torchrun, "WORLD_SIZE": "four"})
    with pytest.raises(UsageError, match="MASTER_PORT is not set"):
        launched_world({k: v for k, v in torchrun.items() if k != "MASTER_PORT"})
    assert launched_world({"SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_JOB_NAME": "bash"}) is None  # salloc's shell

    check_recipe(world, 1, 1, "auto")  # the launcher's world
    check_recipe(world, 2, 2, "ddp")  # the same, written out
    with pytest.raises(UsageError, match=r"trainer.devices: 4 x trainer.num_nodes: 1 does not match the launcher"):
        check_recipe(world, 4, 1, "ddp")
    with pytest.raises(UsageError, match="ddp_spawn"):
        check_recipe(world, 1, 1, "ddp_spawn")


def test_a_slurm_job_step_is_a_launched_world(monkeypatch):
    """`srun medlite run ...` with 2 tasks per node on 2 nodes: Lightning's SLURMEnvironment names the
    main node (the first of SLURM_NODELIST) and derives the port from the job id (15000 + its last four digits)."""
    from medlite.train.launched import launched_world

    slurm = {"SLURM_NTASKS": "4", "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NNODES": "2",
             "SLURM_NTASKS_PER_NODE": "2(x2)", "SLURM_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "51234",
             "SLURM_JOB_NAME": "medlite"}
    for key in [k for k in os.environ if k.startswith(("SLURM_", "MASTER_"))]:
        monkeypatch.delenv(key)
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    world = launched_world(dict(os.environ))
    assert (world.rank, world.local_rank, world.size, world.local_size, world.nodes) == (3, 1, 4, 2, 2)
    assert (world.launcher, world.main_address, world.main_port) == ("slurm", "gpu07", 15000 + 1234)
