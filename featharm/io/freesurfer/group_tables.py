"""Group tables written by ``asegstats2table`` and ``aparcstats2table``: :func:`read_fs_table`,
:func:`read_fs_tables`."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from ...exceptions import AlignmentError, FreeSurferWarning, InputError, StatsFileError, warn
from .._common import fmt_list
from ._delimited import _read_delimited, _split_ids, _to_numeric_frame
from ._names import STRUCTURE_RENAMES, normalize_structure_names
from .enigma import read_enigma_table
from .ids import _id_columns


_FIRST_CELL = re.compile(r"^(?:(?P<aseg>Measure):(?P<ameas>\w+)|(?P<hemi>lh|rh)\.(?P<parc>.+)\.(?P<meas>[A-Za-z]+))$")


def read_fs_table(path, parse_ids: bool = True, normalize_names: bool = False,
                  id_pattern: str | None = None) -> pd.DataFrame:
    """Read a group table written by ``asegstats2table`` or ``aparcstats2table`` (or an ENIGMA CSV).

    The delimiter (tab, comma, semicolon or spaces) is taken from the header line. The first header cell
    says what the table holds: ``Measure:volume`` (asegstats2table) or ``<hemi>.<parc>.<meas>`` such as
    ``lh.aparc.thickness`` or ``rh.aparc.a2009s.area`` (aparcstats2table); a first cell ``SubjID`` is read as
    an ENIGMA table (:func:`read_enigma_table`).

    Parameters
    ----------
    path : str or path-like
    parse_ids : bool, default True
        Add ``subject``, ``timepoint`` and ``fs_kind`` columns parsed from the ids (``TP.long.BASE`` for
        longitudinal runs; see :func:`parse_fsid`).
    normalize_names : bool, default False
        Rename structures renamed between FreeSurfer versions (:func:`normalize_structure_names`); the
        renames are reported in ``df.attrs["featharm"]["renamed"]``.
    id_pattern : str, optional
        Regular expression with named groups ``subject`` (and ``timepoint``) to parse the ids.

    Returns
    -------
    pandas.DataFrame
        Indexed by the FreeSurfer id (index name ``fsid``), feature columns named as in the file, values as
        written (float64; mm^3, mm^2 or mm according to the measure). ``df.attrs["featharm"]`` records the
        source file, measure, hemisphere and parcellation.

    Raises
    ------
    StatsFileError
        Empty file, unknown first header cell, ragged rows, non-numeric or missing cells (file and line named).
    DuplicateIndexError
        An id appears twice.
    """
    path = Path(path)
    df, delim = _read_delimited(path, "group table")
    first = str(df.columns[0]).strip()
    if first == "SubjID":
        return read_enigma_table(path)
    m = _FIRST_CELL.match(first)
    if m is None:
        raise StatsFileError(
            f"{path}:1: first header cell {first!r} is neither 'Measure:<measure>' (asegstats2table) nor "
            "'<hemi>.<parc>.<measure>' such as 'lh.aparc.thickness' (aparcstats2table)."
        )
    if df.shape[1] < 2:
        raise StatsFileError(f"{path}:1: the header has a single cell; is the delimiter right?")
    if len(df) == 0:
        raise StatsFileError(f"{path}: the group table has a header but no rows: truncated?")
    if m.group("aseg"):
        info = {"tool": "asegstats2table", "measure": m.group("ameas"), "hemi": None, "parcellation": None}
    else:
        info = {"tool": "aparcstats2table", "measure": m.group("meas"), "hemi": m.group("hemi"),
                "parcellation": m.group("parc")}
    body = _split_ids(df, path, "id", "; each subject must appear once")
    body.columns = [str(c).strip() for c in body.columns]
    if pd.Index(body.columns).has_duplicates:
        dup = pd.Index(body.columns)[pd.Index(body.columns).duplicated()][0]
        raise StatsFileError(f"{path}:1: column {dup!r} appears twice in the header.")
    out = _to_numeric_frame(body, path)
    _check_group_table(out, info, path)
    renamed: dict = {}
    if normalize_names:
        out, renamed = _normalize_mixed_table(out, path)
    if parse_ids:
        out = pd.concat([_id_columns(out.index, id_pattern), out], axis=1)
    info.update({"source": str(path), "delimiter": delim, "renamed": renamed})
    out.attrs["featharm"] = info
    return out


_FS7_APARC_EXTRAS = {"BrainSegVolNotVent", "eTIV"}


def _old_and_new_names(columns) -> list[tuple[str, str]]:
    """(old, new) pairs of :data:`STRUCTURE_RENAMES` both present in ``columns``."""
    return [(o, n) for o, n in STRUCTURE_RENAMES.items() if o in columns and n in columns]


def _check_group_table(df: pd.DataFrame, info: dict, path: Path) -> None:
    """Warn about what asegstats2table/aparcstats2table hide: zero-filled structures, foreign columns,
    old and new FreeSurfer names side by side (subjects from different versions)."""
    pairs = _old_and_new_names(df.columns)
    if pairs:
        warn(f"{path}: the table has both old and new FreeSurfer names ({'; '.join(f'{o} / {n}' for o, n in pairs)}"
             "): its subjects come from different FreeSurfer versions (a batch effect); normalize_names=True "
             "merges each pair when every row has one of the two filled and the other 0 or empty.",
             FreeSurferWarning)
    if info["tool"] != "aparcstats2table":
        return
    hemi, meas = info["hemi"], info["measure"]
    foreign = [c for c in df.columns
               if c not in _FS7_APARC_EXTRAS and not (c.startswith(f"{hemi}_") and c.endswith(f"_{meas}"))]
    if foreign:
        warn(f"{path}: column(s) {fmt_list(foreign, 4)} do not belong to a {hemi} {meas} table (first header cell "
             f"{hemi}.{info['parcellation']}.{meas}): was the table edited or merged?", FreeSurferWarning)
    if meas in ("thickness", "area", "volume"):
        zero = (df == 0).to_numpy()
        if zero.any():
            cols = [c for c, z in zip(df.columns, zero.any(axis=0)) if z]
            rows = [r for r, z in zip(df.index, zero.any(axis=1)) if z]
            warn(f"{path}: {int(zero.sum())} cell(s) are 0 ({fmt_list(cols, 3)}; ids {fmt_list(rows, 3)}): "
                 f"aparcstats2table writes 0 for a structure missing from a subject's file; treat them as "
                 f"missing, not as a {meas} of 0.", FreeSurferWarning)


def _normalize_mixed_table(df: pd.DataFrame, path: Path):
    pairs = _old_and_new_names(df.columns)
    df = df.copy()
    for old, new in pairs:
        a, b = df[old].to_numpy(), df[new].to_numpy()
        a_off, b_off = (a == 0) | np.isnan(a), (b == 0) | np.isnan(b)
        both = ~a_off & ~b_off
        if both.any():
            ids = list(df.index[both][:5])
            raise InputError(
                f"{path}: {old!r} and {new!r} both hold values for {ids}: cannot merge them into {new!r}."
            )
        df[new] = np.where(b_off & ~a_off, a, b)
        df = df.drop(columns=old)
    merged = {o: n for o, n in pairs}
    df, renamed = normalize_structure_names(df)
    return df, {**merged, **renamed}


def read_fs_tables(paths, parse_ids: bool = True, normalize_names: bool = False,
                   id_pattern: str | None = None) -> pd.DataFrame:
    """Read several group tables (e.g. the aseg table and both hemispheres' aparc tables) into one.

    Parameters
    ----------
    paths : sequence of path-like
        Tables as read by :func:`read_fs_table`.
    parse_ids, normalize_names, id_pattern
        As in :func:`read_fs_table`.

    Returns
    -------
    pandas.DataFrame
        Columns of every table side by side, rows in the order of the first table. Columns repeated across
        tables with identical values (FreeSurfer 7 aparc tables all carry ``BrainSegVolNotVent`` and ``eTIV``)
        are kept once. ``df.attrs["featharm"]["tables"]`` lists each table's metadata.

    Raises
    ------
    AlignmentError
        The tables do not list the same ids (the message names the ids missing from each table).
    InputError
        Two tables have a column of the same name with different values.
    """
    paths = list(paths)
    if not paths:
        raise InputError("no group tables given.")
    tables = [read_fs_table(p, parse_ids=False, normalize_names=normalize_names) for p in paths]
    ids0 = tables[0].index
    for p, t in zip(paths[1:], tables[1:]):
        if set(t.index) != set(ids0):
            only_first = [i for i in ids0 if i not in set(t.index)]
            only_this = [i for i in t.index if i not in set(ids0)]
            raise AlignmentError(
                f"{paths[0]} and {p} list different subjects: {len(only_first)} only in the first "
                f"({fmt_list(only_first, 5)}), {len(only_this)} only in the second ({fmt_list(only_this, 5)})."
            )
    out = tables[0]
    for p, t in zip(paths[1:], tables[1:]):
        t = t.loc[ids0]
        dup = [c for c in t.columns if c in out.columns]
        differ = [c for c in dup if not np.array_equal(out[c].to_numpy(), t[c].to_numpy(), equal_nan=True)]
        if differ:
            raise InputError(f"column(s) {fmt_list(differ, 4)} appear in {p} and an earlier table with different "
                             "values; read the tables separately.")
        out = pd.concat([out, t.drop(columns=dup)], axis=1)
    if parse_ids:
        out = pd.concat([_id_columns(out.index, id_pattern), out], axis=1)
    out.index.name = "fsid"
    out.attrs["featharm"] = {"tables": [t.attrs["featharm"] for t in tables]}
    return out
