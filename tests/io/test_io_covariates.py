"""Covariate tables (CSV/TSV/Parquet/Excel, BIDS) and joining them to features with an id report."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pandas as pd
import pytest

from featharm.exceptions import (
    AlignmentError,
    ColumnNotFoundError,
    DuplicateIndexError,
    InputError,
    UnmatchedIdWarning,
)
from featharm.io import (
    join_covariates,
    match_ids,
    read_bids_participants,
    read_bids_sessions,
    read_covariates,
)

HAVE_OPENPYXL = importlib.util.find_spec("openpyxl") is not None


def _features():
    idx = pd.Index(["0050642", "sub-01_ses-01.long.sub-01", "s3"], name="fsid")
    return pd.DataFrame({"subject": ["0050642", "sub-01", "s3"], "timepoint": [None, "ses-01", None],
                         "lh_bankssts_thickness": [2.5, 2.4, 2.3]}, index=idx)


@pytest.mark.parametrize("ext,sep", [(".csv", ","), (".tsv", "\t"), (".txt", "\t")])
def test_read_text_keeps_id_as_text(tmp_path, ext, sep):
    p = tmp_path / f"cov{ext}"
    p.write_text(sep.join(["id", "age", "site"]) + "\n" + sep.join(["0050642", "31", "A"]) + "\n"
                 + sep.join(["0050646", "n/a", "B"]) + "\n")
    df = read_covariates(p, id_col="id")
    assert list(df.index) == ["0050642", "0050646"] and df.index.name == "id"
    assert list(df["id"]) == ["0050642", "0050646"]
    assert df.at["0050642", "age"] == 31 and np.isnan(df.at["0050646", "age"])


def test_read_parquet(tmp_path):
    p = tmp_path / "cov.parquet"
    pd.DataFrame({"id": ["a", "b"], "age": [30.5, 41.0]}).to_parquet(p)
    df = read_covariates(p, id_col="id")
    assert df.at["b", "age"] == 41.0


def test_excel_without_openpyxl_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openpyxl", None)  # import openpyxl -> ImportError, installed or not
    p = tmp_path / "cov.xlsx"
    p.write_bytes(b"PK\x03\x04")
    with pytest.raises(InputError, match=r"needs openpyxl: pip install 'featharm\[excel\]'"):
        read_covariates(p, id_col="id")


@pytest.mark.skipif(not HAVE_OPENPYXL, reason="needs openpyxl")
def test_excel_with_openpyxl(tmp_path):
    p = tmp_path / "cov.xlsx"
    pd.DataFrame({"id": ["001", "002"], "age": [30, 41]}).to_excel(p, index=False)
    df = read_covariates(p, id_col="id")
    assert list(df.index) == ["001", "002"] and df.at["002", "age"] == 41


def test_read_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_covariates(tmp_path / "nope.csv")
    p = tmp_path / "cov.json"
    p.write_text("{}")
    with pytest.raises(InputError, match="cannot tell the format"):
        read_covariates(p)
    p = tmp_path / "cov.csv"
    p.write_text("id,age\na,1\na,2\n")
    with pytest.raises(DuplicateIndexError, match=r"repeats ids \['a'\]"):
        read_covariates(p, id_col="id")
    with pytest.raises(ColumnNotFoundError, match="no id column 'subj'"):
        read_covariates(p, id_col="subj")
    p.write_text("")
    with pytest.raises(InputError, match="is empty"):
        read_covariates(p)


@pytest.fixture
def bids(tmp_path):
    root = tmp_path / "bids"
    root.mkdir()
    (root / "participants.tsv").write_text("participant_id\tage\tsex\tsite\nsub-01\t30\tF\tA\nsub-02\tn/a\tM\tB\n"
                                           "sub-03\t52\tF\tB\n")
    for sub, rows in (("sub-01", "ses-01\t30.2\nses-02\t31.9\n"), ("sub-02", "ses-01\t44.0\n")):
        (root / sub).mkdir()
        (root / sub / f"{sub}_sessions.tsv").write_text("session_id\tage\n" + rows)
    return root


def test_bids_participants(bids):
    p = read_bids_participants(bids)
    assert p.index.name == "participant_id" and list(p.index) == ["sub-01", "sub-02", "sub-03"]
    assert np.isnan(p.at["sub-02", "age"]) and p.at["sub-03", "site"] == "B"


def test_bids_sessions(bids):
    s = read_bids_sessions(bids)
    assert list(s.index) == ["sub-01_ses-01", "sub-01_ses-02", "sub-02_ses-01"]
    assert list(s.columns[:2]) == ["participant_id", "session_id"]
    assert s.at["sub-01_ses-02", "age"] == 31.9  # the session's age, not the participant's
    assert s.at["sub-02_ses-01", "site"] == "B"  # participant-level column carried over


def test_join_on_index_keeps_rows_and_reports(tmp_path):
    f = _features()
    cov = pd.DataFrame({"id": ["s3", "0050642", "sub-01_ses-01.long.sub-01", "extra"], "site": list("ABCD"),
                        "age": [1.0, 2.0, 3.0, 4.0]}).set_index("id", drop=False)
    out = join_covariates(f, cov, on={"fsid": "id"})
    assert list(out.index) == list(f.index) and out.index.name == "fsid"
    assert list(out["site"]) == ["B", "C", "A"] and "id" not in out.columns
    pd.testing.assert_frame_equal(out[f.columns], f)
    rep = out.attrs["featharm_join"]
    assert rep["matched"] == 3 and rep["only_in_covariates"] == [("extra",)] and rep["only_in_features"] == []


def test_join_unmatched_raise_drop_keep():
    f = _features()
    cov = pd.DataFrame({"subject": ["0050642", "zzz"], "site": ["A", "B"]})
    with pytest.raises(AlignmentError, match=r"2 in the features but not the covariates: sub-01, s3; "
                                             r"1 in the covariates but not the features: zzz"):
        join_covariates(f, cov, on="subject")
    with pytest.warns(UnmatchedIdWarning, match="Dropped"):
        d = join_covariates(f, cov, on="subject", missing="drop")
    assert list(d.index) == ["0050642"] and d.at["0050642", "site"] == "A"
    with pytest.warns(UnmatchedIdWarning, match="Kept with NaN"):
        k = join_covariates(f, cov, on="subject", missing="keep")
    assert list(k.index) == list(f.index) and k["site"].isna().tolist() == [False, True, True]


def test_join_bids_sessions(bids):
    f = pd.DataFrame({"subject": ["sub-01", "sub-01", "sub-02"], "timepoint": ["ses-02", "ses-01", "ses-01"],
                      "x": [1.0, 2.0, 3.0]},
                     index=pd.Index(["sub-01_ses-02.long.sub-01", "sub-01_ses-01.long.sub-01",
                                     "sub-02_ses-01.long.sub-02"], name="fsid"))
    out = join_covariates(f, read_bids_sessions(bids), on={"subject": "participant_id", "timepoint": "session_id"})
    assert list(out["age"]) == [31.9, 30.2, 44.0] and list(out["site"]) == ["A", "A", "B"]


def test_strip_bids_prefix(bids):
    f = pd.DataFrame({"x": [1.0, 2.0]}, index=pd.Index(["01", "03"], name="fsid"))
    with pytest.raises(AlignmentError):
        join_covariates(f, read_bids_participants(bids))
    out = join_covariates(f, read_bids_participants(bids), strip_bids=True)
    assert list(out["age"]) == [30, 52]


def test_join_errors():
    f = _features()
    dup = pd.DataFrame({"subject": ["s3", "s3"], "age": [1, 2]})
    with pytest.raises(DuplicateIndexError, match=r"repeat the key\(s\) \[\('s3',\)\]"):
        join_covariates(f, dup, on="subject")
    clash = pd.DataFrame({"subject": ["s3"], "lh_bankssts_thickness": [1.0]})
    with pytest.raises(InputError, match="also feature-table columns"):
        join_covariates(f, clash, on="subject", missing="drop")
    with pytest.raises(ColumnNotFoundError, match="the covariates have no column 'participant_id'"):
        join_covariates(f, dup, on={"subject": "participant_id"})
    with pytest.raises(InputError, match="missing must be one of"):
        join_covariates(f, dup, on="subject", missing="ignore")
    f2 = pd.concat([f, f.iloc[[0]]])
    with pytest.raises(DuplicateIndexError, match=r"index repeats \['0050642'\]"):
        join_covariates(f2, dup, on="subject")


def test_match_ids_report_text():
    f = _features()
    cov = pd.DataFrame({"subject": ["s3", "new"]})
    rep = match_ids(f, cov, on="subject")
    assert rep.matched == [("s3",)] and rep.only_in_covariates == [("new",)]
    assert str(rep).startswith("1 id(s) matched on ['subject']; 2 in the features but not the covariates")
