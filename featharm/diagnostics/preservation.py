"""Preservation of biology (``docs/methods.md`` §6.6): covariate effects before and after harmonization.

Before: ``y ~ covariates + site`` on the raw data (site as a fixed effect, the reference analysis).
After: ``y* ~ covariates`` on the harmonized data. One QR per model for all features.
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import stats

from .._validation import align_covariates, check_features
from ..exceptions import AlignmentError
from ._common import Prepared, bh_fdr, parts, prepare
from ._parallel import sized_by_features

__all__ = ["Preservation", "biology_preservation", "PRESERVATION_COLUMNS", "PRESERVATION_SUMMARY_COLUMNS"]

#: Columns of :attr:`Preservation.table`.
PRESERVATION_COLUMNS = ["feature", "covariate", "n", "t_before", "t_after", "df_before", "df_after", "p_before",
                        "p_after", "p_fdr_before", "p_fdr_after", "partial_r2_before", "partial_r2_after",
                        "cohen_d_before", "cohen_d_after", "delta_partial_r2"]
#: Columns of :attr:`Preservation.summary`.
PRESERVATION_SUMMARY_COLUMNS = ["covariate", "n_features", "pearson_t", "ccc_t", "ccc_partial_r2",
                                "n_sig_fdr_before", "n_sig_fdr_after", "n_sig_fdr_both",
                                "median_partial_r2_before", "median_partial_r2_after"]


class Preservation(NamedTuple):
    """``table`` (one row per feature × covariate column) and ``summary`` (one row per covariate column)."""

    table: pd.DataFrame
    summary: pd.DataFrame


def coef_t(W: np.ndarray, Y: np.ndarray, cols: slice) -> tuple[np.ndarray, int]:
    """t statistics of the columns ``cols`` of ``W`` for every feature (one QR): ``(t (q × V), df)``."""
    Q, R = np.linalg.qr(W, mode="reduced")
    QtY = Q.T @ Y
    coef = np.linalg.solve(R, QtY)
    resid = Y - Q @ QtY
    df = W.shape[0] - W.shape[1]
    s2 = np.einsum("ij,ij->j", resid, resid) / df
    Rinv = np.linalg.solve(R, np.eye(R.shape[0]))
    var_unit = (Rinv ** 2).sum(axis=1)  # diag((WᵀW)^-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = coef[cols] / np.sqrt(var_unit[cols, None] * s2)
    return t, df


def lin_ccc(x, y) -> float:
    """Lin's concordance correlation coefficient of two vectors (population moments; non-finite pairs dropped).

    ``2 cov(x, y) / (var(x) + var(y) + (mean(x) - mean(y))²)``; NaN for fewer than 2 pairs or no spread.
    The one implementation in featharm (``featharm.plots.lins_ccc`` is this function).
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 2:
        return float("nan")
    sxy = np.mean((x - x.mean()) * (y - y.mean()))
    den = x.var() + y.var() + (x.mean() - y.mean()) ** 2
    return float(2 * sxy / den) if den > 0 else float("nan")


def _effects(P: Prepared, Yh: np.ndarray):
    """t statistics before (``y ~ covariates + site``, raw) and after (``y* ~ covariates``, harmonized) of
    every design column and feature of a complete table, their residual df, and the factor of Cohen's d."""
    n, m, q = P.n, P.m, P.Xc.shape[1]
    V = P.Y.shape[1]
    t_b, df_b = coef_t(np.hstack([P.onehot, P.Xc]), P.Y, slice(m, m + q))
    t_a, df_a = coef_t(np.hstack([np.ones((n, 1)), P.Xc]), Yh, slice(1, 1 + q))
    scale = np.empty((q, V))
    for j in range(q):
        col = P.Xc[:, j]
        binary = np.isin(col, (0.0, 1.0)).all()
        n1 = float(col.sum()) if binary else np.nan
        scale[j] = np.sqrt(1.0 / n1 + 1.0 / (n - n1)) if binary and 0 < n1 < n else np.nan
    return t_b, t_a, np.full(V, float(df_b)), np.full(V, float(df_a)), scale, np.full(V, n, dtype=np.int64)


def _effects_by_pattern(P: Prepared, Yh: np.ndarray):
    """:func:`_effects` of every feature on the rows where both its raw and harmonized values are observed
    (features grouped by missingness pattern; NaN for a feature that cannot be fitted, ``n`` its observed rows)."""
    observed = ~np.isnan(P.Y) & ~np.isnan(Yh)
    Q = replace(P, observed=observed, _parts=None, _complete=None)
    q, V = P.Xc.shape[1], P.Y.shape[1]
    t_b, t_a, scale = np.full((q, V), np.nan), np.full((q, V), np.nan), np.full((q, V), np.nan)
    df_b, df_a = np.full(V, np.nan), np.full(V, np.nan)
    n = observed.sum(axis=0).astype(np.int64)
    for part in parts(Q, "biology_preservation"):
        if part.sub is None:
            continue
        got = _effects(part.sub, Yh[np.ix_(part.rows, part.cols)])
        for full, val in zip((t_b, t_a, df_b, df_a, scale, n), got):
            full[..., part.cols] = val
    return t_b, t_a, df_b, df_a, scale, n


