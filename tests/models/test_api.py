"""The scikit-learn style API of ComBat: parameters, fitted state, DataFrames in and out."""

from __future__ import annotations

import doctest

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError as SkNotFittedError
from sklearn.utils.validation import check_is_fitted

import featharm as fh
from featharm.exceptions import NotFittedError

PARAMS = ["batch", "formula", "eb", "parametric", "mean_only", "mean_only_form", "ref_batch", "tol",
          "max_iter", "compat", "missing_covariates", "priors", "covariates", "n_jobs"]


@pytest.fixture(scope="module")
def sim():
    return fh.datasets.make_multisite(n_subjects=150, n_sites=3, n_features=8, random_state=0)


@pytest.fixture
def X(sim):
    return sim.X.copy()


@pytest.fixture
def cov(sim):
    return sim.covariates.copy()


# ------------------------------------------------------------------------------------------ parameters
def test_constructor_stores_params_only():
    hm = fh.ComBat(batch="scanner", formula="age", eb=False, max_iter=5, ref_batch="A")
    assert sorted(vars(hm)) == sorted(PARAMS)
    assert not [k for k in vars(hm) if k.endswith("_")]
    assert hm.batch == "scanner" and hm.formula == "age" and hm.eb is False and hm.max_iter == 5


def test_constructor_does_not_validate():
    # scikit-learn convention: invalid values are stored and only rejected by fit
    hm = fh.ComBat(mean_only_form="x", max_iter=0, tol=-1, compat="R")
    assert hm.get_params()["max_iter"] == 0


def test_constructor_is_keyword_only():
    with pytest.raises(TypeError):
        fh.ComBat("site")  # noqa


def test_get_params_and_set_params():
    hm = fh.ComBat(formula="age + sex")
    params = hm.get_params()
    assert sorted(params) == sorted(PARAMS)
    assert params["formula"] == "age + sex" and params["batch"] == "site" and params["eb"] is True
    assert hm.set_params(eb=False, ref_batch="site02") is hm
    assert hm.eb is False and hm.get_params()["ref_batch"] == "site02"
    with pytest.raises(ValueError):
        hm.set_params(not_a_param=1)


def test_clone(X, cov):
    hm = fh.ComBat(formula="age + sex", parametric=False, ref_batch="site01")
    c = clone(hm)
    assert c is not hm and c.get_params() == hm.get_params()
    hm.fit(X, cov)
    c2 = clone(hm)
    assert c2.get_params() == hm.get_params()
    assert not hasattr(c2, "batches_") and not hasattr(c2, "gamma_star_")
    with pytest.raises(NotFittedError):
        c2.transform(X, cov)


def test_repr_shows_non_default_params():
    assert repr(fh.ComBat(formula="age")) == "ComBat(formula='age')"


# ------------------------------------------------------------------------------------------ fitted state
def test_fit_returns_self(X, cov):
    hm = fh.ComBat(formula="age + sex")
    assert hm.fit(X, cov) is hm


def test_learned_attributes(X, cov):
    hm = fh.ComBat(formula="age + sex").fit(X, cov)
    new = [k for k in vars(hm) if k not in PARAMS and not k.startswith("_")]
    assert new and all(k.endswith("_") for k in new), new
    sites = ["site01", "site02", "site03"]
    feats = list(X.columns)
    assert list(hm.batches_) == sites
    assert list(hm.feature_names_in_) == feats and hm.n_features_in_ == len(feats)
    for name in ("gamma_hat_", "delta_hat_", "gamma_star_", "delta_star_", "batch_coef_"):
        df = getattr(hm, name)
        assert isinstance(df, pd.DataFrame), name
        assert list(df.index) == sites and df.index.name == "site", name
        assert list(df.columns) == feats and df.columns.name == "feature", name
        assert np.isfinite(df.to_numpy()).all(), name
    for name in ("alpha_", "sigma_"):
        s = getattr(hm, name)
        assert isinstance(s, pd.Series) and list(s.index) == feats, name
    for name in ("batch_sizes_", "n_iter_", "gamma_bar_", "tau2_"):
        s = getattr(hm, name)
        assert isinstance(s, pd.Series) and list(s.index) == sites, name
    assert hm.batch_sizes_.to_dict() == cov["site"].value_counts().to_dict()
    assert isinstance(hm.beta_, pd.DataFrame)
    assert list(hm.beta_.index) == ["age", "sex[T.M]"] and list(hm.beta_.columns) == feats
    assert isinstance(hm.priors_, pd.DataFrame) and list(hm.priors_.index) == sites
    assert list(hm.priors_.columns) == ["gamma_bar", "tau2", "a_prior", "b_prior"]
    assert hm.constant_features_ == []
    assert isinstance(hm.design_, fh.CovariateDesign)
    # the estimates recover the planted site effects (sanity, not precision)
    corr = np.corrcoef(hm.gamma_star_.to_numpy().ravel(), fh.datasets.make_multisite(
        n_subjects=150, n_sites=3, n_features=8, random_state=0).gamma.to_numpy().ravel())[0, 1]
    assert corr > 0.8


