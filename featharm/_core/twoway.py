"""Two-way (subject + site) least squares with the subject factor absorbed: the traveling-subject model.

``y = mu + p_subject + m_site + X b + e`` for every feature at once (``docs/methods.md`` §5.8). The subject
factor has as many levels as there are traveling subjects, so it is never built as a dense design: every
column is demeaned within subject (the Frisch–Waugh–Lovell theorem), which leaves a small system in the
site contrasts and the covariates, solved once for all features. Arrays only (no pandas).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .blocks import crossprod

__all__ = ["TwoWayFit", "site_contrasts", "site_components", "within_subject", "fit_two_way", "cell_means",
           "group_sums", "dependent_columns", "GainFit", "fit_gain"]


def site_contrasts(n_sites: int, ref: int | None = None) -> np.ndarray:
    """``C`` (sites × (sites - 1)) mapping free parameters to site effects ``m = C theta``.

    ``ref=None``: sum-to-zero coding (the last site's effect is minus the sum of the others, so the effects
    average to zero over sites, unweighted). ``ref=r``: site ``r``'s effect is 0 (reference coding).
    """
    if ref is None:
        return np.vstack([np.eye(n_sites - 1), -np.ones((1, n_sites - 1))])
    return np.delete(np.eye(n_sites), ref, axis=1)


def site_components(subject: np.ndarray, site: np.ndarray, n_subjects: int, n_sites: int) -> np.ndarray:
    """Connected component of every site in the bipartite subject–site graph (an edge per scan).

    Two sites are in the same component when a chain of subjects scanned at both links them; only then
    can their biases be compared. Returns one label per site (0, 1, ...; the component of site 0 is 0).
    """
    from scipy import sparse
    from scipy.sparse.csgraph import connected_components

    n = subject.size
    graph = sparse.coo_matrix((np.ones(n), (subject, n_subjects + site)),
                              shape=(n_subjects + n_sites, n_subjects + n_sites))
    _, labels = connected_components(graph, directed=False)
    site_labels = labels[n_subjects:]
    _, relabel = np.unique(site_labels, return_inverse=True)
    first = {}
    out = np.empty(n_sites, dtype=np.intp)
    for k, lab in enumerate(relabel.ravel()):
        out[k] = first.setdefault(int(lab), len(first))
    return out


def group_sums(A: np.ndarray, key: np.ndarray, n_keys: int) -> np.ndarray:
    """Sums of the rows of ``A`` per key (keys × columns): one sparse product, no Python loop."""
    from scipy import sparse

    H = sparse.csr_matrix((np.ones(key.size), (key, np.arange(key.size))), shape=(n_keys, key.size))
    return np.asarray(H @ A)


def cell_means(Y: np.ndarray, key: np.ndarray, n_keys: int) -> tuple[np.ndarray, np.ndarray]:
    """Means of the rows of ``Y`` per key (keys × columns; NaN for a key without rows) and the row count of
    every key."""
    counts = np.bincount(key, minlength=n_keys).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return group_sums(Y, key, n_keys) / counts[:, None], counts


def within_subject(A: np.ndarray, subject: np.ndarray, n_subjects: int) -> tuple[np.ndarray, np.ndarray]:
    """``A`` demeaned within subject (rows × columns) and the subject means (subjects × columns)."""
    means, _ = cell_means(A, subject, n_subjects)
    return A - means[subject], means


def dependent_columns(Zt: np.ndarray, rtol: float = 1e-9) -> list[int]:
    """Columns of ``Zt`` that are (numerically) linear combinations of the columns before them.

    Each column is scaled to unit norm first (a zero column is dependent), then a QR factorization in the
    given column order finds those adding less than ``rtol`` of their norm.
    """
    norms = np.sqrt((Zt * Zt).sum(axis=0))
    dep = [int(j) for j in np.flatnonzero(norms == 0)]
    cols = [j for j in range(Zt.shape[1]) if j not in dep]
    if not cols:
        return dep
    A = Zt[:, cols] / norms[cols]
    r = np.abs(np.diag(np.linalg.qr(A, mode="r")))
    dep += [cols[i] for i in np.flatnonzero(r < rtol)]
    return sorted(dep)


@dataclass
class TwoWayFit:
    """Least-squares estimates of the two-way model (features on the last axis).

    ``site_effect`` (sites × p): the constrained site effects ``m = C theta``; ``site_cov`` ((sites × sites),
    to be multiplied by ``sigma2``): their sampling covariance per unit residual variance; ``coef`` (q × p):
    the covariate effects (estimated within subject); ``intercept`` (p): the mean over the rows of
    ``y - m_site - x'b``; ``subject_mean`` (subjects × p): each subject's mean of ``y - m_site - x'b``;
    ``rss`` (sites × p): residual sums of squares of each site's rows; ``dof_site`` (sites): each site's
    share of the residual degrees of freedom, ``sum over its rows of (1 - h_i)`` with ``h_i`` the leverage
    of row ``i``; ``dof``: ``n - subjects - (sites - 1) - q``; ``sigma2`` (p): ``rss.sum(0) / dof``.
    """

    site_effect: np.ndarray
    site_cov: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    subject_mean: np.ndarray
    rss: np.ndarray
    dof_site: np.ndarray
    dof: float
    sigma2: np.ndarray


def fit_two_way(Y: np.ndarray, subject: np.ndarray, site: np.ndarray, n_subjects: int, n_sites: int,
                X: np.ndarray | None = None, ref: int | None = None, keep: np.ndarray | None = None) -> TwoWayFit:
    """Fit ``y = mu + p_subject + m_site + X b + e`` by least squares for every column of ``Y``.

    ``subject``/``site`` are integer codes (every code in ``0..n-1`` need not occur; subjects with one row
    only add nothing but their own mean). ``ref``: reference coding (that site's effect is 0), otherwise
    sum-to-zero. ``keep`` (q bool): covariate columns to estimate; the others get coefficient 0 (columns
    aliased with the subject factor). The caller checks that the sites are connected and the design has
    full rank (:func:`site_components`, :func:`dependent_columns`); here a singular system raises
    ``numpy.linalg.LinAlgError``.
    """
    from scipy.linalg import cho_factor, cho_solve

    n, p = Y.shape
    X = np.zeros((n, 0)) if X is None else np.asarray(X, dtype=np.float64)
    q_all = X.shape[1]
    keep = np.ones(q_all, dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    Xk = X[:, keep]
    C = site_contrasts(n_sites, ref)
    Z = np.hstack([C[site], Xk])
    c = Z.shape[1]
    Zt, _ = within_subject(Z, subject, n_subjects)
    Yt, _ = within_subject(Y, subject, n_subjects)
    G = Zt.T @ Zt
    factor = cho_factor(G, lower=True, check_finite=True)
    theta = cho_solve(factor, crossprod(Zt, Yt))  # c × p
    Ginv = cho_solve(factor, np.eye(c))
    k1 = n_sites - 1
    m = C @ theta[:k1]
    b = np.zeros((q_all, p))
    b[keep] = theta[k1:]
    R = Yt - Zt @ theta
    rss = group_sums(R * R, site, n_sites)
    counts = np.bincount(subject, minlength=n_subjects).astype(np.float64)
    lev = 1.0 / counts[subject] + np.einsum("ij,jk,ik->i", Zt, Ginv, Zt)
    dof_site = np.bincount(site, weights=1.0 - lev, minlength=n_sites)
    n_present = int((counts > 0).sum())
    dof = float(n - n_present - c)
    with np.errstate(invalid="ignore", divide="ignore"):
        sigma2 = rss.sum(axis=0) / dof if dof > 0 else np.full(p, np.nan)
    adjusted = Y - m[site] - X @ b
    subject_mean = within_subject(adjusted, subject, n_subjects)[1]
    intercept = adjusted.mean(axis=0)
    site_cov = C @ Ginv[:k1, :k1] @ C.T
    return TwoWayFit(site_effect=m, site_cov=site_cov, coef=b, intercept=intercept, subject_mean=subject_mean,
                     rss=rss, dof_site=dof_site, dof=dof, sigma2=sigma2)


@dataclass
class GainFit:
    """Maximum-likelihood estimates of the affine site model ``y = offset_site + gain_site * t`` (see
    :func:`fit_gain`); features on the last axis."""

    offset: np.ndarray  # sites × p
    gain: np.ndarray  # sites × p
    offset_se: np.ndarray  # sites × p, conditional on the subjects' values (approximate)
    coef: np.ndarray  # q × p, covariate effects on the corrected scale
    intercept: np.ndarray  # p
    sigma2: np.ndarray  # p, noise variance on the corrected scale
    n_iter: int
    converged: np.ndarray  # p bool


def fit_gain(Y: np.ndarray, subject: np.ndarray, site: np.ndarray, n_subjects: int, n_sites: int,
             X: np.ndarray | None = None, ref: int | None = None, keep: np.ndarray | None = None, *,
             tol: float = 1e-9, max_iter: int = 1000) -> GainFit:
    """Fit ``y = a_site + g_site (p_subject + x'b + e)`` with ``e ~ N(0, sigma^2)`` for every column of ``Y``.

    A site maps the true value ``t = p_subject + x'b + e`` affinely: offset ``a`` and gain ``g`` (the gain
    multiplies subject differences and noise alike). Identified by ``sum_k a_k = 0`` and ``prod_k g_k = 1``
    (the corrected values ``(y - a_k) / g_k`` are on the scale of the "average site"), or by ``a_ref = 0``,
    ``g_ref = 1``. Estimated by alternating maximization of the likelihood, started from the location-only
    fit (``g = 1``): (1) ``t = (y - a_site) / g_site`` is fitted by the subject factor and the covariates
    (within subject), giving each scan's fitted value ``f`` and ``sigma^2 = RSS / dof`` with
    ``dof = n - subjects - q - 2 (sites - 1)``; (2) each site's ``(a_k, 1 / g_k)`` maximizes its likelihood
    given ``f``: with ``w = 1 / g_k``, ``S_yy w^2 - S_yf w - n_k' sigma^2 = 0`` (``S`` the centred sums of
    squares and products over the site's scans, ``n_k' = n_k dof / n`` its share of the degrees of freedom),
    ``a_k = ybar_k - g_k fbar_k``; (3) the identifying constraints are restored by a common affine change of
    ``t``. Stops when no gain changes by more than ``tol`` and no offset by more than ``tol`` times the
    feature's SD, or after ``max_iter`` rounds. Vectorized over features.
    """
    from scipy.linalg import cho_factor, cho_solve

    n, p = Y.shape
    X = np.zeros((n, 0)) if X is None else np.asarray(X, dtype=np.float64)
    q_all = X.shape[1]
    keep = np.ones(q_all, dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    Xk = X[:, keep]
    q = Xk.shape[1]
    start = fit_two_way(Y, subject, site, n_subjects, n_sites, X, ref=ref, keep=keep)
    a, G = start.site_effect.copy(), np.ones((n_sites, p))
    nk = np.bincount(site, minlength=n_sites).astype(np.float64)
    n_present = int((np.bincount(subject, minlength=n_subjects) > 0).sum())
    dof = float(n - n_present - q - 2 * (n_sites - 1))
    share = nk * dof / n
    ybar = group_sums(Y, site, n_sites) / nk[:, None]
    dy = Y - ybar[site]
    Syy = group_sums(dy * dy, site, n_sites)
    sd = np.sqrt(np.maximum(Y.var(axis=0), np.finfo(float).tiny))
    if q:
        Xt, _ = within_subject(Xk, subject, n_subjects)
        factor = cho_factor(Xt.T @ Xt, lower=True)
    b = np.zeros((q, p))
    converged = np.zeros(p, dtype=bool)
    it = 0
    for it in range(1, max_iter + 1):
        T = (Y - a[site]) / G[site]
        if q:
            Tt, _ = within_subject(T, subject, n_subjects)
            b = cho_solve(factor, crossprod(Xt, Tt))
            XB = Xk @ b
            F = cell_means(T - XB, subject, n_subjects)[0][subject] + XB
        else:
            F = cell_means(T, subject, n_subjects)[0][subject]
        R = T - F
        sigma2 = (R * R).sum(axis=0) / dof
        fbar = group_sums(F, site, n_sites) / nk[:, None]
        Syf = group_sums(dy * (F - fbar[site]), site, n_sites)
        with np.errstate(invalid="ignore", divide="ignore"):
            w = (Syf + np.sqrt(Syf * Syf + 4.0 * Syy * share[:, None] * sigma2)) / (2.0 * Syy)
        w = np.where((Syy > 0) & np.isfinite(w) & (w > 0), w, 1.0)
        G_new = 1.0 / w
        a_new = ybar - G_new * fbar
        if ref is None:
            d = np.exp(-np.log(G_new).mean(axis=0))
            G_new = G_new * d
            a_new = a_new - G_new * (a_new.sum(axis=0) / G_new.sum(axis=0))
        else:
            d = 1.0 / G_new[ref]
            G_new = G_new * d
            a_new = a_new - G_new * (a_new[ref] / G_new[ref])
            a_new[ref], G_new[ref] = 0.0, 1.0
        change = np.maximum(np.abs(G_new - G).max(axis=0), np.abs(a_new - a).max(axis=0) / sd)
        a, G = a_new, G_new
        converged = change <= tol
        if converged.all():
            break
    T = (Y - a[site]) / G[site]
    XB = Xk @ b if q else np.zeros_like(T)
    subject_mean = cell_means(T - XB, subject, n_subjects)[0]
    R = T - XB - subject_mean[subject]
    sigma2 = (R * R).sum(axis=0) / dof
    F = T - R
    fbar = group_sums(F, site, n_sites) / nk[:, None]
    dF = F - fbar[site]
    Sff = group_sums(dF * dF, site, n_sites)
    with np.errstate(invalid="ignore", divide="ignore"):
        var_a = G * G * sigma2 * (1.0 / nk[:, None] + np.where(Sff > 0, fbar * fbar / Sff, 0.0))
    if ref is not None:
        var_a[ref] = 0.0
    coef = np.zeros((q_all, p))
    coef[keep] = b
    return GainFit(offset=a, gain=G, offset_se=np.sqrt(var_a), coef=coef, intercept=(T - XB).mean(axis=0),
                   sigma2=sigma2, n_iter=it, converged=converged)
