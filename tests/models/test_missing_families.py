"""Missing feature values (NaN cells, ``docs/methods.md`` §1.8) in ComBatGAM, ComBatLS, LongComBat and CovBat.

The available-case rule of ComBat (``test_missing.py``) for every other family: each feature's model (penalized
spline and its smoothing parameter, location-scale model, mixed model) is fitted on the rows where that feature
is observed; NaN in, NaN out; no cell is filled. For each family: (1) a simulation with known truth and 5 % of
the cells missing at random, (2) a feature without NaN is unaffected by the NaN of others except through the
shared priors, (3) NaN positions kept and observed cells finite, also where R would stop, (4) model files, and
(5) complete data take the complete-data path. CovBat's covariance step uses the complete rows only; the rows
with NaN keep their ComBat-step values (tested here too).
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import featharm as fh
from featharm.exceptions import ConfoundingError, MissingValueError, MissingValueWarning, SingleScanWarning

DATA = Path(__file__).resolve().parents[1] / "data"
FAMILIES = ["ComBatGAM", "ComBatLS", "LongComBat", "CovBat"]


def make(family: str, **kw):
    """The family with the formula its simulated data call for (LongComBat: repeated scans)."""
    if family == "ComBatGAM":
        return fh.ComBatGAM(batch="site", formula="sex", smooth=["age"], **kw)
    if family == "ComBatLS":
        # a tight fit tolerance: the alternating fit of a block of features iterates until all of them have
        # converged, so a feature's last digits depend on its block's other features (see test 2)
        return fh.ComBatLS(batch="site", formula="age + sex", scale_formula="age", fit_tol=1e-10, **kw)
    if family == "LongComBat":
        return fh.LongComBat(batch="site", subject="subject", formula="age + sex + time", **kw)
    return fh.CovBat(batch="site", formula="age + sex", **kw)


def quiet(fn, *args, **kwargs):
    """Call ``fn`` with the expected warnings silenced (CovBat's complete rows, sites with one value of a
    feature, subjects left with one scan)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingValueWarning)
        warnings.simplefilter("ignore", SingleScanWarning)
        return fn(*args, **kwargs)


def with_nan(X: pd.DataFrame, frac: float = 0.05, seed: int = 0, keep=()) -> pd.DataFrame:
    """``X`` with a share ``frac`` of its cells missing completely at random (``keep`` columns complete)."""
    rng = np.random.default_rng(seed)
    mask = rng.random(X.shape) < frac
    for c in keep:
        mask[:, X.columns.get_loc(c)] = False
    return X.mask(mask)


def fortran(df: pd.DataFrame) -> pd.DataFrame:
    """The same table in Fortran order (BLAS rounds C- and Fortran-ordered inputs differently)."""
    return pd.DataFrame(np.asfortranarray(df.to_numpy()), index=df.index, columns=df.columns)


@pytest.fixture(scope="module")
def sims():
    cross = fh.datasets.make_multisite(n_subjects=600, n_sites=4, n_features=20, site_age_shift=5.0,
                                       random_state=3)
    long = fh.datasets.make_longitudinal(n_subjects=160, n_sites=3, n_features=16, random_state=5)
    return {"cross": cross, "long": long}


def sim_for(sims, family):
    return sims["long"] if family == "LongComBat" else sims["cross"]


# --------------------------------------------------------------------------- (1) simulation with known truth
# Measured (these seeds): RMSE/SD over the observed cells, raw / complete-data fit / 5 % NaN fit; and the RMS
# difference between the 5 % NaN fit and the complete-data fit on the same cells, in SDs of the truth.
#   ComBatGAM   0.513 / 0.112 / 0.111   diff 0.014
#   ComBatLS    0.513 / 0.118 / 0.117   diff 0.014
#   LongComBat  0.242 / 0.129 / 0.133   diff 0.022   (the subject effects are in the truth's SD)
#   CovBat      0.513 / 0.124 / 0.131   diff 0.078   (64 % of the rows have a NaN among 20 features: they keep
#                                                     their ComBat-step values, without the covariance step)
# Bounds: (share of the raw error left, ratio to the complete-data fit, difference from it in SDs).
BOUNDS = {"ComBatGAM": (0.3, 1.05, 0.03), "ComBatLS": (0.3, 1.05, 0.03), "LongComBat": (0.6, 1.05, 0.04),
          "CovBat": (0.3, 1.10, 0.10)}


