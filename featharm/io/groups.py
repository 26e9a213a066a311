"""Which measure each feature is (thickness, area, volume ...): the groups of features whose site effects share
one empirical-Bayes prior (``docs/methods.md`` §1.10 and S6).

ComBat's priors are moments of the standardized site effects *across features*; features of different
measures (cortical thickness, surface area, volumes) have site effects of different sizes, so one prior over
all of them over-shrinks some and under-shrinks others. The models' default ``priors="auto"`` groups the
features with :func:`feature_groups` and estimates one prior per site and group.

The names recognized (case-insensitive where it is safe):

* ``aparcstats2table`` columns (aparc, aparc.a2009s, aparc.DKTatlas, any parcellation) and any column ending in
  a measure suffix: ``lh_bankssts_thickness``, ``lh_G_and_S_frontomargin_area``, ``..._volume``,
  ``..._thicknessstd``, ``..._meancurv``, ``..._gauscurv``, ``..._foldind``, ``..._curvind``, ``roi003_thickness``;
  the ENIGMA suffixes ``_thickavg``, ``_surfavg``, ``_grayvol``/``_volavg`` and ``_thickstd``;
* ``asegstats2table`` volumes: ``Left-*``/``Right-*`` structures (``Left-Hippocampus``,
  ``Right-Lateral-Ventricle``), the midline structures (``CC_Posterior``, ``3rd-Ventricle``, ``Brain-Stem``,
  ``CSF``, ``WM-hypointensities`` ...) and the whole-brain measures ending in ``Vol`` (``TotalGrayVol``,
  ``lhCortexVol``) -- all ``volume``;
* ENIGMA names: ``LThickness``/``RThickness`` (thickness), ``LSurfArea``/``RSurfArea`` (area), the subcortical
  volumes ``Lhippo``, ``RLatVent`` ... (volume);
* ABCD 5.x: ``smri_thick_*`` (thickness), ``smri_area_*`` (area), ``smri_vol_*`` (volume, cortical and
  subcortical), ``smri_sulc_*`` (sulc), ``smri_t1w*``/``smri_t2w*`` (t1w, t2w intensities),
  ``dmri_dtifa*``/``dmri_dtimd*``/``dmri_dtild*``/``dmri_dtitd*`` (fa, md, ld, td).

Every other name is in the group ``"other"`` (:data:`OTHER`). ``asegstats2table --meas mean`` (intensities)
has the same column names as the volumes, so a table of those needs a groups file. A groups file
(:func:`read_feature_groups`, the command line's ``--feature-groups FILE``) is a CSV or TSV with the columns
``feature`` and ``group``, one row per feature.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ..exceptions import FeatureGroupError
from ._common import fmt_list

__all__ = ["OTHER", "MEASURE_GROUPS", "measure_of", "feature_groups", "read_feature_groups", "check_feature_groups"]

#: The group of a name none of the rules recognize.
OTHER = "other"

#: Every group name :func:`measure_of` gives.
MEASURE_GROUPS = ("thickness", "thicknessstd", "area", "volume", "meancurv", "gauscurv", "foldind", "curvind",
                  "sulc", "t1w", "t2w", "fa", "md", "ld", "td", OTHER)

# a measure suffix after the last underscore (aparcstats2table, ENIGMA cortical tables, "roi003_thickness")
_SUFFIX = {
    "thickness": "thickness", "thickavg": "thickness",
    "thicknessstd": "thicknessstd", "thickstd": "thicknessstd",
    "area": "area", "surfavg": "area",
    "volume": "volume", "grayvol": "volume", "volavg": "volume",
    "meancurv": "meancurv", "gauscurv": "gauscurv", "foldind": "foldind", "curvind": "curvind",
}

# ABCD 5.x: the second token of smri_/dmri_ names (one pattern: one match per name)
_ABCD_GROUPS = {"smri_thick_": "thickness", "smri_area_": "area", "smri_vol_": "volume", "smri_sulc_": "sulc",
                "smri_t1w": "t1w", "smri_t2w": "t2w", "dmri_dtifa": "fa", "dmri_dtimd": "md", "dmri_dtild": "ld",
                "dmri_dtitd": "td"}
_ABCD = re.compile("^(" + "|".join(map(re.escape, _ABCD_GROUPS)) + ")")
_WHOLE_BRAIN_VOL = re.compile(r"[A-Za-z0-9-]*Vol")

# ENIGMA's global and subcortical names (featharm.io.freesurfer.enigma reads them)
_ENIGMA = {"lthickness": "thickness", "rthickness": "thickness", "lsurfarea": "area", "rsurfarea": "area"}
_ENIGMA_SUBCORTICAL = {s.lower() for side in "LR" for s in (
    f"{side}LatVent", f"{side}thal", f"{side}caud", f"{side}put", f"{side}pal", f"{side}hippo", f"{side}amyg",
    f"{side}accumb")}

# aseg.stats structures without a Left-/Right- prefix (lower-cased)
_ASEG_MIDLINE = {s.lower() for s in (
    "3rd-Ventricle", "4th-Ventricle", "5th-Ventricle", "Brain-Stem", "CSF", "WM-hypointensities",
    "non-WM-hypointensities", "Optic-Chiasm", "CC_Posterior", "CC_Mid_Posterior", "CC_Central", "CC_Mid_Anterior",
    "CC_Anterior")}


def measure_of(name) -> str:
    """The measure group of one feature name (:data:`MEASURE_GROUPS`; ``"other"`` when not recognized)."""
    return _measure_of_text(str(name))


@functools.lru_cache(maxsize=2**16)
def _measure_of_text(name: str) -> str:
    text = name.strip()
    low = text.lower()
    abcd = _ABCD.match(low)
    if abcd:
        return _ABCD_GROUPS[abcd.group(1)]
    if "_" in low:
        suffix = low.rsplit("_", 1)[1]
        if suffix in _SUFFIX:
            return _SUFFIX[suffix]
    if low in _ENIGMA:
        return _ENIGMA[low]
    if low in _ENIGMA_SUBCORTICAL:
        return "volume"
    if low.startswith(("left-", "right-")) or low in _ASEG_MIDLINE:
        return "volume"
    if _WHOLE_BRAIN_VOL.fullmatch(text):  # aseg.stats whole-brain measures: TotalGrayVol, lhCortexVol
        return "volume"
    return OTHER


def feature_groups(columns) -> dict[str, str]:
    """The measure group of every feature name in ``columns`` (:func:`measure_of`), as ``{name: group}``.

    >>> feature_groups(["lh_bankssts_thickness", "lh_bankssts_area", "Left-Hippocampus", "age_z"])
    {'lh_bankssts_thickness': 'thickness', 'lh_bankssts_area': 'area', 'Left-Hippocampus': 'volume', 'age_z': 'other'}
    """
    return {str(c): measure_of(c) for c in columns}


def check_feature_groups(groups, features, source: str = "the feature-group mapping") -> dict[str, str]:
    """``groups`` (a mapping or Series feature -> group name) checked against ``features``: every feature has
    a group (a non-empty string) and every name in ``groups`` is a feature. Returns ``{feature: group}``.

    Raises :class:`~featharm.exceptions.FeatureGroupError` naming the features and ``source``.
    """
    if isinstance(groups, pd.Series):
        if groups.index.has_duplicates:
            dup = groups.index[groups.index.duplicated()].unique()
            raise FeatureGroupError(f"{source} lists feature(s) {fmt_list([str(d) for d in dup], 5)} more than "
                                    "once; give each feature one group.")
        groups = groups.to_dict()
    if not isinstance(groups, Mapping):
        raise FeatureGroupError(f"{source} must map each feature name to a group name (a dict or Series); got a "
                                f"{type(groups).__name__}.")
    out = {str(k): v for k, v in groups.items()}
    bad = [k for k, v in out.items() if not isinstance(v, str) or not v.strip()]
    if bad:
        raise FeatureGroupError(f"{source} gives feature(s) {fmt_list(bad, 5)} no group name (each group must be "
                                "a non-empty string such as 'thickness').")
    names = [str(f) for f in features]
    have = set(names)
    missing = [f for f in names if f not in out]
    unknown = [k for k in out if k not in have]
    if missing:
        raise FeatureGroupError(f"{source} gives no group to {len(missing)} feature(s): {fmt_list(missing, 5)}; "
                                "list every feature (e.g. with the group 'other').")
    if unknown:
        raise FeatureGroupError(f"{source} names {len(unknown)} column(s) that are not features of this table: "
                                f"{fmt_list(unknown, 5)}; remove them, or check their spelling.")
    return {f: out[f].strip() for f in names}


def read_feature_groups(path, features=None) -> dict[str, str]:
    """Read a groups file: CSV or TSV (by extension, ``.tsv``/``.txt`` tab-separated) with a header holding
    the columns ``feature`` and ``group``, one row per feature (other columns are ignored).

    With ``features``, the file is checked against them (:func:`check_feature_groups`). Returns
    ``{feature: group}`` in the file's order.

    Raises
    ------
    FeatureGroupError
        No ``feature``/``group`` column, a feature listed twice, an empty name or group (lines named);
        with ``features``, a feature without a group or a listed name that is not a feature.
    """
    from .tables import read_table

    path = Path(path)
    df = read_table(path)
    cols = {str(c).strip().lower(): c for c in df.columns}
    absent = [c for c in ("feature", "group") if c not in cols]
    if absent:
        raise FeatureGroupError(f"{str(path)!r} has no {' or '.join(repr(c) for c in absent)} column (columns: "
                                f"{fmt_list([str(c) for c in df.columns], 6)}); a groups file has the columns "
                                "'feature' and 'group', one row per feature.")
    feat = df[cols["feature"]].astype("string").str.strip()
    grp = df[cols["group"]].astype("string").str.strip()
    empty = feat.isna() | (feat == "") | grp.isna() | (grp == "")
    if empty.any():
        lines = [int(i) + 2 for i in np.flatnonzero(empty.to_numpy())[:5]]
        raise FeatureGroupError(f"{str(path)!r}: empty feature or group on line(s) {lines}; every row needs both.")
    dup = feat.duplicated(keep=False)
    if dup.any():
        first = feat[dup].iloc[0]
        lines = [int(i) + 2 for i in np.flatnonzero((feat == first).to_numpy())[:5]]
        raise FeatureGroupError(f"{str(path)!r}: feature {first!r} is on lines {lines}; list each feature once.")
    mapping = dict(zip(feat.tolist(), grp.tolist()))
    if features is not None:
        mapping = check_feature_groups(mapping, features, source=f"the groups file {str(path)!r}")
    return mapping
