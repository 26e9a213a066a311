"""A newcomer's inputs: the README's Python blocks run as written, and the command line keeps every byte
the user did not ask to change (ids, other columns), never overwrites an input and fails before writing.

Regression tests for defects found by running the README and messy real-world tables through the CLI.
"""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import featharm as fh
from featharm import _progress
from featharm.cli import main
from featharm.exceptions import InputError
from featharm.persistence import atomic_write_bytes

README = Path(__file__).resolve().parents[2] / "README.md"


def _python_block(heading: str) -> str:
    """The first ```python block after the line ``heading`` in README.md."""
    text = README.read_text(encoding="utf-8")
    start = text.index(heading)
    m = re.search(r"```python\n(.*?)```", text[start:], flags=re.S)
    assert m is not None, f"no python block after {heading!r}"
    return m.group(1)


def test_readme_python_quick_start_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the block saves combat.fhm in the working directory
    data = fh.datasets.load_ixi()
    # the README's placeholders for "new subjects": a few subjects with their own covariates
    ns = {"Xnew": data[fh.datasets.ixi_feature_columns(data)].iloc[::50],
          "cov_new": data.iloc[::50]}
    exec(compile(_python_block("## Using it from Python"), "README.md", "exec"), ns)
    X, Xh, hm, Xnew_h = ns["X"], ns["Xh"], ns["hm"], ns["Xnew_h"]
    assert Xh.index.equals(X.index) and Xh.columns.equals(X.columns)
    assert not Xh.isna().any().any() and not np.allclose(Xh.to_numpy(), X.to_numpy())
    assert hm.gamma_star_.shape == (3, X.shape[1]) and list(hm.delta_star_.columns) == list(X.columns)
    assert (tmp_path / "combat.fhm").is_file()
    # the saved and reloaded model harmonizes new subjects exactly as the fitted one
    assert Xnew_h.index.equals(ns["Xnew"].index)
    np.testing.assert_array_equal(Xnew_h.to_numpy(), hm.transform(ns["Xnew"], ns["cov_new"]).to_numpy())


def test_readme_cross_validation_block_runs():
    """The README's cross-validation code (both routes, then the loop they reproduce) on the IXI table."""
    data = fh.datasets.load_ixi()
    y = np.random.default_rng(0).integers(0, 2, len(data))  # a target that is not a covariate
    ns = {"fh": fh, "data": data, "X": data[fh.datasets.ixi_feature_columns(data)], "y": y}
    heading = "### Pipelines and cross-validation"
    exec(compile(_python_block(heading), "README.md", "exec"), ns)
    assert len(ns["scores"]) == 5
    text = README.read_text(encoding="utf-8")
    loop = re.findall(r"```python\n(.*?)```", text[text.index(heading):], flags=re.S)[1]
    exec(compile(loop, "README.md", "exec"), ns)
    assert ns["X_test"].shape[1] == ns["X"].shape[1] and not ns["X_test"].isna().any().any()


