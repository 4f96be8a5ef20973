"""What transfer is worth on real data: the digits sample, 10 labelled images per target class.

Source task: digits 0-4 (every image, labelled). Target task: digits 5-9, with 10 labelled
images per class drawn by the seed; every other target image is held out for testing. Each arm
goes through the engine and is scored with `tlkit.evaluate` on the held-out images:

  scratch      LeNet-5 trained from random weights on the 50 target images (`tlkit train`)
  source       LeNet-5 trained on the source task (`tlkit train`); its convolutional base
               (C1-S4, the zoo's include_top=False) with those weights is the base of a head
               stage, then a finetune stage of every block, on the target (`tlkit finetune
               --base lenet5 --weights SOURCE_RUN`)
  autoencoder  a conv autoencoder pretrained without labels on every digit image; its encoder
               is the base of the same head and finetune stages (one recipe: autoencoder,
               head, finetune)

For scale, `pixels` is no network at all: each held-out image takes the label of its nearest
labelled image in raw pixels (1-nearest-neighbour).

The head flattens the base's feature map (`--pooling flatten`) unless told otherwise: see
BENCHMARKS.md for why global average pooling loses here.

    PYTHONPATH=. python bench/transfer_digits.py --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from tlkit.data import pipeline as tldata  # noqa: E402
from tlkit.data.folders import scan  # noqa: E402
from tlkit.evaluation.predict import evaluate  # noqa: E402
from tlkit.jobs import finetune, train  # noqa: E402
from tlkit.recipe.schema import Recipe, Stage  # noqa: E402

DIGITS = Path(__file__).resolve().parent.parent / "data_samples" / "digits"
SOURCE, TARGET = "01234", "56789"


def link_folder(root: Path, files: dict[str, list[Path]]) -> Path:
    """A class-folder dataset of symbolic links: root/<class>/<file>."""
    for label, paths in files.items():
        (root / label).mkdir(parents=True)
        for path in paths:
            (root / label / path.name).symlink_to(path)
    return root


def make_tasks(root: Path, seed: int, labelled: int) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    source = {d: sorted((DIGITS / d).glob("*.png")) for d in SOURCE}
    train_files, test_files = {}, {}
    for d in TARGET:
        files = sorted((DIGITS / d).glob("*.png"))
        chosen = set(rng.choice(len(files), labelled, replace=False).tolist())
        train_files[d] = [f for i, f in enumerate(files) if i in chosen]
        test_files[d] = [f for i, f in enumerate(files) if i not in chosen]
    return {
        "source": link_folder(root / "source", source),
        "train": link_folder(root / "target_train", train_files),
        "test": link_folder(root / "target_test", test_files),
    }


def transfer_recipe(args, data: Path, seed: int, blocks: int, first: list[Stage] = ()) -> Recipe:
    """Head, then finetune of all `blocks` blocks, on the labelled images (which also serve as the
    validation set: there are no others)."""
    return Recipe(
        name="transfer", data=str(data), val_data=str(data), image_size=32, batch_size=16, seed=seed,
        dropout=args.dropout, pooling=args.pooling, val_split=0.1,  # the autoencoder's own split
        stages=[*first, Stage("head", epochs=args.head_epochs, learning_rate=args.head_lr),
                Stage("finetune", epochs=args.finetune_epochs, learning_rate=args.finetune_lr, unfreeze=blocks)],
    )


def nearest_neighbour(train: Path, test: Path) -> float:
    """Accuracy on `test` of 1-nearest-neighbour on raw pixels, the labelled images of `train` as reference."""
    def load(folder: Path):
        images = scan(folder)
        return tldata.load_images(images.files, (8, 8), 1).reshape(len(images), -1), np.asarray(images.labels)

    (x, y), (q, truth) = load(train), load(test)
    distances = (q ** 2).sum(1)[:, None] - 2 * q @ x.T + (x ** 2).sum(1)[None]
    return float((y[distances.argmin(1)] == truth).mean())


def one_seed(args, seed: int, root: Path) -> dict[str, float]:
    tasks = make_tasks(root, seed, args.labelled)
    results = {"pixels": nearest_neighbour(tasks["train"], tasks["test"])}
    timings = {"pixels": 0.0}

    start = time.perf_counter()
    train("lenet5", data=str(tasks["train"]), out=root / "scratch", verbose=0, val_data=str(tasks["train"]),
          stages={"train": {"epochs": args.scratch_epochs, "learning_rate": args.scratch_lr}}, batch_size=16, seed=seed,
          image_size=32)
    results["scratch"] = evaluate(root / "scratch", tasks["test"])["accuracy"]
    timings["scratch"] = time.perf_counter() - start

    start = time.perf_counter()
    train("lenet5", data=str(tasks["source"]), out=root / "source_pretrain", verbose=0, val_split=0.1,
          stages={"train": {"epochs": args.source_epochs, "learning_rate": args.scratch_lr}}, batch_size=32, seed=seed,
          image_size=32)
    finetune(base="lenet5", weights=str(root / "source_pretrain"),
             recipe=transfer_recipe(args, tasks["train"], seed, 2), out=root / "source", verbose=0)
    results["source"] = evaluate(root / "source", tasks["test"])["accuracy"]
    timings["source"] = time.perf_counter() - start

    start = time.perf_counter()
    pretraining = Stage("autoencoder", epochs=args.ae_epochs, learning_rate=args.ae_lr, decoder=args.decoder,
                        noise=args.noise, channels=1, data=str(DIGITS))
    finetune(recipe=transfer_recipe(args, tasks["train"], seed, 3, [pretraining]), out=root / "autoencoder", verbose=0)
    results["autoencoder"] = evaluate(root / "autoencoder", tasks["test"])["accuracy"]
    timings["autoencoder"] = time.perf_counter() - start
    print(f"seed {seed}: " + "  ".join(f"{k} {v:.4f} ({timings[k]:.0f} s)" for k, v in results.items()), flush=True)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--labelled", type=int, default=10, help="labelled target images per class")
    parser.add_argument("--scratch-epochs", type=int, default=300)
    parser.add_argument("--scratch-lr", type=float, default=1e-3)
    parser.add_argument("--source-epochs", type=int, default=20)
    parser.add_argument("--head-epochs", type=int, default=50)
    parser.add_argument("--head-lr", type=float, default=1e-2)
    parser.add_argument("--finetune-epochs", type=int, default=50)
    parser.add_argument("--finetune-lr", type=float, default=1e-3)
    parser.add_argument("--pooling", default="flatten", choices=["avg", "max", "flatten"])
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--ae-epochs", type=int, default=20)
    parser.add_argument("--ae-lr", type=float, default=1e-3)
    parser.add_argument("--decoder", default="unpool", choices=["unpool", "transpose"])
    parser.add_argument("--noise", type=float, default=0.0)
    parser.add_argument("--keep", type=Path, help="keep the run directories here")
    parser.add_argument("--json", type=Path, help="write the per-seed accuracies here")
    args = parser.parse_args()

    rows = []
    for seed in args.seeds:
        if args.keep:
            root = args.keep / f"seed{seed}"
            root.mkdir(parents=True)
            rows.append(one_seed(args, seed, root))
        else:
            with tempfile.TemporaryDirectory() as tmp:
                rows.append(one_seed(args, seed, Path(tmp)))
    print(f"\naccuracy on held-out target images (digits 5-9), {args.labelled} labelled images per class, "
          f"{len(rows)} seeds (mean ± std):")
    for arm in rows[0]:
        values = np.array([r[arm] for r in rows])
        print(f"  {arm:12s} {values.mean():.4f} ± {values.std(ddof=1) if len(values) > 1 else 0:.4f}   "
              + " ".join(f"{v:.4f}" for v in values))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