@pytest.mark.parametrize("family", FAMILIES)
def test_close_to_complete_data_and_truth(sims, family):
    sim = sim_for(sims, family)
    X, cov, truth = sim.X, sim.covariates, sim.truth.to_numpy()
    Xn = with_nan(X, 0.05, seed=2)
    obs = Xn.notna().to_numpy()
    sd = truth.std(axis=0)

    def rmse(Y):
        R = (np.asarray(Y) - truth) / sd
        R -= np.nanmean(np.where(obs, R, np.nan), axis=0)  # the frame: a per-feature shift (test_simulation)
        return float(np.sqrt(np.mean(R[obs] ** 2)))

    complete_out = make(family).fit_transform(X, cov)
    partial_out = quiet(make(family).fit_transform, Xn, cov)
    raw, complete, partial = rmse(X), rmse(complete_out), rmse(partial_out)
    diff = float(np.sqrt(np.mean(((partial_out.to_numpy() - complete_out.to_numpy()) / sd)[obs] ** 2)))
    print(f"{family}: RMSE/SD raw {raw:.3f}, complete {complete:.3f}, 5 % NaN {partial:.3f}; diff {diff:.3f}")
    assert np.array_equal(np.isnan(partial_out.to_numpy()), ~obs)
    left, ratio, close = BOUNDS[family]
    assert partial < left * raw  # the site effects are removed
    assert partial < ratio * complete  # about as good as with every cell observed
    assert diff < close  # and close to the complete-data fit, cell by cell


# ----------------------------------------------------------------- (2) a complete feature and the others' NaN
@pytest.mark.parametrize("family", ["ComBatGAM", "LongComBat"])
def test_complete_feature_identical_without_shared_priors(sims, family):
    """eb=False: nothing is shared across features, so a feature without NaN comes out bit for bit as in the
    fit of the complete table (its model is fitted by the complete-data computation on the whole table)."""
    sim = sim_for(sims, family)
    X, cov = sim.X, sim.covariates
    c = X.columns[3]
    full = make(family, eb=False)
    part = make(family, eb=False)
    a = full.fit_transform(fortran(X), cov)
    b = part.fit_transform(fortran(with_nan(X, 0.05, seed=1, keep=[c])), cov)
    assert np.array_equal(a[c].to_numpy(), b[c].to_numpy())
    for attr in ("alpha_", "sigma_", "beta_", "batch_coef_", "gamma_hat_", "delta_hat_"):
        assert np.array_equal(getattr(full, attr)[c], getattr(part, attr)[c]), attr
    if family == "ComBatGAM":
        assert full.lambda_[c] == part.lambda_[c] and np.array_equal(full.spline_coef_[c], part.spline_coef_[c])
    else:
        assert np.array_equal(full.random_effects_[c], part.random_effects_[c])


def test_complete_feature_combatls_to_the_fit_tolerance(sims):
    """ComBatLS: the location-scale fit of a block of features iterates until every feature in it has
    converged, so a complete feature's last digits depend on the others' iterations. With eb=False and a
    tight fit_tol it equals its complete-data fit to 1e-10 SD."""
    X, cov = sims["cross"].X, sims["cross"].covariates
    c = X.columns[3]
    a = make("ComBatLS", eb=False).fit_transform(X, cov)
    b = make("ComBatLS", eb=False).fit_transform(with_nan(X, 0.05, seed=1, keep=[c]), cov)
    np.testing.assert_allclose(b[c].to_numpy(), a[c].to_numpy(), rtol=0, atol=1e-10 * X[c].std())


