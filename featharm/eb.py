"""The numerical core of the ComBat family, written once (``docs/methods.md`` §1.2, S1–S8).

Every function works on plain float64 arrays laid out samples × features. The data-touching steps
(:func:`location_fit`, :func:`residual_ss`, :func:`adjust`) take a *block* of features, so a caller can
stream a wide table block by block (and an out-of-core engine can reuse them unchanged); everything else
works on the small batch × feature summaries. Model families (ComBat, ComBat-GAM, ComBatLS, CovBat ...)
differ only in how they get the location/scale of each feature and reuse these functions for the rest.

Notation: ``n`` rows, ``p`` features, ``m`` batches, ``codes`` the batch index (0..m-1) of every row,
``W = [B | X]`` the design with the batch indicators ``B`` first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla
from scipy.linalg.blas import dgemm

__all__ = [
    "Priors",
    "QRDesign",
    "location_fit",
    "residual_ss",
    "batch_residual_ss",
    "standardized_moments",
    "eb_priors",
    "eb_parametric",
    "eb_jacobi",
    "eb_mean_only",
    "eb_nonparametric",
    "adjust",
    "iter_blocks",
]


def iter_blocks(p: int, n: int, target_bytes: int = 8 * 2**20):
    """Yield feature slices so that an ``n × block`` float64 array stays near ``target_bytes``."""
    size = max(1, min(p, target_bytes // max(1, 8 * n)))
    for start in range(0, p, size):
        yield slice(start, min(p, start + size))


class QRDesign:
    """The least-squares solver of the design ``W``, computed once for all feature blocks.

    ``coef = (W'W)^-1 W' Y``: the normal equations, solved by a Cholesky factorization of the small
    ``k × k`` Gram matrix, exactly as sva and neuroCombat compute S1 (``solve(crossprod(design), ...)``).
    Only BLAS-3 products touch the ``n × k`` design (a tall LAPACK QR is slow for small ``k`` when BLAS
    threads compete). The caller has checked that ``W`` has full column rank and is not nearly
    confounded (:func:`featharm.design.check_full_rank`); should the Gram matrix still not be positive
    definite, a pseudo-inverse (SVD) is used instead. (The name is historical.)
    """

    def __init__(self, W: np.ndarray):
        self.W = np.asfortranarray(W, dtype=np.float64)
        G = self.W.T @ self.W
        try:
            c = sla.cho_factor(G, lower=False, check_finite=False)
            P = sla.cho_solve(c, self.W.T, check_finite=False)
            ok = np.isfinite(P).all()
        except np.linalg.LinAlgError:
            ok = False
        if not ok:
            P = np.linalg.pinv(self.W)
        self.P = np.ascontiguousarray(P)  # k × n: coef = P Y, one GEMM per block

    def solve(self, Y: np.ndarray) -> np.ndarray:
        """Least-squares coefficients (k × b) of every column of ``Y`` (n × b) on ``W``: S1."""
        return self.P @ Y


def location_fit(qr: QRDesign, Y: np.ndarray) -> np.ndarray:
    """S1: joint OLS of each feature on batch indicators and covariates (coefficients k × b)."""
    return qr.solve(Y)


def _sub_gemm(A: np.ndarray, C: np.ndarray, out: np.ndarray, sign: float) -> None:
    """``out += sign * A @ C`` in place (``out`` Fortran-ordered), without an n × b temporary."""
    if A.shape[1] == 0:
        return
    res = dgemm(sign, A, C, 1.0, out, overwrite_c=True)
    if res is not out and not np.shares_memory(res, out):  # pragma: no cover - BLAS copied
        out[...] = res


def residual_ss(Y: np.ndarray, W: np.ndarray, coef: np.ndarray, onehot: np.ndarray) -> np.ndarray:
    """Sum of squared residuals of ``Y - W @ coef`` within each batch (m × b); ``onehot`` is n × m."""
    R = np.array(Y, dtype=np.float64, order="F", copy=True)
    _sub_gemm(W, coef, R, -1.0)
    np.square(R, out=R)
    return dgemm(1.0, onehot, R, trans_a=1)


def batch_residual_ss(Y: np.ndarray, batch_fit: np.ndarray, X: np.ndarray, coef_x: np.ndarray,
                      codes: np.ndarray, onehot: np.ndarray) -> np.ndarray:
    """:func:`residual_ss` for a design ``[B | X]`` whose batch part is gathered, not multiplied.

    ``batch_fit`` (m × b) is the fitted value of the batch columns for a row of each batch
    (``batch_rows @ coef[:m]``), ``X`` (n × q) the covariate block and ``coef_x`` (q × b) its coefficients.
    The fitted values are ``batch_fit[codes] + X @ coef_x``: a gather and a thin GEMM instead of a GEMM
    with all ``m + q`` columns.
    """
    R = np.take(np.ascontiguousarray(batch_fit.T), codes, axis=1).T  # n × b, Fortran order like Y
    np.subtract(Y, R, out=R)
    _sub_gemm(np.asfortranarray(X), coef_x, R, -1.0)
    np.square(R, out=R)
    return dgemm(1.0, onehot, R, trans_a=1)


@dataclass
class Standardization:
    """S2–S5 for a block of features: everything ComBat needs to standardize and to estimate L/S."""

    alpha: np.ndarray  # (b,) grand mean
    sigma: np.ndarray  # (b,) pooled SD
    gamma_hat: np.ndarray  # (m, b) batch means of z
    delta_hat: np.ndarray  # (m, b) batch variances of z (ddof=1), zeros replaced by 1
    delta_raw: np.ndarray  # (m, b) batch variances of z before that replacement (NaN when n_i = 1)


def standardized_moments(coef: np.ndarray, ss: np.ndarray, counts: np.ndarray, batch_rows: np.ndarray,
                         ref: int | None = None, mean_only: bool = False) -> Standardization:
    """S2–S5 from the OLS coefficients and within-batch residual sums of squares.

    ``batch_rows`` (m × m) holds the batch-indicator row of each batch in the design (the identity, or
    with a reference batch the identity plus a column of ones). Because the batch indicators are in the
    design, residuals have mean zero in every batch; hence the batch mean of ``z`` is
    ``(batch_rows @ coef[:m] - alpha) / sigma`` and its variance ``ss_i / ((n_i - 1) sigma^2)``.
    """
    m = counts.shape[0]
    n = counts.sum()
    beta_b = coef[:m]
    if ref is None:
        alpha = (counts / n) @ beta_b  # S2
        var = ss.sum(axis=0) / n  # S3: divide by n
    else:
        alpha = beta_b[ref].copy()
        var = ss[ref] / counts[ref]
    sigma = np.sqrt(var)
    with np.errstate(divide="ignore", invalid="ignore"):
        gamma_hat = (batch_rows @ beta_b - alpha) / sigma  # S5
        denom = (counts - 1.0)[:, None] * var[None, :]
        delta_raw = np.where(counts[:, None] > 1, ss / denom, np.nan)
    if mean_only:
        delta_hat = np.ones_like(gamma_hat)
    else:
        delta_hat = np.where(delta_raw == 0, 1.0, delta_raw)  # sva/neuroCombat convert_zeroes
    return Standardization(alpha, sigma, gamma_hat, delta_hat, delta_raw)


@dataclass
class Priors:
    """Method-of-moments hyperparameters per batch, taken across features (S6)."""

    gamma_bar: np.ndarray
    tau2: np.ndarray
    a_prior: np.ndarray  # lambda-bar; NaN in mean-only mode
    b_prior: np.ndarray  # theta-bar; NaN in mean-only mode


def eb_priors(gamma_hat: np.ndarray, delta_hat: np.ndarray, mean_only: bool = False) -> Priors:
    """S6: ``gamma_bar``, ``tau2`` and the inverse-gamma ``a``/``b`` of each batch (rows)."""
    gamma_bar = gamma_hat.mean(axis=1)
    tau2 = gamma_hat.var(axis=1, ddof=1)
    m = gamma_hat.shape[0]
    if mean_only:
        nan = np.full(m, np.nan)
        return Priors(gamma_bar, tau2, nan, nan.copy())
    D = delta_hat.mean(axis=1)
    S2 = delta_hat.var(axis=1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = (D**2 + 2.0 * S2) / S2
        b = (D**3 + D * S2) / S2
    return Priors(gamma_bar, tau2, a, b)


def _postmean(g_hat, g_bar, n, d_star, t2):
    return (t2 * n * g_hat + d_star * g_bar) / (t2 * n + d_star)


def eb_parametric(gamma_hat: np.ndarray, delta_hat: np.ndarray, delta_raw: np.ndarray, n: float,
                  gamma_bar: float, tau2: float, a: float, b: float, tol: float = 1e-4,
                  max_iter: int = 1000) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """S7: parametric EB for one batch, vectorized over features.

    Iterates the conditional posterior mean of gamma and mean of delta^2 (Gauss–Seidel: the new delta
    uses the new gamma) until the largest *signed* relative change (sva's criterion) is at most ``tol``.
    ``sum_j (z_j - g)^2`` is computed from the sufficient statistics ``(n - 1) delta_raw + n (gamma_hat - g)^2``.
    A relative change of 0/0 (a feature whose estimate is exactly 0 and does not move) counts as 0.
    Returns ``gamma_star, delta_star (variances), n_iter, converged``.
    """
    ss_within = (n - 1.0) * np.nan_to_num(delta_raw, nan=0.0)
    g_old = gamma_hat.copy()
    d_old = delta_hat.copy()
    it = 0
    converged = False
    while it < max_iter:
        g_new = _postmean(gamma_hat, gamma_bar, n, d_old, tau2)
        sum2 = ss_within + n * (gamma_hat - g_new) ** 2
        d_new = (0.5 * sum2 + b) / (n / 2.0 + a - 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            rg = np.abs(g_new - g_old) / g_old
            rd = np.abs(d_new - d_old) / d_old
        # fmax skips NaN (0/0 counts as no change); inf (a move away from exactly 0) is a change
        change = max(np.fmax.reduce(rg, initial=0.0), np.fmax.reduce(rd, initial=0.0))
        g_old, d_old = g_new, d_new
        it += 1
        if not change > tol:
            converged = True
            break
    return g_old, d_old, it, converged


def eb_jacobi(gamma_hat: np.ndarray, delta_hat: np.ndarray, delta_raw: np.ndarray, n: float,
              gamma_bar: float, tau2: float, a: float, b: float,
              n_iter: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Parametric EB with a fixed number of Jacobi updates (longCombat; ``docs/methods.md`` §3 step 6).

    Starts from ``g0 = postmean(gamma_hat, delta_hat)`` and ``d0`` = the posterior scale at ``g0``; then
    each of the ``n_iter`` iterations updates ``g_k`` from ``d_{k-1}`` and ``d_k`` from ``g_{k-1}`` (both
    from the previous iterate, unlike :func:`eb_parametric`). There is no convergence test.
    ``sum_j (z_j - g)^2`` comes from ``(n - 1) delta_raw + n (gamma_hat - g)^2``.
    Returns ``gamma_star, delta_star`` (variances), vectorized over features.
    """
    ss_within = (n - 1.0) * np.nan_to_num(delta_raw, nan=0.0)
    denom = n / 2.0 + a - 1.0

    def postvar(g):
        return (b + 0.5 * (ss_within + n * (gamma_hat - g) ** 2)) / denom

    g = _postmean(gamma_hat, gamma_bar, n, delta_hat, tau2)
    d = postvar(g)
    for _ in range(int(n_iter)):
        g, d = _postmean(gamma_hat, gamma_bar, n, d, tau2), postvar(g)
    return g, d


def eb_mean_only(gamma_hat: np.ndarray, n: float, gamma_bar: float, tau2: float,
                 form: str = "sva") -> tuple[np.ndarray, np.ndarray]:
    """S7′: mean-only EB. ``form="sva"`` uses n = 1 (sva/neuroCombat); ``"n"`` the batch size."""
    n_eff = 1.0 if form == "sva" else float(n)
    return _postmean(gamma_hat, gamma_bar, n_eff, 1.0, tau2), np.ones_like(gamma_hat)


def eb_nonparametric(gamma_hat: np.ndarray, delta_hat: np.ndarray, delta_raw: np.ndarray, n: float,
                     block: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """S7″: non-parametric EB for one batch, in log space (finite for any batch size).

    The prior of feature v is the empirical distribution of the other features' ``(gamma_hat, delta_hat)``;
    each is weighted by the Gaussian likelihood of feature v's standardized data under it. Log-weights are
    shifted by their maximum before exponentiating (neuroCombat multiplies raw densities and gets NaN for
    large batches). Cost O(p² ) per batch, in blocks of ``block`` features.
    """
    p = gamma_hat.shape[0]
    ss_within = (n - 1.0) * np.nan_to_num(delta_raw, nan=0.0)
    log_norm = -0.5 * n * np.log(2.0 * np.pi * delta_hat)  # (p,) over prior features v'
    inv2d = 0.5 / delta_hat
    g_star = np.empty(p)
    d_star = np.empty(p)
    for start in range(0, p, block):
        stop = min(p, start + block)
        rows = np.arange(start, stop)
        diff = gamma_hat[rows, None] - gamma_hat[None, :]
        L = log_norm[None, :] - (ss_within[rows, None] + n * diff * diff) * inv2d[None, :]
        L[np.arange(stop - start), rows] = -np.inf  # leave feature v out of its own prior
        L -= L.max(axis=1, keepdims=True)
        np.exp(L, out=L)
        wsum = L.sum(axis=1)
        g_star[rows] = (L @ gamma_hat) / wsum
        d_star[rows] = (L @ delta_hat) / wsum
    return g_star, d_star


def adjust(Y: np.ndarray, D: np.ndarray, coef: np.ndarray, onehot: np.ndarray, codes: np.ndarray,
           sigma: np.ndarray, gamma_star: np.ndarray, delta_star: np.ndarray,
           out: np.ndarray | None = None) -> np.ndarray:
    """S8 for a block: ``y* = sigma (z - gamma*_b) / sqrt(delta*_b) + M`` with ``z = (y - M) / sigma``.

    The preserved part ``M = D @ coef`` (``alpha + X beta`` for ComBat; spline terms for ComBat-GAM) is
    given as a design ``D`` (n × k) and coefficients (k × b); ``gamma_star``/``delta_star`` are m × b and
    ``codes`` the batch of every row (``onehot``, the n × m indicators, is accepted for compatibility and
    not needed: the per-batch terms are gathered by ``codes``, not multiplied). Computed as
    ``(y - M - sigma gamma*_b) / sqrt(delta*_b) + M`` (equal up to rounding) in place in ``out``, with one
    GEMM (for ``M``) and block-sized temporaries.
    """
    if out is None:
        out = np.empty(Y.shape, dtype=np.float64, order="F")
    np.copyto(out, Y)
    # every temporary is Fortran-ordered like ``out``: mixed layouts make the element-wise passes strided
    M = dgemm(1.0, D, coef) if D.shape[1] else None
    if M is not None:
        out -= M
    tmp_t = np.take(np.ascontiguousarray((sigma[None, :] * gamma_star).T), codes, axis=1)  # b × n, C order
    out -= tmp_t.T
    np.take(np.ascontiguousarray((1.0 / np.sqrt(delta_star)).T), codes, axis=1, out=tmp_t)
    out *= tmp_t.T
    if M is not None:
        out += M
    return out
