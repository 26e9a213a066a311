"""Plain tables: CSV, TSV and Parquet by file extension; atomic writes."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from .._validation import show_columns
from ..exceptions import ColumnNotFoundError, DuplicateIndexError, InputError
from ..persistence import atomic_write_bytes
from ._common import FORMATS, SEPARATORS, file_extension, read_csv, require_file

__all__ = ["read_table", "write_table", "table_bytes", "table_format", "read_text_columns", "file_kind",
           "check_file_kind"]


def table_format(path) -> str:
    fmt = FORMATS.get(file_extension(path))
    if fmt is None:
        raise InputError(
            f"cannot tell the format of {str(path)!r} from its extension; use .csv, .tsv or .parquet."
        )
    if fmt == "parquet" and _gzipped(path):
        raise InputError(f"{str(path)!r}: Parquet files compress themselves; drop the .gz.")
    return fmt


def _gzipped(path) -> bool:
    return str(path).lower().endswith(".gz")


def _parquet_hint(exc: Exception) -> InputError:
    return InputError(f"reading or writing Parquet needs pyarrow: pip install 'featharm[parquet]' ({exc}).")


_OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


def file_kind(path) -> str | None:
    """What a file holds according to its first bytes, for files that are not text: ``"xlsx"``, ``"xls"``
    (an OLE2 file: Excel 97-2003), ``"featharm-model"``, ``"zip"``, ``"parquet"``, ``"gzip"``; ``None``
    for anything else (text, or unknown)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return None
    if head.startswith(b"PK\x03\x04"):
        import zipfile

        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            names = []
        if any(n.startswith("xl/") for n in names):
            return "xlsx"
        return "featharm-model" if "manifest.json" in names else "zip"
    if head.startswith(_OLE2):
        return "xls"
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    return None


_KINDS = {"xlsx": "an Excel workbook (.xlsx)", "xls": "an Excel 97-2003 workbook (.xls)",
          "featharm-model": "a featharm model file", "zip": "a zip archive", "parquet": "a Parquet file",
          "gzip": "gzip-compressed"}


def check_file_kind(path, fmt: str, what: str = "table", excel_ok: bool = False) -> None:
    """Refuse a file whose content is not what its name says (an Excel workbook saved as .csv, a gzip
    file without .gz, Parquet named .csv ...) with a message saying what it is and how to fix it."""
    path = Path(path)
    kind = file_kind(path)
    name, stem = str(path), path.name.split(".")[0] or path.name
    expected = "parquet" if fmt == "parquet" else ("gzip" if _gzipped(path) else None)
    if kind == expected:
        return
    if kind is None and expected == "gzip":
        if path.stat().st_size == 0:
            return  # empty: the reader says so
        raise InputError(f"{name!r} is not gzip-compressed although its name ends in .gz; rename it to "
                         f"{path.name[:-3]}.")
    if kind is None:  # a Parquet name on something else (text, or unknown)
        raise InputError(f"cannot read {name!r} as Parquet: it is not a Parquet file (it does not start with "
                         f"PAR1); if it is CSV text, rename it to {stem}.csv.")
    if kind == "featharm-model":
        raise InputError(f"{name!r} is a featharm model file, not a {what}; pass it as a model "
                         "(featharm apply MODEL DATA, --model MODEL).")
    is_ = f"{name!r} is {_KINDS[kind]}, not a {'Parquet' if fmt == 'parquet' else fmt.upper()} file as its name says"
    if kind in ("xlsx", "xls"):
        fix = (f"rename it to {stem}.{kind} (covariate tables may be Excel files)" if excel_ok else
               "save it as CSV from Excel (File > Save As > 'CSV UTF-8') and pass that file")
    elif kind == "parquet":
        fix = f"rename it to {stem}.parquet"
    elif kind == "gzip":
        fix = (f"decompress it (gunzip) or rename it to {path.name}.gz (featharm reads .csv.gz and .tsv.gz)"
               if fmt != "parquet" else "decompress it (Parquet files compress themselves)")
    else:
        fix = f"extract the {what} from it"
    raise InputError(f"{is_}; {fix}.")


