"""Readers and writers for feature and covariate tables (FreeSurfer readers come in ``freesurfer``)."""

from .tables import read_table, write_table

__all__ = ["read_table", "write_table"]