def test_complete_feature_covbat(sims):
    """CovBat: the ComBat step of a complete feature is unaffected (eb=False: bit for bit); in the rows with
    NaN (kept at their ComBat-step values) its output is exactly ComBat's. The covariance step mixes
    features by design, so elsewhere it moves with the others (through the PCA of the complete rows)."""
    X, cov = sims["cross"].X, sims["cross"].covariates
    c = X.columns[3]
    Xn = fortran(with_nan(X, 0.01, seed=1, keep=[c]))
    full = make("CovBat", eb=False).fit(fortran(X), cov)
    part = quiet(make("CovBat", eb=False).fit, Xn, cov)
    for attr in ("alpha_", "sigma_", "beta_", "batch_coef_", "gamma_hat_", "delta_hat_", "gamma_star_"):
        assert np.array_equal(getattr(full, attr)[c], getattr(part, attr)[c]), attr
    out = quiet(part.transform, Xn, cov)
    combat = fh.ComBat(batch="site", formula="age + sex", eb=False).fit_transform(fortran(X), cov)
    rows = Xn.isna().any(axis=1).to_numpy()
    assert rows.sum() > 20
    assert np.array_equal(out.loc[rows, c].to_numpy(), combat.loc[rows, c].to_numpy())


@pytest.mark.parametrize("family", ["ComBatGAM", "ComBatLS", "LongComBat"])
def test_complete_feature_moves_only_through_the_priors(sims, family):
    """With EB a complete feature moves a little: the priors pool the features. (CovBat's PCA mixes the
    features by design: test_complete_feature_covbat.)"""
    sim = sim_for(sims, family)
    X, cov = sim.X, sim.covariates
    c = X.columns[3]
    a = make(family).fit_transform(X, cov)
    b = quiet(make(family).fit_transform, with_nan(X, 0.05, seed=1, keep=[c]), cov)
    assert 0 < np.max(np.abs(a[c] - b[c])) < 0.1 * X[c].std()


# ----------------------------------------------------------------- (3) NaN in, NaN out (and where R stops)
SETTINGS = {
    "ComBatGAM": [{}, {"eb": False}, {"method": "GCV", "ref_batch": "site02"}, {"shared_smoothing": True},
                  {"parametric": False}, {"mean_only": True}],
    "ComBatLS": [{}, {"eb": False}, {"ref_batch": "site02"}, {"parametric": False}, {"mean_only": True}],
    "LongComBat": [{}, {"eb": False}, {"standardize": "msr"}, {"standardize": "marginal"},
                   {"random_slope": True, "time": "time"}],
    "CovBat": [{}, {"eb": False}, {"ref_batch": "site02"}, {"score_eb": True}],
}
CASES = [(f, kw) for f in FAMILIES for kw in SETTINGS[f]]


@pytest.mark.parametrize("family, kw", CASES, ids=[f"{f}-{'-'.join(map(str, kw.values())) or 'default'}"
                                                   for f, kw in CASES])
def test_nan_in_nan_out(sims, family, kw):
    sim = sim_for(sims, family)
    X, cov = sim.X, sim.covariates
    if family == "CovBat":
        X = X.iloc[:, :8]  # fewer features: enough complete rows per site at 5 %
    Xn = with_nan(X, 0.05, seed=4)
    model = make(family, **kw)
    out = quiet(model.fit_transform, Xn, cov)
    nan = Xn.isna().to_numpy()
    assert out.index.equals(Xn.index) and list(out.columns) == list(Xn.columns)
    assert np.array_equal(np.isnan(out.to_numpy()), nan)
    assert np.isfinite(out.to_numpy()[~nan]).all()
    assert np.array_equal(model.n_obs_.to_numpy(), Xn.notna().groupby(cov["site"]).sum().to_numpy())
    if "ref_batch" in kw:  # reference rows returned as given, NaN included
        rows = (cov["site"] == kw["ref_batch"]).to_numpy()
        assert np.array_equal(out[rows].to_numpy(), Xn[rows].to_numpy(), equal_nan=True)
    # transform on the training rows reproduces fit_transform bit for bit
    assert np.array_equal(quiet(model.transform, Xn, cov).to_numpy(), out.to_numpy(), equal_nan=True)


