"""CovBat (Chen et al. 2022): ComBat, then harmonization of the residual covariance (``docs/methods.md`` §4)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._core import blocks, eb
from .._core.parallel import one_blas_thread
from .._validation import check_integer, check_option
from ..design import batch_indicators
from ..exceptions import ConvergenceWarning, InputError, MissingValueError, MissingValueWarning, warn
from ._base import _Prepared
from .._schema import DamagedState, Stored
from .combat import ComBat

__all__ = ["CovBat"]

# learned arrays of the covariance step and how they are stored ("component" = the K harmonized
# components, "pc" = every principal component)
_COVBAT_STORED = {
    "pca_center": Stored(("feature",), values="finite"),
    "pca_scale": Stored(("feature",), values="positive"),
    "pca_loadings": Stored(("feature", "component"), values="finite"),
    "explained_variance_ratio": Stored(("pc",), values="nonnegative"),
    "score_alpha": Stored(("component",), values="finite"),
    "score_sigma": Stored(("component",), values="positive"),
    # NaN for a batch without 2 complete rows (fitted with missing values; not adjusted in the covariance step)
    "score_gamma_hat": Stored(("batch", "component"), values="any"),
    "score_delta_hat": Stored(("batch", "component"), values="not_negative"),
    "score_gamma_star": Stored(("batch", "component"), values="finite"),
    "score_delta_star": Stored(("batch", "component"), values="positive"),
}
_COVBAT_AXES = {name: spec.axes for name, spec in _COVBAT_STORED.items() if name != "explained_variance_ratio"}


class CovBat(ComBat):
    """ComBat followed by the removal of site effects in the covariance of the residuals.

    Steps (``docs/methods.md`` §4, the defaults of R ``CovBat::covbat``):

    1. ComBat with the covariates and empirical Bayes; keep the **ComBat-adjusted residuals**
       ``e* = y* - alpha - x'beta`` (the covariate effects are *not* in them, so the PCA cannot remove
       biology).
    2. PCA of ``e*`` (centred, and scaled to unit variance with ``std_var``).
    3. The first ``K`` scores: ``K`` is the first number of components whose cumulative share of the
       variance is *above* ``percent_var`` (or ``n_components``).
    4. Each of the ``K`` scores is given the pooled within-site mean and variance of that score (ComBat
       without covariates and, by default, without empirical Bayes).
    5. The adjusted scores are projected back, unscaled and uncentred, and ``alpha + x'beta`` is added.

    The PCA (centre, scale, loadings) and the score step are frozen at fit: ``transform`` projects new
    subjects with the training rotation (as ComBatFamQC's ``predict.covfam``), so on the training rows it
    reproduces ``fit_transform`` exactly.

    Parameters
    ----------
    batch, formula, eb, parametric, mean_only, mean_only_form, tol, max_iter, compat, missing_covariates
        The ComBat step; see :class:`~featharm.ComBat` (``compat`` is None or ``"neuroCombat"``). Missing
        feature values (NaN cells) are taken: see Notes.
    ref_batch : str or None, default None
        Reference batch (Zhang et al. 2018, as :class:`~featharm.ComBat`): the ComBat step maps every other
        batch onto the reference's location and scale, the PCA is taken of all the adjusted residuals, and
        the score step maps each other batch's score mean and variance onto the reference's (the score
        mean and SD of the reference rows, the variance divided by its size, as ComBat's reference
        variance). The reference rows come out unchanged, bit for bit.
    percent_var : float, default 0.95
        Harmonize the first components that explain more than this share of the residual variance
        (strictly greater, as R ``covbat``). Must be in (0, 1).
    n_components : int or None, default None
        Harmonize exactly this many components; overrides ``percent_var``.
    std_var : bool, default True
        Scale the residuals to unit variance before the PCA (R ``std.var``).
    score_eb : bool, default False
        Empirical Bayes in the score step (R ``score.eb``); the priors pool the ``K`` components of a site.
    score_parametric : bool, default True
        Parametric (``True``) or non-parametric score EB (R ``score.parametric``); used with ``score_eb``.
    priors : {"auto", "group", "pool"} or mapping, default "auto"
        Empirical-Bayes priors per measure group (thickness, area, volume ...) or pooled across all features,
        as in :class:`~featharm.ComBat` (``"auto"``: ``"group"``, ``"pool"`` with ``compat``).
        Only the ComBat step: the score step's priors pool the principal components (which mix measures).

    covariates, n_jobs
        A covariate table looked up by the index of ``X``, and the BLAS threads; see :class:`~featharm.ComBat`.

    Attributes
    ----------
    n_components_ : int
        Number of harmonized components ``K``.
    explained_variance_ratio_ : Series
        Share of the residual variance of every principal component (all of them, not only ``K``).
    pca_center_, pca_scale_ : Series
        Mean and SD (ddof = 1) of each feature's ComBat residual, used to standardize before projecting.
    pca_loadings_ : DataFrame
        Loadings of the ``K`` components (feature × component). Each component's sign is fixed so that its
        largest loading is positive (the result does not depend on it unless ``score_eb``).
    score_alpha_, score_sigma_ : Series
        Pooled mean and SD (divided by n) of each score (with ``ref_batch``: those of the reference rows).
    score_gamma_hat_, score_delta_hat_, score_gamma_star_, score_delta_star_ : DataFrame
        Per-site location and scale (variance) of the standardized scores (batch × component), and those
        used (equal to the estimates without ``score_eb``).
    batches_, batch_sizes_, feature_names_in_, n_features_in_, design_, fit_warnings_ : various
        As in :class:`~featharm.ComBat`.
    alpha_, beta_, batch_coef_, sigma_, gamma_hat_, delta_hat_, gamma_star_, delta_star_, priors_, n_iter_, constant_features_ : various
        As in :class:`~featharm.ComBat`; they describe the ComBat step (step 1).

    Notes
    -----
    *Missing values* (``docs/methods.md`` §1.8). The ComBat step harmonizes every observed cell, each
    feature on its observed rows. The PCA needs complete residual rows, so **the PCA and the score model
    are fitted on the complete rows** (no NaN among the features with variance), and **a row with a NaN
    keeps its ComBat-step values**: observed cells adjusted for location and scale, NaN cells NaN, no
    covariance adjustment (nothing is imputed). A :class:`~featharm.exceptions.MissingValueWarning` says how
    many rows that is, at fit and at every ``transform``. A batch with fewer than 2 complete rows has no
    score model and all its rows are left as the ComBat step gives them (``score_gamma_hat_`` NaN,
    ``score_gamma_star_`` 0, ``score_delta_star_`` 1; named in the warning); a reference batch needs 2.
    With many features and scattered NaN few rows are complete, so little is covariance-adjusted.

    One Python peer runs the PCA on the ComBat output *with* the covariate effects added back; the
    leading components then carry age or diagnosis, and adjusting them removes most of those effects.
    Here the PCA sees only the residuals. ``transform(..., new_sites="estimate")`` also estimates the
    score-step location and scale of an unseen site against the frozen PCA.

    Examples
    --------
    >>> import featharm as fh
    >>> data = fh.datasets.load_ixi()
    >>> X = data[fh.datasets.ixi_feature_columns(data)]
    >>> hm = fh.CovBat(batch="site", formula="age + sex")
    >>> Xh = hm.fit_transform(X, data)
    >>> Xh.shape == X.shape and 0 < hm.n_components_ <= X.shape[1]
    True
    """

    _out_of_core = False  # its PCA needs the residual rows
    _schema_name = "covbat"
    _float32_blocks = False  # the PCA works on the whole float64 ComBat output
    _stored = {**ComBat._stored, **_COVBAT_STORED}
    _compat_options = (None, "neuroCombat")
    _supports_missing = True  # the ComBat step takes NaN cells; the covariance step uses the complete rows

    def __init__(self, *, batch="site", formula=None, ref_batch=None, percent_var=0.95, n_components=None,
                 std_var=True, eb=True, parametric=True, mean_only=False, mean_only_form="sva", score_eb=False,
                 score_parametric=True, tol=1e-4, max_iter=1000, compat=None, missing_covariates="error",
                 priors="auto", covariates=None, n_jobs=None):
        self.batch = batch
        self.formula = formula
        self.ref_batch = ref_batch
        self.percent_var = percent_var
        self.n_components = n_components
        self.std_var = std_var
        self.eb = eb
        self.parametric = parametric
        self.mean_only = mean_only
        self.mean_only_form = mean_only_form
        self.score_eb = score_eb
        self.score_parametric = score_parametric
        self.tol = tol
        self.max_iter = max_iter
        self.compat = compat
        self.missing_covariates = missing_covariates
        self.priors = priors
        self.covariates = covariates
        self.n_jobs = n_jobs

    def _check_params(self) -> None:
        super()._check_params()  # the ComBat step's parameters
        owner = self._owner()
        for name in ("std_var", "score_eb", "score_parametric"):
            check_option(name, getattr(self, name), (True, False), owner)
        pv = self.percent_var
        if isinstance(pv, bool) or not isinstance(pv, (int, float, np.floating)) or not 0 < pv < 1:
            raise InputError(f"The 'percent_var' parameter of {owner} must be a number in (0, 1), the share of "
                             f"variance to harmonize. Got {pv!r} instead.")
        if self.n_components is not None:
            check_integer("n_components", self.n_components, owner)

    # ------------------------------------------------------------------------------ fitting
    def _fit_model(self, X, covariates) -> _Prepared:
        prep = super()._fit_model(X, covariates)  # step 1: ComBat (fills and publishes the ComBat arrays)
        with one_blas_thread():  # the QR and SVD's last bits would depend on the BLAS's threads
            self._fit_covariance(prep)
        return prep

    def _fit_covariance(self, prep: _Prepared) -> None:
        """Steps 2–4: the PCA of the standardized ComBat residuals and ComBat on the scores (fills ``_arr``)."""
        a = self._arr
        keep = ~a["constant"]
        complete = self._complete_rows(prep)  # None: every row (no NaN cells among the PCA's features)
        codes = prep.codes if complete is None else prep.codes[complete]
        if complete is not None:
            self._check_complete_rows(codes, int(complete.size - complete.sum()), complete.size)
        A, center, scale = self._pca_input(prep, keep, rows=complete)
        n, pk = A.shape
        if pk < 2:
            raise InputError(f"{self._owner()} needs at least 2 features with residual variance for the PCA; "
                             f"got {pk}.")
        if n > pk:
            # tall: the SVD of the p × p triangular factor of A has the same s and V (cheaper than A's). The
            # QR overwrites A in place (no n × p copy); A is rebuilt below for the scores.
            from scipy.linalg import qr

            r = np.triu(qr(A, mode="raw", overwrite_a=True, check_finite=False)[0][0][:pk])
            del A
            s, vt = np.linalg.svd(r, full_matrices=False)[1:]  # U is dropped at once
            del r
            A = None
        else:
            s, vt = np.linalg.svd(A, full_matrices=False)[1:]
        var = s**2
        ratio = var / var.sum()
        if self.n_components is not None:
            K = int(self.n_components)
            if K > ratio.size:
                raise InputError(
                    f"n_components={K} is more than the {ratio.size} principal components of {n} subjects "
                    f"and {pk} features with variance. Pass at most {ratio.size}, or use percent_var."
                )
        else:
            above = np.flatnonzero(np.cumsum(ratio) > self.percent_var)
            K = int(above[0]) + 1 if above.size else ratio.size
        L = vt[:K].T.copy()
        del vt
        big = np.argmax(np.abs(L), axis=0)
        L *= np.where(L[big, np.arange(K)] < 0, -1.0, 1.0)  # deterministic signs
        p = keep.size
        full_center, full_scale = np.zeros(p), np.ones(p)
        full_center[keep], full_scale[keep] = center, scale
        if keep.all():
            loadings = L
        else:
            loadings = np.zeros((p, K))
            loadings[keep] = L
        a.update(pca_center=full_center, pca_scale=full_scale, pca_loadings=loadings, explained_variance_ratio=ratio)
        # step 4: ComBat on the K scores, no covariates. Scores S = A L of the training rows, in row blocks
        if A is None:
            A = self._pca_input(prep, keep, center, scale, rows=complete)[0]
        m = len(self.batches_)
        counts = a["batch_sizes"] if complete is None else np.bincount(codes, minlength=m).astype(np.float64)
        onehot = batch_indicators(codes, m)
        with np.errstate(divide="ignore", invalid="ignore"):
            means = ((onehot.T @ A) @ L) / counts[:, None]
        few = counts < 2  # (only with missing values) a batch with fewer than 2 complete rows: not adjusted
        means[counts == 0] = 0.0  # weight 0 in the pooled score mean
        ss = np.zeros((m, K))
        for rows in blocks.iter_blocks(n, pk + K):
            S = A[rows] @ L
            S -= means[codes[rows]]
            S *= S
            ss += onehot[rows].T @ S
        del A, S
        ref = self.ref_index_
        st = eb.standardized_moments(means, ss, counts, np.eye(m), ref=ref)
        st.gamma_hat[few] = np.nan
        g_star, d_star = st.gamma_hat.copy(), st.delta_hat.copy()
        if self.score_eb:
            if K < 2:
                raise InputError("score_eb pools the K harmonized components of a site, so it needs K >= 2; "
                                 f"got K = {K}. Raise n_components or percent_var, or pass score_eb=False.")
            pri = eb.eb_priors(st.gamma_hat, st.delta_hat)
            for i in (i for i in range(m) if i != ref and not few[i]):
                g_star[i], d_star[i] = self._score_eb_site(st.gamma_hat[i], st.delta_hat[i], st.delta_raw[i],
                                                           counts[i], pri, i, self.batches_[i])
        if ref is not None:
            g_star[ref], d_star[ref] = 0.0, 1.0  # the reference's scores are the target: not adjusted
        g_star[few], d_star[few] = 0.0, 1.0  # scores left as they are (only these sites' complete rows have any)
        a.update(score_alpha=st.alpha, score_sigma=st.sigma, score_gamma_hat=st.gamma_hat,
                 score_delta_hat=st.delta_hat, score_gamma_star=g_star, score_delta_star=d_star)
        self._publish()

    # ------------------------------------------------------------------------------ missing values (§1.8)
    def _complete_rows(self, prep: _Prepared) -> np.ndarray | None:
        """Rows with no NaN cell among the features the PCA uses (those with variance), or None when every
        row is complete. Only these rows enter the covariance step."""
        if prep.mask is None:
            return None
        complete = ~prep.mask[:, ~self._arr["constant"]].any(axis=1)
        return None if complete.all() else complete

    def _check_complete_rows(self, codes: np.ndarray, n_incomplete: int, n: int) -> None:
        """At fit: the PCA and the score model are fitted on the complete rows; a batch needs 2 of them for its
        score mean and variance (else it is not adjusted in the covariance step; the reference batch must
        have them). Warns how many rows (and which batches) the covariance step leaves as ComBat gives them."""
        m = len(self.batches_)
        have = np.bincount(codes, minlength=m)
        few = [f"{self.batches_[i]!r} ({int(have[i])})" for i in range(m) if have[i] < 2]
        ref = self.ref_index_
        short = None
        if ref is not None and have[ref] < 2:
            short = f"the reference batch {self.batches_[ref]!r} has {int(have[ref])}"
        elif have.sum() < 3:
            short = f"the table has {int(have.sum())}"
        if short:
            raise MissingValueError(
                f"{self._owner()}'s covariance step (PCA of the ComBat residuals) uses the rows without missing "
                f"values, and {short}: too few for the score model. Use ComBat (it harmonizes every observed "
                "cell), or drop the features with many missing values."
            )
        warn(
            f"{n_incomplete} of {n} rows have missing feature values: {self._owner()}'s PCA and score model are "
            f"fitted on the {n - n_incomplete} complete rows, and the rows with missing values keep their ComBat-step "
            "values (observed cells harmonized by ComBat, NaN cells NaN; not adjusted in the covariance step)."
            + (f" Batch(es) {', '.join(few)} have fewer than 2 complete rows: their score effects cannot be "
               "estimated, so the covariance step leaves all their rows as the ComBat step gives them "
               "(score_gamma_hat_ NaN, score_gamma_star_ 0, score_delta_star_ 1)." if few else ""),
            MissingValueWarning,
        )

    def _score_eb_site(self, gh, dh, d_raw, n, pri, i, name):
        opts = eb.EBOptions(eb=True, parametric=bool(self.score_parametric), mean_only=False,
                            tol=float(self.tol), max_iter=int(self.max_iter))
        gs, ds, _, ok = eb.site_posterior(gh, dh, d_raw, n, pri, i, opts)
        if not ok:
            warn(f"score-step EB did not converge within max_iter={self.max_iter} iterations for batch "
                 f"{name!r}; the last iterate is used.", ConvergenceWarning)
        return gs, ds

    def _common_feature_scale(self) -> str | None:
        # without std_var the PCA mixes the features in their own units: only a common factor is exact
        return None if self.std_var else "with std_var=False mixes the features in their own units in the PCA"

    # ------------------------------------------------------------------------------ applying
    def _pca_input(self, prep: _Prepared, keep, center=None, scale=None, rows=None):
        """The PCA's input: ComBat-adjusted residuals ``e* = y* - M`` of the features with variance, centred
        and scaled (by their own mean and SD unless ``center``/``scale`` are given), built in place in the
        ComBat output (feature blocks; no other n × p temporary). ``rows`` (bool, optional): only those rows
        (the complete rows, with missing values). Returns ``A, center, scale``."""
        E = super()._harmonize(prep)
        D = self._preserved_design(prep)
        coef = self._preserved_coef(slice(None))
        n, p = E.shape
        for blk in blocks.iter_blocks(p, n):
            E[:, blk] -= D @ coef[:, blk]
        if rows is not None:
            A = np.asfortranarray(E[np.ix_(rows, keep)])
        else:
            A = E if keep.all() else np.asfortranarray(E[:, keep])
        del E
        pk = A.shape[1]
        if center is None:
            center, scale = A.mean(axis=0), np.ones(pk)
            if self.std_var:
                for blk in blocks.iter_blocks(pk, n):
                    scale[blk] = A[:, blk].std(axis=0, ddof=1)
        A -= center
        A /= scale
        return A, center, scale

    def _harmonize(self, prep: _Prepared) -> np.ndarray:
        """ComBat, then the score step, in row blocks: scores, their adjustment and the back-projection of
        the change only ever hold a block of rows (the ComBat output is adjusted in place)."""
        out = super()._harmonize(prep)  # ComBat output y* = e* + M, adjusted in place below
        with one_blas_thread():  # (the same bits for any number of BLAS threads)
            return self._harmonize_scores(prep, out)

    def _harmonize_scores(self, prep: _Prepared, out: np.ndarray) -> np.ndarray:
        a = self._arr
        # scores ((y* - M - center) / scale) L without forming e*: M = D coef is low rank
        Lw = a["pca_loadings"] / a["pca_scale"][:, None]
        D = self._preserved_design(prep)
        shift = self._preserved_coef(slice(None)) @ Lw
        c0 = a["pca_center"] @ Lw
        back = np.ascontiguousarray((a["pca_loadings"] * a["pca_scale"][:, None]).T)  # K × p

        complete = self._complete_rows(prep)
        if complete is not None:  # rows with NaN among the PCA's features keep their ComBat-step values (§1.8)
            warn(f"{int(complete.size - complete.sum())} of {complete.size} rows have missing feature values: they "
                 f"keep their ComBat-step values ({self._owner()}'s covariance step needs complete rows; their "
                 "observed cells are harmonized by the ComBat step, NaN cells stay NaN).", MissingValueWarning)

        def scores(rows):
            Yr = out[rows]
            if complete is not None:  # NaN only in features the PCA does not use (zero loadings) or in
                Yr = np.where(np.isnan(Yr), 0.0, Yr)  # incomplete rows (their change is set to 0 below)
            S = Yr @ Lw
            S -= D[rows] @ shift
            S -= c0
            return S

        g, d = a["score_gamma_star"], a["score_delta_star"]
        if prep.new_levels:
            new = np.flatnonzero(prep.codes >= g.shape[0])
            if complete is not None:
                new = new[complete[new]]
            g, d = self._estimate_new_score_effects(prep, scores(new), prep.codes[new], g, d)
        # adjusted - original score: (S - alpha - sigma g_b) / sqrt(d_b) + alpha - S
        loc = a["score_alpha"] + a["score_sigma"] * g  # batch × K
        inv_sd = 1.0 / np.sqrt(d)
        n, p = out.shape
        for rows in blocks.iter_blocks(n, p + back.shape[0]):
            S = scores(rows)
            b = prep.codes[rows]
            dS = (S - loc[b]) * inv_sd[b]
            dS += a["score_alpha"]
            dS -= S
            if complete is not None:
                dS[~complete[rows]] = 0.0
            out[rows] += dS @ back
        # constant features and reference rows unchanged, bit for bit (the reference's score change is 0)
        return self._keep_unadjusted(out, prep)

    def _estimate_new_score_effects(self, prep, S_new, codes_new, g, d):
        """Score-step location and scale of sites unseen at fit, against the frozen score model.

        ``S_new`` are the scores of the rows of new sites (batch codes ``codes_new``: m, m+1, ...)."""
        a = self._arr
        m = g.shape[0]
        gs, ds = [], []
        for j, name in enumerate(prep.new_levels):
            z = (S_new[codes_new == m + j] - a["score_alpha"]) / a["score_sigma"]
            if len(z) < 2:  # (only with missing values: the site has enough rows, but not complete ones)
                warn(f"new site {name!r} has {len(z)} row(s) without missing feature values; its score mean and "
                     "variance need 2, so the covariance step leaves all its rows as the ComBat step gives them.",
                     MissingValueWarning)
                gs.append(np.zeros(g.shape[1]))
                ds.append(np.ones(g.shape[1]))
                continue
            gh, dh, d_raw = eb.batch_moments(z)
            if self.score_eb:
                pri = eb.eb_priors(gh[None], dh[None])
                gh, dh = self._score_eb_site(gh, dh, d_raw, float(len(z)), pri, 0, name)
            gs.append(gh)
            ds.append(dh)
        return np.vstack([g, *gs]), np.vstack([d, *ds])

    # ------------------------------------------------------------------------------ learned attributes
    def _check_state(self, state):
        dims = super()._check_state(state)
        p = dims["feature"]
        dims.update(component=(1, p), pc=(1, p))  # fixed by the arrays, at most one per feature
        return dims

    def _check_arrays(self, state, arrays, dims) -> None:
        K, r = arrays["pca_loadings"].shape[1], arrays["explained_variance_ratio"].size
        if K > r:
            raise DamagedState("array 'pca_loadings'", f"has {K} components but only {r} principal components "
                               "are stored", "at most as many harmonized components as principal components")
        if self.n_components is not None and K != self.n_components:
            raise DamagedState("array 'pca_loadings'", f"has {K} components",
                               f"n_components={self.n_components} as the parameters say")

    def _publish(self) -> None:
        super()._publish()
        a = self._arr
        if "pca_loadings" not in a:  # inside ComBat's fit, before the covariance step
            return
        K = a["pca_loadings"].shape[1]
        comp = pd.Index([f"PC{k + 1}" for k in range(K)], name="component")
        axes = {"batch": self._axis("batch"), "feature": self._axis("feature"), "component": comp}
        for name, ax in _COVBAT_AXES.items():
            arr = a[name]
            if "feature_scale" in a:  # in the input's units (see BaseHarmonizer._in_input_units)
                if name in ("pca_center", "pca_scale") and (self.std_var or name == "pca_center"):
                    arr = self._in_input_units(arr, 1)
                elif name in ("score_alpha", "score_sigma") and not self.std_var:
                    arr = arr / a["feature_scale"][0]  # one common factor (see _common_feature_scale)
            if len(ax) == 1:
                obj = pd.Series(arr, index=axes[ax[0]], name=name)
            else:
                obj = pd.DataFrame(arr, index=axes[ax[0]], columns=axes[ax[1]])
            setattr(self, name + "_", obj)
        r = a["explained_variance_ratio"]
        self.explained_variance_ratio_ = pd.Series(
            r, index=pd.Index([f"PC{k + 1}" for k in range(r.size)], name="component"),
            name="explained_variance_ratio")
        self.n_components_ = int(K)
