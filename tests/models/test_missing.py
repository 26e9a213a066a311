"""ComBat with missing feature values (NaN cells), ``docs/methods.md`` §1.8, beyond the R parity of
``tests/reference/test_parity_na.py``: what featharm does where R stops, the properties the available-case
fit must have, transform and new sites, model files, ``missing_covariates``. The other families:
``test_missing_families.py``."""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import featharm as fh
from featharm._core import missing
from featharm.exceptions import (
    BatchError,
    ConfoundingError,
    ConstantFeatureWarning,
    InputError,
    MissingValueError,
    MissingValueWarning,
    ModelFileError,
)
from test_properties import make_data

DATA = Path(__file__).resolve().parents[1] / "data"

VARIANTS = {
    "parametric": {},
    "nonparametric": {"parametric": False},
    "mean_only": {"mean_only": True},
    "mean_only_n": {"mean_only": True, "mean_only_form": "n"},
    "no_eb": {"eb": False},
    "ref_batch": {"ref_batch": "siteB"},
}


def combat(**kw) -> fh.ComBat:
    return fh.ComBat(batch="site", formula="age + sex", **kw)


def with_nan(X: pd.DataFrame, frac: float = 0.05, seed: int = 0, keep=()) -> pd.DataFrame:
    """``X`` with a share ``frac`` of its cells missing at random (columns in ``keep`` stay complete)."""
    rng = np.random.default_rng(seed)
    mask = rng.random(X.shape) < frac
    for c in keep:
        mask[:, X.columns.get_loc(c)] = False
    return X.mask(mask)


@pytest.fixture(scope="module")
def data():
    X, cov = make_data(3, sizes=(35, 60, 25, 48), n_features=12)
    return X, cov


# ----------------------------------------------------------------------------------------- NaN in, NaN out
@pytest.mark.parametrize("name", list(VARIANTS))
def test_nan_in_nan_out(data, name):
    X, cov = data
    Xn = with_nan(X)
    model = combat(**VARIANTS[name])
    out = model.fit_transform(Xn, cov)
    assert out.index.equals(Xn.index) and list(out.columns) == list(Xn.columns)
    missing_cells = Xn.isna().to_numpy()
    assert np.array_equal(np.isnan(out.to_numpy()), missing_cells)
    assert np.isfinite(out.to_numpy()[~missing_cells]).all()
    assert np.array_equal(model.n_obs_.to_numpy(), Xn.notna().groupby(cov["site"]).sum().to_numpy())
    assert not model.fit_warnings_  # enough data everywhere: nothing to warn about
    # transform on the training rows reproduces fit_transform bit for bit
    assert np.array_equal(model.transform(Xn, cov).to_numpy(), out.to_numpy(), equal_nan=True)


def test_without_nan_nothing_changes(data):
    """The complete-data path is untouched: no n_obs, the same numbers as before."""
    X, cov = data
    model = combat().fit(X, cov)
    assert "n_obs" not in model._arr and not hasattr(model, "n_obs_")


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_feature_fitted_on_its_observed_rows(data, name):
    """With eb=False a feature's output depends on its own column only (the grand-mean weights are the full
    site sizes), so fitting the whole table (many missingness patterns, some shared) equals fitting each
    feature alone, NaN cells and all."""
    X, cov = data
    Xn = with_nan(X, 0.08, seed=4)
    cols = list(X.columns)
    Xn.loc[Xn.index[:9], cols[3:7]] = np.nan  # a pattern shared by 4 features (a "hemisphere")
    Xn.loc[Xn.index[20:25], cols[8]] = np.nan
    model = combat(**{**VARIANTS[name], "eb": False})
    out = model.fit_transform(Xn, cov)
    for c in cols:
        alone = combat(**{**VARIANTS[name], "eb": False})
        single = alone.fit_transform(Xn[[c]], cov)
        np.testing.assert_allclose(out[c].to_numpy(), single[c].to_numpy(), rtol=0, atol=1e-12)
        for attr in ("alpha_", "sigma_"):
            np.testing.assert_allclose(getattr(model, attr)[c], getattr(alone, attr)[c], rtol=1e-12)


