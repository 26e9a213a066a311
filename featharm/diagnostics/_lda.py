"""The default site classifier: per CV fold, covariates residualized and features standardized on the
training rows, then linear discriminant analysis (pooled within-site covariance, equal priors) on all the
standardized residualized features, or on their first principal components when there are too many features
for the fold; evaluated for many label permutations at once (``docs/methods.md`` §6.5).

Nothing before the discriminant uses the site labels, so a fold's residualization, standardization and the
factorization of its training Gram matrix ``A = Fᵀ F`` (F the training rows' features) serve the observed
labels and every permutation. The within-site scatter of a labelling is ``A - Sᵀ N⁻¹ S`` (S the per-site sums
of the training features, N the site sizes), a rank-m change of A, so by Woodbury

    (A - Sᵀ N⁻¹ S)⁻¹ Sᵀ N⁻¹ = P C⁻¹,   P = A⁻¹ Sᵀ,   C = N - S P   (m × m),

and a permutation costs the site sums, a solve with A's Cholesky factor and an m × m solve, and the test rows'
discriminants; blocks of permutations share every product. For the raw table the site sums of a fold's
training rows are the whole table's minus its test rows' (the whole table's once per permutation for all
folds), from moments of features standardized on all rows; the fold's residualization and scaling then act
on the m × V sums only.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy import linalg, stats

_TINY = 1e-10  # relative variance under which a residualized feature or a component counts as zero
_COLUMNS = 16  # feature columns per block of the sparse site sums (the block stays in the core's cache)


def n_lda_components(requested: int | None, V: int, min_train: int, m: int) -> int:
    """Dimensions of the LDA.

    Default: every feature (LDA on all standardized residualized features), up to half the rows left after
    the site means in the smallest training fold, ``(n_train - m) // 2``; beyond that a full-dimensional LDA
    fits noise, and it runs on that many principal components of the fold's training rows. A requested number
    k < features selects the first k principal components; it is capped by the features and by
    ``n_train - m - 1`` (the pooled covariance must be invertible).
    """
    if requested is None:
        return max(1, min(V, (min_train - m) // 2))
    return max(1, min(int(requested), V, min_train - m - 1))


def site_sums(Y_blocks, rows: np.ndarray, labels: np.ndarray, m: int):
    """Per-label column sums of the rows ``rows`` of a table (given as C-ordered column blocks), for every
    label vector (rows of ``labels``, one label per row of ``rows``): (B, m, V) sums and (B, m) counts. One
    sparse indicator matrix per call; each column block is summed for all label vectors at once."""
    B, n_sub = labels.shape
    order = np.argsort(labels.astype(np.uint8 if m <= 255 else np.int32), axis=1, kind="stable")
    counts = np.bincount((labels + m * np.arange(B)[:, None]).ravel(), minlength=B * m).reshape(B, m)
    indptr = np.zeros(B * m + 1, dtype=np.int64)
    np.cumsum(counts.ravel(), out=indptr[1:])
    n = Y_blocks[0].shape[0]
    A = sp.csr_matrix((np.ones(B * n_sub), rows[order].ravel(), indptr), shape=(B * m, n))
    out = np.concatenate([A @ blk for blk in Y_blocks], axis=1) if Y_blocks else np.zeros((B * m, 0))
    return out.reshape(B, m, -1), counts


def column_blocks(*tables: np.ndarray) -> list:
    """The columns of the tables side by side, as C-ordered blocks of ``_COLUMNS`` (no joined copy)."""
    sizes = [t.shape[1] for t in tables]
    starts = np.cumsum([0] + sizes)
    out = []
    for s in range(0, int(starts[-1]), _COLUMNS):
        e = min(s + _COLUMNS, int(starts[-1]))
        parts = [t[:, max(s - a, 0):min(e - a, w)] for t, a, w in zip(tables, starts[:-1], sizes) if s < a + w and e > a]
        out.append(np.ascontiguousarray(parts[0]) if len(parts) == 1 else np.hstack(parts))
    return out


class Fold:
    """One fold's classifier inputs, in whitened coordinates (the training Gram matrix A = L Lᵀ becomes the
    identity): the test rows' features ``test`` (n_test × k, times L⁻ᵀ), the training size, and the map
    :meth:`features` from per-site sums of the table's columns (standardized on all rows, then the covariate
    columns) to per-site sums of the fold's features. ``gram`` is A (all features; ``chol`` its lower
    Cholesky factor L) or None with ``lam`` its diagonal (principal component scores). ``blocks``: the
    fold's own training table, when it has one (a harmonizer refitted in the fold)."""

    def __init__(self, test, n_train: int, gram=None, lam=None, chol=None, to_features=None, blocks=None):
        self.n_train, self.to_features, self.blocks = n_train, to_features, blocks
        if gram is not None or chol is not None:
            self.chol = np.linalg.cholesky(gram) if chol is None else chol
            self.root = None
            self.test = linalg.solve_triangular(self.chol, test.T, lower=True, check_finite=False).T
        else:
            self.chol = None
            self.root = np.sqrt(lam)
            self.test = test / self.root

    def features(self, raw: np.ndarray) -> np.ndarray:
        return raw if self.to_features is None else self.to_features(raw)

    def own_sums(self, labels_tr: np.ndarray, m: int):
        """Per-site sums of the fold's own training table (``blocks``) and site sizes."""
        return site_sums(self.blocks, np.arange(self.n_train), labels_tr, m)

    def whiten(self, S: np.ndarray) -> np.ndarray:
        """L⁻¹ Sᵀ for every row of S (B, m, k), returned as (B, m, k)."""
        if self.chol is None:
            return S / self.root
        B, m, k = S.shape
        U = linalg.solve_triangular(self.chol, S.reshape(B * m, k).T, lower=True, check_finite=False)
        return U.T.reshape(B, m, k)


