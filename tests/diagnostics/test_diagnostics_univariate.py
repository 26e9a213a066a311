"""featharm.diagnostics.test_site_effects: table contract, agreement with scipy/statsmodels, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from featharm import diagnostics as dg
from featharm.datasets._simulate import make_multisite
from featharm.diagnostics.univariate import COLUMNS, DEFAULT_TESTS
from featharm.exceptions import BatchError, ColumnNotFoundError, InputError


@pytest.fixture(scope="module")
def sim():
    return make_multisite(n_subjects=240, n_sites=4, n_features=12, random_state=11)


@pytest.fixture(scope="module")
def table(sim):
    return dg.test_site_effects(sim.X, sim.covariates, batch="site", formula="age + sex", tests="all",
                                n_permutations=199, random_state=0)


def test_table_contract(sim, table):
    assert list(table.columns) == COLUMNS
    tests = ["anova", "kruskal_wallis", "levene", "brown_forsythe", "bartlett", "fligner_killeen",
             "anderson_darling"]
    assert list(pd.unique(table.test)) == tests
    assert len(table) == 12 * len(tests)
    assert list(table.feature[:12]) == list(sim.X.columns)
    assert table.p_unc.between(0, 1).all() and table.p_fdr.between(0, 1).all()
    assert (table.p_fdr >= table.p_unc - 1e-15).all() and (table.p_bonf >= table.p_fdr - 1e-15).all()
    assert table.loc[table.test == "anova", "df2"].eq(240 - 4 - 2).all()
    assert table.loc[table.test == "kruskal_wallis", "df2"].isna().all()
    assert set(table.residuals) == {"model", "additive", "full"}


def test_default_tests_have_no_permutation(sim):
    t = dg.test_site_effects(sim.X, sim.covariates, batch="site", formula="age + sex")
    assert tuple(pd.unique(t.test)) == DEFAULT_TESTS
    assert (t.p_method != "permutation").all()


def test_multiple_testing_matches_statsmodels(table):
    for name, grp in table.groupby("test"):
        np.testing.assert_allclose(grp.p_fdr, multipletests(grp.p_unc, method="fdr_bh")[1], rtol=1e-12)
        np.testing.assert_allclose(grp.p_bonf, multipletests(grp.p_unc, method="bonferroni")[1], rtol=1e-12)


def test_tests_match_scipy_on_residuals(sim, table):
    res = dg.site_residuals(sim.X, sim.covariates, batch="site", formula="age + sex")
    site = sim.covariates.site.to_numpy()
    levels = sorted(set(site))
    for f in sim.X.columns[:5]:
        add = [res.additive[f].to_numpy()[site == s] for s in levels]
        full = [res.full[f].to_numpy()[site == s] for s in levels]
        row = table[table.feature == f].set_index("test")
        checks = {
            "kruskal_wallis": stats.kruskal(*add),
            "levene": stats.levene(*full, center="mean"),
            "brown_forsythe": stats.levene(*full, center="median"),
            "bartlett": stats.bartlett(*full),
        }
        for t, ref in checks.items():
            assert row.loc[t, "statistic"] == pytest.approx(ref.statistic, rel=1e-10)
            assert row.loc[t, "p_unc"] == pytest.approx(ref.pvalue, rel=1e-9)


def test_anova_matches_statsmodels(sim, table):
    import statsmodels.formula.api as smf

    df = sim.covariates.copy()
    f = sim.X.columns[0]
    df["y"] = sim.X[f]
    full = smf.ols("y ~ age + sex + C(site)", df).fit()
    red = smf.ols("y ~ age + sex", df).fit()
    F, p, _ = full.compare_f_test(red)
    row = table[(table.feature == f) & (table.test == "anova")].iloc[0]
    assert row.statistic == pytest.approx(F, rel=1e-10) and row.p_unc == pytest.approx(p, rel=1e-9)
    assert row.effect_size == pytest.approx((red.ssr - full.ssr) / red.ssr, rel=1e-10)


def test_anderson_darling_statistic_matches_scipy():
    """scipy reports T = (A2akN - (k - 1)) / sigma_N, sigma depending on the group sizes only; so for
    columns with the same groups A2akN - (k - 1) must be proportional to scipy's statistic."""
    rng = np.random.default_rng(5)
    codes = np.repeat(np.arange(3), [20, 35, 25])
    A = rng.normal(size=(80, 6)) + codes[:, None] * np.linspace(0, 1, 6)
    A[:, 5] = np.round(A[:, 5], 1)  # ties: the general (midrank) path
    counts = np.bincount(codes)
    ours = dg.univariate.anderson_darling_stat(A, codes, counts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # scipy's note that its interpolated p-value is capped
        T = np.array([stats.anderson_ksamp([A[codes == g, j] for g in range(3)], variant="midrank").statistic
                      for j in range(6)])
    ratio = (ours - 2) / T
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-10)


