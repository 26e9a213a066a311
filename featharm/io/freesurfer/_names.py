"""FreeSurfer names: measures and their table columns, structures renamed between versions, the structures
of fixed parcellations, and what a stats file's name says (kind, hemisphere, parcellation)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ...exceptions import InputError


#: aparcstats2table ``--meas`` name -> column of ``?h.<parc>.stats`` (units in brackets).
APARC_MEASURES = {
    "thickness": "ThickAvg",      # mm
    "area": "SurfArea",           # mm^2
    "volume": "GrayVol",          # mm^3
    "thicknessstd": "ThickStd",   # mm
    "meancurv": "MeanCurv",       # mm^-1
    "gauscurv": "GausCurv",       # mm^-2
    "foldind": "FoldInd",         # unitless
    "curvind": "CurvInd",         # unitless
}

#: asegstats2table ``--meas`` name -> column of ``aseg.stats`` / ``wmparc.stats``.
SEG_MEASURES = {"volume": "Volume_mm3", "mean": "normMean", "std": "normStdDev", "nvoxels": "NVoxels"}

#: Names FreeSurfer changed between versions: old (5.x/6.0) -> new (7.x). Applied only on request
#: (``normalize_names=True``). The thalamus label lost its "-Proper" suffix in 7.0 (same label, id 10/49);
#: "CorticalWhiteMatter" global measures became "CerebralWhiteMatter" in 6.0 (renamed because they always
#: covered all cerebral white matter); FreeSurfer 5.1 wrote its eTIV as "IntraCranialVol"/"ICV".
STRUCTURE_RENAMES = {
    "Left-Thalamus-Proper": "Left-Thalamus",
    "Right-Thalamus-Proper": "Right-Thalamus",
    "lhCorticalWhiteMatterVol": "lhCerebralWhiteMatterVol",
    "rhCorticalWhiteMatterVol": "rhCerebralWhiteMatterVol",
    "CorticalWhiteMatterVol": "CerebralWhiteMatterVol",
    "IntraCranialVol": "EstimatedTotalIntraCranialVol",
}

#: Parcellations whose full structure list is fixed, used to flag files with missing rows.
KNOWN_PARCELLATIONS = {
    "aparc": (
        "bankssts caudalanteriorcingulate caudalmiddlefrontal cuneus entorhinal fusiform inferiorparietal "
        "inferiortemporal isthmuscingulate lateraloccipital lateralorbitofrontal lingual medialorbitofrontal "
        "middletemporal parahippocampal paracentral parsopercularis parsorbitalis parstriangularis pericalcarine "
        "postcentral posteriorcingulate precentral precuneus rostralanteriorcingulate rostralmiddlefrontal "
        "superiorfrontal superiorparietal superiortemporal supramarginal frontalpole temporalpole "
        "transversetemporal insula"
    ).split(),
}

KNOWN_PARCELLATIONS["aparc.pial"] = KNOWN_PARCELLATIONS["aparc"]

KNOWN_PARCELLATIONS["aparc.DKTatlas"] = [
    s for s in KNOWN_PARCELLATIONS["aparc"] if s not in ("bankssts", "frontalpole", "temporalpole")
]


def _kind_from_name(path: Path) -> tuple[str | None, str | None, str | None]:
    name = path.name
    if name.endswith(".stats"):
        stem = name[: -len(".stats")]
    else:
        stem = name
    if stem in ("aseg", "wmparc", "brainvol"):
        return stem, None, None
    m = re.match(r"^(lh|rh)\.(.+)$", stem)
    if m:
        return "surface", m.group(1), m.group(2)
    return None, None, None


def _measure_column(structure: str, short: str) -> str:
    """The column asegstats2table/aparcstats2table give a ``# Measure`` line."""
    if short in ("eTIV", "ICV"):  # both tools keep the long name for intracranial volume
        return structure
    return short