def _features(C, YY_diag, n_tr: int, k: int):
    """From the training residual cross-products ``C`` (V × V): the features kept (non-zero residual
    variance), their training SDs, and either None (all kept features) with the lower Cholesky factor of
    their Gram matrix, or the loadings of the first k principal components (V_kept × k) with their scatter."""
    d = np.diag(C) / n_tr  # training variance of every residualized feature (ddof 0)
    ok = np.flatnonzero(d > _TINY * np.maximum(YY_diag / n_tr, 1e-300))
    sd = np.sqrt(d[ok])
    A = C[np.ix_(ok, ok)] / np.outer(sd, sd)  # Gram matrix of the standardized residuals (n_tr × correlations)
    if ok.size == 0:
        return ok, sd, np.zeros((0, 0)), None
    if k >= ok.size:
        try:  # all features: LDA on them directly, if the Gram matrix is well conditioned
            factor = np.linalg.cholesky(A)
            dg = np.diag(factor) ** 2
            if dg.min() > _TINY * dg.max():
                return ok, sd, None, factor
        except np.linalg.LinAlgError:
            pass
    kk = min(k, ok.size)
    w, vec = linalg.eigh(A) if kk == ok.size else linalg.eigh(A, subset_by_index=[ok.size - kk, ok.size - 1])
    w, vec = w[::-1][:kk], vec[:, ::-1][:, :kk]
    keep = w > _TINY * max(w[0], 1e-300)
    return ok, sd, vec[:, keep], w[keep]


def _mapping(V: int, ok, coef, sd, vec):
    """Per-site sums of [standardized table | covariate columns] -> per-site sums of the fold's features."""
    def to_features(raw):
        S = (raw[..., :V][..., ok] - raw[..., V:] @ coef) / sd
        return S if vec is None else S @ vec
    return to_features


class RawFolds:
    """Folds of the raw table: its moments once (features centred and scaled on all rows, so the fold's
    training moments, the whole table's minus its test rows', lose no accuracy), and per permutation block
    the whole table's site sums, shared by the folds."""

    def __init__(self, Y: np.ndarray, Xc: np.ndarray):
        mu = Y.mean(axis=0)
        s = Y.std(axis=0)
        s[s == 0] = 1.0
        self.Y0 = (Y - mu) / s
        self.W = np.hstack([np.ones((Y.shape[0], 1)), Xc])
        self.YY = self.Y0.T @ self.Y0
        self.WY = self.W.T @ self.Y0
        self.WW = self.W.T @ self.W
        self.blocks = column_blocks(self.Y0, self.W)
        self.V = Y.shape[1]

    def fold(self, train, test, k: int) -> Fold:
        Yte, Wte = self.Y0[test], self.W[test]
        YY = self.YY - Yte.T @ Yte
        WY = self.WY - Wte.T @ Yte
        coef = np.linalg.lstsq(self.WW - Wte.T @ Wte, WY, rcond=None)[0]
        C = YY - WY.T @ coef  # training residual cross-products (W has an intercept)
        ok, sd, vec, gram = _features(C, np.diag(YY), len(train), k)
        coef = coef[:, ok]
        Fte = (Yte[:, ok] - Wte @ coef) / sd
        mapping = _mapping(self.V, ok, coef, sd, vec)
        if vec is None:
            return Fold(Fte, len(train), chol=gram, to_features=mapping)
        return Fold(Fte @ vec, len(train), lam=gram, to_features=mapping)

    def train_sums(self, labels: np.ndarray, splits, n_splits: int, m: int, pmap=None):
        """Per-site column sums of every fold's training rows, for a block of label vectors (B, n): the
        whole table's sums minus the test rows'; the whole table's are those of the first repeat's test folds
        added up when they partition the rows (they do for k-fold CV)."""
        pmap = pmap or (lambda fn, xs: [fn(x) for x in xs])
        te = pmap(lambda sp_: site_sums(self.blocks, sp_[1], labels[:, sp_[1]], m), splits)
        n = labels.shape[1]
        first = [t for _, t in splits[:n_splits]]
        if sum(len(t) for t in first) == n and np.unique(np.concatenate(first)).size == n:
            tot = (sum(te[i][0] for i in range(n_splits)), sum(te[i][1] for i in range(n_splits)))
        else:
            tot = site_sums(self.blocks, np.arange(n), labels, m)
        return [(tot[0] - a, tot[1] - c) for a, c in te]


