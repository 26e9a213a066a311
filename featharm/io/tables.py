"""Plain tables: CSV, TSV and Parquet by file extension; atomic writes."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .._validation import show_columns
from ..exceptions import ColumnNotFoundError, DuplicateIndexError, InputError
from ..persistence import atomic_write_bytes
from ._common import FORMATS, SEPARATORS, file_extension, read_csv, require_file

__all__ = ["read_table", "write_table", "table_bytes", "table_format", "read_text_columns", "file_kind",
           "check_file_kind", "read_source", "SourceTable", "source_chunks"]


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
    return InputError(f"reading or writing Parquet needs pyarrow (a dependency of featharm): pip install pyarrow "
                      f"({exc}).")


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
    fmt = _check_file(path)
    df, _ = _read_pandas(path, fmt, index_col)
    _check_rows(path, df)
    return _set_index(path, df, index_col)


def _check_file(path: Path) -> str:
    """The format of the table file ``path`` once it is known to exist, not be empty and hold what its name
    says."""
    require_file(path, "table")
    fmt = table_format(path)
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"table {str(path)!r} is empty (0 bytes).")
    check_file_kind(path, fmt)
    return fmt


def _not_utf8(path, exc: UnicodeDecodeError) -> InputError:
    return InputError(
        f"{str(path)!r} is not UTF-8 text (it holds the byte {exc.object[exc.start:exc.start + 1]!r}, "
        "e.g. an accent saved as Latin-1); re-save it as UTF-8 (Excel: 'CSV UTF-8')."
    )


def _read_header(path: Path, sep: str) -> list:
    """The header cells of a CSV/TSV file as written ("" for an empty one)."""
    try:
        header = read_csv(path, "table", sep=sep, header=None, nrows=1, dtype=str, keep_default_na=False)
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, exc) from None
    return header.iloc[0].tolist() if len(header) else []


def _read_pandas(path: Path, fmt: str, index_col) -> tuple:
    """(the table read by pandas, its header cells as written or None for Parquet)."""
    if fmt == "parquet":
        try:
            return pd.read_parquet(path), None
        except ImportError as exc:
            raise _parquet_hint(exc) from None
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise InputError(f"cannot read {str(path)!r} as Parquet: {str(exc).strip().splitlines()[0]}") from None
    sep = SEPARATORS[fmt]
    try:
        # ids are text: "007" stays "007" (and matches the same id in another file)
        df = read_csv(path, "table", sep=sep, dtype={index_col: str} if index_col is not None else None)
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, exc) from None
    header = _read_header(path, sep)
    _check_header(path, list(df.columns), header, sep)
    return df, header


def _check_rows(path, df: pd.DataFrame) -> None:
    if len(df) == 0:
        raise InputError(f"table {str(path)!r} has no data rows (only the column names {show_columns(df.columns)}); "
                         "give a table with one row per subject.")


def _set_index(path, df: pd.DataFrame, index_col) -> pd.DataFrame:
    """``df`` indexed by its (unique, never empty) column ``index_col``, kept as a column too."""
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


def _check_header(path, labels: list, names: list, sep: str) -> None:
    """A header pandas would silently change: repeated names (renamed ``age.1``), another separator."""
    seen, dup = set(), []
    for name in names:
        if name in seen and name not in dup and name != "":  # empty headers: pandas' own index columns
            dup.append(name)
        seen.add(name)
    if dup:
        raise InputError(f"{str(path)!r} repeats the column name(s) {dup[:5]}; every column needs its own name.")
    if len(labels) == 1:
        other = [c for c in (";", "\t", ",", "|") if c != sep and c in str(labels[0])]
        if other:
            shown = str(labels[0])
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


# --------------------------------------------------------------------------------------------- DATA of the CLI
@dataclass
class SourceTable:
    """A table as the command line reads it (:func:`read_source`).

    ``frame`` is what :func:`read_table` returns. The numeric columns that may be features are also one
    Fortran-ordered float64 array ``block`` (columns ``block_columns``, in file order), of which ``frame``'s
    columns are views: :meth:`features` hands them to a model without a copy. For writing the table back,
    ``header`` holds the header cells as written and ``text`` {position: list of str} the other columns as
    written (CSV/TSV read by pyarrow; otherwise :meth:`verbatim` reads them again).
    """

    frame: pd.DataFrame
    path: Path
    fmt: str
    header: list | None = None
    block: np.ndarray | None = None
    block_columns: list = field(default_factory=list)
    text: dict = field(default_factory=dict)
    _where: dict | None = field(default=None, repr=False)
    #: the measure columns, when the file's format tells them apart from ids and covariates (FreeSurfer
    #: group tables, ENIGMA and ABCD tables: see :mod:`featharm.io.formats`); None for a plain table
    measures: list | None = None

    def features(self, feats) -> pd.DataFrame:
        """The columns ``feats`` (numbers) as a DataFrame indexed like ``frame``: a view of ``block`` when they
        are its columns in order, else a Fortran-ordered copy."""
        feats = list(feats)
        if self.block is not None and feats == self.block_columns:
            values = self.block
        elif self.block is not None and set(feats) <= set(self.block_columns):
            where = {c: k for k, c in enumerate(self.block_columns)}
            values = np.asfortranarray(self.block[:, [where[c] for c in feats]])
        else:
            return self.frame[feats]
        return pd.DataFrame(values, index=self.frame.index, columns=feats, copy=False)

    def release(self) -> None:
        """Let go of the numbers and the frame (only the text as written stays)."""
        self.block = None
        self.frame = self.frame.iloc[:0, :0]

    def values(self, column) -> np.ndarray:
        """The float64 values of one numeric column."""
        if self.block is not None:
            if self._where is None:
                self._where = {c: k for k, c in enumerate(self.block_columns)}
            if column in self._where:
                return self.block[:, self._where[column]]
        return self.frame[column].to_numpy(dtype=np.float64, na_value=np.nan)

    def verbatim(self, positions) -> dict | None:
        """{position: list of str}: the columns at ``positions`` exactly as written in a CSV/TSV file (None
        for Parquet, or when they cannot be matched to the rows)."""
        positions = list(positions)
        if all(j in self.text for j in positions):
            return {j: self.text[j] for j in positions}
        if self.fmt not in ("csv", "tsv") or not positions:  # Parquet, or joined from several files
            return None if positions else {}
        text = read_text_columns(self.path, positions)
        if text is None or text.shape != (len(self.frame), len(positions)):
            return None
        return {j: text.iloc[:, k].tolist() for k, j in enumerate(positions)}


def read_source(path, index_col: str | None = None, numeric=None) -> SourceTable:
    """Read DATA for the command line: :func:`read_table`'s checks and result, fast for big tables.

    ``numeric(labels)``: the column labels that may be features (they are read as numbers when they hold
    numbers; every other column is read as text first, then typed by pandas as :func:`read_table` types it).
    ``None``: read with pandas. CSV/TSV (also gzipped) and Parquet files are read by pyarrow when it is
    installed; a CSV file pyarrow cannot take as it is (ragged rows, a number column with text further
    down, bytes that are not UTF-8 ...) is read by pandas, whose leniency and messages are the reference.
    """
    from . import _arrow

    path = Path(path)
    fmt = _check_file(path)
    source = None
    if numeric is not None and _arrow.available():
        if fmt == "parquet":
            source = _read_parquet_fast(path, numeric)
        else:
            source = _read_csv_fast(path, fmt, index_col, numeric)
    if source is None:
        df, header = _read_pandas(path, fmt, index_col)
        source = SourceTable(df, path, fmt, header)
    _check_rows(path, source.frame)
    source.frame = _set_index(path, source.frame, index_col)
    return source


def _labels(header: list) -> list:
    """pandas' column labels for header cells ("Unnamed: 3" for an empty fourth cell)."""
    return [cell if cell != "" else f"Unnamed: {j}" for j, cell in enumerate(header)]