# ------------------------------------------------------------------------------------------ CLI tables
def _messy_table(n_per_site=(30, 25, 20), p=6, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    sites = np.repeat(["A", "B", "C"], n_per_site)
    n = len(sites)
    df = pd.DataFrame({
        "id": [f"{i:05d}" for i in range(n)],            # leading zeros
        "site": sites,
        "age": rng.uniform(20, 80, n).round(1),
        "sex": rng.choice(["F", "M"], n),
        "group": np.where(rng.random(n) < 0.5, "NA", "ctrl"),   # "NA" is a value, not a missing cell
        "visits": [str(k) if k % 3 else "" for k in range(n)],  # integers with gaps
        "code": "007",
    })
    shift = pd.Series(sites).map({"A": 0.0, "B": 0.4, "C": -0.3}).to_numpy()
    for j in range(p):
        df[f"roi{j}_thickness"] = 2.5 + shift + 0.01 * df["age"] + rng.normal(0, 0.1, n)
    return df.sample(frac=1, random_state=seed)  # rows not sorted by site


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr()


def test_cli_keeps_other_columns_and_ids_verbatim(tmp_path, capsys):
    src = tmp_path / "data.csv"
    _messy_table().to_csv(src, index=False)
    before = _sha(src)
    out, model = tmp_path / "out.csv", tmp_path / "m.fhm"
    code, _ = _run(["harmonize", src, "--batch", "site", "--formula", "age + sex", "--id", "id",
                    "--features", "roi*", "--out", out, "--save-model", model, "--quiet"], capsys)
    assert code == 0 and _sha(src) == before
    raw = pd.read_csv(src, dtype=str, keep_default_na=False)
    res = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(res.columns) == list(raw.columns)
    for c in ["id", "site", "age", "sex", "group", "visits", "code"]:
        pd.testing.assert_series_equal(res[c], raw[c])     # "00042", "NA", "1", "", "007" unchanged
    assert (res["roi0_thickness"] != raw["roi0_thickness"]).all()
    # apply with the saved model reproduces the harmonize output byte for byte
    out2 = tmp_path / "applied.csv"
    code, _ = _run(["apply", model, src, "--id", "id", "--out", out2, "--quiet"], capsys)
    assert code == 0 and out2.read_bytes() == out.read_bytes()


def test_cli_joins_text_ids_with_parquet_integer_ids(tmp_path, capsys):
    pytest.importorskip("pyarrow")
    df = _messy_table()
    df["id"] = np.arange(len(df)) + 1000
    feats = tmp_path / "features.csv"
    df.drop(columns=["site", "age", "sex"]).to_csv(feats, index=False)
    cov = tmp_path / "cov.parquet"
    df[["id", "site", "age", "sex"]].iloc[::-1].to_parquet(cov, index=False)  # other order, int ids
    out = tmp_path / "out.csv"
    code, err = _run(["harmonize", feats, "--covariates", cov, "--id", "id", "--batch", "site",
                      "--formula", "age + sex", "--features", "roi*", "--out", out, "--quiet"], capsys)
    assert code == 0, err.err
    assert pd.read_csv(out)["id"].tolist() == df["id"].tolist()


def test_cli_refuses_to_overwrite_its_input(tmp_path, capsys):
    src = tmp_path / "data.csv"
    _messy_table().to_csv(src, index=False)
    before = _sha(src)
    code, cap = _run(["harmonize", src, "--batch", "site", "--formula", "age + sex", "--features", "roi*",
                      "--out", tmp_path / "." / "data.csv", "--quiet"], capsys)
    assert code == 2 and _sha(src) == before
    assert cap.err.startswith("featharm: error: --out") and "input" in cap.err and cap.err.count("\n") == 1


@pytest.mark.parametrize("flag", ["--save-model", "--report"])
def test_cli_bad_output_path_fails_before_writing_anything(tmp_path, capsys, flag):
    src = tmp_path / "data.csv"
    _messy_table().to_csv(src, index=False)
    out = tmp_path / "out.csv"
    code, cap = _run(["harmonize", src, "--batch", "site", "--formula", "age + sex", "--features", "roi*",
                      "--out", out, flag, tmp_path, "--quiet"], capsys)
    assert code == 2 and not out.exists()
    assert cap.err == f"featharm: error: {flag} {tmp_path} is a directory; give a file name.\n"


def test_cli_unknown_output_format_fails_before_fitting(tmp_path, capsys):
    src = tmp_path / "data.csv"
    _messy_table().to_csv(src, index=False)
    code, cap = _run(["harmonize", src, "--batch", "site", "--features", "roi*", "--out", tmp_path / "o.xlsx",
                      "--save-model", tmp_path / "m.fhm"], capsys)
    assert code == 2 and "o.xlsx" in cap.err and not (tmp_path / "m.fhm").exists()


def test_atomic_write_names_the_target_not_the_temporary_file(tmp_path):
    with pytest.raises(IsADirectoryError, match="it is a directory"):
        atomic_write_bytes(tmp_path, b"x")
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(OSError) as info:  # parent "folder" is a file
        atomic_write_bytes(blocker / "out.csv", b"x")
    assert str(blocker / "out.csv") in str(info.value) and ".tmp" not in str(info.value)


def test_read_table_reads_ids_as_text_and_refuses_empty_ids(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("id,x\n007,1.5\n010,2.5\n")
    t = fh.io.read_table(p, index_col="id")
    assert list(t.index) == ["007", "010"] and t["x"].dtype == np.float64
    p.write_text("id,x\n007,1.5\n,2.5\n")
    with pytest.raises(InputError, match="'id'.*empty on line"):
        fh.io.read_table(p, index_col="id")


def test_diagnose_with_a_site_too_small_for_cv_fails_first_and_names_the_fix(tmp_path, capsys):
    df = _messy_table(n_per_site=(30, 25, 3))
    src = tmp_path / "d.csv"
    df.to_csv(src, index=False)
    code, cap = _run(["diagnose", src, "--batch", "site", "--formula", "age + sex", "--features", "roi*",
                      "--n-permutations", "0", "--out", tmp_path / "diag", "--quiet"], capsys)
    assert code == 2 and "'C' (rows=3)" in cap.err and "--n-splits" in cap.err
    assert not (tmp_path / "diag").exists()
    code, cap = _run(["diagnose", src, "--batch", "site", "--formula", "age + sex", "--features", "roi*",
                      "--n-permutations", "0", "--classification-permutations", "0", "--n-splits", "3",
                      "--out", tmp_path / "diag", "--quiet"], capsys)
    assert code == 0, cap.err
    assert (pd.read_csv(tmp_path / "diag" / "site_classification.csv")["n_splits"] == 3).all()


def test_progress_bar_writes_lines_not_carriage_returns_to_a_log():
    buf = io.StringIO()  # not a terminal
    with _progress.enable(), _progress.Progress(10_000, "step", stream=buf, delay=0.0) as bar:
        for _ in range(10_000):
            bar.update()
    lines = buf.getvalue().splitlines()
    assert "\r" not in buf.getvalue() and 1 <= len(lines) <= 3 and lines[-1].startswith("step: [####")


# ------------------------------------------------------------------------------------------ covariates
def _ixi():
    data = fh.datasets.load_ixi()
    return data, data[fh.datasets.ixi_feature_columns(data)]


def test_numbers_read_as_text_are_not_silently_a_500_level_factor():
    data, X = _ixi()
    d = data.copy()
    d["age"] = d["age"].astype(str)       # e.g. a Parquet/Excel column typed as text
    with pytest.raises(fh.exceptions.FormulaError, match=r"'age' holds numbers stored as text.*pd.to_numeric"):
        fh.ComBat(batch="site", formula="age + sex").fit(X, d)
    d.loc[d.index[4], "age"] = "n/a?"     # a CSV column spoiled by one typo is read as text
    with pytest.raises(fh.exceptions.FormulaError, match=r"\['n/a\?'\] at rows 'sub-IXI015'"):
        fh.ComBat(batch="site", formula="age + sex").fit(X, d)
    with pytest.raises(fh.exceptions.FormulaError, match="scale_formula: covariate 'age'"):
        fh.ComBatLS(batch="site", formula="sex", scale_formula="age").fit(X, d)


def test_few_coded_levels_as_text_stay_categorical():
    data, X = _ixi()
    d = data.copy()
    d["sex01"] = (d["sex"] == "M").astype(int).astype(str)    # "0"/"1": a factor, as documented
    a = fh.ComBat(batch="site", formula="age + sex01").fit_transform(X, d)
    b = fh.ComBat(batch="site", formula="age + sex").fit_transform(X, data)
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=0, atol=1e-12)


def test_cli_numeric_covariate_with_a_typo_is_one_line(tmp_path, capsys):
    df = _messy_table()
    df["age"] = df["age"].astype(object)
    df.iloc[3, df.columns.get_loc("age")] = "unknown"
    src = tmp_path / "d.csv"
    df.to_csv(src, index=False)
    code, cap = _run(["harmonize", src, "--batch", "site", "--formula", "age + sex", "--features", "roi*",
                      "--out", tmp_path / "o.csv"], capsys)
    assert code == 2 and cap.err.startswith("featharm: error: covariate 'age' looks numeric but holds text: "
                                            "['unknown']") and cap.err.count("\n") == 1


# ------------------------------------------------------------------------------------------ NumPy input
def test_diagnostics_and_plots_take_numpy_features_like_the_models():
    from featharm import diagnostics as dg
    from featharm import plots

    data, X = _ixi()
    Xh = fh.ComBat(batch="site", formula="age + sex").fit_transform(X, data)
    a = dg.test_site_effects(X.to_numpy(), data, batch="site", formula="age + sex")
    b = dg.test_site_effects(X, data, batch="site", formula="age + sex")
    np.testing.assert_allclose(a["statistic"], b["statistic"], rtol=1e-12)
    pres = dg.biology_preservation(X, Xh.to_numpy(), data, formula="age + sex")
    ref = dg.biology_preservation(X, Xh, data, formula="age + sex")
    pd.testing.assert_frame_equal(pres.table, ref.table)
    fig = plots.site_effects_before_after(X.to_numpy(), Xh.to_numpy(), data, formula="age + sex")
    assert fig.axes
    with pytest.raises(fh.exceptions.AlignmentError, match="NumPy array with 555 rows but the covariates have 556"):
        dg.test_site_effects(X.to_numpy()[:-1], data, batch="site", formula="age + sex")


# ------------------------------------------------------------------------------------------ site codes
def test_site_codes_as_numbers_or_text_are_the_same_sites():
    data, X = _ixi()
    d_int = data.copy()
    d_int["site"] = d_int["site"].astype("category").cat.codes      # 0, 1, 2 (e.g. from a CSV)
    d_txt = d_int.copy()
    d_txt["site"] = d_txt["site"].astype(str)                         # "0", "1", "2" (e.g. from Parquet)
    m = fh.ComBat(batch="site", formula="age + sex").fit(X, d_int)
    np.testing.assert_array_equal(m.transform(X, d_txt).to_numpy(), m.transform(X, d_int).to_numpy())
    m_txt = fh.ComBat(batch="site", formula="age + sex").fit(X, d_txt)
    np.testing.assert_array_equal(m_txt.transform(X, d_int).to_numpy(), m_txt.transform(X, d_txt).to_numpy())
    # with a new site estimated, the seen sites given as text are still the seen sites
    new_int = d_int.copy()
    new_int.loc[new_int.index[:8], "site"] = 7
    new_txt = new_int.assign(site=new_int["site"].astype(str))
    a = m.transform(X, new_int, new_sites="estimate")
    b = m.transform(X, new_txt, new_sites="estimate")
    np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())
    np.testing.assert_array_equal(a.iloc[8:].to_numpy(), m.transform(X.iloc[8:], d_int.iloc[8:]).to_numpy())
    with pytest.raises(fh.exceptions.UnseenBatchError, match=r"'7' \(8 rows\)"):
        m.transform(X, new_txt)


