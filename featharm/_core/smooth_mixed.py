"""Penalized regression splines with a random subject intercept, for many features at once.

The model of every feature ``v`` (``docs/methods.md`` §3.1),

    y = W_u theta + Z_p b + Z_s u + e,   b ~ N(0, sigma2 / lam I),   u_s ~ N(0, rho sigma2),   e ~ N(0, sigma2),

has two variance ratios per feature: the smoothing parameter ``lam`` of the spline part (``Z_p`` are the
unit-penalty spline directions of :func:`featharm._core.penalized.penalty_reparam`, ``W_u`` the batch
indicators, the linear covariates and the spline's null space) and the subject ratio ``rho = tau2 / sigma2``.

*One REML criterion, two cheap ingredients.* The subject covariance ``V = I + rho Z_s Z_s'`` is block diagonal,
``V_s^-1 = I - w_s J`` with ``w_s = rho / (1 + n_s rho)`` and ``log|V| = sum_s log(1 + n_s rho)``; ``w_s``
depends on the subject only through its number of scans ``n_s`` (as in :mod:`featharm.mixed`). Every
``V^-1`` cross-product of ``M = [W_u | Z_p]`` and ``y`` is therefore ``M'M - sum_g w_g A_g`` with ``A_g`` the
sums, over the subjects with ``n_s = g`` scans, of the outer products of their column sums: computed once,
a few ``k x k`` matrices. At a given ``rho`` the spline block projected off the unpenalized one in the
``V^-1`` metric has eigenvalues ``d2`` (Demmler–Reinsch), and the restricted likelihood with ``sigma2``
profiled out is

    -2 l_R = (n - k_u) log(r_perp + sum_j lam / (d2_j + lam) c_j^2) + sum_j log(1 + d2_j / lam)
             + log|W_u' V^-1 W_u| + log|V|        (+ constants)

with ``c`` the coordinates of ``y`` on those directions: a closed form in ``lam`` for all features once ``rho``
is fixed, the criterion of :func:`featharm._core.penalized.criterion` plus two terms that depend on ``rho`` only.

*Optimization.* ``rho`` is profiled: for each feature, ``f(rho) = min_lam -2 l_R(rho, lam)``. The inner
minimum over ``log lam`` is located on a grid (all points at once) and pinned down by Newton's method on the
criterion's derivative, safeguarded by the bracketing grid cells; the outer one over ``log rho`` by a grid
(step 0.5 on [-12, 12], all grid points of all features in one call), then the root of the profile's
analytic derivative (:func:`_slope_log_rho`) by regula falsi (Illinois) in the bracketing cells; the
boundary ``rho = 0`` (a singular fit) is taken when it is no worse. Both refinements work on derivatives,
so the estimates are fixed to rounding. Every step is vectorized over features (each feature has its own
``rho`` and ``lam``; only grid points and iterations are looped over). When every subject has a
single scan ``rho`` is not identified (only ``sigma2 (1 + rho)`` is): it is set to 0, and the fit is the
cross-sectional penalized spline of :func:`featharm._core.penalized.fit_penalized` with REML.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla
from scipy import sparse

from ..exceptions import ConfoundingError
from . import penalized
from .blocks import crossprod

__all__ = ["SmoothMixedFit", "fit_smooth_mixed", "fit_smooth_mixed_observed", "LOG_RHO_GRID", "RHO_STEPS", "LAMBDA_STEPS"]

LOG_RHO_GRID = np.arange(-12.0, 12.0001, 0.5)  # rho = tau2 / sigma2 from 6e-6 to 1.6e5
RHO_STEPS = 40  # regula falsi (Illinois) steps on log rho: the root of the derivative to rounding
LAMBDA_STEPS = 16  # safeguarded Newton steps on log lam
N_LAMBDA_GRID = 97
_LOG2PI = np.log(2.0 * np.pi)
_BLOCK = 2048  # features per block: bounds the (features × k × k) work arrays
_GRID_CHUNK = 4096  # (rho grid point, feature) pairs evaluated at once


@dataclass
class SmoothMixedFit:
    """REML estimates of the smooth mixed model for every feature (columns).

    Attributes
    ----------
    coef : ndarray (k + K, p)
        Coefficients on ``[Wfix | Z]`` (the fixed columns, then the spline basis).
    sigma2, tau2 : ndarray (p,)
        Residual variance (REML) and random-intercept variance.
    smoothing : ndarray (p,)
        ``lam``: the spline coefficients in unit-penalty directions have variance ``sigma2 / lam``
        (NaN without a smooth term).
    edf : ndarray (p,)
        Effective degrees of freedom of the smooth part (null space included; 0 without a smooth term).
    loglik : ndarray (p,)
        Maximized restricted log-likelihood (``mixed.fit_random_intercept``'s constants; with smooth terms,
        up to a constant that depends on the parametrization of the penalty).
    blup : ndarray (S, p)
        Predicted subject intercepts (0 for a subject without rows).
    boundary : ndarray (p,) of bool
        ``rho`` estimated at 0.
    identified : ndarray (p,) of bool
        False where every subject has one (observed) scan: ``rho`` is not identified and set to 0.
    """

    coef: np.ndarray
    sigma2: np.ndarray
    tau2: np.ndarray
    smoothing: np.ndarray
    edf: np.ndarray
    loglik: np.ndarray
    blup: np.ndarray
    boundary: np.ndarray
    identified: np.ndarray


def _group_sums(A: np.ndarray, g: np.ndarray, S: int) -> np.ndarray:
    n = g.shape[0]
    ind = sparse.csr_matrix((np.ones(n), (g, np.arange(n))), shape=(S, n))
    return np.asarray(ind @ A)


class _Stats:
    """The ``V^-1`` cross-products of ``M = [Q | Zp]`` and the standardized responses, grouped by visit count
    (complete data: one design for every feature). ``f`` (an index array or slice) picks features, repeated
    ones included (the grid stage evaluates several ``rho`` of one feature at once)."""

    def __init__(self, M: np.ndarray, Y: np.ndarray, g: np.ndarray, S: int, ku: int):
        n, p = Y.shape
        self.ku = ku
        self.r = M.shape[1] - ku
        self.mu = Y.mean(axis=0)
        sd = Y.std(axis=0)
        self.sd = np.where(sd > 0, sd, 1.0)
        Y = (Y - self.mu) / self.sd
        self.dof = np.full(p, float(n - ku))
        ns = np.bincount(g, minlength=S).astype(np.float64)
        self.ns = ns
        self.identified = np.full(p, bool((ns > 1).any()))
        self.Sx = _group_sums(M, g, S)  # S × kk
        T = _group_sums(Y, g, S)  # S × p
        self.T = T
        sizes, inv = np.unique(ns, return_inverse=True)
        self.sizes = sizes
        self.counts = np.bincount(inv, minlength=sizes.size).astype(np.float64)
        kk = M.shape[1]
        self.A = np.empty((sizes.size, kk, kk))
        self.C = np.empty((sizes.size, kk, p))
        self.qq = np.empty((sizes.size, p))
        for j in range(sizes.size):  # a few distinct visit counts
            rows = inv == j
            Sj, Tj = self.Sx[rows], T[rows]
            self.A[j] = Sj.T @ Sj
            self.C[j] = crossprod(Sj, Tj)
            self.qq[j] = np.einsum("sp,sp->p", Tj, Tj)
        self.MtM = M.T @ M
        self.MtY = crossprod(M, Y)
        self.yty = np.einsum("np,np->p", Y, Y)

    def gram(self, rho: np.ndarray, f):
        """``M'V^-1 M`` (p × kk × kk), ``M'V^-1 y`` (p × kk), ``y'V^-1 y`` and ``log|V|`` of features ``f``."""
        w = rho[None, :] / (1.0 + self.sizes[:, None] * rho[None, :])  # G × p
        G = self.MtM[None] - np.einsum("gp,gkl->pkl", w, self.A)
        h = self.MtY[:, f].T - np.einsum("gp,gkp->pk", w, self.C[:, :, f])
        yy = self.yty[f] - np.einsum("gp,gp->p", w, self.qq[:, f])
        logdet_v = self.counts @ np.log1p(self.sizes[:, None] * rho[None, :])
        return G, h, yy, logdet_v

    def slope_terms(self, rho, f, Pinv, coef):
        """``tr(P Z_s Z_s')`` and ``y'P Z_s Z_s' P y`` (see :func:`_slope_log_rho`)."""
        a = 1.0 / (1.0 + self.sizes[:, None] * rho[None, :])  # G × p
        trace = (self.counts * self.sizes) @ a - np.einsum("gp,pkl,glk->p", a * a, Pinv, self.A)
        quad = (self.qq[:, f] - 2.0 * np.einsum("pk,gkp->gp", coef, self.C[:, :, f])
                + np.einsum("pk,gkl,pl->gp", coef, self.A, coef))
        return trace, np.einsum("gp,gp->p", a * a, quad)

    def blup(self, rho, f, coef):
        """Subject BLUPs (S × p, standardized units) at the coefficients ``coef`` (p × kk)."""
        w = rho[None, :] / (1.0 + self.ns[:, None] * rho[None, :])
        return w * (self.T[:, f] - self.Sx @ coef.T)

    def ingredients(self, rho: np.ndarray, f):
        """At ``rho`` (per feature): ``d2``, ``c2`` (r × p), ``r_perp`` and the ``rho`` terms of the criterion."""
        ku, r = self.ku, self.r
        G, h, yy, logdet_v = self.gram(rho, f)
        Guu = G[:, :ku, :ku]
        L = np.linalg.cholesky(Guu)
        logdet_u = 2.0 * np.log(np.diagonal(L, axis1=1, axis2=2)).sum(axis=1)
        rhs = np.concatenate([G[:, :ku, ku:], h[:, :ku, None]], axis=2)
        sol = np.linalg.solve(Guu, rhs)  # Guu^-1 [Gup | hu]
        base = yy - np.einsum("pk,pk->p", h[:, :ku], sol[:, :, r])
        const = logdet_u + logdet_v
        if r == 0:
            return None, None, np.maximum(base, 0.0), const
        Gpp = G[:, ku:, ku:] - np.einsum("pkr,pks->prs", G[:, :ku, ku:], sol[:, :, :r])
        hp = h[:, ku:] - np.einsum("pkr,pk->pr", G[:, :ku, ku:], sol[:, :, r])
        d2, E = np.linalg.eigh(0.5 * (Gpp + Gpp.transpose(0, 2, 1)))
        e = np.einsum("prj,pr->pj", E, hp)
        gone = d2 <= 1e-12 * np.maximum(d2.max(axis=1, keepdims=True), 1e-300)  # directions W_u absorbed
        d2 = np.where(gone, 0.0, d2)
        with np.errstate(divide="ignore", invalid="ignore"):
            c2 = np.where(gone, 0.0, e * e / d2)
        r_perp = np.maximum(base - c2.sum(axis=1), 0.0)
        return d2.T, c2.T, r_perp, const


