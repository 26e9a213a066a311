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

Supported: complete features, REML or GCV, one smoothing parameter per feature or ``shared_smoothing``,
every EB option, a reference batch. Not supported from statistics (a clear error): missing feature values
(each missingness pattern needs its own basis cross-products) and ``compat="neuroHarmonize"`` (its k-fold
search refits on row subsets).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pandas as pd

from .._core import penalized
from .._core.blocks import iter_blocks
from .._core.splines import SplineBasis
from .._core.suffstats import (LocationFit, SuffStats, _centred, _location, _rank_deficient, _reference_column,
                               _solve_spd, _within_ss, _y_cross, total_variance)
from ..exceptions import ConfoundingError, FormulaError, InputError, MissingValueError, record_warnings
from ._base import LINEAR_FEATURE_RTOL
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
    bases = [SplineBasis.from_data(x, t, df=model.df, degree=3, bounds=bounds.get(t)) for x, t in zip(xs, terms)]
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


def _penalized_location(model, stats: SuffStats, batch_rows: np.ndarray, q: int, bases: list, feature_names):
    """S1 of ComBat-GAM from the statistics: every feature's penalized fit with its smoothing parameter
    (module docstring). Returns the :class:`LocationFit` (coefficients on ``[batches | linear | spline]``)
    and the GAM's extra arrays (``spline_coef``, ``smoothing``, ``edf``)."""
    m, Q, p = stats.m, stats.q, stats.p
    K = Q - q
    penalties = [b.penalty() for b in bases]
    starts = np.cumsum([q] + [P.shape[0] for P in penalties])
    norms = None
    if len(penalties) > 1:
        norms = [np.linalg.norm(_raw_gram(stats, slice(starts[j], starts[j + 1]))) for j in range(len(penalties))]
    T0, Tp = penalized.penalty_transform(K, penalties, norms)
    k0, r = T0.shape[1], Tp.shape[1]
    # the columns of the in-memory fit's [linear | Z T0] (unpenalized) and Z Tp (penalized) as maps of x
    Mu = np.zeros((Q, q + k0))
    Mu[:q, :q] = np.eye(q)
    Mu[q:, q:] = T0
    Mp = np.zeros((Q, r))
    Mp[q:] = Tp
    Sxx, Sxy, Syy, xbar, ybar, B = _centred(stats, None, True)
    A = Sxx.sum(axis=0)
    Guu, Gup, Gpp = Mu.T @ A @ Mu, Mu.T @ A @ Mp, Mp.T @ A @ Mp
    if _rank_deficient(Guu[None], 1e-12)[0]:
        terms = [b.name for b in bases]
        raise ConfoundingError(
            f"the linear trend of smooth term(s) {terms} is confounded with {model.batch!r} and the linear "
            f"covariates (e.g. the covariate is constant within each {model.batch}); its effect cannot be told "
            "apart from the site effects. Drop it or model it differently."
        )
    H = _solve_spd(Guu, Gup)  # A_uu⁻¹ A_up
    d2, V = np.linalg.eigh(Gpp - Gup.T @ H)
    keep = d2 > 1e-13 * max(d2.max(), 1e-300)  # directions the projection left (eigenvalues above rounding)
    d2, V = d2[keep][::-1], V[:, keep][:, ::-1]
    d = np.sqrt(d2)
    n = float(stats.counts.sum())
    ku = m + q + k0
    coef = np.empty((m + Q, p))
    lam, edf = np.empty(p), np.empty(p)
    parts = []
    for blk in iter_blocks(p, m * Q):
        f = np.arange(p)[blk]
        by = _y_cross(Sxx, Sxy[:, :, f], B[:, :, f], True).sum(axis=0)  # within-batch Xᵀy (Q, b)
        bu, bp = Mu.T @ by, Mp.T @ by
        theta_u0 = _solve_spd(Guu, bu)  # unpenalized least squares
        c = (V.T @ (bp - H.T @ bu)) / d[:, None]
        rss_u = _within_ss(Sxx, Sxy[:, :, f], Syy[:, f], (Mu @ theta_u0)[None] - B[:, :, f], True).sum(axis=0)
        r_perp = np.maximum(rss_u - np.sum(c * c, axis=0), 0.0)
        parts.append((f, bu, c, r_perp))
    if model.shared_smoothing:
        c2 = np.hstack([pc[2] for pc in parts]) ** 2
        r_perp = np.concatenate([pc[3] for pc in parts])
        resid = r_perp / n
        variance = total_variance(stats)
        batch_mean = _location(stats, None, xbar, ybar, -B, np.zeros((Q, p)), True)  # each batch's mean of y
        mean = (stats.counts[:, None] * batch_mean).sum(axis=0) / n
        use = (resid > LINEAR_FEATURE_RTOL * variance) & (resid > (1e-11 * mean) ** 2)
        lam[:] = penalized.select_lambda(d2, c2, r_perp, n, ku, model.method, True, use)
    for f, bu, c, r_perp in parts:
        if not model.shared_smoothing:
            lam[f] = penalized.select_lambda(d2, c * c, r_perp, n, ku, model.method, False)
        lf = lam[f]
        b = V @ (d[:, None] / (d2[:, None] + lf[None, :]) * c)  # coefficients on the penalized directions
        theta_u = _solve_spd(Guu, bu - Gup @ b)
        coef[m:, f] = Mu @ theta_u + Mp @ b
        edf[f] = k0 + np.sum(d2[:, None] / (d2[:, None] + lf[None, :]), axis=0)
    beta = coef[m:]
    delta = beta[None] - B
    ss = _within_ss(Sxx, Sxy, Syy, delta, True)
    plain = _location(stats, None, xbar, ybar, delta, beta, True)
    ref = _reference_column(batch_rows)
    coef[:m] = plain if ref is None else plain - plain[ref]
    if ref is not None:
        coef[ref] = plain[ref]
    fit = LocationFit(coef, ss, stats.n_obs.copy(), np.zeros(0, dtype=np.intp))
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
    if stats.has_missing:
        j = int(np.flatnonzero((stats.n_obs < stats.counts[:, None]).any(axis=0))[0])
        raise MissingValueError(
            f"ComBatGAM from statistics needs complete features, but {feature_names[j]!r} (and maybe others) has "
            "missing values: each missingness pattern needs its own spline cross-products. Fit it in memory, or "
            "drop or fill those cells first."
        )
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
