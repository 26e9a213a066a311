"""Federated ComBat in one round (``featharm.federated``, docs/methods.md §5.2).

The data are simulated (volume-like features, mean ~1e4, SD ~1e2, and a few thickness-like ones; age and sex
effects; additive and multiplicative batch effects), split over 2-5 "sites", some holding several batches. The
model combined from the sites' summaries must equal ``ComBat.fit`` on the pooled rows to 1e-10 (every stored
array, relative, per feature; the harmonized values in units of each feature's SD), for every supported option.
"""

from __future__ import annotations

import io
import itertools
import json
import warnings
import zipfile

import numpy as np
import pandas as pd
import pytest

import featharm
from featharm import federated as fed
from featharm.exceptions import (
    ColumnNotFoundError,
    DisclosureError,
    FederatedError,
    FederatedFileError,
    FormulaError,
)

TOL = 1e-10
SIZES = (41, 57, 66, 83, 97)  # batch sizes: none equals a number of features, covariates or batches
P = 12

OPTIONS = {
    "parametric": {},
    "nonparametric": {"parametric": False},
    "mean_only": {"mean_only": True},
    "eb_false": {"eb": False},
    "ref_batch": {"ref_batch": "b1"},
    "ref_batch_nonparametric": {"ref_batch": "b3", "parametric": False},
}
SPLITS = {  # sites as lists of batch numbers: 2 to 5 sites, some holding several batches
    "2_sites": [[0, 2, 4], [1, 3]],
    "3_sites": [[0], [1, 2], [3, 4]],
    "4_sites": [[3], [0, 1], [2], [4]],
    "5_sites": [[0], [1], [2], [3], [4]],
}


