"""Properties of ComBat that hold without any reference package (methods.md §1.7), for every variant.

Each property runs on the parametric, non-parametric, mean-only (parametric and non-parametric),
eb=False and reference-batch models.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

import featharm
from featharm.exceptions import BatchError, NotFittedError

REF_SITE = "siteB"

VARIANTS = {
    "parametric": {},
    "nonparametric": {"parametric": False},
    "mean_only": {"mean_only": True},
    "mean_only_nonparametric": {"mean_only": True, "parametric": False},
    "eb_false": {"eb": False},
    "ref_batch": {"ref_batch": REF_SITE},
    "ref_batch_nonparametric": {"ref_batch": REF_SITE, "parametric": False},
    "ref_batch_eb_false": {"ref_batch": REF_SITE, "eb": False},
}

LEARNED = ("alpha_", "sigma_", "beta_", "batch_coef_", "gamma_hat_", "delta_hat_", "gamma_star_",
           "delta_star_", "priors_", "n_iter_", "batch_sizes_")


@pytest.fixture(params=list(VARIANTS), scope="module")
def variant(request):
    return request.param


def make_data(seed: int = 0, sizes=(35, 60, 25, 48), n_features: int = 12):
    """Small ComBat-model data set. The ids are shuffled (not sorted) and so are the column names."""
    rng = np.random.default_rng(seed)
    m, n, p = len(sizes), int(sum(sizes)), n_features
    site = np.repeat([f"site{chr(65 + i)}" for i in range(m)], sizes)  # siteA, siteB, ...
    rng.shuffle(site)
    codes = np.unique(site, return_inverse=True)[1]
    age = rng.uniform(20, 85, n)
    sex = rng.choice(["F", "M"], n)
    sigma = rng.uniform(0.1, 0.3, p)
    gamma = rng.normal(rng.normal(0, 0.5, m)[:, None], 0.4, (m, p))
    delta = np.exp(rng.normal(0, 0.3, m))[:, None] * np.exp(rng.normal(0, 0.15, (m, p)))
    Y = (rng.uniform(2, 4, p) + np.outer(age, rng.normal(-0.01, 0.003, p))
         + np.outer(sex == "M", rng.normal(0, 0.05, p))
         + sigma * (gamma[codes] + delta[codes] * rng.standard_normal((n, p))))
    ids = pd.Index([f"sub-{k:04d}" for k in rng.permutation(n)], name="subject_id")
    cols = [f"roi_{c}" for c in rng.permutation(p)]
    X = pd.DataFrame(Y, index=ids, columns=cols)
    cov = pd.DataFrame({"site": site, "age": age, "sex": sex}, index=ids)
    return X, cov


@pytest.fixture(scope="module")
def data():
    return make_data()


def combat(name: str, **extra) -> featharm.ComBat:
    return featharm.ComBat(batch="site", formula="age + sex", **{**VARIANTS[name], **extra})


def assert_same_fit(a: featharm.ComBat, b: featharm.ComBat) -> None:
    """All learned attributes identical, bit for bit (NaN equal to NaN)."""
    assert list(a.batches_) == list(b.batches_)
    for name in LEARNED:
        x, y = getattr(a, name), getattr(b, name)
        assert x.index.equals(y.index), name
        assert np.array_equal(x.to_numpy(dtype=float), y.to_numpy(dtype=float), equal_nan=True), name


# ------------------------------------------------------------------------------------ equivariance
def test_positive_affine_equivariance(variant, data):
    """harm(a*Y + b) == a*harm(Y) + b per feature, for a > 0: the standardized data z do not change."""
    X, cov = data
    rng = np.random.default_rng(1)
    a = rng.uniform(0.2, 5.0, X.shape[1])
    b = rng.uniform(-10.0, 10.0, X.shape[1])
    out = combat(variant).fit_transform(X, cov)
    out_affine = combat(variant).fit_transform(X * a + b, cov)
    np.testing.assert_allclose(out_affine.to_numpy(), out.to_numpy() * a + b, rtol=1e-10, atol=1e-12)


def test_row_permutation_equivariance(variant, data):
    X, cov = data
    perm = np.random.default_rng(2).permutation(len(X))
    out = combat(variant).fit_transform(X, cov)
    out_perm = combat(variant).fit_transform(X.iloc[perm], cov.iloc[perm])
    assert out_perm.index.equals(X.index[perm])
    np.testing.assert_allclose(out_perm.to_numpy(), out.to_numpy()[perm], rtol=0, atol=1e-12)


def test_covariates_aligned_by_index(variant, data):
    """Covariates in another row order than X give the same output, bit for bit (they are matched by id)."""
    X, cov = data
    out = combat(variant).fit_transform(X, cov)
    shuffled = cov.iloc[np.random.default_rng(3).permutation(len(cov))]
    out_shuffled = combat(variant).fit_transform(X, shuffled)
    assert out_shuffled.index.equals(X.index)
    assert np.array_equal(out_shuffled.to_numpy(), out.to_numpy())


@pytest.mark.parametrize("relabel", ["same_order", "reversed_order", "integers"])
def test_site_relabelling_invariance(variant, data, relabel):
    """Renaming the sites changes nothing, even when the new names sort in another order."""
    X, cov = data
    old = sorted(cov["site"].unique())
    if relabel == "same_order":
        new = [f"scanner_{k}" for k in range(len(old))]  # scanner_0 < scanner_1 < ...: same order
    elif relabel == "reversed_order":
        new = [f"{chr(90 - k)}_site" for k in range(len(old))]  # Z_site > Y_site > ...: reversed order
    else:
        new = [9, 10, 100, 2]  # numbers sort numerically: 2 < 9 < 10 < 100 (another order again)
    mapping = dict(zip(old, new))
    assert (sorted(new) == new) == (relabel == "same_order")

    model = combat(variant).fit(X, cov)
    out = model.transform(X, cov)
    cov2 = cov.assign(site=cov["site"].map(mapping))
    extra = {"ref_batch": mapping[REF_SITE]} if "ref_batch" in VARIANTS[variant] else {}
    model2 = combat(variant, **extra).fit(X, cov2)
    out2 = model2.transform(X, cov2)

    np.testing.assert_allclose(out2.to_numpy(), out.to_numpy(), rtol=0, atol=1e-12)
    assert list(model2.batches_) == sorted(new)
    for name in ("gamma_hat_", "delta_hat_", "gamma_star_", "delta_star_", "priors_"):
        before = getattr(model, name).rename(index=mapping)
        after = getattr(model2, name).loc[before.index]
        np.testing.assert_allclose(after.to_numpy(), before.to_numpy(), rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------ moments, reference
@pytest.mark.parametrize("name", ["eb_false", "ref_batch_eb_false"])
def test_eb_false_restandardized_moments(name, data):
    """eb=False: the output re-standardized with alpha_, beta_, sigma_ has mean 0 and variance 1 per site."""
    X, cov = data
    model = combat(name).fit(X, cov)
    out = model.transform(X, cov)
    Xc = model.design_.transform(cov)
    z = (out.to_numpy() - model.alpha_.to_numpy() - Xc @ model.beta_.to_numpy()) / model.sigma_.to_numpy()
    for site in model.batches_:
        rows = (cov["site"] == site).to_numpy()
        np.testing.assert_allclose(z[rows].mean(axis=0), 0.0, rtol=0, atol=1e-12)
        if site == model.ref_batch:
            # the reference rows are returned as they are: their z keeps the ddof=0 scale of sigma_
            n_ref = rows.sum()
            np.testing.assert_allclose(z[rows].var(axis=0, ddof=1), n_ref / (n_ref - 1), rtol=1e-12)
        else:
            np.testing.assert_allclose(z[rows].var(axis=0, ddof=1), 1.0, rtol=0, atol=1e-12)


def test_reference_rows_bit_identical(variant, data):
    X, cov = data
    if "ref_batch" not in VARIANTS[variant]:
        # without a reference site every site is adjusted, the reference-like site too
        out = combat(variant).fit_transform(X, cov)
        rows = (cov["site"] == REF_SITE).to_numpy()
        assert not np.array_equal(out.to_numpy()[rows], X.to_numpy()[rows])
        return
    model = combat(variant).fit(X, cov)
    rows = (cov["site"] == REF_SITE).to_numpy()
    for out in (model.transform(X, cov), model.fit_transform(X, cov),
                model.transform(X.iloc[::2], cov.iloc[::2])):
        r = (cov.loc[out.index, "site"] == REF_SITE).to_numpy()
        assert r.any()
        assert np.array_equal(out.to_numpy()[r], X.loc[out.index].to_numpy()[r])
    assert np.isnan(model.priors_.loc[REF_SITE].to_numpy()).all()
    assert (model.gamma_star_.loc[REF_SITE] == 0).all() and (model.delta_star_.loc[REF_SITE] == 1).all()
    assert rows.sum() == 60


# ------------------------------------------------------------------------------------ frozen model
def test_transform_train_equals_fit_transform(variant, data):
    X, cov = data
    fitted = combat(variant).fit_transform(X, cov)
    model = combat(variant).fit(X, cov)
    assert np.array_equal(model.transform(X, cov).to_numpy(), fitted.to_numpy())
    # and fit_transform on an already fitted instance gives the same again
    assert np.array_equal(model.fit_transform(X, cov).to_numpy(), fitted.to_numpy())


def test_transform_subset_equals_subset_of_transform(variant, data):
    X, cov = data
    model = combat(variant).fit(X, cov)
    full = model.transform(X, cov)
    rng = np.random.default_rng(4)
    subset = rng.choice(len(X), size=40, replace=False)  # random rows, in random order
    part = model.transform(X.iloc[subset], cov.iloc[subset])
    assert part.index.equals(X.index[subset])
    np.testing.assert_allclose(part.to_numpy(), full.to_numpy()[subset], rtol=0, atol=1e-12)
    # one site only, and one single row
    one_site = (cov["site"] == "siteC").to_numpy()
    np.testing.assert_allclose(model.transform(X[one_site], cov[one_site]).to_numpy(),
                               full.to_numpy()[one_site], rtol=0, atol=1e-12)
    np.testing.assert_allclose(model.transform(X.iloc[[7]], cov.iloc[[7]]).to_numpy(),
                               full.to_numpy()[[7]], rtol=0, atol=1e-12)


def test_single_site_rejected(variant, data):
    X, cov = data
    one = (cov["site"] == REF_SITE).to_numpy()
    with pytest.raises(BatchError, match="at least 2 batches"):
        combat(variant).fit(X[one], cov[one])
    # the same when every row is relabelled to one site
    with pytest.raises(BatchError):
        combat(variant).fit_transform(X, cov.assign(site=REF_SITE))


def test_fit_is_idempotent(variant, data):
    X, cov = data
    model = combat(variant)
    out1 = model.fit_transform(X, cov)
    snapshot = clone(model).fit(X, cov)  # an independent instance, same data
    out2 = model.fit(X, cov).transform(X, cov)
    assert np.array_equal(out1.to_numpy(), out2.to_numpy())
    assert_same_fit(model, snapshot)
    # refitting on other data and back again leaves no trace of the other fit
    model.fit(X.iloc[:100], cov.iloc[:100])
    model.fit(X, cov)
    assert_same_fit(model, snapshot)
    assert np.array_equal(model.transform(X, cov).to_numpy(), out1.to_numpy())


def test_clone(variant, data):
    X, cov = data
    model = combat(variant).fit(X, cov)
    copy = clone(model)
    assert copy is not model
    assert copy.get_params() == model.get_params() == combat(variant).get_params()
    assert not hasattr(copy, "batches_") and not hasattr(copy, "gamma_star_")
    with pytest.raises(NotFittedError):
        copy.transform(X, cov)
    assert np.array_equal(copy.fit_transform(X, cov).to_numpy(), model.transform(X, cov).to_numpy())


# ------------------------------------------------------------------------------------ data handling
def test_inputs_not_modified(variant, data):
    X, cov = data
    X0, cov0 = X.copy(deep=True), cov.copy(deep=True)
    model = combat(variant)
    out = model.fit_transform(X, cov)
    model.transform(X.iloc[::3], cov.iloc[::3])
    pd.testing.assert_frame_equal(X, X0, check_exact=True)
    pd.testing.assert_frame_equal(cov, cov0, check_exact=True)
    # the output is a new table: writing to it leaves the input alone
    assert not np.shares_memory(out.to_numpy(), X.to_numpy())
    out.iloc[:, :] = 0.0
    pd.testing.assert_frame_equal(X, X0, check_exact=True)


def test_index_and_column_order_preserved(variant, data):
    X, cov = data
    assert not X.index.is_monotonic_increasing and list(X.columns) != sorted(X.columns)
    model = combat(variant)
    out = model.fit_transform(X, cov)
    assert out.index.equals(X.index) and out.index.name == X.index.name
    assert list(out.columns) == list(X.columns)
    for name in ("gamma_star_", "delta_star_", "gamma_hat_", "delta_hat_"):
        assert list(getattr(model, name).columns) == list(X.columns)
    # new data with the feature columns in another order: output keeps that order, same numbers
    cols = list(X.columns[::-1])
    out_rev = model.transform(X[cols], cov)
    assert list(out_rev.columns) == cols
    np.testing.assert_allclose(out_rev.to_numpy(), out[cols].to_numpy(), rtol=0, atol=1e-12)
