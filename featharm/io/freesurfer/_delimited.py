"""Delimited group tables (asegstats2table, aparcstats2table, ENIGMA CSVs): delimiter sniffing, reading as
text, the id column, numeric conversion with the file and line of a bad cell."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from ...exceptions import DuplicateIndexError, StatsFileError
from .._common import require_file


def _sniff_delimiter(line: str) -> str:
    for d in ("\t", ",", ";"):
        if d in line:
            return d
    return " "


def _read_delimited(path: Path, what: str):
    require_file(path, what)
    with open(path, encoding="utf-8", errors="replace") as fh:
        first = fh.readline()
    if not first.strip():
        raise StatsFileError(f"{what} {str(path)!r} is empty.")
    delim = _sniff_delimiter(first.rstrip("\r\n"))
    cells = [c.strip() for c in (first.split() if delim == " " else first.rstrip("\r\n").split(delim))]
    seen: set = set()
    for c in cells:
        if c in seen:
            raise StatsFileError(f"{path}:1: column {c!r} appears twice in the header.")
        seen.add(c)
    try:
        df = pd.read_csv(path, sep=delim if delim != " " else r"\s+", dtype=str, keep_default_na=False,
                         engine="python" if delim == " " else "c")
    except pd.errors.ParserError as exc:
        m = re.search(r"line (\d+)", str(exc))
        where = f":{m.group(1)}" if m else ""
        raise StatsFileError(
            f"{path}{where}: rows do not have as many cells as the header: {str(exc).strip()}"
        ) from None
    return df, delim


def _split_ids(df: pd.DataFrame, path: Path, what: str, hint: str = "") -> pd.DataFrame:
    """The cells after the first column, indexed by the first column's (stripped, unique) ids (name ``fsid``)."""
    ids = df.iloc[:, 0].astype(str).str.strip()
    if ids.duplicated().any():
        dup = ids[ids.duplicated()].iloc[0]
        lines = [int(k) + 2 for k in np.flatnonzero(ids.to_numpy() == dup)]
        raise DuplicateIndexError(f"{path}: {what} {dup!r} appears on lines {lines}{hint}.")
    body = df.iloc[:, 1:]
    body.index = pd.Index(ids.to_numpy(), name="fsid")
    return body


def _to_numeric_frame(df: pd.DataFrame, path: Path, first_line: int = 2, missing_ok: bool = False) -> pd.DataFrame:
    """The cells of ``df`` as float64 (the file and line of a cell that is not a number are named);
    ``missing_ok``: empty, ``NA``, ``NaN`` and ``n/a`` cells are NaN instead of an error."""
    out = {}
    for c in df.columns:
        col = df[c].to_numpy(dtype=object)
        vals = np.empty(len(col))
        for k, v in enumerate(col):
            v = v.strip() if isinstance(v, str) else v
            if v in ("", "NA", "NaN", "nan", "n/a"):
                if missing_ok:
                    vals[k] = np.nan
                    continue
                raise StatsFileError(
                    f"{path}:{k + first_line}: column {c!r} is empty for {df.index[k]!r} (the group table has a "
                    "missing value)."
                )
            try:
                vals[k] = float(v)
            except (TypeError, ValueError):
                raise StatsFileError(f"{path}:{k + first_line}: column {c!r} holds {v!r}, not a number.") from None
        out[c] = vals
    return pd.DataFrame(out, index=df.index, columns=df.columns)
