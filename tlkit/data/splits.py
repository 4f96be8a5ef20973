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