class _MaskedStats(_Stats):
    """:class:`_Stats` of every feature on its observed rows (``obs``): the same sums taken per feature, the
    visit counts ``n_sv`` too (a subject's scans where the feature is observed), so features with different
    missing cells are still evaluated together."""

    def __init__(self, M: np.ndarray, Y: np.ndarray, obs: np.ndarray, g: np.ndarray, S: int, ku: int):
        n, p = Y.shape
        kk = M.shape[1]
        self.ku = ku
        self.r = kk - ku
        of = obs.astype(np.float64)
        n_v = of.sum(axis=0)
        Y0 = np.where(obs, Y, 0.0)
        self.mu = Y0.sum(axis=0) / n_v
        D = (Y0 - self.mu) * of
        sd = np.sqrt((D * D).sum(axis=0) / n_v)
        self.sd = np.where(sd > 0, sd, 1.0)
        Yc = D / self.sd  # 0 in the missing cells
        self.dof = n_v - ku
        self.MtM = crossprod(of, (M[:, :, None] * M[:, None, :]).reshape(n, kk * kk)).reshape(p, kk, kk)
        self.MtY = crossprod(M, Yc)
        self.yty = np.einsum("np,np->p", Yc, Yc)
        ns = _group_sums(of, g, S)  # S × p
        self.ns = ns
        self.identified = (ns > 1).any(axis=0)
        self.T = _group_sums(Yc, g, S)
        self.Sx = np.stack([_group_sums(M[:, [j]] * of, g, S) for j in range(kk)], axis=1)  # S × kk × p
        sizes = np.unique(ns)
        self.sizes = sizes
        self.A = np.empty((sizes.size, p, kk, kk))
        self.C = np.empty((sizes.size, p, kk))
        self.qq = np.empty((sizes.size, p))
        self.counts = np.empty((sizes.size, p))
        for j, size in enumerate(sizes):
            ind = (ns == size).astype(np.float64)
            Si = self.Sx * ind[:, None, :]
            self.A[j] = np.einsum("skp,slp->pkl", Si, self.Sx)
            self.C[j] = np.einsum("skp,sp->pk", Si, self.T)
            self.qq[j] = np.einsum("sp,sp->p", ind * self.T, self.T)
            self.counts[j] = ind.sum(axis=0)

    def gram(self, rho: np.ndarray, f):
        w = rho[None, :] / (1.0 + self.sizes[:, None] * rho[None, :])  # G × p
        G = self.MtM[f] - np.einsum("gp,gpkl->pkl", w, self.A[:, f])
        h = self.MtY[:, f].T - np.einsum("gp,gpk->pk", w, self.C[:, f])
        yy = self.yty[f] - np.einsum("gp,gp->p", w, self.qq[:, f])
        logdet_v = np.einsum("gp,gp->p", self.counts[:, f], np.log1p(self.sizes[:, None] * rho[None, :]))
        return G, h, yy, logdet_v

    def slope_terms(self, rho, f, Pinv, coef):
        a = 1.0 / (1.0 + self.sizes[:, None] * rho[None, :])
        A = self.A[:, f]
        trace = np.einsum("gp,g,gp->p", self.counts[:, f], self.sizes, a) - np.einsum("gp,pkl,gplk->p", a * a, Pinv, A)
        quad = (self.qq[:, f] - 2.0 * np.einsum("pk,gpk->gp", coef, self.C[:, f])
                + np.einsum("pk,gpkl,pl->gp", coef, A, coef))
        return trace, np.einsum("gp,gp->p", a * a, quad)

    def blup(self, rho, f, coef):
        ns = self.ns[:, f]
        w = rho[None, :] / (1.0 + ns * rho[None, :])
        return w * (self.T[:, f] - np.einsum("skp,pk->sp", self.Sx[:, :, f], coef))