def test_anderson_darling_permutation_is_seeded(sim):
    kw = dict(batch="site", formula="age + sex", tests="anderson_darling", n_permutations=50)
    a = dg.test_site_effects(sim.X, sim.covariates, random_state=1, **kw)
    b = dg.test_site_effects(sim.X, sim.covariates, random_state=1, **kw)
    pd.testing.assert_frame_equal(a, b)
    assert (a.p_unc >= 1 / 51).all()


def test_site_effect_sizes(sim):
    t = dg.site_effect_sizes(sim.X, sim.covariates, batch="site", formula="age + sex")
    assert list(t.columns) == ["feature", "site", "n", "shift", "log_var_ratio"]
    assert len(t) == 4 * 12
    # planted scale: log variance ratio follows 2 log delta (centred), correlation across site × feature
    truth = np.log(sim.delta.to_numpy() ** 2)
    truth -= truth.mean(axis=0)
    est = t.pivot(index="site", columns="feature", values="log_var_ratio").loc[sim.delta.index, sim.X.columns]
    assert np.corrcoef(truth.ravel(), est.to_numpy().ravel())[0, 1] > 0.7


def test_inputs_not_modified(sim):
    X, C = sim.X.copy(), sim.covariates.copy()
    dg.test_site_effects(sim.X, sim.covariates, batch="site", formula="age + sex")
    pd.testing.assert_frame_equal(X, sim.X)
    pd.testing.assert_frame_equal(C, sim.covariates)


def test_bad_input(sim):
    with pytest.raises(ColumnNotFoundError, match="scanner"):
        dg.test_site_effects(sim.X, sim.covariates, batch="scanner")
    with pytest.raises(InputError, match="'tests'"):
        dg.test_site_effects(sim.X, sim.covariates, tests=["levenne"])
    with pytest.raises(InputError, match="lmm_lrt"):
        dg.test_site_effects(sim.X, sim.covariates, tests=["lmm_lrt"])
    cov = sim.covariates.copy()
    cov.iloc[0, cov.columns.get_loc("site")] = "lonely"
    with pytest.raises(BatchError, match="lonely"):
        dg.test_site_effects(sim.X, cov)


def test_constant_feature_is_nan_and_named(sim):
    from featharm.exceptions import ConstantFeatureWarning

    X = sim.X.copy()
    X["roi001"] = 2.5
    with pytest.warns(ConstantFeatureWarning, match="roi001"):
        t = dg.test_site_effects(X, sim.covariates, batch="site", formula="age + sex", tests="all",
                                 n_permutations=9, random_state=0)
    const = t[t.feature == "roi001"]
    assert const[["statistic", "p_unc", "p_fdr", "p_bonf"]].isna().all().all()
    ref = dg.test_site_effects(sim.X.drop(columns="roi001"), sim.covariates, batch="site", formula="age + sex",
                               tests="all", n_permutations=9, random_state=0)
    ours = t[t.feature != "roi001"].reset_index(drop=True)
    # the other features: same statistics, and the constant one is not counted in the families
    pd.testing.assert_series_equal(ours.p_bonf, ref.p_bonf, rtol=1e-12)
    with pytest.warns(ConstantFeatureWarning):
        out = dg.diagnose(X, sim.covariates, batch="site", formula="age + sex", n_permutations=0,
                          classification_permutations=0, n_repeats=1, random_state=0)
    ref_out = dg.diagnose(X.drop(columns="roi001"), sim.covariates, batch="site", formula="age + sex",
                          n_permutations=0, classification_permutations=0, n_repeats=1, random_state=0)
    # the multivariate checks and the classification leave the constant feature out
    np.testing.assert_allclose(out["multivariate"].statistic, ref_out["multivariate"].statistic, rtol=1e-9)
    np.testing.assert_allclose(out["site_classification"].value, ref_out["site_classification"].value, rtol=1e-6)


