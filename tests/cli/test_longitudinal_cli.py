"""`featharm harmonize --method longitudinal` and `featharm apply` of a saved LongComBat model.

The harmonized table is checked against R longCombat's output (tests/reference, see test_longitudinal.py:
``formula = "age + sex + time"``, ``ranef = "(1|subject_id)"``, REML, niter = 30).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from featharm.cli import main
from test_longitudinal import LONGCOMBAT, load_small_long

# Small tables mixing measures (2 thickness, 2 volumes ...): with the default priors per measure group their
# groups take the pooled prior with a FeatureGroupWarning, which these tests do not check
# (tests/models/test_feature_groups.py and tests/cli/test_cli_priors.py do).
pytestmark = pytest.mark.filterwarnings("ignore::featharm.exceptions.FeatureGroupWarning")



@pytest.fixture
def table(tmp_path):
    X, cov = load_small_long()
    data = pd.concat([cov, X], axis=1).reset_index()
    path = tmp_path / "long.csv"
    data.to_csv(path, index=False)
    return path, X


def test_harmonize_and_apply(table, tmp_path, capsys):
    path, X = table
    out, model = tmp_path / "h.csv", tmp_path / "m.fhm"
    rc = main(["harmonize", str(path), "--batch", "site", "--priors", "pool", "--method", "longitudinal", "--subject", "subject_id",
               "--time", "time", "--formula", "age + sex + time", "--id", "scan", "--out", str(out),
               "--save-model", str(model), "--quiet"])
    assert rc == 0
    h = pd.read_csv(out)
    R = pd.read_csv(LONGCOMBAT / "harmonized.csv")
    assert list(h.columns[:6]) == ["scan", "subject_id", "site", "age", "sex", "time"]  # non-features kept
    err = ((h[X.columns] - R) .abs() / X.std().to_numpy()).to_numpy().max()
    assert err < 1e-4
    out2 = tmp_path / "a.csv"
    assert main(["apply", str(model), str(path), "--id", "scan", "--out", str(out2), "--quiet"]) == 0
    np.testing.assert_allclose(pd.read_csv(out2)[X.columns].to_numpy(), h[X.columns].to_numpy(), atol=1e-10)


def test_missing_subject_option_is_a_user_error(table, tmp_path, capsys):
    path, _ = table
    rc = main(["harmonize", str(path), "--batch", "site", "--method", "longitudinal", "--formula", "age",
               "--out", str(tmp_path / "h.csv"), "--quiet"])
    assert rc == 2
    assert "needs --subject COL" in capsys.readouterr().err
    rc = main(["harmonize", str(path), "--batch", "site", "--method", "longitudinal", "--subject", "nope",
               "--formula", "age", "--out", str(tmp_path / "h.csv"), "--quiet"])
    assert rc == 2
    assert "no subject column 'nope'" in capsys.readouterr().err