def _lambda_derivatives(t, d2, c2, r_perp, dof):
    """First and second derivatives of the REML criterion in ``t = log lam`` (features on the last axis)."""
    w = 1.0 / (1.0 + d2 * np.exp(-t))  # lam / (d2 + lam)
    dw = w * (1.0 - w)
    quad = r_perp + np.sum(w * c2, axis=-2)
    s1 = np.sum(dw * c2, axis=-2)
    first = -np.sum(1.0 - w, axis=-2) + dof * s1 / quad
    second = np.sum(dw, axis=-2) + dof * (np.sum(dw * (1.0 - 2.0 * w) * c2, axis=-2) / quad - (s1 / quad) ** 2)
    return first, second


def _best_lambda(d2, c2, r_perp, dof, grid):
    """Per feature, the ``lam`` minimizing the REML criterion at fixed ``rho``, and the minimum.

    The grid (all points at once) brackets the global minimum between the neighbours of its best point; the
    root of the derivative there is found by Newton's method on ``log lam``, safeguarded by the bracket
    (a step leaving it, or made with a non-positive curvature, is a bisection): ``LAMBDA_STEPS`` steps reach
    rounding from a bracket of two grid cells.
    """
    r_perp = np.maximum(r_perp, 1e-300)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        crit = penalized.criterion(np.exp(grid)[:, None, None], d2, c2, r_perp, dof, 0, "REML")  # G × p
    crit = np.where(np.isnan(crit), np.inf, crit)
    best = np.argmin(crit, axis=0)
    a = grid[np.maximum(best - 1, 0)]
    b = grid[np.minimum(best + 1, grid.size - 1)]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        fa = _lambda_derivatives(a[None, :], d2, c2, r_perp, dof)[0]
        fb = _lambda_derivatives(b[None, :], d2, c2, r_perp, dof)[0]
        bracketed = (fa < 0) & (fb > 0)
        t = grid[best].astype(np.float64)
        for _ in range(LAMBDA_STEPS):
            g1, g2 = _lambda_derivatives(t[None, :], d2, c2, r_perp, dof)
            up = g1 > 0  # the root is below t
            b = np.where(up, np.minimum(b, t), b)
            a = np.where(up, a, np.maximum(a, t))
            step = t - g1 / g2
            ok = (g2 > 0) & (step >= a) & (step <= b)
            t = np.where(g1 == 0, t, np.where(ok, step, 0.5 * (a + b)))
    t = np.where(bracketed, t, grid[best])
    lam = np.exp(t)
    with np.errstate(divide="ignore", invalid="ignore"):
        val = penalized.criterion(lam, d2, c2, r_perp, dof, 0, "REML")
    return lam, val


