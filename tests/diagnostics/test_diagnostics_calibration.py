"""Calibration and power of the per-feature site tests on simulated data with known truth.

Null: no site effect (covariate effects only, independent features); every test must reject at 0.05
in 3-7 % of 1,000 features (binomial sd at 5 %: 0.7 %). Power: planted location or scale effects."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from featharm import diagnostics as dg

V = 1000


def _cross_sectional(n, sizes, shift=None, scale=None, seed=0):
    rng = np.random.default_rng(seed)
    site = np.repeat(np.arange(len(sizes)), sizes)
    age = rng.uniform(20, 80, n)
    sex = rng.choice(["F", "M"], n)
    E = rng.standard_normal((n, V))
    if scale is not None:
        E *= np.asarray(scale)[site][:, None]
    Y = 3.0 - 0.01 * age[:, None] + 0.1 * (sex == "M")[:, None] + 0.2 * E
    if shift is not None:
        Y += 0.2 * np.asarray(shift)[site][:, None]
    ids = [f"s{i}" for i in range(n)]
    X = pd.DataFrame(Y, index=ids, columns=[f"f{j}" for j in range(V)])
    cov = pd.DataFrame({"site": [f"site{s}" for s in site], "age": age, "sex": sex}, index=ids)
    return X, cov


@pytest.fixture(scope="module")
def null_table():
    X, cov = _cross_sectional(200, [40, 60, 45, 55], seed=1)
    return dg.test_site_effects(X, cov, batch="site", formula="age + sex", tests="all", n_permutations=199,
                                random_state=0)


@pytest.mark.parametrize("test", ["anova", "kruskal_wallis", "levene", "brown_forsythe", "bartlett",
                                  "fligner_killeen", "anderson_darling"])
def test_null_calibration(null_table, test):
    p = null_table.loc[null_table.test == test, "p_unc"].to_numpy()
    assert p.size == V
    rate = np.mean(p < 0.05)
    assert 0.03 <= rate <= 0.07, rate
    # and BH-FDR keeps (almost) everything non-significant under the global null
    assert np.mean(null_table.loc[null_table.test == test, "p_fdr"] < 0.05) <= 0.01


def test_null_calibration_lmm_lrt():
    rng = np.random.default_rng(2)
    n_sub, visits = 160, 3
    sub = np.repeat(np.arange(n_sub), visits)
    site = np.repeat(rng.integers(0, 4, n_sub), visits)
    age = np.repeat(rng.uniform(20, 80, n_sub), visits) + np.tile(np.arange(visits), n_sub)
    u = rng.standard_normal((n_sub, V))[sub]
    Y = 2.0 - 0.01 * age[:, None] + 0.2 * u + 0.1 * rng.standard_normal((sub.size, V))
    ids = [f"r{i}" for i in range(sub.size)]
    X = pd.DataFrame(Y, index=ids, columns=[f"f{j}" for j in range(V)])
    cov = pd.DataFrame({"site": site.astype(str), "age": age, "subject": sub.astype(str)}, index=ids)
    t = dg.test_site_effects(X, cov, batch="site", formula="age", model="lmm", random="subject", tests="lmm_lrt")
    rate = np.mean(t.p_unc < 0.05)
    assert 0.03 <= rate <= 0.07, rate


def test_power_location():
    X, cov = _cross_sectional(200, [40, 60, 45, 55], shift=[0.0, 0.5, -0.5, 0.25], seed=3)
    t = dg.test_site_effects(X, cov, batch="site", formula="age + sex", tests=["anova", "kruskal_wallis"])
    for test, grp in t.groupby("test"):
        assert np.mean(grp.p_fdr < 0.05) > 0.9, test
    # a location shift leaves the variances alone: the scale tests stay calibrated
    s = dg.test_site_effects(X, cov, batch="site", formula="age + sex", tests=["levene", "fligner_killeen"])
    assert (s.groupby("test").p_unc.apply(lambda p: np.mean(p < 0.05)) < 0.07).all()


def test_power_scale():
    X, cov = _cross_sectional(200, [40, 60, 45, 55], scale=[1.0, 1.6, 0.7, 1.0], seed=4)
    t = dg.test_site_effects(X, cov, batch="site", formula="age + sex",
                             tests=["levene", "brown_forsythe", "bartlett", "fligner_killeen"])
    for test, grp in t.groupby("test"):
        assert np.mean(grp.p_fdr < 0.05) > 0.9, test
    es = dg.site_effect_sizes(X.iloc[:, :200], cov, batch="site", formula="age + sex")
    med = es.groupby("site").log_var_ratio.median()
    assert med["site1"] > 0.5 and med["site2"] < -0.3  # 2 ln 1.6 - pooled, 2 ln 0.7 - pooled
