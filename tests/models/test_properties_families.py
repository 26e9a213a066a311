"""The model-free properties of tests/test_properties.py (methods.md §1.7) for CovBat and ComBatLS.

CovBat's PCA and ComBatLS's iterative location–scale fit are computed from all rows together, so a
reordering of rows or a renaming of sites changes them only by rounding (tolerance 1e-9), not bit for bit
as ComBat; transform on the training rows still reproduces fit_transform exactly.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

import featharm
from featharm.exceptions import NotFittedError

from test_properties import make_data

MODELS = {
    "covbat": lambda **kw: featharm.CovBat(batch="site", formula="age + sex", **kw),
    "covbat_k4_score_eb": lambda **kw: featharm.CovBat(batch="site", formula="age + sex", n_components=4,
                                                       score_eb=True, **kw),
    "covbat_nonparametric": lambda **kw: featharm.CovBat(batch="site", formula="age + sex", parametric=False,
                                                         score_eb=True, score_parametric=False, **kw),
    "combatls": lambda **kw: featharm.ComBatLS(batch="site", formula="age + sex", scale_formula="age + sex",
                                               **kw),
    "combatls_ref": lambda **kw: featharm.ComBatLS(batch="site", formula="age + sex", scale_formula="age",
                                                   ref_batch="siteB", **kw),
}
ATOL = 1e-9


@pytest.fixture(params=list(MODELS), scope="module")
def name(request):
    return request.param


@pytest.fixture(scope="module")
def data():
    return make_data()


def test_transform_train_equals_fit_transform(name, data):
    X, cov = data
    fitted = MODELS[name]().fit_transform(X, cov)
    model = MODELS[name]().fit(X, cov)
    assert np.array_equal(model.transform(X, cov).to_numpy(), fitted.to_numpy())
    assert np.array_equal(model.fit_transform(X, cov).to_numpy(), fitted.to_numpy())


def test_row_permutation_equivariance(name, data):
    X, cov = data
    perm = np.random.default_rng(2).permutation(len(X))
    out = MODELS[name]().fit_transform(X, cov)
    out_perm = MODELS[name]().fit_transform(X.iloc[perm], cov.iloc[perm])
    assert out_perm.index.equals(X.index[perm])
    np.testing.assert_allclose(out_perm.to_numpy(), out.to_numpy()[perm], rtol=0, atol=ATOL)


@pytest.mark.parametrize("relabel", ["reversed_order", "integers"])
def test_site_relabelling_invariance(name, data, relabel):
    X, cov = data
    old = sorted(cov["site"].unique())
    new = [f"{chr(90 - k)}_site" for k in range(len(old))] if relabel == "reversed_order" else [9, 10, 100, 2]
    mapping = dict(zip(old, new))
    extra = {"ref_batch": mapping["siteB"]} if name == "combatls_ref" else {}
    model = MODELS[name]().fit(X, cov)
    cov2 = cov.assign(site=cov["site"].map(mapping))
    model2 = MODELS[name]().set_params(**extra)  # the reference site under its new name
    out2 = model2.fit(X, cov2).transform(X, cov2)
    np.testing.assert_allclose(out2.to_numpy(), model.transform(X, cov).to_numpy(), rtol=0, atol=ATOL)
    before = model.gamma_star_.rename(index=mapping)
    np.testing.assert_allclose(model2.gamma_star_.loc[before.index].to_numpy(), before.to_numpy(), atol=ATOL)


def test_positive_affine_equivariance(name, data):
    X, cov = data
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.2, 5.0, X.shape[1]), rng.uniform(-10.0, 10.0, X.shape[1])
    out = MODELS[name]().fit_transform(X, cov)
    out_affine = MODELS[name]().fit_transform(X * a + b, cov)
    np.testing.assert_allclose(out_affine.to_numpy(), out.to_numpy() * a + b, rtol=1e-8, atol=1e-8)


def test_transform_subset_equals_subset_of_transform(name, data):
    X, cov = data
    model = MODELS[name]().fit(X, cov)
    full = model.transform(X, cov)
    subset = np.random.default_rng(4).choice(len(X), size=40, replace=False)
    part = model.transform(X.iloc[subset], cov.iloc[subset])
    assert part.index.equals(X.index[subset]) and list(part.columns) == list(X.columns)
    np.testing.assert_allclose(part.to_numpy(), full.to_numpy()[subset], rtol=0, atol=1e-12)
    np.testing.assert_allclose(model.transform(X.iloc[[7]], cov.iloc[[7]]).to_numpy(), full.to_numpy()[[7]],
                               rtol=0, atol=1e-12)


def test_clone_idempotence_and_inputs_untouched(name, data):
    X, cov = data
    X0, cov0 = X.copy(deep=True), cov.copy(deep=True)
    model = MODELS[name]()
    out1 = model.fit_transform(X, cov)
    copy = clone(model)
    assert not hasattr(copy, "gamma_star_")
    with pytest.raises(NotFittedError):
        copy.transform(X, cov)
    model.fit(X.iloc[:100], cov.iloc[:100])
    model.fit(X, cov)
    assert np.array_equal(model.transform(X, cov).to_numpy(), out1.to_numpy())
    assert np.array_equal(copy.fit_transform(X, cov).to_numpy(), out1.to_numpy())
    pd.testing.assert_frame_equal(X, X0, check_exact=True)
    pd.testing.assert_frame_equal(cov, cov0, check_exact=True)
    # column order of new data is respected
    cols = list(X.columns[::-1])
    np.testing.assert_allclose(model.transform(X[cols], cov).to_numpy(), out1[cols].to_numpy(), rtol=0, atol=1e-12)


def test_save_load_exact(name, data, tmp_path):
    X, cov = data
    model = MODELS[name]().fit(X, cov)
    model.save(tmp_path / "m.fhm")
    loaded = featharm.load_model(tmp_path / "m.fhm")
    assert type(loaded) is type(model) and loaded.get_params() == model.get_params()
    assert np.array_equal(loaded.transform(X, cov).to_numpy(), model.transform(X, cov).to_numpy())
