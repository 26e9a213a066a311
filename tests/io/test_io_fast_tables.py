"""The command line's table reader and writer (featharm.io.tables.read_source / source_chunks, on pyarrow):
the same DataFrame as pandas, the numbers in one block handed to the models without a copy, the other columns
written back exactly as they are in the file, numbers written as the shortest text that reads back to the
same double (or as asked), and pandas as the fallback for what pyarrow does not take as it is."""

from __future__ import annotations

import gzip
import io
import math

import numpy as np
import pandas as pd
import pytest

pa = pytest.importorskip("pyarrow")

from featharm.exceptions import InputError  # noqa: E402
from featharm.io import _arrow  # noqa: E402
from featharm.io.tables import read_source, read_table, source_chunks  # noqa: E402


def _features_of(labels, exclude=("id", "site", "sex", "age")):
    return [c for c in labels if c not in exclude]


def _table(n=40, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "id": [f"{i:03d}" for i in range(n)],
        "site": rng.choice(["A", "B"], n),
        "age": rng.uniform(20, 80, n).round(1),
        "sex": rng.choice(["F", "M"], n),
    })
    for j in range(5):
        df[f"roi{j}"] = rng.normal(2.5, 0.3, n).round(4)
    return df


def _read(path, **kw):
    return read_source(path, numeric=_features_of, **kw)


def _frames_equal(a: pd.DataFrame, b: pd.DataFrame):
    assert list(a.columns) == list(b.columns)
    for c in a.columns:
        x, y = a[c], b[c]
        if pd.api.types.is_numeric_dtype(y) and not pd.api.types.is_bool_dtype(y):
            np.testing.assert_array_equal(x.to_numpy(dtype=float), y.to_numpy(dtype=float), err_msg=c)
        else:
            assert x.astype(object).where(x.notna(), None).tolist() == \
                y.astype(object).where(y.notna(), None).tolist(), c
    assert a.index.equals(b.index)


# ------------------------------------------------------------------------------------------ reading
@pytest.mark.parametrize("name", ["t.csv", "t.csv.gz", "t.tsv", "t.parquet"])
def test_read_source_is_read_table_with_the_numbers_in_one_block(tmp_path, name):
    df = _table()
    path = tmp_path / name
    if name.endswith(".parquet"):
        df.to_parquet(path, index=False)
    else:
        text = df.to_csv(index=False, sep="\t" if ".tsv" in name else ",").encode()
        path.write_bytes(gzip.compress(text) if name.endswith(".gz") else text)
    src = _read(path, index_col="id")
    ref = read_table(path, index_col="id")
    _frames_equal(src.frame, ref)
    assert src.block is not None and src.block.flags.f_contiguous  # read by pyarrow, not the fallback
    assert src.block_columns == [f"roi{j}" for j in range(5)]
    X = src.features(src.block_columns)
    assert np.shares_memory(X.to_numpy(), src.block) and X.index.equals(ref.index)
    assert np.shares_memory(src.frame["roi3"].to_numpy(), src.block)


