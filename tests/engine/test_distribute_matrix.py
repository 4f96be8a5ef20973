"""Every stage kind under `mirrored` (two logical CPU devices) and `multiworker` (two processes
on 127.0.0.1), with the frozen layers run once and without, against the single-device run of the
same command: the same metrics. Slow (a process, or two, per cell): the `multiprocess` tier."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_distribute import TIMEOUT, environment, run_workers

pytestmark = pytest.mark.multiprocess

# No dropout and no augmentation: nothing random differs between replicas. Batches of 6 divide the
# 18 training and 6 validation images evenly over 2 replicas (Keras averages the loss on each
# replica, then over replicas: an uneven share weighs differently).
COMMON = ["--image-size", "32", "--batch-size", "6", "--seed", "1"]
JOBS = {
    # head then finetune, the frozen layers' outputs computed once (images in memory)
    "finetune-frozen-once": ["finetune", "--base", "lenet5", "--weights", "none", "--dropout", "0",
                             "--epochs-head", "2", "--epochs-finetune", "1", "--lr-head", "0.01",
                             "--lr-finetune", "0.001", "--cache-images", "memory", *COMMON],
    # the same through the whole classifier every epoch (images decoded every epoch)
    "finetune-images": ["finetune", "--base", "lenet5", "--weights", "none", "--dropout", "0",
                        "--epochs-head", "2", "--epochs-finetune", "1", "--lr-head", "0.01",
                        "--lr-finetune", "0.001", "--cache-images", "none", *COMMON],
    "train": ["train", "--arch", "lenet5", "--epochs", "2", "--lr", "0.01", "--dropout", "0", *COMMON],
    "extract": ["extract", "--base", "lenet5", "--weights", "none", "--dropout", "0", "--epochs", "2",
                "--lr", "0.01", *COMMON],
    "pretrain": ["pretrain", "--epochs", "2", "--image-size", "32", "--batch-size", "6", "--seed", "1"],
}
# A process with two logical CPU devices (set before TensorFlow starts), running the command line.
TWO_DEVICES = textwrap.dedent("""
    import sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tlkit.cli import main
    main(sys.argv[1:])
""")


def numbers(run: Path) -> dict[str, float]:
    """Every number metrics.json holds but its times, by path."""
    found = {}

    def walk(value, path):
        if isinstance(value, dict):
            for key, item in value.items():
                if "second" not in key and "time" not in key:
                    walk(item, f"{path}/{key}")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, f"{path}/{i}")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found[path] = float(value)

    walk(json.loads((run / "metrics.json").read_text()), "")
    return found


def finished(code_and_output: list[tuple[int, str]]) -> str:
    for code, said in code_and_output:
        assert code == 0, said[-3000:]
    return code_and_output[0][1]


@pytest.mark.parametrize("job", list(JOBS))
def test_every_stage_kind_gives_the_single_device_metrics_when_distributed(job, tiny_images, tmp_path):
    args = [*JOBS[job], "--data", str(tiny_images)]
    # the kernels the distributed commands run (tlkit.engine.strategy.check_replica_batches), for the single device too:
    # oneDNN's round differently, by 3e-5 after two epochs from scratch
    env = environment(tmp_path, TF_ENABLE_ONEDNN_OPTS="0")
    single = subprocess.run([sys.executable, "-m", "tlkit.cli", *args, "--out", str(tmp_path / "single"),
                             "--distribute", "none"], env=env, capture_output=True, text=True, timeout=TIMEOUT)
    said = finished([(single.returncode, single.stdout + single.stderr)])
    expected = numbers(tmp_path / "single")
    assert any(key.endswith("val_loss") or key.endswith("loss") for key in expected), expected
    frozen_once = said.count(") run once: ")
    assert frozen_once == (2 if job == "finetune-frozen-once" else 0), said[-3000:]

    mirrored = subprocess.run([sys.executable, "-c", TWO_DEVICES, *args, "--out", str(tmp_path / "mirrored"),
                               "--distribute", "mirrored"], env=env, capture_output=True, text=True, timeout=TIMEOUT)
    said = finished([(mirrored.returncode, mirrored.stdout + mirrored.stderr)])
    assert "distribute mirrored: 2 replicas" in said and said.count(") run once: ") == frozen_once, said[-3000:]

    said = finished(run_workers(lambda _: [sys.executable, "-m", "tlkit.cli", *args, "--out",
                                           str(tmp_path / "multi"), "--distribute", "multiworker"], tmp_path,
                                TF_ENABLE_ONEDNN_OPTS="0"))
    assert said.count(") run once: ") == frozen_once, said[-3000:]

    for mode in ("mirrored", "multi"):
        got = numbers(tmp_path / mode)
        assert got.keys() == expected.keys(), mode
        for key, want in expected.items():
            assert math.isclose(got[key], want, rel_tol=0, abs_tol=1e-5), (mode, key, got[key], want)


def test_multiworker_with_a_last_batch_smaller_than_the_workers_runs_on_cpus(tiny_images, tmp_path):
    """17 training images in batches of 8: the last batch's one image leaves worker 1 an empty
    batch, which TensorFlow's oneDNN CPU convolution gets wrong (the shape of its input) unless
    the command turns oneDNN off before TensorFlow loads."""
    data = tmp_path / "data"
    shutil.copytree(tiny_images, data)
    for name in ("6.png", "7.png"):
        (data / "red" / name).unlink()
    args = ["finetune", "--data", str(data), "--base", "lenet5", "--weights", "none", "--image-size", "32",
            "--batch-size", "8", "--epochs-head", "1", "--epochs-finetune", "1", "--out", str(tmp_path / "multi"),
            "--distribute", "multiworker"]
    finished(run_workers(lambda _: [sys.executable, "-m", "tlkit.cli", *args], tmp_path))
    metrics = json.loads((tmp_path / "multi" / "metrics.json").read_text())
    assert metrics["train_images"] == 17
    assert all(math.isfinite(stage["val_loss"]) for stage in metrics["stages"])
