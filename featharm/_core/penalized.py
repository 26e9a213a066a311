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
from .blocks import column_variance, crossprod, iter_blocks, run_blocks

__all__ = ["fit_penalized", "penalty_transform", "fit_penalized_observed",
           "fit_kfold_neuroharmonize", "select_lambda", "criterion", "penalty_reparam"]

NH_ALPHAS = np.logspace(0, 7, 11)  # statsmodels' default k-fold grid (k_grid=11)
N_GRID = 121  # log-lambda grid points of the default criterion search
BISECTIONS = 60


def penalty_transform(K: int, penalties, gram_norms=None):
    """The maps ``T0`` (K × k0) and ``Tp`` (K × r) onto the unpenalized (null-space) and unit-penalty
    directions of the spline block, ``theta_spline = T0 theta_null + Tp b``.

    ``gram_norms``: the Frobenius norm of each term's basis cross-product ``Z_j'Z_j`` (used to put several
    terms on a comparable scale; ignored with one term). Needs no rows: :func:`penalty_reparam` computes
    the norms from ``Z``, a fit from statistics from ``Σxxᵀ``.
    """
    sizes = [P.shape[0] for P in penalties]
    starts = np.cumsum([0] + sizes)
    null_cols, pen_cols = [], []
    for j, P in enumerate(penalties):
        # put the terms on a comparable scale (only matters with several smooth terms)
        scale = gram_norms[j] / np.linalg.norm(P) if len(penalties) > 1 else 1.0
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
    return T0, Tp


def penalty_reparam(Z: np.ndarray, penalties):
    """Split the spline block into unpenalized (null-space) and unit-penalty directions.

    Returns ``Z_null`` (n × k0), ``Z_pen`` (n × r) and the map ``T`` (K × (k0 + r)) with
    ``theta_spline = T @ [theta_null; b]`` (as ``T0``, ``Tp``; see :func:`penalty_transform`).
    """
    K = Z.shape[1]
    starts = np.cumsum([0] + [P.shape[0] for P in penalties])
    norms = None
    if len(penalties) > 1:
        norms = [np.linalg.norm(Z[:, starts[j]:starts[j + 1]].T @ Z[:, starts[j]:starts[j + 1]])
                 for j in range(len(penalties))]
    T0, Tp = penalty_transform(K, penalties, norms)
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


def _unpenalized_qr(Wu: np.ndarray):
    """Thin QR of the unpenalized columns and whether they have full rank (no diagonal of R below 1e-9
    of the largest)."""
    Q, R = np.linalg.qr(Wu, mode="reduced")
    diag = np.abs(np.diag(R))
    return Q, R, not (diag.size and diag.min() <= 1e-9 * diag.max())


def _spline_svd(Q: np.ndarray, Zp: np.ndarray):
    """The penalized directions projected off the unpenalized span, ``Z~ = U D V'`` (Demmler–Reinsch),
    without the directions the projection removed entirely."""
    Zt = Zp - Q @ (Q.T @ Zp)
    U, d, Vt = np.linalg.svd(Zt, full_matrices=False)
    keep = d > 1e-10 * max(d.max(), 1e-300)
    return U[:, keep], d[keep], Vt[keep]


def _projections(Y: np.ndarray, Q: np.ndarray, U: np.ndarray):
    """``Q'Y``, ``c = U'(I - H_u) y = U'y`` (U is orthogonal to the span of W_u) and
    ``r_perp = ||(I - H_u) y||^2 - ||c||^2`` of every column of ``Y``."""
    n, p = Y.shape
    QtY = np.empty((Q.shape[1], p))
    c = np.empty((U.shape[1], p))
    r_perp = np.empty(p)

    def part(some):  # blocks of features, dealt between threads with one BLAS thread each: the numbers
        for blk in some:  # do not depend on the number of threads
            Yb = Y[:, blk]
            QtY[:, blk] = Q.T @ Yb
            c[:, blk] = U.T @ Yb
            Rb = Yb - Q @ QtY[:, blk]
            r_perp[blk] = np.einsum("ij,ij->j", Rb, Rb)

    run_blocks(part, list(iter_blocks(p, n)), Y.size)
    r_perp = np.maximum(r_perp - np.sum(c * c, axis=0), 0.0)
    return QtY, c, r_perp


