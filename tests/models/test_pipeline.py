"""Harmonizers inside scikit-learn: ``Pipeline``, ``cross_val_score``/``cross_validate``, ``GridSearchCV``.

Two ways of giving each fold's rows their covariates, for every family:

* metadata routing: ``set_fit_request(covariates=True).set_transform_request(covariates=True)`` under
  ``sklearn.config_context(enable_metadata_routing=True)``, the covariate table passed as a parameter of the
  cross-validation, which cuts it to each fold's rows;
* a covariate table given to the constructor (``ComBat(covariates=table)``), in which the rows of ``X`` are
  looked up by index.

Both must give exactly (to the bit) what the hand-written loop gives on the same folds: the harmonizer fitted
on the training rows, the training and test rows transformed by it, the downstream model fitted on the
former and scored on the latter. Also: the categorical encoding is frozen at fit whatever rows a fold holds;
the constructor table's errors, ``clone`` and saving; and the inflated score a prediction target gets when
it is put among the covariates.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pandas as pd
import pytest
import sklearn
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import (GridSearchCV, GroupKFold, StratifiedKFold, cross_val_score,
                                     cross_validate)
from sklearn.pipeline import make_pipeline

import featharm as fh
from featharm.datasets import make_longitudinal, make_multisite
from featharm.exceptions import CovariateLookupError

# Each family with parameters that fit its data: one scan per subject for the cross-sectional families,
# repeated scans for LongComBat (whose folds keep each subject's scans together).
FAMILIES = {
    "ComBat": (fh.ComBat, dict(formula="age + sex + dx")),
    "ComBatGAM": (fh.ComBatGAM, dict(formula="sex + dx", smooth=["age"], df=5, smooth_bounds={"age": (0, 100)})),
    "CovBat": (fh.CovBat, dict(formula="age + sex + dx")),
    "ComBatLS": (fh.ComBatLS, dict(formula="age + sex + dx", scale_formula="age")),
    "LongComBat": (fh.LongComBat, dict(subject="subject", time="time", formula="age + sex + time")),
    "NestedComBat": (fh.NestedComBat, dict(batches=["site", "scanner"], formula="age + sex + dx")),
}
families = pytest.mark.parametrize("name", list(FAMILIES))


def make(name, **kw):
    cls, params = FAMILIES[name]
    return cls(**{**params, **kw})


@pytest.fixture(scope="module")
def cross_sectional():
    sim = make_multisite(n_subjects=240, n_sites=3, n_features=6, random_state=3)
    rng = np.random.default_rng(3)
    cov = sim.covariates.copy()
    cov["dx"] = rng.choice(["CN", "MCI", "AD"], len(cov))  # a covariate to preserve (not the target)
    y_reg = rng.normal(size=len(cov))  # targets for the downstream models
    y_clf = rng.integers(0, 2, len(cov))
    cov["scanner"] = np.random.default_rng(4).choice(["A", "B"], len(cov))  # a second batch (NestedComBat)
    return sim.X, cov, y_reg, y_clf


@pytest.fixture(scope="module")
def longitudinal():
    sim = make_longitudinal(n_subjects=80, n_sites=3, n_features=6, random_state=0)
    rng = np.random.default_rng(0)
    n = len(sim.X)
    return sim.X, sim.covariates, rng.normal(size=n), rng.integers(0, 2, n)


def data_and_folds(name, cross_sectional, longitudinal, k=4):
    """The family's data and the folds: StratifiedKFold on site, or GroupKFold on subject (LongComBat)."""
    if name == "LongComBat":
        X, cov, y_reg, y_clf = longitudinal
        folds = list(GroupKFold(k).split(X, groups=cov["subject"]))
    else:
        X, cov, y_reg, y_clf = cross_sectional
        folds = list(StratifiedKFold(k, shuffle=True, random_state=0).split(X, cov["site"]))
    return X, cov, y_reg, y_clf, folds


