"""Gaussian location–scale regression of every feature at once (ComBatLS, ``docs/methods.md`` §5.1)."""

from __future__ import annotations

import numpy as np

__all__ = ["fit_location_scale", "scale_rank_deficient"]


def fit_location_scale(Y: np.ndarray, W: np.ndarray, S: np.ndarray, *, tol: float = 1e-8, max_iter: int = 200,
                       coef: np.ndarray | None = None, observed: np.ndarray | None = None,
                       absent: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
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

    Missing values (``docs/methods.md`` §1.8): ``observed`` (n × p bool, True where the cell is observed)
    fits each feature on its observed rows: a missing cell has weight 0 in the mean step and contributes
    nothing to the scale step or the deviance, and the scale information ``2 S_v'S_v`` is per feature (one
    product ``observed' (S ⊙ S)``). ``absent`` (p × k bool) marks mean-design columns with no observed row
    for a feature (a batch without its values): their coefficient is held at 0 (the caller reports NaN).
    ``coef`` must then be finite (0 in the absent columns). Without ``observed`` the computation is the
    complete-data one, operation for operation.

    Returns ``(b, c, deviance, n_iter)`` with ``b`` k × p, ``c`` r × p and the deviance per feature.
    """
    n, p = Y.shape
    obs = observed
    if obs is not None:
        Y = np.where(obs, Y, 0.0)
        n_v = obs.sum(axis=0).astype(np.float64)
    b = np.linalg.lstsq(W, Y, rcond=None)[0] if coef is None else coef
    R = Y - W @ b
    r = S.shape[1]
    c = np.zeros((r, p))
    k = W.shape[1]
    if obs is None:
        c[0] = 0.5 * np.log(np.mean(R * R, axis=0))  # S[:, 0] is the intercept
        info = 2.0 * (S.T @ S)
    else:
        np.copyto(R, 0.0, where=~obs)
        c[0] = 0.5 * np.log(np.sum(R * R, axis=0) / n_v)
        SS = (S[:, :, None] * S[:, None, :]).reshape(n, r * r)
        info = 2.0 * (obs.T.astype(np.float64) @ SS).reshape(p, r, r)  # 2 S_v'S_v of every feature
        fix = np.zeros((p, k, k))
        if absent is not None and absent.any():
            f, j = np.nonzero(absent)
            fix[f, j, j] = 1.0  # an absent column's Gram row is 0: held at 0 by a unit diagonal
    WW = (W[:, :, None] * W[:, None, :]).reshape(n, k * k)  # row-wise outer products, n × k²
    lin = S @ c

    def deviance(R, lin, cols=slice(None)):
        if obs is None:
            return 2.0 * lin.sum(axis=0) + np.einsum("ij,ij->j", R, R * np.exp(-2.0 * lin)) + n * np.log(2 * np.pi)
        o = obs[:, cols]
        return (2.0 * np.where(o, lin, 0.0).sum(axis=0) + np.einsum("ij,ij->j", R, R * np.exp(-2.0 * lin))
                + n_v[cols] * np.log(2 * np.pi))

    dev = deviance(R, lin)
    it = 0
    for it in range(1, max_iter + 1):
        w = np.exp(-2.0 * lin)
        if obs is not None:
            w *= obs
        G = (w.T @ WW).reshape(p, k, k)  # W' diag(w_v) W of every feature in one GEMM
        if obs is not None:
            G += fix
        rhs = (W.T @ (w * Y)).T[:, :, None]
        b = np.linalg.solve(G, rhs)[:, :, 0].T
        R = Y - W @ b
        if obs is not None:
            np.copyto(R, 0.0, where=~obs)
        dev_mean = deviance(R, lin)  # the mean step cannot increase the deviance
        if obs is None:
            step = np.linalg.solve(info, S.T @ (R * R * w - 1.0))
        else:
            step = np.linalg.solve(info, (S.T @ ((R * R * w - 1.0) * obs)).T[:, :, None])[:, :, 0].T
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
            dev_new[worse] = deviance(R[:, worse], lin_new[:, worse], worse)
        c, lin = c_new, lin_new
        change = np.max(np.abs(dev - dev_new))
        dev = dev_new
        if change <= tol:
            break
    else:
        it = -max_iter  # signals no convergence
    return b, c, dev, it


def scale_rank_deficient(S: np.ndarray, observed: np.ndarray, rtol: float = 1e-12) -> np.ndarray:
    """Features (bool, p) whose scale design ``S`` (intercept first) is rank deficient on their observed rows:
    the covariance of its other columns there, scaled to unit diagonal, has an eigenvalue below ``rtol``
    (a column constant, or a combination of the others, once the missing rows are left out)."""
    n, r = S.shape
    p = observed.shape[1]
    if r < 2:
        return np.zeros(p, dtype=bool)
    o = observed.T.astype(np.float64)
    n_v = o.sum(axis=1)
    SS = (S[:, 1:, None] * S[:, None, 1:]).reshape(n, (r - 1) ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = (o @ S[:, 1:]) / n_v[:, None]
        C = (o @ SS).reshape(p, r - 1, r - 1) / n_v[:, None, None] - mean[:, :, None] * mean[:, None, :]
        d = np.sqrt(np.maximum(np.einsum("pii->pi", C), 0.0))
        C = C / d[:, :, None] / d[:, None, :]
    bad = ~(d > 0).all(axis=1)
    C[~np.isfinite(C)] = 0.0
    return bad | ~(np.linalg.eigvalsh(C)[:, 0] > rtol)