def read_table(path, index_col: str | None = None) -> pd.DataFrame:
    """Read a CSV/TSV/Parquet table; with ``index_col`` that column becomes the (unique) index."""
    path = Path(path)
    require_file(path, "table")
    fmt = table_format(path)
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"table {str(path)!r} is empty (0 bytes).")
    check_file_kind(path, fmt)
    if fmt == "parquet":
        try:
            df = pd.read_parquet(path)
        except ImportError as exc:
            raise _parquet_hint(exc) from None
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise InputError(f"cannot read {str(path)!r} as Parquet: {str(exc).strip().splitlines()[0]}") from None
    else:
        sep = SEPARATORS[fmt]
        try:
            # ids are text: "007" stays "007" (and matches the same id in another file)
            df = read_csv(path, "table", sep=sep, dtype={index_col: str} if index_col is not None else None)
            header = read_csv(path, "table", sep=sep, header=None, nrows=1, dtype=str, keep_default_na=False)
        except UnicodeDecodeError as exc:
            raise InputError(
                f"{str(path)!r} is not UTF-8 text (it holds the byte {exc.object[exc.start:exc.start + 1]!r}, "
                "e.g. an accent saved as Latin-1); re-save it as UTF-8 (Excel: 'CSV UTF-8')."
            ) from None
        _check_header(path, df, header.iloc[0].tolist() if len(header) else [], sep)
    if len(df) == 0:
        raise InputError(f"table {str(path)!r} has no data rows (only the column names {show_columns(df.columns)}); "
                         "give a table with one row per subject.")
    if index_col is not None:
        if index_col not in df.columns:
            raise ColumnNotFoundError(
                f"{str(path)!r} has no id column {index_col!r}; columns present: {show_columns(df.columns)}."
            )
        if df[index_col].isna().any():
            rows = [int(i) + 2 for i in df.index[df[index_col].isna().to_numpy()][:5]]
            raise InputError(f"id column {index_col!r} of {str(path)!r} is empty on line(s) {rows}; "
                             "every row needs an id.")
        if df[index_col].duplicated().any():
            dup = df.loc[df[index_col].duplicated(), index_col].unique()[:5]
            raise DuplicateIndexError(f"id column {index_col!r} of {str(path)!r} repeats ids {list(dup)}.")
        df = df.set_index(index_col, drop=False)
        df.index.name = None
    return df


def _check_header(path, df: pd.DataFrame, names: list, sep: str) -> None:
    """A header pandas would silently change: repeated names (renamed ``age.1``), another separator."""
    seen, dup = set(), []
    for name in names:
        if name in seen and name not in dup and name != "":  # empty headers: pandas' own index columns
            dup.append(name)
        seen.add(name)
    if dup:
        raise InputError(f"{str(path)!r} repeats the column name(s) {dup[:5]}; every column needs its own name.")
    if df.shape[1] == 1:
        other = [c for c in (";", "\t", ",", "|") if c != sep and c in str(df.columns[0])]
        if other:
            shown = str(df.columns[0])
            raise InputError(
                f"{str(path)!r} has one column named {shown[:60] + ('...' if len(shown) > 60 else '')!r}: it "
                f"looks separated by {other[0]!r}, not {sep!r}. featharm reads comma-separated .csv and "
                "tab-separated .tsv/.txt files; re-save it (decimal points, not commas) or rename it."
            )


def table_bytes(df: pd.DataFrame, path, index: bool = False) -> bytes:
    """The bytes of ``df`` in the format given by the extension of ``path`` (nothing is written)."""
    fmt = table_format(path)
    if fmt == "parquet":
        buf = io.BytesIO()
        try:
            df.to_parquet(buf, index=index)
        except ImportError as exc:
            raise _parquet_hint(exc) from None
        return buf.getvalue()
    data = df.to_csv(sep=SEPARATORS[fmt], index=index, lineterminator="\n").encode()
    if _gzipped(path):  # out.csv.gz is gzip, as its name says (mtime 0: same input, same bytes)
        import gzip

        data = gzip.compress(data, mtime=0)
    return data


def write_table(df: pd.DataFrame, path, index: bool = False) -> None:
    """Write ``df`` atomically in the format given by the extension of ``path``."""
    atomic_write_bytes(path, table_bytes(df, path, index=index))


def read_text_columns(path, positions) -> pd.DataFrame | None:
    """The columns at ``positions`` of a CSV/TSV table exactly as written (text, nothing parsed as NaN).

    Used to write a table back with only some columns changed: ``007``, ``NA``, ``1`` or ``TRUE`` in the
    other columns come out as they went in. Returns ``None`` for Parquet (its types survive a round trip).
    """
    fmt = table_format(path)
    if fmt == "parquet":
        return None
    text = pd.read_csv(path, sep=SEPARATORS[fmt], dtype=str, keep_default_na=False, na_values=[],
                       usecols=list(positions))
    header = pd.read_csv(path, sep=SEPARATORS[fmt], header=None, nrows=1, dtype=str, keep_default_na=False,
                         na_values=[], usecols=list(positions))
    text.attrs["header"] = header.iloc[0].tolist() if len(header) else None  # "" stays "" (not "Unnamed: 0")
    return text
