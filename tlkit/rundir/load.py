"""Loading a run directory (its files: tlkit.rundir.files): its model, labels and recipe.

Which model a command uses (`--checkpoint`, the same rule in evaluate, predict, export and
visualize): "final" (the default) is `model.keras`, the model as the run ended: the weights of
the last epoch of the last stage, or, with early stopping, of that stage's best epoch (Keras'
`restore_best_weights`). "best" is `checkpoints/best.keras`, the epoch with the lowest validation
loss over all stages.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

import tlkit.models.layers  # noqa: F401  (registers tlkit's layers, which a run's model may hold)
import tlkit.models.optimization  # noqa: F401  (likewise: the optimizer, schedule and loss a run's model is compiled with)
import tlkit.models.preprocessing  # noqa: F401  (likewise: the preprocessing of runs saved by tlkit 0.1)
from tlkit._util.io import write_text_atomic
from tlkit._util.urls import Url, is_url
from tlkit.errors import TlkitError
from tlkit.recipe.schema import Recipe
from tlkit.rundir import bucket
from tlkit.rundir.files import RunDir

log = logging.getLogger(__name__)

CHECKPOINTS = {
    "final": (RunDir.MODEL, "the model as the run ended: last epoch of the last stage, or its best epoch "
              "with early stopping"),
    "best": (RunDir.BEST, "the epoch with the lowest validation loss over all stages"),
}

def write_labels(path: str | Path, classes: list[str]) -> None:
    """labels.txt: one class name a line, in the order of the model's outputs."""
    write_text_atomic(path, "".join(f"{c}\n" for c in classes))