def empty_cells(sim, family):
    """The first site has no value of the first feature, the second site one value of the second."""
    X, cov = sim.X, sim.covariates
    if family == "CovBat":
        X = X.iloc[:, :8]
    Xn = with_nan(X, 0.02, seed=7)
    c0, c1 = X.columns[:2]
    s0, s1 = sorted(cov["site"].unique())[:2]
    Xn.loc[(cov["site"] == s0).to_numpy(), c0] = np.nan
    rows = np.flatnonzero((cov["site"] == s1).to_numpy())
    Xn.iloc[rows[1:], Xn.columns.get_loc(c1)] = np.nan
    Xn.iloc[rows[0], Xn.columns.get_loc(c1)] = X.iloc[rows[0], X.columns.get_loc(c1)]
    return Xn, cov, c0, c1, s0, s1


@pytest.mark.parametrize("family", FAMILIES)
def test_empty_and_single_cells(sims, family):
    """§1.8 where R stops: a site without a feature (its prior fills in) and a site with one value of one."""
    X = sim_for(sims, family).X
    Xn, cov, c0, c1, s0, s1 = empty_cells(sim_for(sims, family), family)
    model = make(family)
    with pytest.warns(MissingValueWarning) as rec:
        out = model.fit_transform(Xn, cov)
    text = " ".join(str(w.message) for w in rec)
    assert f"{s0!r}: [{c0!r}]" in text and f"{s1!r}: [{c1!r}]" in text
    nan = Xn.isna().to_numpy()
    assert np.array_equal(np.isnan(out.to_numpy()), nan) and np.isfinite(out.to_numpy()[~nan]).all()
    assert np.isnan(model.gamma_hat_.loc[s0, c0]) and np.isnan(model.batch_coef_.loc[s0, c0])
    assert np.isnan(model.delta_hat_.loc[s1, c1]) and np.isfinite(model.gamma_hat_.loc[s1, c1])
    assert np.isfinite(model.gamma_star_.to_numpy()).all() and (model.delta_star_.to_numpy() > 0).all()
    pri = model.priors_.loc[s0]
    assert model.gamma_star_.loc[s0, c0] == pri["gamma_bar"]  # the posterior under no data is the prior
    assert model.delta_star_.loc[s0, c0] == pytest.approx(pri["b_prior"] / (pri["a_prior"] - 1.0), rel=1e-14)
    # the grand mean renormalizes the full batch sizes over the sites present
    present = model.n_obs_[c0] > 0
    w = model.batch_sizes_[present]
    assert model.alpha_[c0] == pytest.approx((model.batch_coef_.loc[present, c0] * w).sum() / w.sum(), rel=1e-12)
    # transform: a value of that site and feature is adjusted with the site's prior, with a warning
    rows = (cov["site"] == s0).to_numpy()
    new = X.loc[rows, Xn.columns].iloc[:3]
    with pytest.warns(MissingValueWarning, match=rf"3 value\(s\) of {c0!r} from {s0!r}.*prior"):
        again = model.transform(new, cov.loc[new.index])
    assert np.isfinite(again.to_numpy()).all()


@pytest.mark.parametrize("family", ["ComBatGAM", "ComBatLS", "LongComBat"])
def test_rank_deficient_on_observed_rows(sims, family):
    sim = sim_for(sims, family)
    X, cov = sim.X, sim.covariates
    Xn = X.copy()
    c = X.columns[2]
    Xn.loc[(cov["sex"] == "M").to_numpy(), c] = np.nan  # sex is constant on c's observed rows
    with pytest.raises(ConfoundingError, match=rf"rank deficient.*{c!r}"):
        make(family).fit(Xn, cov)


