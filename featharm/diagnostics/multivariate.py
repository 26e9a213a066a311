"""Multivariate checks of a site effect (``docs/methods.md`` §6.5): PERMANOVA/MDMR, MANOVA and Box's M on the
top principal components, and cross-validated site classification."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pandas as pd
from scipy import stats

from .._progress import Progress
from .._validation import check_option
from ..exceptions import InputError, add_to_records, record_warnings
from ._common import Prepared, complete_rows, group_sums, prepare
from ._parallel import _serial, sized_by_features, workers
from ._permutation import STOP_AFTER, CellPermuter, cv_cells, sequential_null
from ._wchisq import mdmr_pvalue
from .residuals import ols_residuals

__all__ = ["permanova", "pc_covariance_tests", "site_classification", "MULTIVARIATE_COLUMNS",
           "CLASSIFICATION_COLUMNS"]

#: Columns of :func:`permanova` and :func:`pc_covariance_tests` tables.
MULTIVARIATE_COLUMNS = ["test", "n", "variant", "statistic", "df1", "df2", "p_unc", "p_method", "effect_size",
                        "effect_size_name", "n_components", "n_permutations"]
#: Columns of :func:`site_classification` tables.
CLASSIFICATION_COLUMNS = ["metric", "n", "value", "sd", "chance", "null_mean", "null_sd", "p_perm", "n_permutations",
                          "n_splits", "n_repeats", "classifier", "n_components", "max_permutations"]
#: Classifiers of :func:`site_classification`.
CLASSIFIERS = ("lda", "logistic")


def _check_permutations(n_permutations, owner: str) -> None:
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, (int, np.integer)) or n_permutations < 0:
        raise InputError(f"{owner}: the number of permutations must be an integer >= 0; got {n_permutations!r}.")


def _standardize(A: np.ndarray) -> np.ndarray:
    """Centred columns scaled to unit SD (ddof 1), as R's ``scale``; one new array (``A`` is not modified)."""
    Z = A - A.mean(axis=0)
    sd = np.sqrt(np.einsum("ij,ij->j", Z, Z) / (Z.shape[0] - 1))
    sd[sd == 0] = 1.0
    Z /= sd
    return Z


def _ssb(Z: np.ndarray, codes: np.ndarray, counts: np.ndarray) -> float:
    oh = np.zeros((Z.shape[0], counts.size))
    oh[np.arange(Z.shape[0]), codes] = 1.0
    sums = oh.T @ Z
    return float(((sums ** 2).sum(axis=1) / counts).sum())


#: Permutations per block of the vectorized PERMANOVA null (their sparse indicator matrix: ~2 MB at n = 5,000).
PERMANOVA_BLOCK = 100
#: Feature columns per block of that null: the block (n × 16 doubles) stays in the core's cache while every
#: permutation of the block sums its rows by site.
PERMANOVA_COLUMNS = 16


class _PermutedSites:
    """The site indicators of a block of label permutations, as one sparse matrix.

    Permutation ``p`` gives row ``i`` the site ``codes[p[i]]``, so the rows of site ``g`` are ``p⁻¹(I_g)``.
    The matrix has one row per (permutation, site) for every site but the largest (whose sums follow from
    the column totals) and a 1 for each of that site's rows: its product with a feature block gives all the
    permuted site sums at once, touching each row once per permutation (no n × m one-hot products).
    """

    def __init__(self, codes: np.ndarray, counts: np.ndarray, perms: list):
        import scipy.sparse as sp

        n, m = codes.size, counts.size
        self.big = int(np.argmax(counts))
        order = np.argsort(codes, kind="stable")
        keep = order[codes[order] != self.big]  # rows of the other sites, grouped by site
        self.sizes = np.delete(counts, self.big).astype(float)
        self.n_big = float(counts[self.big])
        inv = np.empty(n, dtype=np.intp)
        ar = np.arange(n)
        idx = np.empty((len(perms), keep.size), dtype=np.int64 if n > 2**31 - 1 else np.int32)
        for b, p in enumerate(perms):
            inv[p] = ar
            idx[b] = inv[keep]
        self._idx, self._m1, self._n = idx, m - 1, n
        self._sp = sp

    def matrix(self, which: np.ndarray | None = None):
        idx = self._idx if which is None else self._idx[which]
        rows = idx.shape[0] * self._m1
        indptr = np.zeros(rows + 1, dtype=idx.dtype)
        np.cumsum(np.tile(self.sizes.astype(idx.dtype), idx.shape[0]), out=indptr[1:])
        return self._sp.csr_matrix((np.ones(idx.size), idx.ravel(), indptr), shape=(rows, self._n))

    def column_terms(self, A, Yb: np.ndarray, total: np.ndarray) -> np.ndarray:
        """``Σ_g (site-g sum of column j)² / n_g`` for every permutation of ``A`` and column j of ``Yb``."""
        S = (A @ Yb).reshape(-1, self._m1, Yb.shape[1])
        last = total - S.sum(axis=1)  # the largest site's sums: the column totals minus the others
        return np.einsum("bgj,bgj,g->bj", S, S, 1.0 / self.sizes) + last * last / self.n_big


def _column_blocks(k: int, first: int = 0) -> list[slice]:
    """Column blocks of PERMANOVA_COLUMNS; with ``first`` > 0 the first block is columns ``[0, first)``."""
    cuts = sorted({0, k} | set(range(first, k, PERMANOVA_COLUMNS)))
    return [slice(a, b) for a, b in zip(cuts[:-1], cuts[1:])]


