"""NestedComBat (Nested / OPNested ComBat, ``docs/methods.md`` §5.3–5.4).

* Known truth: simulated crossed and nested scanner variables (vendor, field strength, software, coil,
  site) with additive location and multiplicative scale effects on top of batch-free features (the truth).
  After harmonization, a test of every batch variable on the covariate residuals finds differences at the
  null rate, and the RMSE to the truth is below that of ComBat on one combined label and of ComBat on the
  first variable only.
* Order search: a plain loop reimplementing OPNested's selection (every ``itertools.permutations`` order,
  sequential ComBat, ``scipy.stats.anderson_ksamp`` per feature and batch variable, count of p < 0.05,
  first minimum) gives the same counts and order as NestedComBat's vectorized search.
"""

from __future__ import annotations

import itertools
import json
import warnings
import zipfile

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import featharm as fh
from featharm.exceptions import (
    ColumnNotFoundError,
    InputError,
    ModelFileError,
    SmallBatchWarning,
    UnseenBatchError,
)

FORMULA = "age + sex"


def simulate(kind="crossed", n=400, p=60, seed=0, effect=1.0, older=0.0):
    """Features with batch effects of every scanner variable, and the same features without them (truth).

    ``crossed``: vendor (3) × field (2) × software (3) × coil (2), drawn independently (36 combined cells).
    ``nested``: 16 sites nested in 3 vendors; field strength crossed with site, its share varying between
    sites (20-80 % 3T). Each variable's level shifts a feature by ``effect`` × N(0, 1) noise SDs and scales its
    noise by U(0.75, 1.33); age and sex effects are kept. ``older``: the GE subjects are that many years older.
    """
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 80, n)
    sex = rng.choice(["F", "M"], n)
    if kind == "crossed":
        levels = {"vendor": ["GE", "Philips", "Siemens"], "field": ["1.5T", "3T"],
                  "software": ["v1", "v2", "v3"], "coil": ["8ch", "32ch"]}
        cov = pd.DataFrame({v: rng.choice(lv, n) for v, lv in levels.items()})
    else:
        site_vendor = {f"S{i:02d}": ["GE", "Philips", "Siemens"][i % 3] for i in range(16)}
        site = rng.choice(sorted(site_vendor), n)
        share = dict(zip(sorted(site_vendor), rng.uniform(0.2, 0.8, 16)))
        field = np.where(rng.random(n) < np.array([share[s] for s in site]), "3T", "1.5T")
        cov = pd.DataFrame({"vendor": [site_vendor[s] for s in site], "site": site, "field": field})
    variables = list(cov.columns)
    age = age + older * (cov["vendor"] == "GE").to_numpy()
    cov["age"], cov["sex"] = age, sex
    cov.index = [f"sub{i:04d}" for i in range(n)]
    alpha = rng.normal(3, 0.5, p)
    b_age, b_sex = rng.normal(-0.01, 0.005, p), rng.normal(0.1, 0.05, p)
    sigma = rng.uniform(0.1, 0.3, p)
    eps = rng.normal(size=(n, p))
    mean = alpha + np.outer(age, b_age) + np.outer(sex == "M", b_sex)
    shift, scale = np.zeros((n, p)), np.ones((n, p))
    for v in variables:
        lv = sorted(cov[v].unique())
        code = cov[v].map({x: i for i, x in enumerate(lv)}).to_numpy()
        shift += (effect * rng.normal(0, 1.0, (len(lv), p)) * sigma)[code]
        scale *= rng.uniform(0.75, 1.33, (len(lv), p))[code]
    cols = [f"f{j:02d}" for j in range(p)]
    X = pd.DataFrame(mean + shift + scale * sigma * eps, index=cov.index, columns=cols)
    truth = pd.DataFrame(mean + sigma * eps, index=cov.index, columns=cols)
    return X, cov, truth, variables


