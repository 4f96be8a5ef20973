"""Distribution for real on one CPU machine: `mirrored` over two logical CPU devices, and
`multiworker` with two worker processes talking over 127.0.0.1, each against the single-device
run at the same global batch."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

TIMEOUT = 300  # seconds for any one process: a hung collective fails the test, it does not hang it
# head then finetune of lenet5's top block; no dropout, no augmentation, so nothing random differs
# between replicas. Batches of 6 divide the 18 training and 6 validation images: Keras averages the
# loss on each replica, so a last, smaller batch, split unevenly, would weigh differently.
TRAINING = ["--base", "lenet5", "--weights", "none", "--image-size", "32", "--batch-size", "6", "--seed", "1",
            "--dropout", "0", "--epochs-head", "2", "--epochs-finetune", "1", "--lr-head", "0.01",
            "--lr-finetune", "0.001", "--cache-images", "none"]


def environment(tmp_path: Path, **extra) -> dict:
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
           "TLKIT_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    env.pop("TF_CONFIG", None)
    return {**env, **extra}


# A tlkit process that kills itself (SIGKILL, as a crash would) right after the resume state of
# stage 2, epoch 1 is written, with `devices` logical CPU devices (set before TensorFlow starts).
KILLABLE = """
import os, signal, sys
import tensorflow as tf
if {devices} > 1:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * {devices})
import tlkit.engine.resume as run
from tlkit.cli import main

save_state = run.save_state

def save_then_stop(ctx, stage, epoch, *args, **kwargs):
    name = save_state(ctx, stage, epoch, *args, **kwargs)
    if {kill} and (stage, epoch) == (2, 1):
        os.kill(os.getpid(), signal.SIGKILL)
    return name

