"""`featharm harmonize --method longgam` and `featharm apply` of a saved LongComBatGAM model."""

from __future__ import annotations

import json
import warnings
import zipfile

import numpy as np
import pandas as pd
import pytest

import featharm as fh
from featharm.cli import main
from featharm.datasets import make_lifespan


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    sim = make_lifespan(n_subjects=120, n_features=5, visits=(2, 3, 4), random_state=2)
    data = pd.concat([sim.covariates, sim.X], axis=1).reset_index()
    path = tmp_path_factory.mktemp("longgam") / "scans.csv"
    data.to_csv(path, index=False)
    return path, sim


def test_harmonize_equals_the_python_model_and_apply_reproduces_it(table, tmp_path):
    path, sim = table
    out, model = tmp_path / "h.csv", tmp_path / "m.fhm"
    rc = main(["harmonize", str(path), "--batch", "site", "--method", "longgam", "--subject", "subject",
               "--smooth", "age", "--formula", "sex", "--standardize", "msr", "--id", "scan", "--features", "roi*",
               "--out", str(out), "--save-model", str(model), "--quiet"])
    assert rc == 0
    h = pd.read_csv(out).set_index("scan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = fh.LongComBatGAM(subject="subject", formula="sex", smooth=["age"], standardize="msr").fit_transform(
            sim.X, sim.covariates)
    np.testing.assert_allclose(h[sim.X.columns].to_numpy(), ref.to_numpy(), rtol=0, atol=1e-9)
    loaded = fh.load_model(model)
    assert type(loaded).__name__ == "LongComBatGAM" and loaded.smooth_terms_ == ["age"]
    out2 = tmp_path / "a.csv"
    assert main(["apply", str(model), str(path), "--id", "scan", "--out", str(out2), "--quiet"]) == 0
    np.testing.assert_allclose(pd.read_csv(out2)[sim.X.columns].to_numpy(), h[sim.X.columns].to_numpy(), atol=1e-10)


def test_user_errors_are_one_line(table, tmp_path, capsys):
    path, sim = table
    rc = main(["harmonize", str(path), "--batch", "site", "--method", "longgam", "--smooth", "age",
               "--out", str(tmp_path / "h.csv"), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err == "featharm: error: --method longgam needs --subject COL: the column identifying each scan's subject.\n"
    rc = main(["harmonize", str(path), "--batch", "site", "--method", "longgam", "--subject", "subject",
               "--smooth", "age", "--random-slope", "--out", str(tmp_path / "h.csv"), "--quiet"])
    assert rc == 2
    assert "--random-slope does not apply to --method longgam" in capsys.readouterr().err
    assert not (tmp_path / "h.csv").exists()


def test_apply_out_of_range_age_is_refused(table, tmp_path, capsys):
    path, sim = table
    model = tmp_path / "m.fhm"
    assert main(["harmonize", str(path), "--batch", "site", "--method", "longgam", "--subject", "subject",
                 "--smooth", "age", "--formula", "sex", "--id", "scan", "--features", "roi*",
                 "--out", str(tmp_path / "h.csv"), "--save-model", str(model), "--quiet"]) == 0
    df = pd.read_csv(path)
    df.loc[3, "age"] = 140.0
    new = tmp_path / "new.csv"
    df.to_csv(new, index=False)
    capsys.readouterr()
    rc = main(["apply", str(model), str(new), "--id", "scan", "--out", str(tmp_path / "o.csv"), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'age'" in err and "140" in err and "extrapolate" in err


def test_damaged_model_file_is_refused(table, tmp_path):
    path, sim = table
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = fh.LongComBatGAM(subject="subject", formula="sex", smooth=["age"]).fit(sim.X, sim.covariates)
    good, bad = tmp_path / "m.fhm", tmp_path / "bad.fhm"
    m.save(good)
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w") as zout:
        for item in zin.namelist():
            raw = zin.read(item)
            if item == "manifest.json":
                man = json.loads(raw)
                man["state"]["smooth_bases"][0]["name"] = "height"
                raw = json.dumps(man).encode()
            zout.writestr(item, raw)
    with pytest.raises(fh.exceptions.ModelFileError, match="smooth_bases"):
        fh.load_model(bad)