def _profile(st: _Stats, rho: np.ndarray, f, grid):
    """``min_lam -2 l_R(rho, lam)`` (up to constants) and its ``lam``, per feature."""
    dof = st.dof[f]
    d2, c2, r_perp, const = st.ingredients(rho, f)
    if d2 is None:
        return dof * np.log(np.maximum(r_perp, 1e-300)) + const, np.full(rho.shape, np.nan)
    lam, val = _best_lambda(d2, c2, r_perp, dof, grid)
    return val + const, lam


def _slope_log_rho(st: _Stats, rho: np.ndarray, f, grid) -> np.ndarray:
    """Derivative of the profile ``min_lam -2 l_R`` with respect to ``log rho``, per feature.

    At the inner optimum the derivative of the profile is the partial derivative at fixed ``lam``
    (envelope theorem): ``tr(P Z_s Z_s') - (n - k_u) y'P Z_s Z_s' P y / y'P y`` with
    ``P = V^-1 - V^-1 M (M'V^-1 M + Lambda)^-1 M'V^-1``. Per subject ``V_s^-1 1 = 1 / (1 + n_s rho)``, so both
    terms are sums over the visit-count groups of the stored cross-products.
    """
    _, lam = _profile(st, rho, f, grid)
    G, h, yy, _ = st.gram(rho, f)
    ku, r = st.ku, st.r
    if r:
        idx = np.arange(ku, ku + r)
        G[:, idx, idx] += lam[:, None]
    Pinv = np.linalg.inv(G)
    coef = np.einsum("pkl,pl->pk", Pinv, h)
    rss = np.maximum(yy - np.einsum("pk,pk->p", h, coef), 1e-300)
    trace, quad = st.slope_terms(rho, f, Pinv, coef)
    return rho * (trace - st.dof[f] * quad / rss)


