"""Shared input handling and small vectorized helpers of :mod:`featharm.diagnostics`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .._validation import _show, align_covariates, batch_levels, check_features, encode_batches, get_batch, rows_of
from ..design import CovariateDesign, batch_indicators, check_full_rank
from ..exceptions import BatchError, ConstantFeatureWarning, InputError, MissingValueWarning, warn


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
    #: Observed cells (n × V bool) when the features have missing values (NaN); None for complete features.
    observed: np.ndarray | None = None
    #: For the rows without a missing feature of a table with missing values: that table's row count.
    complete_of: int | None = None
    _parts: list | None = field(default=None, repr=False)
    _complete: object = field(default=None, repr=False)

    @property
    def n(self) -> int:
        return self.Y.shape[0]

    @property
    def missing(self) -> bool:
        """True when some feature cell is missing (the per-feature tests then run on observed rows)."""
        return self.observed is not None

    @property
    def n_obs(self) -> np.ndarray:
        """Observed values per feature."""
        if self.observed is None:
            return np.full(self.Y.shape[1], self.n, dtype=np.int64)
        return self.observed.sum(axis=0).astype(np.int64)

    @property
    def m(self) -> int:
        return len(self.levels)

    @property
    def onehot(self) -> np.ndarray:
        return batch_indicators(self.codes, self.m)


def prepare(X, covariates, batch: str, formula: str | None, owner: str, *, min_per_site: int = 2) -> Prepared:
    """Check and align the inputs of a diagnostic (named errors for every user mistake).

    NaN feature cells are accepted (infinite ones are refused): ``observed`` then marks the observed cells
    and the tests run by missingness pattern (:func:`parts`, :func:`complete_rows`; ``docs/methods.md`` §6.9).
    """
    Y, index, columns, nan_cols = check_features(X, owner, index=rows_of(covariates), allow_nan=True)
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
    observed = None
    if nan_cols.any():  # missing values (docs/methods.md §6.9): per-feature tests on the observed rows
        observed = ~np.isnan(Y)
        hi = np.where(observed, Y, -np.inf).max(axis=0)
        lo = np.where(observed, Y, np.inf).min(axis=0)
        constant = observed.any(axis=0) & (hi == lo)  # one value on the observed rows (never observed: untested)
    else:
        constant = np.ptp(Y, axis=0) == 0
    if constant.any():
        names = [str(c) for c in columns[constant]]
        warn(
            f"{owner}: {len(names)} feature(s) are constant ({_show(names)}); their tests are NaN and they are "
            "left out of the multivariate checks.",
            ConstantFeatureWarning,
        )
    return Prepared(Y=Y, index=index, features=[str(c) for c in columns], covariates=cov, codes=codes,
                    levels=levels, counts=counts, Xc=Xc, design=design, batch=batch, constant=constant,
                    observed=observed)


# ------------------------------------------------------------------------------------------ missing values
#: Observed values a site needs in a feature to take part in that feature's tests (a spread to estimate).
MIN_PER_SITE = 2


@dataclass
class Part:
    """Features that share one missingness pattern, and the complete-data problem they are tested on.

    ``cols``: their columns in the full table; ``rows``: the rows used (the observed rows of the pattern,
    without the sites that have fewer than :data:`MIN_PER_SITE` of them); ``sub``: the :class:`Prepared` of
    those rows and columns (levels: the sites kept, ``sites`` their codes in the full table), or None when
    the features cannot be tested, ``reason`` saying why.
    """

    cols: np.ndarray
    rows: np.ndarray
    sub: Prepared | None
    sites: np.ndarray
    reason: str | None = None
    dropped: tuple = ()  # levels of the sites left out (fewer than MIN_PER_SITE observed values)


def restrict(P: Prepared, rows: np.ndarray, cols: np.ndarray, min_per_site: int = MIN_PER_SITE):
    """``(sub, sites, dropped, reason)``: the complete-data problem of ``P``'s ``rows`` and feature columns
    ``cols``, without the sites with fewer than ``min_per_site`` of the rows (``dropped``, their levels).

    The covariate design is ``P``'s (the full table's coding), restricted to the rows. ``sub`` is None when
    the rows cannot be tested, ``reason`` saying why: fewer than 2 sites, no more rows than parameters, or
    covariates that are constant or collinear with site on those rows.
    """
    per = np.bincount(P.codes[rows], minlength=P.m)
    sites = np.flatnonzero(per >= min_per_site)
    dropped = tuple(str(P.levels[g]) for g in np.flatnonzero(per < min_per_site))
    if len(sites) < P.m:
        rows = rows[np.isin(P.codes[rows], sites)]
    if len(sites) < 2:
        return None, sites, dropped, (f"observed in {len(sites)} site(s) with at least {min_per_site} values; "
                                      "a site effect needs 2")
    lut = np.full(P.m, -1)
    lut[sites] = np.arange(len(sites))
    codes = lut[P.codes[rows]]
    Xc = P.Xc[rows]
    n_par = len(sites) + Xc.shape[1]
    if len(rows) <= n_par:
        return None, sites, dropped, (f"{len(rows)} observed rows, too few for a model with {n_par} "
                                      "parameters")
    counts = per[sites]
    if Xc.shape[1]:
        W = np.hstack([batch_indicators(codes, len(sites)), Xc])
        if np.linalg.matrix_rank(W) < n_par:
            return None, sites, dropped, ("on its observed rows a covariate is constant or collinear with "
                                          "site")
    Y = P.Y[np.ix_(rows, cols)]
    constant = P.constant[cols] | (np.ptp(Y, axis=0) == 0)
    sub = Prepared(Y=Y, index=P.index[rows], features=[P.features[j] for j in cols],
                   covariates=P.covariates.iloc[rows], codes=codes, levels=[P.levels[g] for g in sites],
                   counts=counts, Xc=Xc, design=P.design, batch=P.batch, constant=constant)
    return sub, sites, dropped, None


def pattern_groups(observed: np.ndarray) -> list[np.ndarray]:
    """The columns of ``observed`` (n × V bool) grouped by equal column (missingness pattern), in order of
    their first column; no per-column Python loop."""
    packed = np.packbits(observed, axis=0)  # ceil(n/8) × V bytes per column
    keys = np.ascontiguousarray(packed.T).view(np.dtype((np.void, packed.shape[0]))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    inverse = inverse.ravel()
    groups = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse, minlength=first.size))
    parts = np.split(groups, bounds[:-1])
    return [parts[i] for i in order]


def parts(P: Prepared, owner: str = "diagnostics") -> list[Part]:
    """The missingness patterns of ``P``'s features and their complete-data problems (computed once per
    :class:`Prepared`; one :class:`~featharm.exceptions.MissingValueWarning` names the features tested
    without some sites and those that cannot be tested). A complete table is one part."""
    if P._parts is not None:
        return P._parts
    if P.observed is None:
        P._parts = [Part(np.arange(P.Y.shape[1]), np.arange(P.n), P, np.arange(P.m))]
        return P._parts
    out, untested, partial = [], [], []
    for cols in pattern_groups(P.observed):
        rows = np.flatnonzero(P.observed[:, cols[0]])
        if rows.size == 0:
            sub, sites, dropped, reason = None, np.zeros(0, dtype=np.intp), (), "no observed value"
        else:
            sub, sites, dropped, reason = restrict(P, rows, cols)
        if sub is not None:
            rows = rows[np.isin(P.codes[rows], sites)]
        out.append(Part(cols, rows, sub, sites, reason, dropped))
        names = [P.features[j] for j in cols]
        if reason is not None:
            untested += [f"{f!r} ({reason})" for f in names]
        elif dropped:
            partial += [f"{f!r} (without {', '.join(dropped)})" for f in names]
    msg = [f"{owner}: {int((~P.observed).sum())} feature cell(s) are missing; every feature is tested on its "
           "observed rows (column n of the tables)."]
    if partial:
        msg.append(f" Sites with fewer than {MIN_PER_SITE} observed values of a feature are left out of its "
                   f"tests: {_listed(partial)}.")
    if untested:
        msg.append(f" {len(untested)} feature(s) cannot be tested (NaN statistics): {_listed(untested)}.")
    if partial or untested:
        warn("".join(msg), MissingValueWarning)
    P._parts = out
    return out


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


def by_pattern(P: Prepared, fit, n_full: int, n_extra: int = 0):
    """``fit(sub)`` on the complete-data problem of every missingness pattern of ``P``
    (:func:`~._common.parts`), put together: its first ``n_full`` outputs are n × V arrays (NaN outside the
    rows each pattern uses), the others per-feature arrays (NaN for features that cannot be fitted)."""
    n, V = P.Y.shape
    out = [np.full((n, V), np.nan) for _ in range(n_full)] + [np.full(V, np.nan) for _ in range(n_extra)]
    for part in parts(P):
        if part.sub is None:
            continue
        got = fit(part.sub)
        for k, val in enumerate(got):
            if k < n_full:
                out[k][np.ix_(part.rows, part.cols)] = val
            else:
                out[k][part.cols] = val
    return tuple(out)


def _listed(items: list, k: int = 5) -> str:
    return ", ".join(items[:k]) + (f" and {len(items) - k} more" if len(items) > k else "")


@dataclass
class Complete:
    """The rows without a missing feature value, on which the multivariate checks run.

    ``sub``: the :class:`Prepared` of those rows (sites with fewer than 2 of them left out: ``dropped``),
    or None with ``reason``; ``rows``: their positions in the full table; ``n``: their number.
    """

    sub: Prepared | None
    rows: np.ndarray
    reason: str | None = None
    dropped: tuple = ()

    @property
    def n(self) -> int:
        return int(self.rows.size)


def complete_rows(P: Prepared, owner: str = "diagnostics") -> Complete:
    """The multivariate checks' data: ``P`` itself for complete features, else its rows without a missing
    value in any feature that has an observed value (features never observed are left out), computed once.
    A :class:`~featharm.exceptions.MissingValueWarning` names the sites left out or says why nothing can
    be tested."""
    if P.observed is None:
        return Complete(P, np.arange(P.n))
    if P._complete is not None:
        return P._complete
    seen = P.observed.any(axis=0)
    cols = np.flatnonzero(seen)
    rows = np.flatnonzero(P.observed[:, cols].all(axis=1)) if cols.size else np.zeros(0, dtype=np.intp)
    if rows.size == 0:
        sub, sites, dropped, reason = None, (), (), "no row has every feature observed"
    else:
        sub, sites, dropped, reason = restrict(P, rows, cols)
        if sub is not None:
            rows = rows[np.isin(P.codes[rows], sites)]
            sub.complete_of = P.n
    out = Complete(sub, rows if sub is not None else np.zeros(0, dtype=np.intp), reason, dropped)
    if reason is not None:
        warn(f"{owner}: the multivariate checks (PERMANOVA, MANOVA, Box's M, site classification, site mixing) use "
             "the rows "
             f"without a missing feature, and they cannot run ({rows.size} such rows of {P.n}: {reason}); "
             "their statistics are NaN. Leave out the features with the most missing cells to keep more rows.",
             MissingValueWarning)
    elif dropped:
        warn(f"{owner}: the multivariate checks use the {out.n} of {P.n} rows without a missing feature; "
             f"site(s) {', '.join(dropped)} have fewer than {MIN_PER_SITE} such rows and are left out of them "
             "(leave out the features missing there to keep them).",
             MissingValueWarning)
    P._complete = out
    return out
