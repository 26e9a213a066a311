"""Site-effect diagnostics (tidy DataFrames, one row per feature × test).

For now: the per-feature ANOVA partial F test of site (``methods.md`` §6.2), vectorized across features.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from .._validation import align_covariates, batch_levels, check_features, encode_batches, get_batch
from ..design import CovariateDesign, batch_indicators

__all__ = ["site_anova"]


def _rss(W: np.ndarray, Y: np.ndarray) -> np.ndarray:
    Q, _ = np.linalg.qr(W, mode="reduced")
    R = Y - Q @ (Q.T @ Y)
    return np.einsum("ij,ij->j", R, R)


def site_anova(X: pd.DataFrame, covariates: pd.DataFrame, *, batch: str = "site",
               formula: str | None = None) -> pd.DataFrame:
    """Partial F test of the site effect in ``y ~ covariates + site`` for every feature.

    Returns
    -------
    DataFrame
        One row per feature with columns ``feature``; ``test`` (``"anova_partial_F"``); ``statistic``
        (F = ((RSS0 - RSS1)/(m - 1)) / (RSS1/(n - p1)), RSS0 from ``y ~ 1 + covariates``, RSS1 adding
        site); ``df1`` (m - 1); ``df2`` (n - p1); ``p_unc`` (upper tail of F); ``effect_size``
        (partial eta² of site, (RSS0 - RSS1)/RSS0).
    """
    Y, index, columns = check_features(X, "site_anova")
    cov = align_covariates(index, covariates, "site_anova")
    s = get_batch(cov, batch)
    levels = batch_levels(s)
    codes = encode_batches(s, levels, batch)
    _, Xc = CovariateDesign.fit(formula, cov, exclude=(batch,))
    n, m = len(codes), len(levels)
    W0 = np.hstack([np.ones((n, 1)), Xc])
    W1 = np.hstack([batch_indicators(codes, m), Xc])
    rss0, rss1 = _rss(W0, Y), _rss(W1, Y)
    p1 = np.linalg.matrix_rank(W1)
    df1, df2 = m - 1, n - p1
    with np.errstate(divide="ignore", invalid="ignore"):
        F = ((rss0 - rss1) / df1) / (rss1 / df2)
        eta = (rss0 - rss1) / rss0
    return pd.DataFrame({
        "feature": [str(c) for c in columns],
        "test": "anova_partial_F",
        "statistic": F,
        "df1": float(df1),
        "df2": float(df2),
        "p_unc": stats.f.sf(F, df1, df2),
        "effect_size": eta,
    })