def test_bad_permutation_count(sim):
    with pytest.raises(InputError, match="permutations"):
        dg.test_site_effects(sim.X, sim.covariates, tests="anderson_darling", n_permutations=-1)
    with pytest.raises(InputError, match="permutations"):
        dg.permanova(sim.X, sim.covariates, n_permutations=2.5)


def test_linpack_lm_fit_solves_least_squares():
    """R's-arithmetic QR (featharm/diagnostics/_linpack.py) is a correct least-squares solver (1e-10 against
    numpy's lstsq), for one or many features, and its row sums are sequential (bit-equal to a Python loop)."""
    from featharm.diagnostics._linpack import _seqsum, lm_fit

    rng = np.random.default_rng(11)
    W = np.hstack([np.ones((120, 1)), rng.normal(size=(120, 3)) * [1, 50, 1e-3]])
    for V in (1, 2, 7):
        Y = rng.normal(size=(120, V)) * 10 + 3
        coef, resid = lm_fit(W, Y)
        ref = np.linalg.lstsq(W, Y, rcond=None)[0]
        np.testing.assert_allclose(coef, ref, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(resid, Y - W @ ref, rtol=0, atol=1e-10)
    T = rng.normal(size=(333, 5)) * 10.0 ** rng.uniform(-8, 8, size=(333, 1))
    loop = np.zeros(5)
    for row in T:
        loop = loop + row
    assert np.array_equal(_seqsum(T), loop)
    one = 0.0
    for v in T[:, 0]:
        one += v
    assert _seqsum(T[:, :1])[0] == one


def test_diagnose_passes_fligner_ties(sim):
    """diagnose(fligner_ties=...) reaches the Fligner–Killeen test (same numbers as test_site_effects)."""
    kw = dict(batch="site", formula="age + sex", multivariate=False, classification=False, random_state=0)
    fk = {}
    for ties in ("r", "exact"):
        se = dg.diagnose(sim.X, sim.covariates, fligner_ties=ties, **kw)["site_effects"]
        ref = dg.test_site_effects(sim.X, sim.covariates, batch="site", formula="age + sex",
                                   tests="fligner_killeen", fligner_ties=ties)
        fk[ties] = se[se.test == "fligner_killeen"].p_unc.to_numpy()
        np.testing.assert_array_equal(fk[ties], ref.p_unc.to_numpy())
    assert (fk["r"] != fk["exact"]).any()  # two sites have even counts: the options differ here
    with pytest.raises(ValueError, match="fligner_ties"):
        dg.diagnose(sim.X, sim.covariates, fligner_ties="R", **kw)


def test_rank_columns_equals_rankdata_with_ties():
    """The vectorized mid-ranks and tie terms equal scipy's rankdata column by column (ties everywhere)."""
    from featharm.diagnostics._common import rank_columns

    rng = np.random.default_rng(1)
    for trial in range(100):
        n, V = int(rng.integers(1, 40)), int(rng.integers(1, 6))
        A = rng.standard_normal((n, V)) if trial % 3 == 0 else rng.integers(0, rng.integers(1, 8), (n, V)) * 1.0
        R, ties = rank_columns(A)
        for j in range(V):
            np.testing.assert_array_equal(R[:, j], stats.rankdata(A[:, j]))
            _, t = np.unique(A[:, j], return_counts=True)
            assert ties[j] == np.sum(t.astype(float) ** 3 - t)
