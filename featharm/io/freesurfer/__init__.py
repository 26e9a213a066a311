"""Read FreeSurfer outputs: per-subject ``*.stats`` files, group tables and whole SUBJECTS_DIRs.

Units are FreeSurfer's own, read exactly as written (the decimal text is parsed to the nearest double, as
:func:`float` does; nothing is rescaled):

* volumes (aseg ``Volume_mm3``, aparc ``GrayVol``, ``# Measure`` volumes such as eTIV): mm^3
* surface areas (aparc ``SurfArea``, ``WhiteSurfArea``): mm^2
* cortical thickness (``ThickAvg``, ``ThickStd``, ``MeanThickness``): mm
* intensities (aseg ``normMean`` ...): MR units; curvatures: mm^-1 / mm^-2; indices and ratios: unitless

The layouts read are those of FreeSurfer 5.x, 6.0 and 7.x (FastSurfer writes the same).

* :mod:`~featharm.io.freesurfer.stats_file`: one ``*.stats`` file (:func:`read_stats`).
* :mod:`~featharm.io.freesurfer.group_tables`: asegstats2table/aparcstats2table tables (:func:`read_fs_table`,
  :func:`read_fs_tables`).
* :mod:`~featharm.io.freesurfer.enigma`: ENIGMA-protocol tables (:func:`read_enigma_table`).
* :mod:`~featharm.io.freesurfer.subjects_dir`: whole SUBJECTS_DIRs (:func:`scan_subjects_dir`,
  :func:`collect_subjects`, :func:`list_measures`).
* :mod:`~featharm.io.freesurfer.ids`: subject ids (:func:`parse_fsid`).
* ``_names``: measure and structure names (:data:`STRUCTURE_RENAMES`, :func:`normalize_structure_names`), and
  the QC and global columns that are not regional features (:func:`not_a_feature`).
"""

from ._names import (
    APARC_MEASURES,
    KNOWN_PARCELLATIONS,
    SEG_MEASURES,
    STRUCTURE_RENAMES,
    normalize_structure_names,
    not_a_feature,
)
from .enigma import read_enigma_table
from .group_tables import read_fs_table, read_fs_tables
from .ids import parse_fsid
from .stats_file import StatsFile, read_stats
from .subjects_dir import DEFAULT_TEMPLATES, collect_subjects, list_measures, scan_subjects_dir

__all__ = [
    "StatsFile",
    "read_stats",
    "read_fs_table",
    "read_fs_tables",
    "read_enigma_table",
    "normalize_structure_names",
    "STRUCTURE_RENAMES",
    "APARC_MEASURES",
    "not_a_feature",
    "parse_fsid",
    "scan_subjects_dir",
    "collect_subjects",
    "list_measures",
]
