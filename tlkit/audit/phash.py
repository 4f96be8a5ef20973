"""The perceptual hash of an image (pHash): the signs of the low frequencies of its cosine
transform. Resizing, re-encoding and a change of brightness or contrast move few of the 64 bits;
two different photos differ in about half of them."""
from __future__ import annotations

import numpy as np

SIZE = 32  # the grey image the transform is taken of
LOW = 8  # the LOW x LOW lowest frequencies make the hash (the constant term left out of the median)


def _dct_matrix(n: int) -> np.ndarray:
    k, m = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return np.cos(np.pi * (2 * m + 1) * k / (2 * n))


_DCT = _dct_matrix(SIZE)[:LOW]


def phash(grey: np.ndarray) -> np.ndarray:
    """The hashes (N, LOW * LOW) of grey images (N, SIZE, SIZE), as booleans."""
    low = np.einsum("km,nmp,lp->nkl", _DCT, grey.astype(np.float64), _DCT).reshape(len(grey), -1)
    median = np.median(low[:, 1:], axis=1, keepdims=True)
    return low > median


def close_pairs(hashes: np.ndarray, bits: int) -> list[tuple[int, int, int]]:
    """(i, j, distance) for every pair i < j whose hashes differ in at most `bits` bits."""
    packed = np.packbits(hashes, axis=1)
    pairs = []
    for i in range(len(packed) - 1):
        distance = np.unpackbits(packed[i] ^ packed[i + 1:], axis=1).sum(axis=1)
        pairs += [(i, i + 1 + int(j), int(distance[j])) for j in np.flatnonzero(distance <= bits)]
    return pairs
