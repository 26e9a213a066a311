"""Per-feature tests of a site effect, vectorized across features (``docs/methods.md`` §6.2–6.4, 6.7).

Every test here takes all features at once: one QR for the linear models, one ranking per rank test,
group sums by a one-hot product. Only the Anderson–Darling permutation loop iterates (over permutations,
never over features).
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
from scipy import stats

from .._progress import Progress
from .._validation import check_option
from ..exceptions import InputError
from ._common import (Prepared, bh_fdr, bonferroni, group_medians, group_sums, oneway_f, parts, prepare,
                      rank_columns)
from ._parallel import sized_by_features, workers
from .residuals import ols_residuals

__all__ = ["test_site_effects", "site_effect_sizes", "TESTS", "DEFAULT_TESTS", "COLUMNS"]

#: Every test :func:`test_site_effects` knows: ``name -> (variant, residuals used, p-value method)``.
TESTS = {
    "anova": ("partial F of site in y ~ covariates + site (OLS)", "model", "F"),
    "lmm_lrt": ("ML likelihood ratio of site, random intercept model", "model", "chi2"),
    "kruskal_wallis": ("H with tie correction", "additive", "chi2"),
    "levene": ("centre=mean", "full", "F"),
    "brown_forsythe": ("centre=median (Levene median; car::leveneTest)", "full", "F"),
    "bartlett": ("Bartlett chi-square", "full", "chi2"),
    "fligner_killeen": ("median-centred, normal scores", "full", "chi2"),
    "anderson_darling": ("k-sample A2akN (midrank)", "additive", "permutation"),
}
#: The tests run when ``tests=None``: all but the permutation-based Anderson–Darling.
DEFAULT_TESTS = ("anova", "kruskal_wallis", "levene", "brown_forsythe", "bartlett", "fligner_killeen")
#: Columns of the table :func:`test_site_effects` returns, in order.
COLUMNS = ["feature", "test", "n", "variant", "residuals", "statistic", "df1", "df2", "p_unc", "p_fdr", "p_bonf",
           "p_method", "effect_size", "effect_size_name"]

_EFFECT = {
    "anova": "partial_eta2",
    "lmm_lrt": "none",
    "kruskal_wallis": "epsilon2",
    "levene": "max_abs_log_var_ratio",
    "brown_forsythe": "max_abs_log_var_ratio",
    "bartlett": "max_abs_log_var_ratio",
    "fligner_killeen": "max_abs_log_var_ratio",
    "anderson_darling": "none",
}


# ----------------------------------------------------------------------------------- array-level tests
def kruskal_wallis(A: np.ndarray, onehot: np.ndarray, counts: np.ndarray):
    """Kruskal–Wallis H (tie-corrected) of every column: ``(H, df, p, epsilon²)``."""
    n, m = A.shape[0], onehot.shape[1]
    R, ties = rank_columns(A)
    rsum = group_sums(onehot, R)
    H = 12.0 / (n * (n + 1)) * (rsum ** 2 / counts[:, None]).sum(axis=0) - 3.0 * (n + 1)
    corr = 1.0 - ties / (n ** 3 - n)
    with np.errstate(divide="ignore", invalid="ignore"):
        H = H / corr
    df = m - 1
    return H, float(df), stats.chi2.sf(H, df), H / (n - 1)


def levene(A: np.ndarray, codes: np.ndarray, onehot: np.ndarray, counts: np.ndarray, center: str = "mean"):
    """Levene's test (``center="mean"``) or Brown–Forsythe (``"median"``): ``(F, df1, df2, p)``."""
    m = onehot.shape[1]
    if center == "mean":
        c = group_sums(onehot, A) / counts[:, None]
    else:
        c = group_medians(A, codes, m)
    Z = np.abs(A - c[codes])
    F, df1, df2, _ = oneway_f(Z, onehot, counts)
    return F, df1, df2, stats.f.sf(F, df1, df2)


def group_variances(A: np.ndarray, onehot: np.ndarray, counts: np.ndarray):
    """Per-site variances (ddof 1) and the pooled variance of every column: ``(s2 (m × V), sp2 (V))``."""
    n, m = A.shape[0], onehot.shape[1]
    means = group_sums(onehot, A) / counts[:, None]
    ss = group_sums(onehot, A ** 2) - counts[:, None] * means ** 2
    ss = np.maximum(ss, 0.0)
    s2 = ss / (counts[:, None] - 1)
    sp2 = ss.sum(axis=0) / (n - m)
    return s2, sp2


