"""`featharm report`, `featharm harmonize --report` and the demo's report."""

from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

import featharm as fh  # noqa: E402
from featharm.cli import main  # noqa: E402
from featharm.report._stats import sha256_file  # noqa: E402


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    sim = fh.datasets.make_multisite(n_subjects=120, n_sites=3, n_features=6, random_state=3)
    df = sim.covariates.join(sim.X).reset_index()
    path = tmp_path_factory.mktemp("cli") / "data.csv"
    df.to_csv(path, index=False)
    return path, list(sim.X.columns)


def _sections(text):
    return re.findall(r"<h2>([^<]+)</h2>", text)


def test_harmonize_writes_report(table, tmp_path, capsys):
    data, feats = table
    out, rep, model = tmp_path / "h.csv", tmp_path / "r.html", tmp_path / "m.fhm"
    rc = main(["harmonize", str(data), "--batch", "site", "--formula", "age + sex", "--id", "subject",
               "--out", str(out), "--save-model", str(model), "--report", str(rep)])
    assert rc == 0
    assert f"report -> {rep}" in capsys.readouterr().out
    text = rep.read_text(encoding="utf-8")
    assert _sections(text)[-1] == "Provenance" and "Model parameters" in _sections(text)
    assert sha256_file(data) in text  # the input file's hash
    assert "<td>--formula</td><td>age + sex</td>" in text
    assert "<dt>features</dt><dd>6</dd>" in text


@pytest.mark.slow
def test_report_from_model_and_from_harmonized_table(table, tmp_path):
    data, feats = table
    out, model = tmp_path / "h.csv", tmp_path / "m.fhm"
    assert main(["harmonize", str(data), "--batch", "site", "--formula", "age + sex", "--id", "subject",
                 "--out", str(out), "--save-model", str(model), "--quiet"]) == 0
    r1, r2 = tmp_path / "r1.html", tmp_path / "r2.html"
    assert main(["report", str(data), "--model", str(model), "--id", "subject", "--out", str(r1), "--quiet"]) == 0
    assert main(["report", str(data), "--harmonized", str(out), "--batch", "site", "--formula", "age + sex",
                 "--id", "subject", "--features", "roi*", "--plot-features", feats[0], "--out", str(r2),
                 "--quiet"]) == 0
    t1, t2 = r1.read_text(encoding="utf-8"), r2.read_text(encoding="utf-8")
    assert "<td>ComBat</td>" in t1 or "<dd>ComBat</dd>" in t1
    assert "No model was given" in t2 and "Preservation of biology" in t2
    # both compare the same raw and harmonized numbers: the same site-effect summary
    pick = re.compile(r"site effect (?:before|after)</dt><dd>(\d+/\d+)</dd>")
    assert pick.findall(t1) == pick.findall(t2) and len(pick.findall(t1)) == 2
    assert sha256_file(model) in t1 and sha256_file(out) in t2


def test_report_user_errors(table, tmp_path, capsys):
    data, _ = table
    assert main(["report", str(data), "--out", str(tmp_path / "x.html")]) == 2
    assert "needs --batch COL" in capsys.readouterr().err
    assert main(["report", str(data), "--batch", "scanner", "--out", str(tmp_path / "x.html")]) == 2
    assert "no batch column 'scanner'" in capsys.readouterr().err
    assert main(["report", str(data), "--batch", "site", "--harmonized", str(data), "--features", "roi*",
                 "--plot-features", "nope", "--out", str(tmp_path / "x.html")]) == 2
    assert "'nope'" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()


@pytest.mark.slow
def test_demo_writes_report(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--quiet"]) == 0
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<dt>subjects</dt><dd>556</dd>" in text and "<dt>features</dt><dd>68</dd>" in text
    assert sha256_file(fh.datasets.ixi_path()) in text
    assert "report.html" in capsys.readouterr().out
