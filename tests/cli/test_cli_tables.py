"""OUT of harmonize and apply through the fast reader and writer: the harmonized doubles read back bit for
bit, --float-format, gzip and Parquet, pandas as the fallback, and the same refusals as before."""

from __future__ import annotations

import gzip
import io
import sys

import numpy as np
import pandas as pd
import pytest

import featharm as fh
from featharm.cli import main
from featharm.io import _arrow

pytest.importorskip("pyarrow")

ARGS = ["--batch", "site", "--formula", "age + sex", "--id", "subject_id", "--quiet"]


def _table(n=150, p=8, seed=0) -> pd.DataFrame:
    s = fh.datasets.make_multisite(n_subjects=n, n_sites=3, n_features=p, random_state=seed)
    df = pd.concat([s.covariates.reset_index(drop=True), s.X.reset_index(drop=True).round(4)], axis=1)
    df.insert(0, "subject_id", [f"{i:05d}" for i in range(n)])
    return df


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr()


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "data.csv"
    _table().to_csv(path, index=False, float_format="%.4f")
    return path


def test_out_reads_back_to_the_harmonized_doubles(tmp_path, capsys, data):
    out = tmp_path / "h.csv"
    code, cap = _run(capsys, "harmonize", data, *ARGS, "--out", out)
    assert code == 0, cap.err
    df = fh.io.read_table(data, index_col="subject_id")
    feats = [c for c in df.columns if c.startswith("roi")]
    expected = fh.ComBat(batch="site", formula="age + sex").fit_transform(df[feats], df)
    back = pd.read_csv(out, dtype={"subject_id": str}, engine="pyarrow")
    for c in feats:
        assert np.array_equal(back[c].to_numpy().view(np.int64), expected[c].to_numpy().view(np.int64)), c
    raw = pd.read_csv(data, dtype=str, keep_default_na=False)
    res = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert res[["subject_id", "site", "age", "sex"]].equals(raw[["subject_id", "site", "age", "sex"]])  # "63.3000"


def test_float_format_input_and_printf(tmp_path, capsys, data):
    raw = pd.read_csv(data, dtype=str)
    for spec in ("input", "%.4f"):
        out = tmp_path / "h.csv"
        code, cap = _run(capsys, "harmonize", data, *ARGS, "--out", out, "--float-format", spec)
        assert code == 0, cap.err
        res = pd.read_csv(out, dtype=str)
        assert res["roi000"].str.fullmatch(r"-?\d+\.\d{4}").all() and (res["roi000"] != raw["roi000"]).any()
        assert res["age"].equals(raw["age"])
    with pytest.raises(SystemExit) as info:  # refused by the argument parser, before anything is read
        main([str(a) for a in ["harmonize", data, *ARGS, "--out", out, "--float-format", "%.3d"]])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "--float-format" in err and "%.6g" in err


def test_help_documents_float_format(capsys):
    with pytest.raises(SystemExit):
        main(["harmonize", "--help"])
    out = capsys.readouterr().out
    assert "--float-format FMT" in out and "'shortest'" in out and "%.6g" in out


def test_apply_and_gzip_input_give_the_same_table(tmp_path, capsys, data):
    packed = tmp_path / "data.csv.gz"
    packed.write_bytes(gzip.compress(data.read_bytes()))
    out, model, out_gz, applied = (tmp_path / n for n in ("h.csv", "m.fhm", "hgz.csv", "a.csv"))
    assert _run(capsys, "harmonize", data, *ARGS, "--out", out, "--save-model", model)[0] == 0
    assert _run(capsys, "harmonize", packed, *ARGS, "--out", out_gz)[0] == 0
    assert _run(capsys, "apply", model, packed, "--id", "subject_id", "--out", applied, "--quiet")[0] == 0
    assert out_gz.read_bytes() == out.read_bytes() == applied.read_bytes()


def test_parquet_data_to_csv_and_parquet(tmp_path, capsys, data):
    df = pd.read_csv(data, dtype={"subject_id": str})
    pq = tmp_path / "data.parquet"
    df.to_parquet(pq, index=False)
    csv_out, pq_out, ref = tmp_path / "h.csv", tmp_path / "h.parquet", tmp_path / "ref.csv"
    assert _run(capsys, "harmonize", pq, *ARGS, "--out", csv_out)[0] == 0
    assert _run(capsys, "harmonize", pq, *ARGS, "--out", pq_out)[0] == 0
    assert _run(capsys, "harmonize", data, *ARGS, "--out", ref)[0] == 0
    a = pd.read_csv(csv_out, dtype={"subject_id": str})
    b = pd.read_parquet(pq_out)
    c = pd.read_csv(ref, dtype={"subject_id": str})
    pd.testing.assert_frame_equal(a, c)
    pd.testing.assert_frame_equal(b, c)


