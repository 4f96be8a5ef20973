"""lr-find and the frozen pass (features computed once) take a multi-label run as a single-label one."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tlkit.jobs import finetune
from tlkit.lrfind import lr_find


@pytest.fixture
def tags(tiny_images, tmp_path):
    """The tiny images with their colour and, on two of the three colours, "warm"."""
    rows = [{"path": str(f), "label": f.parent.name + ("|warm" if f.parent.name in ("red", "green") else "")}
            for f in sorted(tiny_images.glob("*/*.png"))]
    path = tmp_path / "tags.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_lr_find_sweeps_the_binary_cross_entropy_of_a_multilabel_run(tags, tmp_path, monkeypatch):
    monkeypatch.setenv("TLKIT_CACHE", str(tmp_path / "cache"))
    result = lr_find("lenet5", str(tags), "head_only", weights="none", image_size=32, out=tmp_path / "sweep",
                     steps=30, batch_size=8, verbose=0, task="multilabel", image_root="/")
    # sigmoid outputs near 0.5 at the start: a mean BCE near log 2, where a 4-way softmax starts near log 4
    assert result.losses[0] == pytest.approx(math.log(2), abs=0.15)
    assert result.flag.startswith("--lr-head ") and result.plot.is_file()


@pytest.mark.integration
def test_a_multilabel_finetune_on_the_frozen_outputs_trains_as_on_the_images(tags, tmp_path, caplog):
    stages = {"head": {"epochs": 1, "learning_rate": 0.01},
              "finetune": {"epochs": 2, "unfreeze": 2, "learning_rate": 0.001}}
    runs = {}
    for cache in ("none", "memory"):  # "none": the frozen layers run every epoch
        caplog.clear()
        runs[cache] = finetune("efficientnet_lite0", str(tags), out=tmp_path / cache, weights="none", image_size=32,
                               batch_size=6, seed=3, cache_images=cache, stages=stages, verbose=0,
                               task="multilabel", image_root="/")
        assert caplog.text.count(") run once: ") == (2 if cache == "memory" else 0)
    for every, once in zip(runs["none"].results, runs["memory"].results):
        for key in ("loss", "val_loss"):
            np.testing.assert_allclose(once.history[key], every.history[key], rtol=1e-5, atol=1e-6, err_msg=key)
    thresholds = [json.loads((tmp_path / c / "thresholds.json").read_text()) for c in ("none", "memory")]
    assert thresholds[0] == pytest.approx(thresholds[1], abs=1e-5)
