"""Files that are almost right: a header and no rows, an Excel/Parquet/gzip file under a .csv name, an empty
file, one site only; and messages that list a value once."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import featharm as fh
from featharm.cli import main
from featharm.datasets._freesurfer_synth import write_subject

from .conftest import _table, expect_refusal

HARMONIZE = ["--batch", "site", "--formula", "age + sex", "--quiet"]


def _argv(command: str, data: Path, tmp_path: Path, model: Path | None = None) -> list:
    """A `featharm COMMAND` reading ``data`` (the model for apply/report fitted beforehand on good data)."""
    out = tmp_path / "out"
    return {
        "harmonize": ["harmonize", data, *HARMONIZE, "--out", out / "h.csv", "--save-model", out / "m.fhm",
                      "--report", out / "r.html"],
        "apply": ["apply", model, data, "--out", out / "a.csv", "--quiet"],
        "report": ["report", data, "--batch", "site", "--formula", "age + sex", "--out", out / "r.html", "--quiet"],
        "diagnose": ["diagnose", data, *HARMONIZE, "--out", out / "diag"],
    }[command]


@pytest.fixture
def model(table, tmp_path) -> Path:
    path = tmp_path / "model" / "m.fhm"
    assert main([str(a) for a in ["harmonize", table, *HARMONIZE, "--out", tmp_path / "model" / "h.csv",
                                  "--save-model", path]]) == 0
    return path


COMMANDS = ["harmonize", "apply", "report", "diagnose"]


def _refused(capsys, command, bad, tmp_path, model, needles):
    (tmp_path / "out").mkdir(exist_ok=True)
    argv = _argv(command, bad, tmp_path, model)
    outs = [a for a in argv if isinstance(a, Path) and a.parent == tmp_path / "out"]
    return expect_refusal(capsys, argv, needles=needles, inputs=[bad, model], outputs=outs)


# ------------------------------------------------------------------------------------------------ no rows
@pytest.mark.parametrize("command", COMMANDS)
def test_header_only_csv(capsys, table, tmp_path, model, command):
    bad = tmp_path / "header_only.csv"
    bad.write_text(table.read_text().split("\n", 1)[0] + "\n")
    _refused(capsys, command, bad, tmp_path, model, ["header_only.csv", "no data rows"])


def test_header_only_parquet(capsys, table, tmp_path, model):
    bad = tmp_path / "header_only.parquet"
    pd.read_csv(table).iloc[:0].to_parquet(bad)
    _refused(capsys, "harmonize", bad, tmp_path, model, ["header_only.parquet", "no data rows"])


@pytest.mark.parametrize("name", ["empty.csv", "empty.parquet", "empty.tsv.gz"])
def test_empty_file(capsys, tmp_path, model, name):
    bad = tmp_path / name
    bad.write_bytes(b"")
    _refused(capsys, "harmonize", bad, tmp_path, model, [name, "is empty"])


# ------------------------------------------------------------------------------------------------ mis-named
def _xlsx(table, path):
    tmp = path.with_name("real.xlsx")
    pd.read_csv(table).to_excel(tmp, index=False)
    tmp.rename(path)


@pytest.mark.parametrize("command", COMMANDS)
def test_excel_workbook_named_csv(capsys, table, tmp_path, model, command):
    pytest.importorskip("openpyxl")
    bad = tmp_path / "from_excel.csv"
    _xlsx(table, bad)
    r = _refused(capsys, command, bad, tmp_path, model, ["from_excel.csv", "Excel workbook", "CSV UTF-8"])
    assert "UTF-8 text" not in r.err


def test_old_excel_workbook_named_tsv(capsys, tmp_path, model):
    bad = tmp_path / "old.tsv"
    bad.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504))  # an OLE2 (Excel 97-2003) header
    _refused(capsys, "harmonize", bad, tmp_path, model, ["old.tsv", "Excel 97-2003"])


@pytest.mark.parametrize("command", ["harmonize", "apply"])
def test_parquet_named_csv(capsys, table, tmp_path, model, command):
    bad = tmp_path / "table.csv"
    pd.read_csv(table).to_parquet(bad)
    _refused(capsys, command, bad, tmp_path, model, ["table.csv", "Parquet file", "table.parquet"])


@pytest.mark.parametrize("command", ["harmonize", "report"])
def test_gzip_without_gz(capsys, table, tmp_path, model, command):
    bad = tmp_path / "packed.csv"
    bad.write_bytes(gzip.compress(table.read_bytes()))
    _refused(capsys, command, bad, tmp_path, model, ["packed.csv", "gzip", "packed.csv.gz"])


def test_text_named_gz(capsys, table, tmp_path, model):
    bad = tmp_path / "plain.csv.gz"
    bad.write_bytes(table.read_bytes())
    _refused(capsys, "harmonize", bad, tmp_path, model, ["plain.csv.gz", "not gzip", "plain.csv"])


def test_csv_named_parquet(capsys, table, tmp_path, model):
    bad = tmp_path / "text.parquet"
    bad.write_bytes(table.read_bytes())
    _refused(capsys, "harmonize", bad, tmp_path, model, ["text.parquet", "not a Parquet file", "text.csv"])


def test_model_file_given_as_data(capsys, tmp_path, model):
    bad = tmp_path / "model_as_data.csv"
    bad.write_bytes(model.read_bytes())
    _refused(capsys, "harmonize", bad, tmp_path, model, ["model_as_data.csv", "featharm model file"])


def test_excel_covariates_named_csv_for_collect(capsys, tmp_path):
    pytest.importorskip("openpyxl")
    sd = tmp_path / "subjects"
    write_subject(sd / "sub-01", "7.4", seed=1, files=["aseg.stats"])
    cov = tmp_path / "cov.csv"
    tmp = tmp_path / "cov.xlsx"
    pd.DataFrame({"fsid": ["sub-01"], "site": ["A"]}).to_excel(tmp, index=False)
    tmp.rename(cov)
    expect_refusal(capsys, [str(a) for a in ["collect", sd, "--measures", "aseg", "--covariates", cov,
                                             "--out", tmp_path / "t.csv", "--quiet"]],
                   needles=["cov.csv", "Excel workbook", "cov.xlsx"], inputs=[cov], outputs=[tmp_path / "t.csv"])


def test_header_only_covariates_for_collect(capsys, tmp_path):
    sd = tmp_path / "subjects"
    write_subject(sd / "sub-01", "7.4", seed=1, files=["aseg.stats"])
    cov = tmp_path / "cov.csv"
    cov.write_text("fsid,site\n")
    expect_refusal(capsys, [str(a) for a in ["collect", sd, "--measures", "aseg", "--covariates", cov,
                                             "--out", tmp_path / "t.csv", "--quiet"]],
                   needles=["cov.csv", "no data rows"], inputs=[cov], outputs=[tmp_path / "t.csv"])


# ------------------------------------------------------------------------------------------------ one site
@pytest.fixture
def one_site(tmp_path) -> Path:
    df = _table()
    path = tmp_path / "one_site.csv"
    df[df.site == df.site.iloc[0]].to_csv(path, index=False)
    return path


@pytest.mark.parametrize("command", COMMANDS)
def test_single_site(capsys, one_site, tmp_path, model, command):
    needles = ["at least 2 batches", "'site'"] if command != "apply" else []
    if command == "apply":  # a model applied to one of its sites is fine: nothing to refuse
        (tmp_path / "out").mkdir()
        assert main([str(a) for a in _argv(command, one_site, tmp_path, model)]) == 0
        return
    r = _refused(capsys, command, one_site, tmp_path, model, needles)
    assert "IndexError" not in r.err


def test_single_site_report_with_a_model(capsys, one_site, tmp_path, model):
    (tmp_path / "out").mkdir()
    expect_refusal(capsys, [str(a) for a in ["report", one_site, "--model", model, "--out",
                                             tmp_path / "out" / "r.html", "--quiet"]],
                   needles=["a report compares sites", "at least 2 batches"], inputs=[one_site, model],
                   outputs=[tmp_path / "out" / "r.html"])


def test_make_report_with_a_single_site_is_a_batch_error():
    sim = fh.datasets.make_multisite(n_subjects=60, n_sites=3, n_features=4, random_state=2)
    keep = sim.covariates.site == sim.covariates.site.iloc[0]
    with pytest.raises(fh.exceptions.BatchError, match="at least 2 batches"):
        fh.report.make_report(sim.X[keep], sim.covariates[keep], batch="site")


# ------------------------------------------------------------------------------------------------ messages
def test_an_unseen_site_written_two_ways_is_listed_once():
    sim = fh.datasets.make_multisite(n_subjects=60, n_sites=3, n_features=4, random_state=1)
    cov = sim.covariates.copy()
    cov["site"] = cov["site"].str[-1].astype(int)
    model = fh.ComBat(formula="age").fit(sim.X, cov)
    new = cov.astype({"site": object})
    new.iloc[:3, new.columns.get_loc("site")] = [4, "4", np.int64(4)]  # one new site, in three spellings
    with pytest.raises(fh.exceptions.UnseenBatchError) as info:
        model.transform(sim.X, new)
    msg = str(info.value)
    assert "4 (3 rows)" in msg and "'4'" not in msg and msg.count("4 (") == 1


def test_repeated_patterns_and_names_are_listed_once(capsys, table, tmp_path):
    r = expect_refusal(capsys, [str(a) for a in ["harmonize", table, *HARMONIZE, "--features", "zz*", "zz*",
                                                 "--out", tmp_path / "h.csv"]], needles=["zz*"],
                       inputs=[table], outputs=[tmp_path / "h.csv"])
    assert r.err.count("zz*") == 1
    r = expect_refusal(capsys, [str(a) for a in ["report", table, *HARMONIZE, "--plot-features", "nope", "nope",
                                                 "--out", tmp_path / "r.html"]], needles=["nope"],
                       inputs=[table], outputs=[tmp_path / "r.html"])
    assert r.err.count("nope") == 1


def test_row_ids_in_messages_are_listed_once():
    from featharm._validation import _show

    assert _show(["a", "a", "b", "a"]) == "'a', 'b'"
    assert _show(list("abcdefgg")) == "'a', 'b', 'c', 'd', 'e' and 2 more"
