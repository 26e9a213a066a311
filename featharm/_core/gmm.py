"""Two-component Gaussian mixtures of every feature at once (the latent batch of GMM ComBat, §5.4).

:func:`gmm_fit` standardizes each feature (mean 0, SD 1, so that log-likelihoods and AICs compare across
features measured in different units), fits a two-component univariate Gaussian mixture to all features
at once by EM from several starts (the 25th/75th percentiles, then pairs of rows drawn with
``random_state``), keeps each feature's best start, labels the rows by their most probable component
(0 = the component with the lower mean), and returns the feature with the lowest AIC among those whose
smaller cluster holds more than ``min_share`` of the rows. :func:`gmm_predict` labels new values with a
stored mixture, by the same rule.
"""

from __future__ import annotations

import numpy as np

__all__ = ["gmm_fit", "gmm_predict"]

_LOG_2PI = float(np.log(2 * np.pi))


def _log_parts(Z, w, m, v):
    """Log of ``w_c N(z; m_c, v_c)`` for both components (each n × q; parameters (2, q))."""
    return [np.log(w[c]) - 0.5 * (_LOG_2PI + np.log(v[c])) - (Z - m[c]) ** 2 / (2 * v[c]) for c in (0, 1)]


def _logsumexp(l0, l1):
    mx = np.maximum(l0, l1)
    return mx + np.log(np.exp(l0 - mx) + np.exp(l1 - mx))


def gmm_predict(z: np.ndarray, weights, means, sds) -> np.ndarray:
    """Component (0/1) of each standardized value under a mixture: the more probable one (0 on a tie)."""
    z = np.asarray(z, dtype=np.float64)
    w, m, s = (np.asarray(a, dtype=np.float64) for a in (weights, means, sds))
    l0, l1 = _log_parts(z, w, m, s ** 2)
    return (l1 > l0).astype(np.int64)


def gmm_fit(Y: np.ndarray, *, random_state=None, n_init: int = 5, max_iter: int = 500, tol: float = 1e-8,
            reg: float = 1e-6, min_share: float = 0.25) -> dict | None:
    """The feature of ``Y`` (n × p) whose two-component mixture defines the latent batch, or None.

    Features with missing values or no variance are not used. Returns a dict: ``feature`` (column of ``Y``),
    ``center``/``scale`` (its standardization), ``weights``/``means``/``sds`` (the mixture of the
    standardized feature, component 0 with the lower mean), ``aic`` (of the standardized feature, 5
    parameters), ``minor_share`` (share of the smaller cluster) and ``labels`` (0/1 per row).
    """
    Y = np.asarray(Y, dtype=np.float64)
    n = Y.shape[0]
    rng = np.random.default_rng(random_state)
    with np.errstate(invalid="ignore"):
        center = Y.mean(axis=0)
        scale = Y.std(axis=0)
    cols = np.flatnonzero(np.isfinite(center) & (scale > 1e-12 * np.maximum(np.abs(center), 1e-300)))
    if n < 4 or cols.size == 0:
        return None
    Z = (Y[:, cols] - center[cols]) / scale[cols]
    q = cols.size
    starts = [np.quantile(Z, [0.25, 0.75], axis=0)]
    for _ in range(max(n_init, 1) - 1):  # two rows per feature, drawn from the seeded generator
        rows = rng.integers(0, n, size=(2, q))
        starts.append(np.take_along_axis(Z, rows, axis=0))
    best_ll = np.full(q, -np.inf)
    best = np.zeros((3, 2, q))  # weights, means, variances
    for m in starts:
        w = np.full((2, q), 0.5)
        v = np.ones((2, q))
        m = m.copy()
        prev = np.full(q, -np.inf)
        for _ in range(max_iter):
            l0, l1 = _log_parts(Z, w, m, v)
            lse = _logsumexp(l0, l1)
            ll = lse.sum(axis=0)
            r1 = np.exp(l1 - lse)
            r0 = 1.0 - r1
            n1 = np.maximum(r1.sum(axis=0), 1e-10)
            n0 = np.maximum(r0.sum(axis=0), 1e-10)
            w = np.vstack([n0, n1]) / (n0 + n1)
            m = np.vstack([(r0 * Z).sum(axis=0) / n0, (r1 * Z).sum(axis=0) / n1])
            v = np.vstack([(r0 * (Z - m[0]) ** 2).sum(axis=0) / n0, (r1 * (Z - m[1]) ** 2).sum(axis=0) / n1]) + reg
            if np.all(np.abs(ll - prev) <= tol * n):
                break
            prev = ll
        ll = _logsumexp(*_log_parts(Z, w, m, v)).sum(axis=0)  # at the final parameters
        better = ll > best_ll
        best_ll = np.where(better, ll, best_ll)
        best[:, :, better] = np.stack([w, m, v])[:, :, better]
    w, m, v = best
    swap = m[0] > m[1]  # component 0: the lower mean
    w, m, v = (np.where(swap, a[::-1], a) for a in (w, m, v))
    l0, l1 = _log_parts(Z, w, m, v)
    labels = (l1 > l0)
    share = labels.mean(axis=0)
    minor = np.minimum(share, 1.0 - share)
    aic = -2.0 * best_ll + 2.0 * 5
    eligible = minor > min_share
    if not eligible.any():
        return None
    j = int(np.flatnonzero(eligible)[np.argmin(aic[eligible])])
    return {"feature": int(cols[j]), "center": float(center[cols[j]]), "scale": float(scale[cols[j]]),
            "weights": w[:, j].tolist(), "means": m[:, j].tolist(), "sds": np.sqrt(v[:, j]).tolist(),
            "aic": float(aic[j]), "minor_share": float(minor[j]), "labels": labels[:, j].astype(np.int64)}