def _minimize_rho(st: _Stats, f: np.ndarray, grid) -> np.ndarray:
    """Grid on ``log rho`` (all grid points of all features in one call); the root of the profile's derivative
    in the cells around the best grid point by the Illinois variant of regula falsi (superlinear, the bracket
    kept); then the boundary ``rho = 0`` when it is no worse."""
    p = f.size
    G = LOG_RHO_GRID.size
    rho_all, f_all = np.repeat(np.exp(LOG_RHO_GRID), p), np.tile(f, G)
    vals = np.concatenate([_profile(st, rho_all[i:i + _GRID_CHUNK], f_all[i:i + _GRID_CHUNK], grid)[0]
                           for i in range(0, rho_all.size, _GRID_CHUNK)]).reshape(G, p)
    zero = _profile(st, np.zeros(p), f, grid)[0]
    best = vals.argmin(axis=0)
    a = LOG_RHO_GRID[np.maximum(best - 1, 0)].copy()
    b = LOG_RHO_GRID[np.minimum(best + 1, G - 1)].copy()

    def slope(t):
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return _slope_log_rho(st, np.exp(t), f, grid)

    fa, fb = slope(a), slope(b)
    bracketed = (fa < 0) & (fb > 0)
    active = bracketed.copy()  # a feature stops when its bracket is below 1e-12 (independent of the others)
    for _ in range(RHO_STEPS):
        if not active.any():
            break
        i = np.flatnonzero(active)
        a_i, b_i, fa_i, fb_i = a[i], b[i], fa[i], fb[i]
        with np.errstate(divide="ignore", invalid="ignore"):
            c = b_i - fb_i * (b_i - a_i) / (fb_i - fa_i)
        c = np.where(np.isfinite(c), c, 0.5 * (a_i + b_i))
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            fc = _slope_log_rho(st, np.exp(c), f[i], grid)
        swap = fc * fb_i < 0  # the root is between b and c: the old b is the other end
        a[i], fa[i] = np.where(swap, b_i, a_i), np.where(swap, fb_i, 0.5 * fa_i)  # Illinois: else halve fa
        b[i], fb[i] = c, fc
        active[i] = (np.abs(b[i] - a[i]) >= 1e-12) & (fc != 0)
    t = np.where(bracketed, b, LOG_RHO_GRID[best])
    rho = np.exp(t)
    f_t = _profile(st, rho, f, grid)[0]
    return np.where((zero <= f_t) & (zero <= vals.min(axis=0)), 0.0, rho)


