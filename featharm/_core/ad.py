"""The Anderson–Darling k-sample test of every feature at once (Scholz & Stephens 1987, midrank version).

:func:`ad_ksamp` computes, for each column of ``Y`` (samples × features), the standardized statistic
``A2akN`` of Scholz & Stephens' equation 7 (ties get mid-ranks) between the groups given by ``codes``, and
the p-value exactly as :func:`scipy.stats.anderson_ksamp` (``variant="midrank"``) interpolates it from the
tabulated critical values: a quadratic in the statistic fitted to the logarithms of the significance
levels 0.25 ... 0.001, floored at 0.001 and capped at 0.25. Columns are sorted once (NaN cells last and left
out: each feature is tested on its observed values) and the statistic is a sum over the sorted positions,
so no Python loop runs over features; the loops are over the groups and over the distinct (observed size,
group count) pairs.

A feature without two distinct observed values, or with fewer than 4 observed values or 2 non-empty groups
(where the statistic's variance is undefined), gets NaN (never significant); scipy raises there.
"""

from __future__ import annotations

import numpy as np

__all__ = ["P_CAP", "P_FLOOR", "SIGNIFICANCE", "ad_critical", "ad_ksamp"]

# Scholz & Stephens (1987), Table 2: critical values b0 + b1 / sqrt(m) + b2 / m of the standardized
# statistic with m = k - 1, at the significance levels SIGNIFICANCE (the coefficients scipy uses).
_B0 = np.array([0.675, 1.281, 1.645, 1.96, 2.326, 2.573, 3.085])
_B1 = np.array([-0.245, 0.25, 0.678, 1.149, 1.822, 2.364, 3.615])
_B2 = np.array([-0.105, -0.305, -0.362, -0.391, -0.396, -0.345, -0.154])
SIGNIFICANCE = np.array([0.25, 0.1, 0.05, 0.025, 0.01, 0.005, 0.001])
P_FLOOR, P_CAP = 0.001, 0.25

# Cells (rows × features) of the block of features computed at once: its dozen temporaries fit in cache.
_BLOCK_CELLS = 2 ** 16


def ad_critical(k: int) -> np.ndarray:
    """The critical values of the standardized statistic for ``k`` groups at :data:`SIGNIFICANCE`."""
    m = k - 1
    return _B0 + _B1 / np.sqrt(m) + _B2 / m


def _variance(N: float, n: np.ndarray) -> float:
    """Variance of ``A2akN`` under the null for group sizes ``n`` (all > 0) summing to ``N`` (Scholz &
    Stephens, equations 4-5)."""
    k = n.size
    H = (1.0 / n).sum()
    hs = (1.0 / np.arange(N - 1, 1, -1)).cumsum()
    h = hs[-1] + 1
    g = (hs / np.arange(2, N)).sum()
    a = (4 * g - 6) * (k - 1) + (10 - 6 * g) * H
    b = (2 * g - 4) * k ** 2 + 8 * h * k + (2 * g - 14 * h - 4) * H - 8 * h + 4 * g - 6
    c = (6 * h + 2 * g - 2) * k ** 2 + (4 * h - 4 * g + 6) * k + (2 * h - 6) * H + 4 * h
    d = (2 * h + 6) * k ** 2 - 4 * h * k
    return (a * N ** 3 + b * N ** 2 + c * N + d) / ((N - 1.0) * (N - 2.0) * (N - 3.0))