def normalize_structure_names(obj, axis: str = "columns", renames: dict | None = None):
    """Rename structures FreeSurfer renamed between versions to their current (7.x) names.

    Parameters
    ----------
    obj : pandas.DataFrame, pandas.Index or list of str
        A table whose columns (``axis="columns"``) or index (``axis="index"``) hold structure names, or the
        names themselves. Both plain names (``Left-Thalamus-Proper``) and aparcstats2table-style names
        containing them are handled.
    axis : {"columns", "index"}
    renames : dict, optional
        Old -> new names; default :data:`STRUCTURE_RENAMES`.

    Returns
    -------
    renamed : same type as ``obj``
        A renamed copy (the input is not modified).
    report : dict
        Old -> new for every name that was changed (empty when nothing was).

    Raises
    ------
    InputError
        If both an old and its new name are present (renaming would merge two columns).
    """
    renames = STRUCTURE_RENAMES if renames is None else renames
    if isinstance(obj, pd.DataFrame):
        names = list(obj.columns if axis == "columns" else obj.index)
    else:
        names = list(obj)
    mapping = {n: renames[n] for n in names if isinstance(n, str) and n in renames}
    clash = [f"{o!r} and {n!r}" for o, n in mapping.items() if n in names]
    if clash:
        raise InputError(
            f"both the old and the new FreeSurfer name are present ({'; '.join(clash)}): the table mixes "
            "FreeSurfer versions; merge those columns yourself or collect with normalize_names=True."
        )
    if isinstance(obj, pd.DataFrame):
        out = obj.rename(columns=mapping) if axis == "columns" else obj.rename(index=mapping)
    elif isinstance(obj, pd.Index):
        out = obj.map(lambda n: mapping.get(n, n))
    else:
        out = [mapping.get(n, n) for n in names]
    return out, mapping


# --------------------------------------------------------------------------------------------- not features
#: Quality-control numbers FreeSurfer (and tools around it) write next to the measures: the Euler number
#: of the surfaces before topology correction (``avg_en``, ``euler_number``, ``lh_euler`` ...) and the
#: number of surface holes (aseg.stats ``# Measure lhSurfaceHoles/rhSurfaceHoles/SurfaceHoles``, FS >= 6).
#: Lower-case fragments: a column whose lower-cased name contains one of them is QC; also the exact names
#: in :data:`QC_NAMES`.
QC_FRAGMENTS = ("euler", "surfaceholes")
QC_NAMES = frozenset({"avg_en", "mean_en", "lh_en", "rh_en"})

#: Head-size and whole-brain measures: the normalizers of regional measures, not regional measures
#: themselves (lower-cased). FreeSurfer aseg.stats/brainvol.stats ``# Measure`` names, as asegstats2table
#: and aparcstats2table (FS 7 appends ``BrainSegVolNotVent`` and ``eTIV`` to every aparc table) write
#: them; FS 5.x ``IntraCranialVol``; ENIGMA ``ICV``; ABCD 5.x ``smri_vol_scs_intracranialv`` (ICV),
#: ``smri_vol_scs_wholeb`` (whole brain) and ``smri_vol_scs_suprateialv`` (supratentorial). Tissue totals
#: (``TotalGrayVol``, ``CortexVol``, ``CerebralWhiteMatterVol``, ``SubCortGrayVol``), mean thickness and
#: total area are measures in their own right and stay features.
GLOBAL_NAMES = frozenset(n.lower() for n in (
    "EstimatedTotalIntraCranialVol", "eTIV", "IntraCranialVol", "ICV", "TIV",
    "BrainSegVol", "BrainSegVolNotVent", "BrainSegVolNotVentSurf", "BrainSegVol-to-eTIV",
    "MaskVol", "MaskVol-to-eTIV",
    "SupraTentorialVol", "SupraTentorialVolNotVent", "SupraTentorialVolNotVentVox",
    "smri_vol_scs_intracranialv", "smri_vol_scs_wholeb", "smri_vol_scs_suprateialv",
))


def not_a_feature(name) -> str | None:
    """Why the column ``name`` is not a regional feature: ``"QC"`` (Euler number, surface holes),
    ``"global"`` (head size, whole-brain volume: :data:`GLOBAL_NAMES`), or ``None`` for any other name.

    The command line leaves such columns out when it picks the features itself (every numeric column);
    they can be harmonized on request (``--include``). Names are compared without regard to case.
    """
    low = str(name).strip().lower()
    if low in QC_NAMES or any(f in low for f in QC_FRAGMENTS):
        return "QC"
    if low in GLOBAL_NAMES:
        return "global"
    return None