def _design(Wfix, Z, penalties, terms, batch_name):
    """The unpenalized columns' QR and the spline's unit-penalty directions (see the module docstring)."""
    n = Wfix.shape[0]
    if Z.shape[1]:
        Z0, Zp, T0, Tp = penalized.penalty_reparam(Z, penalties)
    else:
        Z0, Zp, T0, Tp = np.zeros((n, 0)), np.zeros((n, 0)), np.zeros((0, 0)), np.zeros((0, 0))
    Wu = np.hstack([Wfix, Z0])
    Q, R, full_rank = penalized._unpenalized_qr(Wu)
    if not full_rank:
        what = f"the linear trend of smooth term(s) {list(terms)}" if Z.shape[1] else "the fixed-effects design"
        raise ConfoundingError(
            f"{what} is confounded with {batch_name!r} and the linear covariates (e.g. a covariate constant "
            f"within each {batch_name}, or a combination of the others); its effect cannot be told apart from "
            "the site effects. Drop it or model it differently."
        )
    return Zp, T0, Tp, Wu, Q, R


def _lambda_grid(M: np.ndarray, ku: int):
    """The log-lambda grid: 14 e-folds beyond the eigenvalues of the spline directions projected off the
    unpenalized ones on all rows at ``rho = 0`` (the design only: the same grid for every feature)."""
    r = M.shape[1] - ku
    if not r:
        return None
    G = M.T @ M
    Gpp = G[ku:, ku:] - G[ku:, :ku] @ np.linalg.solve(G[:ku, :ku], G[:ku, ku:])
    d2_0 = np.linalg.eigvalsh(0.5 * (Gpp + Gpp.T))
    pos = d2_0[d2_0 > 1e-12 * max(d2_0.max(), 1e-300)]
    return np.linspace(np.log(max(pos.min(), 1e-300)) - 14.0, np.log(pos.max()) + 14.0, N_LAMBDA_GRID)


def _fit_features(st: _Stats, f: np.ndarray, grid, k: int, log_r: float):
    """REML estimates of features ``f`` (standardized units): coefficients (kk × p), rho, lam, sigma2, edf,
    log-likelihood and BLUPs."""
    ku, r = st.ku, st.r
    p = f.size
    ident = st.identified[f]
    rho = np.zeros(p)
    if ident.any():
        rho[ident] = _minimize_rho(st, f[ident], grid)
    val, lam = _profile(st, rho, f, grid)
    G, h, yy, _ = st.gram(rho, f)
    if r:
        idx = np.arange(ku, ku + r)
        G[:, idx, idx] += lam[:, None]
    cf = np.linalg.solve(G, h[..., None])[..., 0]  # p × kk
    dof = st.dof[f]
    rss = np.maximum(yy - np.einsum("pk,pk->p", h, cf), 1e-300)
    edf = np.zeros(p)
    if r:
        d2 = st.ingredients(rho, f)[0]
        edf = (ku - k) + np.sum(d2 / (d2 + lam[None, :]), axis=0)
    # -2 l_R at the optimum with lme4's constants (as featharm.mixed): val = dof log rss + the log dets
    loglik = -0.5 * (val + dof * (1.0 + _LOG2PI + 2.0 * np.log(st.sd[f]) - np.log(dof)) + log_r)
    return cf.T, rho, lam, rss / dof, edf, loglik, st.blup(rho, f, cf)