def loop(model, downstream, X, cov, y, folds):
    """The hand-written loop (README): scores and the downstream models' coefficients of every fold."""
    scores, coefs = [], []
    for train, test in folds:
        hm = clone(model).fit(X.iloc[train], cov.iloc[train])
        X_train = hm.transform(X.iloc[train], cov.iloc[train])
        X_test = hm.transform(X.iloc[test], cov.iloc[test])
        est = clone(downstream).fit(X_train, y[train])
        scores.append(est.score(X_test, y[test]))
        coefs.append(est.coef_)
    return np.array(scores), coefs


def routed(model):
    return model.set_fit_request(covariates=True).set_transform_request(covariates=True)


# ------------------------------------------------------------------------------------------ cross-validation
@families
def test_routing_in_cross_validate_equals_the_loop(name, cross_sectional, longitudinal):
    X, cov, y, _, folds = data_and_folds(name, cross_sectional, longitudinal)
    expected, coefs = loop(make(name), Ridge(), X, cov, y, folds)
    with sklearn.config_context(enable_metadata_routing=True):
        pipe = make_pipeline(routed(make(name)), Ridge())
        res = cross_validate(pipe, X, y, cv=folds, params={"covariates": cov}, return_estimator=True)
        scores = cross_val_score(pipe, X, y, cv=folds, params={"covariates": cov})
    np.testing.assert_array_equal(res["test_score"], expected)
    np.testing.assert_array_equal(scores, expected)
    for fitted, coef in zip(res["estimator"], coefs):
        np.testing.assert_array_equal(fitted[-1].coef_, coef)


@families
def test_constructor_table_in_cross_validate_equals_the_loop(name, cross_sectional, longitudinal):
    X, cov, y, _, folds = data_and_folds(name, cross_sectional, longitudinal)
    expected, coefs = loop(make(name), Ridge(), X, cov, y, folds)
    pipe = make_pipeline(make(name, covariates=cov), Ridge())
    res = cross_validate(pipe, X, y, cv=folds, return_estimator=True)
    np.testing.assert_array_equal(res["test_score"], expected)
    np.testing.assert_array_equal(cross_val_score(pipe, X, y, cv=folds), expected)
    for fitted, coef in zip(res["estimator"], coefs):
        np.testing.assert_array_equal(fitted[-1].coef_, coef)


@families
@pytest.mark.parametrize("route", ["routing", "constructor"])
def test_grid_search_over_a_harmonizer_parameter_equals_the_loop(name, route, cross_sectional, longitudinal):
    X, cov, _, y, folds = data_and_folds(name, cross_sectional, longitudinal, k=3)
    clf = LogisticRegression()
    grid = {"eb": [True, False]}
    expected = {eb: loop(make(name, eb=eb), clf, X, cov, y, folds)[0] for eb in grid["eb"]}
    step = type(make(name)).__name__.lower()
    if route == "routing":
        with sklearn.config_context(enable_metadata_routing=True):
            search = GridSearchCV(make_pipeline(routed(make(name)), clf), {f"{step}__eb": grid["eb"]}, cv=folds)
            search.fit(X, y, covariates=cov)
    else:
        search = GridSearchCV(make_pipeline(make(name, covariates=cov), clf), {f"{step}__eb": grid["eb"]}, cv=folds)
        search.fit(X, y)
    res = search.cv_results_
    for i, params in enumerate(res["params"]):
        got = [res[f"split{k}_test_score"][i] for k in range(len(folds))]
        np.testing.assert_array_equal(got, expected[params[f"{step}__eb"]])
    # refitted on every row: the harmonizer equals one fitted directly
    direct = make(name, eb=search.best_params_[f"{step}__eb"]).fit(X, cov)
    best = search.best_estimator_[0]
    for a, b in zip(getattr(best, "steps_", [best]), getattr(direct, "steps_", [direct]), strict=True):  # Nested: its steps
        pd.testing.assert_frame_equal(a.gamma_star_, b.gamma_star_, check_exact=True)


