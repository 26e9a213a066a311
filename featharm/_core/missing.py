"""ComBat with missing feature values (NaN cells): S1–S7 on each feature's observed rows (``docs/methods.md`` §1.8).

Available-case, cell-wise, "NaN in, NaN out": every estimate of feature ``v`` uses the rows where ``v`` is
observed and no cell is ever filled. The formulas are R neuroCombat 1.0.14's missing-value path (checked to
1e-9 on the reference data ``small_cs_na``), extended where R stops:

* S1: least squares of each feature on its observed rows. ``W'Y`` comes from one GEMM with the missing
  cells set to 0; the Gram matrix of feature ``v``'s observed rows is ``W'W`` minus that of its missing rows,
  computed once per *missingness pattern* (features missing on the same rows share it). A batch with no
  observed value of ``v`` has its indicator column dropped from ``v``'s regression (its coefficient is NaN).
* S2: grand mean weighted by the **full** batch sizes ``n_i / n`` (as R), renormalized over the batches
  that have an observed value of ``v`` when some have none (a featharm choice; R stops).
* S3: pooled variance = observed squared residuals / ``n_v`` (``ddof=1``: ``/ (n_v - 1)``, sva's
  missing-value path); with a reference batch, its observed cells over their count.
* S5: ``gamma_hat``, ``delta_hat`` from the observed standardized values (``delta_hat`` with ``n_iv - 1``;
  NaN when ``n_iv <= 1``; both NaN for an empty batch × feature).
* S6: priors across features, skipping undefined ``gamma_hat`` / ``delta_hat`` (R: one NaN ``delta_hat``
  makes the scale priors NaN).
* S7: ``n = n_iv`` per feature; ``n_iv = 1`` starts the parametric iteration from the prior mean of
  ``delta^2``; ``n_iv = 0`` gives the posterior under no data, the prior (parametric: ``gamma_bar``,
  ``b / (a - 1)``; non-parametric: the unweighted prior sample); the non-parametric prior sample leaves out
  features whose estimates are undefined.

S6–S7 over all batches is :func:`featharm._core.eb.posterior`'s driver with the m × p counts and this
module's :func:`eb_priors` and :func:`site_posterior` (:func:`posterior`). S8 (the adjustment) needs nothing new: :func:`featharm._core.eb.adjust` is cell-wise, so NaN cells stay NaN.
Arrays only, samples × features, float64; ``mask`` is True where a cell is missing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg.blas import dgemm

from . import eb
from .blocks import crossprod
from .ols import sub_gemm

__all__ = [
    "missing_cells",
    "cells_in",
    "observed_counts",
    "missingness_patterns",
    "ObservedGrams",
    "observed_grams",
    "observed_coef",
    "observed_residual_ss",
    "standardized_moments",
    "observed_variance",
    "batch_moments",
    "grouped_moments",
    "pooled_mean",
    "eb_priors",
    "eb_nonparametric",
    "site_posterior",
    "posterior",
]

# A design whose Gram matrix on a feature's observed rows, scaled to unit diagonal, has an eigenvalue
# below this is rank deficient there (about a column left with a relative residual of 1e-6, the rank rule
# of featharm.design.check_full_rank).
RANK_RTOL = 1e-12


def missing_cells(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(cols, rows)`` of every missing cell, column by column and down each column (one scan of ``mask``;
    pass it to :func:`observed_counts` and :func:`observed_grams` to scan once)."""
    return np.nonzero(mask.T)  # mask is Fortran-ordered: its transpose is scanned in memory order


