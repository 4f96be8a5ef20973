"""`tlkit tune`: seeded trials repeat, --resume adds to the same study, the best trial's
recipe.toml repeats its metrics, a bad space file is one line before anything runs."""
from __future__ import annotations

import json

import pytest

optuna = pytest.importorskip("optuna")

ARGS = ["--base", "lenet5", "--weights", "none", "--pooling", "flatten", "--image-size", "32", "--batch-size", "8",
        "--recipe", "extract", "--stage-option", "extract:epochs=2", "--seed", "7"]
SPACE = """
[lr_head]
low = 1e-3
high = 1e-1

[dropout]
high = 0.4
"""


@pytest.fixture(scope="module")
def studies(tiny_images, tmp_path_factory):
    """The same 4-trial study twice, the first resumed for one more trial: extract trials, on cached features."""
    from tlkit.cli import main

    root = tmp_path_factory.mktemp("tune")
    (root / "space.toml").write_text(SPACE)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLKIT_CACHE", str(root / "cache"))  # head-only trials share the cached features
        for name in ("a", "b"):
            with pytest.raises(SystemExit) as done:
                main(["-q", "tune", *ARGS, "--data", str(tiny_images), "--trials", "4", "--space",
                      str(root / "space.toml"), "--out", str(root / name)])
                raise SystemExit(0)
            assert done.value.code == 0
        before = optuna.load_study(study_name="tlkit", storage=f"sqlite:///{root / 'a' / 'study.db'}").trials
        with pytest.raises(SystemExit) as done:
            main(["-q", "tune", "--resume", str(root / "a"), "--trials", "1"])
            raise SystemExit(0)
        assert done.value.code == 0
    return root, before


def trials(study) -> list:
    return optuna.load_study(study_name="tlkit", storage=f"sqlite:///{study / 'study.db'}").trials


@pytest.mark.integration
def test_a_seeded_study_gives_the_same_trials_twice_and_resume_adds_to_it(studies):
    root, before = studies
    first, second = before, trials(root / "b")
    assert len(first) == len(second) == 4
    assert [t.params for t in first] == [t.params for t in second]
    assert [t.value for t in first] == pytest.approx([t.value for t in second], abs=1e-6)
    assert len({t.params["lr_head"] for t in first}) == 4 and all(1e-3 <= t.params["lr_head"] <= 1e-1 for t in first)
    resumed = trials(root / "a")
    assert len(resumed) == 5 and [t.params for t in resumed[:4]] == [t.params for t in first]
    assert resumed[4].params not in [t.params for t in first]
    for n in range(5):  # every trial a normal run directory
        trial = json.loads((root / "a" / f"trial-{n:03d}" / "trial.json").read_text())
        assert trial["state"] == "complete" and trial["number"] == n
        assert (root / "a" / f"trial-{n:03d}" / "model.keras").is_file()
    assert (root / "a" / "tune.png").stat().st_size > 10_000
    importance = json.loads((root / "a" / "importance.json").read_text())
    assert set(importance) == {"lr_head", "dropout"}


@pytest.mark.integration
def test_the_best_trials_recipe_repeats_its_metrics(studies, cli, tmp_path, monkeypatch):
    root, _ = studies
    study = optuna.load_study(study_name="tlkit", storage=f"sqlite:///{root / 'a' / 'study.db'}")
    best = root / "a" / f"trial-{study.best_trial.number:03d}"
    monkeypatch.setenv("TLKIT_CACHE", str(root / "cache"))
    code, _, err = cli("-q", "finetune", "--recipe", root / "a" / "recipe.toml", "--out", tmp_path / "again")
    assert code == 0, err
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())["stages"]
    expected = json.loads((best / "metrics.json").read_text())["stages"]
    assert again[-1]["val_accuracy"] == pytest.approx(expected[-1]["val_accuracy"], abs=1e-6)
    assert again[-1]["val_loss"] == pytest.approx(expected[-1]["val_loss"], abs=1e-5)
    assert expected[-1]["val_accuracy"] == pytest.approx(study.best_value)


@pytest.mark.integration
def test_tune_runs_show_in_the_runs_table(studies, cli):
    root, _ = studies
    code, out, err = cli("runs", root / "a", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["name"] for r in rows] == [f"trial-{n:03d}" for n in range(5)]
    assert {r["status"] for r in rows} == {"finished"}


@pytest.mark.parametrize("space, message", [
    ("[lr_haed]\nlow = 1e-3\nhigh = 1e-2\n", "unknown parameter in {space}: 'lr_haed': did you mean lr_head?"),
    ("[dropout]\nlow = 0.3\nhigh = 0.1\n", "{space}: dropout's range is empty (low 0.3, high 0.1)"),
    ("[augment]\nchoices = []\n", "{space}: augment's choices are empty"),
    ("[lr_finetune]\nlow = 1e-5\nhigh = 1e-3\n", "{space}: lr_finetune is a parameter of a finetune stage"),
])
def test_a_bad_space_file_is_one_line_before_anything_runs(space, message, cli, tiny_images, tmp_path):
    path = tmp_path / "space.toml"
    path.write_text(space)
    code, out, err = cli("tune", *ARGS, "--data", tiny_images, "--space", path, "--out", tmp_path / "study")
    assert code == 2 and err.startswith("error: " + message.format(space=path)), err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "study").exists()


def test_a_failed_trial_is_recorded_and_the_study_goes_on(tiny_images, tmp_path, monkeypatch):
    import tlkit.engine.resume as resume
    from tlkit.experiments.tune import tune
    from tlkit.recipe.kinds import resolve

    save_state, failed = resume.save_state, []

    def fail_once(ctx, stage, epoch, *args, **kwargs):
        name = save_state(ctx, stage, epoch, *args, **kwargs)
        if not failed:
            failed.append(ctx.out)
            raise MemoryError("out of memory")
        return name

    monkeypatch.setattr(resume, "save_state", fail_once)
    monkeypatch.setenv("TLKIT_CACHE", str(tmp_path / "cache"))
    recipe = resolve("extract", base="lenet5", weights="none", pooling="flatten", image_size=32, batch_size=8,
                     data=str(tiny_images), stages={"extract": {"epochs": 1}})
    result = tune(recipe, tmp_path / "study", trials=2)
    assert [t["state"] for t in result.trials] == ["fail", "complete"] and result.best_trial == 1
    trial = json.loads((tmp_path / "study" / "trial-000" / "trial.json").read_text())
    assert trial["state"] == "failed" and trial["error"] == "MemoryError: out of memory"
    assert (tmp_path / "study" / "recipe.toml").is_file()
