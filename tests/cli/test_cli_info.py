"""``featharm info MODEL`` and the models' ``_repr_html_``: the same facts of a saved model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import featharm as fh
from featharm.cli import main


@pytest.fixture
def table(tmp_path):
    s = fh.datasets.make_multisite(n_subjects=90, n_sites=3, n_features=7, random_state=1)
    df = pd.concat([s.covariates.reset_index(drop=True), s.X.reset_index(drop=True).round(4)], axis=1)
    df.insert(0, "subject_id", [f"{i:03d}" for i in range(len(df))])
    df.loc[4, "roi002"] = np.nan
    path = tmp_path / "data.csv"
    df.to_csv(path, index=False)
    return path, df


def test_info_prints_what_the_model_holds(tmp_path, capsys, table):
    path, df = table
    model = tmp_path / "m.fhm"
    assert main(["harmonize", str(path), "--batch", "site", "--formula", "age + sex", "--id", "subject_id",
                 "--ref-batch", "site02", "--out", str(tmp_path / "h.csv"), "--save-model", str(model),
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["info", str(model)]) == 0
    out = capsys.readouterr().out
    lines = {ln.split()[0]: ln for ln in out.splitlines()[1:] if ln.startswith("  ") and not ln.startswith("    ")}
    assert "ComBat" in lines["family"]
    assert f"featharm {fh.__version__}" in out
    assert "ref_batch='site02'" in lines["options"]
    assert "age + sex" in lines["formula"]
    sizes = df["site"].value_counts()
    for site, n in sizes.items():
        assert f"{site} ({n})" in lines["sites"]
    assert f"3 in column 'site'; {len(df)} rows" in lines["sites"]
    assert "7: roi000, roi001, roi002, roi003, roi004 ... (+2 more)" in lines["features"]
    assert "1 feature cells empty at fit, in 1 feature(s)" in out
    assert main(["info", str(model), "--features"]) == 0
    listed = capsys.readouterr().out.split("features:\n", 1)[1].split()
    assert listed == [f"roi{i:03d}" for i in range(7)]


def test_info_lists_the_warnings_of_the_fit(tmp_path, capsys):
    s = fh.datasets.make_multisite(n_subjects=60, n_sites=3, n_features=4, random_state=2)
    cov = s.covariates.copy()
    cov.iloc[:4, cov.columns.get_loc("site")] = "tiny"  # a batch of 4: SmallBatchWarning at fit
    with pytest.warns(fh.exceptions.FeatharmWarning):
        m = fh.ComBat(batch="site").fit(s.X, cov)
    m.save(tmp_path / "m.fhm")
    assert main(["info", str(tmp_path / "m.fhm")]) == 0
    out = capsys.readouterr().out
    assert "SmallBatchWarning" in out and "'tiny'" in out


def test_info_refuses_a_file_that_is_not_a_model(tmp_path, capsys):
    bad = tmp_path / "m.fhm"
    bad.write_text("subject,site\n1,A\n")
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("featharm: error:") and "not a featharm model file" in err


def test_repr_html_of_fitted_and_unfitted_models():
    s = fh.datasets.make_multisite(n_subjects=150, n_sites=3, n_features=4, random_state=3)
    unfitted = fh.ComBat(batch="site", formula="age")
    page = unfitted._repr_html_()
    assert page.startswith('<table class="featharm-model">') and "fitted</th><td" in page and "no</td>" in page
    assert "batch=&#x27;site&#x27;" in page  # escaped
    fitted = fh.CovBat(batch="site", formula="age").fit(s.X, s.covariates)
    page = fitted._repr_html_()
    assert "CovBat" in page and "sites" in page and "roi000" in page
    for site, n in s.covariates["site"].value_counts().items():
        assert f"{site} ({n})" in page
    # what Jupyter shows (scikit-learn's mime bundle) is this table, not the estimator diagram
    assert fitted._repr_mimebundle_()["text/html"] == page


def test_info_refuses_a_damaged_model_before_printing(tmp_path, capsys):
    s = fh.datasets.make_multisite(n_subjects=150, n_sites=3, n_features=4, random_state=3)
    good = tmp_path / "m.fhm"
    fh.ComBat(batch="site").fit(s.X, s.covariates).save(good)
    bad = tmp_path / "cut.fhm"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert main(["info", str(bad)]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err.startswith("featharm: error:") and len(cap.err.splitlines()) == 1



def test_info_methods_prints_the_papers_methods_paragraph(tmp_path, capsys):
    """``featharm info MODEL --methods``: the report's methods paragraph, from the model file alone."""
    from featharm.report import methods_text

    s = fh.datasets.make_multisite(n_subjects=150, n_sites=3, n_features=6, unbalanced=False, random_state=2)
    model = fh.ComBat(batch="site", formula="age + sex").fit(s.X, s.covariates)
    path = tmp_path / "m.fhm"
    model.save(path)
    assert main(["info", str(path), "--methods"]) == 0
    out = capsys.readouterr().out
    assert out == methods_text(fh.load_model(path)) + "\n"
    assert "150 subjects" in out and "3 sites" in out and "'age + sex'" in out and "\n\nReferences\n" in out