def cells_in(cells: tuple[np.ndarray, np.ndarray], columns: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
    """The :func:`missing_cells` of ``mask[:, columns]`` from those of ``mask`` (p columns), in the same order."""
    position = np.full(p, -1, dtype=np.intp)
    position[columns] = np.arange(columns.size)
    where = position[cells[0]]
    keep = where >= 0
    return where[keep], cells[1][keep]


def observed_counts(mask: np.ndarray, codes: np.ndarray, counts: np.ndarray, cells=None) -> np.ndarray:
    """``n_obs`` (m × p): observed values of every feature in every batch (batch sizes minus missing cells).
    ``cells``: the :func:`missing_cells` of ``mask`` when already known."""
    m = counts.shape[0]
    p = mask.shape[1]
    cols, rows = missing_cells(mask) if cells is None else cells
    miss = np.bincount(codes[rows] * p + cols, minlength=m * p).reshape(m, p)
    return counts[:, None] - miss


def missingness_patterns(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Features grouped by identical missing rows: ``first`` (a column of each distinct pattern) and
    ``inverse`` (the pattern of every column), from ``np.unique`` over the bit-packed columns."""
    packed = np.ascontiguousarray(np.packbits(mask, axis=0).T)  # p × ceil(n/8)
    keys = packed.view(np.dtype((np.void, packed.shape[1]))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return first, inverse.ravel()


@dataclass
class ObservedGrams:
    """The Gram matrices of the design on each feature's observed rows, one per missingness pattern (S1).

    ``G[u]`` (k × k) belongs to the features ``inverse == u``; a batch with no observed row in pattern ``u``
    (``absent[u]``) has its row and column replaced by the identity's (its coefficient is then 0, and NaN in
    :func:`observed_coef`). ``deficient`` are the features whose design is rank deficient on their observed
    rows and ``column[i]`` the design column most involved for ``deficient[i]``.
    """

    inverse: np.ndarray  # (p,) pattern of every feature
    G: np.ndarray  # (U, k, k)
    absent: np.ndarray  # (U, m) bool
    deficient: np.ndarray
    column: np.ndarray


def observed_grams(X: np.ndarray, codes: np.ndarray, batch_rows: np.ndarray, mask: np.ndarray,
                   cells=None) -> ObservedGrams:
    """``W_v' W_v`` for the design ``W = [B | X]`` restricted to each feature's observed rows (``mask`` False).

    ``B``'s row for a row of batch ``s`` is ``batch_rows[s]`` (the identity's, or with a reference batch
    that plus a column of ones). Features with identical missing rows share one matrix (:func:`missingness_patterns`),
    computed from the batch counts and the per-batch sums of ``X`` and of ``x x'`` over the missing rows
    of the pattern, all patterns at once (no loop over patterns or features): the batch block
    ``batch_rows' diag(n_obs) batch_rows`` is exact, the covariate blocks are the full sums less those of
    the missing rows. The rank on the observed rows is that of the covariates' within-batch part: ``X``'s
    cross-products after the batch means of the observed rows are taken out (the Schur complement of
    the batch block, the same for any coding of the batches); scaled by each column's spread about its
    observed mean, an eigenvalue below :data:`RANK_RTOL` is a rank-deficient design. ``cells``: the
    :func:`missing_cells` of ``mask`` when already known (the same numbers, one scan of the mask fewer).
    """
    n, q = X.shape
    m = batch_rows.shape[0]
    k = m + q
    first, inverse = missingness_patterns(mask)
    U = first.size
    if cells is None:
        cols, rows = np.nonzero(mask[:, first].T)  # pattern and row of every missing cell of the patterns
    else:  # the cells of each pattern's first column, in the same order (down the column)
        cols, rows = cells_in(cells, first, mask.shape[1])
    key = cols * m + codes[rows]
    counts = np.bincount(codes, minlength=m).astype(np.float64)
    n_obs = counts[None, :] - np.bincount(key, minlength=U * m).reshape(U, m)  # (U, m)
    sx = np.empty((U, m, q))  # per-pattern, per-batch sums of x over the observed rows
    xx = np.empty((U, q, q))
    XtX = X.T @ X
    for j in range(q):
        total = np.bincount(codes, weights=X[:, j], minlength=m)
        sx[:, :, j] = total[None, :] - np.bincount(key, weights=X[rows, j], minlength=U * m).reshape(U, m)
        for l in range(j, q):
            xx[:, j, l] = XtX[j, l] - np.bincount(cols, weights=X[rows, j] * X[rows, l], minlength=U)
            xx[:, l, j] = xx[:, j, l]
    G = np.empty((U, k, k))
    G[:, :m, :m] = np.matmul(batch_rows.T, n_obs[:, :, None] * batch_rows[None])
    G[:, :m, m:] = np.matmul(batch_rows.T, sx)
    G[:, m:, :m] = np.swapaxes(G[:, :m, m:], 1, 2)
    G[:, m:, m:] = xx
    absent = n_obs <= 0
    uu, jj = np.nonzero(absent)
    G[uu, jj, :] = 0.0
    G[uu, :, jj] = 0.0
    G[uu, jj, jj] = 1.0
    # rank: the covariates' within-batch cross-products on the observed rows, scaled by their spread
    bad_u = np.zeros(U, dtype=bool)
    column_u = np.zeros(U, dtype=np.intp)
    if q:
        with np.errstate(divide="ignore", invalid="ignore"):
            means = np.where(absent[:, :, None], 0.0, sx / n_obs[:, :, None])
            S = xx - np.matmul(np.swapaxes(sx, 1, 2), means)  # (U, q, q)
            nt = n_obs.sum(axis=1)
            tot = sx.sum(axis=1)
            spread = np.einsum("uii->ui", xx) - tot * tot / nt[:, None]  # centred sums of squares
            d = np.sqrt(np.where(spread > 0, spread, 0.0))
            C = S / d[:, :, None] / d[:, None, :]
        C[~np.isfinite(C)] = 0.0
        lam, vec = np.linalg.eigh(C)
        bad_u = ~(lam[:, 0] > RANK_RTOL)
        column_u = m + np.argmax(np.abs(vec[:, :, 0]), axis=1)
    deficient = np.flatnonzero(bad_u[inverse])
    return ObservedGrams(inverse, G, absent, deficient, column_u[inverse[deficient]])


def observed_coef(grams: ObservedGrams, features: np.ndarray, WtY: np.ndarray) -> np.ndarray:
    """S1 coefficients (k × b) of the ``features`` (positions in the table the grams were made from) from
    ``W'Y`` with their missing cells as 0 (``WtY``, k × b): NaN for absent batches and for features whose
    design is rank deficient on their observed rows."""
    u = grams.inverse[features]
    m = grams.absent.shape[1]
    absent = grams.absent[u]  # (b, m)
    rhs = np.ascontiguousarray(WtY.T)[:, :, None]  # b × k × 1
    rhs[:, :m][absent] = 0.0
    coef = np.linalg.solve(grams.G[u], rhs)[:, :, 0].T  # one small LU per feature, batched
    coef[:m][absent.T] = np.nan
    if grams.deficient.size:
        coef[:, np.isin(features, grams.deficient)] = np.nan
    return coef


def observed_residual_ss(Y0: np.ndarray, mask: np.ndarray, batch_fit: np.ndarray, X: np.ndarray,
                         coef_x: np.ndarray, codes: np.ndarray, onehot: np.ndarray) -> np.ndarray:
    """Within-batch sums of squared residuals over the observed cells (m × b) of a block of features.

    As :func:`featharm._core.ols.batch_residual_ss`: ``batch_fit`` (m × b) is the fitted batch part of a row
    of each batch (NaN for a batch without observed values: its rows are all missing), ``X`` (n × q) and
    ``coef_x`` the covariate part; missing cells contribute 0.
    """
    R = np.take(np.ascontiguousarray(batch_fit.T), codes, axis=1).T  # n × b, Fortran order
    np.subtract(Y0, R, out=R)
    sub_gemm(np.asfortranarray(X), coef_x, R, -1.0)
    np.copyto(R, 0.0, where=mask)
    np.square(R, out=R)
    return dgemm(1.0, onehot, R, trans_a=1)


def standardized_moments(coef: np.ndarray, ss: np.ndarray, n_obs: np.ndarray, counts: np.ndarray,
                         batch_rows: np.ndarray, ref: int | None = None, mean_only: bool = False,
                         ddof: int = 0) -> eb.Standardization:
    """S2–S5 from each feature's observed rows (:func:`featharm._core.eb.standardized_moments` with NaN cells).

    ``n_obs`` (m × p) are the observed counts. The grand mean weights the batch intercepts by the full
    batch sizes ``counts``, over the batches present for the feature; the pooled variance divides the
    observed squared residuals by ``n_v - ddof`` (reference batch: its own observed cells over their
    count). Residuals average to zero within every batch over its observed rows (the batch indicators are
    in each feature's regression), so the batch mean of ``z`` is ``(batch_rows @ coef[:m] - alpha) / sigma``
    and its variance ``ss_iv / ((n_iv - 1) sigma^2)``: NaN when ``n_iv <= 1``, both NaN when ``n_iv = 0``.
    """
    m = counts.shape[0]
    present = n_obs > 0
    beta_b = np.where(present, coef[:m], 0.0)
    if ref is None:
        w = np.where(present, counts[:, None], 0.0)
        alpha = (w * beta_b).sum(axis=0) / w.sum(axis=0)  # S2 (= (counts / n) @ beta_b with every batch present)
        var = ss.sum(axis=0) / (n_obs.sum(axis=0) - ddof)  # S3
    else:
        alpha = beta_b[ref].copy()
        var = ss[ref] / n_obs[ref]
    sigma = np.sqrt(var)
    with np.errstate(divide="ignore", invalid="ignore"):
        gamma_hat = np.where(present, (batch_rows @ beta_b - alpha) / sigma, np.nan)  # S5
        delta_raw = np.where(n_obs > 1, ss / ((n_obs - 1.0) * var[None, :]), np.nan)
    delta_hat = np.where(present, eb.delta_from_raw(delta_raw, mean_only), np.nan)
    return eb.Standardization(alpha, sigma, gamma_hat, delta_hat, delta_raw)


def observed_variance(Y0: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Variance (ddof 0) of every column of ``Y0`` over its observed cells (``Y0`` is 0 where ``mask``)."""
    cnt = (~mask).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = Y0.sum(axis=0) / cnt
        D = Y0 - mean
    np.copyto(D, 0.0, where=mask)
    np.square(D, out=D)
    with np.errstate(divide="ignore", invalid="ignore"):
        return D.sum(axis=0) / cnt


def batch_moments(Z: np.ndarray, mean_only: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """S5 for the rows ``Z`` (n × b, NaN where missing) of one batch: ``gamma_hat``, ``delta_hat``,
    ``delta_raw`` (ddof 1) over each column's observed values, and their counts ``n``."""
    obs = ~np.isnan(Z)
    cnt = obs.sum(axis=0).astype(np.float64)
    Z0 = np.where(obs, Z, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        gamma_hat = Z0.sum(axis=0) / cnt
        D = np.where(obs, Z0 - gamma_hat, 0.0)
        delta_raw = np.where(cnt > 1, (D * D).sum(axis=0) / (cnt - 1.0), np.nan)
    gamma_hat = np.where(cnt > 0, gamma_hat, np.nan)
    delta_hat = np.where(cnt > 0, eb.delta_from_raw(delta_raw, mean_only), np.nan)
    return gamma_hat, delta_hat, delta_raw, cnt


def grouped_moments(Z: np.ndarray, mask: np.ndarray, codes: np.ndarray, n_obs: np.ndarray,
                    mean_only: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """S5 for every batch at once from standardized values ``Z`` (n × p) whose cells ``mask`` are missing:
    ``gamma_hat``, ``delta_hat``, ``delta_raw`` (m × p) over the observed cells of each batch and feature
    (``n_obs`` of them; variance with ``n_iv - 1``). NaN where undefined: both when ``n_iv = 0``,
    ``delta_raw`` / ``delta_hat`` when ``n_iv = 1``. For families whose residuals do not average to zero
    within a batch by construction (a scale model, a mixed model), so the moments are taken of ``Z`` itself."""
    m = n_obs.shape[0]
    onehot = np.zeros((codes.size, m))
    onehot[np.arange(codes.size), codes] = 1.0
    Z0 = np.where(mask, 0.0, Z)
    with np.errstate(divide="ignore", invalid="ignore"):
        g = crossprod(onehot, Z0) / n_obs
        D = Z0 - np.where(n_obs > 0, g, 0.0)[codes]
        np.copyto(D, 0.0, where=mask)
        delta_raw = np.where(n_obs > 1, crossprod(onehot, D * D) / (n_obs - 1.0), np.nan)
    present = n_obs > 0
    gamma_hat = np.where(present, g, np.nan)
    delta_hat = np.where(present, eb.delta_from_raw(delta_raw, mean_only), np.nan)
    return gamma_hat, delta_hat, delta_raw


def pooled_mean(batch_coef: np.ndarray, n_obs: np.ndarray, counts: np.ndarray, ref: int | None = None) -> np.ndarray:
    """S2 with missing values: the batch intercepts (m × p, NaN for a batch without observed values of a
    feature) weighted by the **full** batch sizes ``counts``, over the batches present for each feature
    (:func:`standardized_moments`'s rule); with a reference batch, its intercept."""
    present = n_obs > 0
    beta_b = np.where(present, batch_coef, 0.0)
    if ref is not None:
        return beta_b[ref].copy()
    w = np.where(present, counts[:, None], 0.0)
    return (w * beta_b).sum(axis=0) / w.sum(axis=0)


def _row_moments(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance (ddof 1) of each row of ``A`` over its finite entries."""
    ok = np.isfinite(A)
    cnt = ok.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(ok, A, 0.0).sum(axis=1) / cnt
        dev = np.where(ok, A - mean[:, None], 0.0)
        var = (dev * dev).sum(axis=1) / (cnt - 1.0)
    return mean, var


def eb_priors(gamma_hat: np.ndarray, delta_hat: np.ndarray, mean_only: bool = False) -> eb.Priors:
    """S6 with undefined estimates (NaN) left out: each batch's moments over the features it has."""
    gamma_bar, tau2 = _row_moments(gamma_hat)
    m = gamma_hat.shape[0]
    if mean_only:
        nan = np.full(m, np.nan)
        return eb.Priors(gamma_bar, tau2, nan, nan.copy())
    D, S2 = _row_moments(delta_hat)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = (D**2 + 2.0 * S2) / S2
        b = (D**3 + D * S2) / S2
    return eb.Priors(gamma_bar, tau2, a, b)


def eb_nonparametric(gamma_hat: np.ndarray, delta_hat: np.ndarray, delta_raw: np.ndarray, n: np.ndarray,
                     block: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """S7″ for one batch with ``n`` observed values per feature (:func:`featharm._core.eb.eb_nonparametric`).

    The likelihood of feature v uses its own ``n_v`` observed values; the prior sample is the other features
    whose ``gamma_hat`` and ``delta_hat`` are defined. A feature with no observed value (``n_v = 0``) gets
    the unweighted mean of the prior sample.
    """
    p = gamma_hat.shape[0]
    ss_within = np.where(n > 1, (n - 1.0) * np.nan_to_num(delta_raw, nan=0.0), 0.0)
    sample = np.flatnonzero(np.isfinite(gamma_hat) & np.isfinite(delta_hat))
    gp, dp = gamma_hat[sample], delta_hat[sample]
    log2pid = np.log(2.0 * np.pi * dp)
    inv2d = 0.5 / dp
    g_star = np.empty(p)
    d_star = np.empty(p)
    for start in range(0, p, block):
        stop = min(p, start + block)
        rows = np.arange(start, stop)
        nr = n[rows, None]
        with np.errstate(invalid="ignore"):
            diff = gamma_hat[rows, None] - gp[None, :]
            L = -0.5 * nr * log2pid[None, :] - (ss_within[rows, None] + nr * diff * diff) * inv2d[None, :]
        L[n[rows] == 0] = 0.0  # no data: the prior sample, unweighted
        L[rows[:, None] == sample[None, :]] = -np.inf  # leave feature v out of its own prior
        L -= L.max(axis=1, keepdims=True)
        np.exp(L, out=L)
        wsum = L.sum(axis=1)
        g_star[rows] = (L @ gp) / wsum
        d_star[rows] = (L @ dp) / wsum
    return g_star, d_star


def site_posterior(gamma_hat: np.ndarray, delta_hat: np.ndarray, delta_raw: np.ndarray, n: np.ndarray,
                   priors: eb.Priors, i: int, opts: eb.EBOptions) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """S7 for batch ``i`` with ``n`` (per feature) observed values: ``gamma*``, ``delta*``, iterations, converged.

    ``opts.eb`` off: the estimates themselves (the caller has refused the cells where they are undefined).
    """
    if not opts.eb:
        return gamma_hat.copy(), delta_hat.copy(), 0, True
    g_bar, t2 = priors.gamma_bar[i], priors.tau2[i]
    has = n > 0
    if opts.jacobi_iter is not None:  # longCombat's fixed Jacobi updates (LongComBat), the same rules
        a, b = priors.a_prior[i], priors.b_prior[i]
        prior_d = b / (a - 1.0)
        gs = np.full(gamma_hat.shape, g_bar, dtype=np.float64)
        ds = np.full(gamma_hat.shape, prior_d, dtype=np.float64)
        if has.any():
            start = np.where(np.isfinite(delta_hat), delta_hat, prior_d)  # n_iv = 1: from the prior mean
            gs[has], ds[has] = eb.eb_jacobi(gamma_hat[has], start[has], delta_raw[has], n[has], g_bar, t2, a, b,
                                            n_iter=opts.jacobi_iter)
        return gs, ds, int(opts.jacobi_iter), True
    if not opts.parametric:
        dh = np.ones_like(delta_hat) if opts.mean_only else delta_hat
        gs, ds = eb_nonparametric(gamma_hat, np.where(has, dh, np.nan), delta_raw, n)
        if opts.mean_only:
            ds = np.ones_like(ds)
        return gs, ds, 0, True
    if opts.mean_only:
        n_eff = 1.0 if opts.mean_only_form == "sva" else n
        gs = np.where(has, eb._postmean(gamma_hat, g_bar, n_eff, 1.0, t2), g_bar)
        return gs, np.ones_like(gamma_hat), 0, True
    a, b = priors.a_prior[i], priors.b_prior[i]
    prior_d = b / (a - 1.0)  # the prior mean of delta^2: the posterior under no data
    gs = np.full(gamma_hat.shape, g_bar, dtype=np.float64)
    ds = np.full(gamma_hat.shape, prior_d, dtype=np.float64)
    it, ok = 0, True
    if has.any():
        start = np.where(np.isfinite(delta_hat), delta_hat, prior_d)  # n_iv = 1: from the prior mean
        gs[has], ds[has], it, ok = eb.eb_parametric(gamma_hat[has], start[has], delta_raw[has], n[has], g_bar, t2,
                                                    a, b, tol=opts.tol, max_iter=opts.max_iter)
    return gs, ds, it, ok


def posterior(gamma_hat: np.ndarray, delta_hat: np.ndarray, delta_raw: np.ndarray, n_obs: np.ndarray,
              opts: eb.EBOptions, *, keep: np.ndarray | None = None, ref: int | None = None,
              progress=None, groups: np.ndarray | None = None, pooled: np.ndarray | None = None) -> eb.Posterior:
    """S6–S7 over all batches with ``n_obs`` (m × p) observed values: :func:`featharm._core.eb.posterior`
    with this module's priors (undefined estimates left out) and per-feature posteriors.

    Priors from the features in ``keep`` whose estimates are defined; features outside ``keep`` keep
    ``gamma_hat`` / ``delta_hat``; the reference batch gets ``gamma* = 0``, ``delta* = 1`` and NaN priors.
    ``groups``/``pooled``: priors per measure group, as :func:`featharm._core.eb.posterior`.
    """
    return eb.posterior(gamma_hat, delta_hat, delta_raw, n_obs, opts, keep=keep, ref=ref, progress=progress,
                        estimators=(eb_priors, site_posterior), groups=groups, pooled=pooled)
