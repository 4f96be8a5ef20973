"""The command line as a user meets it: one-line errors, exit codes, the main job end to end."""
from __future__ import annotations

import json

import keras
import pytest


def test_unknown_base_is_one_line_with_close_names(cli, tiny_images):
    code, _, err = cli("finetune", "--base", "vgg61", "--data", str(tiny_images))
    assert code == 2
    assert err.strip().splitlines() == ["error: unknown base 'vgg61': did you mean vgg19, vgg16, vgg13, vgg11?"]
    assert "Traceback" not in err


def test_nosuchnet_exits_nonzero_without_a_stack_trace(cli, tiny_images):
    code, _, err = cli("finetune", "--base", "nosuchnet", "--data", str(tiny_images))
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: unknown base 'nosuchnet'")


def test_bad_files_stop_the_run_before_training(cli, bad_images, tmp_path):
    out = tmp_path / "run"
    code, _, err = cli("finetune", "--base", "mobilenet_v2", "--weights", "none", "--data",
                       str(bad_images.root), "--image-size", "32", "--out", str(out))
    assert code == 2
    assert str(bad_images.truncated) in err and str(bad_images.empty) in err
    assert not out.exists(), "nothing may be trained or written before the data is valid"


def test_skip_bad_trains_on_the_rest_and_names_what_it_skipped(cli, bad_images, tmp_path):
    out = tmp_path / "run"
    code, stdout, _ = cli("finetune", "--base", "lenet5", "--weights", "none", "--data",
                          str(bad_images.root), "--image-size", "32", "--skip-bad", "--epochs-head", "1",
                          "--epochs-finetune", "1", "--batch-size", "8", "--out", str(out))
    assert code == 0
    assert f"{bad_images.truncated}: truncated image" in stdout and f"{bad_images.empty}: empty file" in stdout
    assert "2 bad files skipped (--skip-bad)" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert [s["kind"] for s in metrics["stages"]] == ["head", "finetune"]
    assert metrics["train_images"] + metrics["val_images"] == 24  # the good files of the folder
    assert "stage 1 (head): val_accuracy=" in stdout and "stage 2 (finetune): val_accuracy=" in stdout


@pytest.mark.integration
def test_the_resolved_recipe_repeats_the_run_to_the_same_metrics(cli, tiny_images, tmp_path):
    """On the CPU the same seed gives the same metrics.json; the run's recipe.toml alone carries
    everything needed to repeat it (base, weights, data, sizes, stages, seed)."""
    code, _, _ = cli("finetune", "--base", "resnet18", "--weights", "none", "--data", str(tiny_images),
                     "--image-size", "32", "--epochs-head", "2", "--epochs-finetune", "1", "--batch-size", "8",
                     "--augment", "--seed", "7", "--out", str(tmp_path / "a"))
    assert code == 0
    code, _, _ = cli("finetune", "--recipe", str(tmp_path / "a" / "recipe.toml"), "--out", str(tmp_path / "b"))
    assert code == 0
    assert (tmp_path / "a" / "metrics.json").read_text() == (tmp_path / "b" / "metrics.json").read_text()


def test_recipes_lists_the_builtin_recipes(cli):
    code, out, _ = cli("recipes")
    assert code == 0
    lines = out.splitlines()
    names = [line.split()[0] for line in lines if not line.startswith(" ")]
    assert {"classic", "deep", "head_only", "scratch", "extract", "autoencoder"} <= set(names)
    classic = next(line for line in lines if line.startswith("classic "))
    assert classic.split(None, 1)[1] == "head(5 ep, lr 0.001) -> finetune(5 ep, lr 1e-05, top 1)"


def test_unknown_recipe_suggests(cli, tiny_images):
    code, _, err = cli("finetune", "--base", "vgg16", "--data", str(tiny_images), "--recipe", "clasic")
    assert code == 2 and "did you mean classic?" in err


def test_mixed_precision_keeps_a_float32_output(tiny_images):
    from tlkit.bases import load_base
    from tlkit.engine.classifier import build_classifier
    from tlkit.engine.strategy import configure
    from tlkit.recipe.schema import Recipe

    try:
        configure(Recipe(mixed_precision=True))
        model = build_classifier(load_base("mobilenet_v2", "none", (32, 32)), 3, 0.2)
        assert model.get_layer("base").get_layer("Conv1").compute_dtype == "float16"
        assert model.output.dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.integration
@pytest.mark.parametrize("base", ["resnet18", "lenet5"])
def test_zoo_models_run_through_the_recipe_engine(cli, tiny_images, tmp_path, base):
    code, stdout, err = cli("finetune", "--base", base, "--weights", "none", "--data", str(tiny_images),
                            "--image-size", "32", "--epochs-head", "1", "--epochs-finetune", "1", "--unfreeze", "2",
                            "--batch-size", "8", "--out", str(tmp_path / "run"))
    assert code == 0, err
    assert "stage 2 (finetune)" in stdout
    assert (tmp_path / "run" / "model.keras").is_file()