def read_labels(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise TlkitError(f"no labels file '{path}'")
    try:
        classes = [line for line in path.read_text(encoding="utf-8").splitlines() if line]
    except UnicodeDecodeError as err:
        raise TlkitError(f"labels file '{path}' is not UTF-8 text (byte {err.start}): write one class name a line") from None
    if not classes:
        raise TlkitError(f"labels file '{path}' is empty")
    return classes


@dataclass
class Run:
    """A finished run: what `tlkit.finetune` and the other jobs return, and what `load_run` loads
    back from its directory. `model` is the classifier (a pretrain run's: its encoder), `labels`
    its classes in output order, `recipe` the resolved recipe; `results` (each stage's validation
    loss and accuracy, history and seconds) and `base` are there when the run was made in this
    process."""

    path: Path
    model: keras.Model
    labels: list[str]
    recipe: Recipe
    model_file: Path | None = None
    checkpoint: str = "final"
    results: list = field(default_factory=list)  # tlkit.engine.results.StageResult, one per stage
    base: object = None  # the tlkit.bases.Base it trained
    # calibration.json (temperature, ECE, NLL, unknown threshold) and reference.npy (the unknown
    # score's training features), for the weights of model.keras; None for runs made before them
    calibration: dict | None = None
    reference: np.ndarray | None = None
    url: str | None = None  # the bucket run `path` is a local copy of (tlkit.rundir.bucket)

    @property
    def unknown_threshold(self) -> float | None:
        """Above this unknown score an image is `unknown`; None when the run cannot tell."""
        if self.reference is None or self.calibration is None:
            return None
        return self.calibration.get("threshold")

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
    RUN/model.keras, or "best", RUN/checkpoints/best.keras. A `.keras` file is used as it is.
    A run on a bucket (`gs://...`) is copied to the tlkit cache and loaded from there."""
    if checkpoint not in CHECKPOINTS:
        raise TlkitError(f"unknown checkpoint '{checkpoint}': choose one of {', '.join(CHECKPOINTS)}")
    given, path = path, bucket.load(path) if is_url(path) else Path(path)
    model_file = path / CHECKPOINTS[checkpoint][0] if path.is_dir() else path
    folder = path if path.is_dir() else path.parent
    if folder.name == RunDir.CHECKPOINTS and not RunDir(folder).labels.is_file():
        folder = folder.parent  # RUN/checkpoints/best.keras given as a file
    best = folder / CHECKPOINTS["best"][0]
    if checkpoint == "final" and path.is_dir() and model_file.is_file() and RunDir(folder).unfinished.exists():
        log.warning("%s is unfinished (it stopped after writing %s, before its report)", folder, model_file.name)
    if checkpoint == "final" and path.is_dir() and not model_file.is_file() and best.is_file():
        state = RunDir(folder).resume_state
        job = json.loads(state.read_text(encoding="utf-8"))["job"] if state.is_file() else "finetune"
        log.warning("%s is unfinished (it stopped before writing %s; `tlkit %s --resume %s` goes on with it): "
                    "using its best checkpoint, %s", folder, model_file.name, job, folder, best)
        model_file, checkpoint = best, "best"
    if not model_file.is_file():
        hint = ("; it is written at the first epoch with a validation loss" if checkpoint == "best" and path.is_dir()
                else ": pass a run directory made by `tlkit finetune` or `tlkit train`")
        raise TlkitError(f"no model at {model_file}{hint}")
    if not RunDir(folder).labels.is_file():
        raise TlkitError(f"no labels.txt beside {model_file}: a run directory holds both")
    model = load_model(model_file)
    labels = read_labels(RunDir(folder).labels)
    outputs = model.outputs[0].shape[-1] if len(model.outputs) == 1 else None
    if outputs != len(labels):
        raise TlkitError(f"{RunDir(folder).labels} has {len(labels)} class names but {model_file} has "
                         f"{outputs if outputs is not None else len(model.outputs)} outputs: fix labels.txt to one "
                         "name a line, in the order of the model's outputs")
    recipe_file = RunDir(folder).recipe
    recipe = Recipe.load(recipe_file) if recipe_file.is_file() else Recipe()
    return with_calibration(Run(folder, model, labels, recipe, model_file, checkpoint,
                                url=str(Url(given)) if is_url(given) and Url(given).suffix != ".keras" else None))


def with_calibration(run: Run) -> Run:
    """`run` with its calibration.json and reference.npy, when its model is the run's model.keras
    (the reference features are of model.keras' base, which a finetune stage changes after
    checkpoints/best.keras was saved)."""
    files = RunDir(run.path)
    if run.model_file is not None and run.model_file.resolve() == files.model.resolve() and files.calibration.is_file():
        run.calibration = json.loads(files.calibration.read_text(encoding="utf-8"))
        if files.reference.is_file():
            run.reference = np.load(files.reference, allow_pickle=False).astype(np.float32)
    return run


def load_model(path: str | Path, safe_mode: bool = True) -> keras.Model:
    """`keras.saving.load_model` of a run's model (a run directory or a `.keras` file), with
    tlkit's own layers registered. Models of keras.applications and EfficientNet-Lite bases load
    with Keras alone; the canon's layers and TF Hub bases need tlkit (imported here)."""
    path = Path(path)
    file = RunDir(path).model if path.is_dir() else path
    try:
        register_keras_hub(file)
        return keras.saving.load_model(file, safe_mode=safe_mode)
    except TlkitError:
        raise
    except Exception as err:  # Keras raises ValueError, TypeError, OSError, zipfile and h5py errors for a bad file
        raise model_file_error(file, err) from err


def register_keras_hub(file: Path) -> None:
    """Import keras_hub, which registers its layers with Keras, and tlkit's reloadable ViT layers,
    when the model in `file` (a .keras zip) holds some (a keras_hub: base): only then, as keras_hub
    takes seconds to import."""
    import zipfile

    if not zipfile.is_zipfile(file):
        return
    with zipfile.ZipFile(file) as archive:
        if "config.json" in archive.namelist() and b"keras_hub" in archive.read("config.json"):
            try:
                import tlkit.models.keras_hub_layers  # noqa: F401  (imports keras_hub)
            except ImportError as err:
                raise TlkitError(f"{file} holds a KerasHub base: pip install 'tlkit[keras_hub]' to load it") from err


def model_file_error(file: Path, err: Exception) -> TlkitError:
    """One line for a model file that does not load: refused (it would run code) or not a model."""
    why = " ".join(str(err).split()) or type(err).__name__
    if "safe_mode" in why or "unsafe" in why.lower():
        return TlkitError(f"refused to load {file}: it holds code (a Lambda layer or a Python function), which "
                          f"tlkit never runs from a file; re-save the model without it ({why[:200]})")
    if isinstance(err, (FileNotFoundError, IsADirectoryError, PermissionError)):
        return TlkitError(f"cannot read {file}: {err.strerror or why}")
    return TlkitError(f"cannot load {file} as a Keras model: it is corrupt, truncated or not a Keras file "
                      f"({why[:300]})")


def read_thresholds(run: Run) -> np.ndarray:
    """A multi-label run's threshold of each label (RUN/thresholds.json), in the order of its labels."""
    path = RunDir(run.path).thresholds
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        return np.array([float(saved[label]) for label in run.labels], np.float32)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise TlkitError(f"cannot read the multi-label thresholds '{path}' ({error}); train the run again") from None