def test_no_learned_attributes_before_fit():
    hm = fh.ComBat()
    for name in ("batches_", "gamma_star_", "feature_names_in_", "design_"):
        assert not hasattr(hm, name)


def test_transform_before_fit(X, cov):
    hm = fh.ComBat(formula="age")
    with pytest.raises(NotFittedError) as ei:
        hm.transform(X, cov)
    assert isinstance(ei.value, AttributeError) and isinstance(ei.value, ValueError)
    assert "ComBat" in str(ei.value) and "fit" in str(ei.value)
    with pytest.raises(AttributeError):  # code that catches AttributeError (as for sklearn) still works
        hm.transform(X, cov)
    with pytest.raises(SkNotFittedError):
        check_is_fitted(hm)
    check_is_fitted(hm.fit(X, cov))


def test_refit_discards_old_state(X, cov):
    hm = fh.ComBat(formula="age + sex", ref_batch="site03")
    hm.fit(X, cov)
    assert list(hm.batches_) == ["site01", "site02", "site03"] and hm.ref_index_ == 2
    keep = cov["site"] != "site03"
    hm.set_params(ref_batch=None)
    hm.fit(X.loc[keep, ["roi000", "roi001", "roi002"]], cov.loc[keep])
    assert list(hm.batches_) == ["site01", "site02"]
    assert hm.ref_index_ is None
    assert hm.gamma_star_.shape == (2, 3) and list(hm.gamma_star_.index) == ["site01", "site02"]
    assert list(hm.feature_names_in_) == ["roi000", "roi001", "roi002"] and hm.n_features_in_ == 3
    assert list(hm.batch_sizes_.index) == ["site01", "site02"]
    assert hm.priors_.notna().all().all()  # the NaN priors of the old reference batch are gone
    fresh = fh.ComBat(formula="age + sex").fit(X.loc[keep, ["roi000", "roi001", "roi002"]], cov.loc[keep])
    assert sorted(vars(hm)) == sorted(vars(fresh))
    pd.testing.assert_frame_equal(hm.gamma_star_, fresh.gamma_star_, check_exact=True)
    with pytest.raises(fh.exceptions.UnseenBatchError, match="site03"):
        hm.transform(X[["roi000", "roi001", "roi002"]], cov)


def test_refit_with_a_new_formula_updates_the_design(X, cov):
    hm = fh.ComBat(formula="age + sex").fit(X, cov)
    hm.set_params(formula="age").fit(X, cov)
    assert hm.design_.columns == ["age"] and list(hm.beta_.index) == ["age"]


# ------------------------------------------------------------------------------------------ inputs and outputs
def test_dataframe_in_dataframe_out(X, cov):
    X.index = pd.Index([f"id_{i:03d}" for i in range(len(X))], name="participant")
    cov.index = X.index
    out = fh.ComBat(formula="age + sex").fit_transform(X, cov)
    assert isinstance(out, pd.DataFrame)
    assert out.index.equals(X.index) and out.index.name == "participant"
    assert out.columns.equals(X.columns)
    assert out.dtypes.eq(np.float64).all()
    assert not np.allclose(out.to_numpy(), X.to_numpy())


def test_inputs_are_not_modified(X, cov):
    X0, cov0 = X.copy(), cov.copy()
    hm = fh.ComBat(formula="age + sex")
    hm.fit_transform(X, cov)
    hm.transform(X, cov)
    pd.testing.assert_frame_equal(X, X0)
    pd.testing.assert_frame_equal(cov, cov0)


def test_fit_transform_equals_fit_then_transform(X, cov):
    a = fh.ComBat(formula="age + sex").fit_transform(X, cov)
    b = fh.ComBat(formula="age + sex").fit(X, cov).transform(X, cov)
    assert a.to_numpy().tobytes() == b.to_numpy().tobytes()


def test_shuffled_columns_at_transform(X, cov):
    hm = fh.ComBat(formula="age + sex").fit(X, cov)
    ref = hm.transform(X, cov)
    cols = list(np.random.default_rng(0).permutation(X.columns))
    out = hm.transform(X[cols], cov)
    assert list(out.columns) == cols  # the input's column order
    assert out.index.equals(X.index)
    pd.testing.assert_frame_equal(out[list(X.columns)], ref, check_exact=True)


