"""The default site classifier: per CV fold, covariates residualized and features standardized on the
training rows, a PCA of the training rows, and linear discriminant analysis on the principal component
scores, evaluated for many label permutations at once (``docs/methods.md`` §6.5).

Nothing before the discriminant uses the site labels, so a fold's decomposition serves the observed labels
and every permutation; a permutation only changes the class sums of the training scores (one sparse
product), a k × k solve and the test scores' products.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import linalg, stats

#: Principal components of the default classifier (fewer when a training fold is too small; see
#: :func:`n_lda_components`).
LDA_COMPONENTS = 20
_TINY = 1e-10  # relative variance under which a residualized feature or a component counts as zero


def n_lda_components(requested: int | None, V: int, min_train: int, m: int) -> int:
    """Components of the LDA: ``requested`` (default :data:`LDA_COMPONENTS`) capped by the features and by
    the smallest training fold (``n_train - m - 1``, so the pooled covariance is invertible)."""
    k = LDA_COMPONENTS if requested is None else int(requested)
    return max(1, min(k, V, min_train - m - 1))


@dataclass
class FoldScores:
    """Principal component scores of one fold's training and test rows (k columns, k <= requested)."""

    train: np.ndarray
    test: np.ndarray
    gram: np.ndarray  # train' train (k × k)


def _pca_from_moments(YY, WY, WW, n_tr: int, k: int):
    """Loadings (V × k) of the top-k PCs of the standardized residuals of ``Y ~ W`` on the training rows,
    from the training moments ``Y'Y``, ``W'Y``, ``W'W`` (W with an intercept column), and the coefficients
    of the residualization (q+1 × V)."""
    coef = np.linalg.lstsq(WW, WY, rcond=None)[0]
    C = YY - WY.T @ coef  # residual cross-products, centred (W has an intercept)
    d = np.diag(C) / n_tr  # training variance of every residualized feature (ddof 0)
    ok = np.flatnonzero(d > _TINY * np.maximum(np.diag(YY) / n_tr, 1e-300))
    L = np.zeros((YY.shape[0], 0))
    if ok.size == 0:
        return L, coef
    sd = np.sqrt(d[ok])
    R = C[np.ix_(ok, ok)] / np.outer(sd, sd) / n_tr  # correlation matrix of the residuals
    kk = min(k, ok.size)
    w, vec = linalg.eigh(R, subset_by_index=[ok.size - kk, ok.size - 1])
    w, vec = w[::-1], vec[:, ::-1]
    keep = w > _TINY * max(w[0], 1e-300)
    L = np.zeros((YY.shape[0], int(keep.sum())))
    L[ok] = vec[:, keep] / sd[:, None]
    return L, coef


class MomentFolds:
    """Fold PCAs of one table (the raw features): its moments are computed once, and each fold's training
    moments are the whole table's minus its test rows' (one n_test × V product per fold, no copies of the
    training rows). The columns are centred and scaled on all rows first, so the subtraction loses no
    accuracy to large feature means."""

    def __init__(self, Y: np.ndarray, Xc: np.ndarray):
        mu = Y.mean(axis=0)
        s = Y.std(axis=0)
        s[s == 0] = 1.0
        self.Y0 = (Y - mu) / s
        self.W = np.hstack([np.ones((Y.shape[0], 1)), Xc])
        self.YY = self.Y0.T @ self.Y0
        self.WY = self.W.T @ self.Y0
        self.WW = self.W.T @ self.W

    def fold(self, train, test, k: int) -> FoldScores:
        Yte, Wte = self.Y0[test], self.W[test]
        L, coef = _pca_from_moments(self.YY - Yte.T @ Yte, self.WY - Wte.T @ Yte, self.WW - Wte.T @ Wte,
                                    len(train), k)
        T = self.Y0 @ L - self.W @ (coef @ L)
        tr = T[train]
        return FoldScores(train=tr, test=T[test], gram=tr.T @ tr)


def fold_scores(Ytr: np.ndarray, Yte: np.ndarray, Wtr: np.ndarray, Wte: np.ndarray, k: int) -> FoldScores:
    """Fold PCA from the fold's own training and test tables (e.g. a harmonizer refitted in the fold)."""
    mu = Ytr.mean(axis=0)
    s = Ytr.std(axis=0)
    s[s == 0] = 1.0
    Y0 = (Ytr - mu) / s
    L, coef = _pca_from_moments(Y0.T @ Y0, Wtr.T @ Y0, Wtr.T @ Wtr, Ytr.shape[0], k)
    B = coef @ L
    tr = Y0 @ L - Wtr @ B
    te = ((Yte - mu) / s) @ L - Wte @ B
    return FoldScores(train=tr, test=te, gram=tr.T @ tr)