def test_routing_needs_the_requests_and_the_setting(cross_sectional):
    X, cov, y, _ = cross_sectional
    pipe = make_pipeline(fh.ComBat(formula="age + sex"), Ridge())
    with sklearn.config_context(enable_metadata_routing=True):
        with pytest.raises(Exception, match="covariates"):  # scikit-learn: passed but not requested
            cross_val_score(pipe, X, y, cv=3, params={"covariates": cov})
    # without covariates at all, the message says how to give them
    with pytest.raises(ValueError, match=r"ComBat.fit_transform got a ndarray where the covariates go .* the "
                                         r"target y: give the model the whole covariate table \(covariates=table"):
        cross_val_score(pipe, X, y, cv=3, error_score="raise")


def test_routed_transform_of_a_fitted_pipeline(cross_sectional):
    X, cov, y, _ = cross_sectional
    with sklearn.config_context(enable_metadata_routing=True):
        pipe = make_pipeline(routed(fh.ComBat(formula="age + sex")), Ridge()).fit(X, y, covariates=cov)
        pred = pipe.predict(X.iloc[:50], covariates=cov.iloc[:50])
    hm = fh.ComBat(formula="age + sex").fit(X, cov)
    np.testing.assert_array_equal(pred, pipe[-1].predict(hm.transform(X.iloc[:50], cov.iloc[:50])))


# ------------------------------------------------------------------------------------------ frozen encoding
def _one_level_folds(cov, name):
    """Row subsets holding one sex, one site, and (cross-sectional data) one diagnosis."""
    subsets = {"males only": cov["sex"] == "M", "females only": cov["sex"] == "F",
               "one site": cov["site"] == sorted(cov["site"].unique())[1]}
    if name != "LongComBat":
        subsets["AD only"] = cov["dx"] == "AD"
    return subsets


@families
def test_a_fold_with_one_level_is_encoded_as_at_fit(name, cross_sectional, longitudinal):
    """A fold holding one sex (one site, one diagnosis) is harmonized with the fit-time encoding: its rows
    come out exactly as when the whole table is transformed, by every route; an all-male fold is not
    harmonized as female (which rebuilding the dummies from the fold's own rows would do)."""
    X, cov, *_ = data_and_folds(name, cross_sectional, longitudinal)
    hm = make(name).fit(X, cov)
    whole = hm.transform(X, cov)
    by_table = make(name, covariates=cov).fit(X)
    pd.testing.assert_frame_equal(by_table.transform(X), whole, check_exact=True)
    with sklearn.config_context(enable_metadata_routing=True):
        pipe = make_pipeline(routed(make(name))).fit(X, covariates=cov)
        for label, rows in _one_level_folds(cov, name).items():
            Xf, cf = X[rows.to_numpy()], cov[rows.to_numpy()]
            explicit = hm.transform(Xf, cf)
            pd.testing.assert_frame_equal(explicit, whole[rows.to_numpy()], check_exact=True, obj=label)
            pd.testing.assert_frame_equal(pipe.transform(Xf, covariates=cf), explicit, check_exact=True, obj=label)
            pd.testing.assert_frame_equal(by_table.transform(Xf), explicit, check_exact=True, obj=label)
    males = (cov["sex"] == "M").to_numpy()
    as_female = hm.transform(X[males], cov[males].assign(sex="F"))
    assert not np.allclose(as_female.to_numpy(), whole[males].to_numpy())


# ------------------------------------------------------------------------------------------ the constructor table
def test_table_rows_missing_from_it_are_named(cross_sectional):
    X, cov, *_ = cross_sectional
    hm = fh.ComBat(formula="age + sex", covariates=cov.drop(index=["sub-00007", "sub-00011"]))
    with pytest.raises(CovariateLookupError, match=r"2 row\(s\) of X are not in the covariate table given to "
                                                   r"ComBat\(covariates=...\): rows 'sub-00007', 'sub-00011'"):
        hm.fit(X)
    assert isinstance(CovariateLookupError("x"), ValueError)
    hm.set_params(covariates=cov).fit(X)
    new = X.iloc[:3].rename(index={"sub-00001": "sub-new"})
    with pytest.raises(CovariateLookupError, match="'sub-new'"):
        hm.transform(new)


