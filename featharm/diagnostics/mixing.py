"""Site-mixing metrics: how well the sites are mixed in the feature space, before and after harmonization.

The metrics machine-learning users look for (``docs/methods.md`` §6.5), computed on the same embedding as
the other multivariate checks: the first principal components of the column-standardized *additive*
residuals (covariate effects removed, site effects kept; ComBatFamQC's convention, §6.1), so that an age
difference between sites is not mistaken for a site effect. Euclidean distances in that space:

* **silhouette** of the site labels (Rousseeuw 1987): per row ``s = (b - a) / max(a, b)`` with ``a`` the
  mean distance to the other rows of its site and ``b`` the smallest mean distance to another site's rows
  (``s = 0`` for a site of one row); the mean over rows. Near 1: sites form separate clusters; near 0 or
  below: mixed.
* **kBET acceptance rate** (Büttner et al. 2019): for every row, a chi-square test of the site labels of
  its ``k`` nearest neighbours (itself excluded) against the sites' overall frequencies (``m - 1`` degrees
  of freedom); the share of rows whose test is *not* rejected at ``alpha``. Well mixed: close to ``1 -
  alpha`` (neighbourhoods overlap, so the tests are not independent and the rate is not exactly that);
  separated sites: close to 0. The chi-square approximation wants every expected count ``k * n_i / n`` of
  about 5 or more: with small sites, read the rate as a relative measure (before against after).
* **iLISI** (Korsunsky et al. 2019): for every row, the inverse Simpson index ``1 / sum_i p_i^2`` of the
  site labels of its ``3 * perplexity`` nearest neighbours (itself excluded), each neighbour weighted by a
  Gaussian kernel ``exp(-beta d^2)`` whose ``beta`` is chosen, row by row, so that the weights' perplexity
  (``exp`` of their entropy) equals ``perplexity``; the median over rows. 1: every neighbourhood holds one
  site; the inverse Simpson index of the overall site frequencies (``ilisi_ideal``): as mixed as random
  labels. ``beta`` is the exact root (bisection to machine precision), not a tolerance-stopped search.

Everything is vectorized over rows (neighbour search in row blocks of the distance matrix; one bisection
for all rows at once): no Python loop over rows or features.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial.distance import cdist

from ..exceptions import InputError
from ._common import Prepared
from ._parallel import sized_by_features

__all__ = ["site_mixing", "MIXING_COLUMNS"]

DEFAULT_NEIGHBOURS = 30
DEFAULT_PERPLEXITY = 30
DEFAULT_COMPONENTS = 20
DEFAULT_SAMPLE = 1000  # rows the metrics are averaged over (a seeded sample; neighbours among all rows)
_BLOCK = 2**21  # distances per block of rows (16 MB of float64)
_BISECTIONS = 64

MIXING_COLUMNS = ["metric", "value", "ideal", "worst", "neighbours", "n_components", "n", "rows_averaged",
                  "description"]


def _row_blocks(n: int, width: int):
    step = max(1, _BLOCK // max(width, 1))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def _neighbours_of_block(D: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` smallest entries of every row of ``D`` (nearest first; ties: lower column first)."""
    n = D.shape[1]
    part = np.argpartition(D, k - 1, axis=1)[:, :k] if k < n else np.argsort(D, axis=1, kind="stable")[:, :k]
    d = np.take_along_axis(D, part, axis=1)
    # exactly the k smallest; ties at the k-th distance broken by the lower column number
    kth = d.max(axis=1, keepdims=True)
    tie = (D == kth).sum(axis=1) > (d == kth).sum(axis=1)
    for r in np.flatnonzero(tie):  # rare (equal distances at the boundary): a stable full sort
        order = np.lexsort((np.arange(n), D[r]))[:k]
        part[r], d[r] = order, D[r, order]
    order = np.lexsort((part, d), axis=1)
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(d, order, axis=1)


def _scan(Z: np.ndarray, rows: np.ndarray, k: int, onehot: np.ndarray | None):
    """One pass over the distances from ``rows`` of ``Z`` to all rows: their ``k`` nearest neighbours (itself
    excluded) with distances and, with ``onehot`` (n × m), the sums of the distances to each site."""
    q = rows.size
    idx = np.empty((q, k), dtype=np.intp)
    dist = np.empty((q, k))
    sums = None if onehot is None else np.empty((q, onehot.shape[1]))
    for blk in _row_blocks(q, Z.shape[0]):
        D = cdist(Z[rows[blk]], Z)
        if sums is not None:
            sums[blk] = D @ onehot  # the own distance is 0
        D[np.arange(D.shape[0]), rows[blk]] = np.inf  # not its own neighbour
        idx[blk], dist[blk] = _neighbours_of_block(D, k)
    return idx, dist, sums


