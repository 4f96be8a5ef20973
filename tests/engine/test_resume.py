"""A run killed in the middle of its second stage, resumed, ends as if it had never stopped."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tlkit.cli import main

ROOT = Path(__file__).resolve().parents[2]

# The run: head 2 epochs, finetune 3 epochs; augmentation and dropout draw random numbers, early
# stopping keeps state across epochs: everything a resume must give back.
RUN = """
import os, signal, sys
import tlkit.engine.resume as run
from tlkit.cli import main

stop = {stop}
save_state = run.save_state

def save_then_stop(ctx, stage, epoch, *args, **kwargs):
    name = save_state(ctx, stage, epoch, *args, **kwargs)
    if (stage, epoch) == stop[:2]:
        os.kill(os.getpid(), stop[2])
    return name

run.save_state = save_then_stop
main(sys.argv[1:])
"""
ARGS = ["finetune", "--base", "lenet5", "--weights", "none", "--pooling", "flatten", "--image-size", "32",
        "--batch-size", "8", "--augment", "--early-stopping", "5", "--epochs-head", "2", "--epochs-finetune", "3",
        "--lr-head", "0.01", "--lr-finetune", "0.003", "--seed", "3"]


def tlkit_process(args, stop=None) -> subprocess.CompletedProcess:
    code = textwrap.dedent(RUN.format(stop=tuple(int(x) for x in stop) if stop else (0, 0, 0)))
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, timeout=600)


def results(run: Path) -> tuple[list, list]:
    metrics = json.loads((run / "metrics.json").read_text())["stages"]
    history = json.loads((run / "history.json").read_text())
    return ([(s["val_loss"], s["val_accuracy"]) for s in metrics],
            [[h[k] for k in ("loss", "val_loss", "accuracy")] for h in history])


@pytest.fixture(scope="module")
def uninterrupted(tiny_images, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("resume") / "whole"
    done = tlkit_process([*ARGS, "--data", str(tiny_images), "--out", str(out)])
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.integration
def test_sigkill_in_stage_two_then_resume_ends_with_the_same_metrics(uninterrupted, tiny_images, tmp_path):
    import signal

    out = tmp_path / "killed"
    killed = tlkit_process([*ARGS, "--data", str(tiny_images), "--out", str(out)], stop=(2, 1, signal.SIGKILL))
    assert killed.returncode == -signal.SIGKILL
    assert not (out / "model.keras").exists() and (out / "checkpoints" / "resume" / "state.json").is_file()
    resumed = tlkit_process(["finetune", "--resume", str(out)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "stage 2 resumed after epoch 1 of 3" in resumed.stdout
    assert "stage 1/2" not in resumed.stdout  # the head stage had ended: it is not run again
    (metrics, history), (expected_metrics, expected_history) = results(out), results(uninterrupted)
    np.testing.assert_allclose(np.array(metrics, float), np.array(expected_metrics, float), atol=1e-6)
    for stage, expected in zip(history, expected_history):
        np.testing.assert_allclose(np.array(stage, float), np.array(expected, float), atol=1e-6)
    assert not (out / "checkpoints" / "resume").exists()  # finished: nothing left to resume


@pytest.mark.integration
def test_ctrl_c_saves_and_prints_the_command_that_goes_on(tiny_images, tmp_path, capsys):
    import signal

    out = tmp_path / "stopped"
    stopped = tlkit_process([*ARGS, "--data", str(tiny_images), "--out", str(out)], stop=(2, 2, signal.SIGINT))
    assert stopped.returncode == 130
    last = stopped.stderr.strip().splitlines()[-1]
    assert last == f"interrupted: {out} is saved at stage 2, after epoch 2; go on with: tlkit finetune --resume {out}"

    # an unfinished run still evaluates, with its best checkpoint, and says so
    main(["evaluate", "--model", str(out), "--data", str(tiny_images), "--out", str(tmp_path / "eval")])
    captured = capsys.readouterr()
    assert "is unfinished" in captured.out + captured.err and "best checkpoint" in captured.out + captured.err

    with pytest.raises(SystemExit) as exit:
        main(["finetune", "--resume", str(out), "--epochs-head", "4"])
    assert exit.value.code == 2
    assert capsys.readouterr().err == "error: --resume goes on with the run as its recipe.toml says: drop stage options\n"
    main(["finetune", "--resume", str(out)])
    assert (out / "model.keras").is_file()


@pytest.mark.integration
def test_stages_on_the_frozen_layers_outputs_resume_the_same(tiny_images, tmp_path):
    import signal

    # no augmentation: both stages train on the outputs of their frozen layers, computed once
    args = [a for a in ARGS if a != "--augment"] + ["--data", str(tiny_images)]
    whole = tlkit_process([*args, "--out", str(tmp_path / "whole")])
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert (whole.stdout + whole.stderr).count(") run once: ") == 2
    out = tmp_path / "killed"
    killed = tlkit_process([*args, "--out", str(out)], stop=(2, 2, signal.SIGKILL))
    assert killed.returncode == -signal.SIGKILL
    # the stage's second snapshot: only what the stage changes, beside the first, which holds the frozen base too
    state = json.loads((out / "checkpoints" / "resume" / "state.json").read_text())
    assert (state["arrays"], state["full"]) == ("stage2-epoch2.npz", "stage2-epoch1.npz")
    resumed = tlkit_process(["finetune", "--resume", str(out)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "stage 2 resumed after epoch 2 of 3" in resumed.stdout and ") run once: " in resumed.stdout
    (metrics, history), (expected_metrics, expected_history) = results(out), results(tmp_path / "whole")
    np.testing.assert_allclose(np.array(metrics, float), np.array(expected_metrics, float), atol=1e-6)
    for stage, expected in zip(history, expected_history):
        np.testing.assert_allclose(np.array(stage, float), np.array(expected, float), atol=1e-6)


@pytest.mark.integration
def test_multilabel_run_killed_then_resumed_gives_the_same_multilabel_metrics(tiny_images, tmp_path):
    import signal

    # the colour of each tiny image, and "warm" on two of the three colours: a second label per image
    rows = [{"path": str(f), "label": f.parent.name + ("|warm" if f.parent.name in ("red", "green") else "")}
            for f in sorted(tiny_images.glob("*/*.png"))]
    tags = tmp_path / "tags.jsonl"
    tags.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = [*ARGS, "--data", str(tags), "--image-root", "/", "--task", "multilabel"]
    runs = {}
    for name, stop in (("whole", None), ("killed", (2, 1, signal.SIGKILL))):
        runs[name] = tmp_path / name
        done = tlkit_process([*args, "--out", str(runs[name])], stop=stop)
        assert done.returncode == (-signal.SIGKILL if stop else 0), done.stderr[-3000:]
    resumed = tlkit_process(["finetune", "--resume", str(runs["killed"])])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "stage 2 resumed after epoch 1 of 3" in resumed.stdout

    (metrics, history), (expected_metrics, expected_history) = results(runs["killed"]), results(runs["whole"])
    np.testing.assert_allclose(np.array(metrics, float), np.array(expected_metrics, float), atol=1e-6)
    for stage, expected in zip(history, expected_history):
        np.testing.assert_allclose(np.array(stage, float), np.array(expected, float), atol=1e-6)
    thresholds = [json.loads((runs[n] / "thresholds.json").read_text()) for n in ("killed", "whole")]
    assert thresholds[0] == pytest.approx(thresholds[1], abs=1e-6)
    # the multi-label metrics evaluate prints: per label, micro/macro/samples F1, mAP, exact match
    reports = []
    for name in ("killed", "whole"):
        main(["evaluate", "--model", str(runs[name]), "--data", str(tags), "--image-root", "/",
              "--out", str(tmp_path / f"eval-{name}")])
        reports.append(json.loads((tmp_path / f"eval-{name}" / "report.json").read_text()))
    assert all((tmp_path / "eval-killed" / f).stat().st_size > 10_000 for f in reports[0]["files"].values() if f.endswith(".png"))
    assert set(reports[0]["files"]) == {"predictions", "pr_curves", "cooccurrence", "top_losses"}
    assert reports[0]["task"] == "multilabel" and reports[0]["per_label"].keys() == {"red", "green", "blue", "warm"}
    got, expected = (numbers(r, ("exact_match", "micro_f1", "macro_f1", "samples_f1", "mAP", "per_label"))
                     for r in reports)
    assert got.keys() == expected.keys() and len(got) > 20
    np.testing.assert_allclose([got[k] for k in expected], list(expected.values()), atol=1e-6)


def numbers(report: dict, keys, prefix: str = "") -> dict[str, float]:
    """The numbers under `keys` of a nested report, by their dotted path."""
    flat = {}
    for key in keys:
        value = report[key]
        if isinstance(value, dict):
            flat |= numbers(value, value.keys(), f"{prefix}{key}.")
        else:
            flat[prefix + key] = float(value)
    return flat
