"""A fitted :class:`~featharm.ComBatGAM` from per-batch sufficient statistics (``docs/methods.md`` §1.9, §2).

Two passes, as for ComBat (:mod:`featharm.models._from_stats`), with one thing more fixed first:

1. :func:`freeze_gam_design` fixes, from the covariate table alone, the batch levels and codes, the linear
   covariate design and the spline basis of every smooth term (knots at quantiles of all the training
   values, exactly as ``ComBatGAM.fit`` places them). Its ``X`` is ``[linear covariates | spline columns]``:
   the rows are summarized (:class:`~featharm._core.suffstats.SuffStats`) with the spline columns among the
   covariates.
2. :func:`fit_gam_from_statistics` (``ComBatGAM.from_statistics``) fits from the statistics. The batch
   indicators are unpenalized, so they are eliminated by centring within batches: what the penalized fit of
   every feature needs is the within-batch cross-product of the covariate columns ``A = Σ_i Σ_j (x - x̄_i)(x -
   x̄_i)ᵀ``, the within-batch ``Xᵀy`` and the residual sums, all taken from the shifted sums. In the
   directions of :func:`featharm._core.penalized.penalty_transform` (unpenalized ``u``: linear covariates and
   the spline's linear trend; penalized ``p`` with a unit penalty), the Demmler–Reinsch decomposition of the
   in-memory fit is the eigen-decomposition ``A_pp - A_pu A_uu⁻¹ A_up = V D² Vᵀ``, with
   ``c = D⁻¹ Vᵀ (b_p - A_pu A_uu⁻¹ b_u)`` and ``r_perp`` = (residual sum of squares of the unpenalized fit)
   ``- ‖c‖²``. The smoothing parameter of every feature is then chosen by the same
   :func:`~featharm._core.penalized.select_lambda`, and S2–S7 are ComBat's from statistics.

**Accuracy.** The in-memory fit takes ``D`` from an SVD of the projected spline block; here ``D²`` comes from
its cross-product, so the smallest ``d²`` carry a relative rounding of about ``1e-16 · cond(A)``; the
tests measure the agreement with the in-memory fit (``tests/models/test_gam_from_statistics.py``).

Supported: REML or GCV, one smoothing parameter per feature or ``shared_smoothing``, every EB option, a
reference batch, several smooth terms, ``smooth_bounds``, and missing feature values (§1.8: a feature with
NaN cells is fitted on its observed rows, from the covariate sums less those over its missing rows, with its
own decomposition; a loop over such features, the complete ones at once). Not supported from statistics (a
clear error): ``compat="neuroHarmonize"`` (its k-fold search refits on row subsets).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pandas as pd

from .._core import penalized
from .._core.splines import SplineBasis
from .._core.suffstats import (LocationFit, SuffStats, _centred, _location, _rank_deficient, _reference_column,
                               _solve_spd, _within_ss, _y_cross, total_variance)
from ..exceptions import ConfoundingError, FormulaError, InputError, record_warnings
from ._from_stats import FrozenDesign, _check_stats, _fit, freeze_design

__all__ = ["FrozenGAMDesign", "freeze_gam_design", "fit_gam_from_statistics"]


@dataclass
class FrozenGAMDesign(FrozenDesign):
    """:class:`FrozenDesign` of a ComBat-GAM: ``X`` is ``[linear covariates | spline columns]``."""

    bases: list  # SplineBasis of each smooth term, in the model's order


def _check_terms(model, design) -> list[str]:
    terms, _ = model._terms()
    both = [t for t in terms if t in design.variables]
    if both:
        raise FormulaError(
            f"covariate(s) {both} appear both as smooth terms and in the linear formula {design.formula!r}; the "
            "spline already contains the linear trend. Remove them from one."
        )
    if model.batch in terms:
        raise FormulaError(f"the batch column {model.batch!r} cannot be a smooth term.")
    return terms


def freeze_gam_design(model, covariates: pd.DataFrame) -> FrozenGAMDesign:
    """What ``model.fit`` (a :class:`~featharm.ComBatGAM`) fixes from the covariates before it reads the
    features: batch levels and codes, the linear design, and the spline bases (knots from all the rows'
    values of each smooth term, ``smooth_bounds`` applied). ``X`` holds the linear columns then the spline
    columns of every row: summarize the rows with it."""
    frozen = freeze_design(model, covariates)
    terms = _check_terms(model, frozen.design)
    bounds = model.smooth_bounds or {}
    xs = [model._smooth_values(covariates, t) for t in terms]
    bases = [SplineBasis.from_data(x, t, df=model.df, degree=3, bounds=bounds.get(t), knots=model.knots)
             for x, t in zip(xs, terms)]
    Z = np.hstack([b.transform(x) for b, x in zip(bases, xs)])
    return FrozenGAMDesign(frozen.batches, frozen.design, frozen.codes, np.hstack([frozen.X, Z]), bases)


def _raw_gram(stats: SuffStats, cols: slice) -> np.ndarray:
    """``Σ_j x_j x_jᵀ`` over all rows (not centred) of the covariate columns ``cols``, from the shifted sums."""
    a, sx, sxx, n = stats.x_shift[:, cols], stats.sx[:, cols], stats.sxx[:, cols, cols], stats.counts
    return (sxx + sx[:, :, None] * a[:, None, :] + a[:, :, None] * sx[:, None, :]
            + n[:, None, None] * a[:, :, None] * a[:, None, :]).sum(axis=0)


def _linear_view(stats: SuffStats, q: int):
    """The covariate sums of the first ``q`` columns (what the linear design's confounding check reads)."""
    return SimpleNamespace(q=q, counts=stats.counts, x_shift=stats.x_shift[:, :q], sx=stats.sx[:, :q],
                           sxx=stats.sxx[:, :q, :q])


def _directions(stats: SuffStats, q: int, bases: list):
    """``Mu`` (Q × ku') and ``Mp`` (Q × r): the in-memory fit's unpenalized columns ``[linear | Z T0]`` and
    penalized columns ``Z Tp`` as maps of the summarized covariate row ``[linear | Z]``; and ``k0``."""
    Q = stats.q
    K = Q - q
    penalties = [b.penalty() for b in bases]
    starts = np.cumsum([q] + [P.shape[0] for P in penalties])
    norms = None
    if len(penalties) > 1:  # each term's basis cross-product over all rows, as penalty_reparam takes it
        norms = [np.linalg.norm(_raw_gram(stats, slice(starts[j], starts[j + 1]))) for j in range(len(penalties))]
    T0, Tp = penalized.penalty_transform(K, penalties, norms)
    k0, r = T0.shape[1], Tp.shape[1]
    Mu = np.zeros((Q, q + k0))
    Mu[:q, :q] = np.eye(q)
    Mu[q:, q:] = T0
    Mp = np.zeros((Q, r))
    Mp[q:] = Tp
    return Mu, Mp, k0


def _reduce(A, by, Sxx, Sxy, Syy, B, Mu, Mp, shared: bool):
    """The Demmler–Reinsch ingredients of one design (within-batch cross-products ``A``) and its features
    (within-batch ``Xᵀy`` ``by``, Q × b): ``A_uu``, ``H = A_uu⁻¹ A_up``, ``d²``, ``V``, ``c`` and ``r_perp``.
    ``None`` for ``A_uu`` when the unpenalized columns are rank deficient."""
    Guu, Gup, Gpp = Mu.T @ A @ Mu, Mu.T @ A @ Mp, Mp.T @ A @ Mp
    if _rank_deficient(Guu[None], 1e-12)[0]:
        return None
    H = _solve_spd(Guu, Gup)
    d2, V = np.linalg.eigh(Gpp - Gup.T @ H)
    keep = d2 > 1e-13 * max(d2.max(), 1e-300)  # directions the projection left (eigenvalues above rounding)
    d2, V = d2[keep][::-1], V[:, keep][:, ::-1]
    bu, bp = Mu.T @ by, Mp.T @ by
    c = (V.T @ (bp - H.T @ bu)) / np.sqrt(d2)[:, None]
    theta_u0 = _solve_spd(Guu, bu)  # the unpenalized least squares
    rss_u = _within_ss(Sxx, Sxy, Syy, (Mu @ theta_u0)[None] - B, shared).sum(axis=0)
    r_perp = np.maximum(rss_u - np.sum(c * c, axis=0), 0.0)
    return Guu, Gup, d2, V, bu, c, r_perp


def _solve(parts, lam, Mu, Mp, k0):
    """Coefficients on ``[linear | Z]`` (Q × b) and edf at the smoothing parameters ``lam`` (b,)."""
    Guu, Gup, d2, V, bu, c, _ = parts
    d = np.sqrt(d2)
    b = V @ (d[:, None] / (d2[:, None] + lam[None, :]) * c)  # coefficients on the penalized directions
    theta_u = _solve_spd(Guu, bu - Gup @ b)
    return Mu @ theta_u + Mp @ b, k0 + np.sum(d2[:, None] / (d2[:, None] + lam[None, :]), axis=0)


def _degenerate_from_stats(stats: SuffStats, f: np.ndarray, r_perp, n, linear_rtol: float) -> np.ndarray:
    """``penalized._degenerate`` from the statistics: features whose residual is of rounding size, left
    out of a shared smoothing parameter's sum."""
    shared = not (stats.n_obs[:, f] < stats.counts[:, None]).any()
    *_, xbar, ybar, B = _centred(stats, f, shared)
    nv = stats.n_obs[:, f]
    batch_mean = np.where(nv > 0, _location(stats, f, xbar, ybar, -B, np.zeros((stats.q, f.size)), shared), 0.0)
    mean = (nv * batch_mean).sum(axis=0) / nv.sum(axis=0)
    resid = r_perp / n
    return (resid > linear_rtol * total_variance(stats)[f]) & (resid > (1e-11 * mean) ** 2)


def _confounded(model, bases, names):
    terms = [b.name for b in bases]
    if names is None:
        return ConfoundingError(
            f"the linear trend of smooth term(s) {terms} is confounded with {model.batch!r} and the linear "
            f"covariates (e.g. the covariate is constant within each {model.batch}); its effect cannot be told "
            "apart from the site effects. Drop it or model it differently."
        )
    return ConfoundingError(
        f"on the rows where they are observed, the design (batch, covariates and the linear trend of the smooth "
        f"terms) of {len(names)} feature(s) is rank deficient: {names[:5]}{' ...' if len(names) > 5 else ''} (a "
        "covariate constant within batches, or a combination of the others, once the missing rows are left out). "
        "Drop those features or that covariate."
    )


def _penalized_location(model, stats: SuffStats, batch_rows: np.ndarray, q: int, bases: list, feature_names):
    """S1 of ComBat-GAM from the statistics: every feature's penalized fit with its smoothing parameter
    (module docstring). Returns the :class:`LocationFit` (coefficients on ``[batches | linear | spline]``)
    and the GAM's extra arrays (``spline_coef``, ``smoothing``, ``edf``).

    Features with missing values are fitted on their observed rows (the covariate sums less those over
    their missing rows; batches without an observed value dropped), as ``ComBatGAM.fit`` does (§1.8); with
    ``shared_smoothing`` and missing values the one smoothing parameter minimizes the criterion summed over
    all features (``penalized._select_shared``)."""
    m, Q, p = stats.m, stats.q, stats.p
    Mu, Mp, k0 = _directions(stats, q, bases)
    method, shared = model.method, bool(model.shared_smoothing)
    n_obs = stats.n_obs
    incomplete = np.flatnonzero((n_obs < stats.counts[:, None]).any(axis=0))
    complete = np.setdiff1d(np.arange(p), incomplete)
    coef = np.full((m + Q, p), np.nan)
    ss = np.zeros((m, p))
    lam, edf = np.empty(p), np.empty(p)
    n = float(stats.counts.sum())
    groups = []  # (features, parts, n, ku, centred sums, shared)
    if complete.size:
        cen = _centred(stats, complete if incomplete.size else None, True)
        Sxx, Sxy, Syy, xbar, ybar, B = cen
        parts = _reduce(Sxx.sum(axis=0), _y_cross(Sxx, Sxy, B, True).sum(axis=0), Sxx, Sxy, Syy, B, Mu, Mp, True)
        if parts is None:
            raise _confounded(model, bases, None)
        groups.append((complete, parts, n, m + q + k0, cen, True))
    bad = []
    for v in incomplete:
        f = np.array([v])
        cen = _centred(stats, f, False)
        Sxx, Sxy, Syy, xbar, ybar, B = cen
        nv = n_obs[:, v]
        parts = _reduce(Sxx.sum(axis=0)[0], _y_cross(Sxx, Sxy, B, False).sum(axis=0), Sxx, Sxy, Syy, B, Mu, Mp, False)
        if parts is None:
            bad.append(feature_names[v])
            continue
        groups.append((f, parts, float(nv.sum()), int((nv > 0).sum()) + q + k0, cen, False))
    if bad:
        raise _confounded(model, bases, bad)
    if shared and incomplete.size:
        ingredients = [(parts[2], parts[5] ** 2, parts[6], nn, ku,
                        _degenerate_from_stats(stats, f, parts[6], nn, model._linear_rtol))
                       for f, parts, nn, ku, _, _ in groups]
        lam[:] = penalized._select_shared(ingredients, method)
    for f, parts, nn, ku, (Sxx, Sxy, Syy, xbar, ybar, B), sh in groups:
        d2, c, r_perp = parts[2], parts[5], parts[6]
        if not incomplete.size or not shared:
            use = _degenerate_from_stats(stats, f, r_perp, nn, model._linear_rtol) if shared else None
            lam[f] = penalized.select_lambda(d2, c * c, r_perp, nn, ku, method, shared, use)
        beta, edf[f] = _solve(parts, lam[f], Mu, Mp, k0)
        coef[m:, f] = beta
        delta = beta[None] - B
        ss[:, f] = _within_ss(Sxx, Sxy, Syy, delta, sh)
        plain = _location(stats, f if incomplete.size else None, xbar, ybar, delta, beta, sh)
        coef[:m, f] = np.where(n_obs[:, f] > 0, plain, np.nan)
    ref = _reference_column(batch_rows)
    if ref is not None:
        plain = coef[:m].copy()
        coef[:m] = plain - plain[ref]
        coef[ref] = plain[ref]
    present = n_obs > 0
    coef[:m][~present] = np.nan
    ss[~present] = 0.0
    fit = LocationFit(coef, ss, n_obs.copy(), np.zeros(0, dtype=np.intp))
    return fit, {"spline_coef": coef[m + q:], "smoothing": lam, "edf": edf}


def fit_gam_from_statistics(model, stats: SuffStats, *, batches, design, bases, feature_names):
    """Fit ``model`` (a :class:`~featharm.ComBatGAM`; refitted if fitted) from the statistics of its training
    rows summarized with :func:`freeze_gam_design`'s ``X`` (linear then spline columns) and ``codes``: the
    learned attributes ``model.fit`` gives on those rows, to rounding. Returns ``model``."""
    batches = list(batches)
    feature_names = [str(f) for f in feature_names]
    bases = list(bases)
    if not bases or not all(isinstance(b, SplineBasis) for b in bases):
        raise InputError("ComBatGAM.from_statistics needs the spline bases (SplineBasis, one per smooth term) the "
                         "rows were summarized with: freeze_gam_design(...).bases.")
    model._check_params()
    terms = _check_terms(model, design)
    if [b.name for b in bases] != terms:
        raise InputError(f"the bases are for the smooth terms {[b.name for b in bases]}; the model's smooth terms "
                         f"are {terms}. Freeze the design with this model (freeze_gam_design).")
    if model.compat == "neuroHarmonize":
        raise InputError("compat='neuroHarmonize' picks each penalty by k-fold cross-validation over rows, which the "
                         "statistics do not hold; fit it in memory, or use compat=None (REML/GCV) from statistics.")
    K = sum(b.n_columns for b in bases)
    _check_stats(stats, batches, design, feature_names, n_extra=K)
    q = len(design.columns)

    def location(s, batch_rows):
        model._bases = bases
        return _penalized_location(model, s, batch_rows, q, bases, feature_names)

    with record_warnings() as log:
        try:
            _fit(model, stats, batches, design, feature_names, location=location,
                 design_stats=_linear_view(stats, q))
        except BaseException:
            model._forget_fit()
            raise
    model.fit_warnings_ = list(log)
    return model