def nearest_neighbours(Z: np.ndarray, k: int, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest rows of every row of ``Z`` (or of ``rows``), itself excluded, nearest first (ties:
    lower row first), and their Euclidean distances: two ``len(rows) × k`` arrays."""
    rows = np.arange(Z.shape[0]) if rows is None else np.asarray(rows)
    idx, dist, _ = _scan(Z, rows, k, None)
    return idx, dist


def _silhouette_from_sums(sums: np.ndarray, own: np.ndarray, counts: np.ndarray) -> np.ndarray:
    r = np.arange(sums.shape[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        a = sums[r, own] / (counts[own] - 1)
        means = sums / counts
    means[r, own] = np.inf
    means[:, counts == 0] = np.inf
    b = means.min(axis=1)
    with np.errstate(invalid="ignore"):
        s = (b - a) / np.maximum(a, b)
    s[(counts[own] <= 1) | ~np.isfinite(s)] = 0.0  # a site of one row (and a = b = 0): 0 by convention
    return s


def silhouette_by_label(Z: np.ndarray, codes: np.ndarray, m: int, rows: np.ndarray | None = None) -> np.ndarray:
    """Silhouette width of every row (or of ``rows``) for the labels ``codes`` (0..m-1), Euclidean distances."""
    n = Z.shape[0]
    rows = np.arange(n) if rows is None else np.asarray(rows)
    onehot = np.zeros((n, m))
    onehot[np.arange(n), codes] = 1.0
    _, _, sums = _scan(Z, rows, 1, onehot)
    return _silhouette_from_sums(sums, codes[rows], onehot.sum(axis=0))


def kbet_pvalues(neighbour_codes: np.ndarray, frequencies: np.ndarray) -> np.ndarray:
    """kBET's chi-square p-value of every row's neighbourhood (``n × k`` site codes) against the sites'
    overall ``frequencies`` (summing to 1)."""
    n, k = neighbour_codes.shape
    m = frequencies.size
    counts = np.bincount((np.arange(n)[:, None] * m + neighbour_codes).ravel(), minlength=n * m).reshape(n, m)
    expected = k * frequencies
    chi2 = (((counts - expected) ** 2) / expected).sum(axis=1)
    return stats.chi2.sf(chi2, m - 1)


def _perplexity_weights(d2: np.ndarray, perplexity: float) -> np.ndarray:
    """Row-normalized weights ``exp(-beta_r d2)`` with each row's ``beta_r`` solving perplexity = target."""
    x = d2 - d2[:, :1]  # shifted by the nearest neighbour's squared distance: the weights do not change
    scale = x.mean(axis=1, keepdims=True)
    scale[scale == 0] = 1.0
    x = x / scale  # beta is found on this row-wise scale: log(beta) in [-40, 40] covers every case
    target = np.log(perplexity)

    def entropy(t):
        w = np.exp(-np.exp(t) * x)
        s = w.sum(axis=1, keepdims=True)
        p = w / s
        return np.log(s[:, 0]) + np.exp(t[:, 0]) * (p * x).sum(axis=1), p

    lo = np.full((x.shape[0], 1), -40.0)
    hi = np.full((x.shape[0], 1), 40.0)
    h_lo, _ = entropy(lo)
    for _ in range(_BISECTIONS):  # entropy decreases with beta
        mid = 0.5 * (lo + hi)
        h, _ = entropy(mid)
        above = (h > target)[:, None]
        lo = np.where(above, mid, lo)
        hi = np.where(above, hi, mid)
    _, p = entropy(0.5 * (lo + hi))
    flat = h_lo <= target  # the neighbourhood cannot be that concentrated: equal weights (beta = 0)
    if flat.any():
        p[flat] = 1.0 / x.shape[1]
    return p


def lisi(neighbour_codes: np.ndarray, distances: np.ndarray, m: int, perplexity: float) -> np.ndarray:
    """iLISI of every row: the inverse Simpson index of its neighbours' site labels, perplexity-weighted."""
    n, k = neighbour_codes.shape
    p = _perplexity_weights(distances ** 2, perplexity)
    mass = np.zeros(n * m)
    np.add.at(mass, (np.arange(n)[:, None] * m + neighbour_codes).ravel(), p.ravel())
    mass = mass.reshape(n, m)
    return 1.0 / (mass ** 2).sum(axis=1)


def mixing_arrays(Z: np.ndarray, codes: np.ndarray, m: int, *, neighbours: int = DEFAULT_NEIGHBOURS,
                  perplexity: float = DEFAULT_PERPLEXITY, alpha: float = 0.05,
                  rows: np.ndarray | None = None) -> dict:
    """The three metrics on the embedding ``Z`` (n × d) with site codes ``codes``, averaged over ``rows``
    (default all; their neighbours are sought among all rows); a dict of results."""
    n = Z.shape[0]
    rows = np.arange(n) if rows is None else np.asarray(rows)
    onehot = np.zeros((n, m))
    onehot[np.arange(n), codes] = 1.0
    counts = onehot.sum(axis=0)
    freq = counts / n
    k_kbet = min(int(neighbours), n - 1)
    k_lisi = min(int(3 * perplexity), n - 1)
    idx, dist, sums = _scan(Z, rows, max(k_kbet, k_lisi), onehot)
    nb = codes[idx]
    p = kbet_pvalues(nb[:, :k_kbet], freq)
    il = lisi(nb[:, :k_lisi], dist[:, :k_lisi], m, min(float(perplexity), k_lisi))
    return {"silhouette": float(_silhouette_from_sums(sums, codes[rows], counts).mean()),
            "kbet_acceptance": float((p >= alpha).mean()), "ilisi_median": float(np.median(il)),
            "ilisi_ideal": float(1.0 / (freq ** 2).sum()), "k_kbet": k_kbet, "k_lisi": k_lisi,
            "kbet_min_expected": float(k_kbet * freq.min()), "rows": int(rows.size)}


def _check(neighbours, perplexity, alpha, n_components, owner: str, sample_size=None) -> None:
    if sample_size is not None and (isinstance(sample_size, bool) or not isinstance(sample_size, (int, np.integer))
                                    or sample_size < 1):
        raise InputError(f"{owner}: sample_size must be an integer >= 1 or None (all rows); got {sample_size!r}.")
    if isinstance(neighbours, bool) or not isinstance(neighbours, (int, np.integer)) or neighbours < 1:
        raise InputError(f"{owner}: neighbours must be an integer >= 1; got {neighbours!r}.")
    if isinstance(perplexity, bool) or not isinstance(perplexity, (int, float, np.number)) or not perplexity >= 1:
        raise InputError(f"{owner}: perplexity must be a number >= 1; got {perplexity!r}.")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.number)) or not 0 < alpha < 1:
        raise InputError(f"{owner}: alpha must be in (0, 1); got {alpha!r}.")
    if n_components is not None and (isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer))
                                     or n_components < 1):
        raise InputError(f"{owner}: n_components must be an integer >= 1 or None; got {n_components!r}.")


