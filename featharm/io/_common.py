"""Helpers shared by the io readers: a table's format from its file name, a missing file, pandas' errors for a
text table, lists in messages."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..exceptions import InputError

#: Extension -> table format (``.gz`` aside: ``x.csv.gz`` is a gzipped CSV).
FORMATS = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".parquet": "parquet", ".pq": "parquet"}
#: Text format -> column separator.
SEPARATORS = {"csv": ",", "tsv": "\t"}


def file_extension(path) -> str:
    """The lower-case extension that tells a file's format, under a final ``.gz`` (``""`` for none)."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] == ".gz" and len(suffixes) > 1:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def require_file(path, what: str) -> None:
    """:class:`~featharm.exceptions.InputError` naming ``what`` (e.g. ``"covariate table"``) when ``path`` is
    missing."""
    if not Path(path).exists():
        raise InputError(f"{what} {str(path)!r} does not exist.")


def read_csv(path, what: str, **kwargs) -> pd.DataFrame:
    """:func:`pandas.read_csv`, with an empty or unparsable file a one-line
    :class:`~featharm.exceptions.InputError`."""
    try:
        return pd.read_csv(path, **kwargs)
    except pd.errors.EmptyDataError:
        raise InputError(f"{what} {str(path)!r} is empty.") from None
    except pd.errors.ParserError as exc:
        raise InputError(f"cannot parse {str(path)!r}: {str(exc).strip()}") from None


def fmt_list(items, n=5) -> str:
    items = list(items)
    return ", ".join(map(str, items[:n])) + (f" ... (+{len(items) - n} more)" if len(items) > n else "")
