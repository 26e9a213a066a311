"""`featharm harmonize --method traveling` on traveling-subject scans, then `featharm apply` of the saved model
to scans of the main study (people scanned at one site each, no subject column needed)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import featharm as fh
from featharm.cli import main
from featharm.datasets import make_traveling


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("travel")
    ts = make_traveling(n_subjects=12, n_sites=3, n_features=6, random_state=0)
    ts.covariates.join(ts.X).reset_index().to_csv(d / "ts.csv", index=False)
    main_study = make_traveling(n_subjects=30, n_sites=3, n_features=6, coverage=0.0, random_state=1)
    Xm = main_study.truth + ts.bias.loc[main_study.covariates["site"]].to_numpy()
    main_study.covariates[["site"]].join(Xm).reset_index().to_csv(d / "main.csv", index=False)  # no subject, age
    return d, ts, Xm, main_study.covariates


def test_harmonize_then_apply_to_the_main_study(files, tmp_path):
    d, ts, Xm, cov_m = files
    out, model = tmp_path / "h.csv", tmp_path / "ts.fhm"
    assert main(["harmonize", str(d / "ts.csv"), "--method", "traveling", "--batch", "site", "--subject", "subject",
                 "--formula", "age", "--id", "scan", "--features", "roi*", "--out", str(out), "--save-model",
                 str(model), "--quiet"]) == 0
    ref = fh.TravelingSubjects(subject="subject", formula="age").fit(ts.X, ts.covariates)
    h = pd.read_csv(out, index_col="scan")
    np.testing.assert_allclose(h[ts.X.columns].to_numpy(), ref.transform(ts.X, ts.covariates).to_numpy(),
                               rtol=1e-12, atol=1e-12)
    assert list(h.columns[:4]) == ["subject", "site", "age", "sex"]  # the other columns are kept
    loaded = fh.load_model(model)
    pd.testing.assert_frame_equal(loaded.bias_, ref.bias_, check_exact=True)

    applied = tmp_path / "m.csv"
    assert main(["apply", str(model), str(d / "main.csv"), "--id", "scan", "--out", str(applied), "--quiet"]) == 0
    got = pd.read_csv(applied, index_col="scan")[Xm.columns]
    np.testing.assert_allclose(got.to_numpy(), ref.transform(Xm, cov_m).to_numpy(), rtol=1e-12, atol=1e-12)


def test_apply_refuses_sites_without_traveling_subjects(files, tmp_path, capsys):
    d, ts, Xm, cov_m = files
    model = tmp_path / "ts.fhm"
    fh.TravelingSubjects(formula="age").fit(ts.X, ts.covariates).save(model)
    data = pd.read_csv(d / "main.csv")
    data.loc[:2, "site"] = "site09"
    data.to_csv(tmp_path / "new.csv", index=False)
    rc = main(["apply", str(model), str(tmp_path / "new.csv"), "--id", "scan", "--out", str(tmp_path / "o.csv")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "'site09' (3 rows)" in err and "traveling subjects were scanned" in err
    rc = main(["apply", str(model), str(d / "main.csv"), "--id", "scan", "--new-sites", "estimate", "--out",
               str(tmp_path / "o.csv")])
    assert rc == 2 and "cannot estimate sites not seen at fit" in capsys.readouterr().err


def test_harmonize_errors_are_one_line(files, tmp_path, capsys):
    d, ts, Xm, cov_m = files
    base = ["harmonize", str(d / "ts.csv"), "--method", "traveling", "--batch", "site", "--id", "scan",
            "--features", "roi*", "--out", str(tmp_path / "h.csv")]
    assert main(base) == 2
    assert capsys.readouterr().err == ("featharm: error: --method traveling needs --subject COL: the column "
                                       "identifying the traveling subject of each scan.\n")
    data = pd.read_csv(d / "ts.csv")
    data["subject"] = data["subject"] + "_" + data["site"]  # nobody links two sites
    data.to_csv(tmp_path / "split.csv", index=False)
    assert main([*base[:1], str(tmp_path / "split.csv"), *base[2:], "--subject", "subject"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("featharm: error: site(s) ['site02', 'site03'] of 'site' share no traveling subject")
    assert err.count("\n") == 1


def test_harmonize_with_a_report(files, tmp_path):
    d, ts, Xm, cov_m = files
    report = tmp_path / "r.html"
    assert main(["harmonize", str(d / "ts.csv"), "--method", "traveling", "--batch", "site", "--subject", "subject",
                 "--scale", "--id", "scan", "--features", "roi*", "--out", str(tmp_path / "h.csv"), "--report",
                 str(report), "--quiet"]) == 0
    html = report.read_text(encoding="utf-8")
    assert "TravelingSubjects" in html and "scale" in html
    assert "Site biases (feature units) and gains measured on the traveling subjects" in html
