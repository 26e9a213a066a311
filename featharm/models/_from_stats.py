"""A fitted :class:`~featharm.ComBat` from per-batch sufficient statistics (``docs/methods.md`` §1.9).

The statistics (:class:`featharm._core.suffstats.SuffStats`) are accumulated over row blocks in any order
and merged; this module turns them into the same fitted model ``ComBat.fit`` makes from the rows:

1. :func:`freeze_design` fixes, from the covariate table alone (small: subjects × a few columns), what
   ``fit`` fixes before it looks at the features: the sorted batch levels, each row's batch code, and the
   covariate encoding (:class:`~featharm.design.CovariateDesign`, stateful transforms included). Rows are
   then summarized with ``frozen.X`` and ``frozen.codes``.
2. :func:`fit_from_statistics` (``ComBat.from_statistics``) runs S1–S7 from the statistics: the least
   squares and residual sums from :func:`featharm._core.suffstats.location_fit`, then exactly the steps
   of ``fit`` (the same functions of :mod:`featharm._core.eb` / :mod:`featharm._core.missing` and the same
   checks and warnings of the estimator). The model saves, loads and transforms as any other.
3. :func:`extend_with_statistics`: batches unseen at fit estimated against the frozen model from their own
   statistics (``new_sites="estimate"``, §5.7), returned as a new model with those batches added.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .._core import eb, missing
from .._core.suffstats import SuffStats, frozen_moments, location_fit, total_variance
from .._validation import batch_levels, check_batch_labels, check_batch_sizes, encode_batches, get_batch
from ..design import CovariateDesign, batch_indicators, rank_deficiency_error, report_near_confounding
from ..exceptions import (BatchError, ConfoundingError, ConvergenceWarning, InputError,
                          record_warnings, warn)
from ._new_sites import new_site_posterior, new_site_posterior_missing

__all__ = ["FrozenDesign", "freeze_design", "fit_from_statistics", "extend_with_statistics", "new_batch_effects"]


@dataclass
class FrozenDesign:
    """What a fit fixes before it reads the features: batch levels, row codes and the covariate design."""

    batches: list  # sorted batch levels (codes 0..m-1)
    design: CovariateDesign
    codes: np.ndarray  # (n,) batch code of every row of the covariate table
    X: np.ndarray  # (n, q) the covariate block of every row


def freeze_design(model, covariates: pd.DataFrame) -> FrozenDesign:
    """Batch levels, codes and covariate encoding of ``model`` (a :class:`~featharm.ComBat`, fitted or not)
    on the full covariate table, exactly as ``model.fit`` fixes them (levels sorted, treatment coding,
    stateful transforms frozen on these rows, ``compat="neuroCombat"`` rounding)."""
    if not isinstance(covariates, pd.DataFrame):
        raise InputError("freeze_design needs the covariates as a DataFrame (the batch column and the formula's columns).")
    model._check_params()
    bser = get_batch(covariates, model.batch)
    levels = batch_levels(bser)
    check_batch_labels(bser, levels, model.batch)
    codes = encode_batches(bser, levels, model.batch)
    design, X = CovariateDesign.fit(model._design_formula(), covariates, float32=model._param("compat") == "neuroCombat",
                                    exclude=(model.batch,))
    return FrozenDesign(list(levels), design, codes, X)


def _check_design_from_stats(stats: SuffStats, columns, batch_name: str, rank_rtol: float = 1e-6,
                             rtol: float = 1e-2, warn_rtol: float = 1e-1) -> None:
    """:func:`featharm.design.check_full_rank` from the statistics (no rows needed): the same two checks.

    Rank: column ``j``'s variation left within batches after the columns before it (the Schur complement
    of the within-batch cross-products) relative to its variation about its mean. Confounding: ``rho``,
    the square root of the smallest fraction of within-batch variation over combinations of the covariates.
    """
    q = stats.q
    if q == 0:
        return
    n = stats.counts
    has = n > 0
    xbar = stats.x_shift + np.where(has[:, None], stats.sx / np.where(has, n, 1.0)[:, None], 0.0)
    Wt = (stats.sxx - stats.sx[:, :, None] * np.where(has[:, None], stats.sx / np.where(has, n, 1.0)[:, None],
                                                      0.0)[:, None, :]).sum(axis=0)
    grand = (n[:, None] * xbar).sum(axis=0) / n.sum()
    dev = np.where(has[:, None], xbar - grand, 0.0)
    T = Wt + (n[:, None, None] * dev[:, :, None] * dev[:, None, :]).sum(axis=0)
    for j in range(q):
        spread = T[j, j]
        left = Wt[j, j]
        if j:
            left = Wt[j, j] - Wt[j, :j] @ np.linalg.lstsq(Wt[:j, :j], Wt[:j, j], rcond=None)[0]
        rel = np.sqrt(max(left, 0.0) / spread) if spread > 0 else 0.0
        if rel <= rank_rtol:
            raise rank_deficiency_error(columns, j, batch_name,
                                        within_batch=spread <= 0 or np.sqrt(max(Wt[j, j], 0.0) / spread) <= rank_rtol)
    lam, V = np.linalg.eigh(T)
    keep = lam > 1e-18 * lam.max()
    K = V[:, keep] / np.sqrt(lam[keep])
    mu, vec = np.linalg.eigh(K.T @ Wt @ K)
    rho = float(np.sqrt(max(mu[0], 0.0)))
    if rho > warn_rtol:
        return
    weight = np.abs(K @ vec[:, 0]) * np.sqrt(np.diag(T))
    report_near_confounding(rho, weight, columns, q, batch_name, rtol)


def _check_stats(stats, batches, design, feature_names, n_extra: int = 0) -> None:
    if not isinstance(stats, SuffStats):
        raise InputError(f"expected featharm._core.suffstats.SuffStats; got {type(stats).__name__}.")
    if stats.m != len(batches):
        raise InputError(f"the statistics have {stats.m} batches but {len(batches)} batch levels were given "
                         f"({list(batches)[:5]}); code the batches as in freeze_design.")
    if stats.q != len(design.columns) + n_extra:
        raise InputError(f"the statistics have {stats.q} covariate columns but the design has "
                         f"{len(design.columns) + n_extra} ({design.columns}"
                         f"{f' and {n_extra} spline columns' if n_extra else ''}); summarize the rows with the "
                         "frozen design's X.")
    if stats.p != len(feature_names):
        raise InputError(f"the statistics have {stats.p} features but {len(feature_names)} feature names were given.")
    big = np.abs(stats.y_shift).max() if stats.y_shift.size else 0.0
    if big > 2.0**64:
        raise InputError("features beyond 2^64 in magnitude are not supported from statistics; express them in "
                         "other units first.")


def fit_from_statistics(model, stats: SuffStats, *, batches, design: CovariateDesign, feature_names):
    """Fit ``model`` (an unfitted or fitted :class:`~featharm.ComBat`; it is refitted) from the statistics of
    its training rows: the same learned attributes ``model.fit(X, covariates)`` gives on those rows (to
    rounding: ≤ 1e-10 relative, ``docs/methods.md`` §1.9). ``batches`` are the sorted batch levels the
    statistics are coded by, ``design`` the frozen covariate design (both from :func:`freeze_design`) and
    ``feature_names`` the features in the statistics' order. Returns ``model``.
    """
    batches = list(batches)
    feature_names = [str(f) for f in feature_names]
    _check_stats(stats, batches, design, feature_names)
    with record_warnings() as log:
        try:
            _fit(model, stats, batches, design, feature_names)
        except BaseException:
            model._forget_fit()
            raise
    model.fit_warnings_ = list(log)
    return model


def _fit(model, stats: SuffStats, levels: list, design: CovariateDesign, feature_names: list,
         location=None, design_stats=None) -> None:
    """S1–S7 of ``model`` from ``stats``. ``location(stats, batch_rows)``: S1 and the residual sums as a
    :class:`LocationFit` plus a dict of extra arrays for ``model._arr`` (default: ComBat's least squares,
    :func:`location_fit`); ``design_stats``: the statistics whose covariate columns are checked for
    confounding with the batch (default ``stats``)."""
    model._check_params()
    counts = stats.counts.copy()
    m, q, p = stats.m, stats.q, stats.p
    check_batch_sizes(levels, counts.astype(int), model.batch, allow_single=model._allow_single_subject())
    ref = model._checked_ref_index(levels, counts)
    _check_design_from_stats(stats if design_stats is None else design_stats, design.columns, str(model.batch))
    opts = model._eb_options()
    if opts.eb and p < 2:
        raise InputError(f"empirical Bayes pools the site effects across features, so it needs at least 2 features; "
                         f"got {p}. Pass eb=False to adjust a single feature.")
    model._forget_fit()
    model.batches_ = np.asarray(levels, dtype=object)
    model.n_features_in_ = p
    model.feature_names_in_ = np.asarray(feature_names, dtype=object)
    model.design_ = design
    model.ref_index_ = ref
    model._arr = {"batch_sizes": counts}
    batch_rows = batch_indicators(np.arange(m), m, ref)
    mean_only = bool(model.mean_only)
    has_missing = stats.has_missing
    n_obs = stats.n_obs.copy()
    if has_missing:
        model._check_observed(n_obs, q, ref)
    if location is None:
        fit, extra = location_fit(stats, batch_rows), {}
    else:
        fit, extra = location(stats, batch_rows)
    if fit.deficient.size:
        names = [feature_names[j] for j in fit.deficient]
        raise ConfoundingError(
            f"on the rows where they are observed, the design (batch and covariates) of {len(names)} feature(s) is "
            f"rank deficient: {names[:5]}{' ...' if len(names) > 5 else ''} (a covariate is constant within batches "
            "or a combination of the other covariates once their missing rows are left out). Drop those features "
            "or that covariate."
        )
    if has_missing:
        ddof = 1 if model._param("compat") == "sva" else 0
        st = missing.standardized_moments(fit.coef, fit.ss, n_obs, counts, batch_rows, ref=ref, mean_only=mean_only,
                                          ddof=ddof)
    else:
        st = eb.standardized_moments(fit.coef, fit.ss, counts, batch_rows, ref=ref, mean_only=mean_only)
    model._arr.update(alpha=st.alpha, sigma=st.sigma, beta=fit.coef[m:m + len(design.columns)],
                      batch_coef=fit.coef[:m], gamma_hat=st.gamma_hat, delta_hat=st.delta_hat, **extra)
    if has_missing:
        model._arr["n_obs"] = n_obs
    model._delta_raw = st.delta_raw
    if has_missing:
        model._warn_sparse_cells(n_obs, ref)
    model._mark_constant(np.abs(st.alpha), total_variance(stats))
    model._fit_eb(counts, ref)
    model._publish()


# ---------------------------------------------------------------------------------------- new batches (§5.7)
def new_batch_effects(model, stats: SuffStats, *, levels=None,
                      min_new_site_size: int = 5) -> tuple[np.ndarray, np.ndarray, dict]:
    """§5.7 from statistics: each batch of ``stats`` (its rows summarized with the fitted ``model``'s design)
    standardized against the frozen model; its ``gamma_hat``/``delta_hat``, priors across its own features
    and EB posterior, as ``model.transform(..., new_sites="estimate")`` computes them from the rows.

    Returns ``gamma_star``, ``delta_star`` (k × p) and a dict of the other per-batch arrays
    (``gamma_hat``, ``delta_hat``, ``gamma_bar``, ``tau2``, ``a_prior``, ``b_prior``, ``n_iter``,
    ``location``: the batch's mean of ``y - xᵀbeta``; ``n_obs``).
    """
    model._check_fitted()
    a = model._arr
    names = model.feature_names_in_
    k = stats.m
    levels = [f"new batch {j}" for j in range(k)] if levels is None else list(levels)
    slopes = _slopes(model)
    if stats.p != len(names) or stats.q != slopes.shape[0]:
        raise InputError(f"the statistics have {stats.p} features and {stats.q} covariate columns; the model has "
                         f"{len(names)} and {slopes.shape[0]}. Summarize with the model's design.")
    if "feature_scale" in a:
        raise InputError("this model rescaled features beyond 2^64 in magnitude; new batches from statistics are "
                         "not supported for it.")
    if int(min_new_site_size) < 2:
        raise InputError(f"min_new_site_size must be at least 2 (a new site's variance is estimated); got "
                         f"{min_new_site_size}.")
    small = [f"{lv!r} ({int(c)} row{'s' if c != 1 else ''})" for lv, c in zip(levels, stats.counts)
             if c < min_new_site_size]
    if small:
        raise BatchError(
            f"new site(s) of {model.batch!r} not seen at fit have too few subjects to estimate their site effects: "
            f"{', '.join(small)}; at least min_new_site_size={min_new_site_size} are needed. Add subjects of that "
            "site, or refit the model with the site included."
        )
    keep = ~a["constant"]
    opts = model._eb_options()
    p = keep.size
    gh_all, d_raw_all, n_all = frozen_moments(stats, a["alpha"], slopes, a["sigma"])
    groups, pooled = model._grouping(keep)  # priors per measure group, as at fit
    shape = (k,) if a["gamma_bar"].ndim == 1 else (k, a["gamma_bar"].shape[1])
    out = {name: np.full(shape, np.nan) for name in ("gamma_bar", "tau2", "a_prior", "b_prior")}
    out.update(gamma_hat=np.zeros((k, p)), delta_hat=np.ones((k, p)), n_iter=np.zeros(k), n_obs=n_all)
    g_new, d_new = np.zeros((k, p)), np.ones((k, p))
    not_converged = []
    for j in range(k):
        gh, d_raw, n = gh_all[j, keep], d_raw_all[j, keep], n_all[j, keep]
        incomplete = bool((n < stats.counts[j]).any())
        dh = np.where(n > 0, eb.delta_from_raw(d_raw, opts.mean_only), np.nan) if incomplete \
            else eb.delta_from_raw(d_raw, opts.mean_only)
        out["gamma_hat"][j, keep], out["delta_hat"][j, keep] = gh, dh
        if incomplete:  # missing values: as transform(..., new_sites="estimate")
            gs, ds, it, ok, pri = new_site_posterior_missing(gh, dh, d_raw, n, opts, levels[j], names[keep], groups,
                                                             pooled, model._group_names())
            if pri is not None:
                _priors_into(out, j, pri)
        elif opts.eb:
            gs, ds, it, ok, pri = new_site_posterior(gh, dh, d_raw, float(stats.counts[j]), opts, groups, pooled)
            _priors_into(out, j, pri)
        else:
            gs, ds, it, ok = gh, dh, 0, True
        if not ok:
            not_converged.append(levels[j])
        g_new[j, keep], d_new[j, keep], out["n_iter"][j] = gs, ds, it
    if not_converged:
        warn(f"parametric EB did not converge within max_iter={opts.max_iter} iterations for new batch(es) "
             f"{not_converged}; the last iterate is used.", ConvergenceWarning)
    with np.errstate(invalid="ignore"):
        out["location"] = np.where(n_all > 0, gh_all * a["sigma"] + a["alpha"], np.nan)
    return g_new, d_new, out


def _slopes(model) -> np.ndarray:
    """The model's covariate coefficients in the order of its summarized covariate row: the linear ones, then
    (ComBat-GAM) the spline ones."""
    a = model._arr
    return np.vstack([a["beta"], a["spline_coef"]]) if "spline_coef" in a else a["beta"]


def _priors_into(out: dict, j: int, pri: eb.Priors) -> None:
    for name in ("gamma_bar", "tau2", "a_prior", "b_prior"):
        out[name][j] = getattr(pri, name)[0]


def extend_with_statistics(model, stats: SuffStats, levels, *, min_new_site_size: int = 5):
    """A copy of the fitted ``model`` with the batches ``levels`` (coded 0..k-1 in ``stats``) added, each
    estimated against the frozen model from its statistics (:func:`new_batch_effects`). The fitted batches'
    parameters are unchanged; ``transform`` on a new batch's rows gives what
    ``model.transform(..., new_sites="estimate")`` gives on them (to rounding).

    The added batch's ``batch_coef`` is its mean of ``y - xᵀbeta`` in the model's coding (minus the
    reference batch's intercept with a reference batch); its priors are its own, across its features.
    """
    model._check_fitted()
    levels = list(levels)
    if len(levels) != stats.m:
        raise InputError(f"the statistics have {stats.m} batches but {len(levels)} levels were given.")
    known = list(model.batches_)
    seen = set(map(str, known))
    clash = [lv for lv in levels if str(lv) in seen]
    if clash:
        raise BatchError(f"batch(es) {clash} of {model.batch!r} are already in the model; only batches not seen at "
                         "fit can be added.")
    if len(set(map(str, levels))) != len(levels):
        raise BatchError(f"the new batch levels {levels} repeat.")
    g, d, est = new_batch_effects(model, stats, levels=levels, min_new_site_size=min_new_site_size)
    new = copy.deepcopy(model)
    a = new._arr
    loc = est["location"]
    if new.ref_index_ is not None:
        loc = loc - a["batch_coef"][new.ref_index_]
    rows = {"batch_coef": loc, "gamma_hat": est["gamma_hat"], "delta_hat": est["delta_hat"], "gamma_star": g,
            "delta_star": d}
    for name, val in rows.items():
        a[name] = np.vstack([a[name], val])
    for name in ("gamma_bar", "tau2", "a_prior", "b_prior", "n_iter"):
        a[name] = np.concatenate([a[name], est[name]])
    a["batch_sizes"] = np.concatenate([a["batch_sizes"], stats.counts])
    if "n_obs" in a or (est["n_obs"] < stats.counts[:, None]).any():
        old = a.get("n_obs", np.broadcast_to(a["batch_sizes"][:len(known), None], (len(known), stats.p)))
        a["n_obs"] = np.vstack([old, est["n_obs"]])
    new.batches_ = np.asarray(known + levels, dtype=object)
    new._publish()
    return new
