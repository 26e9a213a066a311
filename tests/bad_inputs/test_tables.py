"""Tables that are almost right: a few bad cells, a column of the wrong kind, labels that collide.

Each case runs the command line on a table with one defect and expects a one-line refusal (exit 2, no
traceback, no output written, inputs unchanged) that names the column, the values and the rows (ids with
``--id``, else line numbers of the file, the header being line 1) and says how to fix it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from .conftest import FAMILIES, _long_table, _table, expect_refusal, fitted_model


def _write(df: pd.DataFrame, folder: Path, name: str = "data.csv") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False)
    return path


def _out(tmp_path: Path, name: str = "h.csv") -> Path:
    (tmp_path / "out").mkdir(exist_ok=True)
    return tmp_path / "out" / name


def _spoil(df: pd.DataFrame, col: str, cells: dict) -> pd.DataFrame:
    """``df`` with the cells ``{row position: value}`` of ``col`` replaced (the column becomes text)."""
    df = df.copy()
    df[col] = df[col].astype(object)
    for row, value in cells.items():
        df.iloc[row, df.columns.get_loc(col)] = value
    return df


def _harmonize(capsys, data, out, *extra, needles=(), inputs=None, formula="age + sex"):
    argv = ["harmonize", data, "--batch", "site", "--out", out, *(["--formula", formula] if formula else []), *extra]
    return expect_refusal(capsys, argv, needles=needles, inputs=inputs or [data], outputs=[out])


# ------------------------------------------------------------------------------------------ feature columns
@pytest.mark.parametrize("cell, needle", [
    ("n/a?", "'n/a?' at rows 5, 12"),
    ("2,45", "'2,45' at rows 5, 12"),            # quoted in the CSV (it holds the separator)
    ("45y", "'45y' at rows 5, 12"),
], ids=["typo", "decimal-comma", "unit"])
def test_numeric_feature_with_text_cells_is_named_not_skipped(capsys, tmp_path, cell, needle):
    """Read as text because of two cells, the column was silently left out of the features."""
    data = _write(_spoil(_table(), "roi002", {3: cell, 10: cell}), tmp_path / "in")
    if cell == "2,45":
        assert '"2,45"' in data.read_text()
    r = _harmonize(capsys, data, _out(tmp_path),
                   needles=["feature column 'roi002'", needle, "2 of its 90 values are not numbers", "--features"])
    assert r.err.count(repr(cell)) == 1 + (cell == "2,45")   # each bad value shown once (and the comma hint)


def test_feature_text_cells_are_named_by_id_with_id(capsys, tmp_path):
    df = _spoil(_table(), "roi004", {3: "n/a?", 10: "n/a?", 20: "45y"})
    data = _write(df, tmp_path / "in")
    _harmonize(capsys, data, _out(tmp_path), "--id", "subject_id",
               needles=["'roi004'", "'n/a?' at rows 'sub-003', 'sub-010'", "'45y' at row 'sub-020'"])


def test_feature_text_cells_are_named_by_diagnose_too(capsys, tmp_path):
    data = _write(_spoil(_table(), "roi001", {7: "?"}), tmp_path / "in")
    out = tmp_path / "out" / "diag"
    expect_refusal(capsys, ["diagnose", data, "--batch", "site", "--formula", "age + sex", "--out", out],
                   needles=["'roi001'", "'?' at row 9"], inputs=[data], outputs=[out])


def test_apply_names_text_cells_of_a_fitted_feature(capsys, tmp_path, family_model):
    family, model, source = family_model
    df = pd.read_csv(source)
    data = _write(_spoil(df, "roi001", {0: "n/a?", 5: "1.2.3"}), tmp_path / "in")
    out = _out(tmp_path)
    expect_refusal(capsys, ["apply", model, data, "--out", out],
                   needles=["'roi001'", "'n/a?' at row 2", "'1.2.3' at row 7", "fitted on"],
                   inputs=[model, data], outputs=[out])


def test_features_pattern_matching_a_text_column(capsys, tmp_path):
    data = _write(_table(), tmp_path / "in")
    _harmonize(capsys, data, _out(tmp_path), "--features", "roi*", "sex", formula="age",
               needles=["feature column 'sex'", "holds text", "'F' at rows", "patterns"])


def test_features_pattern_matching_a_true_false_column(capsys, tmp_path):
    df = _table()
    df["roi_flag"] = df["roi000"] > df["roi000"].median()
    data = _write(df, tmp_path / "in")
    _harmonize(capsys, data, _out(tmp_path), "--features", "roi*",
               needles=["'roi_flag'", "true/false"])


def test_table_without_feature_columns(capsys, tmp_path):
    data = _write(_table()[["subject_id", "site", "age", "sex"]], tmp_path / "in")
    _harmonize(capsys, data, _out(tmp_path), needles=["no numeric feature columns", "subject_id", "--features"])


def test_repeated_column_names(capsys, tmp_path):
    df = _table()
    data = tmp_path / "in" / "data.csv"
    data.parent.mkdir()
    text = df.to_csv(index=False).replace("roi003", "roi002", 1)   # two columns named roi002
    data.write_text(text)
    _harmonize(capsys, data, _out(tmp_path), needles=["roi002", "repeats"])


# ------------------------------------------------------------------------------------------ covariates
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_age_with_a_unit_is_no_categorical_covariate(capsys, tmp_path, family):
    """'45y': 40 levels of text would have been 40 dummy columns (or a cryptic dtype error)."""
    long = family == "longitudinal"
    df = _long_table() if long else _table()
    df["age"] = [f"{a:.0f}y" for a in df["age"]]
    data = _write(df, tmp_path / "in")
    extra = {"gam": ["--smooth", "age"], "longitudinal": ["--subject", "subject"]}.get(family, [])
    formula = {"gam": "sex", "combatls": "sex", "longitudinal": "age + sex + time"}.get(family, "age + sex")
    if family == "combatls":
        extra = ["--scale-formula", "age"]
    needles = ["'age'", "y'"]
    if family == "gam":  # a smooth term: a number is required
        needles += ["smooth term column", "numeric column", "y' at row 2"]
    else:
        needles += ["looks numeric but holds text", "without their unit", "at rows 2, 3"]
    _harmonize(capsys, data, _out(tmp_path), "--method", FAMILIES[family]["method"], *extra, formula=formula,
               needles=needles)


def test_many_level_text_covariate(capsys, tmp_path):
    df = _table()
    df["scan_code"] = [f"scan-{i:03d}-{s}" for i, s in enumerate(df["site"])]
    data = _write(df, tmp_path / "in")
    _harmonize(capsys, data, _out(tmp_path), "--method", "covbat", formula="age + scan_code",
               needles=["'scan_code'", "90 distinct values in 90 rows", "'scan-000-", "at row 2",
                        "leave it out of the formula"])


def test_numeric_covariate_stored_as_text(capsys, tmp_path):
    """A Parquet column typed as text: every value a number, 40+ levels."""
    df = _table()
    df["age"] = df["age"].map(lambda a: f"{a:.1f}")
    data = _write(df, tmp_path / "in", "data.parquet")
    _harmonize(capsys, data, _out(tmp_path), needles=["'age'", "numbers stored as text", "pd.to_numeric"])


def test_numeric_covariate_with_a_typo_in_the_scale_formula(capsys, tmp_path):
    data = _write(_spoil(_table(), "age", {6: "unknown"}), tmp_path / "in")
    _harmonize(capsys, data, _out(tmp_path), "--method", "combatls", "--scale-formula", "age", formula="sex",
               needles=["scale_formula", "'age' looks numeric but holds text: ['unknown'] at rows 8"])


def test_covariate_text_cells_in_a_covariate_file_named_by_id(capsys, tmp_path):
    df = _table()
    feats = _write(df.drop(columns=["site", "age", "sex"]), tmp_path / "in")
    cov = _write(_spoil(df[["subject_id", "site", "age", "sex"]], "age", {4: "45y", 9: "n/a?"}), tmp_path / "in",
                 "cov.csv")
    out = _out(tmp_path)
    expect_refusal(capsys, ["harmonize", feats, "--covariates", cov, "--id", "subject_id", "--batch", "site",
                            "--formula", "age + sex", "--out", out],
                   needles=["'age'", "'45y'", "'n/a?'", "'sub-004', 'sub-009'"], inputs=[feats, cov], outputs=[out])


def test_scale_formula_confounded_with_site(capsys, tmp_path):
    df = _table()
    df["scanner"] = df["site"].map({"site01": "Prisma", "site02": "Trio", "site03": "Prisma"})
    data = _write(df, tmp_path / "in")
    _harmonize(capsys, data, _out(tmp_path), "--method", "combatls", "--scale-formula", "age + scanner",
               needles=["scale_formula 'age + scanner'", "'scanner[T.Trio]'", "confounded with 'site'", "Drop it"])


def test_covariate_with_missing_values(capsys, tmp_path):
    df = _table()
    df.loc[[3, 40], "age"] = np.nan
    data = _write(df, tmp_path / "in")
    _harmonize(capsys, data, _out(tmp_path), "--method", "gam", "--smooth", "age", formula="sex",
               needles=["'age'", "missing or infinite values at rows 5, 42"])


def test_linear_covariate_with_missing_values(capsys, tmp_path):
    df = _table()
    df.loc[[3, 40], "sex"] = np.nan
    data = _write(df, tmp_path / "in")
    _harmonize(capsys, data, _out(tmp_path), needles=["'sex'", "missing values at rows 5, 42", "fill them or drop"])


def test_time_column_with_text(capsys, tmp_path):
    df = _spoil(_long_table(), "time", {2: "baseline"})
    data = _write(df, tmp_path / "in")
    _harmonize(capsys, data, _out(tmp_path), "--method", "longitudinal", "--subject", "subject", "--time", "time",
               "--random-slope", formula="age + sex",
               needles=["time column 'time'", "numeric column", "'baseline' at row 4"])


# ------------------------------------------------------------------------------------------ batch column
def test_batch_with_missing_labels(capsys, tmp_path):
    df = _table()
    df.loc[[0, 17], "site"] = np.nan
    data = _write(df, tmp_path / "in")
    _harmonize(capsys, data, _out(tmp_path), needles=["batch column 'site'", "missing values at rows 2, 19"])


def test_batch_with_missing_labels_at_apply(capsys, tmp_path, family_model):
    family, model, source = family_model
    df = pd.read_csv(source)
    df.loc[4, "site"] = np.nan
    data = _write(df, tmp_path / "in")
    out = _out(tmp_path)
    expect_refusal(capsys, ["apply", model, data, "--out", out], needles=["'site'", "missing values at rows 6"],
                   inputs=[model, data], outputs=[out])


def test_batch_labels_that_are_one_number_written_differently(capsys, tmp_path):
    df = _table()
    df["site"] = df["site"].str.replace("site0", "", regex=False)       # "1", "2", "3"
    df.loc[df.index[df["site"] == "3"][:12], "site"] = "03"               # the same site, another spelling
    df.loc[0, "site"] = "S4"                                             # and a text label: read as text
    data = _write(df, tmp_path / "in")
    _harmonize(capsys, data, _out(tmp_path), needles=["'site'", "'03' (rows", "'3' (rows", "one number in different"])


def test_numeric_and_text_batch_levels_match_at_apply(capsys, tmp_path):
    """Sites 1, 2, 3 at fit; "1", "2", "3" (text: one label 'x' spoils the column) at apply: the same
    sites, so only the unseen 'x' is refused, by name and row."""
    df = _table()
    df["site"] = df["site"].str.replace("site0", "", regex=False).astype(int)
    src = _write(df, tmp_path / "fit")
    model = tmp_path / "fit" / "m.fhm"
    from featharm.cli import main

    assert main(["harmonize", str(src), "--batch", "site", "--formula", "age + sex", "--out",
                 str(tmp_path / "fit" / "h.csv"), "--save-model", str(model), "--quiet"]) == 0
    new = df.astype({"site": object})
    new.loc[7, "site"] = "x"
    data = _write(new, tmp_path / "in")
    out = _out(tmp_path)
    expect_refusal(capsys, ["apply", model, data, "--out", out], needles=["'x' (1 row) at row 9", "Known: [1, 2, 3]"],
                   inputs=[model, data], outputs=[out])


def test_family_models_exist_for_the_apply_cases(_model_dir):
    for family in FAMILIES:
        model, data = fitted_model(family, _model_dir)
        assert model.is_file() and data.is_file()
