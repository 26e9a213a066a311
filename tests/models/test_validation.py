"""Bad input gets a clear, named error (or a documented handling), never silent NaN or garbage.

Every case of the input-validation issue is here, on small simulated data (3 sites of 40/57/23
subjects, 6 features), so that the expected error is the only thing that can go wrong.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest

import featharm as fh
from featharm.exceptions import (
    AlignmentError,
    BatchError,
    CollinearityWarning,
    ColumnNotFoundError,
    ConfoundingError,
    ConstantFeatureWarning,
    ConvergenceWarning,
    DuplicateIndexError,
    FeatharmError,
    FeatharmWarning,
    FormulaError,
    InputError,
    MissingValueError,
    ModelFileError,
    NonNumericFeatureError,
    NotFittedError,
    SmallBatchWarning,
    UnseenBatchError,
    UnseenLevelError,
)

FORMULA = "age + sex"


@pytest.fixture(scope="module")
def sim():
    s = fh.datasets.make_multisite(n_subjects=120, n_sites=3, n_features=6, random_state=0)
    counts = s.covariates["site"].value_counts()
    assert counts.min() >= 10  # no SmallBatchWarning unless a test asks for one
    return s


@pytest.fixture
def X(sim):
    return sim.X.copy()


@pytest.fixture
def cov(sim):
    return sim.covariates.copy()


def _set(df: pd.DataFrame, row: int, col: str, value) -> pd.DataFrame:
    df = df.copy()
    if not pd.api.types.is_object_dtype(df[col]) and isinstance(value, str):
        df[col] = df[col].astype(object)
    df.iloc[row, df.columns.get_loc(col)] = value
    return df


# --------------------------------------------------------------------------------------- exception classes
@pytest.mark.parametrize(
    "exc, bases",
    [
        (InputError, (ValueError,)),
        (ColumnNotFoundError, (ValueError, KeyError)),
        (NonNumericFeatureError, (ValueError, TypeError)),
        (MissingValueError, (ValueError,)),
        (DuplicateIndexError, (ValueError,)),
        (AlignmentError, (ValueError,)),
        (BatchError, (ValueError,)),
        (UnseenBatchError, (BatchError, ValueError)),
        (UnseenLevelError, (ValueError,)),
        (ConfoundingError, (ValueError,)),
        (FormulaError, (ValueError,)),
        (NotFittedError, (ValueError, AttributeError)),
        (ModelFileError, (ValueError,)),
    ],
)
def test_errors_subclass_builtins(exc, bases):
    assert issubclass(exc, FeatharmError)
    for base in bases:
        assert issubclass(exc, base), f"{exc.__name__} should subclass {base.__name__}"


@pytest.mark.parametrize("w", [ConvergenceWarning, SmallBatchWarning, ConstantFeatureWarning, CollinearityWarning])
def test_warnings_subclass_userwarning(w):
    assert issubclass(w, FeatharmWarning) and issubclass(w, UserWarning)


def test_column_not_found_message_is_not_quoted():
    # KeyError.__str__ would wrap the message in quotes; the CLI prints str(exc)
    assert str(ColumnNotFoundError("no column 'x'")) == "no column 'x'"


# --------------------------------------------------------------------------------------- batches
def test_fewer_than_two_sites(X, cov):
    cov["site"] = "onlysite"
    with pytest.raises(BatchError, match=r"at least 2 batches") as ei:
        fh.ComBat(formula=FORMULA).fit(X, cov)
    assert isinstance(ei.value, ValueError)
    assert "'site'" in str(ei.value) and "onlysite" in str(ei.value)


def test_single_subject_site_is_an_error(X, cov):
    cov = _set(cov, 0, "site", "lonely")
    with pytest.raises(BatchError) as ei:
        fh.ComBat(formula=FORMULA).fit(X, cov)
    msg = str(ei.value)
    assert "lonely" in msg and "single subject" in msg
    assert "mean_only=True" in msg  # says how to fix it


@pytest.mark.parametrize("kw", [{}, {"mean_only_form": "n"}, {"parametric": False}, {"eb": False}])
def test_single_subject_site_with_mean_only(X, cov, kw):
    cov = _set(cov, 0, "site", "lonely")
    hm = fh.ComBat(formula=FORMULA, mean_only=True, **kw)
    with pytest.warns(SmallBatchWarning, match=r"'lonely' \(n=1\)"):
        out = hm.fit_transform(X, cov)
    assert np.isfinite(out.to_numpy()).all()
    for name in ("gamma_hat_", "gamma_star_", "delta_star_", "sigma_", "alpha_", "beta_"):
        assert np.isfinite(getattr(hm, name).to_numpy()).all(), name
    # location only: every scale is 1, and the lonely subject's row is shifted by sigma * gamma_star
    np.testing.assert_allclose(hm.delta_star_.to_numpy(), 1.0, rtol=0, atol=1e-12)
    row = X.index[0]
    shift = (out.loc[row] - X.loc[row]).to_numpy()
    assert np.abs(shift).max() > 1e-6
    np.testing.assert_allclose(shift, -(hm.sigma_ * hm.gamma_star_.loc["lonely"]).to_numpy(), rtol=1e-9, atol=1e-12)
    # the other rows of the table are harmonized too (finite, changed)
    assert not np.allclose(out.iloc[1:].to_numpy(), X.iloc[1:].to_numpy())


def test_single_subject_reference_batch_is_a_batch_error(X, cov):
    cov = _set(cov, 0, "site", "lonely")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallBatchWarning)
        with pytest.raises(BatchError, match="lonely"):
            fh.ComBat(formula=FORMULA, mean_only=True, ref_batch="lonely").fit(X, cov)


def test_small_site_warns_naming_the_site(X, cov):
    small = cov.index[cov["site"] == "site01"][:5]
    cov.loc[small, "site"] = "tiny"
    with pytest.warns(SmallBatchWarning, match=r"'tiny' \(n=5\)") as rec:
        out = fh.ComBat(formula=FORMULA).fit_transform(X, cov)
    assert len([w for w in rec if issubclass(w.category, SmallBatchWarning)]) == 1
    assert "site01" not in str(rec[0].message)  # only the small site is named
    assert np.isfinite(out.to_numpy()).all()


def test_missing_batch_value(X, cov):
    cov = _set(cov, 5, "site", None)
    with pytest.raises(MissingValueError) as ei:
        fh.ComBat().fit(X, cov)
    assert "'site'" in str(ei.value) and "sub-00005" in str(ei.value)


def test_batch_labels_that_are_one_number_written_differently(X, cov):
    cov["site"] = cov["site"].map({"site01": "1", "site02": "2", "site03": "3"})
    cov.loc[cov.index[cov["site"] == "3"][:5], "site"] = "3.0"
    with pytest.raises(BatchError, match=r"'site' writes one number in different ways: '3' \(rows .*\) vs "
                                         r"'3.0' \(rows 'sub-"):
        fh.ComBat(formula=FORMULA).fit(X, cov)
    cov["site"] = cov["site"].replace("3.0", "3")   # written one way: fine
    fh.ComBat(formula=FORMULA).fit(X, cov)


def test_unseen_site_at_transform(X, cov):
    hm = fh.ComBat(formula=FORMULA).fit(X, cov)
    new = cov.copy()
    new.iloc[:3, new.columns.get_loc("site")] = "newsite"
    with pytest.raises(UnseenBatchError) as ei:
        hm.transform(X, new)
    assert isinstance(ei.value, BatchError) and isinstance(ei.value, ValueError)
    assert "newsite" in str(ei.value) and "site01" in str(ei.value)  # names it and the known sites


def test_unseen_numeric_site_at_transform(X, cov):
    cov["site"] = cov["site"].map({"site01": 1, "site02": 2, "site03": 3})
    hm = fh.ComBat().fit(X, cov)
    with pytest.raises(UnseenBatchError, match=r"\b7\b"):
        hm.transform(X.iloc[:4], cov.iloc[:4].assign(site=7))


def test_unknown_ref_batch(X, cov):
    with pytest.raises(BatchError) as ei:
        fh.ComBat(formula=FORMULA, ref_batch="nope").fit(X, cov)
    assert "nope" in str(ei.value) and "site02" in str(ei.value)


# --------------------------------------------------------------------------------------- features
@pytest.mark.parametrize("value", [np.inf, -np.inf])
def test_infinite_feature_is_an_error(X, cov, value):
    X.iloc[3, X.columns.get_loc("roi002")] = value
    with pytest.raises(MissingValueError) as ei:
        fh.ComBat(formula=FORMULA).fit(X, cov)
    assert "'roi002'" in str(ei.value) and "sub-00003" in str(ei.value) and "infinite" in str(ei.value)


def test_nan_feature_is_harmonized_cellwise(X, cov):
    # missing values (docs/methods.md §1.8): NaN in, NaN out; tests/models/test_missing.py has the rest
    X.iloc[3, X.columns.get_loc("roi002")] = np.nan
    out = fh.ComBat(formula=FORMULA).fit_transform(X, cov)
    assert out.isna().to_numpy().sum() == 1 and np.isnan(out.iloc[3, X.columns.get_loc("roi002")])


def test_infinite_feature_at_transform(X, cov):
    hm = fh.ComBat(formula=FORMULA).fit(X, cov)
    X.iloc[7, X.columns.get_loc("roi004")] = np.inf
    with pytest.raises(MissingValueError) as ei:
        hm.transform(X, cov)
    assert "'roi004'" in str(ei.value) and "sub-00007" in str(ei.value)


def test_nullable_float_with_na_is_missing(X, cov):
    X = X.astype("Float64")
    X.iloc[2, 1] = pd.NA
    out = fh.ComBat().fit_transform(X, cov)
    assert out.isna().to_numpy().sum() == 1 and np.isnan(out.iloc[2, 1])


@pytest.mark.parametrize(
    "make",
    [
        lambda s: s.astype(str),
        lambda s: s.astype(object),
        lambda s: s > s.median(),
        lambda s: pd.Categorical(s.round(1)),
    ],
    ids=["str", "object", "bool", "categorical"],
)
def test_non_numeric_feature_column(X, cov, make):
    X["roi001"] = make(X["roi001"])
    with pytest.raises(NonNumericFeatureError) as ei:
        fh.ComBat().fit(X, cov)
    assert isinstance(ei.value, TypeError) and isinstance(ei.value, ValueError)
    assert "'roi001'" in str(ei.value)
    assert "roi000" not in str(ei.value)


def test_mostly_numeric_feature_column_names_its_text_cells(X, cov):
    """A numeric column spoiled by a few cells: every distinct bad value once, with its rows, and the fix."""
    X["roi001"] = X["roi001"].astype(object)
    for row, value in ((3, "n/a?"), (7, "n/a?"), (11, "45y"), (20, "2,45")):
        X.iloc[row, X.columns.get_loc("roi001")] = value
    with pytest.raises(NonNumericFeatureError) as ei:
        fh.ComBat(formula=FORMULA).fit(X, cov)
    msg = str(ei.value)
    assert msg.startswith("feature column 'roi001' holds 'n/a?' at rows 'sub-00003', 'sub-00007'; "
                          "'45y' at row 'sub-00011'; '2,45' at row 'sub-00020'")
    assert msg.count("n/a?") == 1 and "decimal comma" in msg and "4 of its 120 values are not numbers" in msg
    assert "pd.to_numeric(X['roi001'], errors='coerce')" in msg and "leave the column out of X" in msg
    assert "\n" not in msg


def test_genuine_text_feature_column_is_not_called_mostly_numeric(X, cov):
    X["group"] = np.where(np.arange(len(X)) % 2, "patient", "control")
    with pytest.raises(NonNumericFeatureError, match=r"'group' holds 'control' at row 'sub-00000'\); .*pass only"):
        fh.ComBat(formula=FORMULA).fit(X, cov)


def test_features_must_be_a_table(X, cov):
    with pytest.raises(InputError, match="DataFrame"):
        fh.ComBat().fit(X.to_numpy().tolist(), cov)


@pytest.mark.parametrize(
    "kw", [{}, {"parametric": False}, {"eb": False}, {"mean_only": True}, {"ref_batch": "site02"}],
    ids=["default", "nonparametric", "no-eb", "mean-only", "ref-batch"],
)
def test_constant_feature_passes_through(X, cov, kw):
    Xc = X.copy()
    Xc.insert(2, "const", 3.7)
    hm = fh.ComBat(formula=FORMULA, **kw)
    with pytest.warns(ConstantFeatureWarning, match="const"):
        out = hm.fit_transform(Xc, cov)
    assert hm.constant_features_ == ["const"]
    # unchanged, bit for bit
    assert out["const"].to_numpy().tobytes() == Xc["const"].to_numpy().tobytes()
    # the other features are as if the constant column were not there
    ref = fh.ComBat(formula=FORMULA, **kw).fit_transform(X, cov)
    assert list(out.drop(columns="const").columns) == list(ref.columns)
    np.testing.assert_allclose(out.drop(columns="const").to_numpy(), ref.to_numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(hm.gamma_star_.drop(columns="const").to_numpy(),
                               fh.ComBat(formula=FORMULA, **kw).fit(X, cov).gamma_star_.to_numpy(),
                               rtol=1e-12, atol=1e-12)
    # and at transform time on new rows
    out2 = hm.transform(Xc.iloc[:10], cov.iloc[:10])
    assert out2["const"].to_numpy().tobytes() == Xc["const"].iloc[:10].to_numpy().tobytes()


def test_feature_constant_within_each_site_passes_through(X, cov):
    X["sitewise"] = cov["site"].map({"site01": 1.0, "site02": 2.0, "site03": 3.0})
    with pytest.warns(ConstantFeatureWarning, match="sitewise"):
        out = fh.ComBat(formula=FORMULA).fit_transform(X, cov)
    assert np.array_equal(out["sitewise"].to_numpy(), X["sitewise"].to_numpy())
    assert np.isfinite(out.to_numpy()).all()


def test_eb_needs_two_features(X, cov):
    with pytest.raises(InputError) as ei:
        fh.ComBat(formula=FORMULA).fit(X[["roi000"]], cov)
    assert "eb=False" in str(ei.value) and "2 features" in str(ei.value)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # see test_too_few_features_is_silent
def test_eb_needs_two_non_constant_features(X, cov):
    Xc = X[["roi000"]].assign(flat=1.0)
    with pytest.warns(ConstantFeatureWarning, match="flat"):
        with pytest.raises(InputError, match="eb=False"):
            fh.ComBat(formula=FORMULA).fit(Xc, cov)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # see test_too_few_features_is_silent
def test_single_feature_without_eb_works(X, cov):
    x1 = X[["roi000"]]
    hm = fh.ComBat(formula=FORMULA, eb=False)
    out = hm.fit_transform(x1, cov)
    assert out.shape == x1.shape and np.isfinite(out.to_numpy()).all()
    # without EB the raw site estimates are used and the site means are removed
    assert_array_equal = np.testing.assert_array_equal
    assert_array_equal(hm.gamma_star_.to_numpy(), hm.gamma_hat_.to_numpy())
    resid = out["roi000"] - hm.alpha_["roi000"] - (hm.design_.transform(cov) @ hm.beta_["roi000"].to_numpy())
    site_means = resid.groupby(cov["site"]).mean()
    assert np.abs(site_means).max() < 1e-10


@pytest.mark.parametrize("case", ["one-feature-no-eb", "one-varying-feature-eb"])
def test_too_few_features_is_silent(X, cov, case):
    if case == "one-feature-no-eb":
        out = fh.ComBat(formula=FORMULA, eb=False).fit_transform(X[["roi000"]], cov)
        assert np.isfinite(out.to_numpy()).all()
    else:
        with pytest.warns(ConstantFeatureWarning):
            with pytest.raises(InputError, match="eb=False"):
                fh.ComBat(formula=FORMULA).fit(X[["roi000"]].assign(flat=1.0), cov)


# --------------------------------------------------------------------------------------- covariates
@pytest.mark.parametrize("col, value, formula", [
    ("age", np.nan, "age + sex"),
    ("age", np.inf, "age + sex"),
    ("age", -np.inf, "I(age**2)"),
    ("sex", None, "age + sex"),
])
def test_nonfinite_used_covariate(X, cov, col, value, formula):
    cov = _set(cov, 4, col, value)
    with pytest.raises(MissingValueError) as ei:
        fh.ComBat(formula=formula).fit(X, cov)
    assert f"'{col}'" in str(ei.value) and "sub-00004" in str(ei.value)


def test_nonfinite_covariate_at_transform(X, cov):
    hm = fh.ComBat(formula=FORMULA).fit(X, cov)
    bad = _set(cov, 9, "age", np.nan)
    with pytest.raises(MissingValueError) as ei:
        hm.transform(X, bad)
    assert "'age'" in str(ei.value) and "sub-00009" in str(ei.value)


def test_nan_in_unused_covariate_is_fine(X, cov):
    cov["iq"] = 100.0
    cov = _set(cov, 4, "iq", np.nan)
    out = fh.ComBat(formula=FORMULA).fit_transform(X, cov)
    ref = fh.ComBat(formula=FORMULA).fit_transform(X, cov.drop(columns="iq"))
    assert out.equals(ref)


@pytest.mark.parametrize("family", ["ComBat", "ComBatLS-scale"])
def test_age_with_a_unit_is_not_a_categorical_covariate(X, cov, family):
    cov["age"] = [f"{a:.0f}y" for a in cov["age"]]
    model = (fh.ComBat(formula=FORMULA) if family == "ComBat"
             else fh.ComBatLS(formula="sex", scale_formula="age"))
    with pytest.raises(FormulaError) as ei:
        model.fit(X, cov)
    msg = str(ei.value)
    assert "covariate 'age' looks numeric but holds text: ['" in msg and "at rows 'sub-00000', 'sub-00001'" in msg
    assert "without their unit" in msg and "C(age)" in msg
    assert msg.startswith("scale_formula: ") == (family != "ComBat")


def test_many_level_text_covariate_is_refused(X, cov):
    cov["scan"] = [f"scan-{i:04d}" for i in range(len(cov))]   # an id put in the formula
    with pytest.raises(FormulaError) as ei:
        fh.ComBat(formula="age + scan").fit(X, cov)
    msg = str(ei.value)
    assert msg.startswith("covariate 'scan' has 120 distinct values in 120 rows ('scan-0000' at row 'sub-00000'")
    assert "leave it out of the formula" in msg and "C(scan)" in msg
    cov["scan"] = pd.Categorical(cov["scan"])              # a declared pandas category is no exception
    with pytest.raises(FormulaError, match="'scan' has 120 distinct values"):
        fh.ComBat(formula="age + scan").fit(X, cov)


@pytest.mark.parametrize("values", [
    lambda cov: np.where(cov["sex"] == "M", "1", "0"),                       # coded levels as text
    lambda cov: np.where(cov["sex"] == "M", "3T", "1.5T"),                   # numbers with units, 2 levels
    lambda cov: pd.Categorical(np.arange(len(cov)) % 4),                     # numeric categories
], ids=["0/1-text", "field-strength", "numeric-category"])
def test_legitimate_factors_are_accepted(X, cov, values):
    cov["f"] = values(cov)
    out = fh.ComBat(formula="age + f").fit_transform(X, cov)
    assert np.isfinite(out.to_numpy()).all()


def test_explicit_factor_of_numbers_is_accepted(X, cov):
    cov["grp"] = (np.arange(len(cov)) % 12).astype(str)    # 12 levels of numbers as text: a factor by C()
    with pytest.raises(FormulaError, match="'grp' holds numbers stored as text"):
        fh.ComBat(formula="age + grp").fit(X, cov)
    a = fh.ComBat(formula="age + C(grp)").fit_transform(X, cov)
    cov["grp"] = cov["grp"].astype(int)
    b = fh.ComBat(formula="age + C(grp)").fit_transform(X, cov)
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=0, atol=1e-12)


def test_check_categorical_covariate_passes_numbers_and_small_factors():
    from featharm._validation import check_categorical_covariate

    idx = pd.Index([f"s{i}" for i in range(40)])
    check_categorical_covariate(pd.Series(np.arange(40.0), index=idx), "age")          # continuous
    check_categorical_covariate(pd.Series(np.arange(40) % 2 == 0, index=idx), "flag")  # boolean
    check_categorical_covariate(pd.Series(["a", "b"] * 20, index=idx), "grp")          # a factor
    ids = pd.Series([f"id{i}" for i in range(40)], index=idx)
    with pytest.raises(FormulaError, match="'subj' has 40 distinct values in 40 rows"):
        check_categorical_covariate(ids, "subj")
    with pytest.raises(FormulaError, match=r"'x' looks numeric but holds text: \['n/a'\] at rows 's5'"):
        check_categorical_covariate(pd.Series([str(i) for i in range(5)] + ["n/a"] + [str(i) for i in range(6, 40)],
                                              index=idx), "x")


def test_diagnosis_in_one_site_only_is_confounded(X, cov):
    cov["dx"] = np.where(cov["site"] == "site01", "AD", "CN")
    with pytest.raises(ConfoundingError) as ei:
        fh.ComBat(formula="age + dx").fit(X, cov)
    assert isinstance(ei.value, ValueError)
    assert "dx" in str(ei.value) and "'site'" in str(ei.value)


def test_age_determined_by_site_is_confounded(X, cov):
    cov["age_site"] = cov["site"].map({"site01": 25.0, "site02": 45.0, "site03": 65.0})
    with pytest.raises(ConfoundingError, match="age_site"):
        fh.ComBat(formula="sex + age_site").fit(X, cov)


def test_covariate_coarsening_site_is_confounded(X, cov):
    # one scanner for two sites: a combination of site indicators
    cov["scanner"] = cov["site"].map({"site01": "A", "site02": "A", "site03": "B"})
    with pytest.raises(ConfoundingError, match="scanner"):
        fh.ComBat(formula="age + scanner").fit(X, cov)


def test_duplicate_covariate_is_rank_deficient(X, cov):
    cov["age2"] = 2 * cov["age"]
    with pytest.raises(ConfoundingError) as ei:
        fh.ComBat(formula="age + age2").fit(X, cov)
    assert "'age2'" in str(ei.value) and "age" in str(ei.value)


def test_disjoint_age_ranges_by_site_give_sensible_output(X, cov):
    # age varies within every site but the ranges do not overlap: identifiable, so finite sensible output
    rng = np.random.default_rng(0)
    cov["age"] = cov["site"].map({"site01": 20.0, "site02": 40.0, "site03": 60.0}) + rng.uniform(0, 10, len(cov))
    out = fh.ComBat(formula=FORMULA).fit_transform(X, cov)
    assert np.isfinite(out.to_numpy()).all()
    spread = X.to_numpy().max() - X.to_numpy().min()
    assert np.abs(out - X).to_numpy().max() < spread


@pytest.mark.parametrize("eps", [1e-12, 1e-9, 1e-7, 1e-5, 1e-4, 1e-3, 1e-2])
def test_near_confounded_covariate_never_gives_garbage(X, cov, eps):
    noise = np.random.default_rng(1).standard_normal(len(cov))
    cov["age_x"] = cov["site"].map({"site01": 20.0, "site02": 40.0, "site03": 60.0}) + eps * noise
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        try:
            out = fh.ComBat(formula="age_x").fit_transform(X, cov)
        except ConfoundingError as exc:
            assert "age_x" in str(exc)
            return
    assert np.isfinite(out.to_numpy()).all()
    assert np.abs(out.to_numpy()).max() < 1e8  # never the 1e16 of an inverted singular matrix
    cats = [w.category for w in rec]
    assert cats == [CollinearityWarning], cats  # a poorly identified covariate is always flagged
    assert "age_x" in str(rec[0].message)


def test_near_confounded_covariate_output_is_sensible(X, cov):
    noise = np.random.default_rng(1).standard_normal(len(cov))
    cov["age_x"] = cov["site"].map({"site01": 20.0, "site02": 40.0, "site03": 60.0}) + 3e-5 * noise
    spread = X.to_numpy().max() - X.to_numpy().min()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CollinearityWarning)
        try:
            out = fh.ComBat(formula="age_x").fit_transform(X, cov)
        except ConfoundingError:
            return
    assert np.abs(out - X).to_numpy().max() < 10 * spread


# --------------------------------------------------------------------------------------- rows and ids
def test_duplicated_ids_in_features(X, cov):
    X.index = list(X.index[:-1]) + [X.index[0]]
    with pytest.raises(DuplicateIndexError) as ei:
        fh.ComBat().fit(X, cov)
    assert "sub-00000" in str(ei.value) and "feature" in str(ei.value)


def test_duplicated_ids_in_covariates(X, cov):
    cov.index = list(cov.index[:-1]) + [cov.index[1]]
    with pytest.raises(DuplicateIndexError) as ei:
        fh.ComBat().fit(X, cov)
    assert "sub-00001" in str(ei.value) and "covariate" in str(ei.value)


def test_features_and_covariates_with_different_rows(X, cov):
    with pytest.raises(AlignmentError) as ei:
        fh.ComBat().fit(X, cov.iloc[:-2])
    msg = str(ei.value)
    assert "sub-00118" in msg and "sub-00119" in msg and "not in the covariates" in msg
    with pytest.raises(AlignmentError, match="not in the features") as ei:
        fh.ComBat().fit(X.drop(index=["sub-00010"]), cov)
    assert "sub-00010" in str(ei.value)


def test_covariates_are_matched_by_index_not_position(X, cov):
    a = fh.ComBat(formula=FORMULA).fit_transform(X, cov)
    b = fh.ComBat(formula=FORMULA).fit_transform(X, cov.iloc[::-1])
    assert a.equals(b)


def test_feature_columns_must_match_at_transform(X, cov):
    hm = fh.ComBat().fit(X, cov)
    with pytest.raises(AlignmentError, match="roi002"):
        hm.transform(X.drop(columns="roi002"), cov)
    with pytest.raises(AlignmentError, match="extra_col"):
        hm.transform(X.assign(extra_col=1.0), cov)


# --------------------------------------------------------------------------------------- columns
def test_missing_batch_column(X, cov):
    with pytest.raises(ColumnNotFoundError) as ei:
        fh.ComBat(batch="scanner").fit(X, cov)
    msg = str(ei.value)
    assert isinstance(ei.value, KeyError) and isinstance(ei.value, ValueError)
    assert "'scanner'" in msg
    assert "'site', 'age', 'sex'" in msg  # lists the columns present


def test_missing_formula_column(X, cov):
    with pytest.raises(ColumnNotFoundError) as ei:
        fh.ComBat(formula="age + iq").fit(X, cov)
    assert "'iq'" in str(ei.value) and "'site', 'age', 'sex'" in str(ei.value)


def test_missing_covariate_column_at_transform(X, cov):
    hm = fh.ComBat(formula=FORMULA).fit(X, cov)
    with pytest.raises(ColumnNotFoundError) as ei:
        hm.transform(X, cov.drop(columns="age"))
    assert "'age'" in str(ei.value) and "'site', 'sex'" in str(ei.value)
    with pytest.raises(ColumnNotFoundError, match="'site'"):
        hm.transform(X, cov.drop(columns="site"))


@pytest.mark.parametrize("formula", ["np.log(iq)", "C(iq) + age"])
def test_missing_column_inside_a_call(X, cov, formula):
    with pytest.raises(ColumnNotFoundError) as ei:
        fh.ComBat(formula=formula).fit(X, cov)
    assert "'iq'" in str(ei.value) and "'site', 'age', 'sex'" in str(ei.value)


def test_missing_column_inside_a_call_still_names_it(X, cov):
    # whatever the class, the message names the missing column and it is a ValueError
    with pytest.raises(InputError, match="iq"):
        fh.ComBat(formula="np.log(iq)").fit(X, cov)


def test_unseen_categorical_level_at_transform(X, cov):
    hm = fh.ComBat(formula=FORMULA).fit(X, cov)
    new = _set(cov, 2, "sex", "X")
    with pytest.raises(UnseenLevelError) as ei:
        hm.transform(X, new)
    msg = str(ei.value)
    assert isinstance(ei.value, ValueError)
    assert "'sex'" in msg and "'X'" in msg and "sub-00002" in msg and "'F', 'M'" in msg


# --------------------------------------------------------------------------------------- parameters and formulas
@pytest.mark.parametrize("kw, name", [
    ({"mean_only_form": "x"}, "mean_only_form"),
    ({"mean_only": True, "mean_only_form": "x"}, "mean_only_form"),
    ({"max_iter": 0}, "max_iter"),
    ({"max_iter": -3}, "max_iter"),
    ({"max_iter": 1.5}, "max_iter"),
    ({"tol": 0}, "tol"),
    ({"tol": -1e-3}, "tol"),
    ({"tol": "small"}, "tol"),
    ({"eb": "yes"}, "eb"),
    ({"parametric": None}, "parametric"),
    ({"mean_only": "no"}, "mean_only"),
    ({"compat": "R"}, "compat"),
    ({"batch": None}, "batch"),
    ({"batch": ["site"]}, "batch"),
])
def test_bad_parameter_values(X, cov, kw, name):
    hm = fh.ComBat(**kw)  # the constructor only stores
    with pytest.raises(InputError) as ei:
        hm.fit(X, cov)
    assert isinstance(ei.value, ValueError)
    assert f"'{name}'" in str(ei.value)
    assert repr(next(iter(v for k, v in kw.items() if k == name))) in str(ei.value)


@pytest.mark.parametrize("formula", ["y ~ age", "roi000 ~ age + sex", "~ age ~ sex"])
def test_formula_with_left_hand_side(X, cov, formula):
    with pytest.raises(FormulaError, match="left-hand side"):
        fh.ComBat(formula=formula).fit(X, cov)


@pytest.mark.parametrize("formula", ["age - 1", "age + sex - 1", "0 + age"])
def test_formula_removing_the_intercept(X, cov, formula):
    with pytest.raises(FormulaError, match="intercept") as ei:
        fh.ComBat(formula=formula).fit(X, cov)
    assert formula in str(ei.value)


def test_formula_with_the_batch_column(X, cov):
    with pytest.raises(FormulaError, match="batch column 'site'"):
        fh.ComBat(formula="site + age").fit(X, cov)


@pytest.mark.parametrize("formula", ["age +", "age + + (sex"])
def test_formula_syntax_error(X, cov, formula):
    with pytest.raises(FormulaError, match=re.escape(formula)):
        fh.ComBat(formula=formula).fit(X, cov)


def test_formula_must_be_a_string(X, cov):
    with pytest.raises(FormulaError, match="string"):
        fh.ComBat(formula=5).fit(X, cov)


@pytest.mark.parametrize("formula", ["~ age + sex", " age + sex "])
def test_formula_with_leading_tilde_or_spaces_is_accepted(X, cov, formula):
    a = fh.ComBat(formula=formula).fit_transform(X, cov)
    b = fh.ComBat(formula="age + sex").fit_transform(X, cov)
    assert a.equals(b)


@pytest.mark.parametrize("formula", [None, "", "1", "~ 1"])
def test_empty_formula_means_no_covariates(X, cov, formula):
    hm = fh.ComBat(formula=formula).fit(X, cov)
    assert hm.design_.columns == [] and hm.beta_.shape == (0, X.shape[1])


def test_max_iter_reached_warns(X, cov):
    hm = fh.ComBat(formula=FORMULA, max_iter=1)
    with pytest.warns(ConvergenceWarning, match=r"max_iter=1\b") as rec:
        out = hm.fit_transform(X, cov)
    msg = str(rec[0].message)
    assert all(s in msg for s in ("site01", "site02", "site03"))
    assert (hm.n_iter_ == 1).all()
    assert np.isfinite(out.to_numpy()).all()


def test_default_max_iter_converges_silently(X, cov):
    hm = fh.ComBat(formula=FORMULA).fit(X, cov)  # filterwarnings=error: any warning fails
    assert (hm.n_iter_ > 1).all() and (hm.n_iter_ < hm.max_iter).all()


def test_collinear_covariates_not_confounded_with_site_are_fine(X, cov):
    # age and age**2 over a narrow range are nearly collinear with each other, but not with site: the
    # preserved part is well determined, so no warning and no error
    cov["age"] = 60.0 + 20.0 * np.random.default_rng(3).random(len(cov))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = fh.ComBat(formula="age + I(age**2)").fit_transform(X, cov)
    assert np.isfinite(out.to_numpy()).all()


def test_combination_of_covariates_confounded_with_site(X, cov):
    # neither column alone is confounded, but their difference is (nearly) a site indicator
    rng = np.random.default_rng(4)
    site_shift = cov["site"].map({"site01": 0.0, "site02": 5.0, "site03": 10.0})
    cov["a"] = rng.normal(size=len(cov)) * 10
    cov["b"] = cov["a"] + site_shift + 1e-4 * rng.normal(size=len(cov))
    with pytest.raises(ConfoundingError, match=r"nearly confounded with 'site'"):
        fh.ComBat(formula="a + b").fit(X, cov)


def test_moderately_confounded_covariate_warns_with_its_name(X, cov):
    rng = np.random.default_rng(5)
    cov["age_y"] = cov["site"].map({"site01": 20.0, "site02": 40.0, "site03": 60.0}) + 0.5 * rng.normal(size=len(cov))
    with pytest.warns(CollinearityWarning, match="'age_y'"):
        out = fh.ComBat(formula="age_y").fit_transform(X, cov)
    assert np.isfinite(out.to_numpy()).all()


# --------------------------------------------------------------------------------------- features linear in covariates
def _family_cases():
    """(name, model factory, X, covariates) of the five families on small simulated data with an ICV covariate."""
    s = fh.datasets.make_multisite(n_subjects=150, n_sites=3, n_features=6, random_state=1)
    cov = s.covariates.copy()
    cov["icv"] = np.random.default_rng(2).normal(1.5e6, 1.5e5, len(cov))
    long = fh.datasets.make_longitudinal(n_subjects=60, n_sites=3, n_features=6, random_state=1)
    lcov = long.covariates.copy()
    lcov["icv"] = np.random.default_rng(3).normal(1.5e6, 1.5e5, len(lcov))
    return {
        "ComBat": (lambda: fh.ComBat(formula="age + sex + icv"), s.X, cov),
        "ComBatGAM": (lambda: fh.ComBatGAM(formula="sex + icv", smooth=["age"]), s.X, cov),
        "ComBatGAM-shared": (lambda: fh.ComBatGAM(formula="sex + icv", smooth=["age"], shared_smoothing=True),
                             s.X, cov),
        "CovBat": (lambda: fh.CovBat(formula="age + sex + icv"), s.X, cov),
        "ComBatLS": (lambda: fh.ComBatLS(formula="age + sex + icv", scale_formula="age"), s.X, cov),
        "LongComBat": (lambda: fh.LongComBat(subject="subject", formula="age + sex + time + icv"), long.X, lcov),
    }


FAMILY_CASES = _family_cases()


@pytest.mark.parametrize("how", ["copy", "combination", "rounded-copy"])
@pytest.mark.parametrize("family", sorted(FAMILY_CASES))
def test_feature_linear_in_the_covariates_passes_through(family, how):
    """ICV passed both as a covariate and as a feature: its residual is rounding, so it is passed through
    unchanged (as a constant feature) and leaves every other feature exactly as a fit without it."""
    make, X, cov = FAMILY_CASES[family]
    Xl = X.copy()
    Xl["icv_feat"] = {"copy": cov["icv"],
                      "combination": 2.0 * cov["icv"] - 300.0 * cov["age"] + 7.0,
                      "rounded-copy": (cov["icv"] / 1000).round(4)}[how]   # cm3, 4 decimals: R2 = 1 - 1e-15
    ref = make().fit_transform(X, cov)
    model = make()
    with pytest.warns(fh.exceptions.ConstantFeatureWarning, match=r"\['icv_feat'\] \(explained by the batch and "
                                                                   r"covariates"):
        out = model.fit_transform(Xl, cov)
    assert model.constant_features_ == ["icv_feat"]
    assert out["icv_feat"].to_numpy().tobytes() == Xl["icv_feat"].to_numpy().tobytes()
    np.testing.assert_allclose(out[X.columns].to_numpy(), ref.to_numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(model.gamma_star_[X.columns].to_numpy(), make().fit(X, cov).gamma_star_.to_numpy(),
                               rtol=1e-12, atol=1e-12)
    back = model.transform(Xl.iloc[:20], cov.iloc[:20])
    assert back["icv_feat"].to_numpy().tobytes() == Xl["icv_feat"].iloc[:20].to_numpy().tobytes()


@pytest.mark.parametrize("family", sorted(FAMILY_CASES))
def test_feature_highly_but_not_exactly_explained_is_harmonized(family):
    """R^2 = 0.999 is biology, not a duplicated column: harmonized as usual, without a warning."""
    make, X, cov = FAMILY_CASES[family]
    rng = np.random.default_rng(4)
    icv = (cov["icv"] - cov["icv"].mean()) / cov["icv"].std()
    noise = rng.standard_normal(len(cov))
    if "subject" in cov:  # repeated scans: part of the unexplained variation is the subject's
        noise = (noise + pd.Series(rng.standard_normal(cov["subject"].nunique()),
                                   index=cov["subject"].unique())[cov["subject"]].to_numpy()) / np.sqrt(2)
    Xh = X.assign(icv_like=icv + np.sqrt(1e-3) * noise)   # R2 about 0.999
    model = make()
    out = model.fit_transform(Xh, cov)                     # filterwarnings=error: no ConstantFeatureWarning
    assert model.constant_features_ == []
    assert not np.allclose(out["icv_like"].to_numpy(), Xh["icv_like"].to_numpy(), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------- extreme magnitudes
# LongComBat's mixed-model fit picks its variance ratio by a golden-section search on the profiled REML,
# which rounding decides to about 1e-9 relative: multiplying the data by 3 (or 1e300) moves its output by
# ~5e-9 even with no rescaling involved. Powers of two are exact, and are checked exactly below.
_MAGNITUDE_RTOL = {"LongComBat": 1e-7}


@pytest.mark.parametrize("k", [1e300, 1e-300], ids=["1e300", "1e-300"])
@pytest.mark.parametrize("family", sorted(FAMILY_CASES))
def test_extreme_magnitudes_are_harmonized_like_ordinary_ones(family, k):
    make, X, cov = FAMILY_CASES[family]
    rtol = _MAGNITUDE_RTOL.get(family, 1e-12)
    ref_model = make()
    ref = ref_model.fit_transform(X, cov).to_numpy()
    model = make()
    out = model.fit_transform(X * k, cov)                  # filterwarnings=error: no warning at all
    assert np.isfinite(out.to_numpy()).all() and model.constant_features_ == []
    np.testing.assert_allclose(out.to_numpy() / k, ref, rtol=rtol, atol=rtol * np.abs(ref).max())
    # learned attributes are in the input's units
    np.testing.assert_allclose(model.alpha_.to_numpy() / k, ref_model.alpha_.to_numpy(), rtol=rtol)
    np.testing.assert_allclose(model.sigma_.to_numpy() / k, ref_model.sigma_.to_numpy(), rtol=rtol)
    np.testing.assert_allclose(model.gamma_star_.to_numpy(), ref_model.gamma_star_.to_numpy(), rtol=rtol,
                               atol=rtol)
    # new rows, and a saved and reloaded model, use the same rescaling
    new = model.transform(X.iloc[:15] * k, cov.iloc[:15])
    np.testing.assert_array_equal(new.to_numpy(), out.iloc[:15].to_numpy())


@pytest.mark.parametrize("family", sorted(FAMILY_CASES))
def test_rescaling_is_exact_for_powers_of_two(family):
    """Multiplying by a power of two and back is exact; so is every step of a fit but ComBatLS's
    log-scale model (log and exp of sigma), which is scale-equivariant up to rounding only."""
    make, X, cov = FAMILY_CASES[family]
    ref = make().fit_transform(X, cov).to_numpy()
    for e in (1000, -1000):
        out = make().fit_transform(X * 2.0**e, cov).to_numpy()
        if family == "ComBatLS":
            np.testing.assert_allclose(out / 2.0**e, ref, rtol=1e-12, atol=0)
        else:
            np.testing.assert_array_equal(out / 2.0**e, ref)


def test_extreme_magnitude_model_saved_and_loaded(tmp_path):
    make, X, cov = FAMILY_CASES["ComBatLS"]
    model = make().fit(X * 1e-300, cov)
    model.save(tmp_path / "m.fhm")
    back = fh.load_model(tmp_path / "m.fhm")
    np.testing.assert_array_equal(back.transform(X * 1e-300, cov).to_numpy(),
                                  model.transform(X * 1e-300, cov).to_numpy())
    pd.testing.assert_frame_equal(back.scale_coef_, model.scale_coef_)
    ref = make().fit(X, cov)   # log sigma and the deviance of the data themselves
    np.testing.assert_allclose(model.scale_coef_.iloc[0] - np.log(1e-300), ref.scale_coef_.iloc[0], rtol=1e-9)
    np.testing.assert_allclose(model.deviance_ - 2 * len(X) * np.log(1e-300), ref.deviance_, rtol=1e-9)


def test_mixed_magnitudes_each_feature_on_its_own_scale():
    make, X, cov = FAMILY_CASES["ComBat"]
    Xm = X.copy()
    Xm["roi000"] *= 1e300
    Xm["roi001"] *= 1e-300
    ref = make().fit_transform(X, cov)
    out = make().fit_transform(Xm, cov)
    np.testing.assert_allclose(out["roi000"] / 1e300, ref["roi000"], rtol=1e-12)
    np.testing.assert_allclose(out["roi001"] / 1e-300, ref["roi001"], rtol=1e-12)
    np.testing.assert_allclose(out.iloc[:, 2:].to_numpy(), ref.iloc[:, 2:].to_numpy(), rtol=1e-12)
    # CovBat without std_var mixes features in their own units: one common factor, or a clear error
    with pytest.raises(InputError, match=r"std_var=False .* differ by more than 2\^64: e.g. \['roi002'"):
        fh.CovBat(formula="age + sex", std_var=False).fit(Xm.drop(columns="roi001"), cov)
    ref = fh.CovBat(formula="age + sex", std_var=False).fit_transform(X, cov)
    out = fh.CovBat(formula="age + sex", std_var=False).fit_transform(X * 1e300, cov)
    np.testing.assert_allclose(out.to_numpy() / 1e300, ref.to_numpy(), rtol=1e-12)


def test_constant_test_is_relative_to_the_feature():
    make, X, cov = FAMILY_CASES["ComBat"]
    tiny = X * 1e-300
    with pytest.warns(ConstantFeatureWarning, match=r"\['flat'\] \(constant\)"):
        model = make().fit(tiny.assign(flat=3e-300), cov)   # 3e-300 throughout is constant; data of 1e-300 vary
    assert model.constant_features_ == ["flat"]