def site_test_rate(A: pd.DataFrame, cov: pd.DataFrame, variable: str) -> float:
    """Share of features whose covariate residuals differ in mean across the levels (one-way ANOVA p < 0.05)."""
    D = np.column_stack([np.ones(len(cov)), cov["age"], cov["sex"] == "M"]).astype(float)
    Y = A.to_numpy()
    R = Y - D @ np.linalg.lstsq(D, Y, rcond=None)[0]
    lv = cov[variable].to_numpy()
    groups = [lv == x for x in np.unique(lv)]
    return float(np.mean([stats.f_oneway(*[R[g, j] for g in groups]).pvalue < 0.05 for j in range(R.shape[1])]))


def rmse(A, truth) -> float:
    return float(np.sqrt(((A.to_numpy() - truth.to_numpy()) ** 2).mean()))


def combined_label(X, cov, variables):
    comb = cov.assign(combined=cov[variables].astype(str).agg("|".join, axis=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallBatchWarning)  # the point: cells of 1-10 subjects
        return fh.ComBat(batch="combined", formula=FORMULA).fit_transform(X, comb)


# Under the null, the number of features (of 60) with p < 0.05 exceeds 9 with probability < 0.002
# (binomial(60, 0.05)); the bound for "at the null rate".
NULL_BOUND = stats.binom.ppf(0.998, 60, 0.05) / 60


# ------------------------------------------------------------------------------------------ known truth
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crossed_batch_effects_removed_and_closer_to_truth(seed):
    X, cov, truth, variables = simulate("crossed", seed=seed)
    hm = fh.NestedComBat(batches=variables, formula=FORMULA, sweeps=3)
    Xn = hm.fit_transform(X, cov)
    first = fh.ComBat(batch=variables[0], formula=FORMULA).fit_transform(X, cov)
    for v in variables:
        assert site_test_rate(X, cov, v) > 0.6, v  # the test sees the planted effects
        assert site_test_rate(Xn, cov, v) <= NULL_BOUND, v
    # harmonizing the first variable only leaves the others
    assert min(site_test_rate(first, cov, v) for v in variables[1:]) > 0.6
    e_nested, e_comb, e_first = rmse(Xn, truth), rmse(combined_label(X, cov, variables), truth), rmse(first, truth)
    assert e_nested < e_comb < e_first < rmse(X, truth)
    # Horng's single pass already beats both alternatives
    one = fh.NestedComBat(batches=variables, formula=FORMULA).fit_transform(X, cov)
    assert rmse(one, truth) < e_comb
    assert e_nested < rmse(one, truth)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nested_sites_and_uneven_field_strength(seed):
    """Sites nested in vendors, field strength crossed unevenly with sites: one pass leaves part of the
    earlier variable's effect (the later step re-introduces it); further sweeps remove it."""
    X, cov, truth, variables = simulate("nested", seed=seed)
    one = fh.NestedComBat(batches=variables, formula=FORMULA).fit(X, cov)
    X1 = one.transform(X, cov)
    hm = fh.NestedComBat(batches=variables, formula=FORMULA, sweeps=3)
    Xn = hm.fit_transform(X, cov)
    assert hm.order_ == one.order_ and len(hm.steps_) == 9
    rates_one = [site_test_rate(X1, cov, v) for v in variables]
    rates = [site_test_rate(Xn, cov, v) for v in variables]
    assert max(rates) <= NULL_BOUND, rates
    assert max(rates_one) > max(rates)
    first = fh.ComBat(batch=variables[0], formula=FORMULA).fit_transform(X, cov)
    assert site_test_rate(first, cov, "site") > 0.6 and site_test_rate(first, cov, "field") > 0.6
    e_nested = rmse(Xn, truth)
    assert e_nested < rmse(X1, truth) < rmse(first, truth)
    comb = cov[variables].astype(str).agg("|".join, axis=1)
    if comb.value_counts().min() >= 2:  # ComBat on the combined label needs 2 subjects per cell
        assert e_nested < rmse(combined_label(X, cov, variables), truth)


# ------------------------------------------------------------------------------------------ the order search
def opnested_loop(X, cov, variables, formula, residuals=False):
    """OPNested's selection as published, written as a plain loop: for every order of the variables
    (itertools.permutations), ComBat sequentially with each variable as the batch, then for every batch
    variable and every feature scipy's anderson_ksamp across the variable's levels; count p < 0.05; the first
    order with the smallest count wins. With ``residuals``, the tests run on the output less the last step's
    covariate effects (NestedComBat's criterion="ad_residuals"). Also returns every p-value."""
    counts, pvalues = {}, []
    for order in itertools.permutations(variables):
        out = X
        for v in order:
            last = fh.ComBat(batch=v, formula=formula)
            out = last.fit_transform(out, cov)
        Y = out.copy()
        if residuals:
            Y = Y - last.design_.transform(cov.loc[Y.index]) @ last.beta_.to_numpy()
        row = []
        for v in variables:
            c = 0
            for col in Y.columns:
                groups = [Y[col][cov[v] == lv].to_numpy() for lv in cov[v].unique()]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # scipy: "p-value capped"
                    pv = stats.anderson_ksamp(groups, variant="midrank").pvalue
                pvalues.append(pv)
                c += pv < 0.05
            row.append(c)
        counts[order] = row
    best = min(counts, key=lambda o: sum(counts[o]))  # min keeps the first of equal totals
    return counts, best, np.array(pvalues)


def skewed_case():
    """A small case ComBat cannot fully harmonize: one level of each of 3 variables has skewed noise (same
    mean and variance) on half of the features, so some differences remain after every order."""
    X, cov, _, variables = simulate("crossed", n=150, p=12, seed=2, effect=0.5)
    rng = np.random.default_rng(102)
    X = X.copy()
    for v in variables[:3]:
        rows = (cov[v] == min(cov[v].unique())).to_numpy()
        for j in range(0, X.shape[1], 2):
            X.iloc[rows, j] += 0.25 * X.iloc[:, j].std() * (rng.exponential(1.0, rows.sum()) - 1.0)
    return X, cov, variables[:3]


@pytest.mark.parametrize("criterion", ["ad", "ad_residuals"])
def test_order_search_matches_opnested_loop(criterion):
    """On a case where no scipy p-value is floored (and some are interpolated), the counts of every order
    and the order chosen agree exactly, including the tie between orders with the same total."""
    X, cov, variables = skewed_case()
    counts, best, pvalues = opnested_loop(X, cov, variables, FORMULA, residuals=criterion == "ad_residuals")
    hm = fh.NestedComBat(batches=variables, formula=FORMULA, criterion=criterion).fit(X, cov)
    oc = hm.order_counts_
    assert list(oc.index) == [" > ".join(o) for o in itertools.permutations(variables)]
    for order, row in counts.items():
        assert oc.loc[" > ".join(order), variables].tolist() == row
    assert tuple(hm.order_) == best
    totals = oc["total"]
    assert (pvalues > 0.001).all() and ((pvalues > 0.001) & (pvalues < 0.25)).sum() >= 5  # none floored
    assert totals.nunique() > 1 and (totals == totals.min()).sum() > 1  # a choice, and a tie to break
    # the harmonized data are those of sequential ComBat in the chosen order
    out = X
    for v in best:
        out = fh.ComBat(batch=v, formula=FORMULA).fit_transform(out, cov)
    pd.testing.assert_frame_equal(hm.transform(X, cov), out, check_exact=True)


def test_ties_go_to_the_first_order():
    """Without any batch effect and 2 features every order counts 0: the variables' own order is kept."""
    _, cov, truth, _ = simulate("crossed", n=200, p=2, seed=5, effect=0.0)
    hm = fh.NestedComBat(batches=["coil", "field"], formula=FORMULA, eb=False).fit(truth, cov)
    assert (hm.order_counts_["total"] == hm.order_counts_["total"].iloc[0]).all()
    assert hm.order_ == ["coil", "field"]


def test_residual_criterion_counts_batch_differences_not_covariate_imbalance():
    """On batch-free data (the truth) where one vendor scanned older subjects, the count of "ad" counts the
    age difference as a vendor difference in most features; "ad_residuals" stays at the null rate."""
    _, cov, truth, variables = simulate("crossed", n=400, p=60, seed=1, older=15.0)
    ad = fh.NestedComBat(batches=variables, formula=FORMULA, criterion="ad", order=variables).fit(truth, cov)
    res = fh.NestedComBat(batches=variables, formula=FORMULA, order=variables).fit(truth, cov)
    n_tests = 60 * len(variables)
    assert res.order_counts_["total"].iloc[0] <= stats.binom.ppf(0.998, n_tests, 0.05)
    assert ad.order_counts_["vendor"].iloc[0] > 30 >= res.order_counts_["vendor"].iloc[0] + 25


# ------------------------------------------------------------------------------------------ life cycle
@pytest.fixture(scope="module")
def small():
    X, cov, _, _ = simulate("crossed", n=240, p=20, seed=8)
    return X, cov, ["vendor", "field"]


def test_given_order_steps_and_attributes(small):
    X, cov, batches = small
    hm = fh.NestedComBat(batches=batches, formula=FORMULA, order=["field", "vendor"],
                         ref_batch={"vendor": "GE"}, step_params={"field": {"eb": False}})
    Xh = hm.fit_transform(X, cov)
    assert hm.order_ == ["field", "vendor"] and [s.batch for s in hm.steps_] == ["field", "vendor"]
    assert hm.steps_[0].eb is False and hm.steps_[1].ref_batch == "GE" and hm.steps_[0].ref_batch is None
    assert list(hm.order_counts_.index) == ["field > vendor"]
    assert hm.batch == "vendor" and list(hm.batches_) == ["GE", "Philips", "Siemens"]
    assert hm.levels_ == {"field": ["1.5T", "3T"], "vendor": ["GE", "Philips", "Siemens"]}
    ge = (cov["vendor"] == "GE").to_numpy()  # the reference rows of the last step: the first step's output
    step1 = hm.steps_[0].transform(X, cov)
    pd.testing.assert_frame_equal(Xh[ge], step1[ge], check_exact=True)


def test_missing_values_and_new_sites(small):
    X, cov, batches = small
    Xm = X.copy()
    Xm.iloc[::9, 2] = np.nan
    hm = fh.NestedComBat(batches=batches, formula=FORMULA)
    Xh = hm.fit_transform(Xm, cov)
    assert Xh.isna().equals(Xm.isna())
    pd.testing.assert_frame_equal(hm.transform(Xm, cov), Xh, check_exact=True)
    # a vendor unseen at fit: refused, or estimated by the vendor step only
    cov2 = cov.copy()
    new = cov2.index[:30]
    cov2.loc[new, "vendor"] = "Canon"
    fit = fh.NestedComBat(batches=batches, formula=FORMULA).fit(X.drop(new), cov.drop(new))
    with pytest.raises(UnseenBatchError, match="Canon"):
        fit.transform(X, cov2)
    out = fit.transform(X, cov2, new_sites="estimate")
    pd.testing.assert_frame_equal(out.drop(new), fit.transform(X.drop(new), cov2.drop(new)), check_exact=True)
    assert np.isfinite(out.loc[new].to_numpy()).all()


@pytest.mark.parametrize("gmm", ["batch", "covariate"])
def test_gmm_latent_batch(gmm):
    """A hidden protocol splits the subjects in two groups that shift every feature: the mixture finds it."""
    X, cov, _, _ = simulate("crossed", n=300, p=20, seed=9, effect=0.5)
    rng = np.random.default_rng(0)
    hidden = rng.random(len(X)) < 0.45
    X = X.copy()
    X["f05"] += np.where(hidden, 8 * X["f05"].std(), 0.0)  # a clearly bimodal feature
    hm = fh.NestedComBat(batches=["vendor", "field"], formula=FORMULA, gmm=gmm, random_state=3)
    Xh = hm.fit_transform(X, cov)
    assert hm.gmm_["feature"] == "f05" and hm.gmm_["minor_share"] > 0.25
    if gmm == "batch":
        assert sorted(hm.order_) == ["field", "gmm_latent", "vendor"] and len(hm.order_counts_) == 6
        latent = next(s for s in hm.steps_ if s.batch == "gmm_latent")
        assert latent.batch_sizes_.to_dict() == {0.0: int((~hidden).sum()), 1.0: int(hidden.sum())}
    else:
        assert "gmm_latent" in hm.design_.columns and len(hm.order_counts_) == 2
    pd.testing.assert_frame_equal(hm.transform(X, cov), Xh, check_exact=True)
    again = fh.NestedComBat(batches=["vendor", "field"], formula=FORMULA, gmm=gmm, random_state=3).fit(X, cov)
    assert again.gmm_ == hm.gmm_
    with pytest.raises(InputError, match="gmm_latent"):
        hm.fit(X, cov.assign(gmm_latent=1))


def test_gmm_without_a_bimodal_feature_is_refused(small):
    X, cov, batches = small
    with pytest.raises(InputError, match="25 %"):
        fh.NestedComBat(batches=batches, gmm="batch").fit(X.iloc[:, :1] * 0 + np.arange(len(X))[:, None] ** 3 % 7
                                                         + (np.arange(len(X)) % 10 == 0)[:, None] * 100, cov)


def test_errors_name_what_is_wrong(small):
    X, cov, batches = small
    with pytest.raises(ColumnNotFoundError, match="'scanner'"):
        fh.NestedComBat(batches=["vendor", "scanner"]).fit(X, cov)
    with pytest.raises(InputError, match="'order'"):
        fh.NestedComBat(batches=batches, order=["vendor"]).fit(X, cov)
    with pytest.raises(InputError, match="'batches'"):
        fh.NestedComBat(batches="vendor").fit(X, cov)
    with pytest.raises(InputError, match="'step_params'"):
        fh.NestedComBat(batches=batches, step_params={"field": {"formula": "age"}}).fit(X, cov)
    with pytest.raises(InputError, match="step of 'field'.*'eb'"):
        fh.NestedComBat(batches=batches, step_params={"field": {"eb": "no"}}).fit(X, cov)
    with pytest.raises(InputError, match="'order'.*at most 6"):
        fh.NestedComBat(batches=list("abcdefg")).fit(X, cov)


def test_missing_covariates_exclude(small):
    X, cov, batches = small
    cov2 = cov.copy()
    cov2.loc[cov2.index[[3, 7]], "field"] = np.nan
    with pytest.raises(fh.exceptions.MissingValueError, match="field"):
        fh.NestedComBat(batches=batches, formula=FORMULA).fit(X, cov2)
    hm = fh.NestedComBat(batches=batches, formula=FORMULA, missing_covariates="exclude")
    with pytest.warns(fh.exceptions.MissingValueWarning, match="left out"):
        Xh = hm.fit_transform(X, cov2)
    assert Xh.iloc[[3, 7]].isna().all().all() and not Xh.drop(Xh.index[[3, 7]]).isna().any().any()
    assert hm.excluded_rows_ == list(cov.index[[3, 7]])
    ref = fh.NestedComBat(batches=batches, formula=FORMULA).fit_transform(X.drop(X.index[[3, 7]]),
                                                                          cov.drop(cov.index[[3, 7]]))
    pd.testing.assert_frame_equal(Xh.drop(Xh.index[[3, 7]]), ref, check_exact=True)


# ------------------------------------------------------------------------------------------ model files
@pytest.mark.parametrize("params", [dict(), dict(gmm="batch", random_state=1, sweeps=2),
                                    dict(order=["field", "vendor"], ref_batch={"vendor": "GE"},
                                         step_params={"field": {"mean_only": True}}, criterion="ad")])
def test_save_load_round_trip(small, tmp_path, params):
    X, cov, batches = small
    X = X.copy()
    X["f03"] += np.where(np.arange(len(X)) % 2 == 0, 5 * X["f03"].std(), 0.0)  # bimodal, for gmm
    hm = fh.NestedComBat(batches=batches, formula=FORMULA, **params)
    Xh = hm.fit_transform(X, cov)
    hm.save(tmp_path / "n.fhm")
    loaded = fh.load_model(tmp_path / "n.fhm")
    assert loaded.get_params() == hm.get_params() and loaded.order_ == hm.order_
    assert loaded.order_counts_.equals(hm.order_counts_) and loaded.gmm_ == hm.gmm_
    assert [s.gamma_star_.equals(t.gamma_star_) for s, t in zip(loaded.steps_, hm.steps_)] == [True] * len(hm.steps_)
    pd.testing.assert_frame_equal(loaded.transform(X, cov), Xh, check_exact=True)
    again = tmp_path / "again.fhm"
    loaded.save(again)
    assert again.read_bytes() == (tmp_path / "n.fhm").read_bytes()


def _rewrite(path, out, edit_manifest=None, drop=None, add=None):
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(out, "w") as zout:
        for item in zin.namelist():
            raw = zin.read(item)
            if item == drop:
                continue
            if item == "manifest.json" and edit_manifest:
                m = json.loads(raw)
                edit_manifest(m)
                raw = json.dumps(m).encode()
            zout.writestr(item, raw)
        if add:
            zout.writestr(*add)


def test_damaged_files_are_refused_with_the_entry_named(small, tmp_path):
    X, cov, batches = small
    path = tmp_path / "n.fhm"
    fh.NestedComBat(batches=batches, formula=FORMULA).fit(X, cov).save(path)
    cases = [
        (dict(edit_manifest=lambda m: m["state"].update(nested_schema=2)), "nested_schema.*newer"),
        (dict(edit_manifest=lambda m: m["state"].update(order=["vendor", "vendor"])), "state.order"),
        (dict(edit_manifest=lambda m: m["state"]["steps"].pop()), "state.steps"),
        (dict(edit_manifest=lambda m: m["state"]["steps"][0]["params"].update(batch="site")), r"steps\[0\].params"),
        (dict(edit_manifest=lambda m: m["state"]["steps"][1].update(model="NestedComBat")), r"steps\[1\].model"),
        (dict(edit_manifest=lambda m: m["state"]["steps"][0]["state"]["feature_names"].reverse()),
         "feature_names"),
        (dict(drop="arrays/step1/gamma_star.npy"), "gamma_star"),
        (dict(add=("arrays/step9/x.npy", b"")), "step9"),
        (dict(edit_manifest=lambda m: m["state"]["steps"][0]["state"].update(ref_index=0)), "ref_index"),
    ]
    for i, (kw, match) in enumerate(cases):
        bad = tmp_path / f"bad{i}.fhm"
        _rewrite(path, bad, **kw)
        with pytest.raises(ModelFileError, match=match):
            fh.load_model(bad)
    # a step's array values are checked as in a ComBat file
    bad = tmp_path / "values.fhm"
    with zipfile.ZipFile(path) as zin:
        raw = zin.read("arrays/step0/delta_star.npy")
    arr = np.load(__import__("io").BytesIO(raw))
    arr[0, 0] = -1.0
    buf = __import__("io").BytesIO()
    np.save(buf, arr)
    _rewrite(path, bad, drop="arrays/step0/delta_star.npy", add=("arrays/step0/delta_star.npy", buf.getvalue()))
    with pytest.raises(ModelFileError, match="delta_star"):
        fh.load_model(bad)


def test_fit_warnings_name_the_step(small):
    """The chosen steps' warnings are kept, each named by its variable (a refit keeps no stale ones)."""
    X, cov, batches = small
    X = X.copy()
    X["f03"] = 1.0  # constant: each ComBat step passes it through and warns
    hm = fh.NestedComBat(batches=batches, formula=FORMULA)
    with pytest.warns(fh.exceptions.ConstantFeatureWarning, match="f03"):
        Xh = hm.fit_transform(X, cov)
    assert [w["message"][:len(v) + 2] for w, v in zip(hm.fit_warnings_, hm.order_)] == [f"[{v}]" for v in hm.order_]
    assert len(hm.fit_warnings_) == 2 and (Xh["f03"] == 1.0).all()
    assert not hasattr(hm, "_step_messages")
    hm.fit(X.assign(f03=np.arange(len(X), dtype=float) % 5), cov)
    assert hm.fit_warnings_ == []
