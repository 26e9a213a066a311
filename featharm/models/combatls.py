"""ComBatLS (Gardner et al. 2025): ComBat with covariate-dependent variance (``docs/methods.md`` §5.1)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .._core import eb, missing, ols
from .._core.location_scale import fit_location_scale, scale_rank_deficient
from .._core.blocks import crossprod, iter_blocks, run_blocks
from .._core.parallel import one_blas_thread
from .._progress import Progress
from .._validation import check_integer, check_positive_number
from ..design import CovariateDesign, batch_indicators, check_full_rank
from ..exceptions import ConfoundingError, ConvergenceWarning, FormulaError, warn
from ._base import BaseHarmonizer, _Prepared
from .combat import ComBat
from .._schema import Stored, check_design

__all__ = ["ComBatLS"]


class ComBatLS(BaseHarmonizer):
    """ComBat whose residual variance may depend on covariates (location and scale preserved).

    Model (``docs/methods.md`` §5.1): ``y ~ N(mu(x) + gamma_site, delta_site^2 * sigma(x)^2)`` per feature, with
    ``mu(x)`` the ``formula`` (identity link) and ``log sigma(x)`` the ``scale_formula`` (log link), as
    ComBatFamily's ``combatls`` (gamlss ``NO()``). Steps:

    1. Per feature, the maximum-likelihood location–scale fit of ``y ~ formula + batch`` (batch in the
       mean only) with ``log sigma ~ scale_formula``, computed for all features at once
       (:func:`featharm._core.location_scale.fit_location_scale`).
    2. Pooled predictions: the batch indicators are replaced by the batch shares ``n_i / n`` (or the
       reference batch), giving ``mu~(x) = alpha + x'beta`` and ``sigma~(x)``.
    3. ``z = (y - mu~) / sigma~``, per-site mean ``gamma_hat`` and variance (ddof = 1) ``delta_hat``, and
       empirical Bayes exactly as in ComBat (S6–S7).
    4. ``y* = sigma~(x) (z - gamma*) / sqrt(delta*) + mu~(x)``.

    Each subject keeps the variance its covariates predict, so a covariate that changes the spread of a
    feature (variability growing with age) keeps doing so; ComBat, which standardizes by one pooled SD,
    flattens such an effect towards the site-weighted average. With ``scale_formula=None`` (a constant SD,
    the R default ``sigma.formula = ~ 1``) ComBatLS is ComBat.

    Parameters
    ----------
    batch : str, default "site"
        Batch column of ``covariates``.
    formula : str or None, default None
        Covariates of the mean (right-hand side), as in :class:`~featharm.ComBat`.
    scale_formula : str or None, default None
        Covariates of ``log sigma`` (right-hand side, e.g. ``"age + sex"``); ``None`` is a constant SD.
        The batch cannot be in it (its scale effect is what ComBat removes).
    eb, parametric, mean_only, mean_only_form, ref_batch, tol, max_iter
        As in :class:`~featharm.ComBat`.
    fit_tol : float, default 1e-8
        The location–scale fit stops when no feature's deviance changes by more than this.
    fit_max_iter : int, default 200
        Cap on location–scale iterations (a :class:`~featharm.exceptions.ConvergenceWarning` when hit).
    priors : {"auto", "group", "pool"} or mapping, default "auto"
        Empirical-Bayes priors per measure group (thickness, area, volume ...) or pooled across all features,
        as in :class:`~featharm.ComBat` (``"auto"``: ``"group"`` (this family has no ``compat``)).

    covariates, n_jobs
        A covariate table looked up by the index of ``X``, and the BLAS threads; see :class:`~featharm.ComBat`.

    Attributes
    ----------
    alpha_, beta_, batch_coef_ : Series / DataFrame
        Mean model: pooled intercept, covariate coefficients, batch coefficients.
    scale_coef_ : DataFrame
        Coefficients of ``log sigma`` (scale design column × feature; the first row is the intercept).
    scale_design_ : CovariateDesign
        The frozen encoding of ``scale_formula``.
    sigma_ : Series
        Geometric mean over the training subjects of each feature's predicted SD ``sigma~(x)`` (a summary;
        standardization uses each subject's own ``sigma~(x)``).
    deviance_ : Series
        ``-2 log L`` of each feature's location–scale fit.
    fit_n_iter_ : int
        Iterations of the location–scale fit.
    gamma_hat_, delta_hat_, gamma_star_, delta_star_, priors_, n_iter_, batch_sizes_, constant_features_
        As in :class:`~featharm.ComBat`.
    batches_, feature_names_in_, n_features_in_, design_, fit_warnings_ : various
        As in :class:`~featharm.ComBat`.

    Notes
    -----
    *Missing values* (``docs/methods.md`` §1.8): NaN cells stay NaN and every observed cell is harmonized.
    Each feature's mean and scale models are fitted on the rows where it is observed (missing cells have
    weight 0; the scale step's information ``2 S'S`` is that of the observed rows); ``gamma_hat`` and
    ``delta_hat`` come from the observed standardized values; the grand mean weights the batches by their
    full sizes over those present (ComBat's rule); ``n_obs_`` holds the counts. Empty or single site ×
    feature cells, errors and warnings are ComBat's. A feature without NaN equals its complete-data fit to
    the fit tolerance (``fit_tol``), not bit for bit: a block of features is iterated until all of its
    features have converged.

    With ``ref_batch`` the scale model is fitted on all rows (as ComBatFamily), whereas ComBat takes the
    pooled variance from the reference rows only (sva/neuroCombat); the reference rows come back unchanged.
    R's gamlss stops when the global deviance changes by less than 0.001, so it agrees with this exact
    maximum-likelihood fit to about 1e-4–1e-3 only. ``transform(..., new_sites="estimate")`` standardizes
    an unseen site by each subject's predicted SD, then estimates its effects as ComBat does.

    Examples
    --------
    >>> import featharm as fh
    >>> data = fh.datasets.load_ixi()
    >>> X = data[fh.datasets.ixi_feature_columns(data)]
    >>> hm = fh.ComBatLS(batch="site", formula="age + sex", scale_formula="age + sex")
    >>> Xh = hm.fit_transform(X, data)
    >>> list(hm.scale_coef_.index)
    ['Intercept', 'age', 'sex[T.M]']
    """

    _schema_name = "combatls"
    _stored = {
        **BaseHarmonizer._stored,
        "scale_coef": Stored(("scale_column", "feature"), values="finite"),
        "deviance": Stored(("feature",)),
        "fit_n_iter": Stored(("one",), values="count"),
    }
    _state_extra = ("scale_design",)
    _supports_missing = True

    def __init__(self, *, batch="site", formula=None, scale_formula=None, eb=True, parametric=True,
                 mean_only=False, mean_only_form="sva", ref_batch=None, tol=1e-4, max_iter=1000,
                 fit_tol=1e-8, fit_max_iter=200, priors="auto", covariates=None, n_jobs=None):
        self.batch = batch
        self.formula = formula
        self.scale_formula = scale_formula
        self.eb = eb
        self.parametric = parametric
        self.mean_only = mean_only
        self.mean_only_form = mean_only_form
        self.ref_batch = ref_batch
        self.tol = tol
        self.max_iter = max_iter
        self.fit_tol = fit_tol
        self.fit_max_iter = fit_max_iter
        self.priors = priors
        self.covariates = covariates
        self.n_jobs = n_jobs

    def _eb_options(self):
        return self._combat_eb_options()

    def _check_params(self) -> None:
        super()._check_params()  # batch, formula, eb, parametric, mean_only(_form), ref_batch, tol, max_iter
        owner = self._owner()
        if self.scale_formula is not None and not isinstance(self.scale_formula, str):
            raise FormulaError(f"The 'scale_formula' parameter of {owner} must be a string such as 'age + sex' "
                               f"or None. Got {self.scale_formula!r} instead.")
        check_positive_number("fit_tol", self.fit_tol, owner)
        check_integer("fit_max_iter", self.fit_max_iter, owner)

    # ------------------------------------------------------------------------------ fitting
    def _scale_matrix(self, covariates: pd.DataFrame) -> np.ndarray:
        Xs = self.scale_design_.transform(covariates)
        return np.hstack([np.ones((Xs.shape[0], 1)), Xs])

    def _fit_location(self, prep: _Prepared, B: np.ndarray, counts: np.ndarray, ref) -> None:
        Y = prep.Y
        n, p = Y.shape
        m = B.shape[1]
        try:
            self.scale_design_, _ = CovariateDesign.fit(self.scale_formula, prep.covariates, exclude=(self.batch,))
        except FormulaError as exc:
            raise FormulaError(f"scale_formula: {exc}") from None
        S = self._scale_matrix(prep.covariates)
        if S.shape[1] > 1:  # each scale column must vary, and not be a combination of the others
            Sc = S.copy()
            Sc[:, 1:] -= Sc[:, 1:].mean(axis=0)
            norms = np.linalg.norm(Sc, axis=0)
            rdiag = np.abs(np.diag(np.linalg.qr(Sc, mode="r")))
            bad = [col for col, r, nrm in zip(self.scale_design_.columns, rdiag[1:], norms[1:])
                   if nrm == 0 or r <= 1e-8 * nrm]
            if bad:
                raise ConfoundingError(
                    f"scale_formula {self.scale_formula!r} gives a rank-deficient design: column(s) {bad} are "
                    "constant or a combination of the other columns. Remove them from scale_formula."
                )
        # a scale column constant within sites (or nearly so) would take the sites' scale effects into the
        # preserved sigma(x): checked against the batch exactly as the mean formula is (_fit_model)
        try:
            check_full_rank(B, S[:, 1:], self.scale_design_.columns, batch_name=str(self.batch))
        except ConfoundingError as exc:
            raise ConfoundingError(f"scale_formula {self.scale_formula!r}: {exc}") from None
        if prep.mask is not None:  # NaN cells: each feature on its observed rows (§1.8)
            return self._fit_location_missing(prep, B, counts, ref, S)
        W = np.hstack([B, prep.X])
        qr = ols.GramSolver(W)
        onehot = batch_indicators(prep.codes, m)
        batch_rows = batch_indicators(np.arange(m), m, ref)
        blocks = list(iter_blocks(p, n))  # features are independent: bounded temporaries per block

        def pooled_alpha(coef):
            return (counts / counts.sum()) @ (batch_rows @ coef[:m]) if ref is None else coef[ref].copy()

        # OLS start (and the constant-feature check, on the OLS residual SD as ComBat)
        coef = np.empty((W.shape[1], p))
        ss_ols = np.empty((m, p))

        def ols_start(some):  # blocks of features are independent: dealt between threads, one BLAS thread
            for blk in some:  # each (the numbers then do not depend on the number of threads)
                coef[:, blk] = qr.solve(Y[:, blk])
                ss_ols[:, blk] = ols.residual_ss(Y[:, blk], qr.W, coef[:, blk], onehot)

        run_blocks(ols_start, blocks, Y.size)
        alpha = pooled_alpha(coef)
        self._arr.update(alpha=alpha, sigma=np.sqrt(ss_ols.sum(axis=0) / n))
        self._delta_raw = np.ones((m, p))
        self._arr.update(gamma_hat=np.zeros((m, p)), delta_hat=np.ones((m, p)))
        self._mark_constant(np.abs(alpha), prep=prep)
        const = self._arr["constant"]
        scale_coef, dev, n_iter = self._location_scale(Y, W, S, coef, np.flatnonzero(~const),
                                                       "fitting location-scale models")
        alpha = pooled_alpha(coef)
        # z of the training rows, standardized by each subject's pooled-batch prediction: site moments
        g_hat, ss = np.zeros((m, p)), np.zeros((m, p))
        sigma = self._arr["sigma"].copy()

        def moments(some):
            for blk in some:
                lin = S @ scale_coef[:, blk]
                Z = (Y[:, blk] - alpha[blk] - prep.X @ coef[m:, blk]) / np.exp(lin)
                g_hat[:, blk] = (onehot.T @ Z) / counts[:, None]
                Z -= g_hat[prep.codes, blk]
                ss[:, blk] = onehot.T @ (Z * Z)
                sigma[blk] = np.where(const[blk], sigma[blk], np.exp(lin.mean(axis=0)))

        run_blocks(moments, blocks, Y.size)
        with np.errstate(divide="ignore", invalid="ignore"):
            d_raw = np.where(counts[:, None] > 1, ss / (counts - 1.0)[:, None], np.nan)
        d_hat = eb.delta_from_raw(d_raw, bool(self.mean_only))
        g_hat[:, const], d_hat[:, const], d_raw[:, const] = 0.0, 1.0, 1.0
        self._arr.update(alpha=alpha, sigma=sigma, beta=coef[m:], batch_coef=coef[:m], gamma_hat=g_hat,
                         delta_hat=d_hat, scale_coef=scale_coef, deviance=dev,
                         fit_n_iter=np.array([n_iter], dtype=float))
        self._delta_raw = d_raw

    def _location_scale(self, Y, W, S, coef, kept, label, mask=None, absent=None):
        """The location-scale fit of the ``kept`` features from the start ``coef`` (updated in place), in fixed
        blocks of features dealt between threads with one BLAS thread each, so the numbers do not depend on
        the number of threads. With ``mask`` (True = missing), each feature on its observed rows and
        ``absent`` (features × columns of ``W``) its batch columns without one. Returns the scale coefficients,
        the deviances (NaN where not fitted) and the most iterations a block took; warns when one did not
        converge."""
        n, p = Y.shape
        scale_coef = np.zeros((S.shape[1], p))
        dev = np.full(p, np.nan)
        kept_blocks = list(iter_blocks(kept.size, n))
        iters = np.zeros(len(kept_blocks), dtype=np.intp)

        def part(some):
            for i, blk in some:
                cols = kept[blk]
                extra = {} if mask is None else dict(observed=~mask[:, cols], absent=absent[cols])
                b, c, d, it = fit_location_scale(Y[:, cols], W, S, tol=self.fit_tol, max_iter=self.fit_max_iter,
                                                 coef=coef[:, cols], **extra)
                coef[:, cols], scale_coef[:, cols], dev[cols] = b, c, d
                iters[i] = it
                bar.update()

        with Progress(len(kept_blocks), label) as bar:
            run_blocks(part, list(enumerate(kept_blocks)), n * kept.size)
        if (iters < 0).any():
            warn(f"the location-scale fit did not converge within fit_max_iter={self.fit_max_iter} iterations "
                 f"(deviance change still above fit_tol={self.fit_tol}); the last iterate is used. Raise "
                 "fit_max_iter, or simplify scale_formula.", ConvergenceWarning)
        return scale_coef, dev, int(np.abs(iters).max()) if iters.size else 0

    def _fit_location_missing(self, prep: _Prepared, B: np.ndarray, counts: np.ndarray, ref, S: np.ndarray) -> None:
        """The location–scale fit with NaN cells (§1.8): every feature's mean and scale models on its observed
        rows (OLS start from ``featharm._core.missing``, then :func:`fit_location_scale` with the observed
        cells), ``gamma_hat`` / ``delta_hat`` from the observed standardized values. Fills ``self._arr``
        (with ``n_obs``)."""
        Y, mask, codes = prep.Y, prep.mask, prep.codes
        n, p = Y.shape
        m = B.shape[1]
        X = prep.X
        q = X.shape[1]
        names = self.feature_names_in_
        n_obs = missing.observed_counts(mask, codes, counts)
        ComBat._check_observed(self, n_obs, q + S.shape[1] - 1, ref)  # ComBat's rules; scale columns counted
        batch_rows = batch_indicators(np.arange(m), m, ref)
        grams = missing.observed_grams(X, codes, batch_rows, mask)
        bad_scale = scale_rank_deficient(S, ~mask)
        if grams.deficient.size or bad_scale.any():
            which = sorted(set(grams.deficient.tolist()) | set(np.flatnonzero(bad_scale).tolist()))
            bad = [str(names[j]) for j in which]
            raise ConfoundingError(
                f"on the rows where they are observed, the mean or scale design (batch, formula, scale_formula) of "
                f"{len(bad)} feature(s) is rank deficient: {bad[:5]}{' ...' if len(bad) > 5 else ''} (a covariate "
                "constant within batches, or a combination of the others, once the missing rows are left out). "
                "Drop those features or that covariate."
            )
        W = np.hstack([B, X])
        Y0 = np.where(mask, 0.0, Y)
        onehot = np.asfortranarray(batch_indicators(codes, m))
        # OLS start (and the constant-feature check on the OLS residual SD), on the observed rows
        coef = missing.observed_coef(grams, np.arange(p), crossprod(W, Y0))
        present = n_obs > 0
        fit = np.where(present, batch_rows @ np.where(present, coef[:m], 0.0), np.nan)
        with one_blas_thread():  # a whole-table product: its bits must not depend on the BLAS's threads
            ss_ols = missing.observed_residual_ss(np.asfortranarray(Y0), mask, fit, np.asfortranarray(X), coef[m:],
                                                  codes, onehot)
        alpha = missing.pooled_mean(coef[:m], n_obs, counts, ref)
        n_v = n_obs.sum(axis=0)
        self._arr.update(alpha=alpha, sigma=np.sqrt(ss_ols.sum(axis=0) / n_v), n_obs=n_obs.astype(np.float64))
        self._delta_raw = np.ones((m, p))
        self._arr.update(gamma_hat=np.zeros((m, p)), delta_hat=np.ones((m, p)))
        self._mark_constant(np.abs(alpha), missing.observed_variance(Y0, mask))
        const = self._arr["constant"]
        absent = np.zeros((p, W.shape[1]), dtype=bool)
        absent[:, :m] = ~present.T
        coef = np.nan_to_num(coef, nan=0.0)  # the start
        scale_coef, dev, n_iter = self._location_scale(Y0, W, S, coef, np.flatnonzero(~const),
                                                       "fitting location-scale models (missing values)",
                                                       mask=mask, absent=absent)
        coef[:m][~present] = np.nan  # a batch without observed values of a feature has no coefficient there
        alpha = missing.pooled_mean(coef[:m], n_obs, counts, ref)
        # z of the training rows, standardized by each subject's pooled-batch prediction: site moments over
        # each feature's observed cells
        g_hat, d_hat, d_raw = np.zeros((m, p)), np.ones((m, p)), np.ones((m, p))
        sigma = self._arr["sigma"].copy()
        for blk in iter_blocks(p, n):
            lin = S @ scale_coef[:, blk]
            Z = (Y[:, blk] - alpha[blk] - X @ coef[m:, blk]) / np.exp(lin)
            g_hat[:, blk], d_hat[:, blk], d_raw[:, blk] = missing.grouped_moments(
                Z, mask[:, blk], codes, n_obs[:, blk], mean_only=bool(self.mean_only))
            sigma[blk] = np.where(const[blk], sigma[blk], np.exp(lin.mean(axis=0)))
        g_hat[:, const], d_hat[:, const], d_raw[:, const] = 0.0, 1.0, 1.0
        self._arr.update(alpha=alpha, sigma=sigma, beta=coef[m:], batch_coef=coef[:m], gamma_hat=g_hat,
                         delta_hat=d_hat, scale_coef=scale_coef, deviance=dev,
                         fit_n_iter=np.array([n_iter], dtype=float))
        self._delta_raw = d_raw
        ComBat._warn_sparse_cells(self, n_obs, ref)

    # ------------------------------------------------------------------------------ applying
    def _row_sd(self, prep: _Prepared, rows=slice(None)) -> np.ndarray:
        """Predicted SD ``sigma~(x)`` of every (selected) row and feature; 1 for constant features."""
        S = self._scale_matrix(prep.covariates.iloc[rows] if not isinstance(rows, slice) else prep.covariates)
        sd = np.exp(S @ self._arr["scale_coef"])
        sd[:, self._arr["constant"]] = 1.0
        return sd

    def _standardized(self, prep: _Prepared, rows: np.ndarray) -> tuple[np.ndarray, None]:
        keep = ~self._arr["constant"]
        D = self._preserved_design(prep)[rows]
        M = D @ self._preserved_coef(slice(None))
        return ((prep.Y[rows] - M) / self._row_sd(prep, np.flatnonzero(rows)))[:, keep], None

    def _harmonize(self, prep: _Prepared) -> np.ndarray:
        a = self._arr
        Y = prep.Y
        n, p = Y.shape
        g_all, d_all = self._site_effects(prep)
        D = self._preserved_design(prep)
        S = self._scale_matrix(prep.covariates)
        out = np.empty((n, p), order="F")
        blocks = list(iter_blocks(p, n))

        def part(some):  # blocks of features dealt between threads, one BLAS thread each
            for blk in some:  # y* = sd (z - gamma*) / sqrt(delta*) + M, z = (y - M) / sd
                M = D @ self._preserved_coef(blk)
                sd = np.exp(S @ a["scale_coef"][:, blk])
                o = out[:, blk]
                np.subtract(Y[:, blk], M, out=o)
                o -= sd * g_all[prep.codes, blk]
                o /= np.sqrt(d_all[prep.codes, blk])
                o += M
                bar.update()

        with Progress(len(blocks), "harmonizing") as bar:
            run_blocks(part, blocks, Y.size)
        return self._keep_unadjusted(out, prep)

    # ------------------------------------------------------------------------------ learned attributes
    def _publish(self) -> None:
        super()._publish()
        a = self._arr
        if "scale_coef" not in a:
            return
        coef, dev = a["scale_coef"], a["deviance"]
        if "feature_scale" in a:  # fitted on s y: log sigma and -2 log L of y itself
            log_s = np.log(a["feature_scale"])
            coef = coef.copy()
            coef[0] -= log_s
            n_v = a["n_obs"].sum(axis=0) if "n_obs" in a else a["batch_sizes"].sum()  # observed values (§1.8)
            dev = dev - 2.0 * n_v * log_s
        self.scale_coef_ = pd.DataFrame(
            coef, index=pd.Index(["Intercept", *self.scale_design_.columns], name="scale_covariate"),
            columns=self._axis("feature"))
        self.deviance_ = pd.Series(dev, index=self._axis("feature"), name="deviance")
        self.fit_n_iter_ = int(a["fit_n_iter"][0])

    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        state, arrays = super()._get_state()
        state["scale_design"] = self.scale_design_.to_dict()
        return state, arrays

    def _check_state(self, state):
        dims = super()._check_state(state)
        dims["scale_column"] = 1 + check_design(state["scale_design"], "state.scale_design")  # + intercept
        return dims

    def _set_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.scale_design_ = CovariateDesign.from_dict(state["scale_design"])
        super()._set_state(state, arrays)
