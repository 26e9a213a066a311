"""featharm.diagnostics against ComBatFamQC 1.0.6 (R 4.2.2), ``tests/reference/outputs/qc_lm``.

Reference: ComBatFamQC ``visual_prep(type = "lm", covariates = c("age", "sex"), batch = "site")`` on
``inputs/small_cs`` (300 subjects, 5 sites, 20 features). In its tables ``p.value.raw`` is the
**Bonferroni-adjusted** p-value (``p.adjust(..., "bonferroni")``) despite its name; ``p_unadj`` is the
unadjusted p-value (NA where the adjusted one was capped at 1). Levene there is ``car::leveneTest``,
i.e. median-centred (our ``brown_forsythe``). Tolerance: 1e-8 relative.
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

REF = Path(__file__).parent / "reference"
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


def test_residuals_match_comBatFamQC(small_cs):
    X, C = small_cs
    res = dg.site_residuals(X, C, batch="site", formula="age + sex")
    add = pd.read_csv(QC_LM / "qc_residual_add.csv")[X.columns]
    full = pd.read_csv(QC_LM / "qc_residual_ml.csv")[X.columns]
    np.testing.assert_allclose(res.additive.to_numpy(), add.to_numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.full.to_numpy(), full.to_numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("test", ["anova", "kruskal_wallis", "brown_forsythe", "bartlett"])
def test_pvalues_match_comBatFamQC(table, test):
    ref = _ref(TABLES[test])
    ours = table[table.test == test].set_index("feature")
    assert len(ours) == 20 and set(ours.index) == set(ref.index)
    ok = ref.p_unadj.notna()
    np.testing.assert_allclose(ours.p_unc[ref.index[ok]], ref.p_unadj[ok], rtol=RTOL, atol=0)
    # p.value.raw is Bonferroni-adjusted (capped at 1)
    np.testing.assert_allclose(ours.p_bonf[ref.index], ref["p.value.raw"], rtol=RTOL, atol=0)


def test_fligner_killeen_matches_comBatFamQC(small_cs, table):
    """Fligner–Killeen: the formula agrees with R to 1e-8; the ranks of two tied deviations do not.

    Every site has an even count (42/50/82/86/40), so the two middle values of a site are at exactly the
    same distance from its median. In floating point (R and numpy alike) the two distances differ by an
    ulp in some sites and not in others, which moves their ranks by 1/2 and the p-value by ~1e-5
    relative. featharm ties them (exact arithmetic). Checks: (1) R's p-value is reproduced within 1e-8 by
    one of the 2^5 tie patterns of the middle pairs of R's own residuals; (2) featharm's end-to-end
    p-values are within 2e-5 relative.
    """
    X, C = small_cs
    ref = _ref("qc_fligner_killeen")
    full = pd.read_csv(QC_LM / "qc_residual_ml.csv")[X.columns].to_numpy()
    levels = sorted(C.site.unique())
    codes = C.site.map({lv: i for i, lv in enumerate(levels)}).to_numpy()
    oh = batch_indicators(codes, len(levels))
    counts = oh.sum(axis=0)
    for j, f in enumerate(X.columns):
        if pd.isna(ref.p_unadj[f]):
            continue
        x = full[:, j]
        dev0 = dg.univariate._median_deviations(x[:, None], codes, len(levels))[:, 0]
        pairs = []
        for g in range(len(levels)):
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
    ours = table[table.test == "fligner_killeen"].set_index("feature")
    ok = ref.p_unadj.notna()
    np.testing.assert_allclose(ours.p_unc[ref.index[ok]], ref.p_unadj[ok], rtol=2e-5, atol=0)


def _fk_from_dev(d, codes, oh, counts):
    n = d.size
    a = stats.norm.ppf(0.5 + stats.rankdata(d) / (2.0 * (n + 1)))
    abar = a.mean()
    gs = oh.T @ a
    x2 = ((gs ** 2 / counts).sum() - n * abar ** 2) / (((a - abar) ** 2).sum() / (n - 1))
    return stats.chi2.sf(x2, len(counts) - 1)


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
    """REML fits of ``y ~ age + sex + time + site + (1 | subject_id)``: lme4 stops its optimizer at a
    tolerance, so the residuals agree to ~5e-8 (absolute, features of size ~3), not to rounding."""
    X, C = small_long
    res = dg.site_residuals(X, C, batch="site", formula="age + sex + time", model="lmm", random="subject_id")
    add = pd.read_csv(QC_LMER / "qc_residual_add.csv")[X.columns].to_numpy()
    full = pd.read_csv(QC_LMER / "qc_residual_ml.csv")[X.columns].to_numpy()
    np.testing.assert_allclose(res.additive.to_numpy(), add, rtol=0, atol=2e-7)
    np.testing.assert_allclose(res.full.to_numpy(), full, rtol=0, atol=2e-7)


@pytest.mark.parametrize("test", ["lmm_lrt", "kruskal_wallis", "fligner_killeen"])
def test_lmer_pvalues_match_comBatFamQC(lmer_table, test):
    """The ML chi-square (stationary at the optimum, so insensitive to the optimizer tolerance) and the rank
    tests agree with R within 1e-8 relative. Sites have odd sizes (45/101/85/71): no median tie issue."""
    ref = pd.read_csv(QC_LMER / f"{LMER_TABLES[test]}.csv").set_index("feature")
    ours = lmer_table[lmer_table.test == test].set_index("feature")
    ok = ref.p_unadj.notna()
    assert ok.sum() >= 9
    np.testing.assert_allclose(ours.p_unc[ref.index[ok]], ref.p_unadj[ok], rtol=RTOL, atol=0)
    np.testing.assert_allclose(ours.p_bonf[ref.index], ref["p.value.raw"], rtol=RTOL, atol=0)


@pytest.mark.parametrize("test", ["brown_forsythe", "bartlett"])
def test_lmer_scale_tests(small_long, lmer_table, test):
    """Levene (median) and Bartlett are smooth in the residuals, so lme4's optimizer tolerance (residuals
    off by ~5e-8) shows: end to end they agree within 2e-5 relative. On R's own residuals the formulas
    agree within 1e-8."""
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
    """qc_mdmr.csv (rounded to 2 decimals by ComBatFamQC): Statistic 0.24, Pseudo.R2 0.2, Numer.DF 4."""
    X, C = small_cs
    t = dg.permanova(X, C, batch="site", formula="age + sex", n_permutations=0)
    ref = pd.read_csv(QC_LM / "qc_mdmr.csv").iloc[0]
    assert round(float(t.mdmr_statistic[0]), 2) == ref.Statistic
    assert round(float(t.effect_size[0]), 2) == ref["Pseudo.R2"]
    assert t.df1[0] == ref["Numer.DF"]
    lmer = pd.read_csv(QC_LMER / "qc_mdmr.csv").iloc[0]
    Xl = pd.read_csv(REF / "inputs" / "small_long" / "features.csv")
    res = dg.site_residuals(Xl, pd.read_csv(REF / "inputs" / "small_long" / "covars.csv"), batch="site",
                            formula="age + sex + time", model="lmm", random="subject_id")
    codes = pd.factorize(pd.read_csv(REF / "inputs" / "small_long" / "covars.csv").site, sort=True)[0]
    from featharm.diagnostics.multivariate import _standardize, permanova_arrays

    r = permanova_arrays(_standardize(res.additive.to_numpy()), codes, np.bincount(codes), 0, None)
    assert round(r["mdmr_statistic"], 2) == lmer.Statistic and round(r["pseudo_R2"], 2) == lmer["Pseudo.R2"]
