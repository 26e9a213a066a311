"""Federated ComBat-GAM (``featharm.federated`` with ``method="gam"``, docs/methods.md §5.2): the plan fixes each
smooth term's spline basis from its range (cubic B-splines, knots evenly spaced over ``--smooth-range``), every
site summarizes its rows with that basis, and the model combined from the summaries must equal
``ComBatGAM(**plan.model_params()).fit`` on the pooled rows (``knots="uniform"``, ``smooth_bounds`` at the plan's
range: the same basis, fitted in memory) to 1e-10: every stored array (smoothing parameters, effective degrees of
freedom and spline coefficients included; relative, per feature) and the harmonized values (in units of each
feature's SD), for every supported option, with the data split over 2-5 sites, some holding several batches.

The simulated features (volume-like, mean ~1e4, SD ~1e2, and thickness-like) get a curved age effect, so that
the smoothing parameters are finite and differ between features.
"""

from __future__ import annotations

import itertools
import json
import warnings
import zipfile

import numpy as np
import pandas as pd
import pytest
import featharm
from featharm import federated as fed
from featharm._core.splines import SplineBasis
from featharm.exceptions import (
    DisclosureError,
    FederatedError,
    FederatedFileError,
    InputError,
    OutOfRangeError,
)
from featharm.persistence import model_bytes
from test_federated import P, SIZES, SPLITS, _npy_shapes, _rewrite, output_error, site_rows, stored_errors

TOL = 1e-10
BATCHES = [f"b{i}" for i in range(5)]
RANGE = (20.0, 85.0)  # the smooth range of age in the plans (gam_data spreads age over it)

OPTIONS = {
    "reml": {},
    "gcv": {"smooth_method": "GCV"},
    "shared_smoothing": {"shared_smoothing": True},
    "nonparametric": {"parametric": False},
    "mean_only": {"mean_only": True},
    "eb_false": {"eb": False},
    "ref_batch": {"ref_batch": "b1"},
    "ref_batch_gcv_nonparametric": {"ref_batch": "b3", "parametric": False, "smooth_method": "GCV"},
    "df_7": {"df": 7},
    # a range wider than the values: knot intervals without any subject (their directions carry no data)
    "wide_range_gcv": {"ranges": {"age": (5.0, 90.0)}, "smooth_method": "GCV"},
}


def _stratified(rng, codes, m, lo, hi):
    """Values in [lo, hi], spread evenly within each batch (one per 1/n_i of the range, shuffled), so that every
    knot interval holds several subjects of every batch (no spline column sums over fewer than min_count)."""
    x = np.empty(codes.size)
    for i in range(m):
        rows = np.flatnonzero(codes == i)
        x[rows] = lo + (hi - lo) * (rng.permutation(rows.size) + rng.uniform(0.05, 0.95, rows.size)) / rows.size
    return x