run.save_state = save_then_stop
main(sys.argv[1:])
"""
# TRAINING with a second stage of 2 epochs to stop in, and augmented: a resumed run must replay the
# data order and augmentation of the epochs done. Augmentation is drawn in the input pipeline,
# before a global batch is split, so the replicas still train on the single device's images.
RESUMABLE = [*TRAINING[:TRAINING.index("--epochs-finetune")], "--epochs-finetune", "2",
             *TRAINING[TRAINING.index("--epochs-finetune") + 2:], "--augment"]


def killable(*args: str, devices: int = 1, kill: bool = False) -> list[str]:
    return [sys.executable, "-c", KILLABLE.format(devices=devices, kill=kill), *args]


def run_results(run: Path) -> tuple[np.ndarray, list[np.ndarray]]:
    """Every stage's final metrics, and every epoch's loss, val_loss and accuracy of each stage."""
    metrics = json.loads((run / "metrics.json").read_text())["stages"]
    history = json.loads((run / "history.json").read_text())
    return (np.array([(s["val_loss"], s["val_accuracy"]) for s in metrics], float),
            [np.array([h[k] for k in ("loss", "val_loss", "accuracy")], float) for h in history])


def assert_same_results(run: Path, expected: Path) -> None:
    (metrics, history), (expected_metrics, expected_history) = run_results(run), run_results(expected)
    np.testing.assert_allclose(metrics, expected_metrics, rtol=0, atol=1e-5)
    assert len(history) == len(expected_history)
    for stage, want in zip(history, expected_history):
        np.testing.assert_allclose(stage, want, rtol=0, atol=1e-5)


@pytest.mark.multiprocess
def test_mirrored_over_two_devices_gives_the_single_device_weights(tiny_images, tmp_path):
    # logical devices must be configured before TensorFlow starts its runtime: a fresh process
    script = textwrap.dedent(f"""
        import json, logging, sys
        import numpy as np
        import tensorflow as tf
        logging.basicConfig(level=logging.INFO)
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from tlkit.engine.strategy import distribution_strategy
        from tlkit.jobs import finetune
        stages = {{"head": {{"epochs": 2, "learning_rate": 0.01}},
                   "finetune": {{"epochs": 1, "learning_rate": 0.001, "unfreeze": 1}}}}
        for mode in ("none", "mirrored"):
            ctx = finetune("lenet5", {str(tiny_images)!r}, out={str(tmp_path)!r} + "/" + mode, weights="none",
                           image_size=32, batch_size=6, seed=1, dropout=0.0, cache_images="memory", distribute=mode,
                           stages=stages, verbose=0)
            np.savez({str(tmp_path)!r} + "/" + mode + ".npz", *[v.numpy() for v in ctx.model.weights])
            print(json.dumps({{"mode": mode, "replicas": distribution_strategy(mode).num_replicas_in_sync}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], env=environment(tmp_path), capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    # no augmentation, images in memory: both stages of both runs train on the frozen layers' outputs, under the
    # strategy too
    assert done.stderr.count(") run once: ") == 4, done.stderr[-3000:]
    replicas = {r["mode"]: r["replicas"] for r in map(json.loads, done.stdout.splitlines())}
    assert replicas == {"none": 1, "mirrored": 2}
    single, mirrored = (np.load(tmp_path / f"{mode}.npz") for mode in ("none", "mirrored"))
    assert len(single.files) == len(mirrored.files) > 0
    for name in single.files:
        np.testing.assert_allclose(mirrored[name], single[name], rtol=0, atol=1e-5, err_msg=name)
    metrics = [json.loads((tmp_path / mode / "metrics.json").read_text()) for mode in ("none", "mirrored")]
    for a, b in zip(metrics[0]["stages"], metrics[1]["stages"]):
        assert abs(a["val_loss"] - b["val_loss"]) < 1e-5 and a["val_accuracy"] == b["val_accuracy"]


@pytest.mark.multiprocess
def test_mirrored_run_killed_in_stage_two_resumes_to_the_same_metrics(tiny_images, tmp_path):
    env = environment(tmp_path)
    mirrored = ["--data", str(tiny_images), "--distribute", "mirrored", *RESUMABLE]
    whole = subprocess.run(killable("finetune", *mirrored, "--out", str(tmp_path / "whole"), devices=2), env=env,
                           capture_output=True, text=True, timeout=TIMEOUT)
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert "distribute mirrored: 2 replicas" in whole.stdout

    out = tmp_path / "killed"
    killed = subprocess.run(killable("finetune", *mirrored, "--out", str(out), devices=2, kill=True), env=env,
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = subprocess.run(killable("finetune", "--resume", str(out), devices=2), env=env, capture_output=True,
                             text=True, timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "distribute mirrored: 2 replicas" in resumed.stdout
    assert "stage 2 resumed after epoch 1 of 2" in resumed.stdout and "stage 1/2" not in resumed.stdout
    assert_same_results(out, tmp_path / "whole")
    assert not (out / "checkpoints" / "resume").exists()


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tlkit(*args: str) -> list[str]:
    return [sys.executable, "-m", "tlkit.cli", "finetune", *args]


def run_workers(command, tmp_path: Path, n: int = 2, **extra) -> list[tuple[int, str]]:
    """Run `command(index)` as worker `index` of an `n`-worker cluster on 127.0.0.1, each with its
    own TMPDIR (tmp_path/tmpINDEX) and the `extra` environment; each worker's exit status and
    output, once all have ended."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(n)]}
    workers = []
    try:
        for index in range(n):
            scratch = tmp_path / f"tmp{index}"
            scratch.mkdir(exist_ok=True)
            config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
            workers.append(subprocess.Popen(command(index), env=environment(tmp_path, TF_CONFIG=config,
                                                                            TMPDIR=str(scratch), **extra),
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        said = [w.communicate(timeout=TIMEOUT) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait(timeout=30)
    return [(w.returncode, out + err) for w, (out, err) in zip(workers, said)]


def listing(root: Path) -> list[str]:
    # TensorBoard names its event files by host, process and time: count them, not their names
    return sorted(str(p.relative_to(root).parent / "events") if "tfevents" in p.name else str(p.relative_to(root))
                  for p in root.rglob("*") if p.is_file())


def worker_copies(tmp_path: Path) -> list[Path]:
    """The copies of runs that non-chief workers keep in the tlkit cache of `environment`."""
    folder = tmp_path / "cache" / "workers"
    return sorted(folder.iterdir()) if folder.is_dir() else []


@pytest.fixture(scope="module")
def single_worker_run(tiny_images, tmp_path_factory) -> Path:
    """The run the multi-worker runs must match: RESUMABLE on one device."""
    out = tmp_path_factory.mktemp("single") / "run"
    done = subprocess.run(tlkit("--data", str(tiny_images), "--out", str(out), "--distribute", "none", *RESUMABLE),
                          env=environment(out.parent), capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.multiprocess
def test_multiworker_on_two_processes_gives_the_single_worker_metrics_and_one_run_directory(
        single_worker_run, tiny_images, tmp_path):
    out = tmp_path / "multi"
    results = run_workers(lambda _: tlkit("--data", str(tiny_images), "--out", str(out), "--distribute", "multiworker",
                                          *RESUMABLE), tmp_path)
    for code, said in results:
        assert code == 0, said[-3000:]

    expected = json.loads((single_worker_run / "metrics.json").read_text())
    got = json.loads((out / "metrics.json").read_text())
    assert len(got["stages"]) == 2
    for a, b in zip(expected["stages"], got["stages"]):
        assert abs(a["val_loss"] - b["val_loss"]) < 1e-5, (a, b)
        assert a["val_accuracy"] == b["val_accuracy"]
    assert expected["train_images"] == got["train_images"] and expected["val_images"] == got["val_images"]

    # complete: what the single-worker run writes, no more (no worker's second event file, no
    # temporary file left over), no less
    assert listing(out) == listing(single_worker_run)
    assert "model.keras" in listing(out) and "checkpoints/best.keras" in listing(out)
    # the other worker wrote only its own copy of the run, deleted at the end, and no temporary file
    assert worker_copies(tmp_path) == [] and not any((tmp_path / "tmp1").iterdir())
    assert "not the chief" in results[1][1] and "not the chief" not in results[0][1]


@pytest.mark.multiprocess
def test_multiworker_run_killed_in_stage_two_resumes_on_both_workers_to_the_single_worker_metrics(
        single_worker_run, tiny_images, tmp_path):
    out = tmp_path / "multi"
    # each worker kills itself once it has saved stage 2, epoch 1: a crash of both machines
    killed = run_workers(lambda _: killable("finetune", "--data", str(tiny_images), "--out", str(out), "--distribute",
                                            "multiworker", *RESUMABLE, kill=True), tmp_path)
    assert [code for code, _ in killed] == [-signal.SIGKILL] * 2, [said[-3000:] for _, said in killed]
    # the other worker's state is in its own copy of the run, under its tlkit cache, not in the run directory
    [copy] = worker_copies(tmp_path)
    state = json.loads((copy / "checkpoints" / "resume" / "state.json").read_text())
    assert (state["stage"], state["epoch"]) == (2, 1)
    assert not (out / "model.keras").exists()

    # a crash between the workers' saves leaves their states an epoch apart: every worker refuses, in one line
    saved = (copy / "checkpoints" / "resume" / "state.json").read_text()
    (copy / "checkpoints" / "resume" / "state.json").write_text(json.dumps({**state, "epoch": 2}))
    refused = run_workers(lambda _: tlkit("--resume", str(out)), tmp_path)
    for code, said in refused:
        assert code != 0 and said.strip().splitlines()[-1].startswith(
            f"error: the workers saved {out} at different points (stage 2 epoch 1, stage 2 epoch 2; "), said[-3000:]
    (copy / "checkpoints" / "resume" / "state.json").write_text(saved)

    resumed = run_workers(lambda _: tlkit("--resume", str(out)), tmp_path)
    for code, said in resumed:
        assert code == 0, said[-3000:]
        assert "stage 2 resumed after epoch 1 of 2" in said and "stage 1/2" not in said
    assert_same_results(out, single_worker_run)
    # complete, written once: the single-worker run's files (the resumed stage has a second
    # TensorBoard event file, as a resumed run on one machine has), and no worker's copy left
    assert set(listing(out)) == set(listing(single_worker_run))
    assert worker_copies(tmp_path) == [] and not (out / "checkpoints" / "resume").exists()


def test_multiworker_without_tf_config_is_one_line(tiny_images, tmp_path):
    done = subprocess.run(tlkit("--data", str(tiny_images), "--out", str(tmp_path / "run"), "--distribute",
                                "multiworker", *TRAINING), env=environment(tmp_path), capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith("error: --distribute multiworker needs TF_CONFIG")
    assert not (tmp_path / "run").exists()


def test_a_replica_left_an_empty_batch_on_cpus_is_refused_in_one_line(monkeypatch):
    from tlkit.engine.strategy import check_replica_batches
    from tlkit.errors import TlkitError

    two = SimpleNamespace(num_replicas_in_sync=2)
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    with pytest.raises(TlkitError, match=r"^the training images' last batch has 1 image\(s\) for 2 replicas, .* "
                                         "TF_ENABLE_ONEDNN_OPTS=0"):
        check_replica_batches(two, 8, {"training": 17, "validation": 6})
    check_replica_batches(two, 8, {"training": 18, "validation": 6})  # the last 2 images: one each
    check_replica_batches(SimpleNamespace(num_replicas_in_sync=1), 8, {"training": 17})
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    check_replica_batches(two, 8, {"training": 17, "validation": 6})


@pytest.mark.integration
def test_jit_compiles_the_train_step_and_trains_the_same(tiny_images, tmp_path):
    from tlkit.jobs import finetune

    runs = {}
    for jit in (False, True):
        runs[jit] = finetune("lenet5", str(tiny_images), out=tmp_path / str(jit), weights="none", image_size=32,
                             batch_size=6, seed=1, dropout=0.0, jit=jit, stages={"head": {"epochs": 2}},
                             recipe="head_only", verbose=0)
    assert runs[True].model.jit_compile is True and runs[False].model.jit_compile is False
    losses = [runs[jit].results[-1].history["loss"] for jit in (False, True)]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)  # XLA fuses ops: float rounding differs
    assert losses[0][1] < losses[0][0]


@pytest.mark.multiprocess
def test_multiworker_from_a_pack_gives_each_worker_its_own_shard_files(tiny_images, tmp_path):
    from tlkit.data import shards

    packed = tmp_path / "packed"
    index = shards.pack(tiny_images, str(packed), shard_bytes=15000)
    out = tmp_path / "multi"
    results = run_workers(lambda _: tlkit("--data", str(packed), "--out", str(out), "--distribute", "multiworker",
                                          *TRAINING), tmp_path)
    for code, said in results:
        assert code == 0, said[-3000:]
    files = [shard["file"] for shard in index["shards"]]
    for worker, (_, said) in enumerate(results):
        lines = [line for line in said.splitlines() if f"input pipeline {worker} of 2:" in line]
        # once a stage, each naming its own files: every other shard of the pack, from its own index
        assert len(lines) == 2 and all(line.endswith(f"({', '.join(files[worker::2])})") for line in lines), said[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["stages"]) == 2 and metrics["train_images"] == 18
