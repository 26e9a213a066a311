"""Longitudinal ComBat (Beer et al. 2020): ComBat on the residuals of a linear mixed model per feature."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._core import eb, missing
from .._core.blocks import column_variance, crossprod
from .._validation import _show, batch_levels, check_integer, check_option, covariate_column, numeric_covariate
from ..design import batch_indicators
from ..formula import formula_columns
from ..exceptions import (
    BatchError,
    ConfoundingError,
    FormulaError,
    InputError,
    SingleScanWarning,
    SingularFitWarning,
    warn,
)
from ..mixed import MixedFit, fit_observed, fit_random_intercept, fit_random_slope
from ._base import BaseHarmonizer
from .combat import ComBat
from .._schema import DamagedState, Stored, check_levels

__all__ = ["LongComBat"]

_STANDARDIZE = ("reml", "msr", "marginal")


class LongComBat(BaseHarmonizer):
    """Harmonize longitudinal (repeated-scan) data with a subject random effect per feature.

    For every feature a linear mixed model ``y ~ formula + batch + (1 | subject)`` (or
    ``(1 + time | subject)``) is fitted by REML; its residuals are standardized, ComBat's empirical-Bayes
    location/scale estimates are computed per batch, and each scan is mapped to the size-weighted grand
    mean of the batches while keeping its subject's random effect (``docs/methods.md`` §3). The default
    reproduces R ``longCombat`` (jcbeer) with ``method = "REML"`` and ``niter = 30``: REML residual SD,
    sum-to-zero batch effects, conditional fitted values (fixed effects + BLUPs), 30 Jacobi EB updates.

    All features are fitted at once: the random-intercept REML likelihood has closed forms per subject
    block and is profiled over the variance ratio with a vectorized grid + golden-section search
    (:func:`featharm.mixed.fit_random_intercept`); no per-feature optimizer loop. The random-slope model
    takes a slower per-feature path (:func:`featharm.mixed.fit_random_slope`).

    Parameters
    ----------
    batch : str, default "site"
        Column of ``covariates`` holding the batch (site/scanner). It may change within a subject.
    subject : str, default "subject"
        Column of ``covariates`` identifying the subject (the random-effect grouping).
    time : str or None, default None
        Numeric column with the time of each scan (e.g. years since baseline). Needed for
        ``random_slope``; otherwise only checked (it is *not* added to ``formula``: write it there to model
        a mean trajectory, e.g. ``"age + sex + time"``).
    formula : str or None, default None
        Fixed effects to preserve (right-hand side, e.g. ``"age + sex + time"``); must not contain the
        batch or subject columns.
    random_slope : bool, default False
        ``(1 + time | subject)`` instead of ``(1 | subject)`` (correlated intercept and slope).
    standardize : {"reml", "msr", "marginal"}, default "reml"
        How residuals are standardized before the site effects are estimated:

        * ``"reml"`` (Beer et al., longCombat ``method = "REML"``): conditional residuals (after the
          subject's BLUP) divided by the REML residual SD. Conditional residuals are shrunk (the BLUPs
          absorb part of the noise), so delta* comes out below 1 (~0.75 for 3 visits) and dividing by
          sqrt(delta*) inflates the within-subject variance of the output.
        * ``"msr"`` (longCombat ``method = "MSR"``): conditional residuals divided by their own pooled
          SD. This rescales the conditional-residual variance, so delta* is ~1 and the within-subject
          variance is kept.
        * ``"marginal"``: marginal residuals (fixed effects only, the subject effect left in) divided by
          the model's marginal SD ``sqrt(sigma2 + tau2)``. The subject effects are standardized and
          rescaled with the noise, as in cross-sectional ComBat but with mixed-model fixed effects.
    eb : bool, default True
        Empirical-Bayes shrinkage of the site effects (``False``: raw batch moments).
    n_iter : int, default 30
        Jacobi EB iterations (longCombat's ``niter``; no convergence test).
    priors : {"auto", "group", "pool"} or mapping, default "auto"
        Empirical-Bayes priors per measure group (thickness, area, volume ...) or pooled across all features,
        as in :class:`~featharm.ComBat` (``"auto"``: ``"group"`` (this family has no ``compat``; pass ``priors="pool"`` to reproduce R longCombat)).

    covariates, n_jobs
        A covariate table looked up by the index of ``X``, and the BLAS threads; see :class:`~featharm.ComBat`.

    Attributes
    ----------
    batches_, batch_sizes_, feature_names_in_, design_ :
        As :class:`~featharm.ComBat` (``batch_sizes_`` counts scans).
    alpha_ : Series
        Size-weighted grand mean of the batch intercepts.
    beta_ : DataFrame
        Fixed covariate effects (covariate × feature); ``batch_coef_`` the batch intercepts.
    batch_effect_ : DataFrame
        Sum-to-zero batch effects in feature units (longCombat's adjusted ``batch_effects``).
    sigma_ : Series
        Standardizing SD of each feature (REML residual SD by default).
    residual_var_, ranef_var_ : Series
        REML residual variance and random-intercept variance; ``icc_`` = ranef_var / (ranef_var +
        residual_var).
    random_effects_ : DataFrame
        BLUP of each subject's random intercept (subject × feature); ``random_slopes_`` with
        ``random_slope``.
    gamma_hat_, delta_hat_, gamma_star_, delta_star_, priors_ :
        As :class:`~featharm.ComBat` (``delta_*`` are variances).
    n_iter_, constant_features_, n_features_in_, fit_warnings_ :
        As :class:`~featharm.ComBat` (``n_iter_`` counts the Jacobi EB iterations run per batch).
    singular_features_ : list
        Features whose random-intercept variance was estimated at 0.
    n_obs_ : DataFrame
        Only when fitted with missing feature values: observed scans of each feature at each batch.

    Notes
    -----
    *Missing values* (``docs/methods.md`` §1.8; longCombat requires complete data). NaN cells stay NaN and
    every observed cell is harmonized. Each feature's mixed model is fitted on the scans where it is
    observed (vectorized over features, :func:`featharm.mixed.fit_observed`), so a subject
    with a missing visit for one feature keeps its other visits there; the grand mean weights the batches
    by their full sizes over those present (ComBat's rule); the batch moments and the Jacobi EB use each
    batch's observed scans (an empty batch × feature gets the site's prior, as in ComBat). A feature without
    NaN keeps its complete-data fit bit for bit. New subjects' random effects at ``new_sites="estimate"``
    are predicted per feature from their observed scans.

    ``transform(X, covariates, new_sites=...)`` is the shared one (:meth:`BaseHarmonizer.transform`); for
    scans of batches not seen at fit, ``new_sites="estimate"`` estimates their location, scale and EB
    posterior (``n_iter`` Jacobi iterations, as at fit) from their own scans against the frozen model, each
    new batch needing ``min_new_site_size`` scans; rows of seen batches are unchanged.

    *Harmonized value.* ``y* = sigma (z - gamma*_b) / sqrt(delta*_b) + alpha + x'beta + u_s`` with
    ``z = (y - alpha - x'beta - u_s) / sigma`` (``u_s`` the subject's BLUP, or 0 with ``"marginal"``).

    *New data* (``transform``): a scan of a subject seen at fit keeps that subject's estimated random
    effect ``u_s`` (and slope × time), so re-applying the model to the training rows reproduces
    ``fit_transform`` exactly; a new scan of a known subject is harmonized like its earlier scans. A
    scan of a subject not seen at fit is harmonized at the population level (``u = 0``): its whole
    deviation from the fixed effects is standardized and rescaled, as cross-sectional ComBat does.

    *New sites* (``transform(..., new_sites="estimate")``, ``docs/methods.md`` §5.7): the scans of a batch not
    seen at fit are standardized against the frozen fixed effects and ``sigma`` after removing each
    subject's random effect: the fitted BLUP for a subject seen at fit, and for a subject not seen at fit a
    BLUP predicted from its scans at the new batch(es) under the frozen variance components (jointly with
    one intercept per new batch; the mixed-model equations of the fit with ``beta`` fixed). The new batch's
    ``gamma_hat``, ``delta_hat``, priors and 30 Jacobi EB iterations follow as at fit, and its scans keep
    their (fitted or predicted) random effect in the output. A new subject's scans at *seen* batches stay
    at population level (they must come out as without the new batch). Relabelling a fitted batch as new
    reproduces ``fit_transform`` (to rounding) when its subjects are known, or when they are new and were
    scanned at that batch only.

    References
    ----------
    Beer JC, Tustison NJ, Cook PA, et al. (2020) Longitudinal ComBat: a method for harmonizing
    longitudinal multi-scanner imaging data. *NeuroImage* 220:117129.

    Examples
    --------
    Simulated repeated scans (IXI is cross-sectional): 100 subjects with 2-4 visits at 3 sites.

    >>> import featharm as fh
    >>> sim = fh.datasets.make_longitudinal(n_subjects=100, n_sites=3, n_features=10, random_state=0)
    >>> hm = fh.LongComBat(batch="site", subject="subject", time="time", formula="age + sex + time")
    >>> Xh = hm.fit_transform(sim.X, sim.covariates)
    >>> Xh.shape == sim.X.shape and hm.random_effects_.shape
    (100, 10)
    """

    _schema_name = "longcombat"
    _row_major_blocks = False  # mixed-model fits per feature: column-major, as they were written
    _feature_units = {**BaseHarmonizer._feature_units, "batch_effect": 1, "residual_var": 2, "ranef_var": 2}
    _stored = {
        **BaseHarmonizer._stored,
        "batch_effect": Stored(("batch", "feature"), values="observed"),
        "residual_var": Stored(("feature",), values="sd"),
        "ranef_var": Stored(("feature",), values="nonnegative"),
        "ranef_cov": Stored(("feature", "random", "random"), values="finite"),
        "blup": Stored(("subject", "random", "feature"), values="finite"),
        "loglik": Stored(("feature",)),
        "singular": Stored(("feature",), values="flag"),
    }
    _state_extra = ("subjects",)
    _supports_missing = True

    def __init__(self, *, batch="site", subject="subject", time=None, formula=None, random_slope=False,
                 standardize="reml", eb=True, n_iter=30, priors="auto", covariates=None, n_jobs=None):
        self.batch = batch
        self.subject = subject
        self.time = time
        self.formula = formula
        self.random_slope = random_slope
        self.standardize = standardize
        self.eb = eb
        self.n_iter = n_iter
        self.priors = priors
        self.covariates = covariates
        self.n_jobs = n_jobs

    # ------------------------------------------------------------------------------ checks
    def _check_params(self) -> None:
        super()._check_params()  # batch, formula, eb
        owner = self._owner()
        check_option("standardize", self.standardize, _STANDARDIZE, owner)
        check_option("random_slope", self.random_slope, (True, False), owner)
        check_integer("n_iter", self.n_iter, owner, minimum=0)
        if not isinstance(self.subject, str):
            raise InputError(f"The 'subject' parameter of {owner} must be a column name. Got {self.subject!r}.")
        if self.time is not None and not isinstance(self.time, str):
            raise InputError(f"The 'time' parameter of {owner} must be a column name or None. Got {self.time!r}.")
        if self.random_slope and self.time is None:
            raise InputError(f"random_slope=True needs the time column: pass time=<column> to {owner}.")
        used = formula_columns(self.formula, [self.subject, self.batch])
        if used:
            for col in (self.subject, self.batch):
                if col in used:
                    raise FormulaError(
                        f"formula {self.formula!r} uses {col!r}; the subject enters as a random effect and "
                        "the batch is modelled separately. Remove it from the formula."
                    )

    def _allow_single_subject(self) -> bool:
        return True  # batches with < 2 scans get a longitudinal-specific error in _subject_codes

    def _subject_series(self, cov: pd.DataFrame) -> pd.Series:
        return covariate_column(cov, self.subject, "subject", fix="Pass subject=<name of the subject id column>.",
                                missing_fix="every scan needs a subject id.")

    def _time_values(self, cov: pd.DataFrame) -> np.ndarray | None:
        if self.time is None:
            return None
        return numeric_covariate(cov, self.time, "time",
                                 fix="Pass time=<numeric column> (e.g. years since baseline) or time=None.",
                                 dtype_fix="e.g. years since baseline")

    def _encode_subjects(self, s: pd.Series) -> np.ndarray:
        """Index of each row's subject in ``subjects_`` (-1 for subjects not seen at fit)."""
        levels = self._subject_levels
        numeric = bool(levels) and not isinstance(levels[0], str)
        vals = s.to_numpy() if numeric and pd.api.types.is_numeric_dtype(s) else s.astype(str).to_numpy()
        if numeric and not pd.api.types.is_numeric_dtype(s):
            levels = [str(v) for v in levels]
        lut = {v: i for i, v in enumerate(levels)}
        return np.fromiter((lut.get(v.item() if hasattr(v, "item") else v, -1) for v in vals),
                           dtype=np.intp, count=len(vals))

    # ------------------------------------------------------------------------------ fitting
    def _fit_location(self, prep, B, counts, ref) -> None:
        cov = prep.covariates
        subj = self._subject_series(cov)
        t = self._time_values(cov)
        small = [f"{lv!r} ({int(c)} scan{'s' if c != 1 else ''})" for lv, c in zip(self.batches_, counts) if c < 2]
        if small:
            raise BatchError(
                f"batch(es) of {self.batch!r} with fewer than 2 scans: {', '.join(small)}; their scale cannot "
                "be estimated (longCombat needs >= 2 observations per batch). Merge or drop them."
            )
        self._subject_levels = batch_levels(subj)
        g = self._encode_subjects(subj)
        S = len(self._subject_levels)
        ns = np.bincount(g, minlength=S)
        if (ns < 2).all():
            self._single_scans_only()
        elif (ns < 2).any():
            single = [self._subject_levels[i] for i in np.flatnonzero(ns < 2)]
            warn(
                f"{len(single)} of {S} subjects have a single scan (e.g. {_show(single, 3)}); they inform the "
                "fixed effects and the variances but their random effect is shrunk strongly. Fine if few; "
                "otherwise check the subject column.",
                SingleScanWarning,
            )
        if t is not None:
            dup = pd.DataFrame({"s": g, "t": t}).duplicated()
            if dup.any():
                warn(f"{int(dup.sum())} scan(s) repeat a (subject, {self.time}) pair, e.g. row "
                     f"{prep.index[np.flatnonzero(dup.to_numpy())[0]]!r}; check for duplicated scans.",
                     SingleScanWarning)
        Y = prep.Y
        n, p = Y.shape
        W = np.hstack([B, prep.X])
        Z = np.column_stack([np.ones(n), t]) if self.random_slope else None
        if prep.mask is not None:  # NaN cells: each feature's mixed model on its observed scans (§1.8)
            self._fit_location_missing(prep, B, W, g, t, Z, counts, ref)
        else:
            fit = self._mixed_fit(Y, W, g, t)
            self._arr.update(self._standardize_fit(Y, W, g, Z, prep.codes, counts, fit))
            self._delta_raw = self._arr.pop("delta_raw")
            self._mark_constant(np.abs(self._arr["alpha"]), prep=prep)
        sing = self._arr["singular"].astype(bool) & ~self._arr["constant"]
        if sing.any():
            names = list(self.feature_names_in_[sing])
            warn(
                f"singular fit: the subject random-effect variance is estimated at 0 for {len(names)} "
                f"feature(s) ({_show(names, 5)}); for them the model reduces to fixed effects only (no "
                "subject effect kept). Check that the subject column is right and subjects have repeat scans.",
                SingularFitWarning,
            )

    def _single_scans_only(self) -> None:
        """Every subject has one scan: the subject effect cannot be told from the residual."""
        raise InputError(
            f"every subject in {self.subject!r} has a single scan, so the subject random effect cannot be "
            "separated from the residual; use ComBat for cross-sectional data."
        )

    def _mixed_fit(self, Y, W, g, t) -> MixedFit:
        """The REML mixed model of every column of ``Y`` (complete) on the fixed design ``W = [B | X]``."""
        if self.random_slope:
            return fit_random_slope(Y, W, g, t, reml=True)
        return fit_random_intercept(Y, W, g, reml=True)

    def _mixed_fit_observed(self, Y, W, g, mask, droppable: int, t) -> MixedFit:
        """:meth:`_mixed_fit` of every column of ``Y`` on its observed rows (``mask`` True = missing); the first
        ``droppable`` columns of ``W`` (batch indicators) are dropped where they have no observed row."""
        return fit_observed(Y, W, g, mask, droppable=droppable, time=t, random_slope=bool(self.random_slope),
                            reml=True)

    def _standardize_fit(self, Y, W, g, Z, codes, counts, fit) -> dict:
        """longCombat's steps 2–5 from the mixed-model fit of complete features: grand mean, batch effects,
        ``sigma``, standardized residuals and their batch moments (the learned arrays, ``delta_raw`` too)."""
        n = Y.shape[0]
        m = counts.shape[0]
        coef = fit.beta
        alpha = (counts / n) @ coef[:m]  # sum_i n_i gamma_i = 0 (docs/methods.md §3 step 3)
        batch_effect = coef[:m] - alpha
        U = fit.random_part(g, Z)
        R = Y - W @ coef  # marginal residuals
        if self.standardize != "marginal":
            R -= U  # conditional residuals (y - fitted(lmer))
        if self.standardize == "reml":
            sigma = np.sqrt(fit.sigma2)
        elif self.standardize == "msr":
            sigma = R.std(axis=0)  # sqrt(sum (r - rbar)^2 / L), as longCombat's MSR
        else:
            sigma = np.sqrt(fit.sigma2 + fit.ranef_cov[:, 0, 0])
        R += batch_effect[codes]
        with np.errstate(divide="ignore", invalid="ignore"):
            R /= sigma
        onehot = batch_indicators(codes, m)
        gamma_hat = crossprod(onehot, R) / counts[:, None]
        R -= gamma_hat[codes]
        delta_raw = crossprod(onehot, R * R) / (counts - 1.0)[:, None]
        delta_hat = eb.delta_from_raw(delta_raw)
        return dict(alpha=alpha, sigma=sigma, beta=coef[m:], batch_coef=coef[:m], gamma_hat=gamma_hat,
                    delta_hat=delta_hat, batch_effect=batch_effect, residual_var=fit.sigma2,
                    ranef_var=fit.ranef_cov[:, 0, 0].copy(), ranef_cov=fit.ranef_cov, blup=fit.blup,
                    loglik=fit.loglik, singular=fit.boundary.astype(np.float64), delta_raw=delta_raw)

    def _fit_location_missing(self, prep, B, W, g, t, Z, counts, ref) -> None:
        """The mixed model and S2–S5 with NaN cells (§1.8): each feature's REML fit on the scans where it is
        observed (:func:`featharm.mixed.fit_observed`), the grand
        mean over the batches present weighted by the full batch sizes (ComBat's rule), ``sigma`` and the
        batch moments over the observed cells. Fills ``self._arr`` (with ``n_obs``)."""
        Y, mask, codes = prep.Y, prep.mask, prep.codes
        n, p = Y.shape
        m = B.shape[1]
        names = self.feature_names_in_
        n_obs = missing.observed_counts(mask, codes, counts)
        ComBat._check_observed(self, n_obs, prep.X.shape[1], ref)  # ComBat's rules (§1.8)
        grams = missing.observed_grams(prep.X, codes, np.eye(m), mask)
        if grams.deficient.size:
            bad = [str(names[j]) for j in grams.deficient]
            raise ConfoundingError(
                f"on the scans where they are observed, the fixed-effects design (batch and formula) of {len(bad)} "
                f"feature(s) is rank deficient: {bad[:5]}{' ...' if len(bad) > 5 else ''} (a covariate constant "
                "within batches, or a combination of the others, once the missing scans are left out). Drop those "
                "features or that covariate."
            )
        inc = mask.any(axis=0)
        Y0 = np.array(Y, order="K", copy=True)  # the same memory layout as Y: BLAS rounds layouts differently
        Y0[mask] = 0.0
        full = None
        if not inc.all():
            # features without NaN: the complete-data computation on the whole table (the same calls on the
            # same shapes, so the same numbers to the last bit); the NaN columns are replaced below
            fit_c = self._mixed_fit(Y0, W, g, t)
            full = self._standardize_fit(Y0, W, g, Z, codes, counts, fit_c)
        cols = np.flatnonzero(inc)
        fit = self._mixed_fit_observed(Y[:, cols], W, g, mask[:, cols], m, t)
        r = fit.ranef_cov.shape[1]
        fit_all = MixedFit(beta=np.zeros((W.shape[1], p)), sigma2=np.ones(p), ranef_cov=np.zeros((p, r, r)),
                           loglik=np.zeros(p), blup=np.zeros((fit.blup.shape[0], r, p)),
                           boundary=np.zeros(p, dtype=bool), reml=True)
        for name in ("beta", "blup"):
            getattr(fit_all, name)[..., cols] = getattr(fit, name)
        for name in ("sigma2", "ranef_cov", "loglik", "boundary"):
            getattr(fit_all, name)[cols] = getattr(fit, name)
        fit = fit_all
        coef = fit.beta  # NaN for a batch without observed values of a feature
        present = n_obs > 0
        alpha = missing.pooled_mean(coef[:m], n_obs, counts)
        batch_effect = np.where(present, coef[:m] - alpha, np.nan)
        U = fit.random_part(g, Z)
        R = Y - W @ np.nan_to_num(coef, nan=0.0)  # marginal residuals (NaN cells stay NaN)
        if self.standardize != "marginal":
            R -= U  # conditional residuals
        if self.standardize == "reml":
            sigma = np.sqrt(fit.sigma2)
        elif self.standardize == "msr":
            sigma = np.nanstd(R, axis=0)  # over the observed scans
        else:
            sigma = np.sqrt(fit.sigma2 + fit.ranef_cov[:, 0, 0])
        R += np.nan_to_num(batch_effect, nan=0.0)[codes]
        with np.errstate(divide="ignore", invalid="ignore"):
            R /= sigma
        gamma_hat, delta_hat, delta_raw = missing.grouped_moments(R, mask, codes, n_obs)
        self._arr.update(alpha=alpha, sigma=sigma, beta=coef[m:], batch_coef=coef[:m], gamma_hat=gamma_hat,
                         delta_hat=delta_hat, batch_effect=batch_effect, residual_var=fit.sigma2,
                         ranef_var=fit.ranef_cov[:, 0, 0].copy(), ranef_cov=fit.ranef_cov, blup=fit.blup,
                         loglik=fit.loglik, singular=fit.boundary.astype(np.float64), n_obs=n_obs.astype(np.float64))
        self._delta_raw = delta_raw
        variance = missing.observed_variance(Y0, mask)
        if full is not None:  # the features without NaN: exactly the complete-data numbers
            keep = ~inc
            a = self._arr
            for name, arr in full.items():
                dest = self._delta_raw if name == "delta_raw" else a[name]
                if name == "ranef_cov":  # features first
                    dest[keep] = arr[keep]
                else:
                    dest[..., keep] = arr[..., keep]
            variance[keep] = column_variance(Y[:, keep])
        ComBat._warn_sparse_cells(self, n_obs, ref)
        self._mark_constant(np.abs(self._arr["alpha"]), variance)

    # ------------------------------------------------------------------------------ applying
    def _random_part(self, prep, rows=None) -> np.ndarray:
        """Each row's subject random effect (0 for subjects not seen at fit, or with "marginal").

        ``rows`` (a boolean mask) restricts it to those rows. Rows of batches unseen at fit whose random
        effects were predicted by :meth:`_standardized` (``prep.new_random``) get those predictions.
        """
        cov = prep.covariates if rows is None else prep.covariates.iloc[np.flatnonzero(rows)]
        n, p = len(cov), prep.Y.shape[1]
        if self.standardize == "marginal":
            return np.zeros((n, p))
        g = self._encode_subjects(self._subject_series(cov))
        known = g >= 0
        u = np.zeros((n, self._arr["blup"].shape[1], p))
        u[known] = self._arr["blup"][g[known]]
        if self.random_slope:
            t = self._time_values(cov)
            U = u[:, 0, :] + t[:, None] * u[:, 1, :]
        else:
            U = u[:, 0, :]
        if rows is None and prep.new_random is not None:
            new_rows, U_new = prep.new_random
            U[new_rows] = U_new
        return U

    def _standardized(self, prep, rows) -> tuple[np.ndarray, np.ndarray]:
        """``z`` of the rows of batches unseen at fit (``docs/methods.md`` §5.7 with the mixed model).

        ``z = (y - alpha - x'beta - u_s) / sigma`` with the frozen fixed effects and ``sigma``. A subject
        seen at fit keeps its BLUP ``u_s``. The random effects of subjects not seen at fit are predicted
        from their scans at the new batches, jointly with one intercept per new batch, by generalized
        least squares / BLUP under the frozen variance components (residual variance, random-effect
        covariance): the mixed-model equations of the fit, restricted to the new rows with ``beta`` fixed.
        They are returned with ``z`` (the base keeps them in ``prep.new_random``) so that :meth:`_harmonize`
        adds them back.
        """
        a = self._arr
        keep = ~a["constant"]
        D = self._preserved_design(prep)[rows]
        R = prep.Y[rows] - D @ self._preserved_coef(slice(None))
        U = self._random_part(prep, rows)  # known subjects' BLUPs; 0 for the others (and with "marginal")
        R -= U
        if self.standardize != "marginal":
            cov = prep.covariates.iloc[np.flatnonzero(rows)]
            subj = self._subject_series(cov)
            unknown = self._encode_subjects(subj) < 0
            if unknown.any():
                t = self._time_values(cov)[unknown] if self.random_slope else None
                U_new = np.zeros((int(unknown.sum()), R.shape[1]))
                U_new[:, keep] = _predict_new_subjects_observed(
                    R[:, keep], prep.codes[rows] - len(self.batches_), len(prep.new_levels), unknown,
                    pd.factorize(subj[unknown])[0], t, a["residual_var"][keep], a["ranef_cov"][keep])
                U[unknown] = U_new
                R[unknown] -= U_new
        U[:, ~keep] = 0.0
        return R[:, keep] / a["sigma"][keep], U

    def _eb_options(self) -> eb.EBOptions:
        """longCombat's EB: parametric, a fixed number of Jacobi updates (§3 step 6), for the fitted
        batches and for new ones (§5.7)."""
        return eb.EBOptions(eb=bool(self.eb), parametric=True, mean_only=False, jacobi_iter=int(self.n_iter))

    def _harmonize(self, prep) -> np.ndarray:
        U = self._random_part(prep)
        Y = prep.Y
        const = self._arr["constant"]
        U[:, const] = 0.0
        prep.Y = Y - U
        try:
            out = super()._harmonize(prep)
        finally:
            prep.Y = Y
        out += U
        return out

    # ------------------------------------------------------------------------------ attributes / state
    def _extra_axes(self):
        return {"batch_effect": ("batch", "feature"), "residual_var": ("feature",),
                "ranef_var": ("feature",), "loglik": ("feature",)}

    def _publish(self) -> None:
        super()._publish()
        a = self._arr
        subjects = pd.Index(self._subject_levels, name=str(self.subject))
        feats = pd.Index(self.feature_names_in_, name="feature")
        self.subjects_ = np.asarray(self._subject_levels, dtype=object)
        blup = self._in_input_units(a["blup"], 1)
        self.random_effects_ = pd.DataFrame(blup[:, 0, :], index=subjects, columns=feats)
        if blup.shape[1] > 1:
            self.random_slopes_ = pd.DataFrame(blup[:, 1, :], index=subjects, columns=feats)
        with np.errstate(divide="ignore", invalid="ignore"):
            icc = a["ranef_var"] / (a["ranef_var"] + a["residual_var"])
        self.icc_ = pd.Series(icc, index=feats, name="icc")
        self.singular_features_ = list(self.feature_names_in_[a["singular"].astype(bool)])
        if "feature_scale" in a:  # REML log-likelihood of y, not of the rescaled s y: + (n - k) log s
            if "n_obs" in a:  # each feature's observed scans and the batches present (§1.8)
                dof = a["n_obs"].sum(axis=0) - (a["n_obs"] > 0).sum(axis=0) - len(self.design_.columns)
            else:
                dof = a["batch_sizes"].sum() - len(self.batches_) - len(self.design_.columns)
            self.loglik_ = self.loglik_ + dof * np.log(a["feature_scale"])

    def _get_state(self):
        state, arrays = super()._get_state()
        state["subjects"] = [s.item() if hasattr(s, "item") else s for s in self._subject_levels]
        return state, arrays

    def _check_state(self, state):
        dims = super()._check_state(state)
        dims["subject"] = len(check_levels(state["subjects"], "state.subjects", "subject ids"))
        dims["random"] = 2 if self.random_slope else 1
        return dims

    def _check_arrays(self, state, arrays, dims) -> None:
        # each feature's random-effect covariance is a covariance matrix (the new-subject BLUPs solve with it)
        G = arrays["ranef_cov"]
        d = np.diagonal(G, axis1=1, axis2=2)
        bad = (d < 0).any(axis=1) | (np.abs(G - G.transpose(0, 2, 1)) > 1e-12 * (1 + np.abs(G))).any(axis=(1, 2))
        if G.shape[1] == 2:
            bad |= G[:, 0, 0] * G[:, 1, 1] - G[:, 0, 1] * G[:, 1, 0] < -1e-10 * np.abs(G[:, 0, 0] * G[:, 1, 1])
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            raise DamagedState("array 'ranef_cov'", f"is not a covariance matrix for feature "
                               f"{state['feature_names'][j]!r}", "symmetric positive semi-definite matrices")

    def _set_state(self, state, arrays) -> None:
        self._subject_levels = list(state["subjects"])
        super()._set_state(state, arrays)


def _predict_new_subjects(R, site, k, unknown, h, t, sigma2, G) -> np.ndarray:
    """BLUPs ``Z u`` of subjects not seen at fit, for the rows of batches unseen at fit.

    Mixed-model equations with the fixed effects and the variance components frozen: the residuals ``R``
    (rows × features; known subjects' BLUPs already removed) are ``A c + Z u + e`` with ``A`` the new-batch
    indicators (``site`` in 0..k-1), ``c`` one intercept per new batch and feature, ``u_s ~ N(0, G)`` for the
    unknown subjects (rows ``unknown``, subject codes ``h``), ``e ~ N(0, sigma2)``. The ``u`` are absorbed per
    subject, ``c`` is solved (k × k per feature), and ``u_s = P_s Z_s'(r_s - A_s c)`` with
    ``P_s = (G Z_s'Z_s + sigma2 I)^{-1} G`` (defined also when ``G`` is singular). Vectorized over
    features; returns the random part of each unknown row (unknown rows × features).
    """
    from scipy import sparse

    n_u = int(unknown.sum())
    nu = int(h.max()) + 1
    q = G.shape[1]
    Zu = np.ones((n_u, 1)) if q == 1 else np.column_stack([np.ones(n_u), t])
    su = site[unknown]
    Ht = sparse.csr_matrix((np.ones(n_u), (h, np.arange(n_u))), shape=(nu, n_u))
    ZtZ = np.zeros((nu, q, q))
    ZtA = np.zeros((nu, q, k))
    for i in range(q):
        np.add.at(ZtA[:, i, :], (h, su), Zu[:, i])
        for j in range(q):
            np.add.at(ZtZ[:, i, j], h, Zu[:, i] * Zu[:, j])
    Ru = R[unknown]
    Ztr = np.stack([Ht @ (Zu[:, [i]] * Ru) for i in range(q)], axis=1)  # nu × q × p
    M = np.einsum("fqr,srt->sfqt", G, ZtZ) + sigma2[None, :, None, None] * np.eye(q)
    P = np.linalg.solve(M, np.broadcast_to(G, M.shape))  # nu × p × q × q
    counts = np.bincount(site, minlength=k).astype(np.float64)
    C = np.diag(counts)[None] - np.einsum("sqk,sfqr,srl->fkl", ZtA, P, ZtA)
    empty = np.flatnonzero(counts == 0)  # a new batch without rows here (missing values): intercept held at 0
    C[:, empty, empty] = 1.0
    Atr = np.stack([R[site == j].sum(axis=0) for j in range(k)], axis=1)  # p × k
    rhs = Atr - np.einsum("sqk,sfqr,srf->fk", ZtA, P, Ztr)
    c = np.linalg.solve(C, rhs[..., None])[..., 0]  # p × k
    u = np.einsum("sfqr,srf->sfq", P, Ztr - np.einsum("sqk,fk->sqf", ZtA, c))
    return np.einsum("nq,nfq->nf", Zu, u[h])


def _predict_new_subjects_observed(R, site, k, unknown, h, t, sigma2, G) -> np.ndarray:
    """:func:`_predict_new_subjects` with NaN cells in ``R`` (§1.8): the same equations for each feature on
    the rows where it is observed, features missing on the same rows solved together. The random part of a
    row is 0 where the feature is missing (that cell's output is NaN anyway)."""
    nan = np.isnan(R)
    if not nan.any():
        return _predict_new_subjects(R, site, k, unknown, h, t, sigma2, G)
    from .._core.missing import missingness_patterns

    out = np.zeros((int(unknown.sum()), R.shape[1]))
    first, inverse = missingness_patterns(nan)
    for u, col in enumerate(first):
        feats = np.flatnonzero(inverse == u)
        rows = ~nan[:, col]
        sub = rows[unknown]  # the unknown subjects' rows observed for these features
        if not sub.any():
            continue
        h_sub = pd.factorize(h[sub])[0]
        t_sub = None if t is None else t[sub]
        out[np.ix_(np.flatnonzero(sub), feats)] = _predict_new_subjects(
            R[rows][:, feats], site[rows], k, unknown[rows], h_sub, t_sub, sigma2[feats], G[feats])
    return out
