"""The formats users have, read as one table of features: FreeSurfer ``asegstats2table`` /
``aparcstats2table`` group tables, ENIGMA-protocol CSVs and ABCD release 5.x tabulated imaging tables,
told apart by their header (:func:`sniff_format`), and several of them joined into one
(:func:`read_feature_tables`, :func:`read_abcd`).

* **FreeSurfer group tables** (:func:`~featharm.io.read_fs_table`): the first header cell says what the table
  holds (``Measure:volume``, ``lh.aparc.thickness``, ``rh.aparc.a2009s.area`` ...), whatever the file's
  name or extension; the first column holds the FreeSurfer ids. Every other column is a measure.
* **ENIGMA tables** (:func:`~featharm.io.read_enigma_table`): ``SubjID`` then ENIGMA measure names only
  (``L_bankssts_thickavg``, ``Lhippo``, ``LThickness``, ``ICV`` ...), e.g. ``CorticalMeasuresENIGMA_ThickAvg.csv``
  and ``LandRvolumes.csv``; ``NA`` cells (regions that failed QC) are missing values.
* **ABCD 5.x tables** (:func:`read_abcd_table`): one row per ``src_subject_id`` and ``eventname``. The imaging
  measures are the columns named ``smri_*`` (``mri_y_smr_thk_dsk.csv``: ``smri_thick_cdk_*``,
  ``mri_y_smr_area_dsk.csv``: ``smri_area_cdk_*``, ``mri_y_smr_vol_aseg.csv``: ``smri_vol_scs_*`` ...) and
  ``dmri_*``, ``rsfmri_*``, ``tfmri_*``; tables without them (``mri_y_adm_info.csv``: ``mri_info_manufacturer``,
  ``mri_info_deviceserialnumber`` ...; ``abcd_y_lt.csv``: ``site_id_l``, ``interview_age`` ...) give
  covariates, joined on the two keys.

Anything else is a plain table (:func:`~featharm.io.read_table`).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd

from .._validation import show_columns
from ..exceptions import (
    AlignmentError,
    ColumnNotFoundError,
    DuplicateIndexError,
    InputError,
    NonNumericFeatureError,
    StatsFileError,
)
from ._common import fmt_list, require_file
from .freesurfer._delimited import _sniff_delimiter
from .freesurfer.enigma import is_enigma_header, read_enigma_table
from .freesurfer.group_tables import _FIRST_CELL, read_fs_table
from .tables import read_table

__all__ = [
    "ABCD_KEYS",
    "ABCD_MEASURE_PREFIXES",
    "FeatureTables",
    "read_abcd",
    "read_abcd_table",
    "read_feature_tables",
    "sniff_format",
]

#: The columns every ABCD 5.x tabulated table is keyed by.
ABCD_KEYS = ("src_subject_id", "eventname")
#: Column-name prefixes of the ABCD imaging measures (structural, diffusion, resting-state and task fMRI).
ABCD_MEASURE_PREFIXES = ("smri_", "dmri_", "rsfmri_", "tfmri_")

_HEADER_BYTES = 4 * 2**20  # the header line is looked for in this many bytes at most


def _first_line(path: Path) -> str | None:
    """The first line of a text file (gzip-compressed too), from at most 4 MB; None if there is none."""
    head = b""
    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as fh:
            while len(head) < _HEADER_BYTES and b"\n" not in head:
                chunk = fh.read(64 * 1024)
                if not chunk:
                    break
                head += chunk
    except (OSError, EOFError):
        return None
    if b"\0" in head[:4096]:  # binary (Parquet, Excel, a model file): not a text table
        return None
    line = head[:_HEADER_BYTES].split(b"\n", 1)[0].rstrip(b"\r")
    return line.decode("utf-8", errors="replace").lstrip("\ufeff")


def _cells(line: str) -> list[str]:
    delim = _sniff_delimiter(line)
    cells = line.split() if delim == " " else line.split(delim)
    return [c.strip().strip('"') for c in cells]


def sniff_format(path) -> str:
    """What a DATA file is, from its header: ``"freesurfer"`` (asegstats2table/aparcstats2table: a first
    cell such as ``Measure:volume`` or ``lh.aparc.thickness``), ``"enigma"`` (``SubjID`` and ENIGMA measure
    names), ``"abcd"`` (``src_subject_id`` and ``eventname`` columns) or ``"table"`` (anything else).

    At most the first 4 MB are read (for Parquet, only its schema)."""
    path = Path(path)
    require_file(path, "table")
    if not path.is_file():
        return "table"
    if path.name.lower().endswith((".parquet", ".pq")):
        try:
            import pyarrow.parquet as pq

            names = set(pq.read_schema(path).names)
        except (OSError, ValueError, ImportError):  # not readable as Parquet: read_table says why
            return "table"
        return "abcd" if set(ABCD_KEYS) <= names else "table"
    line = _first_line(path)
    if not line or not line.strip():
        return "table"
    cells = _cells(line)
    gz = path.name.lower().endswith(".gz")
    if len(cells) > 1 and _FIRST_CELL.match(cells[0]) and not gz:
        return "freesurfer"
    if is_enigma_header(cells) and not gz:
        return "enigma"
    if set(ABCD_KEYS) <= set(cells):
        return "abcd"
    return "table"


# --------------------------------------------------------------------------------------------- ABCD
def _abcd_measures(columns) -> list:
    return [c for c in columns if str(c).startswith(ABCD_MEASURE_PREFIXES)]


def read_abcd_table(path) -> pd.DataFrame:
    """Read one ABCD release 5.x tabulated table (``mri_y_smr_thk_dsk.csv``, ``mri_y_adm_info.csv``,
    ``abcd_y_lt.csv`` ...; CSV, TSV or Parquet).

    Returns
    -------
    pandas.DataFrame
        Indexed by (``src_subject_id``, ``eventname``), the other columns as read. The imaging measure
        columns (:data:`ABCD_MEASURE_PREFIXES`) are float64 (empty cells NaN) and listed in
        ``df.attrs["featharm"]["measures"]``.

    Raises
    ------
    ColumnNotFoundError
        A key column is missing.
    DuplicateIndexError
        A subject and event appear on two rows (lines named).
    NonNumericFeatureError
        A measure cell holds text (file, line and column named), e.g. the description row of an NDA
        ``.txt`` file of the releases before 5.0.
    """
    path = Path(path)
    df = read_table(path)
    missing = [k for k in ABCD_KEYS if k not in df.columns]
    if missing:
        raise ColumnNotFoundError(f"{str(path)!r} is not an ABCD table: it has no {' or '.join(missing)} column "
                                  f"(columns: {show_columns(df.columns)}); ABCD 5.x tables are keyed by "
                                  "src_subject_id and eventname.")
    keys = df[list(ABCD_KEYS)].astype("string").apply(lambda s: s.str.strip())
    empty = keys.isna().any(axis=1) | (keys == "").any(axis=1)
    if empty.any():
        lines = [int(i) + 2 for i in np.flatnonzero(empty.to_numpy())[:5]]
        raise InputError(f"{str(path)!r}: src_subject_id or eventname is empty on line(s) {lines}; every row "
                         "needs both.")
    dup = keys.duplicated(keep=False)
    if dup.any():
        first = keys[dup].iloc[0]
        lines = [int(i) + 2 for i in np.flatnonzero(((keys == first).all(axis=1)).to_numpy())[:5]]
        raise DuplicateIndexError(f"{str(path)!r}: subject {first.iloc[0]!r} at event {first.iloc[1]!r} is on "
                                  f"lines {lines}; an ABCD table has one row per subject and event.")
    measures = _abcd_measures(df.columns)
    for c in measures:
        s = df[c]
        if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            df[c] = s.astype(np.float64)
            continue
        text = s.astype("string").str.strip()
        values = pd.to_numeric(text.mask(text.isin(["", "NA", "NaN", "nan", "n/a"])), errors="coerce")
        bad = values.isna() & text.notna() & ~text.isin(["", "NA", "NaN", "nan", "n/a"])
        if bad.any():
            k = int(np.flatnonzero(bad.to_numpy())[0])
            hint = (" (a description row under the header, as in the NDA .txt files of releases before 5.0: "
                    "delete that row)" if k == 0 else "")
            raise NonNumericFeatureError(f"{str(path)!r} line {k + 2}: the imaging measure {c!r} holds "
                                         f"{text.iloc[k]!r}, not a number{hint}.")
        df[c] = values.astype(np.float64)
    df.index = pd.MultiIndex.from_frame(keys.astype(object))
    df = df.drop(columns=list(ABCD_KEYS))
    df.attrs["featharm"] = {"tool": "ABCD", "source": str(path), "measures": measures}
    return df


def read_abcd(paths, events=None) -> pd.DataFrame:
    """Read ABCD release 5.x tables and join them on ``src_subject_id`` and ``eventname``.

    Tables with imaging measures (``mri_y_smr_thk_dsk.csv``, ``mri_y_smr_area_dsk.csv``,
    ``mri_y_smr_vol_aseg.csv`` ...) must list the same subjects and events; tables without
    (``mri_y_adm_info.csv`` for the scanner: ``mri_info_manufacturer``, ``mri_info_manufacturersmn``,
    ``mri_info_deviceserialnumber``, ``mri_info_softwareversion``; ``abcd_y_lt.csv`` for the site
    ``site_id_l`` and ``interview_age``) add their columns to those rows (empty where they lack one).

    Parameters
    ----------
    paths : path-like or sequence of path-like
    events : sequence of str, optional
        Keep only these ``eventname`` values (e.g. ``["baseline_year_1_arm_1"]``).

    Returns
    -------
    pandas.DataFrame
        Indexed by (``src_subject_id``, ``eventname``); ``df.attrs["featharm"]["measures"]`` lists the imaging
        measure columns (pass ``df[measures]`` as ``X`` and ``df`` as the covariates).

    Raises
    ------
    AlignmentError
        Two measure tables list different subjects or events.
    InputError
        No table has imaging measures; a column is in two tables with different values; an unknown event.
    """
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise InputError("no ABCD tables given.")
    tables = [(p, read_abcd_table(p)) for p in paths]
    with_measures = [(p, t) for p, t in tables if t.attrs["featharm"]["measures"]]
    if not with_measures:
        raise InputError(f"none of {fmt_list([str(p) for p in paths], 4)} has ABCD imaging measures (columns "
                         f"{', '.join(p + '*' for p in ABCD_MEASURE_PREFIXES)}): add a table such as "
                         "mri_y_smr_thk_dsk.csv.")
    p0, out = with_measures[0]
    measures = list(out.attrs["featharm"]["measures"])
    for p, t in with_measures[1:]:
        if not t.index.sort_values().equals(out.index.sort_values()):
            a, b = out.index.difference(t.index), t.index.difference(out.index)
            raise AlignmentError(f"{p0} and {p} list different subjects/events: {len(a)} only in the first "
                                 f"({fmt_list(list(a), 3)}), {len(b)} only in the second ({fmt_list(list(b), 3)}).")
        out = _join(out, t.loc[out.index], p)
        measures += [c for c in t.attrs["featharm"]["measures"] if c not in measures]
    for p, t in tables:
        if not t.attrs["featharm"]["measures"]:
            out = _join(out, t.reindex(out.index), p)
    if events is not None:
        events = [str(e) for e in events]
        present = set(out.index.get_level_values(1))
        unknown = [e for e in events if e not in present]
        if unknown:
            raise InputError(f"no rows at event(s) {unknown}; the events present are {sorted(present)}.")
        out = out[out.index.get_level_values(1).isin(events)]
    out.index.names = list(ABCD_KEYS)
    out.attrs["featharm"] = {"tool": "ABCD", "sources": [str(p) for p in paths], "measures": measures}
    return out


def _join(out: pd.DataFrame, t: pd.DataFrame, path) -> pd.DataFrame:
    """``t``'s columns added to ``out`` (same rows); a column in both must hold the same values."""
    same = [c for c in t.columns if c in out.columns]
    differ = [c for c in same if not out[c].equals(t[c])
              and not (pd.api.types.is_numeric_dtype(out[c]) and pd.api.types.is_numeric_dtype(t[c])
                       and np.array_equal(out[c].to_numpy(float), t[c].to_numpy(float), equal_nan=True))]
    if differ:
        raise InputError(f"column(s) {fmt_list(differ, 4)} of {path} are in an earlier table too, with other "
                         "values; pass one of the tables only, or rename the column.")
    attrs = out.attrs
    out = pd.concat([out, t.drop(columns=same)], axis=1)
    out.attrs = attrs
    return out