def gam_data(seed: int, nan_fraction: float = 0.0, sizes=SIZES, p: int = P):
    """As ``make_data`` (volume- and thickness-like features, additive and multiplicative batch effects), with a
    curved age effect and a bmi covariate."""
    rng = np.random.default_rng(seed)
    m, n = len(sizes), int(sum(sizes))
    site = np.repeat([f"b{i}" for i in range(m)], sizes)
    rng.shuffle(site)
    codes = np.unique(site, return_inverse=True)[1]
    age = _stratified(rng, codes, m, *RANGE)
    bmi = _stratified(rng, codes, m, 18.0, 35.0)
    sex = np.where(rng.random(n) < 0.5, "F", "M")
    thick = np.arange(p) % 4 == 3
    mu = np.where(thick, rng.uniform(2.0, 3.0, p), rng.uniform(5e3, 2e4, p))
    sd = np.where(thick, rng.uniform(0.08, 0.15, p), rng.uniform(50, 200, p))
    curve = np.outer(np.sin((age - 20) / 11), rng.uniform(0.3, 2.0, p)) + np.outer(age - 50, rng.normal(0, 0.02, p))
    gamma = rng.normal(rng.normal(0, 0.5, m)[:, None], 0.4, (m, p))
    delta = np.exp(rng.normal(0, 0.3, m))[:, None] * np.exp(rng.normal(0, 0.15, (m, p)))
    Y = (mu + sd * (curve + np.outer(sex == "M", rng.normal(0, 0.5, p)) + np.outer(bmi - 25, rng.normal(0, 0.03, p))
                    + gamma[codes] + delta[codes] * rng.standard_normal((n, p))))
    if nan_fraction:
        M = rng.random((n, p)) < nan_fraction
        M[:, : p // 2] = False
        Y[M] = np.nan
    ids = pd.Index([f"sub-{k:05d}" for k in rng.permutation(n)], name="id")
    X = pd.DataFrame(Y, index=ids, columns=[f"roi_{j}" for j in range(p)])
    return X, pd.DataFrame({"site": site, "age": age, "sex": sex, "bmi": bmi}, index=ids)


def gam_plan(X, batches=None, *, formula="age + sex", smooth=("age",), ranges=None, min_count=3, **kw):
    return fed.plan(batch="site", batches=batches or BATCHES, formula=formula, levels={"sex": ["F", "M"]},
                    features=list(X.columns), method="gam", smooth=list(smooth),
                    smooth_range=ranges or {"age": RANGE}, min_count=min_count, **kw)


def summaries(X, cov, p, split):
    return [fed.summarize(X[site_rows(cov, s)], cov[site_rows(cov, s)], p) for s in split]


def quiet(f, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", featharm.exceptions.FeatharmWarning)
        return f(*args, **kw)


def centralized(X, cov, p):
    return quiet(featharm.ComBatGAM(**p.model_params()).fit, X, cov)


def check_equal(got, want, X, cov):
    assert type(got) is featharm.ComBatGAM
    errors = stored_errors(got, want)
    assert {"smoothing", "edf", "spline_coef"} <= set(errors)
    assert max(errors.values()) <= TOL, errors
    assert list(got.batches_) == list(want.batches_) and got.ref_index_ == want.ref_index_
    assert got.design_.columns == want.design_.columns
    assert [(b.name, b.knots.tolist()) for b in got.smooth_bases_] == \
        [(b.name, b.knots.tolist()) for b in want.smooth_bases_]
    assert output_error(got.transform(X, cov), want.transform(X, cov), want._arr["sigma"]) <= TOL
    return errors


# ============================================================================================ equal to centralized
@pytest.mark.parametrize("nan_fraction", [0.0, 0.04], ids=["complete", "nan_cells"])
@pytest.mark.parametrize("option", list(OPTIONS))
def test_combined_gam_equals_centralized(option, nan_fraction):
    seed = list(OPTIONS).index(option)
    split = list(SPLITS.values())[seed % len(SPLITS)]
    X, cov = gam_data(seed, nan_fraction)
    p = gam_plan(X, **OPTIONS[option])
    want = centralized(X, cov, p)
    got = quiet(fed.combine, summaries(X, cov, p, split), p)
    check_equal(got, want, X, cov)
    assert ("n_obs" in want._arr) == (nan_fraction > 0)
    # the smoothing parameters are real choices: finite and, per feature, different
    lam = want.lambda_.to_numpy()
    assert np.isfinite(lam).all()
    assert (lam.max() > lam.min()) != bool(OPTIONS[option].get("shared_smoothing"))
    # the centralized fit's basis is the plan's, though it saw the rows
    assert want.smooth_bases_[0].knots.tolist() == p.bases[0].knots.tolist()


@pytest.mark.parametrize("split", list(SPLITS))
def test_every_split_equals_centralized(split):
    X, cov = gam_data(21, 0.03)
    p = gam_plan(X)
    check_equal(quiet(fed.combine, summaries(X, cov, p, SPLITS[split]), p), centralized(X, cov, p), X, cov)


def test_two_smooth_terms_from_smooth_and_s():
    X, cov = gam_data(22)
    p = gam_plan(X, formula="age + sex + s(bmi)", ranges={"age": RANGE, "bmi": (18, 35)}, df=8)
    assert p.formula == "sex" and p.smooth == ("age", "bmi")
    assert p.model_params()["smooth"] == ["age", "bmi"] and p.n_columns == 1 + 2 * 7
    want = centralized(X, cov, p)
    check_equal(quiet(fed.combine, summaries(X, cov, p, SPLITS["3_sites"]), p), want, X, cov)
    # the same plan written with s() only, or with --smooth only
    assert gam_plan(X, formula="s(age) + sex + s(bmi)", smooth=(), ranges={"age": RANGE, "bmi": (18, 35)},
                    df=8).digest == p.digest
    assert gam_plan(X, formula="sex", smooth=("age", "bmi"), ranges={"age": RANGE, "bmi": (18, 35)},
                    df=8).digest == p.digest


def test_knots_are_evenly_spaced_over_the_range():
    X, _ = gam_data(0)
    p = gam_plan(X, ranges={"age": (5, 90)})
    k = p.bases[0].knots
    assert k.tolist() == [5.0] * 4 + np.linspace(5, 90, 8)[1:-1].tolist() + [90.0] * 4
    assert np.allclose(np.diff(k[3:-3]), 85 / 7, rtol=1e-14, atol=0)
    assert p.bases[0].n_columns == 9  # df 10, as ComBatGAM's default
    # ComBatGAM with knots="uniform" and both bounds: the same basis from any rows inside the range
    x = np.random.default_rng(0).uniform(30, 40, 50)
    assert SplineBasis.from_data(x, "age", df=10, bounds=(5, 90), knots="uniform").knots.tolist() == k.tolist()


# ============================================================================================ order, bytes, disclosure
def test_any_order_gives_the_same_model_file(tmp_path):
    X, cov = gam_data(23, 0.03)
    p = gam_plan(X)
    paths = []
    for k, s in enumerate(summaries(X, cov, p, SPLITS["4_sites"])):
        paths.append(tmp_path / f"site{k}.fhs")
        s.save(paths[-1])
    files = {model_bytes(quiet(fed.combine, list(order), p)) for order in itertools.permutations(paths)}
    assert len(files) == 1
    assert summaries(X, cov, p, SPLITS["4_sites"])[2].to_bytes() == paths[2].read_bytes()
    # the model file is an ordinary ComBatGAM model: it loads and harmonizes as the combined model does
    (tmp_path / "m.fhm").write_bytes(files.pop())
    loaded = featharm.load_model(tmp_path / "m.fhm")
    assert type(loaded) is featharm.ComBatGAM and loaded.get_params()["knots"] == "uniform"
    np.testing.assert_array_equal(loaded.transform(X, cov).to_numpy(),
                                  quiet(fed.combine, paths, p).transform(X, cov).to_numpy())


@pytest.mark.parametrize("nan_fraction", [0.0, 0.05])
def test_no_array_has_a_subject_axis(tmp_path, nan_fraction):
    X, cov = gam_data(24, nan_fraction)
    p = gam_plan(X)
    for k, sites in enumerate(SPLITS["2_sites"]):
        s = fed.summarize(X[site_rows(cov, sites)], cov[site_rows(cov, sites)], p)
        path = tmp_path / f"s{k}.fhs"
        s.save(path)
        sizes = {int(n) for n in s.stats.counts} | {int(site_rows(cov, sites).sum())}
        shapes = _npy_shapes(path)
        assert len(shapes) == 14
        assert shapes["arrays/sxx.npy"] == (len(sites), 1 + 9, 1 + 9)  # sex, then age's 9 spline columns
        for name, shape in shapes.items():
            assert not sizes & set(shape), (name, shape, sizes)
        with zipfile.ZipFile(path) as zf:
            man = json.loads(zf.read("manifest.json"))
        assert man["schema_version"] == 2 and man["plan"]["method"] == "gam"
        assert set(man) == {"format", "schema_version", "featharm_version", "plan", "plan_digest", "batches",
                            "arrays"}
        lists = [v for v in man["plan"].values() if isinstance(v, list)]
        lists += [v for t in man["plan"]["gam"]["smooth"] for v in t.values() if isinstance(v, list)]
        assert all(len(v) not in sizes for v in lists)
        assert fed.load_summary(path, p).stats.q == p.n_columns


def test_show_lists_the_spline_sums():
    X, cov = gam_data(25, 0.05)
    p = gam_plan(X)
    rows = site_rows(cov, [0, 1])
    s = fed.summarize(X[rows], cov[rows], p)
    text = "\n".join(fed.describe_summary(s))
    assert "smooth term(s) age over [20, 85]: 9 spline column(s)" in text and "REML" in text
    for i in (0, 1):
        b = p.bases[0].transform(cov.loc[cov["site"] == f"b{i}", "age"].to_numpy()).sum(axis=0)
        assert f"s(age) column sums  {', '.join(f'{v:.1f}' for v in b)}" in text
    assert "smoothed histogram" in text and f"1 to {p.min_count - 1}" in text


# ============================================================================================ late sites
def test_extend_adds_a_late_batch_to_a_gam_model(tmp_path):
    X, cov = gam_data(26, 0.03)
    early = ~site_rows(cov, [4])
    p = gam_plan(X, batches=BATCHES[:4])
    want = centralized(X[early], cov[early], p)
    model = quiet(fed.combine, summaries(X, cov, p, [[0, 1], [2, 3]]), p)
    check_equal(model, want, X[early], cov[early])
    late = fed.summarize(X[~early], cov[~early], p)
    model.save(tmp_path / "m.fhm")
    model2 = quiet(fed.extend, featharm.load_model(tmp_path / "m.fhm"), late)
    assert list(model2.batches_) == BATCHES
    for k in ("gamma_star", "delta_star", "gamma_hat", "delta_hat"):
        assert np.array_equal(model2._arr[k][:4], model._arr[k])
    got = model2.transform(X[~early], cov[~early])
    ref = quiet(want.transform, X[~early], cov[~early], new_sites="estimate", min_new_site_size=p.min_count)
    assert output_error(got, ref, want._arr["sigma"]) <= TOL
    # a summary of another plan (a ComBat plan, or another range) does not extend this model
    lin = fed.plan(batch="site", batches=BATCHES[:4], formula="age + sex", levels={"sex": ["F", "M"]},
                   features=list(X.columns), min_count=3)
    with pytest.raises(FederatedError, match="'combat' plan, but the model is a ComBatGAM"):
        fed.extend(model, fed.summarize(X[~early], cov[~early], lin))
    wider = gam_plan(X, batches=BATCHES[:4], ranges={"age": (15, 90)})
    with pytest.raises(FederatedError, match="smooth_bounds.*spline bases"):
        fed.extend(model, fed.summarize(X[~early], cov[~early], wider))


# ============================================================================================ refusals
def test_summarize_refuses_values_outside_the_range():
    X, cov = gam_data(27)
    p = gam_plan(X, ranges={"age": (20, 80)})
    rows = site_rows(cov, [1, 2])
    old = cov[rows & (cov["age"] > 80).to_numpy()]
    assert len(old)
    worst = old["age"].idxmax()
    with pytest.raises(OutOfRangeError, match=rf"'age' has {len(old)} value\(s\) outside the plan's range \[20, 80\] "
                                              rf".*e\.g\. {old['age'].max():g} in batch '{old.loc[worst, 'site']}', "
                                              rf"row '{worst}'.*--smooth-range age=LO,HI"):
        fed.summarize(X[rows], cov[rows], p)
    c = cov[rows].copy()
    c.iloc[0, c.columns.get_loc("age")] = np.nan
    with pytest.raises(InputError, match="smooth covariate column 'age' has missing"):
        fed.summarize(X[rows], c, p)
    with pytest.raises(InputError, match="'age'"):
        fed.summarize(X[rows], cov[rows].drop(columns="age"), p)


def test_summarize_refuses_a_spline_column_over_few_subjects():
    X, cov = gam_data(28)
    p = gam_plan(X, min_count=10)
    rows = site_rows(cov, [0])  # 41 subjects; 3 of them in the last knot interval
    c = cov[rows].copy()
    last = p.bases[0].knots[-5]
    ages = c["age"].to_numpy(copy=True)
    ages[ages > last] = last - 1.0
    ages[:3] = [80.0, 82.0, 84.0]
    c["age"] = ages
    with pytest.raises(DisclosureError, match=r"batch 'b0' has 3 subject\(s\) with age in \(75\.7143, 85\), where "
                                              r"the spline column s\(age\)\[8\] is not zero.*--df"):
        fed.summarize(X[rows], c, p)
    c["age"] = np.where(ages > last, last - 1.0, ages)  # nobody there: nothing about anyone is disclosed
    assert fed.summarize(X[rows], c, p).stats.counts[0] == rows.sum()


def test_plan_refuses():
    feats = ["a", "b"]

    def gam(**kw):
        args = dict(batch="site", batches=["A", "B"], features=feats, formula="age + sex",
                    levels={"sex": ["F", "M"]}, method="gam", smooth=["age"], smooth_range={"age": (5, 90)})
        return fed.plan(**{**args, **kw})

    assert gam().formula == "sex"
    cases = [
        (dict(smooth_range=None), r"'age' has no range.*quantile knots.*--smooth-range age=LO,HI"),
        (dict(smooth_range={"age": (5, 90), "bmi": (15, 40)}), "names 'bmi', which is not a smooth term"),
        (dict(smooth_range={"age": (90, 5)}), "two finite numbers LO < HI"),
        (dict(smooth_range={"age": (5, float("inf"))}), "two finite numbers"),
        (dict(smooth_range={"age": (5, True)}), "two finite numbers"),
        (dict(smooth_range={"age": "5,90"}), "two finite numbers"),
        (dict(smooth_range={"age": (1.0, 1.0 + 1e-15)}), "too narrow"),
        (dict(smooth_range={"age": (0.0, 1e-300)}), "too narrow"),
        (dict(smooth=[], formula="age + sex"), "at least one smooth term"),
        (dict(smooth=["sex"], smooth_range={"sex": (0, 1)}), "'sex' is categorical"),
        (dict(smooth=["site"], smooth_range={"site": (0, 1)}), "batch column 'site' cannot be a smooth term"),
        (dict(formula="age * sex"), r"'age' is also in the linear term 'age:sex'"),
        (dict(formula="sex + I(age - 50)"), r"'age' is also in the linear term 'I\(age - 50\)'"),
        (dict(formula="s(age):sex", smooth=[]), "top-level s"),
        (dict(df=4), "df"),
        (dict(df=101), "df"),
        (dict(smooth_method="ML"), "'REML' or 'GCV'"),
        (dict(shared_smoothing="yes"), "shared_smoothing"),
        (dict(features=["age", "b"]), "'age' is both a feature"),
        (dict(method="spline"), "method must be"),
        (dict(method="combat"), r"smooth terms \['age'\] need method 'gam'"),
    ]
    for kw, match in cases:
        with pytest.raises(FederatedError, match=match):
            gam(**kw)
    with pytest.raises(FederatedError, match=r"s\(age\): plan ComBat-GAM"):
        fed.plan(batch="site", batches=["A", "B"], features=feats, formula="s(age) + sex", levels={"sex": ["F", "M"]})


def test_combine_refuses_a_summary_of_another_range():
    X, cov = gam_data(29)
    p = gam_plan(X)
    other = gam_plan(X, ranges={"age": (19, 86)})
    sums = summaries(X, cov, other, SPLITS["2_sites"])
    sums[0].source = "a.fhs"
    with pytest.raises(FederatedError, match=r"'a.fhs' was made with another plan.*smooth terms \(smooth: "
                                             r"\[\('age', \[19.0, 86.0\]\)\] vs \[\('age', \[20.0, 85.0\]\)\]\)"):
        fed.combine(sums, p)
    gcv = gam_plan(X, smooth_method="GCV")
    with pytest.raises(FederatedError, match="criterion: 'REML' vs 'GCV'"):
        fed.combine(summaries(X, cov, p, SPLITS["2_sites"]), gcv)


# ============================================================================================ files
def test_plan_file_round_trip_and_validation(tmp_path):
    X, _ = gam_data(0)
    p = gam_plan(X, formula="age + sex + s(bmi)", ranges={"age": (5, 90), "bmi": (15, 40)}, df=8,
                 smooth_method="GCV", shared_smoothing=True)
    path = tmp_path / "plan.json"
    fed.save_plan(p, path)
    d = json.loads(path.read_text())
    assert d["schema_version"] == 2 and d["gam"]["knot_rule"] == "uniform" and d["gam"]["degree"] == 3
    assert [t["range"] for t in d["gam"]["smooth"]] == [[5.0, 90.0], [15.0, 40.0]]
    q = fed.load_plan(path)
    assert q == p and q.digest == p.digest and [b.to_dict() for b in q.bases] == [b.to_dict() for b in p.bases]
    assert q.model_params() == p.model_params()

    def knots(d, j, k):
        d["gam"]["smooth"][j]["knots"][k] += 0.5

    for change, match in [
        (lambda d: knots(d, 0, 5), r"gam.smooth\[0\].knots are not the knots its range and df give"),
        (lambda d: knots(d, 1, 5), r"gam.smooth\[1\].knots are not the knots"),
        (lambda d: d["gam"]["smooth"][0]["knots"].reverse(), r"finite, sorted knots"),
        (lambda d: d["gam"]["smooth"][0]["knots"].pop(), "12 finite, sorted knots"),
        (lambda d: d["gam"]["smooth"][0].update(range=[5, 1e300]), "gam.smooth.0..range"),
        (lambda d: d["gam"]["smooth"][0].update(range=[90, 5]), "gam.smooth.0..range"),
        (lambda d: d["gam"]["smooth"][0].update(extra=1), r"gam.smooth\[0\] is"),
        (lambda d: d["gam"]["smooth"].append(d["gam"]["smooth"][0]), r"name is 'age'.*once"),
        (lambda d: d["gam"].update(degree=2), "gam.degree is 2"),
        (lambda d: d["gam"].update(knot_rule="quantile"), "gam.knot_rule"),
        (lambda d: d["gam"].update(penalty="ridge"), "gam.penalty"),
        (lambda d: d["gam"].update(df=True), "gam.df"),
        (lambda d: d["gam"].update(criterion="ML"), "'REML' or 'GCV'"),
        (lambda d: d["gam"].update(smooth=[]), "1 to 20 smooth terms"),
        (lambda d: d["gam"].pop("penalty"), "exactly"),
        (lambda d: d.pop("gam"), r"lacks \['gam'\]"),
        (lambda d: d.update(method="combat"), r"unexpected entries \['gam'\]"),
        (lambda d: d.update(schema_version=1), "a 'gam' plan has schema 2"),
        (lambda d: d.update(formula="age + sex"), "canonical form"),  # age is smooth: the formula is "sex"
        (lambda d: d.update(formula="sex + age:sex"), "also in the linear term"),
    ]:
        bad = json.loads(json.dumps(d))
        change(bad)
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(FederatedFileError, match=match):
            fed.load_plan(tmp_path / "bad.json")
    # a ComBat plan is written as before (schema 1, no gam entry): its digest did not change
    lin = fed.plan(batch="site", batches=BATCHES, formula="age + sex", levels={"sex": ["F", "M"]},
                   features=list(X.columns))
    d = json.loads(fed.plan_bytes(lin))
    assert d["schema_version"] == 1 and "gam" not in d


def test_tampered_gam_summaries_are_refused(tmp_path):
    X, cov = gam_data(30, 0.05)
    p = gam_plan(X)
    rows = site_rows(cov, [0, 1])
    src = tmp_path / "site.fhs"
    fed.summarize(X[rows], cov[rows], p).save(src)
    a = fed.load_summary(src, p).stats.to_arrays()
    bad = tmp_path / "bad.fhs"
    cases = [
        ({"sx": a["sx"][:, :-1]}, None, r"array 'sx' has shape \(2, 9\)"),
        ({"sxy": np.where(np.arange(a["sxy"].shape[1])[:, None] == 4, np.nan, a["sxy"])}, None,
         "'sxy' has non-finite values"),
        (None, {"schema_version": 1}, "schema_version is 1 for a 'gam' plan"),
        (None, {"schema_version": 3}, "newer"),
    ]
    for arrays, manifest, match in cases:
        _rewrite(src, bad, arrays, manifest)
        with pytest.raises(FederatedFileError, match=match):
            fed.load_summary(bad, p)
    with zipfile.ZipFile(src) as zf:
        man = json.loads(zf.read("manifest.json"))
    man["plan"]["gam"]["smooth"][0]["knots"][6] += 1.0  # a basis that is not the rule's: refused
    _rewrite(src, bad, None, {"plan": man["plan"]})
    with pytest.raises(FederatedFileError, match="knots are not the knots its range and df give"):
        fed.load_summary(bad)


# ============================================================================================ ComBatGAM(knots=...)
def test_combatgam_knots_parameter(tmp_path):
    X, cov = gam_data(31)
    quantile = quiet(featharm.ComBatGAM(batch="site", formula="sex", smooth=["age"]).fit, X, cov)
    default_knots = SplineBasis.from_data(cov["age"].to_numpy(), "age").knots
    assert quantile.smooth_bases_[0].knots.tolist() == default_knots.tolist()  # default unchanged: quantiles
    uniform = quiet(featharm.ComBatGAM(batch="site", formula="sex", smooth=["age"], knots="uniform").fit, X, cov)
    lo, hi = cov["age"].min(), cov["age"].max()
    assert uniform.smooth_bases_[0].knots.tolist() == SplineBasis.from_range("age", lo, hi).knots.tolist()
    with pytest.raises(InputError, match="knots"):
        featharm.ComBatGAM(smooth=["age"], knots="even").fit(X, cov)
    with pytest.raises(InputError, match="knots at 'quantile'"):
        featharm.ComBatGAM(smooth=["age"], knots="uniform", compat="neuroHarmonize").fit(X, cov)
    # a model file written before the parameter existed (no 'knots' in its params) loads with the default
    path = tmp_path / "old.fhm"
    quantile.save(path)
    with zipfile.ZipFile(path) as zf:
        man = json.loads(zf.read("manifest.json"))
    assert man["params"].pop("knots") == "quantile"
    _rewrite(path, tmp_path / "older.fhm", None, {"params": man["params"]})
    old = featharm.load_model(tmp_path / "older.fhm")
    assert old.knots == "quantile"
    np.testing.assert_array_equal(old.transform(X, cov).to_numpy(), quantile.transform(X, cov).to_numpy())
