"""Readers and writers for feature and covariate tables, and FreeSurfer outputs.

* :mod:`featharm.io.tables`: plain CSV/TSV/Parquet tables, atomic writes.
* :mod:`featharm.io.freesurfer`: ``*.stats`` files, asegstats2table/aparcstats2table/ENIGMA group tables and
  whole SUBJECTS_DIRs (units: volumes mm^3, areas mm^2, thickness mm, read exactly as written).
* :mod:`featharm.io.covariates`: covariate tables (CSV/TSV/Parquet/Excel, BIDS) joined on ids.
"""

from .covariates import (
    IdMatch,
    join_covariates,
    match_ids,
    read_bids_participants,
    read_bids_sessions,
    read_covariates,
)
from .freesurfer import (
    STRUCTURE_RENAMES,
    StatsFile,
    collect_subjects,
    list_measures,
    normalize_structure_names,
    not_a_feature,
    parse_fsid,
    read_enigma_table,
    read_fs_table,
    read_fs_tables,
    read_stats,
    scan_subjects_dir,
)
from .tables import read_table, write_table

__all__ = [
    "read_table",
    "write_table",
    "read_stats",
    "StatsFile",
    "read_fs_table",
    "read_fs_tables",
    "read_enigma_table",
    "collect_subjects",
    "list_measures",
    "scan_subjects_dir",
    "parse_fsid",
    "normalize_structure_names",
    "STRUCTURE_RENAMES",
    "not_a_feature",
    "read_covariates",
    "read_bids_participants",
    "read_bids_sessions",
    "join_covariates",
    "match_ids",
    "IdMatch",
]