def ad_ksamp(Y: np.ndarray, codes: np.ndarray, n_groups: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Standardized Anderson–Darling k-sample statistics and p-values of every column of ``Y``.

    Parameters
    ----------
    Y : (n, p) array
        Values; NaN cells are left out of their feature's test.
    codes : (n,) int array
        Group of each row, ``0 .. n_groups - 1``.
    n_groups : int, optional
        Number of groups (default ``codes.max() + 1``). Groups without observed values of a feature are
        left out of that feature's test (k is the number of non-empty groups).

    Returns
    -------
    statistic, pvalue : (p,) arrays
        ``(A2akN - (k - 1)) / sd`` and the interpolated p-value in ``[0.001, 0.25]`` (NaN where the test is
        undefined, see the module docstring).
    """
    Y = np.asarray(Y, dtype=np.float64)
    n, p = Y.shape
    codes = np.asarray(codes)
    k_all = int(codes.max()) + 1 if n_groups is None else int(n_groups)
    A2, sizes, N, distinct = np.zeros(p), np.zeros((k_all, p)), np.zeros(p, dtype=np.int64), np.zeros(p, dtype=np.int64)
    width = max(1, _BLOCK_CELLS // max(n, 1))  # features per block: its temporaries stay in cache
    for lo in range(0, p, width):
        blk = slice(lo, min(lo + width, p))
        A2[blk], sizes[:, blk], N[blk], distinct[blk] = _ad_block(Y[:, blk], codes, k_all)
    k = (sizes > 0).sum(axis=0)
    stat = np.full(p, np.nan)
    pval = np.full(p, np.nan)
    ok = (N >= 4) & (k >= 2) & (distinct >= 2)
    if not ok.any():
        return stat, pval
    # the null variance depends on the observed sizes only: once per distinct size pattern
    pattern = np.vstack([sizes, k[None, :]])[:, ok].T
    uniq, inverse = np.unique(pattern, axis=0, return_inverse=True)
    cols = np.flatnonzero(ok)
    for u, row in enumerate(uniq):
        ku = int(row[-1])
        nu = row[:-1][row[:-1] > 0]
        sel = cols[inverse.reshape(-1) == u]
        m = ku - 1
        stat[sel] = (A2[sel] - m) / np.sqrt(_variance(float(nu.sum()), nu))
        crit = ad_critical(ku)
        fit = np.polyfit(crit, np.log(SIGNIFICANCE), 2)  # scipy's interpolation of the significance level
        t = stat[sel]
        pv = np.exp(np.polyval(fit, t))
        pv = np.where(t < crit.min(), P_CAP, np.where(t > crit.max(), P_FLOOR, pv))
        pval[sel] = pv
    return stat, pval


def _ad_block(Y: np.ndarray, codes: np.ndarray, k_all: int):
    """``A2akN`` of each column of ``Y`` (a block of features), the observed size of each group, the observed
    values and the distinct observed values of each column."""
    n, p = Y.shape
    order = np.argsort(np.asfortranarray(Y), axis=0)  # NaN last
    S = np.take_along_axis(Y, order, axis=0)
    valid = ~np.isnan(S)
    N = valid.sum(axis=0)  # observed values per feature
    labels = codes[order]
    rows = np.arange(n)[:, None]
    # tie groups of equal observed values: where each starts, where it ends (exclusive)
    start = valid.copy()
    start[1:] &= S[1:] != S[:-1]
    no_ties = bool((start == valid).all())  # every observed value distinct: each group is one row
    Nf = N.astype(np.float64)[None, :]
    if no_ties:
        end, lj = rows + 1, 1.0
    else:
        pos = np.where(start, rows, n)
        nxt = np.minimum.accumulate(pos[::-1], axis=0)[::-1]  # first start at or after each row
        end = np.minimum(np.vstack([nxt[1:], np.full((1, p), n)]), N[None, :])
        lj = (end - rows).astype(np.float64)  # group size (at the starts)
    Bj = rows + lj / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        weight = np.where(start, lj / Nf / (Bj * (Nf - Bj) - Nf * lj / 4.0), 0.0)  # zero outside the starts
    A2 = np.zeros(p)
    sizes = np.zeros((k_all, p))
    cnt = np.zeros((n + 1, p))
    for i in range(k_all):
        inside = (labels == i) & valid
        np.cumsum(inside, axis=0, out=cnt[1:])
        ni = cnt[-1].copy()
        sizes[i] = ni
        before = cnt[:-1]  # values of group i below each row
        if no_ties:  # ... equal to it: the row itself
            Mij = before + inside * 0.5
        else:
            Mij = before + (np.take_along_axis(cnt, np.where(start, end, rows), axis=0) - before) * 0.5
        Mij *= Nf
        Mij -= Bj * ni
        Mij *= Mij
        with np.errstate(divide="ignore", invalid="ignore"):  # a feature without a test: NaN, never counted
            Mij *= weight
            A2 += np.where(ni > 0, Mij.sum(axis=0) / ni, 0.0)
    A2 *= (N - 1.0) / np.where(N > 0, N, 1)
    return A2, sizes, N, start.sum(axis=0)