@pytest.mark.parametrize("family", FAMILIES)
def test_eb_false_needs_two_values_per_site(sims, family):
    Xn, cov, c0, c1, s0, s1 = empty_cells(sim_for(sims, family), family)
    with pytest.raises(MissingValueError, match=rf"{s0!r} × {c0!r} \(0\).*{s1!r} × {c1!r} \(1\)"):
        make(family, eb=False).fit(Xn, cov)


# --------------------------------------------------------------------------------------------- new sites
@pytest.mark.parametrize("family", FAMILIES)
def test_new_sites_estimate_with_nan(sims, family):
    sim = sim_for(sims, family)
    X, cov = sim.X, sim.covariates
    if family == "CovBat":
        X = X.iloc[:, :8]
    Xn = with_nan(X, 0.04, seed=11)
    last = sorted(cov["site"].unique())[-1]
    seen = (cov["site"] != last).to_numpy()
    model = quiet(make(family).fit, Xn[seen], cov[seen])
    out = quiet(model.transform, Xn, cov, new_sites="estimate")
    nan = Xn.isna().to_numpy()
    assert np.array_equal(np.isnan(out.to_numpy()), nan) and np.isfinite(out.to_numpy()[~nan]).all()
    # rows of seen sites come out exactly as with new_sites="error"
    assert np.array_equal(out[seen].to_numpy(), quiet(model.transform, Xn[seen], cov[seen]).to_numpy(),
                          equal_nan=True)


# ------------------------------------------------------------------------------------ (4) model files
@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_round_trip(sims, family, tmp_path):
    Xn, cov, *_ = empty_cells(sim_for(sims, family), family)
    model = quiet(make(family).fit, Xn, cov)
    path = tmp_path / "m.fhm"
    model.save(path)
    with zipfile.ZipFile(path) as zf:
        assert "arrays/n_obs.npy" in zf.namelist()
    loaded = fh.load_model(path)
    for attr in ("n_obs_", "gamma_hat_", "delta_hat_", "batch_coef_", "gamma_star_", "delta_star_", "priors_",
                 "alpha_", "sigma_", "beta_"):
        assert getattr(loaded, attr).equals(getattr(model, attr)), attr
    assert loaded.fit_warnings_ == model.fit_warnings_
    assert np.array_equal(quiet(loaded.transform, Xn, cov).to_numpy(), quiet(model.transform, Xn, cov).to_numpy(),
                          equal_nan=True)


@pytest.mark.parametrize("family, file", [("ComBatGAM", "gam"), ("ComBatLS", "combatls"),
                                          ("LongComBat", "longitudinal"), ("CovBat", "covbat")])
def test_models_saved_before_load_and_take_nan(family, file):
    """Files written before missing values were supported load (no n_obs) and transform NaN cell by cell."""
    model = fh.load_model(DATA / "models_v1" / f"{file}.fhm")
    assert type(model).__name__ == family and not hasattr(model, "n_obs_")
    rng = np.random.default_rng(0)
    n = 6
    X = pd.DataFrame(rng.normal(2.5, 0.3, (n, model.n_features_in_)), columns=model.feature_names_in_)
    cov = pd.DataFrame({model.batch: [model.batches_[k % len(model.batches_)] for k in range(n)]})
    names = set(model.design_.variables) | set(getattr(model, "smooth_terms_", []))
    if family == "ComBatLS":
        names |= set(model.scale_design_.variables)
    if family == "LongComBat":
        cov[model.subject] = [model.subjects_[k] for k in range(n)]
        names |= {model.time} - {None}
    for v in names:
        cov[v] = 50.0 if v == "age" else 1.0 if v == "time" else "F"
    X.iloc[1, 2] = np.nan
    out = quiet(model.transform, X, cov)
    assert np.array_equal(np.isnan(out.to_numpy()), X.isna().to_numpy())


