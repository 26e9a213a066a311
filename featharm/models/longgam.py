"""Longitudinal ComBat-GAM: smooth covariate effects (penalized splines) and a random subject intercept.

ComBat-GAM (``gam.py``, ``docs/methods.md`` §2) models nonlinear age effects but treats repeated scans of a
subject as independent; longitudinal ComBat (``longitudinal.py``, §3) models the subject but only linear
covariate effects. This family fits both at once per feature,

    y = alpha + x'beta + f(age) + gamma_site + u_subject + delta_site * eps,

with ``f`` a penalized cubic regression spline (the frozen basis and penalty of ComBat-GAM) and ``u`` a random
intercept, the smoothing parameter and the subject variance both chosen by REML per feature
(:mod:`featharm._core.smooth_mixed`, vectorized over features). Standardization, the empirical-Bayes step, the
output and the treatment of new scans are LongComBat's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .._core import smooth_mixed
from .._core.splines import SplineBasis
from .._validation import check_integer, check_option
from ..exceptions import FormulaError, SingleScanWarning, warn
from ..mixed import MixedFit
from .._schema import Stored
from .gam import ComBatGAM, check_bases_state
from .longitudinal import LongComBat

__all__ = ["LongComBatGAM"]


class LongComBatGAM(LongComBat):
    """Harmonize repeated scans with smooth covariate effects: ComBat-GAM with a subject random intercept.

    For every feature the mixed model ``y ~ formula + s(age) + batch + (1 | subject)`` is fitted by REML:
    the smooth terms are penalized cubic regression splines on a basis frozen at fit (as
    :class:`~featharm.ComBatGAM`), the subject intercept a random effect (as :class:`~featharm.LongComBat`),
    and the two variance ratios of each feature (the smoothing parameter and ``tau2 / sigma2``) are chosen by
    restricted maximum likelihood for all features at once (``docs/methods.md`` §3.1). The residuals are
    standardized, the site effects estimated and shrunk, and each scan mapped to the size-weighted grand mean
    of the batches keeping its subject's random effect and the fitted curve, exactly as by LongComBat.

    Parameters
    ----------
    batch : str, default "site"
        Column of ``covariates`` holding the batch (site/scanner). It may change within a subject.
    subject : str, default "subject"
        Column of ``covariates`` identifying the subject (the random intercept).
    time : str or None, default None
        Numeric column with the time of each scan; only checked (repeated (subject, time) pairs are warned
        about). Put it in ``formula`` or ``smooth`` to model it.
    formula : str or None, default None
        Linear fixed effects to preserve (``"sex + C(diagnosis)"``); smooth terms may be written here as
        ``s(age)``. Must not contain the batch or subject columns.
    smooth : str, list of str or None, default None
        Numeric covariate column(s) with smooth effects, e.g. ``["age"]``. Without any smooth term the model
        is LongComBat's random-intercept model (fitted by this family's REML).
    df : int, default 10
        B-spline basis size per smooth term, as in :class:`~featharm.ComBatGAM` (``df - 1`` columns per term).
    smooth_bounds : dict or None, default None
        ``{column: (lower, upper)}``: boundary knots wider than the training range, as in ComBatGAM.
    extrapolate : {None, "linear"}, default None
        At transform time a smooth covariate outside the fitted range is an
        :class:`~featharm.exceptions.OutOfRangeError`; ``"linear"`` continues the curve along its tangent.
        May be changed after fitting with ``set_params``.
    standardize : {"reml", "msr", "marginal"}, default "reml"
        How residuals are standardized before the site effects are estimated (the delta* options of
        :class:`~featharm.LongComBat`): conditional residuals over the REML residual SD (longCombat's
        default; delta* below 1), over their own SD (``"msr"``), or marginal residuals (the subject effect
        left in) over ``sqrt(sigma2 + tau2)`` (``"marginal"``).
    eb : bool, default True
        Empirical-Bayes shrinkage of the site effects.
    n_iter : int, default 30
        Jacobi EB iterations (longCombat's ``niter``).
    priors : {"auto", "group", "pool"} or mapping, default "auto"
        Empirical-Bayes priors per measure group (thickness, area, volume ...) or pooled across all features,
        as in :class:`~featharm.ComBat` (``"auto"`` is ``"group"``: this family has no ``compat``).

    covariates, n_jobs
        A covariate table looked up by the index of ``X``, and the BLAS threads; see :class:`~featharm.ComBat`.

    Attributes
    ----------
    batches_, batch_sizes_, feature_names_in_, design_ :
        As :class:`~featharm.ComBat` (``batch_sizes_`` counts scans).
    alpha_, beta_, batch_coef_, batch_effect_, sigma_ :
        As :class:`~featharm.LongComBat` (``beta_``: the linear covariates only).
    smooth_terms_, smooth_bases_ :
        The smooth covariate columns and their frozen spline bases.
    spline_coef_ : DataFrame
        Spline coefficients (basis column × feature).
    lambda_ : Series
        Smoothing parameter of each feature: the spline coefficients in unit-penalty directions have
        variance ``sigma2 / lambda`` (NaN without a smooth term); also ``smoothing_``.
    edf_ : Series
        Effective degrees of freedom of the smooth part of each feature.
    residual_var_, ranef_var_, icc_, random_effects_, singular_features_, loglik_ :
        As :class:`~featharm.LongComBat` (REML residual and subject variances, subject BLUPs).
    gamma_hat_, delta_hat_, gamma_star_, delta_star_, priors_ :
        As :class:`~featharm.ComBat` (``delta_*`` are variances).
    n_iter_, constant_features_, n_features_in_, fit_warnings_ :
        As :class:`~featharm.ComBat`.
    n_obs_ : DataFrame
        Only when fitted with missing feature values: observed scans of each feature at each batch.

    Notes
    -----
    *Limiting cases.* Without a smooth term the fit is LongComBat's (random intercept, ``standardize`` and EB
    alike) to the optimizer's tolerance. When every subject has a single scan the subject variance is not
    identified (only ``sigma2 + tau2`` is): it is set to 0 with a warning, and the mean model is ComBat-GAM's
    REML fit; the site adjustment is then ComBat's up to LongComBat's EB iteration (30 Jacobi updates).

    *New data* (``transform``), *new sites* (``new_sites="estimate"``) and *missing values* (NaN cells) are
    handled as by :class:`~featharm.LongComBat`, with the fitted curves kept in the preserved part. A scan of a
    known subject keeps its BLUP; a new subject is harmonized at the population level. With NaN cells each
    feature's model, both variance ratios included, is fitted on its observed scans, all features together from
    per-feature sums (per missingness pattern only where a batch has no observed scan of the feature); the
    spline basis is frozen from all scans. A feature without NaN keeps its complete-data fit.
    Smooth covariates outside the fitted range are refused or extrapolated as by ComBatGAM. No random slope.

    References
    ----------
    Pomponio R, et al. (2020) *NeuroImage* 208:116450 (ComBat-GAM). Beer JC, et al. (2020) *NeuroImage*
    220:117129 (longitudinal ComBat). Wood SN (2011) Fast stable restricted maximum likelihood and marginal
    likelihood estimation of semiparametric generalized linear models. *JRSS B* 73(1):3-36.

    Examples
    --------
    >>> import featharm as fh
    >>> sim = fh.datasets.make_longitudinal(n_subjects=100, n_sites=3, n_features=10, random_state=0)
    >>> hm = fh.LongComBatGAM(batch="site", subject="subject", formula="sex", smooth=["age"])
    >>> Xh = hm.fit_transform(sim.X, sim.covariates)
    >>> Xh.shape == sim.X.shape, hm.smooth_terms_, hm.random_effects_.shape
    (True, ['age'], (100, 10))
    """

    _schema_name = "longcombat_gam"
    _feature_units = {**LongComBat._feature_units, "spline_coef": 1}
    _stored = {
        **LongComBat._stored,
        "spline_coef": Stored(("basis", "feature"), values="finite"),
        "smoothing": Stored(("feature",)),
        "edf": Stored(("feature",)),
    }
    _state_extra = ("subjects", "smooth_bases")
    random_slope = False  # a random intercept only (read by LongComBat's shared code; not a parameter)

    def __init__(self, *, batch="site", subject="subject", time=None, formula=None, smooth=None, df=10,
                 smooth_bounds=None, extrapolate=None, standardize="reml", eb=True, n_iter=30, priors="auto",
                 covariates=None, n_jobs=None):
        self.batch = batch
        self.subject = subject
        self.time = time
        self.formula = formula
        self.smooth = smooth
        self.df = df
        self.smooth_bounds = smooth_bounds
        self.extrapolate = extrapolate
        self.standardize = standardize
        self.eb = eb
        self.n_iter = n_iter
        self.priors = priors
        self.covariates = covariates
        self.n_jobs = n_jobs

    # ComBatGAM's handling of smooth terms (the same parameters, the same frozen bases)
    _terms = ComBatGAM._terms
    _design_formula = ComBatGAM._design_formula
    _smooth_values = ComBatGAM._smooth_values
    _linear_extrapolation = ComBatGAM._linear_extrapolation
    _smooth_design = ComBatGAM._smooth_design
    _check_smooth_bounds = ComBatGAM._check_smooth_bounds
    smooth_effect = ComBatGAM.smooth_effect

    # ------------------------------------------------------------------------------ checks
    def _check_params(self) -> None:
        super()._check_params()  # batch, subject, time, formula, standardize, eb, n_iter
        owner = self._owner()
        check_option("extrapolate", self.extrapolate, (None, "linear"), owner)
        check_integer("df", self.df, owner, minimum=5)
        terms = self._check_smooth_bounds(owner)
        for col in (self.subject, self.batch):
            if col in terms:
                raise FormulaError(f"the {'subject' if col == self.subject else 'batch'} column {col!r} cannot be "
                                   "a smooth term.")

    def _single_scans_only(self) -> None:
        warn(
            f"every subject in {self.subject!r} has a single scan: the subject variance cannot be told apart from "
            "the residual variance, so it is set to 0 (no subject effect) and the model is ComBat-GAM's "
            "(smoothing by REML). Check the subject column if scans were meant to repeat.",
            SingleScanWarning,
        )

    # ------------------------------------------------------------------------------ fitting
    def _fit_location(self, prep, B, counts, ref) -> None:
        terms, _ = self._terms()
        both = [t for t in terms if t in self.design_.variables]
        if both:
            raise FormulaError(
                f"covariate(s) {both} appear both as smooth terms and in the linear formula "
                f"{self.design_.formula!r}; the spline already contains the linear trend. Remove them from one."
            )
        bounds = self.smooth_bounds or {}
        xs = [self._smooth_values(prep.covariates, t) for t in terms]
        self._bases = [SplineBasis.from_data(x, t, df=self.df, degree=3, bounds=bounds.get(t))
                       for x, t in zip(xs, terms)]
        n, p = prep.Y.shape
        Z = np.hstack([b.transform(x) for b, x in zip(self._bases, xs)]) if xs else np.zeros((n, 0))
        self._penalties = [b.penalty() for b in self._bases]
        self._n_spline = Z.shape[1]
        self._smooth_parts: dict[str, tuple] = {}
        X = prep.X
        q = X.shape[1]
        prep.X = np.hstack([X, Z])  # LongComBat's fixed design [B | X | Z]: the spline columns follow X
        try:
            super()._fit_location(prep, B, counts, ref)
        finally:
            prep.X = X
            del self._penalties, self._n_spline
        a = self._arr
        coef = a.pop("beta")
        a["beta"], a["spline_coef"] = coef[:q], coef[q:]
        parts = self._smooth_parts
        del self._smooth_parts
        if "full" in parts:
            lam, edf = parts["full"]
        else:
            lam, edf = np.full(p, np.nan), np.zeros(p)
        if "observed" in parts:  # the features with NaN cells (LongComBat's missing path replaces them)
            cols = prep.mask.any(axis=0)
            lam, edf = lam.copy(), edf.copy()
            lam[cols], edf[cols] = parts["observed"]
        a["smoothing"], a["edf"] = lam, edf

    def _split(self, W):
        K = self._n_spline
        return W[:, :W.shape[1] - K], W[:, W.shape[1] - K:]

    def _to_mixed(self, fit: smooth_mixed.SmoothMixedFit) -> MixedFit:
        return MixedFit(beta=fit.coef, sigma2=fit.sigma2, ranef_cov=fit.tau2[:, None, None], loglik=fit.loglik,
                        blup=fit.blup[:, None, :], boundary=fit.boundary & fit.identified, reml=True)

    def _mixed_fit(self, Y, W, g, t) -> MixedFit:
        Wfix, Z = self._split(W)
        fit = smooth_mixed.fit_smooth_mixed(Y, Wfix, Z, self._penalties, g, terms=[b.name for b in self._bases],
                                            batch_name=str(self.batch))
        self._smooth_parts["full"] = (fit.smoothing, fit.edf)
        return self._to_mixed(fit)

    def _mixed_fit_observed(self, Y, W, g, mask, droppable: int, t) -> MixedFit:
        """Each feature on its observed rows (§1.8; :func:`featharm._core.smooth_mixed.fit_smooth_mixed_observed`:
        features fitted together from per-feature sums; a batch indicator without an observed row is left out
        of that feature's design, its coefficient NaN)."""
        Wfix, Z = self._split(W)
        fit = smooth_mixed.fit_smooth_mixed_observed(Y, mask, Wfix, Z, self._penalties, g, droppable=droppable,
                                                     n_groups=int(g.max()) + 1, terms=[b.name for b in self._bases],
                                                     batch_name=str(self.batch))
        self._smooth_parts["observed"] = (fit.smoothing, fit.edf)
        return self._to_mixed(fit)

    # ------------------------------------------------------------------------------ applying
    def _preserved_design(self, prep) -> np.ndarray:
        Z = self._smooth_design(prep.covariates)
        return np.asfortranarray(np.hstack([np.ones((prep.Y.shape[0], 1)), prep.X, Z]))

    def _preserved_coef(self, blk: slice) -> np.ndarray:
        a = self._arr
        return np.vstack([a["alpha"][None, blk], a["beta"][:, blk], a["spline_coef"][:, blk]])

    # ------------------------------------------------------------------------------ attributes / state
    def _extra_axes(self):
        return {**super()._extra_axes(), "spline_coef": ("basis", "feature"), "smoothing": ("feature",),
                "edf": ("feature",)}

    def _axis(self, name: str):
        if name == "basis":
            return pd.Index([c for b in self._bases for c in b.column_names()], name="basis")
        return super()._axis(name)

    def _n_null(self) -> int:
        """Unpenalized spline directions (the linear trend of each term): part of the REML degrees of freedom."""
        n0 = 0
        for b in self._bases:
            s = np.linalg.eigvalsh(b.penalty())
            n0 += int((s <= 1e-9 * s.max()).sum())
        return n0

    def _publish(self) -> None:
        super()._publish()
        self.smooth_terms_ = [b.name for b in self._bases]
        self.smooth_bases_ = list(self._bases)
        self.lambda_ = self.smoothing_.rename("lambda")
        if "feature_scale" in self._arr and self._bases:  # REML dof also lose the spline's null space
            self.loglik_ = self.loglik_ - self._n_null() * np.log(self._arr["feature_scale"])

    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        state, arrays = super()._get_state()
        state["smooth_bases"] = [b.to_dict() for b in self._bases]
        return state, arrays

    def _check_state(self, state):
        dims = super()._check_state(state)
        dims["basis"] = check_bases_state(state["smooth_bases"], self._terms()[0], allow_empty=True)
        return dims

    def _set_state(self, state, arrays) -> None:
        self._bases = [SplineBasis.from_dict(d) for d in state["smooth_bases"]]
        super()._set_state(state, arrays)