def _to_original(coef_c, mu, sd, R, c_int, T0, Tp, k):
    """Coefficients on ``[Wfix | Z]`` in the features' units: ``Y = mu + sd Yc``, ``Q theta = Wu R^-1 theta``,
    ``Wu c = 1``."""
    ku = R.shape[0]
    theta_u = sla.solve_triangular(R, coef_c[:ku], check_finite=False) * sd + np.outer(c_int, mu)
    spline = T0 @ theta_u[k:] + Tp @ (coef_c[ku:] * sd) if T0.shape[0] else np.zeros((0, coef_c.shape[1]))
    return np.vstack([theta_u[:k], spline])


def fit_smooth_mixed(Y, Wfix, Z, penalties, groups, *, n_groups=None, terms=(), batch_name="batch") -> SmoothMixedFit:
    """Fit ``y ~ Wfix + s(...) + (1 | subject)`` to every column of ``Y`` by REML (see the module docstring).

    Parameters
    ----------
    Y : ndarray (n, p)
        Responses (complete), one feature per column.
    Wfix : ndarray (n, k)
        Unpenalized columns whose span contains the intercept (batch indicators, linear covariates).
    Z : ndarray (n, K)
        Spline basis of the smooth terms (``K = 0``: no smooth term, the random-intercept model).
    penalties : list of ndarray
        The penalty of each smooth term (blocks of ``Z``'s columns).
    groups : ndarray (n,) of int
        Subject code of each row, ``0 .. S-1`` (subjects without rows allowed: their BLUP is 0).
    n_groups : int, optional
        ``S`` (default: the largest code + 1).
    terms, batch_name : for messages.

    Returns
    -------
    SmoothMixedFit
    """
    Y = np.asarray(Y, dtype=np.float64)
    n, p = Y.shape
    k = Wfix.shape[1]
    g = np.asarray(groups, dtype=np.intp)
    S = (int(g.max()) + 1 if g.size else 0) if n_groups is None else int(n_groups)
    Zp, T0, Tp, Wu, Q, R = _design(Wfix, Z, penalties, terms, batch_name)
    ku = Wu.shape[1]
    if n - ku <= 0:
        raise ConfoundingError(f"the model has {ku} unpenalized coefficients but only {n} rows.")
    c_int = sla.solve_triangular(R, Q.T @ np.ones(n), check_finite=False)  # Wu c = 1 (intercept in the span)
    M = np.hstack([Q, Zp])
    st = _Stats(M, Y, g, S, ku)
    grid = _lambda_grid(M, ku)
    log_r = 2.0 * np.log(np.abs(np.diag(R))).sum()  # log|Wu'Wu|, as mixed.py's logdet_xtx
    coef_c = np.empty((ku + Zp.shape[1], p))
    rho, lam, s2, edf, loglik = (np.empty(p) for _ in range(5))
    blup_c = np.empty((S, p))
    for start in range(0, p, _BLOCK):  # blocks of features (memory), each vectorized
        f = np.arange(start, min(start + _BLOCK, p))
        coef_c[:, f], rho[f], lam[f], s2[f], edf[f], loglik[f], blup_c[:, f] = _fit_features(st, f, grid, k, log_r)
    sigma2 = s2 * st.sd**2
    return SmoothMixedFit(coef=_to_original(coef_c, st.mu, st.sd, R, c_int, T0, Tp, k), sigma2=sigma2,
                          tau2=rho * sigma2, smoothing=lam, edf=edf, loglik=loglik, blup=blup_c * st.sd,
                          boundary=rho == 0.0, identified=st.identified.copy())


