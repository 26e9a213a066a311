"""S1: least squares of every feature on one design, and within-batch residual sums of squares.

``docs/methods.md`` §1.2. Works on float64 arrays, samples × features, one block of features at a time.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla
from scipy.linalg.blas import dgemm

__all__ = ["GramSolver", "residual_ss", "batch_residual_ss", "sub_gemm"]


class GramSolver:
    """The least-squares solver of the design ``W`` (normal equations), computed once for all feature blocks.

    ``coef = (W'W)^-1 W' Y``: the normal equations, solved by a Cholesky factorization of the small
    ``k × k`` Gram matrix, exactly as sva and neuroCombat compute S1 (``solve(crossprod(design), ...)``).
    Only BLAS-3 products touch the ``n × k`` design (a tall LAPACK QR is slow for small ``k`` when BLAS
    threads compete). The caller has checked that ``W`` has full column rank and is not nearly
    confounded (:func:`featharm.design.check_full_rank`); should the Gram matrix still not be positive
    definite, a pseudo-inverse (SVD) is used instead.
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


def sub_gemm(A: np.ndarray, C: np.ndarray, out: np.ndarray, sign: float) -> None:
    """``out += sign * A @ C`` in place (``out`` Fortran-ordered), without an n × b temporary."""
    if A.shape[1] == 0:
        return
    res = dgemm(sign, A, C, 1.0, out, overwrite_c=True)
    if res is not out and not np.shares_memory(res, out):  # pragma: no cover - BLAS copied
        out[...] = res


def residual_ss(Y: np.ndarray, W: np.ndarray, coef: np.ndarray, onehot: np.ndarray) -> np.ndarray:
    """Sum of squared residuals of ``Y - W @ coef`` within each batch (m × b); ``onehot`` is n × m."""
    R = np.array(Y, dtype=np.float64, order="F", copy=True)
    sub_gemm(W, coef, R, -1.0)
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
    sub_gemm(np.asfortranarray(X), coef_x, R, -1.0)
    np.square(R, out=R)
    return dgemm(1.0, onehot, R, trans_a=1)


