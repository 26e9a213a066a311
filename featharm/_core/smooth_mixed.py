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
minimum over ``log lam`` is located on a grid and pinned down by 60 bisections of the criterion's derivative
(as the cross-sectional GAM does); the outer one over ``log rho`` by a grid (step 0.5 on [-12, 12]), then 48
golden-section steps in the bracketing grid cell (width 1 -> 0.618^48 = 1e-10 on ``log rho``), then the
boundary ``rho = 0`` (a singular fit) is taken when it is no worse. Every step is vectorized over features
(each feature has its own ``rho`` and ``lam``; only the grid points are looped over). When every subject has a
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

__all__ = ["SmoothMixedFit", "fit_smooth_mixed", "LOG_RHO_GRID", "RHO_STEPS", "LAMBDA_STEPS"]

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
    identified : bool
        False when every subject has one scan (``rho`` set to 0).
    """

    coef: np.ndarray
    sigma2: np.ndarray
    tau2: np.ndarray
    smoothing: np.ndarray
    edf: np.ndarray
    loglik: np.ndarray
    blup: np.ndarray
    boundary: np.ndarray
    identified: bool


def _group_sums(A: np.ndarray, g: np.ndarray, S: int) -> np.ndarray:
    n = g.shape[0]
    ind = sparse.csr_matrix((np.ones(n), (g, np.arange(n))), shape=(S, n))
    return np.asarray(ind @ A)


class _Stats:
    """The ``V^-1`` cross-products of ``M = [Q | Zp]`` and the (standardized) responses, by visit count."""

    def __init__(self, M: np.ndarray, Y: np.ndarray, g: np.ndarray, S: int, ku: int):
        self.ku = ku
        self.r = M.shape[1] - ku
        ns = np.bincount(g, minlength=S).astype(np.float64)
        self.ns = ns
        self.Sx = _group_sums(M, g, S)  # S × kk
        T = _group_sums(Y, g, S)  # S × p
        self.T = T
        sizes, inv = np.unique(ns, return_inverse=True)
        self.sizes = sizes
        self.counts = np.bincount(inv, minlength=sizes.size).astype(np.float64)
        kk, p = M.shape[1], Y.shape[1]
        self.A = np.empty((sizes.size, kk, kk))
        self.C = np.empty((sizes.size, kk, p))
        self.qq = np.empty((sizes.size, p))
        for j in range(sizes.size):  # a few distinct visit counts
            rows = inv == j
            Sj, Tj = self.Sx[rows], T[rows]
            self.A[j] = Sj.T @ Sj
            self.C[j] = Sj.T @ Tj
            self.qq[j] = np.einsum("sp,sp->p", Tj, Tj)
        self.MtM = M.T @ M
        self.MtY = M.T @ Y
        self.yty = np.einsum("np,np->p", Y, Y)

    def weights(self, rho: np.ndarray) -> np.ndarray:
        return rho[None, :] / (1.0 + self.sizes[:, None] * rho[None, :])  # G × p

    def gram(self, rho: np.ndarray, f: slice):
        """``M'V^-1 M`` (p × kk × kk), ``M'V^-1 y`` (p × kk), ``y'V^-1 y`` and ``log|V|`` of features ``f``."""
        w = self.weights(rho)
        G = self.MtM[None] - np.einsum("gp,gkl->pkl", w, self.A)
        h = self.MtY[:, f].T - np.einsum("gp,gkp->pk", w, self.C[:, :, f])
        yy = self.yty[f] - np.einsum("gp,gp->p", w, self.qq[:, f])
        logdet_v = self.counts @ np.log1p(self.sizes[:, None] * rho[None, :])
        return G, h, yy, logdet_v

    def ingredients(self, rho: np.ndarray, f: slice):
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


def _profile(st: _Stats, rho: np.ndarray, f: slice, dof: float, grid):
    """``min_lam -2 l_R(rho, lam)`` (up to constants) and its ``lam``, per feature."""
    d2, c2, r_perp, const = st.ingredients(rho, f)
    if d2 is None:
        return dof * np.log(np.maximum(r_perp, 1e-300)) + const, np.full(rho.shape, np.nan)
    lam, val = _best_lambda(d2, c2, r_perp, dof, grid)
    return val + const, lam