def _read_csv_fast(path: Path, fmt: str, index_col, numeric) -> SourceTable | None:
    from . import _arrow

    sep = SEPARATORS[fmt]
    header = _read_header(path, sep)
    labels = _labels(header)
    _check_header(path, labels, header, sep)
    wanted = set(map(str, numeric(labels)))
    candidates = {j for j, c in enumerate(labels) if c in wanted and c != index_col}
    try:
        X, positions, text, n = _arrow.read_csv(path, sep, len(labels), candidates, gzipped=_gzipped(path))
    except _arrow.Unreadable:
        return None
    others = [j for j in range(len(labels)) if j in text]
    typed = _typed_text([labels[j] for j in others], [text[j] for j in others], n, sep, index_col)
    if typed is None:
        return None
    frame = _assemble(X, [labels[j] for j in positions], positions, typed, others)
    return SourceTable(frame, path, fmt, header, X, [labels[j] for j in positions], text)


def _typed_text(labels: list, columns: list, n: int, sep: str, index_col) -> pd.DataFrame | None:
    """The text ``columns`` typed as pandas' read_csv types them (numbers, NaN for "NA" ...), from a small
    CSV of just those columns (every cell quoted, so an empty row is no blank line)."""
    if not labels:
        return pd.DataFrame(index=pd.RangeIndex(n))
    body = "\n".join(sep.join('"' + v.replace('"', '""') + '"' for v in row) for row in zip(*columns))
    dtype = {index_col: str} if index_col in labels else None
    typed = pd.read_csv(io.StringIO(body + "\n"), sep=sep, header=None, names=labels, dtype=dtype)
    return typed if len(typed) == n else None


def _assemble(X, xlabels: list, positions: list, typed: pd.DataFrame, others: list) -> pd.DataFrame:
    """One DataFrame of the number block ``X`` (a view, not a copy) and the ``typed`` columns, in file order."""
    frame = pd.DataFrame(X, columns=xlabels, copy=False)
    if len(others) <= 64:  # each insert adds a block: few of them keep the block of numbers as it is
        for j, label in zip(others, typed.columns):
            frame.insert(j, label, typed[label])
        return frame
    order = [None] * (len(positions) + len(others))
    for j, label in zip(positions, xlabels):
        order[j] = label
    for j, label in zip(others, typed.columns):
        order[j] = label
    return pd.concat([frame, typed], axis=1)[order]