def test_without_pyarrow_the_same_table(tmp_path, capsys, data, monkeypatch):
    fast = tmp_path / "fast.csv"
    assert _run(capsys, "harmonize", data, *ARGS, "--out", fast)[0] == 0
    monkeypatch.setitem(sys.modules, "pyarrow.csv", None)  # `import pyarrow.csv` fails: pandas reads, Python writes
    assert not _arrow.available()
    slow = tmp_path / "slow.csv"
    code, cap = _run(capsys, "harmonize", data, *ARGS, "--out", slow)
    assert code == 0, cap.err
    assert slow.read_bytes() == fast.read_bytes()


def test_a_feature_spoiled_further_down_is_named_as_before(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(_arrow, "CHUNK", 512)  # the first chunk holds numbers only
    df = _table()
    df["roi003"] = df["roi003"].astype(object)
    df.loc[120, "roi003"] = "n/a?"
    path = tmp_path / "d.csv"
    df.to_csv(path, index=False)
    code, cap = _run(capsys, "harmonize", path, *ARGS, "--out", tmp_path / "h.csv")
    assert code == 2 and "feature column 'roi003'" in cap.err and "'n/a?' at row '00120'" in cap.err
    assert not (tmp_path / "h.csv").exists()


def test_diagnose_reads_gzip_and_harmonized_tables(tmp_path, capsys, data):
    out = tmp_path / "h.csv.gz"
    assert _run(capsys, "harmonize", data, *ARGS, "--out", out)[0] == 0
    argv = ["diagnose", data, "--batch", "site", "--formula", "age + sex", "--id", "subject_id",
            "--n-permutations", "0", "--no-classification", "--quiet"]
    assert _run(capsys, *argv, "--harmonized", out, "--out", tmp_path / "d1")[0] == 0
    plain = tmp_path / "h.csv"
    plain.write_bytes(gzip.decompress(out.read_bytes()))
    assert _run(capsys, *argv, "--harmonized", plain, "--out", tmp_path / "d2")[0] == 0
    for name in ("site_effects.csv",):
        assert (tmp_path / "d1" / name).read_bytes() == (tmp_path / "d2" / name).read_bytes()
    eff = pd.read_csv(io.BytesIO((tmp_path / "d1" / "site_effects.csv").read_bytes()))
    assert len(eff)


def test_staged_outputs_take_chunks_and_writer_functions(tmp_path):
    from featharm._staging import Output, staged_outputs

    a, b = tmp_path / "a.csv", tmp_path / "b.bin"
    with staged_outputs([Output("a", "--out", a), Output("b", "--other", b)]) as st:
        st.write("a", (bytes([65 + i]) * 3 for i in range(3)))
        st.write("b", lambda fh: fh.write(b"xyz"))
        assert not a.exists() and not b.exists()
    assert a.read_bytes() == b"AAABBBCCC" and b.read_bytes() == b"xyz"


def test_a_disk_full_in_the_middle_of_out_leaves_nothing(tmp_path, capsys, data, monkeypatch):
    import errno
    import os

    import featharm.io.tables as tables

    real = tables.source_chunks

    def failing(*args, **kwargs):
        chunks = real(*args, **kwargs)

        def gen():
            yield next(iter(chunks))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return gen()

    monkeypatch.setattr(tables, "source_chunks", failing)
    out = tmp_path / "out" / "h.csv"
    code, cap = _run(capsys, "harmonize", data, *ARGS, "--out", out, "--save-model", tmp_path / "out" / "m.fhm")
    assert code == 2 and cap.err.startswith("featharm: error: cannot write --out") and "disk is full" in cap.err
    assert not (tmp_path / "out").exists()


def test_float_format_option_and_library_agree_and_parsing_loads_no_pandas():
    import subprocess

    from featharm.cli._common import float_format

    for spec in ["shortest", "input", "%.4f", "%.6g", "%+.2e", "%10.3F", "%d", "%.4f%%", "x", "{:.4f}", "", "%s"]:
        try:
            float_format(spec)
            cli_ok = True
        except Exception:
            cli_ok = False
        try:
            _arrow.check_float_format(spec)
            lib_ok = True
        except ValueError:
            lib_ok = False
        assert cli_ok == lib_ok, spec
    code = ("import sys; from featharm.cli import build_parser; "
            "build_parser().parse_args(['harmonize', 'd.csv', '--batch', 's', '--out', 'o.csv', '--float-format', "
            "'%.4f']); print('pandas' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "False", r.stderr
