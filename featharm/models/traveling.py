"""Traveling-subject harmonization (Yamashita et al. 2019): site biases measured on the same people."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._core import missing
from .._core.twoway import dependent_columns, fit_gain, fit_two_way, site_components, site_contrasts, within_subject
from .._dask import is_lazy
from .._validation import _show, batch_levels, check_option, covariate_column, encode_batches
from ..design import CovariateDesign
from ..exceptions import (
    BatchError,
    CollinearityWarning,
    ConfoundingError,
    ConstantFeatureWarning,
    ConvergenceWarning,
    DisconnectedSitesError,
    FormulaError,
    InputError,
    MissingValueError,
    UnseenBatchError,
    warn,
)
from ..formula import formula_columns
from .._schema import Stored, check_levels
from ._base import MIN_NEW_SITE_SIZE, BaseHarmonizer

__all__ = ["TravelingSubjects"]

# A design column whose within-subject variation is below this fraction of its variation over all scans is
# constant within every subject (sex, diagnosis, age at a one-day tour): aliased with the subject factor.
ALIAS_RTOL = 1e-10

# Cap on the alternating maximum-likelihood rounds of the gains (scale=True); they converge in 5-20.
GAIN_MAX_ITER = 1000


class TravelingSubjects(BaseHarmonizer):
    """Correct each site's measurement bias, estimated from traveling subjects scanned at several sites.

    When the same people are scanned at every site (or at overlapping subsets of sites), the differences
    between their scans measure each site's bias directly (Yamashita et al. 2019; ``docs/methods.md`` §5.8).
    :meth:`fit` takes the traveling-subject scans and fits, for every feature,
    ``y = mu + p_subject + m_site + x'b + e`` by least squares (the subject factor absorbed by within-subject
    demeaning, all features at once). :meth:`transform` then corrects *any* scan from those sites:
    ``y* = y - m_site`` (or ``(y - a_site) / g_site`` with the scale correction, see ``scale``). Unlike
    ComBat, the scans corrected need not be the ones fitted: fit on the traveling subjects, apply to the main
    study.

    Parameters
    ----------
    batch : str, default "site"
        Column of ``covariates`` holding the site (scanner).
    subject : str, default "subject"
        Column of ``covariates`` identifying the traveling subject of each scan (only needed at fit).
    formula : str or None, default None
        Covariates that change between a subject's scans (e.g. ``"age"`` when the tour takes months, or a
        time-of-day variable), estimated within subject so they do not bias the site effects. A column
        constant within every subject (``sex``, ``diagnosis``) is aliased with the subject effect: it is
        left out of the fit with a :class:`~featharm.exceptions.CollinearityWarning` (its coefficient is
        0). It is not needed either: the site biases are within-subject contrasts. Must not contain the
        batch or subject columns.
    ref_batch : str or None, default None
        Reference site: its bias is 0, its scans are returned unchanged and the others are mapped onto it.
        ``None``: sum-to-zero coding, the biases average to zero over the sites (unweighted), and corrected
        scans are on the scale of the "average site".
    scale : bool, default False
        Also correct a multiplicative site effect: each site maps the true value affinely,
        ``y = a_site + g_site t`` (a gain ``g`` on subject differences and noise alike), estimated by maximum
        likelihood; corrected ``y* = (y - a_site) / g_site``. See Notes.
    covariates, n_jobs
        A covariate table looked up by the index of ``X``, and the BLAS threads; see :class:`~featharm.ComBat`.

    Attributes
    ----------
    batches_ : ndarray
        Sites of the traveling-subject scans in sorted order (the rows of every site × feature table).
    batch_sizes_ : Series
        Traveling-subject scans per site; ``n_subjects_`` traveling subjects scanned at each site.
    subjects_ : ndarray
        The traveling subjects (sorted ids).
    feature_names_in_, n_features_in_, design_, ref_index_ :
        As :class:`~featharm.ComBat`.
    bias_ : DataFrame
        Estimated measurement bias of each site (site × feature, feature units): sum-to-zero over the
        sites, or 0 at ``ref_batch``. ``transform`` subtracts it. With ``scale=True``, the offset ``a`` of
        the affine model.
    bias_se_ : DataFrame
        Its standard error (site × feature; 0 at the reference site), from the least-squares covariance
        ``sigma^2 C (Z'Z)^-1 C'`` of the within-subject fit. With ``scale=True``, an approximation
        conditional on the subjects' fitted values (it ignores the uncertainty of the gains).
    beta_ : DataFrame
        Within-subject covariate effects (design column × feature); 0 for aliased columns, listed in
        ``aliased_covariates_``.
    alpha_ : Series
        Mean over the traveling-subject scans of the corrected values minus ``x'b``.
    sigma_ : Series
        Pooled within-subject residual SD, ``sqrt(RSS / dof)`` (with ``scale=True``, of the corrected
        values); ``dof_`` the degrees of freedom of the location fit (scans - subjects - (sites - 1) -
        estimated covariate columns).
    noise_sd_ : DataFrame
        Within-subject residual SD of each site in the location-only fit (site × feature): the site's
        residual sum of squares divided by its share of the degrees of freedom (the sum of ``1 - leverage``
        over its scans). NaN where a site has less than one degree of freedom (its subjects scanned at no
        other site, and once). ``noise_sd_ / sigma_`` is the plain per-site noise ratio.
    scale_ : DataFrame
        The gains ``g`` (site × feature) with ``scale=True`` (geometric mean 1 over the sites, or 1 at
        ``ref_batch``); all 1 otherwise.
    constant_features_ : list
        Features constant over the traveling-subject scans: passed through unchanged.
    fit_warnings_ : list of dict
        The warnings raised during ``fit`` (kept in saved models and listed by the report).
    n_obs_ : DataFrame
        Only when fitted with missing feature values: observed scans of each feature at each site.

    Notes
    -----
    *Model.* ``y_{s,k,v} = mu_v + p_{s,v} + m_{k,v} + x'b_v + e`` with a subject factor ``p`` and the
    measurement bias ``m`` of site ``k``. Every column is demeaned within subject, which removes ``mu + p``
    exactly (Frisch–Waugh–Lovell), and the site contrasts and covariates are solved by least squares for
    all features at once: no dense subjects × scans design. Subjects scanned at a single site add nothing
    to the biases (only to the noise, if scanned there more than once).

    *Connectivity.* The biases of two sites can be compared only when a chain of shared subjects links
    them. ``fit`` builds the bipartite subject–site graph and raises
    :class:`~featharm.exceptions.DisconnectedSitesError` naming the sites not connected to the largest
    group of sites.

    *Scale* (``scale=True``; location only, the default, is Yamashita et al.'s method). The model becomes
    ``y = a_k + g_k t`` with ``t = mu + p_s + x'b + e``: a site's gain multiplies the subject differences and
    the noise alike, so its within-subject residual SD is ``g_k sigma``. The gains and offsets are estimated
    by maximum likelihood, alternating between the subject (and covariate) fit of ``(y - a_k) / g_k`` and a
    closed-form update of each site's ``(a_k, g_k)`` (:func:`featharm._core.twoway.fit_gain`), with
    ``sum_k a_k = 0`` and ``prod_k g_k = 1`` (or ``a_ref = 0``, ``g_ref = 1``). The plain ratio of a site's
    residual SD to the pooled one (``noise_sd_ / sigma_``) is not used as the gain: under this model the
    location-only residuals also hold ``(g_k - 1) p_s``, which inflates every site's residual SD whose gain
    differs from the others in proportion to the subject spread. ``scale=True`` needs 3 or more traveling
    subjects at every site. Corrected: ``y* = (y - a_k) / g_k``.

    *Missing values.* NaN cells are allowed: each feature is fitted on the scans where it is observed
    (features missing on the same scans are fitted together), and the sites must be connected on those
    scans (else the error names the features and sites); NaN cells stay NaN. A site with no observed scan of
    a feature is an error (its bias there is unknown).

    *New data.* ``transform`` reads the site column only (the correction depends on neither the subject nor
    the covariates: the formula's columns need not be present). A site without
    traveling subjects cannot be corrected: :class:`~featharm.exceptions.UnseenBatchError` names it
    (``new_sites="estimate"`` is refused: a bias is measured only by scans of the same people).

    References
    ----------
    Yamashita A, Yahata N, Itahashi T, et al. (2019) Harmonization of resting-state functional MRI data
    across multiple imaging sites via the separation of site differences into sampling bias and measurement
    bias. *PLoS Biology* 17(4):e3000042.

    Examples
    --------
    Simulated traveling subjects: 12 people, each scanned at 4 sites, with known site biases.

    >>> import featharm as fh
    >>> ts = fh.datasets.make_traveling(n_subjects=12, n_sites=4, n_features=10, random_state=0)
    >>> hm = fh.TravelingSubjects(batch="site", subject="subject").fit(ts.X, ts.covariates)
    >>> hm.bias_.shape
    (4, 10)
    >>> bool(((hm.bias_ - ts.bias).abs() < 4 * hm.bias_se_).all().all())
    True
    >>> Xh = hm.transform(ts.X, ts.covariates)  # any scans of these sites
    """

    _schema_name = "traveling"
    _supports_missing = True
    _row_major_blocks = False
    _feature_units = {"bias": 1, "bias_se": 1, "beta": 1, "alpha": 1, "sigma": 1, "noise_sd": 1}
    _stored = {
        "bias": Stored(("batch", "feature"), values="finite"),
        "bias_se": Stored(("batch", "feature"), values="nonnegative"),
        "beta": Stored(("column", "feature"), values="finite"),
        "alpha": Stored(("feature",), values="finite"),
        "sigma": Stored(("feature",), values="sd"),
        "noise_sd": Stored(("batch", "feature"), values="not_negative"),
        "scale": Stored(("batch", "feature"), values="positive"),
        "dof": Stored(("feature",), values="count"),
        "aliased": Stored(("column",), dtype="bool"),
        "batch_sizes": Stored(("batch",), values="count"),
        "n_subjects": Stored(("batch",), values="count"),
        "constant": Stored(("feature",), dtype="bool"),
        "feature_scale": Stored(("feature",), values="positive", optional=True),
        "n_obs": Stored(("batch", "feature"), values="count", optional=True),
    }
    _state_extra = ("subjects",)

    def __init__(self, *, batch="site", subject="subject", formula=None, ref_batch=None, scale=False,
                 covariates=None, n_jobs=None):
        self.batch = batch
        self.subject = subject
        self.formula = formula
        self.ref_batch = ref_batch
        self.scale = scale
        self.covariates = covariates
        self.n_jobs = n_jobs

    # ------------------------------------------------------------------------------ checks
    def _check_params(self) -> None:
        super()._check_params()  # batch, formula, ref_batch, covariates, n_jobs
        owner = self._owner()
        check_option("scale", self.scale, (True, False), owner)
        if not isinstance(self.subject, str):
            raise InputError(f"The 'subject' parameter of {owner} must be the name of the subject id column of "
                             f"the covariates. Got {self.subject!r} instead.")
        used = formula_columns(self.formula, [self.subject, self.batch])
        for col in (self.subject, self.batch):
            if col in used:
                raise FormulaError(
                    f"formula {self.formula!r} of {owner} uses {col!r}; the subject and the site enter the model "
                    "as factors of their own. Remove it from the formula."
                )

    def _eb_options(self):  # no empirical Bayes: the biases are measured on the same people
        from .._core import eb

        return eb.EBOptions(eb=False, parametric=True, mean_only=True)

    def _subject_codes(self, cov: pd.DataFrame) -> tuple[list, np.ndarray]:
        s = covariate_column(cov, self.subject, "subject", fix="Pass subject=<name of the subject id column>.",
                             missing_fix="every traveling-subject scan needs a subject id.")
        levels = batch_levels(s)
        return levels, encode_batches(s, levels, str(self.subject))

    # ------------------------------------------------------------------------------ fitting
    def _fit_model(self, X, covariates):
        self._check_params()
        prep = self._prepare(X, covariates, fitting=True)
        levels = prep.levels
        K = len(levels)
        codes = prep.codes
        if K < 2:
            raise BatchError(f"{self._owner()} needs traveling subjects scanned at 2 or more sites of "
                             f"{self.batch!r}; the data have one: {levels}.")
        ref = self._ref_index(levels)
        subjects, g = self._subject_codes(prep.covariates)
        S = len(subjects)
        self._check_connected(g, codes, S, levels, None)
        design, Xc = CovariateDesign.fit(self.formula, prep.covariates, exclude=(self.batch,))
        prep.X = Xc
        aliased = self._aliased_columns(Xc, g, S, design.columns)
        Y = prep.Y
        n, p = Y.shape
        counts = np.bincount(codes, minlength=K).astype(np.float64)
        a = {"batch_sizes": counts, "aliased": aliased,
             "n_subjects": np.array([np.unique(g[codes == k]).size for k in range(K)], dtype=np.float64)}
        shapes = {"bias": (K, p), "bias_se": (K, p), "beta": (Xc.shape[1], p), "alpha": (p,), "sigma2": (p,),
                  "rss": (K, p), "dof_site": (K, p), "dof": (p,), "gain": (K, p), "converged": (p,)}
        out = {k: np.full(shape, np.nan) for k, shape in shapes.items()}
        out["gain"][:] = 1.0
        out["converged"][:] = 1.0
        if prep.mask is None:
            groups = [(np.ones(n, dtype=bool), np.arange(p))]
        else:
            first, inverse = missing.missingness_patterns(prep.mask)
            groups = [(~prep.mask[:, col], np.flatnonzero(inverse == u)) for u, col in enumerate(first)]
            a["n_obs"] = np.eye(K)[codes].T @ (~prep.mask).astype(np.float64)  # observed scans per site × feature
        names = [str(c) for c in prep.columns]
        for rows, cols in groups:
            self._fit_rows(Y, rows, cols, g, codes, S, levels, Xc, aliased, ref, design.columns, names, out)
        with np.errstate(invalid="ignore"):
            spread = np.nanmax(Y, axis=0) - np.nanmin(Y, axis=0)
        constant = ~(spread > 0)
        if constant.any():
            flat = [names[j] for j in np.flatnonzero(constant)]
            warn(f"{len(flat)} feature(s) are constant over the traveling-subject scans: {_show(flat)}. They are "
                 "passed through unchanged (bias 0).", ConstantFeatureWarning)
        slow = (out["converged"] == 0) & ~constant
        if slow.any():
            warn(f"the gains (scale=True) of {int(slow.sum())} feature(s) did not converge within "
                 f"{GAIN_MAX_ITER} iterations: {_show([names[j] for j in np.flatnonzero(slow)])}; the last iterate is "
                 "used. Check those features (a site with almost no spread of its subjects' values?).",
                 ConvergenceWarning)
        with np.errstate(invalid="ignore", divide="ignore"):
            noise_sd = np.where(out["dof_site"] >= 1.0, np.sqrt(out["rss"] / out["dof_site"]), np.nan)
        a.update(bias=np.where(constant, 0.0, out["bias"]), bias_se=np.where(constant, 0.0, out["bias_se"]),
                 beta=np.where(constant, 0.0, out["beta"]), alpha=out["alpha"],
                 sigma=np.where(constant, 0.0, np.sqrt(out["sigma2"])), noise_sd=np.where(constant, 0.0, noise_sd),
                 scale=np.where(constant, 1.0, out["gain"]), dof=out["dof"], constant=constant)
        if prep.scale is not None:
            a["feature_scale"] = prep.scale
        self._forget_fit()
        self.batches_ = np.asarray(levels, dtype=object)
        self.n_features_in_ = p
        self.feature_names_in_ = np.asarray([str(c) for c in prep.columns], dtype=object)
        self.design_ = design
        self.ref_index_ = ref
        self._subject_levels = list(subjects)
        self._arr = a
        self._publish()
        return prep

    def _check_connected(self, g, codes, S, levels, features) -> None:
        """Raise :class:`DisconnectedSitesError` naming the sites not linked to the largest group of sites."""
        comp = site_components(g, codes, S, len(levels))
        if comp.max() == 0:
            return
        sizes = np.bincount(comp)
        main = int(np.argmax(sizes))  # the largest group (ties: the one holding the first site)
        groups = [[levels[k] for k in np.flatnonzero(comp == c)] for c in range(sizes.size)]
        off = [levels[k] for k in np.flatnonzero(comp != main)]
        where = "" if features is None else (f" on the scans where feature(s) {_show(features)} are observed "
                                             "(the others have missing values)")
        raise DisconnectedSitesError(
            f"site(s) {off} of {self.batch!r} share no traveling subject, directly or through other sites, with "
            f"{groups[main]}{where}: their biases cannot be compared. Groups of linked sites: "
            f"{' | '.join(map(str, groups))}. Scan at least one subject at a site of each group, or fit each group "
            "separately."
        )

    def _aliased_columns(self, Xc, g, S, columns) -> np.ndarray:
        """Design columns constant within every subject: left out with a warning (coefficient 0)."""
        q = Xc.shape[1]
        if not q:
            return np.zeros(0, dtype=bool)
        Xt, _ = within_subject(Xc, g, S)
        within = np.sqrt((Xt * Xt).sum(axis=0))
        centred = Xc - Xc.mean(axis=0)
        total = np.sqrt((centred * centred).sum(axis=0))
        aliased = within <= ALIAS_RTOL * np.maximum(total, np.abs(Xc).max(axis=0))
        if aliased.any():
            names = [str(columns[j]) for j in np.flatnonzero(aliased)]
            warn(
                f"covariate column(s) {names} of the formula {self.formula!r} are constant within every traveling "
                "subject: they are aliased with the subject effect and left out of the fit (coefficient 0). They "
                "are not needed: the site biases are within-subject contrasts. Keep only covariates that change "
                "between a subject's scans (e.g. age over a long tour).",
                CollinearityWarning,
            )
        return aliased

    def _fit_rows(self, Y, rows, cols, g, codes, S, levels, Xc, aliased, ref, columns, names, out) -> None:
        """Fit the features ``cols`` on the scans ``rows`` (all scans without missing values); fill ``out``."""
        K = len(levels)
        features = None if rows.all() else [names[j] for j in cols]
        site = codes[rows]
        absent = np.flatnonzero(np.bincount(site, minlength=K) == 0)
        if absent.size:
            raise MissingValueError(
                f"feature(s) {_show(features)} have no observed scan at site(s) "
                f"{[levels[k] for k in absent]}: their bias there cannot be estimated. Drop those features."
            )
        subj = g[rows]
        self._check_connected(subj, site, S, levels, features)
        X = Xc[rows]
        keep = ~aliased
        Zt, _ = within_subject(np.hstack([site_contrasts(K, ref)[site], X[:, keep]]), subj, S)
        dep = [j for j in dependent_columns(Zt) if j >= K - 1]
        if dep:
            name = [str(c) for c, k in zip(columns, keep) if k][dep[0] - (K - 1)]
            raise ConfoundingError(
                f"covariate column {name!r} is, within the traveling subjects, a combination of the sites and the "
                f"other covariates{'' if features is None else f' (on the scans where {_show(features)} are observed)'}"
                ": its effect cannot be separated from the site biases (e.g. a property of the scanner, or age "
                "when every subject visits the sites in the same order at the same pace). Remove it from the "
                "formula."
            )
        n_rows = int(rows.sum())
        dof = n_rows - np.unique(subj).size - (K - 1) - int(keep.sum())
        if dof < 1:
            raise InputError(
                f"the traveling-subject scans{'' if features is None else f' where {_show(features)} are observed'} "
                f"leave {dof} residual degrees of freedom ({n_rows} scans, {np.unique(subj).size} subjects, {K} "
                f"sites, {int(keep.sum())} covariate column(s)); the biases need at least 1. Add scans, or "
                "use fewer covariates."
            )
        Yb = np.ascontiguousarray(Y[np.ix_(rows, cols)])
        fit = fit_two_way(Yb, subj, site, S, K, X, ref=ref, keep=keep)
        out["rss"][:, cols] = fit.rss
        out["dof_site"][:, cols] = fit.dof_site[:, None]
        out["dof"][cols] = fit.dof
        if not self.scale:
            out["bias"][:, cols] = fit.site_effect
            out["bias_se"][:, cols] = np.sqrt(np.clip(np.diag(fit.site_cov), 0.0, None)[:, None] * fit.sigma2[None, :])
            out["beta"][:, cols] = fit.coef
            out["alpha"][cols] = fit.intercept
            out["sigma2"][cols] = fit.sigma2
            return
        pairs = np.unique(subj * K + site)  # the (subject, site) pairs scanned
        multi = np.bincount(pairs // K, minlength=S) >= 2  # subjects scanned at 2 or more sites
        linked = np.bincount(pairs % K, weights=multi[pairs // K], minlength=K)
        few = [(levels[k], int(linked[k])) for k in range(K) if linked[k] < 3]
        if few:
            raise BatchError(
                f"scale=True estimates each site's gain from the traveling subjects scanned there, and needs 3 or "
                f"more; site(s) of {self.batch!r} with fewer"
                f"{'' if features is None else f' (where {_show(features)} are observed)'}: "
                f"{', '.join(f'{lv!r} ({c})' for lv, c in few)}. Use scale=False (location only), or scan more "
                "traveling subjects there."
            )
        gf = fit_gain(Yb, subj, site, S, K, X, ref=ref, keep=keep, max_iter=GAIN_MAX_ITER)
        out["bias"][:, cols] = gf.offset
        out["bias_se"][:, cols] = gf.offset_se
        out["gain"][:, cols] = gf.gain
        out["beta"][:, cols] = gf.coef
        out["alpha"][cols] = gf.intercept
        out["sigma2"][cols] = gf.sigma2
        out["converged"][cols] = gf.converged

    # ------------------------------------------------------------------------------ applying
    def transform(self, X, covariates=None, *, new_sites="error", min_new_site_size=MIN_NEW_SITE_SIZE):
        """Correct scans of the fitted sites: ``y - bias_site`` (and the scale correction with ``scale=True``).

        Parameters
        ----------
        X : DataFrame
            Features of any scans (traveling subjects or not) from the sites seen at fit.
        covariates : DataFrame, optional
            The site column, aligned with ``X`` by index (other columns, the subject's and the formula's
            included, are not needed); or looked up in the constructor's table.
        new_sites : {"error"}, default "error"
            Sites not seen at fit raise :class:`~featharm.exceptions.UnseenBatchError`; ``"estimate"`` is
            refused (a site's bias is measured only by traveling subjects scanned there).
        min_new_site_size : int
            Not used (the shared signature).

        Returns
        -------
        DataFrame
            Corrected features, same index and columns as ``X``.
        """
        self._check_fitted()
        if new_sites == "estimate":
            raise InputError(
                f"{self._owner()} cannot estimate sites not seen at fit (new_sites='estimate'): a site's bias is "
                "measured only by traveling subjects scanned there. Scan traveling subjects at the new site and "
                "refit with their scans."
            )
        check_option("new_sites", new_sites, ("error", "estimate"), self._owner())
        if is_lazy(X):  # refused with the shared message (not fitted from statistics)
            return super().transform(X, covariates, new_sites=new_sites, min_new_site_size=min_new_site_size)
        if covariates is None:
            covariates = self._covariates_from_table(X)
        # only the site column is read: the correction does not depend on the covariates of the formula
        prep = self._prepare(X, covariates, fitting=False)
        return self._output(self._harmonize(prep), prep)

    def _prepare(self, X, covariates, *, fitting: bool, new_sites: str = "error"):
        try:
            return super()._prepare(X, covariates, fitting=fitting, new_sites=new_sites)
        except UnseenBatchError as exc:
            if fitting:
                raise
            text = str(exc).split(" Fit the model with these sites included")[0]
            raise UnseenBatchError(
                f"{text} {self._owner()} corrects only sites where the traveling subjects were scanned (a site's "
                "bias is measured by scans of the same people; it cannot be estimated from other scans). Scan "
                "traveling subjects at that site and refit."
            ) from None

    def _warn_cells_without_data(self, prep) -> None:
        """Nothing to warn about: a site × feature without observed scans is refused at fit."""

    def _harmonize(self, prep) -> np.ndarray:
        a = self._arr
        Y, codes = prep.Y, prep.codes
        out = np.array(Y, dtype=np.float64, order="F", copy=True)
        out -= a["bias"][codes]
        if self.scale:
            out /= a["scale"][codes]
        const = a["constant"]
        if const.any():
            out[:, const] = Y[:, const]
        if self.ref_index_ is not None:
            rows = codes == self.ref_index_
            out[rows] = Y[rows]  # the reference site's scans unchanged, bit for bit
        return out

    # ------------------------------------------------------------------------------ attributes / state
    def _publish(self) -> None:
        a = self._arr
        sites = pd.Index(self.batches_, name=str(self.batch))
        feats = pd.Index(self.feature_names_in_, name="feature")
        cols = pd.Index(self.design_.columns, name="covariate")

        def frame(name, index, power):
            return pd.DataFrame(self._in_input_units(a[name], power), index=index.copy(), columns=feats.copy())

        self.bias_ = frame("bias", sites, 1)
        self.bias_se_ = frame("bias_se", sites, 1)
        self.noise_sd_ = frame("noise_sd", sites, 1)
        self.scale_ = frame("scale", sites, 0)
        self.beta_ = frame("beta", cols, 1)
        self.alpha_ = pd.Series(self._in_input_units(a["alpha"], 1), index=feats.copy(), name="alpha")
        self.sigma_ = pd.Series(self._in_input_units(a["sigma"], 1), index=feats.copy(), name="sigma")
        self.dof_ = pd.Series(a["dof"].astype(int), index=feats.copy(), name="dof")
        self.batch_sizes_ = pd.Series(a["batch_sizes"].astype(int), index=sites.copy(), name="batch_sizes")
        self.n_subjects_ = pd.Series(a["n_subjects"].astype(int), index=sites.copy(), name="n_subjects")
        self.subjects_ = np.asarray(self._subject_levels, dtype=object)
        self.aliased_covariates_ = [str(c) for c, f in zip(self.design_.columns, a["aliased"].astype(bool)) if f]
        self.constant_features_ = list(self.feature_names_in_[a["constant"].astype(bool)])
        if "n_obs" in a:
            self.n_obs_ = pd.DataFrame(a["n_obs"].astype(int), index=sites.copy(), columns=feats.copy())

    def _get_state(self):
        state, arrays = super()._get_state()
        state["subjects"] = [s.item() if hasattr(s, "item") else s for s in self._subject_levels]
        return state, arrays

    def _check_state(self, state):
        dims = super()._check_state(state)
        dims["subject"] = len(check_levels(state["subjects"], "state.subjects", "subject ids"))
        return dims

    def _set_state(self, state, arrays) -> None:
        self._subject_levels = list(state["subjects"])
        arrays = dict(arrays)
        arrays["aliased"] = np.asarray(arrays["aliased"]).astype(bool)
        super()._set_state(state, arrays)
