"""featharm.diagnostics: PERMANOVA, MANOVA/Box's M, site classification, preservation, balance, diagnose()."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import featharm as fh
from featharm import diagnostics as dg
from featharm.datasets._simulate import make_multisite
from featharm.diagnostics import multivariate as mv
from featharm.diagnostics.balance import BALANCE_COLUMNS
from featharm.diagnostics.multivariate import CLASSIFICATION_COLUMNS, MULTIVARIATE_COLUMNS
from featharm.diagnostics.preservation import PRESERVATION_COLUMNS, PRESERVATION_SUMMARY_COLUMNS
from featharm.diagnostics.suite import TABLES
from featharm.diagnostics.univariate import COLUMNS
from featharm.exceptions import AlignmentError, CollinearityWarning, InputError

REF = Path(__file__).parents[1] / "reference"


@pytest.fixture(scope="module")
def sim():
    return make_multisite(n_subjects=300, n_sites=4, n_features=15, random_state=4)


def test_permanova_equals_gower_matrix_formula(sim):
    """The SS shortcut equals the textbook pseudo-F from G = -1/2 C A C and the hat matrix H."""
    res = dg.site_residuals(sim.X, sim.covariates, batch="site", formula="age + sex").additive.to_numpy()
    Z = mv._standardize(res)
    codes = pd.factorize(sim.covariates.site, sort=True)[0]
    n, m = Z.shape[0], 4
    A = ((Z[:, None, :] - Z[None, :, :]) ** 2).sum(axis=2)
    Cm = np.eye(n) - 1.0 / n
    G = -0.5 * Cm @ A @ Cm
    D = np.hstack([np.ones((n, 1)), np.eye(m)[codes][:, 1:]])
    H = D @ np.linalg.solve(D.T @ D, D.T)
    IH = np.eye(n) - H
    F = (np.trace(H @ G @ H) / (m - 1)) / (np.trace(IH @ G @ IH) / (n - m))
    t = dg.permanova(sim.X, sim.covariates, batch="site", formula="age + sex", n_permutations=19, random_state=0)
    assert list(t.columns[:len(MULTIVARIATE_COLUMNS)]) == MULTIVARIATE_COLUMNS
    assert t.statistic[0] == pytest.approx(F, rel=1e-10)
    assert t.effect_size[0] == pytest.approx(np.trace(H @ G @ H) / np.trace(G), rel=1e-10)
    assert t.p_unc[0] == pytest.approx(1 / 20)  # strong planted site effect: no permutation reaches it


def test_permanova_permutation_null_is_uniform_ish():
    rng = np.random.default_rng(0)
    codes = np.repeat(np.arange(3), 30)
    ps = [mv.permanova_arrays(rng.normal(size=(90, 5)), codes, np.bincount(codes), 99, rng)["p"] for _ in range(200)]
    rate = np.mean(np.array(ps) <= 0.05)
    assert 0.02 <= rate <= 0.09


def _permanova_loop(Z, codes, counts, n_permutations, seed):
    """The textbook null: one permutation at a time, the one-hot product of each (what featharm did before)."""
    rng = np.random.default_rng(seed)
    Z = Z - Z.mean(axis=0)
    ssb = mv._ssb(Z, codes, counts)
    null = np.array([mv._ssb(Z, codes[rng.permutation(codes.size)], counts) for _ in range(n_permutations)])
    return (1.0 + np.sum(null >= ssb * (1 - 1e-12))) / (1.0 + n_permutations), null


@pytest.mark.parametrize("effect", [0.0, 0.3, 3.0, "equalized"])
def test_permanova_vectorized_null_equals_the_loop(effect):
    """The blocked sparse null gives each permutation's SSB within 1e-12 of the one-hot loop, and the same
    p-value, whether the exact screening by the principal components decides most permutations (a strong
    effect: upper bound; site means nearly equalized, as after ComBat: lower bound) or none (no effect); the
    permutations are the same ``rng.permutation`` draws."""
    rng = np.random.default_rng(11)
    codes = rng.permutation(np.repeat(np.arange(5), [30, 45, 12, 60, 53]))
    counts = np.bincount(codes)
    if effect == "equalized":
        E = rng.normal(size=(200, 40))
        for g in range(5):
            E[codes == g] -= E[codes == g].mean(axis=0) * (1 - 1e-3)
        Z = mv._standardize(E)
    else:
        Z = mv._standardize(rng.normal(size=(200, 40)) + effect * rng.normal(size=(5, 40))[codes])
    p_loop, null = _permanova_loop(Z, codes, counts, 299, 4)
    draw = np.random.default_rng(4)
    fast = mv.permuted_ssb(Z - Z.mean(axis=0), codes, counts, [draw.permutation(200) for _ in range(299)])
    np.testing.assert_allclose(fast, null, rtol=1e-12, atol=0)
    res = mv.permanova_arrays(Z, codes, counts, 299, np.random.default_rng(4))
    assert res["p"] == p_loop
    ssb = res["pseudo_R2"] * np.einsum("ij,ij->", Z, Z)
    lam = np.sort(np.linalg.eigvalsh(Z.T @ Z))[::-1]
    screened = mv._screen_rank(lam, 5, 200, ssb) > 0
    assert screened == (effect in (3.0, "equalized"))
    # more columns than rows (the SVD branch) and a site of 2 rows: ties with the identity are counted
    small = rng.permutation(np.repeat(np.arange(3), [2, 5, 6]))
    Zs = mv._standardize(rng.normal(size=(13, 30)))
    U, S, _ = np.linalg.svd(Zs - Zs.mean(axis=0), full_matrices=False)
    p_small, _ = _permanova_loop(U * S, small, np.bincount(small), 99, 1)
    assert mv.permanova_arrays(Zs, small, np.bincount(small), 99, np.random.default_rng(1))["p"] == p_small


def test_manova_matches_statsmodels(sim):
    from statsmodels.multivariate.manova import MANOVA

    t = dg.pc_covariance_tests(sim.X, sim.covariates, batch="site", formula="age + sex", n_components=4)
    res = dg.site_residuals(sim.X, sim.covariates, batch="site", formula="age + sex").additive.to_numpy()
    T, _ = mv._pc_scores(res, 4)
    df = pd.DataFrame(T, columns=["a", "b", "c", "d"]).assign(site=sim.covariates.site.to_numpy())
    ref = MANOVA.from_formula("a + b + c + d ~ site", df).mv_test().results["site"]["stat"].loc["Pillai's trace"]
    row = t.set_index("test").loc["manova_pillai"]
    assert row.statistic == pytest.approx(ref["F Value"], rel=1e-9)
    assert (row.df1, row.df2) == (ref["Num DF"], ref["Den DF"])
    assert row.effect_size == pytest.approx(ref["Value"] / 3, rel=1e-9)


def test_box_m_one_component_is_bartletts_numerator():
    """With one variable Box's M (before its (1 - c) factor) is Bartlett's numerator."""
    rng = np.random.default_rng(2)
    codes = np.repeat(np.arange(3), [20, 30, 25])
    x = rng.normal(size=75) * (1 + 0.3 * codes)
    counts = np.bincount(codes)
    stat, df, _ = mv.box_m(x[:, None], codes, counts)
    c = (2 + 3 - 1) / (6.0 * 2 * 2) * (np.sum(1 / (counts - 1)) - 1 / (75 - 3))
    s2 = np.array([x[codes == g].var(ddof=1) for g in range(3)])
    sp2 = np.sum((counts - 1) * s2) / (75 - 3)
    M = (75 - 3) * np.log(sp2) - np.sum((counts - 1) * np.log(s2))
    assert stat / (1 - c) == pytest.approx(M, rel=1e-10) and df == 2


def test_pca_explained_variance_matches_comBatFamQC():
    X = pd.read_csv(REF / "inputs" / "small_cs" / "features.csv")
    C = pd.read_csv(REF / "inputs" / "small_cs" / "covars.csv")
    t = dg.pc_covariance_tests(X, C, batch="site", formula="age + sex", n_components=10)
    ref = pd.read_csv(REF / "outputs" / "qc_lm" / "qc_pca_summary.csv")
    assert t.explained_variance[0] == pytest.approx(ref.Variance_Explained_Cum[9], rel=1e-10)


def test_pc_tests_bad_components(sim):
    with pytest.raises(InputError, match="n_components"):
        dg.pc_covariance_tests(sim.X, sim.covariates, batch="site", n_components=50)


# ------------------------------------------------------------------------------------------- classification
@pytest.mark.slow
def test_classification_detects_sites_and_is_chance_after_combat():
    """Covariates differ by site (mean age shifted by 15 years per site) and age has a strong effect:
    raw data classify far above chance; with ComBat fitted inside the training folds (age preserved,
    covariates residualized inside the folds) balanced accuracy is near chance 1/4, AUC near 1/2, and
    not significant against the permutation null. ComBat fitted on all rows first scores *below*
    chance (the test rows' site means were used to equalize the training rows'): the documented bias."""
    s = make_multisite(n_subjects=400, n_sites=4, n_features=20, site_age_shift=15, age_effect=-0.03,
                       unbalanced=False, random_state=7)
    bal = dg.covariate_balance(s.covariates, batch="site", formula="age + sex", warn_confounded=False)
    assert bal.set_index("covariate").loc["age", "p_unc"] < 1e-10  # age differs by site
    combat = fh.ComBat(batch="site", formula="age + sex")
    kw = dict(batch="site", formula="age + sex", n_splits=5, n_repeats=1, n_permutations=19, random_state=0)
    raw = dg.site_classification(s.X, s.covariates, **kw).set_index("metric")
    # 3 repeats: one 5-fold split alone scatters by ~0.02 around chance
    infold = dg.site_classification(s.X, s.covariates, harmonizer=combat, **{**kw, "n_repeats": 3,
                                                                             "n_permutations": 29}).set_index("metric")
    assert list(raw.reset_index().columns) == CLASSIFICATION_COLUMNS
    assert raw.loc["balanced_accuracy", "value"] > 0.5 and raw.loc["balanced_accuracy", "p_perm"] == 1 / 20
    assert raw.loc["auc_macro_ovr", "value"] > 0.8
    assert abs(infold.loc["balanced_accuracy", "value"] - 0.25) < 0.06
    assert abs(infold.loc["auc_macro_ovr", "value"] - 0.5) < 0.06
    assert infold.loc["balanced_accuracy", "p_perm"] > 0.05 and infold.loc["auc_macro_ovr", "p_perm"] > 0.05
    Xh = combat.fit_transform(s.X, s.covariates)
    leaky = dg.site_classification(Xh, s.covariates, **{**kw, "n_permutations": 0}).set_index("metric")
    assert leaky.loc["balanced_accuracy", "value"] < 0.25
    # without residualizing age inside the folds, age (which differs by site) reveals the site
    no_cov = dg.site_classification(s.X, s.covariates, batch="site", formula=None, harmonizer=combat, n_splits=5,
                                    n_repeats=1, n_permutations=0, random_state=0).set_index("metric")
    assert no_cov.loc["balanced_accuracy", "value"] > infold.loc["balanced_accuracy", "value"] + 0.15


def test_classification_small_site_error(sim):
    cov = sim.covariates.copy()
    cov.iloc[:3, cov.columns.get_loc("site")] = "tiny"
    with pytest.raises(InputError, match="tiny"):
        dg.site_classification(sim.X, cov, batch="site", n_permutations=0)


# ------------------------------------------------------------------------------------------- preservation
def test_preservation_matches_statsmodels_and_truth():
    import statsmodels.formula.api as smf

    s = make_multisite(n_subjects=400, n_sites=4, n_features=20, site_age_shift=8, sex_effect=0.2, unbalanced=False,
                       random_state=3)
    Xh = fh.ComBat(batch="site", formula="age + sex").fit_transform(s.X, s.covariates)
    pres = dg.biology_preservation(s.X, Xh, s.covariates, batch="site", formula="age + sex")
    assert list(pres.table.columns) == PRESERVATION_COLUMNS
    assert list(pres.summary.columns) == PRESERVATION_SUMMARY_COLUMNS
    f = s.X.columns[3]
    df = s.covariates.assign(y=s.X[f], yh=Xh[f])
    before = smf.ols("y ~ age + sex + C(site)", df).fit()
    after = smf.ols("yh ~ age + sex", df).fit()
    row = pres.table[(pres.table.feature == f) & (pres.table.covariate == "sex[T.M]")].iloc[0]
    assert row.t_before == pytest.approx(before.tvalues["sex[T.M]"], rel=1e-9)
    assert row.t_after == pytest.approx(after.tvalues["sex[T.M]"], rel=1e-9)
    assert row.p_after == pytest.approx(after.pvalues["sex[T.M]"], rel=1e-8)
    n1 = (s.covariates.sex == "M").sum()
    assert row.cohen_d_after == pytest.approx(row.t_after * np.sqrt(1 / n1 + 1 / (400 - n1)), rel=1e-12)
    assert np.isnan(pres.table[pres.table.covariate == "age"].cohen_d_before).all()
    summ = pres.summary.set_index("covariate")
    # ComBat keeps the age and sex effects: strongly concordant t statistics
    assert summ.loc["age", "pearson_t"] > 0.95 and summ.loc["sex[T.M]", "pearson_t"] > 0.95
    assert summ.loc["age", "n_sig_fdr_after"] >= summ.loc["age", "n_sig_fdr_before"] - 1
    # a harmonization that removes age destroys the concordance
    noise = pd.DataFrame(np.random.default_rng(0).normal(size=(400, 20)), index=s.X.index, columns=s.X.columns)
    bad = dg.biology_preservation(s.X, noise, s.covariates, batch="site",
                                  formula="age + sex").summary.set_index("covariate")
    assert bad.loc["age", "n_sig_fdr_after"] < summ.loc["age", "n_sig_fdr_after"] / 2


def test_lin_ccc():
    from featharm.diagnostics.preservation import lin_ccc

    x = np.array([-1.5, -0.5, 0.5, 1.5])
    assert lin_ccc(x, x) == pytest.approx(1.0)
    assert lin_ccc(x, x + 1) < 1.0 and lin_ccc(x, -x) == pytest.approx(-1.0)


def test_preservation_misaligned(sim):
    with pytest.raises(AlignmentError, match="same rows"):
        dg.biology_preservation(sim.X, sim.X.iloc[::-1], sim.covariates, batch="site", formula="age + sex")


# ------------------------------------------------------------------------------------------- balance
def test_balance_tests_and_confounding_warning():
    s = make_multisite(n_subjects=300, n_sites=3, n_features=2, site_age_shift=40, random_state=1)
    cov = s.covariates.assign(dx=np.where(s.covariates.site == "site01", "AD", "CN"))
    with pytest.warns(CollinearityWarning) as rec:
        t = dg.covariate_balance(cov, batch="site", columns=["age", "sex", "dx"])
    msgs = [str(w.message) for w in rec]
    assert len(msgs) == 2 and "'age' is confounded" in msgs[0] and "'dx' is confounded" in msgs[1]
    assert list(t.columns) == BALANCE_COLUMNS
    t = t.set_index("covariate")
    assert t.loc["age", "confounded"] and t.loc["dx", "confounded"] and not t.loc["sex", "confounded"]
    assert t.loc["dx", "effect_size"] == pytest.approx(1.0)
    tab = pd.crosstab(cov.site, cov.sex)
    ref = stats.chi2_contingency(tab.to_numpy(), correction=False)
    assert t.loc["sex", "p_unc"] == pytest.approx(ref.pvalue, rel=1e-12)
    ref_kw = stats.kruskal(*[g.age.to_numpy() for _, g in cov.groupby("site")])
    assert t.loc["age", "p_unc"] == pytest.approx(ref_kw.pvalue, rel=1e-12)


def test_balance_quiet_when_balanced(sim):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = dg.covariate_balance(sim.covariates, batch="site", formula="age + sex")
    assert not t.confounded.any()


# ------------------------------------------------------------------------------------------- diagnose
def test_diagnose_tables_and_reproducibility(sim):
    Xh = fh.ComBat(batch="site", formula="age + sex").fit_transform(sim.X, sim.covariates)
    kw = dict(batch="site", formula="age + sex", X_harmonized=Xh, n_permutations=19, classification_permutations=3,
              n_repeats=1, random_state=5)
    a = dg.diagnose(sim.X, sim.covariates, **kw)
    b = dg.diagnose(sim.X, sim.covariates, **kw)
    assert set(a) == set(TABLES) - {"missingness"}  # complete features: no missingness table
    for k in a:
        pd.testing.assert_frame_equal(a[k], b[k])
    se = a["site_effects"]
    assert list(se.columns) == ["data"] + COLUMNS
    raw, harm = se[se.data == "raw"], se[se.data == "harmonized"]
    assert (raw[raw.test == "anova"].p_fdr < 0.05).mean() > 0.9
    assert (harm[harm.test == "anova"].p_fdr < 0.05).mean() == 0


def test_diagnose_lmm():
    X = pd.read_csv(REF / "inputs" / "small_long" / "features.csv")
    C = pd.read_csv(REF / "inputs" / "small_long" / "covars.csv")
    out = dg.diagnose(X, C, batch="site", formula="age + sex + time", model="lmm", random="subject_id",
                      n_permutations=0, classification=False)
    assert "lmm_lrt" in set(out["site_effects"].test) and "anova" not in set(out["site_effects"].test)
    with pytest.raises(InputError, match="random"):
        dg.diagnose(X, C, batch="site", formula="age + sex + time", model="lmm", classification=False)


@pytest.mark.parametrize("classifier", ["lda", "logistic"])
def test_classification_groups_keep_subjects_together(monkeypatch, classifier):
    """Longitudinal data: scans of one subject never sit on both sides of a split; the null permutes whole
    subjects when each subject stays at one site (LDA: inside the cells of the folds, so every fold keeps
    its number of scans per site)."""
    X = pd.read_csv(REF / "inputs" / "small_long" / "features.csv")
    C = pd.read_csv(REF / "inputs" / "small_long" / "covars.csv")
    seen, cv = [], []
    if classifier == "logistic":
        original = mv._cv_scores

        def spy(Y, Xc, codes, m, splits, *args):
            seen.append(codes.copy())
            cv.append(splits)
            return original(Y, Xc, codes, m, splits, *args)

        monkeypatch.setattr(mv, "_cv_scores", spy)
    else:
        draw, cells = mv.CellPermuter.draw, mv.cv_cells

        def spy_draw(self, rng):
            seen.append(draw(self, rng))
            return seen[-1]

        def spy_cells(splits, n, n_splits):
            cv.append(splits)
            return cells(splits, n, n_splits)

        monkeypatch.setattr(mv.CellPermuter, "draw", spy_draw)
        monkeypatch.setattr(mv, "cv_cells", spy_cells)
    t = dg.site_classification(X, C, batch="site", formula="age + sex + time", groups="subject_id",
                               n_repeats=2, n_permutations=5, random_state=0, classifier=classifier,
                               stop_after=None).set_index("metric")
    assert t.loc["balanced_accuracy", "value"] > 0.5  # planted site effects
    assert 0.1 < t.loc["balanced_accuracy", "null_mean"] < 0.4  # chance 1/4
    g = pd.factorize(C.subject_id)[0]
    splits = cv[0]
    assert len(splits) == 10
    for tr, te in splits:
        assert not set(g[tr]) & set(g[te])
    one_site = C.groupby("subject_id").site.nunique().max() == 1
    codes = pd.factorize(C.site, sort=True)[0]
    permuted = seen[1:] if classifier == "logistic" else seen
    assert len(permuted) == 5
    for labels in permuted:  # permuted labels: constant within subject when the data are
        per_subject = pd.Series(labels).groupby(g).nunique().max()
        assert (per_subject == 1) == one_site
        if classifier == "lda":
            for _, te in splits:
                np.testing.assert_array_equal(np.bincount(labels[te], minlength=4), np.bincount(codes[te], minlength=4))
    with pytest.raises(InputError, match="subjects"):
        dg.site_classification(X, C, batch="site", groups="subject_id", n_splits=40, n_permutations=0)


# ------------------------------------------------------------------------------------- MDMR analytic p-value
@pytest.mark.parametrize("p, df2, V, F", [(4, 295, 20, 0.24), (4, 295, 20, 0.01), (3, 298, 10, 0.05),
                                          (1, 10, 1, 0.3), (9, 4990, 400, 0.003)])
def test_mdmr_pvalue_equal_weights_is_an_F_tail(p, df2, V, F):
    """With equal eigenvalues the null is an F law: P(χ²_{pV} / χ²_{df2 V} > F) = F_{pV, df2 V}.sf(F df2 / p).
    Relative error below 1e-9 down to tails of 1e-215 (observed <= 8e-11)."""
    from featharm.diagnostics._wchisq import mdmr_pvalue

    got = mdmr_pvalue(np.ones(V), F, p, df2)
    exact = stats.f.sf(F * df2 / p, p * V, df2 * V)
    assert got == pytest.approx(exact, rel=1e-9, abs=0)


def _imhof(w, h):
    """Textbook Imhof (1961) upper tail P(Q > 0), written independently for the check."""
    from scipy import integrate

    def f(u):
        theta = 0.5 * np.sum(h * np.arctan(w * u))
        log_rho = np.sum(h / 4.0 * np.log1p((w * u) ** 2))
        return np.sin(theta) * np.exp(-log_rho - np.log(u))

    return 0.5 + integrate.quad(f, 0, np.inf, limit=500, epsabs=1e-13)[0] / np.pi


def test_mdmr_pvalue_unequal_weights_matches_imhof():
    from featharm.diagnostics._wchisq import mdmr_pvalue, weighted_chi2_sf0

    rng = np.random.default_rng(5)
    for F, p, df2 in [(0.06, 3, 100), (0.03, 2, 60), (0.2, 4, 40)]:
        lam = rng.gamma(1.0, size=8)
        w = np.concatenate([lam, -F * lam])
        h = np.concatenate([np.full(8, p), np.full(8, df2)]).astype(float)
        got = mdmr_pvalue(lam, F, p, df2)
        assert got == pytest.approx(_imhof(w, h), abs=1e-9)
        assert 1e-6 < got < 1 - 1e-6
    assert weighted_chi2_sf0([1.0, 2.0], [1, 3]) == 1.0 and weighted_chi2_sf0([-1.0], [2]) == 0.0


def test_mdmr_analytic_null_calibration():
    """Under no site effect (n = 240, 6 features, 4 sites) the analytic p-value rejects at 0.05 in 2-9 % of
    300 data sets and tracks the permutation p-value."""
    rng = np.random.default_rng(8)
    codes = np.repeat(np.arange(4), 60)
    pa, pp = [], []
    for i in range(300):
        Z = mv._standardize(rng.normal(size=(240, 6)) @ rng.normal(size=(6, 6)))
        r = mv.permanova_arrays(Z, codes, np.bincount(codes), 99 if i < 40 else 0, rng)
        pa.append(r["p_analytic"])
        pp.append(r["p"])
    pa = np.array(pa)
    assert 0.02 <= np.mean(pa <= 0.05) <= 0.09
    assert np.corrcoef(pa[:40], pp[:40])[0, 1] > 0.95