def test_ids_and_text_columns_are_kept_as_written(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('id,site,note,x,y\n007,A,"a, b",1.5,2\n010,NA,"say ""hi""",2.5,3\n011,,,3.5,4\n')
    src = read_source(path, index_col="id", numeric=lambda labels: ["x", "y"])
    assert list(src.frame.index) == ["007", "010", "011"]
    assert src.text[0] == ["007", "010", "011"] and src.text[1] == ["A", "NA", ""]
    assert src.text[2] == ["a, b", 'say "hi"', ""]
    assert src.frame["site"].isna().tolist() == [False, True, True]  # typed as pandas types them


def test_numeric_covariates_and_dates_not_features_are_typed_by_pandas(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("id,age,visit,flag,when,x\n1,45,1,true,2020-01-01,1.5\n2,50,,false,2020-02-01,2.5\n")
    src = read_source(path, numeric=lambda labels: ["flag", "when", "x"])  # flag, when: text after all
    ref = read_table(path)
    _frames_equal(src.frame, ref)
    assert src.frame["age"].dtype == np.int64 and src.frame["flag"].dtype == bool
    assert src.block_columns == ["x"] and src.text[3] == ["true", "false"] and src.text[4][0] == "2020-01-01"


def test_many_chunks_with_line_breaks_inside_quotes(tmp_path, monkeypatch):
    monkeypatch.setattr(_arrow, "CHUNK", 256)  # many chunks, and rows longer than one
    df = _table(n=120)
    df["note"] = [f'line {i}\nnext, "q"' if i % 7 == 0 else f"n{i}" for i in range(len(df))]
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    src = read_source(path, index_col="id", numeric=lambda labels: _features_of(labels, ("id", "site", "sex", "note")))
    _frames_equal(src.frame, read_table(path, index_col="id"))
    assert src.block is not None and src.text[df.columns.get_loc("note")] == df["note"].tolist()


@pytest.mark.parametrize("case", ["ragged", "text-further-down", "latin-1", "cr-only"])
def test_what_pyarrow_does_not_take_is_read_by_pandas(tmp_path, monkeypatch, case):
    monkeypatch.setattr(_arrow, "CHUNK", 256)
    df = _table(n=60)
    path = tmp_path / "t.csv"
    if case == "ragged":  # a short row: pandas fills it with NaN
        lines = df.to_csv(index=False).splitlines()
        lines[30] = lines[30].rsplit(",", 1)[0]
        path.write_text("\n".join(lines) + "\n")
    elif case == "text-further-down":  # numbers in the first chunk, text later: a text column after all
        df["roi4"] = df["roi4"].astype(object)
        df.loc[50, "roi4"] = "n/a?"
        df.to_csv(path, index=False)
    elif case == "latin-1":
        df.loc[50, "sex"] = "é"
        df.to_csv(path, index=False, encoding="latin-1")
    else:
        df.to_csv(path, index=False, lineterminator="\r")
    if case == "latin-1":
        with pytest.raises(InputError, match="is not UTF-8 text"):
            _read(path)
        return
    src = _read(path)
    assert src.block is None  # the fallback
    _frames_equal(src.frame, read_table(path))


def test_header_only_and_repeated_names_are_refused_as_before(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("id,x,y\n")
    with pytest.raises(InputError, match="no data rows"):
        _read(path)
    path.write_text("id,x,x\n1,2,3\n")
    with pytest.raises(InputError, match=r"repeats the column name\(s\) \['x'\]"):
        _read(path)
    path.write_text("id;x;y\n1;2;3\n")
    with pytest.raises(InputError, match="looks separated by ';', not ','"):
        _read(path)


# ------------------------------------------------------------------------------------------ writing
def _out(src, Xh, tmp_path, name="o.csv", **kw) -> bytes:
    chunks = source_chunks(src, Xh, tmp_path / name, **kw)
    if callable(chunks):
        buf = io.BytesIO()
        chunks(buf)
        return buf.getvalue()
    return b"".join(bytes(c) for c in chunks)


def _harmonized_like(src, seed=1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    X = src.features(src.block_columns)
    return X * (1 + rng.normal(0, 0.01, X.shape)) + rng.normal(0, 1e-3, X.shape)


def test_shortest_text_reads_back_to_the_same_doubles(tmp_path):
    df = _table(n=500)
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    src = _read(path, index_col="id")
    Xh = _harmonized_like(src)
    rng = np.random.default_rng(3)
    Xh.iloc[:50, 0] = rng.normal(0, 1, 50) * 10.0 ** rng.integers(-300, 300, 50)   # every magnitude
    Xh.iloc[50:60, 0] = [0.0, -0.0, 1.0, 100.0, 1e15, 1e16, 1e-7, 5e-324, 1.7976931348623157e308, 0.1]
    Xh.iloc[60, 1], Xh.iloc[61, 1], Xh.iloc[62, 1] = np.nan, np.inf, -np.inf
    text = _out(src, Xh, tmp_path)
    back = pd.read_csv(io.BytesIO(text), dtype={"id": str}, engine="pyarrow")
    for c in Xh.columns:
        a, b = back[c].to_numpy(dtype=float), Xh[c].to_numpy()
        assert np.array_equal(a.view(np.int64)[~np.isnan(b)], b.view(np.int64)[~np.isnan(b)]), c
        assert np.isnan(a[np.isnan(b)]).all()
    cells = pd.read_csv(io.BytesIO(text), dtype=str, keep_default_na=False)
    for c in Xh.columns:  # no more significant digits than Python's repr, the shortest round trip
        for s, v in zip(cells[c], Xh[c]):
            if math.isfinite(v) and v != 0:
                digits = lambda t: len(t.lstrip("-").split("e")[0].replace(".", "").strip("0"))  # noqa: E731
                assert digits(s) <= digits(repr(v)), (s, repr(v))
    assert cells.loc[60, "roi1"] == "" and cells.loc[61, "roi1"] == "inf" and cells.loc[62, "roi1"] == "-inf"


def test_other_columns_and_header_are_written_as_they_are_in_the_file(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(',id,site,note,x,y\n0,007,NA,"a, b",1.5,2\n1,010,,"say ""hi""",2.5,3\n2,011,B,,3.5,4\n')
    src = read_source(path, index_col="id", numeric=lambda labels: ["x", "y"])
    Xh = src.features(["x", "y"]) + 0.25
    text = _out(src, Xh, tmp_path).decode()
    assert text == (',id,site,note,x,y\n0,007,NA,"a, b",1.75,2.25\n1,010,,"say ""hi""",2.75,3.25\n'
                    "2,011,B,,3.75,4.25\n")


@pytest.mark.parametrize("spec", ["%.3f", "%.0f", "%.6g", "%.8e", "%+.2f"])
def test_printf_float_format_is_pythons_to_the_byte(tmp_path, spec):
    df = _table(n=300)
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    src = _read(path)
    Xh = _harmonized_like(src)
    Xh.iloc[0, 0], Xh.iloc[1, 0], Xh.iloc[2, 0], Xh.iloc[3, 0] = -0.0, -0.0004, 2.5e17, np.nan
    Xh.iloc[4, 0], Xh.iloc[5, 0], Xh.iloc[6, 0] = 0.0625, 2.675, np.inf   # binary ties, a decimal "tie"
    cells = pd.read_csv(io.BytesIO(_out(src, Xh, tmp_path, float_format=spec)), dtype=str, keep_default_na=False)
    for c in Xh.columns:
        assert cells[c].tolist() == ["" if v != v else spec % v for v in Xh[c]], c


def test_fixed_strings_are_pythons_on_hard_values():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, 5000) * 10.0 ** rng.integers(-8, 16, 5000),
                        np.arange(-50, 50) / 8, np.arange(-50, 50) / 2000 + 0.0005,   # exact and inexact ties
                        [-0.0, 0.0, 1e300, -1e300, 2.0 ** 52, 2.0 ** 53 + 2, 0.5, 1.5, 2.5, -2.5]])
    for d in (0, 1, 2, 3, 4, 7):
        assert _arrow.fixed_strings(x, d).to_pylist() == [f"%.{d}f" % v for v in x], d


def test_float_format_input_keeps_the_decimals_of_each_column(tmp_path):
    df = _table(n=200)
    df["roi1"] = df["roi1"].round(2)
    df["vol"] = (df["roi0"] * 1000).round(0)
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False, float_format="%.4f")     # roi1: 2.5100 ... (trailing zeros are not kept)
    src = _read(path)
    Xh = _harmonized_like(src)
    cells = pd.read_csv(io.BytesIO(_out(src, Xh, tmp_path, float_format="input")), dtype=str)
    expected = {"roi0": 4, "roi1": 2, "vol": 0}
    for c, d in expected.items():
        assert cells[c].tolist() == [f"%.{d}f" % v for v in Xh[c]], c


def test_float_format_is_checked():
    for bad in ["%d", "%.4f%%", "x%.4f", "{:.4f}", "%s", ""]:
        with pytest.raises(ValueError):
            _arrow.check_float_format(bad)
    assert _arrow.check_float_format("%.4f") == "%.4f"


def test_gzip_and_parquet_outputs(tmp_path):
    df = _table()
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    src = _read(path, index_col="id")
    Xh = _harmonized_like(src)
    plain = _out(src, Xh, tmp_path)
    assert gzip.decompress(_out(src, Xh, tmp_path, "o.csv.gz")) == plain
    back = pd.read_parquet(io.BytesIO(_out(src, Xh, tmp_path, "o.parquet")))
    assert back["id"].tolist() == df["id"].tolist() and back["age"].tolist() == df["age"].tolist()
    for c in Xh.columns:
        assert np.array_equal(back[c].to_numpy(), Xh[c].to_numpy())


def test_parquet_in_parquet_out_round_trip(tmp_path):
    df = _table()
    df["visits"] = np.arange(len(df))  # an integer column that is no feature stays integer
    path = tmp_path / "t.parquet"
    df.to_parquet(path, index=False)
    src = read_source(path, index_col="id", numeric=lambda labels: _features_of(labels, ("id", "site", "sex",
                                                                                           "age", "visits")))
    assert src.block is not None and src.block_columns == [f"roi{j}" for j in range(5)]
    Xh = _harmonized_like(src)
    back = pd.read_parquet(io.BytesIO(_out(src, Xh, tmp_path, "o.parquet")))
    assert list(back.columns) == list(df.columns) and back["visits"].dtype == np.int64
    pd.testing.assert_frame_equal(back[["id", "site", "age", "sex", "visits"]], df[["id", "site", "age", "sex", "visits"]])
    for c in Xh.columns:
        assert np.array_equal(back[c].to_numpy(), Xh[c].to_numpy())


def test_without_pyarrow_pandas_reads_and_python_writes(tmp_path, monkeypatch):
    df = _table(n=80)
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    src = _read(path, index_col="id")
    Xh = _harmonized_like(src)
    fast = _out(src, Xh, tmp_path)
    monkeypatch.setitem(__import__("sys").modules, "pyarrow.csv", None)  # `import pyarrow.csv` fails
    assert not _arrow.available()
    slow_src = _read(path, index_col="id")
    assert slow_src.block is None
    _frames_equal(slow_src.frame, src.frame)
    assert _out(slow_src, Xh, tmp_path) == fast
    assert _out(slow_src, Xh, tmp_path, float_format="%.3f") == _out(src, Xh, tmp_path, float_format="%.3f")