def _degenerate(r_perp, n, Y, linear_rtol):
    """Features the spline and covariates fit exactly (constant, a covariate passed again): their criterion
    is the log of rounding, so they are left out of a shared smoothing parameter's sum."""
    resid = r_perp / n
    return (resid > linear_rtol * column_variance(Y)) & (resid > (1e-11 * Y.mean(axis=0)) ** 2)


def _solve_coef(Q, R, Zp, U, d, Vt, QtY, c, lam, T0, Tp, k):
    """Coefficients on ``[Wfix | Z]`` and the effective degrees of freedom at smoothing ``lam``."""
    d2 = d * d
    shrink = d[:, None] / (d2[:, None] + lam[None, :])  # (r, p)
    b = Vt.T @ (shrink * c)  # coefficients on Zp
    theta_u = sla.solve_triangular(R, QtY - (Q.T @ Zp) @ b, check_finite=False)
    spline = T0 @ theta_u[k:] + Tp @ b
    edf = T0.shape[1] + np.sum(d2[:, None] / (d2[:, None] + lam[None, :]), axis=0)
    return np.vstack([theta_u[:k], spline]), edf


def fit_penalized(Y, Wfix, Z, penalties, terms, *, method, shared, batch_name, linear_rtol):
    """Penalized least squares of every feature with its own smoothing parameter (see module docstring).

    Returns the coefficients on ``[Wfix | Z]`` ((k + K) × p), the smoothing parameters and the effective
    degrees of freedom of the smooth part.
    """
    n, p = Y.shape
    Z0, Zp, T0, Tp = penalty_reparam(Z, penalties)
    Wu = np.hstack([Wfix, Z0])
    Q, R, full_rank = _unpenalized_qr(Wu)
    if not full_rank:
        raise ConfoundingError(
            f"the linear trend of smooth term(s) {terms} is confounded with {batch_name!r} and the linear "
            f"covariates (e.g. the covariate is constant within each {batch_name}); its effect cannot be told "
            "apart from the site effects. Drop it or model it differently."
        )
    ku = Wu.shape[1]
    U, d, Vt = _spline_svd(Q, Zp)
    d2 = d * d
    QtY, c, r_perp = _projections(Y, Q, U)
    c2 = c * c
    use = _degenerate(r_perp, n, Y, linear_rtol) if shared else None
    lam = select_lambda(d2, c2, r_perp, n, ku, method, shared, use)
    coef, edf = _solve_coef(Q, R, Zp, U, d, Vt, QtY, c, lam, T0, Tp, Wfix.shape[1])
    return coef, lam, edf


def _select_shared(groups, method):
    """One smoothing parameter for features fitted on different rows (missingness patterns): the minimum of
    the criterion summed over every group's features (:func:`select_lambda` with ``shared``, over groups).
    ``groups``: ``(d2, c2, r_perp, n, ku, use)`` of each group."""
    if not any(g[5].any() for g in groups):
        groups = [(*g[:5], np.ones_like(g[5])) for g in groups]
    lo = min(np.log(max(g[0].min(), 1e-300)) for g in groups) - 12.0
    hi = max(np.log(g[0].max()) for g in groups) + 12.0
    grid = np.linspace(lo, hi, N_GRID)
    total = np.zeros(N_GRID)
    for d2, c2, r_perp, n, ku, use in groups:
        with np.errstate(divide="ignore", invalid="ignore"):
            crit = np.stack([criterion(np.exp(x), d2[:, None], c2[:, use], r_perp[use], n, ku, method) for x in grid])
        total += np.where(np.isnan(crit), np.inf, crit).sum(axis=1)
    best = int(np.argmin(total))
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, N_GRID - 1)]

    def slope(rho):
        out = 0.0
        for d2, c2, r_perp, n, ku, use in groups:
            with np.errstate(divide="ignore", invalid="ignore"):
                out += criterion_slope(np.exp(rho), d2[:, None], c2[:, use], r_perp[use], n, ku, method).sum()
        return out

    if not (slope(a) < 0 < slope(b)):
        return float(np.exp(grid[best]))
    for _ in range(BISECTIONS):
        mid = 0.5 * (a + b)
        if slope(mid) > 0:
            b = mid
        else:
            a = mid
    return float(np.exp(0.5 * (a + b)))


