"""Random-intercept mixed models for the diagnostics of longitudinal data (ComBatFamQC ``type = "lmer"``).

The fits come from :func:`featharm.mixed.fit_random_intercept` (closed forms per subject block, all
features at once) and the site test from :func:`featharm.mixed.site_lrt`, the one implementation also behind
:func:`featharm.mixed.batch_lrt`. Conventions, as ComBatFamQC with ``lmer(y ~ covariates + site + (1 | subject))``:

* the model is fitted by REML;
* full residuals are the conditional residuals ``y - X beta - u_subject`` (R ``resid()``);
* additive residuals ``y - X_cov beta_cov - (b0 + u_subject)`` keep the site effect and remove the
  covariates, the intercept of the first site and the subject's random intercept;
* the location test is the likelihood-ratio test of site between ML fits with and without site
  (R ``anova(reduced, full)``, which refits both with ML), chi-square with m - 1 df.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._validation import _show, show_columns
from ..exceptions import ColumnNotFoundError, InputError, MissingValueError
from ..mixed import fit_random_intercept, site_lrt
from ._common import Prepared, by_pattern

__all__ = ["subject_codes", "lmm_residuals", "lmm_site_lrt"]


def subject_codes(covariates: pd.DataFrame, random: str | None, owner: str) -> np.ndarray:
    """Integer code of each row's subject (the random-intercept grouping)."""
    if random is None:
        raise InputError(f"{owner}: model='lmm' needs random=<subject id column> for the random intercept.")
    if random not in covariates.columns:
        raise ColumnNotFoundError(
            f"{owner}: no subject column {random!r} for the random intercept; columns present: "
            f"{show_columns(covariates.columns)}."
        )
    s = covariates[random]
    if s.isna().any():
        raise MissingValueError(f"subject column {random!r} has missing values at rows "
                                f"{_show(s.index[s.isna().to_numpy()])}.")
    _, g = np.unique(s.astype(str).to_numpy(), return_inverse=True)
    return g.astype(np.intp)


def lmm_residuals(P: Prepared, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Additive and full (conditional) residuals of the REML random-intercept fit of every feature (with
    missing values: of every missingness pattern on its observed rows, NaN elsewhere)."""
    if P.missing:
        return by_pattern(P, lambda sub: lmm_residuals(sub, g[P.index.get_indexer(sub.index)]), n_full=2)
    W1 = np.hstack([P.onehot, P.Xc])
    fit = fit_random_intercept(P.Y, W1, g, reml=True)
    u = fit.random_part(g)
    r_full = P.Y - W1 @ fit.beta - u
    r_add = P.Y - fit.beta[0] - P.Xc @ fit.beta[P.m:] - u
    return r_add, r_full


def lmm_site_lrt(P: Prepared, g: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """ML likelihood-ratio test of site for every feature: ``(chi2, df, p)`` (:func:`featharm.mixed.site_lrt`)."""
    chi2, df, p = site_lrt(P.Y, P.onehot, P.Xc, g)
    return chi2, float(df), p
