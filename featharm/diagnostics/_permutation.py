"""Permutation nulls of the site classification: label permutations inside the cells of the CV folds, and
Besag–Clifford sequential stopping (``docs/methods.md`` §6.5)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Besag–Clifford's h: a p-value is decided once this many permuted statistics reach the observed one.
STOP_AFTER = 10


def cv_cells(splits, n: int, n_splits: int) -> np.ndarray:
    """Cell of every row: the tuple of its test folds over the repeats, as one integer.

    ``splits`` lists ``n_repeats × n_splits`` (train, test) pairs, repeat by repeat. Two rows share a cell
    when they are in the same fold in every repeat, so permuting labels inside cells leaves every training
    and test fold with the same rows and the same number of rows per label.
    """
    folds = np.zeros((n, max(1, len(splits) // n_splits)), dtype=np.int64)
    for i, (_, test) in enumerate(splits):
        folds[test, i // n_splits] = i % n_splits
    return np.unique(folds, axis=0, return_inverse=True)[1].ravel()


class CellPermuter:
    """Random permutations of unit labels inside cells.

    ``labels`` and ``cells`` are per unit (a row, or a subject whose rows share a site and a cell);
    ``expand`` maps units to rows (None: units are rows). Each call of :meth:`draw` consumes one
    ``rng.random(n_units)`` and returns the permuted row labels: every cell keeps its multiset of labels.
    """

    def __init__(self, labels: np.ndarray, cells: np.ndarray, expand: np.ndarray | None = None):
        self.labels = np.asarray(labels)
        self.cells = np.asarray(cells, dtype=float)
        self.base = np.argsort(self.cells, kind="stable")
        self.expand = expand

    def draw(self, rng) -> np.ndarray:
        order = np.argsort(self.cells + rng.random(self.labels.size))  # by cell, random inside a cell
        out = np.empty_like(self.labels)
        out[self.base] = self.labels[order]
        return out if self.expand is None else out[self.expand]


@dataclass
class SequentialNull:
    """The permutation null of ``k`` statistics with Besag–Clifford stopping.

    Attributes: ``null`` (L × k, the permutations kept), ``p`` (k), ``decided`` (k, bool: stopped by h),
    ``n_run`` (L), ``n_max``.
    """

    null: np.ndarray
    p: np.ndarray
    decided: np.ndarray
    n_run: int
    n_max: int


def sequential_null(observed, draw_block, n_max: int, stop_after: int | None = STOP_AFTER, bar=None,
                    first_block: int = 20, max_block: int = 100, tol: float = 1e-12) -> SequentialNull:
    """Permutation p-values of the statistics ``observed`` (larger = more extreme), with sequential stopping.

    ``draw_block(B)`` returns the statistics of the next ``B`` permutations (B × k), drawn one after the
    other, so the result does not depend on the block sizes. Without ``stop_after`` (None or 0) all
    ``n_max`` permutations run and ``p = (1 + #{null >= observed})/(1 + n_max)``. With ``stop_after = h``
    (Besag & Clifford 1991), statistic j is decided at the permutation ``L_j`` where the h-th permuted
    value reaching it appears, ``p_j = h / L_j``; the run stops when every statistic is decided (at
    ``max_j L_j``; permutations computed beyond it are dropped) or at ``n_max``, where an undecided statistic
    gets ``(1 + #exceed)/(1 + n_max)``. Both are valid p-values: ``P(p <= u) <= u`` under the null.
    """
    obs = np.atleast_1d(np.asarray(observed, dtype=float))
    k = obs.size
    h = int(stop_after) if stop_after else 0
    parts, done, block = [], 0, first_block
    while done < n_max:
        B = min(block, n_max - done)
        vals = np.asarray(draw_block(B), dtype=float).reshape(B, k)
        parts.append(vals)
        done += B
        if bar is not None:
            bar.update(B)
        block = min(2 * block, max_block)
        if h and (np.count_nonzero(np.concatenate(parts) >= obs - tol, axis=0) >= h).all():
            break
    null = np.concatenate(parts) if parts else np.empty((0, k))
    hits = null >= obs - tol
    cum = np.cumsum(hits, axis=0)
    decided = np.zeros(k, dtype=bool)
    L = np.full(k, n_max)
    if h:
        for j in range(k):
            at = np.flatnonzero(cum[:, j] == h)
            if at.size:
                decided[j], L[j] = True, at[0] + 1
    n_run = int(L.max()) if decided.all() else n_max
    null = null[:n_run]
    if bar is not None and done < n_max:
        bar.update(n_max - done)  # decided early: the bar ends
    exceed = np.count_nonzero(null >= obs - tol, axis=0)
    p = np.where(decided, h / np.maximum(L, 1), (1.0 + exceed) / (1.0 + n_max)) if n_max > 0 else np.full(k, np.nan)
    return SequentialNull(null=null, p=p, decided=decided, n_run=n_run if n_max > 0 else 0, n_max=n_max)
