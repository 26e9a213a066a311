"""ComBat-GAM (Pomponio et al. 2020): ComBat whose preserved covariate effects include smooth curves.

Only the mean model changes (``docs/methods.md`` §2): each feature is fitted by a penalized regression spline
in the smooth covariates, jointly with the batch indicators and the linear covariates; standardization,
empirical Bayes and the adjustment are ComBat's, from :mod:`featharm._core.eb` through :class:`BaseHarmonizer`.

Default fit (all features at once)
----------------------------------
With ``W_u = [B | X | Z N]`` the unpenalized columns (batch indicators, linear covariates, the null space
of the spline penalty, i.e. the linear trend of each smooth term) and ``Z_p`` the penalized spline
directions scaled so that the penalty is ``lambda ||b||^2`` (eigen-decomposition of the penalty), the
problem of every feature is a ridge regression of ``(I - H_u) y`` on ``Z~ = (I - H_u) Z_p``. One thin SVD
``Z~ = U D V'`` (Demmler–Reinsch) serves all features: with ``c = U' y`` the residual sum of squares, the
effective degrees of freedom, GCV and the restricted likelihood are closed-form sums over the few spline
directions, so the smoothing parameter of every feature is chosen by a vectorized grid search over
``log lambda`` refined by bisection on the criterion's derivative, with no loop over features.

``compat="neuroHarmonize"`` reproduces neuroHarmonize 2.5's recipe instead: statsmodels ``BSplines``
(``df=10, degree=3``), penalty ``2 alpha S`` with ``S`` the integrated squared second derivative, and alpha
picked per feature from ``logspace(0, 7, 11)`` by 5-fold cross-validation whose folds come from one
``numpy.random.default_rng(random_state)`` shared across features (11 shuffles per feature), exactly as
``harmonizationLearn(..., seed=random_state)`` draws them.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from .._core import eb, missing, ols, penalized
from .._core.blocks import column_variance, iter_blocks, run_blocks
from .._core.splines import SplineBasis
from .._progress import Progress
from .._validation import check_integer, check_option, numeric_covariate
from ..design import CovariateDesign, batch_indicators
from ..formula import parse_formula, render
from ..exceptions import FormulaError, InputError, MissingValueError
from ._base import LINEAR_FEATURE_RTOL, BaseHarmonizer
from .combat import ComBat
from .._schema import DamagedState, Stored, check_int, check_keys, describe

__all__ = ["ComBatGAM", "from_neuroharmonize"]

# Most basis columns of one smooth term a model file may hold (evaluating the basis builds a square
# matrix of that size; fits use df - 1 columns, 9 by default).
_MAX_BASIS_COLUMNS = 1000


def _quote(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else f"`{name}`"


class ComBatGAM(BaseHarmonizer):
    """ComBat with smooth (penalized spline) covariate effects: ComBat-GAM.

    The model (``docs/methods.md`` §2) is ``y = alpha + f(age) + x'beta + gamma_site + delta_site * eps`` for
    every feature, where each ``f`` is a cubic penalized regression spline shared by all sites. The
    spline, the linear covariates and the site indicators are fitted jointly; the smoothing parameter is
    chosen per feature by REML or GCV for all features at once (one decomposition shared by all of
    them). Site effects are then removed exactly as by :class:`~featharm.ComBat`.

    Parameters
    ----------
    batch : str, default "site"
        Column of ``covariates`` holding the batch (site or scanner). Levels are sorted.
    formula : str or None, default None
        Linear covariates to preserve, as in :class:`~featharm.ComBat` (``"sex + C(diagnosis)"``). Smooth
        terms may also be written here as ``s(age)`` (top-level terms only).
    smooth : str, list of str or None, default None
        Numeric covariate column(s) whose effects are smooth curves, e.g. ``["age"]``. At least one smooth
        term is needed (from ``smooth`` or ``s()`` in the formula). A column cannot be both smooth and linear.
    df : int, default 10
        B-spline basis size per smooth term including the constant (cubic: ``df - 4`` interior knots at
        quantiles of the training values); the constant is dropped, so each term has ``df - 1`` columns.
    method : {"REML", "GCV"}, default "REML"
        Criterion for the smoothing parameter (restricted maximum likelihood or generalized
        cross-validation). Ignored with ``compat="neuroHarmonize"`` (k-fold cross-validation).
    shared_smoothing : bool, default False
        One smoothing parameter for all features (minimizing the criterion summed over features, each on
        its own scale) instead of one per feature.
    smooth_bounds : dict or None, default None
        ``{column: (lower, upper)}``: boundary knots wider than the training range, so later values in
        ``[lower, upper]`` need no extrapolation (neuroHarmonize's ``smooth_term_bounds``).
    knots : {"quantile", "uniform"}, default "quantile"
        Placement of the ``df - 4`` interior knots: at quantiles of the training values, or evenly spaced
        between the boundary knots. With ``"uniform"`` and both bounds of a term given in ``smooth_bounds``,
        the basis depends on those bounds alone, not on the rows: the fixed basis of a federated plan
        (``featharm federated plan --method gam --smooth-range``), so this is its centralized equivalent.
    extrapolate : {None, "linear"}, default None
        At transform time, a smooth covariate outside the fitted range is an
        :class:`~featharm.exceptions.OutOfRangeError` (naming the column, the value and the range); with
        ``"linear"`` the curve continues along its tangent at the boundary. May be changed after fitting
        with ``set_params``.
    eb, parametric, mean_only, mean_only_form, ref_batch, tol, max_iter
        As in :class:`~featharm.ComBat`.
    compat : {None, "neuroHarmonize"}, default None
        ``"neuroHarmonize"`` reproduces neuroHarmonize 2.5's ``harmonizationLearn(..., smooth_terms=...,
        seed=random_state)`` (statsmodels B-splines ``df=10, degree=3``, alpha from its seeded 5-fold search).
    random_state : int, default 0
        Seed of the k-fold search with ``compat="neuroHarmonize"`` (neuroHarmonize's ``seed``); recorded in
        the model. The default fit is deterministic and does not use it.
    priors : {"auto", "group", "pool"} or mapping, default "auto"
        Empirical-Bayes priors per measure group (thickness, area, volume ...) or pooled across all features,
        as in :class:`~featharm.ComBat` (``"auto"``: ``"group"``, ``"pool"`` with ``compat``).

    covariates, n_jobs
        A covariate table looked up by the index of ``X``, and the BLAS threads; see :class:`~featharm.ComBat`.

    Attributes
    ----------
    smooth_terms_ : list of str
        The smooth covariate columns.
    smooth_bases_ : list of SplineBasis
        The frozen spline bases (knots, degree, boundary and training range), one per smooth term.
    spline_coef_ : DataFrame
        Spline coefficients (basis column × feature).
    lambda_ : Series
        Smoothing parameter of each feature: the penalty added to ``W'W`` is ``lambda_ * S`` on the spline
        block (``S`` the integrated squared second derivative; each term's ``S`` rescaled when there are
        several). Under neuroHarmonize compat it is ``2 alpha`` of the k-fold search (of the first smooth
        term when there are several).
    edf_ : Series
        Effective degrees of freedom of the smooth part of each feature (NaN under compat).
    batches_, batch_sizes_, feature_names_in_, design_, alpha_, sigma_ : various
        As in :class:`~featharm.ComBat`.
    beta_, batch_coef_ : DataFrame
        Linear covariate coefficients (linear design column × feature) and site intercepts.
    gamma_hat_, delta_hat_, gamma_star_, delta_star_, priors_, n_iter_, constant_features_ : various
        As in :class:`~featharm.ComBat`.
    n_features_in_, fit_warnings_ : int, list
        As in :class:`~featharm.ComBat`.
    n_obs_ : DataFrame
        Only when fitted with missing feature values: observed values of each feature at each batch.

    Notes
    -----
    With several smooth terms, one smoothing parameter per feature is shared by the terms; each term's
    penalty is first scaled to the size of its basis cross-product, so that the terms are penalized on a
    comparable scale. (mgcv estimates one parameter per term.)

    *Missing values* (``docs/methods.md`` §1.8). NaN feature cells stay NaN and every observed cell is
    harmonized. The spline basis and its penalty are frozen from all rows' covariates; each feature's
    penalized fit, smoothing parameter (REML/GCV) included, uses the rows where it is observed (features
    missing on the same rows are solved together). A feature without NaN keeps its complete-data fit bit
    for bit; with ``shared_smoothing`` the one smoothing parameter pools every feature's criterion, so it
    moves with the others' NaN. Empty or single site × feature cells, errors and warnings are ComBat's.
    ``compat="neuroHarmonize"`` refuses NaN cells (neuroHarmonize takes none).

    Examples
    --------
    >>> import featharm as fh
    >>> data = fh.datasets.load_ixi()
    >>> X = data[fh.datasets.ixi_feature_columns(data)]
    >>> hm = fh.ComBatGAM(batch="site", formula="sex", smooth=["age"])
    >>> Xh = hm.fit_transform(X, data)
    >>> hm.smooth_terms_
    ['age']
    """

    _schema_name = "combat_gam"
    _feature_units = {**BaseHarmonizer._feature_units, "spline_coef": 1}
    _compat_options = (None, "neuroHarmonize")
    _stored = {
        **BaseHarmonizer._stored,
        "spline_coef": Stored(("basis", "feature"), values="finite"),
        "smoothing": Stored(("feature",)),
        "edf": Stored(("feature",)),
    }
    _state_extra = ("smooth_bases",)
    _supports_missing = True
    _out_of_core = True  # fit/transform on Dask arrays from the statistics (featharm.models._gam_from_stats)
    _linear_rtol = LINEAR_FEATURE_RTOL  # read by the fit from statistics (which cannot import _base)
    # ComBat's rules for sparse (batch, feature) cells (§1.8), as the fit from statistics calls them
    _check_observed = ComBat._check_observed
    _warn_sparse_cells = ComBat._warn_sparse_cells

    def __init__(self, *, batch="site", formula=None, smooth=None, df=10, method="REML",
                 shared_smoothing=False, smooth_bounds=None, knots="quantile", extrapolate=None, eb=True,
                 parametric=True,
                 mean_only=False, mean_only_form="sva", ref_batch=None, tol=1e-4, max_iter=1000,
                 compat=None, random_state=0, priors="auto", covariates=None, n_jobs=None):
        self.batch = batch
        self.formula = formula
        self.smooth = smooth
        self.df = df
        self.method = method
        self.shared_smoothing = shared_smoothing
        self.smooth_bounds = smooth_bounds
        self.knots = knots
        self.extrapolate = extrapolate
        self.eb = eb
        self.parametric = parametric
        self.mean_only = mean_only
        self.mean_only_form = mean_only_form
        self.ref_batch = ref_batch
        self.tol = tol
        self.max_iter = max_iter
        self.compat = compat
        self.random_state = random_state
        self.priors = priors
        self.covariates = covariates
        self.n_jobs = n_jobs

    @classmethod
    def from_statistics(cls, stats, *, batches, design, bases, feature_names, **params) -> "ComBatGAM":
        """A ComBatGAM fitted from per-batch sufficient statistics instead of rows (``docs/methods.md`` §1.9).

        Freeze the design first with :func:`featharm.models._gam_from_stats.freeze_gam_design` (batch
        levels and codes, the linear design and the spline bases, from the covariates alone), summarize the
        rows (:class:`featharm._core.suffstats.SuffStats`) with its ``X`` (linear then spline columns) and
        ``codes``, then pass its ``batches``, ``design`` and ``bases``. ``params`` are ComBatGAM's parameters.
        The learned attributes equal those of ``fit`` on the same rows to rounding (missing values included);
        not with ``compat="neuroHarmonize"`` (its k-fold search needs the rows).
        """
        from ._gam_from_stats import fit_gam_from_statistics

        return fit_gam_from_statistics(cls(**params), stats, batches=batches, design=design, bases=bases,
                                       feature_names=feature_names)

    # ------------------------------------------------------------------------------ parameters
    def _eb_options(self):
        return self._combat_eb_options()

    def _check_params(self) -> None:
        super()._check_params()  # batch, formula, eb, parametric, mean_only(_form), ref_batch, tol, max_iter, compat
        owner = "ComBatGAM"
        check_option("method", self.method, ("REML", "GCV"), owner)
        check_option("extrapolate", self.extrapolate, (None, "linear"), owner)
        check_option("shared_smoothing", self.shared_smoothing, (True, False), owner)
        check_option("knots", self.knots, ("quantile", "uniform"), owner)
        rs = self.random_state
        if rs is not None and (isinstance(rs, bool) or not isinstance(rs, (int, np.integer))):
            raise InputError(f"The 'random_state' parameter of {owner} must be an integer or None. "
                             f"Got {rs!r} instead.")
        check_integer("df", self.df, owner, minimum=5)  # a cubic spline with at least one interior knot
        if self.compat == "neuroHarmonize":
            if self.df != 10:
                raise InputError("compat='neuroHarmonize' uses neuroHarmonize's basis (df=10); leave df at 10.")
            if self.knots != "quantile":
                raise InputError("compat='neuroHarmonize' uses neuroHarmonize's basis (knots at quantiles); leave "
                                 "knots at 'quantile'.")
            if self.shared_smoothing:
                raise InputError("shared_smoothing applies to the default fit; compat='neuroHarmonize' picks "
                                 "each feature's penalty by its own k-fold search. Use one or the other.")
            rs = self.random_state
            if not isinstance(rs, (int, np.integer)) or isinstance(rs, bool):
                raise InputError(
                    f"compat='neuroHarmonize' needs an integer random_state (neuroHarmonize's seed); got {rs!r}."
                )
        if not self._terms()[0]:
            raise InputError(
                "ComBatGAM needs at least one smooth term: pass smooth=['age'] (command line: --smooth age), "
                "or write s(age) in the formula. Without one, use featharm.ComBat."
            )
        self._check_smooth_bounds(owner)

    def _check_smooth_bounds(self, owner: str) -> list[str]:
        """Check ``smooth_bounds`` ({term: (lower, upper)}, finite numbers or None, smooth terms only); the smooth
        terms. (Shared with :class:`~featharm.LongComBatGAM`.)"""
        if self.smooth_bounds is not None and not isinstance(self.smooth_bounds, dict):
            raise InputError(f"The 'smooth_bounds' parameter of {owner} must be a dict "
                             f"{{column: (lower, upper)}} or None. Got {self.smooth_bounds!r} instead.")

        def bound(v):
            return v is None or (isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                                 and bool(np.isfinite(v)))

        for term, b in (self.smooth_bounds or {}).items():
            if not (isinstance(b, (tuple, list)) and len(b) == 2 and all(bound(v) for v in b)):
                raise InputError(f"The 'smooth_bounds' parameter of {owner} must map each smooth term to "
                                 f"(lower, upper), finite numbers or None. Got {term!r}: {b!r} instead.")
        terms, _ = self._terms()
        extra = sorted(set(self.smooth_bounds or {}) - set(terms))
        if extra:
            raise InputError(f"smooth_bounds names {extra}, which are not smooth terms {terms}.")
        return terms

    def _terms(self) -> tuple[list[str], str | None]:
        """The smooth terms (``smooth`` plus ``s()`` terms of the formula) and the linear formula."""
        smooth = self.smooth
        if smooth is None:
            terms: list[str] = []
        elif isinstance(smooth, str):
            terms = [smooth]
        elif isinstance(smooth, (list, tuple)) and all(isinstance(s, str) for s in smooth):
            terms = list(smooth)
        else:
            raise InputError(f"The 'smooth' parameter of {self._owner()} must be a column name or a list of column "
                             f"names, e.g. ['age']. Got {smooth!r} instead.")
        parsed = parse_formula(self.formula)  # featharm's grammar: s(column) is a smooth term
        for t in parsed.terms:
            if any(node[0] == "smooth" for node in t) and len(t) > 1:
                raise FormulaError(
                    f"term {':'.join(render(n) for n in t)!r} of formula {self.formula!r}: smooth terms must be "
                    "top-level s(column) terms (no interactions or options); write e.g. 'sex + s(age)', or pass "
                    "smooth=['age']."
                )
        terms.extend(parsed.smooth_terms())
        linear = parsed.without_smooth()
        dup = sorted({t for t in terms if terms.count(t) > 1})
        if dup:
            raise InputError(f"smooth term(s) {dup} are given more than once (in `smooth` and/or as s() in the formula).")
        return terms, (linear or None)

    def _design_formula(self):
        return self._terms()[1]

    # ------------------------------------------------------------------------------ smooth covariates
    def _smooth_values(self, cov: pd.DataFrame, name: str) -> np.ndarray:
        return numeric_covariate(cov, name, "smooth term", fix="Pass the smooth terms' columns in the covariates.",
                                 dtype_fix="a spline of a number; model it linearly in `formula` instead")

    def _linear_extrapolation(self) -> bool:
        # ``extrapolate`` may be changed with set_params after fit, so it is checked where it is used
        check_option("extrapolate", self.extrapolate, (None, "linear"), self._owner())
        return self.extrapolate == "linear"

    def _smooth_design(self, cov: pd.DataFrame) -> np.ndarray:
        """The spline block ``Z`` (n × sum of basis sizes) for these covariates, with the frozen bases."""
        ext = self._linear_extrapolation()
        blocks = [b.transform(self._smooth_values(cov, b.name), extrapolate=ext, index=cov.index)
                  for b in self._bases]
        return np.hstack(blocks) if blocks else np.zeros((len(cov), 0))

    # ------------------------------------------------------------------------------ fitting
    def _fit_location(self, prep, B: np.ndarray, counts: np.ndarray, ref) -> None:
        terms, _ = self._terms()
        both = [t for t in terms if t in self.design_.variables]
        if both:
            raise FormulaError(
                f"covariate(s) {both} appear both as smooth terms and in the linear formula "
                f"{self.design_.formula!r}; the spline already contains the linear trend. Remove them from one."
            )
        if self.batch in terms:
            raise FormulaError(f"the batch column {self.batch!r} cannot be a smooth term.")
        bounds = self.smooth_bounds or {}
        xs = [self._smooth_values(prep.covariates, t) for t in terms]
        self._bases = [SplineBasis.from_data(x, t, df=self.df, degree=3, bounds=bounds.get(t), knots=self.knots)
                       for x, t in zip(xs, terms)]
        Z = np.hstack([b.transform(x) for b, x in zip(self._bases, xs)])
        penalties = [b.penalty() for b in self._bases]
        Y = prep.Y
        n, p = Y.shape
        m = B.shape[1]
        X = prep.X
        q = X.shape[1]
        if prep.mask is not None:  # NaN cells: each feature on its observed rows (§1.8)
            return self._fit_location_missing(prep, B, counts, ref, Z, penalties, terms)
        if self.compat == "neuroHarmonize":
            with Progress(p, "k-fold penalty search (neuroHarmonize)") as bar:
                coef, lam = penalized.fit_kfold_neuroharmonize(Y, np.hstack([B, X]), Z, penalties,
                                                               int(self.random_state), progress=bar.update)
            edf = np.full(p, np.nan)
        else:
            coef, lam, edf = penalized.fit_penalized(Y, np.hstack([B, X]), Z, penalties, terms,
                                                     method=self.method, shared=bool(self.shared_smoothing),
                                                     batch_name=str(self.batch), linear_rtol=LINEAR_FEATURE_RTOL)
        W = np.asfortranarray(np.hstack([B, X, Z]))
        onehot = np.asfortranarray(batch_indicators(prep.codes, m))
        ss = np.empty((m, p))
        blocks = list(iter_blocks(p, n))
        with Progress(len(blocks), "fitting location/scale") as bar:
            _residual_ss(Y, W, coef, onehot, blocks, ss, bar.update)
        batch_rows = batch_indicators(np.arange(m), m, ref)
        st = eb.standardized_moments(coef, ss, counts, batch_rows, ref=ref, mean_only=bool(self.mean_only))
        self._arr.update(alpha=st.alpha, sigma=st.sigma, beta=coef[m:m + q], batch_coef=coef[:m],
                         spline_coef=coef[m + q:], gamma_hat=st.gamma_hat, delta_hat=st.delta_hat,
                         smoothing=lam, edf=edf)
        self._delta_raw = st.delta_raw
        self._mark_constant(np.abs(st.alpha), prep=prep)

    def _fit_location_missing(self, prep, B, counts, ref, Z, penalties, terms) -> None:
        """S1–S5 with NaN cells (§1.8): each feature's penalized fit, smoothing parameter included, on its
        observed rows (``penalized.fit_penalized_observed``: one decomposition per missingness pattern), the
        spline basis frozen from all rows. Features without NaN keep the complete-data fit number for number
        (unless ``shared_smoothing``: their smoothing parameter is shared with the others). Fills
        ``self._arr`` (with ``n_obs``)."""
        if self.compat == "neuroHarmonize":
            j = int(np.flatnonzero(prep.mask.any(axis=0))[0])
            raise MissingValueError(
                f"compat='neuroHarmonize' reproduces neuroHarmonize, which does not take missing values, but "
                f"{int(prep.mask.any(axis=0).sum())} feature(s) have NaN cells (e.g. {self.feature_names_in_[j]!r}). "
                "Use compat=None (each feature fitted on its observed rows, smoothing by REML/GCV), or drop or "
                "fill those cells first."
            )
        Y, mask, codes = prep.Y, prep.mask, prep.codes
        n, p = Y.shape
        m = B.shape[1]
        X = prep.X
        q = X.shape[1]
        K = Z.shape[1]
        n_obs = missing.observed_counts(mask, codes, counts)
        ComBat._check_observed(self, n_obs, q + K, ref)  # ComBat's rules (§1.8), spline columns counted
        inc = mask.any(axis=0)
        Y0 = np.array(Y, order="K", copy=True)  # the same memory layout as Y: BLAS rounds layouts differently
        Y0[mask] = 0.0
        Wfix = np.hstack([B, X])
        W = np.asfortranarray(np.hstack([B, X, Z]))
        onehot = np.asfortranarray(batch_indicators(codes, m))
        batch_rows = batch_indicators(np.arange(m), m, ref)
        mean_only = bool(self.mean_only)
        opts = dict(method=self.method, linear_rtol=LINEAR_FEATURE_RTOL)
        coef = np.empty((m + q + K, p))
        lam, edf = np.empty(p), np.empty(p)
        ss = np.zeros((m, p))
        full = None
        if not self.shared_smoothing and not inc.all():
            # features without NaN: _fit_location's computation on the whole table (the same calls on the same
            # shapes, so the same numbers to the last bit); the NaN columns are replaced below
            c_c, l_c, e_c = penalized.fit_penalized(Y0, Wfix, Z, penalties, terms, shared=False,
                                                    batch_name=str(self.batch), **opts)
            ss_c = np.full((m, p), np.nan)
            _residual_ss(Y0, W, c_c, onehot, [blk for blk in iter_blocks(p, n) if not inc[blk].all()], ss_c)
            full = eb.standardized_moments(c_c, ss_c, counts, batch_rows, ref=ref, mean_only=mean_only)
            keep = ~inc
            coef[:, keep], lam[keep], edf[keep], ss[:, keep] = c_c[:, keep], l_c[keep], e_c[keep], ss_c[:, keep]
        cols = np.arange(p) if full is None else np.flatnonzero(inc)
        with Progress(1, "fitting penalized splines (missing values)") as bar:
            c_m, lam[cols], edf[cols] = penalized.fit_penalized_observed(
                Y0[:, cols], mask[:, cols], Wfix, Z, penalties, n_batch=m, shared=bool(self.shared_smoothing),
                names=self.feature_names_in_[cols], **opts)
            bar.update()
        coef[:, cols] = c_m

        def observed_part(some):  # observed squared residuals (absent batches: no rows); one BLAS thread each
            for blk in some:
                cb = cols[blk]
                R = np.array(Y0[:, cb], order="F", copy=True)
                ols.sub_gemm(W, np.nan_to_num(c_m[:, blk], nan=0.0), R, -1.0)
                np.copyto(R, 0.0, where=mask[:, cb])
                np.square(R, out=R)
                ss[:, cb] = onehot.T @ R

        run_blocks(observed_part, list(iter_blocks(cols.size, n)), n * cols.size)
        st = missing.standardized_moments(coef, ss, n_obs, counts, batch_rows, ref=ref, mean_only=mean_only)
        variance = missing.observed_variance(Y0, mask)
        if full is not None:  # the features without NaN: exactly the complete-data numbers
            for name in ("alpha", "sigma"):
                getattr(st, name)[keep] = getattr(full, name)[keep]
            for name in ("gamma_hat", "delta_hat", "delta_raw"):
                getattr(st, name)[:, keep] = getattr(full, name)[:, keep]
            variance[keep] = column_variance(Y[:, keep])
        self._arr.update(alpha=st.alpha, sigma=st.sigma, beta=coef[m:m + q], batch_coef=coef[:m],
                         spline_coef=coef[m + q:], gamma_hat=st.gamma_hat, delta_hat=st.delta_hat,
                         smoothing=lam, edf=edf, n_obs=n_obs.astype(np.float64))
        self._delta_raw = st.delta_raw
        ComBat._warn_sparse_cells(self, n_obs, ref)
        self._mark_constant(np.abs(st.alpha), variance)

    # ------------------------------------------------------------------------------ applying
    def _preserved_design(self, prep) -> np.ndarray:
        Z = self._smooth_design(prep.covariates)
        return np.asfortranarray(np.hstack([np.ones((prep.Y.shape[0], 1)), prep.X, Z]))

    def _preserved_coef(self, blk: slice) -> np.ndarray:
        a = self._arr
        return np.vstack([a["alpha"][None, blk], a["beta"][:, blk], a["spline_coef"][:, blk]])

    def smooth_effect(self, term: str, values) -> pd.DataFrame:
        """The fitted curve ``f(values)`` of one smooth term for every feature (values × feature).

        The curves are identified up to a constant (absorbed by the site intercepts): ``f`` is zero at
        the lower boundary knot.
        """
        self._check_fitted()
        names = [b.name for b in self._bases]
        if term not in names:
            raise InputError(f"{term!r} is not a smooth term of this model; smooth terms: {names}.")
        j = names.index(term)
        start = sum(b.n_columns for b in self._bases[:j])
        b = self._bases[j]
        vals = np.asarray(values, dtype=np.float64).ravel()
        Zj = b.transform(vals, extrapolate=self._linear_extrapolation())
        curve = Zj @ self._arr["spline_coef"][start:start + b.n_columns]
        return pd.DataFrame(curve, index=pd.Index(vals, name=term), columns=self._axis("feature"))

    # ------------------------------------------------------------------------------ attributes / state
    def _extra_axes(self) -> dict[str, tuple[str, ...]]:
        return {"spline_coef": ("basis", "feature"), "smoothing": ("feature",), "edf": ("feature",)}

    def _axis(self, name: str):
        if name == "basis":
            return pd.Index([c for b in self._bases for c in b.column_names()], name="basis")
        return super()._axis(name)

    def _publish(self) -> None:
        super()._publish()
        self.smooth_terms_ = [b.name for b in self._bases]
        self.smooth_bases_ = list(self._bases)
        self.lambda_ = self.smoothing_.rename("lambda")

    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        state, arrays = super()._get_state()
        state["smooth_bases"] = [b.to_dict() for b in self._bases]
        return state, arrays

    def _check_state(self, state):
        dims = super()._check_state(state)
        dims["basis"] = check_bases_state(state["smooth_bases"], self._terms()[0], allow_empty=False)
        return dims

    def _set_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self._bases = [SplineBasis.from_dict(d) for d in state["smooth_bases"]]
        super()._set_state(state, arrays)

    # ------------------------------------------------------------------------------ conversion
    @classmethod
    def from_neuroharmonize(cls, model: dict, *, feature_names=None, batch: str = "SITE") -> "ComBatGAM":
        """A fitted :class:`ComBatGAM` from a neuroHarmonize GAM model; see :func:`from_neuroharmonize`."""
        return from_neuroharmonize(model, feature_names=feature_names, batch=batch)


def check_bases_state(bases, terms: list[str], *, allow_empty: bool) -> int:
    """A model file's ``state.smooth_bases`` (ComBatGAM, LongComBatGAM): a list with the saved spline basis of
    each smooth term, in the order of ``terms``; the number of spline columns."""
    if not isinstance(bases, list) or (not bases and not allow_empty):
        raise DamagedState("state.smooth_bases", f"is {describe(bases)}",
                           "a list with the spline basis of each smooth term")
    names = [_check_basis(b, f"state.smooth_bases[{i}]") for i, b in enumerate(bases)]
    if names != terms:
        raise DamagedState("state.smooth_bases", f"are for the terms {names}",
                           f"the smooth terms of the parameters, {terms}")
    return sum(len(b["knots"]) - b["degree"] - 2 for b in bases)


def _check_basis(b, entry: str) -> str:
    """A saved :class:`SplineBasis`: finite non-decreasing knots with ``degree + 1`` repeated boundary knots."""
    check_keys(b, entry, ("name", "knots", "degree", "data_range"))
    if not isinstance(b["name"], str):
        raise DamagedState(f"{entry}.name", f"is {describe(b['name'])}", "the name of the smooth covariate")
    k = check_int(b["degree"], f"{entry}.degree", 1, 5)
    knots = b["knots"]

    def number_list(v):
        return isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)

    lo_cols, hi_cols = 1, _MAX_BASIS_COLUMNS
    if not number_list(knots) or not lo_cols + k + 2 <= len(knots) <= hi_cols + k + 2:
        raise DamagedState(f"{entry}.knots", f"is {describe(knots)}",
                           f"a list of {lo_cols + k + 2} to {hi_cols + k + 2} numbers (a degree-{k} basis of "
                           f"{lo_cols} to {hi_cols} columns)")
    t = np.asarray(knots, dtype=np.float64)
    if not np.isfinite(t).all() or (np.diff(t) < 0).any() or not t[0] < t[-1]:
        raise DamagedState(f"{entry}.knots", "are not finite and non-decreasing (or span nothing)",
                           "finite, non-decreasing knots from the lower to the upper boundary")
    if not ((t[:k + 1] == t[0]).all() and (t[-k - 1:] == t[-1]).all()):
        raise DamagedState(f"{entry}.knots", f"do not repeat the boundary knots {k + 1} times",
                           f"each boundary knot {k + 1} times (degree {k})")
    r = b["data_range"]
    if not (number_list(r) and len(r) == 2 and all(np.isfinite(r)) and r[0] <= r[1]):
        raise DamagedState(f"{entry}.data_range", f"is {describe(r)}", "[min, max] of the training values")
    return b["name"]


def from_neuroharmonize(model: dict, *, feature_names=None, batch: str = "SITE") -> ComBatGAM:
    """Convert a neuroHarmonize 2.5 GAM model (the dict ``harmonizationLearn`` returns, or its loader
    ``loadHarmonizationModel`` reads) into a fitted :class:`ComBatGAM` with ``compat="neuroHarmonize"``.

    Parameters
    ----------
    model : dict
        neuroHarmonize's model dict, fitted with ``smooth_terms``.
    feature_names : list of str, optional
        Names of the features, in neuroHarmonize's column order (default ``x0, x1, ...``).
    batch : str, default "SITE"
        Name of the batch column in the covariates given to ``transform`` (neuroHarmonize uses ``SITE``).

    Returns
    -------
    ComBatGAM
        Ready to ``transform`` and ``save``. The linear covariates are every covariate column other than
        ``SITE`` and the smooth terms, used as numbers (as neuroHarmonize does).
    """
    if not isinstance(model, dict):
        raise InputError(f"from_neuroharmonize needs neuroHarmonize's model dict; got {type(model).__name__}.")
    need = ["B_hat", "var_pooled", "stand_mean", "gamma_star", "delta_star", "gamma_hat", "delta_hat",
            "info_dict", "smooth_model", "SITE_labels", "Covariates", "eb"]
    missing = [k for k in need if k not in model]
    if missing:
        raise InputError(f"the neuroHarmonize model lacks the key(s) {missing}; pass the dict returned by "
                         "harmonizationLearn (neuroHarmonize 2.5).")
    sm = model["smooth_model"]
    if not sm.get("perform_smoothing"):
        raise InputError("this neuroHarmonize model has no smooth terms (a linear ComBat model); "
                         "ComBatGAM converts GAM models only.")
    terms = [str(t) for t in sm["smooth_terms"]]
    bsp = sm["bsplines_constructor"]
    bases = []
    for t, sm_j in zip(terms, bsp.smoothers):
        x = np.asarray(sm_j.x, dtype=np.float64)
        if int(sm_j.degree) != 3 or sm_j.include_intercept:
            raise InputError("only neuroHarmonize's cubic B-splines without intercept can be converted.")
        bases.append(SplineBasis(t, np.asarray(sm_j.knots, dtype=np.float64), 3, (x.min(), x.max())))
    covs = [str(c) for c in model["Covariates"]]
    if "SITE" not in covs:
        raise InputError("the neuroHarmonize model's covariates have no 'SITE' column.")
    linear = [c for c in covs if c != "SITE" and c not in terms]
    B_hat = np.asarray(model["B_hat"], dtype=np.float64)
    levels = list(np.asarray(model["SITE_labels"]).tolist())
    m = len(levels)
    q = len(linear)
    K = sum(b.n_columns for b in bases)
    if B_hat.shape[0] != m + q + K:
        raise InputError(f"B_hat has {B_hat.shape[0]} rows but {m} sites + {q} linear covariates + {K} spline "
                         "columns were expected; is this a neuroHarmonize 2.5 GAM model?")
    p = B_hat.shape[1]
    names = [f"x{j}" for j in range(p)] if feature_names is None else [str(f) for f in feature_names]
    if len(names) != p:
        raise InputError(f"feature_names has {len(names)} names but the model has {p} features.")
    info = model["info_dict"]
    ref_level = info.get("ref_level")
    formula = " + ".join(_quote(c) for c in linear) if linear else None
    est = ComBatGAM(batch=batch, formula=formula, smooth=terms, eb=bool(model["eb"]), compat="neuroHarmonize",
                    ref_batch=None if ref_level is None else levels[int(ref_level)])
    if linear:
        design, _ = CovariateDesign.fit(formula, pd.DataFrame({c: [0.0, 1.0] for c in linear}))
        design.ranges = {}
    else:
        design = CovariateDesign(formula="")

    def _nan_or(v, size):
        return np.full(size, np.nan) if v is None else np.asarray(v, dtype=np.float64).ravel()

    arrays = {
        "alpha": np.asarray(model["stand_mean"], dtype=np.float64)[:, 0],
        "sigma": np.sqrt(np.asarray(model["var_pooled"], dtype=np.float64).ravel()),
        "beta": B_hat[m:m + q],
        "batch_coef": B_hat[:m],
        "spline_coef": B_hat[m + q:],
        "gamma_hat": np.asarray(model["gamma_hat"], dtype=np.float64),
        "delta_hat": np.asarray(model["delta_hat"], dtype=np.float64),
        "gamma_star": np.asarray(model["gamma_star"], dtype=np.float64),
        "delta_star": np.asarray(model["delta_star"], dtype=np.float64),
        "gamma_bar": _nan_or(model.get("gamma_bar"), m),
        "tau2": _nan_or(model.get("t2"), m),
        "a_prior": _nan_or(model.get("a_prior"), m),
        "b_prior": _nan_or(model.get("b_prior"), m),
        "n_iter": np.zeros(m),
        "batch_sizes": np.asarray(info["sample_per_batch"], dtype=np.float64),
        "constant": np.zeros(p, dtype=bool),
        "smoothing": np.full(p, np.nan),
        "edf": np.full(p, np.nan),
    }
    state = {
        "batches": [b.item() if hasattr(b, "item") else b for b in levels],
        "feature_names": names,
        "design": design.to_dict(),
        "ref_index": None if ref_level is None else int(ref_level),
        "smooth_bases": [b.to_dict() for b in bases],
    }
    est._set_state(state, arrays)
    return est


def _residual_ss(Y, W, coef, onehot, blocks, ss, progress=None) -> None:
    """:func:`featharm._core.ols.residual_ss` of the ``blocks`` of features of ``Y`` into ``ss`` (m × p); the blocks
    are dealt between threads with one BLAS thread each, so the numbers do not depend on the number of threads."""
    def part(some):
        for blk in some:
            ss[:, blk] = ols.residual_ss(Y[:, blk], W, coef[:, blk], onehot)
            if progress is not None:
                progress()

    run_blocks(part, blocks, Y.size)