def preservation_tables(P: Prepared, Yh: np.ndarray, alpha: float = 0.05) -> Preservation:
    q = P.Xc.shape[1]
    names = P.design.columns
    if q == 0:
        return Preservation(pd.DataFrame(columns=PRESERVATION_COLUMNS),
                            pd.DataFrame(columns=PRESERVATION_SUMMARY_COLUMNS))
    missing = P.missing or bool(np.isnan(Yh).any())
    t_b, t_a, df_b, df_a, scale, n = (_effects_by_pattern if missing else _effects)(P, Yh)
    rows, summ = [], []
    for j, name in enumerate(names):
        tb, ta = t_b[j], t_a[j]
        pb, pa = 2 * stats.t.sf(np.abs(tb), df_b), 2 * stats.t.sf(np.abs(ta), df_a)
        fb, fa = bh_fdr(pb), bh_fdr(pa)
        r2b, r2a = tb ** 2 / (tb ** 2 + df_b), ta ** 2 / (ta ** 2 + df_a)
        rows.append(pd.DataFrame({
            "feature": P.features, "covariate": name, "n": n, "t_before": tb, "t_after": ta,
            "df_before": df_b, "df_after": df_a, "p_before": pb, "p_after": pa,
            "p_fdr_before": fb, "p_fdr_after": fa, "partial_r2_before": r2b, "partial_r2_after": r2a,
            "cohen_d_before": tb * scale[j], "cohen_d_after": ta * scale[j], "delta_partial_r2": r2a - r2b,
        }))
        sb, sa = fb < alpha, fa < alpha
        if missing:  # the features that could be fitted
            ok = np.isfinite(tb) & np.isfinite(ta)
            tb, ta, r2b, r2a = tb[ok], ta[ok], r2b[ok], r2a[ok]
        summ.append({
            "covariate": name, "n_features": len(P.features),
            "pearson_t": float(np.corrcoef(tb, ta)[0, 1]) if len(tb) > 1 else np.nan,
            "ccc_t": lin_ccc(tb, ta), "ccc_partial_r2": lin_ccc(r2b, r2a),
            "n_sig_fdr_before": int(sb.sum()), "n_sig_fdr_after": int(sa.sum()), "n_sig_fdr_both": int((sb & sa).sum()),
            "median_partial_r2_before": float(np.median(r2b)) if len(r2b) else np.nan,
            "median_partial_r2_after": float(np.median(r2a)) if len(r2a) else np.nan,
        })
    return Preservation(pd.concat(rows, ignore_index=True)[PRESERVATION_COLUMNS],
                        pd.DataFrame(summ)[PRESERVATION_SUMMARY_COLUMNS])


@sized_by_features
def biology_preservation(X_raw: pd.DataFrame, X_harmonized: pd.DataFrame, covariates: pd.DataFrame, *,
                         batch: str = "site", formula: str, alpha: float = 0.05, n_jobs: int | None = None) -> Preservation:
    """Covariate effects (t, partial R², Cohen's d) before and after harmonization, and their concordance.

    For every design column of ``formula`` (age, sex[T.M], diagnosis levels ...) and every feature:
    the raw data in ``y ~ covariates + site`` against the harmonized data in ``y* ~ covariates``.

    Parameters
    ----------
    X_raw, X_harmonized : DataFrame
        The same rows (index) and feature columns, before and after harmonization.
    covariates : DataFrame
        Batch column and the formula's columns.
    formula : str
        The covariates whose effects should be kept, e.g. ``"age + sex + diagnosis"``.
    alpha : float, default 0.05
        BH-FDR level for the significance counts.
    n_jobs : int, optional
        Threads (as in the models): None (default) lets featharm choose: one on a small table, else the CPUs
        the rest of the machine leaves free; -1 all CPUs. The results do not depend on it.

    Returns
    -------
    Preservation
        ``table``: one row per feature × covariate column, columns :data:`PRESERVATION_COLUMNS`:
        ``n`` (rows of both models: with missing values, the rows where the feature is observed before
        and after harmonization, without sites with fewer than 2 of them), ``t_*`` (t statistic of the
        coefficient), ``df_*`` (residual df), ``p_*`` (two-sided),
        ``p_fdr_*`` (BH within the covariate column across features), ``partial_r2_*`` = t²/(t² + df),
        ``cohen_d_*`` = the covariate-adjusted d ≈ t sqrt(1/n1 + 1/n0) for a 0/1 column (NaN for
        continuous ones), ``delta_partial_r2`` = after - before.
        ``summary``: one row per covariate column, columns :data:`PRESERVATION_SUMMARY_COLUMNS`:
        Pearson correlation and Lin's concordance (CCC) of the t statistics across features, CCC of the
        partial R², counts of FDR-significant features before, after and in both, median partial R².
    """
    P = prepare(X_raw, covariates, batch, formula, "biology_preservation")
    Yh, idx_h, cols_h, _ = check_features(X_harmonized, "biology_preservation", index=P.index, columns=P.features,
                                          allow_nan=True)
    if not idx_h.equals(P.index) or [str(c) for c in cols_h] != P.features:
        raise AlignmentError(
            "X_raw and X_harmonized must have the same rows (index, in the same order) and the same feature "
            "columns; reorder the harmonized table with X_harmonized.loc[X_raw.index, X_raw.columns]."
        )
    align_covariates(idx_h, covariates, "biology_preservation")
    return preservation_tables(P, Yh, alpha)
