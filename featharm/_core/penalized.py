"""Penalized regression splines with a smoothing parameter per feature (``docs/methods.md`` §2).

Every feature ``y`` is fitted as ``y = W theta + Z b`` with a roughness penalty on the spline part ``Z b``:
the design is reparametrized once into unpenalized and unit-penalty directions (one eigen-decomposition
of each penalty), and one SVD of the penalized block, projected off the unpenalized one
(Demmler–Reinsch), turns REML and GCV into sums over its singular values, so the smoothing parameter of
every feature is chosen at once (:func:`select_lambda`). :func:`fit_kfold_neuroharmonize` reproduces
neuroHarmonize 2.5's seeded k-fold search instead.
"""

from __future__ import annotations

import itertools

import numpy as np
import scipy.linalg as sla

from ..exceptions import ConfoundingError
from .blocks import column_variance, iter_blocks

__all__ = ["fit_penalized", "fit_kfold_neuroharmonize", "select_lambda", "criterion", "penalty_reparam"]

NH_ALPHAS = np.logspace(0, 7, 11)  # statsmodels' default k-fold grid (k_grid=11)
N_GRID = 121  # log-lambda grid points of the default criterion search
BISECTIONS = 60


def penalty_reparam(Z: np.ndarray, penalties):
    """Split the spline block into unpenalized (null-space) and unit-penalty directions.

    Returns ``Z_null`` (n × k0), ``Z_pen`` (n × r) and the map ``T`` (K × (k0 + r)) with
    ``theta_spline = T @ [theta_null; b]``.
    """
    K = Z.shape[1]
    sizes = [P.shape[0] for P in penalties]
    starts = np.cumsum([0] + sizes)
    null_cols, pen_cols = [], []
    for j, P in enumerate(penalties):
        Zj = Z[:, starts[j]:starts[j + 1]]
        # put the terms on a comparable scale (only matters with several smooth terms)
        scale = np.linalg.norm(Zj.T @ Zj) / np.linalg.norm(P) if len(penalties) > 1 else 1.0
        s, U = np.linalg.eigh(P * scale)
        tol = 1e-9 * s.max()
        for col, sv in zip(U.T, s):
            full = np.zeros(K)
            full[starts[j]:starts[j + 1]] = col
            if sv <= tol:
                null_cols.append(full)
            else:
                pen_cols.append(full / np.sqrt(sv))
    T0 = np.array(null_cols).T.reshape(K, -1)
    Tp = np.array(pen_cols).T.reshape(K, -1)
    return Z @ T0, Z @ Tp, T0, Tp


def criterion(lam, d2, c2, r_perp, n, ku, method):
    """REML or GCV at smoothing ``lam`` (broadcast: lam (..., p), d2 (r, 1), c2 (r, p), r_perp (p,))."""
    w = lam / (d2 + lam)  # shrinkage of each direction, (r, p) or (g, r, p)
    if method == "GCV":
        rss = r_perp + np.sum(w * w * c2, axis=-2)
        edf = ku + np.sum(1.0 - w, axis=-2)
        return np.log(rss) - 2.0 * np.log(np.maximum(n - edf, 1e-12))  # log GCV (up to log n)
    quad = r_perp + np.sum(w * c2, axis=-2)
    logdet = np.sum(np.log1p(d2 / lam), axis=-2)
    return logdet + (n - ku) * np.log(quad)  # -2 restricted log-likelihood, sigma^2 profiled out


def criterion_slope(lam, d2, c2, r_perp, n, ku, method):
    """Derivative of :func:`criterion` with respect to ``log lambda`` (same broadcasting)."""
    w = lam / (d2 + lam)
    dw = w * (1.0 - w)  # d w / d log(lambda)
    if method == "GCV":
        rss = r_perp + np.sum(w * w * c2, axis=-2)
        edf = ku + np.sum(1.0 - w, axis=-2)
        return np.sum(2.0 * w * dw * c2, axis=-2) / rss - 2.0 * np.sum(dw, axis=-2) / np.maximum(n - edf, 1e-12)
    quad = r_perp + np.sum(w * c2, axis=-2)
    return -np.sum(1.0 - w, axis=-2) + (n - ku) * np.sum(dw * c2, axis=-2) / quad


def select_lambda(d2, c2, r_perp, n, ku, method, shared, use=None):
    """Minimize the criterion over log lambda for every feature, vectorized over features.

    A grid over log lambda locates the global minimum; the root of the criterion's derivative between
    the neighbouring grid points is then found by bisection (60 halvings). Working on the derivative,
    not on the flat criterion itself, pins lambda down to rounding, so the result does not depend on the
    row order or the scale of a feature. ``shared``: one lambda minimizing the criterion summed over the
    features in ``use`` (default all).
    """
    if use is None or not use.any():
        use = np.ones(c2.shape[1], dtype=bool)
    lo = np.log(max(d2.min(), 1e-300)) - 12.0
    hi = np.log(d2.max()) + 12.0
    grid = np.linspace(lo, hi, N_GRID)
    d2c = d2[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):  # features with no residual give -inf/nan
        crit = np.stack([criterion(np.exp(g), d2c, c2, r_perp, n, ku, method) for g in grid])  # (G, p)
    crit = np.where(np.isnan(crit), np.inf, crit)
    if shared:
        crit = crit[:, use].sum(axis=1, keepdims=True)
    best = np.argmin(crit, axis=0)
    a = grid[np.maximum(best - 1, 0)]
    b = grid[np.minimum(best + 1, N_GRID - 1)]

    def slope(rho):  # rho: (p,), or (1,) when shared
        with np.errstate(divide="ignore", invalid="ignore"):
            val = criterion_slope(np.exp(rho)[None, :], d2c, c2, r_perp, n, ku, method)
        return val[..., use].sum(keepdims=True) if shared else val

    bracketed = (slope(a) < 0) & (slope(b) > 0)
    for _ in range(BISECTIONS):
        mid = 0.5 * (a + b)
        up = slope(mid) > 0
        b = np.where(up, mid, b)
        a = np.where(up, a, mid)
    rho = np.where(bracketed, 0.5 * (a + b), grid[best])
    return np.broadcast_to(np.exp(rho), (c2.shape[1],)).copy()