# ---------------------------------------------------------------------------- (5) complete data: no change
@pytest.mark.parametrize("family", FAMILIES)
def test_complete_data_take_the_complete_path(sims, family, monkeypatch):
    """Without NaN nothing of the missing-value code runs (so the numbers are those of before, bit for bit:
    checked against the pre-§1.8 commit when this was written), and the model stores no n_obs."""
    from featharm._core import missing, penalized
    from featharm import mixed
    from featharm.models import longitudinal

    def refuse(*args, **kwargs):
        raise AssertionError("the missing-value path ran on complete data")

    monkeypatch.setattr(missing, "observed_counts", refuse)
    monkeypatch.setattr(penalized, "fit_penalized_observed", refuse)
    monkeypatch.setattr(mixed, "fit_observed", refuse)
    monkeypatch.setattr(longitudinal, "fit_observed", refuse)
    sim = sim_for(sims, family)
    model = make(family)
    out = model.fit_transform(sim.X, sim.covariates)
    assert "n_obs" not in model._arr and not hasattr(model, "n_obs_")
    assert np.isfinite(out.to_numpy()).all()


# ------------------------------------------------------------------------------------- family specifics
def test_gam_smoothing_selected_on_observed_rows(sims):
    """ComBatGAM with eb=False: a feature with NaN is fitted (smoothing parameter included) as if the table
    were its observed rows alone, with the spline basis of all rows (frozen from every row's covariates)."""
    X, cov = sims["cross"].X, sims["cross"].covariates
    c = X.columns[5]
    Xn = with_nan(X, 0.08, seed=9)
    model = make("ComBatGAM", eb=False).fit(Xn, cov)
    rows = Xn[c].notna().to_numpy()
    # the same fit by hand: penalized least squares on the observed rows at the selected lambda
    from featharm._core.penalized import fit_penalized

    B = pd.get_dummies(cov["site"]).to_numpy(dtype=float)
    sex = (cov["sex"] == "M").to_numpy(dtype=float)[:, None]
    Z = model.smooth_bases_[0].transform(cov["age"].to_numpy())
    P = [model.smooth_bases_[0].penalty()]
    coef, lam, edf = fit_penalized(Xn[[c]].to_numpy()[rows], np.hstack([B, sex])[rows], Z[rows], P, ["age"],
                                   method="REML", shared=False, batch_name="site", linear_rtol=1e-10)
    assert lam[0] == pytest.approx(model.lambda_[c], rel=1e-9)
    np.testing.assert_allclose(model.spline_coef_[c].to_numpy(), coef[B.shape[1] + 1:, 0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model.beta_[c].to_numpy(), coef[B.shape[1]:B.shape[1] + 1, 0], rtol=1e-9)


def test_gam_neuroharmonize_compat_refuses_nan(sims):
    X, cov = sims["cross"].X, sims["cross"].covariates
    with pytest.raises(MissingValueError, match="compat='neuroHarmonize'.*compat=None"):
        fh.ComBatGAM(batch="site", formula="sex", smooth=["age"], compat="neuroHarmonize").fit(with_nan(X), cov)


def test_longcombat_subject_with_missing_visits(sims):
    """A subject whose one feature is missing at some visits: that feature's mixed model uses the visits
    where it is observed (the subject's BLUP from those), the other features all visits."""
    sim = sims["long"]
    X, cov = sim.X.copy(), sim.covariates
    c = X.columns[1]
    subj = cov["subject"].value_counts()
    who = subj[subj >= 3].index[:10]
    drop = cov.index[cov["subject"].isin(who)].to_series().groupby(cov["subject"]).head(1)  # each one's first scan
    X.loc[drop.index, c] = np.nan
    model = make("LongComBat", eb=False).fit(X, cov)
    out = model.transform(X, cov)
    assert out.loc[drop.index, c].isna().all() and np.isfinite(out.drop(index=drop.index)[c]).all()
    # the mixed model of the feature alone, its missing scans dropped, is the same (the grand mean is not:
    # it weights the batches by their full sizes, §1.8)
    keep = X[c].notna()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # subjects left with a single scan
        alone = make("LongComBat", eb=False).fit(X.loc[keep, [c]], cov[keep])
    for attr in ("batch_coef_", "beta_", "residual_var_", "ranef_var_", "sigma_"):
        np.testing.assert_allclose(getattr(model, attr)[c], getattr(alone, attr)[c], rtol=1e-7, err_msg=attr)
    np.testing.assert_allclose(model.random_effects_[c].loc[alone.random_effects_.index], alone.random_effects_[c],
                               rtol=0, atol=1e-7 * X[c].std())


def test_covbat_pca_on_complete_rows(sims):
    """CovBat's covariance step is fitted on the complete rows; the rows with NaN keep their ComBat-step
    values; the warning says how many rows that is."""
    X, cov = sims["cross"].X.iloc[:, :8], sims["cross"].covariates
    Xn = with_nan(X, 0.02, seed=3)
    rows = Xn.isna().any(axis=1).to_numpy()
    with pytest.warns(MissingValueWarning, match=rf"{rows.sum()} of {len(X)} rows have missing.*{len(X) - rows.sum()} "
                                                 "complete rows"):
        model = make("CovBat").fit(Xn, cov)
    with pytest.warns(MissingValueWarning, match=rf"{rows.sum()} of {len(X)} rows.*keep their ComBat-step values"):
        out = model.transform(Xn, cov)
    combat = fh.ComBat(batch="site", formula="age + sex").fit_transform(Xn, cov)
    assert np.array_equal(out[rows].to_numpy(), combat[rows].to_numpy(), equal_nan=True)
    # the complete rows: the same as CovBat fitted on them alone, with the ComBat step of all rows
    design = np.column_stack([cov["age"], cov["sex"] == "M"]).astype(float)
    resid = combat - (model.alpha_.to_numpy() + design @ model.beta_.to_numpy())
    np.testing.assert_allclose(model.pca_center_.to_numpy(), resid[~rows].mean().to_numpy(), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(model.pca_scale_.to_numpy(), resid[~rows].std().to_numpy(), rtol=1e-10)
    assert not np.array_equal(out[~rows].to_numpy(), combat[~rows].to_numpy())  # adjusted


def test_covbat_site_without_two_complete_rows(sims):
    """A site with fewer than 2 complete rows has no score model: the covariance step leaves all its rows as
    the ComBat step gives them (a warning names it); a reference batch without them is an error."""
    X, cov = sims["cross"].X.iloc[:, :8], sims["cross"].covariates
    Xn = X.copy()
    site = sorted(cov["site"].unique())[0]
    rows = (cov["site"] == site).to_numpy()
    for k, r in enumerate(np.flatnonzero(rows)[1:]):  # one complete row left at that site, every feature
        Xn.iloc[r, k % X.shape[1]] = np.nan  # still observed in most of its rows
    with pytest.warns(MissingValueWarning) as rec:  # (and the ComBat step's: one value of a feature there)
        model = make("CovBat").fit(Xn, cov)
    assert any(f"{site!r} (1) have fewer than 2 complete rows" in str(w.message) for w in rec)
    assert model.score_gamma_hat_.loc[site].isna().all()
    assert (model.score_gamma_star_.loc[site] == 0).all() and (model.score_delta_star_.loc[site] == 1).all()
    out = quiet(model.transform, Xn, cov)
    combat = quiet(fh.ComBat(batch="site", formula="age + sex").fit_transform, Xn, cov)
    np.testing.assert_allclose(out[rows].to_numpy(), combat[rows].to_numpy(), rtol=1e-13, atol=1e-13)
    with pytest.raises(MissingValueError, match=rf"reference batch {site!r} has 1.*Use ComBat"):
        quiet(make("CovBat", ref_batch=site).fit, Xn, cov)
    # a new site likewise
    seen = ~rows
    model = make("CovBat").fit(X[seen], cov[seen])
    with pytest.warns(MissingValueWarning) as rec:
        new = model.transform(Xn, cov, new_sites="estimate")
    assert any(f"new site {site!r} has 1 row(s) without missing" in str(w.message) for w in rec)
    assert np.isfinite(new[rows].to_numpy()[Xn[rows].notna().to_numpy()]).all()


def test_eb_posterior_with_missing_values_jacobi():
    """LongComBat's fixed Jacobi updates with per-feature counts: an empty cell gets the prior, a single value
    starts from the prior mean of delta^2, the others equal eb_jacobi with their own n."""
    from featharm._core import eb, missing

    rng = np.random.default_rng(2)
    g, d = rng.normal(0, 0.5, 6), rng.uniform(0.5, 2.0, 6)
    n = np.array([0.0, 1, 5, 9, 12, 30])
    d[:2] = np.nan
    g[0] = np.nan
    pri = eb.Priors(np.array([0.1]), np.array([0.3]), np.array([5.0]), np.array([4.0]))
    opts = eb.EBOptions(eb=True, parametric=True, mean_only=False, jacobi_iter=30)
    gs, ds, it, ok = missing.site_posterior(g, d, d, n, pri, 0, opts)
    assert it == 30 and ok
    assert gs[0] == 0.1 and ds[0] == pytest.approx(4.0 / 4.0)
    for k in range(1, 6):
        start = d[k] if np.isfinite(d[k]) else 1.0
        gk, dk = eb.eb_jacobi(g[k:k + 1], np.array([start]), d[k:k + 1], n[k], 0.1, 0.3, 5.0, 4.0, n_iter=30)
        np.testing.assert_allclose([gs[k], ds[k]], [gk[0], dk[0]], rtol=1e-13)


def test_mixed_fit_observed_equals_one_fit_per_feature(sims):
    """featharm.mixed.fit_observed fits every feature whose batches all have observed scans at once (per-feature
    sufficient statistics over its observed rows); it equals fit_random_intercept on each feature's observed
    rows to the profile optimizer's precision (the log-likelihood to 1e-9). A feature with a batch without
    observed scans is fitted on its own with that batch's column left out (NaN coefficient)."""
    from featharm.mixed import fit_observed, fit_random_intercept

    sim = sims["long"]
    cov = sim.covariates
    sites = sorted(cov["site"].unique())
    W = np.column_stack([(cov["site"] == s).to_numpy() for s in sites]
                        + [cov["age"], cov["sex"] == "M", cov["time"]]).astype(float)
    g = np.unique(cov["subject"], return_inverse=True)[1]
    Y = sim.X.to_numpy()
    mask = np.random.default_rng(0).random(Y.shape) < 0.05
    mask[:, 0] = False
    mask[W[:, 1] == 1, 3] = True  # the second site has no scan of feature 3
    fit = fit_observed(Y, W, g, mask, droppable=len(sites))
    assert np.isnan(fit.beta[1, 3]) and np.isfinite(np.delete(fit.beta, 1, axis=0)).all()
    for j in range(Y.shape[1]):
        rows = ~mask[:, j]
        cols = np.ones(W.shape[1], dtype=bool)
        cols[:len(sites)] = W[rows][:, :len(sites)].any(axis=0)
        one = fit_random_intercept(Y[rows][:, [j]], W[rows][:, cols], g[rows])
        np.testing.assert_allclose(fit.beta[cols, j], one.beta[:, 0], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose([fit.sigma2[j], fit.tau2[j]], [one.sigma2[0], one.tau2[0]], rtol=1e-6)
        assert fit.loglik[j] == pytest.approx(one.loglik[0], abs=1e-9)
        np.testing.assert_allclose(fit.blup[:one.blup.shape[0], 0, j], one.blup[:, 0, 0], rtol=0,
                                   atol=1e-6 * Y[:, j].std())