def _slope_log_rho(st: _Stats, rho: np.ndarray, f: slice, dof: float, grid) -> np.ndarray:
    """Derivative of the profile ``min_lam -2 l_R`` with respect to ``log rho``, per feature.

    At the inner optimum the derivative of the profile is the partial derivative at fixed ``lam``
    (envelope theorem): ``tr(P Z_s Z_s') - (n - k_u) y'P Z_s Z_s' P y / y'P y`` with
    ``P = V^-1 - V^-1 M (M'V^-1 M + Lambda)^-1 M'V^-1``. Per subject ``V_s^-1 1 = 1 / (1 + n_s rho)``, so both
    terms are sums over the visit-count groups of the stored cross-products.
    """
    _, lam = _profile(st, rho, f, dof, grid)
    G, h, yy, _ = st.gram(rho, f)
    ku, r = st.ku, st.r
    if r:
        idx = np.arange(ku, ku + r)
        G[:, idx, idx] += lam[:, None]
    Pinv = np.linalg.inv(G)
    coef = np.einsum("pkl,pl->pk", Pinv, h)
    rss = np.maximum(yy - np.einsum("pk,pk->p", h, coef), 1e-300)
    a = 1.0 / (1.0 + st.sizes[:, None] * rho[None, :])  # G × p
    trace = (st.counts * st.sizes) @ a - np.einsum("gp,pkl,glk->p", a * a, Pinv, st.A)
    quad = (st.qq[:, f] - 2.0 * np.einsum("pk,gkp->gp", coef, st.C[:, :, f])
            + np.einsum("pk,gkl,pl->gp", coef, st.A, coef))
    quad = np.einsum("gp,gp->p", a * a, quad)
    return rho * (trace - dof * quad / rss)


