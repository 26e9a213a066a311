"""The command line with missing values (``docs/methods.md`` §1.8): empty feature cells are harmonized
(every family: each feature on its observed rows) and written empty, the summary says how many there were, ``--missing error`` refuses them, and
``--missing-covariates exclude`` leaves out rows without a batch or covariate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import featharm as fh
from featharm.cli import main
from test_parity_na import load_small_cs_na

# Small tables mixing measures (2 thickness, 2 volumes ...): with the default priors per measure group their
# groups take the pooled prior with a FeatureGroupWarning, which these tests do not check
# (tests/models/test_feature_groups.py and tests/cli/test_cli_priors.py do).
pytestmark = pytest.mark.filterwarnings("ignore::featharm.exceptions.FeatureGroupWarning")



@pytest.fixture(scope="module")
def table(tmp_path_factory):
    X, cov = load_small_cs_na()
    path = tmp_path_factory.mktemp("na") / "data.csv"
    cov.join(X).reset_index().to_csv(path, index=False)  # empty cells are written as ""
    return path, X, cov


def _harmonize(table, out, *words):
    return ["harmonize", str(table), "--batch", "site", "--formula", "age + sex", "--id", "subject_id",
            "--out", str(out), *words]


def test_harmonize_writes_empty_cells_and_counts_them(table, tmp_path, capsys):
    path, X, cov = table
    out = tmp_path / "h.csv"
    assert main(_harmonize(path, out, "--save-model", str(tmp_path / "m.fhm"))) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "196 of 6,000 feature cells missing (3.3 %, in 20 features), left empty" in line
    h = pd.read_csv(out).set_index("subject_id")[X.columns]
    assert np.array_equal(h.isna().to_numpy(), X.isna().to_numpy())
    expected = fh.ComBat(batch="site", formula="age + sex").fit_transform(X, cov)
    np.testing.assert_allclose(h.to_numpy(), expected.to_numpy(), rtol=1e-15, atol=0)  # CSV round trip: exact
    # apply with the saved model: the same, and the same count
    out2 = tmp_path / "a.csv"
    assert main(["apply", str(tmp_path / "m.fhm"), str(path), "--id", "subject_id", "--out", str(out2)]) == 0
    assert "196 of 6,000 feature cells missing" in capsys.readouterr().out
    assert pd.read_csv(out2).equals(pd.read_csv(out))


def test_complete_table_summary_says_nothing_about_missing(tmp_path, capsys):
    X, cov = load_small_cs_na()
    path = tmp_path / "full.csv"
    cov.join(X.fillna(X.mean())).reset_index().to_csv(path, index=False)
    assert main(_harmonize(path, tmp_path / "h.csv")) == 0
    assert "missing" not in capsys.readouterr().out


@pytest.mark.parametrize("command", ["harmonize", "apply"])
def test_missing_error_refuses_empty_cells(table, tmp_path, capsys, command):
    path, X, cov = table
    if command == "harmonize":
        argv = _harmonize(path, tmp_path / "h.csv", "--missing", "error")
    else:
        model = tmp_path / "m.fhm"
        fh.ComBat(batch="site", formula="age + sex").fit(X.fillna(X.mean()), cov).save(model)
        argv = ["apply", str(model), str(path), "--id", "subject_id", "--out", str(tmp_path / "h.csv"),
                "--missing", "error"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("featharm: error: --missing error: 196 feature cell(s) are empty, e.g. "
                          "'Left-Lateral-Ventricle' at rows 'sub00012'")
    assert not (tmp_path / "h.csv").exists()


@pytest.mark.filterwarnings("default::featharm.exceptions.MissingValueWarning")  # CovBat's complete rows
@pytest.mark.parametrize("method, words, model", [
    ("covbat", (), lambda: fh.CovBat(batch="site", formula="age + sex")),
    ("combatls", ("--scale-formula", "age"), lambda: fh.ComBatLS(batch="site", formula="age + sex",
                                                                  scale_formula="age")),
])
def test_other_families_write_empty_cells(table, tmp_path, capsys, method, words, model):
    """Every family takes empty cells (each feature on its observed rows) and writes them empty."""
    path, X, cov = table
    out = tmp_path / "h.csv"
    assert main(_harmonize(path, out, "--method", method, *words)) == 0
    assert "196 of 6,000 feature cells missing" in capsys.readouterr().out
    h = pd.read_csv(out).set_index("subject_id")[X.columns]
    assert np.array_equal(h.isna().to_numpy(), X.isna().to_numpy())
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = model().fit_transform(X, cov)
    np.testing.assert_allclose(h.to_numpy(), expected.to_numpy(), rtol=1e-15, atol=0)


def test_harmonize_report_with_empty_cells(table, tmp_path, capsys):
    path, X, cov = table
    out, rep = tmp_path / "h.csv", tmp_path / "r.html"
    assert main(_harmonize(path, out, "--report", str(rep))) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"report -> {rep}" in line and "196 of 6,000 feature cells missing" in line
    text = rep.read_text(encoding="utf-8")
    assert '<section id="missing">' in text and "<h2>Missing values</h2>" in text
    n_complete = int(X.notna().all(axis=1).sum())
    assert f"<dd>{n_complete} of {len(X)}</dd>" in text  # rows of the multivariate checks
    h = pd.read_csv(out).set_index("subject_id")[X.columns]
    assert np.array_equal(h.isna().to_numpy(), X.isna().to_numpy())


def test_diagnose_with_empty_cells(table, tmp_path, capsys):
    path, X, cov = table
    out = tmp_path / "diag"
    assert main(["diagnose", str(path), "--batch", "site", "--formula", "age + sex", "--id", "subject_id",
                 "--out", str(out), "--n-permutations", "9", "--classification-permutations", "2"]) == 0
    assert "missing: 196 of 6000 feature cells" in capsys.readouterr().out
    se = pd.read_csv(out / "site_effects.csv")
    n_obs = X.notna().sum()
    anova = se[se.test == "anova"].set_index("feature")
    assert (anova["n"] <= n_obs.reindex(anova.index)).all() and anova["n"].min() < len(X)
    mt = pd.read_csv(out / "missingness.csv")
    assert int(mt["n_missing"].sum()) == 196
    mv = pd.read_csv(out / "multivariate.csv")
    assert (mv["n"] <= int(X.notna().all(axis=1).sum())).all()


@pytest.mark.filterwarnings("default::featharm.exceptions.MissingValueWarning")  # printed by the CLI
def test_missing_covariates_exclude(table, tmp_path, capsys):
    path, X, cov = table
    data = pd.read_csv(path)
    data.loc[[3, 7], "age"] = np.nan
    data.loc[11, "site"] = np.nan
    bad = tmp_path / "bad.csv"
    data.to_csv(bad, index=False)
    assert main(_harmonize(bad, tmp_path / "h.csv")) == 2
    err = capsys.readouterr().err
    assert "sub00012" in err and "--missing-covariates exclude" in err
    out = tmp_path / "h.csv"
    assert main(_harmonize(bad, out, "--missing-covariates", "exclude", "--save-model", str(tmp_path / "m.fhm"))) == 0
    cap = capsys.readouterr()
    assert "3 row(s) left out for a missing batch or covariate, written empty" in cap.out
    assert "sub00004" in cap.err and "sub00008" in cap.err and "sub00012" in cap.err  # the warning lists them
    h = pd.read_csv(out).set_index("subject_id")
    left = ["sub00004", "sub00008", "sub00012"]
    assert h.loc[left, X.columns].isna().all().all()
    assert fh.load_model(tmp_path / "m.fhm").excluded_rows_ == left
    assert main(["apply", str(tmp_path / "m.fhm"), str(bad), "--id", "subject_id", "--out", str(tmp_path / "a.csv")]) == 0
    assert "3 row(s) left out" in capsys.readouterr().out
