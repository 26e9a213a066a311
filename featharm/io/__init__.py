"""Readers and writers for feature and covariate tables, and FreeSurfer outputs.

* :mod:`featharm.io.tables`: plain CSV/TSV/Parquet tables, atomic writes.
* :mod:`featharm.io.freesurfer`: ``*.stats`` files, asegstats2table/aparcstats2table/ENIGMA group tables and
  whole SUBJECTS_DIRs (units: volumes mm^3, areas mm^2, thickness mm, read exactly as written).
* :mod:`featharm.io.covariates`: covariate tables (CSV/TSV/Parquet/Excel, BIDS) joined on ids.
* :mod:`featharm.io.store`: feature stores (Zarr; subjects × features too large for memory), read lazily.
* :mod:`featharm.io.formats`: the formats users have, told by their header and joined into one table
  (FreeSurfer group tables, ENIGMA CSVs, ABCD 5.x tables: :func:`read_feature_tables`, :func:`read_abcd`).
* :mod:`featharm.io.groups`: the measure (thickness, area, volume ...) of each feature from its name, and
  groups files (:func:`feature_groups`, :func:`read_feature_groups`), for empirical-Bayes priors per measure.
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
from .formats import read_abcd, read_abcd_table, read_feature_tables, sniff_format
from .groups import feature_groups, measure_of, read_feature_groups
from .store import FeatureStore, read_store, write_store
from .tables import read_table, write_table

__all__ = [
    "read_store",
    "write_store",
    "FeatureStore",
    "read_table",
    "write_table",
    "read_stats",
    "StatsFile",
    "read_fs_table",
    "read_fs_tables",
    "read_enigma_table",
    "read_abcd",
    "read_abcd_table",
    "read_feature_tables",
    "sniff_format",
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
    "feature_groups",
    "measure_of",
    "read_feature_groups",
]