# --------------------------------------------------------------------------------------------- any DATA
class FeatureTables:
    """DATA files read and joined into one table (:func:`read_feature_tables`).

    ``frame``: the ids as columns first (``id_columns``), then every table's columns; its index holds the
    ids (``"<src_subject_id>/<eventname>"`` for ABCD). ``measures``: the columns that may be features
    (every measure of a FreeSurfer, ENIGMA or ABCD table; every column of a plain table). ``formats``: the
    format of each file.
    """

    def __init__(self, frame, id_columns, measures, formats):
        self.frame, self.id_columns, self.measures, self.formats = frame, id_columns, measures, formats


def read_feature_tables(paths, id_col: str | None = None) -> FeatureTables:
    """Read DATA files of any format :func:`sniff_format` knows and join them on their ids.

    FreeSurfer and ENIGMA tables are joined on their first column (named ``id_col``, else ``fsid``, or
    ``SubjID`` when every table is an ENIGMA one); plain tables on their column ``id_col`` (required when
    there are several); ABCD tables on ``src_subject_id`` and ``eventname`` (:func:`read_abcd`; they are not
    mixed with the other formats). Except for ABCD covariate tables, every table must list the same ids.
    Columns repeated with identical values (FreeSurfer 7 aparc tables all carry ``eTIV`` and
    ``BrainSegVolNotVent``) are kept once.
    """
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    formats = [sniff_format(p) for p in paths]
    if "abcd" in formats:
        others = [str(p) for p, f in zip(paths, formats) if f != "abcd"]
        if others:
            raise InputError(f"{fmt_list(others, 3)} {'is not an ABCD table' if len(others) == 1 else 'are not ABCD tables'}"
                             " (no src_subject_id and eventname columns): ABCD tables are joined on those two "
                             "columns only; add an eventname column to it, or pass it with --covariates.")
        df = read_abcd(paths)
        measures = df.attrs["featharm"]["measures"]
        frame = df.reset_index()
        frame.index = pd.Index([f"{a}/{b}" for a, b in df.index], name=None)
        return FeatureTables(frame, list(ABCD_KEYS), measures, formats)
    if len(paths) > 1 and "table" in formats and not id_col:
        plain = [str(p) for p, f in zip(paths, formats) if f == "table"]
        raise InputError(f"joining several DATA files needs --id COL, the id column of {fmt_list(plain, 3)} "
                         "(FreeSurfer and ENIGMA tables have theirs in the first column).")
    name = id_col or ("SubjID" if set(formats) == {"enigma"} else "fsid")
    parts, measures = [], []
    for p, f in zip(paths, formats):
        if f == "freesurfer":
            try:
                t = read_fs_table(p, parse_ids=False)
            except StatsFileError as exc:
                if "not a number" not in str(exc):
                    raise
                raise StatsFileError(f"{exc} Its first header cell ({_first_line(p).split(_sniff_delimiter(_first_line(p)))[0]!r}) "
                                     "marks an asegstats2table/aparcstats2table table, whose every other column is a "
                                     "measure: give covariates with --covariates FILE, or rename that cell to read "
                                     "the file as a plain table.") from None
        elif f == "enigma":
            t = read_enigma_table(p, allow_missing=True)
        else:
            t = read_table(p, index_col=id_col)
            t = t.drop(columns=[id_col]) if id_col else t
        t.index = pd.Index([str(i) for i in t.index], name=name)
        if name in t.columns:
            raise InputError(f"{p} has a column {name!r} besides its ids; pass --id with another name for the ids.")
        parts.append((p, t))
        measures += [c for c in t.columns if c not in measures]
    p0, out = parts[0]
    for p, t in parts[1:]:
        if set(t.index) != set(out.index):
            a = [i for i in out.index if i not in set(t.index)]
            b = [i for i in t.index if i not in set(out.index)]
            raise AlignmentError(f"{p0} and {p} list different subjects: {len(a)} only in the first "
                                 f"({fmt_list(a, 5)}), {len(b)} only in the second ({fmt_list(b, 5)}).")
        out = _join(out, t.loc[out.index], p)
    frame = out.reset_index()
    frame.index = pd.Index(list(out.index), name=None)
    return FeatureTables(frame, [name], [c for c in measures if c != name], formats)
