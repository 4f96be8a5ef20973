"""tlkit: transfer learning on folders of images with Keras 3 and TensorFlow.

    import tlkit
    run = tlkit.finetune(base="vgg16", data="flowers", recipe="classic", epochs_head=3)
    tlkit.export("runs/...", "exported/flowers")

The jobs are imported on first use, so `import tlkit` (and `tlkit --help`) stays fast.
"""
from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "finetune": "tlkit.engine",
    "run_recipe": "tlkit.engine",
    "train": "tlkit.engine",
    "extract": "tlkit.engine",
    "pretrain": "tlkit.pretrain",
    "predict": "tlkit.inference",
    "evaluate": "tlkit.inference",
    "export": "tlkit.exporters",
    "load_run": "tlkit.rundir",
    "load_base": "tlkit.bases",
    "Recipe": "tlkit.recipe",
    "Stage": "tlkit.recipe",
    "get_recipe": "tlkit.recipe",
    "TlkitError": "tlkit.errors",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tlkit' has no attribute {name!r}")
