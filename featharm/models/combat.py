"""ComBat (Johnson, Li & Rabinovic 2007; Fortin et al. 2017, 2018) as a scikit-learn style estimator."""

from __future__ import annotations

import numpy as np
from scipy.linalg.blas import dgemm

from .._core import eb, missing, ols
from .._core.blocks import column_variance, iter_blocks, run_blocks
from .._progress import Progress
from ..design import batch_indicators
from ..exceptions import BatchError, ConfoundingError, InputError, MissingValueError, MissingValueWarning, warn
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
    compat : {None, "neuroCombat", "sva"}, default None
        ``"neuroCombat"`` rounds continuous covariates through float32 as neuroCombat/neuroHarmonize do;
        only for reproducing their numbers. ``"sva"`` reproduces sva's missing-value path: with NaN cells
        anywhere, every feature's pooled variance divides by ``n_v - 1`` instead of ``n_v`` (without NaN it
        changes nothing; not defined with ``ref_batch``).
    missing_covariates : {"error", "exclude"}, default "error"
        Rows with a missing batch label or a missing value of a covariate the formula uses: ``"error"``
        names them; ``"exclude"`` leaves them out of the fit (and of ``transform``), returns their features as
        NaN and lists them in a :class:`~featharm.exceptions.MissingValueWarning` (and ``excluded_rows_``).
        Nothing is imputed.
    priors : {"auto", "group", "pool"} or mapping, default "auto"
        How the empirical-Bayes priors (``docs/methods.md`` S6) pool the features. ``"group"``: one prior per site
        and *measure group* (thickness, area, volume ... recognized from FreeSurfer, ENIGMA and ABCD column
        names by :func:`featharm.io.feature_groups`; unrecognized names form the group ``"other"``), because
        the site effects of different measures are not exchangeable. ``"pool"``: one prior per site across
        all features (sva/neuroCombat). A mapping (dict or Series) feature -> group name gives the groups
        yourself (every feature, no other names). ``"auto"`` is ``"group"``, or ``"pool"`` when ``compat`` is
        set (reference parity). A group with fewer than 3 features with variance takes the pooled prior (a
        :class:`~featharm.exceptions.FeatureGroupWarning`). With all features in one group, ``"group"`` is
        ``"pool"`` bit for bit. See ``docs/methods.md`` §1.10.

    covariates : DataFrame or None, default None
        A covariate table indexed by row id (subject/session): ``fit``, ``fit_transform`` and ``transform``
        called without covariates look the rows of ``X`` up in it by index, so the model works as a step of a
        scikit-learn ``Pipeline`` and in ``cross_val_score``/``GridSearchCV`` (each fold's rows get their own
        covariates). ``X`` must then be a DataFrame whose ids are all in the table
        (:class:`~featharm.exceptions.CovariateLookupError` otherwise). Covariates passed to a call are used
        instead of the table. Never put the prediction target in it (README, "Pipelines and
        cross-validation"). Not saved with the model.
    n_jobs : int or None, default None
        BLAS threads of ``fit``/``transform``. None chooses per call from the problem size, the CPUs this
        process may use (affinity, cgroup quota, ``OMP_NUM_THREADS``/``OPENBLAS_NUM_THREADS``/
        ``MKL_NUM_THREADS``) and the CPUs other processes are busy on, so a busy machine gets fewer threads;
        a positive number is used as given; -1 means every usable CPU. Not saved with the model.

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
        an attribute of its own (``gamma_bar_``, ``tau2_``, ``a_prior_``, ``b_prior_``). With priors per
        measure group and more than one group, one row per batch and group (index ``(batch, group)``; the
        attributes are batch × group tables).
    feature_groups_ : Series or None
        The measure group of every feature whose prior it shares (``priors="group"`` or a mapping), in
        saved models too; None with one pooled prior.
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
    n_obs_ : DataFrame
        Only when fitted with missing feature values: the observed values of each feature at each batch
        (batch × feature). A batch without any (0) has NaN ``gamma_hat_``, ``delta_hat_`` and
        ``batch_coef_`` there.
    excluded_rows_ : list
        Only when ``missing_covariates="exclude"`` left rows out of the fit: their ids (saved with the model).

    Notes
    -----
    *Missing values.* NaN feature cells are allowed (``docs/methods.md`` §1.8): every estimate of a
    feature uses the rows where it is observed (R neuroCombat 1.0.14's missing-value path, to 1e-9), NaN
    cells stay NaN and every observed cell is harmonized. Where R stops, featharm goes on and warns
    (:class:`~featharm.exceptions.MissingValueWarning`): a site with no observed value of a feature gets the
    site's prior there (and ``transform`` adjusts such values with it); a site with one observed value gets
    its scale from the prior and that value. Infinite values are an error.

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
    _compat_options = (None, "neuroCombat", "sva")
    _supports_missing = True
    _out_of_core = True  # fit/transform on Dask arrays from the statistics (featharm.models._scale)

    def __init__(self, *, batch="site", formula=None, eb=True, parametric=True, mean_only=False,
                 mean_only_form="sva", ref_batch=None, tol=1e-4, max_iter=1000, compat=None,
                 missing_covariates="error", priors="auto", covariates=None, n_jobs=None):
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
        self.missing_covariates = missing_covariates
        self.priors = priors
        self.covariates = covariates
        self.n_jobs = n_jobs

    @classmethod
    def from_statistics(cls, stats, *, batches, design, feature_names, **params) -> "ComBat":
        """A ComBat fitted from per-batch sufficient statistics instead of rows (``docs/methods.md`` §1.9).

        ``stats`` is a :class:`featharm._core.suffstats.SuffStats` of the training rows, summarized with the
        batch codes and covariate block of :func:`featharm.models._from_stats.freeze_design` (which also
        gives ``batches`` and ``design``); ``feature_names`` name its features; ``params`` are ComBat's
        parameters. The learned attributes equal those of ``fit`` on the same rows to rounding.
        """
        from ._from_stats import fit_from_statistics

        return fit_from_statistics(cls(**params), stats, batches=batches, design=design, feature_names=feature_names)

    def _check_params(self) -> None:
        super()._check_params()
        if self.compat == "sva" and self.ref_batch is not None:
            raise InputError("compat='sva' reproduces sva's pooled variance with missing values, which sva does "
                             "not define with a reference batch; use compat=None with ref_batch.")

    def _eb_options(self) -> eb.EBOptions:
        return self._combat_eb_options()

    def _fit_location(self, prep, B: np.ndarray, counts: np.ndarray, ref) -> None:
        """S1–S5: one least-squares fit of every feature on ``[B | X]``, the pooled variance and the
        standardized batch moments (``docs/methods.md`` §1.2). Fills ``self._arr``."""
        if prep.mask is not None:  # NaN cells: each feature on its observed rows (§1.8)
            return self._fit_location_missing(prep, B, counts, ref)
        Y = prep.Y
        n, p = Y.shape
        m = B.shape[1]
        batch_rows = batch_indicators(np.arange(m), m, ref)
        coef, ss = self._batch_ols(Y, np.hstack([B, prep.X]), batch_rows, prep.X, prep.codes)
        st = eb.standardized_moments(coef, ss, counts, batch_rows, ref=ref, mean_only=bool(self.mean_only))
        self._arr.update(alpha=st.alpha, sigma=st.sigma, beta=coef[m:], batch_coef=coef[:m],
                         gamma_hat=st.gamma_hat, delta_hat=st.delta_hat)
        self._delta_raw = st.delta_raw
        self._mark_constant(np.abs(st.alpha), prep=prep)

    @staticmethod
    def _batch_ols(Y, W, batch_rows, X, codes):
        """S1 and the per-batch residual sums of squares of every column of ``Y`` (NaN columns give NaN):
        the within-batch least squares in one read of the table (:func:`featharm._core.ols.within_fit`), or
        the normal equations of ``W`` and a residual pass when the centred covariates are rank deficient."""
        m = batch_rows.shape[0]
        with Progress(ols.within_steps(Y, m), "fitting location/scale") as bar:
            done = ols.within_fit(Y, batch_rows, X, codes, progress=bar.update)
        if done is not None:
            return done
        with Progress(ols.residual_blocks(Y, m), "fitting location/scale") as bar:
            coef = ols.GramSolver(W).solve(Y)
            fit = batch_rows @ coef[:m]  # fitted batch part for a row of each batch (m × p)
            with np.errstate(invalid="ignore"):  # (NaN columns of the missing-value path)
                ss = ols.batch_residual_ss(Y, fit, X, coef[m:], codes, progress=bar.update)
        return coef, ss

    # ------------------------------------------------------------------------------ missing values (§1.8)
    def _fit_location_missing(self, prep, B: np.ndarray, counts: np.ndarray, ref) -> None:
        """S1–S5 with NaN cells (``featharm._core.missing``): features without NaN get the complete-data fit
        (the same numbers as without any NaN elsewhere), the others are fitted on their observed rows,
        grouped by missingness pattern. Fills ``self._arr`` (with ``n_obs``, the observed counts)."""
        Y, mask, codes = prep.Y, prep.mask, prep.codes
        n, p = Y.shape
        m = B.shape[1]
        q = prep.X.shape[1]
        cells = missing.missing_cells(mask)  # one scan of the mask for the counts and the Gram matrices
        n_obs = missing.observed_counts(mask, codes, counts, cells=cells)
        self._check_observed(n_obs, q, ref)
        W = np.hstack([B, prep.X])
        onehot = np.asfortranarray(batch_indicators(codes, m))
        batch_rows = batch_indicators(np.arange(m), m, ref)
        Xf = np.asfortranarray(prep.X)
        inc = mask.any(axis=0)
        mean_only = bool(self.mean_only)
        ddof = 1 if self.compat == "sva" else 0  # sva's missing-value path: every feature over n_v - 1
        full = None
        if ddof == 0 and not inc.all():
            # features without NaN: _fit_location's computation, run as there on the whole table (the same
            # calls on the same shapes, so the same numbers to the last bit); the NaN columns are replaced below
            coef_c, ss_c = self._batch_ols(Y, W, batch_rows, prep.X, codes)
            full = (coef_c, eb.standardized_moments(coef_c, ss_c, counts, batch_rows, ref=ref, mean_only=mean_only))
            sf_ss = ss_c
        cols = np.arange(p) if full is None else np.flatnonzero(inc)  # with compat="sva": every feature
        coef = np.empty((m + q, p))
        ss = np.zeros((m, p))
        variance = np.empty(p)
        sub = mask if cols.size == p else mask[:, cols]
        grams = missing.observed_grams(prep.X, codes, batch_rows, sub, cells=missing.cells_in(cells, cols, p))
        if grams.deficient.size:
            names = [str(self.feature_names_in_[cols[j]]) for j in grams.deficient]
            col = ([str(b) for b in self.batches_] + list(self.design_.columns))[int(grams.column[0])]
            raise ConfoundingError(
                f"on the rows where they are observed, the design (batch and covariates) of {len(names)} "
                f"feature(s) is rank deficient: {names[:5]}{' ...' if len(names) > 5 else ''} (e.g. column "
                f"{col!r} of {names[0]!r} is constant within batches or a combination of the other covariates once "
                "its missing rows are left out). Drop those features or that covariate."
            )
        blocks = list(iter_blocks(cols.size, n))

        def part(some):  # one pass: W'Y with the missing cells as 0, the solves, the residuals
            for blk in some:  # (blocks of features are independent: shared between threads)
                cb = cols[blk]
                Mb = mask[:, cb]
                Y0 = np.where(Mb, 0.0, Y[:, cb])
                c = missing.observed_coef(grams, np.arange(cb.size) + blk.start, dgemm(1.0, W, Y0, trans_a=1))
                coef[:, cb] = c
                present = n_obs[:, cb] > 0
                fit = np.where(present, batch_rows @ np.where(present, c[:m], 0.0), np.nan)
                variance[cb] = missing.observed_variance(Y0, Mb)
                ss[:, cb] = missing.observed_residual_ss(Y0, Mb, fit, Xf, c[m:], codes, onehot)
                bar.update()

        with Progress(len(blocks), "fitting location/scale (missing values)") as bar:
            run_blocks(part, blocks, n * cols.size)
        if full is not None:  # the features without NaN: exactly the complete-data numbers
            keep = ~inc
            coef_c, sf = full
            coef[:, keep], ss[:, keep] = coef_c[:, keep], sf_ss[:, keep]
        st = missing.standardized_moments(coef, ss, n_obs, counts, batch_rows, ref=ref, mean_only=mean_only,
                                          ddof=ddof)
        if full is not None:
            for name in ("alpha", "sigma"):
                getattr(st, name)[keep] = getattr(sf, name)[keep]
            for name in ("gamma_hat", "delta_hat", "delta_raw"):
                getattr(st, name)[:, keep] = getattr(sf, name)[:, keep]
        self._arr.update(alpha=st.alpha, sigma=st.sigma, beta=coef[m:], batch_coef=coef[:m],
                         gamma_hat=st.gamma_hat, delta_hat=st.delta_hat, n_obs=n_obs.astype(np.float64))
        self._delta_raw = st.delta_raw
        self._warn_sparse_cells(n_obs, ref)
        if full is not None:
            variance[~inc] = column_variance(Y[:, ~inc])
        self._mark_constant(np.abs(st.alpha), variance)

    def _check_observed(self, n_obs: np.ndarray, q: int, ref) -> None:
        """Refuse what the observed cells cannot identify, naming features and sites (§1.8)."""
        names = self.feature_names_in_
        levels = self.batches_

        def some(idx, k=5):
            idx = list(idx)
            return f"{[str(names[j]) for j in idx[:k]]}{' ...' if len(idx) > k else ''}"

        sites = (n_obs > 0).sum(axis=0)
        few_sites = np.flatnonzero(sites < 2)
        if few_sites.size:
            raise MissingValueError(
                f"{few_sites.size} feature(s) are observed in fewer than 2 batches of {self.batch!r}: "
                f"{some(few_sites)}; a site effect needs a comparison. Drop those features."
            )
        rows = n_obs.sum(axis=0)
        few_rows = np.flatnonzero(rows < q + sites + 1)
        if few_rows.size:
            j = few_rows[0]
            raise MissingValueError(
                f"{few_rows.size} feature(s) have fewer observed values than their regression needs (the "
                f"batches present, {q} covariate column(s) and 1): {some(few_rows)} ({names[j]!r}: "
                f"{int(rows[j])} observed values). Drop those features."
            )
        if ref is not None:
            bad = np.flatnonzero(n_obs[ref] < 2)
            if bad.size:
                raise BatchError(
                    f"the reference batch {levels[ref]!r} has fewer than 2 observed values of {some(bad)}: its "
                    "pooled variance is estimated in the reference batch alone. Drop those features or choose "
                    "another reference batch."
                )
        opts = self._eb_options()  # (also called by the other families that take missing values)
        if not opts.eb:
            need = 1 if opts.mean_only else 2
            bad = n_obs < need
            if ref is not None:
                bad[ref] = False
            if bad.any():
                cells = [f"{levels[a]!r} × {names[b]!r} ({int(n_obs[a, b])})" for a, b in zip(*np.nonzero(bad))]
                alt = "" if opts.mean_only or self._param("mean_only") is None else \
                    ", mean_only=True (one value suffices)"
                raise MissingValueError(
                    f"eb=False uses each site's own estimates, which need at least {need} observed value(s) of a "
                    f"feature at a site; {len(cells)} site × feature cell(s) have fewer: "
                    f"{', '.join(cells[:5])}{' ...' if len(cells) > 5 else ''}. Use eb=True (the site's prior "
                    f"fills in){alt}, or drop those features."
                )

    def _warn_sparse_cells(self, n_obs: np.ndarray, ref) -> None:
        """Warn, naming sites and features, where R stops: a site with no (or one) observed value of a feature."""
        levels, names = self.batches_, self.feature_names_in_
        checked = np.ones(n_obs.shape[0], dtype=bool)
        if ref is not None:
            checked[ref] = False

        def listing(cells):
            by_site = {}
            for i, j in zip(*np.nonzero(cells)):
                by_site.setdefault(levels[i], []).append(str(names[j]))
            parts = [f"{site!r}: {feats[:5]}{' ...' if len(feats) > 5 else ''}" for site, feats in by_site.items()]
            return "; ".join(parts)

        empty = (n_obs == 0) & checked[:, None]
        if empty.any():
            warn(
                f"{int(empty.sum())} site × feature cell(s) have no observed value ({listing(empty)}): the site "
                "effect there is not estimated and is left out of the empirical-Bayes priors; nothing of those "
                "sites and features is adjusted at fit. At transform, such values are adjusted with the site's "
                "prior (the posterior under no data). R neuroCombat and sva stop here.",
                MissingValueWarning,
            )
        single = (n_obs == 1) & checked[:, None]
        if single.any() and not self._eb_options().mean_only:
            warn(
                f"{int(single.sum())} site × feature cell(s) have a single observed value ({listing(single)}): "
                "the site's scale for that feature cannot be estimated from it and is left out of the priors; "
                "empirical Bayes estimates it from the site's prior and that one value. R neuroCombat stops (or "
                "returns NaN) here.",
                MissingValueWarning,
            )
