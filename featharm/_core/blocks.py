"""Feature blocks of bounded memory (one place for the block size rule)."""

from __future__ import annotations

import numpy as np

__all__ = ["iter_blocks", "column_variance"]


def iter_blocks(p: int, n: int, target_bytes: int = 8 * 2**20):
    """Yield slices of ``range(p)`` so that an ``n × block`` float64 array stays near ``target_bytes``."""
    size = max(1, min(p, target_bytes // max(1, 8 * n)))
    for start in range(0, p, size):
        yield slice(start, min(p, start + size))


def column_variance(Y: np.ndarray) -> np.ndarray:
    """Variance (ddof 0) of every column of ``Y``, in blocks of columns (no n × p temporary)."""
    n, p = Y.shape
    out = np.empty(p)
    for blk in iter_blocks(p, n):
        out[blk] = Y[:, blk].var(axis=0)
    return out