def test_complete_feature_unaffected_except_through_priors(data):
    """NaN elsewhere: a complete feature's S1-S5 estimates are bit for bit the complete-data ones, and with
    eb=False so is its output; with EB only the shared priors move it (a little). (Both tables in one memory
    layout: BLAS rounds C- and Fortran-ordered inputs differently, with or without NaN.)"""
    X, cov = data
    c = X.columns[0]

    def fortran(df):
        return pd.DataFrame(np.asfortranarray(df.to_numpy()), index=df.index, columns=df.columns)

    Xf, Xn = fortran(X), fortran(with_nan(X, 0.05, keep=[c]))
    for kw in ({"eb": False}, {"eb": False, "ref_batch": "siteB"}, {"eb": False, "mean_only": True}, {},
               {"parametric": False}):
        full, part = combat(**kw), combat(**kw)
        a, b = full.fit_transform(Xf, cov), part.fit_transform(Xn, cov)
        for attr in ("alpha_", "sigma_", "beta_", "batch_coef_", "gamma_hat_", "delta_hat_"):
            assert np.array_equal(getattr(full, attr)[c], getattr(part, attr)[c]), (kw, attr)
        if kw.get("eb", True):
            assert 0 < np.max(np.abs(a[c] - b[c])) < 0.1 * X[c].std()  # through the priors only
        else:
            assert np.array_equal(a[c].to_numpy(), b[c].to_numpy()), kw


def test_close_to_complete_data_on_simulated_truth():
    """5 % of cells missing at random: ComBat's error against the planted truth stays close to that of
    complete-data ComBat on the same cells (and far below the raw site effects)."""
    sim = fh.datasets.make_multisite(n_subjects=800, n_sites=5, n_features=30, site_age_shift=5.0, random_state=1)
    X, cov, truth = sim.X, sim.covariates, sim.truth.to_numpy()
    Xn = with_nan(X, 0.05, seed=2)
    obs = Xn.notna().to_numpy()
    sd = truth.std(axis=0)

    def rmse(Y):
        R = (np.asarray(Y) - truth) / sd
        R -= np.nanmean(np.where(obs, R, np.nan), axis=0)  # the frame: a per-feature shift (see test_simulation)
        return float(np.sqrt(np.mean(R[obs] ** 2)))

    raw = rmse(X)
    complete = rmse(combat().fit_transform(X, cov))
    partial = rmse(combat().fit_transform(Xn, cov))
    print(f"RMSE / SD: raw {raw:.3f}, complete-data ComBat {complete:.3f}, ComBat with 5 % NaN {partial:.3f}")
    assert partial < 0.3 * raw
    assert partial < 1.05 * complete


# ------------------------------------------------------------------------------------------ where R stops
def empty_data(data):
    """siteC has no value of the first feature, siteA one value of the second."""
    X, cov = data
    Xn = with_nan(X, 0.03, seed=7)
    c0, c1 = X.columns[:2]
    Xn.loc[cov["site"] == "siteC", c0] = np.nan
    a_rows = np.flatnonzero((cov["site"] == "siteA").to_numpy())
    Xn.iloc[a_rows[1:], Xn.columns.get_loc(c1)] = np.nan
    Xn.iloc[a_rows[0], Xn.columns.get_loc(c1)] = X.iloc[a_rows[0], X.columns.get_loc(c1)]
    return Xn, cov, c0, c1


@pytest.mark.parametrize("name", ["parametric", "nonparametric", "mean_only", "mean_only_n", "ref_batch"])
def test_empty_and_single_cells(data, name):
    Xn, cov, c0, c1 = empty_data(data)
    model = combat(**VARIANTS[name])
    with pytest.warns(MissingValueWarning) as rec:
        out = model.fit_transform(Xn, cov)
    text = " ".join(str(w.message) for w in rec)
    assert f"'siteC': [{c0!r}]" in text
    assert (f"'siteA': [{c1!r}]" in text) == (not model.mean_only)
    assert any(w["category"] == "MissingValueWarning" for w in model.fit_warnings_)
    missing_cells = Xn.isna().to_numpy()
    assert np.array_equal(np.isnan(out.to_numpy()), missing_cells) and np.isfinite(out.to_numpy()[~missing_cells]).all()
    assert np.isnan(model.gamma_hat_.loc["siteC", c0]) and np.isnan(model.batch_coef_.loc["siteC", c0])
    assert np.isnan(model.delta_hat_.loc["siteC", c0])
    if not model.mean_only:
        assert np.isnan(model.delta_hat_.loc["siteA", c1]) and np.isfinite(model.gamma_hat_.loc["siteA", c1])
    assert np.isfinite(model.gamma_star_.to_numpy()).all() and (model.delta_star_.to_numpy() > 0).all()
    pri = model.priors_.loc["siteC"]
    if name == "nonparametric":  # the prior sample, unweighted: the mean of siteC's other features
        others = model.gamma_hat_.loc["siteC"].drop(c0)
        assert model.gamma_star_.loc["siteC", c0] == pytest.approx(others.mean(), rel=1e-12)
    else:  # the posterior under no data is the prior
        assert model.gamma_star_.loc["siteC", c0] == pri["gamma_bar"]
        expect = 1.0 if model.mean_only else pri["b_prior"] / (pri["a_prior"] - 1.0)
        assert model.delta_star_.loc["siteC", c0] == pytest.approx(expect, rel=1e-14)
    # the grand mean renormalizes n_i/n over the sites present
    m = model
    present = m.n_obs_[c0] > 0
    if m.ref_batch is None:
        w = m.batch_sizes_[present]
        expect = (m.batch_coef_.loc[present, c0] * w).sum() / w.sum()
        assert m.alpha_[c0] == pytest.approx(expect, rel=1e-12)