def bartlett(A: np.ndarray, onehot: np.ndarray, counts: np.ndarray):
    """Bartlett's test of equal variances: ``(T, df, p)``."""
    n, m = A.shape[0], onehot.shape[1]
    s2, sp2 = group_variances(A, onehot, counts)
    nu = counts - 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        num = (n - m) * np.log(sp2) - (nu[:, None] * np.log(s2)).sum(axis=0)
    den = 1.0 + (np.sum(1.0 / nu) - 1.0 / (n - m)) / (3.0 * (m - 1))
    T = num / den
    return T, float(m - 1), stats.chi2.sf(T, m - 1)


def _median_deviations(A: np.ndarray, codes: np.ndarray, m: int, ties: str = "r") -> np.ndarray:
    """``|x - median of its site|`` for every column.

    ``ties="r"`` (default) computes them as R's ``fligner.test`` does: the median of an even count is the
    mean of the two middle values (``fl((a + b)/2)``; R's long-double ``mean`` rounds to the same double),
    then ``abs(x - median)`` in double precision, ranked without tolerance. The two middle values ``a, b`` of
    an even site are at the same distance from the median in exact arithmetic, but in floating point
    ``|a - med|`` and ``|b - med|`` are equal only when ``a + b`` is representable, so whether they tie
    depends on the last bit of the residuals (R's p-value moves by ~1e-5 relative with it). With residuals
    computed in R's arithmetic (:func:`~.residuals.ols_residuals`) this reproduces R to rounding.

    ``ties="exact"`` sets both middle deviations to ``(b - a)/2`` so they always tie, as in exact
    arithmetic: the statistic then no longer depends on rounding noise (the same for any QR, BLAS or row
    order), at the price of differing from R by up to ~1e-5 relative.
    """
    dev = np.empty_like(A)
    cols = np.arange(A.shape[1])
    for g in range(m):
        idx = np.flatnonzero(codes == g)
        sub = A[idx]
        k = idx.size
        h = k // 2
        if k % 2 == 1 or ties == "r":
            dev[idx] = np.abs(sub - np.median(sub, axis=0))
            continue
        part = np.argpartition(sub, [h - 1, h], axis=0)
        lo, hi = part[h - 1], part[h]
        a, b = sub[lo, cols], sub[hi, cols]
        d = np.abs(sub - (a + b) / 2.0)
        half = (b - a) / 2.0
        d[lo, cols] = half
        d[hi, cols] = half
        dev[idx] = d
    return dev


@functools.lru_cache(maxsize=8)
def _fk_scores(n: int) -> np.ndarray:
    """Fligner–Killeen's normal scores ``Φ⁻¹((1 + R/(n + 1))/2)`` of every possible mid-rank ``R`` of ``n``
    values (whole and half numbers, at index ``2R``): the same arguments, so the same doubles, as evaluating
    ``norm.ppf`` on the ranks, once per ``n`` instead of once per cell."""
    R = np.arange(2 * n + 1) / 2.0
    out = stats.norm.ppf((1.0 + R / (n + 1)) / 2.0)
    out.setflags(write=False)
    return out


def fligner_killeen(A: np.ndarray, codes: np.ndarray, onehot: np.ndarray, counts: np.ndarray, ties: str = "r"):
    """Fligner–Killeen test (median-centred, normal scores; R ``fligner.test``): ``(X2, df, p)``.

    ``ties`` decides whether the two middle deviations of an even site tie as R computes them (``"r"``)
    or always (``"exact"``); see :func:`_median_deviations`.
    """
    n, m = A.shape[0], onehot.shape[1]
    dev = _median_deviations(A, codes, m, ties)
    R, _ = rank_columns(dev)
    a = _fk_scores(n)[(2.0 * R).astype(np.intp)]
    abar = a.mean(axis=0)
    var = ((a - abar) ** 2).sum(axis=0) / (n - 1)
    gs = group_sums(onehot, a)
    with np.errstate(divide="ignore", invalid="ignore"):
        X2 = ((gs ** 2 / counts[:, None]).sum(axis=0) - n * abar ** 2) / var
    return X2, float(m - 1), stats.chi2.sf(X2, m - 1)