def test_shuffled_rows_and_subsets_at_transform(X, cov):
    hm = fh.ComBat(formula="age + sex").fit(X, cov)
    ref = hm.transform(X, cov)
    perm = np.random.default_rng(1).permutation(len(X))[:40]
    out = hm.transform(X.iloc[perm], cov.iloc[perm[::-1]])  # the same ids, in another order: matched by index
    pd.testing.assert_frame_equal(out, ref.iloc[perm], check_exact=True)


def test_numpy_features_with_covariates(X, cov):
    arr = X.to_numpy()
    hm = fh.ComBat(formula="age + sex").fit(arr, cov)
    assert list(hm.feature_names_in_) == [f"x{j}" for j in range(arr.shape[1])]
    out = hm.transform(arr, cov)
    assert isinstance(out, pd.DataFrame)
    assert out.index.equals(cov.index)
    assert list(out.columns) == list(hm.feature_names_in_)
    ref = fh.ComBat(formula="age + sex").fit_transform(X, cov)
    np.testing.assert_array_equal(out.to_numpy(), ref.to_numpy())
    # a DataFrame-fitted model also takes arrays (same column order) and names them as at fit
    hm2 = fh.ComBat(formula="age + sex").fit(X, cov)
    out2 = hm2.transform(arr, cov)
    assert list(out2.columns) == list(X.columns)
    np.testing.assert_array_equal(out2.to_numpy(), ref.to_numpy())


def test_numpy_features_with_wrong_width(X, cov):
    hm = fh.ComBat().fit(X, cov)
    with pytest.raises(fh.exceptions.AlignmentError, match="3 features"):
        hm.transform(X.to_numpy()[:, :3], cov)


def test_covariates_are_required(X):
    with pytest.raises(fh.exceptions.InputError, match="covariates"):
        fh.ComBat().fit(X)


def test_feature_names_out(X, cov):
    hm = fh.ComBat().fit(X, cov)
    assert list(hm.get_feature_names_out()) == list(X.columns)


def test_integer_feature_columns(X, cov):
    Xi = X.set_axis(range(X.shape[1]), axis=1)
    out = fh.ComBat(formula="age").fit_transform(Xi, cov)
    assert list(out.columns) == list(range(X.shape[1]))


# ------------------------------------------------------------------------------------------ the documented example
@pytest.fixture(scope="module")
def ixi():
    return fh.datasets.load_ixi()


def test_docstring_example_runs(ixi):
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = [t for t in finder.find(fh.ComBat, "ComBat", globs={}) if t.examples]
    assert tests, "ComBat's docstring has examples"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for t in tests:
        runner.run(t)
    res = runner.summarize(verbose=False)
    assert res.attempted >= 5 and res.failed == 0


def test_docstring_example_by_hand(ixi):
    X = ixi.filter(like="_thickness").drop(columns=["lh_MeanThickness_thickness", "rh_MeanThickness_thickness"])
    assert X.shape == (556, 68)
    hm = fh.ComBat(batch="site", formula="age + sex")
    Xh = hm.fit_transform(X, ixi)
    assert Xh.shape == X.shape and list(hm.batches_) == ["Guys", "HH", "IOP"]
    assert Xh.index.equals(ixi.index) and list(Xh.columns) == fh.datasets.ixi_feature_columns(ixi)
    # site means (adjusted for age and sex) are much closer after harmonization
    from featharm.diagnostics import test_site_effects

    before = test_site_effects(X, ixi, batch="site", formula="age + sex", tests="anova")
    after = test_site_effects(Xh, ixi, batch="site", formula="age + sex", tests="anova")
    assert after.effect_size.median() < before.effect_size.median() / 10


def test_cross_validation_pattern(ixi):
    from sklearn.model_selection import StratifiedKFold

    X = ixi[fh.datasets.ixi_feature_columns(ixi)]
    train, test = next(StratifiedKFold(5, shuffle=True, random_state=0).split(X, ixi["site"]))
    hm = fh.ComBat(batch="site", formula="age + sex").fit(X.iloc[train], ixi.iloc[train])
    Xtr = hm.transform(X.iloc[train], ixi.iloc[train])
    Xte = hm.transform(X.iloc[test], ixi.iloc[test])
    assert Xte.index.equals(X.index[test]) and np.isfinite(Xte.to_numpy()).all()
    pd.testing.assert_frame_equal(Xtr, fh.ComBat(batch="site", formula="age + sex")
                                  .fit_transform(X.iloc[train], ixi.iloc[train]), check_exact=True)
