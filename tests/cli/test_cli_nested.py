"""``featharm harmonize --batch A --batch B``: Nested ComBat from the command line, and ``featharm apply``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_nested import simulate

import featharm as fh
from featharm.cli import main


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    X, cov, _, _ = simulate("crossed", n=200, p=10, seed=3)
    path = tmp_path_factory.mktemp("nested") / "scans.csv"
    cov.join(X).rename_axis("id").to_csv(path)
    return path, X, cov


def _harmonize(path, out, *words):
    return ["harmonize", str(path), "--id", "id", "--features", "f*", "--formula", "age + sex",
            "--out", str(out), "--quiet", *words]


def test_repeated_batch_fits_nested_combat_and_apply_reproduces_it(data, tmp_path):
    path, X, cov = data
    out, model = tmp_path / "h.csv", tmp_path / "m.fhm"
    assert main([*_harmonize(path, out, "--batch", "vendor", "--batch", "field"), "--save-model", str(model),
                 "--report", str(tmp_path / "r.html")]) == 0
    fitted = fh.load_model(model)
    assert type(fitted).__name__ == "NestedComBat" and fitted.get_params()["batches"] == ["vendor", "field"]
    ref = fh.NestedComBat(batches=["vendor", "field"], formula="age + sex").fit_transform(X, cov)
    written = pd.read_csv(out, index_col="id")[list(X.columns)]
    np.testing.assert_allclose(written.to_numpy(), ref.to_numpy(), rtol=1e-12, atol=1e-12)
    assert fitted.order_ == fh.NestedComBat(batches=["vendor", "field"], formula="age + sex").fit(X, cov).order_
    assert "NestedComBat" in (tmp_path / "r.html").read_text()
    applied = tmp_path / "a.csv"
    assert main(["apply", str(model), str(path), "--id", "id", "--out", str(applied), "--quiet"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(applied, index_col="id")[list(X.columns)], written)


def test_nested_options_reach_the_model(data, tmp_path):
    path, _, _ = data
    model = tmp_path / "m.fhm"
    assert main([*_harmonize(path, tmp_path / "h.csv", "--batch", "vendor", "--batch", "field", "--order", "field",
                             "vendor", "--sweeps", "2", "--criterion", "ad", "--ref-batch", "vendor=GE"),
                 "--save-model", str(model)]) == 0
    m = fh.load_model(model)
    assert m.order_ == ["field", "vendor"] and len(m.steps_) == 4 and m.criterion == "ad"
    assert m.ref_batch == {"vendor": "GE"} and m.steps_[1].ref_batch == "GE"


def test_several_batches_need_nested(data, tmp_path, capsys):
    path, _, _ = data
    assert main(_harmonize(path, tmp_path / "h.csv", "--batch", "vendor", "--batch", "field",
                           "--method", "combat")) == 2
    err = capsys.readouterr().err
    assert err.startswith("featharm: error: --batch was given 2 times (vendor, field), but --method combat takes "
                          "one batch column") and err.count("\n") == 1
    assert main(_harmonize(path, tmp_path / "h.csv", "--batch", "vendor", "--batch", "field",
                           "--ref-batch", "GE")) == 2
    assert "VARIABLE=LEVEL" in capsys.readouterr().err
    assert main(_harmonize(path, tmp_path / "h.csv", "--batch", "vendor", "--batch", "scanner")) == 2
    assert "'scanner'" in capsys.readouterr().err
    assert not (tmp_path / "h.csv").exists()


def test_info_lists_the_steps(data, tmp_path, capsys):
    path, _, _ = data
    model = tmp_path / "m.fhm"
    assert main([*_harmonize(path, tmp_path / "h.csv", "--batch", "vendor", "--batch", "field", "--order", "field",
                             "vendor"), "--save-model", str(model)]) == 0
    capsys.readouterr()
    assert main(["info", str(model)]) == 0
    assert "field (2 levels) > vendor (3 levels); 2 ComBat steps" in capsys.readouterr().out