def _ad_untied(order: np.ndarray, codes: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """A2akN of Scholz & Stephens (1987) for columns without ties, from each column's sort order."""
    n = order.shape[0]
    B = np.arange(n) + 0.5
    D = B * (n - B) - n / 4.0
    out = np.zeros(order.shape[1])
    for blk in _blocks(*order.shape):
        L = codes[order[:, blk]]  # site of the j-th smallest value, per column
        for g, ng in enumerate(counts):
            f = (L == g)
            M = np.cumsum(f, axis=0) - 0.5 * f
            out[blk] += ((n * M - B[:, None] * ng) ** 2 / D[:, None]).sum(axis=0) / ng
    return out * (n - 1) / n ** 2


def _ad_general(x: np.ndarray, codes: np.ndarray, counts: np.ndarray) -> float:
    """A2akN (midrank form, ties allowed) of one column."""
    n = x.size
    z = np.sort(x)
    zs = np.unique(z)
    left = np.searchsorted(z, zs, "left")
    lj = np.searchsorted(z, zs, "right") - left
    B = left + lj / 2.0
    D = B * (n - B) - n * lj / 4.0
    total = 0.0
    for g, ng in enumerate(counts):
        s = np.sort(x[codes == g])
        right = np.searchsorted(s, zs, "right")
        f = right - np.searchsorted(s, zs, "left")
        M = right - f / 2.0
        with np.errstate(divide="ignore", invalid="ignore"):
            term = np.where(D > 0, lj / n * (n * M - B * ng) ** 2 / D, 0.0)
        total += term.sum() / ng
    return total * (n - 1) / n


def anderson_darling_stat(A: np.ndarray, codes: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The k-sample Anderson–Darling statistic A2akN of every column (midrank version for ties)."""
    S = np.sort(A, axis=0)
    tied = (np.diff(S, axis=0) == 0).any(axis=0)
    out = np.empty(A.shape[1])
    free = np.flatnonzero(~tied)
    if free.size:
        out[free] = _ad_untied(np.argsort(A[:, free], axis=0, kind="stable"), codes, counts)
    for j in np.flatnonzero(tied):
        out[j] = _ad_general(A[:, j], codes, counts)
    return out


def anderson_darling(A: np.ndarray, codes: np.ndarray, counts: np.ndarray, n_permutations: int, rng,
                     progress=Progress):
    """A2akN with a label-permutation p-value ``(1 + #{A2_perm >= A2}) / (1 + n_permutations)``.

    The same seeded permutations serve every feature.
    """
    obs = anderson_darling_stat(A, codes, counts)
    S = np.sort(A, axis=0)
    tied = (np.diff(S, axis=0) == 0).any(axis=0)
    free = np.flatnonzero(~tied)
    order = np.argsort(A[:, free], axis=0, kind="stable") if free.size else None
    exceed = np.zeros(A.shape[1])
    tol = 1e-12 * np.maximum(1.0, np.abs(obs))
    with progress(n_permutations, "Anderson-Darling permutations") as bar:
        for _ in range(n_permutations):
            pc = codes[rng.permutation(codes.size)]
            perm = np.empty(A.shape[1])
            if free.size:
                perm[free] = _ad_untied(order, pc, counts)
            for j in np.flatnonzero(tied):
                perm[j] = _ad_general(A[:, j], pc, counts)
            exceed += perm >= obs - tol
            bar.update()
    return obs, (1.0 + exceed) / (1.0 + n_permutations)


# ----------------------------------------------------------------------------------- public functions
def _resolve_tests(tests, model: str) -> list[str]:
    if tests is None:
        chosen = list(DEFAULT_TESTS)
        if model == "lmm":
            chosen[chosen.index("anova")] = "lmm_lrt"
        return chosen
    if isinstance(tests, str):
        if tests == "all":
            chosen = [t for t in TESTS if t != ("lmm_lrt" if model == "ols" else "anova")]
            return chosen
        tests = [tests]
    chosen = []
    for t in tests:
        check_option("tests", t, list(TESTS) + ["all"], "test_site_effects")
        if t == "anova" and model == "lmm":
            raise InputError("test 'anova' is the OLS partial F test; with model='lmm' use 'lmm_lrt'.")
        if t == "lmm_lrt" and model != "lmm":
            raise InputError("test 'lmm_lrt' needs model='lmm' and random=<subject id column>.")
        if t not in chosen:
            chosen.append(t)
    return chosen


BLOCK_BYTES = 2**19  # feature blocks of 0.5 MB: the ~10 temporaries of a rank test stay near 5 MB


def _blocks(n: int, V: int):
    b = max(1, BLOCK_BYTES // (8 * max(n, 1)))
    return [slice(i, min(i + b, V)) for i in range(0, V, b)]


def _by_blocks(fn, A: np.ndarray):
    """``fn(A)`` computed on column blocks of ``A`` (on threads, :mod:`._parallel`): arrays are concatenated,
    scalars (df) kept."""
    with workers() as pmap:
        parts = pmap(lambda blk: fn(A[:, blk]), _blocks(*A.shape))
    if not isinstance(parts[0], tuple):
        return np.concatenate(parts)
    return tuple(np.concatenate([q[i] for q in parts]) if np.ndim(parts[0][i]) else parts[0][i]
                 for i in range(len(parts[0])))


def _max_abs_lvr(r_full, P: Prepared) -> np.ndarray:
    s2, sp2 = group_variances(r_full, P.onehot, P.counts)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.abs(np.log(s2 / sp2)).max(axis=0)


def run_tests(P: Prepared, tests, *, model: str = "ols", random: str | None = None,
              n_permutations: int = 999, random_state=None, residuals=None, ols_fit=None,
              fligner_ties: str = "r", progress=Progress) -> pd.DataFrame:
    """:func:`test_site_effects` on prepared inputs (used by :func:`diagnose`); ``ols_fit`` is the output
    of :func:`~featharm.diagnostics.residuals.ols_residuals` when already computed; ``progress(total, step)``
    opens the progress bar of the Anderson–Darling permutations.

    With missing values every missingness pattern (the features observed in the same rows) is tested as a
    complete table of its observed rows (:func:`~._common.parts`); the p-values are adjusted over all features.
    """
    chosen = _resolve_tests(tests, model)
    check_option("fligner_ties", fligner_ties, ("r", "exact"), "test_site_effects")
    if "anova" in chosen and residuals is not None:
        raise InputError("test 'anova' refits the model; do not pass precomputed residuals.")
    kw = dict(model=model, random=random, n_permutations=n_permutations, random_state=random_state,
              fligner_ties=fligner_ties, progress=progress)
    V = len(P.features)
    if not P.missing:
        res = _test_arrays(P, chosen, residuals=residuals, ols_fit=ols_fit, **kw)
        n = np.full(V, P.n, dtype=np.int64)
    else:
        res = {t: tuple(np.full(V, np.nan) for _ in range(5)) for t in chosen}
        n = P.n_obs
        for part in parts(P, "test_site_effects"):
            if part.sub is None:
                continue
            n[part.cols] = part.rows.size
            sub_res = None if residuals is None else tuple(_part_of(a, part) for a in residuals)
            sub_fit = None if ols_fit is None else _fit_part(ols_fit, part)
            got = _test_arrays(part.sub, chosen, residuals=sub_res, ols_fit=sub_fit, **kw)
            for t in chosen:
                for full, val in zip(res[t], got[t]):
                    full[part.cols] = val
    rows = []
    for t in chosen:
        stat, df1, df2, p, eff = res[t]
        variant, resid, method = TESTS[t]
        if t == "anova" or t == "lmm_lrt":
            resid = "model"
        rows.append(pd.DataFrame({
            "feature": P.features, "test": t, "n": n, "variant": variant, "residuals": resid,
            "statistic": np.asarray(stat, dtype=float), "df1": df1, "df2": df2,
            "p_unc": np.asarray(p, dtype=float), "p_fdr": bh_fdr(p), "p_bonf": bonferroni(p),
            "p_method": method, "effect_size": np.asarray(eff, dtype=float), "effect_size_name": _EFFECT[t],
        }))
    return pd.concat(rows, ignore_index=True)[COLUMNS]


def _part_of(A: np.ndarray, part) -> np.ndarray:
    """The rows and columns of one missingness pattern of a full n × V array."""
    return A[np.ix_(part.rows, part.cols)]


def _fit_part(fit, part):
    r_add, r_full, rss1, rss0, rank1 = fit
    return (_part_of(r_add, part), _part_of(r_full, part), rss1[part.cols], rss0[part.cols],
            int(np.asarray(rank1).ravel()[part.cols[0]] if np.ndim(rank1) else rank1))


def _test_arrays(P: Prepared, chosen, *, model, random, n_permutations, random_state, residuals, ols_fit,
                 fligner_ties, progress) -> dict:
    """``test -> (statistic, df1, df2, p, effect size)``, arrays over the features of a complete table."""
    oh, counts, codes = P.onehot, P.counts, P.codes
    V = len(P.features)
    lrt = None
    if residuals is not None:
        r_add, r_full = residuals
        if model == "lmm" and "lmm_lrt" in chosen:
            from .mixed import lmm_site_lrt, subject_codes

            lrt = lmm_site_lrt(P, subject_codes(P.covariates, random, "test_site_effects"))
    elif model == "ols":
        r_add, r_full, rss1, rss0, rank1 = ols_fit if ols_fit is not None else ols_residuals(P)
    else:
        from .mixed import lmm_residuals, subject_codes

        g = subject_codes(P.covariates, random, "test_site_effects")
        r_add, r_full = lmm_residuals(P, g)
        if "lmm_lrt" in chosen:
            from .mixed import lmm_site_lrt

            lrt = lmm_site_lrt(P, g)
    lvr = None
    out = {}
    for t in chosen:
        df2 = np.nan
        eff = np.full(V, np.nan)
        if t == "anova":
            df1, df2 = float(P.m - 1), float(P.n - rank1)
            with np.errstate(divide="ignore", invalid="ignore"):
                stat = ((rss0 - rss1) / df1) / (rss1 / df2)
                eff = (rss0 - rss1) / rss0
            p = stats.f.sf(stat, df1, df2)
        elif t == "lmm_lrt":
            stat, df1, p = lrt
        elif t == "kruskal_wallis":
            stat, df1, p, eff = _by_blocks(lambda a: kruskal_wallis(a, oh, counts), r_add)
        elif t in ("levene", "brown_forsythe"):
            centre = "mean" if t == "levene" else "median"
            stat, df1, df2, p = _by_blocks(lambda a: levene(a, codes, oh, counts, centre), r_full)
        elif t == "bartlett":
            stat, df1, p = _by_blocks(lambda a: bartlett(a, oh, counts), r_full)
        elif t == "fligner_killeen":
            stat, df1, p = _by_blocks(lambda a: fligner_killeen(a, codes, oh, counts, fligner_ties), r_full)
        elif t == "anderson_darling":
            from .multivariate import _check_permutations

            _check_permutations(n_permutations, "test_site_effects")
            rng = np.random.default_rng(random_state)
            stat, p = anderson_darling(r_add, codes, counts, int(n_permutations), rng, progress)
            df1 = float(P.m - 1)
        if _EFFECT[t] == "max_abs_log_var_ratio":
            lvr = _by_blocks(lambda a: _max_abs_lvr(a, P), r_full) if lvr is None else lvr
            eff = lvr
        if P.constant.any():  # no test of a constant feature: its residuals are rounding noise
            stat, p, eff = (np.where(P.constant, np.nan, np.asarray(a, dtype=float)) for a in (stat, p, eff))
        out[t] = (np.asarray(stat, dtype=float), np.full(V, float(df1)), np.full(V, float(df2)),
                  np.asarray(p, dtype=float), np.asarray(eff, dtype=float))
    return out


@sized_by_features
def test_site_effects(X: pd.DataFrame, covariates: pd.DataFrame, *, batch: str = "site",
                      formula: str | None = None, tests=None, model: str = "ols", random: str | None = None,
                      n_permutations: int = 999, random_state=None, fligner_ties: str = "r", n_jobs: int | None = None) -> pd.DataFrame:
    """Per-feature tests of the site effect, one row per feature × test (``docs/methods.md`` §6.1–6.4, 6.7).

    The model ``y ~ covariates + site`` is fitted to every feature (one QR for all). Location tests use
    the model comparison or the *additive* residuals (covariate effects removed, site effect kept);
    scale tests use the *full* residuals (ComBatFamQC's convention).

    Missing values (NaN cells) are allowed (``docs/methods.md`` §6.9): each feature is tested on its observed
    rows, exactly as if it were given alone without its NaN rows (features missing on the same rows are
    tested together); a site with fewer than 2 observed values of a feature is left out of that feature's
    tests, and a feature left with fewer than 2 sites or too few rows gets NaN statistics. A
    :class:`~featharm.exceptions.MissingValueWarning` names those features.

    Parameters
    ----------
    X : DataFrame
        Features, rows = subjects (or scans), columns = features. Raw or harmonized.
    covariates : DataFrame
        The batch column and the formula's columns, same index as ``X``.
    batch : str, default "site"
        Name of the site/scanner column.
    formula : str, optional
        Covariates of the model, e.g. ``"age + sex"``; categorical columns are dummy coded (first
        sorted level dropped).
    tests : str or list of str, optional
        Names from :data:`TESTS`; ``None`` runs :data:`DEFAULT_TESTS` (every test without permutations);
        ``"all"`` adds ``"anderson_darling"``.
    model : {"ols", "lmm"}, default "ols"
        ``"lmm"``: random intercept for ``random`` (longitudinal data); the location test becomes
        ``"lmm_lrt"``.
    random : str, optional
        Subject id column for ``model="lmm"``.
    n_permutations : int, default 999
        Label permutations of the Anderson–Darling test.
    random_state : int or Generator, optional
        Seed of the permutations (the result is reproducible for a given seed).
    fligner_ties : {"r", "exact"}, default "r"
        Fligner–Killeen in a site with an even count: ``"r"`` ranks ``|r - median|`` as R's
        ``fligner.test`` computes them, so the two middle values tie only when floating point makes their
        distances equal (reproduces R/ComBatFamQC to rounding, with residuals in R's arithmetic);
        ``"exact"`` always ties them, as exact arithmetic does (independent of rounding noise; differs
        from R by up to ~1e-5 relative in the p-value).
    n_jobs : int, optional
        Threads (as in the models): None (default) lets featharm choose: one on a small table, else the CPUs
        the rest of the machine leaves free; -1 all CPUs. The results do not depend on it.

    Returns
    -------
    DataFrame
        One row per feature × test, tests in the order requested, features in input order. Columns:

        ``feature``
            Feature name (str).
        ``test``
            ``"anova"``, ``"lmm_lrt"``, ``"kruskal_wallis"``, ``"levene"``, ``"brown_forsythe"``,
            ``"bartlett"``, ``"fligner_killeen"`` or ``"anderson_darling"``.
        ``n``
            Rows the test used: all rows for a complete feature; with missing values the feature's observed
            rows (without sites left out for fewer than 2 of them; its observed count when not tested).
        ``variant``
            What exactly was computed (centre of Levene's test, tie handling ...).
        ``residuals``
            ``"model"`` (model comparison on the data), ``"additive"`` or ``"full"`` (§6.1).
        ``statistic``
            F (anova, levene, brown_forsythe), chi-square (lmm_lrt = 2 Δ log-likelihood under ML,
            kruskal_wallis = H, bartlett = T, fligner_killeen), or A2akN (anderson_darling).
        ``df1``, ``df2``
            Degrees of freedom of the reference distribution (``df2`` NaN for chi-square tests); with
            missing values they follow the feature's rows and sites.
        ``p_unc``
            Unadjusted p-value of the test (upper tail of F / chi-square; permutation p-value
            ``(1 + #exceed) / (1 + n_permutations)`` for anderson_darling).
        ``p_fdr``
            Benjamini–Hochberg adjusted p-value within this test's family (all features with a p-value,
            one test).
        ``p_bonf``
            Bonferroni adjusted p-value within the family, ``min(1, V p_unc)``: ComBatFamQC's
            ``p.value.raw``.
        ``p_method``
            ``"F"``, ``"chi2"`` or ``"permutation"``.
        ``effect_size``, ``effect_size_name``
            ``partial_eta2`` = (RSS0 - RSS1)/RSS0 (anova); ``epsilon2`` = H/(n - 1) (kruskal_wallis);
            ``max_abs_log_var_ratio`` = max over sites of |ln(s_i²/s_p²)| of the full residuals (scale
            tests); NaN with name ``none`` where no effect size is defined.

    See Also
    --------
    site_effect_sizes : per-site standardized shifts and log variance ratios.
    site_residuals : the residuals the tests use.
    """
    check_option("model", model, ("ols", "lmm"), "test_site_effects")
    P = prepare(X, covariates, batch, formula, "test_site_effects")
    return run_tests(P, tests, model=model, random=random, n_permutations=n_permutations,
                     random_state=random_state, fligner_ties=fligner_ties)


test_site_effects.__test__ = False  # not a pytest test, despite its name


def per_site_table(P: Prepared, r_add: np.ndarray, r_full: np.ndarray) -> pd.DataFrame:
    if P.missing:  # every missingness pattern on its rows; n = the site's observed values of the feature
        V, m = len(P.features), P.m
        shift, lvr = np.full((m, V), np.nan), np.full((m, V), np.nan)
        n = (P.onehot.T @ P.observed).astype(np.int64)
        for part in parts(P, "site_effect_sizes"):
            if part.sub is None:
                continue
            t = per_site_table(part.sub, _part_of(r_add, part), _part_of(r_full, part))
            k = len(part.cols)
            shift[np.ix_(part.sites, part.cols)] = t["shift"].to_numpy().reshape(-1, k)
            lvr[np.ix_(part.sites, part.cols)] = t["log_var_ratio"].to_numpy().reshape(-1, k)
        return _site_table(P, n.ravel(), shift, lvr)
    oh, counts = P.onehot, P.counts
    V = r_full.shape[1]
    s2, sp2, sd_full = np.empty((P.m, V)), np.empty(V), np.empty(V)
    for blk in _blocks(*r_full.shape):  # column blocks: no n × V temporaries
        s2[:, blk], sp2[blk] = group_variances(r_full[:, blk], oh, counts)
        sd_full[blk] = r_full[:, blk].std(axis=0, ddof=1)
    means = group_sums(oh, r_add) / counts[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = (means - r_add.mean(axis=0)) / sd_full
        lvr = np.log(s2 / sp2)
    shift[:, P.constant] = np.nan
    lvr[:, P.constant] = np.nan
    return _site_table(P, np.repeat(counts, len(P.features)), shift, lvr)


def _site_table(P: Prepared, n: np.ndarray, shift: np.ndarray, lvr: np.ndarray) -> pd.DataFrame:
    V, m = len(P.features), P.m
    return pd.DataFrame({
        "feature": np.tile(P.features, m),
        "site": np.repeat(np.array([str(s) for s in P.levels], dtype=object), V),
        "n": n,
        "shift": shift.ravel(),
        "log_var_ratio": lvr.ravel(),
    })


@sized_by_features
def site_effect_sizes(X: pd.DataFrame, covariates: pd.DataFrame, *, batch: str = "site",
                      formula: str | None = None, model: str = "ols", random: str | None = None, n_jobs: int | None = None) -> pd.DataFrame:
    """Per-site effect sizes of every feature: standardized shift and log variance ratio (§6.2–6.3).
    n_jobs : int, optional
        Threads (as in the models): None (default) lets featharm choose: one on a small table, else the CPUs
        the rest of the machine leaves free; -1 all CPUs. The results do not depend on it.

    Returns
    -------
    DataFrame
        One row per site × feature (sites in sorted order, features in input order) with columns
        ``feature``, ``site``, ``n`` (rows of the site; with missing values, the site's observed values of
        the feature: NaN effects where fewer than 2), ``shift`` = (mean of the site's additive residuals
        - overall mean) / sd of the full residuals, and ``log_var_ratio`` = ln(s_i² / s_p²), the site's
        variance of the full residuals over the pooled within-site variance.
    """
    from .residuals import site_residuals

    P = prepare(X, covariates, batch, formula, "site_effect_sizes")
    res = site_residuals(X, covariates, batch=batch, formula=formula, model=model, random=random)
    return per_site_table(P, res.additive.to_numpy(), res.full.to_numpy())


def effect_matrix(table: pd.DataFrame, value: str = "shift", index_name=None) -> pd.DataFrame:
    """A tidy per-site table (``site``, ``feature``, ``value``; one data set) as a site × feature DataFrame,
    sites and features in table order."""
    from ..exceptions import ColumnNotFoundError

    for col in ("site", "feature", value):
        if col not in table.columns:
            raise ColumnNotFoundError(
                f"the site-effect table has no column {col!r}; expected the tidy table of "
                "featharm.diagnostics.site_effect_sizes (columns feature, site, n, shift, log_var_ratio)."
            )
    sites = list(dict.fromkeys(table["site"].astype(str)))
    feats = list(dict.fromkeys(table["feature"].astype(str)))
    z = table.assign(site=table["site"].astype(str), feature=table["feature"].astype(str)) \
        .set_index(["site", "feature"])[value].unstack("feature")
    z = z.reindex(index=sites, columns=feats).astype(float)
    z.index.name = index_name if index_name is not None else "site"
    z.columns.name = "feature"
    return z