def _read_parquet_fast(path: Path, numeric) -> SourceTable | None:
    """A Parquet file: the numeric columns that may be features straight into the block, the others by pandas."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .._staging import quiet_pyarrow

    quiet_pyarrow()
    try:
        schema = pq.read_schema(path)
        meta = schema.pandas_metadata or {}
    except (OSError, ValueError, pa.ArrowException):
        return None  # pandas says what is wrong
    if any(not isinstance(i, dict) for i in meta.get("index_columns", [])) or len(set(schema.names)) != len(schema.names):
        return None  # an index stored as a column: pandas restores it
    labels = list(schema.names)
    wanted = set(map(str, numeric(labels)))
    positions = [j for j, c in enumerate(labels) if c in wanted
                 and (pa.types.is_integer(schema.field(j).type) or pa.types.is_floating(schema.field(j).type))]
    others = [j for j in range(len(labels)) if j not in set(positions)]
    try:
        pf = pq.ParquetFile(path)
        n = pf.metadata.num_rows
        X = np.empty((n, len(positions)), order="F")
        for k, j in enumerate(positions):
            col = pf.read(columns=[labels[j]]).column(0)
            X[:, k] = col.cast(pa.float64()).to_numpy()
            del col
        typed = pd.read_parquet(path, columns=[labels[j] for j in others]) if others else \
            pd.DataFrame(index=pd.RangeIndex(n))
    except (OSError, ValueError, pa.ArrowException):
        return None
    if len(typed) != n:
        return None
    typed = typed.reset_index(drop=True)
    frame = _assemble(X, [labels[j] for j in positions], positions, typed, others)
    return SourceTable(frame, path, "parquet", None, X, [labels[j] for j in positions])


def _rendered(frame: pd.DataFrame, columns: list, sep: str) -> list:
    """The columns of ``frame`` as pandas' to_csv writes them (lists of str, unquoted)."""
    import csv

    text = frame[columns].to_csv(sep=sep, index=False, header=False, lineterminator="\n")
    rows = list(csv.reader(io.StringIO(text), delimiter=sep))
    if len(rows) != len(frame):  # a row of one empty cell is a blank line
        rows = [r if r else [""] for r in csv.reader(io.StringIO(text), delimiter=sep, strict=False)]
    return [list(col) for col in zip(*rows)] if rows else [[] for _ in columns]


def source_chunks(source: SourceTable, harmonized: pd.DataFrame, out, float_format: str = "shortest",
                  release: bool = False):
    """OUT: the table ``source`` with the columns of ``harmonized`` replaced, in the format of ``out``'s
    extension; the other columns of a CSV/TSV source are written exactly as they are in it.

    Returns an iterator of bytes (CSV/TSV, gzipped for ``.gz``) or, for Parquet, a function writing the file
    to a binary file object. ``float_format`` (harmonized numbers of a CSV/TSV): ``"shortest"`` (the shortest
    text that reads back as the same double), ``"input"`` (each column with as many decimals as it has in
    ``source``; the shortest text where those are not short decimals) or a printf-style conversion
    (``"%.6g"``, ``"%.4f"``). ``release``: ``source`` drops its numbers and frame once they are not needed.
    """
    from . import _arrow

    _arrow.check_float_format(float_format)
    frame = source.frame
    changed = set(harmonized.columns)
    fmt = table_format(out)
    if fmt == "parquet":
        result = pd.DataFrame({c: harmonized[c].to_numpy() if c in changed else frame[c] for c in frame.columns},
                              index=frame.index, columns=frame.columns)

        def write_parquet(fh):
            try:
                result.to_parquet(fh, index=False)
            except ImportError as exc:
                raise _parquet_hint(exc) from None

        return write_parquet
    sep = SEPARATORS[fmt]
    labels = list(frame.columns)
    keep = [j for j, c in enumerate(labels) if c not in changed]
    text = source.verbatim(keep)
    header = source.header if text is not None and source.header is not None and \
        len(source.header) == len(labels) else [str(c) for c in labels]
    if text is None:
        text = dict(zip(keep, _rendered(frame, [labels[j] for j in keep], sep))) if keep else {}
    fixed = _arrow._FIXED.fullmatch(float_format)
    columns = []
    for j, c in enumerate(labels):
        if c not in changed:
            columns.append(_arrow.Column(text=text[j]))
            continue
        values = harmonized[c].to_numpy(dtype=np.float64)
        if float_format == "input":
            spec = _arrow.decimals(source.values(c))
            spec = "shortest" if spec is None else spec
        elif fixed:
            spec = int(fixed.group(1))
        else:
            spec = float_format
        columns.append(_arrow.Column(values=values, spec=spec))
    head = sep.join(_arrow.quote(str(h), sep) for h in header)
    n = len(frame)
    if release:
        source.release()
        del frame
    chunks = _arrow.csv_chunks(head, columns, n, sep, fast=_arrow.available())
    return _arrow.gzip_chunks(chunks) if _gzipped(out) else chunks