def test_cli_option_errors_are_one_line_with_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["apply", "m.fhm", "d.csv", "--out", "o.csv", "--new-sites", "bogus"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert err.startswith("featharm: error: argument --new-sites: invalid choice: 'bogus'")
    assert err.rstrip().endswith("(see: featharm apply --help)")
    with pytest.raises(SystemExit) as info:
        main(["harmonize", "d.csv", "--out", "o.csv"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err == ("featharm: error: the following arguments are required: --batch "
                                            "(see: featharm harmonize --help)\n")


# ------------------------------------------------------------------------------------------ column names
def test_unicode_and_spaced_covariate_names_through_formula_cli_and_model_file(tmp_path, capsys):
    df = _messy_table().drop(columns=["visits", "code"]).rename(
        columns={"age": "Âge (years)", "sex": "Geschlecht_é", "site": "scan site"})
    df["größe"] = np.linspace(150, 190, len(df))     # a numeric covariate named in Unicode: not a feature
    src = tmp_path / "d.csv"
    df.to_csv(src, index=False)
    out, model = tmp_path / "o.csv", tmp_path / "m.fhm"
    code, cap = _run(["harmonize", src, "--batch", "scan site", "--formula", "`Âge (years)` * Geschlecht_é + größe",
                      "--id", "id", "--out", out, "--save-model", model, "--quiet"],
                     capsys)
    assert code == 0, cap.err
    res = pd.read_csv(out, dtype=str, keep_default_na=False)
    raw = pd.read_csv(src, dtype=str, keep_default_na=False)
    for c in ["Âge (years)", "Geschlecht_é", "größe"]:
        assert res[c].equals(raw[c])
    m = fh.load_model(model)
    assert list(m.feature_names_in_) == [f"roi{j}_thickness" for j in range(6)]
    assert m.design_.columns == ["Âge (years)", "Geschlecht_é[T.M]", "größe", "Âge (years):Geschlecht_é[T.M]"]
    code, cap = _run(["apply", model, src, "--id", "id", "--out", tmp_path / "a.csv", "--quiet"], capsys)
    assert code == 0 and (tmp_path / "a.csv").read_bytes() == out.read_bytes()


def test_patsy_quoting_gets_a_backtick_hint():
    data, X = _ixi()
    d = data.rename(columns={"age": "Age (years)"})
    with pytest.raises(fh.exceptions.FormulaError, match=r"go in backticks: `Age \(years\)`"):
        fh.ComBat(batch="site", formula="Q('Age (years)') + sex").fit(X, d)
    with pytest.raises(fh.exceptions.FormulaError, match="go in backticks"):
        fh.ComBat(batch="site", formula="Age (years) + sex").fit(X, d)


def test_gzipped_csv_in_and_out(tmp_path, capsys):
    import gzip

    df = _messy_table()
    src = tmp_path / "d.csv.gz"
    src.write_bytes(gzip.compress(df.to_csv(index=False).encode()))
    plain, packed = tmp_path / "o.csv", tmp_path / "o.csv.gz"
    for out in (plain, packed):
        code, cap = _run(["harmonize", src, "--batch", "site", "--formula", "age + sex", "--features", "roi*",
                          "--id", "id", "--out", out, "--quiet"], capsys)
        assert code == 0, cap.err
    assert gzip.decompress(packed.read_bytes()) == plain.read_bytes()   # really gzip, same table
    assert pd.read_csv(packed, dtype=str)["id"].tolist() == df["id"].tolist()
    with pytest.raises(InputError, match="Parquet files compress themselves"):
        fh.io.write_table(df, tmp_path / "x.parquet.gz")


def test_load_model_of_a_directory_is_a_model_file_error(tmp_path):
    with pytest.raises(fh.exceptions.ModelFileError, match="is a directory, not a model file"):
        fh.load_model(tmp_path)


def test_report_takes_numpy_features_like_the_models():
    data, X = _ixi()
    data = data.iloc[::4]
    X = X.loc[data.index].iloc[:, :4]
    m = fh.ComBat(batch="site", formula="age + sex").fit(X, data)
    rep = fh.report.make_report(X.to_numpy(), data, model=m, classification=False)
    assert "lh_bankssts_thickness" in rep.html       # the model's feature names, not x0, x1, ...


# ------------------------------------------------------------------------------------------ spreadsheets
def _cli_error(tmp_path, capsys, src) -> str:
    code, cap = _run(["harmonize", src, "--batch", "site", "--formula", "age + sex", "--features", "roi*",
                      "--out", tmp_path / "o.csv", "--quiet"], capsys)
    assert code == 2 and cap.err.count("\n") == 1 and not (tmp_path / "o.csv").exists()
    return cap.err


def test_tables_pandas_would_silently_misread_are_refused(tmp_path, capsys):
    df = _messy_table()
    semi = tmp_path / "semi.csv"                       # European Excel: ';' and decimal commas
    df.to_csv(semi, sep=";", decimal=",", index=False)
    assert "looks separated by ';', not ','" in _cli_error(tmp_path, capsys, semi)
    dup = tmp_path / "dup.csv"                         # pandas would rename the second 'age' to 'age.1'
    text = df.to_csv(index=False).split("\n", 1)
    dup.write_text(text[0].replace("code", "age") + "\n" + text[1])
    assert "repeats the column name(s) ['age']" in _cli_error(tmp_path, capsys, dup)
    latin = tmp_path / "latin.csv"                     # Windows Excel "CSV" with an accent
    df.assign(group="contrôle").to_csv(latin, index=False, encoding="latin-1")
    assert "is not UTF-8 text" in _cli_error(tmp_path, capsys, latin)
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    assert "cannot read" in _cli_error(tmp_path, capsys, bad)


def test_excel_utf8_bom_and_crlf_are_read(tmp_path, capsys):
    df = _messy_table()
    src = tmp_path / "excel.csv"
    df.to_csv(src, index=False, encoding="utf-8-sig", lineterminator="\r\n")
    code, cap = _run(["harmonize", src, "--batch", "site", "--formula", "age + sex", "--features", "roi*",
                      "--id", "id", "--out", tmp_path / "o.csv", "--quiet"], capsys)
    assert code == 0, cap.err
    assert pd.read_csv(tmp_path / "o.csv", dtype=str)["id"].tolist() == df["id"].tolist()


def test_levels_differing_only_by_case_or_spaces_warn():
    data, X = _ixi()
    d = data.copy()
    d.loc[d.index[:12], "site"] = "Guys "       # a trailing space typed in a spreadsheet
    with pytest.warns(fh.exceptions.LevelNameWarning, match=r"'site' .*'Guys' vs 'Guys '"):
        fh.ComBat(batch="site", formula="age + sex").fit(X, d)
    d = data.copy()
    d.loc[d.index[:12], "sex"] = "m"
    with pytest.warns(fh.exceptions.LevelNameWarning, match=r"covariate 'sex' .*'M' vs 'm'"):
        m = fh.ComBat(batch="site", formula="age + sex").fit(X, d)
    assert any(w["category"] == "LevelNameWarning" for w in m.fit_warnings_)   # kept for the report


def test_an_index_saved_by_pandas_is_not_a_feature_and_keeps_its_empty_header(tmp_path, capsys):
    df = _messy_table().drop(columns=["visits", "code"]).reset_index(drop=True)
    src = tmp_path / "d.csv"
    df.to_csv(src)                                      # index=True: a first column with an empty header
    out, model = tmp_path / "o.csv", tmp_path / "m.fhm"
    code, cap = _run(["harmonize", src, "--batch", "site", "--formula", "age + sex", "--id", "id", "--out", out,
                      "--save-model", model, "--quiet"], capsys)
    assert code == 0, cap.err
    assert list(fh.load_model(model).feature_names_in_) == [f"roi{j}_thickness" for j in range(6)]
    assert out.read_text().split("\n")[0] == src.read_text().split("\n")[0]    # ",id,site,..."
    assert pd.read_csv(out, index_col=0).index.tolist() == list(range(len(df)))


# ------------------------------------------------------------------------------------------ feature dtypes
def test_feature_dtype_errors_point_at_a_value_and_the_fix():
    data, X = _ixi()
    with pytest.raises(fh.exceptions.NonNumericFeatureError, match=r"numbers in an object column.*astype\(float\)"):
        fh.ComBat(batch="site", formula="age + sex").fit(X.astype(object), data)   # a transpose, a row-wise build
    Xs = X.astype(str)
    Xs.iloc[3, 2] = "n/a"
    with pytest.raises(fh.exceptions.NonNumericFeatureError,
                       match=r"'lh_caudalmiddlefrontal_thickness' holds 'n/a' at row 'sub-IXI014'"):
        fh.ComBat(batch="site", formula="age + sex").fit(Xs, data)
    with pytest.raises(fh.exceptions.NonNumericFeatureError, match="numbers stored as text"):
        fh.ComBat(batch="site", formula="age + sex").fit(X.astype(str), data)
    with pytest.raises(fh.exceptions.NonNumericFeatureError, match="complex128"):   # was: imaginary part dropped
        fh.ComBat(batch="site", formula="age + sex").fit(X.astype(complex), data)


def test_readme_freesurfer_block_imports_what_it_calls():
    """The block reads placeholder paths, so it is not run; but every function it calls must be imported
    by its own import line and exist in featharm.io (read_fs_tables was called without being imported)."""
    import ast

    import featharm.io as fio

    tree = ast.parse(_python_block("## Reading FreeSurfer outputs"))
    imported = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                for a in node.names}
    called = {node.func.id for node in ast.walk(tree)
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    assert called <= imported, f"called but not imported: {sorted(called - imported)}"
    assert all(hasattr(fio, name) for name in imported)
