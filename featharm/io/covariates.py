"""Covariate tables (CSV, TSV, Parquet, Excel; BIDS ``participants.tsv`` / ``sessions.tsv``) and joining them
to feature tables on an id, with a report of the ids found in one table and not the other."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .._validation import show_columns
from ..exceptions import AlignmentError, ColumnNotFoundError, DuplicateIndexError, InputError, UnmatchedIdWarning, warn
from ._common import FORMATS, SEPARATORS, file_extension, fmt_list, read_csv, require_file

__all__ = ["read_covariates", "read_bids_participants", "read_bids_sessions", "join_covariates", "IdMatch",
           "match_ids"]

_EXCEL = {".xlsx", ".xlsm", ".xls"}
_NA = ["", "n/a", "N/A", "NA", "NaN", "nan"]


def read_covariates(path, id_col: str | None = None, sheet=0, *, _empty_ok: bool = False) -> pd.DataFrame:
    """Read a covariate table: CSV, TSV (``.tsv``/``.txt``), Parquet or Excel (``.xlsx``, needs openpyxl).

    Parameters
    ----------
    path : str or path-like
    id_col : str, optional
        Column with the subject (or run) id. It is read as text, so ids such as ``0050642`` keep their leading
        zeros, must be unique, and becomes the index (the column is kept as well).
    sheet : int or str, default 0
        Excel sheet.

    Returns
    -------
    pandas.DataFrame
        BIDS-style ``n/a`` and empty cells are missing values (NaN).
    """
    path = Path(path)
    require_file(path, "covariate table")
    ext = file_extension(path)
    fmt = "excel" if ext in _EXCEL else FORMATS.get(ext)
    dtype = {id_col: str} if id_col else None
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"covariate table {str(path)!r} is empty (0 bytes).")
    if fmt in SEPARATORS or fmt == "parquet":
        from .tables import check_file_kind

        check_file_kind(path, fmt, what="covariate table", excel_ok=True)
    if fmt in SEPARATORS:
        df = read_csv(path, "covariate table", sep=SEPARATORS[fmt], dtype=dtype, na_values=_NA,
                      keep_default_na=False)
    elif fmt == "parquet":
        try:
            df = pd.read_parquet(path)
        except ImportError as exc:
            raise InputError(f"reading Parquet needs pyarrow (a dependency of featharm): pip install pyarrow "
                             f"({exc}).") from None
        if id_col and id_col in df.columns:
            df[id_col] = df[id_col].astype(str)
    elif fmt == "excel":
        try:
            import openpyxl  # noqa: F401
        except ImportError:
            raise InputError(
                f"reading the Excel file {str(path)!r} needs openpyxl: pip install 'featharm[excel]' (or "
                "openpyxl), or save the sheet as CSV and pass that."
            ) from None
        df = pd.read_excel(path, sheet_name=sheet, dtype=dtype, na_values=_NA, keep_default_na=False)
    else:
        raise InputError(
            f"cannot tell the format of {str(path)!r} from its extension; use .csv, .tsv, .parquet or .xlsx."
        )
    df.columns = [str(c).strip() for c in df.columns]
    if len(df) == 0 and not _empty_ok:
        raise InputError(f"covariate table {str(path)!r} has no data rows (only the column names "
                         f"{show_columns(df.columns)}); give a table with one row per subject.")
    if id_col is not None:
        df = _set_id(df, id_col, str(path))
    return df


def _set_id(df: pd.DataFrame, id_col: str, where: str) -> pd.DataFrame:
    if id_col not in df.columns:
        raise ColumnNotFoundError(f"{where} has no id column {id_col!r}; columns present: {show_columns(df.columns)}.")
    ids = df[id_col]
    if ids.isna().any():
        rows = list(df.index[ids.isna()][:5])
        raise InputError(f"id column {id_col!r} of {where} is empty in rows {rows}.")
    ids = ids.astype(str).str.strip()
    if ids.duplicated().any():
        dup = list(ids[ids.duplicated()].unique()[:5])
        raise DuplicateIndexError(f"id column {id_col!r} of {where} repeats ids {dup}; each id must appear once.")
    df = df.copy()
    df[id_col] = ids
    df.index = pd.Index(ids.to_numpy(), name=id_col)
    return df


def read_bids_participants(bids_root) -> pd.DataFrame:
    """Read a BIDS ``participants.tsv`` (a file, or a dataset folder holding one).

    Returns
    -------
    pandas.DataFrame
        Indexed by ``participant_id`` (``sub-<label>``), which is kept as a column; ``n/a`` -> NaN.
    """
    p = Path(bids_root)
    if p.is_dir():
        p = p / "participants.tsv"
    require_file(p, "BIDS participants file")
    return read_covariates(p, id_col="participant_id")


def read_bids_sessions(bids_root, participants: bool = True) -> pd.DataFrame:
    """Read every ``sub-*/sub-*_sessions.tsv`` of a BIDS dataset into one table.

    Parameters
    ----------
    bids_root : str or path-like
        The dataset folder.
    participants : bool, default True
        Also join ``participants.tsv`` (when present), so each session row carries the participant's
        covariates (age at session from sessions.tsv wins over a participant-level column of the same name).

    Returns
    -------
    pandas.DataFrame
        One row per session with columns ``participant_id`` and ``session_id`` first, indexed by
        ``"<participant_id>_<session_id>"`` (the usual FreeSurfer id of a BIDS session, index name ``bids_id``).
    """
    root = Path(bids_root)
    if not root.is_dir():
        raise InputError(f"BIDS dataset folder {str(root)!r} does not exist.")
    frames = []
    for f in sorted(root.glob("sub-*/sub-*_sessions.tsv")):
        sub = f.parent.name
        df = read_covariates(f, id_col="session_id", _empty_ok=True)  # a subject without sessions yet
        df.insert(0, "participant_id", sub)
        frames.append(df.reset_index(drop=True))
    if not frames:
        raise InputError(f"no sub-*/sub-*_sessions.tsv files under {str(root)!r}.")
    out = pd.concat(frames, ignore_index=True)
    cols = ["participant_id", "session_id"] + [c for c in out.columns if c not in ("participant_id", "session_id")]
    out = out[cols]
    if participants and (root / "participants.tsv").exists():
        part = read_bids_participants(root)
        extra = [c for c in part.columns if c not in out.columns]
        out = out.join(part[extra], on="participant_id")
    out.index = pd.Index((out["participant_id"] + "_" + out["session_id"]).to_numpy(), name="bids_id")
    return out


@dataclass
class IdMatch:
    """Which ids of a feature table and a covariate table match.

    Attributes
    ----------
    matched : list
        Keys present in both.
    only_in_features : list
        Keys of feature rows with no covariate row (these rows would get no covariates).
    only_in_covariates : list
        Keys of covariate rows with no feature row.
    keys : list of str
        The key columns compared (feature-side names).
    """

    matched: list
    only_in_features: list
    only_in_covariates: list
    keys: list

    def __str__(self) -> str:
        def show(v):
            return fmt_list([k if len(self.keys) > 1 else k[0] for k in v], 10)

        lines = [f"{len(self.matched)} id(s) matched on {self.keys}"]
        if self.only_in_features:
            lines.append(f"{len(self.only_in_features)} in the features but not the covariates: "
                         f"{show(self.only_in_features)}")
        if self.only_in_covariates:
            lines.append(f"{len(self.only_in_covariates)} in the covariates but not the features: "
                         f"{show(self.only_in_covariates)}")
        return "; ".join(lines) + "."

    def as_dict(self) -> dict:
        return {"keys": self.keys, "matched": len(self.matched), "only_in_features": self.only_in_features,
                "only_in_covariates": self.only_in_covariates}


def _strip_bids(v: str) -> str:
    for p in ("sub-", "ses-"):
        if v.startswith(p):
            return v[len(p):]
    return v


def _keys(df: pd.DataFrame, cols, where: str, strip_bids: bool) -> pd.Series:
    parts = []
    for c in cols:
        if c is None:
            s = pd.Series(df.index.astype(str), index=df.index)
        elif c in df.columns:
            s = df[c]
        elif c == df.index.name:
            s = pd.Series(df.index, index=df.index)
        else:
            raise ColumnNotFoundError(
                f"the {where} have no column {c!r}; columns present: {show_columns(df.columns)}"
                + (f" (index: {df.index.name!r})" if df.index.name else "") + "."
            )
        if s.isna().any():
            raise InputError(f"key column {c!r} of the {where} is empty in rows {list(df.index[s.isna()][:5])}.")
        s = s.astype(str).str.strip()
        if strip_bids:
            s = s.map(_strip_bids)
        parts.append(s.to_numpy())
    return pd.Series(list(zip(*parts)), index=df.index)


def _normalize_on(on):
    if on is None:
        return [None], [None]
    if isinstance(on, str):
        return [on], [on]
    if isinstance(on, dict):
        return list(on.keys()), list(on.values())
    on = list(on)
    return on, on


def match_ids(features: pd.DataFrame, covariates: pd.DataFrame, on=None, strip_bids: bool = False) -> IdMatch:
    """Compare the ids of a feature table and a covariate table (see :func:`join_covariates` for ``on``)."""
    fcols, ccols = _normalize_on(on)
    fk = _keys(features, fcols, "features", strip_bids)
    ck = _keys(covariates, ccols, "covariates", strip_bids)
    cset, fset = set(ck), set(fk)
    return IdMatch(
        matched=[k for k in dict.fromkeys(fk) if k in cset],
        only_in_features=[k for k in dict.fromkeys(fk) if k not in cset],
        only_in_covariates=[k for k in dict.fromkeys(ck) if k not in fset],
        keys=[c if c is not None else "<index>" for c in fcols],
    )


def join_covariates(features: pd.DataFrame, covariates: pd.DataFrame, on=None, *, missing: str = "raise",
                    strip_bids: bool = False) -> pd.DataFrame:
    """Add covariate columns to a feature table, matching rows on ids.

    Parameters
    ----------
    features : pandas.DataFrame
        E.g. the output of :func:`featharm.io.collect_subjects` (index ``fsid``, columns ``subject``,
        ``timepoint``). Its rows, order and index are kept.
    covariates : pandas.DataFrame
        E.g. :func:`read_covariates`, :func:`read_bids_participants` or :func:`read_bids_sessions`.
    on : str, list of str or dict, optional
        Key column(s): a name present in both tables, a list of such names, or a mapping
        ``{feature column: covariate column}`` such as ``{"subject": "participant_id", "timepoint":
        "session_id"}``. Default: the two indexes. An index name can be used as a column name.
    missing : {"raise", "drop", "keep"}, default "raise"
        Feature rows without covariates: raise :class:`~featharm.exceptions.AlignmentError` naming them,
        drop them, or keep them with NaN covariates (the latter two warn with
        :class:`~featharm.exceptions.UnmatchedIdWarning`). Covariate rows without features are never an
        error; they are listed in the report.
    strip_bids : bool, default False
        Compare ids without their BIDS ``sub-``/``ses-`` prefix (FreeSurfer ``01`` matches BIDS ``sub-01``).

    Returns
    -------
    pandas.DataFrame
        The features followed by the covariate columns (key columns not repeated). The match report
        (:class:`IdMatch` as a dict) is in ``df.attrs["featharm_join"]``.

    Raises
    ------
    AlignmentError
        Feature rows without covariates (``missing="raise"``).
    DuplicateIndexError
        A key repeats in the covariates (a row could get two sets of covariates).
    InputError
        A covariate column has the same name as a feature column.
    """
    if missing not in ("raise", "drop", "keep"):
        raise InputError(f"missing must be one of ['raise', 'drop', 'keep'], not {missing!r}.")
    if features.index.has_duplicates:
        dup = list(features.index[features.index.duplicated()].unique()[:5])
        raise DuplicateIndexError(f"the feature table's index repeats {dup}; rows must have unique ids.")
    fcols, ccols = _normalize_on(on)
    fk = _keys(features, fcols, "features", strip_bids)
    ck = _keys(covariates, ccols, "covariates", strip_bids)
    if ck.duplicated().any():
        dup = list(ck[ck.duplicated()].unique()[:5])
        raise DuplicateIndexError(f"the covariates repeat the key(s) {dup} (on {ccols}); each must appear once.")
    report = match_ids(features, covariates, on, strip_bids)
    take = [c for c in covariates.columns if c not in ccols]
    clash = [c for c in take if c in features.columns]
    if clash:
        raise InputError(
            f"covariate column(s) {clash} are also feature-table columns; rename or drop them before joining."
        )
    lookup = pd.Series(range(len(ck)), index=pd.Index(ck.to_numpy(), tupleize_cols=False))
    pos = lookup.reindex(pd.Index(fk.to_numpy(), tupleize_cols=False))
    has = pos.notna().to_numpy()
    if report.only_in_features:
        msg = str(report)
        if missing == "raise":
            raise AlignmentError(
                f"{msg} Every feature row needs covariates: fix the ids, pass strip_bids=True if only the "
                "'sub-'/'ses-' prefixes differ, or missing='drop'/'keep'."
            )
        warn(f"{msg} {'Dropped' if missing == 'drop' else 'Kept with NaN covariates'}: those feature rows.",
             UnmatchedIdWarning)
    cov_part = covariates[take].iloc[pos[has].astype(int).to_numpy()]
    cov_part.index = features.index[has]
    if missing == "drop":
        out = pd.concat([features.loc[has], cov_part], axis=1)
    else:
        out = pd.concat([features, cov_part.reindex(features.index)], axis=1)
    out.attrs = dict(features.attrs)
    out.attrs["featharm_join"] = report.as_dict()
    return out
