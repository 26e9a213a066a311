"""ComBat (Johnson, Li & Rabinovic 2007; Fortin et al. 2017, 2018) as a scikit-learn style estimator."""

from __future__ import annotations

import numpy as np

from .._core import eb, ols
from .._progress import Progress
from ..design import batch_indicators
from ._base import BaseHarmonizer

__all__ = ["ComBat"]


class ComBat(BaseHarmonizer):
    """Remove additive and multiplicative site effects while preserving covariate effects.

    The model (``docs/methods.md`` §1) is ``y = alpha + x'beta + gamma_site + delta_site * eps`` for every
    feature; site effects get empirical-Bayes priors pooled across features. The algorithm is exactly
    sva/neuroCombat's (S1–S8), vectorized over features.

    Parameters
    ----------
    batch : str, default "site"
        Column of ``covariates`` holding the batch (site or scanner). Levels are sorted.
    formula : str or None, default None
        Right-hand side of a formula over covariate columns whose effects are preserved, e.g.
        ``"age + sex"``, ``"age * sex + I(age**2)"``, ``"C(diagnosis)"``. String, categorical and boolean
        columns are categorical (treatment coding, the first sorted level is the baseline); numeric
        columns are continuous. The encoding is frozen at fit. ``None`` preserves only the grand mean.
        Never put the target of a later prediction among the covariates (see Notes).
    eb : bool, default True
        Shrink the site effects with empirical Bayes. ``False`` uses the per-site estimates directly.
    parametric : bool, default True
        Parametric (normal / inverse-gamma) priors; ``False`` uses the non-parametric prior (the other
        features' estimates), computed in log space so any site size gives finite values.
    mean_only : bool, default False
        Adjust only the location (no scale adjustment). Allows sites with a single subject.
    mean_only_form : {"sva", "n"}, default "sva"
        Posterior mean used with ``mean_only``: ``"sva"`` reproduces sva/neuroCombat (n = 1 in the
        posterior, a quirk kept for parity); ``"n"`` uses each site's size.
    ref_batch : str or None, default None
        Reference batch (Zhang et al. 2018): the data are mapped onto it and its rows are returned unchanged.
    tol : float, default 1e-4
        Convergence tolerance of parametric EB (largest signed relative change, as sva).
    max_iter : int, default 1000
        Cap on parametric EB iterations; a :class:`~featharm.exceptions.ConvergenceWarning` is raised when hit.
    compat : {None, "neuroCombat"}, default None
        ``"neuroCombat"`` rounds continuous covariates through float32 as neuroCombat/neuroHarmonize do;
        only for reproducing their numbers.

    Attributes
    ----------
    batches_ : ndarray
        Batch levels in sorted order (the row order of every batch × feature table).
    batch_sizes_ : Series
        Subjects per batch at fit.
    feature_names_in_ : ndarray
        Feature names seen at fit; ``n_features_in_`` their number.
    design_ : CovariateDesign
        The frozen covariate encoding (formula, categorical levels, column names).
    alpha_ : Series
        Grand mean of each feature (site-size weighted, or the reference site's intercept).
    beta_ : DataFrame
        Covariate coefficients (design column × feature); ``batch_coef_`` the site intercepts.
    sigma_ : Series
        Pooled residual SD of each feature (MLE, divided by n).
    gamma_hat_, delta_hat_ : DataFrame
        Per-site location and scale (variance) estimates on the standardized scale (batch × feature).
    gamma_star_, delta_star_ : DataFrame
        Their empirical-Bayes posteriors (equal to the estimates when ``eb=False``).
    priors_ : DataFrame
        Per-batch hyperparameters ``gamma_bar``, ``tau2``, ``a_prior`` (lambda), ``b_prior`` (theta); the
        scale priors are NaN with ``mean_only`` and all are NaN for the reference batch. Each column is also
        an attribute of its own (``gamma_bar_``, ``tau2_``, ``a_prior_``, ``b_prior_``).
    n_iter_ : Series
        Parametric EB iterations per batch (0 where not iterated).
    ref_index_ : int or None
        Position of ``ref_batch`` in ``batches_`` (None without a reference batch).
    constant_features_ : list
        Features passed through unchanged because they have no residual variance (``constant_``: the same
        as a boolean Series over the features).
    fit_warnings_ : list of dict
        The warnings raised during ``fit`` (``{"category": ..., "message": ...}``; kept in saved models and
        listed by the report).

    Notes
    -----
    *Apply to new subjects.* ``transform`` harmonizes subjects from sites seen at fit with their own
    covariates (``docs/methods.md`` §1.4); on the training rows it reproduces ``fit_transform`` exactly.
    Unseen sites raise :class:`~featharm.exceptions.UnseenBatchError`.

    *Cross-validation.* Harmonization is part of the model: fit it on the training fold only and apply the
    frozen model to the test fold::

        for train, test in StratifiedKFold(5).split(X, y):
            hm = ComBat(batch="site", formula="age + sex").fit(X.iloc[train], cov.iloc[train])
            Xtr, Xte = hm.transform(X.iloc[train], cov.iloc[train]), hm.transform(X.iloc[test], cov.iloc[test])
            clf.fit(Xtr, y[train]).score(Xte, y[test])

    Every site of a test fold must appear in the training fold (stratify by site). **The prediction target
    must never be a covariate**: the test subjects' labels would be needed to harmonize them, and the
    target's effect would leak into the features (Nieto et al. 2026). ``sklearn.base.clone`` works, but
    scikit-learn's ``Pipeline`` cannot pass covariates to ``transform``.

    Examples
    --------
    >>> import featharm as fh
    >>> data = fh.datasets.load_ixi()
    >>> X = data.filter(like="_thickness").drop(columns=["lh_MeanThickness_thickness",
    ...                                                 "rh_MeanThickness_thickness"])
    >>> hm = fh.ComBat(batch="site", formula="age + sex")
    >>> Xh = hm.fit_transform(X, data)
    >>> Xh.shape == X.shape and list(hm.batches_)
    ['Guys', 'HH', 'IOP']
    """

    _schema_name = "combat"
    _float32_blocks = True
    _compat_options = (None, "neuroCombat")

    def __init__(self, *, batch="site", formula=None, eb=True, parametric=True, mean_only=False,
                 mean_only_form="sva", ref_batch=None, tol=1e-4, max_iter=1000, compat=None):
        self.batch = batch
        self.formula = formula
        self.eb = eb
        self.parametric = parametric
        self.mean_only = mean_only
        self.mean_only_form = mean_only_form
        self.ref_batch = ref_batch
        self.tol = tol
        self.max_iter = max_iter
        self.compat = compat

    def _eb_options(self) -> eb.EBOptions:
        return self._combat_eb_options()

    def _fit_location(self, prep, B: np.ndarray, counts: np.ndarray, ref) -> None:
        """S1–S5: one least-squares fit of every feature on ``[B | X]``, the pooled variance and the
        standardized batch moments (``docs/methods.md`` §1.2). Fills ``self._arr``."""
        Y = prep.Y
        n, p = Y.shape
        m = B.shape[1]
        W = np.hstack([B, prep.X])
        qr = ols.GramSolver(W)
        coef = qr.solve(Y)  # one GEMM for all features (a long inner dimension wants it whole)
        batch_rows = batch_indicators(np.arange(m), m, ref)
        batch_fit = batch_rows @ coef[:m]  # fitted batch part for a row of each batch (m × p)
        with Progress(ols.residual_blocks(Y, m), "fitting location/scale") as bar:
            ss = ols.batch_residual_ss(Y, batch_fit, prep.X, coef[m:], prep.codes, progress=bar.update)
        st = eb.standardized_moments(coef, ss, counts, batch_rows, ref=ref, mean_only=bool(self.mean_only))
        self._arr.update(alpha=st.alpha, sigma=st.sigma, beta=coef[m:], batch_coef=coef[:m],
                         gamma_hat=st.gamma_hat, delta_hat=st.delta_hat)
        self._delta_raw = st.delta_raw
        self._mark_constant(np.abs(st.alpha), prep=prep)