def test_single_value_does_not_spread_nan(data):
    """R non-parametric: one value at a site makes every other feature of that site NaN; featharm: finite."""
    Xn, cov, c0, c1 = empty_data(data)
    with pytest.warns(MissingValueWarning):
        model = combat(parametric=False).fit(Xn, cov)
    assert np.isfinite(model.gamma_star_.loc["siteA"]).all() and np.isfinite(model.delta_star_.loc["siteA"]).all()


def test_transform_a_new_subject_of_the_empty_site(data):
    """A value of a site × feature that had no data at fit is adjusted with the site's prior, with a warning."""
    X, cov = data
    Xn, cov, c0, c1 = empty_data(data)
    with pytest.warns(MissingValueWarning):
        model = combat().fit(Xn, cov)
    rows = (cov["site"] == "siteC").to_numpy()
    new = X.loc[rows].iloc[:3]  # complete rows of siteC
    with pytest.warns(MissingValueWarning, match=rf"3 value\(s\) of {c0!r} from 'siteC'.*prior"):
        out = model.transform(new, cov.loc[new.index])
    pri = model.priors_.loc["siteC"]
    a, b = model.alpha_[c0], model.beta_[c0]
    design = np.column_stack([cov.loc[new.index, "age"], cov.loc[new.index, "sex"] == "M"]).astype(float)
    fit = a + design @ b.to_numpy()
    z = (new[c0].to_numpy() - fit) / model.sigma_[c0]
    expect = model.sigma_[c0] * (z - pri["gamma_bar"]) / np.sqrt(pri["b_prior"] / (pri["a_prior"] - 1.0)) + fit
    np.testing.assert_allclose(out[c0].to_numpy(), expect, rtol=1e-13)
    # the other rows and features: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.transform(X.loc[~rows].iloc[:5], cov.loc[X.index[~rows][:5]])


def test_errors_name_sites_and_features(data):
    X, cov = data
    Xn, cov, c0, c1 = empty_data(data)
    with pytest.raises(MissingValueError, match=rf"'siteA' × {c1!r} \(1\).*'siteC' × {c0!r} \(0\)"):
        combat(eb=False).fit(Xn, cov)
    with pytest.raises(MissingValueError, match=rf"'siteC' × {c0!r} \(0\)") as ei:
        combat(eb=False, mean_only=True).fit(Xn, cov)
    assert "'siteA'" not in str(ei.value)
    with pytest.raises(BatchError, match=rf"reference batch 'siteC'.*{c0!r}"):
        combat(ref_batch="siteC").fit(Xn, cov)
    one_site = X.copy()
    one_site.loc[cov["site"] != "siteB", X.columns[4]] = np.nan
    with pytest.raises(MissingValueError, match=rf"fewer than 2 batches.*{X.columns[4]!r}"):
        combat().fit(one_site, cov)
    few = X.copy()
    few[X.columns[5]] = np.nan
    for s in ("siteA", "siteB"):
        few.loc[few.index[(cov["site"] == s).to_numpy()][:2], X.columns[5]] = 1.0
    with pytest.raises(MissingValueError, match=rf"fewer observed values.*{X.columns[5]!r}: 4 observed"):
        combat().fit(few, cov)