def test_table_refuses_arrays_and_says_how_to_fix(cross_sectional):
    X, cov, *_ = cross_sectional
    hm = fh.ComBat(formula="age + sex", covariates=cov)
    with pytest.raises(CovariateLookupError, match=r"X is a ndarray, which has no row ids\. Pass X as a pandas "
                                                   r"DataFrame indexed by the ids"):
        hm.fit(X.to_numpy())  # even with exactly the table's rows: order is not a match
    hm.fit(X)
    with pytest.raises(CovariateLookupError, match="ndarray"):
        hm.transform(X.to_numpy())


def test_table_with_repeated_ids_is_refused(cross_sectional):
    X, cov, *_ = cross_sectional
    twice = pd.concat([cov, cov.iloc[:2]])
    with pytest.raises(CovariateLookupError, match="repeated row ids: rows 'sub-00000', 'sub-00001'"):
        fh.ComBat(formula="age + sex", covariates=twice).fit(X)


def test_table_that_is_not_a_dataframe_is_refused(cross_sectional):
    X, cov, *_ = cross_sectional
    with pytest.raises(ValueError, match="The 'covariates' parameter of ComBat must be None or a pandas DataFrame"):
        fh.ComBat(formula="age + sex", covariates=cov.to_numpy()).fit(X)


def test_explicit_covariates_are_used_instead_of_the_table(cross_sectional):
    X, cov, *_ = cross_sectional
    wrong = cov.assign(age=cov["age"] + 10.0)
    hm = fh.ComBat(formula="age + sex", covariates=wrong)
    ref = fh.ComBat(formula="age + sex").fit(X, cov)
    hm.fit(X, cov)  # positional
    pd.testing.assert_frame_equal(hm.beta_, ref.beta_, check_exact=True)
    hm.fit(X, covariates=cov)  # keyword (what a router passes)
    pd.testing.assert_frame_equal(hm.beta_, ref.beta_, check_exact=True)
    pd.testing.assert_frame_equal(hm.transform(X, cov), ref.transform(X, cov), check_exact=True)
    assert not np.array_equal(hm.transform(X).to_numpy(), ref.transform(X, cov).to_numpy())  # the table's ages


def test_a_pipelines_positional_target_is_ignored(cross_sectional):
    """A Pipeline calls ``fit_transform(X, y, **routed)``: ``y`` lands in the covariates' position."""
    X, cov, y, _ = cross_sectional
    ref = fh.ComBat(formula="age + sex").fit_transform(X, cov)
    out = fh.ComBat(formula="age + sex").fit_transform(X, y, covariates=cov)
    pd.testing.assert_frame_equal(out, ref, check_exact=True)
    out = fh.ComBat(formula="age + sex", covariates=cov).fit_transform(X, pd.Series(y, index=X.index))
    pd.testing.assert_frame_equal(out, ref, check_exact=True)


def test_clone_and_params_keep_the_table(cross_sectional):
    X, cov, *_ = cross_sectional
    hm = fh.ComBat(formula="age + sex", covariates=cov, n_jobs=1)
    assert hm.get_params()["covariates"] is cov
    c = clone(hm)
    pd.testing.assert_frame_equal(c.covariates, cov, check_exact=True)
    assert c.n_jobs == 1
    pd.testing.assert_frame_equal(c.fit(X).transform(X), fh.ComBat(formula="age + sex").fit(X, cov).transform(X, cov),
                                  check_exact=True)
    assert "covariates=" in repr(hm)


