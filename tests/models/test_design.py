"""The covariate formula builder: ``CovariateDesign.fit(formula, covariates) -> (design, X)``.

Checks the encoding rules (categorical baseline = first sorted level, C() on numbers, contrasts),
formula features (interactions, I(), numpy functions, stateful transforms frozen at fit), frozen
columns on any subset of rows, the JSON round trip and the float32 compatibility rounding.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import featharm as fh
from featharm.design import CovariateDesign
from featharm.exceptions import (
    ColumnNotFoundError,
    FormulaError,
    MissingValueError,
    UnseenLevelError,
)


@pytest.fixture
def cov():
    return pd.DataFrame(
        {
            "sex": ["M", "F", "M", "F", "M", "F", "F", "M"],
            "age": [20.0, 31.0, 42.5, 50.0, 61.0, 70.0, 25.0, 38.0],
            "grp": [3, 1, 2, 3, 1, 2, 2, 1],
            "flag": [True, False, True, True, False, False, True, False],
            "cat": pd.Categorical(list("bacbacab"), categories=["c", "b", "a"]),
            "scanner": ["siemens", "ge", "philips", "ge", "siemens", "philips", "ge", "siemens"],
        },
        index=[f"s{i}" for i in range(8)],
    )


def _col(X, design, name):
    return X[:, design.columns.index(name)]


# ------------------------------------------------------------------------------------------ encoding rules
def test_string_baseline_is_first_sorted_level(cov):
    d, X = CovariateDesign.fit("sex", cov)
    assert d.columns == ["sex[T.M]"]  # F (sorted first) is the baseline, though M comes first in the data
    assert d.levels == {"sex": ["F", "M"]}
    np.testing.assert_array_equal(X[:, 0], (cov["sex"] == "M").to_numpy(float))


def test_multi_level_string_baseline(cov):
    d, X = CovariateDesign.fit("scanner", cov)
    assert d.levels["scanner"] == ["ge", "philips", "siemens"]
    assert d.columns == ["scanner[T.philips]", "scanner[T.siemens]"]
    np.testing.assert_array_equal(X, np.column_stack([(cov.scanner == lv).to_numpy(float)
                                                      for lv in ("philips", "siemens")]))


def test_bool_is_categorical_with_false_baseline(cov):
    d, X = CovariateDesign.fit("flag", cov)
    assert d.columns == ["flag[T.True]"]
    assert "flag" in d.levels and "flag" not in d.ranges
    np.testing.assert_array_equal(X[:, 0], cov["flag"].to_numpy(float))
    # bools at transform time are encoded the same way
    np.testing.assert_array_equal(d.transform(pd.DataFrame({"flag": [False, True]})), [[0.0], [1.0]])


def test_categorical_dtype_uses_sorted_levels_not_category_order(cov):
    assert list(cov["cat"].cat.categories) == ["c", "b", "a"]
    d, X = CovariateDesign.fit("cat", cov)
    assert d.levels["cat"] == ["a", "b", "c"]
    assert d.columns == ["cat[T.b]", "cat[T.c]"]
    np.testing.assert_array_equal(X, np.column_stack([(cov["cat"] == lv).to_numpy(float) for lv in "bc"]))


def test_categorical_levels_are_the_observed_values(cov):
    cov["cat"] = pd.Categorical(list("bacbacab"), categories=["z", "c", "b", "a"])  # 'z' never occurs
    d, X = CovariateDesign.fit("cat", cov)
    assert d.levels["cat"] == ["a", "b", "c"] and X.shape == (8, 2)


def test_categorical_with_numeric_categories_sorts_numerically():
    df = pd.DataFrame({"g": pd.Categorical([10, 5, 20, 10, 5, 20], categories=[20, 10, 5]),
                       "h": [10, 5, 20, 10, 5, 20]})
    dg, Xg = CovariateDesign.fit("g", df)
    dh, Xh = CovariateDesign.fit("C(h)", df)
    np.testing.assert_array_equal(Xg, Xh)  # baseline 5 in both


def test_numeric_column_is_continuous(cov):
    d, X = CovariateDesign.fit("grp", cov)
    assert d.columns == ["grp"] and d.levels == {}
    assert d.ranges == {"grp": [1.0, 3.0]}
    np.testing.assert_array_equal(X[:, 0], cov["grp"].to_numpy(float))


def test_C_of_numeric_is_categorical_with_frozen_levels(cov):
    d, X = CovariateDesign.fit("C(grp)", cov)
    assert d.levels == {"grp": [1.0, 2.0, 3.0]}
    assert d.columns == ["C(grp)[T.2.0]", "C(grp)[T.3.0]"]
    np.testing.assert_array_equal(X, np.column_stack([(cov.grp == v).to_numpy(float) for v in (2, 3)]))
    # one row, one level present: still both columns; ints and floats are the same level
    np.testing.assert_array_equal(d.transform(pd.DataFrame({"grp": [3]})), [[0.0, 1.0]])
    np.testing.assert_array_equal(d.transform(pd.DataFrame({"grp": [2.0]})), [[1.0, 0.0]])
    np.testing.assert_array_equal(d.transform(pd.DataFrame({"grp": [1]})), [[0.0, 0.0]])
    with pytest.raises(UnseenLevelError) as ei:
        d.transform(pd.DataFrame({"grp": [1, 4]}, index=["a", "b"]))
    msg = str(ei.value)
    assert "'grp'" in msg and "4" in msg and "'b'" in msg


def test_unseen_string_level(cov):
    d, _ = CovariateDesign.fit("age + scanner", cov)
    new = pd.DataFrame({"age": [30.0, 40.0], "scanner": ["ge", "toshiba"]}, index=["x1", "x2"])
    with pytest.raises(UnseenLevelError) as ei:
        d.transform(new)
    msg = str(ei.value)
    assert isinstance(ei.value, ValueError)
    assert "'scanner'" in msg and "'toshiba'" in msg and "'x2'" in msg


def test_treatment_contrast_chooses_the_baseline(cov):
    d, X = CovariateDesign.fit('C(sex, contr.treatment("M"))', cov)
    assert len(d.columns) == 1 and d.columns[0].endswith("[T.F]")
    np.testing.assert_array_equal(X[:, 0], (cov["sex"] == "F").to_numpy(float))
    # frozen: a single male row is the baseline
    np.testing.assert_array_equal(d.transform(pd.DataFrame({"sex": ["M"]})), [[0.0]])
    np.testing.assert_array_equal(d.transform(pd.DataFrame({"sex": ["F"]})), [[1.0]])


# ------------------------------------------------------------------------------------------ formula features
def test_interaction(cov):
    d, X = CovariateDesign.fit("age * sex", cov)
    assert d.columns == ["age", "sex[T.M]", "age:sex[T.M]"]
    is_m = (cov["sex"] == "M").to_numpy(float)
    np.testing.assert_array_equal(X, np.column_stack([cov.age, is_m, cov.age * is_m]))


def test_interaction_of_two_categoricals(cov):
    d, X = CovariateDesign.fit("sex * flag", cov)
    assert d.columns == ["sex[T.M]", "flag[T.True]", "sex[T.M]:flag[T.True]"]
    np.testing.assert_array_equal(X[:, 2], ((cov.sex == "M") & cov.flag).to_numpy(float))


def test_I_power(cov):
    d, X = CovariateDesign.fit("age + I(age**2)", cov)
    assert len(d.columns) == 2 and d.variables == ["age"]
    np.testing.assert_array_equal(X[:, 1], cov["age"].to_numpy() ** 2)


def test_numpy_function(cov):
    d, X = CovariateDesign.fit("np.log(age)", cov)
    np.testing.assert_array_equal(X[:, 0], np.log(cov["age"].to_numpy()))
    new = pd.DataFrame({"age": [10.0, 100.0]})
    np.testing.assert_array_equal(d.transform(new)[:, 0], np.log([10.0, 100.0]))


def test_center_is_frozen_at_fit(cov):
    d, X = CovariateDesign.fit("center(age) + sex", cov)
    mean = cov["age"].mean()
    np.testing.assert_allclose(_col(X, d, "center(age)"), cov["age"] - mean, rtol=0, atol=1e-12)
    # new data: the *training* mean is subtracted, not the new rows' mean
    new = pd.DataFrame({"age": [mean, 80.0, 90.0], "sex": ["F", "M", "M"]})
    Xn = d.transform(new)
    np.testing.assert_allclose(_col(Xn, d, "center(age)"), [0.0, 80.0 - mean, 90.0 - mean], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(_col(Xn, d, "sex[T.M]"), [0.0, 1.0, 1.0])


def test_scale_is_frozen_at_fit(cov):
    d, X = CovariateDesign.fit("scale(age)", cov)
    mu, sd = cov["age"].mean(), cov["age"].std(ddof=1)
    np.testing.assert_allclose(X[:, 0], (cov["age"] - mu) / sd, rtol=1e-12)
    np.testing.assert_allclose(d.transform(pd.DataFrame({"age": [100.0]}))[0, 0], (100.0 - mu) / sd, rtol=1e-12)


def test_spline_state_is_frozen(cov):
    d, X = CovariateDesign.fit("bs(age, df=3)", cov)
    assert X.shape == (8, 3)
    # the knots come from the training rows: any subset of rows gives the training rows' values
    np.testing.assert_array_equal(d.transform(cov.iloc[[2, 5]]), X[[2, 5]])


# ------------------------------------------------------------------------------------------ frozen columns
@pytest.mark.parametrize("formula", [
    "sex", "age + sex + C(grp) + scanner", "age * sex + flag", "cat + center(age)",
    'C(sex, contr.treatment("M")) + I(age**2)',
])
def test_any_single_row_gives_all_columns(cov, formula):
    d, X = CovariateDesign.fit(formula, cov)
    for i in range(len(cov)):
        Xi = d.transform(cov.iloc[[i]])
        assert Xi.shape == (1, len(d.columns))
        np.testing.assert_array_equal(Xi[0], X[i])


def test_transform_follows_the_row_order_and_ignores_the_index(cov):
    d, X = CovariateDesign.fit("age + sex + C(grp)", cov)
    perm = [5, 0, 7, 2]
    np.testing.assert_array_equal(d.transform(cov.iloc[perm]), X[perm])
    np.testing.assert_array_equal(d.transform(cov.reset_index(drop=True)), X)


def test_transform_with_extra_and_reordered_columns(cov):
    d, X = CovariateDesign.fit("age + sex", cov)
    shuffled = cov[["scanner", "sex", "flag", "age"]].assign(other=1)
    np.testing.assert_array_equal(d.transform(shuffled), X)


def test_missing_column_at_transform(cov):
    d, _ = CovariateDesign.fit("age + sex", cov)
    with pytest.raises(ColumnNotFoundError) as ei:
        d.transform(cov.drop(columns="sex"))
    assert "'sex'" in str(ei.value) and "'age'" in str(ei.value)  # names it and lists those present


def test_missing_value_at_transform_names_row(cov):
    d, _ = CovariateDesign.fit("age + sex", cov)
    bad = cov.copy()
    bad.loc["s3", "age"] = np.nan
    with pytest.raises(MissingValueError) as ei:
        d.transform(bad)
    assert "'age'" in str(ei.value) and "'s3'" in str(ei.value)


def test_log_of_zero_at_transform_names_row(cov):
    d, _ = CovariateDesign.fit("np.log(age)", cov)
    with pytest.raises(MissingValueError) as ei:
        d.transform(pd.DataFrame({"age": [5.0, 0.0]}, index=["ok", "zero"]))
    assert "'zero'" in str(ei.value) and "'ok'" not in str(ei.value)


def test_log_of_negative_at_transform_names_row(cov):
    d, _ = CovariateDesign.fit("np.log(age)", cov)
    with pytest.raises(MissingValueError) as ei:
        d.transform(pd.DataFrame({"age": [5.0, -1.0]}, index=["ok", "neg"]))
    assert "'neg'" in str(ei.value)


def test_no_formula_gives_an_empty_block(cov):
    for f in (None, "", "1", "~1"):
        d, X = CovariateDesign.fit(f, cov)
        assert X.shape == (8, 0) and d.columns == [] and d.formula == ""
        assert d.transform(cov.iloc[:3]).shape == (3, 0)


def test_batch_column_is_excluded(cov):
    with pytest.raises(FormulaError, match="'scanner'"):
        CovariateDesign.fit("age + scanner", cov, exclude=("scanner",))


def test_backticked_column_name(cov):
    df = cov.rename(columns={"age": "age at scan"})
    d, X = CovariateDesign.fit("`age at scan` + sex", df)
    assert d.variables == ["age at scan", "sex"]
    np.testing.assert_array_equal(X[:, 0], df["age at scan"].to_numpy())


def test_combat_uses_the_same_design():
    sim = fh.datasets.make_multisite(n_subjects=90, n_sites=3, n_features=4, random_state=3)
    hm = fh.ComBat(formula="center(age) * sex").fit(sim.X, sim.covariates)
    d, X = CovariateDesign.fit("center(age) * sex", sim.covariates, exclude=("site",))
    assert hm.design_.to_dict() == d.to_dict()
    assert list(hm.beta_.index) == d.columns
    np.testing.assert_array_equal(hm.design_.transform(sim.covariates), X)


# ------------------------------------------------------------------------------------------ persistence of the design
@pytest.mark.parametrize("formula", [
    "age + sex",
    "center(age) + C(grp) + sex",
    "scale(age) * flag",
    "bs(age, df=4) + cat",
    "poly(age, 2) + scanner",
    'C(sex, contr.treatment("M")) + np.log(age) + I(age**2)',
])
def test_json_round_trip(cov, formula):
    d, X = CovariateDesign.fit(formula, cov)
    text = json.dumps(d.to_dict())
    d2 = CovariateDesign.from_dict(json.loads(text))
    assert d2.to_dict() == d.to_dict()
    assert d2.columns == d.columns and d2.levels == d.levels
    np.testing.assert_array_equal(d2.transform(cov), X)
    new = pd.DataFrame({"age": [22.0, 47.5, 69.0], "sex": ["F", "M", "F"], "grp": [2, 2, 1],
                        "flag": [False, True, True], "cat": ["c", "a", "b"],
                        "scanner": ["philips", "philips", "ge"]})
    np.testing.assert_array_equal(d2.transform(new), d.transform(new))


def test_to_dict_is_plain_json(cov):
    d, _ = CovariateDesign.fit("center(age) + C(grp) + bs(age, df=3)", cov)
    dct = d.to_dict()

    def walk(o):
        if isinstance(o, dict):
            assert all(isinstance(k, str) for k in o)
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)
        else:
            assert o is None or type(o) in (bool, int, float, str), type(o)

    walk(json.loads(json.dumps(dct)))
    assert set(dct) >= {"formula", "variables", "levels", "columns", "transform_state", "float32"}


# ------------------------------------------------------------------------------------------ float32 compatibility
def test_float32_rounds_continuous_covariates(cov):
    cov["age"] = cov["age"] + 0.1  # not representable in float32
    d32, X32 = CovariateDesign.fit("age + sex", cov, float32=True)
    d64, X64 = CovariateDesign.fit("age + sex", cov)
    expected = cov["age"].to_numpy().astype(np.float32).astype(np.float64)
    np.testing.assert_array_equal(X32[:, 0], expected)
    np.testing.assert_array_equal(X64[:, 0], cov["age"].to_numpy())
    assert not np.array_equal(X32[:, 0], X64[:, 0])
    np.testing.assert_array_equal(X32[:, 1], X64[:, 1])  # categorical columns are untouched
    assert X32.dtype == np.float64
    # the flag is part of the frozen state
    d2 = CovariateDesign.from_dict(json.loads(json.dumps(d32.to_dict())))
    assert d2.float32 is True
    np.testing.assert_array_equal(d2.transform(cov), X32)


def test_combat_compat_neurocombat_uses_float32():
    sim = fh.datasets.make_multisite(n_subjects=90, n_sites=3, n_features=4, random_state=3)
    hm = fh.ComBat(formula="age + sex", compat="neuroCombat").fit(sim.X, sim.covariates)
    assert hm.design_.float32 is True
    assert fh.ComBat(formula="age + sex").fit(sim.X, sim.covariates).design_.float32 is False


@pytest.mark.parametrize("formula", ["age + sex", "sex + age", "dx + age + flag", "flag", "iq + sex + dx",
                                     "g + age", "one + age", "C(g) + age", "age * sex", "age + np.log(age)"])
def test_additive_fast_path_equals_formulaic(formula):
    # plain additive formulas are built without formulaic; the result must be formulaic's, bit for bit
    import formulaic

    rng = np.random.default_rng(0)
    n = 40
    df = pd.DataFrame({"age": rng.uniform(20, 80, n), "sex": rng.choice(["F", "M"], n),
                       "dx": pd.Categorical(rng.choice(["CN", "AD", "MCI"], n)),
                       "flag": rng.choice([True, False], n), "g": rng.choice([5, 10, 20], n),
                       "iq": rng.normal(100, 15, n).astype(np.float32), "one": ["x"] * n})
    d, X = CovariateDesign.fit(formula, df)
    mm = formulaic.model_matrix(d.formula, d._prepare(df), ensure_full_rank=True)
    cols = [c for c in mm.columns if c != "Intercept"]
    assert d.columns == cols
    np.testing.assert_array_equal(X, mm[cols].to_numpy(dtype=float))
    np.testing.assert_array_equal(d.transform(df.iloc[::-1]), X[::-1])
