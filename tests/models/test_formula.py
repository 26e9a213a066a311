"""featharm's formula grammar (featharm.formula) and the design it builds without evaluating text.

* every formula of the grammar gives exactly formulaic's columns, names and values (formulaic is the
  library featharm used before it had its own evaluator, and stays the cross-check);
* anything outside the grammar is refused before evaluation, naming the token and listing what is allowed;
* models saved by featharm 0.1 (formula text + formulaic's state) load and transform exactly as then.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import featharm as fh
from featharm.design import CovariateDesign
from featharm.exceptions import ColumnNotFoundError, FormulaError, ModelFileError, OutOfRangeError
from featharm.formula import parse_formula

V01 = Path(__file__).parents[1] / "data" / "models_v01"


@pytest.fixture(scope="module")
def df():
    rng = np.random.default_rng(0)
    n = 60
    return pd.DataFrame({
        "age": rng.uniform(20, 80, n), "b": rng.normal(size=n), "iq": rng.normal(100, 15, n),
        "sex": rng.choice(["F", "M"], n), "sc": rng.choice(["ge", "ph", "si"], n),
        "fl": rng.choice([True, False], n), "g": rng.choice([5, 10, 20], n),
        "Age (years)": rng.uniform(20, 80, n),
    })


CROSS_CHECK = [
    "age + sex", "age * sex", "age:b + sex", "sex:sc", "age:sex", "sex:sc + sex", "age*sex*b",
    "(age + sex + b)**2", "sex/age", "(sex + b)/age", "sc*fl - sc", "fl:sex:age", "age + age:sex:sc",
    "I(age**2)", "I(age ** 2 + b)", "I((age - 50) / 10)", "I(-age)", "I(2*age - b**3)", "np.log(age)",
    "log(age) + sqrt(iq)", "np.log1p(age) + exp(b)", "abs(b) + numpy.log10(age)", "center(age)",
    "scale(age) + sex", "standardize(iq):sex", "center(log(age))", "I(center(age)**2)", "bs(age, df=4)",
    "bs(age, df=5) * sex", "bs(age, knots=[40, 60], degree=2)", "bs(age, df=4, lower_bound=10, upper_bound=90)",
    "poly(age, 3) + sex", "poly(age, degree=2):sc", "C(g)", "C(g) + age", "C(sex, contr.treatment('M'))",
    'C(sex, Treatment("M")) * age', "C(sc, Treatment(reference='si')) + age", "C(g, Treatment(10))",
    "`Age (years)` + sex", "center(`Age (years)`) * sc", "age + sex + age:sex - age:sex", "sc + sex:fl",
    "(age + b):(sex + sc)", "~ age + sex",
]


@pytest.mark.parametrize("formula", CROSS_CHECK)
def test_same_design_as_formulaic(df, formula):
    import formulaic

    d, X = CovariateDesign.fit(formula, df)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # formulaic evaluates Python: here it is given featharm's functions, for the cross-check only
        context = {name: getattr(np, name) for name in ("log", "log1p", "log2", "log10", "exp", "sqrt", "abs")}
        mm = formulaic.model_matrix(d.formula, d._prepare(df), ensure_full_rank=True,
                                    context={**context, "numpy": np, "np": np})
    cols = [c for c in mm.columns if c != "Intercept"]
    assert d.columns == cols
    np.testing.assert_array_equal(X, mm[cols].to_numpy(dtype=float))
    # rebuilt from its data alone (as after loading a model file) on any rows: the same matrix
    d2 = CovariateDesign.from_dict(json.loads(json.dumps(d.to_dict())))
    np.testing.assert_array_equal(d2.transform(df.iloc[::-1]), X[::-1])
    np.testing.assert_array_equal(d2.transform(df.iloc[[7]]), X[[7]])


def test_stored_design_is_data_not_text(df):
    d, _ = CovariateDesign.fit("center(age) + C(sc, Treatment('si')) + bs(age, df=4):sex", df)
    stored = json.loads(json.dumps(d.to_dict()))
    kinds = {f["name"]: f["kind"] for f in stored["spec"]["factors"]}
    assert kinds == {"center(age)": "numerical", "C(sc, Treatment('si'))": "categorical",
                     "bs(age, df=4)": "numerical", "sex": "categorical"}
    assert stored["transform_state"]["center(age)"] == {"center": pytest.approx(df["age"].mean(), rel=1e-15)}
    # the matrix comes from the data: change the frozen centre and the column moves by exactly that
    stored["transform_state"]["center(age)"]["center"] += 1.0
    X2 = CovariateDesign.from_dict(stored).transform(df)
    j = d.columns.index("center(age)")
    np.testing.assert_allclose(X2[:, j], d.transform(df)[:, j] - 1.0, rtol=0, atol=1e-12)


@pytest.mark.parametrize("change", [
    lambda s: s.__setitem__("formula", "garbage that the grammar refuses("),
    lambda s: s.__setitem__("formula", 'I(__import__("os").getpid())'),
    lambda s: s.__setitem__("formula", "age + sex"),  # readable, but not what the data say
    lambda s: s["spec"]["factors"][0].__setitem__("node", ["call", "__import__", [["col", "age"]], {}]),
    lambda s: s["spec"]["factors"][0].__setitem__("node", ["call", "np.load", [["col", "age"]], {}]),
    lambda s: s["spec"]["factors"][0].__setitem__("node", ["attr", ["col", "age"], "__class__"]),
    lambda s: s["spec"]["factors"][0].__setitem__("node", ["num", float("nan")]),
    lambda s: s["spec"]["blocks"].append([["nonexistent", False]]),
    lambda s: s["spec"]["blocks"].pop(),
    lambda s: s["columns"].pop(),
    lambda s: s["transform_state"].__setitem__("center(age)", {"center": "0"}),
    lambda s: s["transform_state"]["bs(age, df=4)"].__setitem__("knots", [3.0, 1.0]),
    lambda s: s["spec"].__setitem__("version", 99),
    lambda s: s["levels"].__setitem__("sex", ["F", "F"]),
])
def test_tampered_design_data_is_a_model_file_error(df, change):
    d, _ = CovariateDesign.fit("center(age) + C(sc, Treatment('si')) + bs(age, df=4):sex", df)
    stored = json.loads(json.dumps(d.to_dict()))
    change(stored)
    with pytest.raises(ModelFileError):
        CovariateDesign.from_dict(stored)


HOSTILE = [
    ('I(age*0 + __import__("os").system("touch pwned"))', "__import__"),
    ("age.__class__", "attribute access"),
    ("os.system('x')", "attribute access"),
    ("np.random.seed(0)", "attribute access"),
    ("eval('1')", "'eval'"),
    ("age[0]", "'['"),
    ("I(age[0])", "'['"),
    ("lambda x: x", "lambda"),
    ("I('text')", "text is not allowed"),
    ("age + 'x'", None),
    ("__builtins__", "__builtins__"),
    ("open('/etc/passwd')", "'open'"),
    ("age; import os", "';'"),
    ("age @ b", "'@'"),
    ("getattr(age, 'x')", "'getattr'"),
    ("I(age if b else 1)", None),
    ("C(sex, Sum)", "contr.treatment"),
    ("center(age, 3)", "one argument"),
    ("bs(age, df=4, extrapolation='extend')", "keywords"),
    ("poly(age, 99)", "degree"),
    ("I(" * 60 + "age" + ")" * 60, "nested"),
]


@pytest.mark.parametrize("formula,needle", HOSTILE)
def test_outside_the_grammar_is_refused_naming_the_token(df, formula, needle):
    with pytest.raises(FormulaError) as ei:
        CovariateDesign.fit(formula, df)
    msg = str(ei.value)
    if needle:
        assert needle in msg
    assert "nested" in msg or "Allowed:" in msg  # lists what is allowed


def test_unknown_column_is_named(df):
    with pytest.raises(ColumnNotFoundError, match="'height'"):
        CovariateDesign.fit("age + log(height)", df)


def test_parse_gives_terms_variables_and_smooth_terms():
    p = parse_formula("sex + s(age) + center(iq):sex + C(g)")
    assert p.smooth_terms() == ["age"]
    assert p.variables() == ["sex", "age", "g", "iq"]  # in model order: terms by degree
    assert p.categorical_variables() == {"g"}
    assert p.without_smooth() == "sex + C(g) + center(iq):sex"


def test_spline_refuses_values_outside_its_fitted_range(df):
    d, _ = CovariateDesign.fit("bs(age, df=4)", df)
    with pytest.raises(OutOfRangeError, match="bs"):
        d.transform(pd.DataFrame({"age": [df["age"].max() + 5]}))


def test_categorical_in_arithmetic_is_an_error(df):
    with pytest.raises(FormulaError, match="categorical column 'sex'"):
        CovariateDesign.fit("I(sex * 2)", df)


# ------------------------------------------------------------------------------- models saved by featharm 0.1
@pytest.mark.parametrize("name", ["additive", "stateful", "spline", "poly", "contrast", "gam", "combatls"])
def test_models_saved_before_the_grammar_still_load(name):
    data = pd.read_csv(V01 / "data.csv", index_col=0)
    expected = pd.read_csv(V01 / f"{name}_harmonized.csv", index_col=0)
    model = fh.load_model(V01 / f"{name}.fhm")
    out = model.transform(data[expected.columns], data)
    np.testing.assert_allclose(out.to_numpy(), expected.to_numpy(), rtol=1e-13, atol=0)


def test_old_model_with_an_injected_formula_is_refused(tmp_path):
    import zipfile

    src = V01 / "stateful.fhm"
    with zipfile.ZipFile(src) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        members = {n: zf.read(n) for n in zf.namelist()}
    marker = tmp_path / "pwned"
    manifest["state"]["design"]["formula"] = (f'center(age) + C(grp) + sex + I(age*0 + '
                                              f'__import__("os").system("touch {marker}"))')
    bad = tmp_path / "bad.fhm"
    with zipfile.ZipFile(bad, "w") as zf:
        for n, b in members.items():
            zf.writestr(n, json.dumps(manifest) if n == "manifest.json" else b)
    with pytest.raises(ModelFileError, match="__import__"):
        fh.load_model(bad)
    assert not marker.exists()


def test_expansion_is_capped_before_the_terms_are_built():
    """(a+b+...)**k and a*b*c*... grow exponentially: the parser stops at MAX_TERMS terms (or MAX_TERM_FACTORS
    factors in one interaction) with a FormulaError naming the limit, instead of building them all."""
    from featharm import formula as fm

    names = [f"a{i}" for i in range(16)]
    for text in (f"({' + '.join(names)})**16", "*".join(names[:14]), f"({' + '.join(names[:12])})**5"):
        with pytest.raises(FormulaError, match=f"more than {fm.MAX_TERMS} terms"):
            parse_formula(text)
    with pytest.raises(FormulaError, match=f"at most {fm.MAX_TERM_FACTORS} in one term"):
        parse_formula(":".join(names[:11]))
    # just under the limits, and a huge power of a small sum (a higher power adds nothing once all are there)
    assert len(parse_formula("*".join(names[:9])).terms) == 2**9 - 1
    assert len(parse_formula(":".join(names[:10])).terms) == 1
    assert len(parse_formula("(a + b + c)**1000000000").terms) == 7
    assert len(parse_formula(f"({' + '.join(names[:12])})**3").terms) == 12 + 66 + 220