def test_saving_does_not_store_the_table_nor_n_jobs(cross_sectional, tmp_path):
    X, cov, *_ = cross_sectional
    hm = fh.ComBat(formula="age + sex", covariates=cov, n_jobs=1).fit(X)
    path = tmp_path / "m.fhm"
    hm.save(path)
    with zipfile.ZipFile(path) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        names = zf.namelist()
    assert "covariates" not in manifest["params"] and "n_jobs" not in manifest["params"]
    assert not any("sub-00" in json.dumps(manifest["params"]) for _ in [0])
    assert sorted(names) == sorted(n for n in names if n == "manifest.json" or n.endswith(".npy"))
    loaded = fh.load_model(path)
    assert loaded.covariates is None and loaded.n_jobs is None
    pd.testing.assert_frame_equal(loaded.transform(X, cov), hm.transform(X), check_exact=True)
    # the same fit without the table writes the same bytes
    other = tmp_path / "m2.fhm"
    fh.ComBat(formula="age + sex").fit(X, cov).save(other)
    assert path.read_bytes() == other.read_bytes()


# ------------------------------------------------------------------------------------------ leakage
def _null_data(seed=0, n=300, p=200, scales=(1.0, 2.0, 3.0)):
    """Features with site effects (site s0 the least noisy) and an age effect, but nothing about ``dx``."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, len(scales), n)
    age = rng.uniform(20, 80, n)
    dx = rng.integers(0, 2, n)
    shift = rng.normal(0, 1, (len(scales), p))
    scale = np.array(scales)[:, None] * np.exp(rng.normal(0, 0.1, (len(scales), p)))
    Y = 0.02 * age[:, None] + shift[codes] + scale[codes] * rng.normal(size=(n, p))
    ids = pd.Index([f"sub{i:04d}" for i in range(n)], name="subject")
    cov = pd.DataFrame({"site": [f"s{k}" for k in codes], "age": age, "dx": np.where(dx == 1, "AD", "CN")},
                       index=ids)
    return pd.DataFrame(Y, index=ids, columns=[f"f{j}" for j in range(p)]), cov, dx


def test_the_target_among_the_covariates_inflates_the_score():
    """The features say nothing about dx: the cross-validated accuracy is at chance when dx is not a
    covariate, and far above it when it is. Each test row is harmonized with its own label: its features
    get the label's effect fitted on the training folds, scaled by 1 - 1/delta* of its site (here the sites
    are noisier than the reference site s0, so delta* > 1), and the classifier has learnt that effect."""
    X, cov, dx = _null_data()
    folds = list(StratifiedKFold(5, shuffle=True, random_state=0).split(X, cov["site"]))
    clf = LogisticRegression(C=0.1, max_iter=1000)
    clean = cross_val_score(make_pipeline(fh.ComBat(formula="age", ref_batch="s0", covariates=cov), clf),
                            X, dx, cv=folds)
    leaky = cross_val_score(make_pipeline(fh.ComBat(formula="age + dx", ref_batch="s0", covariates=cov), clf),
                            X, dx, cv=folds)
    assert abs(clean.mean() - 0.5) < 0.07, clean
    assert leaky.mean() > 0.68, leaky
    assert leaky.mean() - clean.mean() > 0.15


# ------------------------------------------------------------------------------------------ the README
def test_the_readme_examples_run(cross_sectional):
    """The code of README.md's "Pipelines and cross-validation" section runs, and its routes agree."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = text.split("### Pipelines and cross-validation\n", 1)[1].split("\n### ", 1)[0]
    blocks = section.split("```python\n")[1:]
    assert len(blocks) == 2
    X, cov, _, y = cross_sectional
    scope = {"fh": fh, "X": X, "data": cov[["site", "age", "sex"]], "y": y}
    first = blocks[0].split("```", 1)[0]
    routed_part = first.index("# (b)")
    exec(first[:routed_part], scope)
    by_table = scope["scores"]
    exec(first[routed_part:], scope)
    np.testing.assert_array_equal(scope["scores"], by_table)
    exec(blocks[1].split("```", 1)[0], scope)
