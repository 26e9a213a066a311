"""ENIGMA-protocol tables (``CorticalMeasuresENIGMA_ThickAvg.csv``, ``LandRvolumes.csv``, ...)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ...exceptions import StatsFileError
from ._delimited import _read_delimited, _split_ids, _to_numeric_frame


# ENIGMA names -> aparcstats2table / asegstats2table names
_ENIGMA_SUBCORT = {
    "LLatVent": "Left-Lateral-Ventricle", "RLatVent": "Right-Lateral-Ventricle",
    "Lthal": "Left-Thalamus", "Rthal": "Right-Thalamus", "Lcaud": "Left-Caudate", "Rcaud": "Right-Caudate",
    "Lput": "Left-Putamen", "Rput": "Right-Putamen", "Lpal": "Left-Pallidum", "Rpal": "Right-Pallidum",
    "Lhippo": "Left-Hippocampus", "Rhippo": "Right-Hippocampus", "Lamyg": "Left-Amygdala",
    "Ramyg": "Right-Amygdala", "Laccumb": "Left-Accumbens-area", "Raccumb": "Right-Accumbens-area",
    "ICV": "EstimatedTotalIntraCranialVol",
}

_ENIGMA_GLOBAL = {
    "LThickness": "lh_MeanThickness_thickness", "RThickness": "rh_MeanThickness_thickness",
    "LSurfArea": "lh_WhiteSurfArea_area", "RSurfArea": "rh_WhiteSurfArea_area",
}

_ENIGMA_SUFFIX = {"thickavg": "thickness", "surfavg": "area", "grayvol": "volume", "volavg": "volume"}


def _enigma_name(col: str) -> str:
    if col in _ENIGMA_SUBCORT:
        return _ENIGMA_SUBCORT[col]
    if col in _ENIGMA_GLOBAL:
        return _ENIGMA_GLOBAL[col]
    m = re.match(r"^([LR])_(.+)_([A-Za-z]+)$", col)
    if m and m.group(3).lower() in _ENIGMA_SUFFIX:
        return f"{'lh' if m.group(1) == 'L' else 'rh'}_{m.group(2)}_{_ENIGMA_SUFFIX[m.group(3).lower()]}"
    return col


def is_enigma_header(cells) -> bool:
    """Whether header cells are an ENIGMA-protocol table's: ``SubjID`` then only ENIGMA measure names
    (``L_bankssts_thickavg``, ``Lhippo``, ``LThickness``, ``ICV`` ...)."""
    cells = [str(c).strip() for c in cells]
    return (len(cells) > 1 and cells[0] == "SubjID"
            and all(c in _ENIGMA_SUBCORT or c in _ENIGMA_GLOBAL or _ENIGMA_CORTICAL.fullmatch(c) for c in cells[1:]))


_ENIGMA_CORTICAL = re.compile(r"[LR]_.+_(?:thickavg|surfavg|grayvol|volavg)", re.IGNORECASE)


def read_enigma_table(path, rename: bool = False, allow_missing: bool = False) -> pd.DataFrame:
    """Read an ENIGMA-protocol CSV (``CorticalMeasuresENIGMA_ThickAvg.csv``, ``LandRvolumes.csv``, ...).

    The first column is ``SubjID``; every other column must be numeric (cortical ``*_thickavg`` in mm,
    ``*_surfavg`` in mm^2, subcortical volumes and ``ICV`` in mm^3).

    Parameters
    ----------
    path : str or path-like
    rename : bool, default False
        Rename columns to the aparcstats2table/asegstats2table names (``L_bankssts_thickavg`` ->
        ``lh_bankssts_thickness``, ``Lhippo`` -> ``Left-Hippocampus``, ``LThickness`` ->
        ``lh_MeanThickness_thickness``, ``ICV`` -> ``EstimatedTotalIntraCranialVol``); the map used is in
        ``df.attrs["featharm"]["renamed"]``.
    allow_missing : bool, default False
        Read empty and ``NA`` cells (ENIGMA's mark of a region that failed quality control) as NaN instead
        of refusing them.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``SubjID`` (index name ``fsid``).
    """
    path = Path(path)
    df, delim = _read_delimited(path, "ENIGMA table")
    if str(df.columns[0]).strip() != "SubjID":
        raise StatsFileError(f"{path}:1: an ENIGMA table starts with a 'SubjID' column, not {df.columns[0]!r}.")
    body = _split_ids(df, path, "SubjID")
    out = _to_numeric_frame(body, path, missing_ok=allow_missing)
    renamed = {}
    if rename:
        renamed = {c: _enigma_name(c) for c in out.columns if _enigma_name(c) != c}
        out = out.rename(columns=renamed)
    out.attrs["featharm"] = {"tool": "ENIGMA", "source": str(path), "delimiter": delim, "renamed": renamed}
    return out