def table_fold(Ytr: np.ndarray, Yte: np.ndarray, Wtr: np.ndarray, Wte: np.ndarray, k: int) -> Fold:
    """A fold from its own training and test tables (e.g. a harmonizer refitted in the fold): its moments,
    and the training rows (centred and scaled, in column blocks) kept for the site sums."""
    mu = Ytr.mean(axis=0)
    s = Ytr.std(axis=0)
    s[s == 0] = 1.0
    Y0 = (Ytr - mu) / s
    YY = Y0.T @ Y0
    WY = Wtr.T @ Y0
    coef = np.linalg.lstsq(Wtr.T @ Wtr, WY, rcond=None)[0]
    ok, sd, vec, gram = _features(YY - WY.T @ coef, np.diag(YY), Ytr.shape[0], k)
    coef = coef[:, ok]
    Fte = (((Yte - mu) / s)[:, ok] - Wte @ coef) / sd
    blocks = column_blocks(Y0, Wtr)
    del Y0
    mapping = _mapping(Ytr.shape[1], ok, coef, sd, vec)
    if vec is None:
        return Fold(Fte, Ytr.shape[0], chol=gram, to_features=mapping, blocks=blocks)
    return Fold(Fte @ vec, Ytr.shape[0], lam=gram, to_features=mapping, blocks=blocks)


def lda_scores(fold: Fold, S: np.ndarray, cnt: np.ndarray, yte: np.ndarray, m: int):
    """Balanced accuracy and macro one-vs-rest AUC on the test rows of the LDA fitted on the training rows,
    for every label vector: ``S`` (B, m, k) the training rows' per-site feature sums, ``cnt`` (B, m) their
    site sizes, ``yte`` (B, n_test) the test rows' labels. Two arrays of length B.

    LDA with the pooled within-site covariance and equal priors (the classifier for balanced accuracy):
    ``δ_g(x) = xᵀ Σ⁻¹ μ_g - ½ μ_gᵀ Σ⁻¹ μ_g``, ``Σ`` = within-site scatter / (n_train - sites); predicted
    site ``argmax δ``; the AUC of site g ranks the test rows by the log posterior ``δ_g - log Σ_h exp δ_h``
    (ties share their mid-rank, as ``roc_auc_score``). Sites absent from the training rows are never
    predicted and get no AUC; balanced accuracy averages the recall over the sites present in the test rows.
    """
    yte = np.atleast_2d(yte)
    B, _, k = S.shape
    Fte = fold.test  # whitened
    n_te = Fte.shape[0]
    present = cnt > 0
    if k:
        # Woodbury in whitened coordinates: with U = L⁻¹ Sᵀ, the within-site scatter is I - Uᵀ N⁻¹ U and
        # Σ⁻¹ μ_gᵀ = (n_train - sites) L⁻ᵀ (C⁻¹ U)_g with C = N - U Uᵀ (m × m); an absent site gets C_gg = 1
        U = fold.whiten(S)  # (B, m, k)
        C = -(U @ U.transpose(0, 2, 1))
        idx = np.arange(m)
        C[:, idx, idx] += np.where(present, cnt, 1)
        Wt = np.linalg.solve(C, U)
        Wt *= (fold.n_train - present.sum(axis=1)).astype(float)[:, None, None]
        const = -0.5 * np.einsum("bgk,bgk->bg", U, Wt) / np.maximum(cnt, 1)
        D = Fte @ Wt.transpose(2, 0, 1).reshape(k, B * m)  # (n_te, B m): the discriminants, one product
        D += const.ravel()
    else:  # no usable feature: every site equally likely
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
    scores = np.ascontiguousarray(D.transpose(1, 2, 0))  # (B, m, n_te)
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
