"""Gaussian location–scale regression of every feature at once (ComBatLS, ``docs/methods.md`` §5.1)."""

from __future__ import annotations

import numpy as np

__all__ = ["fit_location_scale"]


def fit_location_scale(Y: np.ndarray, W: np.ndarray, S: np.ndarray, *, tol: float = 1e-8, max_iter: int = 200,
                       coef: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Maximum-likelihood Gaussian location–scale regression of every column of ``Y`` at once.

    Model, for each feature ``v``: ``y_v ~ N(W b_v, exp(S c_v)^2)`` (identity link for the mean, log link
    for the SD, as gamlss ``NO()``). The mean and scale designs ``W`` (n × k) and ``S`` (n × r) are shared by
    all features, so every step is a batched linear algebra call, not a loop over features:

    * mean step: the weighted least squares ``(W' diag(w_v) W) b_v = W' diag(w_v) y_v`` with
      ``w = 1 / sigma^2``; the p Gram matrices are one product ``w' (W ⊙ W)`` (n × k² row-wise outer
      products) and the p k × k systems one batched solve;
    * scale step: a Fisher-scoring step for ``c_v``. The expected information of ``log sigma`` is
      ``2 S'S`` whatever ``c_v`` is, so the step is ``(2 S'S)^-1 S' (r^2 / sigma^2 - 1)``: one r × r matrix
      for every feature. A step that lowers a feature's likelihood is halved (up to 30 times).

    Mean and scale are orthogonal in the Gaussian model, so these alternating steps (the RS algorithm of
    Rigby & Stasinopoulos) converge to the joint maximum. They stop when no feature's deviance
    ``-2 log L`` changes by more than ``tol``.

    Returns ``(b, c, deviance, n_iter)`` with ``b`` k × p, ``c`` r × p and the deviance per feature.
    """
    n, p = Y.shape
    b = np.linalg.lstsq(W, Y, rcond=None)[0] if coef is None else coef
    R = Y - W @ b
    c = np.zeros((S.shape[1], p))
    c[0] = 0.5 * np.log(np.mean(R * R, axis=0))  # S[:, 0] is the intercept
    info = 2.0 * (S.T @ S)
    k = W.shape[1]
    WW = (W[:, :, None] * W[:, None, :]).reshape(n, k * k)  # row-wise outer products, n × k²
    lin = S @ c

    def deviance(R, lin):
        return 2.0 * lin.sum(axis=0) + np.einsum("ij,ij->j", R, R * np.exp(-2.0 * lin)) + n * np.log(2 * np.pi)

    dev = deviance(R, lin)
    it = 0
    for it in range(1, max_iter + 1):
        w = np.exp(-2.0 * lin)
        G = (w.T @ WW).reshape(p, k, k)  # W' diag(w_v) W of every feature in one GEMM
        rhs = (W.T @ (w * Y)).T[:, :, None]
        b = np.linalg.solve(G, rhs)[:, :, 0].T
        R = Y - W @ b
        dev_mean = deviance(R, lin)  # the mean step cannot increase the deviance
        step = np.linalg.solve(info, S.T @ (R * R * w - 1.0))
        factor = np.ones(p)
        c_new = c + step
        lin_new = S @ c_new
        dev_new = deviance(R, lin_new)
        for _ in range(30):  # step halving where the Fisher step overshoots
            worse = dev_new > dev_mean + 1e-12 * np.abs(dev_mean)
            if not worse.any():
                break
            factor[worse] *= 0.5
            c_new[:, worse] = c[:, worse] + factor[worse] * step[:, worse]
            lin_new[:, worse] = S @ c_new[:, worse]
            dev_new[worse] = deviance(R[:, worse], lin_new[:, worse])
        c, lin = c_new, lin_new
        change = np.max(np.abs(dev - dev_new))
        dev = dev_new
        if change <= tol:
            break
    else:
        it = -max_iter  # signals no convergence
    return b, c, dev, it