def fit_smooth_mixed_observed(Y, mask, Wfix, Z, penalties, groups, *, droppable=0, n_groups=None, terms=(),
                              batch_name="batch") -> SmoothMixedFit:
    """:func:`fit_smooth_mixed` of every column of ``Y`` on its observed rows (``mask`` True = missing,
    ``docs/methods.md`` §1.8).

    The spline basis, its penalty directions and the unpenalized QR are those of all rows (frozen, as
    without missing values). Features whose first ``droppable`` columns of ``Wfix`` (batch indicators) all
    have an observed row are fitted together whatever their missing cells, from per-feature sums
    (:class:`_MaskedStats`, in blocks of bounded memory). The others are fitted per missingness pattern on
    their observed rows, with the indicator columns that have no observed row left out (their coefficient is
    NaN). Returns one :class:`SmoothMixedFit` for all features, subjects coded as in the full table.
    """
    from .missing import missingness_patterns

    Y = np.asarray(Y, dtype=np.float64)
    n, p = Y.shape
    k = Wfix.shape[1]
    K = Z.shape[1]
    g = np.asarray(groups, dtype=np.intp)
    S = (int(g.max()) + 1 if g.size else 0) if n_groups is None else int(n_groups)
    obs = ~mask
    out = SmoothMixedFit(coef=np.full((k + K, p), np.nan), sigma2=np.empty(p), tau2=np.empty(p),
                         smoothing=np.empty(p), edf=np.empty(p), loglik=np.empty(p), blup=np.zeros((S, p)),
                         boundary=np.zeros(p, dtype=bool), identified=np.ones(p, dtype=bool))
    full = (Wfix[:, :droppable].T @ obs > 0).all(axis=0) if droppable else np.ones(p, dtype=bool)
    cols = np.flatnonzero(full)
    if cols.size:
        Zp, T0, Tp, Wu, Q, R = _design(Wfix, Z, penalties, terms, batch_name)
        ku = Wu.shape[1]
        M = np.hstack([Q, Zp])
        c_int = sla.solve_triangular(R, Q.T @ np.ones(n), check_finite=False)
        log_r = 2.0 * np.log(np.abs(np.diag(R))).sum()
        step = max(1, int(4e6 // max(1, S * M.shape[1])))  # bounded per-subject sums (S × kk × block)
        grid = _lambda_grid(M, ku)
        for start in range(0, cols.size, step):
            f_all = cols[start:start + step]
            st = _MaskedStats(M, Y[:, f_all], obs[:, f_all], g, S, ku)
            if (st.dof <= 0).any():
                j = f_all[int(np.argmax(st.dof <= 0))]
                raise ConfoundingError(f"feature column {j} has {int(obs[:, j].sum())} observed rows for {ku} "
                                       "unpenalized coefficients.")
            try:
                cf, rho, lam, s2, edf, ll, bl = _fit_features(st, np.arange(f_all.size), grid, k, log_r)
            except np.linalg.LinAlgError:
                raise ConfoundingError(
                    f"on the rows where they are observed, the design (batch, covariates and the linear trend of "
                    f"the smooth terms) of feature column(s) {list(f_all[:5])} is rank deficient (a covariate "
                    "constant within batches once the missing rows are left out). Drop those features or that "
                    "covariate.") from None
            sigma2 = s2 * st.sd**2
            out.coef[:, f_all] = _to_original(cf, st.mu, st.sd, R, c_int, T0, Tp, k)
            out.sigma2[f_all], out.tau2[f_all], out.smoothing[f_all] = sigma2, rho * sigma2, lam
            out.edf[f_all], out.loglik[f_all], out.blup[:, f_all] = edf, ll, bl * st.sd
            out.boundary[f_all], out.identified[f_all] = rho == 0.0, st.identified
    sub = np.flatnonzero(~full)
    if sub.size:
        first, inverse = missingness_patterns(mask[:, sub])
        for u, col in enumerate(first):  # a batch without observed rows: that pattern's own design
            feats = sub[inverse == u]
            rows = obs[:, sub[col]]
            keep = np.ones(k, dtype=bool)
            keep[:droppable] = Wfix[rows][:, :droppable].any(axis=0)
            fit = fit_smooth_mixed(Y[rows][:, feats], Wfix[rows][:, keep], Z[rows], penalties, g[rows], n_groups=S,
                                   terms=terms, batch_name=batch_name)
            kk = int(keep.sum())
            out.coef[np.ix_(np.flatnonzero(keep), feats)] = fit.coef[:kk]
            out.coef[k:, feats] = fit.coef[kk:]
            for name in ("sigma2", "tau2", "smoothing", "edf", "loglik", "boundary", "identified"):
                getattr(out, name)[feats] = getattr(fit, name)
            out.blup[:, feats] = fit.blup
    return out
