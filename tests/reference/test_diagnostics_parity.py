"""featharm.diagnostics against ComBatFamQC 1.0.6 (R 4.2.2), ``tests/reference/outputs/qc_lm``.

Reference: ComBatFamQC ``visual_prep(type = "lm", covariates = c("age", "sex"), batch = "site")`` on
``inputs/small_cs`` (300 subjects, 5 sites, 20 features). In its tables ``p.value.raw`` is the
**Bonferroni-adjusted** p-value (``p.adjust(..., "bonferroni")``) despite its name; ``p_unadj`` is the
unadjusted p-value (NA where the adjusted one was capped at 1). Levene there is ``car::leveneTest``,
i.e. median-centred (our ``brown_forsythe``). Tolerance: 1e-8 relative, checked in stages (residuals, each
statistic on identical residuals, end to end); the one exception (smooth scale tests on lme4 residuals,
whose optimizer tolerance shows at ~5e-6) is explained at its test.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from featharm import diagnostics as dg
from featharm.design import batch_indicators

REF = Path(__file__).parents[1] / "reference"
QC_LM = REF / "outputs" / "qc_lm"
RTOL = 1e-8
TABLES = {  # featharm test -> ComBatFamQC table
    "anova": "qc_anova",
    "kruskal_wallis": "qc_kruskal_wallis",
    "brown_forsythe": "qc_levene",
    "bartlett": "qc_bartlett",
    "fligner_killeen": "qc_fligner_killeen",
}

pytestmark = pytest.mark.reference


@pytest.fixture(scope="module")
def small_cs():
    X = pd.read_csv(REF / "inputs" / "small_cs" / "features.csv")
    C = pd.read_csv(REF / "inputs" / "small_cs" / "covars.csv")
    return X, C


@pytest.fixture(scope="module")
def table(small_cs):
    X, C = small_cs
    return dg.test_site_effects(X, C, batch="site", formula="age + sex", tests=list(TABLES))


def _ref(name):
    return pd.read_csv(QC_LM / f"{name}.csv").set_index("feature")


def _r15(a):
    """Values as R's ``write.csv`` prints them (15 significant digits), parsed back."""
    return np.vectorize(lambda v: float(f"{v:.15g}"))(a)


def _codes(C):
    levels = sorted(C.site.unique())
    codes = C.site.map({lv: i for i, lv in enumerate(levels)}).to_numpy()
    oh = batch_indicators(codes, len(levels))
    return codes, oh, oh.sum(axis=0)


def _max_rel(ours, ref):
    ok = ref.p_unadj.notna()
    return float((np.abs(ours[ref.index[ok]] - ref.p_unadj[ok]) / ref.p_unadj[ok]).max())


# Stage 1: residuals. featharm's OLS uses R's lm arithmetic (LINPACK dqrdc2/dqrsl order, featharm/diagnostics/
# _linpack.py): every one of the 2 x 6,000 residuals prints to the same 15 significant digits as R's CSV
# (observed: 100 %; max |difference| 4.9e-15, which is the CSV's own rounding). numpy's LAPACK QR
# (method="lapack") is a few ulps away: only ~32 % of the full residuals print the same.
def test_residuals_match_comBatFamQC_to_the_printed_digit(small_cs):
    X, C = small_cs
    res = dg.site_residuals(X, C, batch="site", formula="age + sex")
    add = pd.read_csv(QC_LM / "qc_residual_add.csv")[X.columns].to_numpy()
    full = pd.read_csv(QC_LM / "qc_residual_ml.csv")[X.columns].to_numpy()
    np.testing.assert_array_equal(_r15(res.additive.to_numpy()), add)
    np.testing.assert_array_equal(_r15(res.full.to_numpy()), full)


def test_lapack_residuals_are_ulps_away(small_cs):
    """The faster LAPACK path agrees to 1e-12 but not to R's last digit (why ``method="lm"`` is the default)."""
    from featharm.diagnostics._common import prepare
    from featharm.diagnostics.residuals import ols_residuals

    X, C = small_cs
    P = prepare(X, C, "site", "age + sex", "test")
    r_lm = ols_residuals(P)[1]
    r_la = ols_residuals(P, method="lapack")[1]
    np.testing.assert_allclose(r_la, r_lm, rtol=0, atol=1e-12)
    full = pd.read_csv(QC_LM / "qc_residual_ml.csv")[X.columns].to_numpy()
    assert (_r15(r_la) == full).mean() < 0.9


