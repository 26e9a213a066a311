"""Residuals for the site-effect tests, as ComBatFamQC defines them (``docs/methods.md`` §6.1).

Per feature the *full* model ``y ~ covariates + site`` is fitted (OLS here; a random-intercept mixed
model in :mod:`featharm.diagnostics.mixed`). Two residuals come out of it:

* **additive** residuals ``y - b0 - X beta_X`` remove the intercept (of the first site in sorted order,
  R's treatment coding) and the covariate effects but keep the site effect: the location tests, PCA and
  PERMANOVA use them;
* **full** residuals ``y - y_hat`` of the full model, with mean zero in every site: the scale tests use them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from ._common import Prepared, by_pattern, prepare
from ._parallel import sized_by_features

__all__ = ["Residuals", "site_residuals"]


class Residuals(NamedTuple):
    """``additive`` and ``full`` residual tables (same index and columns as the features)."""

    additive: pd.DataFrame
    full: pd.DataFrame


def ols_residuals(P: Prepared, method: str = "lm") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """OLS of every feature on ``y ~ 1 + covariates + site`` (one QR for all features).

    ``method="lm"`` (default) computes the fit with the arithmetic of R's ``lm`` (Householder QR in
    LINPACK's operation order, :mod:`._linpack`), so the residuals are ComBatFamQC's to the last bit:
    the rank-based scale test depends on that bit (see :func:`~.univariate.fligner_killeen`). The design
    is R's ``model.matrix``: intercept, covariate columns, then the site indicators of all sites but the
    first; the additive residuals are ``y - (Xc b_X + b_0)`` evaluated in that order, as ComBatFamQC does.
    ``method="lapack"`` uses numpy's blocked QR (a few ulps from R, a little faster).

    Returns ``(r_add, r_full, rss1, rss0, rank1)``. With missing values every missingness pattern is fitted
    on its observed rows (:func:`by_pattern`): the residuals are NaN where the feature is missing (or its
    site left out of its tests) and ``rank1`` is an array over the features.
    """
    if P.missing:
        return by_pattern(P, lambda sub: ols_residuals(sub, method), n_full=2, n_extra=3)
    n, m = P.n, P.m
    q = P.Xc.shape[1]
    W1 = np.hstack([np.ones((n, 1)), P.Xc, P.onehot[:, 1:]])
    if method == "lm":
        from ._linpack import lm_fit

        coef, r_full = lm_fit(W1, P.Y)
        r_add = np.zeros_like(r_full)
        for blk in _col_blocks(n, r_add.shape[1]):  # y - ((0 + x_1 b_1 + ... + x_q b_q) + b_0), R's order
            sub = r_add[:, blk]
            for c in range(q):
                sub += P.Xc[:, c][:, None] * coef[1 + c, blk][None, :]
            sub += coef[0, blk]
            np.subtract(P.Y[:, blk], sub, out=sub)
    else:
        W = np.hstack([P.onehot, P.Xc])
        Q1, R1 = np.linalg.qr(W, mode="reduced")
        QtY = Q1.T @ P.Y
        coef = np.linalg.solve(R1, QtY)
        r_full = Q1 @ QtY
        np.subtract(P.Y, r_full, out=r_full)
        r_add = P.Xc @ coef[m:]
        r_add += coef[0]
        np.subtract(P.Y, r_add, out=r_add)
    rss1 = np.einsum("ij,ij->j", r_full, r_full)
    # RSS0 - RSS1 = |Qd' y|² with Qd an orthonormal basis of the site indicators off [1 | Xc]: the site sum
    # of squares without the cancellation of RSS0 - RSS1 and without a second n × V residual matrix
    Q0, _ = np.linalg.qr(np.hstack([np.ones((n, 1)), P.Xc]), mode="reduced")
    Bd = P.onehot[:, 1:] - Q0 @ (Q0.T @ P.onehot[:, 1:])
    Bd -= Q0 @ (Q0.T @ Bd)
    Qd, _ = np.linalg.qr(Bd, mode="reduced")
    QdY = Qd.T @ P.Y
    rss0 = rss1 + np.einsum("ij,ij->j", QdY, QdY)
    return r_add, r_full, rss1, rss0, W1.shape[1]


def _col_blocks(n: int, V: int, nbytes: int = 2 * 2**20):
    b = max(1, nbytes // (8 * max(n, 1)))
    return [slice(i, min(i + b, V)) for i in range(0, V, b)]


@sized_by_features
def site_residuals(X: pd.DataFrame, covariates: pd.DataFrame, *, batch: str = "site",
                   formula: str | None = None, model: str = "ols", random: str | None = None, n_jobs: int | None = None) -> Residuals:
    """Additive and full residuals of ``y ~ covariates + site`` for every feature (§6.1).

    Parameters
    ----------
    X : DataFrame
        Features (rows = subjects/scans, columns = features).
    covariates : DataFrame
        Batch column and the formula's columns, same index as ``X``.
    batch : str
        Name of the site/scanner column.
    formula : str, optional
        Right-hand side of the covariate model, e.g. ``"age + sex"``.
    model : {"ols", "lmm"}
        ``"ols"``: linear model. ``"lmm"``: random intercept per ``random`` (REML fit, as ``lme4::lmer``);
        the additive residuals then also remove the subject's intercept, as ComBatFamQC does.
    random : str, optional
        Grouping column of the random intercept (``model="lmm"`` only).
    n_jobs : int, optional
        Threads (as in the models): None (default) lets featharm choose: one on a small table, else the CPUs
        the rest of the machine leaves free; -1 all CPUs. The results do not depend on it.

    Returns
    -------
    Residuals
        ``(additive, full)``, two DataFrames with the index and columns of ``X``. With missing values each
        feature is fitted on its observed rows; its residuals are NaN where it is missing, and in the rows of
        a site with fewer than 2 observed values of it (left out of its model and tests; a
        :class:`~featharm.exceptions.MissingValueWarning` names them).
    """
    from .._validation import check_option

    check_option("model", model, ("ols", "lmm"), "site_residuals")
    P = prepare(X, covariates, batch, formula, "site_residuals")
    if model == "ols":
        r_add, r_full = ols_residuals(P)[:2]
    else:
        from .mixed import lmm_residuals, subject_codes

        g = subject_codes(P.covariates, random, "site_residuals")
        r_add, r_full = lmm_residuals(P, g)
    cols = X.columns if isinstance(X, pd.DataFrame) else P.features
    return Residuals(pd.DataFrame(r_add, index=P.index, columns=cols),
                     pd.DataFrame(r_full, index=P.index, columns=cols))