def mixing_table(P: Prepared, r_add: np.ndarray, *, n_components: int | None = DEFAULT_COMPONENTS,
                 neighbours: int = DEFAULT_NEIGHBOURS, perplexity: float = DEFAULT_PERPLEXITY,
                 alpha: float = 0.05, sample_size: int | None = DEFAULT_SAMPLE, random_state=None) -> pd.DataFrame:
    """The site-mixing table of prepared data and their additive residuals (see :func:`site_mixing`)."""
    from .multivariate import _pc_scores

    _check(neighbours, perplexity, alpha, n_components, "site_mixing", sample_size)
    r = r_add[:, ~P.constant] if P.constant.any() else r_add
    if P.n < 3 or r.shape[1] == 0:
        raise InputError(f"site_mixing needs at least 3 rows and one non-constant feature; got {P.n} rows and "
                         f"{r.shape[1]} non-constant features.")
    k = min(n_components or DEFAULT_COMPONENTS, r.shape[1], P.n - 1)
    Z, _ = _pc_scores(r, k)
    rows = None
    if sample_size is not None and sample_size < P.n:
        rows = np.sort(np.random.default_rng(random_state).choice(P.n, int(sample_size), replace=False))
    res = mixing_arrays(Z, P.codes, P.m, neighbours=neighbours, perplexity=perplexity, alpha=alpha, rows=rows)
    kb = (f"share of rows whose {res['k_kbet']} nearest neighbours' sites pass a chi-square test against the "
          f"overall site frequencies at alpha = {alpha:g} (smallest expected count {res['kbet_min_expected']:.2g})")
    table = [
        ("silhouette", res["silhouette"], 0.0, 1.0,
         np.nan, "mean silhouette width of the site labels (1: separate site clusters; 0 or below: mixed)"),
        ("kbet_acceptance", res["kbet_acceptance"], 1.0 - alpha, 0.0, res["k_kbet"], kb),
        ("ilisi", res["ilisi_median"], res["ilisi_ideal"], 1.0, res["k_lisi"],
         f"median inverse Simpson index of the sites among the {res['k_lisi']} nearest neighbours, Gaussian "
         f"weights at perplexity {min(float(perplexity), res['k_lisi']):g} (1: one site per neighbourhood; "
         "ideal: as mixed as random labels)"),
    ]
    return pd.DataFrame([{"metric": a, "value": v, "ideal": i, "worst": w, "neighbours": nb, "n_components": k,
                          "n": P.n, "rows_averaged": res["rows"], "description": d}
                         for a, v, i, w, nb, d in table])[MIXING_COLUMNS]


