"""CLI: `featharm harmonize --method covbat|combatls` and `featharm apply --new-sites estimate`.

The harmonized tables are checked against the R references of test_covbat.py (CovBat package ``covbat``,
defaults) and test_combatls.py (ComBatFamily ``combatls``, ``sigma.formula = ~ age + sex``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import featharm
from featharm.cli import main

from test_parity_r import OUTPUTS, load_small_cs


@pytest.fixture
def table(tmp_path):
    X, cov = load_small_cs()
    path = tmp_path / "cs.csv"
    pd.concat([cov, X], axis=1).reset_index().to_csv(path, index=False)
    return path, X, cov


def test_covbat_cli_matches_r(table, tmp_path):
    path, X, _ = table
    out, model = tmp_path / "h.csv", tmp_path / "m.fhm"
    assert main(["harmonize", str(path), "--batch", "site", "--priors", "pool", "--method", "covbat", "--formula", "age + sex",
                 "--id", "subject_id", "--out", str(out), "--save-model", str(model), "--quiet"]) == 0
    h = pd.read_csv(out)
    assert list(h.columns[:4]) == ["subject_id", "site", "age", "sex"]
    R = pd.read_csv(OUTPUTS / "covbat__covbatpkg" / "harmonized.csv")
    np.testing.assert_allclose(h[X.columns].to_numpy(), R.to_numpy(), rtol=0, atol=1e-8)
    assert featharm.load_model(model).n_components_ == 19
    assert main(["harmonize", str(path), "--batch", "site", "--priors", "pool", "--method", "covbat", "--formula", "age + sex",
                 "--n-components", "3", "--out", str(out), "--save-model", str(model), "--quiet"]) == 0
    assert featharm.load_model(model).n_components_ == 3
    # with a reference batch: its rows come out unchanged (test_covbat.py::test_reference_batch)
    assert main(["harmonize", str(path), "--batch", "site", "--priors", "pool", "--method", "covbat", "--formula", "age + sex",
                 "--ref-batch", "site01", "--out", str(out), "--save-model", str(model), "--quiet"]) == 0
    h, raw = pd.read_csv(out), pd.read_csv(path)
    ref = (raw["site"] == "site01").to_numpy()
    assert ref.any() and np.array_equal(h.loc[ref, X.columns].to_numpy(), raw.loc[ref, X.columns].to_numpy())
    assert not np.allclose(h.loc[~ref, X.columns].to_numpy(), raw.loc[~ref, X.columns].to_numpy())
    assert featharm.load_model(model).ref_batch == "site01"


def test_combatls_cli_matches_r(table, tmp_path):
    path, X, _ = table
    out = tmp_path / "h.csv"
    assert main(["harmonize", str(path), "--batch", "site", "--priors", "pool", "--method", "combatls", "--formula", "age + sex",
                 "--scale-formula", "age + sex", "--out", str(out), "--quiet"]) == 0
    h = pd.read_csv(out)
    R = pd.read_csv(OUTPUTS / "combatls__comfamily" / "harmonized.csv")
    assert list(h.columns) == ["subject_id", "site", "age", "sex", *X.columns]  # age, sex not features
    assert np.abs(h[X.columns].to_numpy() - R.to_numpy()).max() < 1e-3


def test_scale_formula_column_is_not_a_feature(table, tmp_path):
    path, X, cov = table
    data = pd.read_csv(path).assign(icv=np.linspace(1.0, 2.0, len(X)))
    data.to_csv(path, index=False)
    out = tmp_path / "h.csv"
    assert main(["harmonize", str(path), "--batch", "site", "--priors", "pool", "--method", "combatls", "--formula", "age",
                 "--scale-formula", "icv", "--out", str(out), "--quiet"]) == 0
    h = pd.read_csv(out)
    assert np.array_equal(h["icv"].to_numpy(), data["icv"].to_numpy())  # kept, not harmonized


@pytest.mark.parametrize("method", ["combat", "covbat", "combatls"])
def test_apply_new_sites(table, tmp_path, capsys, method):
    path, X, cov = table
    data = pd.read_csv(path)
    train, model, out = tmp_path / "train.csv", tmp_path / "m.fhm", tmp_path / "o.csv"
    data[data["site"] != "site03"].to_csv(train, index=False)
    extra = ["--scale-formula", "age"] if method == "combatls" else []
    assert main(["harmonize", str(train), "--batch", "site", "--priors", "pool", "--method", method, "--formula", "age + sex",
                 "--id", "subject_id", "--save-model", str(model), "--out", str(tmp_path / "h.csv"), "--quiet",
                 *extra]) == 0
    # default: a one-line error naming the unseen site
    assert main(["apply", str(model), str(path), "--id", "subject_id", "--out", str(out), "--quiet"]) == 2
    assert "'site03' (82 rows)" in capsys.readouterr().err
    assert main(["apply", str(model), str(path), "--id", "subject_id", "--out", str(out), "--quiet",
                 "--new-sites", "estimate"]) == 0
    h = pd.read_csv(out)
    seen = (h["site"] != "site03").to_numpy()
    trained = pd.read_csv(tmp_path / "h.csv")
    np.testing.assert_allclose(h.loc[seen, X.columns].to_numpy(), trained[X.columns].to_numpy(), rtol=0, atol=1e-12)
    assert np.isfinite(h[X.columns].to_numpy()).all()
    # too few subjects of the new site
    assert main(["apply", str(model), str(path), "--id", "subject_id", "--out", str(out), "--quiet",
                 "--new-sites", "estimate", "--min-new-site-size", "100"]) == 2
    assert "'site03' (82 rows)" in capsys.readouterr().err


def test_user_errors_are_one_line(table, tmp_path, capsys):
    path, _, _ = table
    out = str(tmp_path / "h.csv")
    base = ["harmonize", str(path), "--batch", "site", "--formula", "age + sex", "--out", out, "--quiet"]
    assert main([*base, "--method", "covbat", "--ref-batch", "site_x"]) == 2
    assert "ref_batch='site_x' is not a level of 'site'" in capsys.readouterr().err
    assert main([*base, "--method", "covbat", "--percent-var", "1.5"]) == 2
    assert "'percent_var' parameter of CovBat must be a number in (0, 1)" in capsys.readouterr().err
    assert main([*base, "--method", "combatls", "--scale-formula", "site"]) == 2
    assert "scale_formula" in capsys.readouterr().err
