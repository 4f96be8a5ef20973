"""Tiny runs for the experiments' tests: lenet5 (no weights) at 32 px, a head and a finetune stage."""
from __future__ import annotations

import pytest

import tlkit.engine.resume as resume
from tlkit.recipe.schema import Recipe, Stage


def tiny_recipe(data, lr=0.01) -> Recipe:
    return Recipe(stages=[Stage("head", epochs=1, learning_rate=lr), Stage("finetune", epochs=2, learning_rate=lr)],
                  base="lenet5", weights="none", pooling="flatten", data=str(data), image_size=32, batch_size=8,
                  seed=1)


def stop_at(monkeypatch, stage: int, epoch: int, error: BaseException):
    """Make a run raise `error` once it has saved stage `stage`, epoch `epoch`."""
    save_state = resume.save_state

    def save_then_stop(ctx, s, e, *args, **kwargs):
        name = save_state(ctx, s, e, *args, **kwargs)
        if (s, e) == (stage, epoch):
            raise error
        return name

    monkeypatch.setattr(resume, "save_state", save_then_stop)


@pytest.fixture(scope="session")
def tiny_run():
    """(tiny_recipe, stop_at)."""
    return tiny_recipe, stop_at
