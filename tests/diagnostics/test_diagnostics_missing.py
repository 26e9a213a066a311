"""Diagnostics of feature tables with missing (NaN) cells (``docs/methods.md`` §1.8, §6).

Per-feature tests run on each feature's observed rows and must equal the same test on that feature with its
NaN rows dropped; multivariate checks run on the rows without a missing feature and must equal the same
check on those rows; features too sparse for a test get NaN statistics and a warning naming them; complete
tables are not touched by any of it.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import featharm as fh
from featharm import diagnostics as dg
from featharm.datasets._simulate import make_multisite
from featharm.datasets._simulate_long import make_longitudinal
from featharm.diagnostics._results import MISSINGNESS_COLUMNS
from featharm.diagnostics.univariate import COLUMNS
from featharm.exceptions import MissingValueWarning

FORMULA = "age + sex"
NUMERIC = ["n", "statistic", "df1", "df2", "p_unc", "effect_size"]


@pytest.fixture(scope="module")
def sim():
    return make_multisite(n_subjects=240, n_sites=4, n_features=12, random_state=11)


@pytest.fixture(scope="module")
def X_na(sim):
    """The simulation (site effects in location and scale) with ~5 % of its cells missing completely at random."""
    rng = np.random.default_rng(3)
    X = sim.X.mask(rng.random(sim.X.shape) < 0.05)
    assert 0.03 < X.isna().to_numpy().mean() < 0.07 and X.notna().all(axis=1).sum() > 60
    return X


def _dropped(X, cov, feature):
    keep = X[feature].notna().to_numpy()
    return X.loc[keep, [feature]], cov.loc[keep]


def _same(a: pd.DataFrame, b: pd.DataFrame, columns, rtol=1e-12):
    a, b = a.reset_index(drop=True), b.reset_index(drop=True)
    assert len(a) == len(b) > 0
    for c in columns:
        np.testing.assert_allclose(a[c].to_numpy(dtype=float), b[c].to_numpy(dtype=float), rtol=rtol, atol=0,
                                   equal_nan=True, err_msg=c)


# ------------------------------------------------------------------------------------------ per feature
def test_per_feature_tests_equal_the_feature_without_its_nan_rows(sim, X_na):
    cov = sim.covariates
    t = dg.test_site_effects(X_na, cov, batch="site", formula=FORMULA, tests="all", n_permutations=99,
                             random_state=4)
    assert list(t.columns) == COLUMNS
    assert not t["statistic"].isna().any()  # every feature testable at 5 % MCAR
    for f in ["roi000", "roi005", "roi011"]:
        Xf, cf = _dropped(X_na, cov, f)
        one = dg.test_site_effects(Xf, cf, batch="site", formula=FORMULA, tests="all", n_permutations=99,
                                   random_state=4)
        _same(t[t.feature == f], one, NUMERIC)
        assert (t.loc[t.feature == f, "n"] == X_na[f].notna().sum()).all()
    # the families are adjusted over all features (BH, Bonferroni over the finite p-values)
    for _, g in t.groupby("test"):
        np.testing.assert_allclose(g["p_fdr"], dg._common.bh_fdr(g["p_unc"].to_numpy()), rtol=0, atol=0)
        np.testing.assert_allclose(g["p_bonf"], np.minimum(g["p_unc"] * len(g), 1.0), rtol=0, atol=0)


def test_effect_sizes_residuals_and_preservation_on_observed_rows(sim, X_na):
    cov = sim.covariates
    es = dg.site_effect_sizes(X_na, cov, batch="site", formula=FORMULA)
    res = dg.site_residuals(X_na, cov, batch="site", formula=FORMULA)
    for part in res:
        assert np.array_equal(part.isna().to_numpy(), X_na.isna().to_numpy())  # NaN exactly where X is
    Xh = fh.ComBat(batch="site", formula=FORMULA).fit_transform(X_na, cov)
    pres = dg.biology_preservation(X_na, Xh, cov, batch="site", formula=FORMULA)
    for f in ["roi001", "roi007"]:
        Xf, cf = _dropped(X_na, cov, f)
        one = dg.site_effect_sizes(Xf, cf, batch="site", formula=FORMULA)
        _same(es[es.feature == f], one, ["n", "shift", "log_var_ratio"])
        r1 = dg.site_residuals(Xf, cf, batch="site", formula=FORMULA)
        np.testing.assert_allclose(res.additive.loc[Xf.index, f], r1.additive[f], rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(res.full.loc[Xf.index, f], r1.full[f], rtol=1e-12, atol=1e-13)
        p1 = dg.biology_preservation(Xf, Xh.loc[Xf.index, [f]], cf, batch="site", formula=FORMULA)
        cols = [c for c in p1.table.columns if c not in ("feature", "covariate") and "fdr" not in c]
        _same(pres.table[pres.table.feature == f], p1.table, cols)
    assert pres.summary["pearson_t"].notna().all() and pres.summary["ccc_t"].notna().all()


def test_lmm_tests_on_observed_rows():
    sim = make_longitudinal(n_subjects=60, n_sites=3, n_features=4, random_state=2)
    X, cov = sim.X.copy(), sim.covariates
    X.iloc[::7, 1] = np.nan
    kw = dict(batch="site", formula="age", model="lmm", random="subject")
    t = dg.test_site_effects(X, cov, **kw)
    f = X.columns[1]
    Xf, cf = _dropped(X, cov, f)
    # the REML fits iterate to a tolerance: equal to the optimizer's precision
    _same(t[t.feature == f], dg.test_site_effects(Xf, cf, **kw), NUMERIC, rtol=1e-5)
    g = X.columns[0]  # a complete feature: as in the complete table
    _same(t[t.feature == g], dg.test_site_effects(X[[g]], cov, **kw), NUMERIC, rtol=1e-5)


# ------------------------------------------------------------------------------------------ multivariate
def test_multivariate_checks_equal_the_complete_rows(sim, X_na):
    cov = sim.covariates
    keep = X_na.notna().all(axis=1)
    Xc, cc = X_na[keep], cov[keep]
    n = int(keep.sum())
    a = dg.permanova(X_na, cov, batch="site", formula=FORMULA, n_permutations=49, random_state=1)
    b = dg.permanova(Xc, cc, batch="site", formula=FORMULA, n_permutations=49, random_state=1)
    assert (a["n"] == n).all() and (b["n"] == n).all()
    _same(a, b, ["statistic", "p_unc", "effect_size", "df1", "df2", "mdmr_statistic"])
    a = dg.pc_covariance_tests(X_na, cov, batch="site", formula=FORMULA)
    b = dg.pc_covariance_tests(Xc, cc, batch="site", formula=FORMULA)
    assert (a["n"] == n).all()
    _same(a, b, ["statistic", "p_unc", "df1", "df2", "n_components", "explained_variance"], rtol=1e-10)
    kw = dict(batch="site", formula=FORMULA, n_permutations=5, n_repeats=1, random_state=2)
    a = dg.site_classification(X_na, cov, **kw)
    b = dg.site_classification(Xc, cc, **kw)
    assert (a["n"] == n).all()
    _same(a, b, ["value", "sd", "null_mean", "p_perm", "n_components"], rtol=1e-10)


def test_diagnose_with_missing_cells(sim, X_na):
    cov = sim.covariates
    Xh = fh.ComBat(batch="site", formula=FORMULA).fit_transform(X_na, cov)
    r = dg.diagnose(X_na, cov, batch="site", formula=FORMULA, X_harmonized=Xh, n_permutations=19,
                    classification_permutations=3, n_repeats=1, random_state=0)
    n_complete = int(X_na.notna().all(axis=1).sum())
    assert r.n_missing == int(X_na.isna().to_numpy().sum()) and r.n_complete == n_complete
    assert (r["multivariate"]["n"] == n_complete).all() and (r["site_classification"]["n"] == n_complete).all()
    mt = r["missingness"]
    assert list(mt.columns) == MISSINGNESS_COLUMNS and len(mt) == 4 * 12
    by_site = X_na.isna().groupby(cov["site"]).sum()
    for row in mt.itertuples():
        assert row.n_missing == by_site.loc[row.site, row.feature]
        assert row.fraction_missing == pytest.approx(row.n_missing / row.n)
    z = r.missing_matrix()
    assert z.shape == (4, 12) and z.to_numpy().max() <= 1
    assert "missing: " in r.summary() and f"on the {n_complete} rows without a missing feature" in r.summary()
    # the tables equal the functions' on the same data (one computation, everywhere)
    se = r["site_effects"]
    raw = se[se.data == "raw"].drop(columns="data")
    _same(raw, dg.test_site_effects(X_na, cov, batch="site", formula=FORMULA), NUMERIC + ["p_fdr"], rtol=0)
    assert r["preservation"]["n"].max() <= 240 and r["preservation"]["n"].min() > 200


def test_complete_features_are_not_touched(sim):
    X, cov = sim.X, sim.covariates
    with warnings.catch_warnings():
        warnings.simplefilter("error", MissingValueWarning)
        r = dg.diagnose(X, cov, batch="site", formula=FORMULA, n_permutations=9, classification=False)
    assert "missingness" not in r and r.n_missing == 0 and r.n_complete == 240
    assert (r["site_effects"]["n"] == 240).all() and (r["multivariate"]["n"] == 240).all()
    assert r.missing_matrix().to_numpy().sum() == 0
    # one feature with NaN leaves the other features' tests as they are on the complete table
    Xn = X.copy()
    Xn.iloc[[0, 5, 9], 3] = np.nan
    a = dg.test_site_effects(Xn, cov, batch="site", formula=FORMULA)
    b = dg.test_site_effects(X, cov, batch="site", formula=FORMULA)
    others = a.feature != X.columns[3]
    _same(a[others], b[others], NUMERIC, rtol=1e-13)


# ------------------------------------------------------------------------------------------ too few values
def test_sparse_features_give_nan_with_a_warning_naming_them(sim):
    X, cov = sim.X.copy(), sim.covariates
    site = cov["site"].to_numpy()
    X.loc[site != "site01", "roi002"] = np.nan  # observed in one site only: no site effect to test
    X.loc[site == "site02", "roi004"] = np.nan  # one site without a value: tested on the other three
    one = np.flatnonzero(site == "site03")[1:]
    X.iloc[one, X.columns.get_loc("roi006")] = np.nan  # one value in site03: that site is left out
    X["roi008"] = np.nan  # never observed
    with pytest.warns(MissingValueWarning) as rec:
        t = dg.test_site_effects(X, cov, batch="site", formula=FORMULA)
    msg = " ".join(str(w.message) for w in rec)
    assert "'roi002' (observed in 1 site(s)" in msg and "'roi008' (no observed value)" in msg
    assert "'roi004' (without site02)" in msg and "'roi006' (without site03)" in msg
    for f in ("roi002", "roi008"):
        g = t[t.feature == f]
        assert g["statistic"].isna().all() and g["p_unc"].isna().all() and g["p_fdr"].isna().all()
    assert (t.loc[t.feature == "roi008", "n"] == 0).all()
    for f, drop in (("roi004", "site02"), ("roi006", "site03")):
        g = t[t.feature == f]
        assert g["statistic"].notna().all() and (g.loc[g.test == "anova", "df1"] == 2).all()
        keep = X[f].notna().to_numpy() & (site != drop)
        one_t = dg.test_site_effects(X.loc[keep, [f]], cov.loc[keep], batch="site", formula=FORMULA)
        _same(g, one_t, NUMERIC)
    with pytest.warns(MissingValueWarning):
        es = dg.site_effect_sizes(X, cov, batch="site", formula=FORMULA)
    r6 = es[(es.feature == "roi006") & (es.site == "site03")].iloc[0]
    assert r6["n"] == 1 and np.isnan(r6["shift"])
    # the features observed somewhere are complete in site01 only: no multivariate site effect to test
    with pytest.warns(MissingValueWarning, match="cannot run"):
        mv = dg.permanova(X, cov, batch="site", formula=FORMULA, n_permutations=9)
    assert mv["statistic"].isna().all() and (mv["n"] == 0).all()
    assert mv["variant"].str.contains("not computed: observed in 1 site").all()
    # every row misses one feature: nothing is complete
    Xs = sim.X.copy()
    for i in range(len(Xs)):
        Xs.iloc[i, i % Xs.shape[1]] = np.nan
    with pytest.warns(MissingValueWarning, match="cannot run"):
        pc = dg.pc_covariance_tests(Xs, cov, batch="site", formula=FORMULA)
    assert pc["statistic"].isna().all() and pc["variant"].str.contains("no row has every feature observed").all()
    t = dg.test_site_effects(Xs, cov, batch="site", formula=FORMULA)  # per feature: 220 of 240 rows each
    assert t["statistic"].notna().all() and (t["n"] == 220).all()


def test_diagnose_survives_sparse_features(sim):
    X, cov = sim.X.copy(), sim.covariates
    X.loc[cov["site"] != "site01", "roi002"] = np.nan
    with pytest.warns(MissingValueWarning):
        r = dg.diagnose(X, cov, batch="site", formula=FORMULA, n_permutations=9, classification_permutations=2,
                        n_repeats=1, random_state=0)
    # the complete rows are site01's only: one site, nothing multivariate to test
    assert r["multivariate"]["statistic"].isna().all() and r["site_classification"]["value"].isna().all()
    assert r.n_complete == 0
    assert r["site_effects"].loc[lambda d: d.feature == "roi002", "statistic"].isna().all()
    assert r["site_effects"].loc[lambda d: d.feature != "roi002", "statistic"].notna().all()


def test_site_mixing_uses_the_complete_rows(sim, X_na):
    cov = sim.covariates
    keep = X_na.notna().all(axis=1)
    a = dg.site_mixing(X_na, cov, batch="site", formula=FORMULA, random_state=0)
    b = dg.site_mixing(X_na[keep], cov[keep], batch="site", formula=FORMULA, random_state=0)
    assert (a["n"] == int(keep.sum())).all()
    _same(a, b, ["value", "ideal", "neighbours", "n_components", "rows_averaged"], rtol=1e-10)


def test_classification_names_the_complete_rows_it_lacks(sim):
    X, cov = sim.X.copy(), sim.covariates
    rows = np.flatnonzero(cov["site"] == "site01")[3:]
    X.iloc[rows, 0] = np.nan  # site01 keeps 3 complete rows: too few for 5 folds
    with pytest.raises(fh.exceptions.InputError, match=r"rows without a missing feature \(the classification uses "
                                                       r"those rows: \d+ of 240.*'site01' \(rows=3\)"):
        dg.diagnose(X, cov, batch="site", formula=FORMULA)