def make_data(seed: int = 0, nan_fraction: float = 0.0, sizes=SIZES, p: int = P):
    rng = np.random.default_rng(seed)
    m = len(sizes)
    n = int(sum(sizes))
    site = np.repeat([f"b{i}" for i in range(m)], sizes)
    rng.shuffle(site)
    codes = np.unique(site, return_inverse=True)[1]
    age = rng.uniform(20, 85, n)
    sex = np.where(rng.random(n) < 0.5, "F", "M")
    thick = np.arange(p) % 4 == 3
    mu = np.where(thick, rng.uniform(2.0, 3.0, p), rng.uniform(5e3, 2e4, p))
    sd = np.where(thick, rng.uniform(0.08, 0.15, p), rng.uniform(50, 200, p))
    slope = rng.normal(-0.004, 0.001, p) * mu
    gamma = rng.normal(rng.normal(0, 0.5, m)[:, None], 0.4, (m, p))
    delta = np.exp(rng.normal(0, 0.3, m))[:, None] * np.exp(rng.normal(0, 0.15, (m, p)))
    Y = (mu + np.outer(age - 50, slope) + np.outer(sex == "M", rng.normal(0, 0.5, p)) * sd
         + sd * (gamma[codes] + delta[codes] * rng.standard_normal((n, p))))
    if nan_fraction:
        M = rng.random((n, p)) < nan_fraction
        M[:, : p // 2] = False
        Y[M] = np.nan
    ids = pd.Index([f"sub-{k:05d}" for k in rng.permutation(n)], name="id")
    X = pd.DataFrame(Y, index=ids, columns=[f"roi_{j}" for j in range(p)])
    cov = pd.DataFrame({"site": site, "age": age, "sex": sex}, index=ids)
    return X, cov


def make_plan(X, options=None, batches=None, **kw):
    o = {"ref_batch": None, "parametric": True, "mean_only": False, "eb": True, **(options or {})}
    return fed.plan(batch="site", batches=batches or [f"b{i}" for i in range(len(SIZES))], formula="age + sex",
                    levels={"sex": ["F", "M"]}, features=list(X.columns), **o, **kw)


def site_rows(cov, batch_numbers):
    return cov["site"].isin([f"b{i}" for i in batch_numbers]).to_numpy()


def site_summaries(X, cov, p, split):
    return [fed.summarize(X[site_rows(cov, s)], cov[site_rows(cov, s)], p) for s in split]


def rel_error(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert np.array_equal(np.isfinite(a), np.isfinite(b))
    ok = np.isfinite(b)
    if not ok.any():
        return 0.0
    scale = np.abs(b[ok]).max()
    return float(np.abs(a[ok] - b[ok]).max() / scale) if scale > 0 else float(np.abs(a[ok]).max())


def stored_errors(got, want) -> dict:
    """Relative error of every stored array, feature by feature for arrays with a feature axis."""
    assert sorted(got._arr) == sorted(want._arr)
    out = {}
    for k, b in want._arr.items():
        a = got._arr[k]
        if featharm.models._base._ARRAY_AXES.get(k, ())[-1:] == ("feature",) and k != "constant":
            out[k] = max(rel_error(a[..., j], b[..., j]) for j in range(b.shape[-1]))
        else:
            out[k] = rel_error(a, b)
    return out


def output_error(got, want, sigma) -> float:
    a, b = got.to_numpy(), want.to_numpy()
    assert np.array_equal(np.isnan(a), np.isnan(b))
    return float(np.nanmax(np.abs(a - b) / sigma))


def centralized(X, cov, p):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", featharm.exceptions.FeatharmWarning)
        model = featharm.ComBat(**p.model_params()).fit(X, cov)
    return model


# ============================================================================================ equal to centralized
@pytest.mark.parametrize("nan_fraction", [0.0, 0.04], ids=["complete", "nan_cells"])
@pytest.mark.parametrize("option", list(OPTIONS))
def test_combined_equals_centralized(option, nan_fraction):
    seed = list(OPTIONS).index(option)
    split = list(SPLITS.values())[seed % len(SPLITS)]
    X, cov = make_data(seed, nan_fraction)
    p = make_plan(X, OPTIONS[option])
    want = centralized(X, cov, p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", featharm.exceptions.FeatharmWarning)
        got = fed.combine(site_summaries(X, cov, p, split), p)
    errors = stored_errors(got, want)
    assert max(errors.values()) <= TOL, errors
    assert np.array_equal(got._arr["n_iter"], want._arr["n_iter"])
    assert list(got.batches_) == list(want.batches_) and got.ref_index_ == want.ref_index_
    assert got.design_.columns == want.design_.columns
    assert output_error(got.transform(X, cov), want.transform(X, cov), want._arr["sigma"]) <= TOL


@pytest.mark.parametrize("split", list(SPLITS))
def test_every_split_equals_centralized(split):
    X, cov = make_data(11, 0.03)
    p = make_plan(X)
    want = centralized(X, cov, p)
    got = fed.combine(site_summaries(X, cov, p, SPLITS[split]), p)
    assert max(stored_errors(got, want).values()) <= TOL
    assert output_error(got.transform(X, cov), want.transform(X, cov), want._arr["sigma"]) <= TOL


def test_formula_with_interaction_and_fixed_transform():
    X, cov = make_data(5)
    p = fed.plan(batch="site", batches=[f"b{i}" for i in range(5)], formula="I(age - 50) * sex + log(age)",
                 levels={"sex": ["M", "F"]}, features=list(X.columns))
    want = featharm.ComBat(batch="site", formula="I(age - 50) * sex + log(age)").fit(X, cov)
    got = fed.combine(site_summaries(X, cov, p, SPLITS["3_sites"]), p)
    assert got.design_.columns == want.design_.columns
    assert max(stored_errors(got, want).values()) <= TOL


# ============================================================================================ order, bytes, disclosure
def test_any_order_gives_the_same_model_file(tmp_path):
    X, cov = make_data(3, 0.03)
    p = make_plan(X)
    paths = []
    for k, s in enumerate(site_summaries(X, cov, p, SPLITS["4_sites"])):
        paths.append(tmp_path / f"site{k}.fhs")
        s.save(paths[-1])
    from featharm.persistence import model_bytes

    files = {model_bytes(fed.combine(list(order), p)) for order in itertools.permutations(paths)}
    assert len(files) == 1
    # a summary is reproducible too: the same rows give the same bytes
    s0 = site_summaries(X, cov, p, SPLITS["4_sites"])[0]
    assert s0.to_bytes() == paths[0].read_bytes()


def _npy_shapes(path) -> dict:
    out = {}
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            if name.endswith(".npy"):
                with zf.open(name) as fh:
                    version = np.lib.format.read_magic(fh)
                    read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
                    shape = read[version](fh)[0]
                out[name] = shape
    return out


@pytest.mark.parametrize("nan_fraction", [0.0, 0.05])
def test_no_array_has_a_subject_axis(tmp_path, nan_fraction):
    X, cov = make_data(4, nan_fraction)
    p = make_plan(X)
    for k, sites in enumerate(SPLITS["2_sites"]):
        s = fed.summarize(X[site_rows(cov, sites)], cov[site_rows(cov, sites)], p)
        path = tmp_path / f"s{k}.fhs"
        s.save(path)
        sizes = {int(n) for n in s.stats.counts} | {int(site_rows(cov, sites).sum())}
        shapes = _npy_shapes(path)
        assert len(shapes) == 14
        for name, shape in shapes.items():
            assert not sizes & set(shape), (name, shape, sizes)
        with zipfile.ZipFile(path) as zf:
            man = json.loads(zf.read("manifest.json"))
        # the manifest: the plan, its digest, the batch names, the arrays' shapes; no per-subject list
        assert set(man) == {"format", "schema_version", "featharm_version", "plan", "plan_digest", "batches",
                            "arrays"}
        assert man["batches"] == sorted(f"b{i}" for i in sites)
        assert all(len(v) not in sizes for v in man["plan"].values() if isinstance(v, list))


def test_show_lists_what_is_disclosed():
    X, cov = make_data(2, 0.05)
    p = make_plan(X)
    rows = site_rows(cov, [0, 1])
    s = fed.summarize(X[rows], cov[rows], p)
    text = "\n".join(fed.describe_summary(s))
    for i in (0, 1):
        n = int((cov["site"] == f"b{i}").sum())
        males = int(((cov["site"] == f"b{i}") & (cov["sex"] == "M")).sum())
        assert f"batch 'b{i}': sums over {n} subjects" in text
        assert f"sex[T.M]                 {males} subjects" in text
        assert f"sex = 'F' (baseline)     {n - males} subjects" in text
    assert "Σxy" in text and "without a value" in text


# ============================================================================================ late sites
def test_extend_adds_a_late_batch_as_new_sites_estimate():
    X, cov = make_data(6, 0.03)
    early = ~site_rows(cov, [4])
    p = make_plan(X, batches=[f"b{i}" for i in range(4)])
    want = centralized(X[early], cov[early], p)
    model = fed.combine([fed.summarize(X[site_rows(cov, s)], cov[site_rows(cov, s)], p) for s in ([0, 1], [2, 3])], p)
    late = fed.summarize(X[~early], cov[~early], p)  # a batch the plan does not list: for extend only
    with pytest.raises(FederatedError, match="b4.*not among the plan's batches"):
        fed.combine([late], p)
    model2 = fed.extend(model, late)
    assert list(model2.batches_) == ["b0", "b1", "b2", "b3", "b4"]
    for k in ("gamma_star", "delta_star", "gamma_hat", "delta_hat"):
        assert np.array_equal(model2._arr[k][:4], model._arr[k])
    got = model2.transform(X[~early], cov[~early])
    ref = want.transform(X[~early], cov[~early], new_sites="estimate", min_new_site_size=p.min_count)
    assert output_error(got, ref, want._arr["sigma"]) <= TOL
    with pytest.raises(FederatedError, match="already in the model"):
        fed.extend(model2, late)


# ============================================================================================ refusals
def test_summarize_refuses_small_batches_levels_and_features():
    X, cov = make_data(7, sizes=(41, 57, 9, 83, 97))
    p = make_plan(X)
    rows = site_rows(cov, [1, 2])
    with pytest.raises(DisclosureError, match="batch 'b2' of 'site' has 9 subject"):
        fed.summarize(X[rows], cov[rows], p)
    X, cov = make_data(7)
    rows = site_rows(cov, [0])
    c = cov[rows].copy()
    c["sex"] = "F"
    c.iloc[:3, c.columns.get_loc("sex")] = "M"
    with pytest.raises(DisclosureError, match="batch 'b0' has 3 subject.*sex = 'M'"):
        fed.summarize(X[rows], c, p)
    c["sex"] = "F"  # no subject with M in this batch discloses nothing about M: allowed
    assert fed.summarize(X[rows], c, p).stats.counts[0] == rows.sum()
    x = X[rows].copy()
    x.iloc[5:, 3] = np.nan
    with pytest.raises(DisclosureError, match="feature 'roi_3' has 5 observed value.*'b0'"):
        fed.summarize(x, cov[rows], p)


def test_summarize_refuses_data_that_do_not_follow_the_plan():
    X, cov = make_data(8)
    p = make_plan(X)
    rows = site_rows(cov, [0])
    with pytest.raises(ColumnNotFoundError, match="lack 1 feature.*'roi_4'"):
        fed.summarize(X[rows].drop(columns="roi_4"), cov[rows], p)
    c = cov[rows].copy()
    c.iloc[0, c.columns.get_loc("sex")] = "X"
    with pytest.raises(FederatedError, match="level.*'X'.*plan does not list"):
        fed.summarize(X[rows], c, p)
    with pytest.raises(ColumnNotFoundError, match="'age'"):
        fed.summarize(X[rows], cov[rows].drop(columns="age"), p)
    c = cov[rows].copy()
    c["age"] = "old"
    with pytest.raises(FederatedError, match="holds text"):
        fed.summarize(X[rows], c, p)


def test_combine_refuses():
    X, cov = make_data(9)
    p = make_plan(X)
    sums = site_summaries(X, cov, p, SPLITS["3_sites"])
    sums[0].source, sums[1].source, sums[2].source = "a.fhs", "b.fhs", "c.fhs"
    both = fed.summarize(X[site_rows(cov, [0, 1])], cov[site_rows(cov, [0, 1])], p)
    both.source = "d.fhs"
    with pytest.raises(FederatedError, match="'b1' is in two summaries: 'b.fhs' and 'd.fhs'"):
        fed.combine([sums[1], both, sums[2]], p)
    with pytest.raises(FederatedError, match=r"batch\(es\) 'b3', 'b4' have no summary"):
        fed.combine(sums[:2], p)
    other = make_plan(X, {"parametric": False})
    with pytest.raises(FederatedError, match="'a.fhs' was made with another plan.*options.*parametric"):
        fed.combine(sums, other)
    other = fed.plan(batch="site", batches=p.batches, formula="age + sex", levels={"sex": ["F", "M"]},
                     features=list(X.columns)[::-1])
    with pytest.raises(FederatedError, match="feature order"):
        fed.combine(sums, other)
    # a planned level nobody holds
    c = cov.copy()
    c["sex"] = "F"
    p3 = fed.plan(batch="site", batches=p.batches, formula="age + sex", levels={"sex": ["F", "M"]},
                  features=list(X.columns))
    with pytest.raises(FederatedError, match="no batch has a subject with sex = 'M'"):
        fed.combine(site_summaries(X, c, p3, SPLITS["3_sites"]), p3)


def test_plan_refuses():
    feats = ["a", "b"]
    with pytest.raises(FederatedError, match="'age' has no range"):  # ComBat-GAM: tests/federated/test_federated_gam.py
        fed.plan(batch="site", batches=["A", "B"], features=feats, formula="age", method="gam", smooth=["age"])
    with pytest.raises(FederatedError, match=r"s\(age\): plan ComBat-GAM for it \(--method gam"):
        fed.plan(batch="site", batches=["A", "B"], features=feats, formula="s(age) + sex", levels={"sex": ["F", "M"]})
    with pytest.raises(FederatedError, match=r"center\(age\).*I\(age - 50\)"):
        fed.plan(batch="site", batches=["A", "B"], features=feats, formula="center(age)")
    with pytest.raises(FederatedError, match="bs"):
        fed.plan(batch="site", batches=["A", "B"], features=feats, formula="bs(age, df=4)")
    fixed = fed.plan(batch="site", batches=["A", "B"], features=feats,
                     formula="bs(age, knots=[40, 60], lower_bound=0, upper_bound=100)")
    assert len(fixed.design.columns) == 5
    with pytest.raises(FederatedError, match="C\\(\\)"):
        fed.plan(batch="site", batches=["A", "B"], features=feats, formula="C(dx)")
    with pytest.raises(FederatedError, match="reference batch 'Z'"):
        fed.plan(batch="site", batches=["A", "B"], features=feats, ref_batch="Z")
    with pytest.raises(FederatedError, match="levels were given for 'dx'"):
        fed.plan(batch="site", batches=["A", "B"], features=feats, formula="age", levels={"dx": ["x", "y"]})
    with pytest.raises(FederatedError, match="min_count"):
        fed.plan(batch="site", batches=["A", "B"], features=feats, min_count=1)
    with pytest.raises(FederatedError, match="repeat 'a'"):
        fed.plan(batch="site", batches=["A", "B"], features=["a", "a"])
    with pytest.raises(FormulaError):
        fed.plan(batch="site", batches=["A", "B"], features=feats, formula="__import__('os')")


# ============================================================================================ files
def test_plan_file_round_trip_and_validation(tmp_path):
    X, _ = make_data(0)
    p = make_plan(X, {"ref_batch": "b2", "mean_only": True})
    path = tmp_path / "plan.json"
    fed.save_plan(p, path)
    q = fed.load_plan(path)
    assert q == p and q.digest == p.digest and q.design.to_dict() == p.design.to_dict()
    d = json.loads(path.read_text())
    for change, match in [
        (lambda d: d.update(formula="__import__('os').system('x')"), "not a valid featharm plan"),
        (lambda d: d.update(extra=1), "unexpected entries"),
        (lambda d: d["options"].update(eb="yes"), "options.eb"),
        (lambda d: d.update(batches=["b1", "b0", "b2"]), "canonical"),
        (lambda d: d.update(format="other"), "not a featharm plan"),
        (lambda d: d.update(schema_version=99), "newer"),
        (lambda d: d.update(formula="center(age) + sex"), "fixed numbers"),
    ]:
        bad = json.loads(json.dumps(d))
        change(bad)
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(FederatedFileError, match=match):
            fed.load_plan(tmp_path / "bad.json")
    (tmp_path / "nan.json").write_text(path.read_text().replace('"min_count": 10', '"min_count": NaN'))
    with pytest.raises(FederatedFileError):
        fed.load_plan(tmp_path / "nan.json")


def _rewrite(src, dst, arrays=None, manifest=None):
    """Copy a summary zip, replacing arrays (name -> array; the manifest's entry follows) or manifest entries."""
    with zipfile.ZipFile(src) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    man = json.loads(members["manifest.json"])
    for name, a in (arrays or {}).items():
        b = io.BytesIO()
        np.lib.format.write_array(b, a, allow_pickle=False)
        members[f"arrays/{name}.npy"] = b.getvalue()
        man["arrays"][name] = {"shape": list(a.shape), "dtype": str(a.dtype)}
    man.update(manifest or {})
    members["manifest.json"] = json.dumps(man).encode()
    with zipfile.ZipFile(dst, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)


def test_tampered_summaries_are_refused(tmp_path):
    X, cov = make_data(10, 0.05)
    p = make_plan(X)
    rows = site_rows(cov, [0, 1])
    src = tmp_path / "site.fhs"
    fed.summarize(X[rows], cov[rows], p).save(src)
    a = fed.load_summary(src, p).stats.to_arrays()
    bad = tmp_path / "bad.fhs"
    cases = [
        ({"sy": np.zeros((2, P + 1))}, None, r"array 'sy' has shape \(2, 13\)"),
        ({"counts": a["counts"].astype(np.float32)}, None, "array 'counts' has dtype float32"),
        ({"counts": a["counts"] * np.array([-1.0, 1.0])}, None, "'counts' must hold non-negative whole numbers"),
        ({"counts": a["counts"] + 0.5}, None, "'counts' must hold non-negative whole numbers"),
        ({"syy": np.where(np.arange(P) == 2, np.inf, a["syy"])}, None, "'syy' has non-finite values"),
        ({"sxy": np.full_like(a["sxy"], np.nan)}, None, "'sxy' has non-finite values"),
        ({"counts": np.array([5.0, a["counts"][1]]), "n_obs": np.minimum(a["n_obs"], 5.0)}, None,
         "fewer than|missing-row sums"),
        ({"miss_batch": a["miss_batch"][:-1], "miss_feature": a["miss_feature"][:-1], "miss_sx": a["miss_sx"][:-1],
          "miss_sxx": a["miss_sxx"][:-1]}, None, "missing-row sums"),
        (None, {"plan_digest": "0" * 64}, "does not match its plan"),
        (None, {"batches": ["b1", "b0"]}, "sorted list"),
        (None, {"format": "featharm-model"}, "not a featharm summary file.*model file"),
        (None, {"schema_version": 7}, "newer"),
    ]
    for arrays, manifest, match in cases:
        _rewrite(src, bad, arrays, manifest)
        with pytest.raises(FederatedFileError, match=match):
            fed.load_summary(bad, p)
    bad.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(FederatedFileError, match="not a featharm summary file"):
        fed.load_summary(bad)
    with pytest.raises(FederatedFileError, match="does not exist"):
        fed.load_summary(tmp_path / "none.fhs")
    with pytest.raises(FederatedFileError, match="not a regular file"):
        fed.load_summary(tmp_path)
    with zipfile.ZipFile(src) as zf:  # an extra member is refused unread
        members = {n: zf.read(n) for n in zf.namelist()}
    with zipfile.ZipFile(bad, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)
        zf.writestr("arrays/evil.npy", b"x")
    with pytest.raises(FederatedFileError, match="unexpected member 'arrays/evil.npy'"):
        fed.load_summary(bad)


def test_summary_with_too_few_subjects_or_a_zip_bomb_is_refused(tmp_path):
    X, cov = make_data(12)
    p = make_plan(X)
    rows = site_rows(cov, [0])
    src = tmp_path / "site.fhs"
    fed.summarize(X[rows], cov[rows], p).save(src)
    a = fed.load_summary(src).stats.to_arrays()
    bad = tmp_path / "bad.fhs"
    _rewrite(src, bad, {"counts": np.array([4.0]), "n_obs": np.full((1, P), 4.0)})
    with pytest.raises(FederatedFileError, match="batch 'b0' with 4 subject.*min_count of 10"):
        fed.load_summary(bad)
    with zipfile.ZipFile(src) as zf:  # a member that inflates far beyond what its axes allow
        members = {n: zf.read(n) for n in zf.namelist()}
    members["arrays/sy.npy"] = members["arrays/sy.npy"] + bytes(200 * 2**20)
    with zipfile.ZipFile(bad, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for n, data in members.items():
            zf.writestr(n, data)
    assert bad.stat().st_size < 2**20
    with pytest.raises(FederatedFileError, match="declare"):
        fed.load_summary(bad)
    assert a["counts"][0] == rows.sum()
