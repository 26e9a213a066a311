"""``featharm diagnose``: tables written, columns, errors."""

from __future__ import annotations

import pandas as pd
import pytest

import featharm as fh
from featharm import diagnostics as dg
from featharm.cli import main
from featharm.datasets._simulate import make_multisite
from featharm.diagnostics.suite import TABLES
from featharm.diagnostics.univariate import COLUMNS


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("diag")
    s = make_multisite(n_subjects=200, n_sites=3, n_features=8, unbalanced=False, random_state=9)
    data = s.covariates.join(s.X).rename_axis("subject").reset_index()
    data.to_csv(d / "data.csv", index=False)
    Xh = fh.ComBat(batch="site", formula="age + sex").fit_transform(s.X, s.covariates)
    s.covariates.join(Xh).rename_axis("subject").reset_index().iloc[::-1].to_csv(d / "harm.csv", index=False)
    return d, s


def test_diagnose_writes_tables(files, capsys):
    d, s = files
    rc = main(["diagnose", str(d / "data.csv"), "--batch", "site", "--formula", "age + sex", "--id", "subject",
               "--harmonized", str(d / "harm.csv"), "--out", str(d / "out"), "--n-permutations", "19",
               "--classification-permutations", "2"])
    assert rc == 0
    assert "features with a site effect" in capsys.readouterr().out
    for name in TABLES:  # complete features: every table but missingness
        assert (d / "out" / f"{name}.csv").exists() == (name != "missingness"), name
    se = pd.read_csv(d / "out" / "site_effects.csv")
    assert list(se.columns) == ["data"] + COLUMNS
    assert set(se.data) == {"raw", "harmonized"} and set(se.feature) == set(s.X.columns)
    # the harmonized file's rows were reversed: matched by --id, so the table equals the API's
    api = dg.test_site_effects(fh.ComBat(batch="site", formula="age + sex").fit_transform(s.X, s.covariates),
                               s.covariates, batch="site", formula="age + sex")
    ours = se[se.data == "harmonized"].drop(columns="data").reset_index(drop=True)
    pd.testing.assert_series_equal(ours.p_unc, api.p_unc, rtol=1e-9, check_names=False)


def test_diagnose_user_errors(files, capsys):
    d, _ = files
    assert main(["diagnose", str(d / "data.csv"), "--batch", "scanner", "--out", str(d / "o2")]) == 2
    assert "no batch column 'scanner'" in capsys.readouterr().err
    assert main(["diagnose", str(d / "data.csv"), "--batch", "site", "--tests", "levenne", "--out",
                 str(d / "o3"), "--no-classification", "--n-permutations", "0"]) == 2
    assert "levenne" in capsys.readouterr().err
    assert main(["diagnose", str(d / "data.csv"), "--batch", "site", "--out", str(d / "o4"), "--n-jobs", "0"]) == 2
    err = capsys.readouterr().err
    assert "'n_jobs'" in err and len(err.strip().splitlines()) == 1
    assert not (d / "o4").exists()


def test_diagnose_with_model_refits_in_folds(files, tmp_path):
    d, s = files
    model = tmp_path / "m.fhm"
    assert main(["harmonize", str(d / "data.csv"), "--batch", "site", "--formula", "age + sex", "--id", "subject",
                 "--out", str(tmp_path / "h.csv"), "--save-model", str(model), "--quiet"]) == 0
    assert main(["diagnose", str(d / "data.csv"), "--batch", "site", "--formula", "age + sex", "--id", "subject",
                 "--model", str(model), "--out", str(tmp_path / "out"), "--n-permutations", "0",
                 "--classification-permutations", "0", "--quiet"]) == 0
    se = pd.read_csv(tmp_path / "out" / "site_effects.csv")
    assert set(se.data) == {"raw", "harmonized"}
    clf = pd.read_csv(tmp_path / "out" / "site_classification.csv").set_index(["data", "metric"])
    # the same as the API with the harmonizer refitted inside the folds (seed 0 = the CLI's default)
    api = dg.diagnose(s.X, s.covariates, batch="site", formula="age + sex", n_permutations=0,
                      classification_permutations=0, X_harmonized=pd.read_csv(tmp_path / "h.csv", index_col="subject")
                      [list(s.X.columns)].set_axis(s.X.index, axis=0),
                      harmonizer=fh.ComBat(batch="site", formula="age + sex"), random_state=0)
    ref = api["site_classification"].set_index(["data", "metric"])
    assert clf.loc[("harmonized", "balanced_accuracy"), "value"] == pytest.approx(
        ref.loc[("harmonized", "balanced_accuracy"), "value"], rel=1e-9)


def test_diagnose_shows_one_progress_bar_naming_its_steps(files, tmp_path, monkeypatch, capsys):
    """The command line's progress bar (stderr, after ~2 s; here at once and every line kept) covers the whole
    run: the per-feature tests, PERMANOVA's permutations and the classification's, raw then harmonized."""
    import functools

    from featharm import _progress
    from featharm.diagnostics import _stages

    d, _ = files
    monkeypatch.setattr(_progress, "LOG_EVERY", 0.0)
    monkeypatch.setattr(_stages, "Progress", functools.partial(_progress.Progress, delay=0.0))
    assert main(["diagnose", str(d / "data.csv"), "--batch", "site", "--formula", "age + sex", "--id", "subject",
                 "--harmonized", str(d / "harm.csv"), "--out", str(tmp_path / "out"), "--n-permutations", "19",
                 "--classification-permutations", "5"]) == 0
    err = capsys.readouterr().err
    for step in ("diagnose (raw): site tests", "diagnose (raw): PERMANOVA permutations",
                 "diagnose (raw): site classification permutations",
                 "diagnose (harmonized): site classification: fold decompositions"):
        assert step in err, step
    assert err.strip().splitlines()[-1].endswith("s") and "100.0%" in err.strip().splitlines()[-1]
