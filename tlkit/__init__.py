"""tlkit: transfer learning on folders of images with Keras 3 and TensorFlow.

    import tlkit
    run = tlkit.finetune(base="vgg16", data="flowers", recipe="classic", stages={"head": {"epochs": 3}})
    tlkit.export("runs/...", "exported/flowers")

The jobs are imported on first use, so `import tlkit` (and `tlkit --help`) stays fast: no
TensorFlow until a job runs. A run's `model.keras` loads with `keras.saving.load_model`; one that
holds tlkit's own layers (the canon's, TF Hub bases) loads once tlkit is imported: its layers are
registered at once if Keras is loaded, else as soon as Keras is.
"""
import importlib.abc
import importlib.util
import sys
from importlib import import_module

__version__ = "0.1.0"

# No name here is also the name of a submodule: importing a submodule sets the package attribute
# of its name, which would replace the function.
_LAZY = {
    "finetune": "tlkit.jobs",
    "train": "tlkit.jobs",
    "extract": "tlkit.jobs",
    "pretrain": "tlkit.jobs",
    "run_recipe": "tlkit.jobs",  # jobs registers the stage kinds
    "resolve": "tlkit.jobs",
    "lr_find": "tlkit.lrfind",
    "audit": "tlkit.audit",
    "predict": "tlkit.evaluation.predict",
    "evaluate": "tlkit.evaluation.predict",
    "export": "tlkit.exporters",
    "load_run": "tlkit.rundir.load",
    "load_model": "tlkit.rundir.load",
    "load_base": "tlkit.bases",
    "Recipe": "tlkit.recipe.schema",
    "Stage": "tlkit.recipe.schema",
    "get_recipe": "tlkit.recipe.schema",
    "TlkitError": "tlkit.errors",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tlkit' has no attribute {name!r}")


_REGISTERS_LAYERS = "tlkit.rundir.load"  # imports every module that registers Keras-serializable objects


class _RegisterWhenKerasLoads(importlib.abc.MetaPathFinder):
    """Registers tlkit's layers right after Keras is first imported, so that `import tlkit`
    itself stays free of TensorFlow and `keras.saving.load_model` still finds the layers."""

    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            exec_module = spec.loader.exec_module

            def exec_then_register(module):
                exec_module(module)
                import_module(_REGISTERS_LAYERS)

            spec.loader.exec_module = exec_then_register
        return spec


if "keras" in sys.modules:
    import_module(_REGISTERS_LAYERS)
elif not any(isinstance(finder, _RegisterWhenKerasLoads) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenKerasLoads())
