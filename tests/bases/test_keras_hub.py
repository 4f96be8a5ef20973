"""KerasHub backbones as bases: small ViT and ResNet backbones built from config (random weights),
saved as preset folders, fine-tuned with --unfreeze 1 (only the top block moves), exported and
resumed, all offline."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tlkit.bases import load_base
from tlkit.cli import main
from tlkit.errors import TlkitError
from tlkit.exporters import check_export, export
from tlkit.rundir.load import load_model

keras_hub = pytest.importorskip("keras_hub")
ROOT = Path(__file__).resolve().parents[2]
STD = np.array((0.229, 0.224, 0.225))
MEAN = np.array((0.485, 0.456, 0.406))


def vit_preset(folder: Path) -> Path:
    keras_hub.models.ViTBackbone(image_shape=(32, 32, 3), patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
                                 mlp_dim=32).save_to_preset(str(folder))
    keras_hub.layers.ViTImageConverter(image_size=(32, 32), scale=1 / 127.5, offset=-1.0).save_to_preset(str(folder))
    return folder


def resnet_preset(folder: Path) -> Path:
    keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 16],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block",
        image_shape=(None, None, 3)).save_to_preset(str(folder))
    keras_hub.layers.ResNetImageConverter(
        image_size=(32, 32), scale=(1 / (255 * STD)).tolist(), offset=(-MEAN / STD).tolist()).save_to_preset(str(folder))
    return folder


@pytest.fixture(scope="module")
def presets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("keras_hub")
    return {"vit": vit_preset(root / "vit"), "resnet": resnet_preset(root / "resnet")}


def test_the_base_is_the_backbone_on_its_preprocessed_images(presets):
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    vit = load_base(f"keras_hub:{presets['vit']}")
    assert [b.name for b in vit.blocks] == ["embedding", "block1", "block2"] and vit.input_size == (32, 32)
    assert vit.blocks[-1].layers == ("transformer_block_2", "ln")  # the final norm tops the last block
    backbone = keras_hub.models.Backbone.from_preset(str(presets["vit"]))
    np.testing.assert_allclose(vit.model(x), backbone(x / 127.5 - 1)[:, 0], atol=1e-5)  # the class token

    resnet = load_base(f"keras_hub:{presets['resnet']}", image_size=(32, 32))
    assert [b.name for b in resnet.blocks] == ["stem", "stage1", "stage2"]
    backbone = keras_hub.models.Backbone.from_preset(str(presets["resnet"]))
    np.testing.assert_allclose(resnet.model(x), backbone((x / 255 - MEAN) / STD), atol=1e-4)


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_unfreeze_1_trains_only_the_top_block_and_exports_with_parity(kind, presets, tiny_images, tmp_path):
    out = tmp_path / "run"
    main(["finetune", "--base", f"keras_hub:{presets[kind]}", "--data", str(tiny_images), "--out", str(out),
          "--image-size", "32", "--batch-size", "8", "--epochs-head", "1", "--epochs-finetune", "2",
          "--lr-finetune", "0.01", "--unfreeze", "1"])
    original = load_base(f"keras_hub:{presets[kind]}", image_size=(32, 32))
    trained = load_model(out).get_layer("base")
    for block in original.blocks:
        for name in block.layers:
            before, after = original.model.get_layer(name), trained.get_layer(name)
            for old, new in zip(before.weights, after.weights):
                moved = not np.array_equal(old.numpy(), new.numpy())
                # BatchNormalization stays frozen, in inference mode, in an unfrozen block too
                assert moved == (block is original.blocks[-1] and "normalization" not in new.path
                                 and "_bn" not in new.path), (block.name, new.path)
    check = check_export(out, export(out, tmp_path / "exported"), "savedmodel")
    assert check.agree == check.images == 6 and check.max_diff < 1e-5


@pytest.mark.integration  # a second process, killed, then resumed: about 40 s
def test_a_stopped_run_resumes(presets, tiny_images, tmp_path):
    out = tmp_path / "stopped"
    stop = textwrap.dedent("""
        import os, signal, sys
        import tlkit.engine.resume as resume
        from tlkit.cli import main
        save_state = resume.save_state
        def save_then_stop(ctx, stage, epoch, *args, **kwargs):
            name = save_state(ctx, stage, epoch, *args, **kwargs)
            if (stage, epoch) == (2, 1):
                os.kill(os.getpid(), signal.SIGKILL)
            return name
        resume.save_state = save_then_stop
        main(sys.argv[1:])
    """)
    args = ["finetune", "--base", f"keras_hub:{presets['vit']}", "--data", str(tiny_images), "--out", str(out),
            "--batch-size", "8", "--epochs-head", "1", "--epochs-finetune", "2", "--unfreeze", "1"]
    killed = subprocess.run([sys.executable, "-c", stop, *args], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (out / "model.keras").exists()
    main(["finetune", "--resume", str(out)])
    model = load_model(out)
    assert model.get_layer("base").get_layer("transformer_block_2").trainable_weights


def test_a_preset_name_offline_says_where_to_put_the_preset(monkeypatch, capsys):
    import requests

    def offline(*args, **kwargs):
        raise requests.exceptions.ConnectionError("Failed to resolve 'api.kaggle.com'")

    monkeypatch.setattr(keras_hub.models.Backbone, "from_preset", offline)
    with pytest.raises(SystemExit) as exit:
        main(["finetune", "--base", "keras_hub:vit_base_patch16_224_imagenet", "--data", str(ROOT / "data_samples/photos")])
    assert exit.value.code != 0
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "save_to_preset('vit_base_patch16_224_imagenet')" in err and "--base keras_hub:./vit_base_patch16_224" in err


def test_bad_presets_are_named(tmp_path, presets):
    with pytest.raises(TlkitError, match="vit_base_patch16_224_imagenet"):
        load_base("keras_hub:vit_base_patch16_224_imagnet")  # a typo: close matches suggested
    with pytest.raises(TlkitError, match="not a KerasHub preset folder"):
        load_base(f"keras_hub:{tmp_path}")
    with pytest.raises(TlkitError, match="takes 32x32 images only"):
        load_base(f"keras_hub:{presets['vit']}", image_size=(64, 64))


def test_tlkit_bases_lists_the_known_presets(cli):
    code, out, _ = cli("bases")
    assert code == 0 and "keras_hub:PRESET" in out
    assert "vit_base_patch16_224_imagenet" in out and "resnet_50_imagenet" in out