@sized_by_features
def site_mixing(X: pd.DataFrame, covariates: pd.DataFrame, *, batch: str = "site", formula: str | None = None,
                n_components: int | None = DEFAULT_COMPONENTS, neighbours: int = DEFAULT_NEIGHBOURS,
                perplexity: float = DEFAULT_PERPLEXITY, alpha: float = 0.05,
                sample_size: int | None = DEFAULT_SAMPLE, random_state=None, n_jobs: int | None = None) -> pd.DataFrame:
    """Site-mixing metrics of a feature table: silhouette, kBET acceptance rate and iLISI.

    Computed on the first ``n_components`` principal components of the column-standardized additive
    residuals (``y ~ formula + site`` with the site effect kept; see the module documentation for the
    definitions). Compare a table before and after harmonization: a harmonizer that removes the site
    effect brings the silhouette to about 0, the kBET acceptance rate towards ``1 - alpha`` and the iLISI
    towards ``ideal``.

    Parameters
    ----------
    X, covariates, batch, formula
        As in :func:`test_site_effects`.
    n_components : int, default 20
        Principal components of the embedding (capped by the features and rows).
    neighbours : int, default 30
        kBET's neighbourhood size ``k``.
    perplexity : float, default 30
        iLISI's perplexity; its neighbourhood is the ``3 * perplexity`` nearest rows.
    alpha : float, default 0.05
        kBET's test level.
    sample_size : int or None, default 1000
        The metrics are means (medians for iLISI) over rows: over a random sample of this many rows when
        there are more (their neighbours are sought among all rows, so each row's value is exact and the
        mean is estimated without bias), else over all rows. None: all rows (time grows as n²).
    random_state : int or Generator, optional
        Seeds that sample.
    n_jobs : int, optional
        Threads (as in the models): None (default) lets featharm choose: one on a small table, else the CPUs
        the rest of the machine leaves free; -1 all CPUs. The results do not depend on it.

    Returns
    -------
    DataFrame
        One row per metric, columns :data:`MIXING_COLUMNS`: ``value``, the ``ideal`` value of perfectly
        mixed sites, the ``worst`` value, the neighbourhood size used, the components, the rows, the rows
        the value is averaged over and a description.
        With missing (NaN) feature cells the metrics use the rows without a missing feature (``n``; NaN
        values, with the reason in ``description``, when none can be used).
    """
    from ._common import prepare
    from .residuals import ols_residuals

    _check(neighbours, perplexity, alpha, n_components, "site_mixing", sample_size)
    P = prepare(X, covariates, batch, formula, "site_mixing")
    if P.missing:  # missing values: the rows without a missing feature (docs/methods.md §6.9)
        from ._common import complete_rows

        c = complete_rows(P, "site_mixing")
        if c.sub is None:
            return pd.DataFrame([{"metric": a, "n": 0, "description": f"not computed: {c.reason} (the rows without "
                                  "a missing feature are used)"} for a in ("silhouette", "kbet_acceptance", "ilisi")]
                                ).reindex(columns=MIXING_COLUMNS)
        P = c.sub
    return mixing_table(P, ols_residuals(P)[0], n_components=n_components, neighbours=neighbours,
                        perplexity=perplexity, alpha=alpha, sample_size=sample_size, random_state=random_state)