def _minimize_rho(st: _Stats, f: np.ndarray, dof: float, grid) -> np.ndarray:
    """Grid on ``log rho`` (all grid points of all features in one call); the root of the profile's derivative
    in the cells around the best grid point by the Illinois variant of regula falsi (superlinear, the bracket
    kept); then the boundary ``rho = 0`` when it is no worse."""
    p = f.size
    G = LOG_RHO_GRID.size
    rho_all, f_all = np.repeat(np.exp(LOG_RHO_GRID), p), np.tile(f, G)
    vals = np.concatenate([_profile(st, rho_all[i:i + _GRID_CHUNK], f_all[i:i + _GRID_CHUNK], dof, grid)[0]
                           for i in range(0, rho_all.size, _GRID_CHUNK)]).reshape(G, p)
    zero = _profile(st, np.zeros(p), f, dof, grid)[0]
    best = vals.argmin(axis=0)
    a = LOG_RHO_GRID[np.maximum(best - 1, 0)]
    b = LOG_RHO_GRID[np.minimum(best + 1, G - 1)]

    def slope(t):
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return _slope_log_rho(st, np.exp(t), f, dof, grid)

    fa, fb = slope(a), slope(b)
    bracketed = (fa < 0) & (fb > 0)
    fa, fb = np.where(bracketed, fa, -1.0), np.where(bracketed, fb, 1.0)
    for _ in range(RHO_STEPS):
        with np.errstate(divide="ignore", invalid="ignore"):
            c = b - fb * (b - a) / (fb - fa)
        c = np.where(np.isfinite(c), c, 0.5 * (a + b))
        fc = slope(c)
        swap = fc * fb < 0  # the root is between b and c: the old b is the other end
        a, fa = np.where(swap, b, a), np.where(swap, fb, 0.5 * fa)  # Illinois: else halve the kept end's value
        b, fb = c, fc
        if (np.abs(b - a) < 1e-12).all():
            break
    t = np.where(bracketed, b, LOG_RHO_GRID[best])
    rho = np.exp(t)
    f_t = _profile(st, rho, f, dof, grid)[0]
    return np.where((zero <= f_t) & (zero <= vals.min(axis=0)), 0.0, rho)


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
    K = Z.shape[1]
    g = np.asarray(groups, dtype=np.intp)
    S = (int(g.max()) + 1 if g.size else 0) if n_groups is None else int(n_groups)
    if K:
        Z0, Zp, T0, Tp = penalized.penalty_reparam(Z, penalties)
    else:
        Z0, Zp, T0, Tp = np.zeros((n, 0)), np.zeros((n, 0)), np.zeros((0, 0)), np.zeros((0, 0))
    Wu = np.hstack([Wfix, Z0])
    Q, R, full_rank = penalized._unpenalized_qr(Wu)
    if not full_rank:
        what = f"the linear trend of smooth term(s) {list(terms)}" if K else "the fixed-effects design"
        raise ConfoundingError(
            f"{what} is confounded with {batch_name!r} and the linear covariates (e.g. a covariate constant "
            f"within each {batch_name}, or a combination of the others); its effect cannot be told apart from "
            "the site effects. Drop it or model it differently."
        )
    ku = Wu.shape[1]
    dof = float(n - ku)
    if dof <= 0:
        raise ConfoundingError(f"the model has {ku} unpenalized coefficients but only {n} rows.")
    c_int = sla.solve_triangular(R, Q.T @ np.ones(n), check_finite=False)  # Wu c = 1 (intercept in the span)
    mu = Y.mean(axis=0)
    sd = Y.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    Yc = (Y - mu) / sd
    M = np.hstack([Q, Zp])
    st = _Stats(M, Yc, g, S, ku)
    identified = bool((st.ns > 1).any())
    r = Zp.shape[1]
    if r:
        d2_0 = st.ingredients(np.zeros(1), slice(0, 1))[0][:, 0]
        pos = d2_0[d2_0 > 0]
        grid = np.linspace(np.log(max(pos.min(), 1e-300)) - 14.0, np.log(pos.max()) + 14.0, N_LAMBDA_GRID)
    else:
        grid = None
    kk = ku + r
    coef_c = np.empty((kk, p))
    rho = np.zeros(p)
    lam = np.full(p, np.nan)
    edf = np.zeros(p)
    sigma2_c = np.empty(p)
    loglik = np.empty(p)
    blup_c = np.empty((S, p))
    log_r = 2.0 * np.log(np.abs(np.diag(R))).sum()  # log|Wu'Wu| / 2 ... as mixed.py's logdet_xtx
    for start in range(0, p, _BLOCK):  # blocks of features (memory), each vectorized
        f = slice(start, min(start + _BLOCK, p))
        pb = f.stop - f.start
        rho_b = _minimize_rho(st, np.arange(f.start, f.stop), dof, grid) if identified else np.zeros(pb)
        val, lam_b = _profile(st, rho_b, f, dof, grid)
        G, h, yy, logdet_v = st.gram(rho_b, f)
        P = G.copy()
        if r:
            idx = np.arange(ku, kk)
            P[:, idx, idx] += lam_b[:, None]
        cf = np.linalg.solve(P, h[..., None])[..., 0]  # p × kk
        rss = np.maximum(yy - np.einsum("pk,pk->p", h, cf), 1e-300)
        coef_c[:, f] = cf.T
        rho[f], lam[f] = rho_b, lam_b
        sigma2_c[f] = rss / dof
        if r:
            d2, c2, r_perp, const = st.ingredients(rho_b, f)
            edf[f] = (ku - k) + np.sum(d2 / (d2 + lam_b[None, :]), axis=0)
        # -2 l_R at the optimum, with lme4's constants (as featharm.mixed): val holds dof log rss + the log dets
        loglik[f] = -0.5 * (val + dof * (1.0 + _LOG2PI + 2.0 * np.log(sd[f]) - np.log(dof)) + log_r)
        w = rho_b[None, :] / (1.0 + st.ns[:, None] * rho_b[None, :])  # S × p
        blup_c[:, f] = w * (st.T[:, f] - st.Sx @ cf.T)
    # back to the original columns and units: Y = mu + sd Yc, Q theta = Wu R^-1 theta, Wu c = 1
    theta_u = sla.solve_triangular(R, coef_c[:ku], check_finite=False) * sd + np.outer(c_int, mu)
    b = coef_c[ku:] * sd
    spline = T0 @ theta_u[k:] + Tp @ b if K else np.zeros((0, p))
    coef = np.vstack([theta_u[:k], spline])
    sigma2 = sigma2_c * sd**2
    return SmoothMixedFit(coef=coef, sigma2=sigma2, tau2=rho * sigma2, smoothing=lam, edf=edf, loglik=loglik,
                          blup=blup_c * sd, boundary=rho == 0.0, identified=identified)