def _class_sums(T: np.ndarray, y: np.ndarray, m: int):
    """Per-label sums of the rows of ``T`` for every label vector (rows of ``y``): (B, m, k) and counts."""
    import scipy.sparse as sp

    B, n = y.shape
    small = y.astype(np.uint8 if m <= 255 else np.int32)
    order = np.argsort(small, axis=1, kind="stable")  # rows grouped by label (a radix sort for uint8)
    counts = np.bincount((y + m * np.arange(B)[:, None]).ravel(), minlength=B * m).reshape(B, m)
    indptr = np.zeros(B * m + 1, dtype=np.int64)
    np.cumsum(counts.ravel(), out=indptr[1:])
    A = sp.csr_matrix((np.ones(B * n), order.ravel(), indptr), shape=(B * m, n))
    return (A @ T).reshape(B, m, T.shape[1]), counts


def lda_permutation_scores(fs: FoldScores, ytr: np.ndarray, yte: np.ndarray, m: int):
    """Balanced accuracy and macro one-vs-rest AUC on the test rows of an LDA fitted on the training rows,
    for every label vector (rows of ``ytr``/``yte``): two arrays of length B.

    LDA with the pooled within-class covariance and equal priors (the classifier for balanced accuracy):
    ``δ_g(x) = xᵀ Σ⁻¹ μ_g - ½ μ_gᵀ Σ⁻¹ μ_g``, ``Σ`` = within-class scatter / (n_train - classes); predicted
    site ``argmax δ``; the AUC of site g ranks the test rows by the log posterior ``δ_g - log Σ_h exp δ_h``
    (ties share their mid-rank, as ``roc_auc_score``). Sites absent from the training rows are never
    predicted and get no AUC; balanced accuracy averages the recall over the sites present in the test rows.
    """
    ytr, yte = np.atleast_2d(ytr), np.atleast_2d(yte)
    B = ytr.shape[0]
    Ttr, Tte = fs.train, fs.test
    n_tr, k = Ttr.shape
    n_te = Tte.shape[0]
    S, cnt = _class_sums(Ttr, ytr, m)
    present = cnt > 0
    mu = S / np.maximum(cnt, 1)[..., None]
    Sw = fs.gram[None] - np.einsum("bgk,bgl->bkl", S, mu)
    Sigma = Sw / (n_tr - present.sum(axis=1))[:, None, None]
    if k:
        Wt = np.linalg.solve(Sigma, mu.transpose(0, 2, 1))  # (B, k, m)
        const = -0.5 * np.einsum("bgk,bkg->bg", mu, Wt)
        D = Tte @ Wt.transpose(1, 0, 2).reshape(k, B * m)  # (n_te, B m): the discriminants, one product
        D += const.ravel()
    else:  # no usable component: every site equally likely
        D = np.zeros((n_te, B * m))
    if not present.all():
        D[:, ~present.ravel()] = -np.inf
    D = D.reshape(n_te, B, m)
    pred = np.argmax(D, axis=2).T  # (B, n_te)
    # balanced accuracy: mean recall over the sites present in the test rows
    key = (yte + m * np.arange(B)[:, None]).ravel()
    hits = np.bincount(key, weights=(pred == yte).ravel(), minlength=B * m).reshape(B, m)
    tot = np.bincount(key, minlength=B * m).reshape(B, m)
    in_test = tot > 0
    recall = np.where(in_test, hits / np.maximum(tot, 1), 0.0)
    bacc = recall.sum(axis=1) / in_test.sum(axis=1)
    # macro one-vs-rest AUC: Mann–Whitney with mid-ranks of the log posterior of each site (in place in D)
    with np.errstate(invalid="ignore"):
        D -= D.max(axis=2, keepdims=True)
        D -= np.log(np.exp(D).sum(axis=2, keepdims=True))
    logpost = D
    scores = np.ascontiguousarray(logpost.transpose(1, 2, 0))  # (B, m, n_te)
    pos = yte[:, None, :] == np.arange(m)[None, :, None]  # (B, m, n_te): the rows of site g
    n_pos = pos.sum(axis=2)
    order = np.argsort(scores, axis=2)
    # rank sum of the positives: their positions in the sorted order (ties are fixed below)
    rank_sum = np.take_along_axis(pos, order, axis=2) @ np.arange(1.0, n_te + 1.0)
    srt = np.take_along_axis(scores, order, axis=2)
    tied = (srt[..., 1:] == srt[..., :-1]).any(axis=2) & present
    for b, g in zip(*np.nonzero(tied)):
        rank_sum[b, g] = stats.rankdata(scores[b, g])[pos[b, g]].sum()
    usable = present & (n_pos > 0) & (n_pos < n_te)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc_g = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * (n_te - n_pos))
    n_use = usable.sum(axis=1)
    auc = np.where(n_use > 0, np.where(usable, auc_g, 0.0).sum(axis=1) / np.maximum(n_use, 1), np.nan)
    return bacc, auc