# Stage 2: each statistic on identical residuals (R's own, read from the CSV). Observed max relative error of the
# unadjusted p-value: Kruskal-Wallis 1.1e-13, Brown-Forsythe 1.1e-13, Bartlett 2.1e-13.
@pytest.mark.parametrize("test", ["kruskal_wallis", "brown_forsythe", "bartlett"])
def test_statistics_on_R_residuals(small_cs, test):
    X, C = small_cs
    codes, oh, counts = _codes(C)
    full = pd.read_csv(QC_LM / "qc_residual_ml.csv")[X.columns].to_numpy()
    add = pd.read_csv(QC_LM / "qc_residual_add.csv")[X.columns].to_numpy()
    u = dg.univariate
    p = {"kruskal_wallis": lambda: u.kruskal_wallis(add, oh, counts)[2],
         "brown_forsythe": lambda: u.levene(full, codes, oh, counts, "median")[3],
         "bartlett": lambda: u.bartlett(full, oh, counts)[2]}[test]()
    assert _max_rel(pd.Series(p, index=X.columns), _ref(TABLES[test])) < RTOL


def test_fligner_killeen_on_R_printed_residuals(small_cs):
    """Fligner–Killeen is the exception: R's CSV has 15 digits, which loses the last bit that decides whether
    the two middle deviations of an even site tie (every site here is even: 42/50/82/86/40). On the printed
    residuals no feature is within 1e-8 (observed max 6.0e-6); for every feature one of the 2^5 tie
    patterns of the middle pairs reproduces R's p-value within 1e-8 (the formula is right, only the bit is
    missing), and featharm's own residuals, which are R's to the bit, give it directly (next tests)."""
    X, C = small_cs
    ref = _ref("qc_fligner_killeen")
    full = pd.read_csv(QC_LM / "qc_residual_ml.csv")[X.columns].to_numpy()
    codes, oh, counts = _codes(C)
    m = len(counts)
    p_printed = dg.univariate.fligner_killeen(full, codes, oh, counts)[2]
    assert _max_rel(pd.Series(p_printed, index=X.columns), ref) > 1e-7
    for j, f in enumerate(X.columns):
        if pd.isna(ref.p_unadj[f]):
            continue
        x = full[:, j]
        dev0 = dg.univariate._median_deviations(x[:, None], codes, m, ties="exact")[:, 0]
        pairs = []
        for g in range(m):
            idx = np.flatnonzero(codes == g)
            o = idx[np.argsort(x[idx])]
            pairs.append((o[len(o) // 2 - 1], o[len(o) // 2]))
        best = np.inf
        for combo in itertools.product([False, True], repeat=len(pairs)):
            d = dev0.copy()
            for (lo, hi), untie in zip(pairs, combo):
                if untie:
                    d[hi] = np.nextafter(d[hi], np.inf)
            best = min(best, abs(_fk_from_dev(d, codes, oh, counts) - ref.p_unadj[f]) / ref.p_unadj[f])
        assert best < RTOL, (f, best)


def _fk_from_dev(d, codes, oh, counts):
    n = d.size
    a = stats.norm.ppf(0.5 + stats.rankdata(d) / (2.0 * (n + 1)))
    abar = a.mean()
    gs = oh.T @ a
    x2 = ((gs ** 2 / counts).sum() - n * abar ** 2) / (((a - abar) ** 2).sum() / (n - 1))
    return stats.chi2.sf(x2, len(counts) - 1)


# Stage 3: end to end on the raw data. Observed max relative error of p_unc: ANOVA 2.6e-13, Kruskal-Wallis
# 1.1e-13, Brown-Forsythe 8.5e-14, Bartlett 1.1e-13, Fligner-Killeen 3.9e-13.
@pytest.mark.parametrize("test", list(TABLES))
def test_pvalues_match_comBatFamQC(table, test):
    ref = _ref(TABLES[test])
    ours = table[table.test == test].set_index("feature")
    assert len(ours) == 20 and set(ours.index) == set(ref.index)
    ok = ref.p_unadj.notna()
    np.testing.assert_allclose(ours.p_unc[ref.index[ok]], ref.p_unadj[ok], rtol=RTOL, atol=0)
    # p.value.raw is Bonferroni-adjusted (capped at 1)
    np.testing.assert_allclose(ours.p_bonf[ref.index], ref["p.value.raw"], rtol=RTOL, atol=0)


def test_fligner_exact_ties_option(small_cs, table):
    """``fligner_ties="exact"`` ties the middle pairs as exact arithmetic does: it moves the p-values off R's
    (observed max 1.1e-5 relative), by less than 2e-5."""
    X, C = small_cs
    ex = dg.test_site_effects(X, C, batch="site", formula="age + sex", tests="fligner_killeen",
                              fligner_ties="exact").set_index("feature").p_unc
    ref = _ref("qc_fligner_killeen")
    err = _max_rel(ex, ref)
    assert 1e-7 < err < 2e-5
    with pytest.raises(ValueError, match="fligner_ties"):
        dg.test_site_effects(X, C, batch="site", formula="age + sex", tests="fligner_killeen", fligner_ties="x")


def test_fligner_formula_equals_scipy(small_cs):
    """Away from the tie question (odd site sizes), featharm's Fligner equals ``scipy.stats.fligner``."""
    rng = np.random.default_rng(3)
    codes = np.repeat(np.arange(4), [31, 45, 27, 53])
    A = rng.normal(size=(codes.size, 6)) * (1 + codes[:, None] * 0.2)
    oh = batch_indicators(codes, 4)
    p = dg.univariate.fligner_killeen(A, codes, oh, oh.sum(axis=0))[2]
    sp = [stats.fligner(*[A[codes == g, j] for g in range(4)]).pvalue for j in range(6)]
    np.testing.assert_allclose(p, sp, rtol=1e-10)


# ------------------------------------------------------------------------------------------ qc_lmer
QC_LMER = REF / "outputs" / "qc_lmer"
LMER_TABLES = {
    "lmm_lrt": "qc_anova",  # ComBatFamQC's "ANOVA" for lmer = anova(reduced, full): ML chi-square LRT
    "kruskal_wallis": "qc_kruskal_wallis",
    "fligner_killeen": "qc_fligner_killeen",
    "brown_forsythe": "qc_levene",
    "bartlett": "qc_bartlett",
}


@pytest.fixture(scope="module")
def small_long():
    X = pd.read_csv(REF / "inputs" / "small_long" / "features.csv")
    C = pd.read_csv(REF / "inputs" / "small_long" / "covars.csv")
    return X, C


@pytest.fixture(scope="module")
def lmer_table(small_long):
    X, C = small_long
    return dg.test_site_effects(X, C, batch="site", formula="age + sex + time", model="lmm",
                                random="subject_id", tests=list(LMER_TABLES))


def test_lmer_residuals(small_long):
    """Stage 1 (lmer): REML fits of ``y ~ age + sex + time + site + (1 | subject_id)``. lme4 stops its
    optimizer (bobyqa via nloptwrap) at its convergence tolerances, so its variance ratio θ is not the exact
    optimum and the residuals agree to ~5e-8 absolute (observed 5.1e-8 full, 5.4e-8 additive; features of size
    ~3), not to rounding. Reproducing lme4's optimizer path step by step is out of reach."""
    X, C = small_long
    res = dg.site_residuals(X, C, batch="site", formula="age + sex + time", model="lmm", random="subject_id")
    add = pd.read_csv(QC_LMER / "qc_residual_add.csv")[X.columns].to_numpy()
    full = pd.read_csv(QC_LMER / "qc_residual_ml.csv")[X.columns].to_numpy()
    np.testing.assert_allclose(res.additive.to_numpy(), add, rtol=0, atol=2e-7)
    np.testing.assert_allclose(res.full.to_numpy(), full, rtol=0, atol=2e-7)


@pytest.mark.parametrize("test", ["lmm_lrt", "kruskal_wallis", "fligner_killeen"])
def test_lmer_pvalues_match_comBatFamQC(lmer_table, test):
    """Stage 3 (lmer), end to end within 1e-8: the ML chi-square is stationary at the optimum, so insensitive to
    the optimizer tolerance (observed 2.5e-13), and the rank tests see the same ranks despite the 5e-8
    residual differences (Kruskal-Wallis 5.7e-14, Fligner-Killeen 6.7e-13). Sites have odd sizes
    (45/101/85/71): no median tie question."""
    ref = pd.read_csv(QC_LMER / f"{LMER_TABLES[test]}.csv").set_index("feature")
    ours = lmer_table[lmer_table.test == test].set_index("feature")
    ok = ref.p_unadj.notna()
    assert ok.sum() >= 9
    np.testing.assert_allclose(ours.p_unc[ref.index[ok]], ref.p_unadj[ok], rtol=RTOL, atol=0)
    np.testing.assert_allclose(ours.p_bonf[ref.index], ref["p.value.raw"], rtol=RTOL, atol=0)


@pytest.mark.parametrize("test", ["brown_forsythe", "bartlett"])
def test_lmer_scale_tests(small_long, lmer_table, test):
    """Brown-Forsythe and Bartlett on lmer residuals. Stage 2: on R's own residuals they agree within 1e-8
    (observed 1.5e-13 and 1.2e-13). End to end 1e-8 is impossible: both are smooth in the residuals, and
    the residuals carry lme4's optimizer tolerance (~5e-8, see test_lmer_residuals), so the p-values differ
    by 4.2e-6 (Brown-Forsythe) and 5.7e-6 (Bartlett) relative; checked within 2e-5."""
    X, C = small_long
    ref = pd.read_csv(QC_LMER / f"{LMER_TABLES[test]}.csv").set_index("feature")
    ok = ref.p_unadj.notna()
    ours = lmer_table[lmer_table.test == test].set_index("feature")
    np.testing.assert_allclose(ours.p_unc[ref.index[ok]], ref.p_unadj[ok], rtol=2e-5, atol=0)
    full = pd.read_csv(QC_LMER / "qc_residual_ml.csv")[X.columns].to_numpy()
    levels = sorted(C.site.unique())
    codes = C.site.map({lv: i for i, lv in enumerate(levels)}).to_numpy()
    oh = batch_indicators(codes, len(levels))
    counts = oh.sum(axis=0)
    if test == "bartlett":
        p = dg.univariate.bartlett(full, oh, counts)[2]
    else:
        p = dg.univariate.levene(full, codes, oh, counts, "median")[3]
    p = pd.Series(p, index=X.columns)
    np.testing.assert_allclose(p[ref.index[ok]], ref.p_unadj[ok], rtol=RTOL, atol=0)


def test_mdmr_matches_comBatFamQC(small_cs):
    """qc_mdmr.csv (ComBatFamQC rounds to 2 decimals and prints p as "<0.001"): Statistic 0.24, Pseudo.R2 0.2,
    Numer.DF 4, analytic p < 0.001. featharm: statistic 0.2423, pseudo-R2 0.1950, analytic p 7.8e-85 (qc_lm);
    0.4963, 0.3317, 2.3e-94 (qc_lmer). The table gives no more digits to compare; the analytic p-value itself
    is checked against closed forms and an independent Imhof integration in test_diagnostics_multivariate."""
    X, C = small_cs
    t = dg.permanova(X, C, batch="site", formula="age + sex", n_permutations=0).set_index("test")
    ref = pd.read_csv(QC_LM / "qc_mdmr.csv").iloc[0]
    assert round(float(t.mdmr_statistic["permanova"]), 2) == ref.Statistic
    assert round(float(t.statistic["mdmr"]), 2) == ref.Statistic
    assert round(float(t.effect_size["mdmr"]), 2) == ref["Pseudo.R2"]
    assert t.df1["mdmr"] == ref["Numer.DF"]
    assert ref["p.value"] == "<0.001" and 0 < t.p_unc["mdmr"] < 1e-3
    assert t.p_method["mdmr"] == "analytic"
    lmer = pd.read_csv(QC_LMER / "qc_mdmr.csv").iloc[0]
    Xl = pd.read_csv(REF / "inputs" / "small_long" / "features.csv")
    res = dg.site_residuals(Xl, pd.read_csv(REF / "inputs" / "small_long" / "covars.csv"), batch="site",
                            formula="age + sex + time", model="lmm", random="subject_id")
    codes = pd.factorize(pd.read_csv(REF / "inputs" / "small_long" / "covars.csv").site, sort=True)[0]
    from featharm.diagnostics.multivariate import _standardize, permanova_arrays

    r = permanova_arrays(_standardize(res.additive.to_numpy()), codes, np.bincount(codes), 0, None)
    assert round(r["mdmr_statistic"], 2) == lmer.Statistic and round(r["pseudo_R2"], 2) == lmer["Pseudo.R2"]
    assert lmer["p.value"] == "<0.001" and 0 < r["p_analytic"] < 1e-3