def test_rank_deficient_on_observed_rows(data):
    X, cov = data
    Xn = X.copy()
    c = X.columns[2]
    Xn.loc[(cov["sex"] == "M").to_numpy(), c] = np.nan  # the sex column is all 0 on c's observed rows
    with pytest.raises(ConfoundingError, match=rf"rank deficient.*{c!r}.*'sex\[T.M\]'"):
        combat().fit(Xn, cov)


def test_constant_where_observed_is_passed_through(data):
    X, cov = data
    Xn = with_nan(X, 0.05, seed=3)
    c = X.columns[1]
    Xn[c] = Xn[c].where(Xn[c].isna(), 7.0)
    with pytest.warns(ConstantFeatureWarning, match=repr(c)):
        out = combat().fit_transform(Xn, cov)
    assert np.array_equal(out[c].to_numpy(), Xn[c].to_numpy(), equal_nan=True)


def test_compat_sva_rescales_every_feature_once_any_cell_is_missing(data):
    """sva's missing-value path: sigma^2 over n_v - 1 for every feature, the complete ones included."""
    X, cov = data
    c = X.columns[0]
    Xn = with_nan(X, 0.05, keep=[c])
    a, b = combat().fit(Xn, cov), combat(compat="sva").fit(Xn, cov)
    n_v = a.n_obs_.sum()
    np.testing.assert_allclose(b.sigma_ ** 2, a.sigma_ ** 2 * n_v / (n_v - 1), rtol=1e-12)
    np.testing.assert_allclose(b.alpha_, a.alpha_, rtol=1e-13)


def test_compat_sva_with_ref_batch_is_an_error(data):
    X, cov = data
    with pytest.raises(InputError, match="compat='sva'.*reference batch"):
        combat(compat="sva", ref_batch="siteA").fit(X, cov)


def test_rescaled_features_with_nan(data):
    """Features far outside 2^±64 are computed on exactly rescaled copies, NaN cells included."""
    X, cov = data
    Xn = with_nan(X, 0.05, seed=9)
    a = combat().fit_transform(Xn, cov)
    b = combat().fit_transform(Xn * 1e-30, cov)
    np.testing.assert_allclose(b.to_numpy() * 1e30, a.to_numpy(), rtol=1e-12)


def test_columns_in_another_order_at_transform(data):
    X, cov = data
    Xn = with_nan(X, 0.05, seed=5)
    model = combat().fit(Xn, cov)
    cols = list(reversed(Xn.columns))
    out = model.transform(Xn[cols], cov)
    assert list(out.columns) == cols
    assert np.array_equal(out.to_numpy(), model.transform(Xn, cov)[cols].to_numpy(), equal_nan=True)


# ------------------------------------------------------------------------------------------------ new sites
@pytest.mark.parametrize("name", ["parametric", "nonparametric", "mean_only", "no_eb"])
def test_new_sites_estimate_with_nan(data, name):
    X, cov = data
    Xn = with_nan(X, 0.06, seed=11)
    seen = cov["site"] != "siteD"
    model = combat(**VARIANTS[name]).fit(Xn[seen], cov[seen])
    out = model.transform(Xn, cov, new_sites="estimate")
    missing_cells = Xn.isna().to_numpy()
    assert np.array_equal(np.isnan(out.to_numpy()), missing_cells)
    # rows of seen sites come out exactly as with new_sites="error"
    assert np.array_equal(out[seen].to_numpy(), model.transform(Xn[seen], cov[seen]).to_numpy(), equal_nan=True)
    if name == "no_eb":  # the new site's own moments over each feature's observed rows: mean 0, variance 1
        new = ~seen
        fit = model.alpha_.to_numpy() + np.column_stack(
            [cov.loc[new, "age"], cov.loc[new, "sex"] == "M"]).astype(float) @ model.beta_.to_numpy()
        z = (out[new].to_numpy() - fit) / model.sigma_.to_numpy()
        np.testing.assert_allclose(np.nanmean(z, axis=0), 0.0, atol=1e-12)
        np.testing.assert_allclose(np.nanvar(z, axis=0, ddof=1), 1.0, rtol=1e-12)


