"""Shared input handling and small vectorized helpers of :mod:`featharm.diagnostics`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from .._validation import _show, align_covariates, batch_levels, check_features, encode_batches, get_batch, rows_of
from ..design import CovariateDesign, batch_indicators, check_full_rank
from ..exceptions import BatchError, ConstantFeatureWarning, InputError, warn


@dataclass
class Prepared:
    """Validated inputs: features ``Y`` (n × V), batch codes, covariate block ``Xc`` (n × q, no intercept)."""

    Y: np.ndarray
    index: pd.Index
    features: list
    covariates: pd.DataFrame
    codes: np.ndarray
    levels: list
    counts: np.ndarray
    Xc: np.ndarray
    design: CovariateDesign
    batch: str
    constant: np.ndarray  # bool per feature: the same value in every row (no test is defined)

    @property
    def n(self) -> int:
        return self.Y.shape[0]

    @property
    def m(self) -> int:
        return len(self.levels)

    @property
    def onehot(self) -> np.ndarray:
        return batch_indicators(self.codes, self.m)


def prepare(X, covariates, batch: str, formula: str | None, owner: str, *, min_per_site: int = 2) -> Prepared:
    """Check and align the inputs of a diagnostic (named errors for every user mistake)."""
    Y, index, columns = check_features(X, owner, index=rows_of(covariates))
    cov = align_covariates(index, covariates, owner)
    s = get_batch(cov, batch)
    levels = batch_levels(s)
    codes = encode_batches(s, levels, batch)
    counts = np.bincount(codes, minlength=len(levels))
    if len(levels) < 2:
        raise BatchError(
            f"site-effect diagnostics need at least 2 batches in {batch!r}; found only {levels}."
        )
    small = [f"{lv!r} (n={c})" for lv, c in zip(levels, counts) if c < min_per_site]
    if small:
        raise BatchError(
            f"batch(es) of {batch!r} with fewer than {min_per_site} rows: {', '.join(small)}; their spread "
            "cannot be estimated. Merge or drop them before running the diagnostics."
        )
    design, Xc = CovariateDesign.fit(formula, cov, exclude=(batch,))
    check_full_rank(batch_indicators(codes, len(levels)), Xc, design.columns, batch)
    n_par = len(levels) + Xc.shape[1]
    if len(codes) <= n_par:
        raise InputError(
            f"{owner}: {len(codes)} rows are too few for a model with {n_par} parameters "
            f"({len(levels)} batches + {Xc.shape[1]} covariate columns)."
        )
    constant = np.ptp(Y, axis=0) == 0
    if constant.any():
        names = [str(c) for c in columns[constant]]
        warn(
            f"{owner}: {len(names)} feature(s) are constant ({_show(names)}); their tests are NaN and they are "
            "left out of the multivariate checks.",
            ConstantFeatureWarning,
        )
    return Prepared(Y=Y, index=index, features=[str(c) for c in columns], covariates=cov, codes=codes,
                    levels=levels, counts=counts, Xc=Xc, design=design, batch=batch, constant=constant)


def group_sums(onehot: np.ndarray, A: np.ndarray) -> np.ndarray:
    """Per-batch column sums (m × V) of ``A`` (n × V)."""
    return onehot.T @ A


def group_medians(A: np.ndarray, codes: np.ndarray, m: int) -> np.ndarray:
    """Per-batch column medians (m × V)."""
    return np.stack([np.median(A[codes == g], axis=0) for g in range(m)])


def oneway_f(Z: np.ndarray, onehot: np.ndarray, counts: np.ndarray):
    """One-way ANOVA of every column of ``Z`` on the batch: ``(F, df1, df2, eta²)``, vectorized."""
    n, m = Z.shape[0], onehot.shape[1]
    means = group_sums(onehot, Z) / counts[:, None]
    grand = Z.mean(axis=0)
    ssb = (counts[:, None] * (means - grand) ** 2).sum(axis=0)
    sst = ((Z - grand) ** 2).sum(axis=0)
    ssw = sst - ssb
    df1, df2 = m - 1, n - m
    with np.errstate(divide="ignore", invalid="ignore"):
        F = (ssb / df1) / (ssw / df2)
        eta = ssb / sst
    return F, float(df1), float(df2), eta


def rank_columns(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average ranks of every column (ties get their mid-rank) and the tie term ``sum(t^3 - t)`` per column.

    Vectorized over columns, ties included: in each sorted column a run of ``t`` equal values from sorted
    position ``s`` to ``e`` gets the mid-rank ``(s + e)/2 + 1`` (an exact half-integer, as
    ``scipy.stats.rankdata(method="average")``) and adds ``t^3 - t`` to the tie term. (Residuals of an even
    site tie at its median in every column: a per-column fallback cost most of Fligner–Killeen's time.)
    """
    n, V = A.shape
    order = np.argsort(A, axis=0)
    S = np.take_along_axis(A, order, axis=0)
    R = np.empty((n, V))
    eq = S[1:] == S[:-1]  # eq[i, j]: sorted values i and i + 1 of column j tie
    tied = np.flatnonzero(eq.any(axis=0))
    tie_term = np.zeros(V)
    pos = np.arange(1.0, n + 1.0)
    if tied.size == 0:
        np.put_along_axis(R, order, pos[:, None], axis=0)
        return R, tie_term
    ranks = np.broadcast_to(pos[:, None], (n, V)).copy()
    E = eq[:, tied]
    idx = np.arange(n)[:, None]
    start = np.zeros((n, tied.size), dtype=np.intp)  # first sorted position of each value's run
    start[1:] = np.where(E, 0, idx[1:])
    np.maximum.accumulate(start, axis=0, out=start)
    end = np.full((n, tied.size), n - 1, dtype=np.intp)  # last sorted position of each value's run
    end[:-1] = np.where(E, n - 1, idx[:-1])
    end = np.minimum.accumulate(end[::-1], axis=0)[::-1]
    ranks[:, tied] = (start + end) / 2.0 + 1.0
    t = (end - start + 1).astype(float)
    tie_term[tied] = (t * t - 1.0).sum(axis=0)  # each of a run's t positions adds t^2 - 1: t^3 - t per run
    np.put_along_axis(R, order, ranks, axis=0)
    return R, tie_term


def bh_fdr(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (NaN kept as NaN, excluded from the family)."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    q = p[ok]
    k = q.size
    if k == 0:
        return out
    order = np.argsort(q)
    ranked = q[order] * k / np.arange(1, k + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    adj = np.empty(k)
    adj[order] = np.minimum(ranked, 1.0)
    out[ok] = adj
    return out


def bonferroni(p: np.ndarray) -> np.ndarray:
    """Bonferroni adjusted p-values, ``min(1, k p)`` with k the number of finite p-values."""
    p = np.asarray(p, dtype=float)
    k = int(np.isfinite(p).sum())
    return np.minimum(p * k, 1.0)