def fit_penalized(Y, Wfix, Z, penalties, terms, *, method, shared, batch_name, linear_rtol):
    """Penalized least squares of every feature with its own smoothing parameter (see module docstring).

    Returns the coefficients on ``[Wfix | Z]`` ((k + K) × p), the smoothing parameters and the effective
    degrees of freedom of the smooth part.
    """
    n, p = Y.shape
    Z0, Zp, T0, Tp = penalty_reparam(Z, penalties)
    Wu = np.hstack([Wfix, Z0])
    Q, R = np.linalg.qr(Wu, mode="reduced")
    diag = np.abs(np.diag(R))
    if diag.size and diag.min() <= 1e-9 * diag.max():
        raise ConfoundingError(
            f"the linear trend of smooth term(s) {terms} is confounded with {batch_name!r} and the linear "
            f"covariates (e.g. the covariate is constant within each {batch_name}); its effect cannot be told "
            "apart from the site effects. Drop it or model it differently."
        )
    ku = Wu.shape[1]
    Zt = Zp - Q @ (Q.T @ Zp)
    U, d, Vt = np.linalg.svd(Zt, full_matrices=False)
    keep = d > 1e-10 * max(d.max(), 1e-300)
    U, d, Vt = U[:, keep], d[keep], Vt[keep]
    d2 = d * d
    # c = U' (I - H_u) y = U' y (U is orthogonal to the span of W_u); r_perp = ||(I - H_u) y||^2 - ||c||^2
    QtY = Q.T @ Y
    c = U.T @ Y
    r_perp = np.empty(p)
    for blk in iter_blocks(p, n):
        Rb = Y[:, blk] - Q @ QtY[:, blk]
        r_perp[blk] = np.einsum("ij,ij->j", Rb, Rb)
    r_perp = np.maximum(r_perp - np.sum(c * c, axis=0), 0.0)
    c2 = c * c
    use = None
    if shared:  # features the spline and covariates fit exactly (constant, a covariate passed again) have a
        # degenerate criterion (log of rounding) that would pick everyone's lambda: left out of the sum
        # (``linear_rtol``: the family's test for such features, on the residual of the unpenalized fit)
        resid = r_perp / n
        use = (resid > linear_rtol * column_variance(Y)) & (resid > (1e-11 * Y.mean(axis=0)) ** 2)
    lam = select_lambda(d2, c2, r_perp, n, ku, method, shared, use)
    shrink = d[:, None] / (d2[:, None] + lam[None, :])  # (r, p)
    b = Vt.T @ (shrink * c)  # coefficients on Zp
    theta_u = sla.solve_triangular(R, QtY - (Q.T @ Zp) @ b, check_finite=False)
    k = Wfix.shape[1]
    spline = T0 @ theta_u[k:] + Tp @ b
    edf = Z0.shape[1] + np.sum(d2[:, None] / (d2[:, None] + lam[None, :]), axis=0)
    return np.vstack([theta_u[:k], spline]), lam, edf


def fit_kfold_neuroharmonize(Y, Wlin, Z, penalties, seed, progress=None):
    """neuroHarmonize 2.5's per-feature fit: alpha by seeded 5-fold CV, then the penalized fit.

    statsmodels' GLMGam (Gaussian, identity) solves ``(W'W + 2 S_alpha) theta = W'y`` with
    ``S_alpha = blockdiag(0, alpha_j S_j)``; ``select_penweight_kfold`` evaluates every grid point with
    a fresh shuffle of the rows from the shared generator, cost ``||y - y_hat|| / n_test`` averaged over
    folds, and the first minimum wins. Returns the coefficients and ``2 alpha`` (the penalty weight).
    """
    n, p = Y.shape
    W = np.hstack([Wlin, Z])
    k = W.shape[1]
    kl = Wlin.shape[1]
    sizes = [P.shape[0] for P in penalties]
    starts = np.cumsum([kl] + sizes)
    grid = list(itertools.product(*[NH_ALPHAS] * len(penalties)))
    S_grid = []
    for alphas in grid:
        S = np.zeros((k, k))
        for j, (a, P) in enumerate(zip(alphas, penalties)):
            S[starts[j]:starts[j + 1], starts[j]:starts[j + 1]] = 2.0 * a * P
        S_grid.append(S)
    G = W.T @ W
    WY = W.T @ Y
    rng = np.random.default_rng(seed)
    coef = np.empty((k, p))
    lam = np.empty(p)
    if True:
        for v in range(p):
            y = Y[:, v]
            errs = np.empty(len(grid))
            for g, S in enumerate(S_grid):
                index = np.arange(n)
                rng.shuffle(index)
                fold_err = []
                for fold in np.array_split(index, 5):
                    Wf = W[fold]
                    Gt = G - Wf.T @ Wf
                    rhs = WY[:, v] - Wf.T @ y[fold]
                    theta = np.linalg.solve(Gt + S, rhs)
                    fold_err.append(np.linalg.norm(y[fold] - Wf @ theta) / len(fold))
                errs[g] = np.array(fold_err).mean()
            best = int(np.argmin(errs))
            coef[:, v] = np.linalg.solve(G + S_grid[best], WY[:, v])
            lam[v] = 2.0 * grid[best][0]
            if progress is not None:
                progress()
    return coef, lam