def test_new_site_without_nan_in_a_model_fitted_with_nan(data):
    X, cov = data
    Xn = with_nan(X, 0.06, seed=12)
    seen = cov["site"] != "siteD"
    model = combat().fit(Xn[seen], cov[seen])
    a = model.transform(X[~seen], cov[~seen], new_sites="estimate")
    assert np.isfinite(a.to_numpy()).all()


# ---------------------------------------------------------------------------------------------- model files
@pytest.mark.parametrize("name", list(VARIANTS))
def test_save_load_round_trip(data, tmp_path, name):
    Xn, cov, c0, c1 = empty_data(data)
    kw = VARIANTS[name]
    if kw.get("eb") is False:
        Xn = with_nan(data[0], 0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingValueWarning)
        model = combat(**kw).fit(Xn, cov)
    path = tmp_path / "m.fhm"
    model.save(path)
    with zipfile.ZipFile(path) as zf:
        assert "arrays/n_obs.npy" in zf.namelist()
    loaded = fh.load_model(path)
    for attr in ("n_obs_", "gamma_hat_", "delta_hat_", "batch_coef_", "gamma_star_", "delta_star_", "priors_",
                 "alpha_", "sigma_"):
        assert getattr(loaded, attr).equals(getattr(model, attr)), attr
    assert loaded.fit_warnings_ == model.fit_warnings_
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingValueWarning)
        assert np.array_equal(loaded.transform(Xn, cov).to_numpy(), model.transform(Xn, cov).to_numpy(),
                              equal_nan=True)


def test_complete_data_model_file_has_no_n_obs(data, tmp_path):
    X, cov = data
    combat().fit(X, cov).save(tmp_path / "m.fhm")
    with zipfile.ZipFile(tmp_path / "m.fhm") as zf:
        assert "arrays/n_obs.npy" not in zf.namelist()


def test_models_saved_before_apply_to_data_with_nan():
    """A file written before missing values were supported loads, and transforms NaN cells cell by cell."""
    model = fh.load_model(DATA / "models_v1" / "combat.fhm")
    assert not hasattr(model, "n_obs_")
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(2.5, 0.3, (6, model.n_features_in_)), columns=model.feature_names_in_)
    cov = pd.DataFrame({model.batch: [model.batches_[k % len(model.batches_)] for k in range(6)]})
    for v in model.design_.variables:
        cov[v] = 50.0 if v == "age" else "F"
    X.iloc[1, 2] = np.nan
    out = model.transform(X, cov)
    assert np.array_equal(np.isnan(out.to_numpy()), X.isna().to_numpy())


def _rewrite(path, out, name, fn):
    import io

    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == f"arrays/{name}.npy":
                a = np.load(io.BytesIO(data))
                buf = io.BytesIO()
                np.save(buf, fn(a.copy()))
                data = buf.getvalue()
            zout.writestr(info, data)


def test_damaged_nan_estimates_are_refused(data, tmp_path):
    """NaN is allowed in gamma_hat and batch_coef only where n_obs is 0."""
    Xn, cov, c0, c1 = empty_data(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingValueWarning)
        model = combat().fit(Xn, cov)
    path = tmp_path / "m.fhm"
    model.save(path)
    fh.load_model(path)  # the NaN of siteC x c0 are where n_obs is 0: fine

    def put_nan(a):
        a[0, 0] = np.nan
        return a

    for name in ("gamma_hat", "batch_coef"):
        bad = tmp_path / f"bad_{name}.fhm"
        _rewrite(path, bad, name, put_nan)
        with pytest.raises(ModelFileError, match=rf"'{name}' holds nan.*NaN only where"):
            fh.load_model(bad)
    bad = tmp_path / "bad_n_obs.fhm"
    _rewrite(path, bad, "n_obs", lambda a: np.where(a > 0, a + 0.5, a))
    with pytest.raises(ModelFileError, match="'n_obs'"):
        fh.load_model(bad)


# ------------------------------------------------------------------------------ missing batch or covariates
def test_missing_covariates_error_names_rows_and_the_option(data):
    X, cov = data
    bad = cov.copy()
    bad.loc[bad.index[[3, 8]], "age"] = np.nan
    with pytest.raises(MissingValueError, match=rf"{bad.index[3]!r}.*missing_covariates='exclude'"):
        combat().fit(X, bad)
    bad = cov.copy()
    bad.loc[bad.index[5], "site"] = None
    with pytest.raises(MissingValueError, match=rf"{bad.index[5]!r}.*missing_covariates='exclude'"):
        combat().fit(X, bad)


