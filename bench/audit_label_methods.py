"""Which out-of-fold head and which cleanlab selection find flipped labels best: the sample photos
(240, 6 classes) with 10% of their labels flipped as tests/audit/test_audit.py flips them, for
each seed, scored by precision and recall against the flips; and how many images each flags
with no flips. Features of efficientnet_lite0 at each --size (`+`: averaged with the mirrored
image's), computed once; the heads and selections are NumPy and scikit-learn only.

    PYTHONPATH=. python bench/audit_label_methods.py --sizes 64 64+ 224
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np

SAMPLES = Path(__file__).resolve().parents[1] / "data_samples" / "photos"
HEADS = {"standardised C=0.3": ("std", 0.3), "L2-normalised C=10": ("l2", 10.0)}


def features(sizes: list[str], files: list[Path]) -> dict[str, np.ndarray]:
    from tlkit.bases import load_base
    from tlkit.data.pipeline import load_images
    from tlkit.engine.frozen import pooled_model

    out = {}
    for name in sizes:
        side = int(name.rstrip("+"))
        pooled = pooled_model(load_base("efficientnet_lite0", image_size=(side, side)).model)
        images = load_images(files, (side, side), 3)
        found = pooled.predict(images, batch_size=32, verbose=0)
        if name.endswith("+"):
            found = (found + pooled.predict(images[:, :, ::-1], batch_size=32, verbose=0)) / 2
        out[name] = found
    return out


def flipped(labels: np.ndarray, seed: int, n_classes: int) -> tuple[np.ndarray, set[int]]:
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(labels), size=len(labels) // 10, replace=False)
    out = labels.copy()
    for i in chosen:
        out[i] = rng.choice([c for c in range(n_classes) if c != labels[i]])
    return out, set(chosen.tolist())


def out_of_fold(x, y, head, seed=0):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler

    kind, c = head
    model = make_pipeline(StandardScaler() if kind == "std" else Normalizer(), LogisticRegression(max_iter=2000, C=c))
    return cross_val_predict(model, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=seed), method="predict_proba")


def selections():
    from cleanlab.count import num_label_issues
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    def filtered(by):
        return lambda y, p: set(np.flatnonzero(find_label_issues(y, p, filter_by=by)).tolist())

    def ranked(y, p):  # lowest self-confidence, as many as confident learning counts, another class predicted
        quality = get_label_quality_scores(y, p, method="self_confidence")
        count = num_label_issues(y, p, estimation_method="off_diagonal_calibrated")
        return {int(i) for i in np.argsort(quality, kind="stable")[:count] if p[i].argmax() != y[i]}

    return {"find_label_issues both": filtered("both"), "confident_learning": filtered("confident_learning"),
            "ranked by quality, counted": ranked}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="+", default=["64", "224"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    files = sorted(SAMPLES.glob("*/*.jpg"))
    classes = sorted({f.parent.name for f in files})
    labels = np.array([classes.index(f.parent.name) for f in files])
    print("| features | head | selection | precision, each seed | recall, each seed | P min | R min | flagged, no flips |")
    print("|---|---|---|---|---|---:|---:|---:|")
    for size, x in features(args.sizes, files).items():
        for head_name, head in HEADS.items():
            clean = out_of_fold(x, labels, head)
            runs = [flipped(labels, seed, len(classes)) for seed in args.seeds]
            probs = [out_of_fold(x, y, head) for y, _ in runs]
            for name, select in selections().items():
                scores = []
                for (y, truth), p in zip(runs, probs):
                    found = select(y, p)
                    hits = len(found & truth)
                    scores.append((hits / max(len(found), 1), hits / len(truth)))
                p_, r_ = np.array(scores).T
                print(f"| {size} px | {head_name} | {name} | {' '.join(f'{v:.2f}' for v in p_)} | "
                      f"{' '.join(f'{v:.2f}' for v in r_)} | {p_.min():.2f} | {r_.min():.2f} | "
                      f"{len(select(labels, clean))} |", flush=True)


if __name__ == "__main__":
    main()