def fit_penalized_observed(Y, mask, Wfix, Z, penalties, *, n_batch, method, shared, linear_rtol, names):
    """:func:`fit_penalized` of every feature on its observed rows (``mask`` True = missing, §1.8).

    The basis ``Z`` and its penalty reparametrization are those of all rows (frozen, as without missing
    values); each feature's unpenalized QR, spline SVD, criterion and smoothing parameter come from its own
    observed rows. Features missing on the same rows (a missingness pattern) share one decomposition and
    are solved at once. A batch indicator (one of the first ``n_batch`` columns of ``Wfix``) without an
    observed row is dropped from that pattern's regression and its coefficient is NaN. ``shared``: one
    smoothing parameter for all features (the criterion summed over every pattern's features).
    ``Y`` holds 0 in the missing cells. Returns coefficients ((k + K) × p), smoothing parameters and edf.
    """
    from .missing import missingness_patterns

    n, p = Y.shape
    k = Wfix.shape[1]
    Z0, Zp, T0, Tp = penalty_reparam(Z, penalties)  # frozen on all rows: the same basis and penalty as the fit
    coef = np.full((k + Z.shape[1], p), np.nan)
    lam = np.empty(p)
    edf = np.empty(p)
    first, inverse = missingness_patterns(mask)

    def decompose(u):
        rows = ~mask[:, first[u]]
        feats = np.flatnonzero(inverse == u)
        Wr = Wfix[rows]
        cols = np.ones(k, dtype=bool)
        cols[:n_batch] = Wr[:, :n_batch].any(axis=0)
        Wu = np.hstack([Wr[:, cols], Z0[rows]])
        Q, R, full_rank = _unpenalized_qr(Wu)
        if not full_rank:
            bad = [str(names[j]) for j in feats]
            raise ConfoundingError(
                f"on the rows where they are observed, the design (batch, covariates and the linear trend of the "
                f"smooth terms) of {len(bad)} feature(s) is rank deficient: {bad[:5]}{' ...' if len(bad) > 5 else ''} "
                "(a covariate constant within batches, or a combination of the others, once the missing rows are "
                "left out). Drop those features or that covariate."
            )
        Zr = Zp[rows]
        U, d, Vt = _spline_svd(Q, Zr)
        Yr = Y[rows][:, feats]
        QtY, c, r_perp = _projections(Yr, Q, U)
        return rows, feats, cols, Wu.shape[1], Q, R, Zr, U, d, Vt, QtY, c, r_perp, Yr

    def finish(parts, lam_u):
        rows, feats, cols, ku, Q, R, Zr, U, d, Vt, QtY, c, r_perp, Yr = parts
        kk = int(cols.sum())
        cf, e = _solve_coef(Q, R, Zr, U, d, Vt, QtY, c, lam_u, T0, Tp, kk)
        coef[np.ix_(np.flatnonzero(cols), feats)] = cf[:kk]
        coef[k:, feats] = cf[kk:]
        lam[feats], edf[feats] = lam_u, e

    if not shared:
        for u in range(first.size):
            parts = decompose(u)
            rows, feats, cols, ku, *_, d, Vt, QtY, c, r_perp, Yr = parts
            finish(parts, select_lambda(d * d, c * c, r_perp, int(rows.sum()), ku, method, False))
        return coef, lam, edf
    stats = []
    for u in range(first.size):  # first pass: the criterion's ingredients (small) of every pattern
        rows, feats, cols, ku, *_, d, Vt, QtY, c, r_perp, Yr = decompose(u)
        nu = int(rows.sum())
        stats.append((d * d, c * c, r_perp, nu, ku, _degenerate(r_perp, nu, Yr, linear_rtol)))
    shared_lam = _select_shared(stats, method)
    for u in range(first.size):  # second pass: the decompositions again (not kept: one n × k per pattern)
        parts = decompose(u)
        finish(parts, np.full(parts[1].size, shared_lam))
    return coef, lam, edf


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
    WY = crossprod(W, Y)
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