def test_missing_covariates_exclude(data, tmp_path):
    X, cov = data
    Xn = with_nan(X, 0.03, seed=1)
    bad = cov.copy()
    bad.loc[bad.index[[3, 8]], "age"] = np.nan
    bad.loc[bad.index[5], "site"] = None
    bad.loc[bad.index[6], "unused"] = None  # a column the model does not use: ignored
    left_out = list(bad.index[[3, 5, 8]])
    model = combat(missing_covariates="exclude")
    with pytest.warns(MissingValueWarning, match=r"3 row\(s\) have a missing 'site' / 'age'") as rec:
        out = model.fit_transform(Xn, bad)
    assert all(str(r) in str(rec[0].message) for r in left_out)
    assert model.excluded_rows_ == left_out
    assert out.index.equals(Xn.index) and out.loc[left_out].isna().all().all()
    keep = ~Xn.index.isin(left_out)
    ref = combat().fit_transform(Xn[keep], cov[keep])
    assert np.array_equal(out[keep].to_numpy(), ref.to_numpy(), equal_nan=True)
    # transform leaves them out too (and warns); saved with the model
    with pytest.warns(MissingValueWarning):
        again = model.transform(Xn, bad)
    assert np.array_equal(again.to_numpy(), out.to_numpy(), equal_nan=True)
    model.save(tmp_path / "m.fhm")
    assert fh.load_model(tmp_path / "m.fhm").excluded_rows_ == left_out
    # a NumPy feature array is matched to the covariates row by row
    with pytest.warns(MissingValueWarning):
        arr = combat(missing_covariates="exclude").fit_transform(Xn.to_numpy(), bad)
    assert np.array_equal(arr.to_numpy(), out.to_numpy(), equal_nan=True)
    # CovBat has the option too (its rows must be complete otherwise)
    with pytest.warns(MissingValueWarning):
        cb = fh.CovBat(batch="site", formula="age + sex", missing_covariates="exclude").fit_transform(X, bad)
    assert cb.loc[left_out].isna().all().all() and np.isfinite(cb[keep].to_numpy()).all()


# ------------------------------------------------------------------------------------ what other families refuse
def test_neuroharmonize_compat_refuses_nan(data):
    """neuroHarmonize takes no missing values, so its compat mode does not invent a behaviour for them;
    the default ComBatGAM fits each feature on its observed rows (tests/models/test_missing_families.py)."""
    X, cov = data
    Xn = X.copy()
    Xn.iloc[4, 2] = np.nan
    with pytest.raises(MissingValueError, match=rf"compat='neuroHarmonize'.*{X.columns[2]!r}.*compat=None"):
        fh.ComBatGAM(batch="site", formula="sex", smooth=["age"], compat="neuroHarmonize").fit(Xn, cov)


# ------------------------------------------------------------------------------------------ the core pieces
def test_patterns_group_identical_columns():
    rng = np.random.default_rng(0)
    mask = rng.random((100, 6)) < 0.1
    mask[:, 4] = mask[:, 1]
    mask[:, 5] = False
    mask[:, 0] = False
    first, inverse = missing.missingness_patterns(mask)
    assert inverse[4] == inverse[1] and inverse[0] == inverse[5]
    assert len(first) == len({tuple(c) for c in mask.T})
    for j in range(6):
        assert np.array_equal(mask[:, first[inverse[j]]], mask[:, j])


def test_eb_parametric_accepts_observed_counts_per_feature():
    """eb.eb_parametric is elementwise in n: an array of counts equals one call per count."""
    from featharm._core import eb

    rng = np.random.default_rng(1)
    g, d = rng.normal(0, 0.5, 8), rng.uniform(0.5, 2.0, 8)
    n = np.array([5.0, 9, 9, 12, 30, 5, 7, 40])
    gs, ds, _, _ = eb.eb_parametric(g, d, d, n, 0.1, 0.3, 5.0, 4.0, tol=1e-14, max_iter=10_000)
    for k in range(8):
        gk, dk, _, _ = eb.eb_parametric(g[k:k + 1], d[k:k + 1], d[k:k + 1], n[k], 0.1, 0.3, 5.0, 4.0, tol=1e-14,
                                        max_iter=10_000)
        np.testing.assert_allclose([gs[k], ds[k]], [gk[0], dk[0]], rtol=1e-12)