def permuted_ssb(Z: np.ndarray, codes: np.ndarray, counts: np.ndarray, perms: list) -> np.ndarray:
    """Between-site sums of squares of the centred ``Z`` under the labels ``codes[p]`` of every ``p`` in
    ``perms`` (the PERMANOVA null), all permutations at once; equal to :func:`_ssb` on each permuted
    label vector up to rounding."""
    ps = _PermutedSites(codes, counts, perms)
    A = ps.matrix()

    def block(blk):
        Yb = np.ascontiguousarray(Z[:, blk])
        return ps.column_terms(A, Yb, Yb.sum(axis=0)).sum(axis=1)

    out = np.zeros(len(perms))
    with workers() as pmap:
        for part in pmap(block, _column_blocks(Z.shape[1])):
            out += part
    return out


def _screen_rank(lam_desc: np.ndarray, m: int, n: int, threshold: float) -> int:
    """Components after which the bounds of :func:`_count_exceedances` decide most permutations, else 0 (no
    screening; the null then costs the same as without it).

    The upper bound decides "below" once (m - 1) λ_{r+1} is under half the observed SSB (a large SSB: a site
    effect); the lower bound decides "reaches" once the permutation mean of the first r components' SSB,
    (m - 1)/(n - 1) Σ_{j<=r} λ_j, is over 4 times the observed SSB (a tiny SSB: site means equalized, as after
    ComBat). Only the first half of the components is considered.
    """
    k = lam_desc.size
    if k < 2:
        return 0
    half = lam_desc[: k // 2 + 1]
    hi = np.flatnonzero((m - 1) * half < 0.5 * threshold)  # index j: λ_{j+1} small enough, r = j
    lo = np.flatnonzero((m - 1) / (n - 1) * np.cumsum(half) > 4.0 * threshold)  # index j: r = j + 1
    cand = ([int(hi[0])] if hi.size else []) + ([int(lo[0]) + 1] if lo.size else [])
    return min(max(1, min(cand)), k - 1) if cand else 0


def _count_exceedances(Z: np.ndarray, codes: np.ndarray, counts: np.ndarray, ssb: float, n_permutations: int,
                       rng, lam_desc: np.ndarray, bar, gram: np.ndarray | None = None) -> int:
    """How many of ``n_permutations`` label permutations (``rng.permutation(n)`` each, in order) reach the
    observed SSB (within 1e-12 relative): the PERMANOVA null, by blocks of permutations.

    Exact screening when the observed SSB is large (a site effect) or tiny (site means equalized, as after
    ComBat; :func:`_screen_rank`): with ``Y = Z V`` the principal component scores
    (``λ_j = ||y_j||²`` descending), a permutation's SSB is ``Σ_j λ_j a_j`` with ``a_j`` the squared norm of
    the projection of the unit score ``y_j/√λ_j`` on the permuted site indicators, ``0 <= a_j`` and
    ``Σ_j a_j <= m - 1``. After the first r components, ``P = Σ_{j<=r} λ_j a_j`` bounds the SSB below and
    ``P + λ_{r+1}(m - 1 - Σ_{j<=r} a_j)`` above; only permutations the bounds leave undecided (with a margin
    of 1e-9 for rounding) get the remaining components. The count is the same as without screening.
    ``gram`` is ``Zᵀ Z`` when already computed.
    """
    n, m = codes.size, counts.size
    threshold = ssb * (1 - 1e-12)
    r = _screen_rank(lam_desc, m, n, threshold) if lam_desc is not None else 0
    if r:
        _, vec = np.linalg.eigh(Z.T @ Z if gram is None else gram)
        Y = Z @ vec[:, ::-1]
        lam = np.einsum("ij,ij->j", Y, Y)
    else:
        Y = Z
    blocks = [np.ascontiguousarray(Y[:, blk]) for blk in _column_blocks(Y.shape[1], r)]
    totals = [b.sum(axis=0) for b in blocks]
    exceed, done = 0, 0
    with workers() as pmap:
        while done < n_permutations:
            B = min(PERMANOVA_BLOCK, n_permutations - done)
            ps = _PermutedSites(codes, counts, [rng.permutation(n) for _ in range(B)])
            A = ps.matrix()
            pb = np.zeros(B)
            first = 0
            if r:
                terms = ps.column_terms(A, blocks[0], totals[0])
                pb = terms.sum(axis=1)
                a = np.minimum(terms / np.maximum(lam[:r], 1e-300), 1.0).sum(axis=1)  # a_j <= 1
                upper = pb + lam[r:].max() * np.maximum(m - 1 - a, 0.0)
                no, yes = upper < threshold * (1 - 1e-9), pb >= threshold * (1 + 1e-9)
                exceed += int(yes.sum())
                rest = np.flatnonzero(~(no | yes))
                pb = pb[rest]
                A = ps.matrix(rest) if rest.size else None
                first = 1
            if A is not None:
                parts = pmap(lambda i: ps.column_terms(A, blocks[i], totals[i]).sum(axis=1),
                             range(first, len(blocks)))
                for part in parts:
                    pb += part
                exceed += int(np.sum(pb >= threshold))
            done += B
            bar.update(B)
    return exceed


def permanova_arrays(Z: np.ndarray, codes: np.ndarray, counts: np.ndarray, n_permutations: int, rng,
                     overwrite: bool = False, progress=Progress) -> dict:
    """PERMANOVA with Euclidean distances on the (centred) rows of ``Z``.

    For Euclidean distances the Gower-centred matrix is ``G = Z Zᵀ``, so ``tr(HGH)`` is the between-site
    sum of squares of ``Z`` and ``tr(G)`` its total sum of squares: no n × n matrix is formed.
    ``overwrite=True`` centres ``Z`` in place (no copy; for callers that own ``Z``). The permutation null
    runs in blocks of permutations (:func:`_count_exceedances`); the permutations are ``rng.permutation(n)``
    drawn one after the other, as a loop over them would.
    """
    n, m = Z.shape[0], counts.size
    if overwrite:
        Z -= Z.mean(axis=0)
    else:
        Z = Z - Z.mean(axis=0)
    if Z.shape[1] > n:  # same inner products, fewer columns
        U, S, _ = np.linalg.svd(Z, full_matrices=False)
        Z = U * S
    sst = float(np.einsum("ij,ij->", Z, Z))
    ssb = _ssb(Z, codes, counts)
    ssw = sst - ssb
    F = (ssb / (m - 1)) / (ssw / (n - m))
    # MDMR's analytic null: the positive eigenvalues of G = Z Zᵀ are those of the small Zᵀ Z
    gram = Z.T @ Z if Z.shape[1] <= n else None
    lam = np.linalg.eigvalsh(gram) if gram is not None else np.linalg.svd(Z, compute_uv=False) ** 2
    exceed = 0
    if n_permutations > 0:
        with progress(n_permutations, "PERMANOVA permutations") as bar:
            exceed = _count_exceedances(Z, codes, counts, ssb, n_permutations, rng, np.sort(lam)[::-1], bar, gram)
    p = (1.0 + exceed) / (1.0 + n_permutations) if n_permutations > 0 else np.nan
    p_analytic = mdmr_pvalue(lam, ssb / ssw, m - 1, n - m)
    return {"pseudo_F": F, "pseudo_R2": ssb / sst, "mdmr_statistic": ssb / ssw, "df1": float(m - 1),
            "df2": float(n - m), "p": p, "p_analytic": p_analytic}


def multivariate_data(P: Prepared, owner: str = "diagnostics") -> Prepared | None:
    """The data of the multivariate checks: ``P`` for complete features; with missing values the rows
    without a missing feature (:func:`~._common.complete_rows`; None when none can be used, with a warning)."""
    return complete_rows(P, owner).sub if P.missing else P


def unavailable_table(P: Prepared, tests, columns, owner: str = "diagnostics", **fixed) -> pd.DataFrame:
    """The rows of multivariate checks that cannot run on missing data: NaN statistics and the reason."""
    c = complete_rows(P, owner)
    why = f"not computed: {c.reason} (the multivariate checks use the rows without a missing feature)"
    rows = [{**{k: np.nan for k in columns}, **fixed, key: name, "n": c.n, "variant": why}
            for key, name in tests]
    return pd.DataFrame(rows)[columns]


def _prepared_additive(X, covariates, batch, formula, owner, residuals=None):
    """``(P, Pm, r_add)``: the inputs, the data of the multivariate checks (:func:`multivariate_data`) and
    its additive residuals (None when there is nothing to test)."""
    P = prepare(X, covariates, batch, formula, owner)
    Pm = multivariate_data(P, owner)
    r_add = None if Pm is None else (residuals if residuals is not None else ols_residuals(Pm)[0])
    return P, Pm, r_add


@sized_by_features
def permanova(X: pd.DataFrame, covariates: pd.DataFrame, *, batch: str = "site", formula: str | None = None,
              n_permutations: int = 999, random_state=None, n_jobs: int | None = None) -> pd.DataFrame:
    """PERMANOVA / MDMR of site on the column-standardized additive residuals (Euclidean distances).

    With missing values (NaN cells) it runs on the rows without a missing feature (``n`` in the table; the
    same as calling it on ``X.dropna()``), and gives NaN statistics with the reason in ``variant`` when they
    cannot be used (``docs/methods.md`` §6.9).

    ComBatFamQC's MDMR (``MDMR::mdmr`` on ``dist(scale(R_add))``): its ``Statistic`` is our
    ``mdmr_statistic`` = tr(HGH)/tr((I-H)G(I-H)) and its ``Pseudo.R2`` our pseudo-R². Two p-values:

    * ``permanova``: ``n_permutations`` seeded label permutations, ``(1 + #exceed)/(1 + n_permutations)``
      (NaN with 0 permutations);
    * ``mdmr``: MDMR's analytic null (McArtor, Lubke & Bergeman 2017), ``P(Σ λ_k χ²_{m-1} - F Σ λ_k
      χ²_{n-m} > 0)`` with ``λ_k`` the eigenvalues of G and F = ``mdmr_statistic``, computed by numerical
      inversion of the characteristic function (:mod:`featharm.diagnostics._wchisq`; accurate in relative
      terms far into the tail, where Davies' and Imhof's methods have an absolute error floor). This is the
      p-value ComBatFamQC reports (``MDMR::mdmr`` uses it for n >= 200 and permutations below; the analytic
      null is an approximation that its authors recommend from n = 200 on; prefer the permutation p-value
      for smaller samples).
    n_jobs : int, optional
        Threads (as in the models): None (default) lets featharm choose: one on a small table, else the CPUs
        the rest of the machine leaves free; -1 all CPUs. The results do not depend on it.

    Returns
    -------
    DataFrame
        Two rows, columns :data:`MULTIVARIATE_COLUMNS` plus ``mdmr_statistic`` (``n``: the rows used):
        ``test`` = ``"permanova"`` (``statistic`` = pseudo-F = (tr(HGH)/(m-1)) / (tr((I-H)G(I-H))/(n-m)), ``p_method`` =
        ``"permutation"``) and ``"mdmr"`` (``statistic`` = tr(HGH)/tr((I-H)G(I-H)), ``p_method`` =
        ``"analytic"``); both with ``df1`` = m-1, ``df2`` = n-m, ``effect_size`` = pseudo-R² = tr(HGH)/tr(G).
    """
    P, Pm, r_add = _prepared_additive(X, covariates, batch, formula, "permanova")
    if Pm is None:
        return unavailable_table(P, [("test", "permanova"), ("test", "mdmr")],
                                 MULTIVARIATE_COLUMNS + ["mdmr_statistic"], "permanova",
                                 n_permutations=int(n_permutations))
    return permanova_table(Pm, r_add, n_permutations, random_state)


def permanova_table(P: Prepared, r_add: np.ndarray, n_permutations: int, random_state,
                    progress=Progress) -> pd.DataFrame:
    _check_permutations(n_permutations, "permanova")
    r_add = r_add[:, ~P.constant] if P.constant.any() else r_add
    res = permanova_arrays(_standardize(r_add), P.codes, P.counts, int(n_permutations),
                           np.random.default_rng(random_state), overwrite=True, progress=progress)
    common = {"df1": res["df1"], "df2": res["df2"], "effect_size": res["pseudo_R2"],
              "effect_size_name": "pseudo_R2", "n_components": np.nan}
    return pd.DataFrame([
        {"test": "permanova", "n": P.n, "variant": "Euclidean distance of standardized additive residuals",
         "statistic": res["pseudo_F"], "p_unc": res["p"], "p_method": "permutation",
         "n_permutations": int(n_permutations), "mdmr_statistic": res["mdmr_statistic"], **common},
        {"test": "mdmr", "n": P.n,
         "variant": "MDMR analytic null (McArtor et al. 2017), standardized additive residuals",
         "statistic": res["mdmr_statistic"], "p_unc": res["p_analytic"], "p_method": "analytic",
         "n_permutations": 0, "mdmr_statistic": res["mdmr_statistic"], **common},
    ])[MULTIVARIATE_COLUMNS + ["mdmr_statistic"]]


def _pc_scores(r_add: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """Scores on the first ``k`` principal components of the standardized columns, and their variance share."""
    Z = _standardize(r_add)
    if Z.shape[0] >= Z.shape[1]:  # eigen-decomposition of the small V × V cross-product
        w, Vec = np.linalg.eigh(Z.T @ Z)
        w, Vec = w[::-1], Vec[:, ::-1]
        explained = float(w[:k].sum() / w.sum())
        return Z @ Vec[:, :k], explained
    U, S, _ = np.linalg.svd(Z, full_matrices=False)
    explained = float((S[:k] ** 2).sum() / (S ** 2).sum())
    return U[:, :k] * S[:k], explained


def box_m(T: np.ndarray, codes: np.ndarray, counts: np.ndarray) -> tuple[float, float, float]:
    """Box's M test of equal covariance matrices of the rows of ``T`` by site: ``(chi2, df, p)``."""
    n, k = T.shape
    m = counts.size
    logdets, Sp = [], np.zeros((k, k))
    for g in range(m):
        Tg = T[codes == g]
        Sg = np.cov(Tg, rowvar=False, ddof=1).reshape(k, k)
        Sp += (counts[g] - 1) * Sg
        logdets.append(np.linalg.slogdet(Sg)[1])
    Sp /= n - m
    M = (n - m) * np.linalg.slogdet(Sp)[1] - float(np.sum((counts - 1) * np.array(logdets)))
    c = (2 * k ** 2 + 3 * k - 1) / (6.0 * (k + 1) * (m - 1)) * (np.sum(1.0 / (counts - 1)) - 1.0 / (n - m))
    stat = (1 - c) * M
    df = k * (k + 1) * (m - 1) / 2.0
    return stat, df, float(stats.chi2.sf(stat, df))


def pillai(T: np.ndarray, codes: np.ndarray, counts: np.ndarray) -> tuple[float, float, float, float, float]:
    """One-way MANOVA of the rows of ``T`` on site, Pillai's trace: ``(V, F, df1, df2, p)``."""
    n, p = T.shape
    m = counts.size
    oh = np.zeros((n, m))
    oh[np.arange(n), codes] = 1.0
    means = group_sums(oh, T) / counts[:, None]
    grand = T.mean(axis=0)
    W = T - means[codes]
    E = W.T @ W
    D = (means - grand) * np.sqrt(counts)[:, None]
    H = D.T @ D
    V = float(np.trace(np.linalg.solve(H + E, H)))
    s = min(p, m - 1)
    mm = (abs(p - (m - 1)) - 1) / 2.0
    nn = (n - m - p - 1) / 2.0
    df1 = s * (2 * mm + s + 1)
    df2 = s * (2 * nn + s + 1)
    F = (2 * nn + s + 1) / (2 * mm + s + 1) * V / (s - V)
    return V, F, df1, df2, float(stats.f.sf(F, df1, df2))


@sized_by_features
def pc_covariance_tests(X: pd.DataFrame, covariates: pd.DataFrame, *, batch: str = "site",
                        formula: str | None = None, n_components: int | None = None, n_jobs: int | None = None) -> pd.DataFrame:
    """MANOVA (Pillai's trace) and Box's M of site on the top principal components of the additive residuals.

    The additive residuals are column-standardized (as ComBatFamQC's PCA) and their first
    ``n_components`` principal component scores tested: MANOVA for a site difference in their means,
    Box's M (chi-square approximation) for a difference in their covariance matrices. With missing values
    (NaN cells) both use the rows without a missing feature, as :func:`permanova` (``n``: their number).

    Parameters
    ----------
    n_components : int, optional
        Default ``min(10, V, smallest site size - 2)`` (Box's M needs more rows than components per site).
    n_jobs : int, optional
        Threads (as in the models): None (default) lets featharm choose: one on a small table, else the CPUs
        the rest of the machine leaves free; -1 all CPUs. The results do not depend on it.

    Returns
    -------
    DataFrame
        Two rows (``test`` = ``"manova_pillai"``, ``"box_m"``), columns :data:`MULTIVARIATE_COLUMNS`:
        MANOVA: ``statistic`` = the F approximation of Pillai's trace with ``df1``, ``df2``;
        ``effect_size`` = Pillai's V / min(k, m - 1) (``pillai_v_over_s``). Box's M: ``statistic`` =
        (1 - c) M, chi-square with ``df1`` = k(k+1)(m-1)/2; ``effect_size`` NaN.
        ``n_components`` = k; ``explained_variance`` = share of the total variance in the k components.
    """
    P, Pm, r_add = _prepared_additive(X, covariates, batch, formula, "pc_covariance_tests")
    if Pm is None:
        return unavailable_table(P, [("test", "manova_pillai"), ("test", "box_m")],
                                 MULTIVARIATE_COLUMNS + ["explained_variance"], "pc_covariance_tests")
    return pc_tests_table(Pm, r_add, n_components)


def pc_tests_table(P: Prepared, r_add: np.ndarray, n_components: int | None) -> pd.DataFrame:
    r_add = r_add[:, ~P.constant] if P.constant.any() else r_add
    V = r_add.shape[1]
    kmax = min(V, int(P.counts.min()) - 2, P.n - P.m - 1)
    k = min(10, kmax) if n_components is None else int(n_components)
    if k < 1 or k > kmax:
        raise InputError(
            f"pc_covariance_tests: n_components must be between 1 and {max(kmax, 0)} (features, and the "
            f"smallest site's size {int(P.counts.min())} minus 2); got {k}."
        )
    T, explained = _pc_scores(r_add, k)
    Vp, F, df1, df2, p = pillai(T, P.codes, P.counts)
    bm, bdf, bp = box_m(T, P.codes, P.counts)
    base = {"n": P.n, "p_method": None, "n_components": k, "n_permutations": 0, "explained_variance": explained}
    return pd.DataFrame([
        {**base, "test": "manova_pillai", "variant": f"Pillai's trace, F approximation, top {k} PCs",
         "statistic": F, "df1": df1, "df2": df2, "p_unc": p, "p_method": "F",
         "effect_size": Vp / min(k, P.m - 1), "effect_size_name": "pillai_v_over_s"},
        {**base, "test": "box_m", "variant": f"Box's M, chi-square approximation, top {k} PCs",
         "statistic": bm, "df1": bdf, "df2": np.nan, "p_unc": bp, "p_method": "chi2",
         "effect_size": np.nan, "effect_size_name": "none"},
    ])[MULTIVARIATE_COLUMNS + ["explained_variance"]]


# ------------------------------------------------------------------------------------- classification
def _with_smooth_bounds(h, cov: pd.DataFrame):
    """A harmonizer with smooth (spline) terms gets, for every smooth term without bounds of its own, the
    range of that covariate over all the rows as its boundary knots (``smooth_bounds``), so that a test fold's
    youngest or oldest subject is inside the basis of the model fitted on the other folds (otherwise an
    ``OutOfRangeError``). The bounds use covariate values only, never the site labels: no leakage."""
    params = h.get_params()
    terms_of = getattr(h, "_terms", None)
    if "smooth_bounds" not in params or terms_of is None:
        return h
    bounds = dict(params["smooth_bounds"] or {})
    for term in terms_of()[0]:
        if term in bounds or term not in cov:
            continue
        x = pd.to_numeric(cov[term], errors="coerce").to_numpy(dtype=float)
        x = x[np.isfinite(x)]
        if x.size and x.min() < x.max():
            bounds[term] = (float(x.min()), float(x.max()))
    return h.set_params(smooth_bounds=bounds or params["smooth_bounds"])


def _fold_harmonizer(harmonizer, P: Prepared):
    """``run(train, test)``: a clone of ``harmonizer`` fitted on the training rows and applied to both (arrays).
    The feature and covariate tables are built once, for all folds (the feature table without a copy: a
    harmonizer never modifies its input)."""
    from sklearn.base import clone

    X = pd.DataFrame(P.Y, index=P.index, columns=P.features, copy=False)
    cov = P.covariates.copy()
    cov[P.batch] = np.array([str(lv) for lv in P.levels], dtype=object)[P.codes]
    template = _with_smooth_bounds(clone(harmonizer), cov)

    def run(train, test):
        h = clone(template)
        tr = h.fit_transform(X.iloc[train], cov.iloc[train]).to_numpy()
        te = h.transform(X.iloc[test], cov.iloc[test]).to_numpy()
        return tr, te

    return run


def _cv_scores(Y, Xc, codes, m, splits, C, fold_data=None):
    import warnings

    from sklearn.exceptions import ConvergenceWarning as SkConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    bacc, auc = [], []
    V = Y.shape[1]
    # one training and one test buffer for all folds (and permutations): the features are copied into them
    # and residualized, standardized in place, column block by column block (no n × V temporaries)
    buf_tr = np.empty((max(len(tr) for tr, _ in splits), V))
    buf_te = np.empty((max(len(te) for _, te in splits), V))
    step = max(1, (2 * 2**20) // (8 * max(Y.shape[0], 1)))
    for i, (train, test) in enumerate(splits):
        Rtr, Rte = buf_tr[:len(train)], buf_te[:len(test)]
        src_tr, src_te = (fold_data[i] if fold_data is not None else (None, None))
        for s in range(0, V, step):  # column blocks: Y may be F-ordered (a DataFrame's values)
            blk = slice(s, min(s + step, V))
            Rtr[:, blk] = Y[:, blk][train] if src_tr is None else src_tr[:, blk]
            Rte[:, blk] = Y[:, blk][test] if src_te is None else src_te[:, blk]
        W = np.hstack([np.ones((len(train), 1)), Xc[train]])
        Wte = np.hstack([np.ones((len(test), 1)), Xc[test]])
        mu, sd = np.empty(V), np.empty(V)
        for s in range(0, V, step):  # covariates residualized inside the fold (least squares on training rows)
            blk = slice(s, min(s + step, V))
            coef = np.linalg.lstsq(W, Rtr[:, blk], rcond=None)[0]
            Rtr[:, blk] -= W @ coef
            Rte[:, blk] -= Wte @ coef
            mu[blk], sd[blk] = Rtr[:, blk].mean(axis=0), Rtr[:, blk].std(axis=0)
        sd[sd == 0] = 1.0
        Rtr -= mu
        Rtr /= sd
        Rte -= mu
        Rte /= sd
        # Newton-Cholesky converges in a few steps while the Hessian ((V+1)(m-1))² stays small
        solver = "newton-cholesky" if (Y.shape[1] + 1) * (m - 1) <= 1500 else "lbfgs"
        clf = LogisticRegression(C=C, max_iter=2000, solver=solver)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SkConvergenceWarning)
            clf.fit(Rtr, codes[train])
        proba = clf.predict_proba(Rte)
        pred = clf.classes_[np.argmax(proba, axis=1)]
        yt = codes[test]
        present = np.unique(yt)
        # balanced accuracy = mean recall over the sites present in the test fold; macro one-vs-rest AUC
        # over those sites (a permuted fold may miss a small site)
        bacc.append(float(np.mean([np.mean(pred[yt == c] == c) for c in present])))
        col = {c: j for j, c in enumerate(clf.classes_)}
        per = [roc_auc_score(yt == c, proba[:, col[c]]) for c in present if c in col and 0 < np.sum(yt == c) < yt.size]
        auc.append(float(np.mean(per)) if per else np.nan)
    return np.mean(bacc), np.std(bacc), np.mean(auc), np.std(auc)


@sized_by_features
def site_classification(X: pd.DataFrame, covariates: pd.DataFrame, *, batch: str = "site",
                        formula: str | None = None, n_splits: int = 5, n_repeats: int = 2,
                        n_permutations: int = 100, C: float = 1.0, harmonizer=None, groups: str | None = None,
                        random_state=None, classifier: str = "lda", n_components: int | None = None,
                        stop_after: int | None = STOP_AFTER, n_jobs: int | None = None) -> pd.DataFrame:
    """Can the site be predicted from the features? Cross-validated classification against a permutation null.

    Repeated stratified k-fold CV on all rows, or with missing values (NaN cells) on the rows without a
    missing feature (``n`` in the table; ``docs/methods.md`` §6.9). Inside every training fold the features
    are regressed on the covariates (``y ~ 1 + covariates``, fitted on the training rows only and applied to
    the test rows) and standardized with the training moments; residualizing the covariates keeps site from
    being predicted through biology that differs by site (§6.5). Then the classifier predicts the site:

    * ``classifier="lda"`` (default): a PCA of the fold's standardized training residuals (the first
      ``n_components``, default ``min(20, features, n_train - sites - 1)``) and linear discriminant analysis
      on the scores (pooled within-site covariance, equal priors; closed form). Nothing before the
      discriminant uses the labels, so the fold's decomposition is reused for every permutation.
    * ``classifier="logistic"``: L2 multinomial logistic regression (``C``) on all standardized features,
      refitted for every permutation (slow: ~1,000 fits with the defaults). With ``stop_after=None`` it
      reproduces featharm's earlier default exactly (same ``random_state``, same numbers).

    **Null.** Seeded permutations of the site labels, run through the same folds and features (the
    classifier is refitted on the permuted training labels and scored on the permuted test labels). With
    LDA the labels are permuted inside the *cells* of the CV (rows that share their test fold in every
    repeat): each fold keeps its rows and its number of rows per site, so the null conditions on the folds
    exactly; logistic regression permutes all rows, as before. Whole subjects are permuted when ``groups``
    is given and each subject stays at one site. Besag–Clifford sequential stopping: a p-value is decided
    once ``stop_after`` (h) permuted statistics reach the observed one, ``p = h/L`` after L permutations;
    the run ends when both metrics are decided, or at ``n_permutations`` with ``(1 + #exceed)/(1 + n)``.

    **Harmonized data.** Data harmonized on *all* rows carry information from the test rows: their site
    means were equalized using them, so a training fold's site means mirror the held-out rows' and the
    classifier scores *below* chance (a balanced accuracy of 0.12 for 4 sites is typical). For an unbiased
    check pass the raw ``X`` and the (unfitted) model as ``harmonizer``: a clone is fitted on every
    training fold and applied to its test fold (``docs/methods.md`` §6.5, §6.8 pitfall 1). The harmonizer
    is fitted once per fold, with the true sites; the null permutes the labels the classifier sees on those
    harmonized folds, so it tests whether the harmonized features still carry site information.

    Parameters
    ----------
    X, covariates, batch, formula
        As in :func:`test_site_effects`.
    n_splits, n_repeats : int
        Stratified k-fold CV, repeated (different shuffles).
    n_permutations : int, default 100
        Largest number of label permutations of the null (0: none).
    C : float, default 1.0
        Inverse L2 penalty of the logistic regression (``classifier="logistic"`` only).
    harmonizer : featharm harmonizer, optional
        E.g. ``featharm.ComBat(batch="site", formula="age + sex")``: fitted inside each training fold. A model
        with smooth terms (``ComBatGAM``, ``LongComBatGAM``) gets the whole table's range of each smooth
        covariate as its ``smooth_bounds`` (unless given), so no test fold falls outside its basis.
    groups : str, optional
        Subject column for repeated scans: folds keep all scans of a subject together (stratified group
        k-fold), and when every subject stays at one site the null permutes the sites of whole subjects.
    random_state : int or Generator, optional
        Seeds the CV shuffles and the permutations.
    classifier : {"lda", "logistic"}, default "lda"
        See above.
    n_components : int, optional
        Principal components of the LDA (default 20, capped as above).
    stop_after : int or None, default 10
        Besag–Clifford's h; None runs all ``n_permutations``.
    n_jobs : int, optional
        Threads (as in the models): None (default) lets featharm choose: one on a small table, else the CPUs
        the rest of the machine leaves free; -1 all CPUs. The results do not depend on it.

    Returns
    -------
    DataFrame
        Two rows (``metric`` = ``"balanced_accuracy"``, ``"auc_macro_ovr"``), columns
        :data:`CLASSIFICATION_COLUMNS`: ``n`` (rows classified), ``value`` (mean over folds × repeats),
        ``sd`` (over folds), ``chance`` (1/m for balanced accuracy, 0.5 for AUC), ``null_mean``/``null_sd`` of the
        permutations run, ``p_perm`` (NaN without permutations), ``n_permutations`` (the permutations run),
        ``n_splits``, ``n_repeats``, ``classifier``, ``n_components`` (LDA; NaN for logistic regression),
        ``max_permutations``.
    """
    P = prepare(X, covariates, batch, formula, "site_classification")
    Pm = multivariate_data(P, "site_classification")
    if Pm is None:
        return unavailable_classification(P, n_splits, n_repeats, n_permutations, classifier)
    return classification_table(Pm, n_splits, n_repeats, n_permutations, C, random_state, harmonizer, groups,
                                classifier=classifier, n_components=n_components, stop_after=stop_after)


def check_cv_sites(P: Prepared, n_splits: int, groups: str | None = None):
    """Refuse sites too small for stratified ``n_splits``-fold CV; returns the subject codes (or None).

    Called by :func:`diagnose` before any other work, so a tiny site fails in seconds, not after the tests.
    """
    g = None
    if groups is not None:
        from .mixed import subject_codes

        g = subject_codes(P.covariates, groups, "site_classification")
        units = np.array([len(np.unique(g[P.codes == k])) for k in range(P.m)])
        what = "subjects"
    else:
        units, what = P.counts, "rows"
    where = ""
    if P.complete_of is not None:  # missing values: the classification uses the rows without a missing feature
        where = (f" without a missing feature (the classification uses those rows: {P.n} of {P.complete_of}; "
                 "leaving out the features with the most missing cells keeps more)")
    if int(units.min()) < n_splits:
        small = [f"{lv!r} ({what}={c})" for lv, c in zip(P.levels, units) if c < n_splits]
        raise InputError(
            f"site_classification: every site needs at least n_splits={n_splits} {what}{where} for stratified "
            f"CV; too small: {', '.join(small)}. Lower n_splits (command line: --n-splits), skip the "
            "classification (classification=False, --no-classification) or merge those sites."
        )
    return g


def _check_classifier_options(classifier, n_components, stop_after, owner: str) -> None:
    check_option("classifier", classifier, CLASSIFIERS, owner)
    for name, v in (("n_components", n_components), ("stop_after", stop_after)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
            raise InputError(f"{owner}: {name} must be a positive integer or None; got {v!r}.")


def classification_table(P: Prepared, n_splits: int, n_repeats: int, n_permutations: int, C: float,
                         random_state, harmonizer=None, groups: str | None = None, *, classifier: str = "lda",
                         n_components: int | None = None, stop_after: int | None = STOP_AFTER,
                         progress=Progress) -> pd.DataFrame:
    """:func:`site_classification` on prepared inputs (used by :func:`diagnose`); ``progress(total, step)``
    opens the progress bar of a step."""
    from sklearn.model_selection import RepeatedStratifiedKFold, StratifiedGroupKFold

    _check_permutations(n_permutations, "site_classification")
    _check_classifier_options(classifier, n_components, stop_after, "site_classification")
    g = check_cv_sites(P, n_splits, groups)
    rng = np.random.default_rng(random_state)
    seed = int(rng.integers(2**31 - 1))

    if g is None:
        cv = RepeatedStratifiedKFold(n_splits=n_splits, n_repeats=n_repeats, random_state=seed)
        splits = list(cv.split(P.Y, P.codes))
    else:
        splits = [sp for r in range(n_repeats) for sp in
                  StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed + r).split(P.Y, P.codes, g)]
    # under the null whole subjects change site when each subject has one site; otherwise rows are permuted
    subject_site = None
    if g is not None:
        first = np.full(int(g.max()) + 1, -1)
        first[g] = P.codes
        if np.array_equal(first[g], P.codes):
            subject_site = first
    if classifier == "logistic":
        stats_obs, sds, null = _logistic_null(P, splits, C, harmonizer, rng, n_permutations, stop_after, g,
                                              subject_site, progress)
        k = np.nan
    else:
        stats_obs, sds, null, k = _lda_null(P, splits, n_splits, harmonizer, rng, n_permutations, stop_after, g,
                                            subject_site, n_components, progress)
    rows = []
    for j, (name, chance) in enumerate([("balanced_accuracy", 1.0 / P.m), ("auc_macro_ovr", 0.5)]):
        if n_permutations > 0:
            nm = float(null.null[:, j].mean())
            ns = float(null.null[:, j].std(ddof=1)) if null.n_run > 1 else np.nan
            p = float(null.p[j])
        else:
            nm = ns = p = np.nan
        rows.append({"metric": name, "n": P.n, "value": stats_obs[j], "sd": sds[j], "chance": chance,
                     "null_mean": nm, "null_sd": ns, "p_perm": p,
                     "n_permutations": int(null.n_run) if n_permutations > 0 else 0,
                     "n_splits": n_splits, "n_repeats": n_repeats, "classifier": classifier, "n_components": k,
                     "max_permutations": int(n_permutations)})
    return pd.DataFrame(rows)[CLASSIFICATION_COLUMNS]


def unavailable_classification(P: Prepared, n_splits, n_repeats, n_permutations, classifier) -> pd.DataFrame:
    """The classification table when no row without a missing feature can be used: NaN values."""
    fixed = dict(n_permutations=0, n_splits=n_splits, n_repeats=n_repeats, classifier=classifier,
                 max_permutations=int(n_permutations))
    t = unavailable_table(P, [("metric", "balanced_accuracy"), ("metric", "auc_macro_ovr")],
                          CLASSIFICATION_COLUMNS + ["variant"], "site_classification", **fixed)
    t["chance"] = [1.0 / P.m, 0.5]
    return t[CLASSIFICATION_COLUMNS]


def _without_constant(P: Prepared) -> Prepared:
    if not P.constant.any():
        return P
    return replace(P, Y=P.Y[:, ~P.constant], features=[f for f, c in zip(P.features, P.constant) if not c],
                   constant=np.zeros(int((~P.constant).sum()), dtype=bool))


def _logistic_null(P, splits, C, harmonizer, rng, n_permutations, stop_after, g, subject_site, progress=Progress):
    """The logistic-regression classification and its null: every permutation refits every fold."""
    fold_data = None
    if harmonizer is not None:
        with progress(len(splits), "site classification: refitting the harmonizer in the folds") as bar:
            fold_data = []
            refit = _fold_harmonizer(harmonizer, P)
            for tr, te in splits:
                fold_data.append(refit(tr, te))
                bar.update()
    const = P.constant
    P = _without_constant(P)
    if fold_data is not None and const.any():
        fold_data = [(a[:, ~const], b[:, ~const]) for a, b in fold_data]

    def run(codes):
        # the null keeps the folds and their (harmonized) features and permutes the labels the classifier
        # sees: it asks whether the features carry site information
        return _cv_scores(P.Y, P.Xc, codes, P.m, splits, C, fold_data)

    bacc, bsd, auc, asd = run(P.codes)

    def draw(B):
        out = np.empty((B, 2))
        for i in range(B):
            if subject_site is not None:
                r = run(subject_site[rng.permutation(subject_site.size)][g])
            else:
                r = run(P.codes[rng.permutation(P.n)])
            out[i] = r[0], r[2]
        return out

    with progress(n_permutations, "site classification permutations") as bar:
        null = sequential_null([bacc, auc], draw, int(n_permutations), stop_after, bar, first_block=1, max_block=1)
    return (bacc, auc), (bsd, asd), null


def _lda_null(P, splits, n_splits, harmonizer, rng, n_permutations, stop_after, g, subject_site, n_components,
              progress=Progress):
    """The LDA classification and its null: one residualization and factorization per fold, all permutations
    on them (:mod:`._lda`)."""
    from ._lda import RawFolds, lda_scores, n_lda_components, table_fold

    const = P.constant
    Pc = _without_constant(P)
    k = n_lda_components(n_components, Pc.Y.shape[1], min(len(tr) for tr, _ in splits), P.m)
    folds = []
    with progress(len(splits), "site classification: fold decompositions") as bar:
        raw = RawFolds(Pc.Y, Pc.Xc) if harmonizer is None else None
        W = np.hstack([np.ones((P.n, 1)), P.Xc])
        if raw is not None:
            for tr, te in splits:
                folds.append(raw.fold(tr, te, k))
                bar.update()
        else:  # the harmonizer refitted in every fold: the folds are independent, on the diagnostics' threads
            refit = _fold_harmonizer(harmonizer, P)
            caller = threading.get_ident()

            def build(split):
                tr, te = split
                with record_warnings() as log:  # this thread's: handed to the caller's records below
                    a, b = refit(tr, te)
                if const.any():
                    a, b = a[:, ~const], b[:, ~const]
                return table_fold(a, b, W[tr], W[te], k), log, threading.get_ident()

            with workers() as pmap:
                built = pmap(build, splits)
            for fold, log, ident in built:  # in fold order, whatever the threads did: reproducible records
                if ident != caller:
                    add_to_records(log)
                folds.append(fold)
                bar.update()

    def cv(labels, pmap=_serial):  # labels (B, n) -> (folds, 2, B): balanced accuracy and AUC per fold and vector
        if raw is not None:
            sums = raw.train_sums(labels, splits, n_splits, P.m, pmap)
        else:
            sums = pmap(lambda i: folds[i].own_sums(labels[:, splits[i][0]], P.m), range(len(folds)))

        def one(i):
            S, cnt = sums[i]
            return lda_scores(folds[i], folds[i].features(S), cnt, labels[:, splits[i][1]], P.m)

        return np.array(pmap(one, range(len(folds))))

    per = cv(P.codes[None])[:, :, 0]
    obs = per.mean(axis=0)
    sds = per.std(axis=0)
    cells = cv_cells(splits, P.n, n_splits)
    if subject_site is not None:
        subj_cell = np.zeros(subject_site.size, dtype=cells.dtype)
        subj_cell[g] = cells
        permuter = CellPermuter(subject_site, subj_cell, expand=g)
    else:
        permuter = CellPermuter(P.codes, cells)

    with progress(n_permutations, "site classification permutations") as bar, workers() as pmap:
        def draw(B):
            labels = np.stack([permuter.draw(rng) for _ in range(B)])
            return cv(labels, pmap).mean(axis=0).T  # (B, 2)

        null = sequential_null(obs, draw, int(n_permutations), stop_after, bar)
    return tuple(obs), tuple(sds), null, k
