"""ComBatGAM: life cycle, validation, properties, the spline basis, the CLI, and the mgcv reference.

Data: the shared ``small_cs`` inputs (300 subjects, 20 features, 5 sites, real-valued ages, sex F/M).

The ComBatFamily reference (``tests/reference/outputs/combatgam__comfamily``) is ComBatFamily 0.2.1
``combat_gam``: ``mgcv::gam(y ~ s(age) + sex)`` (thin-plate regression spline, k = 10, GCV.Cp), in R 4.2.2.
featharm fits a cubic B-spline with a second-derivative penalty, so the two agree to the order of the
smoothing difference, not to rounding. Measured: harmonized values differ from mgcv's by 0.0086 sigma
RMS (max 0.10 sigma) with GCV and 0.0104 (max 0.10) with REML, against 0.069 (max 0.85) for linear
ComBat; pooled sigma within 1.1 %.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

import featharm as fh
from featharm.cli import main
from featharm.exceptions import (
    ColumnNotFoundError,
    ConfoundingError,
    FormulaError,
    InputError,
    MissingValueError,
    OutOfRangeError,
)
from featharm._core.splines import SplineBasis

REF = Path(__file__).parents[1] / "reference"
INPUTS = REF / "inputs" / "small_cs"
MGCV = REF / "outputs" / "combatgam__comfamily"

# The small_cs/small_long features are 2 volumes and thicknesses: with the default priors="auto" the 2 volumes
# take the pooled prior (FeatureGroupWarning); these tests check other things (R parity passes priors="pool").
pytestmark = pytest.mark.filterwarnings("ignore::featharm.exceptions.FeatureGroupWarning")


@pytest.fixture(scope="module")
def data():
    cov = pd.read_csv(INPUTS / "covars.csv").set_index("subject_id")
    X = pd.read_csv(INPUTS / "features.csv")
    X.index = cov.index
    return X, cov


@pytest.fixture(scope="module")
def fitted(data):
    X, cov = data
    hm = fh.ComBatGAM(formula="sex", smooth=["age"])
    return hm, hm.fit_transform(X, cov)


def _rms(a):
    return float(np.sqrt(np.mean(np.square(a))))


# ---------------------------------------------------------------------------------------- reference
@pytest.mark.reference
@pytest.mark.parametrize("method, rms_tol", [("GCV", 0.015), ("REML", 0.02)])
def test_mgcv_reference(data, method, rms_tol):
    X, cov = data
    ref = pd.read_csv(MGCV / "harmonized.csv")[X.columns].to_numpy()
    ref_sigma = pd.read_csv(MGCV / "sigma.csv").set_index("feature")["sigma"][X.columns].to_numpy()
    hm = fh.ComBatGAM(formula="sex", smooth="age", method=method, priors="pool")  # R pools the features
    H = hm.fit_transform(X, cov).to_numpy()
    d = (H - ref) / hm.sigma_.to_numpy()
    lin = fh.ComBat(formula="age + sex", priors="pool")
    d_lin = (lin.fit_transform(X, cov).to_numpy() - ref) / lin.sigma_.to_numpy()
    assert _rms(d) <= rms_tol and np.abs(d).max() <= 0.15
    assert _rms(d) < _rms(d_lin) / 4  # much closer to mgcv than the linear model is
    np.testing.assert_allclose(hm.sigma_.to_numpy(), ref_sigma, rtol=0.02)
    g_ref = pd.read_csv(MGCV / "gamma_star.csv").set_index("batch")[X.columns].to_numpy()
    assert np.abs(hm.gamma_star_.to_numpy() - g_ref).max() <= 0.05


# ---------------------------------------------------------------------------------------- life cycle
def test_attributes(fitted, data):
    hm, H = fitted
    X, cov = data
    assert H.shape == X.shape and H.index.equals(X.index) and list(H.columns) == list(X.columns)
    assert hm.smooth_terms_ == ["age"]
    assert list(hm.beta_.index) == ["sex[T.M]"]
    assert hm.spline_coef_.shape == (9, 20)  # df=10 cubic B-splines without the constant
    assert hm.lambda_.shape == (20,) and (hm.lambda_ > 0).all()
    assert ((hm.edf_ >= 1 - 1e-9) & (hm.edf_ <= 9 + 1e-9)).all()
    b = hm.smooth_bases_[0]
    assert b.bounds == (cov.age.min(), cov.age.max())
    np.testing.assert_allclose(b.knots[4:-4], np.percentile(cov.age, 100 * np.arange(1, 7) / 7))


def test_transform_train_equals_fit_transform(fitted, data):
    hm, H = fitted
    X, cov = data
    pd.testing.assert_frame_equal(hm.transform(X, cov), H, check_exact=True)


def test_two_fits_identical(data):
    X, cov = data
    a = fh.ComBatGAM(formula="sex", smooth="age").fit_transform(X, cov)
    b = fh.ComBatGAM(formula="sex", smooth="age").fit_transform(X, cov)
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_save_load_round_trip(fitted, data, tmp_path):
    hm, H = fitted
    X, cov = data
    hm.save(tmp_path / "gam.fhm")
    back = fh.load_model(tmp_path / "gam.fhm")
    assert isinstance(back, fh.ComBatGAM)
    pd.testing.assert_frame_equal(back.transform(X, cov), H, check_exact=True)
    np.testing.assert_array_equal(back.smooth_bases_[0].knots, hm.smooth_bases_[0].knots)
    pd.testing.assert_series_equal(back.lambda_, hm.lambda_)


def test_clone_and_params(data):
    hm = fh.ComBatGAM(formula="sex", smooth="age", method="GCV")
    c = clone(hm)
    assert c.get_params() == hm.get_params()


def test_inputs_not_modified(data):
    X, cov = data
    X0, c0 = X.copy(), cov.copy()
    fh.ComBatGAM(formula="sex", smooth="age").fit_transform(X, cov)
    pd.testing.assert_frame_equal(X, X0)
    pd.testing.assert_frame_equal(cov, c0)


def test_smooth_in_formula_is_the_same(fitted, data):
    hm, H = fitted
    X, cov = data
    H2 = fh.ComBatGAM(formula="sex + s(age)").fit_transform(X, cov)
    pd.testing.assert_frame_equal(H2, H, check_exact=True)


def test_shared_smoothing(data):
    X, cov = data
    hm = fh.ComBatGAM(formula="sex", smooth="age", shared_smoothing=True).fit(X, cov)
    assert hm.lambda_.nunique() == 1


def test_gcv_and_reml_differ_but_close(fitted, data):
    hm, H = fitted
    X, cov = data
    H2 = fh.ComBatGAM(formula="sex", smooth="age", method="GCV").fit_transform(X, cov)
    d = (H2 - H).abs().to_numpy() / hm.sigma_.to_numpy()
    assert 0 < d.max() < 0.2


def test_two_smooth_terms(data):
    X, cov = data
    cov2 = cov.assign(bmi=np.random.default_rng(0).normal(25, 4, len(cov)))
    hm = fh.ComBatGAM(formula="sex", smooth=["age", "bmi"])
    H = hm.fit_transform(X, cov2)
    assert hm.spline_coef_.shape == (18, 20) and np.isfinite(H.to_numpy()).all()
    pd.testing.assert_frame_equal(hm.transform(X, cov2), H, check_exact=True)


def test_penalty_limit_is_linear_combat(data):
    """With every smoothing parameter at infinity the spline is a straight line: linear ComBat."""
    X, cov = data
    from featharm._core import penalized as gam

    orig = gam.select_lambda
    gam.select_lambda = lambda d2, c2, *a, **k: np.full(c2.shape[1], 1e12 * d2.max())
    try:
        H = fh.ComBatGAM(formula="sex", smooth="age").fit_transform(X, cov)
    finally:
        gam.select_lambda = orig
    L = fh.ComBat(formula="age + sex").fit_transform(X, cov)
    np.testing.assert_allclose(H.to_numpy(), L.to_numpy(), atol=1e-6)


# ---------------------------------------------------------------------------------------- properties
def test_row_permutation(fitted, data):
    hm, H = fitted
    X, cov = data
    perm = np.random.default_rng(1).permutation(len(X))
    Hp = fh.ComBatGAM(formula="sex", smooth="age").fit_transform(X.iloc[perm], cov.iloc[perm])
    np.testing.assert_allclose(Hp.loc[X.index].to_numpy(), H.to_numpy(), rtol=0, atol=1e-9)


def test_site_relabelling(fitted, data):
    hm, H = fitted
    X, cov = data
    names = {s: f"z{9 - i}" for i, s in enumerate(sorted(cov.site.unique()))}  # reverses the sorted order
    H2 = fh.ComBatGAM(formula="sex", smooth="age").fit_transform(X, cov.assign(site=cov.site.map(names)))
    np.testing.assert_allclose(H2.to_numpy(), H.to_numpy(), rtol=0, atol=1e-9)


def test_affine_equivariance(fitted, data):
    hm, H = fitted
    X, cov = data
    a = np.linspace(0.5, 3, X.shape[1])
    b = np.linspace(-10, 10, X.shape[1])
    H2 = fh.ComBatGAM(formula="sex", smooth="age").fit_transform(X * a + b, cov)
    np.testing.assert_allclose(H2.to_numpy(), H.to_numpy() * a + b, rtol=1e-9, atol=1e-9)


def test_subset_at_transform(fitted, data):
    hm, H = fitted
    X, cov = data
    rows = X.index[::7]
    pd.testing.assert_frame_equal(hm.transform(X.loc[rows], cov.loc[rows]), H.loc[rows], check_exact=False,
                                  rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------- range
def test_out_of_range_is_an_error(fitted, data):
    hm, _ = fitted
    X, cov = data
    lo, hi = hm.smooth_bases_[0].bounds
    old = cov.iloc[:3].assign(age=[hi + 5.0, 50.0, 50.0])
    with pytest.raises(OutOfRangeError, match=r"'age'.*outside.*\[.*\].*" + f"{hi + 5:g}"):
        hm.transform(X.iloc[:3], old)


def test_linear_extrapolation(fitted, data):
    hm, _ = fitted
    X, cov = data
    ext = clone(hm).set_params(extrapolate="linear").fit(X, cov)
    lo, hi = ext.smooth_bases_[0].bounds
    f = ext.smooth_effect("age", [hi - 1e-6, hi, hi + 1, hi + 2, lo - 1, lo - 2, lo]).to_numpy()
    np.testing.assert_allclose(f[3] - f[2], f[2] - f[1], rtol=1e-9, atol=1e-12)  # straight beyond hi
    np.testing.assert_allclose(f[5] - f[4], f[4] - f[6], rtol=1e-9, atol=1e-12)  # straight below lo
    np.testing.assert_allclose(f[0], f[1], atol=1e-5)  # continuous at the boundary
    rows = cov.iloc[:2].assign(age=[hi + 3.0, lo - 3.0])
    out = ext.transform(X.iloc[:2], rows)
    assert np.isfinite(out.to_numpy()).all()
    # set after fitting: the saved model can be switched to extrapolation
    hm2 = clone(hm).fit(X, cov)
    hm2.set_params(extrapolate="linear")
    pd.testing.assert_frame_equal(hm2.transform(X.iloc[:2], rows), out, check_exact=True)


def test_smooth_bounds(data):
    X, cov = data
    hm = fh.ComBatGAM(formula="sex", smooth="age", smooth_bounds={"age": (0, 120)}).fit(X, cov)
    assert hm.smooth_bases_[0].bounds == (0.0, 120.0)
    out = hm.transform(X.iloc[:1], cov.iloc[:1].assign(age=110.0))
    assert np.isfinite(out.to_numpy()).all()
    with pytest.raises(InputError, match="must contain its values"):
        fh.ComBatGAM(smooth="age", smooth_bounds={"age": (40, 60)}).fit(X, cov)


# ---------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("kwargs, exc, match", [
    ({}, InputError, "at least one smooth term"),
    ({"smooth": 3}, InputError, "'smooth' parameter"),
    ({"smooth": "age", "method": "ML"}, InputError, "'method' parameter"),
    ({"smooth": "age", "df": 3}, InputError, "'df' parameter"),
    ({"smooth": "age", "extrapolate": "yes"}, InputError, "'extrapolate' parameter"),
    ({"smooth": "age", "compat": "neuroHarmonize", "random_state": None}, InputError, "integer random_state"),
    ({"smooth": "age", "compat": "neuroHarmonize", "shared_smoothing": True}, InputError, "one or the other"),
    ({"smooth": "age", "compat": "neuroHarmonize", "df": 12}, InputError, "df=10"),
    ({"smooth": "age", "formula": "age + sex"}, FormulaError, "both as smooth terms"),
    ({"smooth": "age", "formula": "s(age) + sex"}, InputError, "more than once"),
    ({"formula": "s(age):sex"}, FormulaError, "top-level s\\(column\\)"),
    ({"smooth": "height"}, ColumnNotFoundError, "'height'"),
    ({"smooth": "sex"}, InputError, "must be a numeric column"),
    ({"smooth": "age", "smooth_bounds": {"bmi": (0, 1)}}, InputError, "not smooth terms"),
    ({"smooth": "age", "smooth_bounds": {"age": ("0", "100")}}, InputError, "finite numbers or None"),
    ({"smooth": "age", "smooth_bounds": {"age": (0,)}}, InputError, "finite numbers or None"),
    ({"smooth": "age", "smooth_bounds": {"age": (0, float("inf"))}}, InputError, "finite numbers or None"),
])
def test_bad_parameters(data, kwargs, exc, match):
    X, cov = data
    with pytest.raises(exc, match=match):
        fh.ComBatGAM(**kwargs).fit(X, cov)


def test_missing_smooth_values(data):
    X, cov = data
    bad = cov.copy()
    bad.loc[bad.index[4], "age"] = np.nan
    with pytest.raises(MissingValueError, match="'age'.*" + bad.index[4]):
        fh.ComBatGAM(smooth="age").fit(X, bad)


def test_smooth_term_confounded_with_site(data):
    X, cov = data
    site_age = cov.groupby("site")["age"].transform("mean")
    with pytest.raises(ConfoundingError, match="'age'|\\['age'\\]"):
        fh.ComBatGAM(smooth="age").fit(X, cov.assign(age=site_age))


def test_constant_smooth_term(data):
    X, cov = data
    with pytest.raises(InputError, match="constant"):
        fh.ComBatGAM(smooth="age").fit(X, cov.assign(age=40.0))


# ---------------------------------------------------------------------------------------- spline basis
def test_spline_basis_against_statsmodels():
    """Same basis and penalty as statsmodels' BSplines(df=10, degree=3) (neuroHarmonize's recipe)."""
    from statsmodels.gam.api import BSplines

    x = np.random.default_rng(3).uniform(20, 90, 400)
    sm = BSplines(x, df=10, degree=3).smoothers[0]
    b = SplineBasis.from_data(x, "age")
    np.testing.assert_array_equal(b.knots, sm.knots)
    np.testing.assert_allclose(b.transform(x), sm.basis, rtol=0, atol=1e-14)
    np.testing.assert_allclose(b.penalty(), sm.cov_der2, rtol=1e-10, atol=1e-14)
    back = SplineBasis.from_dict(b.to_dict())
    np.testing.assert_array_equal(back.transform(x), b.transform(x))


def test_tied_quantile_knots_are_merged():
    x = np.repeat([20.0, 30.0, 40.0, 80.0], 50)
    b = SplineBasis.from_data(x, "age")
    assert np.all(np.diff(np.unique(b.knots)) > 0) and b.n_columns < 9


# ---------------------------------------------------------------------------------------- CLI
def test_cli_harmonize_and_apply(data, tmp_path, fitted):
    hm, H = fitted
    X, cov = data
    table = pd.concat([cov, X], axis=1).reset_index()
    table.to_csv(tmp_path / "in.csv", index=False)
    rc = main(["harmonize", str(tmp_path / "in.csv"), "--batch", "site", "--method", "gam", "--smooth", "age",
               "--formula", "sex", "--id", "subject_id", "--out", str(tmp_path / "out.csv"),
               "--save-model", str(tmp_path / "m.fhm"), "--quiet"])
    assert rc == 0
    out = pd.read_csv(tmp_path / "out.csv").set_index("subject_id")
    np.testing.assert_allclose(out[X.columns].to_numpy(), H.to_numpy(), rtol=1e-12, atol=1e-12)
    assert (out["age"] == cov["age"]).all()  # the smooth column is not harmonized
    rc = main(["apply", str(tmp_path / "m.fhm"), str(tmp_path / "in.csv"), "--id", "subject_id",
               "--out", str(tmp_path / "applied.csv"), "--quiet"])
    assert rc == 0
    applied = pd.read_csv(tmp_path / "applied.csv").set_index("subject_id")
    np.testing.assert_allclose(applied[X.columns].to_numpy(), H.to_numpy(), rtol=1e-12, atol=1e-12)


def test_cli_out_of_range_and_extrapolate(data, tmp_path, capsys):
    X, cov = data
    fh.ComBatGAM(formula="sex", smooth="age").fit(X, cov).save(tmp_path / "m.fhm")
    new = pd.concat([cov, X], axis=1).reset_index().iloc[:3].assign(age=[200.0, 50.0, 50.0])
    new.to_csv(tmp_path / "new.csv", index=False)
    args = ["apply", str(tmp_path / "m.fhm"), str(tmp_path / "new.csv"), "--id", "subject_id",
            "--out", str(tmp_path / "o.csv"), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "'age'" in err and "200" in err and "extrapolate" in err
    assert main(args + ["--extrapolate", "linear"]) == 0


def test_cli_smooth_needs_gam(data, tmp_path, capsys):
    X, cov = data
    pd.concat([cov, X], axis=1).reset_index().to_csv(tmp_path / "in.csv", index=False)
    rc = main(["harmonize", str(tmp_path / "in.csv"), "--batch", "site", "--smooth", "age", "--id", "subject_id",
               "--out", str(tmp_path / "o.csv"), "--quiet"])
    assert rc == 2 and "--method gam" in capsys.readouterr().err


def test_new_sites_estimate(data):
    """§5.7 through the base class: the spline part is part of the frozen model for a new site too."""
    X, cov = data
    seen = (cov.site != "site05").to_numpy()
    hm = fh.ComBatGAM(formula="sex", smooth="age", extrapolate="linear").fit(X[seen], cov[seen])
    with pytest.raises(fh.exceptions.UnseenBatchError):
        hm.transform(X, cov)
    out = hm.transform(X, cov, new_sites="estimate")
    pd.testing.assert_frame_equal(out[seen], hm.transform(X[seen], cov[seen]), check_exact=True)
    # the new site's standardized mean is removed: its harmonized residuals average ~0 per feature
    new = ~seen
    D = hm._preserved_design(type("P", (), {"covariates": cov[new], "Y": X[new].to_numpy(), "X":
                                            hm.design_.transform(cov[new])})())
    resid = (out[new].to_numpy() - D @ hm._preserved_coef(slice(None))) / hm.sigma_.to_numpy()
    raw = (X[new].to_numpy() - D @ hm._preserved_coef(slice(None))) / hm.sigma_.to_numpy()
    assert np.abs(resid.mean(axis=0)).mean() < np.abs(raw.mean(axis=0)).mean() / 3


def test_degenerate_features_pass_through(data):
    """A constant feature and one made of site means only: no numpy warning, passed through unchanged."""
    X, cov = data
    X2 = X.assign(const=3.0, site_only=cov["site"].map({s: i for i, s in enumerate(sorted(cov.site.unique()))}) * 1.0)
    with pytest.warns(fh.exceptions.ConstantFeatureWarning, match="const"):
        out = fh.ComBatGAM(formula="sex", smooth="age").fit_transform(X2, cov)
    assert (out["const"] == 3.0).all() and (out["site_only"] == X2["site_only"]).all()
    np.testing.assert_allclose(out[X.columns].to_numpy(),
                               fh.ComBatGAM(formula="sex", smooth="age").fit_transform(X, cov).to_numpy(),
                               atol=1e-9)


def test_reference_batch_rows_unchanged(data):
    X, cov = data
    hm = fh.ComBatGAM(formula="sex", smooth="age", ref_batch="site02")
    out = hm.fit_transform(X, cov)
    rows = (cov.site == "site02").to_numpy()
    pd.testing.assert_frame_equal(out[rows], X[rows], check_exact=True)
    assert (hm.gamma_star_.loc["site02"] == 0).all() and not np.allclose(out[~rows], X[~rows])


def test_no_eb_moments(data):
    """eb=False: re-standardized with the stored fit, every site has mean 0 and variance 1 (§1.7)."""
    X, cov = data
    hm = fh.ComBatGAM(formula="sex", smooth="age", eb=False)
    out = hm.fit_transform(X, cov)
    P = type("P", (), {"covariates": cov, "Y": X.to_numpy(), "X": hm.design_.transform(cov)})()
    z = (out.to_numpy() - hm._preserved_design(P) @ hm._preserved_coef(slice(None))) / hm.sigma_.to_numpy()
    for s in cov.site.unique():
        zs = z[(cov.site == s).to_numpy()]
        np.testing.assert_allclose(zs.mean(axis=0), 0, atol=1e-10)
        np.testing.assert_allclose(zs.var(axis=0, ddof=1), 1, rtol=1e-10)
