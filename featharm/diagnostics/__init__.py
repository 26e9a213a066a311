"""Site-effect diagnostics for raw and harmonized data (``docs/methods.md`` §6), as tidy DataFrames.

Public API (names and columns are stable; see each docstring for the exact columns):

* :func:`test_site_effects` — per-feature location and scale tests of site, one row per feature × test,
  with raw, BH-FDR and Bonferroni p-values;
* :func:`site_effect_sizes` — per-site standardized shifts and log variance ratios;
* :func:`site_residuals` — the additive and full residuals (ComBatFamQC convention, §6.1);
* :func:`permanova`, :func:`pc_covariance_tests`, :func:`site_classification` — multivariate checks;
* :func:`biology_preservation` — covariate effect sizes before/after harmonization and their summary;
* :func:`covariate_balance` — which covariates differ by site (warns when one is confounded with site);
* :func:`diagnose` — all of the above in one call (what ``featharm diagnose`` writes);
* :func:`site_anova` — the partial F test alone (kept for the demo).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from .._validation import align_covariates, batch_levels, check_features, encode_batches, get_batch, rows_of
from ..design import CovariateDesign, batch_indicators
from .balance import BALANCE_COLUMNS, covariate_balance
from .multivariate import (CLASSIFICATION_COLUMNS, MULTIVARIATE_COLUMNS, pc_covariance_tests, permanova,
                           site_classification)
from .preservation import PRESERVATION_COLUMNS, PRESERVATION_SUMMARY_COLUMNS, Preservation, biology_preservation
from .residuals import Residuals, site_residuals
from .suite import TABLES, diagnose
from .univariate import COLUMNS, DEFAULT_TESTS, TESTS, site_effect_sizes, test_site_effects

__all__ = [
    "test_site_effects",
    "site_effect_sizes",
    "site_residuals",
    "Residuals",
    "permanova",
    "pc_covariance_tests",
    "site_classification",
    "biology_preservation",
    "Preservation",
    "covariate_balance",
    "diagnose",
    "TESTS",
    "DEFAULT_TESTS",
    "COLUMNS",
    "MULTIVARIATE_COLUMNS",
    "CLASSIFICATION_COLUMNS",
    "PRESERVATION_COLUMNS",
    "PRESERVATION_SUMMARY_COLUMNS",
    "BALANCE_COLUMNS",
    "TABLES",
    "site_anova",
]


def _rss(W: np.ndarray, Y: np.ndarray) -> np.ndarray:
    Q, _ = np.linalg.qr(W, mode="reduced")
    R = Y - Q @ (Q.T @ Y)
    return np.einsum("ij,ij->j", R, R)


def site_anova(X: pd.DataFrame, covariates: pd.DataFrame, *, batch: str = "site",
               formula: str | None = None) -> pd.DataFrame:
    """Partial F test of the site effect in ``y ~ covariates + site`` for every feature.

    The same test as ``test_site_effects(..., tests="anova")``, without its input checks on batch sizes.

    Returns
    -------
    DataFrame
        One row per feature with columns ``feature``; ``test`` (``"anova_partial_F"``); ``statistic``
        (F = ((RSS0 - RSS1)/(m - 1)) / (RSS1/(n - p1)), RSS0 from ``y ~ 1 + covariates``, RSS1 adding
        site); ``df1`` (m - 1); ``df2`` (n - p1); ``p_unc`` (upper tail of F); ``effect_size``
        (partial eta² of site, (RSS0 - RSS1)/RSS0).
    """
    Y, index, columns = check_features(X, "site_anova", index=rows_of(covariates))
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
