"""The run directory: everything a run produces, in one folder, each file written atomically.

    model.keras        the classifier (preprocessing inside; input float32 images in [0, 255])
    labels.txt         class names, one a line, in the order of the model's outputs
    recipe.toml        the resolved recipe: `tlkit finetune --recipe RUN/recipe.toml` repeats the run
    blocks.json        the block map of the run's base ({block: [layer names]}, in order)
    history.json       Keras' per-epoch history of every stage
    metrics.json       validation accuracy and loss after each stage
    checkpoints/best.keras   the model at the epoch with the lowest validation loss, over all stages
    logs/              TensorBoard logs, one folder per stage
    curves.png         loss and accuracy per epoch over all stages (redrawn after every epoch)
    REPORT.md          what the run did, in words, with the validation report below
    report.json, predictions.csv, confusion.png, top_losses.png   the validation split's evaluation

Which model a command uses (`--checkpoint`, the same rule in evaluate, predict, export and
visualize): "final" (the default) is `model.keras`, the model as the run ended: the weights of
the last epoch of the last stage, or, with early stopping, of that stage's best epoch (Keras'
`restore_best_weights`). "best" is `checkpoints/best.keras`, the epoch with the lowest validation
loss over all stages.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras

import tlkit.layers  # noqa: F401  (registers tlkit's layers, which a run's model may hold)
import tlkit.preprocessing  # noqa: F401  (likewise: the preprocessing of runs saved by tlkit 0.1)
from tlkit.errors import TlkitError
from tlkit.io import write_text_atomic
from tlkit.recipe import Recipe

CHECKPOINTS = {
    "final": ("model.keras", "the model as the run ended: last epoch of the last stage, or its best epoch "
              "with early stopping"),
    "best": ("checkpoints/best.keras", "the epoch with the lowest validation loss over all stages"),
}

def write_labels(path: str | Path, classes: list[str]) -> None:
    """labels.txt: one class name a line, in the order of the model's outputs."""
    write_text_atomic(path, "".join(f"{c}\n" for c in classes))


def read_labels(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise TlkitError(f"no labels file '{path}'")
    classes = [line for line in path.read_text(encoding="utf-8").splitlines() if line]
    if not classes:
        raise TlkitError(f"labels file '{path}' is empty")
    return classes


@dataclass
class Run:
    """A finished run, loaded back from its directory."""

    path: Path
    model: keras.Model
    labels: list[str]
    recipe: Recipe
    model_file: Path | None = None
    checkpoint: str = "final"

    def describe(self) -> str:
        """Which weights these are, in one line: the file and the rule that chose it."""
        if self.model_file is None:
            return f"the model of {self.path}"
        if self.model_file.name != Path(CHECKPOINTS[self.checkpoint][0]).name:
            return str(self.model_file)
        return f"{self.model_file} ({self.checkpoint}: {CHECKPOINTS[self.checkpoint][1]})"

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.model.input_shape[1:3])

    @property
    def channels(self) -> int:
        return self.model.input_shape[-1]


def load_run(path: str | Path, checkpoint: str = "final") -> Run:
    """Load a run directory (or a bare `.keras` file with a labels.txt beside it).

    `checkpoint` chooses the weights of a run directory (see the module docstring): "final",
    RUN/model.keras, or "best", RUN/checkpoints/best.keras. A `.keras` file is used as it is."""
    if checkpoint not in CHECKPOINTS:
        raise TlkitError(f"unknown checkpoint '{checkpoint}': choose one of {', '.join(CHECKPOINTS)}")
    path = Path(path)
    model_file = path / CHECKPOINTS[checkpoint][0] if path.is_dir() else path
    folder = path if path.is_dir() else path.parent
    if folder.name == "checkpoints" and not (folder / "labels.txt").is_file():
        folder = folder.parent  # RUN/checkpoints/best.keras given as a file
    if not model_file.is_file():
        hint = ("; it is written at the first epoch with a validation loss" if checkpoint == "best" and path.is_dir()
                else ": pass a run directory made by `tlkit finetune` or `tlkit train`")
        raise TlkitError(f"no model at {model_file}{hint}")
    if not (folder / "labels.txt").is_file():
        raise TlkitError(f"no labels.txt beside {model_file}: a run directory holds both")
    model = load_model(model_file)
    recipe_file = folder / "recipe.toml"
    recipe = Recipe.load(recipe_file) if recipe_file.is_file() else Recipe()
    return Run(folder, model, read_labels(folder / "labels.txt"), recipe, model_file, checkpoint)


def load_model(path: str | Path, safe_mode: bool = True) -> keras.Model:
    """`keras.saving.load_model` of a run's model (a run directory or a `.keras` file), with
    tlkit's own layers registered. Models of keras.applications and EfficientNet-Lite bases load
    with Keras alone; the canon's layers and TF Hub bases need tlkit (imported here)."""
    path = Path(path)
    return keras.saving.load_model(path / "model.keras" if path.is_dir() else path, safe_mode=safe_mode)
