"""The train/validation split: seeded, stratified, computed in one place."""
from __future__ import annotations

import numpy as np

from tlkit.data.folders import ImageSet, n_images
from tlkit.errors import TlkitError


def split(images: ImageSet, val_split: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """A seeded, stratified train/validation split: each class gives `val_split` of its images
    (rounded, at least one) to validation and keeps at least one for training. A scanned set holds
    each file content once, so no content lands on both sides."""
    if not 0 < val_split < 1:
        raise TlkitError(f"validation split must be between 0 and 1, got {val_split}")
    if images.multilabel:
        val = _iterative(images.multi_hot(), val_split, np.random.default_rng(seed))
        return images.subset(np.flatnonzero(~val).tolist()), images.subset(np.flatnonzero(val).tolist())
    labels = np.asarray(images.labels)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label, name in enumerate(images.classes):
        members = np.flatnonzero(labels == label)
        if len(members) == 0:
            continue
        if len(members) < 2:
            raise TlkitError(
                f"class '{name}' has {n_images(len(members))}; need at least 2 to split, or pass --val-data"
            )
        n_val = min(max(round(len(members) * val_split), 1), len(members) - 1)
        members = rng.permutation(members)
        val += members[:n_val].tolist()
        train += members[n_val:].tolist()
    return images.subset(sorted(train)), images.subset(sorted(val))


def _iterative(targets: np.ndarray, val_split: float, rng: np.random.Generator) -> np.ndarray:
    """Which images go to validation, by iterative stratification (Sechidis, Tsoumakas and Vlahavas,
    2011): the rarest label still unplaced is placed first, each of its images into the side that
    most lacks that label (then images overall; then at random), so every label is split as near
    `val_split` as the label combinations allow. Images without a label fill the side that lacks
    most images. Returns a boolean mask, True for validation."""
    n = len(targets)
    order = rng.permutation(n)  # seeded tie-breaking between images of one label
    targets = targets[order] > 0
    wanted = np.array([1 - val_split, val_split])[:, None] * targets.sum(axis=0)  # (side, label)
    total = np.array([1 - val_split, val_split]) * n
    side = np.full(n, -1)
    while (unplaced := (side < 0) & targets.any(axis=1)).any():
        remaining = targets[unplaced].sum(axis=0)
        label = np.flatnonzero(remaining == remaining[remaining > 0].min())[0]
        for i in np.flatnonzero(unplaced & targets[:, label]):
            best = np.lexsort((rng.random(2), -total, -wanted[:, label]))[0]
            side[i] = best
            wanted[best] -= targets[i]
            total[best] -= 1
    for i in np.flatnonzero(side < 0):
        side[i] = np.lexsort((rng.random(2), -total))[0]
        total[side[i]] -= 1
    val = np.zeros(n, bool)
    val[order[side == 1]] = True
    return val
